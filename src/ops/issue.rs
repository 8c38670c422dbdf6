//! The one way a grant is issued, whatever its provider: every grant goes through [`issue`].
//!
//! 1. the signer must be valid for the requester at the trust ref, and the keyring must take a
//!    placeholder: a grant whose records would not verify, or whose secret could not be kept, is
//!    refused before anything exists to undo;
//! 2. a signed `intent` record (the grant id and session name are known before minting);
//! 3. the provider mints ([`Issuer::mint`]); a failure is a signed `failed` record;
//! 4. the signed `grant` record, then the secret into the keyring. Fail closed: nothing is handed
//!    out unless its grant record was written first; if it cannot be written, the provider undoes
//!    the mint ([`Issuer::unmint`]). If the keyring refuses the secret after all, the grant is
//!    revoked at once (trigger `undelivered`).
//!
//! Signals set a flag ([`Interruption`]): before the intent nothing happens, between intent and
//! mint the request ends recorded as failed, and once the provider was asked the executor finishes
//! what it started, so that no live secret is ever left without its outcome recorded.
//!
//! Waiting for approval, and minting elsewhere (a broker), slot in between 2 and 3 later: the
//! executor only needs an [`Issuer`] whose `mint` returns the secret.

use chrono::{DateTime, Utc};
use git2::Repository;

use crate::grant::{GrantId, Record, RecordKind};
use crate::interrupt::Interruption;
use crate::ledger::signing::Signer;
use crate::ledger::{self, LedgerError};
use crate::ops::context::GitContext;
use crate::provider::{Issuer, MintFailure, Secret};
use crate::secrets::{SecretStore, SecretsError};
use crate::trust::TrustRef;

/// One grant to issue: everything decided, nothing written yet.
pub struct IssueRequest<'a> {
    pub ctx: &'a GitContext,
    pub trust: &'a TrustRef,
    pub grant_id: GrantId,
    pub reason: &'a str,
    pub ttl_seconds: u64,
    pub now: DateTime<Utc>,
    /// How to reach the provider to end the grant, should it have to be ended at once.
    pub profile: Option<String>,
    pub timeout: std::time::Duration,
    /// The request it was asked for with (approvals, break-glass), and the approvals it relies on.
    pub request_sha256: Option<String>,
    pub approvals: Option<Vec<String>>,
    pub break_glass: bool,
}

impl IssueRequest<'_> {
    /// When the grant would end, as asked.
    pub fn until(&self) -> DateTime<Utc> {
        self.now + chrono::Duration::seconds(self.ttl_seconds as i64)
    }
}

/// What a successful issue produced. `secret` is for `--format` output only; everything else goes
/// through the keyring.
pub struct Issued {
    pub record: Record,
    pub secret: Secret,
    /// How long the placeholder and the intent record, the provider, and the keyring write took
    /// (for benchmarks).
    pub intent_elapsed: std::time::Duration,
    pub mint_elapsed: std::time::Duration,
    pub keyring_elapsed: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(
        "your signing key {fingerprint} is not a valid signer for {principal} in .tpa/allowed_signers at \
         {trust} ({why}), so nothing was asked of the provider: records it signs would not verify. \
         Commit your line (`tpa init` writes it) and get it merged into {trust} through review"
    )]
    UntrustedSigner { fingerprint: String, principal: String, trust: String, why: String },
    #[error(transparent)]
    Signers(#[from] crate::ops::ledger::InspectError),
    #[error("nothing was asked of the provider: the OS keyring cannot keep the credentials ({source})")]
    KeyringUnusable {
        #[source]
        source: SecretsError,
    },
    #[error("cannot write the intent record, so nothing was asked of the provider: {0}")]
    Intent(#[source] LedgerError),
    #[error(
        "interrupted before anything was asked of the provider{}",
        if *recorded { format!(": recorded as failed grant {grant_id}") } else { String::new() }
    )]
    Interrupted { grant_id: GrantId, recorded: bool },
    #[error("{error}\n(recorded as failed grant {grant_id})")]
    Mint { grant_id: GrantId, error: MintFailure },
    #[error(
        "the provider issued credentials for grant {grant_id}, but the grant record could not be written \
         ({source}); the credentials were discarded and not handed out, and {ended}. Run `tpa request` \
         again once the ledger is writable",
        ended = if *undone { "their session was ended" } else {
            "their session could NOT be ended now (it lasts until {expires_at} unless `tpa sweep` denies it)"
        }
    )]
    GrantRecord {
        grant_id: GrantId,
        expires_at: DateTime<Utc>,
        undone: bool,
        #[source]
        source: LedgerError,
    },
    #[error(
        "grant {grant_id} was recorded, but its credentials could not be kept in the OS keyring ({source}); \
         the session was {ended} and nothing was handed out"
    )]
    Keyring {
        grant_id: GrantId,
        ended: String,
        #[source]
        source: SecretsError,
    },
}

impl IssueError {
    /// Interrupted by a signal, with what was started recorded.
    pub fn is_interruption(&self) -> bool {
        matches!(self, IssueError::Interrupted { .. })
    }
}

/// Issues one grant through `issuer`; see the module documentation for the steps.
pub fn issue(
    repo: &Repository,
    request: &IssueRequest<'_>,
    issuer: &mut dyn Issuer,
    signer: &Signer,
    store: &dyn SecretStore,
    interruption: &Interruption,
) -> Result<Issued, IssueError> {
    let grant_id = &request.grant_id;
    let started = std::time::Instant::now();
    issuer.prepare();
    check_signer(repo, request.trust, signer, &request.ctx.principal.email, request.now)?;
    let intent = record(request, issuer, RecordKind::Intent, request.now);
    // The keyring takes the placeholder while the intent is signed and its objects written (a
    // Secret Service write is a round trip and a file the daemon saves); the ledger's ref moves
    // only once the keyring has taken it, so a keyring that refuses still leaves no record.
    let (reserved, prepared) = std::thread::scope(|scope| {
        let reserving = std::thread::Builder::new()
            .name("reserve".into())
            .spawn_scoped(scope, store.reservation(grant_id, request.until()));
        let prepared = ledger::prepare(repo, &intent, signer);
        let reserved = match reserving {
            Ok(thread) => thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => store.reservation(grant_id, request.until())(),
        };
        (reserved, prepared)
    });
    reserved.map_err(|source| IssueError::KeyringUnusable { source })?;
    if interruption.is_set() {
        store.forget(grant_id);
        return Err(IssueError::Interrupted { grant_id: grant_id.clone(), recorded: false });
    }
    let intent_sha256 = match prepared.and_then(|prepared| ledger::publish(repo, prepared)) {
        Ok(appended) => appended.payload_sha256,
        Err(e) => {
            store.forget(grant_id);
            return Err(IssueError::Intent(e));
        }
    };
    // Every later record of the grant says what its intent says, and names it.
    let outcome = |kind: RecordKind| Record {
        kind,
        issued_at: crate::clock::now().max(request.now),
        intent_sha256: Some(intent_sha256.clone()),
        ..intent.clone()
    };
    if interruption.is_set() {
        let mut failed = outcome(RecordKind::Failed);
        failed.error = Some("interrupted before anything was asked of the provider".to_owned());
        // The interruption is the news; a ledger problem now is reported by verify.
        let _ = ledger::append(repo, &failed, signer);
        store.forget(grant_id);
        return Err(IssueError::Interrupted { grant_id: grant_id.clone(), recorded: true });
    }

    // From here on the provider may have issued a secret: an interruption waits for the outcome
    // to be recorded, so that no live session is left without its record.
    let intent_elapsed = started.elapsed();
    let started = std::time::Instant::now();
    let minted = issuer.mint();
    let mint_elapsed = started.elapsed();
    let secret = match minted {
        Ok(secret) => secret,
        Err(error) => {
            let mut failed = outcome(RecordKind::Failed);
            failed.error = Some(error.to_string());
            let _ = ledger::append(repo, &failed, signer);
            store.forget(grant_id);
            return Err(IssueError::Mint { grant_id: grant_id.clone(), error });
        }
    };

    let mut granted = outcome(RecordKind::Grant);
    granted.expires_at = Some(secret.expires_at());
    granted.credential_fingerprint = Some(secret.fingerprint());
    if let Err(source) = ledger::append(repo, &granted, signer) {
        // Unrecorded access must not stay usable: the provider undoes it (the intent record
        // already names it, and the sweep ends intents that never got an outcome).
        let undone = issuer.unmint(&secret);
        let expires_at = secret.expires_at();
        drop(secret); // wiped: nothing of it is kept or shown
        store.forget(grant_id);
        return Err(IssueError::GrantRecord { grant_id: grant_id.clone(), expires_at, undone, source });
    }
    // The hooks' fast path: a local index of the grants this clone holds. Best effort: `tpa sweep`
    // rebuilds it from the ledger.
    let _ = crate::state::index_grant(repo, grant_id, crate::state::LocalGrant::of(&granted));
    let started = std::time::Instant::now();
    if let Err(source) = store.store(grant_id, &secret) {
        drop(secret);
        let ended = end_undelivered(repo, request, signer, store);
        return Err(IssueError::Keyring { grant_id: grant_id.clone(), ended, source });
    }
    Ok(Issued { record: granted, secret, intent_elapsed, mint_elapsed, keyring_elapsed: started.elapsed() })
}

/// A record of this grant: who, where, why (the request), and what the provider adds.
fn record(
    request: &IssueRequest<'_>,
    issuer: &dyn Issuer,
    kind: RecordKind,
    issued_at: DateTime<Utc>,
) -> Record {
    let mut record = request.ctx.record(
        kind,
        &request.grant_id,
        issued_at,
        request.reason,
        Some(request.trust.commit.to_string()),
    );
    record.expires_at = Some(request.until());
    record.request_sha256 = request.request_sha256.clone();
    record.approvals = request.approvals.clone();
    record.break_glass = request.break_glass.then_some(true);
    issuer.describe(&mut record);
    record
}

/// The signer must be one the trust ref's allowed_signers accepts for this principal now: a grant
/// whose records would not verify is refused before anything is minted.
pub(crate) fn check_signer(
    repo: &Repository,
    trust: &TrustRef,
    signer: &Signer,
    principal: &str,
    now: DateTime<Utc>,
) -> Result<(), IssueError> {
    use crate::ledger::signers::SignerCheck;
    let signers = crate::ops::ledger::load_signers(repo, trust)?;
    let why = match signers.check(signer.public_key.key_data(), principal, now) {
        SignerCheck::Allowed => return Ok(()),
        SignerCheck::UnknownKey => "the key is not listed".to_owned(),
        SignerCheck::OtherPrincipal(others) => format!("the key is listed for {others}"),
        SignerCheck::WrongNamespace => "the key's line does not allow namespace \"tpa\"".to_owned(),
        SignerCheck::NotValidAt => "the key's line is not valid now (valid-after/valid-before)".to_owned(),
    };
    Err(IssueError::UntrustedSigner {
        fingerprint: signer.public_key.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
        principal: principal.to_owned(),
        trust: trust.refname.clone(),
        why,
    })
}

/// A recorded grant whose secret could not be handed over is ended at once: revoked through its
/// provider and recorded (trigger `undelivered`). Returns how it ended, for the error message.
fn end_undelivered(
    repo: &Repository,
    request: &IssueRequest<'_>,
    signer: &Signer,
    store: &dyn SecretStore,
) -> String {
    use crate::ops::revoke::{RevokeSelector, RevokeSpec};
    let spec = RevokeSpec {
        selector: RevokeSelector::Grant(request.grant_id.clone()),
        reason: Some("its credentials could not be kept in the OS keyring".into()),
        trigger: crate::grant::RevokeTrigger::Undelivered,
        profile: request.profile.clone(),
        timeout: request.timeout,
    };
    store.forget(&request.grant_id);
    match crate::ops::revoke::revoke(repo, &spec, signer, crate::clock::now()) {
        Ok(outcomes) if outcomes.iter().all(|o| o.result == Some(crate::grant::RevokeResult::Done)) => {
            "revoked".to_owned()
        }
        Ok(_) => "recorded for revocation (pending: `tpa sweep` retries)".to_owned(),
        Err(e) => format!("NOT revoked ({e}): run `tpa revoke {}`", request.grant_id),
    }
}

#[cfg(test)]
mod tests {
    //! The executor's failure paths, in-process: a fake issuer and a fake keyring in a real git
    //! repository with a real signer. (The real providers are driven end to end in tests/cli.)

    use std::cell::{Cell, RefCell};
    use std::path::PathBuf;

    use git2::{Oid, Repository, Signature};
    use ssh_key::{LineEnding, PrivateKey};

    use super::*;
    use crate::grant::RevokeTrigger;
    use crate::ledger::signing::SignerSource;
    use crate::provider::{Credentials, ProviderKind};
    use crate::secrets::Reservation;

    const EMAIL: &str = "alice@example.com";

    struct Fixture {
        _dir: tempfile::TempDir,
        repo: Repository,
        signer: Signer,
        ctx: GitContext,
        trust: TrustRef,
    }

    fn commit(repo: &Repository, files: &[(&str, &str)], refname: &str, parent: Option<Oid>) -> Oid {
        let mut tpa = repo.treebuilder(None).unwrap();
        for (name, text) in files {
            tpa.insert(*name, repo.blob(text.as_bytes()).unwrap(), 0o100644).unwrap();
        }
        let tpa = tpa.write().unwrap();
        let mut root = repo.treebuilder(None).unwrap();
        root.insert(".tpa", tpa, 0o040000).unwrap();
        let tree = repo.find_tree(root.write().unwrap()).unwrap();
        let who = Signature::now("Alice", EMAIL).unwrap();
        let parents: Vec<_> = parent.map(|p| repo.find_commit(p).unwrap()).into_iter().collect();
        let parents: Vec<&git2::Commit> = parents.iter().collect();
        repo.commit(Some(refname), &who, &who, "commit", &tree, &parents).unwrap()
    }

    fn fixture(listed: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        repo.config().unwrap().set_str("user.email", EMAIL).unwrap();
        repo.config().unwrap().set_str("user.name", "Alice").unwrap();
        let key = PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap();
        let key_path = dir.path().join("key");
        std::fs::write(&key_path, key.to_openssh(LineEnding::LF).unwrap().as_bytes()).unwrap();
        std::fs::set_permissions(&key_path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let signer = Signer::open(SignerSource::KeyFile(key_path)).unwrap();
        let signers = if listed {
            crate::ledger::signers::format_line(EMAIL, key.public_key()) + "\n"
        } else {
            String::new()
        };
        let main = commit(&repo, &[("allowed_signers", &signers)], "refs/heads/main", None);
        commit(&repo, &[("allowed_signers", &signers)], "refs/heads/hotfix/one", Some(main));
        repo.set_head("refs/heads/hotfix/one").unwrap();
        let trust = TrustRef::resolve(&repo).unwrap();
        let ctx = crate::ops::context::capture(&repo, Some(&trust)).unwrap();
        Fixture { _dir: dir, repo, signer, ctx, trust }
    }

    impl Fixture {
        fn request(&self) -> IssueRequest<'_> {
            IssueRequest {
                ctx: &self.ctx,
                trust: &self.trust,
                grant_id: GrantId::generate(Utc::now()),
                reason: "INC-1: the executor under test",
                ttl_seconds: 900,
                now: Utc::now(),
                profile: None,
                timeout: std::time::Duration::from_secs(1),
                request_sha256: None,
                approvals: None,
                break_glass: false,
            }
        }

        fn kinds(&self) -> Vec<RecordKind> {
            let view = crate::ops::ledger::records(&self.repo).unwrap();
            let mut records: Vec<_> = view.report.records.iter().filter_map(|c| c.record.clone()).collect();
            records.sort_by_key(|r| r.issued_at);
            records.iter().map(|r| r.kind).collect()
        }

        fn revoke_trigger(&self) -> Option<RevokeTrigger> {
            let view = crate::ops::ledger::records(&self.repo).unwrap();
            view.report.records.iter().filter_map(|c| c.record.as_ref()).find_map(|r| r.trigger)
        }
    }

    #[derive(Default)]
    struct FakeIssuer {
        refuse: bool,
        /// Make the ledger unwritable while minting: the grant record then cannot be written.
        lock_ledger: Option<PathBuf>,
        unminted: Cell<bool>,
    }

    impl Issuer for FakeIssuer {
        fn kind(&self) -> ProviderKind {
            ProviderKind::Other("test".into())
        }

        fn describe(&self, record: &mut Record) {
            record.provider = "test".into();
            record.target = "fake:target".into();
        }

        fn mint(&mut self) -> Result<Secret, MintFailure> {
            if self.refuse {
                return Err("the fake provider refused".into());
            }
            if let Some(lock) = &self.lock_ledger {
                std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
                std::fs::write(lock, "locked by the test").unwrap();
            }
            Ok(Secret::Aws(Credentials {
                access_key_id: "ASIAFAKEFAKEFAKEFAKE".into(),
                secret_access_key: "fake-secret".to_owned().into(),
                session_token: "fake-token".to_owned().into(),
                expiration: Utc::now() + chrono::Duration::minutes(15),
            }))
        }

        fn unmint(&mut self, _: &Secret) -> bool {
            self.unminted.set(true);
            true
        }
    }

    #[derive(Default)]
    struct FakeStore {
        refuse_reserve: bool,
        refuse_store: bool,
        stored: RefCell<Vec<GrantId>>,
        forgotten: RefCell<Vec<GrantId>>,
    }

    impl SecretStore for FakeStore {
        fn reservation(&self, _: &GrantId, _: DateTime<Utc>) -> Reservation<'_> {
            let refuse = self.refuse_reserve;
            Box::new(move || match refuse {
                true => Err(SecretsError::Locked("the fake keyring is locked".into())),
                false => Ok(()),
            })
        }

        fn store(&self, grant_id: &GrantId, _: &Secret) -> Result<(), SecretsError> {
            if self.refuse_store {
                return Err(SecretsError::Unavailable("the fake keyring went away".into()));
            }
            self.stored.borrow_mut().push(grant_id.clone());
            Ok(())
        }

        fn forget(&self, grant_id: &GrantId) {
            self.forgotten.borrow_mut().push(grant_id.clone());
        }
    }

    fn run(f: &Fixture, issuer: &mut FakeIssuer, store: &FakeStore) -> Result<Issued, IssueError> {
        issue(&f.repo, &f.request(), issuer, &f.signer, store, &Interruption::never())
    }

    #[test]
    fn a_grant_is_recorded_before_its_secret_is_kept() {
        let f = fixture(true);
        let store = FakeStore::default();
        let issued = run(&f, &mut FakeIssuer::default(), &store).unwrap();
        assert_eq!(f.kinds(), [RecordKind::Intent, RecordKind::Grant]);
        assert_eq!(issued.record.kind, RecordKind::Grant);
        assert!(issued.record.credential_fingerprint.as_deref().unwrap().starts_with("sha256:"));
        assert_eq!(store.stored.borrow().as_slice(), std::slice::from_ref(&issued.record.grant_id));
        let index = crate::state::StateDir::open(&f.repo).unwrap().local_grants().unwrap();
        assert!(index.contains_key(issued.record.grant_id.as_str()), "the hooks' index knows it");
    }

    #[test]
    fn a_refused_mint_is_a_failed_record_and_nothing_kept() {
        let f = fixture(true);
        let store = FakeStore::default();
        let e = run(&f, &mut FakeIssuer { refuse: true, ..Default::default() }, &store).err().unwrap();
        assert!(matches!(e, IssueError::Mint { .. }), "{e}");
        assert_eq!(f.kinds(), [RecordKind::Intent, RecordKind::Failed]);
        assert!(store.stored.borrow().is_empty());
        assert_eq!(store.forgotten.borrow().len(), 1, "the reservation goes");
    }

    #[test]
    fn a_grant_record_that_cannot_be_written_undoes_the_mint() {
        let f = fixture(true);
        let store = FakeStore::default();
        let lock = f.repo.path().join("refs/notes/tpa.lock");
        let mut issuer = FakeIssuer { lock_ledger: Some(lock), ..Default::default() };
        let e = run(&f, &mut issuer, &store).err().unwrap();
        assert!(matches!(e, IssueError::GrantRecord { undone: true, .. }), "{e}");
        assert!(e.to_string().contains("their session was ended"), "{e}");
        assert!(issuer.unminted.get(), "the provider was asked to undo the mint");
        assert!(store.stored.borrow().is_empty(), "nothing handed out");
    }

    #[test]
    fn a_secret_the_keyring_refuses_after_the_grant_record_ends_the_grant() {
        let f = fixture(true);
        let store = FakeStore { refuse_store: true, ..Default::default() };
        let e = run(&f, &mut FakeIssuer::default(), &store).err().unwrap();
        assert!(matches!(e, IssueError::Keyring { .. }), "{e}");
        assert_eq!(f.kinds(), [RecordKind::Intent, RecordKind::Grant, RecordKind::Revoke]);
        assert_eq!(f.revoke_trigger(), Some(RevokeTrigger::Undelivered));
    }

    #[test]
    fn a_locked_keyring_or_an_untrusted_signer_writes_nothing() {
        let f = fixture(true);
        let store = FakeStore { refuse_reserve: true, ..Default::default() };
        let e = run(&f, &mut FakeIssuer::default(), &store).err().unwrap();
        assert!(matches!(e, IssueError::KeyringUnusable { .. }), "{e}");
        assert!(f.kinds().is_empty());

        let f = fixture(false);
        let e = run(&f, &mut FakeIssuer::default(), &FakeStore::default()).err().unwrap();
        assert!(matches!(e, IssueError::UntrustedSigner { .. }), "{e}");
        assert!(f.kinds().is_empty());
    }

    #[test]
    fn an_interruption_before_the_intent_writes_nothing() {
        let f = fixture(true);
        let interrupted = Interruption::never();
        interrupted.set();
        let store = FakeStore::default();
        let e = issue(&f.repo, &f.request(), &mut FakeIssuer::default(), &f.signer, &store, &interrupted)
            .err()
            .unwrap();
        assert!(matches!(e, IssueError::Interrupted { recorded: false, .. }), "{e}");
        assert!(f.kinds().is_empty());
        assert_eq!(store.forgotten.borrow().len(), 1);
    }
}

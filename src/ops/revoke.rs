//! `tpa revoke`: deny a grant's STS session through the role's revocation policy, read back, then
//! record a signed `revoke` record and drop the keyring copy of its credentials.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use git2::Repository;
use serde::Serialize;

use crate::grant::{GrantId, GrantState, Record, RecordKind, RevokeResult, RevokeTrigger};
use crate::ledger::signing::Signer;
use crate::ledger::{self, LedgerError};
use crate::ops::context::{self, ContextError};
use crate::ops::grants::{self, GrantView};
use crate::ops::ledger::InspectError;
use crate::provider::{self, Expiries, ProviderKind, Reach};
use crate::secrets;

#[derive(Clone, Debug)]
pub enum RevokeSelector {
    Grant(GrantId),
    /// Every open grant taken on this branch (short name or full refname).
    Branch(String),
    /// Every open grant of mine in this repository.
    Mine,
}

#[derive(Clone, Debug)]
pub struct RevokeSpec {
    pub selector: RevokeSelector,
    pub reason: Option<String>,
    pub trigger: RevokeTrigger,
    pub profile: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RevokeOpError {
    #[error("no grant {0} in the ledger: `tpa status --all --history` lists them")]
    UnknownGrant(GrantId),
    #[error("no open grant to revoke{0}")]
    NothingToRevoke(String),
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// What happened to one grant.
#[derive(Clone, Debug, Serialize)]
pub struct Revoked {
    pub grant_id: GrantId,
    pub role: Option<String>,
    pub branch: String,
    /// `done`, `pending` (to be retried) or `irrevocable`; None when nothing was needed.
    pub result: Option<RevokeResult>,
    /// Why nothing was done (already revoked, expired), or what went wrong.
    pub note: Option<String>,
    /// The revoke record could not be written (the deny may still be in place).
    pub record_error: Option<String>,
}

pub fn revoke(
    repo: &Repository,
    spec: &RevokeSpec,
    signer: &Signer,
    now: DateTime<Utc>,
) -> Result<Vec<Revoked>, RevokeOpError> {
    let me = context::principal(repo)?;
    let _serialized = crate::state::StateDir::open(repo)?.revocation_lock()?;
    // A grant whose records someone removed from the ledger is still revocable: they come back first.
    crate::ops::ledger::restore_removed(repo)?;
    let expiries = LedgerExpiries::new(repo, now);
    let chosen: Vec<GrantView> = match &spec.selector {
        RevokeSelector::Grant(id) => {
            vec![grants::find(repo, id, now)?.ok_or_else(|| RevokeOpError::UnknownGrant(id.clone()))?]
        }
        RevokeSelector::Branch(branch) => {
            let full =
                if branch.starts_with("refs/") { branch.clone() } else { format!("refs/heads/{branch}") };
            let open: Vec<_> = grants::open(repo, now)?.into_iter().filter(|g| g.branch == full).collect();
            if open.is_empty() {
                return Err(RevokeOpError::NothingToRevoke(format!(
                    " on branch {}",
                    crate::escape::text(branch)
                )));
            }
            open
        }
        RevokeSelector::Mine => {
            let open: Vec<_> =
                grants::open(repo, now)?.into_iter().filter(|g| g.principal == me.email).collect();
            if open.is_empty() {
                return Err(RevokeOpError::NothingToRevoke(" of yours in this repository".into()));
            }
            open
        }
    };

    let author = Author { signer, principal: &me, now };
    Ok(revoke_grants(repo, chosen, spec, &author, &HashSet::new(), &expiries))
}

/// Who writes the revoke records, and when.
pub struct Author<'a> {
    pub signer: &'a Signer,
    pub principal: &'a crate::grant::Principal,
    pub now: DateTime<Utc>,
}

/// Revokes the given grants through their providers' backends (one IAM write per role, one admin
/// connection per database), then writes one signed revoke record per grant. A grant in
/// `last_attempt` whose revocation fails is recorded `irrevocable` instead of `pending`.
/// `expiries` (the ledger's: [`LedgerExpiries`]) lets expired deny entries be pruned.
pub fn revoke_grants(
    repo: &Repository,
    chosen: Vec<GrantView>,
    spec: &RevokeSpec,
    author: &Author,
    last_attempt: &HashSet<GrantId>,
    expiries: &dyn Expiries,
) -> Vec<Revoked> {
    let mut outcomes = Vec::new();
    let mut to_end: BTreeMap<ProviderKind, Vec<GrantView>> = BTreeMap::new();
    // Read once, and only when a grant has to be ended: cancelling requests needs no policy.
    let policy_cell = std::cell::OnceCell::new();
    let policy = || policy_cell.get_or_init(|| policy_now(repo));
    // Only the broker holds the rights to end what it minted: other clones ask it to.
    let asks_the_broker = |grant: &GrantView| {
        let brokers: &[String] = policy().as_ref().map_or(&[], |p| p.brokers.as_slice());
        minted_by_broker(grant, brokers) && !brokers.contains(&author.principal.email)
    };
    for grant in chosen {
        match grant.state {
            GrantState::Revoked => outcomes.push(skipped(&grant, "already revoked")),
            // A request not granted yet has nothing at a provider to end: the record cancels it.
            GrantState::AwaitingApproval => outcomes.push(record_outcome(
                repo,
                &grant,
                spec,
                author,
                RevokeResult::Done,
                Some("the request was cancelled before it was granted".into()),
            )),
            GrantState::Denied | GrantState::Lapsed | GrantState::Cancelled => {
                outcomes.push(skipped(&grant, "a request that was never granted"))
            }
            GrantState::Failed => outcomes.push(skipped(&grant, "never issued (the provider refused it)")),
            // Expired by the provider's clock, nothing left to end; except where access outlives
            // the expiry (a login role and its open sessions).
            GrantState::Expired if !grant.provider.outlives_expiry() => {
                let _ = secrets::delete_credentials(&grant.grant_id);
                outcomes.push(skipped(&grant, "already expired at the provider; nothing to end"))
            }
            _ if asks_the_broker(&grant) => outcomes.push(record_outcome(
                repo,
                &grant,
                spec,
                author,
                RevokeResult::Requested,
                Some("minted by the broker, which applies the revocation on its next pass".into()),
            )),
            _ => to_end.entry(grant.provider.clone()).or_default().push(grant),
        }
    }
    if to_end.is_empty() {
        return outcomes;
    }
    let reach = Reach {
        profile: spec.profile.as_deref(),
        timeout: spec.timeout,
        policy: policy().as_ref().map_err(String::as_str),
    };
    for (kind, grants) in to_end {
        let mut backend = provider::backend(&kind, &reach);
        let endings: Vec<_> = grants.iter().map(GrantView::ending).collect();
        let ended = backend.end(&endings, expiries);
        for (grant, ended) in grants.iter().zip(ended) {
            let (result, note) = match ended {
                Ok(note) => (RevokeResult::Done, note),
                Err(e) if last_attempt.contains(&grant.grant_id) => (RevokeResult::Irrevocable, Some(e)),
                Err(e) => (RevokeResult::Pending, Some(e)),
            };
            outcomes.push(record_outcome(repo, grant, spec, author, result, note));
        }
    }
    outcomes
}

/// Whether a broker wrote the grant's intent (`mint = "broker"`): then only a broker can end it.
pub fn minted_by_broker(grant: &GrantView, brokers: &[String]) -> bool {
    !grant.intent_sha256.is_empty() && brokers.contains(&grant.intent.principal.email)
}

/// The policy at the trust ref now: where a backend finds what to connect to (a database's host).
pub fn policy_now(repo: &Repository) -> Result<crate::policy::Policy, String> {
    let trust = crate::trust::TrustRef::resolve(repo).map_err(|e| e.to_string())?;
    crate::policy::load(repo, &trust).map(|(policy, _)| policy).map_err(|e| e.to_string())
}

/// Drops the keyring copy and writes the revoke record of one grant.
fn record_outcome(
    repo: &Repository,
    grant: &GrantView,
    spec: &RevokeSpec,
    author: &Author,
    result: RevokeResult,
    error: Option<String>,
) -> Revoked {
    // The keyring copy goes whatever the provider said: tpa hands out nothing for a grant being revoked.
    let _ = secrets::delete_credentials(&grant.grant_id);
    let record = revoke_record(grant, author.principal, spec, result, error.clone(), author.now);
    let record_error = ledger::append(repo, &record, author.signer).err().map(|e: LedgerError| e.to_string());
    Revoked {
        grant_id: grant.grant_id.clone(),
        role: grant.role.clone(),
        branch: grant.branch.clone(),
        result: Some(result),
        note: error,
        record_error,
    }
}

fn skipped(grant: &GrantView, why: &str) -> Revoked {
    Revoked {
        grant_id: grant.grant_id.clone(),
        role: grant.role.clone(),
        branch: grant.branch.clone(),
        result: None,
        note: Some(why.to_owned()),
        record_error: None,
    }
}

fn revoke_record(
    grant: &GrantView,
    me: &crate::grant::Principal,
    spec: &RevokeSpec,
    result: RevokeResult,
    error: Option<String>,
    now: DateTime<Utc>,
) -> Record {
    let base = grant.issued.as_ref().unwrap_or(&grant.intent);
    Record {
        kind: RecordKind::Revoke,
        issued_at: now.max(base.issued_at),
        principal: me.clone(),
        reason: spec.reason.clone().unwrap_or_else(|| base.reason.clone()),
        // It names the intent; a request cancelled before its intent names the request.
        intent_sha256: (!grant.intent_sha256.is_empty()).then(|| grant.intent_sha256.clone()),
        request_sha256: grant.request_sha256.clone(),
        approve_by: None,
        delivery_key: None,
        trigger: Some(spec.trigger),
        result: Some(result),
        error,
        ..base.clone()
    }
}

/// The expiries the ledger records, looked up for the sessions a backend asks about (those its
/// deny entries name, a policy's worth), through the grant index: no read of every grant.
pub struct LedgerExpiries<'r> {
    repo: &'r Repository,
    now: DateTime<Utc>,
    /// Sessions looked up already, with their expiry if the ledger has one.
    known: std::cell::RefCell<BTreeMap<String, Option<DateTime<Utc>>>>,
}

impl<'r> LedgerExpiries<'r> {
    pub fn new(repo: &'r Repository, now: DateTime<Utc>) -> Self {
        LedgerExpiries { repo, now, known: Default::default() }
    }
}

impl Expiries for LedgerExpiries<'_> {
    fn of(&self, sessions: &std::collections::BTreeSet<String>) -> BTreeMap<String, DateTime<Utc>> {
        let mut known = self.known.borrow_mut();
        let new: Vec<&String> = sessions.iter().filter(|s| !known.contains_key(*s)).collect();
        let ids: Vec<GrantId> = new.iter().filter_map(|s| GrantId::of_session_name(s)).collect();
        // A lookup that fails prunes nothing, now or later in this process: keeping is safe.
        let found = grants::find_all(self.repo, &ids, self.now).unwrap_or_default();
        let expiries: BTreeMap<String, DateTime<Utc>> =
            found.iter().filter_map(|g| g.expires_at.map(|e| (g.grant_id.session_name(), e))).collect();
        for session in new {
            known.insert(session.clone(), expiries.get(session).copied());
        }
        sessions.iter().filter_map(|s| Some((s.clone(), (*known.get(s)?)?))).collect()
    }
}

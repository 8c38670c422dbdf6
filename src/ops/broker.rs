//! The broker: where a role says `mint = "broker"`, only the broker's identity may assume it, and
//! `tpa broker` (run with that identity, by trusted automation) is the only minter. A pass:
//!
//! 1. fetches the team's branches and ledger;
//! 2. for each request that asks the broker (it carries a one-time delivery key) and is approved
//!    (or break-glass where allowed), checks everything again itself against the trust ref: the
//!    request's signature and signer, the policy, the approvals (an approval of other request
//!    bytes, or by the requester, is refused outright), and that the request's branch and commit
//!    are on the remote (approvers must have been able to see the change). A request it refuses
//!    gets a signed `failed` record with the reason, which the waiting requester prints;
//! 3. claims the request by creating `refs/tpa/claims/<grant id>` on the remote (a push that fails
//!    if the ref exists: of two brokers, exactly one mints), mints through the one executor with
//!    its own credentials, signs the intent and grant records with its own key, and delivers the
//!    credentials encrypted to the request's one-time key under `refs/tpa/deliveries/<grant id>`;
//! 4. sweeps as the broker: applies the revocations that clones without the provider's rights
//!    requested, and revokes merged and expired grants;
//! 5. deletes deliveries and claims whose grant has ended, and pushes the ledger.
//!
//! No server of tpa's own exists: git is the transport and the ledger is the queue.

use chrono::{DateTime, Utc};
use git2::Repository;
use serde::Serialize;

use crate::grant::{ApprovalDecision, GrantId, GrantState, Principal, Record, RecordKind};
use crate::interrupt::Interruption;
use crate::ledger::delivery;
use crate::ledger::signing::{LazySigner, Signer};
use crate::ops::approval::{self, Quorum};
use crate::ops::context::{self, GitContext};
use crate::ops::grants::{self, GrantView};
use crate::ops::request::{self, RequestSpec};
use crate::ops::sweep::{self, SweepOptions, SweepReport};
use crate::ops::sync::{self, SyncOptions};
use crate::policy::{ApprovalRules, Mint, Policy};
use crate::provider::Secret;
use crate::provider::aws_sts::StsOptions;
use crate::secrets::{Reservation, SecretStore, SecretsError};
use crate::trust::TrustRef;

/// A claim older than this whose request was never minted: its broker stopped mid-way.
const STALE_CLAIM_SECONDS: i64 = 600;

#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// The remote the team shares the ledger through.
    pub remote: String,
    /// The AWS profile of the broker's identity (default: the standard chain).
    pub profile: Option<String>,
    pub timeout: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "{me} is not a broker of this repository: the policy at the trust ref names {}; add the broker's \
         principal to `brokers` (and its key to .tpa/allowed_signers) through review",
        if brokers.is_empty() { "no broker".to_owned() } else { brokers.join(", ") }
    )]
    NotABroker { me: String, brokers: Vec<String> },
    #[error("there is no remote `{0}` to serve requests from: `git remote add {0} URL`, or pass --remote")]
    NoRemote(String),
    #[error(transparent)]
    Policy(#[from] crate::policy::LoadError),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error(transparent)]
    Context(#[from] context::ContextError),
    #[error(transparent)]
    Inspect(#[from] crate::ops::ledger::InspectError),
    #[error(transparent)]
    Sweep(#[from] sweep::SweepError),
}

/// What the broker did with one request. Stable names (`--json`, docs/broker.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Minted, recorded and delivered.
    Minted,
    /// Refused, with a signed `failed` record saying why.
    Refused,
    /// Waiting for approvals.
    Waiting,
    /// An approver denied it: nothing to do.
    Denied,
    /// Another broker claimed it first.
    TakenElsewhere,
    /// Could not be handled now; tried again next pass.
    Error,
}

#[derive(Clone, Debug, Serialize)]
pub struct Item {
    pub grant_id: GrantId,
    pub action: Action,
    pub detail: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct BrokerReport {
    pub items: Vec<Item>,
    pub sweep: Option<SweepReport>,
    /// Deliveries removed from the remote (their grant ended before they were picked up).
    pub deliveries_removed: usize,
    /// What looked wrong and was skipped (lines that are not records, a delivery no grant accounts
    /// for, a claim whose broker stopped).
    pub findings: Vec<String>,
    /// The ledger could not be pushed: what the broker wrote waits for the next pass.
    pub unpushed: Vec<String>,
}

impl BrokerReport {
    /// Something a person must look at.
    pub fn needs_attention(&self) -> bool {
        self.items.iter().any(|i| i.action == Action::Error)
            || self.sweep.as_ref().is_some_and(SweepReport::needs_attention)
            || !self.unpushed.is_empty()
    }
}

/// One pass of the broker; see the module documentation.
pub fn pass(
    repo: &Repository,
    signer: &Signer,
    options: &BrokerOptions,
    interruption: &Interruption,
) -> Result<BrokerReport, BrokerError> {
    let remotes = crate::gitconfig::GitConfig::of(repo).map(|c| c.remotes()).unwrap_or_default();
    if !remotes.contains(&options.remote) {
        return Err(BrokerError::NoRemote(options.remote.clone()));
    }
    let sync_options = SyncOptions {
        remotes: Some(vec![options.remote.clone()]),
        timeout: options.timeout,
        interactive: false,
    };
    sync::fetch_branches(repo, &options.remote, options.timeout);
    let mut report = BrokerReport::default();
    sync_ledger(repo, &sync_options, &mut report);
    let me = context::principal(repo)?;
    let trust = TrustRef::resolve(repo)?;
    let (policy, _) = crate::policy::load(repo, &trust)?;
    if !policy.brokers.contains(&me.email) {
        return Err(BrokerError::NotABroker { me: me.email, brokers: policy.brokers.clone() });
    }
    let now = crate::clock::now();
    // Lines that are no record, once: those of the notes that changed since the last pass.
    let state = crate::state::StateDir::open(repo).ok();
    let since = state.as_ref().and_then(|s| s.broker_cursor().ok().flatten());
    let (tip, strays) = grants::strays_since(repo, since)?;
    report.findings.extend(strays.iter().map(|(annotated, line_no)| {
        format!("the note on {annotated} line {line_no}: not a tpa record, skipped")
    }));
    // Requests wait among the open grants, and a lapsed one among those the sweep looks after (it
    // lapsed within the week): not every grant of the ledger.
    let (all, records) = grants::swept_with_records(repo, now, |g| {
        matches!(g.state, GrantState::AwaitingApproval | GrantState::Lapsed)
    })?;
    // Each request's distinct authentic request records: more than one means it was changed.
    let mut versions: std::collections::BTreeMap<&GrantId, std::collections::BTreeSet<&str>> =
        Default::default();
    for checked in records.iter().filter(|c| c.signer.is_some()) {
        if let (Some(record), Some(sha)) = (&checked.record, &checked.payload_sha256)
            && record.kind == RecordKind::Request
        {
            versions.entry(&record.grant_id).or_default().insert(sha);
        }
    }
    let serving = Serving { repo, policy: &policy, signer, me: &me, options, trust: &trust, interruption };
    for grant in &all {
        if !matches!(grant.state, GrantState::AwaitingApproval | GrantState::Lapsed) {
            continue;
        }
        let Some(request) = grant.request.as_ref() else { continue };
        let rules = approval::rules_for(&policy, grant);
        // Requests for roles minted locally are their requesters' own to mint.
        if request.delivery_key.is_none() && rules.is_none_or(|r| r.mint != Mint::Broker) {
            continue;
        }
        if interruption.is_set() {
            break;
        }
        let item = match versions.get(&grant.grant_id).map_or(0, |v| v.len()) {
            n if n > 1 => serving.refuse(grant, request, format!(
                "the request was changed after it was made: the ledger holds {n} different request records for it"
            )),
            _ => serving.serve(grant, request, rules, now),
        };
        if item.action != Action::Waiting {
            sync_ledger(repo, &sync_options, &mut report);
        }
        report.items.push(item);
    }
    let sweep_options =
        SweepOptions { profile: options.profile.clone(), timeout: options.timeout, now: crate::clock::now() };
    let swept = sweep::sweep(repo, &LazySigner::Ready(signer), &sweep_options)?;
    let outcomes: Vec<_> = swept.items.iter().filter_map(|i| i.outcome.clone()).collect();
    if !outcomes.is_empty() {
        let written = [crate::ops::finish::Written::Revoked(&outcomes)];
        crate::ops::finish::after_write(repo, &written, crate::clock::now());
    }
    // What this pass wrote since its last push goes out now (nothing written: nothing to push).
    let wrote = !outcomes.is_empty() || swept.restored > 0 || !report.unpushed.is_empty();
    report.sweep = Some(swept);
    report.deliveries_removed = clean_up(repo, options, &mut report.findings);
    if let (Some(state), Some(tip)) = (&state, tip)
        && let Ok(lock) = state.lock()
    {
        let _ = state.set_broker_cursor(&lock, tip);
    }
    if wrote {
        sync_ledger(repo, &sync_options, &mut report);
    }
    Ok(report)
}

/// Fetches and pushes the ledger; what could not be pushed is reported (the next pass retries).
fn sync_ledger(repo: &Repository, sync_options: &SyncOptions, report: &mut BrokerReport) {
    report.unpushed.clear();
    match sync::sync(repo, sync_options) {
        Ok(results) => report.unpushed.extend(
            results.into_iter().filter(|r| !r.pushed).map(|r| r.error.unwrap_or_else(|| "not pushed".into())),
        ),
        Err(e) => report.unpushed.push(e.to_string()),
    }
}

/// What one pass serves requests with.
struct Serving<'a> {
    repo: &'a Repository,
    policy: &'a Policy,
    signer: &'a Signer,
    me: &'a Principal,
    options: &'a BrokerOptions,
    trust: &'a TrustRef,
    interruption: &'a Interruption,
}

impl Serving<'_> {
    /// Records the refusal (signed `failed` record) and says so.
    fn refuse(&self, grant: &GrantView, request: &Record, why: String) -> Item {
        let (action, detail) = match refuse(self.repo, grant, request, self.signer, self.me, &why) {
            Ok(()) => (Action::Refused, why),
            Err(e) => (Action::Error, format!("{why}; and the refusal could not be recorded: {e}")),
        };
        Item { grant_id: grant.grant_id.clone(), action, detail: Some(detail) }
    }

    /// Handles one request that asks the broker.
    fn serve(
        &self,
        grant: &GrantView,
        request: &Record,
        rules: Option<&ApprovalRules>,
        now: DateTime<Utc>,
    ) -> Item {
        let item = |action, detail: Option<String>| Item { grant_id: grant.grant_id.clone(), action, detail };
        let refuse = |why: String| self.refuse(grant, request, why);
        if !grant.request_verified {
            return refuse(format!(
                "the request is not signed by a key .tpa/allowed_signers trusts for {} at the trust ref",
                request.principal.email
            ));
        }
        let Some(rules) = rules else {
            return refuse(format!("{} is not in the policy at the trust ref", approval::what(grant)));
        };
        if rules.mint != Mint::Broker {
            return refuse(format!(
                "{} is minted locally (mint = \"local\"), not by the broker: ask again with `tpa request`",
                approval::what(grant)
            ));
        }
        let Some(recipient) = request.delivery_key.clone() else {
            return refuse(
                "the request carries no delivery key: ask again with a tpa that supports brokers".into(),
            );
        };
        if let Some(why) = tampered(grant, request) {
            return refuse(why);
        }
        let break_glass = request.break_glass == Some(true);
        if break_glass && !rules.break_glass {
            return refuse(format!("{} does not allow break-glass", approval::what(grant)));
        }
        let approvals = match approval::evaluate(grant, self.policy, rules, now) {
            _ if break_glass => Vec::new(),
            Quorum::Reached { approvals } => approvals,
            Quorum::Waiting { have, need, .. } => {
                return item(Action::Waiting, Some(format!("{have} of {need} approval(s)")));
            }
            Quorum::Lapsed => {
                return refuse(format!(
                    "no quorum: fewer than {} counting approval(s) came within its window",
                    rules.approvals
                ));
            }
            Quorum::Denied { by, .. } => return item(Action::Denied, Some(format!("denied by {by}"))),
            Quorum::Closed => return item(Action::Waiting, None),
        };
        if let Err(why) = on_the_remote(self.repo, &self.options.remote, request) {
            return refuse(why);
        }
        let claim = format!("{} {}", self.me.email, crate::clock::now().to_rfc3339());
        let claim_ref = delivery::claim_ref(&grant.grant_id);
        match sync::create_remote_ref(
            self.repo,
            &self.options.remote,
            &claim_ref,
            claim.as_bytes(),
            self.options.timeout,
        ) {
            Ok(true) => {}
            Ok(false) => return item(Action::TakenElsewhere, Some(format!("{claim_ref} exists"))),
            Err(e) => return item(Action::Error, Some(format!("cannot claim the request: {e}"))),
        }
        let Ok(commit) = git2::Oid::from_str(&request.commit) else {
            return refuse("the request names no valid commit".into());
        };
        // Checked again, as the broker, under the policy at the trust ref now, in the request's context.
        let ctx = GitContext {
            principal: self.me.clone(),
            repo_url: request.repo.clone(),
            branch: request.branch.clone(),
            commit,
            base: request.base.as_deref().and_then(|b| git2::Oid::from_str(b).ok()),
        };
        let spec = RequestSpec {
            role: request.role.clone().unwrap_or_default(),
            database: request.database.clone(),
            reason: Some(request.reason.clone()),
            ttl_seconds: request.expires_at.map(|e| (e - request.issued_at).num_seconds().max(0) as u64),
            mfa_code: None,
            sts: StsOptions {
                profile: self.options.profile.clone(),
                region: None,
                timeout: self.options.timeout,
            },
        };
        let store = DeliveryStore {
            repo: self.repo,
            remote: &self.options.remote,
            recipient: &recipient,
            timeout: self.options.timeout,
        };
        let approved = request::Approved {
            request_sha256: grant.request_sha256.clone().unwrap_or_default(),
            approvals,
            break_glass,
        };
        let minted = request::mint_for(
            self.repo,
            &spec,
            ctx,
            self.trust.clone(),
            grant.grant_id.clone(),
            &request.principal,
            self.signer,
            &store,
            self.interruption,
            approved,
        );
        match minted {
            Ok(granted) => {
                drop(granted.secret);
                let written = [crate::ops::finish::Written::Granted(&granted.record)];
                crate::ops::finish::after_write(self.repo, &written, crate::clock::now());
                item(Action::Minted, None)
            }
            Err(e) => {
                use crate::ops::issue::IssueError;
                match &e {
                    // Nothing was written: the claim goes, so that the next pass tries again.
                    request::RequestError::Issue(
                        IssueError::UntrustedSigner { .. }
                        | IssueError::Signers(_)
                        | IssueError::KeyringUnusable { .. }
                        | IssueError::Intent(_)
                        | IssueError::Interrupted { recorded: false, .. },
                    )
                    | request::RequestError::Trust(_)
                    | request::RequestError::Policy(_)
                    | request::RequestError::Ledger(_)
                    | request::RequestError::Git(_) => {
                        let _ = sync::delete_remote_ref(
                            self.repo,
                            &self.options.remote,
                            &claim_ref,
                            self.options.timeout,
                        );
                        item(Action::Error, Some(e.to_string()))
                    }
                    // Recorded as failed by the executor, with the provider's words.
                    request::RequestError::Issue(_) | request::RequestError::NotifyFailed { .. } => {
                        item(Action::Refused, Some(e.to_string()))
                    }
                    // What the policy says no to now.
                    _ => refuse(e.to_string()),
                }
            }
        }
    }
}

/// An approval that names other bytes than the request (the request was changed after it was
/// approved), or one signed by the requester: no honest tpa writes either, so the request is
/// refused outright rather than left waiting.
fn tampered(grant: &GrantView, request: &Record) -> Option<String> {
    for approval in grant.approvals.iter().filter(|a| a.verified) {
        let record = &approval.record;
        if record.decision != Some(ApprovalDecision::Approve) {
            continue;
        }
        if record.request_sha256 != grant.request_sha256 {
            return Some(format!(
                "the request was changed after {} approved it: their approval names other request bytes",
                record.principal.email
            ));
        }
        if record.principal.email == request.principal.email
            || (approval.signer.is_some() && approval.signer == grant.requester_key)
        {
            return Some(format!("{} approved their own request (self-approval)", record.principal.email));
        }
    }
    None
}

/// The request's branch and commit must be on the remote: approvers had to be able to see the
/// change they approved.
fn on_the_remote(repo: &Repository, remote: &str, request: &Record) -> Result<(), String> {
    let short = request.branch.strip_prefix("refs/heads/").unwrap_or(&request.branch);
    let tracking = format!("refs/remotes/{remote}/{short}");
    let not_pushed = || {
        format!(
            "its commit {} is not on {remote}'s {}: push the branch, then ask again",
            &request.commit[..request.commit.len().min(12)],
            crate::escape::excerpt(short)
        )
    };
    let tip = repo.refname_to_id(&tracking).map_err(|_| not_pushed())?;
    let commit = git2::Oid::from_str(&request.commit).map_err(|_| not_pushed())?;
    if tip == commit || repo.graph_descendant_of(tip, commit).unwrap_or(false) {
        Ok(())
    } else {
        Err(not_pushed())
    }
}

/// A signed `failed` record naming the request: the broker will not mint it, and says why.
fn refuse(
    repo: &Repository,
    grant: &GrantView,
    request: &Record,
    signer: &Signer,
    me: &Principal,
    why: &str,
) -> Result<(), crate::ledger::LedgerError> {
    let record = Record {
        kind: RecordKind::Failed,
        issued_at: crate::clock::now().max(request.issued_at),
        principal: me.clone(),
        error: Some(format!("the broker refused it: {why}")),
        request_sha256: grant.request_sha256.clone(),
        intent_sha256: None,
        approve_by: None,
        delivery_key: None,
        ..request.clone()
    };
    crate::ledger::append(repo, &record, signer).map(|_| ())
}

/// Deletes deliveries on the remote whose grant has ended (picked up or not), and claims whose
/// grant has ended; reports deliveries no grant accounts for and claims whose broker stopped. The
/// grants are read now (one this pass minted is open, so its delivery stays).
fn clean_up(repo: &Repository, options: &BrokerOptions, findings: &mut Vec<String>) -> usize {
    let now = crate::clock::now();
    let deliveries = "refs/tpa/deliveries/";
    let claims = "refs/tpa/claims/";
    let delivered =
        sync::list_remote_refs(repo, &options.remote, deliveries, options.timeout).unwrap_or_default();
    let claimed = sync::list_remote_refs(repo, &options.remote, claims, options.timeout).unwrap_or_default();
    let id_of =
        |refname: &str, prefix: &str| refname.strip_prefix(prefix).and_then(|id| id.parse::<GrantId>().ok());
    let ids: Vec<GrantId> = delivered
        .iter()
        .filter_map(|r| id_of(r, deliveries))
        .chain(claimed.iter().filter_map(|r| id_of(r, claims)))
        .collect();
    // The grants those refs name, read through the grant index; a ledger that cannot be read now
    // leaves every ref alone.
    let named = match grants::find_all(repo, &ids, now) {
        Ok(named) => named,
        Err(e) => {
            findings.push(format!("deliveries and claims left alone: the ledger cannot be read ({e})"));
            return 0;
        }
    };
    let find = |refname: &str, prefix: &str| {
        id_of(refname, prefix).and_then(|id| named.iter().find(|g| g.grant_id == id))
    };
    let mut removed = 0;
    for refname in delivered {
        // Only what has ended: a grant another broker is minting may not be in this ledger yet.
        let ended = match find(&refname, deliveries) {
            Some(g) => !g.state.is_open(),
            None => {
                findings.push(format!(
                    "{}: a delivery for no grant in the ledger (pushed by someone else?): left alone",
                    crate::escape::excerpt(&refname)
                ));
                false
            }
        };
        if ended && sync::delete_remote_ref(repo, &options.remote, &refname, options.timeout).is_ok() {
            removed += 1;
        }
    }
    for refname in claimed {
        let Some(grant) = find(&refname, claims) else { continue };
        let expired = grant.expires_at.or(grant.intent.expires_at).is_some_and(|e| e <= now);
        let waiting = matches!(grant.state, GrantState::AwaitingApproval);
        if waiting && (now - grant.requested_at).num_seconds() > STALE_CLAIM_SECONDS {
            findings.push(format!(
                "{refname}: claimed, but never minted (its broker stopped?): delete the ref on {} to let a broker try again",
                options.remote
            ));
        } else if expired || !(waiting || grant.state.is_open()) {
            let _ = sync::delete_remote_ref(repo, &options.remote, &refname, options.timeout);
        }
    }
    removed
}

/// The broker's "keyring": the requester's delivery ref on the remote, encrypted to the key their
/// request carries. Storing is the delivery; forgetting removes it.
struct DeliveryStore<'a> {
    repo: &'a Repository,
    remote: &'a str,
    recipient: &'a str,
    timeout: std::time::Duration,
}

impl SecretStore for DeliveryStore<'_> {
    fn reservation(&self, _: &GrantId, _: DateTime<Utc>) -> Reservation<'_> {
        let recipient = self.recipient;
        Box::new(move || {
            delivery::seal(recipient, b"probe")
                .map(|_| ())
                .map_err(|e| SecretsError::Unavailable(e.to_string()))
        })
    }

    fn store(&self, grant_id: &GrantId, secret: &Secret) -> Result<(), SecretsError> {
        let plain = crate::secrets::to_json(secret);
        let sealed = delivery::seal(self.recipient, plain.as_bytes())
            .map_err(|e| SecretsError::Unavailable(e.to_string()))?;
        let refname = delivery::delivery_ref(grant_id);
        match sync::create_remote_ref(self.repo, self.remote, &refname, &sealed, self.timeout) {
            Ok(true) => Ok(()),
            Ok(false) => Err(SecretsError::Unavailable(format!("{refname} is already on the remote"))),
            Err(e) => Err(SecretsError::Unavailable(format!("cannot push the delivery: {e}"))),
        }
    }

    fn forget(&self, grant_id: &GrantId) {
        let _ =
            sync::delete_remote_ref(self.repo, self.remote, &delivery::delivery_ref(grant_id), self.timeout);
    }
}

/// A broker that runs until interrupted, a pass every `interval`.
pub fn watch(
    repo: &Repository,
    signer: &Signer,
    options: &BrokerOptions,
    interval: std::time::Duration,
    interruption: &Interruption,
    on_pass: &mut dyn FnMut(Result<BrokerReport, BrokerError>),
) {
    while !interruption.is_set() {
        on_pass(pass(repo, signer, options, interruption));
        let until = std::time::Instant::now() + interval;
        while std::time::Instant::now() < until && !interruption.is_set() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

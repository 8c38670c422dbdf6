//! `tpa sweep`: the reconciliation every hook runs, CI runs on every push to the protected branch,
//! and anyone can run. For each open grant it decides from git and local state alone whether the
//! grant is merged, abandoned or expired, and revokes what must be revoked; it retries pending
//! revocations with bounded, jittered backoff (the ledger is the queue: each attempt is a record),
//! denies sessions of intents that never got an outcome, and re-asserts the deny entries of every
//! revoked, unexpired grant it knows of (IAM has no compare-and-swap).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use git2::Repository;
use rand_core::{OsRng, RngCore};
use serde::Serialize;

use crate::grant::{GrantId, GrantState, RevokeResult, RevokeTrigger};
use crate::ledger::signing::{LazySigner, SigningError};
use crate::lifecycle::{self, AbandonReason, GrantFacts, Situation, Verdict};
use crate::ops::context::{self, ContextError};
use crate::ops::grants::{self, GrantView};
use crate::ops::ledger::InspectError;
use crate::ops::revoke::{self, RevokeSpec, Revoked};
use crate::provider::{self, Ending, ProviderKind, Reach};
use crate::secrets;
use crate::state::{LocalGrant, LocalGrants, StateDir, StateError};
use crate::trust::TrustRef;

/// After this many failed attempts a revocation is recorded `irrevocable` and left to an operator.
pub const MAX_ATTEMPTS: usize = 8;
/// An intent younger than this may still be waiting on STS in another process.
const INCOMPLETE_GRACE_SECONDS: i64 = 300;
const DEFAULT_PROTECTED: [&str; 2] = ["main", "master"];
const DEFAULT_ABANDON_AFTER: i64 = 2 * 3600;

#[derive(Clone, Debug)]
pub struct SweepOptions {
    pub profile: Option<String>,
    pub timeout: Duration,
    pub now: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("git error: {0}")]
    Git(#[from] git2::Error),
    #[error("grants are to be ended, but their records cannot be signed: {0}")]
    Signing(#[from] SigningError),
}

/// What the sweep decided for a grant. Stable names (`--json`, docs/revocation.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Keep,
    Merged,
    Abandoned,
    Expired,
    /// A pending revocation, due for another try.
    Retry,
    /// A pending revocation, not yet due.
    Wait,
    /// A revocation asked of the broker (it minted the grant), not applied yet.
    Requested,
    /// An intent that never got an outcome.
    Incomplete,
    Irrevocable,
    /// Its records had been removed from the ledger and were put back.
    Restored,
    /// Held here, with no record of it left anywhere.
    Unrecorded,
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Keep => "keep",
            Decision::Merged => "merged",
            Decision::Abandoned => "abandoned",
            Decision::Expired => "expired",
            Decision::Retry => "retry",
            Decision::Wait => "wait",
            Decision::Requested => "requested",
            Decision::Incomplete => "incomplete",
            Decision::Irrevocable => "irrevocable",
            Decision::Restored => "restored",
            Decision::Unrecorded => "unrecorded",
            Decision::Error => "error",
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the sweep decided for one open grant.
#[derive(Clone, Debug, Serialize)]
pub struct SweepItem {
    pub grant_id: GrantId,
    pub branch: String,
    pub decision: Decision,
    pub detail: Option<String>,
    pub outcome: Option<Revoked>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepReport {
    pub items: Vec<SweepItem>,
    /// Revoked, unexpired grants whose deny entries were re-asserted.
    pub reasserted: usize,
    pub reassert_errors: Vec<String>,
    /// Policy problems: the sweep then decides with the defaults (main/master, 2h).
    pub policy_error: Option<String>,
    /// Records that had been removed from the ledger and were put back.
    pub restored: usize,
}

impl SweepReport {
    /// Anything left that a person must look at: failed, pending (retried now or waiting for its
    /// next try: the access is still open) or irrevocable revocations.
    pub fn needs_attention(&self) -> bool {
        !self.reassert_errors.is_empty()
            || self.items.iter().any(|i| {
                matches!(
                    i.decision,
                    Decision::Error | Decision::Irrevocable | Decision::Wait | Decision::Unrecorded
                ) || i
                    .outcome
                    .as_ref()
                    .is_some_and(|o| !matches!(o.result, Some(RevokeResult::Done | RevokeResult::Requested)))
            })
    }
}

/// `signer` is opened only if a grant is to be ended: see [`LazySigner`].
pub fn sweep(
    repo: &Repository,
    signer: &LazySigner<'_>,
    options: &SweepOptions,
) -> Result<SweepReport, SweepError> {
    let now = options.now;
    let me = context::principal(repo)?;
    let mut report = SweepReport::default();
    let policy = TrustRef::resolve(repo)
        .map_err(|e| e.to_string())
        .and_then(|trust| crate::policy::load(repo, &trust).map_err(|e| e.to_string()));
    let brokers: Vec<String> = policy.as_ref().map(|(p, _)| p.brokers.clone()).unwrap_or_default();
    let i_am_a_broker = brokers.contains(&me.email);
    let (protected, abandon_after) = match policy {
        Ok((policy, _)) if policy.protected_branches.is_empty() => {
            report.policy_error = Some("protected_branches is empty".to_owned());
            let abandon_after = chrono::Duration::seconds(policy.abandon_after as i64);
            (DEFAULT_PROTECTED.map(str::to_owned).to_vec(), abandon_after)
        }
        Ok((policy, _)) => {
            (policy.protected_branches.clone(), chrono::Duration::seconds(policy.abandon_after as i64))
        }
        Err(e) => {
            report.policy_error = Some(e);
            (DEFAULT_PROTECTED.map(str::to_owned).to_vec(), chrono::Duration::seconds(DEFAULT_ABANDON_AFTER))
        }
    };
    let state = StateDir::open(repo)?;
    let _serialized = state.revocation_lock()?;
    let restored = crate::ops::ledger::restore_removed(repo)?;
    report.restored = restored.len();
    let tampered: HashSet<GrantId> = restored.into_iter().map(|line| line.grant_id).collect();
    let left = state.left_branches()?;
    let head_branch =
        repo.find_reference("HEAD").ok().and_then(|h| h.symbolic_target().ok().flatten().map(str::to_owned));
    // Not every grant: the open ones and the ended ones the sweep still looks after.
    let read_at = crate::ledger::notes::tip(repo).ok().flatten();
    let all = grants::swept(repo, now)?;
    let expiries = revoke::LedgerExpiries::new(repo, now);

    // Read once for every grant decided (a repository may have thousands of refs).
    let tips = lifecycle::protected_tips(repo, &protected).ok();
    let mut to_revoke: Vec<(Decision, RevokeTrigger, Option<String>, GrantView)> = Vec::new();
    let mut last_attempt: HashSet<GrantId> = HashSet::new();
    // An expired postgres grant still has a login role (and maybe open sessions) until dropped.
    let needs_sweep = |g: &&GrantView| {
        g.state.is_open() || (g.provider.outlives_expiry() && g.state == GrantState::Expired)
    };
    for grant in all.iter().filter(needs_sweep) {
        let holds = grant.grantee().email == me.email && grant.grantee().host == me.host;
        let mut facts = match GrantFacts::from_record(grant.issued.as_ref().unwrap_or(&grant.intent)) {
            Ok(facts) => facts,
            Err(e) => {
                report.items.push(item(grant, Decision::Error, Some(e.to_string())));
                continue;
            }
        };
        facts.expires_at = grant.expires_at.or(grant.intent.expires_at);
        let situation = Situation {
            protected: &protected,
            abandon_after,
            now,
            holds_grant: holds,
            left_at: left.get(&grant.branch).copied(),
            head_branch: head_branch.clone(),
            protected_tips: tips.as_deref(),
        };
        let verdict = match lifecycle::decide(repo, &facts, &situation) {
            Ok(verdict) => verdict,
            Err(e) => {
                report.items.push(item(grant, Decision::Error, Some(e.to_string())));
                continue;
            }
        };
        let mut queue = |decision: Decision, trigger: RevokeTrigger, detail: Option<String>| {
            to_revoke.push((decision, trigger, detail, grant.clone()));
        };
        if tampered.contains(&grant.grant_id) && grant.state.is_open() && verdict != Verdict::Expired {
            // Someone removed this grant's records: it ends now, whatever its branch is doing.
            queue(
                Decision::Restored,
                RevokeTrigger::Audit,
                Some("its records had been removed from the ledger; they were put back".into()),
            );
            continue;
        }
        match (verdict, grant.state) {
            // PostgreSQL refuses new logins after VALID UNTIL but keeps open sessions: end them.
            (Verdict::Expired, _) if grant.provider.outlives_expiry() => queue(
                Decision::Expired,
                RevokeTrigger::Expired,
                Some("the login role and its sessions end".into()),
            ),
            (Verdict::Expired, _) => {
                // AWS ended it; nothing to deny. Only the local copy of the secret goes.
                let _ = secrets::delete_credentials(&grant.grant_id);
                report.items.push(item(grant, Decision::Expired, None));
            }
            (_, GrantState::Irrevocable) => report.items.push(item(
                grant,
                Decision::Irrevocable,
                Some("an operator must resolve it: `tpa revoke GRANT`".into()),
            )),
            (_, GrantState::Pending)
                if !i_am_a_broker
                    && revoke::minted_by_broker(grant, &brokers)
                    && grant.revokes.last().is_some_and(|r| r.result == Some(RevokeResult::Requested)) =>
            {
                report.items.push(item(
                    grant,
                    Decision::Requested,
                    Some("asked of the broker, which ends it on its next pass".into()),
                ))
            }
            (_, GrantState::Pending) => {
                // Attempts that failed; a request to the broker is none (the broker acts on it at once).
                let attempts = grant
                    .revokes
                    .iter()
                    .filter(|r| !matches!(r.result, Some(RevokeResult::Done | RevokeResult::Requested)))
                    .count();
                let last = grant.revokes.last().map(|r| r.issued_at).unwrap_or(grant.requested_at);
                let trigger = grant.revokes.last().and_then(|r| r.trigger).unwrap_or(RevokeTrigger::Manual);
                if attempts > 0 && now < last + backoff(attempts) {
                    report.items.push(item(
                        grant,
                        Decision::Wait,
                        Some(format!("attempt {attempts} failed; retrying later")),
                    ));
                } else {
                    if attempts + 1 >= MAX_ATTEMPTS {
                        last_attempt.insert(grant.grant_id.clone());
                    }
                    queue(Decision::Retry, trigger, Some(format!("attempt {}", attempts + 1)));
                }
            }
            (Verdict::Merged { into, how }, _) => {
                queue(Decision::Merged, RevokeTrigger::Merged, Some(format!("into {into} ({how:?})")))
            }
            (Verdict::Abandoned(reason), _) => {
                let detail = match reason {
                    AbandonReason::BranchGone => "the branch is gone".to_owned(),
                    AbandonReason::LeftTooLong { since } => format!("left at {}", since.to_rfc3339()),
                };
                queue(Decision::Abandoned, RevokeTrigger::Abandoned, Some(detail))
            }
            (Verdict::Keep, GrantState::Incomplete)
                if (now - grant.requested_at).num_seconds() >= INCOMPLETE_GRACE_SECONDS =>
            {
                // tpa stopped between intent and outcome: a session may exist with no record.
                queue(
                    Decision::Incomplete,
                    RevokeTrigger::Audit,
                    Some("intent with no grant or failed record".into()),
                )
            }
            (Verdict::Keep, _) => report.items.push(item(grant, Decision::Keep, None)),
        }
    }

    deny_unrecorded(repo, &state, &all, options, &mut report)?;

    let mut by_trigger: BTreeMap<Decision, (RevokeTrigger, Vec<GrantView>)> = BTreeMap::new();
    for (decision, trigger, detail, grant) in to_revoke {
        report.items.push(item(&grant, decision, detail));
        by_trigger.entry(decision).or_insert((trigger, Vec::new())).1.push(grant);
    }
    if !by_trigger.is_empty() {
        let author = revoke::Author { signer: signer.get()?, principal: &me, now };
        for (_, (trigger, grants)) in by_trigger {
            let spec = RevokeSpec {
                selector: revoke::RevokeSelector::Mine,
                reason: None,
                trigger,
                profile: options.profile.clone(),
                timeout: options.timeout,
            };
            for outcome in revoke::revoke_grants(repo, grants, &spec, &author, &last_attempt, &expiries) {
                if let Some(item) = report.items.iter_mut().find(|i| i.grant_id == outcome.grant_id) {
                    item.outcome = Some(outcome);
                }
            }
        }
    }

    // What a broker minted only a broker can deny (again).
    let ours = |g: &GrantView| i_am_a_broker || !revoke::minted_by_broker(g, &brokers);
    reassert(repo, &all, &ours, &expiries, options, now, &mut report);
    // What was read stands if the sweep wrote nothing and nobody else did meanwhile.
    let unchanged = read_at.is_some() && crate::ledger::notes::tip(repo).ok().flatten() == read_at;
    update_index(repo, &state, &me, now, unchanged.then_some(all))?;
    Ok(report)
}

fn item(grant: &GrantView, decision: Decision, detail: Option<String>) -> SweepItem {
    SweepItem {
        grant_id: grant.grant_id.clone(),
        branch: grant.branch.clone(),
        decision,
        detail,
        outcome: None,
    }
}

/// The wait after `attempts` failed attempts: 30 s after the first, doubling, at most an hour, with
/// up to 20% jitter so that many clones spread out.
pub fn backoff(attempts: usize) -> chrono::Duration {
    let base = 30i64.saturating_mul(1i64 << attempts.saturating_sub(1).min(7)).min(3600);
    let jitter = (OsRng.next_u32() % 20) as i64 * base / 100;
    chrono::Duration::seconds(base + jitter)
}

/// Every revoked grant that has not expired stays ended: its backend writes back what keeps it so.
fn reassert(
    repo: &Repository,
    all: &[GrantView],
    ours: &dyn Fn(&GrantView) -> bool,
    expiries: &dyn provider::Expiries,
    options: &SweepOptions,
    now: DateTime<Utc>,
    report: &mut SweepReport,
) {
    let mut by_kind: BTreeMap<&ProviderKind, Vec<&GrantView>> = BTreeMap::new();
    for grant in all
        .iter()
        .filter(|g| g.state == GrantState::Revoked && g.expires_at.is_some_and(|e| e > now) && ours(g))
    {
        by_kind.entry(&grant.provider).or_default().push(grant);
    }
    if by_kind.is_empty() {
        return;
    }
    let policy = revoke::policy_now(repo);
    let reach = Reach {
        profile: options.profile.as_deref(),
        timeout: options.timeout,
        policy: policy.as_ref().map_err(String::as_str),
    };
    for (kind, grants) in by_kind {
        let endings: Vec<_> = grants.iter().map(|g| g.ending()).collect();
        match provider::backend(kind, &reach).reassert(&endings, expiries) {
            Ok(n) => report.reasserted += n,
            Err(e) => report.reassert_errors.push(e),
        }
    }
}

/// The grants of this clone's index (`local`) that are not among `swept`, as the ledger tells
/// them (those it knows).
fn held_besides(
    repo: &Repository,
    swept: &[GrantView],
    local: &LocalGrants,
    now: DateTime<Utc>,
) -> Result<Vec<GrantView>, SweepError> {
    let seen: HashSet<&str> = swept.iter().map(|g| g.grant_id.as_str()).collect();
    let ids: Vec<GrantId> =
        local.keys().filter(|id| !seen.contains(id.as_str())).filter_map(|id| id.parse().ok()).collect();
    Ok(grants::find_all(repo, &ids, now)?)
}

/// Grants this clone took (its index says so) of which the ledger holds no record at all, even
/// after putting back what was removed (the notes history itself was rewritten and pruned): their
/// sessions are denied from what the index remembers, every sweep until they expire.
fn deny_unrecorded(
    repo: &Repository,
    state: &StateDir,
    swept: &[GrantView],
    options: &SweepOptions,
    report: &mut SweepReport,
) -> Result<(), SweepError> {
    let local = state.local_grants()?;
    let known: HashSet<String> = swept
        .iter()
        .chain(&held_besides(repo, swept, &local, options.now)?)
        .map(|g| g.grant_id.to_string())
        .collect();
    let mut policy = None;
    for (id, local) in local {
        if known.contains(&id) || local.expires_at.is_some_and(|e| e <= options.now) {
            continue;
        }
        let policy = policy.get_or_insert_with(|| revoke::policy_now(repo));
        let Ok(grant_id) = id.parse::<GrantId>() else { continue };
        let denied = match (&local.target, local.provider.as_deref().map(ProviderKind::parse)) {
            (Some(target), Some(kind)) => {
                let reach = Reach {
                    profile: options.profile.as_deref(),
                    timeout: options.timeout,
                    policy: policy.as_ref().map_err(String::as_str),
                };
                let ending = Ending { grant_id: &grant_id, target, database: local.database.as_deref() };
                match provider::backend(&kind, &reach).end(&[ending], &BTreeMap::new()).remove(0) {
                    Ok(_) => Ok(format!("it was ended through its provider ({kind}) from the local index")),
                    Err(e) => Err(e),
                }
            }
            _ => Err("the local index does not say how to end it: end it at its provider".to_owned()),
        };
        let detail = match denied {
            Ok(done) => format!("no record of it is left in the ledger; {done}"),
            Err(e) => format!("no record of it is left in the ledger, and it could NOT be denied: {e}"),
        };
        report.items.push(SweepItem {
            grant_id,
            branch: local.branch.clone(),
            decision: Decision::Unrecorded,
            detail: Some(detail),
            outcome: None,
        });
    }
    Ok(())
}

/// Rebuilds the hooks' index: the open grants this clone holds. `swept`: the grants the sweep looks
/// after, when what the sweep read of them still stands.
fn update_index(
    repo: &Repository,
    state: &StateDir,
    me: &crate::grant::Principal,
    now: DateTime<Utc>,
    swept: Option<Vec<GrantView>>,
) -> Result<(), SweepError> {
    let lock = state.lock()?;
    let indexed = state.local_grants()?;
    let mut all = match swept {
        Some(all) => all,
        None => grants::swept(repo, now)?,
    };
    all.extend(held_besides(repo, &all, &indexed, now)?);
    let known: HashSet<String> = all.iter().map(|g| g.grant_id.to_string()).collect();
    // Entries the ledger knows nothing of stay until they expire: they are all that is left of
    // those grants (see `deny_unrecorded`).
    let unrecorded: LocalGrants = indexed
        .iter()
        .filter(|(id, g)| !known.contains(*id) && g.expires_at.is_some_and(|e| e > now))
        .map(|(id, g)| (id.clone(), g.clone()))
        .collect();
    // Keyring entries of grants that ended: those of this clone's index (expired ones the ledger
    // does not know included), and those of the requester's other grants that ended lately
    // (revoked elsewhere, from another clone, or dropped from a damaged index): lately is the
    // window of `grants::swept_after_end`, which says why a week.
    let lately = now - chrono::Duration::days(grants::SWEPT_AFTER_END_DAYS);
    let ended: Vec<GrantId> = all
        .iter()
        .filter(|g| !g.state.is_open())
        .filter(|g| {
            indexed.contains_key(g.grant_id.as_str())
                || (g.grantee().email == me.email && g.expires_at.unwrap_or(g.requested_at) > lately)
        })
        .map(|g| g.grant_id.clone())
        .chain(
            indexed
                .iter()
                .filter(|(id, g)| !known.contains(*id) && g.expires_at.is_some_and(|e| e <= now))
                .filter_map(|(id, _)| id.parse().ok()),
        )
        .collect();
    let mut open: LocalGrants = all
        .into_iter()
        .filter(|g| g.state.is_open() && g.grantee().email == me.email && g.grantee().host == me.host)
        .map(|g| {
            let local = LocalGrant {
                branch: g.branch.clone(),
                expires_at: g.expires_at,
                target: Some(g.target.clone()),
                provider: Some(g.provider.name().to_owned()),
                database: g.intent.database.clone(),
            };
            (g.grant_id.to_string(), local)
        })
        .collect();
    open.extend(unrecorded);
    state.set_local_grants(&lock, &open)?;
    // Only what has ended: an open grant that left the index (another host name or email than at
    // request time) keeps its credentials.
    for grant_id in &ended {
        let _ = secrets::delete_credentials(grant_id);
    }
    // Abandonment clocks of branches that no longer hold a grant have nothing left to time.
    let mut left = state.left_branches()?;
    let before = left.len();
    left.retain(|branch, _| open.values().any(|g| &g.branch == branch));
    if left.len() != before {
        state.set_left_branches(&lock, &left)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::backoff;

    #[test]
    fn the_first_retry_comes_after_30_seconds_and_the_wait_doubles_to_an_hour() {
        for (attempts, base) in [(1, 30), (2, 60), (3, 120), (4, 240), (7, 1920), (8, 3600), (30, 3600)] {
            for _ in 0..50 {
                let wait = backoff(attempts).num_seconds();
                assert!((base..=base + base / 5).contains(&wait), "{attempts} attempts: {wait} s");
            }
        }
    }
}

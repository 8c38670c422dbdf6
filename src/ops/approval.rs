//! Approvals: a second person signs before production access. A grant on a role (or database)
//! with `approvals = N` starts with a signed `request` record naming exactly what is asked;
//! approvers sign `approval` records naming the request's sha256; the grant is minted once a
//! quorum counts, and its records name the approvals it relied on. Nothing here trusts the
//! requester's tpa: the same [`evaluate`] decides for the requester, for `tpa approvals`, and for
//! the audit, from signed records and the policy alone.
//!
//! An approval counts only if its signature verifies with a key valid at the trust ref at its time,
//! its principal is an approver under the policy, it is neither the requester's principal nor
//! signed with the requester's key, it names this request's sha256, and it is inside the window.
//! One deny from such an approver ends the request.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use git2::Repository;
use serde::Serialize;

use crate::grant::{ApprovalDecision, GrantId, GrantState, Record, RecordKind};
use crate::ledger::signing::Signer;
use crate::ledger::{self, LedgerError};
use crate::ops::context;
use crate::ops::grants::{self, GrantView};
use crate::ops::ledger::InspectError;
use crate::policy::{ApprovalRules, Policy};

/// Where a request stands with its approvers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Quorum {
    /// Enough approvals count: their sha256, as the grant's records name them.
    Reached {
        approvals: Vec<String>,
    },
    Waiting {
        have: u32,
        need: u32,
        approvers: Vec<String>,
    },
    Denied {
        by: String,
        reason: String,
    },
    Lapsed,
    /// Cancelled, or already granted: nothing to wait for.
    Closed,
}

/// Counts the approvals of a request under `rules`. Pure: from the grant's signed records (each
/// with whether its signer is trusted) and the policy.
pub fn evaluate(grant: &GrantView, policy: &Policy, rules: &ApprovalRules, now: DateTime<Utc>) -> Quorum {
    let (Some(request), Some(request_sha)) = (&grant.request, &grant.request_sha256) else {
        return Quorum::Closed;
    };
    if !matches!(grant.state, GrantState::AwaitingApproval | GrantState::Lapsed) {
        return Quorum::Closed;
    }
    let approvers = policy.approvers(rules);
    let window = chrono::Duration::seconds(rules.window as i64);
    let mut counted: Vec<String> = Vec::new();
    let mut who: BTreeSet<&str> = BTreeSet::new();
    for approval in &grant.approvals {
        let record = &approval.record;
        let by = record.principal.email.as_str();
        if !counts(approval, request, request_sha, grant.requester_key.as_deref(), &approvers) {
            continue;
        }
        match record.decision {
            Some(ApprovalDecision::Deny) => {
                return Quorum::Denied { by: by.to_owned(), reason: record.reason.clone() };
            }
            Some(ApprovalDecision::Approve)
                if record.issued_at >= request.issued_at
                    && record.issued_at <= request.issued_at + window
                    && now <= record.issued_at + window
                    && who.insert(by) =>
            {
                counted.push(approval.sha256.clone());
            }
            _ => {}
        }
    }
    if counted.len() as u32 >= rules.approvals {
        return Quorum::Reached { approvals: counted };
    }
    if grant.state == GrantState::Lapsed {
        return Quorum::Lapsed;
    }
    Quorum::Waiting {
        have: counted.len() as u32,
        need: rules.approvals,
        approvers: approvers.into_iter().collect(),
    }
}

/// Whether an approval record may count at all (its decision and timing aside).
fn counts(
    approval: &grants::ApprovalView,
    request: &Record,
    request_sha: &str,
    requester_key: Option<&str>,
    approvers: &BTreeSet<String>,
) -> bool {
    let record = &approval.record;
    approval.verified
        && record.request_sha256.as_deref() == Some(request_sha)
        && approvers.contains(&record.principal.email)
        && record.principal.email != request.principal.email
        && approval.signer.as_deref() != requester_key
}

/// Why an approval, a self-approval, or a non-approver's approval: the audit's reading of each
/// approval record of a grant under the policy it was checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApprovalProblem {
    SelfApproval,
    NotAnApprover,
}

pub fn problem(
    grant: &GrantView,
    approval: &grants::ApprovalView,
    policy: &Policy,
    rules: &ApprovalRules,
) -> Option<ApprovalProblem> {
    let request = grant.request.as_ref()?;
    let record = &approval.record;
    if record.principal.email == request.principal.email
        || (approval.signer.is_some() && approval.signer == grant.requester_key)
    {
        return Some(ApprovalProblem::SelfApproval);
    }
    if !policy.approvers(rules).contains(&record.principal.email) {
        return Some(ApprovalProblem::NotAnApprover);
    }
    None
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("no request {0} in the ledger: `tpa approvals` lists the pending ones (after fetching)")]
    UnknownRequest(GrantId),
    #[error("grant {0} was not asked for with a request: there is nothing to approve")]
    NoRequest(GrantId),
    #[error("you asked for grant {0} yourself: someone else must approve it (no self-approval)")]
    SelfApproval(GrantId),
    #[error(
        "you ({me}) are not an approver of {what}: the policy at the trust ref names {}",
        approvers.join(", ")
    )]
    NotAnApprover { me: String, what: String, approvers: Vec<String> },
    #[error("request {grant_id} is {state}: {hint}")]
    NotPending { grant_id: GrantId, state: GrantState, hint: &'static str },
    #[error("the policy at the trust ref has no {0} any more")]
    TargetGone(String),
    #[error("a deny needs a reason: say why with --reason")]
    DenyWithoutReason,
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error(transparent)]
    Policy(#[from] crate::policy::LoadError),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error(transparent)]
    Context(#[from] context::ContextError),
    #[error("cannot write the approval record: {0}")]
    Ledger(#[from] LedgerError),
}

/// The rules a grant's request is judged by: those of its role or database in `policy`.
pub fn rules_for<'p>(policy: &'p Policy, grant: &GrantView) -> Option<&'p ApprovalRules> {
    policy.approval_rules(grant.intent.role.as_deref(), grant.intent.database.as_deref())
}

/// What is asked for, for people: the database, or the role.
pub fn what(grant: &GrantView) -> String {
    match (&grant.intent.database, &grant.intent.role) {
        (Some(database), _) => format!("database {database}"),
        (None, Some(role)) => format!("role {role}"),
        (None, None) => grant.target.clone(),
    }
}

/// Signs an approver's decision on a request and appends it: approve or deny a pending request,
/// or review a break-glass grant after the fact. Refused, with nothing written: self-approval,
/// a non-approver, a request that is not pending (or, for a review, not break-glass).
pub fn decide(
    repo: &Repository,
    grant_id: &GrantId,
    decision: ApprovalDecision,
    reason: Option<String>,
    signer: &Signer,
    now: DateTime<Utc>,
) -> Result<Record, ApprovalError> {
    let me = context::principal(repo)?;
    let grant =
        grants::find(repo, grant_id, now)?.ok_or_else(|| ApprovalError::UnknownRequest(grant_id.clone()))?;
    let (Some(request), Some(request_sha)) = (&grant.request, &grant.request_sha256) else {
        return Err(ApprovalError::NoRequest(grant_id.clone()));
    };
    let trust = crate::trust::TrustRef::resolve(repo)?;
    let (policy, _) = crate::policy::load(repo, &trust)?;
    let rules = rules_for(&policy, &grant).ok_or_else(|| ApprovalError::TargetGone(what(&grant)))?;
    let my_key = signer.public_key.fingerprint(ssh_key::HashAlg::Sha256).to_string();
    if me.email == request.principal.email || grant.requester_key.as_deref() == Some(my_key.as_str()) {
        return Err(ApprovalError::SelfApproval(grant_id.clone()));
    }
    let approvers = policy.approvers(rules);
    if !approvers.contains(&me.email) {
        return Err(ApprovalError::NotAnApprover {
            me: me.email,
            what: what(&grant),
            approvers: approvers.into_iter().collect(),
        });
    }
    // A break-glass grant is reviewed once it exists; anything else is decided while it waits.
    let decision = match (decision, grant.break_glass, grant.state) {
        (ApprovalDecision::Approve, true, _) => ApprovalDecision::Review,
        (d, false, GrantState::AwaitingApproval) => d,
        (_, _, state) => {
            let hint = match state {
                GrantState::Lapsed => "it got no quorum within its window; the requester asks again",
                GrantState::Denied => "an approver denied it",
                GrantState::Cancelled => "it was cancelled (its branch was merged or abandoned)",
                _ => "it was granted already; only break-glass grants are reviewed after the fact",
            };
            return Err(ApprovalError::NotPending { grant_id: grant_id.clone(), state, hint });
        }
    };
    if let Quorum::Denied { .. } = evaluate(&grant, &policy, rules, now) {
        return Err(ApprovalError::NotPending {
            grant_id: grant_id.clone(),
            state: GrantState::Denied,
            hint: "an approver denied it",
        });
    }
    let reason = match (decision, reason.filter(|r| !r.trim().is_empty())) {
        (_, Some(reason)) => reason,
        (ApprovalDecision::Deny, None) => return Err(ApprovalError::DenyWithoutReason),
        (_, None) => format!("{} by {}", decision.as_str(), me.email),
    };
    let record = Record {
        kind: RecordKind::Approval,
        issued_at: now.max(request.issued_at),
        principal: me,
        reason,
        request_sha256: Some(request_sha.clone()),
        decision: Some(decision),
        approve_by: None,
        break_glass: None,
        approvals: None,
        intent_sha256: None,
        delivery_key: None,
        expires_at: request.expires_at,
        ..request.clone()
    };
    ledger::append(repo, &record, signer)?;
    Ok(record)
}

/// A request waiting for approvals, or a break-glass grant waiting for its review, as approvers
/// see it.
#[derive(Clone, Debug, Serialize)]
pub struct Pending {
    pub grant_id: GrantId,
    pub state: GrantState,
    pub principal: String,
    pub what: String,
    pub ttl_seconds: Option<i64>,
    pub reason: String,
    pub branch: String,
    pub commit: String,
    pub base: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub break_glass: bool,
    pub quorum: Option<Quorum>,
    /// Whether the commit is on a remote-tracking ref: approvers can see the change.
    pub pushed: bool,
    /// `git log --oneline base..commit`, as the approver can see it.
    pub commits: Vec<String>,
}

/// Requests waiting for approvals and break-glass grants waiting for a review, newest first.
pub fn pending(repo: &Repository, now: DateTime<Utc>) -> Result<Vec<Pending>, ApprovalError> {
    let trust = crate::trust::TrustRef::resolve(repo)?;
    let (policy, _) = crate::policy::load(repo, &trust)?;
    let mut out = Vec::new();
    for grant in grants::for_approvers(repo, now)? {
        let unreviewed = grant.break_glass && !reviewed(&grant, &policy);
        if grant.state != GrantState::AwaitingApproval && !unreviewed {
            continue;
        }
        let quorum = rules_for(&policy, &grant).map(|rules| evaluate(&grant, &policy, rules, now));
        if matches!(quorum, Some(Quorum::Denied { .. })) {
            continue;
        }
        let commit = git2::Oid::from_str(&grant.commit).ok();
        out.push(Pending {
            ttl_seconds: grant.intent.expires_at.map(|e| (e - grant.requested_at).num_seconds()),
            what: what(&grant),
            pushed: commit.is_some_and(|c| on_a_remote(repo, c)),
            commits: commit.map(|c| commits_since(repo, grant.intent.base.as_deref(), c)).unwrap_or_default(),
            grant_id: grant.grant_id.clone(),
            state: grant.state,
            principal: grant.principal.clone(),
            reason: grant.reason.clone(),
            branch: grant.branch.clone(),
            commit: grant.commit.clone(),
            base: grant.intent.base.clone(),
            requested_at: grant.requested_at,
            break_glass: grant.break_glass,
            quorum,
        });
    }
    Ok(out)
}

/// Whether a break-glass grant has a counting review: a verified `review` by an approver who is
/// not the requester.
pub fn reviewed(grant: &GrantView, policy: &Policy) -> bool {
    let Some(rules) = rules_for(policy, grant) else { return false };
    let (Some(request), Some(request_sha)) = (&grant.request, &grant.request_sha256) else { return false };
    let approvers = policy.approvers(rules);
    grant.approvals.iter().any(|a| {
        a.record.decision == Some(ApprovalDecision::Review)
            && counts(a, request, request_sha, grant.requester_key.as_deref(), &approvers)
    })
}

/// Is `commit` on any remote-tracking ref (reachable from one)?
fn on_a_remote(repo: &Repository, commit: git2::Oid) -> bool {
    let Ok(refs) = repo.references_glob("refs/remotes/*") else { return false };
    refs.flatten()
        .filter_map(|r| r.target())
        .any(|tip| tip == commit || repo.graph_descendant_of(tip, commit).unwrap_or(false))
}

/// `<short id> <subject>` of the commits in `base..commit`, newest first, at most 50.
fn commits_since(repo: &Repository, base: Option<&str>, commit: git2::Oid) -> Vec<String> {
    let Ok(mut walk) = repo.revwalk() else { return Vec::new() };
    if walk.push(commit).is_err() {
        return Vec::new();
    }
    if let Some(base) = base.and_then(|b| git2::Oid::from_str(b).ok()) {
        let _ = walk.hide(base);
    }
    walk.flatten()
        .take(50)
        .filter_map(|oid| repo.find_commit(oid).ok())
        .map(|c| {
            let id = c.id().to_string();
            format!("{} {}", &id[..10], c.summary().ok().flatten().unwrap_or_default())
        })
        .collect()
}

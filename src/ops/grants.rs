//! Grants as the ledger tells them: records grouped by grant id, with a state. Read-only.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use git2::Repository;
use serde::Serialize;

use crate::grant::{GrantId, GrantState, Record, RecordKind};
use crate::ledger::verify::{CheckedRecord, FindingKind};
use crate::ops::ledger::{self, InspectError};
use crate::provider::{Ending, ProviderKind};

/// One grant, summarised from its records.
#[derive(Clone, Debug, Serialize)]
pub struct GrantView {
    pub grant_id: GrantId,
    pub state: GrantState,
    pub principal: String,
    pub role: Option<String>,
    pub target: String,
    pub provider: ProviderKind,
    pub branch: String,
    pub commit: String,
    pub reason: String,
    pub requested_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Seconds until expiry, 0 once expired; only for grants that were issued.
    pub seconds_left: Option<i64>,
    /// Every record of the grant verified (signature and trusted signer).
    pub verified: bool,
    /// The grant's intent record and the sha256 of its payload: what later records name. For a
    /// request that has no intent yet, the request record (and an empty sha256).
    #[serde(skip)]
    pub intent: Record,
    #[serde(skip)]
    pub intent_sha256: String,
    /// The request record, for grants asked for with one (approvals, break-glass).
    #[serde(skip)]
    pub request: Option<Record>,
    #[serde(skip)]
    pub request_sha256: Option<String>,
    /// Who signed the request (or the intent): a key fingerprint, for telling self-approval by key.
    #[serde(skip)]
    pub requester_key: Option<String>,
    /// Approval records naming this grant's request, oldest first.
    #[serde(skip)]
    pub approvals: Vec<ApprovalView>,
    /// Granted at once under `break_glass`.
    pub break_glass: bool,
    /// The request's signature verifies with a key trusted at the trust ref (what a broker checks).
    #[serde(skip)]
    pub request_verified: bool,
    /// The newest grant record, once AWS issued credentials.
    #[serde(skip)]
    pub issued: Option<Record>,
    /// Revoke records so far, oldest first (retries of a pending revocation add one each).
    #[serde(skip)]
    pub revokes: Vec<Record>,
}

impl GrantView {
    /// Whom the grant is for: the requester (a broker may have written its intent and grant).
    pub fn grantee(&self) -> &crate::grant::Principal {
        &self.request.as_ref().unwrap_or(&self.intent).principal
    }

    /// What the provider's backend needs to end it.
    pub fn ending(&self) -> Ending<'_> {
        Ending { grant_id: &self.grant_id, target: &self.target, database: self.intent.database.as_deref() }
    }
}

/// An approval record as counted: its payload's sha256 (what grant records name), and whether its
/// signer is trusted at the trust ref and valid at its time.
#[derive(Clone, Debug)]
pub struct ApprovalView {
    pub record: Record,
    pub sha256: String,
    pub verified: bool,
    pub signer: Option<String>,
}

/// Records whose bytes are what their signer signed. Trust in the signer is not required here:
/// that is `tpa verify`'s question; a forged or damaged record is never counted.
fn authentic(checked: &CheckedRecord) -> bool {
    checked.record.is_some()
        && !checked.findings.iter().any(|f| {
            matches!(
                f.kind,
                FindingKind::BadSignature
                    | FindingKind::WrongNamespace
                    | FindingKind::MalformedLine
                    | FindingKind::InvalidRecord
                    | FindingKind::WrongCommit
                    | FindingKind::IntentMismatch
            )
        })
}

pub fn list(repo: &Repository, now: DateTime<Utc>) -> Result<Vec<GrantView>, InspectError> {
    Ok(from_checked(ledger::records_lenient(repo)?.report.records, now))
}

/// The grants of records already read and checked, newest first. The records are copied: see
/// [`from_checked`] for a caller done with them.
pub fn from_records(records: &[CheckedRecord], now: DateTime<Utc>) -> Vec<GrantView> {
    from_checked(records.iter().filter(|c| authentic(c)).cloned().collect(), now)
}

/// The grants of `records`, newest first. The records move into the grants, and the ones no
/// grant keeps are dropped: a ledger of 300,000 records is then in memory once, not twice.
pub fn from_checked(records: Vec<CheckedRecord>, now: DateTime<Utc>) -> Vec<GrantView> {
    let mut by_grant: BTreeMap<GrantId, Vec<CheckedRecord>> = BTreeMap::new();
    for checked in records.into_iter().filter(authentic) {
        let grant_id = checked.record.as_ref().expect("authentic records parse").grant_id.clone();
        by_grant.entry(grant_id).or_default().push(checked);
    }
    let mut grants: Vec<GrantView> =
        by_grant.into_iter().filter_map(|(grant_id, checked)| summarise(grant_id, checked, now)).collect();
    grants.sort_by_key(|g| std::cmp::Reverse(g.requested_at));
    grants
}

fn summarise(grant_id: GrantId, mut checked: Vec<CheckedRecord>, now: DateTime<Utc>) -> Option<GrantView> {
    // Oldest first, so that the first of a kind is the earliest; records of the same instant in
    // the order `tpa log` lists them (whatever order they came in: the audit streams them by note).
    checked
        .sort_by_key(|c| (c.record.as_ref().map(|r| r.issued_at), c.annotated, std::cmp::Reverse(c.line_no)));
    let first_of =
        |kind: RecordKind| checked.iter().position(|c| c.record.as_ref().is_some_and(|r| r.kind == kind));
    let request_at = first_of(RecordKind::Request);
    // A grant's story starts with its request or intent; records without one are verify's business.
    let intent_at = first_of(RecordKind::Intent);
    let origin_at = intent_at.or(request_at)?;
    let issued_at = checked
        .iter()
        .enumerate()
        .filter(|(_, c)| c.record.as_ref().is_some_and(|r| r.kind == RecordKind::Grant))
        .max_by_key(|(_, c)| c.record.as_ref().map(|r| r.issued_at))
        .map(|(at, _)| at);
    let state = GrantState::of(checked.iter().filter_map(|c| c.record.as_ref()), now);
    let verified = checked.iter().all(|c| c.is_verified());
    let request_verified = request_at.is_some_and(|at| checked[at].is_verified());
    let requester_key = checked[request_at.unwrap_or(origin_at)].signer.clone();
    let intent_sha256 = intent_at.and_then(|at| checked[at].payload_sha256.clone()).unwrap_or_default();
    let request_sha256 = request_at.and_then(|at| checked[at].payload_sha256.clone());

    // Take out what the view keeps; the rest is dropped with `checked`.
    let mut take = |at: usize| checked[at].record.take();
    let request = request_at.and_then(&mut take);
    let intent = if Some(origin_at) == request_at { request.clone() } else { take(origin_at) }?;
    let issued = issued_at.and_then(&mut take);
    let mut approvals = Vec::new();
    let mut revokes = Vec::new();
    for c in &mut checked {
        match c.record.as_ref().map(|r| r.kind) {
            Some(RecordKind::Approval) => {
                let (Some(record), Some(sha256)) = (c.record.take(), c.payload_sha256.take()) else {
                    continue;
                };
                approvals.push(ApprovalView {
                    record,
                    sha256,
                    verified: c.findings.is_empty(),
                    signer: c.signer.take(),
                });
            }
            Some(RecordKind::Revoke) => revokes.extend(c.record.take()),
            _ => {}
        }
    }
    let expires_at = issued.as_ref().and_then(|g| g.expires_at);
    Some(GrantView {
        grant_id,
        state,
        // Whom the grant is for: the requester, also when a broker wrote its intent and grant.
        principal: request.as_ref().unwrap_or(&intent).principal.email.clone(),
        role: intent.role.clone(),
        target: intent.target.clone(),
        provider: ProviderKind::parse(&intent.provider),
        branch: intent.branch.clone(),
        commit: intent.commit.clone(),
        reason: intent.reason.clone(),
        requested_at: intent.issued_at,
        expires_at,
        seconds_left: expires_at.map(|at| (at - now).num_seconds().max(0)),
        verified,
        break_glass: intent.break_glass == Some(true),
        intent,
        intent_sha256,
        request,
        request_sha256,
        requester_key,
        approvals,
        request_verified,
        issued,
        revokes,
    })
}

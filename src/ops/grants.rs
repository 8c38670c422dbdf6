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
    /// The grant's intent record and the sha256 of its payload: what later records name.
    #[serde(skip)]
    pub intent: Record,
    #[serde(skip)]
    pub intent_sha256: String,
    /// The newest grant record, once AWS issued credentials.
    #[serde(skip)]
    pub issued: Option<Record>,
    /// Revoke records so far, oldest first (retries of a pending revocation add one each).
    #[serde(skip)]
    pub revokes: Vec<Record>,
}

impl GrantView {
    /// What the provider's backend needs to end it.
    pub fn ending(&self) -> Ending<'_> {
        Ending { grant_id: &self.grant_id, target: &self.target, database: self.intent.database.as_deref() }
    }
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
    Ok(from_records(&ledger::records_lenient(repo)?.report.records, now))
}

/// The grants of records already read and checked, newest first.
pub fn from_records(records: &[CheckedRecord], now: DateTime<Utc>) -> Vec<GrantView> {
    let mut by_grant: BTreeMap<GrantId, Vec<&CheckedRecord>> = BTreeMap::new();
    for checked in records.iter().filter(|c| authentic(c)) {
        let record = checked.record.as_ref().expect("authentic records parse");
        by_grant.entry(record.grant_id.clone()).or_default().push(checked);
    }
    let mut grants: Vec<GrantView> =
        by_grant.into_iter().filter_map(|(grant_id, checked)| summarise(grant_id, &checked, now)).collect();
    grants.sort_by_key(|g| std::cmp::Reverse(g.requested_at));
    grants
}

fn summarise(grant_id: GrantId, checked: &[&CheckedRecord], now: DateTime<Utc>) -> Option<GrantView> {
    let records: Vec<&Record> = checked.iter().filter_map(|c| c.record.as_ref()).collect();
    // A grant's story starts with its intent; records without one are verify's business.
    let intent_checked =
        checked.iter().find(|c| c.record.as_ref().is_some_and(|r| r.kind == RecordKind::Intent))?;
    let intent = intent_checked.record.as_ref()?;
    let issued = records.iter().filter(|r| r.kind == RecordKind::Grant).max_by_key(|r| r.issued_at);
    let state = GrantState::of(records.iter().copied(), now);
    let expires_at = issued.and_then(|g| g.expires_at);
    Some(GrantView {
        grant_id,
        state,
        principal: intent.principal.email.clone(),
        role: intent.role.clone(),
        target: intent.target.clone(),
        provider: ProviderKind::parse(&intent.provider),
        branch: intent.branch.clone(),
        commit: intent.commit.clone(),
        reason: intent.reason.clone(),
        requested_at: intent.issued_at,
        expires_at,
        seconds_left: expires_at.map(|at| (at - now).num_seconds().max(0)),
        verified: checked.iter().all(|c| c.is_verified()),
        intent: intent.clone(),
        intent_sha256: intent_checked.payload_sha256.clone().unwrap_or_default(),
        issued: issued.map(|r| (*r).clone()),
        revokes: {
            let mut revokes: Vec<Record> =
                records.iter().filter(|r| r.kind == RecordKind::Revoke).map(|r| (*r).clone()).collect();
            revokes.sort_by_key(|r| r.issued_at);
            revokes
        },
    })
}

//! Writing records outside a provider flow: the test plumbing behind `tpa debug`. Compiled only
//! with the `testing` feature; `tpa request` writes its records through the same ledger API.

use chrono::{DateTime, Duration, Utc};
use git2::Repository;

use crate::grant::{self, GrantId, Record, RecordKind, RevokeResult, RevokeTrigger};
use crate::ledger::signing::Signer;
use crate::ledger::{self, Appended, LedgerError};
use crate::ops::context::{self, ContextError, GitContext};
use crate::trust::TrustRef;

#[derive(Debug, thiserror::Error)]
pub enum RecordOpError {
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Writes an intent for HEAD's branch and commit, as `tpa request` does before minting.
pub fn record_intent(
    repo: &Repository,
    signer: &Signer,
    reason: &str,
    target: &str,
) -> Result<(Record, Appended), RecordOpError> {
    let trust = TrustRef::resolve(repo).ok();
    let ctx = context::capture(repo, trust.as_ref())?;
    let record = intent(ctx, trust.as_ref(), reason, target);
    let appended = ledger::append(repo, &record, signer)?;
    Ok((record, appended))
}

/// One intent per listed commit, each appended on its own (one notes commit each).
pub fn bulk_intents(repo: &Repository, signer: &Signer, commits: &[&str]) -> Result<usize, RecordOpError> {
    let trust = TrustRef::resolve(repo).ok();
    let ctx = context::capture(repo, trust.as_ref())?;
    for (i, commit) in commits.iter().enumerate() {
        let reason = format!("BENCH-{i}: bulk record");
        let mut record = intent(ctx.clone(), trust.as_ref(), &reason, "arn:aws:iam::123456789012:role/bench");
        record.commit = (*commit).to_owned();
        ledger::append(repo, &record, signer)?;
    }
    Ok(commits.len())
}

/// A commit to write a grant on, and the branch (full refname) to record; None: HEAD's branch.
pub struct BulkTarget<'a> {
    pub commit: &'a str,
    pub branch: Option<&'a str>,
}

/// One complete, ended grant per target, as `tpa request` and a merge-triggered `tpa revoke` would
/// leave it: an intent, a `grant` record (aws-sts, role `role`, 30 minutes) and a `revoke` record
/// (merged, done). Three appends per grant, each its own notes commit as in real life: the ledger
/// API appends one record at a time. Grants are spaced a minute apart, the newest ending an hour
/// before `now`, so every one reads as revoked. Their `base` is HEAD's, not each commit's.
pub fn bulk_grants(
    repo: &Repository,
    signer: &Signer,
    targets: &[BulkTarget<'_>],
    role: &str,
    role_arn: &str,
    now: DateTime<Utc>,
) -> Result<usize, RecordOpError> {
    let trust = TrustRef::resolve(repo).ok();
    let ctx = context::capture(repo, trust.as_ref())?;
    let count = targets.len() as i64;
    for (i, target) in targets.iter().enumerate() {
        let requested_at = now - Duration::hours(1) - Duration::minutes(count - i as i64);
        let reason = format!("BENCH-{i}: bulk grant");
        let mut intent = intent(ctx.clone(), trust.as_ref(), &reason, role_arn);
        intent.grant_id = GrantId::generate(requested_at);
        intent.issued_at = requested_at;
        intent.commit = target.commit.to_owned();
        if let Some(branch) = target.branch {
            intent.branch = branch.to_owned();
        }
        intent.provider = crate::provider::ProviderKind::AwsSts.name().to_owned();
        intent.role = Some(role.to_owned());
        intent.expires_at = Some(requested_at + Duration::minutes(30));
        let appended = ledger::append(repo, &intent, signer)?;

        let issued_at = requested_at + Duration::seconds(1);
        let granted = Record {
            kind: RecordKind::Grant,
            issued_at,
            expires_at: Some(issued_at + Duration::minutes(30)),
            credential_fingerprint: Some(grant::credential_fingerprint(&format!("ASIABENCH{i:011}"))),
            intent_sha256: Some(appended.payload_sha256),
            ..intent
        };
        ledger::append(repo, &granted, signer)?;

        let revoke = Record {
            kind: RecordKind::Revoke,
            issued_at: issued_at + Duration::minutes(10),
            trigger: Some(RevokeTrigger::Merged),
            result: Some(RevokeResult::Done),
            ..granted
        };
        ledger::append(repo, &revoke, signer)?;
    }
    Ok(targets.len())
}

fn intent(ctx: GitContext, trust: Option<&TrustRef>, reason: &str, target: &str) -> Record {
    let now = Utc::now();
    let policy_commit = trust.map(|t| t.commit.to_string());
    Record {
        provider: "test".to_owned(),
        target: target.to_owned(),
        ..ctx.record(RecordKind::Intent, &GrantId::generate(now), now, reason, policy_commit)
    }
}

/// Signs and appends a caller-made record as it is.
pub fn append_record(repo: &Repository, signer: &Signer, record: &Record) -> Result<Appended, RecordOpError> {
    Ok(ledger::append(repo, record, signer)?)
}

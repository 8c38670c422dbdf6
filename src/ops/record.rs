//! Writing records outside a provider flow: the test plumbing behind `tpa debug`. Compiled only
//! with the `testing` feature; `tpa request` writes its records through the same ledger API.

use chrono::Utc;
use git2::Repository;

use crate::grant::{GrantId, RECORD_VERSION, Record, RecordKind};
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

fn intent(ctx: GitContext, trust: Option<&TrustRef>, reason: &str, target: &str) -> Record {
    let now = Utc::now();
    Record {
        version: RECORD_VERSION,
        kind: RecordKind::Intent,
        grant_id: GrantId::generate(now),
        issued_at: now,
        principal: ctx.principal,
        reason: reason.to_owned(),
        repo: ctx.repo_url,
        branch: ctx.branch,
        commit: ctx.commit.to_string(),
        base: ctx.base.map(|b| b.to_string()),
        policy_commit: trust.map(|t| t.commit.to_string()),
        provider: "test".to_owned(),
        target: target.to_owned(),
        role: None,
        scope: None,
        expires_at: None,
        credential_fingerprint: None,
        intent_sha256: None,
        trigger: None,
        result: None,
        error: None,
    }
}

/// Signs and appends a caller-made record as it is.
pub fn append_record(repo: &Repository, signer: &Signer, record: &Record) -> Result<Appended, RecordOpError> {
    Ok(ledger::append(repo, record, signer)?)
}

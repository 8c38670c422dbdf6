//! Webhooks around the flows: the policy's `[[notify]]` entries read from the trust ref, events made
//! from records (metadata only: a notify::Event has no field a secret could go in), failed optional
//! deliveries queued in the state dir and retried by later commands.

use chrono::{DateTime, Utc};
use git2::Repository;

use crate::grant::Record;
use crate::notify::{self, Event, Options, Which};
use crate::policy::{NotifyEvent, NotifyPolicy};
use crate::state::StateDir;
use crate::trust::TrustRef;

/// A required webhook that could not be told: the grant must not be handed out.
#[derive(Debug)]
pub struct RequiredFailed {
    /// `host: error` for each failed required entry.
    pub failures: Vec<String>,
}

fn entries(repo: &Repository) -> Vec<NotifyPolicy> {
    read_entries(repo).unwrap_or_default()
}

fn read_entries(repo: &Repository) -> Result<Vec<NotifyPolicy>, String> {
    let trust = TrustRef::resolve(repo).map_err(|e| e.to_string())?;
    crate::policy::load(repo, &trust).map(|(p, _)| p.notify).map_err(|e| e.to_string())
}

/// The event of a record: who, what, where, why, until when. Never a secret.
pub fn event(record: &Record, kind: NotifyEvent, detail: Option<String>) -> Event {
    Event {
        kind,
        grant_id: record.grant_id.to_string(),
        principal: record.principal.email.clone(),
        role_or_database: record
            .database
            .clone()
            .or_else(|| record.role.clone())
            .unwrap_or_else(|| record.target.clone()),
        branch: record.branch.clone(),
        commit: record.commit.clone(),
        reason: record.reason.clone(),
        expires_at: record.expires_at,
        detail,
        repo: record.repo.clone(),
    }
}

/// Tells the `required = true` webhooks about a grant, before its secret is handed out.
pub fn required(repo: &Repository, grant: &Record, kind: NotifyEvent) -> Result<(), RequiredFailed> {
    // Fail closed: a policy that cannot be read now may have required webhooks.
    let entries = read_entries(repo).map_err(|e| RequiredFailed {
        failures: vec![format!("the policy's [[notify]] entries cannot be read: {e}")],
    })?;
    let outcome = notify::notify(&entries, &event(grant, kind, None), Which::Required, &Options::default());
    let failures: Vec<String> = outcome
        .failed_required()
        .map(|d| {
            format!("{}: {}", d.host, d.result.as_ref().err().map(ToString::to_string).unwrap_or_default())
        })
        .collect();
    if failures.is_empty() { Ok(()) } else { Err(RequiredFailed { failures }) }
}

/// Tells the optional webhooks (and, for events other than a grant, the required ones too: there
/// is nothing left to withhold); what fails is queued. Returns the hosts that failed.
pub fn tell(
    repo: &Repository,
    record: &Record,
    kind: NotifyEvent,
    detail: Option<String>,
    now: DateTime<Utc>,
) -> Vec<String> {
    let entries = entries(repo);
    if entries.is_empty() {
        return Vec::new();
    }
    // A grant's required webhooks were told before it was handed out (fail closed).
    let which = if matches!(kind, NotifyEvent::Grant | NotifyEvent::BreakGlass) {
        Which::Optional
    } else {
        Which::All
    };
    let event = event(record, kind, detail);
    let Ok(state) = StateDir::open(repo) else { return vec!["the state directory cannot be opened".into()] };
    match notify::notify_or_queue(state.path(), &entries, &event, which, now, &Options::default()) {
        Ok(outcome) => {
            outcome.deliveries.iter().filter(|d| d.result.is_err()).map(|d| d.host.clone()).collect()
        }
        Err(e) => vec![format!("queue: {e}")],
    }
}

/// Retries queued notifications that are due. Best effort; returns how many are still waiting.
pub fn retry_queued(repo: &Repository, now: DateTime<Utc>) -> usize {
    let entries = entries(repo);
    let Ok(state) = StateDir::open(repo) else { return 0 };
    notify::retry_due(state.path(), &entries, now, &Options::default())
        .map(|r| r.remaining.len())
        .unwrap_or(0)
}

/// Tells the webhooks about revocations that ended (revoke) or gave up (irrevocable).
pub fn tell_revoked(
    repo: &Repository,
    outcomes: &[crate::ops::revoke::Revoked],
    now: DateTime<Utc>,
) -> Vec<String> {
    use crate::grant::RevokeResult;
    let relevant: Vec<_> = outcomes
        .iter()
        .filter(|o| {
            o.record_error.is_none()
                && matches!(o.result, Some(RevokeResult::Done | RevokeResult::Irrevocable))
        })
        .collect();
    if relevant.is_empty() || entries(repo).is_empty() {
        return Vec::new();
    }
    let ids: Vec<_> = relevant.iter().map(|o| o.grant_id.clone()).collect();
    let Ok(all) = crate::ops::grants::find_all(repo, &ids, now) else {
        return vec!["the ledger cannot be read".into()];
    };
    let mut failed = Vec::new();
    for outcome in relevant {
        let Some(grant) = all.iter().find(|g| g.grant_id == outcome.grant_id) else { continue };
        let record = grant.revokes.last().unwrap_or(&grant.intent);
        let kind = match outcome.result {
            Some(RevokeResult::Irrevocable) => NotifyEvent::Irrevocable,
            _ => NotifyEvent::Revoke,
        };
        let mut record = record.clone();
        // The grantee, not the revoker, is who the event is about.
        record.principal = grant.grantee().clone();
        failed.extend(tell(repo, &record, kind, outcome.note.clone(), now));
    }
    failed
}

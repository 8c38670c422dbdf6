//! What happens after a command wrote records, in one place, for `tpa request`, `tpa revoke`, the
//! sweep and the hooks alike: let git pack what libgit2 wrote, push the ledger when the policy says
//! `sync = "push"`, tell the webhooks (failures queued), retry queued notifications that are due,
//! and forget keyring copies of grants that ended. Never fails the command: what cannot be done
//! now is reported and done later (`tpa sync`, the next command's retry).

use chrono::{DateTime, Utc};
use git2::Repository;

use crate::grant::Record;
use crate::ops::revoke::Revoked;
use crate::policy::NotifyEvent;

/// What was just written.
pub enum Written<'a> {
    /// A grant was issued (its grant record).
    Granted(&'a Record),
    /// Revocations were recorded (done, pending or irrevocable).
    Revoked(&'a [Revoked]),
}

/// What could not be done now, for the CLI to say.
#[derive(Debug, Default)]
pub struct Finished {
    /// `(remote, error)` for each remote the ledger could not be pushed to.
    pub unpushed: Vec<(String, String)>,
    /// Webhook hosts whose notification failed and was queued.
    pub queued: Vec<String>,
}

pub fn after_write(repo: &Repository, written: &[Written<'_>], now: DateTime<Utc>) -> Finished {
    let mut finished = Finished::default();
    let wrote = written.iter().any(|w| match w {
        Written::Granted(_) => true,
        Written::Revoked(outcomes) => outcomes.iter().any(|o| o.result.is_some()),
    });
    // A revocation asked of the broker does nothing until the broker sees it.
    let for_the_broker = written.iter().any(|w| {
        matches!(w, Written::Revoked(outcomes)
            if outcomes.iter().any(|o| o.result == Some(crate::grant::RevokeResult::Requested)))
    });
    if wrote {
        housekeeping(repo);
        if let Some(results) =
            crate::ops::sync::push_if_policy_says(repo, std::time::Duration::from_secs(15), for_the_broker)
        {
            finished.unpushed = results
                .into_iter()
                .filter(|r| !r.pushed)
                .map(|r| (r.remote, r.error.unwrap_or_else(|| "unknown error".into())))
                .collect();
        }
    }
    for w in written {
        let queued = match w {
            Written::Granted(record) => {
                let event = if record.break_glass == Some(true) {
                    NotifyEvent::BreakGlass
                } else {
                    NotifyEvent::Grant
                };
                let queued = crate::ops::notifications::tell(repo, record, event, None, now);
                if let Ok(me) = crate::ops::context::principal(repo) {
                    crate::ops::deliver::forget_ended(repo, &me.email, now);
                }
                queued
            }
            Written::Revoked(outcomes) => crate::ops::notifications::tell_revoked(repo, outcomes, now),
        };
        finished.queued.extend(queued);
    }
    // Notifications that failed earlier (queued) go out when due.
    crate::ops::notifications::retry_queued(repo, now);
    finished
}

/// Lets git pack loose objects when it would after its own commands: every append writes a blob,
/// two trees and a commit with libgit2, which never runs `git gc --auto`. Detached and silent; it
/// does nothing below git's threshold.
pub fn housekeeping(repo: &Repository) {
    let dir = repo.workdir().unwrap_or_else(|| repo.path());
    let _ = std::process::Command::new("git")
        .args(["gc", "--auto", "--quiet"])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

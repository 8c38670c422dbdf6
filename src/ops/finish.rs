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
                crate::ops::deliver::forget_expired(repo, now);
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
/// two trees and a commit with libgit2, which never runs `git gc --auto`. Detached and silent, and
/// started only when git's own test says it has work (starting git to find out costs every
/// request a process).
pub fn housekeeping(repo: &Repository) {
    if !gc_is_due(repo) {
        return;
    }
    let dir = repo.workdir().unwrap_or_else(|| repo.path());
    let _ = std::process::Command::new("git")
        .args(["gc", "--auto", "--quiet"])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// The test `git gc --auto` makes before it does anything (builtin/gc.c, `need_to_gc`): more loose
/// objects in `objects/17` than `gc.auto` / 256 (one fan-out directory stands for all 256), or
/// more packs than `gc.autoPackLimit`. When in doubt (config unreadable), git decides.
fn gc_is_due(repo: &Repository) -> bool {
    let Ok(config) = crate::gitconfig::GitConfig::of(repo) else { return true };
    let (Some(auto), Some(pack_limit)) =
        (config.get_int("gc.auto", 6700), config.get_int("gc.autoPackLimit", 50))
    else {
        return true;
    };
    if auto <= 0 {
        return false; // gc.auto = 0: the user switched automatic packing off
    }
    // The common dir: a linked worktree's own git dir has no objects.
    let objects = repo.commondir().join("objects");
    let loose_limit = (auto + 255) / 256;
    let loose = std::fs::read_dir(objects.join("17")).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name().len() == 38
                    && e.file_name().as_encoded_bytes().iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            })
            .count()
    });
    if loose as i64 > loose_limit {
        return true;
    }
    if pack_limit <= 0 {
        return false;
    }
    let packs = std::fs::read_dir(objects.join("pack")).map_or(0, |entries| {
        let names: std::collections::HashSet<std::path::PathBuf> =
            entries.filter_map(Result::ok).map(|e| e.file_name().into()).collect();
        names
            .iter()
            .filter(|n| n.extension() == Some("pack".as_ref()) && !names.contains(&n.with_extension("keep")))
            .count()
    });
    packs as i64 > pack_limit
}

#[cfg(test)]
mod tests {
    use super::gc_is_due;

    fn git_config(dir: &std::path::Path, key: &str, value: &str) {
        let done = std::process::Command::new("git").arg("-C").arg(dir).args(["config", key, value]).status();
        assert!(done.unwrap().success());
        crate::gitconfig::GitConfig::invalidate();
    }

    #[test]
    fn gc_is_due_when_git_would_say_so_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        // The common dir: a linked worktree's own git dir has no objects.
        let objects = repo.commondir().join("objects");
        assert!(!gc_is_due(&repo), "an empty repository");
        // gc.auto = 512: more than 2 loose objects in objects/17 stand for more than 512 in all.
        git_config(dir.path(), "gc.auto", "512");
        std::fs::create_dir_all(objects.join("17")).unwrap();
        for name in ["a", "b"] {
            std::fs::write(objects.join("17").join(name.repeat(38)), b"").unwrap();
        }
        std::fs::write(objects.join("17").join("not-an-object"), b"").unwrap();
        assert!(!gc_is_due(&repo), "2 loose objects are not more than 2");
        std::fs::write(objects.join("17").join("c".repeat(38)), b"").unwrap();
        assert!(gc_is_due(&repo), "3 are");
        git_config(dir.path(), "gc.auto", "0");
        assert!(!gc_is_due(&repo), "gc.auto = 0 switches it off");

        git_config(dir.path(), "gc.auto", "6700");
        git_config(dir.path(), "gc.autoPackLimit", "1");
        for name in ["pack-1.pack", "pack-2.pack", "pack-2.keep"] {
            std::fs::write(objects.join("pack").join(name), b"").unwrap();
        }
        assert!(!gc_is_due(&repo), "a kept pack does not count");
        std::fs::remove_file(objects.join("pack").join("pack-2.keep")).unwrap();
        assert!(gc_is_due(&repo), "2 packs are more than 1");
    }
}

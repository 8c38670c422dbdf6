//! `tpa sync`: share the ledger through the repository's remotes. For each remote: fetch its
//! `refs/notes/tpa` into `refs/notes/remotes/<remote>/tpa`, merge it into the local ledger at the
//! level of records (notes::merge: the union, nothing lost), and push the result with
//! compare-and-swap (`--force-with-lease` on the tip just merged), fetching and merging again when
//! another clone pushed first. git does the transport, so every remote, URL and credential helper
//! that works for `git push` works here; nothing is built from strings a shell would read.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use git2::{Oid, Repository};
use serde::Serialize;

use crate::ledger::notes::{self, Merged, NOTES_REF, NotesError};
use crate::policy::SyncMode;

/// Rounds of fetch, merge and push against one remote before giving up: each lost round means
/// another clone pushed in between, so this bounds contention, not correctness.
const MAX_ROUNDS: usize = 12;

#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Only these remotes (default: every remote).
    pub remotes: Option<Vec<String>>,
    /// Bounds each git fetch and push.
    pub timeout: Duration,
    /// May git ask for credentials on the terminal?
    pub interactive: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("git error: {0}")]
    Git(#[from] git2::Error),
    #[error(transparent)]
    Notes(#[from] NotesError),
    #[error("this repository has no remote to share the ledger with: add one with `git remote add`")]
    NoRemote,
    #[error("no remote named {0}")]
    UnknownRemote(String),
}

/// What happened with one remote.
#[derive(Clone, Debug, Serialize)]
pub struct RemoteSync {
    pub remote: String,
    /// `up-to-date`, `fast-forward`, `merged`, or `none` (the remote has no ledger yet).
    pub merged: &'static str,
    /// The remote now has every local record.
    pub pushed: bool,
    /// Fetch-merge-push rounds it took (more than one: another clone pushed meanwhile).
    pub rounds: usize,
    pub error: Option<String>,
}

pub fn sync(repo: &Repository, options: &SyncOptions) -> Result<Vec<RemoteSync>, SyncError> {
    sync_with(repo, options, Order::FetchFirst)
}

/// Whether a remote's round starts with the fetch or with the push.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// `tpa sync`: bringing the other clones' records in is half the point.
    FetchFirst,
    /// After this clone wrote records: the push alone, when the remote still has what this clone
    /// last fetched or pushed (the lease says so, atomically) and the local ledger already holds
    /// it. Otherwise the lease is lost and the round goes on as FetchFirst. Saves a fetch, a
    /// round trip to the remote, on every request.
    PushFirst,
}

fn sync_with(repo: &Repository, options: &SyncOptions, order: Order) -> Result<Vec<RemoteSync>, SyncError> {
    let all =
        crate::gitconfig::GitConfig::of(repo).map_err(|e| git2::Error::from_str(&e.to_string()))?.remotes();
    if all.is_empty() {
        return Err(SyncError::NoRemote);
    }
    let chosen = match &options.remotes {
        Some(names) => {
            for name in names {
                if !all.contains(name) {
                    return Err(SyncError::UnknownRemote(crate::escape::text(name)));
                }
            }
            names.clone()
        }
        None => all,
    };
    let mut out = Vec::new();
    for remote in chosen {
        // One remote's trouble (a ref that is no notes commit, say) must not stop the others.
        out.push(sync_remote(repo, &remote, options, order).unwrap_or_else(|e| RemoteSync {
            remote: remote.clone(),
            merged: "none",
            pushed: false,
            rounds: 1,
            error: Some(e.to_string()),
        }));
    }
    Ok(out)
}

/// Pushes the ledger when the policy says `sync = "push"` (or `always`: what was written is for
/// others to act on, such as a request to the broker): for `tpa request`, `tpa revoke` and the
/// sweep. None when the policy does not ask for it (or cannot be read, or there is no remote).
pub fn push_if_policy_says(repo: &Repository, timeout: Duration, always: bool) -> Option<Vec<RemoteSync>> {
    let trust = crate::trust::TrustRef::resolve(repo).ok()?;
    let (policy, _) = crate::policy::load(repo, &trust).ok()?;
    if (policy.sync != SyncMode::Push && !always)
        || crate::gitconfig::GitConfig::of(repo).ok()?.remotes().is_empty()
    {
        return None;
    }
    let options = SyncOptions { remotes: None, timeout, interactive: false };
    Some(sync_with(repo, &options, Order::PushFirst).unwrap_or_else(|e| {
        vec![RemoteSync {
            remote: "(all)".into(),
            merged: "none",
            pushed: false,
            rounds: 0,
            error: Some(e.to_string()),
        }]
    }))
}

fn tracking_ref(remote: &str) -> String {
    format!("refs/notes/remotes/{remote}/tpa")
}

fn sync_remote(
    repo: &Repository,
    remote: &str,
    options: &SyncOptions,
    order: Order,
) -> Result<RemoteSync, SyncError> {
    let mut report =
        RemoteSync { remote: remote.to_owned(), merged: "none", pushed: false, rounds: 0, error: None };
    if order == Order::PushFirst
        && let (Some(theirs), Some(local)) = (remote_tip(repo, remote), notes::tip(repo)?)
    {
        // Equal (nothing new here, as far as this clone knows) or unrelated: the round below
        // fetches first and finds out.
        if local != theirs && repo.graph_descendant_of(local, theirs).unwrap_or(false) {
            report.rounds = 1;
            match push_leased(repo, options, remote, local, Some(theirs)) {
                Ok(()) => {
                    report.pushed = true;
                    return Ok(report);
                }
                // Another clone pushed since: fetch and merge, as `tpa sync` does.
                Err(GitFailure::Failed(text)) if is_lost_lease(&text) => {}
                Err(e) => {
                    report.error = Some(format!("push: {e}"));
                    return Ok(report);
                }
            }
        }
    }
    for round in 0..MAX_ROUNDS {
        report.rounds += 1;
        let refspec = format!("+{NOTES_REF}*:refs/notes/remotes/{remote}/tpa*");
        if let Err(e) = git(
            repo,
            options,
            &["fetch", "--no-tags", "--quiet", "--prune", "--no-write-fetch-head", remote, &refspec],
        ) {
            report.error = Some(format!("fetch: {e}"));
            return Ok(report);
        }
        let theirs = repo.refname_to_id(&tracking_ref(remote)).ok();
        if let Some(theirs) = theirs {
            let merged = notes::merge(repo, theirs)?;
            // The first round's merge is what this sync brought in; later rounds only catch up.
            if round == 0 || report.merged == "up-to-date" {
                report.merged = match merged {
                    Merged::UpToDate => "up-to-date",
                    Merged::FastForward(_) => "fast-forward",
                    Merged::Union(_) => "merged",
                };
            }
        }
        let Some(local) = notes::tip(repo)? else {
            report.pushed = true; // nothing to share
            return Ok(report);
        };
        if Some(local) == theirs {
            report.pushed = true;
            return Ok(report);
        }
        match push_leased(repo, options, remote, local, theirs) {
            Ok(()) => {
                report.pushed = true;
                report.error = None;
                return Ok(report);
            }
            Err(GitFailure::Failed(text)) if is_lost_lease(&text) => {
                report.error = Some("another clone pushed first".into());
                pause(round);
            }
            Err(e) => {
                report.error = Some(format!("push: {e}"));
                return Ok(report);
            }
        }
    }
    report.error = Some(format!(
        "other clones kept pushing: gave up after {} rounds; run `tpa sync` again",
        report.rounds
    ));
    Ok(report)
}

/// Pushes `local` to the remote's ledger only if the remote still has `theirs` there (none: no
/// ledger yet), then remembers what the remote has now, so that the next lease starts from it.
fn push_leased(
    repo: &Repository,
    options: &SyncOptions,
    remote: &str,
    local: Oid,
    theirs: Option<Oid>,
) -> Result<(), GitFailure> {
    let lease =
        format!("--force-with-lease={NOTES_REF}:{}", theirs.map(|t| t.to_string()).unwrap_or_default());
    let refspec = format!("{local}:{NOTES_REF}");
    git(repo, options, &["push", "--quiet", "--porcelain", &lease, remote, &refspec])?;
    // Losing this only costs the next push a fetch: the lease then fails and the round refetches.
    let _ = repo.reference(&tracking_ref(remote), local, true, "tpa sync: pushed");
    Ok(())
}

fn is_lost_lease(output: &str) -> bool {
    // Not any "rejected": a server hook or a protected ref refusing the push is no race to retry.
    ["stale info", "fetch first", "non-fast-forward", "cannot lock ref"].iter().any(|s| output.contains(s))
}

fn pause(round: usize) {
    use rand_core::RngCore;
    let cap = 50u64 << round.min(5);
    std::thread::sleep(Duration::from_millis(rand_core::OsRng.next_u64() % cap + 10));
}

#[derive(Debug)]
enum GitFailure {
    Start(std::io::Error),
    TimedOut(Duration),
    Failed(String),
}

impl std::fmt::Display for GitFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitFailure::Start(e) => write!(f, "cannot run git: {e}"),
            GitFailure::TimedOut(d) => write!(f, "git did not finish within {} s (offline?)", d.as_secs()),
            GitFailure::Failed(text) => f.write_str(text.trim()),
        }
    }
}

/// Runs git in the repository with a deadline; its stderr and stdout are the failure's text.
fn git(repo: &Repository, options: &SyncOptions, args: &[&str]) -> Result<(), GitFailure> {
    let dir: PathBuf = repo.workdir().unwrap_or_else(|| repo.path()).to_owned();
    let mut command = Command::new("git");
    command.arg("-C").arg(&dir).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if !options.interactive {
        command.env("GIT_TERMINAL_PROMPT", "0");
    }
    let mut child = command.spawn().map_err(GitFailure::Start)?;
    let deadline = Instant::now() + options.timeout;
    loop {
        match child.try_wait().map_err(GitFailure::Start)? {
            Some(status) => {
                let output = child.wait_with_output().map_err(GitFailure::Start)?;
                if status.success() {
                    return Ok(());
                }
                let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
                text.push_str(&String::from_utf8_lossy(&output.stdout));
                return Err(GitFailure::Failed(crate::escape::controls(&text)));
            }
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(GitFailure::TimedOut(options.timeout));
            }
            // A deadline on a child process: std has no wait-with-timeout. Half the interval is
            // added to every fetch and push a request waits for, so it is short.
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// The tracking ref's tip for `remote`, if fetched.
pub fn remote_tip(repo: &Repository, remote: &str) -> Option<Oid> {
    repo.refname_to_id(&tracking_ref(remote)).ok()
}

/// Fetches the remote's branches into its remote-tracking refs (so a broker or an approver sees
/// the change a request names). Best effort.
pub fn fetch_branches(repo: &Repository, remote: &str, timeout: Duration) {
    let options = SyncOptions { remotes: None, timeout, interactive: false };
    let _ = git(repo, &options, &["fetch", "--no-tags", "--quiet", "--no-write-fetch-head", "--", remote]);
}

/// Creates `refname` on the remote, pointing at a blob of `bytes`, only if it does not exist
/// there yet (compare-and-swap against "absent"). Ok(false): it exists (someone else was first).
pub fn create_remote_ref(
    repo: &Repository,
    remote: &str,
    refname: &str,
    bytes: &[u8],
    timeout: Duration,
) -> Result<bool, String> {
    let blob = repo.blob(bytes).map_err(|e| e.to_string())?;
    let options = SyncOptions { remotes: None, timeout, interactive: false };
    let lease = format!("--force-with-lease={refname}:");
    let refspec = format!("{blob}:{refname}");
    match git(repo, &options, &["push", "--quiet", "--porcelain", &lease, "--", remote, &refspec]) {
        Ok(()) => Ok(true),
        Err(GitFailure::Failed(text)) if is_lost_lease(&text) || text.contains("already exists") => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// Deletes `refname` on the remote (absent already is fine).
pub fn delete_remote_ref(
    repo: &Repository,
    remote: &str,
    refname: &str,
    timeout: Duration,
) -> Result<(), String> {
    let options = SyncOptions { remotes: None, timeout, interactive: false };
    let refspec = format!(":{refname}");
    git(repo, &options, &["push", "--quiet", "--", remote, &refspec]).map_err(|e| e.to_string())
}

/// The remote's refs under `prefix`.
pub fn list_remote_refs(
    repo: &Repository,
    remote: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let dir: PathBuf = repo.workdir().unwrap_or_else(|| repo.path()).to_owned();
    let pattern = format!("{prefix}*");
    let mut child = Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args(["ls-remote", "--refs", "--", remote, &pattern])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("git ls-remote did not finish within {} s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(crate::escape::controls(String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t').map(|(_, name)| name.to_owned()))
        .filter(|name| name.starts_with(prefix))
        .collect())
}

/// The blob `refname` points at on the remote, fetched (at most `max` bytes); None when the
/// remote has no such ref.
pub fn fetch_remote_blob(
    repo: &Repository,
    remote: &str,
    refname: &str,
    max: usize,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, String> {
    if !list_remote_refs(repo, remote, refname, timeout)?.iter().any(|r| r == refname) {
        return Ok(None);
    }
    let options = SyncOptions { remotes: None, timeout, interactive: false };
    let refspec = format!("+{refname}:{refname}");
    git(repo, &options, &["fetch", "--no-tags", "--quiet", "--no-write-fetch-head", "--", remote, &refspec])
        .map_err(|e| e.to_string())?;
    let oid = repo.refname_to_id(refname).map_err(|e| e.to_string())?;
    let (size, _) = repo.odb().and_then(|odb| odb.read_header(oid)).map_err(|e| e.to_string())?;
    if size > max {
        return Err(format!("{refname} holds {size} bytes: more than a delivery ever is"));
    }
    let bytes = repo.find_blob(oid).map_err(|e| e.to_string())?.content().to_vec();
    // Only the ciphertext was here; the local copy of the ref goes.
    let _ = repo.find_reference(refname).and_then(|mut r| r.delete());
    Ok(Some(bytes))
}

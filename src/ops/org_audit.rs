//! `tpa audit --repos FILE` / `--repos-dir DIR`: the audit of many repositories in one report.
//! Each repository's protected branch, other branches and ledger are fetched into a cache (bare,
//! partial: `--filter=blob:none`, then only the blobs the audit reads: the notes, every version of
//! `.tpa/`, and the changes of open grants' branches that the merge checks diff), and audited by the
//! single-repository audit as it is (ops::audit), a few at a time. A repository that cannot be
//! fetched or audited is a finding of the report (`repo_unreachable`, `audit_failed`), never an
//! abort. Git runs as the `git` binary (credential helpers, ssh config and all), with arguments,
//! never a shell string; no source may start with `-`, and the `ext::` transport is refused.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use git2::Repository;
use serde::Serialize;

use crate::audit::{self, Category, Finding, Severity};
use crate::grant::{GrantState, sha256_hex};
use crate::ops::audit::{AuditOptions, AuditReport, Shared};
use crate::ops::context::strip_credentials;

#[derive(Clone, Debug)]
pub struct OrgOptions {
    /// Where each repository's bare, partial copy is kept between runs.
    pub cache: PathBuf,
    /// Repositories fetched and audited at once.
    pub jobs: usize,
    /// Bounds each git command.
    pub timeout: Duration,
    pub audit: AuditOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum OrgError {
    #[error("cannot read the list of repositories {path}: {source}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} lists no repository: write one remote URL or local path a line")]
    Empty { path: PathBuf },
    #[error("cannot create the cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One line of `--repos FILE` (blank lines and `#` comments skipped). A relative path is taken
/// from the list file's directory.
pub fn read_list(path: &Path) -> Result<Vec<String>, OrgError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| OrgError::List { path: path.to_owned(), source })?;
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let sources: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let is_url = l.contains("://") || (l.contains(':') && !l.starts_with('/') && !l.starts_with('.'));
            match is_url || Path::new(l).is_absolute() {
                true => l.to_owned(),
                false => base.join(l).display().to_string(),
            }
        })
        .collect();
    if sources.is_empty() {
        return Err(OrgError::Empty { path: path.to_owned() });
    }
    Ok(sources)
}

/// Every git repository under `dir` (a bare one, or a directory with `.git`), not descending into
/// repositories found, nor following symbolic links.
pub fn find_repos(dir: &Path) -> Result<Vec<String>, OrgError> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(current) = stack.pop() {
        let entries =
            std::fs::read_dir(&current).map_err(|source| OrgError::List { path: current.clone(), source })?;
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else { continue };
            if !kind.is_dir() {
                continue;
            }
            let path = entry.path();
            let is_bare =
                path.join("HEAD").is_file() && path.join("objects").is_dir() && path.join("refs").is_dir();
            if path.join(".git").exists() || is_bare {
                found.push(path.display().to_string());
            } else {
                stack.push(path);
            }
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(OrgError::Empty { path: dir.to_owned() });
    }
    Ok(found)
}

/// What became of one repository.
#[derive(Clone, Debug, Serialize)]
pub struct RepoAudit {
    /// As listed, with any user:password@ removed.
    pub source: String,
    /// `audited`, `unreachable` (could not be fetched) or `failed` (fetched, but the audit could
    /// not run: no trust ref, unreadable allowed_signers...).
    pub status: &'static str,
    /// This repository's findings (the audit's, or the one saying why there is no audit).
    pub findings: Vec<Finding>,
    /// The audit itself, as `tpa audit --json` prints it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<AuditReport>,
    pub seconds: f64,
    /// The cached copy that was audited.
    #[serde(skip)]
    pub cache: Option<PathBuf>,
}

/// Who had access where: one line per principal, repository and target.
#[derive(Clone, Debug, Serialize)]
pub struct Access {
    pub principal: String,
    pub repo: String,
    pub target: String,
    pub role: Option<String>,
    pub grants: usize,
    /// Seconds credentials were usable, summed.
    pub seconds: i64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub repos: usize,
    pub audited: usize,
    pub unreachable: usize,
    pub failed: usize,
    pub grants: usize,
    pub records: usize,
    pub errors: usize,
    pub warnings: usize,
    pub info: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct OrgReport {
    pub schema: u32,
    pub generated_at: DateTime<Utc>,
    pub from: Option<DateTime<Utc>>,
    pub to: DateTime<Utc>,
    pub totals: Totals,
    pub access: Vec<Access>,
    pub repos: Vec<RepoAudit>,
}

impl OrgReport {
    pub fn worst(&self) -> Option<Severity> {
        self.repos.iter().flat_map(|r| &r.findings).map(|f| f.severity).max()
    }
}

/// Fetches and audits every source, `options.jobs` at a time, in the order given.
pub fn audit(sources: &[String], options: &OrgOptions) -> Result<OrgReport, OrgError> {
    std::fs::create_dir_all(&options.cache)
        .map_err(|source| OrgError::Cache { path: options.cache.clone(), source })?;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<RepoAudit>>> = Mutex::new(vec![None; sources.len()]);
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.clamp(1, sources.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(source) = sources.get(i) else { break };
                    let audited = audit_one(source, options);
                    results.lock().expect("no worker panics holding it")[i] = Some(audited);
                }
            });
        }
    });
    let repos: Vec<RepoAudit> = results
        .into_inner()
        .expect("workers are done")
        .into_iter()
        .map(|r| r.expect("every source ran"))
        .collect();
    Ok(summarise(repos, &options.audit))
}

fn summarise(repos: Vec<RepoAudit>, options: &AuditOptions) -> OrgReport {
    let mut totals = Totals { repos: repos.len(), ..Totals::default() };
    let mut access: BTreeMap<(String, String, String), Access> = BTreeMap::new();
    for repo in &repos {
        match repo.status {
            "audited" => totals.audited += 1,
            "unreachable" => totals.unreachable += 1,
            _ => totals.failed += 1,
        }
        for f in &repo.findings {
            match f.severity {
                Severity::Error => totals.errors += 1,
                Severity::Warning => totals.warnings += 1,
                Severity::Info => totals.info += 1,
            }
        }
        let Some(report) = &repo.report else { continue };
        totals.grants += report.grants.len();
        totals.records += report.records;
        for g in report.grants.iter().filter(|g| g.state != GrantState::Failed) {
            let key = (g.principal.to_string(), repo.source.clone(), g.target.to_string());
            let row = access.entry(key).or_insert_with(|| Access {
                principal: g.principal.to_string(),
                repo: repo.source.clone(),
                target: g.target.to_string(),
                role: g.role.as_ref().map(Shared::to_string),
                grants: 0,
                seconds: 0,
            });
            row.grants += 1;
            row.seconds += g.duration_seconds.unwrap_or(0).max(0);
        }
    }
    OrgReport {
        schema: 1,
        generated_at: options.now,
        from: options.from,
        to: options.to,
        totals,
        access: access.into_values().collect(),
        repos,
    }
}

fn audit_one(source: &str, options: &OrgOptions) -> RepoAudit {
    let started = Instant::now();
    let display = display_source(source);
    let done = |status, findings, report, cache| RepoAudit {
        source: display.clone(),
        status,
        findings,
        report,
        seconds: started.elapsed().as_secs_f64(),
        cache,
    };
    let cache = match fetch(source, &options.cache, options.timeout) {
        Ok(cache) => cache,
        Err(e) => {
            let finding = Finding::new(
                Severity::Error,
                Category::Coverage,
                "repo_unreachable",
                format!(
                    "{display} could not be fetched, so it was not audited: {}",
                    redact(&e, source, &display)
                ),
                "check the URL, the network and the runner's read access (deploy key or token) to it",
            );
            return done("unreachable", vec![finding], None, None);
        }
    };
    let report = Repository::open(&cache)
        .map_err(|e| e.to_string())
        .and_then(|repo| crate::ops::audit::audit(&repo, &options.audit).map_err(|e| e.to_string()));
    match report {
        Ok(mut report) => {
            report.repo = display.clone();
            let mut findings = report.findings.clone();
            audit::sort(&mut findings);
            done("audited", findings, Some(report), Some(cache))
        }
        Err(e) => {
            let finding = Finding::new(
                Severity::Error,
                Category::Coverage,
                "audit_failed",
                format!("{display} was fetched but could not be audited: {}", redact(&e, source, &display)),
                "run `tpa audit` in a clone of it to see why (no trust ref? no .tpa/allowed_signers?)",
            );
            done("failed", vec![finding], None, Some(cache))
        }
    }
}

/// A source as shown: credentials and query removed from URLs.
pub fn display_source(source: &str) -> String {
    let stripped = strip_credentials(source);
    let stripped = match stripped.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.split(['?', '#']).next().unwrap_or("")),
        None => stripped,
    };
    crate::escape::text(&stripped)
}

/// Git's messages may quote the URL it was given: never with its credentials.
fn redact(text: &str, source: &str, display: &str) -> String {
    let text = if source.is_empty() { text.to_owned() } else { text.replace(source, display) };
    let words: Vec<String> = text
        .split(' ')
        .map(|w| if w.contains("://") { display_source(w.trim_matches(['\'', '"'])) } else { w.to_owned() })
        .collect();
    crate::escape::controls(&words.join(" "))
}

/// The cache directory of a source: a digest (so two sources never share one) and a readable tail.
fn cache_dir(root: &Path, source: &str) -> PathBuf {
    let tail: String = source
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(40)
        .collect();
    root.join(format!("{}-{}.git", &sha256_hex(source.as_bytes())[..16], tail.trim_start_matches('.')))
}

/// Brings the cache of `source` up to date; returns its path.
fn fetch(source: &str, root: &Path, timeout: Duration) -> Result<PathBuf, String> {
    if source.starts_with('-') || source.to_ascii_lowercase().starts_with("ext::") {
        return Err("refused: a repository source may not start with `-` or use the ext:: transport".into());
    }
    let dir = cache_dir(root, source);
    if !dir.join("HEAD").is_file() {
        git(None, &["init", "--bare", "-q", "--", &dir.display().to_string()], timeout, None)?;
        let set =
            |key: &str, value: &str| git(Some(&dir), &["config", "--replace-all", key, value], timeout, None);
        set("remote.origin.url", source)?;
        git(
            Some(&dir),
            &["config", "--add", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*"],
            timeout,
            None,
        )?;
        // The pattern form: an exact notes refspec fails every fetch while the remote has no ledger.
        git(
            Some(&dir),
            &["config", "--add", "remote.origin.fetch", "+refs/notes/tpa*:refs/notes/tpa*"],
            timeout,
            None,
        )?;
    } else {
        // The list may have changed the URL's credentials: follow it.
        git(Some(&dir), &["config", "--replace-all", "remote.origin.url", source], timeout, None)?;
    }
    git(
        Some(&dir),
        &["fetch", "-q", "--no-tags", "--prune", "--no-write-fetch-head", "--filter=blob:none", "origin"],
        timeout,
        None,
    )?;
    // Which branch is the remote's default, for the trust ref (best effort: main/master otherwise).
    let _ = git(Some(&dir), &["remote", "set-head", "origin", "--auto"], timeout, None);
    // The notes and the policy first: the open grants, whose changes come next, are in the notes.
    let mut wanted: HashSet<String> = HashSet::new();
    if git(Some(&dir), &["rev-parse", "-q", "--verify", "refs/notes/tpa"], timeout, None).is_ok() {
        let out =
            git(Some(&dir), &["rev-list", "--objects", "--missing=print", "refs/notes/tpa"], timeout, None)?;
        wanted.extend(out.lines().filter_map(|l| l.strip_prefix('?')).map(str::to_owned));
    }
    let args = ["log", "--remotes", "--root", "--no-abbrev", "--format=", "--raw", "--", ".tpa"];
    wanted.extend(raw_blobs(&git(Some(&dir), &args, timeout, None)?));
    fetch_blobs(&dir, wanted, timeout)?;
    fetch_blobs(&dir, open_grant_blobs(&dir, timeout), timeout)?;
    Ok(dir)
}

/// Fetches those of `wanted` that are not here, by id, in one request (as git's own lazy fetch of
/// a partial clone does, but batched).
fn fetch_blobs(dir: &Path, wanted: HashSet<String>, timeout: Duration) -> Result<(), String> {
    let wanted: Vec<String> = wanted.into_iter().filter(|oid| !is_zero(oid)).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let query: String = wanted.iter().map(|m| format!("{m}\n")).collect();
    let out = git(
        Some(dir),
        &["cat-file", "--batch-check=%(objectname) %(objecttype)"],
        timeout,
        Some(query.as_bytes()),
    )?;
    let missing: String =
        out.lines().filter_map(|l| l.strip_suffix(" missing")).map(|oid| format!("{oid}\n")).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let args = [
        "-c",
        "fetch.negotiationAlgorithm=noop",
        "fetch",
        "-q",
        "--no-tags",
        "--no-write-fetch-head",
        "--recurse-submodules=no",
        "--filter=blob:none",
        "--stdin",
        "origin",
    ];
    git(Some(dir), &args, timeout, Some(missing.as_bytes())).map(drop)
}

fn is_zero(oid: &str) -> bool {
    oid.bytes().all(|b| b == b'0')
}

/// Both sides' blob ids of `git log --raw` lines.
fn raw_blobs(raw: &str) -> impl Iterator<Item = String> + '_ {
    raw.lines().filter(|l| l.starts_with(':')).flat_map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        [fields.get(2), fields.get(3)].into_iter().flatten().map(|s| (*s).to_owned()).collect::<Vec<_>>()
    })
}

/// The blobs changed by the commits that the merge checks of the ledger's open grants diff: the
/// grant's branch since its base, and the protected branches since the same base.
fn open_grant_blobs(dir: &Path, timeout: Duration) -> HashSet<String> {
    let mut blobs = HashSet::new();
    let Ok(repo) = Repository::open(dir) else { return blobs };
    let protected: Vec<String> = repo
        .references_glob("refs/remotes/origin/*")
        .map(|refs| {
            refs.flatten()
                .filter_map(|r| r.name().ok().map(str::to_owned))
                .filter(|n| !n.ends_with("/HEAD"))
                .collect()
        })
        .unwrap_or_default();
    for grant in open_grants(&repo) {
        let Some(base) = grant.base.as_deref() else { continue };
        let mut args: Vec<String> = vec![
            "log".into(),
            "--no-abbrev".into(),
            "--format=".into(),
            "--raw".into(),
            "--no-merges".into(),
            format!("-n{}", crate::lifecycle::PATCH_WALK_LIMIT),
            grant.commit.clone(),
        ];
        // Every remote branch: the grant's own (wherever it went) and the protected ones.
        args.extend(protected.iter().cloned());
        args.push("--not".into());
        args.push(base.to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Ok(raw) = git(Some(dir), &args, timeout, None) {
            blobs.extend(raw_blobs(&raw));
        }
    }
    blobs
}

/// The intents of the ledger's open grants, read without checking signatures (the audit does that):
/// they only choose which blobs to fetch, so a forged record can cost a few blobs, nothing more.
fn open_grants(repo: &Repository) -> Vec<crate::grant::Record> {
    use crate::grant::{GrantId, Record, RecordKind};
    let Ok(lines) = crate::ledger::notes::tip(repo)
        .map_err(|_| ())
        .and_then(|tip| crate::ledger::read_lines(repo, tip).map_err(|_| ()))
    else {
        return Vec::new();
    };
    let mut by_grant: BTreeMap<GrantId, Vec<Record>> = BTreeMap::new();
    for line in &lines {
        let record = serde_json::from_str::<crate::ledger::NoteLine>(&line.text)
            .ok()
            .and_then(|l| serde_json::from_str::<Record>(&l.payload).ok());
        if let Some(record) = record {
            by_grant.entry(record.grant_id.clone()).or_default().push(record);
        }
    }
    let now = crate::clock::now();
    by_grant
        .into_values()
        .filter(|records| GrantState::of(records.iter(), now).is_open())
        .filter_map(|records| records.into_iter().find(|r| r.kind == RecordKind::Intent))
        .collect()
}

/// Runs git (in `dir`, with `stdin`) under a deadline; its stdout, or its stderr as the error.
fn git(dir: Option<&Path>, args: &[&str], timeout: Duration, stdin: Option<&[u8]>) -> Result<String, String> {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    command
        .args(["-c", "protocol.ext.allow=never"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        // Never one object at a time behind the audit's back: what is missing is fetched in bulk.
        .env("GIT_NO_LAZY_FETCH", "1")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("cannot run git: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    // Read both pipes while waiting, so a chatty git never blocks on a full pipe.
    let stdout = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut out, &mut buf);
            buf
        })
    });
    let stderr = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut err, &mut buf);
            buf
        })
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(|e| format!("cannot run git: {e}"))? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("git {} did not finish within {} s", args[0], timeout.as_secs()));
            }
            // A deadline on a child process: std has no wait-with-timeout.
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let out = stdout.and_then(|h| h.join().ok()).unwrap_or_default();
    let err = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    if status.success() {
        Ok(String::from_utf8_lossy(&out).into_owned())
    } else {
        Err(String::from_utf8_lossy(&err).trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_shown_without_credentials_or_query() {
        assert_eq!(display_source("https://bob:ghp_s3cret@github.com/a/b.git"), "https://github.com/a/b.git");
        assert_eq!(display_source("https://h/x?token=abc"), "https://h/x");
        assert_eq!(display_source("/srv/a\u{1b}[31m"), "/srv/a\\u{1b}[31m");
        let said = "fatal: unable to access 'https://bob:ghp_s3cret@github.com/a/b.git/': 403";
        let shown = redact(said, "https://bob:ghp_s3cret@github.com/a/b.git", "https://github.com/a/b.git");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn cache_directories_differ_per_source_and_stay_readable() {
        let root = Path::new("/c");
        let a = cache_dir(root, "https://h/org/api.git");
        let b = cache_dir(root, "https://other/org/api.git");
        assert_ne!(a, b);
        assert!(a.file_name().unwrap().to_str().unwrap().ends_with("-api.git"), "{a:?}");
        assert!(!cache_dir(root, "../../etc").to_str().unwrap().contains(".."));
    }

    #[test]
    fn raw_lines_give_both_blobs() {
        let raw = ":100644 100644 aaaa bbbb M\tsrc/x\n:000000 100644 0000 cccc A\t.tpa/policy.toml\n";
        assert_eq!(raw_blobs(raw).collect::<Vec<_>>(), ["aaaa", "bbbb", "0000", "cccc"]);
    }
}

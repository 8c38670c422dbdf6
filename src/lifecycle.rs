//! Whether a grant must end: expired, merged into a protected branch, or abandoned.
//!
//! Pure decisions: this module reads refs, commits and trees through git2, and never writes to the
//! repository, never prints, never reads the clock (the caller passes `now`). Branch names are
//! attacker-chosen bytes: they are only ever compared as strings or handed to git2 as whole refnames,
//! never put into a glob, a revision expression or a shell.
//!
//! The rules, in the order [`decide`] applies them:
//! 1. **Expired** when `expires_at <= now`.
//! 2. **Merged** when, for some protected tip `P` (local or remote-tracking), either
//!    - *ancestry*: the branch tip is reachable from `P` and holds commits beyond the grant's base
//!      (the tip is neither the base nor one of its ancestors); a grant taken at the branch point is
//!      therefore not merged by mere ancestry; or
//!    - *patch equivalence*: the branch's own commits (reachable from the tip, not from the base nor
//!      from `P`) are patch-equivalent to commits of `P` since the branch point: either the whole diff
//!      of the branch equals one commit's diff (a squash merge), or every non-merge commit with a
//!      non-empty diff has the patch id of some commit (rebase-merge, cherry-pick).
//! 3. **Abandoned** when the clone holds the grant and the branch is gone locally and from every
//!    remote-tracking ref, or when HEAD left the branch at least `abandon_after` ago and is not on it.
//! 4. Otherwise **Keep**.
//!
//! Which commit is "the branch tip": the local branch if it exists; else its remote-tracking copies
//! (`refs/remotes/<remote>/<name>`, any of which may be merged: this is what a CI runner or a teammate
//! sees); else the commit the grant was taken on.
//!
//! Patch equivalence is bounded: at most [`PATCH_WALK_LIMIT`] commits are walked on each side (the
//! newest commits of the protected branch that the branch does not contain, stopping at the base;
//! and the branch's own commits). A squash or cherry-pick older than that is not found by patch id,
//! and a branch with more own commits than that is never judged patch-equivalent: the grant stays
//! until it expires or the branch is abandoned. Patch ids are libgit2's (`git_diff_patchid`, like
//! `git patch-id`: whitespace and line numbers ignored), and a protected commit is only diffed to a
//! patch when it touches exactly the same paths as a commit of the branch, so the walk costs one tree
//! diff per commit.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use git2::{DiffOptions, ErrorCode, ObjectType, Oid, Repository, Sort, Tree};

use crate::grant::{GrantId, Record};
use crate::policy::glob_match;

/// The most commits walked on each side when looking for patch-equivalent commits, and on the
/// protected branch's first-parent line when a grant has no recorded base.
pub const PATCH_WALK_LIMIT: usize = 10_000;

const HEADS: &str = "refs/heads/";
const REMOTES: &str = "refs/remotes/";

/// What the ledger says about a grant, as far as its end is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantFacts {
    pub grant_id: GrantId,
    /// Full refname, `refs/heads/...`.
    pub branch: String,
    /// HEAD when the grant was taken.
    pub commit: Oid,
    /// Merge-base of `commit` with the protected branch (the trust ref) when the grant was taken.
    pub base: Option<Oid>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl GrantFacts {
    /// The facts of a grant record (or of any record of the grant: they all carry its context).
    pub fn from_record(record: &Record) -> Result<Self, LifecycleError> {
        let oid = |field: &'static str, value: &str| {
            let bad = || LifecycleError::BadObjectId {
                grant: record.grant_id.clone(),
                field,
                value: crate::escape::text(value),
            };
            if !crate::grant::is_object_id(value) {
                return Err(bad());
            }
            Oid::from_str(value).map_err(|_| bad())
        };
        Ok(GrantFacts {
            grant_id: record.grant_id.clone(),
            branch: record.branch.clone(),
            commit: oid("commit", &record.commit)?,
            base: record.base.as_deref().map(|b| oid("base", b)).transpose()?,
            expires_at: record.expires_at,
        })
    }
}

/// Everything besides git that a decision depends on. The caller resolves it from the policy, the
/// clock and tpa's local state.
#[derive(Clone, Debug)]
pub struct Situation<'a> {
    /// Globs on short branch names, e.g. `["main", "master", "release/*"]`.
    pub protected: &'a [String],
    pub abandon_after: Duration,
    pub now: DateTime<Utc>,
    /// This clone made the grant. Only then may a missing branch mean "abandoned": CI runners and
    /// teammates never see an unpushed branch.
    pub holds_grant: bool,
    /// When HEAD last left the branch, from local state; `None` when it never left or came back.
    /// A detached HEAD during a rebase is not leaving: the caller does not record it.
    pub left_at: Option<DateTime<Utc>>,
    /// Full refname HEAD points to now (`None` when detached).
    pub head_branch: Option<String>,
    /// The protected branches' tips ([`protected_tips`] of `protected`), when the caller read them
    /// once for the many grants it decides; `None`: read for this grant.
    pub protected_tips: Option<&'a [(String, Oid)]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Expired,
    Merged {
        /// The protected ref that contains the work, e.g. `refs/remotes/origin/main`.
        into: String,
        how: MergeKind,
    },
    Abandoned(AbandonReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeKind {
    /// The branch tip is reachable from the protected branch: a merge commit or a fast-forward.
    Ancestry,
    /// The branch's changes are on the protected branch as other commits: squash, rebase-merge,
    /// cherry-pick.
    PatchEquivalent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AbandonReason {
    /// The branch is gone locally and from every remote-tracking ref.
    BranchGone,
    /// HEAD left the branch at `since` and has not come back within `abandon_after`.
    LeftTooLong { since: DateTime<Utc> },
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("grant {grant}: branch `{branch}` is not a full branch refname (refs/heads/...)")]
    NotABranch { grant: GrantId, branch: String },
    #[error("grant {grant}: `{field}` is not a full hex object id: `{value}`")]
    BadObjectId { grant: GrantId, field: &'static str, value: String },
    #[error("git error while deciding whether grant {grant} ends: {source}")]
    Git {
        grant: GrantId,
        #[source]
        source: git2::Error,
    },
}

/// Decides whether a grant must end now, and why.
pub fn decide(
    repo: &Repository,
    facts: &GrantFacts,
    situation: &Situation,
) -> Result<Verdict, LifecycleError> {
    decide_bounded(repo, facts, situation, PATCH_WALK_LIMIT)
}

fn decide_bounded(
    repo: &Repository,
    facts: &GrantFacts,
    situation: &Situation,
    limit: usize,
) -> Result<Verdict, LifecycleError> {
    if facts.expires_at.is_some_and(|at| at <= situation.now) {
        return Ok(Verdict::Expired);
    }
    let short = facts.branch.strip_prefix(HEADS).filter(|s| !s.is_empty()).ok_or_else(|| {
        LifecycleError::NotABranch {
            grant: facts.grant_id.clone(),
            branch: crate::escape::text(&facts.branch),
        }
    })?;
    let git = |source| LifecycleError::Git { grant: facts.grant_id.clone(), source };
    let copies = BranchCopies::find(repo, &facts.branch, short).map_err(git)?;
    if !copies.local_exists
        && let Some(new_name) = renamed_to(repo, &facts.branch)
    {
        // `git branch -m`: the work goes on under the new name, which is what is judged.
        let followed = GrantFacts { branch: new_name, ..facts.clone() };
        return decide_bounded(repo, &followed, situation, limit);
    }
    if let Some((into, how)) = merged(repo, facts, situation, &copies, limit).map_err(git)? {
        return Ok(Verdict::Merged { into, how });
    }
    if situation.holds_grant && !copies.local_exists && copies.remote.is_empty() {
        return Ok(Verdict::Abandoned(AbandonReason::BranchGone));
    }
    if let Some(since) = situation.left_at
        && situation.head_branch.as_deref() != Some(facts.branch.as_str())
        && situation.now - since >= situation.abandon_after
    {
        return Ok(Verdict::Abandoned(AbandonReason::LeftTooLong { since }));
    }
    Ok(Verdict::Keep)
}

/// The local branch `branch` (a full refname) was renamed to, following renames of renames, if a
/// branch's reflog says so (`Branch: renamed refs/heads/A to refs/heads/B`, as `git branch -m`
/// writes it) and that branch still exists.
fn renamed_to(repo: &Repository, branch: &str) -> Option<String> {
    let mut current = branch.to_owned();
    let mut seen = std::collections::HashSet::new();
    while seen.insert(current.clone()) {
        let prefix = format!("Branch: renamed {current} to ");
        let mut next = None;
        for reference in repo.references_glob("refs/heads/*").ok()?.flatten() {
            let Ok(name) = reference.name() else { continue };
            let Ok(reflog) = repo.reflog(name) else { continue };
            let renamed = reflog.iter().any(|entry| {
                entry
                    .message()
                    .ok()
                    .flatten()
                    .and_then(|m| m.strip_prefix(prefix.as_str()))
                    .is_some_and(|to| to == name)
            });
            if renamed {
                next = Some(name.to_owned());
                break;
            }
        }
        match next {
            Some(name) if repo.find_reference(&name).is_ok() => return Some(name),
            Some(name) => current = name,
            None => return None,
        }
    }
    None
}

/// The tips of the protected branches, sorted by refname: local `refs/heads/*` and every
/// `refs/remotes/<remote>/*` whose short name matches one of the globs (never `refs/remotes/*/HEAD`).
/// Refs that do not point to a commit, and names that are not UTF-8, are skipped.
pub fn protected_tips(repo: &Repository, protected: &[String]) -> Result<Vec<(String, Oid)>, git2::Error> {
    let is_protected = |short: &str| protected.iter().any(|p| glob_match(p, short));
    let remotes = remote_names(repo)?;
    let mut tips = Vec::new();
    for glob in ["refs/heads/*", "refs/remotes/*"] {
        for reference in repo.references_glob(glob)? {
            let reference = reference?;
            let Ok(name) = std::str::from_utf8(reference.name_bytes()) else { continue };
            let short = match name.strip_prefix(HEADS) {
                Some(short) => short,
                None => match split_remote_ref(name, &remotes) {
                    Some((_, "HEAD")) | None => continue,
                    Some((_, short)) => short,
                },
            };
            if !is_protected(short) {
                continue;
            }
            if let Some(commit) = ref_commit(repo, &reference) {
                tips.push((name.to_owned(), commit));
            }
        }
    }
    tips.sort();
    tips.dedup();
    Ok(tips)
}

/// Where the grant's branch still exists in this clone.
struct BranchCopies {
    local_exists: bool,
    /// The local branch's commit, when it exists and points to one.
    local: Option<Oid>,
    /// `refs/remotes/<remote>/<short name>` refnames and their commits (`None`: not a commit here).
    remote: Vec<(String, Option<Oid>)>,
}

impl BranchCopies {
    fn find(repo: &Repository, branch: &str, short: &str) -> Result<Self, git2::Error> {
        let (local_exists, local) = match repo.find_reference(branch) {
            Ok(reference) => (true, ref_commit(repo, &reference)),
            Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::InvalidSpec) => (false, None),
            Err(e) => return Err(e),
        };
        let remotes = remote_names(repo)?;
        let mut remote = Vec::new();
        for reference in repo.references_glob("refs/remotes/*")? {
            let reference = reference?;
            let Ok(name) = std::str::from_utf8(reference.name_bytes()) else { continue };
            if split_remote_ref(name, &remotes).is_some_and(|(_, s)| s == short && s != "HEAD") {
                remote.push((name.to_owned(), ref_commit(repo, &reference)));
            }
        }
        Ok(BranchCopies { local_exists, local, remote })
    }

    /// The refnames that are this branch itself: never a "protected tip" for it.
    fn is_copy(&self, branch: &str, refname: &str) -> bool {
        refname == branch || self.remote.iter().any(|(name, _)| name == refname)
    }
}

/// The commits that stand for the branch tip: the local branch, else its remote-tracking copies,
/// else the grant's commit. Commits this clone does not have are left out.
fn tip_candidates(repo: &Repository, facts: &GrantFacts, copies: &BranchCopies) -> Vec<Oid> {
    let mut tips: Vec<Oid> = if copies.local_exists {
        copies.local.into_iter().collect()
    } else if !copies.remote.is_empty() {
        copies.remote.iter().filter_map(|(_, commit)| *commit).collect()
    } else {
        commit_of(repo, facts.commit).into_iter().collect()
    };
    let mut seen = HashSet::new();
    tips.retain(|t| seen.insert(*t));
    tips
}

fn merged(
    repo: &Repository,
    facts: &GrantFacts,
    situation: &Situation,
    copies: &BranchCopies,
    limit: usize,
) -> Result<Option<(String, MergeKind)>, git2::Error> {
    let tips = tip_candidates(repo, facts, copies);
    if tips.is_empty() {
        return Ok(None);
    }
    let read_now;
    let all_targets = match situation.protected_tips {
        Some(tips) => tips,
        None => {
            read_now = protected_tips(repo, situation.protected)?;
            &read_now
        }
    };
    let targets: Vec<(String, Oid)> =
        all_targets.iter().filter(|(name, _)| !copies.is_copy(&facts.branch, name)).cloned().collect();
    // A base this clone does not have (a shallow clone) is as good as none.
    let base = facts.base.filter(|b| repo.find_commit(*b).is_ok());

    for (into, target) in &targets {
        for &tip in &tips {
            if !reachable(repo, tip, *target)? {
                continue;
            }
            let beyond_base = match base {
                Some(base) => tip != base && !reachable(repo, tip, base)?,
                None => match fork_point(repo, tip, *target, limit)? {
                    Some(fork) => tip != fork,
                    // No shared first-parent history within the bound: all of the branch is beyond it.
                    None => true,
                },
            };
            if beyond_base {
                return Ok(Some((into.clone(), MergeKind::Ancestry)));
            }
        }
    }
    // Local and remote-tracking protected refs often point to the same commit: walk it once.
    let mut walked = HashSet::new();
    for (into, target) in &targets {
        for &tip in &tips {
            if walked.insert((tip, *target))
                && !reachable(repo, tip, *target)?
                && patch_equivalent(repo, tip, *target, base, limit)?
            {
                return Ok(Some((into.clone(), MergeKind::PatchEquivalent)));
            }
        }
    }
    Ok(None)
}

/// Whether `commit` is `from` or one of its ancestors.
fn reachable(repo: &Repository, commit: Oid, from: Oid) -> Result<bool, git2::Error> {
    Ok(commit == from || repo.graph_descendant_of(from, commit)?)
}

/// For a grant with no recorded base, and a tip reachable from `target`: the newest commit of
/// `target`'s first-parent line that is `tip` or one of its ancestors, i.e. where the branch left
/// the mainline. For a merge commit that is the old branch point; for a fast-forward it is the tip
/// itself (a fast-forward cannot be told from a branch point without the base). `None` when the
/// first-parent line within `limit` commits holds no ancestor of `tip` (unrelated histories).
fn fork_point(repo: &Repository, tip: Oid, target: Oid, limit: usize) -> Result<Option<Oid>, git2::Error> {
    let mut line = vec![target];
    while line.len() < limit {
        let commit = repo.find_commit(*line.last().expect("never empty"))?;
        match commit.parent_ids().next() {
            Some(parent) => line.push(parent),
            None => break,
        }
    }
    // `contains` is true for a prefix of the line (descendants of the tip, or the tip itself), then
    // false: find the last index where it holds by bisection.
    let contains = |c: Oid| reachable(repo, tip, c);
    let (mut lo, mut hi) = (0, line.len());
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if contains(line[mid])? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    if line[lo] == tip {
        return Ok(Some(tip));
    }
    match line.get(lo + 1) {
        Some(&before) => match repo.merge_base(tip, before) {
            Ok(fork) => Ok(Some(fork)),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e),
        },
        None => Ok(None),
    }
}

/// One diff of the branch: the paths it touches (the cheap test) and its patch id.
struct Change {
    paths: Vec<Vec<u8>>,
    patch_id: Oid,
}

/// Whether the branch's own commits are on `target` as other commits with the same patches.
fn patch_equivalent(
    repo: &Repository,
    tip: Oid,
    target: Oid,
    base: Option<Oid>,
    limit: usize,
) -> Result<bool, git2::Error> {
    let fork = match repo.merge_base(tip, target) {
        Ok(fork) => Some(fork),
        Err(e) if e.code() == ErrorCode::NotFound => None,
        Err(e) => return Err(e),
    };
    let Some(floor) = base.or(fork) else { return Ok(false) };

    // The branch's own commits: not in the base, not already on the protected branch.
    let own = walk(repo, tip, &[floor, target], limit + 1)?;
    if own.is_empty() || own.len() > limit {
        return Ok(false);
    }
    let mut picks = Vec::new();
    for &oid in &own {
        let commit = repo.find_commit(oid)?;
        if commit.parent_count() > 1 {
            continue;
        }
        let parent = commit.parents().next().map(|p| p.tree()).transpose()?;
        if let Some(change) = change(repo, parent.as_ref(), &commit.tree()?)? {
            picks.push(change);
        }
    }
    // The whole branch as one diff, from where it last met the protected branch.
    let squash_from = repo.find_commit(fork.unwrap_or(floor))?.tree()?;
    let squash = change(repo, Some(&squash_from), &repo.find_commit(tip)?.tree()?)?;
    if picks.is_empty() && squash.is_none() {
        return Ok(false);
    }
    let wanted: HashSet<&[Vec<u8>]> =
        picks.iter().chain(squash.as_ref()).map(|c| c.paths.as_slice()).collect();
    let mut missing: HashSet<Oid> = picks.iter().map(|c| c.patch_id).collect();

    for oid in walk(repo, target, &[floor, tip], limit)? {
        let commit = repo.find_commit(oid)?;
        if commit.parent_count() > 1 {
            continue;
        }
        let parent = commit.parents().next().map(|p| p.tree()).transpose()?;
        let diff =
            repo.diff_tree_to_tree(parent.as_ref(), Some(&commit.tree()?), Some(&mut diff_options()))?;
        // The cheap test first: a patch can only be the same if it touches the same paths.
        if !paths_of(&diff).is_some_and(|paths| wanted.contains(paths.as_slice())) {
            continue;
        }
        let patch_id = diff.patchid(None)?;
        if squash.as_ref().is_some_and(|s| s.patch_id == patch_id) {
            return Ok(true);
        }
        missing.remove(&patch_id);
        if missing.is_empty() && !picks.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Commits reachable from `from` and from none of `hide`, newest first, at most `limit`.
fn walk(repo: &Repository, from: Oid, hide: &[Oid], limit: usize) -> Result<Vec<Oid>, git2::Error> {
    let mut walk = repo.revwalk()?;
    walk.set_sorting(Sort::TIME)?;
    walk.push(from)?;
    for &h in hide {
        walk.hide(h)?;
    }
    walk.take(limit).collect()
}

fn diff_options() -> DiffOptions {
    // The same options on both sides is all that matters for comparing patch ids.
    DiffOptions::new()
}

/// The sorted paths (old and new) a diff touches; `None` for an empty diff.
fn paths_of(diff: &git2::Diff) -> Option<Vec<Vec<u8>>> {
    let mut paths: Vec<Vec<u8>> = diff
        .deltas()
        .flat_map(|d| {
            [d.old_file().path_bytes().map(<[u8]>::to_vec), d.new_file().path_bytes().map(<[u8]>::to_vec)]
        })
        .flatten()
        .collect();
    paths.sort();
    paths.dedup();
    (!paths.is_empty()).then_some(paths)
}

/// The paths and patch id of a tree diff; `None` for an empty diff.
fn change(repo: &Repository, old: Option<&Tree>, new: &Tree) -> Result<Option<Change>, git2::Error> {
    let diff = repo.diff_tree_to_tree(old, Some(new), Some(&mut diff_options()))?;
    let Some(paths) = paths_of(&diff) else { return Ok(None) };
    Ok(Some(Change { paths, patch_id: diff.patchid(None)? }))
}

/// The commit a reference finally points to (through symbolic refs and tags), if this clone has it.
fn ref_commit(repo: &Repository, reference: &git2::Reference) -> Option<Oid> {
    commit_of(repo, reference.resolve().ok()?.target()?)
}

/// The commit an object id stands for (peeling tags), if this clone has it.
fn commit_of(repo: &Repository, oid: Oid) -> Option<Oid> {
    repo.find_object(oid, None).ok()?.peel(ObjectType::Commit).ok().map(|c| c.id())
}

/// Configured remote names, longest first, so that `a/b` wins over `a` when splitting refnames.
fn remote_names(repo: &Repository) -> Result<Vec<String>, git2::Error> {
    let mut names =
        crate::gitconfig::GitConfig::of(repo).map_err(|e| git2::Error::from_str(&e.to_string()))?.remotes();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    Ok(names)
}

/// `refs/remotes/<remote>/<short>` -> `(remote, short)`, preferring configured remote names (which may
/// contain `/`), else taking the first path component as the remote.
fn split_remote_ref<'n>(refname: &'n str, remotes: &[String]) -> Option<(&'n str, &'n str)> {
    let rest = refname.strip_prefix(REMOTES)?;
    for remote in remotes {
        if let Some(short) = rest.strip_prefix(remote.as_str()).and_then(|s| s.strip_prefix('/'))
            && !short.is_empty()
        {
            return Some((&rest[..remote.len()], short));
        }
    }
    rest.split_once('/').filter(|(r, s)| !r.is_empty() && !s.is_empty())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};
    use std::sync::LazyLock;

    use chrono::TimeZone;

    use super::*;
    use crate::grant::{Principal, RecordKind};

    static PROTECTED: LazyLock<Vec<String>> =
        LazyLock::new(|| ["main", "master", "release/*"].map(String::from).to_vec());
    const ID: &str = "01JD3M5Q8Z6N2X4V7B9C1R0T5K";

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 2, 1, 12, 0, 0).unwrap()
    }

    /// Temporary repositories made with the real git, in a sealed environment, with commit dates
    /// that are fixed but advance by a minute per git command (so history has an order).
    struct Sandbox {
        root: tempfile::TempDir,
        tick: Cell<i64>,
    }

    impl Sandbox {
        fn new() -> Self {
            Sandbox { root: tempfile::tempdir().unwrap(), tick: Cell::new(0) }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.root.path().join(name)
        }

        fn run(&self, dir: &Path, args: &[&str]) -> Output {
            let tick = self.tick.replace(self.tick.get() + 1);
            let date = format!("{} +0000", 1_767_225_600 + tick * 60);
            Command::new("git")
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", self.root.path())
                .env("LANG", "C")
                .env("TZ", "UTC")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_AUTHOR_DATE", &date)
                .env("GIT_COMMITTER_DATE", &date)
                .current_dir(dir)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }

        /// `git ARGS` in `dir`; panics when git fails.
        fn git(&self, dir: &Path, args: &[&str]) -> String {
            let out = self.run(dir, args);
            assert!(out.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
        }

        fn configure(&self, dir: &Path) {
            self.git(dir, &["config", "user.name", "Alice"]);
            self.git(dir, &["config", "user.email", "alice@example.com"]);
        }

        /// A repository with one commit on main and no remote.
        fn repo(&self, name: &str) -> PathBuf {
            let dir = self.path(name);
            std::fs::create_dir_all(&dir).unwrap();
            self.git(&dir, &["init", "-q", "-b", "main"]);
            self.configure(&dir);
            self.commit(&dir, "README", "one\ntwo\nthree\n", "initial");
            dir
        }

        /// A bare `origin` seeded with one commit on main, and a clone of it named `name`.
        fn repo_with_origin(&self, name: &str) -> (PathBuf, PathBuf) {
            let seed = self.repo(&format!("{name}-seed"));
            let origin = self.path(&format!("{name}-origin.git"));
            self.git(self.root.path(), &["clone", "-q", "--bare", p(&seed), p(&origin)]);
            (self.clone_of(&origin, name), origin)
        }

        fn clone_of(&self, origin: &Path, name: &str) -> PathBuf {
            let dir = self.path(name);
            self.git(self.root.path(), &["clone", "-q", p(origin), p(&dir)]);
            self.configure(&dir);
            dir
        }

        fn commit(&self, dir: &Path, file: &str, contents: &str, message: &str) -> Oid {
            std::fs::write(dir.join(file), contents).unwrap();
            self.git(dir, &["add", "--", file]);
            self.git(dir, &["commit", "-q", "-m", message]);
            self.rev(dir, "HEAD")
        }

        fn rev(&self, dir: &Path, rev: &str) -> Oid {
            Oid::from_str(&self.git(dir, &["rev-parse", "--verify", "--end-of-options", rev])).unwrap()
        }

        /// A grant taken now on the branch HEAD is on, as `tpa request` records it: base is the
        /// merge-base with `trust`.
        fn grant(&self, dir: &Path, trust: &str) -> GrantFacts {
            let branch = self.git(dir, &["symbolic-ref", "HEAD"]);
            let commit = self.rev(dir, "HEAD");
            let base = Oid::from_str(&self.git(dir, &["merge-base", "HEAD", trust])).unwrap();
            GrantFacts { grant_id: ID.parse().unwrap(), branch, commit, base: Some(base), expires_at: None }
        }
    }

    fn p(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    /// The usual situation: this clone holds the grant, HEAD is wherever it is, never left.
    fn situation(dir: &Path) -> Situation<'static> {
        let repo = Repository::open(dir).unwrap();
        let head = repo.find_reference("HEAD").unwrap();
        let head_branch = head.symbolic_target().unwrap().map(str::to_owned);
        Situation {
            protected: &PROTECTED,
            abandon_after: Duration::days(1),
            now: now(),
            holds_grant: true,
            left_at: None,
            head_branch,
            protected_tips: None,
        }
    }

    fn verdict_in(dir: &Path, facts: &GrantFacts, situation: &Situation) -> Verdict {
        decide(&Repository::open(dir).unwrap(), facts, situation).unwrap()
    }

    fn verdict(dir: &Path, facts: &GrantFacts) -> Verdict {
        verdict_in(dir, facts, &situation(dir))
    }

    fn merged(into: &str, how: MergeKind) -> Verdict {
        Verdict::Merged { into: into.to_owned(), how }
    }

    const MAIN: &str = "refs/heads/main";

    /// A repo whose `hotfix/a` has two commits (grant taken after the first) while main moved on.
    fn branch_with_work(sb: &Sandbox) -> (PathBuf, GrantFacts, [Oid; 2]) {
        let dir = sb.repo("r");
        sb.git(&dir, &["switch", "-q", "-c", "hotfix/a"]);
        let first = sb.commit(&dir, "fix.txt", "fix\n", "fix");
        let facts = sb.grant(&dir, "main");
        let second = sb.commit(&dir, "fix2.txt", "more\n", "fix more");
        sb.git(&dir, &["switch", "-q", "main"]);
        sb.commit(&dir, "other.txt", "main moves on\n", "unrelated");
        assert_eq!(verdict(&dir, &facts), Verdict::Keep, "not merged yet");
        (dir, facts, [first, second])
    }

    #[test]
    fn merge_no_ff_is_merged_by_ancestry() {
        let sb = Sandbox::new();
        let (dir, facts, _) = branch_with_work(&sb);
        sb.git(&dir, &["merge", "-q", "--no-ff", "-m", "merge hotfix", "hotfix/a"]);
        assert_eq!(verdict(&dir, &facts), merged(MAIN, MergeKind::Ancestry));
    }

    #[test]
    fn protected_tips_read_once_by_the_caller_decide_as_tips_read_per_grant() {
        let sb = Sandbox::new();
        let (dir, facts, _) = branch_with_work(&sb);
        sb.git(&dir, &["merge", "-q", "--no-ff", "-m", "merge hotfix", "hotfix/a"]);
        let repo = Repository::open(&dir).unwrap();
        let tips = protected_tips(&repo, &PROTECTED).unwrap();
        let given = Situation { protected_tips: Some(&tips), ..situation(&dir) };
        assert_eq!(verdict_in(&dir, &facts, &given), merged(MAIN, MergeKind::Ancestry));
        // The tips given are the ones used: none given, nothing is merged into anything.
        let none = Situation { protected_tips: Some(&[]), ..situation(&dir) };
        assert_eq!(verdict_in(&dir, &facts, &none), Verdict::Keep);
    }

    #[test]
    fn fast_forward_is_merged_by_ancestry() {
        let sb = Sandbox::new();
        let dir = sb.repo("r");
        sb.git(&dir, &["switch", "-q", "-c", "hotfix/a"]);
        let facts = sb.grant(&dir, "main");
        sb.commit(&dir, "fix.txt", "fix\n", "fix");
        sb.git(&dir, &["switch", "-q", "main"]);
        assert_eq!(verdict(&dir, &facts), Verdict::Keep);
        sb.git(&dir, &["merge", "-q", "--ff-only", "hotfix/a"]);
        assert_eq!(verdict(&dir, &facts), merged(MAIN, MergeKind::Ancestry));
    }

    #[test]
    fn squash_merge_is_patch_equivalent() {
        let sb = Sandbox::new();
        let (dir, facts, _) = branch_with_work(&sb);
        sb.git(&dir, &["merge", "-q", "--squash", "hotfix/a"]);
        sb.git(&dir, &["commit", "-q", "-m", "hotfix (squashed)"]);
        assert_eq!(verdict(&dir, &facts), merged(MAIN, MergeKind::PatchEquivalent));
    }

    #[test]
    fn rebase_merge_is_patch_equivalent() {
        let sb = Sandbox::new();
        let (dir, facts, _) = branch_with_work(&sb);
        sb.git(&dir, &["switch", "-q", "-c", "rebased", "hotfix/a"]);
        sb.git(&dir, &["rebase", "-q", "main"]);
        sb.git(&dir, &["switch", "-q", "main"]);
        sb.git(&dir, &["merge", "-q", "--ff-only", "rebased"]);
        sb.git(&dir, &["branch", "-q", "-D", "rebased"]);
        assert_eq!(verdict(&dir, &facts), merged(MAIN, MergeKind::PatchEquivalent));
    }

    #[test]
    fn cherry_pick_of_every_commit_is_patch_equivalent_and_of_some_is_not() {
        let sb = Sandbox::new();
        let (dir, facts, [first, second]) = branch_with_work(&sb);
        sb.git(&dir, &["cherry-pick", &first.to_string()]);
        assert_eq!(verdict(&dir, &facts), Verdict::Keep, "one of two commits picked");
        sb.git(&dir, &["cherry-pick", &second.to_string()]);
        assert_eq!(verdict(&dir, &facts), merged(MAIN, MergeKind::PatchEquivalent));
    }

    #[test]
    fn empty_commits_do_not_block_patch_equivalence() {
        let sb = Sandbox::new();
        let (dir, facts, [first, second]) = branch_with_work(&sb);
        sb.git(&dir, &["switch", "-q", "hotfix/a"]);
        sb.git(&dir, &["commit", "-q", "--allow-empty", "-m", "retrigger CI"]);
        sb.git(&dir, &["switch", "-q", "main"]);
        sb.git(&dir, &["cherry-pick", &first.to_string(), &second.to_string()]);
        assert_eq!(verdict(&dir, &facts), merged(MAIN, MergeKind::PatchEquivalent));
    }

    #[test]
    fn conflicted_merge_resolved_and_committed_is_merged() {
        let sb = Sandbox::new();
        let dir = sb.repo("r");
        sb.git(&dir, &["switch", "-q", "-c", "hotfix/a"]);
        sb.commit(&dir, "README", "one\nTWO (hotfix)\nthree\n", "fix");
        let facts = sb.grant(&dir, "main");
        sb.git(&dir, &["switch", "-q", "main"]);
        sb.commit(&dir, "README", "one\nTWO (main)\nthree\n", "meanwhile");
        assert!(!sb.run(&dir, &["merge", "-q", "hotfix/a"]).status.success(), "the merge conflicts");
        assert_eq!(verdict(&dir, &facts), Verdict::Keep, "nothing committed yet");
        std::fs::write(dir.join("README"), "one\nTWO (both)\nthree\n").unwrap();
        sb.git(&dir, &["add", "README"]);
        sb.git(&dir, &["commit", "-q", "--no-edit"]);
        assert_eq!(verdict(&dir, &facts), merged(MAIN, MergeKind::Ancestry));
    }

    #[test]
    fn rebasing_onto_a_newer_main_is_not_merging() {
        let sb = Sandbox::new();
        let (dir, facts, _) = branch_with_work(&sb);
        // `git pull --rebase` of main into the hotfix branch: its base is now older than its fork.
        sb.git(&dir, &["switch", "-q", "hotfix/a"]);
        sb.git(&dir, &["rebase", "-q", "main"]);
        assert_eq!(verdict(&dir, &facts), Verdict::Keep);
        sb.git(&dir, &["switch", "-q", "main"]);
        sb.git(&dir, &["merge", "-q", "--ff-only", "hotfix/a"]);
        assert_eq!(verdict(&dir, &facts), merged(MAIN, MergeKind::Ancestry));
    }

    #[test]
    fn server_side_merge_seen_through_the_remote_tracking_branch() {
        let sb = Sandbox::new();
        let (alice, origin) = sb.repo_with_origin("alice");
        sb.git(&alice, &["switch", "-q", "-c", "hotfix/a"]);
        // Taken at the branch point, before any commit.
        let facts = sb.grant(&alice, "origin/main");
        sb.commit(&alice, "fix.txt", "fix\n", "fix");
        sb.git(&alice, &["push", "-q", "-u", "origin", "hotfix/a"]);

        let bob = sb.clone_of(&origin, "bob");
        sb.git(&bob, &["merge", "-q", "--no-ff", "-m", "Merge pull request #1", "origin/hotfix/a"]);
        sb.git(&bob, &["push", "-q", "origin", "main"]);

        assert_eq!(verdict(&alice, &facts), Verdict::Keep, "alice has not fetched");
        sb.git(&alice, &["fetch", "-q"]);
        assert_eq!(verdict(&alice, &facts), merged("refs/remotes/origin/main", MergeKind::Ancestry));
        assert_ne!(sb.rev(&alice, "main"), sb.rev(&alice, "origin/main"), "local main did not move");

        // A CI runner: no local branch, no grant of its own; the remote-tracking branch stands for
        // the tip, since the grant commit is the base itself.
        let ci = sb.clone_of(&origin, "ci");
        let ci_situation = Situation { holds_grant: false, ..situation(&ci) };
        assert!(!sb.run(&ci, &["rev-parse", "--verify", "-q", "refs/heads/hotfix/a"]).status.success());
        assert_eq!(verdict_in(&ci, &facts, &ci_situation), merged(MAIN, MergeKind::Ancestry));

        // Once the server deletes the branch, such a CI runner cannot tell any more; the clone that
        // holds the grant still can.
        sb.git(&bob, &["push", "-q", "origin", "--delete", "hotfix/a"]);
        sb.git(&ci, &["fetch", "-q", "--prune"]);
        assert_eq!(verdict_in(&ci, &facts, &ci_situation), Verdict::Keep);
        sb.git(&alice, &["fetch", "-q", "--prune"]);
        assert_eq!(verdict(&alice, &facts), merged("refs/remotes/origin/main", MergeKind::Ancestry));
    }

    #[test]
    fn grant_at_the_branch_point_is_not_merged_by_ancestry() {
        let sb = Sandbox::new();
        let dir = sb.repo("r");
        sb.git(&dir, &["switch", "-q", "-c", "hotfix/a"]);
        let facts = sb.grant(&dir, "main");
        assert_eq!(facts.base, Some(facts.commit));
        assert_eq!(verdict(&dir, &facts), Verdict::Keep, "tip is the base, on main");
        sb.git(&dir, &["switch", "-q", "main"]);
        sb.commit(&dir, "other.txt", "main moves on\n", "unrelated");
        assert_eq!(verdict(&dir, &facts), Verdict::Keep);
        sb.git(&dir, &["merge", "-q", "--no-ff", "-m", "noop merge", "hotfix/a"]);
        assert_eq!(verdict(&dir, &facts), Verdict::Keep, "merging a branch with no work merges nothing");
    }

    #[test]
    fn branch_with_unmerged_commits_is_kept() {
        let sb = Sandbox::new();
        let (dir, facts, _) = branch_with_work(&sb);
        sb.git(&dir, &["switch", "-q", "hotfix/a"]);
        assert_eq!(verdict(&dir, &facts), Verdict::Keep);
    }

    #[test]
    fn branch_fast_forwarded_to_a_newer_main_counts_as_merged() {
        // Known and fail-safe: with no work of its own, a branch that pulled main forward cannot be
        // told from a branch fast-forwarded into main. The grant ends early; never late.
        let sb = Sandbox::new();
        let dir = sb.repo("r");
        sb.git(&dir, &["switch", "-q", "-c", "hotfix/a"]);
        let facts = sb.grant(&dir, "main");
        sb.git(&dir, &["switch", "-q", "main"]);
        sb.commit(&dir, "other.txt", "main moves on\n", "unrelated");
        sb.git(&dir, &["switch", "-q", "hotfix/a"]);
        sb.git(&dir, &["merge", "-q", "--ff-only", "main"]);
        assert_eq!(verdict(&dir, &facts), merged(MAIN, MergeKind::Ancestry));
    }

    #[test]
    fn deleted_branch_is_abandoned_only_where_the_grant_is_held() {
        let sb = Sandbox::new();
        let (dir, facts, _) = branch_with_work(&sb);
        sb.git(&dir, &["branch", "-q", "-D", "hotfix/a"]);
        assert_eq!(verdict(&dir, &facts), Verdict::Abandoned(AbandonReason::BranchGone));
        let elsewhere = Situation { holds_grant: false, ..situation(&dir) };
        assert_eq!(verdict_in(&dir, &facts, &elsewhere), Verdict::Keep);
    }

    #[test]
    fn merged_then_deleted_is_merged_when_the_grant_commit_carries_work() {
        let sb = Sandbox::new();
        let (dir, facts, _) = branch_with_work(&sb);
        sb.git(&dir, &["merge", "-q", "--no-ff", "-m", "merge hotfix", "hotfix/a"]);
        sb.git(&dir, &["branch", "-q", "-d", "hotfix/a"]);
        assert_eq!(verdict(&dir, &facts), merged(MAIN, MergeKind::Ancestry));

        // Taken at the branch point: the grant commit alone says nothing, but the grant still ends.
        let at_branch_point = GrantFacts { commit: facts.base.unwrap(), ..facts };
        assert_eq!(verdict(&dir, &at_branch_point), Verdict::Abandoned(AbandonReason::BranchGone));
    }

    #[test]
    fn branch_deleted_locally_but_still_remote_tracked_is_kept_until_pruned() {
        let sb = Sandbox::new();
        let (alice, origin) = sb.repo_with_origin("alice");
        sb.git(&alice, &["switch", "-q", "-c", "hotfix/a"]);
        sb.commit(&alice, "fix.txt", "fix\n", "fix");
        let facts = sb.grant(&alice, "origin/main");
        sb.git(&alice, &["push", "-q", "-u", "origin", "hotfix/a"]);
        sb.git(&alice, &["switch", "-q", "main"]);
        sb.git(&alice, &["branch", "-q", "-D", "hotfix/a"]);
        assert_eq!(verdict(&alice, &facts), Verdict::Keep, "refs/remotes/origin/hotfix/a remains");

        let bob = sb.clone_of(&origin, "bob");
        sb.git(&bob, &["push", "-q", "origin", "--delete", "hotfix/a"]);
        sb.git(&alice, &["fetch", "-q"]);
        assert_eq!(verdict(&alice, &facts), Verdict::Keep, "fetch without --prune keeps the ref");
        sb.git(&alice, &["fetch", "-q", "--prune"]);
        assert_eq!(verdict(&alice, &facts), Verdict::Abandoned(AbandonReason::BranchGone));
    }

    #[test]
    fn leaving_for_abandon_after_abandons_and_coming_back_keeps() {
        let sb = Sandbox::new();
        let (dir, facts, _) = branch_with_work(&sb);
        let base = situation(&dir);
        assert_eq!(base.head_branch.as_deref(), Some(MAIN));

        let since = now() - Duration::days(2);
        let long_ago = Situation { left_at: Some(since), ..base.clone() };
        assert_eq!(
            verdict_in(&dir, &facts, &long_ago),
            Verdict::Abandoned(AbandonReason::LeftTooLong { since })
        );

        let exactly = now() - Duration::days(1);
        let boundary = Situation { left_at: Some(exactly), ..base.clone() };
        assert_eq!(
            verdict_in(&dir, &facts, &boundary),
            Verdict::Abandoned(AbandonReason::LeftTooLong { since: exactly })
        );

        let recently = Situation { left_at: Some(now() - Duration::hours(1)), ..base.clone() };
        assert_eq!(verdict_in(&dir, &facts, &recently), Verdict::Keep);

        sb.git(&dir, &["switch", "-q", "hotfix/a"]);
        let back = Situation { left_at: Some(since), ..situation(&dir) };
        assert_eq!(back.head_branch.as_deref(), Some("refs/heads/hotfix/a"));
        assert_eq!(verdict_in(&dir, &facts, &back), Verdict::Keep);
    }

    #[test]
    fn expired_comes_first_even_when_merged() {
        let sb = Sandbox::new();
        let (dir, facts, _) = branch_with_work(&sb);
        let expired = GrantFacts { expires_at: Some(now()), ..facts.clone() };
        assert_eq!(verdict(&dir, &expired), Verdict::Expired);
        sb.git(&dir, &["merge", "-q", "--no-ff", "-m", "merge hotfix", "hotfix/a"]);
        assert_eq!(verdict(&dir, &expired), Verdict::Expired);
        let live = GrantFacts { expires_at: Some(now() + Duration::seconds(1)), ..facts };
        assert_eq!(verdict(&dir, &live), merged(MAIN, MergeKind::Ancestry));
    }

    #[test]
    fn merged_comes_before_abandoned() {
        let sb = Sandbox::new();
        let (dir, facts, _) = branch_with_work(&sb);
        sb.git(&dir, &["merge", "-q", "--no-ff", "-m", "merge hotfix", "hotfix/a"]);
        let left = Situation { left_at: Some(now() - Duration::days(9)), ..situation(&dir) };
        assert_eq!(verdict_in(&dir, &facts, &left), merged(MAIN, MergeKind::Ancestry));
    }

    #[test]
    fn without_a_recorded_base_the_fork_point_stands_in() {
        let sb = Sandbox::new();
        let (dir, facts, _) = branch_with_work(&sb);
        let no_base = GrantFacts { base: None, ..facts.clone() };
        assert_eq!(verdict(&dir, &no_base), Verdict::Keep);
        sb.git(&dir, &["merge", "-q", "--no-ff", "-m", "merge hotfix", "hotfix/a"]);
        assert_eq!(verdict(&dir, &no_base), merged(MAIN, MergeKind::Ancestry));

        // A fast-forward cannot be told from the branch point without the base: kept.
        let sb = Sandbox::new();
        let dir = sb.repo("r");
        sb.git(&dir, &["switch", "-q", "-c", "hotfix/a"]);
        sb.commit(&dir, "fix.txt", "fix\n", "fix");
        let no_base = GrantFacts { base: None, ..sb.grant(&dir, "main") };
        sb.git(&dir, &["switch", "-q", "main"]);
        sb.git(&dir, &["merge", "-q", "--ff-only", "hotfix/a"]);
        assert_eq!(verdict(&dir, &no_base), Verdict::Keep);

        // Squash: the merge-base stands in for the base.
        let sb = Sandbox::new();
        let (dir, facts, _) = branch_with_work(&sb);
        let no_base = GrantFacts { base: None, ..facts };
        sb.git(&dir, &["merge", "-q", "--squash", "hotfix/a"]);
        sb.git(&dir, &["commit", "-q", "-m", "squashed"]);
        assert_eq!(verdict(&dir, &no_base), merged(MAIN, MergeKind::PatchEquivalent));
    }

    #[test]
    fn a_base_this_clone_lacks_counts_as_none() {
        let sb = Sandbox::new();
        let (dir, facts, _) = branch_with_work(&sb);
        sb.git(&dir, &["merge", "-q", "--no-ff", "-m", "merge hotfix", "hotfix/a"]);
        let unknown = Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap();
        let facts = GrantFacts { base: Some(unknown), ..facts };
        assert_eq!(verdict(&dir, &facts), merged(MAIN, MergeKind::Ancestry));
    }

    #[test]
    fn patch_equivalence_walks_a_bounded_number_of_commits() {
        let sb = Sandbox::new();
        let (dir, facts, _) = branch_with_work(&sb);
        sb.git(&dir, &["merge", "-q", "--squash", "hotfix/a"]);
        sb.git(&dir, &["commit", "-q", "-m", "squashed"]);
        for i in 0..3 {
            sb.commit(&dir, "later.txt", &format!("{i}\n"), "later work");
        }
        let repo = Repository::open(&dir).unwrap();
        let situation = situation(&dir);
        assert_eq!(
            decide_bounded(&repo, &facts, &situation, 3).unwrap(),
            Verdict::Keep,
            "squash is 4th newest"
        );
        assert_eq!(
            decide_bounded(&repo, &facts, &situation, 4).unwrap(),
            merged(MAIN, MergeKind::PatchEquivalent)
        );
    }

    #[test]
    fn hostile_branch_names_are_only_data() {
        let sb = Sandbox::new();
        let (dir, _) = sb.repo_with_origin("r");
        let long = format!("hotfix/{}$(touch${{IFS}}y)`touch${{IFS}}z`;'\"", "w".repeat(210));
        for name in ["hotfix/$(touch${IFS}x);\"'", long.as_str()] {
            let refname = format!("refs/heads/{name}");
            sb.git(&dir, &["switch", "-q", "-c", name, "main"]);
            sb.commit(&dir, "fix.txt", &format!("{name}\n"), "fix");
            let facts = sb.grant(&dir, "origin/main");
            assert_eq!(facts.branch, refname);
            sb.git(&dir, &["push", "-q", "origin", &refname]);
            sb.git(&dir, &["switch", "-q", "main"]);
            assert_eq!(verdict(&dir, &facts), Verdict::Keep);
            sb.git(&dir, &["branch", "-q", "-D", name]);
            assert_eq!(verdict(&dir, &facts), Verdict::Keep, "still on refs/remotes/origin/...");
            sb.git(&dir, &["push", "-q", "origin", "--delete", &refname]);
            assert_eq!(verdict(&dir, &facts), Verdict::Abandoned(AbandonReason::BranchGone));
            sb.git(&dir, &["merge", "-q", "--no-ff", "-m", "merge", &facts.commit.to_string()]);
            assert_eq!(verdict(&dir, &facts), merged(MAIN, MergeKind::Ancestry));
        }
        for place in [sb.root.path(), &dir, Path::new(".")] {
            for file in ["x", "y", "z"] {
                assert!(!place.join(file).exists(), "{file} created in {}", place.display());
            }
        }
    }

    #[test]
    fn protected_tips_are_local_and_remote_tracking_matches() {
        let sb = Sandbox::new();
        let (dir, origin) = sb.repo_with_origin("r");
        let bob = sb.clone_of(&origin, "bob");
        for branch in ["release/2.0", "hotfix/b", "mainline"] {
            sb.git(&bob, &["push", "-q", "origin", &format!("main:refs/heads/{branch}")]);
        }
        sb.git(&dir, &["branch", "release/1.x"]);
        sb.git(&dir, &["branch", "feature"]);
        sb.git(&dir, &["remote", "add", "up/stream", p(&origin)]);
        sb.git(&dir, &["fetch", "-q", "--all"]);
        assert!(!sb.git(&dir, &["symbolic-ref", "refs/remotes/origin/HEAD"]).is_empty());

        let repo = Repository::open(&dir).unwrap();
        let tips = protected_tips(&repo, &PROTECTED).unwrap();
        let names: Vec<&str> = tips.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "refs/heads/main",
                "refs/heads/release/1.x",
                "refs/remotes/origin/main",
                "refs/remotes/origin/release/2.0",
                "refs/remotes/up/stream/main",
                "refs/remotes/up/stream/release/2.0",
            ]
        );
        let main = sb.rev(&dir, "main");
        assert!(tips.iter().all(|(_, oid)| *oid == main));
        assert!(protected_tips(&repo, &[]).unwrap().is_empty());
    }

    #[test]
    fn split_remote_ref_prefers_configured_remotes() {
        let remotes = ["up/stream".to_owned(), "up".to_owned()];
        assert_eq!(split_remote_ref("refs/remotes/up/stream/main", &remotes), Some(("up/stream", "main")));
        assert_eq!(split_remote_ref("refs/remotes/up/main", &remotes), Some(("up", "main")));
        assert_eq!(split_remote_ref("refs/remotes/gone/a/b", &remotes), Some(("gone", "a/b")));
        assert_eq!(split_remote_ref("refs/remotes/lonely", &remotes), None);
        assert_eq!(split_remote_ref("refs/heads/main", &remotes), None);
    }

    #[test]
    fn a_branch_that_is_not_under_refs_heads_is_refused() {
        let sb = Sandbox::new();
        let dir = sb.repo("r");
        let commit = sb.rev(&dir, "HEAD");
        for branch in ["HEAD", "refs/heads/", "refs/tags/v1"] {
            let facts = GrantFacts {
                grant_id: ID.parse().unwrap(),
                branch: branch.to_owned(),
                commit,
                base: None,
                expires_at: None,
            };
            let err = decide(&Repository::open(&dir).unwrap(), &facts, &situation(&dir)).unwrap_err();
            assert!(matches!(err, LifecycleError::NotABranch { .. }), "{branch}: {err}");
        }
    }

    #[test]
    fn facts_from_a_record() {
        let mut record = Record {
            version: crate::grant::RECORD_VERSION,
            kind: RecordKind::Grant,
            grant_id: ID.parse().unwrap(),
            issued_at: now(),
            principal: Principal { email: "a@example.com".into(), user: "a".into(), host: "h".into() },
            reason: "INC-1".into(),
            repo: "https://example.com/r".into(),
            branch: "refs/heads/hotfix/a".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            base: Some("89abcdef0123456789abcdef0123456789abcdef".into()),
            policy_commit: None,
            provider: "aws".into(),
            target: "arn:aws:iam::123456789012:role/r".into(),
            role: None,
            scope: None,
            expires_at: Some(now()),
            credential_fingerprint: None,
            database: None,
            intent_sha256: None,
            trigger: None,
            result: None,
            error: None,
            request_sha256: None,
            decision: None,
            approvals: None,
            break_glass: None,
            approve_by: None,
            delivery_key: None,
        };
        let facts = GrantFacts::from_record(&record).unwrap();
        assert_eq!(facts.branch, "refs/heads/hotfix/a");
        assert_eq!(facts.commit.to_string(), record.commit);
        assert_eq!(facts.base.map(|b| b.to_string()), record.base);
        assert_eq!(facts.expires_at, Some(now()));

        record.base = Some("abc".into());
        let err = GrantFacts::from_record(&record).unwrap_err();
        assert!(matches!(err, LifecycleError::BadObjectId { field: "base", .. }), "{err}");
    }
}

//! The trust ref: where everything that decides (policy, allowed signers) is read from.
//! By default the remote-tracking protected branch, i.e. what the server accepted through review;
//! the local branch only in a repository with no remote. Never the working tree.

use crate::gitconfig::GitConfig;
use git2::{ErrorCode, ObjectType, Oid, Repository};

pub const CONFIG_KEY: &str = "tpa.trustRef";
/// The largest policy, allowed_signers or session policy tpa reads (1 MiB): real ones are a few KiB.
pub const MAX_COMMITTED_FILE: usize = 1024 * 1024;
const DEFAULT_BRANCHES: [&str; 2] = ["main", "master"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrustOrigin {
    /// Pinned with `git config tpa.trustRef`.
    Configured,
    /// The remote-tracking protected branch (the default).
    RemoteTracking,
    /// No remote at all: the local protected branch, which nobody reviewed.
    LocalNoRemote,
}

#[derive(Clone, Debug)]
pub struct TrustRef {
    pub refname: String,
    pub commit: Oid,
    pub origin: TrustOrigin,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "`{CONFIG_KEY}` is `{0}`, which does not resolve to a commit: fetch it, or fix it with `git config {CONFIG_KEY} REF`"
    )]
    ConfiguredMissing(String),
    #[error(
        "remote `{0}` has no main or master branch tracked here: run `git fetch {0}`, \
         or pin the trust ref with `git config {CONFIG_KEY} refs/remotes/{0}/BRANCH`"
    )]
    NoRemoteBranch(String),
    #[error(
        "this repository has no remote and no main or master branch to read policy and signers from: \
         commit .tpa/ on main, or pin the trust ref with `git config {CONFIG_KEY} REF`"
    )]
    NoLocalBranch,
    #[error(
        "{path} at {refname} is a symbolic link; tpa reads only files committed as they are: commit the \
         file itself there through review"
    )]
    Symlink { path: String, refname: String },
    #[error(
        "{path} at {refname} is {size} bytes; tpa reads at most {MAX_COMMITTED_FILE} bytes of its own \
         files: shorten it through review"
    )]
    TooLarge { path: String, refname: String, size: usize },
    #[error("git error while resolving the trust ref: {0}")]
    Git(#[from] git2::Error),
    #[error(transparent)]
    Config(#[from] crate::gitconfig::ConfigError),
}

impl TrustRef {
    pub fn resolve(repo: &Repository) -> Result<Self, TrustError> {
        let config = GitConfig::of(repo)?;
        if let Some(configured) = config.get(CONFIG_KEY).map(str::to_owned) {
            let commit = peel_to_commit(repo, &configured)?
                .ok_or(TrustError::ConfiguredMissing(configured.clone()))?;
            return Ok(TrustRef { refname: configured, commit, origin: TrustOrigin::Configured });
        }
        let names = config.remotes();
        if let Some(remote) = names.iter().find(|n| *n == "origin").or(names.first()) {
            let head = format!("refs/remotes/{remote}/HEAD");
            let mut candidates = Vec::new();
            if let Ok(reference) = repo.find_reference(&head)
                && let Ok(Some(target)) = reference.symbolic_target()
            {
                candidates.push(target.to_owned());
            }
            candidates.extend(DEFAULT_BRANCHES.iter().map(|b| format!("refs/remotes/{remote}/{b}")));
            for refname in candidates {
                if let Some(commit) = peel_to_commit(repo, &refname)? {
                    return Ok(TrustRef { refname, commit, origin: TrustOrigin::RemoteTracking });
                }
            }
            return Err(TrustError::NoRemoteBranch(remote.clone()));
        }
        for branch in DEFAULT_BRANCHES {
            let refname = format!("refs/heads/{branch}");
            if let Some(commit) = peel_to_commit(repo, &refname)? {
                return Ok(TrustRef { refname, commit, origin: TrustOrigin::LocalNoRemote });
            }
        }
        Err(TrustError::NoLocalBranch)
    }

    /// A file's bytes as committed at the trust ref, or None when it is not there.
    pub fn read_file(&self, repo: &Repository, path: &str) -> Result<Option<Vec<u8>>, TrustError> {
        read_committed(repo, self.commit, path, &self.refname)
    }
}

/// A file of tpa's as committed at `commit` (named `refname` in errors), or None when it is not
/// there: never through a symbolic link, never more than [`MAX_COMMITTED_FILE`] bytes (the size is
/// read from the object header before the content is loaded).
pub fn read_committed(
    repo: &Repository,
    commit: Oid,
    path: &str,
    refname: &str,
) -> Result<Option<Vec<u8>>, TrustError> {
    let tree = repo.find_commit(commit)?.tree()?;
    let entry = match tree.get_path(std::path::Path::new(path)) {
        Ok(entry) => entry,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if entry.kind() != Some(ObjectType::Blob) {
        return Ok(None);
    }
    if entry.filemode() == 0o120000 {
        return Err(TrustError::Symlink { path: path.to_owned(), refname: refname.to_owned() });
    }
    let (size, _) = repo.odb()?.read_header(entry.id())?;
    if size > MAX_COMMITTED_FILE {
        return Err(TrustError::TooLarge { path: path.to_owned(), refname: refname.to_owned(), size });
    }
    Ok(Some(repo.find_blob(entry.id())?.content().to_vec()))
}

fn peel_to_commit(repo: &Repository, spec: &str) -> Result<Option<Oid>, git2::Error> {
    match repo.revparse_single(spec) {
        Ok(object) => Ok(object.peel_to_commit().ok().map(|c| c.id())),
        Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::InvalidSpec | ErrorCode::Ambiguous) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

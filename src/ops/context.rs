//! What a record says about where it was made: who, which repository, branch and commit.

use git2::{ErrorCode, Oid, Repository};

use chrono::{DateTime, Utc};

use crate::gitconfig::GitConfig;
use crate::grant::{GrantId, Principal, RECORD_VERSION, Record, RecordKind};
use crate::trust::TrustRef;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error(
        "git has no user.email: set it with `git config user.email you@example.com` (it names you in the ledger)"
    )]
    NoEmail,
    #[error("HEAD is detached: check out the branch you are working on (`git switch -c hotfix/...`)")]
    Detached,
    #[error("branch {0} has no commits yet: commit first, so the grant can name a commit")]
    Unborn(String),
    #[error(
        "branch name {0} is not valid UTF-8; tpa records branch names as text: \
         rename it with `git branch -m NEW-NAME`"
    )]
    NonUtf8Branch(String),
    #[error("git error while reading HEAD: {0}")]
    Git(#[from] git2::Error),
    #[error(transparent)]
    Config(#[from] crate::gitconfig::ConfigError),
}

#[derive(Clone, Debug)]
pub struct GitContext {
    pub principal: Principal,
    /// The origin URL with any user name or password removed, else the repository's path.
    pub repo_url: String,
    /// Full refname of the current branch.
    pub branch: String,
    pub commit: Oid,
    /// Merge-base of HEAD with the trust ref, when both exist.
    pub base: Option<Oid>,
}

impl GitContext {
    /// A record of a grant made here: who, where, why, from which policy. What depends on the
    /// provider (provider, target, role, database, scope, expiry...) is the caller's to set.
    pub fn record(
        &self,
        kind: RecordKind,
        grant_id: &GrantId,
        issued_at: DateTime<Utc>,
        reason: &str,
        policy_commit: Option<String>,
    ) -> Record {
        Record {
            version: RECORD_VERSION,
            kind,
            grant_id: grant_id.clone(),
            issued_at,
            principal: self.principal.clone(),
            reason: reason.to_owned(),
            repo: self.repo_url.clone(),
            branch: self.branch.clone(),
            commit: self.commit.to_string(),
            base: self.base.map(|b| b.to_string()),
            policy_commit,
            provider: String::new(),
            target: String::new(),
            role: None,
            database: None,
            scope: None,
            expires_at: None,
            credential_fingerprint: None,
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
        }
    }
}

pub fn principal(repo: &Repository) -> Result<Principal, ContextError> {
    let config = GitConfig::of(repo)?;
    let email = config.get_nonempty("user.email").ok_or(ContextError::NoEmail)?.to_owned();
    Ok(Principal { email, user: os_user(), host: host_name() })
}

pub fn capture(repo: &Repository, trust: Option<&TrustRef>) -> Result<GitContext, ContextError> {
    let principal = principal(repo)?;
    let head = repo.find_reference("HEAD")?;
    let Some(target) = head.symbolic_target_bytes() else { return Err(ContextError::Detached) };
    let branch = std::str::from_utf8(target)
        .map_err(|_| ContextError::NonUtf8Branch(crate::escape::bytes(target)))?
        .to_owned();
    let commit = match repo.refname_to_id(&branch) {
        Ok(oid) => oid,
        Err(e) if e.code() == ErrorCode::NotFound => {
            return Err(ContextError::Unborn(crate::escape::text(&branch)));
        }
        Err(e) => return Err(e.into()),
    };
    let base = trust.and_then(|t| repo.merge_base(commit, t.commit).ok());
    Ok(GitContext { principal, repo_url: repo_url(repo), branch, commit, base })
}

pub fn repo_url(repo: &Repository) -> String {
    if let Some(url) =
        GitConfig::of(repo).ok().as_deref().and_then(|c| c.remote_url("origin").map(str::to_owned))
    {
        return strip_credentials(&url);
    }
    let path = repo.workdir().unwrap_or_else(|| repo.path());
    path.display().to_string()
}

/// `https://user:token@host/x` -> `https://host/x`: a URL's credentials never reach the ledger.
pub fn strip_credentials(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if let Some((_, host)) = authority.rsplit_once('@') {
            let keep_user = scheme == "ssh";
            let user = authority.rsplit_once('@').map(|(u, _)| u).unwrap_or("");
            let user = user.split(':').next().unwrap_or("");
            let authority =
                if keep_user && !user.is_empty() { format!("{user}@{host}") } else { host.to_owned() };
            return format!("{scheme}://{authority}/{path}");
        }
    }
    url.to_owned()
}

fn os_user() -> String {
    ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::strip_credentials;

    #[test]
    fn credentials_are_stripped_from_urls() {
        assert_eq!(
            strip_credentials("https://bob:ghp_secret@github.com/a/b.git"),
            "https://github.com/a/b.git"
        );
        assert_eq!(strip_credentials("https://token@github.com/a/b"), "https://github.com/a/b");
        assert_eq!(strip_credentials("ssh://git:pw@host/x"), "ssh://git@host/x");
        assert_eq!(strip_credentials("git@github.com:a/b.git"), "git@github.com:a/b.git");
        assert_eq!(strip_credentials("/srv/repo.git"), "/srv/repo.git");
    }
}

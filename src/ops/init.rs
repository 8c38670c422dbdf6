//! `tpa init`: set up the signer, the allowed_signers entry, the policy file and the notes refspecs.
//! Idempotent: running it again changes nothing that is already right.

use std::path::{Path, PathBuf};

use git2::Repository;
use ssh_key::{HashAlg, PublicKey};

use crate::gitconfig::GitConfig;
use crate::ledger::signers::{AllowedSigners, SignersError, format_line};
use crate::ledger::signing::{self, Signer, SignerSource, SigningError};
use crate::ops::context::{self, ContextError};
use crate::trust::{TrustOrigin, TrustRef};

pub const ALLOWED_SIGNERS_PATH: &str = ".tpa/allowed_signers";
pub use crate::policy::POLICY_PATH;
const POLICY_TEMPLATE: &str = include_str!("../../templates/policy.toml");

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("tpa init needs a repository with a working tree (this one is bare)")]
    Bare,
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error("{path}: {source}; fix that line, then run `tpa init` again")]
    Signers {
        path: PathBuf,
        #[source]
        source: SignersError,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("git error: {0}")]
    Git(#[from] git2::Error),
    #[error(transparent)]
    Config(#[from] crate::gitconfig::ConfigError),
    #[error("cannot install the git hooks: {0}")]
    Hooks(#[from] crate::hooks::HookError),
}

/// Where the signing key comes from, as the user asked.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// `--signing-key PATH`: recorded in git config.
    pub signing_key: Option<PathBuf>,
    /// `TPA_SIGNING_KEY`: used now and at every run, not recorded.
    pub env_signing_key: Option<PathBuf>,
    /// The tpa binary the git hooks run (absolute); None installs no hooks.
    pub tpa_path: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Created,
    Unchanged,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct InitReport {
    /// `file`, `keyring`, `ssh-keygen`, `env` (TPA_SIGNING_KEY) or `user-file` (tpa's own key file
    /// under the user's config dir, where the only keyring forgets at reboot).
    pub signer: &'static str,
    pub signer_fingerprint: String,
    /// The private key file, for the file signers.
    pub signer_key_file: Option<PathBuf>,
    pub signer_change: Change,
    pub principal: String,
    pub allowed_signers_path: PathBuf,
    pub allowed_signers: Change,
    /// Another principal already owns this key in allowed_signers.
    pub key_listed_for: Option<String>,
    pub policy_path: PathBuf,
    pub policy: Change,
    pub refspecs_added: Vec<String>,
    pub trust_ref: Option<String>,
    pub trust_origin: Option<TrustOrigin>,
    /// Whether the trust ref already lists this key: until it does, records verify as unknown_signer.
    pub key_trusted: bool,
    /// The git hooks (post-merge, post-commit, post-checkout, post-rewrite) that end grants.
    pub hooks: Option<crate::hooks::InstallOutcome>,
}

pub fn init(repo: &Repository, options: &InitOptions) -> Result<InitReport, InitError> {
    let workdir = repo.workdir().ok_or(InitError::Bare)?.to_owned();
    let principal = context::principal(repo)?;
    let (signer, signer_kind, signer_change) = choose_signer(repo, options, &principal.email)?;
    let fingerprint = signer.public_key.fingerprint(HashAlg::Sha256).to_string();

    let signers_path = workdir.join(ALLOWED_SIGNERS_PATH);
    let (allowed_signers, key_listed_for) = add_signer(&signers_path, &principal.email, &signer.public_key)?;
    let policy_path = workdir.join(POLICY_PATH);
    let policy = write_if_missing(&policy_path, POLICY_TEMPLATE)?;
    let refspecs_added = add_notes_refspecs(repo)?;

    let trust = TrustRef::resolve(repo).ok();
    let key_trusted = trust
        .as_ref()
        .and_then(|t| t.read_file(repo, ALLOWED_SIGNERS_PATH).ok().flatten())
        .and_then(|bytes| AllowedSigners::parse(&String::from_utf8_lossy(&bytes)).ok())
        .is_some_and(|s| s.contains_key(&signer.public_key));
    let hooks = match &options.tpa_path {
        Some(tpa) => Some(crate::hooks::install(repo, tpa, false)?),
        None => None,
    };
    Ok(InitReport {
        signer: signer_kind,
        signer_fingerprint: fingerprint,
        signer_key_file: match &signer.source {
            SignerSource::KeyFile(path) => Some(path.clone()),
            _ => None,
        },
        signer_change,
        principal: principal.email,
        allowed_signers_path: signers_path,
        allowed_signers,
        key_listed_for,
        policy_path,
        policy,
        refspecs_added,
        trust_ref: trust.as_ref().map(|t| t.refname.clone()),
        trust_origin: trust.as_ref().map(|t| t.origin),
        key_trusted,
        hooks,
    })
}

/// `tpa init --dry-run`: what installing the hooks would change (in git's hooks directory or in the
/// hook manager's files, with diffs), and nothing else; writes nothing.
pub fn plan_hooks(repo: &Repository, tpa: &Path) -> Result<crate::hooks::InstallOutcome, InitError> {
    repo.workdir().ok_or(InitError::Bare)?;
    Ok(crate::hooks::install(repo, tpa, true)?)
}

fn choose_signer(
    repo: &Repository,
    options: &InitOptions,
    email: &str,
) -> Result<(Signer, &'static str, Change), InitError> {
    let config = GitConfig::of(repo)?;
    if let Some(path) = &options.signing_key {
        let path =
            std::path::absolute(path).map_err(|source| InitError::Write { path: path.clone(), source })?;
        let source = SignerSource::KeyFile(path);
        let signer = Signer::open(source.clone())?;
        let change = set_config(repo, &config, &source)?;
        return Ok((signer, "file", change));
    }
    if let Some(path) = &options.env_signing_key {
        return Ok((Signer::open(SignerSource::KeyFile(path.clone()))?, "env", Change::Unchanged));
    }
    let git_signing_key = config.get("user.signingkey").map(str::to_owned);
    if let Some(value) = config.get(signing::CONFIG_KEY) {
        match SignerSource::from_config(value, git_signing_key.clone()).and_then(Signer::open) {
            Ok(signer) => {
                let kind = kind_of(&signer.source);
                return Ok((signer, kind, Change::Unchanged));
            }
            // A configured keyring key that vanished is replaced below; anything else is for the user.
            Err(SigningError::KeyringKeyMissing(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let uses_ssh_signing = config.get("gpg.format") == Some("ssh");
    if let (true, Some(spec)) = (uses_ssh_signing, git_signing_key) {
        let source = SignerSource::SshKeygen(spec);
        let signer = Signer::open(source.clone())?;
        let change = set_config(repo, &config, &source)?;
        return Ok((signer, "ssh-keygen", change));
    }
    let comment = format!("tpa {email}");
    if !crate::secrets::backend().map_err(SigningError::from)?.persistent() {
        // The kernel keyring forgets everything at reboot; a signing key must outlive that.
        let (path, created) = signing::user_key_file(&comment)?;
        let change = if created { Change::Created } else { Change::Unchanged };
        let source = SignerSource::KeyFile(path);
        let signer = Signer::open(source.clone())?;
        set_config(repo, &config, &source)?;
        return Ok((signer, "user-file", change));
    }
    let (fingerprint, _public) = signing::create_keyring_key(&comment)?;
    let source = SignerSource::Keyring(fingerprint);
    let signer = Signer::open(source.clone())?;
    set_config(repo, &config, &source)?;
    Ok((signer, "keyring", Change::Created))
}

fn kind_of(source: &SignerSource) -> &'static str {
    match source {
        SignerSource::KeyFile(_) => "file",
        SignerSource::Keyring(_) => "keyring",
        SignerSource::SshKeygen(_) => "ssh-keygen",
    }
}

fn set_config(repo: &Repository, config: &GitConfig, source: &SignerSource) -> Result<Change, git2::Error> {
    let value = source.to_config();
    if config.get(signing::CONFIG_KEY) == Some(value.as_str()) {
        return Ok(Change::Unchanged);
    }
    repo.config()?.open_level(git2::ConfigLevel::Local)?.set_str(signing::CONFIG_KEY, &value)?;
    GitConfig::invalidate();
    Ok(Change::Created)
}

/// Appends `principal namespaces="tpa" key` unless the key is already listed.
fn add_signer(path: &Path, principal: &str, key: &PublicKey) -> Result<(Change, Option<String>), InitError> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(InitError::Write { path: path.to_owned(), source }),
    };
    let signers = AllowedSigners::parse(&existing)
        .map_err(|source| InitError::Signers { path: path.to_owned(), source })?;
    let listed: Vec<_> = signers.entries.iter().filter(|e| e.key.key_data() == key.key_data()).collect();
    if !listed.is_empty() {
        let other = listed
            .iter()
            .find(|e| !crate::ledger::signers::pattern_list_matches(&e.principals, principal))
            .map(|e| e.principals.clone());
        return Ok((Change::Unchanged, other));
    }
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format_line(principal, key));
    text.push('\n');
    write_file(path, &text)?;
    Ok((Change::Created, None))
}

fn write_if_missing(path: &Path, contents: &str) -> Result<Change, InitError> {
    if path.exists() {
        return Ok(Change::Unchanged);
    }
    write_file(path, contents)?;
    Ok(Change::Created)
}

fn write_file(path: &Path, contents: &str) -> Result<(), InitError> {
    let err = |source| InitError::Write { path: path.to_owned(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    std::fs::write(path, contents).map_err(err)
}

/// Adds `+refs/notes/tpa*:refs/notes/remotes/<remote>/tpa*` to each remote's fetch refspecs:
/// others' records arrive beside ours, never forced onto our own ref. The pattern is a glob on
/// purpose: git fails the whole `git fetch` when an exact refspec names a ref the remote lacks, and a
/// remote has no ledger until someone pushes one. No push refspec: that would change what a plain
/// `git push` pushes.
fn add_notes_refspecs(repo: &Repository) -> Result<Vec<String>, git2::Error> {
    let mut added = Vec::new();
    let config = GitConfig::of(repo).map_err(|e| git2::Error::from_str(&e.to_string()))?;
    for name in config.remotes() {
        let name = name.as_str();
        let spec = format!("+{}*:refs/notes/remotes/{name}/tpa*", crate::ledger::NOTES_REF);
        let exact = format!("+{}:refs/notes/remotes/{name}/tpa", crate::ledger::NOTES_REF);
        let specs: Vec<String> = config.get_all(&format!("remote.{name}.fetch")).map(str::to_owned).collect();
        if specs.contains(&exact) {
            // Written by an earlier tpa; it breaks `git fetch` against a remote with no ledger yet.
            let pattern = format!("^{}$", regex_escape(&exact));
            repo.config()?
                .open_level(git2::ConfigLevel::Local)?
                .remove_multivar(&format!("remote.{name}.fetch"), &pattern)?;
        }
        if specs.contains(&spec) {
            continue;
        }
        repo.remote_add_fetch(name, &spec)?;
        added.push(format!("{name}: {spec}"));
    }
    GitConfig::invalidate();
    Ok(added)
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '-' || c == '_' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

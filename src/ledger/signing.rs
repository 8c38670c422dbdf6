//! Who signs records, and how: a key file (CI), the user's git SSH signing key through
//! `ssh-keygen -Y sign` (so ssh-agent and security keys work, as for git's `gpg.format=ssh`), or a
//! tpa-made ed25519 key kept in the OS keyring.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use super::signers::NAMESPACE;
use crate::secrets::{self, SecretsError};

/// The git config key recording which signer `tpa init` chose for this repository.
pub const CONFIG_KEY: &str = "tpa.signingKey";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignerSource {
    /// An unencrypted OpenSSH private key file (TPA_SIGNING_KEY, `--signing-key`).
    KeyFile(PathBuf),
    /// A tpa-made key in the OS keyring, by its SHA256 fingerprint.
    Keyring(String),
    /// git's `user.signingkey` (a path, or `key::ssh-...`), signed through `ssh-keygen -Y sign`.
    SshKeygen(String),
}

impl SignerSource {
    /// The value stored under `tpa.signingKey`.
    pub fn to_config(&self) -> String {
        match self {
            SignerSource::KeyFile(path) => format!("file:{}", path.display()),
            SignerSource::Keyring(fingerprint) => format!("keyring:{fingerprint}"),
            SignerSource::SshKeygen(_) => "ssh".to_owned(),
        }
    }

    /// Reads `tpa.signingKey`; `ssh` refers to git's own `user.signingkey`.
    pub fn from_config(value: &str, git_signing_key: Option<String>) -> Result<Self, SigningError> {
        if let Some(path) = value.strip_prefix("file:") {
            Ok(SignerSource::KeyFile(PathBuf::from(path)))
        } else if let Some(fingerprint) = value.strip_prefix("keyring:") {
            Ok(SignerSource::Keyring(fingerprint.to_owned()))
        } else if value == "ssh" {
            git_signing_key.map(SignerSource::SshKeygen).ok_or(SigningError::NoGitSigningKey)
        } else {
            Err(SigningError::BadConfig(value.to_owned()))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("no signing key is set up for this repository: run `tpa init` (or set TPA_SIGNING_KEY=PATH)")]
    NotConfigured,
    #[error("`{CONFIG_KEY}` is `{0}`: expected file:PATH, keyring:FINGERPRINT or ssh; run `tpa init` again")]
    BadConfig(String),
    #[error("`{CONFIG_KEY}` is `ssh` but git has no `user.signingkey`: set it, or run `tpa init` again")]
    NoGitSigningKey,
    #[error("cannot read signing key {path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    #[error(
        "signing key {0} is passphrase-protected: load it into ssh-agent and point git at it \
         (`git config gpg.format ssh`, `git config user.signingkey KEY.pub`), then run `tpa init` again"
    )]
    Encrypted(PathBuf),
    #[error("signing key in the OS keyring: {0}")]
    Keyring(#[from] SecretsError),
    #[error("the OS keyring entry for signing key {0} is missing: run `tpa init` to make a new key")]
    KeyringKeyMissing(String),
    #[error("cannot read git's user.signingkey `{spec}`: {message}")]
    GitSigningKey { spec: String, message: String },
    #[error("`ssh-keygen -Y sign` failed: {0}")]
    SshKeygen(String),
    #[error("signature error: {0}")]
    Ssh(#[from] ssh_key::Error),
}

/// A ready signer: its source and public key.
pub struct Signer {
    pub source: SignerSource,
    pub public_key: PublicKey,
    /// The private key, for in-process signers: read once per process (a keyring read is a D-Bus
    /// round trip), wiped on drop by ssh-key.
    private_key: Option<PrivateKey>,
}

impl Signer {
    pub fn open(source: SignerSource) -> Result<Self, SigningError> {
        let (public_key, private_key) = match &source {
            SignerSource::KeyFile(path) => {
                let key = read_key_file(path)?;
                (key.public_key().clone(), Some(key))
            }
            SignerSource::Keyring(fingerprint) => {
                let key = load_keyring_key(fingerprint)?;
                (key.public_key().clone(), Some(key))
            }
            SignerSource::SshKeygen(spec) => (git_signing_public_key(spec)?, None),
        };
        Ok(Signer { source, public_key, private_key })
    }

    /// Signs `payload` under namespace `tpa`; returns the armored SSHSIG.
    pub fn sign(&self, payload: &[u8]) -> Result<String, SigningError> {
        let signature = match (&self.private_key, &self.source) {
            (Some(key), _) => sign_in_process(key, payload)?,
            (None, SignerSource::SshKeygen(spec)) => return sign_with_ssh_keygen(spec, payload),
            (None, _) => unreachable!("in-process signers always hold their key"),
        };
        Ok(signature.to_pem(LineEnding::LF)?.trim_end().to_owned() + "\n")
    }
}

/// A signer opened when first asked for: for work that signs only sometimes. The sweep the hooks
/// start after a commit, a checkout or a merge ends a grant now and then and keeps them all most
/// times; opened up front, its signer would open the keyring (a D-Bus session, and a password
/// prompt where the keyring is locked) on every commit of a branch that holds a grant.
pub enum LazySigner<'a> {
    Ready(&'a Signer),
    Deferred {
        open: Box<dyn Fn() -> Result<Signer, SigningError> + 'a>,
        opened: std::cell::OnceCell<Box<Signer>>,
    },
}

impl<'a> LazySigner<'a> {
    pub fn deferred(open: impl Fn() -> Result<Signer, SigningError> + 'a) -> Self {
        LazySigner::Deferred { open: Box::new(open), opened: std::cell::OnceCell::new() }
    }

    /// The signer, opened now if it was not yet; an error is not kept, so a later ask tries again.
    pub fn get(&self) -> Result<&Signer, SigningError> {
        match self {
            LazySigner::Ready(signer) => Ok(signer),
            LazySigner::Deferred { open, opened } => {
                if opened.get().is_none() {
                    let _ = opened.set(Box::new(open()?));
                }
                Ok(opened.get().expect("opened just now"))
            }
        }
    }
}

fn sign_in_process(key: &PrivateKey, payload: &[u8]) -> Result<SshSig, SigningError> {
    Ok(key.sign(NAMESPACE, HashAlg::Sha512, payload)?)
}

/// An OpenSSH private key is a few KiB at most (RSA 16384 is under 13 KiB).
const KEY_FILE_MAX: u64 = 64 * 1024;

fn read_key_file(path: &Path) -> Result<PrivateKey, SigningError> {
    use std::io::Read;
    let err = |message: String| SigningError::KeyFile { path: path.to_owned(), message };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let meta = file.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.len() > KEY_FILE_MAX {
        return Err(err(format!("{} bytes is too large for an OpenSSH private key", meta.len())));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            // ssh refuses such keys too: anyone else on the machine may have read it.
            return Err(err(format!(
                "its permissions {mode:04o} are too open (others can read it): `chmod 600 {}`",
                path.display()
            )));
        }
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    file.take(KEY_FILE_MAX).read_to_string(&mut text).map_err(|e| err(e.to_string()))?;
    let key = PrivateKey::from_openssh(text.as_bytes()).map_err(|e| SigningError::KeyFile {
        path: path.to_owned(),
        message: format!("not an OpenSSH private key ({e})"),
    })?;
    if key.is_encrypted() {
        return Err(SigningError::Encrypted(path.to_owned()));
    }
    Ok(key)
}

fn load_keyring_key(fingerprint: &str) -> Result<PrivateKey, SigningError> {
    let pem = match secrets::load(&secrets::signing_key_account(fingerprint)) {
        Ok(pem) => pem,
        Err(SecretsError::Missing { .. }) => {
            return Err(SigningError::KeyringKeyMissing(fingerprint.to_owned()));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(PrivateKey::from_openssh(pem.as_bytes())?)
}

/// Makes a new ed25519 key and stores it in the OS keyring; returns its fingerprint and public key.
pub fn create_keyring_key(comment: &str) -> Result<(String, PublicKey), SigningError> {
    let mut key = PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)?;
    key.set_comment(comment);
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let pem = key.to_openssh(LineEnding::LF)?;
    secrets::store(&secrets::signing_key_account(&fingerprint), &pem)?;
    // Read it back: a keyring that accepts writes but does not keep them must not pass as working.
    let stored = load_keyring_key(&fingerprint)?;
    if stored.public_key().key_data() != key.public_key().key_data() {
        return Err(SigningError::KeyringKeyMissing(fingerprint));
    }
    Ok((fingerprint, key.public_key().clone()))
}

/// tpa's own key file for this user, `$XDG_CONFIG_HOME/tpa/signing_key` (else `~/.config/...`):
/// where the only keyring is the kernel's, which forgets at reboot. Made once, mode 0600 as
/// ssh-keygen makes them, and reused by every repository after that. Returns the path and whether
/// it was made now.
pub fn user_key_file(comment: &str) -> Result<(PathBuf, bool), SigningError> {
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| SigningError::KeyFile {
            path: PathBuf::from("~/.config/tpa/signing_key"),
            message: "neither XDG_CONFIG_HOME nor HOME is set".into(),
        })?
        .join("tpa");
    let path = dir.join("signing_key");
    let err = |e: std::io::Error| SigningError::KeyFile { path: path.clone(), message: e.to_string() };
    if path.exists() {
        read_key_file(&path)?;
        return Ok((path, false));
    }
    std::fs::create_dir_all(&dir).map_err(err)?;
    let mut key = PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)?;
    key.set_comment(comment);
    let pem = key.to_openssh(LineEnding::LF)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(err)?;
    file.write_all(pem.as_bytes()).and_then(|()| file.sync_all()).map_err(err)?;
    std::fs::write(dir.join("signing_key.pub"), key.public_key().to_openssh()? + "\n").map_err(err)?;
    Ok((path, true))
}

/// Checks that a key file is usable and returns its public key.
pub fn key_file_public_key(path: &Path) -> Result<PublicKey, SigningError> {
    Ok(read_key_file(path)?.public_key().clone())
}

/// git's `user.signingkey` for SSH: `key::<public key>`, a literal public key, or a path to a
/// public or private key file (`~` expanded, as git does).
fn git_signing_public_key(spec: &str) -> Result<PublicKey, SigningError> {
    let err = |message: String| SigningError::GitSigningKey { spec: spec.to_owned(), message };
    let literal = spec.strip_prefix("key::").unwrap_or(spec);
    if literal.starts_with("ssh-") || literal.starts_with("ecdsa-") || literal.starts_with("sk-") {
        return PublicKey::from_openssh(literal).map_err(|e| err(e.to_string()));
    }
    let path = expand_home(spec);
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    if let Ok(key) = PublicKey::from_openssh(text.trim()) {
        return Ok(key);
    }
    let public_path = PathBuf::from(format!("{}.pub", path.display()));
    let text = std::fs::read_to_string(&public_path)
        .map_err(|_| err(format!("not a public key, and {} is missing", public_path.display())))?;
    PublicKey::from_openssh(text.trim()).map_err(|e| err(e.to_string()))
}

fn expand_home(spec: &str) -> PathBuf {
    match (spec.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(spec),
    }
}

fn sign_with_ssh_keygen(spec: &str, payload: &[u8]) -> Result<String, SigningError> {
    let literal = spec.strip_prefix("key::").unwrap_or(spec);
    // A literal public key goes to a temporary file, as git does: ssh-keygen then asks ssh-agent.
    // A public key is no secret; the file is removed when `_public_file` drops.
    let (_public_file, key_path) =
        if literal.starts_with("ssh-") || literal.starts_with("ecdsa-") || literal.starts_with("sk-") {
            let mut file =
                tempfile::NamedTempFile::new().map_err(|e| SigningError::SshKeygen(e.to_string()))?;
            writeln!(file, "{literal}").map_err(|e| SigningError::SshKeygen(e.to_string()))?;
            let path = file.path().to_owned();
            (Some(file), path)
        } else {
            (None, expand_home(spec))
        };
    let mut child = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", NAMESPACE, "-f"])
        .arg(&key_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SigningError::SshKeygen(format!("cannot run ssh-keygen: {e}")))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let written = stdin.write_all(payload);
    drop(stdin);
    let output = child.wait_with_output().map_err(|e| SigningError::SshKeygen(e.to_string()))?;
    written.map_err(|e| SigningError::SshKeygen(e.to_string()))?;
    if !output.status.success() {
        return Err(SigningError::SshKeygen(String::from_utf8_lossy(&output.stderr).trim().to_owned()));
    }
    let armored = String::from_utf8(output.stdout).map_err(|e| SigningError::SshKeygen(e.to_string()))?;
    SshSig::from_pem(armored.as_bytes())?;
    Ok(armored.trim_end().to_owned() + "\n")
}

//! The OS keyring: the only place tpa keeps a secret. One store per process, chosen once:
//!
//! - the Secret Service (gnome-keyring, KeePassXC) on a Linux desktop ([`secret_service`]):
//!   pure-Rust D-Bus, one connection and one encrypted session for the whole process;
//! - the kernel keyring (keyutils) on headless Linux (servers, CI runners, containers, WSL without
//!   a desktop): grant credentials go into the session keyring with a kernel timeout equal to the
//!   grant's remaining life, so they vanish by themselves. It does not survive a reboot, so it never
//!   holds a signing key;
//! - the Keychain on macOS, the Credential Manager on Windows.
//!
//! `TPA_KEYRING` forces a store. A Secret Service that answers but is locked or refuses is an
//! error with the fix, never a silent fall-back to another store.

use std::sync::OnceLock;

#[cfg(all(unix, not(target_os = "macos")))]
mod secret_service;

use chrono::{DateTime, Utc};
use zeroize::Zeroizing;

use crate::provider::{Credentials, DbLogin, Secret};

pub const SERVICE: &str = "tpa";
/// Forces a store: `secret-service`, `keyutils`, `keychain` or `windows`.
pub const STORE_ENV: &str = "TPA_KEYRING";

/// The kinds of store tpa can keep secrets in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    SecretService,
    Keyutils,
    Keychain,
    Windows,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::SecretService => "secret-service",
            Backend::Keyutils => "keyutils",
            Backend::Keychain => "keychain",
            Backend::Windows => "windows",
        }
    }

    /// Whether what is stored survives a reboot (a signing key must).
    pub fn persistent(self) -> bool {
        self != Backend::Keyutils
    }

    fn parse(name: &str) -> Option<Backend> {
        [Backend::SecretService, Backend::Keyutils, Backend::Keychain, Backend::Windows]
            .into_iter()
            .find(|b| b.name() == name)
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{0}")]
    Unavailable(String),
    #[error(
        "the Secret Service is locked or refused access ({0}). Unlock your keyring (log in to the \
         desktop, or `echo -n PASSWORD | gnome-keyring-daemon --replace --unlock --components=secrets`) \
         and try again; to use the kernel keyring instead, set {STORE_ENV}=keyutils"
    )]
    Locked(String),
    #[error("{STORE_ENV}={0} is not a keyring tpa knows: use secret-service, keyutils, keychain or windows")]
    UnknownStore(String),
    #[error(
        "the {0} keyring does not survive a reboot, so it cannot hold a signing key: use git's SSH \
         signing key or a key file (`tpa init` picks one)"
    )]
    NotPersistent(Backend),
    #[error("the OS keyring has no entry `{account}` for service `{SERVICE}`")]
    Missing { account: String },
    #[error("the {backend} keyring refused entry `{account}`: {message}")]
    Other { backend: Backend, account: String, message: String },
}

/// The store this process uses, chosen on first use and kept: one connection, one session.
struct Keyring {
    backend: Backend,
    #[cfg(all(unix, not(target_os = "macos")))]
    service: Option<secret_service::Service>,
    #[cfg(target_os = "linux")]
    session: Option<linux_keyutils::KeyRing>,
}

impl Keyring {
    #[cfg(all(unix, not(target_os = "macos")))]
    fn service(&self) -> &secret_service::Service {
        self.service.as_ref().expect("the Secret Service keyring has its service")
    }
}

fn keyring() -> Result<&'static Keyring, SecretsError> {
    static KEYRING: OnceLock<Result<Keyring, (Kind, String)>> = OnceLock::new();
    #[derive(Clone, Copy)]
    enum Kind {
        Unavailable,
        Locked,
        Unknown,
    }
    let chosen = KEYRING.get_or_init(|| {
        open().map_err(|e| match e {
            SecretsError::Locked(m) => (Kind::Locked, m),
            SecretsError::UnknownStore(m) => (Kind::Unknown, m),
            other => (Kind::Unavailable, other.to_string()),
        })
    });
    match chosen {
        Ok(keyring) => Ok(keyring),
        Err((Kind::Locked, m)) => Err(SecretsError::Locked(m.clone())),
        Err((Kind::Unknown, m)) => Err(SecretsError::UnknownStore(m.clone())),
        Err((Kind::Unavailable, m)) => Err(SecretsError::Unavailable(m.clone())),
    }
}

/// Opens the keyring on a thread of its own, for a command that needs it soon: the Secret
/// Service's session (a D-Bus connection, the default collection's name, a key exchange) is ready
/// when first asked for, and whatever fails is reported then, as without this.
pub fn open_ahead() {
    let _ = std::thread::Builder::new().name("keyring".into()).spawn(|| {
        let _ = keyring();
    });
}

/// Which store holds secrets here (chosen on first use).
pub fn backend() -> Result<Backend, SecretsError> {
    keyring().map(|k| k.backend)
}

fn open() -> Result<Keyring, SecretsError> {
    let forced = std::env::var(STORE_ENV).ok().filter(|v| !v.is_empty() && v != "auto");
    match forced {
        Some(name) => {
            let backend = Backend::parse(&name).ok_or(SecretsError::UnknownStore(name))?;
            open_backend(backend)
        }
        None => open_auto(),
    }
}

#[cfg(target_os = "linux")]
fn open_auto() -> Result<Keyring, SecretsError> {
    use secret_service::OpenError;
    match open_secret_service() {
        Ok(keyring) => Ok(keyring),
        // Nothing answers for the Secret Service here: a server, a container, a CI runner.
        Err(OpenError::NoProvider) => open_keyutils(),
        Err(OpenError::Failed(e)) => Err(e),
    }
}

#[cfg(target_os = "macos")]
fn open_auto() -> Result<Keyring, SecretsError> {
    open_backend(Backend::Keychain)
}

#[cfg(target_os = "windows")]
fn open_auto() -> Result<Keyring, SecretsError> {
    open_backend(Backend::Windows)
}

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn open_auto() -> Result<Keyring, SecretsError> {
    use secret_service::OpenError;
    match open_secret_service() {
        Ok(keyring) => Ok(keyring),
        Err(OpenError::NoProvider) => Err(SecretsError::Unavailable(
            "no Secret Service answers on the D-Bus session: start gnome-keyring or KeePassXC".into(),
        )),
        Err(OpenError::Failed(e)) => Err(e),
    }
}

fn open_backend(backend: Backend) -> Result<Keyring, SecretsError> {
    let unsupported =
        || SecretsError::Unavailable(format!("the {backend} keyring does not exist on this system"));
    match backend {
        #[cfg(all(unix, not(target_os = "macos")))]
        Backend::SecretService => open_secret_service().map_err(|e| match e {
            secret_service::OpenError::NoProvider => SecretsError::Unavailable(format!(
                "{STORE_ENV}=secret-service, but no Secret Service answers on the D-Bus session: start \
                 and unlock one (gnome-keyring, KeePassXC), or unset {STORE_ENV}"
            )),
            secret_service::OpenError::Failed(e) => e,
        }),
        #[cfg(target_os = "linux")]
        Backend::Keyutils => open_keyutils(),
        #[cfg(target_os = "macos")]
        Backend::Keychain => {
            let store = apple_native_keyring_store::keychain::Store::new()
                .map_err(|e| SecretsError::Unavailable(format!("the macOS Keychain: {e}")))?;
            keyring_core::set_default_store(store);
            Ok(Keyring { backend })
        }
        #[cfg(target_os = "windows")]
        Backend::Windows => {
            let store = windows_native_keyring_store::Store::new()
                .map_err(|e| SecretsError::Unavailable(format!("the Windows Credential Manager: {e}")))?;
            keyring_core::set_default_store(store);
            Ok(Keyring { backend })
        }
        #[allow(unreachable_patterns)]
        _ => Err(unsupported()),
    }
}

#[cfg(all(unix, not(target_os = "macos")))]
fn open_secret_service() -> Result<Keyring, secret_service::OpenError> {
    Ok(Keyring {
        backend: Backend::SecretService,
        service: Some(secret_service::Service::open()?),
        #[cfg(target_os = "linux")]
        session: None,
    })
}

#[cfg(target_os = "linux")]
fn open_keyutils() -> Result<Keyring, SecretsError> {
    use linux_keyutils::{KeyRing, KeyRingIdentifier};
    // Without `create`, a process that has no session keyring (no pam_keyinit: cron, containers,
    // `su`) gets the user-session keyring, which every process of the user shares. With `create`
    // the kernel would make a new session keyring that dies with this process, and the secret
    // with it.
    let session = KeyRing::from_special_id(KeyRingIdentifier::Session, false).map_err(|e| {
        SecretsError::Unavailable(format!(
            "the kernel keyring (keyutils) is not usable here ({e:?}); a container may block the keyctl \
             system call (Docker's default seccomp profile does): run tpa where a keyring exists"
        ))
    })?;
    Ok(Keyring { backend: Backend::Keyutils, service: None, session: Some(session) })
}

fn classify(backend: Backend, account: &str, error: keyring_core::Error) -> SecretsError {
    match error {
        keyring_core::Error::NoEntry => SecretsError::Missing { account: account.to_owned() },
        keyring_core::Error::NoStorageAccess(e) => SecretsError::Locked(e.to_string()),
        keyring_core::Error::PlatformFailure(e) => not_available(backend, e),
        other => SecretsError::Other { backend, account: account.to_owned(), message: other.to_string() },
    }
}

/// A store that cannot be reached at all, with where tpa can keep secrets instead.
fn not_available(backend: Backend, why: impl std::fmt::Display) -> SecretsError {
    SecretsError::Unavailable(format!(
        "the {backend} keyring is not available ({why}). tpa keeps secrets only in the OS keyring: \
         on a Linux desktop start and unlock a Secret Service (gnome-keyring, KeePassXC); on a \
         server unset DBUS_SESSION_BUS_ADDRESS or set {STORE_ENV}=keyutils to use the kernel keyring"
    ))
}

#[cfg(target_os = "linux")]
fn keyutils_error(account: &str, error: linux_keyutils::KeyError) -> SecretsError {
    use linux_keyutils::KeyError;
    match error {
        KeyError::KeyDoesNotExist | KeyError::KeyExpired | KeyError::KeyRevoked => {
            SecretsError::Missing { account: account.to_owned() }
        }
        KeyError::QuotaExceeded => SecretsError::Other {
            backend: Backend::Keyutils,
            account: account.to_owned(),
            message: "the kernel's key quota for this user is full (/proc/sys/kernel/keys/maxbytes and \
                      maxkeys): revoke grants you no longer need (`tpa revoke --mine`)"
                .to_owned(),
        },
        other => SecretsError::Other {
            backend: Backend::Keyutils,
            account: account.to_owned(),
            message: format!("{other:?}"),
        },
    }
}

fn description(account: &str) -> String {
    format!("{SERVICE}:{account}")
}

/// Keeps a secret. `expires_at` bounds its life where the store can (the kernel keyring drops it
/// then); `None` asks for a store that survives a reboot.
fn put(account: &str, secret: &str, expires_at: Option<DateTime<Utc>>) -> Result<(), SecretsError> {
    let keyring = keyring()?;
    match keyring.backend {
        #[cfg(target_os = "linux")]
        Backend::Keyutils => {
            let Some(expires_at) = expires_at else {
                return Err(SecretsError::NotPersistent(Backend::Keyutils));
            };
            let session = keyring.session.as_ref().expect("keyutils has a session keyring");
            let key =
                session.add_key(&description(account), secret).map_err(|e| keyutils_error(account, e))?;
            let seconds = (expires_at - crate::clock::now()).num_seconds().max(1) as usize;
            if let Err(e) = key.set_timeout(seconds) {
                let _ = key.invalidate();
                return Err(keyutils_error(account, e));
            }
            Ok(())
        }
        #[cfg(all(unix, not(target_os = "macos")))]
        Backend::SecretService => keyring.service().put(account, secret),
        backend => keyring_core::Entry::new(SERVICE, account)
            .and_then(|entry| entry.set_password(secret))
            .map_err(|e| classify(backend, account, e)),
    }
}

/// Keeps a secret that must survive a reboot (a signing key).
pub fn store(account: &str, secret: &str) -> Result<(), SecretsError> {
    put(account, secret, None)
}

/// Keeps a secret until `expires_at` at the latest.
pub fn store_until(account: &str, secret: &str, expires_at: DateTime<Utc>) -> Result<(), SecretsError> {
    put(account, secret, Some(expires_at))
}

pub fn load(account: &str) -> Result<Zeroizing<String>, SecretsError> {
    let keyring = keyring()?;
    match keyring.backend {
        #[cfg(target_os = "linux")]
        Backend::Keyutils => {
            let session = keyring.session.as_ref().expect("keyutils has a session keyring");
            let key = session.search(&description(account)).map_err(|e| keyutils_error(account, e))?;
            let bytes = Zeroizing::new(key.read_to_vec().map_err(|e| keyutils_error(account, e))?);
            String::from_utf8(bytes.to_vec())
                .map(Zeroizing::new)
                .map_err(|_| SecretsError::Missing { account: account.to_owned() })
        }
        #[cfg(all(unix, not(target_os = "macos")))]
        Backend::SecretService => keyring.service().get(account),
        backend => keyring_core::Entry::new(SERVICE, account)
            .and_then(|entry| entry.get_password())
            .map(Zeroizing::new)
            .map_err(|e| classify(backend, account, e)),
    }
}

/// Removes an entry; an entry that is already gone is not an error.
pub fn delete(account: &str) -> Result<(), SecretsError> {
    let keyring = keyring()?;
    let result = match keyring.backend {
        #[cfg(target_os = "linux")]
        Backend::Keyutils => {
            let session = keyring.session.as_ref().expect("keyutils has a session keyring");
            session
                .search(&description(account))
                .and_then(|key| key.invalidate())
                .map_err(|e| keyutils_error(account, e))
        }
        #[cfg(all(unix, not(target_os = "macos")))]
        Backend::SecretService => keyring.service().delete(account),
        backend => keyring_core::Entry::new(SERVICE, account)
            .and_then(|entry| entry.delete_credential())
            .map_err(|e| classify(backend, account, e)),
    };
    match result {
        Ok(()) | Err(SecretsError::Missing { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The keyring account holding a tpa-made signing key.
pub fn signing_key_account(fingerprint: &str) -> String {
    format!("signing-key:{fingerprint}")
}

/// The keyring account holding a grant's credentials.
pub fn grant_account(grant_id: &crate::grant::GrantId) -> String {
    format!("grant:{grant_id}")
}

/// What stands in a grant's entry between [`reserve`] and [`store_credentials`].
const RESERVED: &str = "reserved";

/// Writes a placeholder where a grant's credentials will go, before anything is minted: a keyring
/// that is locked, full or refuses shows itself now, when nothing exists yet to be undone. The
/// credentials later replace the placeholder; [`load_credentials`] never mistakes it for them.
pub fn reserve(grant_id: &crate::grant::GrantId, until: DateTime<Utc>) -> Result<(), SecretsError> {
    put(&grant_account(grant_id), RESERVED, Some(until))
}

/// A grant's secret as the keyring holds it: JSON, AWS's own credential names for STS sessions
/// (what `credential_process` prints), plus `Kind` for a database login.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Stored {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: String,
    expiration: chrono::DateTime<chrono::Utc>,
}

const DB_LOGIN: &str = "db-login";

impl Drop for Stored {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.secret_access_key.zeroize();
        self.session_token.zeroize();
    }
}

/// Keeps a grant's secret in the OS keyring, for as long as it lives.
pub fn store_secret(grant_id: &crate::grant::GrantId, secret: &Secret) -> Result<(), SecretsError> {
    put(&grant_account(grant_id), &to_json(secret), Some(secret.expires_at()))
}

/// A secret as the keyring (and a broker's delivery) holds it.
pub fn to_json(secret: &Secret) -> Zeroizing<String> {
    let stored = match secret {
        Secret::Aws(credentials) => Stored {
            kind: None,
            access_key_id: credentials.access_key_id.clone(),
            secret_access_key: credentials.secret_access_key.to_string(),
            session_token: credentials.session_token.to_string(),
            expiration: credentials.expiration,
        },
        Secret::DbLogin(login) => Stored {
            kind: Some(DB_LOGIN.to_owned()),
            access_key_id: login.user.clone(),
            secret_access_key: login.password.to_string(),
            session_token: String::new(),
            expiration: login.valid_until,
        },
    };
    Zeroizing::new(serde_json::to_string(&stored).expect("secrets serialize"))
}

/// A grant's secret from the OS keyring. A reservation not yet replaced reads as missing.
pub fn load_secret(grant_id: &crate::grant::GrantId) -> Result<Secret, SecretsError> {
    let account = grant_account(grant_id);
    let text = load(&account)?;
    from_json(&text).ok_or(SecretsError::Missing { account })
}

/// The inverse of [`to_json`]; None for anything else (a reservation, garbage).
pub fn from_json(text: &str) -> Option<Secret> {
    let stored: Stored = serde_json::from_str(text).ok()?;
    Some(match stored.kind.as_deref() {
        Some(DB_LOGIN) => Secret::DbLogin(DbLogin {
            user: stored.access_key_id.clone(),
            password: Zeroizing::new(stored.secret_access_key.clone()),
            valid_until: stored.expiration,
        }),
        _ => Secret::Aws(Credentials {
            access_key_id: stored.access_key_id.clone(),
            secret_access_key: Zeroizing::new(stored.secret_access_key.clone()),
            session_token: Zeroizing::new(stored.session_token.clone()),
            expiration: stored.expiration,
        }),
    })
}

/// The keyring account holding the one-time delivery key of a broker-minted request.
pub fn delivery_account(grant_id: &crate::grant::GrantId) -> String {
    format!("delivery:{grant_id}")
}

pub fn delete_credentials(grant_id: &crate::grant::GrantId) -> Result<(), SecretsError> {
    delete(&grant_account(grant_id))
}

/// A reservation to make ([`reserve`]), as work the executor runs on a thread of its own, beside
/// the intent record's signing and writing.
pub type Reservation<'a> = Box<dyn FnOnce() -> Result<(), SecretsError> + Send + 'a>;

/// Where the executor keeps grant secrets: the OS keyring, or a fake in tests of the executor.
pub trait SecretStore {
    /// See [`reserve`] and [`Reservation`].
    fn reservation(&self, grant_id: &crate::grant::GrantId, until: DateTime<Utc>) -> Reservation<'_>;
    fn store(&self, grant_id: &crate::grant::GrantId, secret: &Secret) -> Result<(), SecretsError>;
    /// Drops whatever is kept for the grant; best effort.
    fn forget(&self, grant_id: &crate::grant::GrantId);
}

/// The OS keyring of this process.
pub struct OsKeyring;

impl SecretStore for OsKeyring {
    fn reservation(&self, grant_id: &crate::grant::GrantId, until: DateTime<Utc>) -> Reservation<'_> {
        let grant_id = grant_id.clone();
        Box::new(move || reserve(&grant_id, until))
    }

    fn store(&self, grant_id: &crate::grant::GrantId, secret: &Secret) -> Result<(), SecretsError> {
        store_secret(grant_id, secret)
    }

    fn forget(&self, grant_id: &crate::grant::GrantId) {
        let _ = delete_credentials(grant_id);
    }
}

#[cfg(test)]
mod tests {
    use super::Backend;

    #[test]
    fn store_names_round_trip() {
        for backend in [Backend::SecretService, Backend::Keyutils, Backend::Keychain, Backend::Windows] {
            assert_eq!(Backend::parse(backend.name()), Some(backend));
        }
        assert_eq!(Backend::parse("file"), None);
        assert!(!Backend::Keyutils.persistent());
        assert!(Backend::SecretService.persistent());
    }
}

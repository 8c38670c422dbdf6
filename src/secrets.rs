//! The OS keyring (Secret Service on Linux, Keychain on macOS, Credential Manager on Windows):
//! the only place tpa keeps a secret. Built with real platform stores only: keyring 3 without a
//! platform feature would silently keep secrets in memory and lose them.

use zeroize::Zeroizing;

pub const SERVICE: &str = "tpa";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "the OS keyring is not available ({0}). tpa keeps secrets only there. On Linux start and unlock a \
         Secret Service (gnome-keyring, KeePassXC) in your D-Bus session, e.g. \
         `echo -n PASSWORD | gnome-keyring-daemon --unlock --components=secrets`; \
         or give tpa a key file: `tpa init --signing-key PATH` / TPA_SIGNING_KEY=PATH"
    )]
    Unavailable(#[source] keyring::Error),
    #[error("the OS keyring has no entry `{account}` for service `{SERVICE}`")]
    Missing { account: String },
    #[error("the OS keyring refused entry `{account}`: {source}")]
    Other {
        account: String,
        #[source]
        source: keyring::Error,
    },
}

fn classify(account: &str, error: keyring::Error) -> SecretsError {
    match error {
        keyring::Error::NoEntry => SecretsError::Missing { account: account.to_owned() },
        keyring::Error::PlatformFailure(_) | keyring::Error::NoStorageAccess(_) => {
            SecretsError::Unavailable(error)
        }
        source => SecretsError::Other { account: account.to_owned(), source },
    }
}

fn entry(account: &str) -> Result<keyring::Entry, SecretsError> {
    keyring::Entry::new(SERVICE, account).map_err(|e| classify(account, e))
}

pub fn store(account: &str, secret: &str) -> Result<(), SecretsError> {
    entry(account)?.set_password(secret).map_err(|e| classify(account, e))
}

pub fn load(account: &str) -> Result<Zeroizing<String>, SecretsError> {
    entry(account)?.get_password().map(Zeroizing::new).map_err(|e| classify(account, e))
}

/// Removes an entry; an entry that is already gone is not an error.
pub fn delete(account: &str) -> Result<(), SecretsError> {
    match entry(account)?.delete_credential() {
        Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
        Err(e) => Err(classify(account, e)),
    }
}

/// The keyring account holding a tpa-made signing key.
pub fn signing_key_account(fingerprint: &str) -> String {
    format!("signing-key:{fingerprint}")
}

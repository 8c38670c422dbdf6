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

/// The keyring account holding a grant's credentials.
pub fn grant_account(grant_id: &crate::grant::GrantId) -> String {
    format!("grant:{grant_id}")
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StoredCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: chrono::DateTime<chrono::Utc>,
}

impl Drop for StoredCredentials {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.secret_access_key.zeroize();
        self.session_token.zeroize();
    }
}

/// Keeps a grant's credentials in the OS keyring.
pub fn store_credentials(
    grant_id: &crate::grant::GrantId,
    credentials: &crate::provider::Credentials,
) -> Result<(), SecretsError> {
    let account = grant_account(grant_id);
    let stored = StoredCredentials {
        access_key_id: credentials.access_key_id.clone(),
        secret_access_key: credentials.secret_access_key.to_string(),
        session_token: credentials.session_token.to_string(),
        expiration: credentials.expiration,
    };
    let text = Zeroizing::new(serde_json::to_string(&stored).expect("credentials serialize"));
    // No read-back here (the signing key gets one at `tpa init`, which proves the store keeps what
    // it is given): each keyring call is a D-Bus session with its own key exchange.
    store(&account, &text)
}

pub fn load_credentials(
    grant_id: &crate::grant::GrantId,
) -> Result<crate::provider::Credentials, SecretsError> {
    let account = grant_account(grant_id);
    let text = load(&account)?;
    let stored: StoredCredentials =
        serde_json::from_str(&text).map_err(|_| SecretsError::Missing { account })?;
    Ok(crate::provider::Credentials {
        access_key_id: stored.access_key_id.clone(),
        secret_access_key: Zeroizing::new(stored.secret_access_key.clone()),
        session_token: Zeroizing::new(stored.session_token.clone()),
        expiration: stored.expiration,
    })
}

pub fn delete_credentials(grant_id: &crate::grant::GrantId) -> Result<(), SecretsError> {
    delete(&grant_account(grant_id))
}

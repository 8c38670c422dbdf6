//! The Secret Service (gnome-keyring, KeePassXC) through the `secret-service` crate: one D-Bus
//! connection and one Diffie-Hellman session per process, so secrets cross the bus encrypted.
//! Entries are items of the default collection named by the attributes `service` and `username`,
//! as keyring 4's Secret Service store named them: entries written by earlier tpa versions (a
//! signing key above all) are found as before.
//!
//! Every call is a round trip to the daemon, and every write makes it save its keyring file, so
//! this asks for no more than the work needs:
//! - the default collection is looked up once, when the process opens the keyring (on `tpa
//!   request`'s own thread, while the request is planned);
//! - a new entry is one `CreateItem`, which replaces an item with the same attributes (a locked
//!   collection refuses it, and is unlocked then: a desktop asks for the password);
//! - an entry this process wrote is rewritten through its object path with one `SetSecret` (a
//!   grant's placeholder, then its credentials) or deleted the same way, without a search.
//!
//! gnome-keyring registers a client in a callback queued by its first message, which the daemon's
//! method dispatch can overtake; a first message that needs the registration (`OpenSession`) then
//! aborts the whole daemon (gnome-keyring issues 183, 190 and 194; seen here as `trap int3` in
//! libglib, with every Secret Service client failing after it). So the first message is
//! `ReadAlias`, which needs none and whose answer is wanted anyway, and the session is opened
//! after its reply.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use secret_service::blocking::{Collection, Item, SecretService};
use secret_service::{EncryptionType, Error};
use zbus::zvariant::OwnedObjectPath;
use zeroize::Zeroizing;

use super::{Backend, SERVICE, STORE_ENV, SecretsError};

const CONTENT_TYPE: &str = "text/plain";

pub(super) struct Service {
    ss: SecretService<'static>,
    /// The default collection; `None` where the service has none (KeePassXC without one, WSL).
    default: Option<OwnedObjectPath>,
    /// The items this process wrote, by account.
    written: Mutex<HashMap<String, OwnedObjectPath>>,
}

/// Why the Secret Service could not be opened.
pub(super) enum OpenError {
    /// No session bus, or nothing on it owns (or can start) `org.freedesktop.secrets`.
    NoProvider,
    Failed(SecretsError),
}

impl Service {
    pub(super) fn open() -> Result<Service, OpenError> {
        let fail = |e: Error| match no_provider(&e) {
            true => OpenError::NoProvider,
            false => OpenError::Failed(classify("", e)),
        };
        let connection = zbus::blocking::Connection::session().map_err(|e| fail(Error::Zbus(e)))?;
        let default = read_default_alias(&connection).map_err(fail)?;
        let ss = SecretService::connect_with_existing(EncryptionType::Dh, connection).map_err(fail)?;
        Ok(Service { ss, default, written: Mutex::new(HashMap::new()) })
    }

    pub(super) fn put(&self, account: &str, secret: &str) -> Result<(), SecretsError> {
        let fail = |e| classify(account, e);
        if let Some(path) = self.written(account) {
            let item = self.ss.get_item_by_path(path).map_err(fail)?;
            return item.set_secret(secret.as_bytes(), CONTENT_TYPE).map_err(fail);
        }
        let Some(default) = self.default.clone() else {
            return Err(SecretsError::Other {
                backend: Backend::SecretService,
                account: account.to_owned(),
                message: format!(
                    "the Secret Service has no default collection to keep it in: make one the default \
                     (Seahorse, KeePassXC's Secret Service settings), or set {STORE_ENV}=keyutils"
                ),
            });
        };
        let collection = self.ss.get_collection_by_path(default).map_err(fail)?;
        let item = match create(&collection, account, secret) {
            Err(e) if is_locked(&e) => {
                collection.unlock().map_err(fail)?;
                create(&collection, account, secret)
            }
            created => created,
        }
        .map_err(fail)?;
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        written.insert(account.to_owned(), item.item_path.clone());
        Ok(())
    }

    pub(super) fn get(&self, account: &str) -> Result<Zeroizing<String>, SecretsError> {
        let fail = |e| classify(account, e);
        let item = match self.find(account)?.as_slice() {
            [] => return Err(SecretsError::Missing { account: account.to_owned() }),
            [path] => self.ss.get_item_by_path(path.clone()).map_err(fail)?,
            more => {
                return Err(SecretsError::Other {
                    backend: Backend::SecretService,
                    account: account.to_owned(),
                    message: format!(
                        "{} entries match it: delete the extra ones (Seahorse, `secret-tool clear service {SERVICE} username {account}`)",
                        more.len()
                    ),
                });
            }
        };
        let bytes = Zeroizing::new(item.get_secret().map_err(fail)?);
        String::from_utf8(bytes.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| SecretsError::Missing { account: account.to_owned() })
    }

    /// Deletes every item of the account; none is not an error.
    pub(super) fn delete(&self, account: &str) -> Result<(), SecretsError> {
        let fail = |e| classify(account, e);
        let taken = self.written.lock().unwrap_or_else(PoisonError::into_inner).remove(account);
        let paths = match taken {
            Some(path) => vec![path],
            None => self.find(account)?,
        };
        for path in paths {
            match self.ss.get_item_by_path(path).and_then(|item| item.delete()) {
                Ok(()) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(fail(e)),
            }
        }
        Ok(())
    }

    fn written(&self, account: &str) -> Option<OwnedObjectPath> {
        self.written.lock().unwrap_or_else(PoisonError::into_inner).get(account).cloned()
    }

    /// The items of an account in any collection, unlocked (which may ask the user).
    fn find(&self, account: &str) -> Result<Vec<OwnedObjectPath>, SecretsError> {
        let fail = |e| classify(account, e);
        let found = self.ss.search_items(attributes(account)).map_err(fail)?;
        if !found.locked.is_empty() {
            let locked: Vec<&Item> = found.locked.iter().collect();
            self.ss.unlock_all(&locked).map_err(fail)?;
        }
        Ok(found.unlocked.iter().chain(&found.locked).map(|item| item.item_path.clone()).collect())
    }
}

fn create<'a>(collection: &'a Collection<'a>, account: &str, secret: &str) -> Result<Item<'a>, Error> {
    let label = format!("{SERVICE} {account}");
    collection.create_item(&label, attributes(account), secret.as_bytes(), true, CONTENT_TYPE)
}

/// The object path of the collection aliased `default`, if there is one.
fn read_default_alias(connection: &zbus::blocking::Connection) -> Result<Option<OwnedObjectPath>, Error> {
    let reply = connection.call_method(
        Some("org.freedesktop.secrets"),
        "/org/freedesktop/secrets",
        Some("org.freedesktop.Secret.Service"),
        "ReadAlias",
        &("default",),
    )?;
    let path: OwnedObjectPath = reply.body().deserialize()?;
    Ok((path.as_str() != "/").then_some(path))
}

fn attributes(account: &str) -> HashMap<&str, &str> {
    HashMap::from([("service", SERVICE), ("username", account)])
}

fn classify(account: &str, error: Error) -> SecretsError {
    if refused(&error) {
        return SecretsError::Locked(error.to_string());
    }
    match error {
        Error::Crypto(_) | Error::Zvariant(_) => SecretsError::Other {
            backend: Backend::SecretService,
            account: account.to_owned(),
            message: error.to_string(),
        },
        other => super::not_available(Backend::SecretService, other),
    }
}

/// The service answered and said no: locked, a prompt dismissed or left unanswered.
fn refused(error: &Error) -> bool {
    match error {
        Error::Locked | Error::NoResult | Error::Prompt | Error::PromptDisconnected => true,
        Error::Zbus(zbus::Error::MethodError(name, _, _)) => {
            is_locked(error) || name.as_str() == "org.freedesktop.DBus.Error.AccessDenied"
        }
        _ => false,
    }
}

fn is_locked(error: &Error) -> bool {
    matches!(error, Error::Zbus(zbus::Error::MethodError(name, _, _)) if name.as_str() == "org.freedesktop.Secret.Error.IsLocked")
}

/// The item no longer exists: another process deleted it meanwhile. (GDBus services such as
/// gnome-keyring answer a call on a path they no longer export with `UnknownMethod`.)
fn gone(error: &Error) -> bool {
    const GONE: [&str; 3] = [
        "org.freedesktop.Secret.Error.NoSuchObject",
        "org.freedesktop.DBus.Error.UnknownObject",
        "org.freedesktop.DBus.Error.UnknownMethod",
    ];
    matches!(error, Error::Zbus(zbus::Error::MethodError(name, _, _)) if GONE.contains(&name.as_str()))
}

/// No Secret Service exists here: no session bus to reach (none configured, or a stale address), or
/// nothing on the bus owns, nor can start, `org.freedesktop.secrets`. Everything else (locked, a
/// dismissed prompt, an error the service itself answered) means one exists and refused.
fn no_provider(error: &Error) -> bool {
    match error {
        Error::Unavailable => true,
        Error::Zbus(zbus::Error::MethodError(name, _, _)) => matches!(
            name.as_str(),
            "org.freedesktop.DBus.Error.ServiceUnknown" | "org.freedesktop.DBus.Error.NameHasNoOwner"
        ),
        Error::ZbusFdo(e) => {
            matches!(e, zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_))
        }
        // Connecting to the bus itself failed (no socket, refused, bad address): no bus, no service.
        Error::Zbus(_) => true,
        _ => false,
    }
}

//! Handing out a grant's credentials (`tpa exec`, `tpa env`, `tpa credential-process`): only for
//! a grant the ledger shows as active, only from the OS keyring, never minting.

use chrono::{DateTime, Utc};
use git2::Repository;

use crate::grant::{GrantId, GrantState};
use crate::ops::grants::{self, GrantView};
use crate::ops::ledger::InspectError;
use crate::provider::{Credentials, Secret};
use crate::secrets::{self, SecretsError};

#[derive(Clone, Debug)]
pub enum Selector {
    Grant(GrantId),
    /// The newest active grant of mine for this role.
    Role(String),
    /// The newest active grant of mine.
    Newest,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("no grant {0} in the ledger: `tpa status` lists yours")]
    UnknownGrant(GrantId),
    #[error("you have no active grant{} in this repository: ask for one with `tpa request{}`",
        role.as_deref().map(|r| format!(" for role {r}")).unwrap_or_default(),
        role.as_deref().map(|r| format!(" --role {r} --reason ...")).unwrap_or_else(|| " --role ROLE --reason ...".into()))]
    NoActiveGrant { role: Option<String> },
    #[error(
        "grant {grant_id} is {state}, not active: nothing to hand out; ask for a new one with `tpa request`"
    )]
    NotActive { grant_id: GrantId, state: GrantState },
    #[error("grant {grant_id} expired at {at}: ask for a new one with `tpa request`")]
    Expired { grant_id: GrantId, at: DateTime<Utc> },
    #[error(
        "the credentials of grant {0} are not in this machine's OS keyring (it was granted elsewhere, or the \
         entry was removed): ask for a new grant here with `tpa request`"
    )]
    NotHere(GrantId),
    #[error(
        "grant {grant_id} is a PostgreSQL login for database {database}, with no AWS credentials: connect \
         with `tpa exec --db {database} -- psql`"
    )]
    DatabaseGrant { grant_id: GrantId, database: String },
    #[error(transparent)]
    Keyring(SecretsError),
    #[error(transparent)]
    Inspect(#[from] InspectError),
}

/// The AWS credentials of an active grant (`tpa exec`, `tpa env`, `tpa credential-process`). A
/// database login has none: its password goes only to a database client (`tpa exec --db`).
pub fn credentials_for(
    repo: &Repository,
    selector: &Selector,
    me: &str,
    now: DateTime<Utc>,
) -> Result<(GrantView, Credentials), DeliveryError> {
    let (grant, secret) = secret_for(repo, selector, me, now, false)?;
    match secret {
        Secret::Aws(credentials) => Ok((grant, credentials)),
        Secret::DbLogin(_) => {
            let database = grant.intent.database.clone().unwrap_or_default();
            Err(DeliveryError::DatabaseGrant { grant_id: grant.grant_id, database })
        }
    }
}

/// The keyring entry of an active grant; database logins only when `database_logins` (for
/// `database::login`). Without it, a selector other than a grant id passes over grants that hand
/// out no AWS credentials.
pub fn secret_for(
    repo: &Repository,
    selector: &Selector,
    me: &str,
    now: DateTime<Utc>,
    database_logins: bool,
) -> Result<(GrantView, Secret), DeliveryError> {
    // By id, the grant in whatever state (its state is the error); otherwise only open grants
    // can be active, and only those are read.
    let open: Vec<GrantView> = match selector {
        Selector::Grant(_) => Vec::new(),
        _ => grants::open(repo, now)?
            .into_iter()
            .filter(|g| database_logins || g.provider.is_sts_session())
            .collect(),
    };
    let mine_active = |g: &GrantView| g.state == GrantState::Active && g.principal == me;
    let grant = match selector {
        Selector::Grant(id) => {
            grants::find(repo, id, now)?.ok_or_else(|| DeliveryError::UnknownGrant(id.clone()))?
        }
        Selector::Role(role) => newest_usable(
            open.into_iter().filter(|g| mine_active(g) && g.role.as_deref() == Some(role.as_str())),
            DeliveryError::NoActiveGrant { role: Some(role.clone()) },
        )?,
        Selector::Newest => {
            newest_usable(open.into_iter().filter(mine_active), DeliveryError::NoActiveGrant { role: None })?
        }
    };
    if grant.state != GrantState::Active {
        // A grant that ended keeps nothing in the keyring.
        let _ = secrets::delete_credentials(&grant.grant_id);
        return Err(DeliveryError::NotActive { grant_id: grant.grant_id, state: grant.state });
    }
    let secret = match secrets::load_secret(&grant.grant_id) {
        Ok(secret) => secret,
        Err(SecretsError::Missing { .. }) => return Err(DeliveryError::NotHere(grant.grant_id)),
        Err(e) => return Err(DeliveryError::Keyring(e)),
    };
    if matches!(secret, Secret::DbLogin(_)) && !database_logins {
        let database = grant.intent.database.clone().unwrap_or_default();
        return Err(DeliveryError::DatabaseGrant { grant_id: grant.grant_id, database });
    }
    if secret.expires_at() <= now {
        let _ = secrets::delete_credentials(&grant.grant_id);
        return Err(DeliveryError::Expired { grant_id: grant.grant_id, at: secret.expires_at() });
    }
    Ok((grant, secret))
}

/// The newest of `candidates` (newest first) whose credentials this machine's keyring holds: a
/// newer grant whose credentials never arrived here (taken on another machine, or its delivery
/// failed) does not hide an older one that works. With none usable, the newest one's reason.
fn newest_usable(
    candidates: impl Iterator<Item = GrantView>,
    none: DeliveryError,
) -> Result<GrantView, DeliveryError> {
    let mut first = None;
    for grant in candidates {
        match secrets::load_secret(&grant.grant_id) {
            Ok(_) => return Ok(grant),
            Err(SecretsError::Missing { .. }) => first = first.or(Some(grant)),
            Err(e) => return Err(DeliveryError::Keyring(e)),
        }
    }
    Err(first.map_or(none, |g| DeliveryError::NotHere(g.grant_id)))
}

/// Removes the keyring entries of the grants this clone holds (its local index) that have
/// expired. Best effort. It reads neither the ledger nor the keyring's other entries, so a
/// request pays for the grants open here, not for every grant the ledger ever held: revoking
/// deletes its entry, and the sweep deletes those of the grants that ended.
pub fn forget_expired(repo: &Repository, now: DateTime<Utc>) {
    let Ok(held) = crate::state::StateDir::open(repo).and_then(|state| state.local_grants()) else { return };
    for (id, _) in held.iter().filter(|(_, g)| g.expires_at.is_some_and(|at| at <= now)) {
        if let Ok(grant_id) = id.parse::<GrantId>() {
            let _ = secrets::delete_credentials(&grant_id);
        }
    }
}

//! Database access from a grant: `tpa db-token` and `tpa exec --db`. An rds-iam grant is its role's
//! STS session; a connection needs an IAM auth token signed with that session's credentials, made
//! fresh each time (tokens live 15 minutes; the grant may live hours).

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use git2::Repository;
use zeroize::Zeroizing;

use crate::grant::{GrantId, GrantState};
use crate::ops::deliver::{self, DeliveryError, Selector};
use crate::ops::grants;

use crate::policy::{DatabasePolicy, DbEngine, DbProvider};
use crate::provider::postgres::{self, AdminCredentials, PgError, PgTarget, Postgres};
use crate::provider::rds_token::{self, TokenError, TokenRequest};
use crate::trust::{TrustError, TrustRef};

#[derive(Clone, Debug)]
pub enum DbSelector {
    Grant(GrantId),
    /// My newest active grant for this database.
    Database(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DbAccessError {
    #[error(
        "you have no active grant for database {0} in this repository: ask for one with \
         `tpa request --db {0} --reason ...`"
    )]
    NoActiveGrant(String),
    #[error("grant {0} is not a database grant: `tpa exec GRANT -- CMD` hands out its AWS credentials")]
    NotADatabaseGrant(GrantId),
    #[error("database {0} is not in the policy at the trust ref any more: it cannot be reached through tpa")]
    DatabaseGone(String),
    #[error(
        "database {0} is provider = \"postgres\": its grants are login roles, not IAM tokens; connect \
         with `tpa exec --db {0} -- psql`"
    )]
    NotRdsIam(String),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Policy(#[from] crate::policy::LoadError),
    #[error(transparent)]
    Inspect(#[from] crate::ops::ledger::InspectError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// What a client needs to connect: never printed except by `tpa db-token`.
pub struct DbLogin {
    pub grant_id: GrantId,
    pub database: DatabasePolicy,
    pub user: String,
    pub password: Zeroizing<String>,
    /// When the password stops working for new logins.
    pub valid_until: DateTime<Utc>,
}

impl DbLogin {
    /// The variables a client reads, for the child of `tpa exec --db` only.
    pub fn client_environment(&self) -> Vec<(&'static str, String)> {
        let d = &self.database;
        match d.engine {
            DbEngine::Postgres => vec![
                ("PGHOST", d.host.clone()),
                ("PGPORT", d.port.to_string()),
                ("PGUSER", self.user.clone()),
                ("PGDATABASE", d.dbname.clone()),
                ("PGPASSWORD", self.password.to_string()),
                // IAM tokens are accepted over TLS only; a per-grant password crosses no network in clear.
                (
                    "PGSSLMODE",
                    if d.provider == DbProvider::RdsIam || !is_local(&d.host) { "require" } else { "prefer" }
                        .into(),
                ),
            ],
            DbEngine::Mysql => vec![
                ("MYSQL_HOST", d.host.clone()),
                ("MYSQL_TCP_PORT", d.port.to_string()),
                ("MYSQL_PWD", self.password.to_string()),
                ("USER", self.user.clone()),
                // The mysql client sends the token only with the cleartext plugin over TLS.
                ("LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN", "1".into()),
            ],
        }
    }
}

/// The login for my active grant on a database: for rds-iam, a fresh IAM auth token signed with
/// the grant's credentials from the OS keyring.
/// For a postgres grant, the login role and its password; `for_client` false (`tpa db-token`)
/// refuses those, since a db token is an IAM token.
pub fn login(
    repo: &Repository,
    selector: &DbSelector,
    me: &str,
    now: DateTime<Utc>,
    for_client: bool,
) -> Result<DbLogin, DbAccessError> {
    let grant_id = match selector {
        DbSelector::Grant(id) => id.clone(),
        DbSelector::Database(name) => grants::list(repo, now)?
            .into_iter()
            .find(|g| {
                g.state == GrantState::Active
                    && g.principal == me
                    && g.intent.database.as_deref() == Some(name)
            })
            .map(|g| g.grant_id)
            .ok_or_else(|| DbAccessError::NoActiveGrant(name.clone()))?,
    };
    let (grant, credentials) = deliver::secret_for(repo, &Selector::Grant(grant_id), me, now, true)?;
    let name = grant
        .intent
        .database
        .clone()
        .ok_or_else(|| DbAccessError::NotADatabaseGrant(grant.grant_id.clone()))?;
    let trust = TrustRef::resolve(repo)?;
    let (policy, _) = crate::policy::load(repo, &trust)?;
    let database =
        policy.databases.get(&name).cloned().ok_or_else(|| DbAccessError::DatabaseGone(name.clone()))?;
    if database.provider == DbProvider::Postgres {
        if !for_client {
            return Err(DbAccessError::NotRdsIam(name));
        }
        return Ok(DbLogin {
            grant_id: grant.grant_id,
            database,
            user: credentials.access_key_id.clone(),
            password: credentials.secret_access_key.clone(),
            valid_until: credentials.expiration,
        });
    }
    let role_region = database.role.as_ref().and_then(|r| policy.roles.get(r)).and_then(|r| r.region.clone());
    let region = database.region.clone().or(role_region).unwrap_or_else(|| "us-east-1".to_owned());
    let user = database.db_user.clone().unwrap_or_default();
    let token = rds_token::generate(
        &TokenRequest { host: &database.host, port: database.port, db_user: &user, region: &region },
        &credentials,
        SystemTime::from(now),
    )?;
    let valid_until = (now + chrono::Duration::seconds(rds_token::TOKEN_LIFETIME_SECONDS as i64))
        .min(credentials.expiration);
    Ok(DbLogin { grant_id: grant.grant_id, database, user, password: token, valid_until })
}

/// The login role of a postgres grant: `tpa_` and the grant id in lower case (PostgreSQL folds
/// unquoted names; tpa always quotes, but people type them unquoted).
pub fn pg_role_name(grant_id: &GrantId) -> String {
    format!("{}{}", postgres::ROLE_PREFIX, grant_id.as_str().to_ascii_lowercase())
}

/// The environment variables that name a database's admin connection, most specific first:
/// `TPA_DB_<NAME>_ADMIN_USER` / `_ADMIN_PASSWORD` / `_CA_FILE` (NAME upper-cased, every character
/// that is not a letter or digit turned into `_`), then `TPA_DB_ADMIN_USER` / ...
pub fn admin_variables(database: &str, what: &str) -> [String; 2] {
    let name: String = database
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect();
    [format!("TPA_DB_{name}_{what}"), format!("TPA_DB_{what}")]
}

fn admin_env(database: &str, what: &str) -> Option<String> {
    admin_variables(database, what).iter().find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
}

/// An admin session on a postgres database, with credentials from the environment (never the
/// policy file).
pub fn pg_admin(database: &DatabasePolicy, timeout: std::time::Duration) -> Result<Postgres, DbAdminError> {
    let user = admin_env(&database.name, "ADMIN_USER").ok_or_else(|| DbAdminError::NoAdmin {
        database: database.name.clone(),
        variables: admin_variables(&database.name, "ADMIN_USER").join(" or "),
        password: admin_variables(&database.name, "ADMIN_PASSWORD")[0].clone(),
    })?;
    let admin =
        AdminCredentials { user, password: admin_env(&database.name, "ADMIN_PASSWORD").map(Zeroizing::new) };
    let target = PgTarget {
        host: database.host.clone(),
        port: database.port,
        dbname: database.dbname.clone(),
        ca_file: admin_env(&database.name, "CA_FILE").map(std::path::PathBuf::from),
    };
    Ok(Postgres::connect(&target, &admin, timeout)?)
}

#[derive(Debug, thiserror::Error)]
pub enum DbAdminError {
    #[error(
        "no admin connection for database {database}: set {variables} (and {password}) in the \
         environment of whoever grants and revokes; admin credentials never go in the policy file"
    )]
    NoAdmin { database: String, variables: String, password: String },
    #[error(transparent)]
    Postgres(#[from] PgError),
}

impl DbAdminError {
    pub fn is_transient(&self) -> bool {
        matches!(self, DbAdminError::Postgres(e) if e.is_transient())
    }
}

fn is_local(host: &str) -> bool {
    PgTarget { host: host.to_owned(), port: 0, dbname: String::new(), ca_file: None }.is_local()
}

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
use crate::provider::Secret;

use crate::policy::{DatabasePolicy, DbEngine, DbProvider};
use crate::provider::postgres::PgTarget;
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
pub struct DbConnection {
    pub grant_id: GrantId,
    pub database: DatabasePolicy,
    pub user: String,
    pub password: Zeroizing<String>,
    /// When the password stops working for new logins.
    pub valid_until: DateTime<Utc>,
}

impl DbConnection {
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
) -> Result<DbConnection, DbAccessError> {
    let grant_id = match selector {
        DbSelector::Grant(id) => id.clone(),
        DbSelector::Database(name) => grants::open(repo, now)?
            .into_iter()
            .find(|g| {
                g.state == GrantState::Active
                    && g.principal == me
                    && g.intent.database.as_deref() == Some(name)
            })
            .map(|g| g.grant_id)
            .ok_or_else(|| DbAccessError::NoActiveGrant(name.clone()))?,
    };
    let (grant, secret) = deliver::secret_for(repo, &Selector::Grant(grant_id), me, now, true)?;
    let name = grant
        .intent
        .database
        .clone()
        .ok_or_else(|| DbAccessError::NotADatabaseGrant(grant.grant_id.clone()))?;
    let trust = TrustRef::resolve(repo)?;
    let (policy, _) = crate::policy::load(repo, &trust)?;
    let database =
        policy.databases.get(&name).cloned().ok_or_else(|| DbAccessError::DatabaseGone(name.clone()))?;
    let credentials = match secret {
        // A login role made for the grant: its password is the login.
        Secret::DbLogin(login) if for_client => {
            return Ok(DbConnection {
                grant_id: grant.grant_id,
                database,
                user: login.user,
                password: login.password,
                valid_until: login.valid_until,
            });
        }
        Secret::DbLogin(_) => return Err(DbAccessError::NotRdsIam(name)),
        // An STS session: the login is a fresh IAM auth token it signs.
        Secret::Aws(credentials) => credentials,
    };
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
    Ok(DbConnection { grant_id: grant.grant_id, database, user, password: token, valid_until })
}

fn is_local(host: &str) -> bool {
    PgTarget { host: host.to_owned(), port: 0, dbname: String::new(), ca_file: None }.is_local()
}

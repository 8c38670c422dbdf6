//! PostgreSQL dynamic roles: one login role per grant, `tpa_<grant id>`, created with a random
//! password, a `VALID UNTIL` and membership in the roles that policy names, and dropped on revoke.
//!
//! The password never reaches the server: tpa sends the SCRAM-SHA-256 verifier that PostgreSQL
//! would store (`scram_sha256_verifier`), so neither the server log nor `pg_stat_activity` ever holds
//! it. `VALID UNTIL` stops new logins at expiry but not open sessions: `terminate_expired` ends those.
//!
//! Roles, DDL and literals: utility statements (`CREATE ROLE`, `DROP ROLE`, ...) take no bind
//! parameters, so names and literals are quoted here (`quote_ident`, `quote_literal`); every query
//! that can take parameters takes them. Each session sets `standard_conforming_strings = on`, so a
//! backslash in a literal is a plain character and `quote_literal` needs no `E''` form.
//!
//! What the admin role needs (PostgreSQL 14 or later): `CREATEROLE`; membership in
//! `pg_signal_backend` to end other roles' sessions; on PostgreSQL 16 and later, `ADMIN OPTION` on
//! each role that policy grants. Servers other than loopback and unix sockets are reached over TLS
//! with certificate and host name verification only.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use postgres::config::SslMode;
use postgres::error::SqlState;
use rand_core::{OsRng, RngCore};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Every tpa login role's name starts with this; nothing else does (tpa never touches other roles).
pub const ROLE_PREFIX: &str = "tpa_";
/// PostgreSQL truncates longer identifiers (NAMEDATALEN - 1), which could silently name another role.
pub const MAX_IDENTIFIER_BYTES: usize = 63;
/// The iteration count PostgreSQL itself uses (`scram_iterations`' default).
pub const SCRAM_ITERATIONS: u32 = 4096;
const PASSWORD_BYTES: usize = 32;
const SALT_BYTES: usize = 16;
/// How long `pg_terminate_backend` waits for each session to end, in milliseconds.
const TERMINATE_WAIT_MS: i64 = 5000;
/// Set for every session: literals as written, and no statement that hangs forever on a lock.
const SESSION_OPTIONS: &str = "-c standard_conforming_strings=on -c statement_timeout=60s -c lock_timeout=20s -c idle_in_transaction_session_timeout=60s";
/// `pg_terminate_backend(pid, timeout)` appeared in PostgreSQL 14.
const MIN_SERVER_VERSION: i32 = 140000;

/// Where the database is. `host` is a host name, an IP address, or (starting with `/`) the directory
/// of a unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTarget {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    /// PEM certificates to trust instead of the system's roots (a private CA, RDS's CA bundle).
    /// Giving one also turns TLS on for a loopback host.
    pub ca_file: Option<PathBuf>,
}

impl PgTarget {
    /// A unix socket, `localhost` or a loopback address: traffic that never leaves the machine.
    pub fn is_local(&self) -> bool {
        self.host.starts_with('/')
            || self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// TLS with certificate verification is required for every server but a local one without a
    /// `ca_file`, and impossible over a unix socket.
    pub fn uses_tls(&self) -> bool {
        !self.host.starts_with('/') && (!self.is_local() || self.ca_file.is_some())
    }

    fn describe(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.dbname)
    }
}

/// The role tpa logs in as to manage login roles.
#[derive(Clone)]
pub struct AdminCredentials {
    pub user: String,
    pub password: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for AdminCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminCredentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What `revoke_login` found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevokeOutcome {
    /// The role existed (false: it had been dropped already, which is not an error).
    pub existed: bool,
    /// Sessions of the role that were ended.
    pub terminated: u32,
}

/// A `tpa_` role as the server has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpaRole {
    pub name: String,
    /// None: the role never expires (no `VALID UNTIL`, or `infinity`).
    pub valid_until: Option<DateTime<Utc>>,
    pub can_login: bool,
}

const ADMIN_RIGHTS: &str = "the admin role needs CREATEROLE, membership in pg_signal_backend, and on \
                            PostgreSQL 16+ ADMIN OPTION on each role in grant_roles";

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "`{name}` is not a tpa login role name: {reason}\nhint: tpa only manages roles named tpa_ followed \
         by lowercase letters, digits and underscores, at most {MAX_IDENTIFIER_BYTES} bytes"
    )]
    InvalidRoleName { name: String, reason: &'static str },
    #[error(
        "grant_roles entry {name:?} is not a usable role name: {reason}\nhint: fix grant_roles in the policy"
    )]
    InvalidGrantRole { name: String, reason: &'static str },
    #[error("connection_limit {0} is larger than PostgreSQL accepts ({max})", max = i32::MAX)]
    ConnectionLimitTooLarge(u32),
    #[error("the database target is incomplete: {0}\nhint: set host, port and dbname of the database")]
    InvalidTarget(&'static str),
    #[error(
        "cannot set up TLS for {target}: {message}\nhint: install the system's CA certificates \
         (ca-certificates), or point TPA_DB_<NAME>_CA_FILE at the server's CA bundle"
    )]
    TlsSetup { target: String, message: String },
    #[error(
        "TLS with {target} failed: {message}\nhint: tpa verifies the server's certificate and host name; \
         if the server uses a private CA (RDS does), point TPA_DB_<NAME>_CA_FILE at its CA bundle, and \
         connect by the name the certificate carries"
    )]
    Tls { target: String, message: String },
    #[error("{target} did not answer within {seconds} s\nhint: check the host and port, your network or VPN")]
    ConnectTimedOut { target: String, seconds: u64 },
    #[error(
        "{target} refused the admin login as {user}: {message}\nhint: check the admin password, and that \
         pg_hba.conf lets {user} connect from here with scram-sha-256"
    )]
    AuthFailed { target: String, user: String, message: String },
    #[error(
        "cannot connect to {target}: {message}\nhint: check the host, port and dbname, and that the server is up"
    )]
    Connect {
        target: String,
        message: String,
        #[source]
        source: postgres::Error,
    },
    #[error("{target} runs PostgreSQL {version}: tpa needs 14 or later")]
    UnsupportedServer { target: String, version: i32 },
    #[error(
        "{target} did not turn standard_conforming_strings on\nhint: connect to the server directly, not \
         through a pooler that drops startup options"
    )]
    NonStandardStrings { target: String },
    #[error("role {role} exists already\nhint: every grant gets a new role; revoke the old grant to drop it")]
    RoleExists { role: String },
    #[error("{message}\nhint: create that role on the server, or fix grant_roles in the policy")]
    UnknownGrantRole { message: String },
    #[error("not allowed to {action}: {message}\nhint: {ADMIN_RIGHTS}")]
    PermissionDenied { action: &'static str, message: String },
    #[error(
        "role {role} can no longer log in and its sessions were ended, but it cannot be dropped: {message}\n\
         hint: REASSIGN OWNED and DROP OWNED act on one database, and only on what the admin role may \
         revoke: in each database named above (or this one if none is), have a superuser or the owner of \
         those objects run `DROP OWNED BY {role}`, then revoke again"
    )]
    StillReferenced { role: String, message: String },
    #[error("cannot {action}: {message}")]
    Query {
        action: &'static str,
        message: String,
        #[source]
        source: postgres::Error,
    },
}

impl PgError {
    /// Worth retrying later (a sweep), as opposed to needing an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::ConnectTimedOut { .. } | PgError::Connect { .. } => true,
            PgError::Query { source, .. } => source.is_closed(),
            _ => false,
        }
    }
}

/// An admin session on one database.
pub struct Postgres {
    client: postgres::Client,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").finish_non_exhaustive()
    }
}

impl Postgres {
    /// Logs in as the admin role. `timeout` bounds the connection; statements are bounded by the
    /// session's statement_timeout and lock_timeout.
    pub fn connect(
        target: &PgTarget,
        admin: &AdminCredentials,
        timeout: Duration,
    ) -> Result<Postgres, PgError> {
        if target.host.is_empty() || target.host.contains('\0') {
            return Err(PgError::InvalidTarget("no host"));
        }
        if target.dbname.is_empty() || target.dbname.contains('\0') {
            return Err(PgError::InvalidTarget("no dbname"));
        }
        if admin.user.is_empty() || admin.user.contains('\0') {
            return Err(PgError::InvalidTarget("no admin user"));
        }
        let mut config = postgres::Config::new();
        config
            .host(&target.host)
            .port(target.port)
            .dbname(&target.dbname)
            .user(&admin.user)
            .application_name("tpa")
            .options(SESSION_OPTIONS)
            .connect_timeout(timeout)
            .keepalives(true);
        // postgres::Config keeps its own copy of the password, which it does not wipe.
        if let Some(password) = &admin.password {
            config.password(password.as_bytes());
        }
        let connected = if target.uses_tls() {
            config.ssl_mode(SslMode::Require);
            config.connect(tls_connector(target)?)
        } else {
            config.ssl_mode(SslMode::Disable);
            config.connect(postgres::NoTls)
        };
        let mut client = connected.map_err(|e| connect_error(target, admin, timeout, e))?;

        let row = client
            .query_one(
                "SELECT current_setting('standard_conforming_strings'), \
                 current_setting('server_version_num')::int",
                &[],
            )
            .map_err(|e| query_error("read the server's settings", e))?;
        let (strings, version): (String, i32) = (row.get(0), row.get(1));
        if version < MIN_SERVER_VERSION {
            return Err(PgError::UnsupportedServer { target: target.describe(), version });
        }
        if strings != "on" {
            return Err(PgError::NonStandardStrings { target: target.describe() });
        }
        Ok(Postgres { client })
    }

    /// Creates login role `role` (built by the caller as `tpa_<grant id lowercased>`) that may log in
    /// until `valid_until`, member of `grant_roles`, and returns its random password. Only the SCRAM
    /// verifier of the password is sent to the server.
    pub fn create_login(
        &mut self,
        role: &str,
        valid_until: DateTime<Utc>,
        grant_roles: &[String],
        connection_limit: Option<u32>,
    ) -> Result<Zeroizing<String>, PgError> {
        let password = random_password();
        let mut salt = [0u8; SALT_BYTES];
        OsRng.fill_bytes(&mut salt);
        let verifier = scram_sha256_verifier(password.as_bytes(), &salt, SCRAM_ITERATIONS);
        let sql = create_role_sql(role, &verifier, valid_until, grant_roles, connection_limit)?;

        let mut transaction = self.client.transaction().map_err(|e| query_error("begin a transaction", e))?;
        transaction.batch_execute(&sql).map_err(|e| match e.code() {
            Some(code) if *code == SqlState::DUPLICATE_OBJECT => {
                PgError::RoleExists { role: role.to_owned() }
            }
            Some(code) if *code == SqlState::UNDEFINED_OBJECT => {
                PgError::UnknownGrantRole { message: db_message(&e) }
            }
            _ => statement_error("create the login role", e),
        })?;
        transaction.commit().map_err(|e| statement_error("create the login role", e))?;
        Ok(password)
    }

    /// Ends `role`: no more logins, its sessions ended, what it owns in this database reassigned to
    /// the admin role (and its privileges here dropped), then the role itself. A role that does not
    /// exist is not an error. Objects it owns or privileges it holds in other databases (or here,
    /// granted by someone the admin cannot revoke for) keep it from being dropped: `StillReferenced`,
    /// after its logins and sessions are ended all the same.
    pub fn revoke_login(&mut self, role: &str) -> Result<RevokeOutcome, PgError> {
        validate_role_name(role)?;
        let Some(oid) = self.role_oid(role)? else {
            return Ok(RevokeOutcome { existed: false, terminated: 0 });
        };
        let name = quote_ident(role);
        match self.client.batch_execute(&format!("ALTER ROLE {name} NOLOGIN")) {
            Ok(()) => {}
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {
                return Ok(RevokeOutcome { existed: false, terminated: 0 });
            }
            Err(e) => return Err(statement_error("stop the role's logins", e)),
        }
        let mut terminated = self.terminate_sessions(oid)?;

        // REASSIGN and DROP OWNED need the admin to hold the role's privileges; DROP ROLE removes
        // that membership again. Both act on this database only.
        let drop = format!(
            "GRANT {name} TO CURRENT_USER; REASSIGN OWNED BY {name} TO CURRENT_USER; \
             DROP OWNED BY {name}; DROP ROLE {name}"
        );
        let mut transaction = self.client.transaction().map_err(|e| query_error("begin a transaction", e))?;
        transaction.batch_execute(&drop).map_err(|e| match e.code() {
            Some(code) if *code == SqlState::DEPENDENT_OBJECTS_STILL_EXIST => {
                PgError::StillReferenced { role: role.to_owned(), message: db_message(&e) }
            }
            _ => statement_error("drop the role", e),
        })?;
        transaction.commit().map_err(|e| statement_error("drop the role", e))?;

        // A session that authenticated just before NOLOGIN took effect may show up only now; by oid,
        // since the dropped role's sessions have no user name any more.
        terminated += self.terminate_sessions(oid)?;
        Ok(RevokeOutcome { existed: true, terminated })
    }

    /// Ends the sessions of every tpa role whose `VALID UNTIL` is at or before `now` (PostgreSQL
    /// refuses their new logins but leaves open sessions alone), and returns the names of all such
    /// roles, whether or not they had sessions, in name order.
    pub fn terminate_expired(&mut self, now: DateTime<Utc>) -> Result<Vec<String>, PgError> {
        let rows = self
            .client
            .query(
                r"SELECT oid, rolname::text FROM pg_roles
                  WHERE rolname LIKE 'tpa\_%' ESCAPE '\' AND rolvaliduntil <= $1
                  ORDER BY rolname",
                &[&now],
            )
            .map_err(|e| query_error("list the expired tpa roles", e))?;
        let mut names = Vec::with_capacity(rows.len());
        for row in rows {
            self.terminate_sessions(row.get(0))?;
            names.push(row.get(1));
        }
        Ok(names)
    }

    /// Every role whose name starts with `tpa_`, in name order.
    pub fn tpa_roles(&mut self) -> Result<Vec<TpaRole>, PgError> {
        let rows = self
            .client
            .query(
                r"SELECT rolname::text,
                         CASE WHEN rolvaliduntil = '-infinity' THEN 'epoch'::timestamptz
                              WHEN isfinite(rolvaliduntil) THEN rolvaliduntil END,
                         rolcanlogin
                  FROM pg_roles WHERE rolname LIKE 'tpa\_%' ESCAPE '\' ORDER BY rolname",
                &[],
            )
            .map_err(|e| query_error("list the tpa roles", e))?;
        Ok(rows
            .iter()
            .map(|row| TpaRole { name: row.get(0), valid_until: row.get(1), can_login: row.get(2) })
            .collect())
    }

    fn role_oid(&mut self, role: &str) -> Result<Option<u32>, PgError> {
        let row = self
            .client
            .query_opt("SELECT oid FROM pg_roles WHERE rolname = $1", &[&role])
            .map_err(|e| query_error("look the role up", e))?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Ends every session of the role with this oid and waits (boundedly) for each to go.
    fn terminate_sessions(&mut self, oid: u32) -> Result<u32, PgError> {
        let row = self
            .client
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, $2)) FROM pg_stat_activity \
                 WHERE usesysid = $1 AND pid <> pg_backend_pid()",
                &[&oid, &TERMINATE_WAIT_MS],
            )
            .map_err(|e| statement_error("end the role's sessions", e))?;
        let count: i64 = row.get(0);
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }
}

/// The `CREATE ROLE` statement of a new login role; validates every input.
fn create_role_sql(
    role: &str,
    verifier: &str,
    valid_until: DateTime<Utc>,
    grant_roles: &[String],
    connection_limit: Option<u32>,
) -> Result<String, PgError> {
    validate_role_name(role)?;
    for grant in grant_roles {
        validate_grant_role(grant)?;
    }
    // Seconds, truncated: the role never outlives the grant.
    let until = valid_until.to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut sql = format!(
        "CREATE ROLE {} LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS \
         PASSWORD {} VALID UNTIL {}",
        quote_ident(role),
        quote_literal(verifier),
        quote_literal(&until),
    );
    if let Some(limit) = connection_limit {
        let limit = i32::try_from(limit).map_err(|_| PgError::ConnectionLimitTooLarge(limit))?;
        sql.push_str(&format!(" CONNECTION LIMIT {limit}"));
    }
    if !grant_roles.is_empty() {
        let names: Vec<String> = grant_roles.iter().map(|name| quote_ident(name)).collect();
        sql.push_str(&format!(" IN ROLE {}", names.join(", ")));
    }
    Ok(sql)
}

/// `tpa_` followed by `[a-z0-9_]`, no longer than PostgreSQL keeps names.
/// The login role of a postgres grant: `tpa_` and the grant id in lower case (PostgreSQL folds
/// unquoted names; tpa always quotes, but people type them unquoted).
pub fn pg_role_name(grant_id: &crate::grant::GrantId) -> String {
    format!("{}{}", ROLE_PREFIX, grant_id.as_str().to_ascii_lowercase())
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
pub fn pg_admin(
    database: &crate::policy::DatabasePolicy,
    timeout: std::time::Duration,
) -> Result<Postgres, DbAdminError> {
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

pub fn validate_role_name(role: &str) -> Result<(), PgError> {
    let bad = |reason| Err(PgError::InvalidRoleName { name: role.to_owned(), reason });
    let Some(rest) = role.strip_prefix(ROLE_PREFIX) else { return bad("it does not start with tpa_") };
    if rest.is_empty() {
        return bad("nothing follows tpa_");
    }
    if !rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return bad("it has characters other than a-z, 0-9 and _");
    }
    if role.len() > MAX_IDENTIFIER_BYTES {
        return bad("it is too long");
    }
    Ok(())
}

/// A role name from policy: anything PostgreSQL can name, quoted when used.
fn validate_grant_role(name: &str) -> Result<(), PgError> {
    let bad = |reason| Err(PgError::InvalidGrantRole { name: name.to_owned(), reason });
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.contains('\0') {
        return bad("it contains a NUL character");
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return bad("PostgreSQL would truncate it to 63 bytes, which may name another role");
    }
    if name.starts_with(ROLE_PREFIX) {
        return bad("tpa_ roles are tpa's own login roles, not roles to grant");
    }
    Ok(())
}

/// A double-quoted identifier: any text (but NUL) names exactly itself, case kept.
pub fn quote_ident(name: &str) -> String {
    debug_assert!(!name.contains('\0'));
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A single-quoted string literal, for sessions with standard_conforming_strings on (every session
/// `Postgres::connect` opens), where a backslash is an ordinary character.
pub fn quote_literal(text: &str) -> String {
    debug_assert!(!text.contains('\0'));
    format!("'{}'", text.replace('\'', "''"))
}

/// What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802, RFC 7677):
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64. `password` must already be
/// SASLprep-normalised, as ASCII passwords (tpa's) are.
pub fn scram_sha256_verifier(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let mut salted = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, salted.as_mut());
    let client_key = Zeroizing::new(hmac_sha256(salted.as_ref(), b"Client Key"));
    let stored_key = Sha256::digest(client_key.as_slice());
    let server_key = hmac_sha256(salted.as_ref(), b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// 32 random bytes, base64url without padding: 43 characters any client can type or pass.
fn random_password() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; PASSWORD_BYTES]);
    OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_slice()))
}

/// rustls with the system's roots, or only `ca_file`'s when one is given.
fn tls_connector(target: &PgTarget) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    let setup_error = |message: String| PgError::TlsSetup { target: target.describe(), message };
    let mut roots = rustls::RootCertStore::empty();
    match &target.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    setup_error(format!("cannot read CA certificates from {}: {e}", path.display()))
                })?;
            for cert in certs {
                roots.add(cert).map_err(|e| setup_error(format!("{}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(setup_error(format!("{} holds no PEM certificate", path.display())));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                let errors: Vec<String> = native.errors.iter().map(ToString::to_string).collect();
                return Err(setup_error(format!("no system CA certificates found ({})", errors.join("; "))));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

fn connect_error(
    target: &PgTarget,
    admin: &AdminCredentials,
    timeout: Duration,
    e: postgres::Error,
) -> PgError {
    let target = target.describe();
    if let Some(code) = e.code()
        && (*code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    {
        return PgError::AuthFailed { target, user: admin.user.clone(), message: db_message(&e) };
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(error) = cause {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return PgError::Tls { target, message: tls.to_string() };
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return PgError::ConnectTimedOut { target, seconds: timeout.as_secs().max(1) };
            }
            if let Some(tls) = io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                return PgError::Tls { target, message: tls.to_string() };
            }
        }
        cause = error.source();
    }
    let message = db_message(&e);
    if message.contains("TLS") {
        return PgError::Tls { target, message };
    }
    PgError::Connect { target, message, source: e }
}

fn statement_error(action: &'static str, e: postgres::Error) -> PgError {
    if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        return PgError::PermissionDenied { action, message: db_message(&e) };
    }
    query_error(action, e)
}

fn query_error(action: &'static str, e: postgres::Error) -> PgError {
    PgError::Query { action, message: db_message(&e), source: e }
}

/// The server's message and detail, or the client's own description.
fn db_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        },
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// Issues a PostgreSQL login role for a grant, over the database's admin connection (credentials
/// from the environment, never the policy file), valid until the grant's expiry.
pub struct PgIssuer {
    pub database: crate::policy::DatabasePolicy,
    pub grant_id: crate::grant::GrantId,
    pub valid_until: DateTime<Utc>,
    pub timeout: std::time::Duration,
    /// The admin session that made the role, kept to drop it again if need be.
    admin: Option<Postgres>,
}

impl PgIssuer {
    pub fn new(
        database: crate::policy::DatabasePolicy,
        grant_id: crate::grant::GrantId,
        valid_until: DateTime<Utc>,
        timeout: std::time::Duration,
    ) -> Self {
        PgIssuer { database, grant_id, valid_until, timeout, admin: None }
    }

    /// Where a grant's role lives, as recorded: never with credentials.
    pub fn target(&self) -> String {
        format!("postgresql://{}:{}/{}", self.database.host, self.database.port, self.database.dbname)
    }
}

impl super::Issuer for PgIssuer {
    fn kind(&self) -> super::ProviderKind {
        super::ProviderKind::Postgres
    }

    fn describe(&self, record: &mut crate::grant::Record) {
        record.provider = self.kind().name().to_owned();
        record.target = self.target();
        record.database = Some(self.database.name.clone());
    }

    fn mint(&mut self) -> Result<super::Secret, super::MintFailure> {
        let mut admin = pg_admin(&self.database, self.timeout)?;
        let role = pg_role_name(&self.grant_id);
        let password = admin.create_login(
            &role,
            self.valid_until,
            &self.database.grant_roles,
            self.database.connection_limit,
        )?;
        self.admin = Some(admin);
        Ok(super::Secret::DbLogin(super::DbLogin { user: role, password, valid_until: self.valid_until }))
    }

    fn unmint(&mut self, _: &super::Secret) -> bool {
        let role = pg_role_name(&self.grant_id);
        self.admin.as_mut().is_some_and(|admin| admin.revoke_login(&role).is_ok())
    }
}

/// Ends `postgres` grants: no more logins, open sessions terminated, the login role dropped, over
/// an admin connection to the database the policy (at the trust ref, now) names.
pub struct PgBackend<'a> {
    policy: Result<&'a crate::policy::Policy, &'a str>,
    timeout: std::time::Duration,
}

impl<'a> PgBackend<'a> {
    pub fn new(policy: Result<&'a crate::policy::Policy, &'a str>, timeout: std::time::Duration) -> Self {
        PgBackend { policy, timeout }
    }

    fn end_one(&self, grant: &super::Ending<'_>) -> Result<Option<String>, String> {
        let name = grant.database.ok_or("the grant records no database")?;
        let policy = self.policy.map_err(|e| format!("the policy cannot be read: {e}"))?;
        let database = policy
            .databases
            .get(name)
            .ok_or_else(|| format!("database {name} is no longer in the policy at the trust ref"))?;
        let mut pg = pg_admin(database, self.timeout).map_err(|e| e.to_string())?;
        let outcome = pg.revoke_login(&pg_role_name(grant.grant_id)).map_err(|e| e.to_string())?;
        Ok(match (outcome.existed, outcome.terminated) {
            (false, _) => Some("the login role was already gone".to_owned()),
            (true, 0) => None,
            (true, n) => Some(format!("{n} open session(s) terminated")),
        })
    }
}

impl super::Backend for PgBackend<'_> {
    fn end(&mut self, grants: &[super::Ending<'_>], _: &dyn super::Expiries) -> Vec<super::Ended> {
        grants.iter().map(|grant| self.end_one(grant)).collect()
    }

    /// A dropped role stays dropped: nothing to write back.
    fn reassert(&mut self, _: &[super::Ending<'_>], _: &dyn super::Expiries) -> Result<usize, String> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn verifier_matches_a_fixed_vector() {
        let salt: Vec<u8> = (0..16).collect();
        assert_eq!(
            scram_sha256_verifier(b"correct horse battery staple", &salt, 4096),
            "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$ONYbSJBXtKl6bP6PVqw8pm9e7EiacprLnoUQPFS80Hw=:\
             IPOtHuGJ2HifEQg74W2XXqqCrCyQG55GbPRHa6g6n9w="
        );
    }

    /// RFC 7677's exchange, checked as a server holding our verifier would: the client's proof
    /// matches StoredKey and our ServerKey yields the RFC's server signature.
    #[test]
    fn verifier_accepts_the_rfc_7677_exchange() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let verifier = scram_sha256_verifier(b"pencil", &salt, 4096);
        let (head, keys) = verifier.rsplit_once('$').unwrap();
        assert_eq!(head, "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==");
        let (stored_key, server_key) = keys.split_once(':').unwrap();
        let (stored_key, server_key) =
            (STANDARD.decode(stored_key).unwrap(), STANDARD.decode(server_key).unwrap());

        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth_message = format!(
            "n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r={nonce}"
        );
        let proof = STANDARD.decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=").unwrap();
        let client_signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(client_signature).map(|(p, s)| p ^ s).collect();
        assert_eq!(Sha256::digest(&client_key).as_slice(), stored_key.as_slice());
        assert_eq!(
            STANDARD.encode(hmac_sha256(&server_key, auth_message.as_bytes())),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn passwords_are_43_url_safe_characters_and_differ() {
        let (a, b) = (random_password(), random_password());
        assert_eq!(a.len(), 43);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{}", *a);
        assert_ne!(*a, *b);
    }

    #[test]
    fn quoting_doubles_the_quote_and_nothing_else() {
        assert_eq!(quote_ident("app_readonly"), r#""app_readonly""#);
        assert_eq!(quote_ident(r#"x"; DROP TABLE t; --"#), r#""x""; DROP TABLE t; --""#);
        assert_eq!(quote_ident("Mixed Case"), r#""Mixed Case""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"back\slash'; --"), r"'back\slash''; --'");
    }

    #[test]
    fn login_role_names_are_tpa_and_lowercase() {
        assert!(validate_role_name("tpa_01jd3m5q8z6n2x4v7b9c1r0t5k").is_ok());
        for bad in ["tpa_", "tpa_ABC", "tpa_a-b", "tpa_a\"b", "postgres", "tpa", "xtpa_a", "tpa_a;b", "tpa_é"]
        {
            assert!(
                matches!(validate_role_name(bad), Err(PgError::InvalidRoleName { .. })),
                "{bad} accepted"
            );
        }
        assert!(validate_role_name(&format!("tpa_{}", "a".repeat(59))).is_ok());
        assert!(validate_role_name(&format!("tpa_{}", "a".repeat(60))).is_err());
    }

    #[test]
    fn grant_roles_may_be_odd_but_not_truncated_empty_or_tpa() {
        assert!(validate_grant_role(r#"weird "role"; --"#).is_ok());
        for bad in ["", "a\0b", "tpa_other"] {
            assert!(validate_grant_role(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_grant_role(&"r".repeat(63)).is_ok());
        assert!(validate_grant_role(&"r".repeat(64)).is_err());
    }

    #[test]
    fn create_statement_quotes_everything() {
        let until = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::milliseconds(999);
        let sql = create_role_sql(
            "tpa_abc",
            "SCRAM-SHA-256$4096:c2FsdA==$a:b",
            until,
            &["app_readonly".into(), r#"evil"; DROP ROLE x; --"#.into()],
            Some(3),
        )
        .unwrap();
        assert_eq!(
            sql,
            "CREATE ROLE \"tpa_abc\" LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
             NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b' VALID UNTIL '2030-01-02T03:04:05Z' \
             CONNECTION LIMIT 3 IN ROLE \"app_readonly\", \"evil\"\"; DROP ROLE x; --\""
        );
        assert!(matches!(
            create_role_sql("tpa_abc", "v", until, &[], Some(u32::MAX)),
            Err(PgError::ConnectionLimitTooLarge(_))
        ));
    }

    #[test]
    fn tls_everywhere_but_local() {
        let target = |host: &str, ca: bool| PgTarget {
            host: host.into(),
            port: 5432,
            dbname: "d".into(),
            ca_file: ca.then(|| "/ca.pem".into()),
        };
        for local in ["127.0.0.1", "127.1.2.3", "::1", "localhost", "/run/postgresql"] {
            assert!(!target(local, false).uses_tls(), "{local}");
        }
        for remote in ["db.example.com", "10.0.0.5", "::ffff:10.0.0.5", "localhost.example.com", "0.0.0.0"] {
            assert!(target(remote, false).uses_tls(), "{remote}");
        }
        assert!(target("127.0.0.1", true).uses_tls());
        assert!(!target("/run/postgresql", true).uses_tls());
    }
}

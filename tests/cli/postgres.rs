//! The PostgreSQL dynamic-role provider against a real server (see common/postgres.rs), checked with
//! the real psql client.
//!
//! The tests share one server and run in parallel. `terminate_expired(now)` ends the sessions of
//! every tpa role expired at `now`, so tests that hold a session open give their role days, and the
//! test of terminate_expired asks about a `now` only hours ahead.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use tpa::provider::postgres::{
    AdminCredentials, PgError, PgTarget, Postgres, RevokeOutcome, TpaRole, scram_sha256_verifier,
};
use zeroize::Zeroizing;

use crate::common::postgres::{ADMIN_USER, GROUP_ROLE, PgServer, pg, unique_name, unique_role};

const TIMEOUT: Duration = Duration::from_secs(10);

fn admin() -> Postgres {
    Postgres::connect(&pg().target(), &pg().admin(), TIMEOUT).expect("the admin role connects")
}

/// Long enough that no other test's `terminate_expired` reaches it.
fn in_days(days: i64) -> DateTime<Utc> {
    Utc::now() + TimeDelta::days(days)
}

fn group() -> Vec<String> {
    vec![GROUP_ROLE.to_owned()]
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn role_count(server: &PgServer, role: &str) -> String {
    server
        .superuser_sql(&format!("SELECT count(*) FROM pg_roles WHERE rolname = $q${role}$q$"))
        .trim()
        .to_owned()
}

fn assert_not_logged(server: &PgServer, password: &str) {
    assert!(!server.log_contents().contains(password), "the server log holds a password");
}

#[test]
fn login_reads_through_its_group_role_until_revoked() {
    let server = pg();
    let mut admin = admin();
    let role = unique_role("revoke");
    let password = admin.create_login(&role, in_days(7), &group(), None).unwrap();
    assert_eq!(password.len(), 43);

    let read = server.psql(&role, &password, "SELECT status FROM invoices WHERE id = 1");
    assert!(read.status.success(), "{}", stderr(&read));
    assert_eq!(stdout(&read), "stuck");

    let mut held = server.session(&role, &password);
    assert_eq!(held.query_line("SELECT 'held';").as_deref(), Some("held"));

    let outcome = admin.revoke_login(&role).unwrap();
    assert!(outcome.existed);
    assert!(outcome.terminated >= 1, "{outcome:?}");

    // The open session was ended: its next statement finds the connection closed.
    assert_eq!(held.query_line("SELECT 'still here';"), None);
    let (code, errors) = held.finish();
    assert_ne!(code, Some(0));
    assert!(errors.contains("terminating connection due to administrator command"), "{errors}");

    let again = server.psql(&role, &password, "SELECT 1");
    assert!(!again.status.success());
    assert!(stderr(&again).contains("password authentication failed"), "{}", stderr(&again));
    assert_eq!(role_count(server, &role), "0");

    // Revoking twice is not an error.
    assert_eq!(admin.revoke_login(&role).unwrap(), RevokeOutcome { existed: false, terminated: 0 });
    assert_not_logged(server, &password);
}

#[test]
fn postgres_computes_the_same_verifier() {
    let server = pg();
    // PostgreSQL hashes a plaintext password itself: tpa's function must agree byte for byte.
    let plain = unique_name("plain");
    server.superuser_sql(&format!(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE {plain} LOGIN PASSWORD 'pencil and paper'"
    ));
    let stored =
        server.superuser_sql(&format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{plain}'"));
    let stored = stored.trim();
    let (iterations, salt) = stored
        .strip_prefix("SCRAM-SHA-256$")
        .and_then(|rest| rest.split_once('$'))
        .and_then(|(head, _)| head.split_once(':'))
        .unwrap_or_else(|| panic!("not a SCRAM verifier: {stored}"));
    let salt = STANDARD.decode(salt).unwrap();
    assert_eq!(scram_sha256_verifier(b"pencil and paper", &salt, iterations.parse().unwrap()), stored);

    // A role given tpa's verifier logs in with the password, and only with it.
    let hashed = unique_name("hashed");
    let verifier = scram_sha256_verifier(b"pencil and paper", &[7; 16], 4096);
    server.superuser_sql(&format!("CREATE ROLE {hashed} LOGIN PASSWORD '{verifier}'"));
    let login = server.psql(&hashed, "pencil and paper", "SELECT current_user");
    assert!(login.status.success(), "{}", stderr(&login));
    assert_eq!(stdout(&login), hashed);
    assert!(!server.psql(&hashed, "pencil and pape", "SELECT 1").status.success());
}

#[test]
fn postgres_itself_refuses_a_role_past_its_valid_until() {
    let server = pg();
    let role = unique_role("expired");
    let password = admin().create_login(&role, Utc::now() - TimeDelta::minutes(1), &group(), None).unwrap();
    let login = server.psql(&role, &password, "SELECT 1");
    assert!(!login.status.success());
    assert!(stderr(&login).contains("password authentication failed"), "{}", stderr(&login));
    // Refused for its expiry, not for a wrong password.
    assert!(server.log_contents().contains(&format!("User \"{role}\" has an expired password")));
}

#[test]
fn terminate_expired_ends_the_sessions_of_expired_roles() {
    let server = pg();
    let mut admin = admin();
    let short = unique_role("short");
    let long = unique_role("long");
    let password = admin.create_login(&short, Utc::now() + TimeDelta::hours(1), &group(), None).unwrap();
    admin.create_login(&long, in_days(7), &group(), None).unwrap();
    let mut held = server.session(&short, &password);
    assert_eq!(held.query_line("SELECT 'held';").as_deref(), Some("held"));

    // Nothing of ours has expired yet.
    let expired = admin.terminate_expired(Utc::now()).unwrap();
    assert!(!expired.contains(&short) && !expired.contains(&long), "{expired:?}");
    assert_eq!(held.query_line("SELECT 'still held';").as_deref(), Some("still held"));

    // Two hours on, `short` has expired: PostgreSQL would refuse its logins, tpa ends its session.
    let expired = admin.terminate_expired(Utc::now() + TimeDelta::hours(2)).unwrap();
    assert!(expired.contains(&short), "{expired:?}");
    assert!(!expired.contains(&long), "{expired:?}");
    assert_eq!(held.query_line("SELECT 'gone';"), None);

    for role in [&short, &long] {
        admin.revoke_login(role).unwrap();
    }
}

#[test]
fn tpa_roles_lists_tpa_roles_only() {
    let server = pg();
    let mut admin = admin();
    // `_` is a LIKE wildcard: unescaped, 'tpa_%' would match this one too.
    server.superuser_sql("CREATE ROLE tpaxrole NOLOGIN");
    let role = unique_role("listed");
    let until = in_days(7);
    admin.create_login(&role, until, &group(), None).unwrap();

    let listed = |admin: &mut Postgres| admin.tpa_roles().unwrap().into_iter().find(|r| r.name == role);
    let roles = admin.tpa_roles().unwrap();
    assert!(roles.iter().all(|r| r.name.starts_with("tpa_")), "{roles:?}");
    assert!(!roles.iter().any(|r| r.name == "tpaxrole"));
    assert_eq!(
        listed(&mut admin),
        Some(TpaRole { name: role.clone(), valid_until: Some(until.trunc_subsecs(0)), can_login: true })
    );

    server.superuser_sql(&format!("ALTER ROLE {role} NOLOGIN VALID UNTIL 'infinity'"));
    assert_eq!(listed(&mut admin), Some(TpaRole { name: role.clone(), valid_until: None, can_login: false }));

    admin.revoke_login(&role).unwrap();
    assert_eq!(listed(&mut admin), None);
}

#[test]
fn hostile_names_are_quoted_not_run() {
    let server = pg();
    let mut admin = admin();

    // A grant role that does not exist, whose name would end the statement if it were not quoted.
    let marker = unique_name("injected");
    let role = unique_role("hostile");
    let hostile = format!("x\"; CREATE ROLE {marker}; --");
    let error = admin.create_login(&role, in_days(7), &[hostile], None).unwrap_err();
    assert!(matches!(error, PgError::UnknownGrantRole { .. }), "{error:?}");
    assert_eq!(role_count(server, &marker), "0");
    assert_eq!(role_count(server, &role), "0", "the failed CREATE ROLE left a role behind");

    // A grant role that exists, with quotes, a semicolon and a comment in its name.
    let evil = format!("evil'\"; DROP TABLE invoices; -- {}", unique_name("n"));
    let quoted = format!("\"{}\"", evil.replace('"', "\"\""));
    server.superuser_sql(&format!(
        "CREATE ROLE {quoted} NOLOGIN; GRANT {quoted} TO {ADMIN_USER} WITH ADMIN OPTION; \
         GRANT SELECT ON invoices TO {quoted}"
    ));
    let password = admin.create_login(&role, in_days(7), std::slice::from_ref(&evil), None).unwrap();
    let member = server.superuser_sql(&format!(
        "SELECT count(*) FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
         JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = '{role}' AND g.rolname = $q${evil}$q$"
    ));
    assert_eq!(member.trim(), "1");
    let read = server.psql(&role, &password, "SELECT count(*) FROM invoices");
    assert!(read.status.success(), "{}", stderr(&read));
    assert_eq!(stdout(&read), "2");

    // Login role names are checked before any SQL is built.
    for bad in [r#"tpa_x"; DROP TABLE invoices; --"#, "postgres", "tpa_X", "tpa_a b"] {
        let error = admin.create_login(bad, in_days(7), &group(), None).unwrap_err();
        assert!(matches!(error, PgError::InvalidRoleName { .. }), "{bad}: {error:?}");
        let error = admin.revoke_login(bad).unwrap_err();
        assert!(matches!(error, PgError::InvalidRoleName { .. }), "{bad}: {error:?}");
    }
    assert_eq!(server.superuser_sql("SELECT count(*) FROM invoices").trim(), "2");
    admin.revoke_login(&role).unwrap();
}

#[test]
fn the_server_log_never_holds_the_password() {
    let server = pg();
    let mut admin = admin();
    let role = unique_role("logged");
    let password = admin.create_login(&role, in_days(7), &group(), Some(3)).unwrap();
    let login = server.psql(&role, &password, "SELECT 1");
    assert!(login.status.success(), "{}", stderr(&login));
    admin.revoke_login(&role).unwrap();

    let log = server.log_contents();
    // Every statement is logged, CREATE ROLE included, with the verifier only.
    let create = log
        .lines()
        .find(|line| line.contains(&format!("CREATE ROLE \"{role}\"")))
        .unwrap_or_else(|| panic!("CREATE ROLE {role} is not in the log"));
    assert!(create.contains("PASSWORD 'SCRAM-SHA-256$4096:"), "{create}");
    assert!(!log.contains(password.as_str()));
}

#[test]
fn connection_limit_is_applied() {
    let server = pg();
    let mut admin = admin();
    let limited = unique_role("limited");
    let unlimited = unique_role("unlimited");
    let password = admin.create_login(&limited, in_days(7), &group(), Some(1)).unwrap();
    admin.create_login(&unlimited, in_days(7), &group(), None).unwrap();
    let limit = |role: &str| {
        server
            .superuser_sql(&format!("SELECT rolconnlimit FROM pg_roles WHERE rolname = '{role}'"))
            .trim()
            .to_owned()
    };
    assert_eq!(limit(&limited), "1");
    assert_eq!(limit(&unlimited), "-1");

    let mut held = server.session(&limited, &password);
    assert_eq!(held.query_line("SELECT 'held';").as_deref(), Some("held"));
    let second = server.psql(&limited, &password, "SELECT 1");
    assert!(!second.status.success());
    assert!(stderr(&second).contains("too many connections for role"), "{}", stderr(&second));

    for role in [&limited, &unlimited] {
        admin.revoke_login(role).unwrap();
    }
}

#[test]
fn revoke_reassigns_what_the_role_owned_here() {
    let server = pg();
    let mut admin = admin();
    let role = unique_role("owner");
    let schema = unique_name("scratch");
    let password = admin.create_login(&role, in_days(7), &group(), None).unwrap();
    // A schema of the admin's, where the login may create tables: a privilege and an owned object.
    server.superuser_sql(&format!(
        "CREATE SCHEMA {schema} AUTHORIZATION {ADMIN_USER}; GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}"
    ));
    let made = server.psql(&role, &password, &format!("CREATE TABLE {schema}.notes (text text)"));
    assert!(made.status.success(), "{}", stderr(&made));

    assert!(admin.revoke_login(&role).unwrap().existed);
    let owner = server.superuser_sql(&format!(
        "SELECT tableowner FROM pg_tables WHERE schemaname = '{schema}' AND tablename = 'notes'"
    ));
    assert_eq!(owner.trim(), ADMIN_USER);
    assert_eq!(role_count(server, &role), "0");
}

#[test]
fn a_role_with_privileges_in_another_database_is_locked_out_but_kept() {
    let server = pg();
    let mut admin = admin();
    let role = unique_role("elsewhere");
    let database = unique_name("elsewhere");
    let password = admin.create_login(&role, in_days(7), &group(), None).unwrap();
    server.superuser_sql_in("postgres", &format!("CREATE DATABASE {database}"));
    server.superuser_sql_in(&database, &format!("CREATE TABLE t (x int); GRANT SELECT ON t TO {role}"));
    let mut held = server.session(&role, &password);
    assert_eq!(held.query_line("SELECT 'held';").as_deref(), Some("held"));

    let error = admin.revoke_login(&role).unwrap_err();
    assert!(
        matches!(&error, PgError::StillReferenced { message, .. } if message.contains(&database)),
        "{error}"
    );
    assert_eq!(held.query_line("SELECT 'gone';"), None);
    let login = server.psql(&role, &password, "SELECT 1");
    assert!(!login.status.success());
    assert!(stderr(&login).contains("is not permitted to log in"), "{}", stderr(&login));

    // Once that database lets go of it, the revoke completes.
    server.superuser_sql_in(&database, &format!("DROP OWNED BY {role}"));
    assert!(admin.revoke_login(&role).unwrap().existed);
    assert_eq!(role_count(server, &role), "0");
}

#[test]
fn admin_connects_over_the_unix_socket() {
    let server = pg();
    let target = PgTarget { host: server.socket_dir.to_string_lossy().into_owned(), ..server.target() };
    let mut admin = Postgres::connect(&target, &server.admin(), TIMEOUT).unwrap();
    admin.tpa_roles().unwrap();
}

#[test]
fn a_wrong_admin_password_is_an_authentication_failure() {
    let server = pg();
    let wrong = AdminCredentials { user: ADMIN_USER.into(), password: Some(Zeroizing::new("wrong".into())) };
    let error = Postgres::connect(&server.target(), &wrong, TIMEOUT).unwrap_err();
    assert!(matches!(error, PgError::AuthFailed { .. }), "{error:?}");
    assert!(error.to_string().contains("hint: check the admin password"), "{error}");
}

#[test]
fn tls_is_used_and_verified_when_a_ca_is_given() {
    let server = pg();
    // Its own admin, so that its session is told apart from other tests'.
    let user = unique_name("tls_admin");
    server.superuser_sql(&format!("CREATE ROLE {user} LOGIN PASSWORD 'tls-password'"));
    let credentials =
        AdminCredentials { user: user.clone(), password: Some(Zeroizing::new("tls-password".into())) };
    let target = PgTarget { ca_file: Some(server.ca_file.clone()), ..server.target() };
    let session = Postgres::connect(&target, &credentials, TIMEOUT).unwrap();
    let ssl = server.superuser_sql(&format!(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = '{user}'"
    ));
    assert_eq!(ssl.trim(), "t");
    drop(session);

    // A certificate signed by another CA is refused.
    let untrusted = PgTarget { ca_file: Some(server.other_ca_file.clone()), ..server.target() };
    let error = Postgres::connect(&untrusted, &credentials, TIMEOUT).unwrap_err();
    assert!(matches!(error, PgError::Tls { .. }), "{error:?}");
    assert!(error.to_string().contains("hint:"), "{error}");

    // So is one for another name: the server's certificate names 127.0.0.1 only.
    let misnamed = PgTarget { host: "localhost".into(), ..target };
    let error = Postgres::connect(&misnamed, &credentials, TIMEOUT).unwrap_err();
    assert!(matches!(error, PgError::Tls { .. }), "{error:?}");
}

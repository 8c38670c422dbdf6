//! Database grants through the CLI: `tpa request --db` for an rds-iam database, `tpa db-token`
//! (byte-identical to botocore for the grant's own credentials), `tpa exec --db`, revocation, and
//! the token never printed by anything else.

use std::io::{BufRead, BufReader, Write};

use serde_json::json;

use crate::common::aws::AwsRepo;
use crate::common::aws::denied;
use crate::common::botocore::botocore;
use crate::common::postgres::{ADMIN_PASSWORD, ADMIN_USER, GROUP_ROLE, PgServer, pg};

const HOST: &str = "orders.abc123xyz.us-east-1.rds.amazonaws.com";
const NOW: &str = "2026-11-28T12:00:00Z";

fn orders_repo() -> AwsRepo {
    AwsRepo::with_policy_extra(&format!(
        "[databases.orders]\nprovider = \"rds-iam\"\nengine = \"postgres\"\nhost = \"{HOST}\"\nport = 5432\n\
         db_user = \"ops@example.com\"\nrole = \"prod-readonly\"\nmax_ttl = \"1h\"\n"
    ))
}

/// The credentials `tpa env` exports, as (key id, secret, session token).
fn grant_credentials(aws: &AwsRepo, grant: &str) -> (String, String, String) {
    let exported = aws.tpa().args(["env", grant]).run().success().stdout;
    let value = |name: &str| {
        exported
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}='")))
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or_else(|| panic!("{name} in {exported}"))
            .to_owned()
    };
    (value("AWS_ACCESS_KEY_ID"), value("AWS_SECRET_ACCESS_KEY"), value("AWS_SESSION_TOKEN"))
}

fn botocore_token(key: &str, secret: &str, session: &str, epoch: i64) -> String {
    let case = json!({
        "host": HOST, "port": 5432, "user": "ops@example.com", "region": "us-east-1",
        "access_key_id": key, "secret_access_key": secret, "session_token": session, "epoch": epoch,
    });
    botocore(&[case]).remove(0)
}

#[test]
fn an_rds_iam_grant_gives_botocore_identical_tokens_to_db_token_and_exec_only() {
    let aws = orders_repo();
    let granted = aws
        .tpa()
        .args(["request", "--db", "orders", "--reason", "INC-7: fix stuck orders", "--json"])
        .env("TPA_TEST_NOW", NOW)
        .run()
        .success()
        .json();
    let grant = granted["grant_id"].as_str().unwrap().to_owned();
    assert_eq!(granted["database"], "orders");
    assert_eq!(granted["role"], "prod-readonly");
    let shown = aws.tpa().args(["show", &grant, "--json"]).run().success().json();
    assert_eq!(shown["records"][0]["record"]["provider"], "rds-iam");

    let token =
        aws.tpa().args(["db-token", "--db", "orders"]).env("TPA_TEST_NOW", NOW).run().success().stdout;
    let token = token.trim_end().to_owned();
    assert!(token.starts_with(&format!("{HOST}:5432/?Action=connect&DBUser=ops%40example.com&")), "{token}");
    let (key, secret, session) = grant_credentials(&aws, &grant);
    let epoch = chrono::DateTime::parse_from_rfc3339(NOW).unwrap().timestamp();
    assert_eq!(token, botocore_token(&key, &secret, &session, epoch), "byte-identical to botocore");
    let as_json =
        aws.tpa().args(["db-token", &grant, "--json"]).env("TPA_TEST_NOW", NOW).run().success().json();
    assert_eq!(as_json["token"], token.as_str());
    assert_eq!(as_json["user"], "ops@example.com");

    let child_env = aws
        .tpa()
        .args(["exec", "--db", "orders", "--", "env"])
        .env("TPA_TEST_NOW", NOW)
        .run()
        .success()
        .stdout;
    let var =
        |name: &str| child_env.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).map(str::to_owned);
    assert_eq!(var("PGPASSWORD").as_deref(), Some(token.as_str()));
    assert_eq!(var("PGHOST").as_deref(), Some(HOST));
    assert_eq!(var("PGUSER").as_deref(), Some("ops@example.com"));
    assert_eq!(var("PGSSLMODE").as_deref(), Some("require"));
    assert_eq!(var("AWS_SECRET_ACCESS_KEY"), None, "the database child gets no AWS credentials");

    // No other command prints a token.
    for args in [
        vec!["status", "--json"],
        vec!["status"],
        vec!["show", grant.as_str()],
        vec!["log", "--json"],
        vec!["audit", "--json", "--offline"],
    ] {
        let out = aws.tpa().args(&args).env("TPA_TEST_NOW", NOW).run();
        assert!(
            !out.stdout.contains("X-Amz-Signature") && !out.stderr.contains("X-Amz-Signature"),
            "{args:?}"
        );
    }
    let objects = aws.env.git_output(&aws.dir, &["cat-file", "--batch-all-objects", "--batch"]);
    assert!(!String::from_utf8_lossy(&objects.stdout).contains("X-Amz-Signature"));

    // Revoked: the session is denied like any STS grant's, and no new token is made.
    aws.tpa().args(["revoke", &grant]).run().success();
    assert!(denied(&aws.role_name).contains(&format!("tpa-{grant}")));
    let refused = aws.tpa().args(["db-token", "--db", "orders"]).env("TPA_TEST_NOW", NOW).run().code(2);
    assert!(refused.stderr.contains("no active grant for database orders"), "{}", refused.stderr);
}

#[test]
fn db_requests_are_checked_against_the_database_policy() {
    let aws = orders_repo();
    let too_long = aws
        .tpa()
        .args(["request", "--db", "orders", "--reason", "INC-7: fix stuck orders", "--ttl", "2h"])
        .run()
        .code(2);
    assert!(too_long.stderr.contains("max_ttl"), "{}", too_long.stderr);
    let unknown =
        aws.tpa().args(["request", "--db", "ordrs", "--reason", "INC-7: fix stuck orders"]).run().code(2);
    assert!(unknown.stderr.contains("did you mean `orders`"), "{}", unknown.stderr);
}

const PG_DB: &str = "app-pg";
/// What `TPA_DB_<NAME>_...` becomes for `app-pg`.
const PG_ENV: &str = "TPA_DB_APP_PG";

fn postgres_repo(server: &PgServer) -> AwsRepo {
    AwsRepo::with_policy_extra(&format!(
        "[databases.{PG_DB}]\nprovider = \"postgres\"\nengine = \"postgres\"\nhost = \"127.0.0.1\"\nport = {}\n\
         dbname = \"{}\"\ngrant_roles = [\"{GROUP_ROLE}\"]\nconnection_limit = 3\nmax_ttl = \"1h\"\n",
        server.port,
        crate::common::postgres::DBNAME
    ))
}

/// `tpa` with the admin connection in its environment (as the one who grants and revokes has it).
fn as_admin(aws: &AwsRepo) -> crate::common::Run {
    aws.tpa()
        .env(&format!("{PG_ENV}_ADMIN_USER"), ADMIN_USER)
        .env(&format!("{PG_ENV}_ADMIN_PASSWORD"), ADMIN_PASSWORD)
}

fn role_exists(server: &PgServer, grant: &str) -> bool {
    let role = format!("tpa_{}", grant.to_ascii_lowercase());
    server.superuser_sql(&format!("SELECT count(*) FROM pg_roles WHERE rolname = '{role}'")).trim() == "1"
}

#[test]
fn a_postgres_grant_is_a_login_role_used_through_exec_and_revoke_ends_its_open_session() {
    let server = pg();
    let aws = postgres_repo(server);
    let refused =
        aws.tpa().args(["request", "--db", PG_DB, "--reason", "INC-8: unstick invoices"]).run().code(2);
    assert!(
        refused.stderr.contains(&format!("{PG_ENV}_ADMIN_USER")),
        "says which variable: {}",
        refused.stderr
    );

    let granted = as_admin(&aws)
        .args(["request", "--db", PG_DB, "--reason", "INC-8: unstick invoices", "--json"])
        .run()
        .success()
        .json();
    let grant = granted["grant_id"].as_str().unwrap().to_owned();
    assert_eq!(granted["database"], PG_DB);
    assert!(granted["target"].as_str().unwrap().starts_with("postgresql://127.0.0.1:"));
    assert!(role_exists(server, &grant));
    let limit = server.superuser_sql(&format!(
        "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'tpa_{}'",
        grant.to_ascii_lowercase()
    ));
    assert_eq!(limit.trim(), "3");

    // psql through tpa exec reads through the granted group role; no admin variable needed.
    let psql = ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"];
    let read = aws
        .tpa()
        .args(["exec", "--db", PG_DB, "--", "psql"])
        .args(psql)
        .args(["-c", "SELECT status FROM invoices WHERE id = 1"])
        .run()
        .success();
    assert_eq!(read.stdout.trim(), "stuck");
    let password =
        aws.tpa().args(["exec", "--db", PG_DB, "--", "printenv", "PGPASSWORD"]).run().success().stdout;
    let password = password.trim().to_owned();
    assert!(password.len() >= 32);
    aws.tpa().args(["db-token", "--db", PG_DB]).run().code(2);
    // The password is no AWS credential: tpa env / exec / credential-process never hand it out.
    let env_out = aws.tpa().args(["env", &grant]).run().code(2);
    assert!(env_out.stderr.contains("tpa exec --db"), "{}", env_out.stderr);
    assert!(!env_out.stdout.contains(&password));
    let newest = aws.tpa().arg("env").run();
    assert!(!newest.stdout.contains(&password), "the newest-grant default skips database grants");
    let exec_out = aws.tpa().args(["exec", "--", "printenv", "AWS_SECRET_ACCESS_KEY"]).run();
    assert!(!exec_out.stdout.contains(&password));

    // A session held open through tpa exec, then the grant revoked.
    let mut held = aws.tpa().args(["exec", "--db", PG_DB, "--", "psql"]).args(psql).spawn_piped();
    let mut stdin = held.stdin.take().unwrap();
    let mut lines = BufReader::new(held.stdout.take().unwrap()).lines();
    writeln!(stdin, "SELECT 'held';").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "held");
    let revoked = as_admin(&aws).args(["revoke", &grant, "--json"]).run().success();
    assert!(revoked.stdout.contains("session(s) terminated"), "{}", revoked.stdout);
    let _ = writeln!(stdin, "SELECT 'still here';");
    drop(stdin);
    assert!(lines.next().is_none_or(|l| l.unwrap() != "still here"), "the open session was terminated");
    assert!(!held.wait().unwrap().success());
    assert!(!role_exists(server, &grant), "the login role is dropped");
    let after = aws.tpa().args(["exec", "--db", PG_DB, "--", "true"]).run().code(2);
    assert!(after.stderr.contains("no active grant"), "{}", after.stderr);

    // The password never reached git, the ledger or the server's log.
    let objects = aws.env.git_output(&aws.dir, &["cat-file", "--batch-all-objects", "--batch"]);
    assert!(!String::from_utf8_lossy(&objects.stdout).contains(&password));
    assert!(!server.log_contents().contains(&password));
}

#[test]
fn the_sweep_drops_the_role_of_an_expired_postgres_grant() {
    let server = pg();
    let aws = postgres_repo(server);
    let grant = as_admin(&aws)
        .args(["request", "--db", PG_DB, "--reason", "INC-9: look at invoices", "--ttl", "15m", "--json"])
        .run()
        .success()
        .json()["grant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(role_exists(server, &grant));
    let later = (chrono::Utc::now() + chrono::Duration::minutes(20)).to_rfc3339();
    as_admin(&aws).args(["sweep"]).env("TPA_TEST_NOW", &later).run().success();
    assert!(!role_exists(server, &grant), "an expired grant's login role is dropped by the sweep");
    let show = aws.tpa().args(["show", &grant, "--json"]).env("TPA_TEST_NOW", &later).run().success().json();
    assert_eq!(show["state"], "revoked");
}

#[test]
fn the_audit_reports_orphan_login_roles_and_grants_whose_role_is_gone() {
    let server = pg();
    let aws = postgres_repo(server);
    let request = |reason: &str| {
        as_admin(&aws).args(["request", "--db", PG_DB, "--reason", reason, "--json"]).run().success().json()
            ["grant_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let kept = request("INC-10: fix invoices");
    let dropped = request("INC-11: fix more invoices");
    // The server is shared by the whole test binary: name roles that only this test makes.
    let orphan = format!("tpa_orphan_{}", crate::common::postgres::unique_name("audit").replace('-', "_"));
    server.superuser_sql(&format!("CREATE ROLE {orphan} LOGIN"));
    server.superuser_sql(&format!("DROP ROLE tpa_{}", dropped.to_ascii_lowercase()));

    let report = as_admin(&aws).args(["audit", "--json"]).run().code(1).json();
    let findings: Vec<(String, String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["grant_id"].as_str().unwrap_or("-").to_owned(),
                f["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(findings.iter().any(|(k, g, _)| k == "role_missing" && *g == dropped), "{findings:?}");
    assert!(findings.iter().any(|(k, _, m)| k == "orphan_role" && m.contains(&orphan)), "{findings:?}");
    assert!(!findings.iter().any(|(_, g, _)| *g == kept), "the intact grant is clean: {findings:?}");
    assert!(
        !findings
            .iter()
            .any(|(k, _, m)| k == "orphan_role" && m.contains(&format!("tpa_{}", kept.to_ascii_lowercase()))),
        "{findings:?}"
    );
    server.superuser_sql(&format!("DROP ROLE {orphan}"));

    // Without an admin connection the check is said to be skipped, not passed.
    let skipped = aws.tpa().args(["audit", "--json"]).run().json();
    assert!(
        skipped["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "postgres" && c["status"] == "skipped")
    );
}

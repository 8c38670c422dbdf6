//! Database grants through the CLI: `tpa request --db` for an rds-iam database, `tpa db-token`
//! (byte-identical to botocore for the grant's own credentials), `tpa exec --db`, revocation, and
//! the token never printed by anything else.

use std::process::{Command, Stdio};

use serde_json::json;

use crate::db_token::{BOTOCORE, botocore_python};
use crate::request::AwsRepo;
use crate::revoke::denied;

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
    let input = json!([{
        "host": HOST, "port": 5432, "user": "ops@example.com", "region": "us-east-1",
        "access_key_id": key, "secret_access_key": secret, "session_token": session, "epoch": epoch,
    }]);
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(botocore_python())
        .args(["-c", BOTOCORE])
        .env_clear()
        .env("HOME", home.path())
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let tokens: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    tokens[0].clone()
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

//! `tpa request`, `exec`, `env`, `credential-process` and `status` against a real moto server,
//! reached through a fault-injection proxy the tests control.

use serde_json::Value;

use crate::common::aws::policy;
use crate::common::aws::python;
use crate::common::aws::{AwsRepo, REASON};
use crate::common::proxy::Mode;
use crate::common::*;

const WHOAMI: &str =
    "import boto3; i = boto3.client('sts').get_caller_identity(); print(i['Arn']); print(i['UserId'])";

#[test]
fn a_grant_works_and_is_recorded_on_the_branch_and_commit() {
    let aws = AwsRepo::new();
    let out = aws.request().arg("--json").run().success();
    let granted = out.json();
    let grant_id = granted["grant_id"].as_str().unwrap().to_owned();
    assert_eq!(granted["branch"], "refs/heads/hotfix/INC-4211");
    assert_eq!(granted["commit"], aws.head().as_str());
    assert_eq!(granted["role"], "prod-readonly");
    assert!(granted["expires_at"].is_string());
    assert!(!out.stdout.contains("SecretAccessKey") && !out.stdout.contains("SessionToken"));

    // The credentials are real: moto sees the assumed role with tpa's session name.
    let whoami = aws.tpa().args(["exec", &grant_id, "--"]).arg(python()).args(["-c", WHOAMI]).run().success();
    let mut lines = whoami.stdout.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!("arn:aws:sts::123456789012:assumed-role/{}/tpa-{grant_id}", aws.role_name)
    );
    assert!(lines.next().unwrap().ends_with(&format!(":tpa-{grant_id}")));
    // --role picks the newest active grant for the role; no argument picks the newest of all.
    aws.tpa()
        .args(["exec", "--role", "prod-readonly", "--"])
        .arg(python())
        .args(["-c", WHOAMI])
        .run()
        .success();

    assert_eq!(aws.kinds(), ["intent", "grant"]);
    let verify = aws.tpa().args(["verify", "--json"]).run().success().json();
    assert_eq!(verify["trust_ref"], "refs/remotes/origin/main");
    let show = aws.tpa().args(["show", &grant_id, "--json"]).run().success().json();
    assert_eq!(show["state"], "active");
    let grant_record = &show["records"][1]["record"];
    assert_eq!(grant_record["branch"], "refs/heads/hotfix/INC-4211");
    assert_eq!(grant_record["commit"], aws.head().as_str());
    assert_eq!(grant_record["target"], aws.role_arn.as_str());
    assert_eq!(grant_record["provider"], "aws-sts");
    assert_eq!(grant_record["policy_commit"], aws.env.git(&aws.dir, &["rev-parse", "origin/main"]).as_str());
    assert!(grant_record["credential_fingerprint"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(grant_record["scope"]["name"], "tpa:no-role-chaining");

    let status = aws.tpa().args(["status", "--json"]).run().success().json();
    let entry = status.as_array().unwrap().iter().find(|g| g["grant_id"] == grant_id.as_str()).unwrap();
    assert_eq!(entry["state"], "active");
    let left = entry["seconds_left"].as_i64().unwrap();
    assert!((1700..=1800).contains(&left), "{left}");
}

#[test]
fn env_and_credential_process_hand_out_the_keyring_copy() {
    let aws = AwsRepo::new();
    let printed = aws.request().args(["--format", "json"]).run().success().json();
    let key_id = printed["AccessKeyId"].as_str().unwrap();
    let env = aws.tpa().arg("env").run().success().stdout;
    assert!(env.contains(&format!("export AWS_ACCESS_KEY_ID='{key_id}'")), "{env}");
    assert!(env.contains(&format!(
        "export AWS_SECRET_ACCESS_KEY='{}'",
        printed["SecretAccessKey"].as_str().unwrap()
    )));
    let process = aws.tpa().args(["credential-process", "--role", "prod-readonly"]).run().success().json();
    assert_eq!(process["Version"], 1);
    assert_eq!(process["AccessKeyId"], key_id);
    assert_eq!(process["SessionToken"], printed["SessionToken"]);
    assert!(process["Expiration"].as_str().unwrap().ends_with('Z'));

    let creds = aws.request().args(["--format", "credential-process"]).run().success().json();
    assert_eq!(creds["Version"], 1);
    let env_format = aws.request().args(["--format", "env"]).run().success().stdout;
    assert!(env_format.starts_with("export AWS_ACCESS_KEY_ID="), "{env_format}");
}

#[test]
fn exec_refuses_to_nest_and_ended_grants_are_never_handed_out() {
    let aws = AwsRepo::new();
    let grant_id =
        aws.request().arg("--json").run().success().json()["grant_id"].as_str().unwrap().to_owned();
    let nested = aws.tpa().args(["exec", "--", "true"]).env("TPA_EXEC_GRANT", &grant_id).run().code(2);
    assert!(nested.stderr.contains("already inside `tpa exec`"), "{}", nested.stderr);
    // Two hours later (the test build's pinned clock) the 30-minute grant has expired.
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let expired = aws.tpa().args(["exec", &grant_id, "--", "true"]).env("TPA_TEST_NOW", &later).run().code(2);
    assert!(expired.stderr.contains("expired"), "{}", expired.stderr);
    let env = aws.tpa().arg("env").env("TPA_TEST_NOW", &later).run().code(2);
    assert!(env.stdout.is_empty());
    assert_eq!(aws.keyring_grants(), 0, "the ended grant's keyring entry is gone");
    assert!(
        aws.tpa()
            .args(["status", "--json"])
            .env("TPA_TEST_NOW", &later)
            .run()
            .success()
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// Each refusal: exit 2, the message, no record, no connection to AWS.
fn assert_refused(aws: &AwsRepo, run: Run, message: &str) {
    let tip = aws.notes_tip();
    let before = aws.proxy.connections();
    let out = run.run().code(2);
    assert!(out.stderr.contains(message), "expected {message:?} in:\n{}", out.stderr);
    assert_eq!(aws.notes_tip(), tip, "a refusal wrote to the ledger");
    assert_eq!(aws.proxy.connections(), before, "a refusal called AWS");
}

#[test]
fn every_refusal_leaves_no_record_and_makes_no_aws_call() {
    let aws = AwsRepo::with_policy_extra(
        "\n[roles.needs-mfa]\narn = \"arn:aws:iam::123456789012:role/mfa\"\nrequire_mfa = true\n\
         mfa_serial = \"arn:aws:iam::123456789012:mfa/{user}\"\n\
         \n[roles.bad-session-policy]\narn = \"arn:aws:iam::123456789012:role/bad\"\nsession_policy = \".tpa/policies/bad.json\"\n\
         \n[roles.long-session-policy]\narn = \"arn:aws:iam::123456789012:role/long\"\nsession_policy = \".tpa/policies/long.json\"\n",
    );
    // The session policies live on the reviewed main too.
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    std::fs::create_dir_all(aws.dir.join(".tpa/policies")).unwrap();
    std::fs::write(aws.dir.join(".tpa/policies/bad.json"), "{\"Statement\": [").unwrap();
    let long = format!(
        "{{\"Version\":\"2012-10-17\",\"Statement\":[{{\"Effect\":\"Allow\",\"Action\":[{}],\"Resource\":\"*\"}}]}}",
        (0..120).map(|i| format!("\"s3:GetObject{i}\"")).collect::<Vec<_>>().join(",")
    );
    std::fs::write(aws.dir.join(".tpa/policies/long.json"), long).unwrap();
    aws.env.git(&aws.dir, &["add", ".tpa"]);
    aws.env.git(&aws.dir, &["commit", "-q", "-m", "session policies"]);
    aws.env.git(&aws.dir, &["push", "-q", "origin", "main"]);
    aws.env.git(&aws.dir, &["switch", "-q", "hotfix/INC-4211"]);

    let req = || aws.tpa().arg("request");
    assert_refused(&aws, req().args(["--role", "prod-readonly"]), "a reason is required");
    assert_refused(&aws, req().args(["--role", "prod-readonly", "--reason", "fix"]), "at least 10");
    assert_refused(&aws, req().args(["--role", "prod-admin", "--reason", REASON]), "prod-admin");
    assert_refused(&aws, aws.request().args(["--ttl", "2h"]), "max_ttl");
    assert_refused(&aws, aws.request().args(["--ttl", "10m"]), "outside what STS allows");
    assert_refused(&aws, req().args(["--role", "needs-mfa", "--reason", REASON]), "--mfa-code");
    assert_refused(&aws, req().args(["--role", "bad-session-policy", "--reason", REASON]), "not valid JSON");
    assert_refused(
        &aws,
        req().args(["--role", "long-session-policy", "--reason", REASON]),
        "above STS's limit of 2048",
    );

    aws.env.git(&aws.dir, &["switch", "-q", "-c", "feature/not-allowed"]);
    assert_refused(&aws, aws.request(), "may only be taken on branches matching");
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    assert_refused(&aws, aws.request(), "protected branch");
    aws.env.git(&aws.dir, &["switch", "-q", "--detach", "HEAD"]);
    assert_refused(&aws, aws.request(), "detached");
    aws.env.git(&aws.dir, &["switch", "-q", "--orphan", "hotfix/unborn"]);
    assert_refused(&aws, aws.request(), "no commits yet");
}

#[test]
fn the_policy_comes_from_the_trust_ref_not_the_branch_or_local_main() {
    let aws = AwsRepo::new();
    let looser = policy(&aws.role_arn, "").replace("max_ttl = \"1h\"", "max_ttl = \"12h\"");
    // Looser on the hotfix branch, committed.
    std::fs::write(aws.dir.join(".tpa/policy.toml"), &looser).unwrap();
    aws.env.git(&aws.dir, &["commit", "-q", "-am", "let me have 12h"]);
    assert_refused(&aws, aws.request().args(["--ttl", "2h"]), "max_ttl");
    // Looser straight on local main, not pushed.
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    std::fs::write(aws.dir.join(".tpa/policy.toml"), &looser).unwrap();
    aws.env.git(&aws.dir, &["commit", "-q", "-am", "let me have 12h on main"]);
    aws.env.git(&aws.dir, &["switch", "-q", "-c", "hotfix/again"]);
    assert_refused(&aws, aws.request().args(["--ttl", "2h"]), "max_ttl");
    // Uncommitted in the working tree.
    std::fs::write(aws.dir.join(".tpa/policy.toml"), looser.replace("hotfix/*", "*")).unwrap();
    assert_refused(&aws, aws.request().args(["--ttl", "2h"]), "max_ttl");
}

#[test]
fn policy_errors_name_the_file_and_line() {
    let aws = AwsRepo::with_policy_extra("max_tll = \"2h\"\n");
    let out = aws.request().run().code(2);
    assert!(out.stderr.contains("refs/remotes/origin/main:.tpa/policy.toml:10:"), "{}", out.stderr);
    assert!(out.stderr.contains("max_ttl"), "{}", out.stderr);
    assert_eq!(aws.proxy.connections(), 0);
}

#[test]
fn endpoint_down_is_a_failed_record_and_no_secret() {
    let aws = AwsRepo::new();
    aws.proxy.set_mode(Mode::Down);
    let out = aws.request().run().code(2);
    assert!(out.stderr.contains("cannot reach STS"), "{}", out.stderr);
    assert_eq!(aws.kinds(), ["intent", "failed"]);
    assert_eq!(aws.keyring_grants(), 0);
    aws.tpa().args(["verify"]).run().success();
}

#[test]
fn a_hanging_endpoint_is_a_bounded_wait() {
    let aws = AwsRepo::new();
    aws.proxy.set_mode(Mode::Hang);
    let started = std::time::Instant::now();
    let out = aws.request().args(["--timeout", "2s"]).run().code(2);
    // Bounded, not fast: the SDK may retry within the operation timeout; far below the default 20 s.
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "{:?}", started.elapsed());
    assert!(out.stderr.contains("did not answer within 2 s"), "{}", out.stderr);
    assert_eq!(aws.kinds(), ["intent", "failed"]);
    assert_eq!(aws.keyring_grants(), 0);
}

#[test]
fn access_denied_becomes_advice_and_a_failed_record() {
    let aws = AwsRepo::new();
    aws.proxy.set_mode(Mode::Respond {
        status: 403,
        content_type: "text/xml",
        body: "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
               <Code>AccessDenied</Code><Message>User: arn:aws:iam::123456789012:user/alice is not authorized to \
               perform: sts:TagSession on resource: arn:aws:iam::123456789012:role/x</Message></Error>\
               <RequestId>1</RequestId></ErrorResponse>"
            .into(),
    });
    let out = aws.request().run().code(2);
    assert!(
        out.stderr.contains("sts:TagSession") && out.stderr.contains("session_tags = false"),
        "{}",
        out.stderr
    );
    assert_eq!(aws.kinds(), ["intent", "failed"]);
    let log = aws.tpa().args(["log", "--json"]).run().success().json();
    assert!(
        log[0]["record"]["error"].as_str().unwrap().contains("AccessDenied")
            || log[0]["record"]["error"].as_str().unwrap().contains("denied")
    );
}

#[test]
fn secrets_appear_nowhere_but_where_they_were_asked_for() {
    let aws = AwsRepo::new();
    let mut outputs: Vec<String> = Vec::new();
    let mut keep = |done: Done| {
        outputs.push(done.stdout.clone());
        outputs.push(done.stderr.clone());
        done
    };
    let granted = keep(aws.request().arg("--json").run().success()).json();
    let grant_id = granted["grant_id"].as_str().unwrap().to_owned();
    keep(aws.request().run().success());
    for args in [
        vec!["status"],
        vec!["status", "--json", "--all"],
        vec!["log"],
        vec!["log", "--json"],
        vec!["show", grant_id.as_str()],
        vec!["show", grant_id.as_str(), "--json"],
        vec!["verify", "--json"],
    ] {
        keep(aws.tpa().args(args).run().success());
    }
    // The secrets, as `tpa env` hands them out (the one place they are meant to appear).
    let env = aws.tpa().args(["env", &grant_id]).run().success().stdout;
    let value = |name: &str| -> String {
        let line = env.lines().find(|l| l.starts_with(&format!("export {name}="))).unwrap();
        line.split_once('=').unwrap().1.trim_matches('\'').to_owned()
    };
    let secrets = [value("AWS_SECRET_ACCESS_KEY"), value("AWS_SESSION_TOKEN"), value("AWS_ACCESS_KEY_ID")];
    for secret in &secrets {
        assert!(secret.len() >= 16, "{secret}");
        for output in &outputs {
            assert!(!output.contains(secret.as_str()), "a secret reached the output of a non-format command");
        }
    }
    let objects = aws
        .env
        .command("git")
        .current_dir(&aws.dir)
        .args(["cat-file", "--batch-all-objects", "--batch"])
        .output()
        .unwrap();
    let objects = String::from_utf8_lossy(&objects.stdout);
    for file in crate::common::walk(&aws.dir.join(".git")) {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "secret in {}", file.display());
        }
    }
    for secret in &secrets {
        assert!(!objects.contains(secret.as_str()), "secret in a git object");
    }
    for file in crate::common::walk(&aws.env.home) {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        assert!(!secrets.iter().any(|s| text.contains(s.as_str())), "secret in {}", file.display());
    }
    let _: Value = granted;
}

#[test]
fn missing_base_credentials_say_how_to_log_in() {
    let aws = AwsRepo::new();
    let out = aws.request().env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY").run().code(2);
    assert!(out.stderr.contains("no valid base AWS credentials"), "{}", out.stderr);
    assert!(out.stderr.contains("aws sso login"), "{}", out.stderr);
    assert_eq!(aws.kinds(), ["intent", "failed"]);
}

#[test]
fn a_request_forgets_expired_grants_it_holds_and_the_sweep_those_it_drops() {
    let aws = AwsRepo::new();
    let id = |out: Done| out.json()["grant_id"].as_str().unwrap().to_owned();
    let held = |grant: &str| aws.keyring_holds(grant);
    let first = id(aws.request().arg("--json").run().success());
    assert!(held(&first));
    // The index says the first grant expired an hour ago (as it would, read later).
    let index = aws.dir.join(".git/tpa/active.json");
    let mut grants: serde_json::Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    grants[&first]["expires_at"] = serde_json::Value::String(past);
    std::fs::write(&index, serde_json::to_vec(&grants).unwrap()).unwrap();

    let second = id(aws.request().arg("--json").run().success());
    assert!(!held(&first), "the request forgot the expired grant's credentials");
    assert!(held(&second), "and kept its own");

    // A sweep under another user.email drops the grant from the index (it is not that user's), but
    // the grant is still active: its credentials stay.
    aws.env.git(&aws.dir, &["config", "user.email", "someone-else@example.com"]);
    aws.tpa().args(["sweep"]).run().success();
    assert!(held(&second), "an active grant keeps its credentials");
    aws.env.git(&aws.dir, &["config", "user.email", EMAIL]);

    // Two hours on, the sweep drops the second grant from the index, and its credentials with it.
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    aws.tpa().args(["sweep"]).env("TPA_TEST_NOW", &later).run().success();
    assert!(!held(&second), "the sweep forgot the ended grant's credentials");
    assert_eq!(aws.keyring_grants(), 0);
}

#[test]
fn the_sweep_forgets_an_ended_grant_of_yours_that_this_clone_does_not_index() {
    let aws = AwsRepo::new();
    let grant = aws.request().arg("--json").run().success().json()["grant_id"].as_str().unwrap().to_owned();
    let held = || aws.keyring_holds(&grant);
    assert!(held());
    // The index lost it (damaged, or the grant was taken in another clone of yours).
    std::fs::write(aws.dir.join(".git/tpa/active.json"), "{}").unwrap();
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    aws.tpa().args(["sweep"]).env("TPA_TEST_NOW", &later).run().success();
    assert!(!held(), "the ledger says it ended and it is yours: its credentials go");
}

/// A request whose base credentials come only from a profile's credential_process: a helper that
/// notes each call in a file, then runs `then` (a shell line). Returns the request and that file.
fn request_through_helper(aws: &AwsRepo, then: &str) -> (Run, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let calls = aws.env.path("credential-process-calls");
    let helper = aws.env.path("credential-helper");
    std::fs::write(&helper, format!("#!/bin/sh\necho called >> '{}'\n{then}\n", calls.display())).unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = aws.env.path("aws-config");
    std::fs::write(&config, format!("[profile helper]\ncredential_process = {}\n", helper.display()))
        .unwrap();
    let request = aws
        .request()
        .args(["--profile", "helper"])
        .env("AWS_CONFIG_FILE", &config)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    (request, calls)
}

/// The helper's line that prints the base key (expiring at `expiration`, when given).
fn printing_the_base_key(expiration: Option<&str>) -> String {
    let expiration = expiration.map(|e| format!(", \"Expiration\": \"{e}\"")).unwrap_or_default();
    format!(
        "printf '%s' '{{\"Version\": 1, \"AccessKeyId\": \"{}\", \"SecretAccessKey\": \"base-secret-not-a-grant\"{expiration}}}'",
        crate::common::aws::BASE_KEY_ID
    )
}

fn calls(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().count()
}

#[test]
fn base_credentials_from_a_credential_process_are_asked_for_once() {
    let aws = AwsRepo::new();
    let (request, log) = request_through_helper(&aws, &printing_the_base_key(None));
    let out = request.arg("--json").run().success();
    assert!(out.json()["grant_id"].is_string(), "{}", out.stdout);
    assert_eq!(aws.kinds(), ["intent", "grant"]);
    assert_eq!(calls(&log), 1, "the credential source was asked once, ahead of the call");
}

#[test]
fn a_credential_source_that_does_not_answer_fails_the_mint_once() {
    let aws = AwsRepo::new();
    let (request, log) = request_through_helper(&aws, "exec sleep 10");
    let out = request.args(["--timeout", "1s"]).run().code(2);
    assert!(out.stderr.contains("the base AWS credentials did not come within 1 s"), "{}", out.stderr);
    assert_eq!(aws.kinds(), ["intent", "failed"]);
    assert_eq!(calls(&log), 1, "not asked a second time after the timeout");
}

#[test]
fn a_credential_source_that_fails_is_asked_once_and_its_error_shown() {
    let aws = AwsRepo::new();
    let (request, log) = request_through_helper(&aws, "echo 'the vault is sealed' >&2\nexit 1");
    let out = request.run().code(2);
    assert!(out.stderr.contains("no valid base AWS credentials"), "{}", out.stderr);
    assert!(out.stderr.contains("the vault is sealed"), "the helper's own words: {}", out.stderr);
    assert_eq!(aws.kinds(), ["intent", "failed"]);
    assert_eq!(calls(&log), 1, "a helper that may prompt (MFA, a browser) is not run twice");
}

#[test]
fn credentials_fetched_ahead_that_are_about_to_expire_are_fetched_again_for_the_call() {
    let aws = AwsRepo::new();
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc3339();
    let (request, log) = request_through_helper(&aws, &printing_the_base_key(Some(&soon)));
    request.run().success();
    assert_eq!(calls(&log), 2, "asked ahead, then again: what it gave would expire within the minute");
    assert_eq!(aws.kinds(), ["intent", "grant"]);
}

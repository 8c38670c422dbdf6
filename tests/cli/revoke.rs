//! `tpa revoke` and `tpa setup-aws` against moto's IAM: the deny entry is really in the role's
//! revocation policy (read back from moto), the record is signed, the keyring copy is gone.

use std::collections::BTreeSet;

use crate::common::aws::AwsRepo;
use crate::common::aws::default_document;
use crate::common::aws::seed_policy;
use crate::common::aws::{POLICY_PREFIX, denied};
use crate::common::moto::moto;
use crate::common::proxy::Mode;

fn grant(aws: &AwsRepo) -> String {
    aws.request().arg("--json").run().success().json()["grant_id"].as_str().unwrap().to_owned()
}

#[test]
fn revoke_denies_the_session_records_it_and_forgets_the_credentials() {
    let aws = AwsRepo::new();
    let grant_id = grant(&aws);
    assert_eq!(aws.keyring_grants(), 1);
    let out =
        aws.tpa().args(["revoke", &grant_id, "--reason", "INC-4211 fixed", "--json"]).run().success().json();
    assert_eq!(out[0]["result"], "done");
    assert!(denied(&aws.role_name).contains(&format!("tpa-{grant_id}")));
    let attached = moto().call(
        "iam",
        &[("Action", "ListAttachedRolePolicies"), ("Version", "2010-05-08"), ("RoleName", &aws.role_name)],
    );
    assert!(attached.1.contains(&format!("{POLICY_PREFIX}{}", aws.role_name)), "{}", attached.1);

    assert_eq!(aws.kinds(), ["intent", "grant", "revoke"]);
    let show = aws.tpa().args(["show", &grant_id, "--json"]).run().success().json();
    assert_eq!(show["state"], "revoked");
    let revoke = &show["records"][2]["record"];
    assert_eq!(revoke["trigger"], "manual");
    assert_eq!(revoke["result"], "done");
    assert_eq!(revoke["reason"], "INC-4211 fixed");
    aws.tpa().arg("verify").run().success();
    assert_eq!(aws.keyring_grants(), 0);
    let exec = aws.tpa().args(["exec", &grant_id, "--", "true"]).run().code(2);
    assert!(exec.stderr.contains("revoked"), "{}", exec.stderr);

    // Idempotent: nothing more to do, no new record.
    let again = aws.tpa().args(["revoke", &grant_id, "--json"]).run().success().json();
    assert!(again[0]["result"].is_null());
    assert_eq!(again[0]["note"], "already revoked");
    assert_eq!(aws.kinds().len(), 3);
}

#[test]
fn concurrent_revocations_on_one_role_both_land() {
    let aws = AwsRepo::new();
    let ids: Vec<String> = (0..4).map(|_| grant(&aws)).collect();
    aws.tpa().args(["setup-aws", "--role", "prod-readonly"]).run().success();
    // IAM has no compare-and-swap: four writers racing on one policy must all end up in it.
    let children: Vec<_> = ids.iter().map(|id| aws.tpa().args(["revoke", id.as_str()]).spawn()).collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let denied = denied(&aws.role_name);
    for id in &ids {
        assert!(denied.contains(&format!("tpa-{id}")), "{id} missing from {denied:?}");
    }
}

#[test]
fn revoke_mine_and_by_branch_and_more_revocations_than_iam_keeps_versions() {
    let aws = AwsRepo::new();
    let ids: Vec<String> = (0..3).map(|_| grant(&aws)).collect();
    let out = aws.tpa().args(["revoke", "--branch", "hotfix/INC-4211", "--json"]).run().success().json();
    assert_eq!(out.as_array().unwrap().len(), 3);
    let more: Vec<String> = (0..4).map(|_| grant(&aws)).collect();
    for id in &more {
        // One version each: more than IAM's five, so old versions must be deleted on the way.
        aws.tpa().args(["revoke", id]).run().success();
    }
    let denied = denied(&aws.role_name);
    for id in ids.iter().chain(&more) {
        assert!(denied.contains(&format!("tpa-{id}")), "{id} missing from {denied:?}");
    }
    let none = aws.tpa().args(["revoke", "--mine"]).run().code(2);
    assert!(none.stderr.contains("no open grant"), "{}", none.stderr);
}

#[test]
fn iam_down_leaves_the_grant_pending_and_never_handed_out() {
    let aws = AwsRepo::new();
    let grant_id = grant(&aws);
    aws.proxy.set_mode(Mode::Down);
    let out = aws.tpa().args(["revoke", &grant_id, "--timeout", "3s"]).run().code(2);
    assert!(out.stdout.contains("NOT revoked yet") && out.stdout.contains("pending"), "{}", out.stdout);
    let show = aws.tpa().args(["show", &grant_id, "--json"]).run().success().json();
    assert_eq!(show["state"], "pending");
    assert_eq!(aws.keyring_grants(), 0);
    aws.tpa().args(["exec", &grant_id, "--", "true"]).run().code(2);
    // A sweep before the retry is due still reports the open access: a CI sweep must not be green.
    let sweep = aws.tpa().args(["sweep", "--json"]).run().code(2).json();
    assert_eq!(sweep["items"][0]["decision"], "wait", "{sweep}");
    // Once IAM is back, revoking again completes it.
    aws.proxy.set_mode(Mode::Forward);
    let done = aws.tpa().args(["revoke", &grant_id, "--json"]).run().success().json();
    assert_eq!(done[0]["result"], "done");
    assert!(denied(&aws.role_name).contains(&format!("tpa-{grant_id}")));
    assert_eq!(aws.tpa().args(["show", &grant_id, "--json"]).run().success().json()["state"], "revoked");
}

#[test]
fn setup_aws_creates_and_attaches_the_revocation_policy_once() {
    let aws = AwsRepo::new();
    let first = aws.tpa().args(["setup-aws", "--role", "prod-readonly", "--json"]).run().success().json();
    assert_eq!(first["changed"], true);
    assert_eq!(first["policy_arn"], format!("{POLICY_PREFIX}{}", aws.role_name).as_str());
    let second = aws.tpa().args(["setup-aws", "--role", "prod-readonly", "--json"]).run().success().json();
    assert_eq!(second["changed"], false);
    assert!(denied(&aws.role_name).is_empty());
}

#[test]
fn entries_of_grants_expired_by_aws_clock_are_pruned_at_the_next_revocation() {
    let aws = AwsRepo::new();
    let live = grant(&aws);
    // A grant of long ago, in the ledger and still in the role's revocation policy.
    let old = "01HZZZZZZZZZZZZZZZZZZZZZZZ";
    let head = aws.head();
    let mut intent = crate::common::notes::intent_json(&head, old, "2026-01-01T00:00:00Z");
    intent["branch"] = serde_json::json!("refs/heads/hotfix/INC-4211");
    intent["provider"] = serde_json::json!("aws-sts");
    intent["target"] = serde_json::json!(aws.role_arn);
    let sha = aws.tpa().args(["debug", "append"]).stdin(intent.to_string()).run().success().json()["payload_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut issued = intent.clone();
    issued["kind"] = serde_json::json!("grant");
    issued["issued_at"] = serde_json::json!("2026-01-01T00:00:01Z");
    issued["expires_at"] = serde_json::json!("2026-01-01T00:30:00Z");
    issued["credential_fingerprint"] = serde_json::json!("sha256:0011223344556677");
    issued["intent_sha256"] = serde_json::json!(sha);
    aws.tpa().args(["debug", "append"]).stdin(issued.to_string()).run().success();
    aws.tpa().args(["setup-aws", "--role", "prod-readonly"]).run().success();
    let names: BTreeSet<String> = [format!("tpa-{old}")].into();
    seed_policy(&aws.role_name, &tpa::provider::aws_iam::document(&names));
    assert!(denied(&aws.role_name).contains(&format!("tpa-{old}")));

    aws.tpa().args(["revoke", &live]).run().success();
    let now_denied = denied(&aws.role_name);
    assert!(now_denied.contains(&format!("tpa-{live}")));
    assert!(!now_denied.contains(&format!("tpa-{old}")), "expired entry kept: {now_denied:?}");
}

#[test]
fn a_full_revocation_policy_falls_back_to_cutting_every_older_session_loudly() {
    let aws = AwsRepo::new();
    let first = grant(&aws);
    let second = grant(&aws);
    aws.tpa().args(["setup-aws", "--role", "prod-readonly"]).run().success();
    // 86 revoked grants of other clones (no expiry known here, so nothing can be pruned): full.
    let others: BTreeSet<String> = (0..86).map(|i| format!("tpa-01HQ{i:022}")).collect();
    let document = tpa::provider::aws_iam::document(&others);
    assert!(document.len() <= 6144);
    seed_policy(&aws.role_name, &document);

    let out = aws.tpa().args(["revoke", &first]).run().success();
    assert!(
        out.stderr.contains("WARNING") && out.stderr.contains("EVERY session"),
        "{}\n{}\n{:?}",
        out.stdout,
        out.stderr,
        denied(&aws.role_name).len()
    );
    let document = default_document(&aws.role_name).unwrap();
    let cut = tpa::provider::aws_iam::cut_of(&document).expect("an aws:TokenIssueTime cut");
    assert!(cut <= chrono::Utc::now() + chrono::Duration::minutes(1), "the cut is AWS's now: {cut}");
    assert!(document.len() <= 6144);
    assert!(denied(&aws.role_name).contains(&format!("tpa-{first}")));

    // The cut is carried forward by later revocations, which list normally again.
    let out = aws.tpa().args(["revoke", &second]).run().success();
    assert!(!out.stderr.contains("WARNING"), "{}", out.stderr);
    let document = default_document(&aws.role_name).unwrap();
    assert_eq!(tpa::provider::aws_iam::cut_of(&document), Some(cut));
    assert!(denied(&aws.role_name).contains(&format!("tpa-{second}")));
}

/// Appends an issued, unexpired grant on the hotfix branch through the test plumbing (no STS call):
/// many grants, quickly.
fn recorded_grant(aws: &AwsRepo, grant_id: &str) {
    let head = aws.head();
    let now = chrono::Utc::now();
    let at = |offset: i64| (now + chrono::Duration::seconds(offset)).to_rfc3339();
    let mut intent = crate::common::notes::intent_json(&head, grant_id, &at(-60));
    intent["branch"] = serde_json::json!("refs/heads/hotfix/INC-4211");
    intent["provider"] = serde_json::json!("aws-sts");
    intent["target"] = serde_json::json!(aws.role_arn);
    intent["role"] = serde_json::json!("prod-readonly");
    let appended = aws.tpa().args(["debug", "append"]).stdin(intent.to_string()).run().success().json();
    let mut issued = intent.clone();
    issued["kind"] = serde_json::json!("grant");
    issued["issued_at"] = serde_json::json!(at(-59));
    issued["expires_at"] = serde_json::json!(at(1800));
    issued["credential_fingerprint"] = serde_json::json!("sha256:0011223344556677");
    issued["intent_sha256"] = appended["payload_sha256"].clone();
    aws.tpa().args(["debug", "append"]).stdin(issued.to_string()).run().success();
}

#[test]
fn a_batch_too_large_for_the_policy_is_cut_by_issue_time_not_left_pending() {
    let aws = AwsRepo::new();
    aws.tpa().args(["setup-aws", "--role", "prod-readonly"]).run().success();
    let ids: Vec<String> = (0..95).map(|i| format!("01JZ{i:022}")).collect();
    for id in &ids {
        recorded_grant(&aws, id);
    }
    let out = aws.tpa().args(["revoke", "--branch", "hotfix/INC-4211", "--json"]).run().success();
    let outcomes = out.json();
    assert_eq!(outcomes.as_array().unwrap().len(), 95);
    for outcome in outcomes.as_array().unwrap() {
        assert_eq!(outcome["result"], "done", "{outcome}");
        assert!(outcome["note"].as_str().unwrap().contains("EVERY session"), "{outcome}");
    }
    let document = default_document(&aws.role_name).unwrap();
    assert!(document.chars().count() <= 6144, "{}", document.len());
    let cut = tpa::provider::aws_iam::cut_of(&document).expect("an aws:TokenIssueTime cut");
    assert!(cut > chrono::Utc::now() - chrono::Duration::minutes(5), "{cut}");
    let listed = denied(&aws.role_name);
    assert!(!listed.is_empty() && listed.len() < 95, "as many as fit stay listed: {}", listed.len());
    // Nothing is left for the sweep to retry, and it says so with its exit status.
    let sweep = aws.tpa().args(["sweep", "--json"]).run().success().json();
    assert!(sweep["items"].as_array().unwrap().iter().all(|i| i["decision"] != "wait"), "{sweep}");
    let status = aws.tpa().args(["status", "--all", "--json"]).run().success().json();
    assert!(status.as_array().unwrap().is_empty(), "every grant revoked: {status}");
}

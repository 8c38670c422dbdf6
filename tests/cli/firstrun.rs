//! What a new user meets first: `tpa completions`, `tpa man`, `tpa --version` and `tpa doctor`.

use std::process::Command;

use serde_json::Value;

use crate::common::aws::AwsRepo;
use crate::common::*;

fn check<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {report:#}"))
}

#[test]
fn completions_cover_the_public_commands() {
    let env = TestEnv::new();
    let out = env.tpa(env.root.path()).args(["completions", "bash"]).run().success();
    assert!(out.stdout.contains("_tpa"), "{}", out.stdout);
    assert!(out.stdout.contains("request"), "{}", out.stdout);
    assert!(!out.stdout.contains("tpa__hook"), "hidden `hook` is offered:\n{}", out.stdout);
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = env.tpa(env.root.path()).args(["completions", shell]).run().success();
        assert!(out.stdout.contains("request"), "{shell}: {}", out.stdout);
    }
}

#[test]
fn man_page_lists_the_commands() {
    let env = TestEnv::new();
    let out = env.tpa(env.root.path()).arg("man").run().success();
    assert!(out.stdout.starts_with(".TH") || out.stdout.starts_with(".ie"), "{}", out.stdout);
    assert!(out.stdout.contains("request"), "{}", out.stdout);
    assert!(!out.stdout.contains("tpa\\-hook"), "hidden `hook` is listed:\n{}", out.stdout);
}

#[test]
fn version_names_the_commit() {
    let env = TestEnv::new();
    let out = env.tpa(env.root.path()).arg("--version").run().success();
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let head = String::from_utf8(head.stdout).unwrap().trim().to_owned();
    assert_eq!(head.len(), 12, "not a git checkout? {head:?}");
    assert!(out.stdout.starts_with("tpa "), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("(commit {head}")), "{} does not name {head}", out.stdout);
}

#[test]
fn doctor_passes_in_a_set_up_repository() {
    let aws = AwsRepo::new();
    let out = aws.tpa().args(["doctor", "--json"]).run();
    let report = out.json();
    for id in ["keyring", "signer", "hooks", "refspec", "policy", "aws-credentials", "clock-skew"] {
        assert_eq!(check(&report, id)["status"], "ok", "{id}: {report:#}");
    }
    let skew = check(&report, "clock-skew")["skew_seconds"].as_i64().expect("skew measured");
    assert!(skew.abs() <= 5, "skew against moto: {skew}");
    // No secret in the output, whatever the format.
    let text = aws.tpa().arg("doctor").run();
    for output in [&out.stdout, &out.stderr, &text.stdout, &text.stderr] {
        assert!(!output.contains("base-secret-not-a-grant"), "{output}");
    }
}

#[test]
fn doctor_before_init_says_to_run_it() {
    let env = TestEnv::new();
    let dir = env.repo("fresh");
    let out = env
        .tpa(&dir)
        .args(["doctor", "--json", "--timeout", "3s"])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .run()
        .code(1);
    let report = out.json();
    assert_eq!(report["ok"], false);
    for id in ["signer", "hooks"] {
        let c = check(&report, id);
        assert_eq!(c["status"], "fail", "{id}: {report:#}");
        assert!(c["fix"].as_str().unwrap().contains("tpa init"), "{id}: {report:#}");
    }
    let text = env
        .tpa(&dir)
        .args(["doctor", "--timeout", "3s"])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .run()
        .code(1);
    assert!(text.stdout.contains("FAIL signer"), "{}", text.stdout);
}

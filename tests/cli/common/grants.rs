//! Ledgers written through tpa's own test plumbing (`tpa debug intent` / `debug append`), without a
//! provider: a grant's whole life (intent, grant or failed, revokes) in a few calls. Shared by the
//! export and org-audit tests.

use std::path::Path;

use serde_json::{Value, json};

use super::TestEnv;

/// How a grant's story ends in the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Granted, not revoked (expires in an hour).
    Active,
    /// Granted, then revoked (merged, done).
    Revoked,
    /// Refused by the provider.
    Failed,
    /// Granted; the revocation could not be applied.
    Irrevocable,
}

/// `tpa init` with a key file (no keyring needed) and `.tpa/` committed on main (pushed when there
/// is an origin); HEAD on `branch` with a commit of its own.
pub fn trusted_with_key(env: &TestEnv, dir: &Path, name: &str, branch: &str) {
    let key = env.ssh_key(&format!("{name}_key"));
    env.tpa(dir).args(["init", "--signing-key"]).arg(&key).run().success();
    env.git(dir, &["add", ".tpa"]);
    env.git(dir, &["commit", "-q", "-m", "tpa: trust"]);
    if !env.git(dir, &["remote"]).is_empty() {
        env.git(dir, &["push", "-q", "origin", "main"]);
    }
    env.git(dir, &["switch", "-q", "-c", branch]);
    env.git(dir, &["commit", "-q", "--allow-empty", "-m", &format!("work on {branch}")]);
}

fn append(env: &TestEnv, dir: &Path, record: &Value) -> String {
    env.tpa(dir).args(["debug", "append"]).stdin(record.to_string()).run().success().json()["payload_sha256"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn later(record: &Value, seconds: i64) -> String {
    let at: chrono::DateTime<chrono::Utc> = record["issued_at"].as_str().unwrap().parse().unwrap();
    (at + chrono::Duration::seconds(seconds)).to_rfc3339()
}

/// A grant on HEAD with `reason`, ending as `end`; returns its grant id and the payload sha256 of
/// each record written, oldest first.
pub fn grant(env: &TestEnv, dir: &Path, reason: &str, end: End) -> (String, Vec<String>) {
    let out = env.tpa(dir).args(["debug", "intent", "--reason", reason]).run().success().json();
    let grant_id = out["grant_id"].as_str().unwrap().to_owned();
    let intent = out["record"].clone();
    let intent_sha = out["payload_sha256"].as_str().unwrap().to_owned();
    let mut shas = vec![intent_sha.clone()];
    let mut next = intent.clone();
    next["intent_sha256"] = json!(intent_sha);
    next["issued_at"] = json!(later(&intent, 1));
    if end == End::Failed {
        next["kind"] = json!("failed");
        next["error"] = json!("AccessDenied: not authorized to perform sts:AssumeRole");
        shas.push(append(env, dir, &next));
        return (grant_id, shas);
    }
    next["kind"] = json!("grant");
    next["expires_at"] = json!((chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
    next["credential_fingerprint"] = json!("sha256:0011223344556677");
    shas.push(append(env, dir, &next));
    let result = match end {
        End::Active | End::Failed => return (grant_id, shas),
        End::Revoked => "done",
        End::Irrevocable => "irrevocable",
    };
    let mut revoke = next.clone();
    revoke["kind"] = json!("revoke");
    revoke["issued_at"] = json!(later(&intent, 2));
    revoke["expires_at"] = Value::Null;
    revoke["credential_fingerprint"] = Value::Null;
    revoke["trigger"] = json!("merged");
    revoke["result"] = json!(result);
    if end == End::Irrevocable {
        revoke["error"] = json!("iam:CreatePolicyVersion denied");
    }
    shas.push(append(env, dir, &revoke));
    (grant_id, shas)
}

/// Alters the `kind` record of `commit`'s note after it was signed (a one-byte change in its reason).
pub fn tamper(env: &TestEnv, dir: &Path, commit: &str, kind: &str) {
    let note = env.git(dir, &["notes", "--ref=tpa", "show", commit]);
    let needle = format!("\\\"kind\\\":\\\"{kind}\\\"");
    let mut done = false;
    let altered: Vec<String> = note
        .lines()
        .map(|l| {
            if !done && l.contains(&needle) {
                done = true;
                l.replacen("INC-", "INX-", 1)
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert!(done, "no {kind} record on {commit}");
    let file = env.path("altered-note");
    std::fs::write(&file, altered.join("\n") + "\n").unwrap();
    env.git(dir, &["notes", "--ref=tpa", "add", "-f", "-F", file.to_str().unwrap(), commit]);
}

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde_json::{Value, json};

use crate::common::notes::head;
use crate::common::notes::intent_json;
use crate::common::notes::note_lines;
use crate::common::*;
use crate::init::{assert_no_secret_in_repo, keyring_secret};

fn ssh_keygen_verify(env: &TestEnv, dir: &Path, line: &str, principal: &str) -> (bool, String) {
    let parsed: Value = serde_json::from_str(line).unwrap();
    let sig_path = env.path("record.sig");
    std::fs::write(&sig_path, parsed["sig"].as_str().unwrap()).unwrap();
    let mut child = env
        .command("ssh-keygen")
        .current_dir(dir)
        .args(["-Y", "verify", "-f", ".tpa/allowed_signers", "-I", principal, "-n", "tpa", "-s"])
        .arg(&sig_path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(parsed["payload"].as_str().unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn a_record_written_by_tpa_verifies_with_ssh_keygen() {
    let env = TestEnv::new();
    let dir = env.trusted_repo("work");
    let out =
        env.tpa(&dir).args(["debug", "intent", "--reason", "INC-4211: fix stuck invoices"]).run().success();
    let written = out.json();
    let commit = head(&env, &dir);
    assert_eq!(written["commit"], commit.as_str());
    assert_eq!(written["branch"], "refs/heads/hotfix/one");

    let lines = note_lines(&env, &dir, &commit);
    assert_eq!(lines.len(), 1);
    let (ok, said) = ssh_keygen_verify(&env, &dir, &lines[0], EMAIL);
    assert!(ok, "ssh-keygen -Y verify refused tpa's record: {said}");
    assert!(said.contains("Good \"tpa\" signature"), "{said}");
    // The same bytes under another principal fail: the check is real.
    let (ok, _) = ssh_keygen_verify(&env, &dir, &lines[0], "mallory@example.com");
    assert!(!ok);

    // The payload carries the grant's context, and jq-style extraction gives back the signed bytes.
    let parsed: Value = serde_json::from_str(&lines[0]).unwrap();
    let payload: Value = serde_json::from_str(parsed["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["kind"], "intent");
    assert_eq!(payload["branch"], "refs/heads/hotfix/one");
    assert_eq!(payload["commit"], commit.as_str());
    assert_eq!(payload["principal"]["email"], EMAIL);
    assert_eq!(payload["grant_id"], written["grant_id"]);
    let trust_commit = env.git(&dir, &["rev-parse", "main"]);
    assert_eq!(payload["policy_commit"], trust_commit.as_str());
    assert_eq!(payload["base"], trust_commit.as_str());
}

#[test]
fn a_payload_signed_by_ssh_keygen_verifies_in_tpa() {
    let env = TestEnv::new();
    let dir = env.trusted_repo("work");
    // A second signer, made and used only by OpenSSH; trusted through main.
    let key = env.ssh_key("bob_key");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    env.git(&dir, &["switch", "-q", "main"]);
    let mut signers = std::fs::read_to_string(dir.join(".tpa/allowed_signers")).unwrap();
    signers.push_str(&format!("bob@example.com namespaces=\"tpa\" {public}"));
    std::fs::write(dir.join(".tpa/allowed_signers"), signers).unwrap();
    env.git(&dir, &["commit", "-q", "-am", "trust bob"]);
    env.git(&dir, &["switch", "-q", "hotfix/one"]);
    env.git(&dir, &["merge", "-q", "main"]);

    let commit = head(&env, &dir);
    let mut payload = intent_json(&commit, "01JD3M5Q8Z6N2X4V7B9C1R0T5K", "2026-11-28T10:00:00Z");
    payload["principal"]["email"] = json!("bob@example.com");
    let payload = payload.to_string();
    let payload_path = env.path("payload");
    std::fs::write(&payload_path, &payload).unwrap();
    let signed = env
        .command("ssh-keygen")
        .args(["-Y", "sign", "-n", "tpa", "-f"])
        .arg(&key)
        .arg(&payload_path)
        .output()
        .unwrap();
    assert!(signed.status.success(), "{}", String::from_utf8_lossy(&signed.stderr));
    let sig = std::fs::read_to_string(env.path("payload.sig")).unwrap();
    let line = json!({"payload": payload, "sig": sig}).to_string();
    // Written by git itself, not by tpa.
    env.git(&dir, &["notes", "--ref=tpa", "add", "-m", &line, &commit]);

    let verify = env.tpa(&dir).args(["verify", "--json"]).run().success().json();
    assert_eq!(verify["records"], 1);
    let log = env.tpa(&dir).args(["log", "--json"]).run().success().json();
    assert_eq!(log[0]["verified"], true);
    assert_eq!(log[0]["record"]["principal"]["email"], "bob@example.com");
}

#[test]
fn log_lists_newest_first_and_show_tells_a_grants_story() {
    let env = TestEnv::new();
    let dir = env.trusted_repo("work");
    let commit = head(&env, &dir);
    let grant_id = "01JD3M5Q8Z6N2X4V7B9C1R0T5K";
    let intent = intent_json(&commit, grant_id, "2026-11-01T10:00:00Z");
    let intent_sha = env.tpa(&dir).args(["debug", "append"]).stdin(intent.to_string()).run().success().json()
        ["payload_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut grant = intent.clone();
    grant["kind"] = json!("grant");
    grant["issued_at"] = json!("2026-11-01T10:00:01Z");
    grant["expires_at"] = json!("2026-11-01T10:30:01Z");
    grant["credential_fingerprint"] = json!("sha256:0011223344556677");
    grant["intent_sha256"] = json!(intent_sha);
    env.tpa(&dir).args(["debug", "append"]).stdin(grant.to_string()).run().success();
    let mut revoke = grant.clone();
    revoke["kind"] = json!("revoke");
    revoke["issued_at"] = json!("2026-11-01T10:05:00Z");
    revoke["trigger"] = json!("merged");
    revoke["result"] = json!("done");
    env.tpa(&dir).args(["debug", "append"]).stdin(revoke.to_string()).run().success();
    env.tpa(&dir).args(["debug", "intent", "--reason", "INC-43: another one"]).run().success();

    let log = env.tpa(&dir).args(["log", "--json"]).run().success().json();
    let kinds: Vec<&str> =
        log.as_array().unwrap().iter().map(|r| r["record"]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["intent", "revoke", "grant", "intent"], "newest first");
    assert!(log.as_array().unwrap().iter().all(|r| r["verified"] == true));

    let show = env.tpa(&dir).args(["show", grant_id, "--json"]).run().success().json();
    assert_eq!(show["state"], "revoked");
    assert_eq!(show["records"].as_array().unwrap().len(), 3);
    assert_eq!(show["records"][0]["record"]["kind"], "intent");
    let human = env.tpa(&dir).args(["show", grant_id]).run().success().stdout;
    assert!(human.contains("revoked") && human.contains("trigger=merged"), "{human}");

    let missing = env.tpa(&dir).args(["show", "01JD3M5Q8Z6N2X4V7B9C1R0T5Z"]).run().code(2);
    assert!(missing.stderr.contains("tpa log"), "{}", missing.stderr);
    let bad = env.tpa(&dir).args(["show", "not-an-id"]).run().code(2);
    assert!(bad.stderr.contains("not a grant id"), "{}", bad.stderr);
}

#[test]
fn thirty_two_concurrent_appends_lose_nothing() {
    let env = TestEnv::new();
    let dir = env.trusted_repo("work");
    // A second worktree on another commit: half the writers share one note, half the other.
    env.git(&dir, &["commit", "-q", "--allow-empty", "-m", "second"]);
    let other = env.path("other-worktree");
    env.git(&dir, &["worktree", "add", "-q", "-b", "hotfix/two", other.to_str().unwrap(), "HEAD~1"]);
    let commits = [head(&env, &dir), head(&env, &other)];
    assert_ne!(commits[0], commits[1]);

    // Signed with a key file: this is about the ledger's compare-and-swap, not about how fast the
    // keyring daemon answers 32 callers at once.
    let key = env.ssh_key("concurrent_key");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    env.git(&dir, &["switch", "-q", "main"]);
    let mut signers = std::fs::read_to_string(dir.join(".tpa/allowed_signers")).unwrap();
    signers.push_str(&format!("{EMAIL} namespaces=\"tpa\" {public}"));
    std::fs::write(dir.join(".tpa/allowed_signers"), signers).unwrap();
    env.git(&dir, &["commit", "-q", "-am", "trust the key file"]);
    env.git(&dir, &["switch", "-q", "hotfix/one"]);
    let children: Vec<_> = (0..32)
        .map(|i| {
            let where_ = if i % 2 == 0 { &dir } else { &other };
            env.tpa(where_)
                .args(["debug", "intent", "--reason"])
                .arg(format!("INC-{i}: concurrent writer"))
                .env("TPA_SIGNING_KEY", &key)
                .spawn()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a writer failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    for commit in &commits {
        assert_eq!(note_lines(&env, &dir, commit).len(), 16, "records on {commit}");
    }
    let listed = env.git(&dir, &["notes", "--ref=tpa", "list"]);
    assert_eq!(listed.lines().count(), 2);
    let verify = env.tpa(&dir).args(["verify", "--json"]).run().success().json();
    assert_eq!(verify["records"], 32);
    let reasons: std::collections::BTreeSet<String> = env
        .tpa(&dir)
        .args(["log", "--json"])
        .run()
        .success()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["record"]["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons.len(), 32);
}

#[test]
fn hostile_branch_names_and_reasons_round_trip_and_display_escaped() {
    let env = TestEnv::new();
    let dir = env.trusted_repo("work");
    let long = format!("hotfix/{}", "x".repeat(220));
    let branches = [
        "hotfix/$(touch${IFS}pwned)",
        "hotfix/`touch${IFS}pwned`",
        "hotfix/it's\"quoted\"",
        "hotfix/a;touch${IFS}pwned;b",
        "hotfix/${IFS}|&<>",
        long.as_str(),
    ];
    let reason = "INC-1: \u{1b}[31mred\u{1b}[0m\nsecond line\t\u{202e}evil";
    for branch in branches {
        env.git(&dir, &["switch", "-q", "-c", branch, "main"]);
        let out = env.tpa(&dir).args(["debug", "intent", "--reason", reason]).run().success().json();
        assert_eq!(out["branch"], format!("refs/heads/{branch}").as_str());
        assert_eq!(out["record"]["reason"], reason);
    }
    assert!(!dir.join("pwned").exists() && !env.root.path().join("pwned").exists());

    let log = env.tpa(&dir).args(["log", "--json"]).run().success().json();
    let mut seen: Vec<String> =
        log.as_array().unwrap().iter().map(|r| r["record"]["branch"].as_str().unwrap().to_owned()).collect();
    seen.sort();
    let mut expected: Vec<String> = branches.iter().map(|b| format!("refs/heads/{b}")).collect();
    expected.sort();
    assert_eq!(seen, expected);
    assert!(log.as_array().unwrap().iter().all(|r| r["record"]["reason"] == reason && r["verified"] == true));

    let human = env.tpa(&dir).arg("log").run().success().stdout;
    assert!(
        !human.contains('\u{1b}') && !human.contains('\u{202e}'),
        "raw control characters reached the terminal"
    );
    assert!(human.contains("\\u{1b}[31mred") && human.contains("\\nsecond line"), "{human}");

    // A NUL cannot pass through argv; through a record it round-trips.
    let commit = head(&env, &dir);
    let mut payload = intent_json(&commit, "01JD3M5Q8Z6N2X4V7B9C1R0T5K", "2026-11-28T10:00:00Z");
    payload["reason"] = json!("INC-2: nul \u{0} here");
    payload["branch"] = json!(format!("refs/heads/{long}"));
    env.tpa(&dir).args(["debug", "append"]).stdin(payload.to_string()).run().success();
    let show = env.tpa(&dir).args(["show", "01JD3M5Q8Z6N2X4V7B9C1R0T5K", "--json"]).run().success().json();
    assert_eq!(show["records"][0]["record"]["reason"], "INC-2: nul \u{0} here");
    let human = env.tpa(&dir).args(["show", "01JD3M5Q8Z6N2X4V7B9C1R0T5K"]).run().success().stdout;
    assert!(human.contains("nul \\u{0} here") && !human.contains('\0'), "{human}");
    assert_eq!(
        finding_kinds(&env.tpa(&dir).args(["verify", "--json"]).run().success().json()),
        Vec::<String>::new()
    );
}

#[test]
fn a_branch_name_that_is_not_utf8_is_refused_clearly() {
    let env = TestEnv::new();
    let dir = env.trusted_repo("work");
    let name = OsStr::from_bytes(b"hotfix/caf\xe9");
    let out = env.git_bytes(&dir, &[OsStr::new("switch"), OsStr::new("-q"), OsStr::new("-c"), name]);
    assert!(out.status.success(), "git refused the branch: {}", String::from_utf8_lossy(&out.stderr));
    let out = env.tpa(&dir).args(["debug", "intent", "--reason", "INC-3: latin-1 branch"]).run().code(2);
    assert!(out.stderr.contains("not valid UTF-8") && out.stderr.contains("caf\\xe9"), "{}", out.stderr);
    assert!(out.stderr.contains("git branch -m"), "{}", out.stderr);
    assert!(env.git_output(&dir, &["notes", "--ref=tpa", "list"]).stdout.is_empty(), "nothing recorded");
}

#[test]
fn detached_and_unborn_heads_are_refused() {
    let env = TestEnv::new();
    let dir = env.trusted_repo("work");
    env.git(&dir, &["switch", "-q", "--detach", "HEAD"]);
    let out = env.tpa(&dir).args(["debug", "intent", "--reason", "INC-5: detached"]).run().code(2);
    assert!(out.stderr.contains("detached"), "{}", out.stderr);
    env.git(&dir, &["switch", "-q", "--orphan", "hotfix/empty"]);
    let out = env.tpa(&dir).args(["debug", "intent", "--reason", "INC-5: unborn"]).run().code(2);
    assert!(out.stderr.contains("no commits yet"), "{}", out.stderr);
}

#[test]
fn no_secret_key_reaches_git_objects_after_a_full_run() {
    let env = TestEnv::new();
    let dir = env.trusted_repo("work");
    for i in 0..3 {
        env.tpa(&dir)
            .args(["debug", "intent", "--reason"])
            .arg(format!("INC-{i}: leak scan"))
            .run()
            .success();
    }
    env.tpa(&dir).arg("verify").run().success();
    let fingerprint = env.git(&dir, &["config", "tpa.signingKey"]).trim_start_matches("keyring:").to_owned();
    let secret = keyring_secret(&env, &fingerprint);
    assert_no_secret_in_repo(&env, &dir, &secret);
}

#[test]
fn verify_keeps_its_witness_in_the_common_dir_not_the_worktree() {
    let env = TestEnv::new();
    let dir = env.trusted_repo("work");
    env.tpa(&dir).args(["debug", "intent", "--reason", "INC-6: witness"]).run().success();
    env.tpa(&dir).arg("verify").run().success();
    let tip = env.git(&dir, &["rev-parse", "refs/notes/tpa"]);
    assert_eq!(std::fs::read_to_string(dir.join(".git/tpa/witness")).unwrap().trim(), tip);
    assert!(env.git(&dir, &["status", "--porcelain"]).is_empty(), "the working tree stays clean");
}

#[test]
fn records_fetched_from_a_teammate_stay_beside_ours() {
    let env = TestEnv::new();
    let (dir, origin) = env.repo_with_origin("work");
    env.tpa(&dir).arg("init").run().success();
    // What `git fetch` does with the refspec tpa init added: the remote's ledger lands under
    // refs/notes/remotes/origin/tpa, never over our own refs/notes/tpa.
    let commit = head(&env, &dir);
    env.git(&origin, &["config", "user.email", "bob@example.com"]);
    env.git(&origin, &["notes", "--ref=tpa", "add", "-m", "{\"theirs\":1}", &commit]);
    env.git(&dir, &["fetch", "-q", "origin"]);
    assert!(!env.git(&dir, &["rev-parse", "refs/notes/remotes/origin/tpa"]).is_empty());
    assert!(!env.git_output(&dir, &["rev-parse", "--verify", "-q", "refs/notes/tpa"]).status.success());
}

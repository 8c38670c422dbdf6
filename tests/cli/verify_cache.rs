//! `tpa verify` since the witness (issue #18): with a verify cache beside the last verified tip,
//! only what is new is checked, and nothing is ever found less than by a full check. Every verify
//! here runs every way `verify_each_way` knows (since the witness, --full, again from the cache, and
//! from the earlier witness with its cache damaged or allowed_signers changed on the trust ref) and
//! all must agree on every finding.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::common::notes::{fanout_path, head, intent_json, note_lines, put_notes_file, remove_notes_file};
use crate::common::*;

/// A repo whose signer is a key file trusted on main; HEAD on hotfix/one.
fn repo(env: &TestEnv, name: &str) -> (PathBuf, PathBuf) {
    let dir = env.repo(name);
    let key = env.ssh_key(&format!("{name}_key"));
    env.tpa(&dir).args(["init", "--signing-key"]).arg(&key).run().success();
    env.git(&dir, &["add", ".tpa"]);
    env.git(&dir, &["commit", "-q", "-m", "trust"]);
    env.git(&dir, &["switch", "-q", "-c", "hotfix/one"]);
    (dir, key)
}

fn intent(env: &TestEnv, dir: &Path, reason: &str) -> Value {
    env.tpa(dir).args(["debug", "intent", "--reason", reason]).run().success().json()
}

/// `n` commits with one intent each.
fn records_on_commits(env: &TestEnv, dir: &Path, n: usize) {
    for i in 0..n {
        env.git(dir, &["commit", "-q", "--allow-empty", "-m", &format!("work {i}")]);
        intent(env, dir, &format!("INC-{i}: record {i}"));
    }
}

fn cache_file(dir: &Path) -> PathBuf {
    dir.join(".git/tpa/verify-cache")
}

/// A clean verify, which leaves a witness and a cache.
fn verified(env: &TestEnv, dir: &Path) -> Value {
    let (code, json) = verify_each_way(env, dir);
    assert_eq!(code, 0, "{json}");
    assert!(cache_file(dir).exists());
    json
}

fn since_witness(json: &Value) -> (u64, u64) {
    assert_eq!(json["checked"]["mode"], "since_witness", "{json}");
    (json["checked"]["commits"].as_u64().unwrap(), json["checked"]["notes_checked"].as_u64().unwrap())
}

fn full_because(json: &Value) -> String {
    assert_eq!(json["checked"]["mode"], "full", "{json}");
    json["checked"]["reason"].as_str().unwrap().to_owned()
}

#[test]
fn a_record_added_after_the_witness_is_all_that_is_checked() {
    let env = TestEnv::new();
    let (dir, _) = repo(&env, "added");
    records_on_commits(&env, &dir, 5);
    let first = verified(&env, &dir);
    assert!(full_because(&first).contains("no verified tip"), "{first}");
    assert_eq!(first["records"], 5);

    records_on_commits(&env, &dir, 1);
    let (code, json) = verify_each_way(&env, &dir);
    assert_eq!(code, 0, "{json}");
    assert_eq!(since_witness(&json), (1, 1), "one notes commit, one note");
    assert_eq!(json["records"], 6);
    // Nothing new: nothing checked, and the same answer.
    let again = env.tpa(&dir).args(["verify", "--json"]).run().success().json();
    assert_eq!(since_witness(&again), (0, 0));
    assert_eq!(again["records"], 6);
    let human = env.tpa(&dir).arg("verify").run().success().stdout;
    assert!(human.contains("since the last verified tip"), "{human}");
}

#[test]
fn a_bad_record_added_after_the_witness_is_found_since_the_witness() {
    let env = TestEnv::new();
    let (dir, key) = repo(&env, "badnew");
    records_on_commits(&env, &dir, 3);
    verified(&env, &dir);
    // An unknown signer, a forged signature and a revoke for no grant, each after the witness.
    let rogue = env.ssh_key("rogue");
    env.tpa(&dir)
        .args(["debug", "intent", "--reason", "INC-7: rogue"])
        .env("TPA_SIGNING_KEY", &rogue)
        .run()
        .success();
    let commit = head(&env, &dir);
    let mut revoke = intent_json(&commit, "01JD3M5Q8Z6N2X4V7B9C1R0T5K", "2026-11-28T10:00:00Z");
    revoke["kind"] = json!("revoke");
    revoke["trigger"] = json!("manual");
    revoke["result"] = json!("done");
    revoke["intent_sha256"] = json!("0".repeat(64));
    env.tpa(&dir)
        .args(["debug", "append"])
        .stdin(revoke.to_string())
        .env("TPA_SIGNING_KEY", &key)
        .run()
        .success();
    let mut lines = note_lines(&env, &dir, &commit);
    let forged = lines[0].replacen("INC-2", "INC-9", 1);
    assert_ne!(forged, lines[0]);
    lines.push(forged);
    put_notes_file(&env, &dir, &fanout_path(&commit), (lines.join("\n") + "\n").as_bytes());
    let (code, json) = verify_each_way(&env, &dir);
    assert_eq!(code, 1);
    since_witness(&json);
    assert_eq!(finding_kinds(&json), ["bad_signature", "orphan_record", "unknown_signer"]);
}

#[test]
fn a_new_record_is_cross_checked_against_intents_verified_before() {
    let env = TestEnv::new();
    let (dir, _) = repo(&env, "intents");
    let commit = head(&env, &dir);
    let grant_id = "01JD3M5Q8Z6N2X4V7B9C1R0T5K";
    let intent = intent_json(&commit, grant_id, "2026-11-01T10:00:00Z");
    let intent_sha = env.tpa(&dir).args(["debug", "append"]).stdin(intent.to_string()).run().success().json()
        ["payload_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    records_on_commits(&env, &dir, 2);
    verified(&env, &dir);

    // Its grant record, on another commit, names the intent verified before: clean.
    env.git(&dir, &["commit", "-q", "--allow-empty", "-m", "later"]);
    let mut grant = intent.clone();
    grant["kind"] = json!("grant");
    grant["commit"] = json!(head(&env, &dir));
    grant["issued_at"] = json!("2026-11-01T10:00:01Z");
    grant["expires_at"] = json!("2026-11-01T10:30:01Z");
    grant["credential_fingerprint"] = json!("sha256:0011223344556677");
    grant["intent_sha256"] = json!(intent_sha);
    env.tpa(&dir).args(["debug", "append"]).stdin(grant.to_string()).run().success();
    let (code, json) = verify_each_way(&env, &dir);
    assert_eq!((code, since_witness(&json).1), (0, 1), "{json}");

    // A revoke naming another intent than the grant's: a mismatch, against the old intent.
    let mut revoke = grant.clone();
    revoke["kind"] = json!("revoke");
    revoke["issued_at"] = json!("2026-11-01T10:05:00Z");
    revoke["trigger"] = json!("merged");
    revoke["result"] = json!("done");
    revoke["intent_sha256"] = json!("1".repeat(64));
    env.tpa(&dir).args(["debug", "append"]).stdin(revoke.to_string()).run().success();
    let (code, json) = verify_each_way(&env, &dir);
    assert_eq!(code, 1);
    since_witness(&json);
    assert_eq!(finding_kinds(&json), ["intent_mismatch"]);
}

#[test]
fn removing_an_intent_orphans_its_grant_record_whose_note_did_not_change() {
    let env = TestEnv::new();
    let (dir, _) = repo(&env, "orphaned");
    let intent_commit = head(&env, &dir);
    let grant_id = "01JD3M5Q8Z6N2X4V7B9C1R0T5K";
    let intent = intent_json(&intent_commit, grant_id, "2026-11-01T10:00:00Z");
    let intent_sha = env.tpa(&dir).args(["debug", "append"]).stdin(intent.to_string()).run().success().json()
        ["payload_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    env.git(&dir, &["commit", "-q", "--allow-empty", "-m", "later"]);
    let mut grant = intent.clone();
    grant["kind"] = json!("grant");
    grant["commit"] = json!(head(&env, &dir));
    grant["expires_at"] = json!("2026-11-01T10:30:01Z");
    grant["credential_fingerprint"] = json!("sha256:0011223344556677");
    grant["intent_sha256"] = json!(intent_sha);
    env.tpa(&dir).args(["debug", "append"]).stdin(grant.to_string()).run().success();
    verified(&env, &dir);

    remove_notes_file(&env, &dir, &fanout_path(&intent_commit));
    let (code, json) = verify_each_way(&env, &dir);
    assert_eq!(code, 1);
    assert_eq!(
        since_witness(&json).1,
        0,
        "the grant record's note is unchanged: taken from the cache: {json}"
    );
    assert_eq!(finding_kinds(&json), ["orphan_record", "record_removed"]);
}

#[test]
fn a_removed_record_stays_a_finding_until_it_is_back() {
    let env = TestEnv::new();
    let (dir, _) = repo(&env, "removed");
    records_on_commits(&env, &dir, 2);
    intent(&env, &dir, "INC-9: second on this commit");
    verified(&env, &dir);
    let commit = head(&env, &dir);
    let lines = note_lines(&env, &dir, &commit);
    assert_eq!(lines.len(), 2);
    put_notes_file(&env, &dir, &fanout_path(&commit), (lines[0].clone() + "\n").as_bytes());
    let (_, json) = verify_each_way(&env, &dir);
    since_witness(&json);
    assert_eq!(finding_kinds(&json), ["record_removed"]);
    // The tip is the witness now: the finding comes from the cache, and stays.
    let again = env.tpa(&dir).args(["verify", "--json"]).run().code(1).json();
    assert_eq!((since_witness(&again), finding_kinds(&again)), ((0, 0), vec!["record_removed".to_owned()]));
    // An unrelated record later: still there.
    records_on_commits(&env, &dir, 1);
    let (_, json) = verify_each_way(&env, &dir);
    since_witness(&json);
    assert_eq!(finding_kinds(&json), ["record_removed"]);
    // Put back (as the sweep does): gone.
    put_notes_file(&env, &dir, &fanout_path(&commit), (lines.join("\n") + "\n").as_bytes());
    let (code, json) = verify_each_way(&env, &dir);
    assert_eq!(code, 0, "{json}");
    since_witness(&json);
}

#[test]
fn a_damaged_or_foreign_cache_costs_a_full_check_and_hides_nothing() {
    let env = TestEnv::new();
    let (dir, _) = repo(&env, "damaged");
    records_on_commits(&env, &dir, 3);
    verified(&env, &dir);
    // A cache from another ledger.
    let (other, _) = repo(&env, "other");
    records_on_commits(&env, &other, 1);
    verified(&env, &other);
    let foreign = std::fs::read(cache_file(&other)).unwrap();

    // Tamper after the witness, then damage the cache in every way before verifying.
    let commit = head(&env, &dir);
    let mut lines = note_lines(&env, &dir, &commit);
    lines[0] = lines[0].replacen("INC-2", "INC-8", 1);
    put_notes_file(&env, &dir, &fanout_path(&commit), (lines.join("\n") + "\n").as_bytes());
    let good = std::fs::read(cache_file(&dir)).unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    let damages: Vec<(&str, Vec<u8>, &str)> = vec![
        ("flipped", flipped, "damaged"),
        ("truncated", good[..good.len() - 7].to_vec(), "damaged"),
        ("empty", Vec::new(), "damaged"),
        ("garbage", b"tpa verify cache\nnot really".to_vec(), "damaged"),
        ("foreign", foreign, "verify cache"),
    ];
    for (what, bytes, reason) in damages {
        std::fs::write(cache_file(&dir), &bytes).unwrap();
        let run = env.tpa(&dir).args(["verify", "--json"]).run().code(1);
        let json = run.json();
        assert!(full_because(&json).contains(reason), "{what}: {json}");
        assert_eq!(finding_kinds(&json), ["bad_signature", "record_removed"], "{what}");
        // The run wrote a good cache again: put back the cache and witness it replaced.
        std::fs::write(cache_file(&dir), &good).unwrap();
        let base = env.git(&dir, &["rev-parse", "refs/notes/tpa~1"]);
        std::fs::write(dir.join(".git/tpa/witness"), format!("{base}\n")).unwrap();
    }
    // A witness moved by hand to an older tip: the cache is for another tip than the witness.
    let older = env.git(&dir, &["rev-parse", "refs/notes/tpa~2"]);
    std::fs::write(dir.join(".git/tpa/witness"), format!("{older}\n")).unwrap();
    let (_, json) = verify_each_way(&env, &dir);
    assert!(full_because(&json).contains("another tip"), "{json}");
    assert_eq!(finding_kinds(&json), ["bad_signature", "record_removed"]);
}

#[test]
fn allowed_signers_changed_on_the_trust_ref_is_a_full_check() {
    let env = TestEnv::new();
    let (dir, _) = repo(&env, "signers");
    records_on_commits(&env, &dir, 2);
    verified(&env, &dir);
    let signers = std::fs::read_to_string(dir.join(".tpa/allowed_signers")).unwrap();
    let set_signers = |text: &str| {
        env.git(&dir, &["switch", "-q", "main"]);
        std::fs::write(dir.join(".tpa/allowed_signers"), text).unwrap();
        env.git(&dir, &["commit", "-q", "-am", "signers"]);
        env.git(&dir, &["switch", "-q", "hotfix/one"]);
    };

    // On a branch that is not the trust ref: nothing changes, still checked since the witness.
    env.git(&dir, &["commit", "-q", "--allow-empty", "-m", "unrelated"]);
    std::fs::write(dir.join(".tpa/allowed_signers"), "").unwrap();
    env.git(&dir, &["commit", "-q", "-am", "drop every signer on my branch"]);
    let (code, json) = verify_each_way(&env, &dir);
    assert_eq!((code, since_witness(&json)), (0, (0, 0)), "{json}");

    // Retired on the trust ref before the records were made: every record, none of them new.
    let retired = signers.replacen("namespaces=\"tpa\"", "namespaces=\"tpa\",valid-before=\"20200101Z\"", 1);
    set_signers(&retired);
    let (code, json) = verify_each_way(&env, &dir);
    assert_eq!(code, 1);
    assert!(full_because(&json).contains("allowed_signers"), "{json}");
    assert_eq!(finding_kinds(&json), ["signer_not_valid"]);
    assert_eq!(json["findings"].as_array().unwrap().len(), 2);

    // Removed: unknown. Back: clean again, each time in full.
    set_signers("# nobody\n");
    let (_, json) = verify_each_way(&env, &dir);
    assert!(full_because(&json).contains("allowed_signers"));
    assert_eq!(finding_kinds(&json), ["unknown_signer"]);
    set_signers(&signers);
    let (code, json) = verify_each_way(&env, &dir);
    assert_eq!(code, 0, "{json}");
    full_because(&json);
}

#[test]
fn a_policy_changed_on_the_trust_ref_is_a_full_check() {
    let env = TestEnv::new();
    let (dir, _) = repo(&env, "policy");
    records_on_commits(&env, &dir, 1);
    verified(&env, &dir);
    env.git(&dir, &["switch", "-q", "main"]);
    let mut policy = std::fs::read_to_string(dir.join(".tpa/policy.toml")).unwrap();
    policy.push_str("\n# reviewed change\n");
    std::fs::write(dir.join(".tpa/policy.toml"), policy).unwrap();
    env.git(&dir, &["commit", "-q", "-am", "policy"]);
    env.git(&dir, &["switch", "-q", "hotfix/one"]);
    let (code, json) = verify_each_way(&env, &dir);
    assert_eq!(code, 0);
    assert!(full_because(&json).contains("policy"), "{json}");
}

#[test]
fn hidden_bytes_written_after_the_witness_are_found_as_by_a_full_check() {
    let env = TestEnv::new();
    let (dir, _) = repo(&env, "hidden");
    records_on_commits(&env, &dir, 2);
    verified(&env, &dir);
    let commit = head(&env, &dir);
    let good = note_lines(&env, &dir, &commit).remove(0);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("carriage return", format!("{good}\r\n").into_bytes()),
        ("no final newline", good.clone().into_bytes()),
        ("blank lines", format!("\n\n{good}\n\n").into_bytes()),
        ("a NUL in the payload", good.replacen("INC-1", "INC\\u00001", 1).into_bytes()),
        ("a raw NUL after the line", format!("{good}\0\n").into_bytes()),
        ("bytes that are not UTF-8", {
            let mut b = good.clone().into_bytes();
            let at = b.windows(5).position(|w| w == b"INC-1").unwrap();
            b[at + 3] = 0xff;
            b.push(b'\n');
            b
        }),
        ("trailing spaces", format!("{good}   \n").into_bytes()),
        ("a second copy", format!("{good}\n{good}\n").into_bytes()),
    ];
    for (what, bytes) in cases {
        put_notes_file(&env, &dir, &fanout_path(&commit), &bytes);
        let (_, json) = verify_each_way(&env, &dir);
        since_witness(&json);
        eprintln!("{what}: {}", json["findings"]);
    }
    // Beside the note: the same object's note at git's flat path, and a file that is no note.
    put_notes_file(&env, &dir, &commit, format!("{good}\n").as_bytes());
    let (_, json) = verify_each_way(&env, &dir);
    since_witness(&json);
    put_notes_file(&env, &dir, "README", format!("{good}\n").as_bytes());
    put_notes_file(&env, &dir, &format!("{}/zz/{}", &commit[..2], &commit[4..]), b"junk\n");
    let (_, json) = verify_each_way(&env, &dir);
    since_witness(&json);
}

#[test]
fn copies_git_makes_after_the_witness_are_set_aside_as_by_a_full_check() {
    let env = TestEnv::new();
    let (dir, _) = repo(&env, "copies");
    env.git(&dir, &["config", "notes.rewriteRef", "refs/notes/*"]);
    records_on_commits(&env, &dir, 2);
    verified(&env, &dir);
    env.git(&dir, &["commit", "-q", "--amend", "--allow-empty", "-m", "amended"]);
    let (code, json) = verify_each_way(&env, &dir);
    assert_eq!(code, 0, "{json}");
    since_witness(&json);
    assert_eq!(json["git_copies"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json["records"], 2);
}

#[test]
fn records_signed_with_rsa_and_ecdsa_keys_are_checked_one_by_one() {
    let env = TestEnv::new();
    let (dir, _) = repo(&env, "algorithms");
    let mut signers = std::fs::read_to_string(dir.join(".tpa/allowed_signers")).unwrap();
    let mut keys = Vec::new();
    for (name, args) in [("rsa", ["-t", "rsa", "-b", "3072"]), ("ecdsa", ["-t", "ecdsa", "-b", "256"])] {
        let key = env.path(name);
        let out =
            env.command("ssh-keygen").args(["-q", "-N", ""]).args(args).arg("-f").arg(&key).output().unwrap();
        assert!(out.status.success());
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        signers.push_str(&format!("{EMAIL} namespaces=\"tpa\" {public}"));
        keys.push(key);
    }
    env.git(&dir, &["switch", "-q", "main"]);
    std::fs::write(dir.join(".tpa/allowed_signers"), &signers).unwrap();
    env.git(&dir, &["commit", "-q", "-am", "more keys"]);
    env.git(&dir, &["switch", "-q", "hotfix/one"]);
    records_on_commits(&env, &dir, 1);
    verified(&env, &dir);
    // Signed through ssh-keygen (git's user.signingkey), as a team with such keys would.
    let own = env.git(&dir, &["config", "tpa.signingKey"]);
    env.git(&dir, &["config", "tpa.signingKey", "ssh"]);
    for key in &keys {
        env.git(&dir, &["config", "user.signingkey", key.to_str().unwrap()]);
        env.tpa(&dir).args(["debug", "intent", "--reason", "INC-5: another algorithm"]).run().success();
    }
    env.git(&dir, &["config", "tpa.signingKey", &own]);
    let (code, json) = verify_each_way(&env, &dir);
    assert_eq!((code, json["records"].clone()), (0, json!(3)), "{json}");
    since_witness(&json);
    // A flipped byte in an RSA record is still a bad signature.
    let commit = head(&env, &dir);
    let mut lines = note_lines(&env, &dir, &commit);
    lines[1] = lines[1].replacen("INC-5", "INC-6", 1);
    put_notes_file(&env, &dir, &fanout_path(&commit), (lines.join("\n") + "\n").as_bytes());
    let (_, json) = verify_each_way(&env, &dir);
    assert_eq!(finding_kinds(&json), ["bad_signature", "record_removed"]);
}

#[test]
fn the_cache_holds_no_secret_and_no_payload() {
    let env = TestEnv::new();
    let (dir, key) = repo(&env, "secret");
    intent(&env, &dir, "INC-1: a reason nobody should find in the cache");
    verified(&env, &dir);
    let cache = std::fs::read(cache_file(&dir)).unwrap();
    let private = ssh_key::PrivateKey::read_openssh_file(&key).unwrap();
    let secret = private.key_data().ed25519().unwrap().private.to_bytes();
    let contains = |needle: &[u8]| cache.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(&secret[..16]), "the private key");
    assert!(!contains(b"a reason nobody"), "a payload");
    assert!(!contains(EMAIL.as_bytes()), "a principal");
}

#[test]
fn requests_and_approvals_are_cross_checked_from_the_cache_as_in_full() {
    let env = TestEnv::new();
    let (dir, _) = repo(&env, "approvals");
    let request_commit = head(&env, &dir);
    let grant_id = "01JD3M5Q8Z6N2X4V7B9C1R0T5K";
    let mut request = intent_json(&request_commit, grant_id, "2026-11-01T10:00:00Z");
    request["kind"] = json!("request");
    request["approve_by"] = json!("2026-11-01T11:00:00Z");
    let request_sha = env
        .tpa(&dir)
        .args(["debug", "append"])
        .stdin(request.to_string())
        .run()
        .success()
        .json()["payload_sha256"]
        .clone();
    env.git(&dir, &["commit", "-q", "--allow-empty", "-m", "later"]);
    let mut approval = request.clone();
    approval.as_object_mut().unwrap().remove("approve_by");
    approval["kind"] = json!("approval");
    approval["commit"] = json!(head(&env, &dir));
    approval["issued_at"] = json!("2026-11-01T10:01:00Z");
    approval["decision"] = json!("approve");
    approval["request_sha256"] = request_sha.clone();
    env.tpa(&dir).args(["debug", "append"]).stdin(approval.to_string()).run().success();
    verified(&env, &dir);

    // An approval after the witness naming another request of this grant: a mismatch, judged
    // against the request read from the cache.
    env.git(&dir, &["commit", "-q", "--allow-empty", "-m", "more"]);
    let mut other = approval.clone();
    other["commit"] = json!(head(&env, &dir));
    other["request_sha256"] = json!("2".repeat(64));
    env.tpa(&dir).args(["debug", "append"]).stdin(other.to_string()).run().success();
    let (code, json) = verify_each_way(&env, &dir);
    assert_eq!(code, 1);
    assert_eq!(since_witness(&json).1, 1, "{json}");
    assert_eq!(finding_kinds(&json), ["intent_mismatch"]);

    // The request removed: both approvals name a request that is not in the ledger, the first
    // one's note unchanged (its facts from the cache).
    remove_notes_file(&env, &dir, &fanout_path(&request_commit));
    let (code, json) = verify_each_way(&env, &dir);
    assert_eq!(code, 1);
    assert_eq!(since_witness(&json).1, 0, "{json}");
    assert_eq!(finding_kinds(&json), ["orphan_record", "record_removed"]);
    let orphans =
        json["findings"].as_array().unwrap().iter().filter(|f| f["kind"] == "orphan_record").count();
    assert_eq!(orphans, 2, "{json}");
}

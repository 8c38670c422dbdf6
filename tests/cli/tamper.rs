//! Every way of tampering with the ledger that issue #2 names, each caught by `tpa verify`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::common::notes::{head, intent_json, note_lines};
use crate::common::*;

/// A repo whose signer is a key file trusted on main; HEAD on hotfix/one.
fn key_file_repo(env: &TestEnv, name: &str) -> (PathBuf, PathBuf) {
    let dir = env.repo(name);
    let key = env.ssh_key(&format!("{name}_key"));
    env.tpa(&dir).args(["init", "--signing-key"]).arg(&key).run().success();
    env.git(&dir, &["add", ".tpa"]);
    env.git(&dir, &["commit", "-q", "-m", "trust"]);
    env.git(&dir, &["switch", "-q", "-c", "hotfix/one"]);
    (dir, key)
}

/// Every verify here runs every way `verify_each_way` knows (since the witness, --full, again from
/// the cache, and from the earlier witness with its cache damaged or allowed_signers changed on the
/// trust ref), and all must find the same.
fn verify(env: &TestEnv, dir: &Path) -> Value {
    verify_each_way(env, dir).1
}

fn verify_findings(env: &TestEnv, dir: &Path, expect_clean: bool) -> Vec<String> {
    let (code, json) = verify_each_way(env, dir);
    assert_eq!(code, if expect_clean { 0 } else { 1 }, "{json}");
    assert_eq!(json["ok"], expect_clean);
    finding_kinds(&json)
}

/// The findings of a tamper made after a verified tip: found by the check since the witness, with
/// the verify cache warm (and by --full alike).
fn tampered_findings(env: &TestEnv, dir: &Path) -> Vec<String> {
    let (code, json) = verify_each_way(env, dir);
    assert_eq!(code, 1, "{json}");
    assert_eq!(json["checked"]["mode"], "since_witness", "{json}");
    finding_kinds(&json)
}

/// A clean record on a commit of its own, verified, so that the witness and its verify cache are
/// there before the tamper, which then goes on a new commit (HEAD afterwards, with no note).
fn warm(env: &TestEnv, dir: &Path) {
    env.git(dir, &["commit", "-q", "--allow-empty", "-m", "before the tamper"]);
    env.tpa(dir).args(["debug", "intent", "--reason", "INC-1: verified before the tamper"]).run().success();
    assert_eq!(verify_findings(env, dir, true), Vec::<String>::new(), "clean before tampering");
    env.git(dir, &["commit", "-q", "--allow-empty", "-m", "the tamper's commit"]);
}

fn write_note(env: &TestEnv, dir: &Path, commit: &str, lines: &[String]) {
    let file = env.path("note.txt");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    env.git(dir, &["notes", "--ref=tpa", "add", "-f", "-F", file.to_str().unwrap(), commit]);
}

fn sign_with_ssh_keygen(env: &TestEnv, key: &Path, namespace: &str, payload: &str) -> String {
    let path = env.path("to-sign");
    std::fs::write(&path, payload).unwrap();
    let _ = std::fs::remove_file(env.path("to-sign.sig"));
    let out = env
        .command("ssh-keygen")
        .args(["-Y", "sign", "-n", namespace, "-f"])
        .arg(key)
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_to_string(env.path("to-sign.sig")).unwrap()
}

fn two_records(env: &TestEnv, dir: &Path) -> String {
    for i in 0..2 {
        env.tpa(dir)
            .args(["debug", "intent", "--reason"])
            .arg(format!("INC-{i}: tamper target"))
            .run()
            .success();
    }
    let commit = head(env, dir);
    assert_eq!(verify_findings(env, dir, true), Vec::<String>::new(), "clean before tampering");
    commit
}

#[test]
fn flipping_one_byte_of_a_payload_is_a_bad_signature() {
    let env = TestEnv::new();
    let (dir, _) = key_file_repo(&env, "flip");
    let commit = two_records(&env, &dir);
    let mut lines = note_lines(&env, &dir, &commit);
    lines[0] = lines[0].replacen("INC-0", "INC-9", 1);
    write_note(&env, &dir, &commit, &lines);
    assert_eq!(tampered_findings(&env, &dir), ["bad_signature", "record_removed"]);
}

#[test]
fn swapping_signatures_between_two_records_is_caught() {
    let env = TestEnv::new();
    let (dir, _) = key_file_repo(&env, "swap");
    let commit = two_records(&env, &dir);
    let lines = note_lines(&env, &dir, &commit);
    let mut a: Value = serde_json::from_str(&lines[0]).unwrap();
    let mut b: Value = serde_json::from_str(&lines[1]).unwrap();
    let sig_a = a["sig"].take();
    a["sig"] = b["sig"].take();
    b["sig"] = sig_a;
    write_note(&env, &dir, &commit, &[a.to_string(), b.to_string()]);
    let json = verify(&env, &dir);
    assert_eq!(json["checked"]["mode"], "since_witness", "{json}");
    let bad = json["findings"].as_array().unwrap().iter().filter(|f| f["kind"] == "bad_signature").count();
    assert_eq!(bad, 2, "{json}");
}

#[test]
fn moving_a_note_to_another_commit_is_caught() {
    let env = TestEnv::new();
    let (dir, _) = key_file_repo(&env, "move");
    let commit = two_records(&env, &dir);
    env.git(&dir, &["commit", "-q", "--allow-empty", "-m", "later"]);
    let other = head(&env, &dir);
    env.git(&dir, &["notes", "--ref=tpa", "copy", &commit, &other]);
    env.git(&dir, &["notes", "--ref=tpa", "remove", &commit]);
    assert_eq!(tampered_findings(&env, &dir), ["record_removed", "wrong_commit"]);
}

#[test]
fn deleting_a_record_in_a_normal_notes_commit_is_caught_from_history() {
    let env = TestEnv::new();
    let (dir, _) = key_file_repo(&env, "delete");
    let commit = two_records(&env, &dir);
    let lines = note_lines(&env, &dir, &commit);
    write_note(&env, &dir, &commit, &lines[..1]);
    let json = verify(&env, &dir);
    assert_eq!(json["checked"]["mode"], "since_witness", "{json}");
    assert_eq!(finding_kinds(&json), ["record_removed"]);
    assert_eq!(json["findings"].as_array().unwrap().len(), 1);
    assert!(json["findings"][0]["grant_id"].is_string(), "the finding names the grant: {json}");
}

#[test]
fn force_rewriting_the_notes_ref_is_caught_by_the_witness() {
    let env = TestEnv::new();
    let (dir, _) = key_file_repo(&env, "rewrite");
    let commit = two_records(&env, &dir); // verify ran clean: the witness is the current tip
    let lines = note_lines(&env, &dir, &commit);
    // A brand-new history holding only the first record: nothing left to diff against.
    env.git(&dir, &["update-ref", "-d", "refs/notes/tpa"]);
    write_note(&env, &dir, &commit, &lines[..1]);
    let (code, json) = verify_each_way(&env, &dir);
    assert_eq!((code, finding_kinds(&json)), (1, vec!["history_rewritten".to_owned()]));
    assert_eq!(json["checked"]["mode"], "full", "a rewritten history is never checked since the witness");
    // Sticky until an operator accepts it.
    assert_eq!(verify_findings(&env, &dir, false), ["history_rewritten"]);
    env.tpa(&dir).args(["verify", "--accept-rewrite"]).run().success();
    assert_eq!(verify_findings(&env, &dir, true), Vec::<String>::new());
}

#[test]
fn a_key_added_on_a_hotfix_branch_only_is_not_trusted() {
    let env = TestEnv::new();
    let (dir, _) = key_file_repo(&env, "selfbless");
    warm(&env, &dir);
    let rogue = env.ssh_key("rogue");
    let public = std::fs::read_to_string(rogue.with_extension("pub")).unwrap();
    let mut signers = std::fs::read_to_string(dir.join(".tpa/allowed_signers")).unwrap();
    signers.push_str(&format!("{EMAIL} namespaces=\"tpa\" {public}"));
    std::fs::write(dir.join(".tpa/allowed_signers"), signers).unwrap();
    env.git(&dir, &["commit", "-q", "-am", "bless my own key"]);
    env.tpa(&dir)
        .args(["debug", "intent", "--reason", "INC-8: rogue key"])
        .env("TPA_SIGNING_KEY", &rogue)
        .run()
        .success();
    assert_eq!(tampered_findings(&env, &dir), ["unknown_signer"]);
}

#[test]
fn a_key_committed_on_local_main_but_not_on_the_remote_is_not_trusted() {
    let env = TestEnv::new();
    let (dir, _origin) = env.repo_with_origin("localmain");
    let key = env.ssh_key("reviewed_key");
    env.tpa(&dir).args(["init", "--signing-key"]).arg(&key).run().success();
    env.git(&dir, &["add", ".tpa"]);
    env.git(&dir, &["commit", "-q", "-m", "trust reviewed key"]);
    env.git(&dir, &["push", "-q", "origin", "main"]);
    // Straight onto local main, never pushed or reviewed.
    let rogue = env.ssh_key("rogue");
    let public = std::fs::read_to_string(rogue.with_extension("pub")).unwrap();
    let mut signers = std::fs::read_to_string(dir.join(".tpa/allowed_signers")).unwrap();
    signers.push_str(&format!("{EMAIL} namespaces=\"tpa\" {public}"));
    std::fs::write(dir.join(".tpa/allowed_signers"), signers).unwrap();
    env.git(&dir, &["commit", "-q", "-am", "bless my own key on local main"]);
    env.git(&dir, &["switch", "-q", "-c", "hotfix/one"]);
    warm(&env, &dir);
    env.tpa(&dir).args(["debug", "intent", "--reason", "INC-8: reviewed key"]).run().success();
    env.tpa(&dir)
        .args(["debug", "intent", "--reason", "INC-8: rogue key"])
        .env("TPA_SIGNING_KEY", &rogue)
        .run()
        .success();
    let json = verify(&env, &dir);
    assert_eq!(json["checked"]["mode"], "since_witness", "{json}");
    assert_eq!(json["trust_ref"], "refs/remotes/origin/main");
    assert_eq!(finding_kinds(&json), ["unknown_signer"]);
    assert_eq!(json["findings"].as_array().unwrap().len(), 1, "only the rogue record: {json}");
}

#[test]
fn a_signature_made_for_the_git_namespace_is_refused() {
    let env = TestEnv::new();
    let (dir, key) = key_file_repo(&env, "namespace");
    warm(&env, &dir);
    let commit = head(&env, &dir);
    let payload = intent_json(&commit, "01JD3M5Q8Z6N2X4V7B9C1R0T5K", "2026-11-28T10:00:00Z").to_string();
    let sig = sign_with_ssh_keygen(&env, &key, "git", &payload);
    env.git(
        &dir,
        &["notes", "--ref=tpa", "add", "-m", &json!({"payload": payload, "sig": sig}).to_string(), &commit],
    );
    assert_eq!(tampered_findings(&env, &dir), ["wrong_namespace"]);
}

#[test]
fn a_record_claiming_another_principal_is_a_mismatch() {
    let env = TestEnv::new();
    let (dir, key) = key_file_repo(&env, "principal");
    warm(&env, &dir);
    let commit = head(&env, &dir);
    let mut payload = intent_json(&commit, "01JD3M5Q8Z6N2X4V7B9C1R0T5K", "2026-11-28T10:00:00Z");
    payload["principal"]["email"] = json!("ceo@example.com");
    let payload = payload.to_string();
    let sig = sign_with_ssh_keygen(&env, &key, "tpa", &payload);
    env.git(
        &dir,
        &["notes", "--ref=tpa", "add", "-m", &json!({"payload": payload, "sig": sig}).to_string(), &commit],
    );
    assert_eq!(tampered_findings(&env, &dir), ["principal_mismatch"]);
}

#[test]
fn a_revoke_for_an_unknown_grant_is_an_orphan() {
    let env = TestEnv::new();
    let (dir, _) = key_file_repo(&env, "orphan");
    warm(&env, &dir);
    let commit = head(&env, &dir);
    let mut revoke = intent_json(&commit, "01JD3M5Q8Z6N2X4V7B9C1R0T5K", "2026-11-28T10:00:00Z");
    revoke["kind"] = json!("revoke");
    revoke["trigger"] = json!("manual");
    revoke["result"] = json!("done");
    revoke["intent_sha256"] = json!("0".repeat(64));
    env.tpa(&dir).args(["debug", "append"]).stdin(revoke.to_string()).run().success();
    assert_eq!(tampered_findings(&env, &dir), ["orphan_record"]);
}

#[test]
fn a_retired_key_keeps_its_past_records_valid() {
    let env = TestEnv::new();
    let (dir, key) = key_file_repo(&env, "retired");
    // Retire the key on main (the trust ref): valid until 2026-06-01.
    env.git(&dir, &["switch", "-q", "main"]);
    let signers = std::fs::read_to_string(dir.join(".tpa/allowed_signers")).unwrap();
    let retired = signers.replacen("namespaces=\"tpa\"", "namespaces=\"tpa\",valid-before=\"20260601Z\"", 1);
    assert_ne!(signers, retired);
    std::fs::write(dir.join(".tpa/allowed_signers"), retired).unwrap();
    env.git(&dir, &["commit", "-q", "-am", "retire alice's key"]);
    env.git(&dir, &["switch", "-q", "hotfix/one"]);
    let commit = head(&env, &dir);
    let before = intent_json(&commit, "01JD3M5Q8Z6N2X4V7B9C1R0T5K", "2026-05-01T00:00:00Z");
    env.tpa(&dir)
        .args(["debug", "append"])
        .stdin(before.to_string())
        .env("TPA_SIGNING_KEY", &key)
        .run()
        .success();
    assert_eq!(verify_findings(&env, &dir, true), Vec::<String>::new(), "signed while the key was valid");
    let after = intent_json(&commit, "01JD3M5Q8Z6N2X4V7B9C1R0T6K", "2026-07-01T00:00:00Z");
    env.tpa(&dir).args(["debug", "append"]).stdin(after.to_string()).run().success();
    assert_eq!(tampered_findings(&env, &dir), ["signer_not_valid"]);
}

#[test]
fn a_malformed_line_is_a_finding_not_a_crash() {
    let env = TestEnv::new();
    let (dir, _) = key_file_repo(&env, "malformed");
    let commit = two_records(&env, &dir);
    env.git(&dir, &["notes", "--ref=tpa", "append", "-m", "{not json at all", &commit]);
    env.git(
        &dir,
        &["notes", "--ref=tpa", "append", "-m", "{\"payload\": \"{}\", \"sig\": \"nope\"}", &commit],
    );
    assert_eq!(tampered_findings(&env, &dir), ["bad_signature", "invalid_record", "malformed_line"]);
    let out = env.tpa(&dir).args(["verify"]).run().code(1);
    assert!(out.stdout.contains("malformed_line"), "{}", out.stdout);
    // log still lists everything it can read.
    let log = env.tpa(&dir).args(["log", "--json"]).run().success().json();
    assert_eq!(log.as_array().unwrap().len(), 4);
}

/// A signature made by the trusted key's holder whose `R` carries a small-order component: the
/// equation ssh-keygen checks is off by that component, so it refuses the record, and so must tpa
/// (a batch verification could accept it: see src/ledger/signature.rs).
#[test]
fn a_signature_off_by_a_small_order_point_is_refused_as_ssh_keygen_refuses_it() {
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::edwards::CompressedEdwardsY;
    use curve25519_dalek::scalar::Scalar;
    use sha2::{Digest, Sha512};

    let env = TestEnv::new();
    let (dir, key) = key_file_repo(&env, "torsion");
    warm(&env, &dir);
    let commit = head(&env, &dir);
    let payload = intent_json(&commit, "01JD3M5Q8Z6N2X4V7B9C1R0T5K", "2026-11-28T10:00:00Z").to_string();
    let private = ssh_key::PrivateKey::read_openssh_file(&key).unwrap();
    let signing =
        ed25519_dalek::SigningKey::from_bytes(&private.key_data().ed25519().unwrap().private.to_bytes());
    let public = signing.verifying_key();
    let order8 = CompressedEdwardsY(
        hex::decode("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
            .unwrap()
            .try_into()
            .unwrap(),
    )
    .decompress()
    .unwrap();
    let nonce = Scalar::from(987_654_321u64);
    let r = (nonce * ED25519_BASEPOINT_POINT + order8).compress();
    let signed = ssh_key::SshSig::signed_data("tpa", ssh_key::HashAlg::Sha512, payload.as_bytes()).unwrap();
    let h = Scalar::from_hash(
        Sha512::new().chain_update(r.as_bytes()).chain_update(public.as_bytes()).chain_update(&signed),
    );
    let s = nonce + h * signing.to_scalar();
    let raw = ed25519_dalek::Signature::from_components(*r.as_bytes(), *s.as_bytes());
    let sig = ssh_key::SshSig::new(
        private.public_key().key_data().clone(),
        "tpa",
        ssh_key::HashAlg::Sha512,
        ssh_key::Signature::new(ssh_key::Algorithm::Ed25519, raw.to_bytes().to_vec()).unwrap(),
    )
    .unwrap();
    let armored = sig.to_pem(ssh_key::LineEnding::LF).unwrap();
    env.git(
        &dir,
        &[
            "notes",
            "--ref=tpa",
            "add",
            "-m",
            &json!({"payload": payload, "sig": armored}).to_string(),
            &commit,
        ],
    );
    assert_eq!(tampered_findings(&env, &dir), ["bad_signature"]);

    let (payload_path, sig_path) = (env.path("torsion-payload"), env.path("torsion-payload.sig"));
    std::fs::write(&payload_path, &payload).unwrap();
    std::fs::write(&sig_path, &armored).unwrap();
    let out = env
        .command("ssh-keygen")
        .current_dir(&dir)
        .args(["-Y", "verify", "-f", ".tpa/allowed_signers", "-I", EMAIL, "-n", "tpa", "-s"])
        .arg(&sig_path)
        .stdin(std::fs::File::open(&payload_path).unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success(), "ssh-keygen accepted it: {}", String::from_utf8_lossy(&out.stdout));
}

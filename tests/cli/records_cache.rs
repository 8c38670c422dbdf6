//! The records cache (issue #18; src/ledger/records_cache.rs): reads of the records at the tip
//! (log, show, status, the sweep, the broker's pass) skip the signature checks of note blobs that
//! passed every check of their own against the same signers before. What changes a record's bytes
//! or the signers is checked in full; a damaged cache is a read in full; `tpa verify` never uses
//! the cache.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::notes::{head, note_lines};
use crate::common::*;

/// A repo whose signer is a key file trusted on main; `n` records on commits of hotfix/one.
fn repo_with_records(env: &TestEnv, n: usize) -> PathBuf {
    let dir = env.repo("records");
    let key = env.ssh_key("records_key");
    env.tpa(&dir).args(["init", "--signing-key"]).arg(&key).run().success();
    env.git(&dir, &["add", ".tpa"]);
    env.git(&dir, &["commit", "-q", "-m", "trust"]);
    env.git(&dir, &["switch", "-q", "-c", "hotfix/one"]);
    for i in 0..n {
        env.git(&dir, &["commit", "-q", "--allow-empty", "-m", &format!("work {i}")]);
        env.tpa(&dir).args(["debug", "intent", "--reason", &format!("INC-{i}: record {i}")]).run().success();
    }
    dir
}

fn cache_file(dir: &Path) -> PathBuf {
    dir.join(".git/tpa/records-cache")
}

/// `tpa log --json`: each record's finding kinds, by reason, sorted.
fn log_findings(env: &TestEnv, dir: &Path) -> Vec<(String, Vec<String>)> {
    let log = env.tpa(dir).args(["log", "--json"]).run().success().json();
    let mut out: Vec<(String, Vec<String>)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let kinds =
                r["findings"].as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap().to_owned());
            (r["record"]["reason"].as_str().unwrap_or("-").to_owned(), kinds.collect())
        })
        .collect();
    out.sort();
    out
}

fn clean(reasons: &[&str]) -> Vec<(String, Vec<String>)> {
    reasons.iter().map(|r| ((*r).to_owned(), Vec::new())).collect()
}

/// Rewrites the note on `commit` with one payload byte changed (`INC-0` becomes `INC-9`): the
/// signature no longer matches, the note is another blob.
fn flip_payload(env: &TestEnv, dir: &Path, commit: &str) {
    let lines = note_lines(env, dir, commit);
    let file = env.path("note.txt");
    std::fs::write(&file, lines[0].replacen("INC-0", "INC-9", 1) + "\n").unwrap();
    env.git(dir, &["notes", "--ref=tpa", "add", "-f", "-F", file.to_str().unwrap(), commit]);
}

fn note_blob(env: &TestEnv, dir: &Path, commit: &str) -> String {
    env.git(dir, &["notes", "--ref=tpa", "list", commit])
}

fn set_signers_on_main(env: &TestEnv, dir: &Path, text: &str) {
    env.git(dir, &["switch", "-q", "main"]);
    std::fs::write(dir.join(".tpa/allowed_signers"), text).unwrap();
    env.git(dir, &["commit", "-q", "-am", "signers"]);
    env.git(dir, &["switch", "-q", "hotfix/one"]);
}

#[test]
fn a_read_lists_the_clean_blobs_and_holds_nothing_else() {
    let env = TestEnv::new();
    let dir = repo_with_records(&env, 3);
    assert!(!cache_file(&dir).exists());
    assert_eq!(log_findings(&env, &dir), clean(&["INC-0: record 0", "INC-1: record 1", "INC-2: record 2"]));
    let bytes = std::fs::read(cache_file(&dir)).unwrap();
    // Three note blobs of 20 bytes, and a header and digest around them: no payload, no signature.
    let listed = env.git(&dir, &["notes", "--ref=tpa", "list"]);
    for line in listed.lines() {
        let blob = hex::decode(line.split(' ').next().unwrap()).unwrap();
        assert!(bytes.windows(20).any(|w| w == blob.as_slice()), "blob {line} is listed");
    }
    let text = String::from_utf8_lossy(&bytes);
    for absent in ["INC-", "SSH SIGNATURE", EMAIL, "payload"] {
        assert!(!text.contains(absent), "{absent} in the records cache");
    }
    assert!(bytes.len() < 300, "{} bytes for three blob ids", bytes.len());

    // A second read changes nothing: the file is not rewritten.
    let before = std::fs::metadata(cache_file(&dir)).unwrap().modified().unwrap();
    assert_eq!(log_findings(&env, &dir).len(), 3);
    assert_eq!(std::fs::read(cache_file(&dir)).unwrap(), bytes);
    assert_eq!(std::fs::metadata(cache_file(&dir)).unwrap().modified().unwrap(), before);
}

#[test]
fn a_record_edited_after_a_read_and_signers_changed_since_are_checked_in_full() {
    let env = TestEnv::new();
    let dir = repo_with_records(&env, 2);
    let first = env.git(&dir, &["rev-parse", "HEAD~1"]);
    assert_eq!(log_findings(&env, &dir), clean(&["INC-0: record 0", "INC-1: record 1"]));

    // The edited note is another blob: its signature is checked and fails.
    flip_payload(&env, &dir, &first);
    let expected = vec![
        ("INC-1: record 1".to_owned(), vec![]),
        ("INC-9: record 0".to_owned(), vec!["bad_signature".to_owned()]),
    ];
    assert_eq!(log_findings(&env, &dir), expected);
    assert_eq!(log_findings(&env, &dir), expected, "a blob with a finding is never listed");

    // The key retired on the trust ref before the records were made: every record, cached or not.
    let signers = std::fs::read_to_string(dir.join(".tpa/allowed_signers")).unwrap();
    let retired = signers.replacen("namespaces=\"tpa\"", "namespaces=\"tpa\",valid-before=\"20200101Z\"", 1);
    set_signers_on_main(&env, &dir, &retired);
    let findings = log_findings(&env, &dir);
    assert_eq!(findings[0], ("INC-1: record 1".to_owned(), vec!["signer_not_valid".to_owned()]));
    assert!(findings[1].1.contains(&"bad_signature".to_owned()), "{findings:?}");

    // Back as it was: clean again.
    set_signers_on_main(&env, &dir, &signers);
    assert_eq!(log_findings(&env, &dir), expected);
}

#[test]
fn a_damaged_cache_is_a_read_in_full_and_is_written_again() {
    let env = TestEnv::new();
    let dir = repo_with_records(&env, 2);
    let first = env.git(&dir, &["rev-parse", "HEAD~1"]);
    log_findings(&env, &dir);
    let good = std::fs::read(cache_file(&dir)).unwrap();

    // The note edited, and the cache damaged so that it would list the edited blob if it were
    // read without its digest: the edit is found all the same.
    flip_payload(&env, &dir, &first);
    let edited = hex::decode(note_blob(&env, &dir, &first)).unwrap();
    let mut damaged = good.clone();
    let at = good.len() - 32 - 40;
    damaged[at..at + 20].copy_from_slice(&edited);
    std::fs::write(cache_file(&dir), &damaged).unwrap();
    let findings = log_findings(&env, &dir);
    assert!(findings.iter().any(|(_, kinds)| kinds == &["bad_signature"]), "{findings:?}");
    let rewritten = std::fs::read(cache_file(&dir)).unwrap();
    assert_ne!(rewritten, damaged, "the damaged cache was replaced");

    std::fs::write(cache_file(&dir), b"not a cache").unwrap();
    assert_eq!(log_findings(&env, &dir), findings);
}

/// The cache is as trustworthy as the clone's .git directory, like the witness: a cache rewritten
/// with a valid digest can vouch for a blob to `tpa log`. `tpa verify`, the check an organisation
/// relies on, never reads it.
#[test]
fn verify_never_uses_the_records_cache() {
    let env = TestEnv::new();
    let dir = repo_with_records(&env, 1);
    let commit = head(&env, &dir);
    log_findings(&env, &dir);
    let good = std::fs::read(cache_file(&dir)).unwrap();

    flip_payload(&env, &dir, &commit);
    let edited = hex::decode(note_blob(&env, &dir, &commit)).unwrap();
    let mut forged = good[..good.len() - 32].to_vec();
    let at = forged.len() - 20;
    forged[at..].copy_from_slice(&edited);
    let digest = Sha256::digest(&forged);
    forged.extend_from_slice(&digest);
    std::fs::write(cache_file(&dir), &forged).unwrap();

    assert_eq!(
        log_findings(&env, &dir),
        clean(&["INC-9: record 0"]),
        "the forged cache was used by the read"
    );
    let json: Value = env.tpa(&dir).args(["verify", "--json"]).run().code(1).json();
    assert!(finding_kinds(&json).contains(&"bad_signature".to_owned()), "{json}");
    let audit = env.tpa(&dir).args(["audit", "--offline", "--json"]).run().json();
    assert!(audit.to_string().contains("bad_signature"), "the audit checks every signature: {audit}");
}

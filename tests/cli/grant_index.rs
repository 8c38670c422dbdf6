//! The grant index (issue #18; src/ledger/grant_index.rs): `tpa status` without --history, `who`,
//! `exec`, `env`, `credential-process` and the lookups of one grant read only the notes of the
//! grants open when the index was written and of what changed in the ledger since. Whatever
//! happened in between (time passing, new grants, records removed or moved by hand, a damaged
//! index), they must say what a read of every record says.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::common::grants::{End, grant, tamper, trusted_with_key};
use crate::common::notes::{fanout_path, head, note_lines, put_notes_file, remove_notes_file};
use crate::common::*;

const OPEN: [&str; 5] = ["active", "pending", "irrevocable", "incomplete", "awaiting_approval"];

fn index_file(dir: &Path) -> PathBuf {
    dir.join(".git/tpa/grant-index")
}

/// The open grants at `now` as `tpa status --all --json` gives them (through the index), after
/// checking that they are the open ones of `tpa status --all --history --json` (every record read).
fn open_grants(env: &TestEnv, dir: &Path, now: &str) -> Vec<Value> {
    let status = |extra: &[&str]| {
        env.tpa(dir)
            .args(["status", "--all", "--json"])
            .args(extra)
            .env("TPA_TEST_NOW", now)
            .run()
            .success()
            .json()
    };
    let indexed = status(&[]);
    let full: Vec<Value> = status(&["--history"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| OPEN.contains(&g["state"].as_str().unwrap()))
        .cloned()
        .collect();
    assert_eq!(indexed.as_array().unwrap(), &full, "the index's open grants at {now}");
    full
}

/// `tpa show GRANT --json` (through the index) lists the grant's records as `tpa log --json`
/// (every record read) has them, oldest first.
fn show_agrees_with_log(env: &TestEnv, dir: &Path, grant_id: &str) {
    let shown = env.tpa(dir).args(["show", grant_id, "--json"]).run().success().json();
    let log = env.tpa(dir).args(["log", "--json"]).run().success().json();
    let mut logged: Vec<Value> =
        log.as_array().unwrap().iter().filter(|r| r["record"]["grant_id"] == grant_id).cloned().collect();
    logged.reverse();
    assert!(!logged.is_empty());
    assert_eq!(shown["records"].as_array().unwrap(), &logged, "tpa show {grant_id}");
}

fn ids(grants: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = grants.iter().map(|g| g["grant_id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|id| (*id).clone()).collect();
    ids.sort();
    ids
}

/// The payload of the `kind` record on `commit`'s note.
fn payload(env: &TestEnv, dir: &Path, commit: &str, kind: &str) -> Value {
    note_lines(env, dir, commit)
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .map(|line| serde_json::from_str::<Value>(line["payload"].as_str().unwrap()).unwrap())
        .find(|record| record["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} record on {commit}"))
}

/// A revocation (manual, done) of the grant whose grant record is on `commit`, as tpa writes one.
fn revocation(env: &TestEnv, dir: &Path, commit: &str) -> Value {
    let mut revoke = payload(env, dir, commit, "grant");
    revoke["kind"] = json!("revoke");
    revoke["trigger"] = json!("manual");
    revoke["result"] = json!("done");
    revoke["expires_at"] = Value::Null;
    revoke["credential_fingerprint"] = Value::Null;
    revoke["issued_at"] = json!(chrono::Utc::now().to_rfc3339());
    revoke
}

/// Moves the last line of `commit`'s note into a second note of that commit under another fan-out
/// (git reads both); returns that note's path.
fn move_last_line_to_another_fanout(env: &TestEnv, dir: &Path, commit: &str) -> String {
    let lines = note_lines(env, dir, commit);
    assert_eq!(lines.len(), 3, "intent, grant, revoke");
    put_notes_file(env, dir, &fanout_path(commit), (lines[..2].join("\n") + "\n").as_bytes());
    let other_fanout = format!("{}/{}", &commit[..2], &commit[2..]);
    put_notes_file(env, dir, &other_fanout, (lines[2].clone() + "\n").as_bytes());
    other_fanout
}

#[test]
fn the_open_grants_through_the_index_are_those_of_a_read_of_every_record() {
    let env = TestEnv::new();
    let dir = env.repo("index");
    trusted_with_key(&env, &dir, "index", "hotfix/one");
    let mut grants = Vec::new();
    let mut commits = Vec::new();
    for (i, end) in [End::Active, End::Revoked, End::Failed, End::Irrevocable].into_iter().enumerate() {
        if i > 0 {
            env.git(&dir, &["commit", "-q", "--allow-empty", "-m", &format!("fix {i}")]);
        }
        grants.push(grant(&env, &dir, &format!("INC-{i}: the index"), end).0);
        commits.push(head(&env, &dir));
    }
    let soon = (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339();
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();

    assert!(!index_file(&dir).exists());
    assert_eq!(ids(&open_grants(&env, &dir, &soon)), sorted(&[&grants[0], &grants[3]]));
    let bytes = std::fs::read(index_file(&dir)).expect("the index is written");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains(grants[0].as_str()), "it names grants by id");
    for absent in ["INC-", EMAIL, "payload", "SSH SIGNATURE", "hotfix"] {
        assert!(!text.contains(absent), "{absent} in the grant index");
    }

    // Two hours on, both grants are past their expiry (an irrevocable one too).
    assert!(open_grants(&env, &dir, &later).is_empty());
    // Back at an instant before the index was written: it cannot answer for it.
    assert_eq!(ids(&open_grants(&env, &dir, &soon)), sorted(&[&grants[0], &grants[3]]));

    // A new grant moves the tip: the index learns it from the note that changed.
    env.git(&dir, &["commit", "-q", "--allow-empty", "-m", "fix 4"]);
    grants.push(grant(&env, &dir, "INC-4: the index", End::Active).0);
    commits.push(head(&env, &dir));
    assert_eq!(ids(&open_grants(&env, &dir, &soon)), sorted(&[&grants[0], &grants[3], &grants[4]]));

    // The first grant's revocation, signed as tpa signs it, arrives in a second note of its
    // commit under another fan-out (git reads both): it reads as revoked.
    let revoke = revocation(&env, &dir, &commits[0]);
    env.tpa(&dir).args(["debug", "append"]).stdin(revoke.to_string()).run().success();
    move_last_line_to_another_fanout(&env, &dir, &commits[0]);
    assert_eq!(ids(&open_grants(&env, &dir, &soon)), sorted(&[&grants[3], &grants[4]]));
    show_agrees_with_log(&env, &dir, &grants[0]);
    let shown = env.tpa(&dir).args(["show", &grants[0], "--json"]).run().success().json();
    assert_eq!(shown["state"], "revoked");

    // The second grant's revocation, moved the same way, then its note removed by hand: the grant
    // reads as active again, although it was not open when the index was written and no note at
    // the tip mentions it any more than before.
    let other_fanout = move_last_line_to_another_fanout(&env, &dir, &commits[1]);
    assert_eq!(ids(&open_grants(&env, &dir, &soon)), sorted(&[&grants[3], &grants[4]]));
    remove_notes_file(&env, &dir, &other_fanout);
    assert_eq!(ids(&open_grants(&env, &dir, &soon)), sorted(&[&grants[1], &grants[3], &grants[4]]));
    show_agrees_with_log(&env, &dir, &grants[1]);

    // One grant by its id, in whatever state, and an id the ledger does not know.
    let by_id = |id: &str| env.tpa(&dir).args(["env", id]).env("TPA_TEST_NOW", &soon).run();
    let revoked = by_id(&grants[0]);
    assert_ne!(revoked.code, 0);
    assert!(revoked.stderr.contains(&format!("grant {} is revoked", grants[0])), "{}", revoked.stderr);
    let failed = by_id(&grants[2]);
    assert!(failed.stderr.contains(&format!("grant {} is failed", grants[2])), "{}", failed.stderr);
    let unknown = by_id("01JWKZ8X9A0000000000000009");
    assert!(
        unknown.stderr.contains("no grant 01JWKZ8X9A0000000000000009 in the ledger"),
        "{}",
        unknown.stderr
    );

    // The third grant's `failed` record altered after it was signed: it no longer counts, so the
    // grant reads as incomplete (open), and `tpa show` lists the record with its finding.
    tamper(&env, &dir, &commits[2], "failed");
    assert_eq!(
        ids(&open_grants(&env, &dir, &soon)),
        sorted(&[&grants[1], &grants[2], &grants[3], &grants[4]])
    );
    show_agrees_with_log(&env, &dir, &grants[2]);
    let shown = env.tpa(&dir).args(["show", &grants[2], "--json"]).run().success().json();
    assert!(shown.to_string().contains("bad_signature"), "{shown}");

    // The fifth grant's revocation names and is stored on the fourth grant's commit: one note
    // holds records of two grants, and each grant reads whole, with only its own records.
    let mut revoke = revocation(&env, &dir, &commits[4]);
    revoke["commit"] = json!(commits[3]);
    env.tpa(&dir).args(["debug", "append"]).stdin(revoke.to_string()).run().success();
    assert_eq!(note_lines(&env, &dir, &commits[3]).len(), 4);
    assert_eq!(ids(&open_grants(&env, &dir, &soon)), sorted(&[&grants[1], &grants[2], &grants[3]]));
    show_agrees_with_log(&env, &dir, &grants[3]);
    show_agrees_with_log(&env, &dir, &grants[4]);

    // git copies the note of an amended commit (notes.rewriteRef): the copy is set aside through
    // the index as by a read of every record; with the original note removed, the copy's records
    // stand on the wrong commit.
    env.git(&dir, &["config", "notes.rewriteRef", "refs/notes/tpa"]);
    env.git(&dir, &["commit", "-q", "--amend", "--allow-empty", "-m", "fix 4, amended"]);
    assert_eq!(note_lines(&env, &dir, &head(&env, &dir)).len(), 2, "git copied the note");
    assert_eq!(ids(&open_grants(&env, &dir, &soon)), sorted(&[&grants[1], &grants[2], &grants[3]]));
    show_agrees_with_log(&env, &dir, &grants[4]);
    env.git(&dir, &["notes", "--ref=tpa", "remove", &commits[4]]);
    assert_eq!(ids(&open_grants(&env, &dir, &soon)), sorted(&[&grants[1], &grants[2], &grants[3]]));
    show_agrees_with_log(&env, &dir, &grants[4]);
    let shown = env.tpa(&dir).args(["show", &grants[4], "--json"]).run().success().json();
    assert!(shown.to_string().contains("wrong_commit"), "{shown}");

    // The notes history squashed into one commit and the index's tip gone from the object store:
    // the index cannot be brought forward from it, so every record is read and it is written
    // again at the new tip.
    let indexed_tip = env.git(&dir, &["rev-parse", "refs/notes/tpa"]);
    let tree = env.git(&dir, &["rev-parse", "refs/notes/tpa^{tree}"]);
    let squashed = env.git(&dir, &["commit-tree", &tree, "-m", "squashed"]);
    env.git(&dir, &["update-ref", "refs/notes/tpa", &squashed]);
    std::fs::remove_file(dir.join(".git/objects").join(&indexed_tip[..2]).join(&indexed_tip[2..])).unwrap();
    assert_eq!(ids(&open_grants(&env, &dir, &soon)), sorted(&[&grants[1], &grants[2], &grants[3]]));
    let bytes = std::fs::read(index_file(&dir)).unwrap();
    assert!(bytes.windows(20).any(|w| w == hex::decode(&squashed).unwrap()), "written at the new tip");

    // A damaged index is a read of every record, and is written again.
    std::fs::write(index_file(&dir), b"tpa grant index\nnot really").unwrap();
    assert_eq!(ids(&open_grants(&env, &dir, &soon)), sorted(&[&grants[1], &grants[2], &grants[3]]));
    assert!(std::fs::read(index_file(&dir)).unwrap().len() > 100, "written again");

    // It reads no more than that: with the notes of the one grant that ended gone from the object
    // store (in whatever fan-outs `git notes add` left them), the open grants still read, every
    // record does not.
    let tree = env.git(&dir, &["ls-tree", "-r", "refs/notes/tpa"]);
    let mut removed = 0;
    for entry in tree.lines() {
        let (meta, path) = entry.split_once('\t').unwrap();
        if path.replace('/', "") == commits[0] {
            let blob = meta.split_whitespace().nth(2).unwrap();
            std::fs::remove_file(dir.join(".git/objects").join(&blob[..2]).join(&blob[2..])).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 0);
    let status = |extra: &[&str]| {
        env.tpa(&dir).args(["status", "--all", "--json"]).args(extra).env("TPA_TEST_NOW", &soon).run()
    };
    assert_eq!(ids(status(&[]).success().json().as_array().unwrap()).len(), 3);
    let full = status(&["--history"]);
    assert_ne!(full.code, 0, "a read of every record needs that note: {}", full.stdout);
}

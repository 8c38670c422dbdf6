//! Crafting and reading ledger records by hand.

use std::path::Path;

use serde_json::{Value, json};

use super::{EMAIL, TestEnv};

/// A valid intent payload for `commit`, as a JSON value to tweak.
pub fn intent_json(commit: &str, grant_id: &str, issued_at: &str) -> Value {
    json!({
        "version": 1, "kind": "intent", "grant_id": grant_id, "issued_at": issued_at,
        "principal": {"email": EMAIL, "user": "alice", "host": "laptop"},
        "reason": "INC-42: crafted by the test", "repo": "origin", "branch": "refs/heads/hotfix/one",
        "commit": commit, "base": null, "policy_commit": null, "provider": "test",
        "target": "arn:aws:iam::123456789012:role/test", "scope": null, "expires_at": null,
        "credential_fingerprint": null
    })
}

pub fn head(env: &TestEnv, dir: &Path) -> String {
    env.git(dir, &["rev-parse", "HEAD"])
}

/// The note on `commit` as its lines.
pub fn note_lines(env: &TestEnv, dir: &Path, commit: &str) -> Vec<String> {
    env.git(dir, &["notes", "--ref=tpa", "show", commit]).lines().map(str::to_owned).collect()
}

/// Writes `bytes` as the blob at `path` of the notes tree (any path: a fan-out of your choice, or
/// a file that is no note), byte for byte, as a new notes commit on top of refs/notes/tpa.
/// (`git notes add` cleans messages up; this does not.)
pub fn put_notes_file(env: &TestEnv, dir: &Path, path: &str, bytes: &[u8]) {
    edit_notes_tree(env, dir, path, Some(bytes));
}

/// Removes the file at `path` of the notes tree as a new notes commit, leaving every other path as
/// it is (`git notes remove` may lay the whole tree out again with its own fan-out).
pub fn remove_notes_file(env: &TestEnv, dir: &Path, path: &str) {
    edit_notes_tree(env, dir, path, None);
}

fn edit_notes_tree(env: &TestEnv, dir: &Path, path: &str, bytes: Option<&[u8]>) {
    let index = env.path("notes-index");
    let _ = std::fs::remove_file(&index);
    let git = |args: &[&str]| {
        let out =
            env.command("git").current_dir(dir).env("GIT_INDEX_FILE", &index).args(args).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(&["read-tree", "refs/notes/tpa"]);
    match bytes {
        Some(bytes) => {
            let file = env.path("raw-note");
            std::fs::write(&file, bytes).unwrap();
            let blob = env.git(dir, &["hash-object", "-w", file.to_str().unwrap()]);
            git(&["update-index", "--add", "--cacheinfo", &format!("100644,{blob},{path}")]);
        }
        None => {
            git(&["update-index", "--force-remove", path]);
        }
    }
    let tree = git(&["write-tree"]);
    let commit = git(&["commit-tree", tree.as_str(), "-p", "refs/notes/tpa", "-m", "by hand"]);
    git(&["update-ref", "refs/notes/tpa", commit.as_str()]);
}

/// The path of `commit`'s note in tpa's layout (two levels of fan-out).
pub fn fanout_path(commit: &str) -> String {
    format!("{}/{}/{}", &commit[..2], &commit[2..4], &commit[4..])
}

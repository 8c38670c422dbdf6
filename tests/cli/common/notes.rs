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

//! Revocation driven by git: the hooks tpa init installs, and `tpa sweep`, with the real git doing
//! real merges, checkouts and branch deletions, and moto's IAM showing the deny entries.

use crate::common::aws::AwsRepo;
use crate::common::aws::{denied, seed_policy};
use crate::common::proxy::Mode;
use crate::common::*;

fn grant(aws: &AwsRepo) -> String {
    aws.request().arg("--json").run().success().json()["grant_id"].as_str().unwrap().to_owned()
}

/// The grant's state and the trigger of its last revoke record.
fn state(aws: &AwsRepo, grant_id: &str) -> (String, Option<String>) {
    let show = aws.tpa().args(["show", grant_id, "--json"]).run().success().json();
    let trigger = show["records"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r["record"]["kind"] == "revoke")
        .map(|r| r["record"]["trigger"].as_str().unwrap().to_owned());
    (show["state"].as_str().unwrap().to_owned(), trigger)
}

fn revokes(aws: &AwsRepo) -> usize {
    aws.kinds().iter().filter(|k| *k == "revoke").count()
}

#[test]
fn a_no_ff_merge_revokes_through_the_post_merge_hook() {
    let aws = AwsRepo::new();
    let grant_id = grant(&aws);
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    assert_eq!(state(&aws, &grant_id).0, "active", "switching away alone ends nothing");
    aws.env.git(&aws.dir, &["merge", "-q", "--no-ff", "-m", "merge the fix", "hotfix/INC-4211"]);
    assert_eq!(state(&aws, &grant_id), ("revoked".into(), Some("merged".into())));
    assert!(denied(&aws.role_name).contains(&format!("tpa-{grant_id}")));
    assert_eq!(aws.keyring_grants(), 0);
    // Exactly once: more git activity and sweeps add nothing.
    aws.env.git(&aws.dir, &["commit", "-q", "--allow-empty", "-m", "later"]);
    aws.tpa().arg("sweep").run().success();
    assert_eq!(revokes(&aws), 1);
}

#[test]
fn a_squash_merge_revokes_through_the_post_commit_hook() {
    let aws = AwsRepo::new();
    std::fs::write(aws.dir.join("fix.txt"), "the fix\n").unwrap();
    aws.env.git(&aws.dir, &["add", "fix.txt"]);
    aws.env.git(&aws.dir, &["commit", "-q", "-m", "the fix"]);
    let grant_id = grant(&aws);
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.env.git(&aws.dir, &["merge", "-q", "--squash", "hotfix/INC-4211"]);
    assert_eq!(state(&aws, &grant_id).0, "active", "a squash without its commit is not merged yet");
    aws.env.git(&aws.dir, &["commit", "-q", "-m", "squashed fix"]);
    assert_eq!(state(&aws, &grant_id), ("revoked".into(), Some("merged".into())));
}

#[test]
fn a_deleted_branch_is_abandoned_at_the_next_sweep() {
    let aws = AwsRepo::new();
    let grant_id = grant(&aws);
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.env.git(&aws.dir, &["branch", "-q", "-D", "hotfix/INC-4211"]);
    // No hook fires on branch deletion: the next tpa command's sweep sees it.
    let out = aws.tpa().args(["sweep", "--json"]).run().success().json();
    let item = out["items"].as_array().unwrap().iter().find(|i| i["grant_id"] == grant_id.as_str()).unwrap();
    assert_eq!(item["decision"], "abandoned");
    assert_eq!(state(&aws, &grant_id), ("revoked".into(), Some("abandoned".into())));
}

#[test]
fn leaving_a_branch_for_longer_than_abandon_after_abandons_it() {
    let aws = AwsRepo::with_policy_parts("abandon_after = \"10m\"", "");
    let grant_id = grant(&aws);
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    let soon = (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
    aws.tpa().arg("sweep").env("TPA_TEST_NOW", &soon).run().success();
    assert_eq!(state(&aws, &grant_id).0, "active", "left 5 minutes ago: kept");
    let later = (chrono::Utc::now() + chrono::Duration::minutes(15)).to_rfc3339();
    aws.tpa().arg("sweep").env("TPA_TEST_NOW", &later).run().success();
    assert_eq!(state(&aws, &grant_id), ("revoked".into(), Some("abandoned".into())));
}

#[test]
fn coming_back_in_time_and_file_checkouts_are_not_leaving() {
    let aws = AwsRepo::with_policy_parts("abandon_after = \"10m\"", "");
    let grant_id = grant(&aws);
    aws.env.git(&aws.dir, &["checkout", "-q", "--", "README"]);
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.env.git(&aws.dir, &["switch", "-q", "hotfix/INC-4211"]);
    let later = (chrono::Utc::now() + chrono::Duration::minutes(15)).to_rfc3339();
    aws.tpa().arg("sweep").env("TPA_TEST_NOW", &later).run().success();
    assert_eq!(state(&aws, &grant_id).0, "active");
    assert_eq!(revokes(&aws), 0);
}

/// The hooks sweep after every commit, checkout and merge of a branch that holds a grant, and most
/// of those sweeps end nothing: they do not open the signing key (the OS keyring: a D-Bus session,
/// a password prompt where it is locked). Only ending a grant needs it.
#[test]
fn a_sweep_opens_the_signing_key_only_to_end_a_grant() {
    let mut aws = AwsRepo::new();
    let grant_id = grant(&aws);
    // From here the signing key cannot be had: a key file that is not there.
    let gone = aws.env.path("no-such-signing-key");
    aws.env.set_env("TPA_SIGNING_KEY", gone.to_str().unwrap());
    aws.env.git(&aws.dir, &["commit", "-q", "--allow-empty", "-m", "more work"]);
    let kept = aws.tpa().args(["sweep", "--json"]).run().success().json();
    let decisions = kept["items"].as_array().unwrap();
    assert!(
        decisions.iter().any(|i| i["grant_id"] == grant_id.as_str() && i["decision"] == "keep"),
        "{kept}"
    );

    // Merged: ending the grant needs the key. The hook's sweep cannot (git is not failed), nor can
    // `tpa sweep`, which says why.
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.env.git(&aws.dir, &["merge", "-q", "--no-ff", "-m", "merge the fix", "hotfix/INC-4211"]);
    assert_eq!(state(&aws, &grant_id).0, "active");
    let out = aws.tpa().arg("sweep").run();
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("cannot be signed") && out.stderr.contains("no-such-signing-key"),
        "{}",
        out.stderr
    );

    aws.env.set_env("TPA_SIGNING_KEY", "");
    aws.tpa().arg("sweep").run().success();
    assert_eq!(state(&aws, &grant_id), ("revoked".into(), Some("merged".into())));
}

#[test]
fn iam_down_during_a_hook_never_fails_git_and_a_later_sweep_revokes() {
    let aws = AwsRepo::new();
    let grant_id = grant(&aws);
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.proxy.set_mode(Mode::Down);
    let merge = aws.env.git_output(&aws.dir, &["merge", "-q", "--no-ff", "-m", "merge", "hotfix/INC-4211"]);
    assert!(merge.status.success(), "git failed: {}", String::from_utf8_lossy(&merge.stderr));
    assert_eq!(state(&aws, &grant_id).0, "pending");
    aws.tpa().args(["exec", &grant_id, "--", "true"]).run().code(2);
    aws.proxy.set_mode(Mode::Forward);
    // Backoff: right away is too early, a few minutes later it retries.
    let out = aws.tpa().args(["sweep", "--json"]).run().json();
    assert!(out["items"].as_array().unwrap().iter().any(|i| i["decision"] == "wait"), "{out}");
    let later = (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
    aws.tpa().arg("sweep").env("TPA_TEST_NOW", &later).run().success();
    assert_eq!(state(&aws, &grant_id), ("revoked".into(), Some("merged".into())));
    assert!(denied(&aws.role_name).contains(&format!("tpa-{grant_id}")));
}

#[test]
fn a_foreign_hook_keeps_running_and_uninstall_restores_it() {
    let env = TestEnv::new();
    let dir = env.repo("work");
    let hook = dir.join(".git/hooks/post-checkout");
    let log = env.path("foreign.log");
    let script = format!("#!/bin/sh\necho \"$@\" >> '{}'\nexit 0\n", log.display());
    std::fs::write(&hook, &script).unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    env.tpa(&dir).arg("init").run().success();
    let installed = std::fs::read_to_string(&hook).unwrap();
    assert!(installed.contains("tpa-managed-hook"));
    assert!(
        installed.contains("/tpa-hook' hook post-checkout \"$@\""),
        "the fast path binary runs: {installed}"
    );
    env.git(&dir, &["switch", "-q", "-c", "hotfix/x"]);
    assert!(
        std::fs::read_to_string(&log).unwrap().ends_with(" 1\n"),
        "the foreign hook ran with git's arguments"
    );
    env.tpa(&dir).arg("uninstall").run().success();
    assert_eq!(std::fs::read_to_string(&hook).unwrap(), script);
}

#[test]
fn fast_forward_and_cherry_pick_merges_revoke_once() {
    let aws = AwsRepo::new();
    let fast = grant(&aws);
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.env.git(&aws.dir, &["merge", "-q", "--ff-only", "hotfix/INC-4211"]);
    assert_eq!(state(&aws, &fast), ("revoked".into(), Some("merged".into())));

    aws.env.git(&aws.dir, &["switch", "-q", "-c", "hotfix/picked", "HEAD~1"]);
    std::fs::write(aws.dir.join("picked.txt"), "picked\n").unwrap();
    aws.env.git(&aws.dir, &["add", "picked.txt"]);
    aws.env.git(&aws.dir, &["commit", "-q", "-m", "a fix to cherry-pick"]);
    let picked = grant(&aws);
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.env.git(&aws.dir, &["cherry-pick", "hotfix/picked"]);
    assert_eq!(state(&aws, &picked), ("revoked".into(), Some("merged".into())));
    assert_eq!(revokes(&aws), 2);
}

#[test]
fn a_grant_at_the_branch_point_is_not_merged_by_ancestry() {
    let aws = AwsRepo::new();
    aws.env.git(&aws.dir, &["switch", "-q", "-c", "hotfix/fresh", "main"]);
    let grant_id = grant(&aws);
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.env.git(&aws.dir, &["commit", "-q", "--allow-empty", "-m", "main moves on"]);
    aws.tpa().arg("sweep").run().success();
    assert_eq!(state(&aws, &grant_id).0, "active");
}

#[test]
fn a_merge_done_on_the_server_revokes_at_the_next_pull() {
    let aws = AwsRepo::new();
    std::fs::write(aws.dir.join("fix.txt"), "fix\n").unwrap();
    aws.env.git(&aws.dir, &["add", "fix.txt"]);
    aws.env.git(&aws.dir, &["commit", "-q", "-m", "fix"]);
    aws.env.git(&aws.dir, &["push", "-q", "origin", "hotfix/INC-4211"]);
    let grant_id = grant(&aws);
    // A teammate (or the server's merge button) merges it in another clone.
    let origin = aws.env.path("work-origin.git");
    let other = aws.env.path("teammate");
    aws.env.git(aws.env.root.path(), &["clone", "-q", origin.to_str().unwrap(), other.to_str().unwrap()]);
    aws.env.git(&other, &["config", "user.email", "bob@example.com"]);
    aws.env.git(&other, &["config", "user.name", "Bob"]);
    aws.env.git(&other, &["merge", "-q", "--no-ff", "-m", "merge on the server", "origin/hotfix/INC-4211"]);
    aws.env.git(&other, &["push", "-q", "origin", "main"]);
    assert_eq!(state(&aws, &grant_id).0, "active");
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.env.git(&aws.dir, &["pull", "-q", "--no-rebase", "origin", "main"]);
    assert_eq!(state(&aws, &grant_id), ("revoked".into(), Some("merged".into())));
}

#[test]
fn pull_rebase_is_not_leaving_the_branch() {
    let aws = AwsRepo::with_policy_parts("abandon_after = \"10m\"", "");
    let grant_id = grant(&aws);
    aws.env.git(&aws.dir, &["push", "-q", "origin", "hotfix/INC-4211"]);
    let origin = aws.env.path("work-origin.git");
    let other = aws.env.path("teammate");
    aws.env.git(aws.env.root.path(), &["clone", "-q", origin.to_str().unwrap(), other.to_str().unwrap()]);
    aws.env.git(&other, &["config", "user.email", "bob@example.com"]);
    aws.env.git(&other, &["config", "user.name", "Bob"]);
    aws.env.git(&other, &["commit", "-q", "--allow-empty", "-m", "main moves"]);
    aws.env.git(&other, &["push", "-q", "origin", "main"]);
    aws.env.git(&aws.dir, &["pull", "-q", "--rebase", "origin", "main"]);
    let later = (chrono::Utc::now() + chrono::Duration::minutes(15)).to_rfc3339();
    aws.tpa().arg("sweep").env("TPA_TEST_NOW", &later).run().success();
    assert_eq!(state(&aws, &grant_id).0, "active", "a rebase's detached checkouts are not leaving");
}

#[test]
fn a_hostile_branch_name_is_revoked_like_any_other() {
    let aws = AwsRepo::new();
    let branch = "hotfix/$(touch${IFS}pwned);`id`'\"";
    aws.env.git(&aws.dir, &["switch", "-q", "-c", branch]);
    aws.env.git(&aws.dir, &["commit", "-q", "--allow-empty", "-m", "work"]);
    let grant_id = grant(&aws);
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.env.git(&aws.dir, &["merge", "-q", "--no-ff", "-m", "merge", branch]);
    assert_eq!(state(&aws, &grant_id), ("revoked".into(), Some("merged".into())));
    assert!(!aws.dir.join("pwned").exists());
}

#[test]
fn access_denied_until_the_last_retry_makes_the_grant_irrevocable() {
    let aws = AwsRepo::with_policy_parts("", "");
    let policy =
        crate::common::aws::policy(&aws.role_arn, "").replace("max_ttl = \"1h\"", "max_ttl = \"4h\"");
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    std::fs::write(aws.dir.join(".tpa/policy.toml"), policy).unwrap();
    aws.env.git(&aws.dir, &["commit", "-q", "-am", "longer grants"]);
    aws.env.git(&aws.dir, &["push", "-q", "origin", "main"]);
    aws.env.git(&aws.dir, &["switch", "-q", "hotfix/INC-4211"]);
    let grant_id = aws.request().args(["--ttl", "4h", "--json"]).run().success().json()["grant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    aws.proxy.set_mode(Mode::Respond {
        status: 403,
        content_type: "text/xml",
        body: "<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error><Type>Sender</Type>\
               <Code>AccessDenied</Code><Message>not authorized to perform: iam:CreatePolicyVersion</Message>\
               </Error><RequestId>1</RequestId></ErrorResponse>"
            .into(),
    });
    aws.tpa().args(["revoke", &grant_id]).run().code(2);
    assert_eq!(state(&aws, &grant_id).0, "pending");
    // Each sweep comes just after the longest backoff (+20% jitter) of the attempt before.
    let mut at = chrono::Utc::now();
    for attempt in 1..8u32 {
        at += chrono::Duration::seconds((30i64 << attempt).min(3600) * 6 / 5 + 5);
        aws.tpa().arg("sweep").env("TPA_TEST_NOW", at.to_rfc3339()).run().code(2);
    }
    assert_eq!(state(&aws, &grant_id).0, "irrevocable");
    let status =
        aws.tpa().args(["status", "--json"]).env("TPA_TEST_NOW", at.to_rfc3339()).run().success().json();
    assert_eq!(status[0]["state"], "irrevocable");
    let attempts = aws.kinds().iter().filter(|k| *k == "revoke").count();
    assert_eq!(attempts, 8);
    // An operator with the right permissions resolves it.
    aws.proxy.set_mode(Mode::Forward);
    aws.tpa().args(["revoke", &grant_id]).env("TPA_TEST_NOW", at.to_rfc3339()).run().success();
    assert_eq!(state(&aws, &grant_id).0, "revoked");
}

/// A grant on `commit` requested at `at`, through the test plumbing (no STS call): issued, expired
/// 30 minutes later, and revoked too when `revoked`.
fn past_grant(aws: &AwsRepo, commit: &str, grant_id: &str, at: chrono::DateTime<chrono::Utc>, revoked: bool) {
    let later = |minutes: i64| (at + chrono::Duration::minutes(minutes)).to_rfc3339();
    let mut intent = crate::common::notes::intent_json(commit, grant_id, &at.to_rfc3339());
    intent["branch"] = serde_json::json!("refs/heads/hotfix/INC-1000");
    intent["provider"] = serde_json::json!("aws-sts");
    intent["target"] = serde_json::json!(aws.role_arn);
    let append = |record: &serde_json::Value| {
        aws.tpa().args(["debug", "append"]).stdin(record.to_string()).run().success().json()
    };
    let sha = append(&intent)["payload_sha256"].clone();
    let mut issued = intent.clone();
    issued["kind"] = serde_json::json!("grant");
    issued["issued_at"] = serde_json::json!(later(1));
    issued["expires_at"] = serde_json::json!(later(30));
    issued["credential_fingerprint"] = serde_json::json!("sha256:0011223344556677");
    issued["intent_sha256"] = sha;
    append(&issued);
    if revoked {
        let mut revoke = issued.clone();
        revoke["kind"] = serde_json::json!("revoke");
        revoke["issued_at"] = serde_json::json!(later(10));
        revoke["trigger"] = serde_json::json!("merged");
        revoke["result"] = serde_json::json!("done");
        revoke["expires_at"] = serde_json::Value::Null;
        revoke["credential_fingerprint"] = serde_json::Value::Null;
        append(&revoke);
    }
}

fn january() -> chrono::DateTime<chrono::Utc> {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

/// The blobs of `commit`'s notes at the tip (in whatever fan-outs), deleted from the object store.
fn delete_notes_of(aws: &AwsRepo, commit: &str) {
    let tree = aws.env.git(&aws.dir, &["ls-tree", "-r", "refs/notes/tpa"]);
    let mut removed = 0;
    for entry in tree.lines() {
        let (meta, path) = entry.split_once('\t').unwrap();
        if path.replace('/', "") == commit {
            let blob = meta.split_whitespace().nth(2).unwrap();
            std::fs::remove_file(aws.dir.join(".git/objects").join(&blob[..2]).join(&blob[2..])).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 0, "no note on {commit}");
}

#[test]
fn the_sweep_reads_the_grants_it_looks_after_and_not_the_whole_ledger() {
    let aws = AwsRepo::new();
    aws.tpa().args(["setup-aws", "--role", "prod-readonly"]).run().success();
    // Two grants of January on commits of their own: one revoked and still listed in the role's
    // revocation policy, one whose notes will be gone from the object store.
    let listed = "01KA0000000000000000000001";
    let gone = "01KA0000000000000000000002";
    let listed_commit = aws.head();
    past_grant(&aws, &listed_commit, listed, january(), true);
    aws.env.git(&aws.dir, &["commit", "-q", "--allow-empty", "-m", "another fix"]);
    let gone_commit = aws.head();
    past_grant(&aws, &gone_commit, gone, january(), false);
    aws.env.git(&aws.dir, &["commit", "-q", "--allow-empty", "-m", "the fix"]);
    seed_policy(&aws.role_name, &tpa::provider::aws_iam::document(&[format!("tpa-{listed}")].into()));
    let kept = grant(&aws);
    let revoked_elsewhere = grant(&aws);
    assert!(aws.keyring_holds(&revoked_elsewhere));
    let first = aws.tpa().args(["sweep", "--json"]).run().success().json();
    assert_eq!(first["items"].as_array().unwrap().len(), 2, "{first}");

    // Another clone revokes the second grant (its record arrives, its deny entry does not), and
    // the January grant's notes vanish from this clone's object store.
    let show = aws.tpa().args(["show", &revoked_elsewhere, "--json"]).run().success().json();
    let issued = show["records"].as_array().unwrap().iter().find(|r| r["record"]["kind"] == "grant").unwrap();
    let mut revoke = issued["record"].clone();
    revoke["kind"] = serde_json::json!("revoke");
    revoke["issued_at"] = serde_json::json!(chrono::Utc::now().to_rfc3339());
    revoke["trigger"] = serde_json::json!("manual");
    revoke["result"] = serde_json::json!("done");
    revoke["expires_at"] = serde_json::Value::Null;
    revoke["credential_fingerprint"] = serde_json::Value::Null;
    aws.tpa().args(["debug", "append"]).stdin(revoke.to_string()).run().success();
    delete_notes_of(&aws, &gone_commit);
    // `tpa status` sees it revoked; then a grant that expired an hour ago (one the sweep looks after
    // too) arrives on another note, and `status` reads only what changed: the sweep learns of the
    // revoked grant from what the second `status` carried over in the grant index.
    let open = || aws.tpa().args(["status", "--json"]).run().success().json().as_array().unwrap().len();
    assert_eq!(open(), 1);
    let lately = chrono::Utc::now() - chrono::Duration::minutes(90);
    past_grant(&aws, &listed_commit, "01KA0000000000000000000003", lately, false);
    assert_eq!(open(), 1);

    let sweep = aws.tpa().args(["sweep", "--json"]).run().success().json();
    let items = sweep["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{sweep}");
    assert_eq!(
        (items[0]["grant_id"].as_str(), items[0]["decision"].as_str()),
        (Some(kept.as_str()), Some("keep"))
    );
    // The revoked grant's deny entry is written back, the expired January entry pruned (its
    // expiry looked up by its session name), and this clone forgets the revoked grant's secret.
    assert_eq!(sweep["reasserted"], 1, "{sweep}");
    let now_denied = denied(&aws.role_name);
    assert_eq!(now_denied, [format!("tpa-{revoked_elsewhere}")].into(), "{now_denied:?}");
    assert!(!aws.keyring_holds(&revoked_elsewhere));
    assert!(aws.keyring_holds(&kept));
    // A read of every record needs the notes the sweep did without.
    let full = aws.tpa().args(["status", "--all", "--history"]).run();
    assert_ne!(full.code, 0, "{}", full.stdout);
}

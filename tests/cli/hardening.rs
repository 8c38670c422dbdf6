//! What adversarial testing found (issue 12), each reproduced as it was reported: a grant never
//! becomes unrevocable, nothing is left half-done, hostile and absurd input ends in a clear error
//! in bounded time and memory.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::aws::AwsRepo;
use crate::common::aws::denied;
use crate::common::moto::{moto, xml_text};
use crate::common::*;

fn grant(aws: &AwsRepo) -> String {
    aws.request().arg("--json").run().success().json()["grant_id"].as_str().unwrap().to_owned()
}

fn state_of(aws: &AwsRepo, grant_id: &str) -> String {
    let show = aws.tpa().args(["show", grant_id, "--json"]).run().success().json();
    show["state"].as_str().unwrap().to_owned()
}

fn records_of(aws: &AwsRepo, grant_id: &str) -> Vec<Value> {
    let show = aws.tpa().args(["show", grant_id, "--json"]).run().success().json();
    show["records"].as_array().unwrap().iter().map(|r| r["record"].clone()).collect()
}

fn kinds_of(aws: &AwsRepo, grant_id: &str) -> Vec<String> {
    records_of(aws, grant_id).iter().map(|r| r["kind"].as_str().unwrap().to_owned()).collect()
}

/// Runs to completion within `limit`, or kills the process and fails.
fn bounded(run: Run, limit: Duration) -> Done {
    let mut child = run.spawn();
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return Done::from_output(out, "bounded run".into());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20)); // polling a child, bounded by the deadline
    }
}

// 1. Deleting a note must not make a live grant unrevocable.

/// A sweep puts back the removed records of grant `id` (and at least one other line) and ends it.
fn sweep_restores_and_ends(aws: &AwsRepo, id: &str) {
    let sweep = aws.tpa().args(["sweep", "--json"]).run().success().json();
    assert!(sweep["restored"].as_u64().unwrap() >= 2, "{sweep}");
    let item = sweep["items"].as_array().unwrap().iter().find(|i| i["grant_id"] == id).unwrap().clone();
    assert_eq!(item["decision"], "restored", "{sweep}");
    assert_eq!(item["outcome"]["result"], "done", "{sweep}");
    assert!(denied(&aws.role_name).contains(&format!("tpa-{id}")));
}

#[test]
fn a_grant_whose_note_was_deleted_is_still_revoked_by_id() {
    let aws = AwsRepo::new();
    let id = grant(&aws);
    aws.env.git(&aws.dir, &["notes", "--ref=tpa", "remove", &aws.head()]);
    let status = aws.tpa().arg("status").run().success();
    assert!(status.stderr.contains("WARNING") && status.stderr.contains(&id), "{}", status.stderr);

    aws.tpa().args(["revoke", &id]).run().success();
    assert!(denied(&aws.role_name).contains(&format!("tpa-{id}")));
    assert_eq!(kinds_of(&aws, &id), ["intent", "grant", "revoke"], "the records came back, then the revoke");
    assert_eq!(aws.keyring_grants(), 0);
    aws.tpa().args(["verify"]).run().success();
}

#[test]
fn a_grant_whose_note_was_deleted_is_ended_by_the_merge_hook() {
    let aws = AwsRepo::new();
    let id = grant(&aws);
    aws.env.git(&aws.dir, &["notes", "--ref=tpa", "remove", &aws.head()]);
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.env.git(&aws.dir, &["merge", "-q", "--no-ff", "-m", "merge", "hotfix/INC-4211"]);
    assert_eq!(state_of(&aws, &id), "revoked");
    assert!(denied(&aws.role_name).contains(&format!("tpa-{id}")));
}

#[test]
fn a_grant_on_an_amended_and_pruned_commit_is_put_back_and_ended_by_the_sweep() {
    let aws = AwsRepo::new();
    let id = grant(&aws);
    aws.env
        .git(&aws.dir, &["commit", "-q", "--amend", "--allow-empty", "-m", "fix stuck invoices (amended)"]);
    aws.env.git(&aws.dir, &["reflog", "expire", "--expire=now", "--all"]);
    aws.env.git(&aws.dir, &["gc", "-q", "--prune=now"]);
    aws.env.git(&aws.dir, &["notes", "--ref=tpa", "prune"]);
    assert!(aws.tpa().args(["status", "--json"]).run().success().json().as_array().unwrap().is_empty());

    sweep_restores_and_ends(&aws, &id);
    assert_eq!(state_of(&aws, &id), "revoked");
    let revoke = records_of(&aws, &id).into_iter().find(|r| r["kind"] == "revoke").unwrap();
    assert_eq!(revoke["trigger"], "audit");
}

#[test]
fn records_a_reset_of_the_notes_ref_dropped_after_a_sweep_are_put_back_by_the_next() {
    let aws = AwsRepo::new();
    grant(&aws);
    // The sweep remembers how far it searched: the tip, and the notes ref's reflog then.
    aws.tpa().arg("sweep").run().success();
    let searched = aws.notes_tip().unwrap();
    let id = grant(&aws);
    // The ref set back to the tip that sweep searched: what came after is in no commit the next
    // sweep would walk from the tip, only in the tips the reflog logged since.
    aws.env.git(&aws.dir, &["update-ref", "refs/notes/tpa", &searched]);
    assert!(aws.tpa().args(["status", "--json"]).run().success().json().as_array().unwrap().len() == 1);

    sweep_restores_and_ends(&aws, &id);
    // And a sweep after that one finds nothing more to put back.
    assert_eq!(aws.tpa().args(["sweep", "--json"]).run().success().json()["restored"], 0);

    // Set back further, before the tip the last sweep searched: the tip no longer descends from
    // it, and the next sweep searches everything again (old tips logged before it included).
    let searched = aws.notes_tip().unwrap();
    let second = grant(&aws);
    aws.tpa().arg("sweep").run().success();
    let parent = aws.env.git(&aws.dir, &["rev-parse", &format!("{searched}^")]);
    aws.env.git(&aws.dir, &["update-ref", "refs/notes/tpa", &parent]);
    sweep_restores_and_ends(&aws, &second);
}

#[test]
fn a_grant_with_no_record_left_anywhere_is_denied_from_the_local_index() {
    let aws = AwsRepo::new();
    let id = grant(&aws);
    // The notes ref deleted outright: no history, no reflog; only this clone's index remembers.
    aws.env.git(&aws.dir, &["update-ref", "-d", "refs/notes/tpa"]);
    let sweep = aws.tpa().args(["sweep", "--json"]).run().code(2).json();
    let item =
        sweep["items"].as_array().unwrap().iter().find(|i| i["grant_id"] == id.as_str()).unwrap().clone();
    assert_eq!(item["decision"], "unrecorded", "{sweep}");
    assert!(item["detail"].as_str().unwrap().contains("ended through its provider (aws-sts)"), "{sweep}");
    assert!(denied(&aws.role_name).contains(&format!("tpa-{id}")));
}

// 4. Requests are atomic from the user's view.

#[test]
fn an_interrupted_request_is_never_left_half_done() {
    let aws = AwsRepo::new();
    for delay_ms in [0u64, 2, 5, 10, 20, 30, 45, 60, 75, 90] {
        let child = aws.request().spawn();
        std::thread::sleep(Duration::from_millis(delay_ms)); // where the signal lands, not synchronisation
        let pid = child.id().to_string();
        let _ = aws.env.command("kill").args(["-INT", &pid]).status();
        let out = child.wait_with_output().unwrap();
        let code = out.status.code();
        assert!(matches!(code, Some(0) | Some(130) | None), "delay {delay_ms} ms: {code:?} {out:?}");
    }
    let log = aws.tpa().args(["log", "--json"]).run().success().json();
    let mut by_grant: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for entry in log.as_array().unwrap() {
        let record = &entry["record"];
        by_grant
            .entry(record["grant_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(record["kind"].as_str().unwrap().to_owned());
    }
    let status = aws.tpa().args(["status", "--all", "--history", "--json"]).run().success().json();
    for (grant_id, mut kinds) in by_grant {
        kinds.sort();
        let state =
            status.as_array().unwrap().iter().find(|g| g["grant_id"] == grant_id.as_str()).unwrap()["state"]
                .clone();
        match kinds.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["failed", "intent"] => {}
            ["grant", "intent"] => {
                // A recorded grant is a usable one: its credentials are in the keyring.
                assert_eq!(state, "active");
                aws.tpa().args(["exec", &grant_id, "--", "true"]).run().success();
            }
            ref other => panic!("grant {grant_id} was left as {other:?} ({state})"),
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(aws.dir.join(".git/tpa"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

// A keyring that refuses the credentials after the grant record, and a grant record that cannot be
// written, are the executor's failure paths: tested in-process with a fake issuer and keyring
// (src/ops/issue.rs), since a release build has no way to inject them.

#[test]
fn exec_and_env_pick_the_newest_grant_that_can_be_used() {
    let aws = AwsRepo::new();
    let older = grant(&aws);
    let newer = grant(&aws);
    // The newer grant's credentials are not here (taken elsewhere, or lost).
    let cleared = aws
        .env
        .command("secret-tool")
        .args(["clear", "service", "tpa", "username", &format!("grant:{newer}")])
        .status()
        .unwrap();
    assert!(cleared.success());
    let env = aws.tpa().arg("env").run().success().stdout;
    let whoami = aws
        .tpa()
        .args(["exec", "--"])
        .arg(crate::common::aws::python())
        .args(["-c", "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])"])
        .run()
        .success();
    assert!(whoami.stdout.trim().ends_with(&format!("/tpa-{older}")), "{}", whoami.stdout);
    assert!(env.contains("AWS_SESSION_TOKEN"));
    // Asked for by id, the newer one says why it cannot be used.
    let out = aws.tpa().args(["env", &newer]).run().code(2);
    assert!(out.stderr.contains("not in this machine's OS keyring"), "{}", out.stderr);
}

// 5. A signer the trust ref does not list mints nothing.

#[test]
fn a_signing_key_missing_from_allowed_signers_at_the_trust_ref_mints_nothing() {
    let aws = AwsRepo::new();
    let stranger = aws.env.ssh_key("stranger");
    let out = aws.request().env("TPA_SIGNING_KEY", &stranger).run().code(2);
    assert!(out.stderr.contains("is not a valid signer"), "{}", out.stderr);
    assert!(out.stderr.contains("merged into refs/remotes/origin/main"), "{}", out.stderr);
    assert!(aws.kinds().is_empty());
    assert_eq!(aws.proxy.connections(), 0);
}

// 6. An empty protected_branches is refused, and the audit says so.

#[test]
fn an_empty_protected_branches_is_refused_and_is_an_audit_error() {
    let aws = AwsRepo::new();
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    let policy = std::fs::read_to_string(aws.dir.join(".tpa/policy.toml")).unwrap();
    let policy = policy.replace("protected_branches = [\"main\"]", "protected_branches = []");
    std::fs::write(aws.dir.join(".tpa/policy.toml"), policy).unwrap();
    aws.env.git(&aws.dir, &["commit", "-q", "-am", "policy: protect nothing"]);
    aws.env.git(&aws.dir, &["push", "-q", "origin", "main"]);
    let out = aws.request().run().code(2);
    assert!(out.stderr.contains("protected_branches in .tpa/policy.toml is empty"), "{}", out.stderr);
    assert!(aws.kinds().is_empty());
    let report = aws.tpa().args(["audit", "--offline", "--json"]).run().code(1).json();
    let kinds: Vec<&str> =
        report["findings"].as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"no_protected_branches"), "{kinds:?}");
}

// 7. notes.rewriteRef copies are git's, not tampering.

#[test]
fn records_git_copies_onto_amended_and_rebased_commits_are_not_findings_nor_records() {
    let aws = AwsRepo::new();
    aws.env.git(&aws.dir, &["config", "notes.rewriteRef", "refs/notes/tpa"]);
    let id = grant(&aws);
    aws.env.git(&aws.dir, &["commit", "-q", "--amend", "--allow-empty", "-m", "fix stuck invoices, amended"]);
    // And a rebase onto a new main.
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.env.git(&aws.dir, &["commit", "-q", "--allow-empty", "-m", "meanwhile on main"]);
    aws.env.git(&aws.dir, &["switch", "-q", "hotfix/INC-4211"]);
    aws.env.git(&aws.dir, &["rebase", "-q", "main"]);
    let copies = aws.env.git(&aws.dir, &["notes", "--ref=tpa", "list"]).lines().count();
    assert!(copies >= 3, "git copied the note: {copies} notes");

    let verify = aws.tpa().args(["verify", "--json"]).run().success().json();
    assert!(verify["findings"].as_array().unwrap().is_empty(), "{verify}");
    assert!(verify["git_copies"].as_array().unwrap().len() >= 4, "{verify}");
    let human = aws.tpa().arg("verify").run().success().stdout;
    assert!(human.contains("copied by git"), "{human}");
    assert_eq!(kinds_of(&aws, &id), ["intent", "grant"], "one grant, its two records, once each");
    let status = aws.tpa().args(["status", "--json"]).run().success().json();
    assert_eq!(status.as_array().unwrap().len(), 1);
}

#[test]
fn a_record_moved_to_another_commit_is_still_an_error() {
    let aws = AwsRepo::new();
    aws.env.git(&aws.dir, &["config", "notes.rewriteRef", "refs/notes/tpa"]);
    let original = aws.head();
    grant(&aws);
    aws.env.git(&aws.dir, &["commit", "-q", "--amend", "--allow-empty", "-m", "amended"]);
    aws.env.git(&aws.dir, &["notes", "--ref=tpa", "remove", &original]);
    let verify = aws.tpa().args(["verify", "--json"]).run().code(1).json();
    assert!(finding_kinds(&verify).contains(&"wrong_commit".to_owned()), "{verify}");
}

// 8. The smaller ones.

#[test]
fn concurrent_revokes_of_one_grant_write_one_record_and_one_policy_version() {
    let aws = AwsRepo::new();
    let id = grant(&aws);
    aws.tpa().args(["setup-aws", "--role", "prod-readonly"]).run().success();
    let versions = || {
        let arn = format!("arn:aws:iam::123456789012:policy/tpa/tpa-revocations-{}", aws.role_name);
        let (status, body) = moto()
            .call("iam", &[("Action", "ListPolicyVersions"), ("Version", "2010-05-08"), ("PolicyArn", &arn)]);
        assert_eq!(status, 200, "{body}");
        body.matches("<VersionId>").count()
    };
    let before = versions();
    let children: Vec<_> = (0..4).map(|_| aws.tpa().args(["revoke", &id, "--json"]).spawn()).collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(kinds_of(&aws, &id).iter().filter(|k| *k == "revoke").count(), 1);
    assert_eq!(versions(), before + 1, "one new policy version");
    let _ = xml_text;
}

#[test]
fn a_timeout_of_zero_is_refused() {
    let aws = AwsRepo::new();
    let out = aws.request().args(["--timeout", "0s"]).run().code(2);
    assert!(out.stderr.contains("at least 1s"), "{}", out.stderr);
    assert!(aws.kinds().is_empty());
    aws.tpa().args(["revoke", "--mine", "--timeout", "0s"]).run().code(2);
}

#[test]
fn date_arithmetic_never_panics() {
    let aws = AwsRepo::new();
    for args in [
        vec!["audit", "--offline", "--since", "99999999999d"],
        vec!["audit", "--offline", "--since", "36501d"],
        vec![
            "request",
            "--role",
            "prod-readonly",
            "--reason",
            "INC-1: a long one",
            "--ttl",
            "99999999999999d",
        ],
    ] {
        let out = aws.tpa().args(&args).run();
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("is not a duration"), "{args:?}: {}", out.stderr);
    }
    aws.tpa().args(["audit", "--offline", "--since", "36500d", "--json"]).run().success();
    aws.tpa().args(["audit", "--offline", "--from", "0001-01-01T00:00:00Z", "--json"]).run().success();
}

#[test]
fn a_signing_key_that_is_no_regular_file_or_readable_by_others_is_refused_at_once() {
    let aws = AwsRepo::new();
    let out = bounded(aws.request().env("TPA_SIGNING_KEY", "/dev/zero"), Duration::from_secs(20));
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);

    let key = aws.env.ssh_key("shared");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = aws.request().env("TPA_SIGNING_KEY", &key).run().code(2);
    assert!(out.stderr.contains("too open") && out.stderr.contains("chmod 600"), "{}", out.stderr);
    assert!(aws.kinds().is_empty());
}

#[test]
fn huge_reasons_and_ids_are_refused_without_being_echoed_whole() {
    let aws = AwsRepo::new();
    // As long as one argument may be (Linux: 128 KiB).
    let reason = format!("INC-1: {}", "x".repeat(127 * 1024));
    let out = aws.tpa().args(["request", "--role", "prod-readonly", "--reason", &reason]).run().code(2);
    assert!(out.stderr.contains("at most 2048 are recorded"), "{}", &out.stderr[..out.stderr.len().min(300)]);
    assert!(out.stderr.len() < 1000, "{} bytes of error", out.stderr.len());
    assert!(aws.kinds().is_empty());

    let bogus = "Z".repeat(10 * 1024);
    for command in ["revoke", "show", "env"] {
        let out = aws.tpa().args([command, &bogus]).run().code(2);
        assert!(
            out.stderr.contains("is not a grant id"),
            "{command}: {}",
            &out.stderr[..out.stderr.len().min(300)]
        );
        assert!(out.stderr.len() < 1000, "{command}: {} bytes of error", out.stderr.len());
    }
}

#[test]
fn a_symlinked_or_oversized_policy_says_what_it_is() {
    let aws = AwsRepo::new();
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    std::fs::rename(aws.dir.join(".tpa/policy.toml"), aws.dir.join(".tpa/real-policy.toml")).unwrap();
    std::os::unix::fs::symlink("real-policy.toml", aws.dir.join(".tpa/policy.toml")).unwrap();
    aws.env.git(&aws.dir, &["add", "-A", ".tpa"]);
    aws.env.git(&aws.dir, &["commit", "-q", "-m", "policy: a symlink"]);
    aws.env.git(&aws.dir, &["push", "-q", "origin", "main"]);
    aws.env.git(&aws.dir, &["switch", "-q", "hotfix/INC-4211"]);
    let out = aws.request().run().code(2);
    assert!(out.stderr.contains("is a symbolic link"), "{}", out.stderr);

    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    std::fs::remove_file(aws.dir.join(".tpa/policy.toml")).unwrap();
    let mut huge = std::fs::read_to_string(aws.dir.join(".tpa/real-policy.toml")).unwrap();
    huge.push_str(&"# padding\n".repeat(5 * 1024 * 1024)); // 50 MB of comments
    std::fs::write(aws.dir.join(".tpa/policy.toml"), huge).unwrap();
    aws.env.git(&aws.dir, &["add", "-A", ".tpa"]);
    aws.env.git(&aws.dir, &["commit", "-q", "-m", "policy: 50 MB"]);
    aws.env.git(&aws.dir, &["push", "-q", "origin", "main"]);
    aws.env.git(&aws.dir, &["switch", "-q", "hotfix/INC-4211"]);
    let started = Instant::now();
    let out = bounded(aws.request(), Duration::from_secs(30));
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("tpa reads at most 1048576 bytes"), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(aws.kinds().is_empty());
}

#[test]
fn a_repository_owned_by_another_user_hints_at_safe_directory() {
    let env = TestEnv::new();
    let dir = env.repo("theirs");
    // Owned by nobody, as a checkout of another account's would be.
    let chown = env.command("chown").args(["-R", "65534:65534"]).arg(&dir).status().unwrap();
    assert!(chown.success(), "the tests run as root (CI) to hand a repository to another user");
    let out = env.tpa(&dir).arg("status").run().code(2);
    assert!(out.stderr.contains("safe.directory"), "{}", out.stderr);
}

#[test]
fn a_renamed_branch_is_followed_not_revoked_as_abandoned() {
    let aws = AwsRepo::new();
    let id = grant(&aws);
    aws.env.git(&aws.dir, &["branch", "-m", "hotfix/INC-4211", "hotfix/INC-4211-invoices"]);
    let sweep = aws.tpa().args(["sweep", "--json"]).run().success().json();
    let item =
        sweep["items"].as_array().unwrap().iter().find(|i| i["grant_id"] == id.as_str()).unwrap().clone();
    assert_eq!(item["decision"], "keep", "{sweep}");
    assert_eq!(state_of(&aws, &id), "active");
    // Merged under its new name, it is revoked as merged.
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.env.git(&aws.dir, &["merge", "-q", "--no-ff", "-m", "merge", "hotfix/INC-4211-invoices"]);
    assert_eq!(state_of(&aws, &id), "revoked");
    let revoke = records_of(&aws, &id).into_iter().find(|r| r["kind"] == "revoke").unwrap();
    assert_eq!(revoke["trigger"], "merged");
}

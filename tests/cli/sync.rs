//! `tpa sync` and `sync = "push"`: clones sharing one bare remote with the real git doing the
//! transport, converging to the same ledger with every record, and records written offline pushed
//! later.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::common::aws::AwsRepo;
use crate::common::*;

/// (grant id, kind) of every record in the clone's ledger.
fn records(env: &TestEnv, dir: &Path) -> BTreeSet<(String, String)> {
    env.tpa(dir)
        .args(["log", "--json"])
        .run()
        .success()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["record"]["grant_id"].as_str().unwrap().to_owned(),
                r["record"]["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Two clones of one bare origin, both signing with the same trusted key (one person, two
/// machines), both on main.
fn two_clones(env: &TestEnv) -> (PathBuf, PathBuf, PathBuf) {
    let key = env.ssh_key("alice-key");
    let (a, origin) = env.repo_with_origin("team");
    env.tpa(&a).args(["init", "--signing-key"]).arg(&key).run().success();
    env.git(&a, &["add", ".tpa"]);
    env.git(&a, &["commit", "-q", "-m", "tpa: trust alice"]);
    env.git(&a, &["push", "-q", "origin", "main"]);
    let b = env.path("team-b");
    env.git(&a, &["clone", "-q", origin.to_str().unwrap(), b.to_str().unwrap()]);
    env.git(&b, &["config", "user.email", EMAIL]);
    env.tpa(&b).args(["init", "--signing-key"]).arg(&key).run().success();
    (a, b, origin)
}

#[test]
fn two_clones_appending_and_syncing_in_parallel_converge_with_every_record() {
    let env = TestEnv::new();
    let (a, b, origin) = two_clones(&env);
    const ROUNDS: usize = 8;
    std::thread::scope(|scope| {
        for (name, dir) in [("a", &a), ("b", &b)] {
            let env = &env;
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    env.tpa(dir)
                        .args(["debug", "intent", "--reason", &format!("INC-{round}: from {name}")])
                        .run()
                        .success();
                    // A lost race is retried inside; a sync may still give up under heavy contention,
                    // which the final rounds below settle.
                    let done = env.tpa(dir).args(["sync", "--json"]).run();
                    assert!(done.code == 0 || done.code == 2, "{}", done.stderr);
                }
            });
        }
    });
    for dir in [&a, &b, &a] {
        env.tpa(dir).args(["sync"]).run().success();
    }
    let in_a = records(&env, &a);
    let in_b = records(&env, &b);
    assert_eq!(in_a.len(), 2 * ROUNDS, "every record of both clones: {in_a:?}");
    assert_eq!(in_a, in_b, "both clones hold the same ledger");
    let local_tip = env.git(&a, &["rev-parse", "refs/notes/tpa"]);
    let remote_tip = env.git(&origin, &["rev-parse", "refs/notes/tpa"]);
    assert_eq!(local_tip, remote_tip, "origin has it too");
    // Merged at the level of records: every signature still verifies, nothing reads as removed.
    let verified = env.tpa(&a).args(["verify", "--json"]).run().code(0).json();
    assert_eq!(finding_kinds(&verified), Vec::<String>::new());
}

#[test]
fn a_record_written_offline_is_kept_and_pushed_by_the_next_sync() {
    let aws = AwsRepo::new();
    let origin = aws.env.path("work-origin.git");
    let first = aws.request().arg("--json").run().success();
    assert!(first.stderr.is_empty(), "online: pushed quietly: {}", first.stderr);
    let local = aws.env.git(&aws.dir, &["rev-parse", "refs/notes/tpa"]);
    assert_eq!(
        aws.env.git(&origin, &["rev-parse", "refs/notes/tpa"]),
        local,
        "sync = push: on origin at once"
    );

    aws.env.git(&aws.dir, &["remote", "set-url", "origin", "/nonexistent/origin.git"]);
    let offline = aws.request().arg("--json").run().success();
    assert!(offline.stderr.contains("not pushed to origin"), "{}", offline.stderr);
    let grant = offline.json()["grant_id"].as_str().unwrap().to_owned();
    assert_ne!(
        aws.env.git(&origin, &["rev-parse", "refs/notes/tpa"]),
        aws.env.git(&aws.dir, &["rev-parse", "refs/notes/tpa"])
    );
    aws.tpa().args(["sync"]).run().code(2);

    aws.env.git(&aws.dir, &["remote", "set-url", "origin", origin.to_str().unwrap()]);
    let synced = aws.tpa().args(["sync", "--json"]).run().success().json();
    assert_eq!(synced[0]["remote"], "origin");
    assert_eq!(synced[0]["pushed"], true);
    let on_origin = aws.env.git(&origin, &["log", "--format=%H", "-1", "refs/notes/tpa"]);
    assert_eq!(on_origin, aws.env.git(&aws.dir, &["rev-parse", "refs/notes/tpa"]));
    let pushed_notes = aws.env.git(&origin, &["notes", "--ref=tpa", "list"]);
    let head = aws.env.git(&aws.dir, &["rev-parse", "HEAD"]);
    assert!(pushed_notes.contains(&head));
    let note = aws.env.git(&origin, &["notes", "--ref=tpa", "show", &head]);
    assert!(note.contains(&grant), "the offline grant's records reached origin");
}

#[test]
fn who_lists_everyones_active_grants_after_a_sync() {
    let aws = AwsRepo::new();
    let grant = aws.request().arg("--json").run().success().json()["grant_id"].as_str().unwrap().to_owned();
    // A teammate's clone sees the grant once it has synced.
    let origin = aws.env.path("work-origin.git");
    let mate = aws.env.path("teammate");
    aws.env.git(&aws.dir, &["clone", "-q", origin.to_str().unwrap(), mate.to_str().unwrap()]);
    aws.env.git(&mate, &["config", "user.email", "bob@example.com"]);
    let before = aws.env.tpa(&mate).args(["who", "--json"]).run().success().json();
    assert_eq!(before.as_array().unwrap().len(), 0);
    aws.env.tpa(&mate).args(["sync"]).run().success();
    let after = aws.env.tpa(&mate).args(["who", "--json"]).run().success().json();
    assert_eq!(after[0]["grant_id"], grant.as_str());
    assert_eq!(after[0]["principal"], EMAIL);
    assert_eq!(after[0]["access"], "prod-readonly");
    let table = aws.env.tpa(&mate).arg("who").run().success().stdout;
    assert!(
        table.contains(EMAIL) && table.contains("hotfix/INC-4211") && table.contains("INC-4211"),
        "{table}"
    );
}

#[test]
fn a_remote_that_dropped_a_record_or_lost_its_ledger_takes_nothing_from_this_clone() {
    let env = TestEnv::new();
    let (a, b, origin) = two_clones(&env);
    env.tpa(&a).args(["debug", "intent", "--reason", "INC-1: first"]).run().success();
    env.tpa(&a).args(["debug", "intent", "--reason", "INC-2: second"]).run().success();
    env.tpa(&a).args(["sync"]).run().success();
    let all = records(&env, &a);
    assert_eq!(all.len(), 2);

    // b rewrites the note without one record, as a child of the tip, and pushes it: a descendant.
    env.tpa(&b).args(["sync"]).run().success();
    let head = env.git(&b, &["rev-parse", "HEAD"]);
    let note = env.git(&b, &["notes", "--ref=tpa", "show", &head]);
    let first_line = note.lines().next().unwrap().to_owned();
    let shorter = env.path("shorter-note");
    std::fs::write(&shorter, format!("{first_line}\n")).unwrap();
    env.git(&b, &["notes", "--ref=tpa", "add", "-f", "-F", shorter.to_str().unwrap(), &head]);
    env.git(&b, &["push", "-q", "origin", "refs/notes/tpa"]);

    env.tpa(&a).args(["sync"]).run().success();
    assert_eq!(records(&env, &a), all, "a's records survive a descendant that dropped one");
    assert_eq!(
        env.git(&origin, &["rev-parse", "refs/notes/tpa"]),
        env.git(&a, &["rev-parse", "refs/notes/tpa"]),
        "and the union went back to origin"
    );

    // The ledger deleted on the server: the next sync puts it back.
    env.git(&origin, &["update-ref", "-d", "refs/notes/tpa"]);
    let synced = env.tpa(&a).args(["sync", "--json"]).run().success().json();
    assert_eq!(synced[0]["pushed"], true);
    assert_eq!(
        env.git(&origin, &["rev-parse", "refs/notes/tpa"]),
        env.git(&a, &["rev-parse", "refs/notes/tpa"])
    );
}

#[test]
fn a_request_pushes_without_fetching_unless_another_clone_pushed_first() {
    let aws = AwsRepo::new();
    let origin = aws.env.path("work-origin.git");
    aws.request().arg("--json").run().success();
    let git_commands = |trace: &Path| -> Vec<String> {
        std::fs::read_to_string(trace)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once("trace: built-in: git ").map(|(_, c)| c.to_owned()))
            .collect()
    };

    // Nobody else pushed since this clone's last push: the lease holds, so a push is enough.
    let trace = aws.env.path("trace-alone");
    let alone = aws.request().arg("--json").env("GIT_TRACE", &trace).run().success();
    assert!(alone.stderr.is_empty(), "{}", alone.stderr);
    let commands = git_commands(&trace);
    assert!(commands.iter().any(|c| c.starts_with("push")), "{commands:?}");
    assert!(!commands.iter().any(|c| c.starts_with("fetch")), "no fetch: {commands:?}");
    assert_eq!(aws.env.git(&origin, &["rev-parse", "refs/notes/tpa"]), aws.notes_tip().unwrap());

    // A teammate pushed a record in between: the lease is lost, and the round fetches, merges and
    // pushes, so that origin and this clone end up with both clones' records.
    let bob = aws.teammate("bob", "bob@example.com");
    aws.env.tpa(&bob).args(["debug", "intent", "--reason", "INC-7: from bob"]).run().success();
    aws.env.tpa(&bob).args(["sync"]).run().success();
    // Only main (bob's signing key is on it): a plain fetch would bring the ledger too
    // (`tpa init` adds its refspec), and a clone that knows the remote moved fetches first.
    aws.env.git(&aws.dir, &["fetch", "-q", "origin", "main:refs/remotes/origin/main"]);
    let trace = aws.env.path("trace-raced");
    let raced = aws.request().arg("--json").env("GIT_TRACE", &trace).run().success();
    assert!(raced.stderr.is_empty(), "{}", raced.stderr);
    let commands = git_commands(&trace);
    assert_eq!(commands.iter().filter(|c| c.starts_with("push")).count(), 2, "{commands:?}");
    assert!(commands.iter().any(|c| c.starts_with("fetch")), "{commands:?}");
    let tip = aws.notes_tip().unwrap();
    assert_eq!(aws.env.git(&origin, &["rev-parse", "refs/notes/tpa"]), tip, "origin has the merge");
    let ours = records(&aws.env, &aws.dir);
    let theirs = records(&aws.env, &bob);
    assert!(ours.iter().any(|(_, kind)| kind == "intent") && ours.len() > theirs.len(), "{ours:?}");
    aws.env.tpa(&bob).args(["sync"]).run().success();
    assert_eq!(records(&aws.env, &bob), ours, "bob's clone converges on the same ledger");
    let verified = aws.tpa().args(["verify", "--json"]).run().code(0).json();
    assert_eq!(finding_kinds(&verified), Vec::<String>::new());
}

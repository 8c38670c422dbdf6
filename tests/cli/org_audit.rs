//! `tpa audit --repos`: three repositories served as partial-clone remotes (two healthy, one with a
//! dangling grant and a tampered record) and two that cannot be reached, in one report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::grants::{End, grant, tamper, trusted_with_key};
use crate::common::ocsf::schema;
use crate::common::*;

/// A working clone of a new bare origin that serves partial clones (as GitHub and GitLab do).
fn served(env: &TestEnv, name: &str) -> (PathBuf, PathBuf) {
    let (dir, origin) = env.repo_with_origin(name);
    for key in ["uploadpack.allowFilter", "uploadpack.allowAnySHA1InWant"] {
        env.git(&origin, &["config", key, "true"]);
    }
    trusted_with_key(env, &dir, name, "hotfix/one");
    // Source files that the audit never needs: a partial copy leaves their blobs out.
    std::fs::write(dir.join("big.txt"), "x".repeat(100_000)).unwrap();
    env.git(&dir, &["add", "big.txt"]);
    env.git(&dir, &["commit", "-q", "-m", "work"]);
    (dir, origin)
}

fn push_all(env: &TestEnv, dir: &Path) {
    env.git(dir, &["push", "-q", "-f", "origin", "--all"]);
    env.git(dir, &["push", "-q", "-f", "origin", "refs/notes/tpa"]);
}

/// (kind, grant id or "-") of a repository's findings, sorted.
fn kinds(repo: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = repo["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["kind"].as_str().unwrap().to_owned(), f["grant_id"].as_str().unwrap_or("-").to_owned()))
        .collect();
    out.sort();
    out
}

fn pair(kind: &str, grant: &str) -> (String, String) {
    (kind.to_owned(), grant.to_owned())
}

#[test]
fn three_repositories_and_two_unreachable_in_one_report() {
    let env = TestEnv::headless();
    // Healthy: a grant revoked, and one active on an unmerged branch.
    let (first, first_origin) = served(&env, "payments");
    grant(&env, &first, "INC-10: refund stuck", End::Revoked);
    push_all(&env, &first);
    let (second, second_origin) = served(&env, "search");
    let active = grant(&env, &second, "INC-11: reindex", End::Active).0;
    push_all(&env, &second);
    // Broken: a grant whose branch was merged with the hooks off, and a record altered after
    // signing on another branch.
    let (third, third_origin) = served(&env, "billing");
    let dangling = grant(&env, &third, "INC-12: invoices", End::Active).0;
    env.git(&third, &["switch", "-q", "main"]);
    env.git(
        &third,
        &["-c", "core.hooksPath=/dev/null", "merge", "-q", "--no-ff", "-m", "merge", "hotfix/one"],
    );
    // Squash-merged: only the patches (blobs a partial copy must fetch) tell it is merged.
    env.git(&third, &["switch", "-q", "-c", "hotfix/squashed"]);
    std::fs::write(third.join("fix.txt"), "the fix\n").unwrap();
    env.git(&third, &["add", "fix.txt"]);
    env.git(&third, &["commit", "-q", "-m", "the fix"]);
    let squashed = grant(&env, &third, "INC-14: squashed", End::Active).0;
    env.git(&third, &["switch", "-q", "main"]);
    env.git(&third, &["-c", "core.hooksPath=/dev/null", "merge", "-q", "--squash", "hotfix/squashed"]);
    env.git(&third, &["-c", "core.hooksPath=/dev/null", "commit", "-q", "-m", "the fix (squashed)"]);
    env.git(&third, &["switch", "-q", "-c", "hotfix/two"]);
    env.git(&third, &["commit", "-q", "--allow-empty", "-m", "more work"]);
    let tampered = grant(&env, &third, "INC-13: tampered", End::Revoked).0;
    tamper(&env, &third, &env.git(&third, &["rev-parse", "HEAD"]), "revoke");
    push_all(&env, &third);

    let list = env.path("repos.txt");
    let unreachable_url = "https://deploy:s3cret-pat@127.0.0.1:9/nowhere.git";
    std::fs::write(
        &list,
        format!(
            "# the organisation's repositories\n{}\n\nfile://{}\n{}-origin.git\n{unreachable_url}\n/no/such/repo.git\n",
            first_origin.display(),
            second_origin.display(),
            // Relative to the list file.
            third_origin.file_stem().unwrap().to_str().unwrap().trim_end_matches("-origin"),
        ),
    )
    .unwrap();
    let cache = env.path("cache");
    let audit = |extra: &[&str]| {
        env.tpa(env.root.path())
            .args(["audit", "--offline", "--jobs", "3", "--repos"])
            .arg(&list)
            .arg("--cache")
            .arg(&cache)
            .args(extra)
            .run()
    };
    let out = audit(&["--json"]).code(1);
    let report = out.json();
    assert!(!out.stdout.contains("s3cret") && !out.stderr.contains("s3cret"), "{}", out.stdout);
    let repos = report["repos"].as_array().unwrap();
    assert_eq!(repos.len(), 5, "{report:#}");
    let by_source: BTreeMap<&str, &Value> =
        repos.iter().map(|r| (r["source"].as_str().unwrap(), r)).collect();
    let at = |origin: &Path| -> &Value {
        by_source.iter().find(|(s, _)| s.ends_with(origin.to_str().unwrap())).map(|(_, r)| *r).unwrap()
    };
    assert_eq!(at(&first_origin)["status"], "audited");
    assert_eq!(kinds(at(&first_origin)), Vec::<(String, String)>::new());
    assert_eq!(kinds(at(&second_origin)), Vec::<(String, String)>::new());
    assert_eq!(at(&second_origin)["report"]["grants"][0]["grant_id"], active.as_str());
    let mut expected = vec![
        pair("dangling", &dangling),
        pair("dangling", &squashed),
        pair("bad_signature", &tampered),
        pair("record_removed", &tampered),
    ];
    expected.sort();
    assert_eq!(kinds(at(&third_origin)), expected, "{:#}", at(&third_origin));
    let unreachable: Vec<&Value> = repos.iter().filter(|r| r["status"] == "unreachable").collect();
    assert_eq!(unreachable.len(), 2);
    for repo in &unreachable {
        assert_eq!(kinds(repo), [pair("repo_unreachable", "-")]);
        assert_eq!(repo["findings"][0]["severity"], "error");
    }
    assert!(by_source.contains_key("https://127.0.0.1:9/nowhere.git"), "shown without credentials");
    let totals = &report["totals"];
    assert_eq!(
        (totals["repos"].as_u64(), totals["audited"].as_u64(), totals["unreachable"].as_u64()),
        (Some(5), Some(3), Some(2))
    );
    assert_eq!(totals["errors"], 6, "2 dangling, bad_signature, record_removed, 2 unreachable");
    let access = report["access"].as_array().unwrap();
    assert!(access.iter().all(|a| a["principal"] == EMAIL));
    assert_eq!(access.len(), 3, "alice in each of the three repositories: {access:#?}");

    // The copies are partial: the blobs the audit never reads were not fetched.
    let caches: Vec<PathBuf> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(caches.len(), 5, "one per source");
    let partial = caches.iter().any(|c| {
        let out = env.git_output(c, &["rev-list", "--objects", "--missing=print", "--remotes"]);
        String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with('?'))
    });
    assert!(partial, "source blobs are left out of the cache");

    // Again from the cache, in the other formats; every OCSF event valid.
    let table = audit(&[]).code(1);
    for origin in [&first_origin, &second_origin, &third_origin] {
        assert!(table.stdout.contains(origin.to_str().unwrap()), "{}", table.stdout);
    }
    assert!(table.stdout.contains("repo_unreachable") && table.stdout.contains("WHO HAD ACCESS WHERE"));
    let markdown = audit(&["--format", "markdown"]).code(1);
    assert!(markdown.stdout.contains("### Who had access where"), "{}", markdown.stdout);
    let html = audit(&["--format", "html"]).code(1);
    assert!(html.stdout.contains("Content-Security-Policy") && !html.stdout.contains("s3cret"));
    let ocsf = audit(&["--format", "ocsf"]).code(1);
    let events: Vec<Value> = ocsf.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for event in &events {
        let verdict = schema().check(event);
        assert!(verdict.errors.is_empty() && verdict.deprecated.is_empty(), "{verdict:?}\n{event:#}");
    }
    let unreachable_events =
        events.iter().filter(|e| e["compliance"]["control"] == "repo_unreachable").count();
    assert_eq!(unreachable_events, 2);
    assert!(
        events.iter().any(|e| e["class_uid"] == 3005 && e["metadata"]["correlation_uid"] == active.as_str())
    );

    // --repos-dir: every repository under a directory, nested ones included.
    let org = env.path("org");
    std::fs::create_dir_all(org.join("team")).unwrap();
    for (origin, to) in
        [(&first_origin, org.join("payments.git")), (&third_origin, org.join("team/billing.git"))]
    {
        env.git(
            env.root.path(),
            &["clone", "-q", "--mirror", origin.to_str().unwrap(), to.to_str().unwrap()],
        );
    }
    let dir_audit = env
        .tpa(env.root.path())
        .args(["audit", "--offline", "--json", "--repos-dir"])
        .arg(&org)
        .arg("--cache")
        .arg(&cache)
        .run()
        .code(1)
        .json();
    let repos = dir_audit["repos"].as_array().unwrap();
    assert_eq!(repos.len(), 2, "{dir_audit:#}");
    assert_eq!(kinds(&repos[0]), Vec::<(String, String)>::new(), "payments.git sorts first");
    assert_eq!(kinds(&repos[1]), expected);
    let _ = (&first, &second);
}

//! `tpa audit` over ledgers made by tpa itself and changed by real git operations and by hand in
//! moto's IAM; CloudTrail is a local stand-in replaying LookupEvents answers; the HTML report is
//! opened in headless Chromium.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::aws::AwsRepo;
use crate::common::aws::{denied, seed_policy};
use crate::common::cloudtrail::{FakeCloudTrail, assume_role_event};
use crate::common::moto::{moto, unique_name};
use crate::common::notes::{fanout_path, intent_json, note_lines, put_notes_file};

fn grant(aws: &AwsRepo, dir: &Path, role: &str) -> String {
    aws.env
        .tpa(dir)
        .args(["request", "--role", role, "--reason", "INC-4211: fix stuck invoices", "--json"])
        .run()
        .success()
        .json()["grant_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn origin(aws: &AwsRepo) -> PathBuf {
    aws.env.path("work-origin.git")
}

/// A fresh clone of origin with its ledger, as a CI job or an auditor has it.
fn auditor_clone(aws: &AwsRepo, name: &str) -> PathBuf {
    aws.env.git(&aws.dir, &["push", "-q", "-f", "origin", "refs/notes/tpa"]);
    let dir = aws.env.path(name);
    aws.env
        .git(&aws.dir, &["clone", "-q", "--no-local", origin(aws).to_str().unwrap(), dir.to_str().unwrap()]);
    aws.env.git(&dir, &["fetch", "-q", "origin", "refs/notes/tpa:refs/notes/tpa"]);
    dir
}

/// (kind, grant id or "-") of every finding, sorted.
fn findings(report: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = report["findings"]
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
fn a_clean_ledger_has_no_findings_in_any_format() {
    let aws = AwsRepo::new();
    let revoked = grant(&aws, &aws.dir, "prod-readonly");
    aws.tpa().args(["revoke", &revoked]).run().success();
    aws.env.git(&aws.dir, &["switch", "-q", "-c", "hotfix/second", "main"]);
    aws.env.git(&aws.dir, &["commit", "-q", "--allow-empty", "-m", "second fix"]);
    let active = grant(&aws, &aws.dir, "prod-readonly");

    let report = aws.tpa().args(["audit", "--format", "json"]).run().code(0).json();
    assert_eq!(findings(&report), Vec::<(String, String)>::new(), "{report:#}");
    assert_eq!(report["schema"], 1);
    let grants = report["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 2);
    let by_id = |id: &str| grants.iter().find(|g| g["grant_id"] == id).unwrap().clone();
    assert_eq!(by_id(&revoked)["state"], "revoked");
    assert_eq!(by_id(&revoked)["ended_by"], "manual");
    assert_eq!(by_id(&active)["state"], "active");
    assert_eq!(by_id(&active)["reason"], "INC-4211: fix stuck invoices");
    assert!(report["checks"].as_array().unwrap().iter().any(|c| c["name"] == "iam" && c["status"] == "ran"));

    let table = aws.tpa().arg("audit").run().code(0);
    assert!(table.stdout.contains("ok: no findings"), "{}", table.stdout);
    assert!(!table.stdout.contains('\u{1b}'), "no colour when stdout is not a terminal");
    let markdown = aws.tpa().args(["audit", "--format", "markdown"]).run().code(0);
    assert!(markdown.stdout.contains("| grant | state | who |"), "{}", markdown.stdout);

    // Offline: the same ledger, the AWS checks said to be skipped, still clean.
    let offline = aws.tpa().args(["audit", "--json", "--offline"]).run().code(0).json();
    assert_eq!(findings(&offline), Vec::<(String, String)>::new());
    assert!(
        offline["checks"].as_array().unwrap().iter().any(|c| c["name"] == "aws" && c["status"] == "skipped")
    );
}

#[test]
fn a_seeded_ledger_yields_exactly_one_finding_of_each_kind() {
    let other_role = unique_name("tpa-audit-other");
    let other_arn = moto().create_role(&other_role);
    let extra = format!("[roles.other]\narn = \"{other_arn}\"\nregion = \"us-east-1\"\nmax_ttl = \"1h\"\n");
    let aws = AwsRepo::with_policy_parts("", &extra);
    let env = &aws.env;
    let dir = &aws.dir;
    // This clone's hooks are off (as when someone removed them): nothing revokes or re-asserts
    // behind the test's back, so what the seeding breaks stays broken.
    env.git(dir, &["config", "core.hooksPath", "/dev/null"]);
    let push = |branch: &str| env.git(dir, &["push", "-q", "-u", "origin", branch]);
    let fix = |branch: &str| {
        env.git(dir, &["switch", "-q", "-c", branch, "main"]);
        env.git(dir, &["commit", "-q", "--allow-empty", "-m", &format!("work on {branch}")]);
        push(branch);
    };

    // A grant on main, taken while an old policy protected only a release branch, then revoked.
    let strict = std::fs::read_to_string(dir.join(".tpa/policy.toml")).unwrap();
    env.git(dir, &["switch", "-q", "main"]);
    let permissive = format!(
        "protected_branches = [\"release\"]\nmin_reason_length = 10\n{}",
        strict.split_once("[roles.").map(|(_, r)| format!("[roles.{r}")).unwrap()
    );
    std::fs::write(dir.join(".tpa/policy.toml"), permissive).unwrap();
    env.git(dir, &["commit", "-q", "-am", "policy: allow grants anywhere (a mistake)"]);
    env.git(dir, &["push", "-q", "origin", "main"]);
    let on_main = grant(&aws, dir, "prod-readonly");
    aws.tpa().args(["revoke", &on_main]).run().success();
    std::fs::write(dir.join(".tpa/policy.toml"), &strict).unwrap();
    env.git(dir, &["commit", "-q", "-am", "policy: protect main again"]);
    env.git(dir, &["push", "-q", "origin", "main"]);

    // Merged with the hooks switched off: still active.
    fix("hotfix/merged");
    let dangling = grant(&aws, dir, "prod-readonly");
    env.git(dir, &["switch", "-q", "main"]);
    env.git(
        dir,
        &["-c", "core.hooksPath=/dev/null", "merge", "-q", "--no-ff", "-m", "merge", "hotfix/merged"],
    );
    env.git(dir, &["push", "-q", "origin", "main"]);

    // Revoked, then its deny entry removed from IAM by hand.
    fix("hotfix/undenied");
    let undenied = grant(&aws, dir, "prod-readonly");
    aws.tpa().args(["revoke", &undenied]).run().success();
    let mut sessions: BTreeSet<String> = denied(&aws.role_name);
    assert!(sessions.remove(&format!("tpa-{undenied}")));
    seed_policy(&aws.role_name, &tpa::provider::aws_iam::document(&sessions));

    // Its branch force-pushed to other work: the grant's commit is not in a fresh clone.
    fix("hotfix/rewritten");
    let rewritten = grant(&aws, dir, "prod-readonly");
    env.git(dir, &["commit", "-q", "--amend", "--allow-empty", "-m", "other work"]);
    env.git(dir, &["push", "-q", "-f", "origin", "hotfix/rewritten"]);

    // A role deleted in IAM under an active grant.
    fix("hotfix/gone-role");
    let role_gone = grant(&aws, dir, "other");
    let (status, body) =
        moto().call("iam", &[("Action", "DeleteRole"), ("Version", "2010-05-08"), ("RoleName", &other_role)]);
    assert_eq!(status, 200, "{body}");

    // A grant record altered in the note after it was signed.
    fix("hotfix/tampered");
    let tampered = grant(&aws, dir, "prod-readonly");
    let head = env.git(dir, &["rev-parse", "HEAD"]);
    let note = env.git(dir, &["notes", "--ref=tpa", "show", &head]);
    let altered: Vec<String> = note
        .lines()
        .map(|l| {
            if l.contains("\\\"kind\\\":\\\"grant\\\"") {
                l.replace("fix stuck invoices", "fix stuck invoicez")
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert_ne!(altered.join("\n"), note, "the grant record was found and changed");
    let altered_file = env.path("altered-note");
    std::fs::write(&altered_file, altered.join("\n") + "\n").unwrap();
    env.git(dir, &["notes", "--ref=tpa", "add", "-f", "-F", altered_file.to_str().unwrap(), &head]);

    // tpa stopped between intent and outcome.
    fix("hotfix/interrupted");
    let interrupted =
        aws.tpa().args(["debug", "intent", "--reason", "INC-9: interrupted request"]).run().success().json()
            ["grant_id"]
            .as_str()
            .unwrap()
            .to_owned();

    // The auditor's clone, ten minutes later (intents older than five minutes count as interrupted).
    let clone = auditor_clone(&aws, "auditor");
    let later = (chrono::Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();
    let report = env.tpa(&clone).args(["audit", "--json"]).env("TPA_TEST_NOW", &later).run().code(1).json();
    let mut expected = vec![
        pair("protected_branch", &on_main),
        pair("dangling", &dangling),
        pair("revocation_not_effective", &undenied),
        pair("commit_missing", &rewritten),
        pair("role_missing", &role_gone),
        pair("bad_signature", &tampered),
        pair("record_removed", &tampered),
        // With its grant record forged away, the tampered grant reads as an interrupted request too.
        pair("intent_without_outcome", &tampered),
        pair("intent_without_outcome", &interrupted),
    ];
    expected.sort();
    assert_eq!(findings(&report), expected, "{report:#}");
    let severity = |kind: &str| {
        report["findings"].as_array().unwrap().iter().find(|f| f["kind"] == kind).unwrap()["severity"].clone()
    };
    assert_eq!(severity("dangling"), "error");
    assert_eq!(severity("protected_branch"), "warning");
    assert_eq!(severity("commit_missing"), "warning");

    // --fail-on: warnings alone do not fail by default, and do with --fail-on warning.
    let period = ["--from", "2000-01-01", "--to", "2000-01-02"];
    env.tpa(&clone).args(["audit", "--offline"]).args(period).run().code(1); // integrity still counts
    assert_eq!(
        findings(&env.tpa(&clone).args(["audit", "--json", "--offline"]).args(period).run().code(1).json())
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["bad_signature", "record_removed"],
        "outside the period only the ledger's own integrity is reported"
    );
}

#[test]
fn policy_warnings_fail_only_with_fail_on_warning() {
    let aws = AwsRepo::new();
    let dir = &aws.dir;
    let strict = std::fs::read_to_string(dir.join(".tpa/policy.toml")).unwrap();
    aws.env.git(dir, &["switch", "-q", "main"]);
    let permissive = format!(
        "protected_branches = [\"release\"]\nmin_reason_length = 10\n{}",
        strict.split_once("[roles.").map(|(_, r)| format!("[roles.{r}")).unwrap()
    );
    std::fs::write(dir.join(".tpa/policy.toml"), permissive).unwrap();
    aws.env.git(dir, &["commit", "-q", "-am", "policy: allow grants anywhere"]);
    aws.env.git(dir, &["push", "-q", "origin", "main"]);
    let id = grant(&aws, dir, "prod-readonly");
    aws.tpa().args(["revoke", &id]).run().success();
    std::fs::write(dir.join(".tpa/policy.toml"), &strict).unwrap();
    aws.env.git(dir, &["commit", "-q", "-am", "policy: protect main again"]);
    aws.env.git(dir, &["push", "-q", "origin", "main"]);

    let report = aws.tpa().args(["audit", "--json"]).run().code(0).json();
    assert_eq!(findings(&report), vec![pair("protected_branch", &id)]);
    aws.tpa().args(["audit", "--fail-on", "warning"]).run().code(1);
    aws.tpa().args(["audit", "--since", "7x"]).run().code(2);
}

#[test]
fn cloudtrail_sessions_without_a_record_are_errors_and_the_lookup_is_signed() {
    let aws = AwsRepo::new();
    let recorded = grant(&aws, &aws.dir, "prod-readonly");
    let now = chrono::Utc::now().timestamp();
    let unrelated_role = "arn:aws:iam::123456789012:role/not-managed-by-tpa";
    let trail = FakeCloudTrail::start(vec![
        vec![
            assume_role_event(
                "ev-1",
                now - 60,
                "arn:aws:iam::123456789012:user/alice",
                &aws.role_arn,
                &format!("tpa-{recorded}"),
            ),
            assume_role_event(
                "ev-2",
                now - 30,
                "arn:aws:iam::123456789012:user/mallory",
                &aws.role_arn,
                "mallory-direct",
            ),
        ],
        vec![assume_role_event(
            "ev-3",
            now - 20,
            "arn:aws:iam::123456789012:user/bob",
            unrelated_role,
            "bob",
        )],
    ]);
    let report = aws
        .tpa()
        .args(["audit", "--json", "--cloudtrail", "--since", "1d"])
        .env("AWS_ENDPOINT_URL_CLOUDTRAIL", trail.endpoint())
        .run()
        .code(1)
        .json();
    assert_eq!(findings(&report), vec![pair("unrecorded_session", "-")], "{report:#}");
    let finding = &report["findings"][0];
    assert_eq!(finding["principal"], "arn:aws:iam::123456789012:user/mallory");
    assert!(finding["message"].as_str().unwrap().contains("mallory-direct"));
    assert!(finding["message"].as_str().unwrap().contains("203.0.113.9"));

    let received = trail.received();
    assert_eq!(received.len(), 2, "both pages were read");
    let first = &received[0];
    assert_eq!(first.header("x-amz-target"), Some("CloudTrail_20131101.LookupEvents"));
    let auth = first.header("authorization").unwrap_or_default();
    assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIABASECREDENTIALS0/"), "{auth}");
    assert!(auth.contains("/cloudtrail/aws4_request"), "{auth}");
    assert_eq!(first.body["LookupAttributes"][0]["AttributeKey"], "EventName");
    assert_eq!(first.body["LookupAttributes"][0]["AttributeValue"], "AssumeRole");
    let start = first.body["StartTime"].as_f64().unwrap() as i64;
    assert!((start - (now - 86_400)).abs() < 120, "the period's start was asked for: {start}");
    assert_eq!(received[1].body["NextToken"], "page-1");
}

/// The payload of `kind` record of grant `id` on `commit`'s note, as JSON.
fn payload(aws: &AwsRepo, commit: &str, kind: &str, id: &str) -> Value {
    note_lines(&aws.env, &aws.dir, commit)
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .map(|line| serde_json::from_str::<Value>(line["payload"].as_str().unwrap()).unwrap())
        .find(|payload| payload["kind"] == kind && payload["grant_id"] == id)
        .unwrap_or_else(|| panic!("no {kind} record of {id} on {commit}"))
}

/// A revoke record (manual, done) for the grant whose grant record is `granted`, naming `commit`.
fn revocation(granted: &Value, commit: &str) -> String {
    let mut revoke = granted.clone();
    revoke["kind"] = "revoke".into();
    revoke["trigger"] = "manual".into();
    revoke["result"] = "done".into();
    revoke["commit"] = commit.into();
    revoke["issued_at"] = chrono::Utc::now().to_rfc3339().into();
    revoke.to_string()
}

#[test]
fn the_audit_reads_records_note_by_note_and_still_sees_each_grant_whole() {
    let aws = AwsRepo::new();
    let env = &aws.env;
    // No hook starts a sweep behind the test's back: it sweeps once, below.
    env.git(&aws.dir, &["config", "core.hooksPath", "/dev/null"]);
    let first = grant(&aws, &aws.dir, "prod-readonly");
    aws.tpa().args(["revoke", &first]).run().success();
    let first_commit = aws.head();
    env.git(&aws.dir, &["switch", "-q", "-c", "hotfix/second", "main"]);
    env.git(&aws.dir, &["commit", "-q", "--allow-empty", "-m", "second fix"]);
    let second = grant(&aws, &aws.dir, "prod-readonly");
    // tpa writes every record of a grant to its commit's note; hand-made or rewritten ledgers can
    // spread them. The second grant's revocation, signed by a trusted key, names the first
    // grant's commit and is stored there.
    let granted = payload(&aws, &aws.head(), "grant", &second);
    aws.tpa().args(["debug", "append"]).stdin(revocation(&granted, &first_commit)).run().success();
    // The third grant's revocation is on its own commit, but in a second note of that commit
    // under another fan-out (git reads both).
    env.git(&aws.dir, &["commit", "-q", "--allow-empty", "-m", "third fix"]);
    let third = grant(&aws, &aws.dir, "prod-readonly");
    let third_commit = aws.head();
    let granted = payload(&aws, &third_commit, "grant", &third);
    aws.tpa().args(["debug", "append"]).stdin(revocation(&granted, &third_commit)).run().success();
    let lines = note_lines(env, &aws.dir, &third_commit);
    assert_eq!(lines.len(), 3, "intent, grant, revoke");
    put_notes_file(env, &aws.dir, &fanout_path(&third_commit), (lines[..2].join("\n") + "\n").as_bytes());
    let other_fanout = format!("{}/{}", &third_commit[..2], &third_commit[2..]);
    put_notes_file(env, &aws.dir, &other_fanout, (lines[2].clone() + "\n").as_bytes());
    // A fourth grant's intent and grant records signed with a key nobody trusts: one finding
    // each, which the audit lists newest record first, as `tpa verify` does.
    env.git(&aws.dir, &["commit", "-q", "--allow-empty", "-m", "fourth fix"]);
    let rogue = env.ssh_key("rogue");
    let fourth = "01JWKZ8X9A0000000000000004";
    let now = chrono::Utc::now();
    let append = |record: &Value| {
        aws.tpa()
            .args(["debug", "append"])
            .env("TPA_SIGNING_KEY", &rogue)
            .stdin(record.to_string())
            .run()
            .success()
            .json()
    };
    let mut intent = intent_json(&aws.head(), fourth, &now.to_rfc3339());
    intent["branch"] = "refs/heads/hotfix/second".into();
    let mut granted = intent.clone();
    granted["kind"] = "grant".into();
    granted["intent_sha256"] = append(&intent)["payload_sha256"].clone();
    granted["expires_at"] = (now + chrono::Duration::minutes(30)).to_rfc3339().into();
    granted["credential_fingerprint"] = "sha256:0011223344556677".into();
    append(&granted);
    // The sweep puts back records removed from the ledger: a line moved to another fan-out of its
    // commit's note is not one of them (it used to be appended again, a duplicate).
    aws.tpa().arg("sweep").run().success();

    // One note per batch: the second and third grants' records reach the audit in two batches.
    let audit = |per_batch: Option<&str>| {
        let mut run = aws.tpa().args(["audit", "--json", "--offline"]);
        if let Some(n) = per_batch {
            run = run.env("TPA_TEST_NOTES_PER_BATCH", n);
        }
        let mut report = run.run().code(1).json();
        report["generated_at"] = Value::Null;
        report["to"] = Value::Null;
        report
    };
    let streamed = audit(Some("1"));
    let states: Vec<(String, String)> = streamed["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["grant_id"].as_str().unwrap().to_owned(), g["state"].as_str().unwrap().to_owned()))
        .collect();
    // Newest first, as `tpa log` lists them, each in the state its records say.
    assert_eq!(
        states,
        [pair(fourth, "active"), pair(&third, "revoked"), pair(&second, "revoked"), pair(&first, "revoked")],
        "{streamed:#}"
    );
    assert_eq!(streamed["records"], 11, "4 intents, 4 grants, 3 revokes");
    for id in [&second, &third] {
        let shown = aws.tpa().args(["show", id, "--json"]).run().success().json();
        assert_eq!(shown["state"], "revoked", "{shown:#}");
    }
    let unknown: Vec<&str> = streamed["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "unknown_signer")
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert_eq!(unknown.len(), 2, "{unknown:?}");
    assert!(
        unknown[0].ends_with("line 2)") && unknown[1].ends_with("line 1)"),
        "grant, then intent: {unknown:?}"
    );
    assert_eq!(streamed, audit(None), "batches of one note and of many give the same report");
}

#[test]
fn the_html_report_is_self_contained_escapes_hostile_text_and_renders_in_chromium() {
    let aws = AwsRepo::new();
    let hostile = "INC-1: <script>alert(1)</script> \u{202e}evil";
    aws.tpa().args(["request", "--role", "prod-readonly", "--reason", hostile]).run().success();
    let report_path = aws.env.path("report.html");
    aws.tpa().args(["audit", "--format", "html", "-o"]).arg(&report_path).run().code(0);
    let html = std::fs::read_to_string(&report_path).unwrap();
    assert!(html.contains("Content-Security-Policy"));
    assert!(!html.contains("<script>"), "hostile text is escaped");
    assert!(html.contains("&lt;script&gt;"));
    assert!(!html.contains('\u{202e}'), "bidi overrides are shown escaped");
    assert!(!html.contains("http://") && !html.contains("https://"), "nothing external is loaded");

    let shot = aws.env.path("report.png");
    let profile = aws.env.path("chromium-profile");
    let out = aws
        .env
        .command(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", report_path.display()))
        .output()
        .expect("run chromium (Debian package `chromium`, installed by .ci/run)");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let (width, height, pixels) = decode_png(&shot);
    assert_eq!((width, height), (1280, 900));
    let non_white = pixels.iter().filter(|p| p[0] < 240 || p[1] < 240 || p[2] < 240).count();
    let colours: BTreeSet<[u8; 3]> = pixels.iter().copied().collect();
    assert!(non_white > pixels.len() / 100, "the page shows something: {non_white} dark pixels");
    assert!(colours.len() > 20, "text and bars, not a flat page: {} colours", colours.len());
}

fn chromium() -> &'static str {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).exists() {
            return candidate;
        }
    }
    panic!("chromium is missing: apt-get install chromium (see .ci/run)");
}

fn decode_png(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buffer).unwrap();
    let channels = info.color_type.samples();
    let pixels = buffer[..info.buffer_size()].chunks(channels).map(|p| [p[0], p[1], p[2]]).collect();
    (info.width, info.height, pixels)
}

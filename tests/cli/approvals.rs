//! Approvals (issue 15): a second person signs before production access. Two or three clones of one
//! bare remote, each with its own key: the requester (alice), an approver (bob), and someone who
//! may sign records but not approve (carol). Real git, ssh-keygen, moto and keyring.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::aws::{AwsRepo, REASON, denied};
use crate::common::webhook::Webhook;
use crate::common::*;

const APPROVAL_RULES: &str = "approvals = 1\napprovers = [\"@sre\"]\napproval_window = \"30m\"\n\
    break_glass = true\nreview_within = \"24h\"\n";
const GROUPS: &str = "[groups]\nsre = [\"bob@example.com\"]\n";

struct Team {
    aws: AwsRepo,
    bob: PathBuf,
    carol: PathBuf,
}

impl Team {
    fn new() -> Self {
        Self::with(GROUPS, APPROVAL_RULES)
    }

    /// alice's clone (the requester) from AwsRepo, then bob's and carol's clones of the same
    /// origin, their keys committed to main and pushed (as review would), fetched by alice.
    fn with(top: &str, rules: &str) -> Self {
        let aws = AwsRepo::with_policy_parts(top, rules);
        let clone = |name: &str, email: &str| aws.teammate(name, email);
        let bob = clone("bob", "bob@example.com");
        aws.env.git(&bob, &["pull", "-q", "--rebase", "origin", "main"]);
        let carol = clone("carol", "carol@example.com");
        aws.env.git(&bob, &["pull", "-q", "--rebase", "origin", "main"]);
        aws.env.git(&aws.dir, &["fetch", "-q", "origin"]);
        aws.env.git(&aws.dir, &["push", "-q", "origin", "hotfix/INC-4211"]);
        Team { aws, bob, carol }
    }

    fn tpa_in(&self, dir: &std::path::Path) -> Run {
        self.aws.env.tpa(dir)
    }

    /// bob's view of what waits, after fetching.
    fn pending(&self) -> Vec<Value> {
        self.tpa_in(&self.bob)
            .args(["approvals", "--json"])
            .run()
            .success()
            .json()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits (bounded) until bob sees a pending request; returns its grant id.
    fn first_pending(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(p) = self.pending().first() {
                return p["grant_id"].as_str().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "the request never reached the approver");
            std::thread::sleep(Duration::from_millis(200)); // polling git, bounded by the deadline
        }
    }

    fn show(&self, id: &str) -> Value {
        self.aws.tpa().args(["show", id, "--json"]).run().success().json()
    }

    fn records(&self, id: &str, kind: &str) -> Vec<Value> {
        self.show(id)["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["record"].clone())
            .filter(|r| r["kind"] == kind)
            .collect()
    }

    fn audit_kinds(&self, now: Option<&str>) -> Vec<String> {
        let mut run = self.aws.tpa().args(["audit", "--offline", "--json"]);
        if let Some(now) = now {
            run = run.env("TPA_TEST_NOW", now);
        }
        let report = run.run().json();
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["kind"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn request(team: &Team) -> Run {
    team.aws.request().args(["--poll", "1s"])
}

#[test]
fn a_waiting_request_is_minted_once_another_approver_signs() {
    let team = Team::new();
    let waiting = request(&team).arg("--json").spawn();
    let id = team.first_pending();
    let pending = &team.pending()[0];
    assert_eq!(pending["principal"], "alice@example.com");
    assert_eq!(pending["what"], "role prod-readonly");
    assert_eq!(pending["pushed"], true);
    assert!(pending["commits"][0].as_str().unwrap().ends_with("fix stuck invoices"), "{pending}");

    team.tpa_in(&team.bob).args(["approve", &id, "--reason", "looked at the diff"]).run().success();
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let granted: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(granted["grant_id"], id.as_str());

    // The grant names the approval it relied on; every record verifies, with ssh-keygen too.
    let approval = team.records(&id, "approval");
    assert_eq!(approval.len(), 1);
    assert_eq!(approval[0]["principal"]["email"], "bob@example.com");
    let grant = &team.records(&id, "grant")[0];
    let named = grant["approvals"].as_array().unwrap();
    assert_eq!(named.len(), 1);
    let request = &team.records(&id, "request")[0];
    assert_eq!(approval[0]["request_sha256"], grant["request_sha256"]);
    assert!(request["approve_by"].is_string());
    team.aws.tpa().arg("verify").run().success();
    let head = team.aws.head();
    let lines = crate::common::notes::note_lines(&team.aws.env, &team.aws.dir, &head);
    let approval_line = lines.iter().find(|l| l.contains("\\\"kind\\\":\\\"approval\\\"")).unwrap();
    assert_eq!(
        named[0],
        tpa::grant::sha256_hex(
            serde_json::from_str::<Value>(approval_line).unwrap()["payload"].as_str().unwrap().as_bytes()
        )
        .as_str()
    );
    assert!(ssh_keygen_verifies(&team, approval_line, "bob@example.com"));
    assert!(team.audit_kinds(None).is_empty(), "{:?}", team.audit_kinds(None));
    // The credentials work.
    team.aws.tpa().args(["exec", &id, "--", "true"]).run().success();
}

fn ssh_keygen_verifies(team: &Team, line: &str, principal: &str) -> bool {
    let parsed: Value = serde_json::from_str(line).unwrap();
    let sig = team.aws.env.path("approval.sig");
    std::fs::write(&sig, parsed["sig"].as_str().unwrap()).unwrap();
    // The signers as reviewed: the trust ref's file, not the branch's.
    let signers = team.aws.env.path("trusted_signers");
    let trusted = team.aws.env.git(&team.aws.dir, &["show", "origin/main:.tpa/allowed_signers"]);
    std::fs::write(&signers, trusted + "\n").unwrap();
    let mut child = team
        .aws
        .env
        .command("ssh-keygen")
        .current_dir(&team.aws.dir)
        .args(["-Y", "verify", "-f"])
        .arg(&signers)
        .args(["-I", principal, "-n", "tpa", "-s"])
        .arg(&sig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(parsed["payload"].as_str().unwrap().as_bytes()).unwrap();
    child.wait_with_output().unwrap().status.success()
}

#[test]
fn self_approval_and_non_approvers_are_refused_and_never_count() {
    let team = Team::new();
    let awaiting = request(&team).args(["--no-wait", "--json"]).run().success().json();
    assert_eq!(awaiting["state"], "awaiting_approval");
    let id = awaiting["grant_id"].as_str().unwrap().to_owned();
    let tip = team.aws.notes_tip();

    let out = team.aws.tpa().args(["approve", &id]).run().code(2);
    assert!(out.stderr.contains("no self-approval"), "{}", out.stderr);
    let out = team.tpa_in(&team.carol).args(["approve", &id]).run().code(2);
    assert!(
        out.stderr.contains("not an approver") && out.stderr.contains("bob@example.com"),
        "{}",
        out.stderr
    );
    assert_eq!(team.aws.notes_tip(), tip, "nothing was written");

    // carol writes an approval by hand (signed with her trusted key): it does not count.
    team.tpa_in(&team.carol).args(["sync"]).run();
    let request = team.records(&id, "request")[0].clone();
    let mut forged = request.clone();
    forged["kind"] = json!("approval");
    forged["principal"] = json!({"email": "carol@example.com", "user": "carol", "host": "h"});
    forged["decision"] = json!("approve");
    forged["request_sha256"] =
        team.records(&id, "request").first().map(|_| json!(team.aws.request_sha256(&id))).unwrap();
    forged.as_object_mut().unwrap().remove("approve_by");
    forged["issued_at"] = json!(chrono::Utc::now().to_rfc3339());
    team.tpa_in(&team.carol).args(["debug", "append"]).stdin(forged.to_string()).run().success();
    // And one for another request's sha256, by bob.
    let mut elsewhere = forged.clone();
    elsewhere["principal"] = json!({"email": "bob@example.com", "user": "bob", "host": "h"});
    elsewhere["request_sha256"] = json!("0".repeat(64));
    team.tpa_in(&team.bob).args(["debug", "append"]).stdin(elsewhere.to_string()).run().success();
    team.tpa_in(&team.carol).args(["sync"]).run();
    team.tpa_in(&team.bob).args(["sync"]).run();

    let still =
        team.aws.tpa().args(["request", "--resume", &id, "--no-wait", "--json"]).run().success().json();
    assert_eq!(still["state"], "awaiting_approval", "{still}");
    assert_eq!(still["approvals"], 0);
    let _ = denied;
}

#[test]
fn a_deny_ends_the_request_and_the_waiting_requester_hears_why() {
    let team = Team::new();
    let waiting = request(&team).spawn();
    let id = team.first_pending();
    team.tpa_in(&team.bob).args(["deny", &id, "--reason", "use the read-only role"]).run().success();
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("denied by bob@example.com: use the read-only role"), "{stderr}");
    assert!(team.records(&id, "intent").is_empty(), "nothing was minted");
    let out = team.tpa_in(&team.bob).args(["approve", &id]).run().code(2);
    assert!(out.stderr.contains("denied"), "{}", out.stderr);
}

#[test]
fn a_request_past_its_window_lapses() {
    let team = Team::new();
    let awaiting = request(&team).args(["--no-wait", "--json"]).run().success().json();
    let id = awaiting["grant_id"].as_str().unwrap().to_owned();
    let later = (chrono::Utc::now() + chrono::Duration::minutes(31)).to_rfc3339();
    let out = team
        .aws
        .tpa()
        .args(["request", "--resume", &id, "--no-wait"])
        .env("TPA_TEST_NOW", &later)
        .run()
        .code(2);
    assert!(out.stderr.contains("no quorum of approvals came within its window"), "{}", out.stderr);
    let out = team.tpa_in(&team.bob).args(["approve", &id]).env("TPA_TEST_NOW", &later).run().code(2);
    assert!(out.stderr.contains("lapsed"), "{}", out.stderr);
}

#[test]
fn break_glass_grants_at_once_tells_everyone_and_stays_a_finding_until_reviewed() {
    let webhook = Webhook::start([]);
    let notify = format!("\n[[notify]]\nurl = \"{}\"\nevents = [\"revoke\"]\n", webhook.url("/hook"));
    let team = Team::with(GROUPS, &format!("{APPROVAL_RULES}{notify}"));
    let granted = team.aws.request().args(["--break-glass", "--json"]).run().success().json();
    let id = granted["grant_id"].as_str().unwrap().to_owned();
    let event = webhook.requests().into_iter().map(|r| r.json()).find(|e| e["event"] == "break_glass");
    assert!(event.is_some(), "told of the break-glass grant although it subscribed to revoke only");
    assert_eq!(team.records(&id, "grant")[0]["break_glass"], true);
    team.aws.tpa().args(["exec", &id, "--", "true"]).run().success();

    assert!(team.audit_kinds(None).contains(&"break_glass_unreviewed".to_owned()));
    let report = team.aws.tpa().args(["audit", "--offline", "--json"]).run().code(0).json();
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "break_glass_unreviewed")
        .unwrap()
        .clone();
    assert_eq!(finding["severity"], "warning");
    let late = (chrono::Utc::now() + chrono::Duration::hours(25)).to_rfc3339();
    let report =
        team.aws.tpa().args(["audit", "--offline", "--json"]).env("TPA_TEST_NOW", &late).run().code(1).json();
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "break_glass_unreviewed")
        .unwrap()
        .clone();
    assert_eq!(finding["severity"], "error");

    team.aws.env.git(&team.aws.dir, &["push", "-q", "origin", "hotfix/INC-4211"]);
    team.tpa_in(&team.bob).args(["sync"]).run();
    let pending = team.pending();
    assert_eq!(pending[0]["break_glass"], true, "{pending:?}");
    // Still there for review a week on, the grant long expired, though `tpa status` wrote the grant
    // index after it ended and outside the sweep's week (approvers read through that index, which
    // keeps break-glass grants whatever their state).
    let week_on = (chrono::Utc::now() + chrono::Duration::days(8)).to_rfc3339();
    team.tpa_in(&team.bob).args(["status", "--all"]).env("TPA_TEST_NOW", &week_on).run().success();
    let listed =
        team.tpa_in(&team.bob).args(["approvals", "--json"]).env("TPA_TEST_NOW", &week_on).run().success();
    assert_eq!(listed.json()[0]["grant_id"], id.as_str(), "{}", listed.stdout);
    team.tpa_in(&team.bob).args(["approve", &id]).run().success();
    team.aws.tpa().arg("sync").run();
    assert_eq!(team.records(&id, "approval")[0]["decision"], "review");
    assert!(!team.audit_kinds(Some(&late)).contains(&"break_glass_unreviewed".to_owned()));
}

#[test]
fn break_glass_where_the_policy_does_not_allow_it_is_refused_with_nothing_written() {
    let team = Team::with(GROUPS, "approvals = 1\napprovers = [\"@sre\"]\n");
    let out = team.aws.request().arg("--break-glass").run().code(2);
    assert!(out.stderr.contains("does not allow break-glass"), "{}", out.stderr);
    assert!(team.aws.kinds().is_empty());
}

#[test]
fn a_grant_forged_without_approvals_is_an_audit_error() {
    let team = Team::new();
    let head = team.aws.head();
    let mut intent = crate::common::notes::intent_json(
        &head,
        "01JWKZ8X9A0000000000000009",
        &chrono::Utc::now().to_rfc3339(),
    );
    intent["branch"] = json!("refs/heads/hotfix/INC-4211");
    intent["provider"] = json!("aws-sts");
    intent["role"] = json!("prod-readonly");
    intent["target"] = json!(team.aws.role_arn);
    intent["principal"]["email"] = json!("alice@example.com");
    intent["policy_commit"] = json!(team.aws.env.git(&team.aws.dir, &["rev-parse", "origin/main"]));
    let sha = team.aws.tpa().args(["debug", "append"]).stdin(intent.to_string()).run().success().json()["payload_sha256"].clone();
    let mut grant = intent.clone();
    grant["kind"] = json!("grant");
    grant["intent_sha256"] = sha;
    grant["expires_at"] = json!((chrono::Utc::now() + chrono::Duration::minutes(30)).to_rfc3339());
    grant["credential_fingerprint"] = json!("sha256:0011223344556677");
    team.aws.tpa().args(["debug", "append"]).stdin(grant.to_string()).run().success();
    assert!(
        team.audit_kinds(None).contains(&"grant_without_approval".to_owned()),
        "{:?}",
        team.audit_kinds(None)
    );
}

#[test]
fn merging_the_branch_of_a_pending_request_cancels_it() {
    let team = Team::new();
    let awaiting = request(&team).args(["--no-wait", "--json"]).run().success().json();
    let id = awaiting["grant_id"].as_str().unwrap().to_owned();
    team.aws.env.git(&team.aws.dir, &["switch", "-q", "main"]);
    team.aws.env.git(&team.aws.dir, &["merge", "-q", "--no-ff", "-m", "merge", "hotfix/INC-4211"]);
    assert_eq!(team.show(&id)["state"], "cancelled");
    assert_eq!(team.records(&id, "revoke")[0]["trigger"], "merged");
    let out = team.aws.tpa().args(["request", "--resume", &id, "--no-wait"]).run().code(2);
    assert!(out.stderr.contains("cancelled"), "{}", out.stderr);
}

#[test]
fn hostile_reasons_and_branches_are_escaped_in_the_approvers_list() {
    let team = Team::new();
    team.aws.env.git(&team.aws.dir, &["switch", "-q", "-c", "hotfix/\u{202e}moob"]);
    team.aws.env.git(&team.aws.dir, &["commit", "-q", "--allow-empty", "-m", "\u{1b}[31mred"]);
    team.aws.env.git(&team.aws.dir, &["push", "-q", "origin", "HEAD"]);
    team.aws
        .tpa()
        .args([
            "request",
            "--role",
            "prod-readonly",
            "--no-wait",
            "--reason",
            "INC-1: \u{202e}gnikcah \u{1b}[31m",
        ])
        .run()
        .success();
    let out = team.tpa_in(&team.bob).arg("approvals").run().success();
    assert!(!out.stdout.contains('\u{1b}') && !out.stdout.contains('\u{202e}'), "{:?}", out.stdout);
    assert!(out.stdout.contains("\\u{202e}moob") && out.stdout.contains("\\u{1b}[31mred"), "{}", out.stdout);
    let _ = REASON;
}

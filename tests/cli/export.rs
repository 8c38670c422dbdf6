//! `tpa export` and `tpa audit --format ocsf`: OCSF events that validate against the OCSF 1.8.0
//! schema files themselves, a cursor that ships each record once across runs and crashes, and
//! HTTP collectors (Splunk HEC, Elasticsearch `_bulk`) with retries and no token in any output.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::grants::{End, grant, tamper, trusted_with_key};
use crate::common::ocsf::schema;
use crate::common::webhook::{Reply, Webhook};
use crate::common::*;

const TOKEN: &str = "hec-token-0f9e8d7c";
const URL_SECRET: &str = "url-secret-5a4b3c";

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// Every event valid for its class, with no deprecated attribute.
fn assert_valid(events: &[Value]) {
    assert!(!events.is_empty());
    for event in events {
        let verdict = schema().check(event);
        assert!(verdict.errors.is_empty(), "{:#?}\n{event:#}", verdict.errors);
        assert!(verdict.deprecated.is_empty(), "deprecated: {:?}", verdict.deprecated);
    }
}

fn uids(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["metadata"]["uid"].as_str().unwrap().to_owned()).collect()
}

/// A repository (no remote) with one grant of each ending on hotfix/one.
fn ledger(env: &TestEnv) -> (PathBuf, BTreeMap<&'static str, (String, Vec<String>)>) {
    let dir = env.repo("work");
    trusted_with_key(env, &dir, "work", "hotfix/one");
    let mut grants = BTreeMap::new();
    for (name, end) in [
        ("active", End::Active),
        ("revoked", End::Revoked),
        ("failed", End::Failed),
        ("stuck", End::Irrevocable),
    ] {
        let reason = format!("INC-7: {name} <b>\u{202e} & \"quotes\"");
        grants.insert(name, grant(env, &dir, &reason, end));
    }
    (dir, grants)
}

#[test]
fn the_validator_reads_the_schema_and_refuses_what_the_schema_refuses() {
    let schema = schema();
    assert_eq!(schema.version, "1.8.0");
    assert!(schema.has_class(3005) && schema.has_class(2003));
    let good: Value = serde_json::json!({
        "category_uid": 3, "class_uid": 3005, "activity_id": 1, "type_uid": 300501, "time": 1,
        "severity_id": 1, "metadata": {"version": "1.8.0", "product": {"name": "tpa"}},
        "user": {"uid": "a"}, "privileges": ["r"]
    });
    assert!(schema.check(&good).errors.is_empty(), "{:?}", schema.check(&good).errors);
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut event = good.clone();
        edit(&mut event);
        schema.check(&event).errors
    };
    assert!(!broken(&|e| e.as_object_mut().unwrap().remove("privileges").map(drop).unwrap()).is_empty());
    assert!(!broken(&|e| e["type_uid"] = 300502.into()).is_empty(), "type_uid follows activity_id");
    assert!(!broken(&|e| e["activity_id"] = 7.into()).is_empty(), "activity_id is an enum");
    assert!(!broken(&|e| e["user"] = serde_json::json!({"email_addr": "a"})).is_empty(), "email_t's pattern");
    assert!(
        !broken(&|e| e["user"] = serde_json::json!({"has_mfa": true})).is_empty(),
        "user needs a name/uid"
    );
    assert!(!broken(&|e| e["time"] = "yesterday".into()).is_empty(), "time is a timestamp");
    assert!(!broken(&|e| e["grant_id"] = "x".into()).is_empty(), "no attribute outside the class");
    assert!(!broken(&|e| e["severity"] = "High".into()).is_empty(), "severity is severity_id's caption");
    assert!(!broken(&|e| e["device"] = serde_json::json!({"hostname": "h"})).is_empty(), "a profile's");
    let old = |edit: &dyn Fn(&mut Value)| {
        let mut event = good.clone();
        edit(&mut event);
        schema.check(&event).deprecated
    };
    assert_eq!(old(&|e| e["resource"] = serde_json::json!({"uid": "x"})), ["resource"]);
}

#[test]
fn every_exported_event_validates_against_the_ocsf_schema() {
    let env = TestEnv::headless();
    let (dir, grants) = ledger(&env);
    let out = env.tpa(&dir).arg("export").run().success();
    assert!(out.stderr.contains("exported 10 event(s)"), "{}", out.stderr);
    let events = lines(&out.stdout);
    assert_eq!(events.len(), 10, "4 intents, 3 grants, 1 failed, 2 revokes: one per record");
    assert_valid(&events);

    // One event per record, its uid the record's payload sha256, in time order per grant.
    let mut expected: Vec<String> = grants.values().flat_map(|(_, shas)| shas.clone()).collect();
    expected.sort();
    let mut got = uids(&events);
    got.sort();
    assert_eq!(got, expected);
    let of = |grant: &str, kind: &str| {
        events
            .iter()
            .find(|e| e["metadata"]["correlation_uid"] == grant && e["metadata"]["event_code"] == kind)
            .unwrap_or_else(|| panic!("no {kind} event for {grant}"))
            .clone()
    };
    let revoked = &grants["revoked"].0;
    let granted = of(revoked, "grant");
    assert_eq!((granted["class_uid"].as_u64(), granted["activity_id"].as_u64()), (Some(3005), Some(1)));
    assert_eq!(granted["type_uid"], 300501);
    assert_eq!(granted["user"]["email_addr"], EMAIL);
    assert_eq!(granted["resources"][0]["uid"], "arn:aws:iam::123456789012:role/test");
    assert_eq!(granted["unmapped"]["tpa"]["branch"], "refs/heads/hotfix/one");
    assert_eq!(granted["unmapped"]["tpa"]["verified"], true);
    let fingerprint = granted["unmapped"]["tpa"]["signature"]["key_fingerprint"].as_str().unwrap();
    let keygen = env.git(&dir, &["config", "tpa.signingKey"]);
    let keygen =
        env.command("ssh-keygen").args(["-lf", keygen.trim_start_matches("file:")]).output().unwrap();
    assert!(String::from_utf8_lossy(&keygen.stdout).contains(fingerprint), "{fingerprint}");
    assert!(granted["message"].as_str().unwrap().contains("\u{202e}"), "JSON carries the text as it is");
    let revoke = of(revoked, "revoke");
    assert_eq!((revoke["activity_id"].as_u64(), revoke["status_id"].as_u64()), (Some(2), Some(1)));
    assert_eq!(of(revoked, "intent")["activity_id"], 99);
    let failed = of(&grants["failed"].0, "failed");
    assert_eq!((failed["activity_id"].as_u64(), failed["status_id"].as_u64()), (Some(1), Some(2)));
    assert!(failed["status_detail"].as_str().unwrap().contains("AccessDenied"));
    let stuck = of(&grants["stuck"].0, "revoke");
    assert_eq!((stuck["status_id"].as_u64(), stuck["severity_id"].as_u64()), (Some(2), Some(4)));

    // Without the signature checks: the same events, less `verified`.
    let fast = lines(&env.tpa(&dir).args(["export", "--no-verify"]).run().success().stdout);
    assert_valid(&fast);
    assert_eq!(uids(&fast), uids(&events));
    assert!(fast.iter().all(|e| e["unmapped"]["tpa"].get("verified").is_none()));
    assert!(fast.iter().all(|e| e["unmapped"]["tpa"]["signature"]["key_fingerprint"].is_string()));

    // A tampered record is shipped as it now reads, marked unverified; audit's findings are
    // Compliance Findings, valid too.
    tamper(&env, &dir, &env.git(&dir, &["rev-parse", "HEAD"]), "grant");
    let audit = env.tpa(&dir).args(["audit", "--offline", "--format", "ocsf"]).run().code(1);
    let events = lines(&audit.stdout);
    assert_valid(&events);
    let findings: Vec<&Value> = events.iter().filter(|e| e["class_uid"] == 2003).collect();
    let kinds: BTreeSet<&str> =
        findings.iter().map(|f| f["compliance"]["control"].as_str().unwrap()).collect();
    assert!(kinds.contains("bad_signature") && kinds.contains("revocation_stuck"), "{kinds:?}");
    assert!(events.iter().any(|e| e["class_uid"] == 3005 && e["unmapped"]["tpa"]["verified"] == false));
    let stuck_finding = findings.iter().find(|f| f["compliance"]["control"] == "revocation_stuck").unwrap();
    assert_eq!(stuck_finding["metadata"]["correlation_uid"], grants["stuck"].0.as_str());
    assert_eq!(stuck_finding["severity_id"], 4);
}

/// `tpa export --since CURSOR -o FILE` with `env` set.
fn export(env: &TestEnv, dir: &Path, cursor: &Path, file: &Path, extra: &[(&str, &str)]) -> Done {
    let mut run = env.tpa(dir).arg("export").arg("--since").arg(cursor).arg("-o").arg(file);
    for (k, v) in extra {
        run = run.env(k, v);
    }
    run.run()
}

#[test]
fn a_cursor_ships_each_record_once_and_a_crash_ships_again_never_skips() {
    let env = TestEnv::headless();
    let dir = env.repo("work");
    trusted_with_key(&env, &dir, "work", "hotfix/one");
    let cursor = env.path("tpa.cursor");
    let file = env.path("events.jsonl");
    let mut all: Vec<String> = grant(&env, &dir, "INC-1: first", End::Revoked).1;

    let first = export(&env, &dir, &cursor, &file, &[]).success();
    assert!(first.stdout.contains("exported 3 event(s)"), "{}", first.stdout);
    let tip_after_first = serde_json::from_str::<Value>(&std::fs::read_to_string(&cursor).unwrap()).unwrap();
    assert_eq!(tip_after_first["shipped"], 3);

    // Nothing new: nothing shipped.
    assert!(export(&env, &dir, &cursor, &file, &[]).success().stdout.contains("exported 0 event(s)"));

    // Only the new records, appended; the older ones are not shipped again.
    all.extend(grant(&env, &dir, "INC-2: second", End::Active).1);
    assert!(export(&env, &dir, &cursor, &file, &[]).success().stdout.contains("exported 2 event(s)"));
    assert_eq!(uids(&lines(&std::fs::read_to_string(&file).unwrap())), all, "each once, in order");

    // A crash after the events are written and before the cursor moves...
    let crashed = grant(&env, &dir, "INC-3: third", End::Failed).1;
    all.extend(crashed.clone());
    let cursor_before = std::fs::read_to_string(&cursor).unwrap();
    let died = export(&env, &dir, &cursor, &file, &[("TPA_TEST_CRASH_BEFORE_CURSOR", "1")]);
    assert_ne!(died.code, 0, "the test build aborts there");
    assert_eq!(std::fs::read_to_string(&cursor).unwrap(), cursor_before, "the cursor did not move");
    // ...ships those records again on the next run: at least once, never skipped.
    assert!(export(&env, &dir, &cursor, &file, &[]).success().stdout.contains("exported 2 event(s)"));
    let shipped = lines(&std::fs::read_to_string(&file).unwrap());
    assert_valid(&shipped);
    let got = uids(&shipped);
    let mut sorted_got = got.clone();
    sorted_got.sort();
    let mut expected: Vec<String> = all.iter().chain(crashed.iter()).cloned().collect();
    expected.sort();
    assert_eq!(sorted_got, expected, "every record, the crashed run's twice");
    // The copies are the same events, byte for byte: a SIEM deduplicating on metadata.uid keeps one.
    let text = std::fs::read_to_string(&file).unwrap();
    let mut by_uid: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (line, event) in text.lines().zip(&shipped) {
        by_uid.entry(event["metadata"]["uid"].as_str().unwrap().to_owned()).or_default().insert(line);
    }
    assert!(by_uid.values().all(|copies| copies.len() == 1), "every copy identical");
    let distinct: BTreeSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), all.len());

    // A cursor is for one repository.
    let other = env.repo("other");
    trusted_with_key(&env, &other, "other", "hotfix/x");
    grant(&env, &other, "INC-4: other repo", End::Active);
    let wrong = export(&env, &other, &cursor, &env.path("other.jsonl"), &[]).code(2);
    assert!(wrong.stderr.contains("belongs to the ledger of"), "{}", wrong.stderr);
}

/// HEC bodies: concatenated `{"time":…,"event":{…}}` objects.
fn hec_events(body: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(body)
        .into_iter::<Value>()
        .map(|v| {
            let v = v.unwrap();
            assert_eq!(v["source"], "tpa");
            assert!(v["time"].is_number());
            v["event"].clone()
        })
        .collect()
}

#[test]
fn hec_gets_batches_with_a_retried_503_and_no_token_in_any_output() {
    let env = TestEnv::headless();
    let (dir, grants) = ledger(&env);
    let records = grants.values().map(|(_, s)| s.len()).sum::<usize>();
    let hec = Webhook::start([Reply::Status(503)]);
    let url = hec.url(&format!("/services/collector/event?token={URL_SECRET}"));
    let cursor = env.path("hec.cursor");
    let out = env
        .tpa(&dir)
        .args(["export", "--max-request-bytes", "6000", "--since"])
        .arg(&cursor)
        .args(["--to", &url])
        .env("TPA_SIEM_TOKEN", TOKEN)
        .run()
        .success();
    let requests = hec.requests();
    assert!(requests.len() >= 3, "several batches and a retry: {}", requests.len());
    assert_eq!(requests[0].body, requests[1].body, "the 503'd batch was sent again");
    let received: Vec<Value> = requests[1..].iter().flat_map(|r| hec_events(&r.text())).collect();
    assert_valid(&received);
    let distinct: BTreeSet<String> = uids(&received).into_iter().collect();
    assert_eq!((received.len(), distinct.len()), (records, records), "each record once");
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("authorization"), Some(format!("Splunk {TOKEN}").as_str()));
        assert!(r.body.len() <= 6000 || hec_events(&r.text()).len() == 1);
    }
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(TOKEN) && !text.contains(URL_SECRET), "{text}");
    }

    // A refusal (400) is reported with the collector's host, the cursor stays, no secret shows.
    grant(&env, &dir, "INC-9: after", End::Active);
    let cursor_before = std::fs::read_to_string(&cursor).unwrap();
    let refusing = Webhook::always(Reply::Body(400, r#"{"text":"Invalid data format","code":6}"#.into()));
    let url = refusing.url(&format!("/services/collector/event?token={URL_SECRET}"));
    let out = env
        .tpa(&dir)
        .args(["export", "--since"])
        .arg(&cursor)
        .args(["--to", &url])
        .env("TPA_SIEM_TOKEN", TOKEN)
        .run()
        .code(2);
    assert!(out.stderr.contains("HTTP 400") && out.stderr.contains("Invalid data format"), "{}", out.stderr);
    assert!(out.stderr.contains(&refusing.addr().to_string()), "{}", out.stderr);
    assert_eq!(refusing.count(), 1, "a 400 is not retried");
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(TOKEN) && !text.contains(URL_SECRET), "{text}");
    }
    assert_eq!(std::fs::read_to_string(&cursor).unwrap(), cursor_before);
}

#[test]
fn bulk_gets_create_actions_keyed_by_event_uid_and_counts_duplicates() {
    let env = TestEnv::headless();
    let (dir, grants) = ledger(&env);
    let records = grants.values().map(|(_, s)| s.len()).sum::<usize>();
    let ok = r#"{"took":1,"errors":false,"items":[]}"#;
    let es = Webhook::always(Reply::Body(200, ok.into()));
    let url = es.url("/tpa-ocsf/_bulk");
    env.tpa(&dir).args(["export", "--to", &url]).env("TPA_SIEM_TOKEN", TOKEN).run().success();
    let requests = es.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(request.header("authorization"), Some(format!("ApiKey {TOKEN}").as_str()));
    let body = lines(&request.text());
    assert_eq!(body.len(), records * 2);
    let events: Vec<Value> = body.iter().skip(1).step_by(2).cloned().collect();
    assert_valid(&events);
    for pair in body.chunks(2) {
        assert_eq!(pair[0]["create"]["_id"], pair[1]["metadata"]["uid"]);
    }

    // Shipped again (no cursor): Elasticsearch answers 409 for each, which is "already there".
    let items: Vec<String> = (0..records)
        .map(|_| r#"{"create":{"status":409,"error":{"type":"version_conflict_engine_exception"}}}"#.into())
        .collect();
    es.set_fallback(Reply::Body(200, format!(r#"{{"errors":true,"items":[{}]}}"#, items.join(","))));
    let again = env.tpa(&dir).args(["export", "--to", &url]).run().success();
    assert!(again.stdout.contains(&format!("{records} already at the collector")), "{}", again.stdout);
    // A mapping error is a refusal, said with its reason.
    es.set_fallback(Reply::Body(
        200,
        r#"{"errors":true,"items":[{"create":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse"}}}]}"#.into(),
    ));
    let refused = env.tpa(&dir).args(["export", "--to", &url]).run().code(2);
    assert!(refused.stderr.contains("mapper_parsing_exception"), "{}", refused.stderr);
}

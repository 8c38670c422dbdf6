//! Webhooks (`tpa::notify`) against a real HTTP receiver started by each test: payloads as
//! received, retries and their bounds, required versus optional entries, the persisted retry
//! queue, and that neither payloads, errors nor the queue carry a secret.

use std::collections::BTreeSet;
use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tpa::notify::{self, Event, Options, Queue, SendError, Which};
use tpa::policy::{NotifyEvent, NotifyFormat, NotifyPolicy};

use crate::common::webhook::{Reply, Webhook};

const ALL: [NotifyEvent; 4] =
    [NotifyEvent::Grant, NotifyEvent::Revoke, NotifyEvent::Irrevocable, NotifyEvent::Audit];
/// The secret part of a webhook URL, as in Slack's `/services/T…/B…/<token>`.
const URL_SECRET_PATH: &str = "/services/T0001/B0002/XoXb5ecretT0ken";
const URL_SECRET_QUERY: &str = "sig=Qu3rySecr3t";

fn t0() -> DateTime<Utc> {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

fn fast() -> Options {
    Options {
        timeout: Duration::from_secs(2),
        attempts: 3,
        backoff: Duration::from_millis(10),
        ..Options::default()
    }
}

fn entry(url: String, format: NotifyFormat, required: bool) -> NotifyPolicy {
    NotifyPolicy { url, events: ALL.to_vec(), format, required }
}

fn secret_url(webhook: &Webhook) -> String {
    webhook.url(&format!("{URL_SECRET_PATH}?{URL_SECRET_QUERY}"))
}

fn event(kind: NotifyEvent) -> Event {
    Event {
        kind,
        grant_id: "01JQ3Z8W6V4T2R0P8N6M4K2H0G".into(),
        principal: "alice@example.com".into(),
        role_or_database: "prod-admin".into(),
        branch: "refs/heads/hotfix/disk".into(),
        commit: "3f1c2e4d5b6a79881726354453627180a9b8c7d6".into(),
        reason: "INC-4711: disk full on db-1".into(),
        expires_at: Some("2026-03-01T13:00:00Z".parse().unwrap()),
        detail: None,
        repo: "acme/payments".into(),
    }
}

/// An error and all its sources, as `{:#}` would show them.
fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn assert_no_url_secret(text: &str) {
    for secret in [URL_SECRET_PATH, "XoXb5ecretT0ken", URL_SECRET_QUERY, "Qu3rySecr3t", "/services/"] {
        assert!(!text.contains(secret), "{secret:?} leaked into: {text}");
    }
}

#[test]
fn json_payload_arrives_field_by_field() {
    let webhook = Webhook::start([]);
    let entries = [entry(secret_url(&webhook), NotifyFormat::Json, false)];
    let mut ev = event(NotifyEvent::Revoke);
    ev.detail = Some("branch merged".into());
    let outcome = notify::notify(&entries, &ev, Which::All, &fast());
    assert_eq!(outcome.deliveries.len(), 1);
    let delivery = &outcome.deliveries[0];
    assert!(delivery.result.is_ok(), "{:?}", delivery.result);
    assert_eq!((delivery.index, delivery.attempts, delivery.required), (0, 1, false));
    assert_eq!(delivery.host, webhook.addr().to_string());

    let requests = webhook.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, format!("{URL_SECRET_PATH}?{URL_SECRET_QUERY}"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert!(request.header("user-agent").is_some_and(|ua| ua.starts_with("tpa/")), "{:?}", request.headers);
    for header in ["authorization", "cookie", "referer"] {
        assert_eq!(request.header(header), None);
    }
    let body = request.json();
    let object = body.as_object().unwrap();
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "tpa",
            "event",
            "grant_id",
            "principal",
            "role_or_database",
            "branch",
            "commit",
            "reason",
            "expires_at",
            "detail",
            "repo"
        ])
    );
    assert_eq!(body["tpa"], 1);
    assert_eq!(body["event"], "revoke");
    assert_eq!(body["grant_id"], "01JQ3Z8W6V4T2R0P8N6M4K2H0G");
    assert_eq!(body["principal"], "alice@example.com");
    assert_eq!(body["role_or_database"], "prod-admin");
    assert_eq!(body["branch"], "refs/heads/hotfix/disk");
    assert_eq!(body["commit"], "3f1c2e4d5b6a79881726354453627180a9b8c7d6");
    assert_eq!(body["reason"], "INC-4711: disk full on db-1");
    assert_eq!(body["expires_at"], "2026-03-01T13:00:00Z");
    assert_eq!(body["detail"], "branch merged");
    assert_eq!(body["repo"], "acme/payments");

    // Every kind has its name; absent optional fields are null.
    for kind in ALL {
        let mut ev = event(kind);
        ev.expires_at = None;
        let outcome = notify::notify(&entries, &ev, Which::All, &fast());
        assert!(outcome.deliveries[0].result.is_ok());
        let body = webhook.requests().last().unwrap().json();
        assert_eq!(body["event"], kind.as_str());
        assert_eq!((&body["expires_at"], &body["detail"]), (&Value::Null, &Value::Null));
    }
}

#[test]
fn slack_payload_is_one_line_with_hostile_text_escaped() {
    let webhook = Webhook::start([]);
    let entries = [entry(webhook.url("/slack"), NotifyFormat::Slack, false)];
    let mut ev = event(NotifyEvent::Grant);
    ev.reason =
        "<!channel> urgent & <@U0123|boss>\nsecond line\r\x1b[2J\x1b]8;;https://evil.example\x07".into();
    ev.branch = "refs/heads/<https://evil.example|fix>&<!here>".into();
    ev.detail = Some("<script>\u{202e}".into());
    let outcome = notify::notify(&entries, &ev, Which::All, &fast());
    assert!(outcome.deliveries[0].result.is_ok(), "{:?}", outcome.deliveries[0].result);

    let body = webhook.requests()[0].json();
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    let text = body["text"].as_str().unwrap();
    for forbidden in ['<', '>', '\n', '\r', '\x1b', '\x07', '\u{202e}'] {
        assert!(!text.contains(forbidden), "{forbidden:?} in {text:?}");
    }
    assert!(!text.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "").contains('&'), "{text}");
    for expected in [
        "tpa grant: alice@example.com was granted prod-admin until 2026-03-01 13:00 UTC",
        "on refs/heads/&lt;https://evil.example|fix&gt;&amp;&lt;!here&gt;",
        "at 3f1c2e4d5b6a in acme/payments",
        "Reason: \"&lt;!channel&gt; urgent &amp; &lt;@U0123|boss&gt;\\nsecond line\\r\\u{1b}[2J",
        "Grant 01JQ3Z8W6V4T2R0P8N6M4K2H0G.",
        "Detail: &lt;script&gt;\\u{202e}",
    ] {
        assert!(text.contains(expected), "{expected:?} not in {text:?}");
    }
}

#[test]
fn server_errors_are_retried_until_success() {
    let webhook = Webhook::start([Reply::Status(500), Reply::Status(503), Reply::Status(200)]);
    let entries = [entry(webhook.url("/hook"), NotifyFormat::Json, false)];
    let outcome = notify::notify(&entries, &event(NotifyEvent::Grant), Which::All, &fast());
    let delivery = &outcome.deliveries[0];
    assert!(delivery.result.is_ok(), "{:?}", delivery.result);
    assert_eq!(delivery.attempts, 3);
    assert_eq!(webhook.count(), 3);
    let bodies: BTreeSet<Vec<u8>> = webhook.requests().into_iter().map(|r| r.body).collect();
    assert_eq!(bodies.len(), 1, "every attempt sends the same payload");

    // 429 and connection-level trouble are retried too.
    let webhook = Webhook::start([Reply::Status(429), Reply::Status(200)]);
    let entries = [entry(webhook.url("/hook"), NotifyFormat::Json, false)];
    let outcome = notify::notify(&entries, &event(NotifyEvent::Grant), Which::All, &fast());
    assert!(outcome.deliveries[0].result.is_ok());
    assert_eq!((outcome.deliveries[0].attempts, webhook.count()), (2, 2));
}

#[test]
fn retries_are_bounded() {
    let webhook = Webhook::always(Reply::Status(502));
    let entries = [entry(secret_url(&webhook), NotifyFormat::Json, false)];
    let outcome = notify::notify(&entries, &event(NotifyEvent::Grant), Which::All, &fast());
    let delivery = &outcome.deliveries[0];
    assert_eq!((delivery.attempts, webhook.count()), (3, 3));
    let error = delivery.result.as_ref().unwrap_err();
    assert!(matches!(error, SendError::Status { status: 502, .. }), "{error:?}");
    assert!(!error.is_permanent());
    assert_no_url_secret(&chain(error));
    assert!(chain(error).contains(&webhook.addr().to_string()), "{}", chain(error));
}

#[test]
fn a_client_error_is_permanent_and_not_retried() {
    let webhook = Webhook::start([Reply::Body(400, "invalid_payload".into())]);
    let entries = [entry(secret_url(&webhook), NotifyFormat::Slack, false)];
    let outcome = notify::notify(&entries, &event(NotifyEvent::Grant), Which::All, &fast());
    let delivery = &outcome.deliveries[0];
    assert_eq!((delivery.attempts, webhook.count()), (1, 1));
    let error = delivery.result.as_ref().unwrap_err();
    assert!(matches!(error, SendError::Status { status: 400, .. }), "{error:?}");
    assert!(error.is_permanent());
    let text = chain(error);
    assert!(text.contains("HTTP 400: invalid_payload"), "{text}");
    assert_no_url_secret(&text);
}

#[test]
fn a_hanging_webhook_fails_within_the_timeout_bound() {
    let webhook = Webhook::always(Reply::Hang);
    let entries = [entry(secret_url(&webhook), NotifyFormat::Json, true)];
    let opts = Options { timeout: Duration::from_secs(1), attempts: 2, ..fast() };
    let started = Instant::now();
    let outcome = notify::notify(&entries, &event(NotifyEvent::Grant), Which::All, &opts);
    let elapsed = started.elapsed();
    // Two attempts of one second each, a short backoff, and slack for a loaded machine.
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    let delivery = &outcome.deliveries[0];
    assert_eq!((delivery.attempts, webhook.count()), (2, 2));
    let error = delivery.result.as_ref().unwrap_err();
    assert!(matches!(error, SendError::Timeout { .. }), "{error:?}");
    assert!(!error.is_permanent());
    assert_no_url_secret(&chain(error));
    assert_eq!(outcome.failed_required().count(), 1);
}

#[test]
fn an_unreachable_webhook_is_named_by_its_host_only() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}{URL_SECRET_PATH}?{URL_SECRET_QUERY}");
    let entries = [entry(url, NotifyFormat::Json, false)];
    let outcome = notify::notify(&entries, &event(NotifyEvent::Grant), Which::All, &fast());
    let delivery = &outcome.deliveries[0];
    assert_eq!(delivery.attempts, 3);
    let error = delivery.result.as_ref().unwrap_err();
    assert!(matches!(error, SendError::Unreachable { .. }), "{error:?}");
    let text = chain(error);
    assert!(text.starts_with(&format!("cannot reach webhook 127.0.0.1:{port}")), "{text}");
    assert_no_url_secret(&text);
    assert_no_url_secret(&format!("{error:?}"));
}

#[test]
fn a_failing_required_entry_is_reported_as_required() {
    let required = Webhook::always(Reply::Status(500));
    let optional = Webhook::start([]);
    let entries = [
        entry(required.url("/required"), NotifyFormat::Json, true),
        entry(optional.url("/optional"), NotifyFormat::Slack, false),
    ];
    let ev = event(NotifyEvent::Grant);
    let outcome = notify::notify(&entries, &ev, Which::All, &fast());
    let failed: Vec<_> = outcome.failed_required().map(|d| (d.index, d.required)).collect();
    assert_eq!(failed, [(0, true)]);
    assert_eq!(outcome.delivered().map(|d| d.index).collect::<Vec<_>>(), [1]);
    assert_eq!(outcome.failed_optional().count(), 0);

    // Before the secret is handed out only required entries are told; afterwards the others.
    let (r, o) = (required.count(), optional.count());
    let outcome = notify::notify(&entries, &ev, Which::Required, &fast());
    assert_eq!(outcome.deliveries.iter().map(|d| d.index).collect::<Vec<_>>(), [0]);
    assert_eq!((required.count() - r, optional.count() - o), (3, 0));
    let outcome = notify::notify(&entries, &ev, Which::Optional, &fast());
    assert_eq!(outcome.deliveries.iter().map(|d| d.index).collect::<Vec<_>>(), [1]);
    assert_eq!((required.count() - r, optional.count() - o), (3, 1));
}

#[test]
fn only_entries_subscribed_to_the_event_are_told() {
    let webhook = Webhook::start([]);
    let entries = [NotifyPolicy {
        url: webhook.url("/hook"),
        events: vec![NotifyEvent::Irrevocable],
        format: NotifyFormat::Json,
        required: true,
    }];
    let outcome = notify::notify(&entries, &event(NotifyEvent::Grant), Which::All, &fast());
    assert!(outcome.deliveries.is_empty());
    assert_eq!(webhook.connections(), 0);
    let outcome = notify::notify(&entries, &event(NotifyEvent::Irrevocable), Which::All, &fast());
    assert_eq!(outcome.delivered().count(), 1);
    assert_eq!(webhook.requests()[0].json()["event"], "irrevocable");
}

#[test]
fn plain_http_to_a_host_that_is_not_loopback_is_refused_without_connecting() {
    let webhook = Webhook::start([]);
    // On Linux, connecting to 0.0.0.0 reaches the local host: a client that did not refuse would
    // be seen by the receiver.
    let port = webhook.addr().port();
    for url in [
        format!("http://0.0.0.0:{port}/hook?{URL_SECRET_QUERY}"),
        format!("http://example.com{URL_SECRET_PATH}"),
    ] {
        let entries = [entry(url, NotifyFormat::Json, true)];
        let started = Instant::now();
        let outcome = notify::notify(&entries, &event(NotifyEvent::Grant), Which::All, &fast());
        assert!(started.elapsed() < Duration::from_secs(1));
        let delivery = &outcome.deliveries[0];
        assert_eq!(delivery.attempts, 0);
        let error = delivery.result.as_ref().unwrap_err();
        assert!(matches!(error, SendError::Insecure { .. }), "{error:?}");
        assert!(error.is_permanent());
        assert!(chain(error).contains("use an https:// URL"), "{}", chain(error));
        assert_no_url_secret(&chain(error));
        assert_eq!(outcome.failed_required().count(), 1);
    }
    assert_eq!(webhook.connections(), 0);
    if std::net::TcpStream::connect(("0.0.0.0", port)).is_ok() {
        // The premise holds: 0.0.0.0 would have reached the receiver.
        assert!(webhook.saw_connections(1));
        assert_eq!(webhook.connections(), 1);
    }
}

#[test]
fn redirects_are_followed_only_to_the_same_origin() {
    let elsewhere = Webhook::start([]);
    let webhook = Webhook::start([Reply::Redirect(307, elsewhere.url("/stolen"))]);
    let entries = [entry(secret_url(&webhook), NotifyFormat::Json, false)];
    let outcome = notify::notify(&entries, &event(NotifyEvent::Grant), Which::All, &fast());
    let error = outcome.deliveries[0].result.as_ref().unwrap_err();
    assert!(matches!(error, SendError::Redirect { status: 307, .. }), "{error:?}");
    assert!(error.is_permanent());
    assert_eq!((webhook.count(), elsewhere.connections()), (1, 0));

    // A 302 would turn the POST into a bodiless GET: not followed even to the same host.
    let webhook = Webhook::start([Reply::Redirect(302, "/other".into())]);
    let entries = [entry(webhook.url("/hook"), NotifyFormat::Json, false)];
    let outcome = notify::notify(&entries, &event(NotifyEvent::Grant), Which::All, &fast());
    assert!(matches!(outcome.deliveries[0].result, Err(SendError::Redirect { status: 302, .. })));
    assert_eq!(webhook.count(), 1);

    let webhook = Webhook::start([Reply::Redirect(308, "/moved".into())]);
    let entries = [entry(webhook.url("/hook"), NotifyFormat::Json, false)];
    let outcome = notify::notify(&entries, &event(NotifyEvent::Grant), Which::All, &fast());
    assert!(outcome.deliveries[0].result.is_ok(), "{:?}", outcome.deliveries[0].result);
    let requests = webhook.requests();
    assert_eq!(requests.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), ["/hook", "/moved"]);
    assert_eq!(requests[0].body, requests[1].body);
}

fn queue_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(notify::QUEUE_FILE)).unwrap()
}

#[test]
fn failed_optional_notifications_are_queued_without_their_url() {
    let dir = tempfile::tempdir().unwrap();
    let required = Webhook::always(Reply::Status(500));
    let optional = Webhook::always(Reply::Status(500));
    let entries = [
        entry(secret_url(&required), NotifyFormat::Json, true),
        entry(secret_url(&optional), NotifyFormat::Slack, false),
    ];
    let ev = event(NotifyEvent::Grant);
    let outcome = notify::notify_or_queue(dir.path(), &entries, &ev, Which::All, t0(), &fast()).unwrap();
    assert_eq!((outcome.failed_required().count(), outcome.failed_optional().count()), (1, 1));

    let text = queue_text(dir.path());
    assert_no_url_secret(&text);
    assert!(!text.contains(&secret_url(&optional)));
    let file: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(file["version"], 1);
    let pending = file["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "only the optional entry is queued: {text}");
    let p = &pending[0];
    assert_eq!(p["entry"], 1);
    assert_eq!(p["url_sha256"], hex::encode(Sha256::digest(secret_url(&optional).as_bytes())));
    assert_eq!(p["host"], optional.addr().to_string());
    assert_eq!(p["attempts"], 1);
    assert_eq!(p["first_failed_at"], "2026-03-01T12:00:00Z");
    assert_eq!(p["next_attempt_at"], "2026-03-01T12:01:00Z");
    assert_eq!(p["event"]["kind"], "grant");
    assert_eq!(p["event"]["reason"], ev.reason);
    assert!(p["last_error"].as_str().unwrap().contains("answered HTTP 500"), "{p}");

    // Read back by a later process; the same failure again is not queued twice.
    let queue = Queue::load(dir.path()).unwrap();
    assert_eq!(queue.pending().len(), 1);
    assert_eq!(queue.pending()[0].event, ev);
    notify::notify_or_queue(dir.path(), &entries, &ev, Which::Optional, t0(), &fast()).unwrap();
    assert_eq!(Queue::load(dir.path()).unwrap().pending().len(), 1);
    // No temporary files are left behind.
    let names: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["notify-queue.json".to_owned(), "notify-queue.lock".to_owned()]));
}

#[test]
fn the_queue_is_retried_when_due_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start([Reply::Status(500), Reply::Status(500), Reply::Status(500)]);
    let entries = [entry(webhook.url("/hook"), NotifyFormat::Json, false)];
    let ev = event(NotifyEvent::Revoke);
    notify::notify_or_queue(dir.path(), &entries, &ev, Which::All, t0(), &fast()).unwrap();
    assert_eq!(webhook.count(), 3);

    let report = notify::retry_due(dir.path(), &entries, t0() + TimeDelta::seconds(59), &fast()).unwrap();
    assert!(report.delivered.is_empty() && report.failed.is_empty() && report.dropped.is_empty());
    assert_eq!(report.remaining.len(), 1);
    assert_eq!(webhook.count(), 3, "not due yet: nothing sent");

    let report = notify::retry_due(dir.path(), &entries, t0() + TimeDelta::seconds(60), &fast()).unwrap();
    assert_eq!(report.delivered.len(), 1);
    assert_eq!(report.delivered[0].event, ev);
    assert!(report.remaining.is_empty());
    assert_eq!(webhook.count(), 4);
    let requests = webhook.requests();
    assert_eq!(requests[3].body, requests[0].body, "the queued event is the one that failed");
    assert!(Queue::load(dir.path()).unwrap().is_empty());

    // Nothing left: nothing sent.
    notify::retry_due(dir.path(), &entries, t0() + TimeDelta::days(1), &fast()).unwrap();
    assert_eq!(webhook.count(), 4);
}

#[test]
fn the_queue_keeps_entries_after_failures_and_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::always(Reply::Status(503));
    let entries = [entry(webhook.url("/hook"), NotifyFormat::Slack, false)];
    let opts = Options { attempts: 1, queue_exhausted_after: 4, ..fast() };
    for kind in [NotifyEvent::Grant, NotifyEvent::Revoke] {
        notify::notify_or_queue(dir.path(), &entries, &event(kind), Which::All, t0(), &opts).unwrap();
    }
    assert_eq!(webhook.count(), 2);

    // Each due round tries the dead webhook once, not once per queued notification.
    let mut now = t0();
    let mut waits = Vec::new();
    for round in 0..3 {
        let pending = Queue::load(dir.path()).unwrap().pending().to_vec();
        let due = pending.iter().map(|p| p.next_attempt_at).min().unwrap();
        waits.push((due - now).num_seconds());
        now = due;
        let before = webhook.count();
        let report = notify::retry_due(dir.path(), &entries, now, &opts).unwrap();
        assert_eq!(webhook.count() - before, 1, "round {round}");
        assert_eq!((report.failed.len(), report.remaining.len()), (1, 2), "round {round}");
        assert!(report.failed[0].last_error.contains("HTTP 503"));
    }
    let pending = Queue::load(dir.path()).unwrap().pending().to_vec();
    assert_eq!(pending.len(), 2, "never dropped");
    let attempts: Vec<u32> = pending.iter().map(|p| p.attempts).collect();
    assert_eq!(attempts.iter().sum::<u32>(), 2 + 3);
    // The webhook's backoff doubles, and the longest-waiting notification goes first: the first
    // fails at +60 s (next try 120 s later); the second, still due, goes at once on the next call
    // and fails; both are due again at +180 s.
    assert_eq!(waits, [60, 0, 120]);

    // Many failures later the entries are still there, flagged as exhausted, and still retried.
    for _ in 0..6 {
        now += TimeDelta::hours(2);
        notify::retry_due(dir.path(), &entries, now, &opts).unwrap();
    }
    let pending = Queue::load(dir.path()).unwrap().pending().to_vec();
    assert_eq!(pending.len(), 2);
    assert!(pending.iter().all(|p| p.exhausted(&opts)), "{pending:?}");
    assert!(pending.iter().all(|p| p.next_attempt_at <= now + TimeDelta::hours(1)));

    // The webhook comes back: everything is delivered.
    webhook.set_fallback(Reply::Status(200));
    let report = notify::retry_due(dir.path(), &entries, now + TimeDelta::hours(2), &opts).unwrap();
    assert_eq!((report.delivered.len(), report.remaining.len()), (2, 0));
    assert!(Queue::load(dir.path()).unwrap().is_empty());
}

#[test]
fn queued_entries_follow_their_url_and_are_dropped_visibly_when_it_leaves_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::always(Reply::Status(500));
    let other = Webhook::start([]);
    let entries = [entry(webhook.url("/hook"), NotifyFormat::Json, false)];
    let opts = Options { attempts: 1, ..fast() };
    notify::notify_or_queue(dir.path(), &entries, &event(NotifyEvent::Audit), Which::All, t0(), &opts)
        .unwrap();
    let later = t0() + TimeDelta::minutes(5);

    // The policy gained an entry before it: the queued notification still goes to its URL.
    webhook.set_fallback(Reply::Status(200));
    let moved = [entry(other.url("/first"), NotifyFormat::Json, false), entries[0].clone()];
    let report = notify::retry_due(dir.path(), &moved, later, &opts).unwrap();
    assert_eq!(report.delivered.len(), 1);
    assert_eq!(report.delivered[0].event.kind, NotifyEvent::Audit);
    assert_eq!(other.count(), 0);
    assert_eq!(webhook.requests().last().unwrap().json()["event"], "audit");

    // Its URL changed (a new secret, say): the entry cannot be sent and is handed back, not lost.
    webhook.set_fallback(Reply::Status(500));
    notify::notify_or_queue(dir.path(), &entries, &event(NotifyEvent::Irrevocable), Which::All, t0(), &opts)
        .unwrap();
    let changed = [entry(webhook.url("/rotated"), NotifyFormat::Json, false)];
    let before = webhook.count();
    let report = notify::retry_due(dir.path(), &changed, later, &opts).unwrap();
    assert_eq!(report.dropped.len(), 1);
    assert_eq!(report.dropped[0].event.kind, NotifyEvent::Irrevocable);
    assert_eq!(webhook.count(), before);
    assert!(Queue::load(dir.path()).unwrap().is_empty());
}

#[test]
fn a_corrupt_queue_is_an_error_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(notify::QUEUE_FILE), "{not json").unwrap();
    let entries = [entry("https://hooks.example.com/x".into(), NotifyFormat::Json, false)];
    let error = notify::retry_due(dir.path(), &entries, t0(), &fast()).unwrap_err();
    assert!(matches!(error, notify::QueueError::Corrupt { .. }), "{error:?}");
    assert_eq!(queue_text(dir.path()), "{not json");
    std::fs::write(dir.path().join(notify::QUEUE_FILE), r#"{"version": 7, "pending": [], "more": 1}"#)
        .unwrap();
    assert!(matches!(Queue::load(dir.path()), Err(notify::QueueError::Version { found: 7, .. })));
}

#[test]
fn no_payload_ever_carries_a_secret() {
    // Credentials that exist next to the event when tpa builds it.
    let access_key_id = "AKIAIOSFODNN7EXAMPLE";
    let secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let session_token = "FwoGZXIvYXdzEJr//////////wEaDKnotARealSessionToken";
    let db_password = "hunter2-tpa-db-password";
    let secrets = [access_key_id, secret_access_key, session_token, db_password];

    // An Event has no field to put them in: it is built from metadata alone.
    let fields: BTreeSet<String> = match serde_json::to_value(event(NotifyEvent::Grant)).unwrap() {
        Value::Object(map) => map.keys().cloned().collect(),
        other => panic!("{other}"),
    };
    assert_eq!(
        fields,
        [
            "kind",
            "grant_id",
            "principal",
            "role_or_database",
            "branch",
            "commit",
            "reason",
            "expires_at",
            "detail",
            "repo"
        ]
        .map(String::from)
        .into(),
        "a new Event field must be reviewed: it must never be able to hold a credential"
    );

    let dir = tempfile::tempdir().unwrap();
    let json_hook = Webhook::start([Reply::Status(500), Reply::Status(500), Reply::Status(500)]);
    let slack_hook = Webhook::start([]);
    let entries = [
        entry(json_hook.url("/json"), NotifyFormat::Json, false),
        entry(slack_hook.url("/slack"), NotifyFormat::Slack, true),
    ];
    for kind in ALL {
        let mut ev = event(kind);
        ev.detail = Some("IAM answered AccessDenied".into());
        // A remote URL with a token, should a caller pass one as the repository.
        ev.repo = format!("https://x-access-token:{db_password}@github.com/acme/payments?t={session_token}");
        notify::notify_or_queue(dir.path(), &entries, &ev, Which::All, t0(), &fast()).unwrap();
    }
    let queued = queue_text(dir.path());
    assert_eq!(Queue::load(dir.path()).unwrap().pending().len(), 1, "{queued}");
    let report = notify::retry_due(dir.path(), &entries, t0() + TimeDelta::hours(1), &fast()).unwrap();
    assert_eq!(report.delivered.len(), 1);
    let requests = [json_hook.requests(), slack_hook.requests()].concat();
    assert_eq!(requests.len(), 3 + 3 + 1 + 4, "every event reached both webhooks");
    let mut seen = vec![queued];
    for request in &requests {
        seen.push(request.text());
        seen.push(format!("{} {} {:?}", request.method, request.path, request.headers));
        let body = request.json();
        if let Some(repo) = body.get("repo") {
            assert_eq!(repo, &json!("https://github.com/acme/payments"));
        }
    }
    for text in seen {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}

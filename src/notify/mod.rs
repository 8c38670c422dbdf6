//! Webhooks: telling people that production access was granted, revoked, could not be revoked, or
//! that an audit found something.
//!
//! An [`Event`] carries metadata only (who, what, which branch and commit, why, until when): it has
//! no field a credential could go in. It is rendered per `[[notify]]` entry as
//!
//! - `json`: `{"tpa": 1, "event": "grant", "grant_id": "...", "principal": "...",
//!   "role_or_database": "...", "branch": "refs/heads/...", "commit": "<oid>", "reason": "...",
//!   "expires_at": "2026-01-02T03:04:05Z" | null, "detail": "..." | null, "repo": "..."}`. Field
//!   values are the raw text (JSON escapes it); `tpa` is the payload version and only grows fields.
//! - `slack`: `{"text": "<one-line summary>"}` for a Slack-compatible incoming webhook. Branch names,
//!   reasons and the rest are hostile text: control characters are shown escaped (no newlines, no
//!   terminal sequences) and Slack's control characters `&`, `<`, `>` become entities, so
//!   `<!channel>` or a `<url|label>` link cannot be smuggled in.
//!
//! Sending is an HTTP POST, each attempt bounded by a timeout, retried with jittered exponential
//! backoff on connection errors, timeouts, 408, 429 and 5xx; any other status is final. Only
//! `https://` URLs are used, or `http://` to a loopback host (tests, local relays); redirects are
//! followed only to the same scheme, host and port, and only when they keep the body (307, 308).
//! A webhook URL is itself a credential (Slack's is), so errors name its host and never its path
//! or query.
//!
//! Optional webhooks that could not be told are queued in `<state dir>/notify-queue.json`
//! (see [`Pending`] for the entries) and retried by [`retry_due`] with backoff. The queue stores
//! each webhook's position in the policy and a sha256 of its URL, never the URL: an entry whose
//! URL left the policy is dropped by [`retry_due`] and reported in [`RetryReport::dropped`].
//! Nothing leaves the queue otherwise except by delivery.
//!
//! This module holds the event and its payloads; `send` the HTTP side (webhooks and other
//! collectors, with retries and host-only errors); `queue` the retry queue.

mod queue;
mod send;

pub use queue::*;
pub use send::*;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::policy::{NotifyEvent, NotifyFormat};

/// The `tpa` field of JSON payloads.
pub const PAYLOAD_VERSION: u32 = 1;

/// What happened, as webhooks are told. Metadata only: there is deliberately no field for a
/// credential, a token, a password or a connection string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(with = "event_kind")]
    pub kind: NotifyEvent,
    pub grant_id: String,
    /// The grantee's email.
    pub principal: String,
    /// The role or database name from the policy.
    pub role_or_database: String,
    /// Full refname, e.g. `refs/heads/hotfix`.
    pub branch: String,
    pub commit: String,
    pub reason: String,
    pub expires_at: Option<DateTime<Utc>>,
    /// Free text for revoke/irrevocable/audit (what failed, what was found).
    pub detail: Option<String>,
    /// A display name such as `org/repo`. Should a remote URL be given, its user:password@ and
    /// query are removed from payloads.
    pub repo: String,
}

mod event_kind {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::policy::NotifyEvent;

    pub fn serialize<S: Serializer>(kind: &NotifyEvent, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NotifyEvent, D::Error> {
        let name = String::deserialize(d)?;
        [NotifyEvent::Grant, NotifyEvent::Revoke, NotifyEvent::Irrevocable, NotifyEvent::Audit]
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| D::Error::custom(format!("unknown notify event {name:?}")))
    }
}

/// The body sent to a webhook of this format.
pub fn payload(format: NotifyFormat, event: &Event) -> Value {
    match format {
        NotifyFormat::Json => json_payload(event),
        NotifyFormat::Slack => json!({ "text": slack_text(event) }),
    }
}

/// The `json` format's object (see the module documentation).
pub fn json_payload(event: &Event) -> Value {
    json!({
        "tpa": PAYLOAD_VERSION,
        "event": event.kind.as_str(),
        "grant_id": event.grant_id,
        "principal": event.principal,
        "role_or_database": event.role_or_database,
        "branch": event.branch,
        "commit": event.commit,
        "reason": event.reason,
        "expires_at": event.expires_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
        "detail": event.detail,
        "repo": redact_repo(&event.repo),
    })
}

/// The `slack` format's one-line summary, every piece of hostile text escaped.
pub fn slack_text(event: &Event) -> String {
    let who = slack_escape(&event.principal);
    let what = slack_escape(&event.role_or_database);
    let mut out = match event.kind {
        NotifyEvent::Grant => format!("tpa grant: {who} was granted {what}"),
        NotifyEvent::Revoke => format!("tpa revoke: {who}'s access to {what} was revoked"),
        NotifyEvent::Irrevocable => {
            format!(":warning: tpa irrevocable: {who}'s access to {what} could NOT be revoked")
        }
        NotifyEvent::Audit => format!("tpa audit: a finding on {who}'s access to {what}"),
        NotifyEvent::ApprovalRequested => format!(
            "tpa approval requested: {who} asks for {what}; to approve: `tpa approve {}` (or `tpa deny {} --reason ...`)",
            slack_escape(&event.grant_id),
            slack_escape(&event.grant_id)
        ),
        NotifyEvent::BreakGlass => {
            format!(
                ":rotating_light: tpa BREAK-GLASS: {who} was granted {what} without approval; review it: `tpa approve {}`",
                slack_escape(&event.grant_id)
            )
        }
    };
    if let Some(at) = event.expires_at {
        let at = at.format("%Y-%m-%d %H:%M UTC");
        match event.kind {
            NotifyEvent::Grant => out.push_str(&format!(" until {at}")),
            _ => out.push_str(&format!(" (it expires {at})")),
        }
    }
    let commit: String = event.commit.chars().take(12).collect();
    out.push_str(&format!(
        ", on {} at {} in {}. Reason: \"{}\". Grant {}.",
        slack_escape(&event.branch),
        slack_escape(&commit),
        slack_escape(&redact_repo(&event.repo)),
        slack_escape(&event.reason),
        slack_escape(&event.grant_id),
    ));
    if let Some(detail) = &event.detail {
        out.push_str(&format!(" Detail: {}", slack_escape(detail)));
    }
    out
}

/// Hostile text made inert in a Slack message: control characters shown escaped (so the message
/// stays one line and carries no terminal sequences), then `&`, `<`, `>` as entities.
pub fn slack_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in crate::escape::text(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// A repository given as a URL loses its user:password@ and its query.
pub(super) fn redact_repo(repo: &str) -> String {
    let Some((scheme, rest)) = repo.split_once("://") else { return repo.to_owned() };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}://{rest}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::queue::url_sha256;
    use super::send::{backoff, target};
    use super::*;

    fn event(kind: NotifyEvent) -> Event {
        Event {
            kind,
            grant_id: "01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
            principal: "alice@example.com".into(),
            role_or_database: "prod-admin".into(),
            branch: "refs/heads/hotfix".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            reason: "INC-42: disk full".into(),
            expires_at: Some("2026-01-02T03:04:05Z".parse().unwrap()),
            detail: None,
            repo: "acme/payments".into(),
        }
    }

    #[test]
    fn json_payload_is_the_documented_object() {
        let v = json_payload(&event(NotifyEvent::Grant));
        assert_eq!(
            v,
            json!({
                "tpa": 1, "event": "grant", "grant_id": "01JABCDEFGHJKMNPQRSTVWXYZ0",
                "principal": "alice@example.com", "role_or_database": "prod-admin",
                "branch": "refs/heads/hotfix", "commit": "0123456789abcdef0123456789abcdef01234567",
                "reason": "INC-42: disk full", "expires_at": "2026-01-02T03:04:05Z", "detail": null,
                "repo": "acme/payments",
            })
        );
        assert_eq!(payload(NotifyFormat::Json, &event(NotifyEvent::Grant)), v);
    }

    #[test]
    fn slack_text_is_one_escaped_line() {
        let mut e = event(NotifyEvent::Irrevocable);
        e.reason = "<!channel> a & b\nline2 \x1b[31mred".into();
        e.branch = "refs/heads/<https://evil.example|click>".into();
        e.detail = Some("IAM said <no>".into());
        let text = slack_text(&e);
        assert_eq!(
            text,
            ":warning: tpa irrevocable: alice@example.com's access to prod-admin could NOT be revoked \
             (it expires 2026-01-02 03:04 UTC), on refs/heads/&lt;https://evil.example|click&gt; at \
             0123456789ab in acme/payments. Reason: \"&lt;!channel&gt; a &amp; b\\nline2 \\u{1b}[31mred\". \
             Grant 01JABCDEFGHJKMNPQRSTVWXYZ0. Detail: IAM said &lt;no&gt;"
        );
        assert_eq!(payload(NotifyFormat::Slack, &e), json!({ "text": text }));
    }

    #[test]
    fn repo_urls_lose_credentials() {
        assert_eq!(
            redact_repo("https://x-access-token:ghp_s3cret@github.com/acme/p?tok=1"),
            "https://github.com/acme/p"
        );
        assert_eq!(redact_repo("acme/payments"), "acme/payments");
        assert_eq!(redact_repo("ssh://git@host/a@b"), "ssh://host/a@b");
    }

    #[test]
    fn only_https_or_loopback_http() {
        for ok in [
            "https://hooks.slack.com/services/T/B/x",
            "http://localhost:8080/x",
            "http://127.0.0.5/x",
            "http://[::1]:9/x",
        ] {
            assert!(target(ok).is_ok(), "{ok}");
        }
        for (bad, host) in [
            ("http://hooks.example.com/secret?token=abc", "hooks.example.com"),
            ("http://0.0.0.0:80/secret", "0.0.0.0"),
            ("http://127.0.0.1.nip.io/secret", "127.0.0.1.nip.io"),
            ("http://10.0.0.1:8080/secret", "10.0.0.1:8080"),
            ("ftp://localhost/secret", "localhost"),
        ] {
            let e = target(bad).err().unwrap();
            assert!(matches!(&e, SendError::Insecure { host: h, .. } if h == host), "{bad}: {e:?}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
        assert!(matches!(target("https://u:p@h.example/x"), Err(SendError::Userinfo { .. })));
        let e = target("not a url/secret").err().unwrap();
        assert!(matches!(e, SendError::BadUrl { .. }) && !e.to_string().contains("secret"));
    }

    #[test]
    fn backoff_grows_with_jitter_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        for _ in 0..50 {
            let d1 = backoff(base, 1, None, cap);
            let d3 = backoff(base, 3, None, cap);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(150), "{d1:?}");
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(600), "{d3:?}");
        }
        assert!(backoff(base, 1, Some(Duration::from_secs(2)), cap) >= Duration::from_secs(2));
        assert!(backoff(base, 1, Some(Duration::from_secs(600)), cap) <= Duration::from_secs(5));
    }

    #[test]
    fn queue_backoff_doubles_up_to_the_cap() {
        let opts = Options::default();
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let mins = |n| (next_attempt(now, n, &opts) - now).num_minutes();
        assert_eq!([mins(1), mins(2), mins(3), mins(7), mins(8), mins(40)], [1, 2, 4, 60, 60, 60]);
    }

    #[test]
    fn statuses_are_classified() {
        for s in [408, 429, 500, 502, 503] {
            assert!(retryable_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 422] {
            assert!(!retryable_status(s), "{s}");
        }
    }

    #[test]
    fn events_round_trip_through_the_queue_format() {
        let p = Pending {
            event: event(NotifyEvent::Audit),
            entry: 2,
            url_sha256: url_sha256("https://h/x"),
            host: "h".into(),
            attempts: 1,
            first_failed_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            next_attempt_at: "2026-01-01T00:01:00Z".parse().unwrap(),
            last_error: "webhook h answered HTTP 500".into(),
        };
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains("\"kind\":\"audit\""), "{text}");
        assert_eq!(serde_json::from_str::<Pending>(&text).unwrap(), p);
    }
}

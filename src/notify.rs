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

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use rand_core::{OsRng, RngCore};
use reqwest::header::RETRY_AFTER;
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::policy::{NotifyEvent, NotifyFormat, NotifyPolicy};

/// The `tpa` field of JSON payloads.
pub const PAYLOAD_VERSION: u32 = 1;
/// The queue's file name in the state directory.
pub const QUEUE_FILE: &str = "notify-queue.json";
const QUEUE_LOCK: &str = "notify-queue.lock";
const QUEUE_VERSION: u32 = 1;
const MAX_REDIRECTS: usize = 5;
/// How much of an error response's body is read, and how many characters of it are kept.
const BODY_READ_LIMIT: usize = 4096;
const BODY_SNIPPET_CHARS: usize = 200;
/// How much of a successful answer to a [`Poster`] is read.
const ANSWER_READ_LIMIT: usize = 64 << 20;

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
fn redact_repo(repo: &str) -> String {
    let Some((scheme, rest)) = repo.split_once("://") else { return repo.to_owned() };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}://{rest}")
}

/// How hard to try.
#[derive(Clone, Debug)]
pub struct Options {
    /// Per attempt: connecting, sending and reading the answer.
    pub timeout: Duration,
    /// Attempts per webhook within one call.
    pub attempts: u32,
    /// Delay before the second attempt; doubled after each, jittered by ±50%.
    pub backoff: Duration,
    /// Delay before a queued notification is first retried; doubled after each failure...
    pub queue_first_retry: Duration,
    /// ...up to this.
    pub queue_max_interval: Duration,
    /// A queued notification that failed this many times is reported as exhausted by
    /// [`Pending::exhausted`] (it is still retried, at the maximum interval).
    pub queue_exhausted_after: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(5),
            attempts: 3,
            backoff: Duration::from_millis(500),
            queue_first_retry: Duration::from_secs(60),
            queue_max_interval: Duration::from_secs(3600),
            queue_exhausted_after: 8,
        }
    }
}

/// Which `[[notify]]` entries to send to (those whose `events` hold the event's kind, always).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    All,
    /// Before handing out a secret: the entries marked `required = true`.
    Required,
    /// After: the others.
    Optional,
}

impl Which {
    fn takes(self, entry: &NotifyPolicy) -> bool {
        match self {
            Which::All => true,
            Which::Required => entry.required,
            Which::Optional => !entry.required,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("a [[notify]] url in .tpa/policy.toml is not a valid URL ({reason}): fix it")]
    BadUrl { reason: String },
    #[error(
        "refusing to notify {host} over {scheme}://: use an https:// URL in .tpa/policy.toml \
         (plain http:// only reaches localhost, 127.0.0.1 and [::1])"
    )]
    Insecure { scheme: String, host: String },
    #[error("the [[notify]] url for {host} carries user:password@: remove it from .tpa/policy.toml")]
    Userinfo { host: String },
    #[error("cannot set up an HTTP client for webhooks")]
    Client(#[source] reqwest::Error),
    #[error("webhook {host} did not answer within {timeout:?}")]
    Timeout {
        host: String,
        timeout: Duration,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot reach webhook {host}")]
    Unreachable {
        host: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("webhook {host} answered HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status { host: String, status: u16, body: String },
    #[error(
        "webhook {host} answered with a redirect (HTTP {status}) elsewhere; tpa does not follow it: \
         put the final URL in .tpa/policy.toml"
    )]
    Redirect { host: String, status: u16 },
}

impl SendError {
    /// Whether trying again later cannot help without a change to the policy or the webhook.
    pub fn is_permanent(&self) -> bool {
        match self {
            SendError::Timeout { .. } | SendError::Unreachable { .. } => false,
            SendError::Status { status, .. } => !retryable_status(*status),
            _ => true,
        }
    }
}

fn retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

/// What became of one `[[notify]]` entry.
#[derive(Debug)]
pub struct Delivery {
    /// Position in the policy's `[[notify]]` list.
    pub index: usize,
    /// The webhook's host (and port, when the URL names one): never its path or query.
    pub host: String,
    pub required: bool,
    /// HTTP attempts made (0 when the URL was refused before any connection).
    pub attempts: u32,
    pub result: Result<(), SendError>,
}

/// Per matching `[[notify]]` entry, in policy order.
#[derive(Debug, Default)]
pub struct Outcome {
    pub deliveries: Vec<Delivery>,
}

impl Outcome {
    pub fn delivered(&self) -> impl Iterator<Item = &Delivery> {
        self.deliveries.iter().filter(|d| d.result.is_ok())
    }

    /// Failed entries marked `required`: the caller fails closed on any.
    pub fn failed_required(&self) -> impl Iterator<Item = &Delivery> {
        self.deliveries.iter().filter(|d| d.required && d.result.is_err())
    }

    pub fn failed_optional(&self) -> impl Iterator<Item = &Delivery> {
        self.deliveries.iter().filter(|d| !d.required && d.result.is_err())
    }
}

/// Sends `event` to every entry that subscribes to its kind and that `which` selects, each with
/// its own retries, one after the other.
pub fn notify(entries: &[NotifyPolicy], event: &Event, which: Which, opts: &Options) -> Outcome {
    let selected: Vec<usize> = (0..entries.len())
        // Break-glass is told to every webhook, whatever it subscribed to.
        .filter(|&i| {
            (event.kind == NotifyEvent::BreakGlass || entries[i].events.contains(&event.kind))
                && which.takes(&entries[i])
        })
        .collect();
    if selected.is_empty() {
        return Outcome::default();
    }
    let mut sender = Sender::new(opts);
    Outcome { deliveries: selected.into_iter().map(|i| sender.send(i, &entries[i], event)).collect() }
}

/// [`notify`], then the optional entries that failed go to the queue in `queue_dir` (required
/// ones are the caller's to act on).
pub fn notify_or_queue(
    queue_dir: &Path,
    entries: &[NotifyPolicy],
    event: &Event,
    which: Which,
    now: DateTime<Utc>,
    opts: &Options,
) -> Result<Outcome, QueueError> {
    let outcome = notify(entries, event, which, opts);
    enqueue_failed(queue_dir, entries, event, &outcome, now, opts)?;
    Ok(outcome)
}

/// A webhook URL that passed the checks.
struct Target {
    url: Url,
    host: String,
    loopback: bool,
}

fn target(raw: &str) -> Result<Target, SendError> {
    let url = Url::parse(raw).map_err(|e| SendError::BadUrl { reason: e.to_string() })?;
    let Some(name) = url.host_str() else {
        return Err(SendError::BadUrl { reason: "no host".into() });
    };
    let host = match url.port() {
        Some(port) => format!("{name}:{port}"),
        None => name.to_owned(),
    };
    // The URL parser has normalised the host: IPv4 in dotted form, IPv6 in brackets, names lowercase.
    let loopback = match name.strip_prefix('[').and_then(|v6| v6.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok_and(|ip| ip.is_loopback()),
        None => name == "localhost" || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback()),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        scheme => return Err(SendError::Insecure { scheme: scheme.to_owned(), host }),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(SendError::Userinfo { host });
    }
    Ok(Target { url, host, loopback })
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host() == b.host() && a.port_or_known_default() == b.port_or_known_default()
}

/// One runtime and (lazily) one client per kind of destination, for the length of a call.
struct Sender<'o> {
    opts: &'o Options,
    runtime: tokio::runtime::Runtime,
    remote: Option<reqwest::Client>,
    local: Option<reqwest::Client>,
}

enum Failure {
    Transient(SendError, Option<Duration>),
    Permanent(SendError),
}

impl<'o> Sender<'o> {
    fn new(opts: &'o Options) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime always builds");
        Sender { opts, runtime, remote: None, local: None }
    }

    fn client(&mut self, loopback: bool) -> Result<reqwest::Client, SendError> {
        let slot = if loopback { &mut self.local } else { &mut self.remote };
        if let Some(client) = slot {
            return Ok(client.clone());
        }
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            let keeps_body =
                matches!(attempt.status(), StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT);
            let same = attempt.previous().first().is_some_and(|first| same_origin(first, attempt.url()));
            if keeps_body && same && attempt.previous().len() <= MAX_REDIRECTS {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("tpa/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.opts.timeout)
            .redirect(redirects)
            .referer(false);
        builder = if loopback {
            // Loopback means loopback: no proxy, and `localhost` never resolves elsewhere.
            builder.no_proxy().resolve("localhost", SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        } else {
            builder.https_only(true)
        };
        let client = builder.build().map_err(|e| SendError::Client(e.without_url()))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    fn send(&mut self, index: usize, entry: &NotifyPolicy, event: &Event) -> Delivery {
        let mut delivery =
            Delivery { index, host: String::new(), required: entry.required, attempts: 0, result: Ok(()) };
        let target = match target(&entry.url) {
            Ok(target) => target,
            Err(e) => {
                if let SendError::Insecure { host, .. } | SendError::Userinfo { host } = &e {
                    delivery.host = host.clone();
                }
                delivery.result = Err(e);
                return delivery;
            }
        };
        delivery.host = target.host.clone();
        let client = match self.client(target.loopback) {
            Ok(client) => client,
            Err(e) => {
                delivery.result = Err(e);
                return delivery;
            }
        };
        let body = payload(entry.format, event);
        let opts = self.opts;
        let (attempts, result) =
            self.runtime.block_on(send_with_retries(&client, &target, Body::Json(&body), opts));
        delivery.attempts = attempts;
        delivery.result = result.map(drop);
        delivery
    }
}

/// What a POST carries: a webhook's JSON, or the ready bytes of another kind of receiver.
#[derive(Clone, Copy)]
enum Body<'b> {
    Json(&'b Value),
    Raw(&'b RawPost<'b>),
}

/// A body for [`Poster::post`]: bytes of a content type, and an `Authorization` value (sent as a
/// sensitive header, never shown).
pub struct RawPost<'b> {
    pub bytes: &'b [u8],
    pub content_type: &'b str,
    pub authorization: Option<&'b str>,
}

/// The webhooks' sending rules (https or loopback http, retries with jittered backoff on
/// connection errors, timeouts, 408, 429 and 5xx, errors that name the host only) for other
/// receivers: the SIEM collectors `tpa export --to` ships to. One runtime and client per poster.
pub struct Poster<'o> {
    sender: Sender<'o>,
}

/// What became of one [`Poster::post`].
#[derive(Debug)]
pub struct Posted {
    /// The receiver's host (and port): never its path or query.
    pub host: String,
    pub attempts: u32,
    /// The answer's body (its first 64 MiB) on success.
    pub result: Result<Vec<u8>, SendError>,
}

impl<'o> Poster<'o> {
    pub fn new(opts: &'o Options) -> Self {
        Poster { sender: Sender::new(opts) }
    }

    pub fn post(&mut self, url: &str, body: &RawPost<'_>) -> Posted {
        let target = match target(url) {
            Ok(target) => target,
            Err(e) => {
                let host = match &e {
                    SendError::Insecure { host, .. } | SendError::Userinfo { host } => host.clone(),
                    _ => String::new(),
                };
                return Posted { host, attempts: 0, result: Err(e) };
            }
        };
        let client = match self.sender.client(target.loopback) {
            Ok(client) => client,
            Err(e) => return Posted { host: target.host, attempts: 0, result: Err(e) },
        };
        let opts = self.sender.opts;
        let (attempts, result) =
            self.sender.runtime.block_on(send_with_retries(&client, &target, Body::Raw(body), opts));
        Posted { host: target.host, attempts, result }
    }
}

async fn send_with_retries(
    client: &reqwest::Client,
    target: &Target,
    body: Body<'_>,
    opts: &Options,
) -> (u32, Result<Vec<u8>, SendError>) {
    let attempts = opts.attempts.max(1);
    let mut n = 0;
    loop {
        n += 1;
        let (error, retry_after) = match attempt(client, target, body, opts.timeout).await {
            Ok(answer) => return (n, Ok(answer)),
            Err(Failure::Permanent(e)) => return (n, Err(e)),
            Err(Failure::Transient(e, retry_after)) => (e, retry_after),
        };
        if n >= attempts {
            return (n, Err(error));
        }
        tokio::time::sleep(backoff(opts.backoff, n, retry_after, opts.timeout)).await;
    }
}

/// The pause after failed attempt `n` (1-based): `base · 2^(n-1)`, jittered by ±50%, but at least
/// what a `Retry-After` asked for (capped at `cap`).
fn backoff(base: Duration, n: u32, retry_after: Option<Duration>, cap: Duration) -> Duration {
    let exponential = base.saturating_mul(1 << (n.saturating_sub(1)).min(16));
    let jitter = 0.5 + f64::from(OsRng.next_u32()) / f64::from(u32::MAX);
    let delay = exponential.mul_f64(jitter);
    match retry_after {
        Some(asked) => delay.max(asked.min(cap)),
        None => delay,
    }
}

async fn attempt(
    client: &reqwest::Client,
    target: &Target,
    body: Body<'_>,
    timeout: Duration,
) -> Result<Vec<u8>, Failure> {
    let host = || target.host.clone();
    let request = client.post(target.url.clone()).timeout(timeout);
    let request = match body {
        Body::Json(value) => request.json(value),
        Body::Raw(raw) => {
            let mut request =
                request.header(reqwest::header::CONTENT_TYPE, raw.content_type).body(raw.bytes.to_vec());
            if let Some(value) = raw.authorization
                && let Ok(mut value) = reqwest::header::HeaderValue::from_str(value)
            {
                value.set_sensitive(true);
                request = request.header(reqwest::header::AUTHORIZATION, value);
            }
            request
        }
    };
    let response = request.send().await.map_err(|e| {
        // reqwest's errors name the URL; ours name the host.
        let source = e.without_url();
        if source.is_timeout() {
            Failure::Transient(SendError::Timeout { host: host(), timeout, source }, None)
        } else if source.is_builder() {
            Failure::Permanent(SendError::Client(source))
        } else {
            Failure::Transient(SendError::Unreachable { host: host(), source }, None)
        }
    })?;
    let status = response.status();
    if status.is_success() {
        // A webhook's answer is not looked at; a collector's may say which events it refused.
        return Ok(match body {
            Body::Json(_) => Vec::new(),
            Body::Raw(_) => read_limited(response, ANSWER_READ_LIMIT).await,
        });
    }
    if status.is_redirection() {
        return Err(Failure::Permanent(SendError::Redirect { host: host(), status: status.as_u16() }));
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let error = SendError::Status { host: host(), status: status.as_u16(), body: snippet(response).await };
    if retryable_status(status.as_u16()) {
        Err(Failure::Transient(error, retry_after))
    } else {
        Err(Failure::Permanent(error))
    }
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes
}

/// The start of an error answer (Slack says `no_service`, `invalid_payload`...), made safe to show.
async fn snippet(response: reqwest::Response) -> String {
    let bytes = read_limited(response, BODY_READ_LIMIT).await;
    let text: String = String::from_utf8_lossy(&bytes).trim().chars().take(BODY_SNIPPET_CHARS).collect();
    crate::escape::text(&text)
}

// ---------------------------------------------------------------------------------------------
// The retry queue.

/// A notification to an optional webhook that has not been delivered yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub event: Event,
    /// The webhook's position in the policy's `[[notify]]` list when last tried.
    pub entry: usize,
    /// sha256 (hex) of the webhook's URL: the URL is a secret and is not stored.
    pub url_sha256: String,
    /// The webhook's host, for display.
    pub host: String,
    /// Failed deliveries so far, the first one included (each with its own HTTP retries).
    pub attempts: u32,
    pub first_failed_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    /// The last failure, naming the host only.
    pub last_error: String,
}

impl Pending {
    /// Failed often enough that the caller should say so loudly (it is still retried).
    pub fn exhausted(&self, opts: &Options) -> bool {
        self.attempts >= opts.queue_exhausted_after
    }

    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        self.next_attempt_at <= now
    }
}

#[derive(Serialize, Deserialize)]
struct QueueFile {
    version: u32,
    pending: Vec<Pending>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("notification queue {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "notification queue {path} cannot be read; it is left as is: note what it holds, then move it \
         aside to start afresh"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "notification queue {path} has format version {found}, this tpa reads {QUEUE_VERSION}: upgrade tpa"
    )]
    Version { path: PathBuf, found: u32 },
}

/// The queue as read from the state directory.
#[derive(Clone, Debug, Default)]
pub struct Queue {
    pending: Vec<Pending>,
}

impl Queue {
    /// Reads `<dir>/notify-queue.json`; a missing file is an empty queue.
    pub fn load(dir: &Path) -> Result<Queue, QueueError> {
        let path = dir.join(QUEUE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Queue::default()),
            Err(source) => return Err(QueueError::Io { path, source }),
        };
        let file: QueueFile = match serde_json::from_str(&text) {
            Ok(file) => file,
            Err(source) => {
                // A newer tpa's file may not parse as ours: say which version it is.
                let found = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v.get("version")?.as_u64())
                    .and_then(|v| u32::try_from(v).ok());
                return Err(match found {
                    Some(found) if found != QUEUE_VERSION => QueueError::Version { path, found },
                    _ => QueueError::Corrupt { path, source },
                });
            }
        };
        if file.version != QUEUE_VERSION {
            return Err(QueueError::Version { path, found: file.version });
        }
        Ok(Queue { pending: file.pending })
    }

    /// Every undelivered notification, oldest first.
    pub fn pending(&self) -> &[Pending] {
        &self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn save(&self, dir: &Path) -> Result<(), QueueError> {
        let path = dir.join(QUEUE_FILE);
        let err = |source| QueueError::Io { path: path.clone(), source };
        let text = serde_json::to_string_pretty(&QueueFile {
            version: QUEUE_VERSION,
            pending: self.pending.clone(),
        })
        .expect("the queue serializes");
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        tmp.write_all(text.as_bytes()).map_err(err)?;
        tmp.write_all(b"\n").map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&path).map_err(|e| err(e.error))?;
        Ok(())
    }
}

/// Held while reading-then-writing the queue (its own lock file, so a caller holding the state
/// directory's lock does not deadlock); released on drop.
struct QueueLock {
    _file: File,
}

fn lock(dir: &Path) -> Result<QueueLock, QueueError> {
    let path = dir.join(QUEUE_LOCK);
    let err = |source| QueueError::Io { path: path.clone(), source };
    let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(err)?;
    file.lock().map_err(err)?;
    Ok(QueueLock { _file: file })
}

fn url_sha256(url: &str) -> String {
    hex::encode(Sha256::digest(url.as_bytes()))
}

/// When a notification that has now failed `attempts` times is tried next.
fn next_attempt(now: DateTime<Utc>, attempts: u32, opts: &Options) -> DateTime<Utc> {
    let delay = opts
        .queue_first_retry
        .saturating_mul(1 << attempts.saturating_sub(1).min(20))
        .min(opts.queue_max_interval);
    now + TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX)
}

/// Queues the optional entries of `outcome` that failed (`entries` and `event` as given to
/// [`notify`]). Returns how many were added; one already queued for the same event and webhook is
/// not added twice.
pub fn enqueue_failed(
    queue_dir: &Path,
    entries: &[NotifyPolicy],
    event: &Event,
    outcome: &Outcome,
    now: DateTime<Utc>,
    opts: &Options,
) -> Result<usize, QueueError> {
    let failed: Vec<&Delivery> = outcome.failed_optional().filter(|d| d.index < entries.len()).collect();
    if failed.is_empty() {
        return Ok(0);
    }
    // The queue keeps what payloads show: a repository URL's credentials stay out of it too.
    let event = &Event { repo: redact_repo(&event.repo), ..event.clone() };
    let _lock = lock(queue_dir)?;
    let mut queue = Queue::load(queue_dir)?;
    let mut added = 0;
    for delivery in failed {
        let url_sha256 = url_sha256(&entries[delivery.index].url);
        if queue.pending.iter().any(|p| p.url_sha256 == url_sha256 && p.event == *event) {
            continue;
        }
        let last_error = match &delivery.result {
            Err(e) => e.to_string(),
            Ok(()) => unreachable!("failed_optional yields failures"),
        };
        queue.pending.push(Pending {
            event: event.clone(),
            entry: delivery.index,
            url_sha256,
            host: delivery.host.clone(),
            attempts: 1,
            first_failed_at: now,
            next_attempt_at: next_attempt(now, 1, opts),
            last_error,
        });
        added += 1;
    }
    if added > 0 {
        queue.save(queue_dir)?;
    }
    Ok(added)
}

#[derive(Clone, Copy)]
enum Fate {
    Kept,
    Delivered,
    Dropped,
    Failed,
}

/// What [`retry_due`] did.
#[derive(Debug, Default)]
pub struct RetryReport {
    /// Sent now, and so gone from the queue.
    pub delivered: Vec<Pending>,
    /// Tried and failed again: still queued, with the new attempt count, error and next attempt.
    pub failed: Vec<Pending>,
    /// Their webhook's URL is no longer in the policy: removed from the queue, for the caller to
    /// record or show.
    pub dropped: Vec<Pending>,
    /// What stays queued.
    pub remaining: Vec<Pending>,
}

/// Sends the queued notifications that are due at `now` to their webhook in `entries` (found by
/// its URL's hash, whatever its position now) and keeps the rest. After one failure to a webhook,
/// that webhook's other due notifications wait for the next call, so a dead webhook costs one
/// round of attempts per call, not one per notification. Delivery is at least once.
pub fn retry_due(
    queue_dir: &Path,
    entries: &[NotifyPolicy],
    now: DateTime<Utc>,
    opts: &Options,
) -> Result<RetryReport, QueueError> {
    let _lock = lock(queue_dir)?;
    let queue = Queue::load(queue_dir)?;
    if queue.is_empty() {
        return Ok(RetryReport::default());
    }
    let hashes: Vec<String> = entries.iter().map(|e| url_sha256(&e.url)).collect();
    let mut pending = queue.pending;
    // The longest-waiting first, so that a dead webhook's notifications take turns.
    let mut order: Vec<usize> = (0..pending.len()).collect();
    order.sort_by_key(|&i| pending[i].next_attempt_at);
    let mut fates = vec![Fate::Kept; pending.len()];
    let mut sender: Option<Sender<'_>> = None;
    let mut failed_webhooks = BTreeSet::new();
    for i in order {
        let p = &mut pending[i];
        let index = if hashes.get(p.entry) == Some(&p.url_sha256) {
            Some(p.entry)
        } else {
            hashes.iter().position(|h| *h == p.url_sha256)
        };
        let Some(index) = index else {
            fates[i] = Fate::Dropped;
            continue;
        };
        p.entry = index;
        if !p.is_due(now) || failed_webhooks.contains(&index) {
            continue;
        }
        let delivery = sender.get_or_insert_with(|| Sender::new(opts)).send(index, &entries[index], &p.event);
        match delivery.result {
            Ok(()) => fates[i] = Fate::Delivered,
            Err(e) => {
                failed_webhooks.insert(index);
                p.attempts = p.attempts.saturating_add(1);
                p.last_error = e.to_string();
                p.next_attempt_at = next_attempt(now, p.attempts, opts);
                fates[i] = Fate::Failed;
            }
        }
    }
    let mut report = RetryReport::default();
    for (p, fate) in pending.into_iter().zip(fates) {
        match fate {
            Fate::Kept => report.remaining.push(p),
            Fate::Delivered => report.delivered.push(p),
            Fate::Dropped => report.dropped.push(p),
            Fate::Failed => {
                report.failed.push(p.clone());
                report.remaining.push(p);
            }
        }
    }
    if !(report.delivered.is_empty() && report.failed.is_empty() && report.dropped.is_empty()) {
        Queue { pending: report.remaining.clone() }.save(queue_dir)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
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

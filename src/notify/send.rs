//! Sending: an HTTP POST per attempt, bounded, retried with jittered backoff; `https://` (or
//! `http://` to loopback) only; redirects to the same origin only; errors name the host, never the
//! URL's path or query.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand_core::{OsRng, RngCore};
use reqwest::header::RETRY_AFTER;
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::queue::{QueueError, enqueue_failed};
use super::{Event, payload};
use crate::policy::{NotifyEvent, NotifyPolicy};

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

const MAX_REDIRECTS: usize = 5;
/// How much of an error response's body is read, and how many characters of it are kept.
const BODY_READ_LIMIT: usize = 4096;
const BODY_SNIPPET_CHARS: usize = 200;
/// How much of a successful answer to a [`Poster`] is read.
const ANSWER_READ_LIMIT: usize = 64 << 20;

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

pub(super) fn retryable_status(status: u16) -> bool {
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
pub(super) struct Target {
    url: Url,
    host: String,
    loopback: bool,
}

pub(super) fn target(raw: &str) -> Result<Target, SendError> {
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
pub(super) struct Sender<'o> {
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
    pub(super) fn new(opts: &'o Options) -> Self {
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

    pub(super) fn send(&mut self, index: usize, entry: &NotifyPolicy, event: &Event) -> Delivery {
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
pub(super) fn backoff(base: Duration, n: u32, retry_after: Option<Duration>, cap: Duration) -> Duration {
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

//! Shipping OCSF events (src/ocsf.rs) to where a SIEM picks them up: a writer (stdout, or a file a
//! log shipper tails) or an HTTP collector, in the collector's own format:
//!
//! - Splunk HTTP Event Collector (`…/services/collector/event`): `{"time": s, "source": "tpa",
//!   "sourcetype": "ocsf", "event": {…}}` objects, one after the other, `Authorization: Splunk TOKEN`;
//! - Elasticsearch / OpenSearch `_bulk` (`…/INDEX/_bulk`): `{"create":{"_id": UID}}` then the event,
//!   NDJSON, `Authorization: ApiKey TOKEN`. `create` with the event's stable uid as `_id` makes a
//!   re-shipped event a 409 that is counted as already there, not a copy;
//! - anything else: the JSON lines themselves (`application/x-ndjson`), `Authorization: Bearer TOKEN`.
//!
//! HTTP goes through the webhooks' sender (notify::Poster): https, or http to a loopback host;
//! retries with jittered backoff on connection errors, timeouts, 408, 429 and 5xx; errors name the
//! collector's host and never its path or query (a HEC token may ride in `?token=`).

use std::io::Write;
use std::ops::Range;

use serde::Deserialize;

use crate::notify::{self, Poster, RawPost, SendError};

/// Events serialized, one JSON object each, in one buffer.
#[derive(Default)]
pub struct Batch {
    buf: Vec<u8>,
    items: Vec<Item>,
}

struct Item {
    range: Range<usize>,
    uid: String,
    time_ms: i64,
}

impl Batch {
    /// Appends one event (serialized here) with its stable uid and time.
    pub fn push(&mut self, event: &impl serde::Serialize, uid: &str, time_ms: i64) {
        let start = self.buf.len();
        serde_json::to_writer(&mut self.buf, event).expect("events always serialize");
        self.items.push(Item { range: start..self.buf.len(), uid: uid.to_owned(), time_ms });
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }

    fn json(&self, item: &Item) -> &[u8] {
        &self.buf[item.range.clone()]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("cannot write the events: {0}")]
    Write(#[source] std::io::Error),
    #[error("the collector {host} was not told ({attempts} attempt(s))")]
    Http {
        host: String,
        attempts: u32,
        #[source]
        source: SendError,
    },
    #[error("the collector {host} refused {refused} of {sent} event(s): {first}")]
    Refused { host: String, refused: usize, sent: usize, first: String },
    #[error("--to: {0}")]
    BadUrl(String),
}

/// Where events go.
pub trait Sink {
    fn send(&mut self, batch: &Batch) -> Result<(), ShipError>;
    /// Everything sent is durable where it went (flushed, synced, acknowledged).
    fn finish(&mut self) -> Result<(), ShipError>;
}

/// JSON lines to a writer (stdout).
pub struct WriterSink<W: Write> {
    out: W,
}

impl<W: Write> WriterSink<W> {
    pub fn new(out: W) -> Self {
        WriterSink { out }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

fn write_lines(out: &mut impl Write, batch: &Batch) -> std::io::Result<()> {
    for item in &batch.items {
        out.write_all(batch.json(item))?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

impl<W: Write> Sink for WriterSink<W> {
    fn send(&mut self, batch: &Batch) -> Result<(), ShipError> {
        write_lines(&mut self.out, batch).map_err(ShipError::Write)
    }

    fn finish(&mut self) -> Result<(), ShipError> {
        self.out.flush().map_err(ShipError::Write)
    }
}

/// JSON lines appended to a file (a log shipper tails it), synced to disk by `finish`.
pub struct FileSink {
    out: std::io::BufWriter<std::fs::File>,
}

impl FileSink {
    pub fn append(path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FileSink { out: std::io::BufWriter::with_capacity(1 << 20, file) })
    }
}

impl Sink for FileSink {
    fn send(&mut self, batch: &Batch) -> Result<(), ShipError> {
        write_lines(&mut self.out, batch).map_err(ShipError::Write)
    }

    fn finish(&mut self) -> Result<(), ShipError> {
        self.out.flush().map_err(ShipError::Write)?;
        self.out.get_ref().sync_data().map_err(ShipError::Write)
    }
}

/// The body format an HTTP collector takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Collector {
    /// Splunk HTTP Event Collector (`/services/collector/event`).
    Hec,
    /// Elasticsearch / OpenSearch `_bulk`.
    Bulk,
    /// JSON lines as they are.
    Lines,
}

impl Collector {
    /// From the URL's path: `…/services/collector[/event]` is HEC, `…/_bulk` is bulk.
    pub fn detect(url: &str) -> Collector {
        let path = url.split(['?', '#']).next().unwrap_or("").trim_end_matches('/');
        if path.ends_with("/services/collector/event") || path.ends_with("/services/collector") {
            Collector::Hec
        } else if path.ends_with("/_bulk") {
            Collector::Bulk
        } else {
            Collector::Lines
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            Collector::Hec => "Splunk",
            Collector::Bulk => "ApiKey",
            Collector::Lines => "Bearer",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Collector::Hec => "application/json",
            Collector::Bulk | Collector::Lines => "application/x-ndjson",
        }
    }
}

/// Events POSTed to a collector, at most `max_bytes` a request.
pub struct HttpSink<'o> {
    url: String,
    collector: Collector,
    authorization: Option<String>,
    poster: Poster<'o>,
    max_bytes: usize,
    body: Vec<u8>,
    /// Events delivered, and of them those the collector already had (bulk's 409).
    pub delivered: usize,
    pub duplicates: usize,
    pub requests: usize,
}

impl<'o> HttpSink<'o> {
    pub fn new(
        url: &str,
        collector: Collector,
        token: Option<&str>,
        opts: &'o notify::Options,
        max_bytes: usize,
    ) -> Result<Self, ShipError> {
        let bare_bulk = reqwest::Url::parse(url).is_ok_and(|u| u.path().trim_end_matches('/') == "/_bulk");
        if collector == Collector::Bulk && bare_bulk {
            return Err(ShipError::BadUrl("name the index in the URL: https://HOST:9200/INDEX/_bulk".into()));
        }
        Ok(HttpSink {
            url: url.to_owned(),
            collector,
            authorization: token.map(|t| format!("{} {t}", collector.scheme())),
            poster: Poster::new(opts),
            max_bytes: max_bytes.max(1),
            body: Vec::new(),
            delivered: 0,
            duplicates: 0,
            requests: 0,
        })
    }

    fn encode(&self, batch: &Batch, item: &Item, out: &mut Vec<u8>) {
        let json = batch.json(item);
        match self.collector {
            Collector::Hec => {
                let seconds = item.time_ms as f64 / 1000.0;
                out.extend_from_slice(
                    format!("{{\"time\":{seconds:.3},\"source\":\"tpa\",\"sourcetype\":\"ocsf\",\"event\":")
                        .as_bytes(),
                );
                out.extend_from_slice(json);
                out.extend_from_slice(b"}\n");
            }
            Collector::Bulk => {
                let action = serde_json::json!({ "create": { "_id": item.uid } });
                serde_json::to_writer(&mut *out, &action).expect("json");
                out.push(b'\n');
                out.extend_from_slice(json);
                out.push(b'\n');
            }
            Collector::Lines => {
                out.extend_from_slice(json);
                out.push(b'\n');
            }
        }
    }

    fn flush_body(&mut self, sent: usize) -> Result<(), ShipError> {
        if sent == 0 {
            return Ok(());
        }
        let post = RawPost {
            bytes: &self.body,
            content_type: self.collector.content_type(),
            authorization: self.authorization.as_deref(),
        };
        let posted = self.poster.post(&self.url, &post);
        self.requests += 1;
        let answer = posted.result.map_err(|source| ShipError::Http {
            host: posted.host.clone(),
            attempts: posted.attempts,
            source,
        })?;
        if self.collector == Collector::Bulk {
            let (refused, duplicates, first) = bulk_outcome(&answer);
            if refused > 0 {
                return Err(ShipError::Refused { host: posted.host, refused, sent, first });
            }
            self.duplicates += duplicates;
        }
        self.delivered += sent;
        self.body.clear();
        Ok(())
    }
}

impl Sink for HttpSink<'_> {
    fn send(&mut self, batch: &Batch) -> Result<(), ShipError> {
        let mut in_body = 0;
        let mut one = Vec::new();
        for item in &batch.items {
            one.clear();
            self.encode(batch, item, &mut one);
            if in_body > 0 && self.body.len() + one.len() > self.max_bytes {
                self.flush_body(in_body)?;
                in_body = 0;
            }
            self.body.extend_from_slice(&one);
            in_body += 1;
        }
        self.flush_body(in_body)
    }

    fn finish(&mut self) -> Result<(), ShipError> {
        Ok(())
    }
}

#[derive(Deserialize)]
struct BulkAnswer {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// (refused, already there, the first refusal's reason) from a `_bulk` answer. An answer that
/// is not one counts as fully refused: nothing proves the events arrived.
fn bulk_outcome(answer: &[u8]) -> (usize, usize, String) {
    let Ok(answer) = serde_json::from_slice::<BulkAnswer>(answer) else {
        return (1, 0, "the answer is not a _bulk response".into());
    };
    if !answer.errors {
        return (0, 0, String::new());
    }
    let mut refused = 0;
    let mut duplicates = 0;
    let mut first = String::new();
    for item in answer.items.iter().flat_map(|i| i.values()) {
        match item.status {
            200..=299 => {}
            409 => duplicates += 1,
            _ => {
                refused += 1;
                if first.is_empty() {
                    let error = item.error.as_ref();
                    let kind = error.and_then(|e| e["type"].as_str()).unwrap_or("error");
                    let reason = error.and_then(|e| e["reason"].as_str()).unwrap_or("");
                    let text: String = format!("{kind}: {reason}").chars().take(200).collect();
                    first = crate::escape::text(&text);
                }
            }
        }
    }
    (refused, duplicates, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collectors_are_told_apart_by_path() {
        assert_eq!(Collector::detect("https://s:8088/services/collector/event?token=x"), Collector::Hec);
        assert_eq!(Collector::detect("https://s:8088/services/collector"), Collector::Hec);
        assert_eq!(Collector::detect("https://es:9200/tpa/_bulk"), Collector::Bulk);
        assert_eq!(Collector::detect("https://logs.example.com/ingest"), Collector::Lines);
    }

    #[test]
    fn bulk_answers_count_refusals_and_duplicates() {
        assert_eq!(bulk_outcome(br#"{"errors":false,"items":[]}"#).0, 0);
        let answer = br#"{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":409,
            "error":{"type":"version_conflict_engine_exception"}}},{"create":{"status":400,
            "error":{"type":"mapper_parsing_exception","reason":"bad \u001b field"}}}]}"#;
        let (refused, duplicates, first) = bulk_outcome(answer);
        assert_eq!((refused, duplicates), (1, 1));
        assert!(first.starts_with("mapper_parsing_exception") && !first.contains('\u{1b}'), "{first}");
        assert_eq!(bulk_outcome(b"<html>").0, 1);
    }
}

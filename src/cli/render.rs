//! Shared rendering: escaping hostile text, short ids, record rows.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::escape;
use crate::ledger::verify::CheckedRecord;

pub fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        // thiserror messages often embed their source; do not say it twice.
        if parts.last().is_some_and(|prev| prev.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    escape::controls(&parts.join(": "))
}

pub fn short(oid: &str) -> &str {
    &oid[..oid.len().min(10)]
}

pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `refs/heads/hotfix/x` -> `hotfix/x`, escaped.
pub fn branch(refname: &str) -> String {
    escape::text(refname.strip_prefix("refs/heads/").unwrap_or(refname))
}

pub fn status(checked: &CheckedRecord) -> String {
    if checked.is_verified() {
        return "verified".to_owned();
    }
    let kinds: Vec<String> = checked.findings.iter().map(|f| f.kind.as_str().to_owned()).collect();
    format!("FAILED: {}", kinds.join(", "))
}

/// One record as `tpa log --json` and `tpa show --json` print it.
pub fn record_json(checked: &CheckedRecord) -> serde_json::Value {
    json!({
        "commit": checked.annotated.to_string(),
        "line": checked.line_no,
        "verified": checked.is_verified(),
        "findings": checked.findings,
        "payload_sha256": checked.payload_sha256,
        "record": checked.record,
    })
}

/// A spinner on stderr while tpa waits on the network; nothing at all when stderr is not a terminal.
pub struct Spinner {
    stop: Option<(std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>)>,
    message: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Spinner {
    pub fn start(message: &str) -> Spinner {
        use std::io::{IsTerminal, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        let shared = std::sync::Arc::new(std::sync::Mutex::new(escape::text(message)));
        if !std::io::stderr().is_terminal() {
            return Spinner { stop: None, message: shared };
        }
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let message = shared.clone();
        let handle = std::thread::spawn(move || {
            let frames = ['|', '/', '-', '\\'];
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                let text = message.lock().map(|m| m.clone()).unwrap_or_default();
                let _ = write!(std::io::stderr(), "\r\x1b[2K{} {text}", frames[i % frames.len()]);
                i += 1;
                std::thread::park_timeout(std::time::Duration::from_millis(100));
            }
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        });
        Spinner { stop: Some((stop, handle)), message: shared }
    }

    /// What the spinner says from now on.
    pub fn set_message(&self, message: &str) {
        if let Ok(mut m) = self.message.lock() {
            *m = escape::text(message);
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.stop.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

/// A value clap refused, shown short: the argument, an excerpt of the value, and why.
pub fn invalid_value(error: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let text = |kind| match error.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let arg = text(ContextKind::InvalidArg).unwrap_or_else(|| "an argument".into());
    let value = text(ContextKind::InvalidValue).unwrap_or_default();
    let why = std::error::Error::source(error).map(|s| s.to_string()).unwrap_or_else(|| "invalid".into());
    format!(
        "invalid value `{}` for {}: {}",
        crate::escape::excerpt(&value),
        arg,
        crate::escape::controls(&why)
    )
}

//! The retry queue of optional webhooks that could not be told: positions in the policy and a
//! sha256 of each URL, never the URL.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::send::{Delivery, Options, Outcome, Sender};
use super::{Event, redact_repo};
use crate::policy::NotifyPolicy;

/// The queue's file name in the state directory.
pub const QUEUE_FILE: &str = "notify-queue.json";
const QUEUE_LOCK: &str = "notify-queue.lock";
const QUEUE_VERSION: u32 = 1;

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

pub(super) fn url_sha256(url: &str) -> String {
    hex::encode(Sha256::digest(url.as_bytes()))
}

/// When a notification that has now failed `attempts` times is tried next.
pub(super) fn next_attempt(now: DateTime<Utc>, attempts: u32, opts: &Options) -> DateTime<Utc> {
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

//! `tpa export`: every ledger record as one OCSF event (src/ocsf.rs), shipped to a sink
//! (src/siem.rs). With a cursor file, a scheduled job ships each record once: the cursor names the
//! notes commit whose records were all shipped, and the next run ships the records of the tip that
//! were not in that commit (a tree diff of the two notes trees, line by line, so records merged in
//! from another clone by `tpa sync` are found even when they are older than the cursor).
//!
//! Delivery is at-least-once: the cursor moves only after the sink says everything is durable
//! (flushed and synced, or acknowledged by the collector). A crash in between ships the same
//! records again on the next run, as the same events: an event's `metadata.uid` is the sha256 of
//! the record's signed payload, so a SIEM can drop the copy (Elasticsearch does, by `_id`).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use git2::{Oid, Repository};
use serde::{Deserialize, Serialize};

use crate::grant::{GrantId, Principal, Record, RecordKind};
use crate::ledger::signers::AllowedSigners;
use crate::ledger::verify::{self, CheckedRecord};
use crate::ledger::{self, NoteLine, StoredLine, notes};
use crate::ocsf::{self, RecordInput, SignatureInfo};
use crate::ops::init::ALLOWED_SIGNERS_PATH;
use crate::siem::{Batch, ShipError, Sink};
use crate::trust::TrustRef;

const CURSOR_VERSION: u32 = 1;
/// Events built and handed to the sink at a time.
const CHUNK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Notes(#[from] notes::NotesError),
    #[error("git error while reading the ledger: {0}")]
    Git(#[from] git2::Error),
    #[error("cursor {path}: {source}")]
    CursorIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cursor {path} cannot be read; it is left as is: move it aside to ship everything again")]
    CursorCorrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cursor {path} has format version {found}, this tpa reads {CURSOR_VERSION}: upgrade tpa")]
    CursorVersion { path: PathBuf, found: u32 },
    #[error(
        "cursor {path} belongs to the ledger of {theirs}, not {ours}: give each repository its own cursor file"
    )]
    OtherRepo { path: PathBuf, theirs: String, ours: String },
    #[error(transparent)]
    Ship(#[from] ShipError),
}

/// What the cursor file holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cursor {
    pub version: u32,
    /// The repository whose ledger it follows (credentials stripped).
    pub repo: String,
    /// Every record in this notes commit was shipped.
    pub notes_tip: Option<String>,
    /// Events shipped through this cursor so far.
    pub shipped: u64,
    pub updated_at: DateTime<Utc>,
}

impl Cursor {
    fn load(path: &Path) -> Result<Option<Cursor>, ExportError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ExportError::CursorIo { path: path.to_owned(), source }),
        };
        let cursor: Cursor =
            serde_json::from_str(&text).map_err(|source| match serde_json::from_str::<serde_json::Value>(
                &text,
            )
            .ok()
            .and_then(|v| v["version"].as_u64())
            {
                Some(found) if found != u64::from(CURSOR_VERSION) => {
                    ExportError::CursorVersion { path: path.to_owned(), found: found as u32 }
                }
                _ => ExportError::CursorCorrupt { path: path.to_owned(), source },
            })?;
        if cursor.version != CURSOR_VERSION {
            return Err(ExportError::CursorVersion { path: path.to_owned(), found: cursor.version });
        }
        Ok(Some(cursor))
    }

    /// Written to a temporary file, synced, then renamed over the old one.
    fn save(&self, path: &Path) -> Result<(), ExportError> {
        let err = |source| ExportError::CursorIo { path: path.to_owned(), source };
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        let text = serde_json::to_string_pretty(self).expect("the cursor serializes");
        tmp.write_all(text.as_bytes()).map_err(err)?;
        tmp.write_all(b"\n").map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(path).map_err(|e| err(e.error))?;
        Ok(())
    }
}

/// Held for the whole run, so two scheduled jobs on one cursor cannot both ship the same records.
fn lock_cursor(path: &Path) -> Result<File, ExportError> {
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    let lock = PathBuf::from(lock);
    let err = |source| ExportError::CursorIo { path: lock.clone(), source };
    let file = File::options().create(true).truncate(false).write(true).open(&lock).map_err(err)?;
    file.lock().map_err(err)?;
    Ok(file)
}

#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// The cursor file: None ships every record and remembers nothing.
    pub cursor: Option<PathBuf>,
    pub now: DateTime<Utc>,
    /// Check each record's signature and signer (`unmapped.tpa.verified`). Off, a large backfill
    /// ships several times faster; `tpa audit` and `tpa verify` check the ledger anyway.
    pub verify: bool,
}

/// What an export did.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    pub repo: String,
    pub events: usize,
    /// The notes commit shipped from (the cursor's) and up to.
    pub from_tip: Option<String>,
    pub to_tip: Option<String>,
    /// The cursor's notes commit is not in the repository (history rewritten and collected):
    /// every record at the tip was shipped again.
    pub cursor_lost: bool,
    /// Note lines that are no readable record (`tpa verify` reports them); not shipped.
    pub unreadable: usize,
}

/// Ships the records of the ledger that the cursor has not seen to `sink`, then moves the cursor.
pub fn export(
    repo: &Repository,
    options: &ExportOptions,
    sink: &mut dyn Sink,
) -> Result<ExportReport, ExportError> {
    let repo_name = crate::ops::context::repo_url(repo);
    let _lock = options.cursor.as_deref().map(lock_cursor).transpose()?;
    let cursor = match &options.cursor {
        Some(path) => Cursor::load(path)?,
        None => None,
    };
    if let (Some(cursor), Some(path)) = (&cursor, &options.cursor)
        && cursor.repo != repo_name
    {
        return Err(ExportError::OtherRepo {
            path: path.clone(),
            theirs: cursor.repo.clone(),
            ours: repo_name,
        });
    }
    let tip = notes::tip(repo)?;
    let from = cursor.as_ref().and_then(|c| c.notes_tip.as_deref()).and_then(|t| Oid::from_str(t).ok());
    let from_commit = from.and_then(|f| repo.find_commit(f).ok());
    let cursor_lost = from.is_some() && from_commit.is_none();
    let (lines, context) = match (tip, &from_commit) {
        (None, _) => (Vec::new(), Vec::new()),
        (Some(tip), Some(old)) if old.id() == tip => (Vec::new(), Vec::new()),
        (Some(tip), Some(old)) => new_lines(repo, &old.tree()?, tip)?,
        (Some(tip), None) => (ledger::read_lines(repo, Some(tip))?, Vec::new()),
    };
    let signers = options.verify.then(|| signers(repo));
    let shipped = ship_lines(lines, &context, signers.as_ref(), &|_| true, sink)?;
    sink.finish()?;
    // A test build can stop here, as a crash would: everything shipped, the cursor not moved.
    #[cfg(feature = "testing")]
    if std::env::var_os("TPA_TEST_CRASH_BEFORE_CURSOR").is_some() {
        std::process::abort();
    }
    if let Some(path) = &options.cursor {
        Cursor {
            version: CURSOR_VERSION,
            repo: repo_name.clone(),
            notes_tip: tip.map(|t| t.to_string()),
            shipped: cursor.as_ref().map_or(0, |c| c.shipped) + shipped.events as u64,
            updated_at: options.now,
        }
        .save(path)?;
    }
    Ok(ExportReport {
        repo: repo_name,
        events: shipped.events,
        from_tip: from.map(|f| f.to_string()),
        to_tip: tip.map(|t| t.to_string()),
        cursor_lost,
        unreadable: shipped.unreadable,
    })
}

/// The lines at `tip` that are not in the notes tree `old`, and the other lines of the notes they
/// are in (where their grants' intents are).
fn new_lines(
    repo: &Repository,
    old: &git2::Tree,
    tip: Oid,
) -> Result<(Vec<StoredLine>, Vec<String>), ExportError> {
    let new = repo.find_commit(tip)?.tree()?;
    let mut changed = Vec::new();
    notes::changed_notes(repo, Some(old), &new, "", &mut changed)?;
    if changed.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let wanted: HashSet<Oid> = changed.iter().map(|n| n.annotated).collect();
    let before: HashMap<Oid, Oid> = notes::list_notes(repo, old)?
        .into_iter()
        .filter(|n| wanted.contains(&n.annotated))
        .map(|n| (n.annotated, n.blob))
        .collect();
    let mut lines = Vec::new();
    let mut context = Vec::new();
    for note in changed {
        let had: HashSet<Vec<u8>> = match before.get(&note.annotated) {
            Some(blob) => {
                repo.find_blob(*blob)?.content().split(|b| *b == b'\n').map(<[u8]>::to_vec).collect()
            }
            None => HashSet::new(),
        };
        let blob = repo.find_blob(note.blob)?;
        for (index, raw) in blob.content().split(|b| *b == b'\n').enumerate() {
            if raw.is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(raw).into_owned();
            if had.contains(raw) {
                context.push(text);
            } else {
                lines.push(StoredLine { annotated: note.annotated, line_no: index + 1, text });
            }
        }
    }
    Ok((lines, context))
}

/// allowed_signers at the trust ref; none readable: every signer unknown (events say unverified).
pub fn signers(repo: &Repository) -> AllowedSigners {
    TrustRef::resolve(repo)
        .ok()
        .and_then(|t| t.read_file(repo, ALLOWED_SIGNERS_PATH).ok().flatten())
        .and_then(|bytes| AllowedSigners::parse(&String::from_utf8_lossy(&bytes)).ok())
        .unwrap_or_default()
}

/// A line read without checking its signature: the record and its payload's sha256, if it parses.
fn parse_only(line: &StoredLine) -> CheckedRecord {
    let note = serde_json::from_str::<NoteLine>(&line.text).ok();
    let record = note.as_ref().and_then(|n| serde_json::from_str::<Record>(&n.payload).ok());
    CheckedRecord {
        annotated: line.annotated,
        line_no: line.line_no,
        payload_sha256: note
            .as_ref()
            .filter(|_| record.is_some())
            .map(|n| crate::grant::sha256_hex(n.payload.as_bytes())),
        record,
        signer: None,
        findings: Vec::new(),
    }
}

pub struct Shipped {
    pub events: usize,
    pub unreadable: usize,
}

/// Checks `lines` (signature and signer, each on its own, when `signers` are given), builds an
/// event per record that `keep` takes, oldest first, and sends them to `sink` in chunks. `context`
/// are other note lines that may hold the intents (grantees) of these records' grants.
pub fn ship_lines(
    lines: Vec<StoredLine>,
    context: &[String],
    signers: Option<&AllowedSigners>,
    keep: &dyn Fn(&Record) -> bool,
    sink: &mut dyn Sink,
) -> Result<Shipped, ExportError> {
    let sigs: Vec<Option<String>> =
        lines.iter().map(|l| serde_json::from_str::<NoteLine>(&l.text).ok().map(|n| n.sig)).collect();
    let checked = match signers {
        Some(signers) => verify::check_lines(lines, signers),
        None => lines.iter().map(parse_only).collect(),
    };
    let mut checked: Vec<(CheckedRecord, Option<String>)> = checked.into_iter().zip(sigs).collect();
    let unreadable = checked.iter().filter(|(c, _)| c.record.is_none()).count();
    checked.retain(|(c, _)| c.record.as_ref().is_some_and(keep));
    checked.sort_by(|(a, _), (b, _)| {
        verify::issued_at(a)
            .cmp(&verify::issued_at(b))
            .then(a.annotated.cmp(&b.annotated))
            .then(a.line_no.cmp(&b.line_no))
    });

    let mut grantees: HashMap<GrantId, Principal> = HashMap::new();
    for (c, _) in &checked {
        if let Some(r) = c.record.as_ref().filter(|r| r.kind == RecordKind::Intent) {
            grantees.insert(r.grant_id.clone(), r.principal.clone());
        }
    }
    let mut requesters: HashMap<GrantId, Principal> = HashMap::new();
    for text in context {
        let record = serde_json::from_str::<NoteLine>(text)
            .ok()
            .and_then(|l| serde_json::from_str::<Record>(&l.payload).ok());
        match record {
            Some(r) if r.kind == RecordKind::Intent => {
                grantees.entry(r.grant_id.clone()).or_insert(r.principal);
            }
            Some(r) if r.kind == RecordKind::Request => {
                requesters.insert(r.grant_id.clone(), r.principal);
            }
            _ => {}
        }
    }
    for (c, _) in &checked {
        if let Some(r) = c.record.as_ref().filter(|r| r.kind == RecordKind::Request) {
            requesters.insert(r.grant_id.clone(), r.principal.clone());
        }
    }
    // A grant asked for with a request is the requester's, whoever (a broker) wrote its intent.
    grantees.extend(requesters);

    let mut batch = Batch::default();
    let mut events = 0;
    for chunk in checked.chunks(CHUNK) {
        batch.clear();
        for (c, sig) in chunk {
            let record = c.record.as_ref().expect("kept records parse");
            let verified = signers.map(|_| c.is_verified());
            let signature = sig.as_deref().and_then(|s| SignatureInfo::from_armored(s, verified));
            let note_commit = c.annotated.to_string();
            let sha = c.payload_sha256.as_deref().unwrap_or_default();
            let input = RecordInput {
                record,
                payload_sha256: sha,
                grantee: grantees.get(&record.grant_id),
                signature: signature.as_ref(),
                verified,
                note_commit: &note_commit,
                note_line: c.line_no,
            };
            batch.push(&ocsf::record_event(&input), sha, record.issued_at.timestamp_millis());
        }
        sink.send(&batch)?;
        events += batch.len();
    }
    Ok(Shipped { events, unreadable })
}

//! The ledger: signed records as lines of git notes under `refs/notes/tpa`.
//!
//! A note line is `{"payload": "<JSON string>", "sig": "<armored SSHSIG, namespace tpa>"}`; the
//! signed bytes are exactly the UTF-8 bytes of `payload` (see docs/ledger-format.md).

pub mod check;
pub mod delivery;
pub mod grant_index;
pub mod notes;
pub mod records_cache;
pub mod restore;
pub mod signature;
pub mod signers;
pub mod signing;
pub mod verify;
pub mod verify_cache;

use git2::{Oid, Repository};
use serde::{Deserialize, Serialize};

use crate::grant::{Record, RecordError, sha256_hex};
use signing::{Signer, SigningError};

pub use notes::NOTES_REF;

/// One line of a note, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteLine {
    pub payload: String,
    pub sig: String,
}

impl NoteLine {
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("strings always serialize")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("refusing to record an invalid record: {0}")]
    InvalidRecord(#[from] RecordError),
    #[error("cannot sign the record: {0}")]
    Signing(#[from] SigningError),
    #[error("cannot write the ledger: {0}")]
    Notes(#[from] notes::NotesError),
    #[error("record names commit {0}, which is not a valid object id")]
    BadCommit(String),
}

/// What an append wrote.
#[derive(Clone, Debug)]
pub struct Appended {
    /// sha256 of the payload bytes: what later records of the grant name as `intent_sha256`.
    pub payload_sha256: String,
    pub notes_commit: Oid,
}

/// Signs `record` and appends it to the note on its commit, compare-and-swap.
pub fn append(repo: &Repository, record: &Record, signer: &Signer) -> Result<Appended, LedgerError> {
    publish(repo, prepare(repo, record, signer)?)
}

/// A record signed and written as objects, not yet on the ledger: see [`notes::PreparedLine`].
pub struct Prepared {
    payload_sha256: String,
    line: notes::PreparedLine,
}

/// Does all of [`append`] but move the notes ref: [`publish`] does that, or nothing does and the
/// record was never on the ledger.
pub fn prepare(repo: &Repository, record: &Record, signer: &Signer) -> Result<Prepared, LedgerError> {
    record.validate()?;
    let annotated =
        Oid::from_str(&record.commit).map_err(|_| LedgerError::BadCommit(record.commit.clone()))?;
    let payload = record.to_payload();
    let sig = signer.sign(payload.as_bytes())?;
    let payload_sha256 = sha256_hex(payload.as_bytes());
    let line = NoteLine { payload, sig }.to_line();
    Ok(Prepared { payload_sha256, line: notes::prepare_line(repo, annotated, &line)? })
}

/// Puts a prepared record on the ledger (compare-and-swap, rebuilt on a tip that moved).
pub fn publish(repo: &Repository, prepared: Prepared) -> Result<Appended, LedgerError> {
    let notes_commit = notes::publish(repo, prepared.line)?;
    Ok(Appended { payload_sha256: prepared.payload_sha256, notes_commit })
}

/// A line of a note at the ledger's tip, unparsed.
#[derive(Clone, Debug)]
pub struct StoredLine {
    pub annotated: Oid,
    /// 1-based line number within the note.
    pub line_no: usize,
    pub text: String,
}

/// Every line of every note in the notes commit `tip` (for export and the audit's events, which
/// read records without the checks across records).
pub fn read_lines(repo: &Repository, tip: Option<Oid>) -> Result<Vec<StoredLine>, git2::Error> {
    let Some(tip) = tip else { return Ok(Vec::new()) };
    let tree = repo.find_commit(tip)?.tree()?;
    let mut out = Vec::new();
    for note in notes::list_notes(repo, &tree)? {
        let blob = repo.find_blob(note.blob)?;
        for (line_no, raw) in verify::numbered_lines(blob.content()) {
            out.push(StoredLine {
                annotated: note.annotated,
                line_no,
                text: String::from_utf8_lossy(raw).into_owned(),
            });
        }
    }
    Ok(out)
}

/// Switches libgit2's object cache on or off for the process. The full check (`tpa verify`, the
/// audit's first step) reads each notes commit and tree once, so the cache only holds them: up to
/// 256 MiB for each repository handle, and the check opens one per core. Measured with
/// bench/audit.sh's ledgers: peak memory of `tpa verify --full` at 300,000 records 1,084 MB with
/// the cache, 429 MB without, in the same time (docs/verify.md, "Cost"). The audit's history
/// checks walk commits more than once, and switch it back on.
pub fn cache_objects(on: bool) {
    git2::opts::enable_caching(on);
}

//! tpa's local state, in git's common dir (shared by worktrees) under `tpa/`. Never secrets.
//! Every write is atomic (temporary file + rename) under a file lock.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ledger::restore::{ReflogMark, Searched};
use git2::{Oid, Repository};

#[derive(Debug, thiserror::Error)]
#[error("tpa state in {path}: {source}")]
pub struct StateError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

pub struct StateDir {
    dir: PathBuf,
}

/// Held while reading-then-writing state; released on drop.
pub struct StateLock {
    _file: File,
}

const WITNESS: &str = "witness";
const RESTORE_CURSOR: &str = "restore-cursor";
const BROKER_CURSOR: &str = "broker-cursor";

impl StateDir {
    pub fn open(repo: &Repository) -> Result<Self, StateError> {
        let dir = repo.commondir().join("tpa");
        fs::create_dir_all(&dir).map_err(|source| StateError { path: dir.clone(), source })?;
        Ok(StateDir { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn lock(&self) -> Result<StateLock, StateError> {
        self.lock_named("lock")
    }

    /// Held by whoever revokes (`tpa revoke`, the sweep) from reading the ledger to writing the
    /// revoke records: two revocations of one grant in this clone then make one record and one
    /// policy version, the second finding it already revoked.
    pub fn revocation_lock(&self) -> Result<StateLock, StateError> {
        self.lock_named("revoke.lock")
    }

    fn lock_named(&self, name: &str) -> Result<StateLock, StateError> {
        let path = self.dir.join(name);
        let err = |source| StateError { path: path.clone(), source };
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(err)?;
        file.lock().map_err(err)?;
        Ok(StateLock { _file: file })
    }

    fn read(&self, name: &str) -> Result<Option<String>, StateError> {
        let path = self.dir.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError { path, source }),
        }
    }

    fn write(&self, _lock: &StateLock, name: &str, contents: &str) -> Result<(), StateError> {
        let path = self.dir.join(name);
        let err = |source| StateError { path: path.clone(), source };
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(err)?;
        tmp.write_all(contents.as_bytes()).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&path).map_err(|e| err(e.error))?;
        Ok(())
    }

    /// The notes-ref tip tpa last verified: a later tip must descend from it.
    pub fn witness(&self) -> Result<Option<Oid>, StateError> {
        Ok(self.read(WITNESS)?.and_then(|text| Oid::from_str(text.trim()).ok()))
    }

    pub fn set_witness(&self, lock: &StateLock, tip: Oid) -> Result<(), StateError> {
        self.write(lock, WITNESS, &format!("{tip}\n"))
    }

    /// The verify cache (src/ledger/verify_cache.rs), as stored.
    pub fn verify_cache(&self) -> Result<Option<Vec<u8>>, StateError> {
        self.read_cache(crate::ledger::verify_cache::FILE)
    }

    pub fn set_verify_cache(&self, _lock: &StateLock, bytes: &[u8]) -> Result<(), StateError> {
        self.write_cache(crate::ledger::verify_cache::FILE, bytes)
    }

    /// The records cache (src/ledger/records_cache.rs), as stored.
    pub fn records_cache(&self) -> Result<Option<Vec<u8>>, StateError> {
        self.read_cache(crate::ledger::records_cache::FILE)
    }

    /// Without the state lock: the records are read under it and outside it, and two writers each
    /// leave a whole file (the last one stays), which is all a cache needs.
    pub fn set_records_cache(&self, bytes: &[u8]) -> Result<(), StateError> {
        self.write_cache(crate::ledger::records_cache::FILE, bytes)
    }

    /// The grant index (src/ledger/grant_index.rs), as stored.
    pub fn grant_index(&self) -> Result<Option<Vec<u8>>, StateError> {
        self.read_cache(crate::ledger::grant_index::FILE)
    }

    /// Without the state lock, as the records cache.
    pub fn set_grant_index(&self, bytes: &[u8]) -> Result<(), StateError> {
        self.write_cache(crate::ledger::grant_index::FILE, bytes)
    }

    fn read_cache(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        let path = self.dir.join(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError { path, source }),
        }
    }

    /// Replaces a cache atomically (a reader sees the old file or the new one). Not synced to disk,
    /// unlike the other state: a cache a crash left short fails its own digest and costs a check in
    /// full, while syncing megabytes would cost every `tpa verify`.
    fn write_cache(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        let path = self.dir.join(name);
        let err = |source| StateError { path: path.clone(), source };
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(err)?;
        tmp.write_all(bytes).map_err(err)?;
        tmp.persist(&path).map_err(|e| err(e.error))?;
        Ok(())
    }

    /// The notes tip the broker's last pass read: the next reports lines that are no record only
    /// in the notes changed since.
    pub fn broker_cursor(&self) -> Result<Option<Oid>, StateError> {
        Ok(self.read(BROKER_CURSOR)?.and_then(|text| Oid::from_str(text.trim()).ok()))
    }

    pub fn set_broker_cursor(&self, lock: &StateLock, tip: Oid) -> Result<(), StateError> {
        self.write(lock, BROKER_CURSOR, &format!("{tip}\n"))
    }

    /// How far the last search for removed records went: its tip, then (in a second line) where
    /// it stopped reading the notes ref's reflog. Without that line, every logged tip is walked.
    pub fn restore_cursor(&self) -> Result<Option<Searched>, StateError> {
        let Some(text) = self.read(RESTORE_CURSOR)? else { return Ok(None) };
        let mut lines = text.lines();
        let Some(tip) = lines.next().and_then(|l| Oid::from_str(l.trim()).ok()) else { return Ok(None) };
        let reflog = lines.next().and_then(|line| {
            let mut fields = line.split(' ');
            let length = fields.next()?.parse().ok()?;
            let newest = (Oid::from_str(fields.next()?).ok()?, Oid::from_str(fields.next()?).ok()?);
            let mark = ReflogMark { length, newest };
            fields.next().is_none().then_some(mark)
        });
        Ok(Some(Searched { tip, reflog }))
    }

    pub fn set_restore_cursor(&self, lock: &StateLock, searched: &Searched) -> Result<(), StateError> {
        let mut text = format!("{}\n", searched.tip);
        if let Some(m) = &searched.reflog {
            text.push_str(&format!("{} {} {}\n", m.length, m.newest.0, m.newest.1));
        }
        self.write(lock, RESTORE_CURSOR, &text)
    }
}

const ACTIVE: &str = "active.json";
const LEFT: &str = "left.json";

/// A grant this clone holds, as the hooks' fast path needs it (no secret).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LocalGrant {
    pub branch: String,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// What to deny should every record of the grant vanish from the ledger (role ARN), and the
    /// provider that issued it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The policy's database, for database grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

pub type LocalGrants = std::collections::BTreeMap<String, LocalGrant>;
/// When HEAD left each branch (full refname), for "abandoned" after `abandon_after`.
pub type LeftBranches = std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>>;

impl StateDir {
    /// The index of grants this clone holds. A damaged file reads as empty: the ledger, not this
    /// index, is the truth, and `tpa sweep` rebuilds what matters from it.
    pub fn local_grants(&self) -> Result<LocalGrants, StateError> {
        Ok(self.read(ACTIVE)?.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default())
    }

    pub fn set_local_grants(&self, lock: &StateLock, grants: &LocalGrants) -> Result<(), StateError> {
        self.write(lock, ACTIVE, &serde_json::to_string_pretty(grants).expect("serializes"))
    }

    pub fn left_branches(&self) -> Result<LeftBranches, StateError> {
        Ok(self.read(LEFT)?.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default())
    }

    pub fn set_left_branches(&self, lock: &StateLock, left: &LeftBranches) -> Result<(), StateError> {
        self.write(lock, LEFT, &serde_json::to_string_pretty(left).expect("serializes"))
    }
}

impl LocalGrant {
    /// The index entry of a grant, from its grant record.
    pub fn of(record: &crate::grant::Record) -> Self {
        LocalGrant {
            branch: record.branch.clone(),
            expires_at: record.expires_at,
            target: Some(record.target.clone()),
            provider: Some(record.provider.clone()),
            database: record.database.clone(),
        }
    }
}

/// Adds a grant this clone just took to the hooks' index.
pub fn index_grant(
    repo: &Repository,
    grant_id: &crate::grant::GrantId,
    grant: LocalGrant,
) -> Result<(), StateError> {
    let state = StateDir::open(repo)?;
    let lock = state.lock()?;
    let mut grants = state.local_grants()?;
    grants.insert(grant_id.to_string(), grant);
    state.set_local_grants(&lock, &grants)
}

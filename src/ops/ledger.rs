//! Reading the ledger: `tpa log`, `tpa show` and `tpa verify` all go through here.

use git2::{Oid, Repository};

use crate::ledger::signers::{AllowedSigners, SignersError};
use crate::ledger::verify::{self, CheckedRecord, Report};
use crate::ledger::{check, grant_index, notes, records_cache, restore, verify_cache};
use crate::ops::init::ALLOWED_SIGNERS_PATH;
use crate::policy::POLICY_PATH;
use crate::state::{StateDir, StateError};
use crate::trust::{TrustError, TrustRef};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(
        "{ALLOWED_SIGNERS_PATH} is not committed at the trust ref {0}: run `tpa init`, commit .tpa/ and \
         get it merged there through review"
    )]
    NoSigners(String),
    #[error("{ALLOWED_SIGNERS_PATH} at the trust ref {refname}: {source}")]
    BadSigners {
        refname: String,
        #[source]
        source: SignersError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("git error while reading the ledger: {0}")]
    Git(#[from] git2::Error),
    #[error(transparent)]
    Notes(#[from] notes::NotesError),
}

/// The ledger as checked, with the trust ref it was checked against.
pub struct LedgerView {
    pub trust: Option<TrustRef>,
    pub report: Report,
}

pub fn load_signers(repo: &Repository, trust: &TrustRef) -> Result<AllowedSigners, InspectError> {
    let bytes = trust
        .read_file(repo, ALLOWED_SIGNERS_PATH)?
        .ok_or_else(|| InspectError::NoSigners(trust.refname.clone()))?;
    AllowedSigners::parse(&String::from_utf8_lossy(&bytes))
        .map_err(|source| InspectError::BadSigners { refname: trust.refname.clone(), source })
}

/// Like [`records`], but a trust ref without allowed_signers checks records against nobody
/// (every signer unknown) instead of failing: for flows that only need authentic records.
pub fn records_lenient(repo: &Repository) -> Result<LedgerView, InspectError> {
    match records(repo) {
        Err(InspectError::NoSigners(_)) => {
            let tip = notes::tip(repo)?;
            let report = read_records(repo, tip, &AllowedSigners::default())?;
            Ok(LedgerView { trust: TrustRef::resolve(repo).ok(), report })
        }
        other => other,
    }
}

/// Every record at the tip with its own checks (signature, signer, place, intent). No history walk.
pub fn records(repo: &Repository) -> Result<LedgerView, InspectError> {
    let tip = notes::tip(repo)?;
    let Some((trust, signers)) = trusted_signers(repo, tip)? else {
        return Ok(LedgerView { trust: TrustRef::resolve(repo).ok(), report: Report::empty(tip) });
    };
    Ok(LedgerView { trust: Some(trust), report: read_records(repo, tip, &signers)? })
}

/// The trust ref and its signers, or None when there is nothing to check (no note at the tip), so
/// that an empty ledger needs no trust ref.
fn trusted_signers(
    repo: &Repository,
    tip: Option<Oid>,
) -> Result<Option<(TrustRef, AllowedSigners)>, InspectError> {
    let Some(tip) = tip else { return Ok(None) };
    let loaded = TrustRef::resolve(repo)
        .map_err(InspectError::from)
        .and_then(|trust| Ok((load_signers(repo, &trust)?, trust)));
    match loaded {
        Ok((signers, trust)) => Ok(Some((trust, signers))),
        Err(e) => {
            let tree = repo.find_commit(tip)?.tree()?;
            if notes::list_notes(repo, &tree)?.is_empty() { Ok(None) } else { Err(e) }
        }
    }
}

fn read_records(
    repo: &Repository,
    tip: Option<Oid>,
    signers: &AllowedSigners,
) -> Result<Report, InspectError> {
    let Some(tip) = tip else { return Ok(Report::empty(None)) };
    // The records at a tip, checked against given signers, are a pure function of the two: a
    // command that reads the ledger several times (the broker's pass, the sweep and its index
    // rebuild) checks the signatures once while nothing is written. A new record moves the tip.
    let key = (repo.path().to_owned(), tip, crate::ledger::verify_cache::trust_digest(signers, None));
    if let Some(report) = recently_read(&key) {
        return Ok(report);
    }
    let checked = check_through_cache(repo, tip, signers, None, true)?;
    let (mut records, git_copies, ledger_findings) = checked.into_records();
    sort_newest_first(&mut records);
    let report = Report { tip: Some(tip), records, git_copies, ledger_findings };
    *RECENTLY_READ.lock().unwrap_or_else(|e| e.into_inner()) = Some((key, report.clone()));
    Ok(report)
}

/// Every note at `tip` (`None`), or the given ones, checked without the history against
/// `signers` through the records cache: a signature it lists as verified before is not verified
/// again, and it learns the blobs found clean (a check of every note lists exactly those).
fn check_through_cache(
    repo: &Repository,
    tip: Oid,
    signers: &AllowedSigners,
    some: Option<&[notes::Note]>,
    keep: bool,
) -> Result<check::Checked, InspectError> {
    let cache = RecordsCache::open(repo, signers);
    let options = check::Options {
        keep_records: keep,
        history: false,
        verified_before: cache.as_ref().map(RecordsCache::verified_before),
    };
    let checked = match some {
        None => check::full(repo, tip, signers, options)?,
        Some(notes) => check::some(repo, tip, notes, signers, options)?,
    };
    match (cache, some) {
        (Some(cache), None) => cache.update(&checked),
        (Some(cache), Some(_)) => cache.learn(&checked),
        (None, _) => {}
    }
    Ok(checked)
}

/// The records cache of a clone (src/ledger/records_cache.rs), for reads of the records at the
/// tip against the trust ref's signers: status, show, log, the sweep, the broker. Not for the
/// checks an organisation relies on (`tpa verify`, `tpa audit`: they never read through here), nor
/// for a read against no signers (nothing would be clean, and the cache of the real signers would
/// be lost). A cache that cannot be read or written costs a read in full, never an error.
struct RecordsCache {
    state: StateDir,
    key: verify_cache::Key,
    listed: Vec<Oid>,
}

impl RecordsCache {
    fn open(repo: &Repository, signers: &AllowedSigners) -> Option<Self> {
        if signers.entries.is_empty() {
            return None;
        }
        let state = StateDir::open(repo).ok()?;
        let key = verify_cache::Key::this_build(verify_cache::trust_digest(signers, None));
        let listed = match state.records_cache() {
            Ok(Some(bytes)) => records_cache::decode(&bytes, &key).unwrap_or_default(),
            _ => Vec::new(),
        };
        Some(RecordsCache { state, key, listed })
    }

    /// In increasing order (as decoded).
    fn verified_before(&self) -> &[Oid] {
        &self.listed
    }

    /// Adds the clean blobs of a check of some notes to what the cache lists. Blobs no longer
    /// at the tip stay listed until a read in full rewrites the list: a listed blob is one whose
    /// lines passed, wherever it is.
    fn learn(self, checked: &check::Checked) {
        let mut listed = self.listed.clone();
        listed.extend(checked.notes.iter().filter(|n| n.is_clean()).map(|n| n.note.blob));
        listed.sort();
        listed.dedup();
        if listed != self.listed {
            let _ = self.state.set_records_cache(&records_cache::encode(&self.key, &listed));
        }
    }

    /// Lists the clean blobs at this tip, if that is not what the cache lists already.
    fn update(self, checked: &check::Checked) {
        let mut clean: Vec<Oid> =
            checked.notes.iter().filter(|n| n.is_clean()).map(|n| n.note.blob).collect();
        clean.sort();
        clean.dedup();
        if clean != self.listed {
            // Best effort: a cache not written costs the next read its signature checks.
            let _ = self.state.set_records_cache(&records_cache::encode(&self.key, &clean));
        }
    }
}

type ReadKey = (std::path::PathBuf, Oid, [u8; 32]);

/// The last records this process read and checked, by (repository, tip, signers).
static RECENTLY_READ: std::sync::Mutex<Option<(ReadKey, Report)>> = std::sync::Mutex::new(None);

fn recently_read(key: &ReadKey) -> Option<Report> {
    let memo = RECENTLY_READ.lock().unwrap_or_else(|e| e.into_inner());
    memo.as_ref().filter(|(k, _)| k == key).map(|(_, report)| report.clone())
}

/// A reading of some grants' records through the grant index (src/ledger/grant_index.rs): the
/// tip and the signers it is read against. `ops::grants` keeps the index; this is its plumbing.
pub struct IndexedReading {
    pub tip: Oid,
    signers: AllowedSigners,
    key: verify_cache::Key,
    state: StateDir,
}

/// What a check of notes gives the grant index: each note with the grants its lines are records
/// of, and the records with their findings.
pub struct NotesRead {
    pub notes: Vec<grant_index::IndexedNote>,
    pub records: Vec<CheckedRecord>,
    /// The lines that are no record: the note each is on, and its 1-based line number.
    pub strays: Vec<(notes::Note, usize)>,
}

/// A line that is no record: the object its note annotates, and its 1-based line number.
pub type Stray = (Oid, usize);

/// None when there is no index to keep: an empty ledger, a trust ref without allowed_signers
/// (whose records are read against nobody: [`records_lenient`]), or no state dir to keep it in (a
/// read-only `.git`: these reads never needed one, and read in full without).
pub fn indexed_reading(repo: &Repository) -> Result<Option<IndexedReading>, InspectError> {
    let Some(tip) = notes::tip(repo)? else { return Ok(None) };
    let signers = match trusted_signers(repo, Some(tip)) {
        Ok(Some((_, signers))) if !signers.entries.is_empty() => signers,
        Ok(_) | Err(InspectError::NoSigners(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Ok(state) = StateDir::open(repo) else { return Ok(None) };
    let key = verify_cache::Key::this_build(verify_cache::trust_digest(&signers, None));
    Ok(Some(IndexedReading { tip, signers, key, state }))
}

impl IndexedReading {
    /// The index this clone keeps for these signers (of whatever tip), if it is whole.
    pub fn index(&self) -> Option<grant_index::GrantIndex> {
        let bytes = self.state.grant_index().ok()??;
        grant_index::decode(&bytes, &self.key).ok()
    }

    /// Best effort: an index not written costs the next reader a read in full.
    pub fn save(&self, index: &grant_index::GrantIndex) {
        let _ = self.state.set_grant_index(&grant_index::encode(&self.key, index));
    }

    /// The notes whose blobs differ between the notes tree at `old` and at the tip; None when they
    /// cannot be compared (`old`, or a tree of it, is no longer in the repository: a read in full
    /// then says whether the tip's own objects are all there).
    pub fn changed_since(&self, repo: &Repository, old: Oid) -> Option<Vec<notes::NoteChange>> {
        let old_tree = repo.find_commit(old).and_then(|c| c.tree()).ok()?;
        let tip_tree = repo.find_commit(self.tip).and_then(|c| c.tree()).ok()?;
        let mut changes = Vec::new();
        if old_tree.id() != tip_tree.id() {
            notes::diff_notes(repo, Some(&old_tree), Some(&tip_tree), &notes::Dir::root(), &mut changes)
                .ok()?;
        }
        changes.sort_by_key(|c| c.key);
        Some(changes)
    }

    /// Checks every note at the tip (`None`), or the given ones, as [`records`] does
    /// ([`check_through_cache`]); with `keep`, their records too.
    pub fn check(
        &self,
        repo: &Repository,
        some: Option<&[notes::Note]>,
        keep: bool,
    ) -> Result<NotesRead, InspectError> {
        let checked = check_through_cache(repo, self.tip, &self.signers, some, keep)?;
        let notes = checked
            .notes
            .iter()
            .map(|n| {
                let mut grants: Vec<verify::GrantKey> =
                    n.lines.iter().filter_map(|l| l.facts.as_ref().map(|f| f.grant)).collect();
                grants.sort();
                grants.dedup();
                grant_index::IndexedNote { note: n.note, grants }
            })
            .collect();
        let strays = checked
            .notes
            .iter()
            .flat_map(|n| n.lines.iter().filter(|l| l.facts.is_none()).map(|l| (n.note, l.line_no as usize)))
            .collect();
        let records = if keep { checked.into_records().0 } else { Vec::new() };
        Ok(NotesRead { notes, records, strays })
    }
}

/// How `tpa verify` went about it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Coverage {
    /// Every record and the whole history, and why.
    Full { reason: String },
    /// What is new since the witness, with the verify cache.
    SinceWitness { witness: String, commits: usize, notes_checked: usize },
}

/// What `tpa verify` found.
pub struct Verified {
    pub trust: Option<TrustRef>,
    pub tip: Option<Oid>,
    pub summary: check::Summary,
    pub coverage: Coverage,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions {
    /// After an operator examined a reported rewrite: accept the current tip as the witness.
    pub accept_rewrite: bool,
    /// Check everything, whatever the verify cache holds.
    pub full: bool,
}

/// `tpa verify`: every record and the notes ref's history, checked in full or, with a verify
/// cache written at the witness, since the witness (the same findings; see docs/verify.md). A
/// tip that passes the rewrite check becomes the new witness, with a new cache beside it;
/// `accept_rewrite` re-anchors the witness after an operator has looked into a rewrite.
pub fn verify(repo: &Repository, options: VerifyOptions) -> Result<Verified, InspectError> {
    crate::ledger::cache_objects(false);
    let tip = notes::tip(repo)?;
    let state = StateDir::open(repo)?;
    let Some(tip_id) = tip else {
        let mut summary = check::Summary::default();
        if !options.accept_rewrite {
            summary.findings.extend(verify::check_witness(repo, None, state.witness()?));
        }
        let coverage = Coverage::Full { reason: "the ledger is empty".into() };
        return Ok(Verified { trust: TrustRef::resolve(repo).ok(), tip, summary, coverage });
    };
    let trusted = trusted_signers(repo, tip)?;
    let trust = trusted.as_ref().map(|(t, _)| t.clone());
    let signers = trusted.map(|(_, s)| s).unwrap_or_default();
    let policy_blob = match &trust {
        Some(trust) => committed_blob(repo, trust.commit, POLICY_PATH)?,
        None => None,
    };
    let key = verify_cache::Key::this_build(verify_cache::trust_digest(&signers, policy_blob));

    let witness = state.witness()?;
    let (checked, coverage) = match plan(repo, &state, &key, witness, tip_id, options.full)? {
        Plan::Since(base) => {
            let witness = base.tip.to_string();
            let (checked, delta) = check::since(repo, base, tip_id, &signers)?;
            let coverage = Coverage::SinceWitness {
                witness,
                commits: delta.commits,
                notes_checked: delta.notes_checked,
            };
            (checked, coverage)
        }
        Plan::Full(reason) => {
            let options = check::Options { keep_records: false, history: true, verified_before: None };
            (check::full(repo, tip_id, &signers, options)?, Coverage::Full { reason })
        }
    };
    let mut summary = checked.summary();

    let lock = state.lock()?;
    let witness_now = state.witness()?;
    match verify::check_witness(repo, tip, witness_now) {
        Some(rewritten) if !options.accept_rewrite => summary.findings.push(rewritten),
        _ => {
            // The cache first, then the witness: a run stopped between the two leaves a cache
            // for another tip than the witness, which is not used.
            let unchanged = witness_now == Some(tip_id) && matches!(coverage, Coverage::SinceWitness { .. });
            if !unchanged {
                state.set_verify_cache(&lock, &verify_cache::encode(&key, &checked))?;
                state.set_witness(&lock, tip_id)?;
            }
        }
    }
    Ok(Verified { trust, tip, summary, coverage })
}

enum Plan {
    Full(String),
    Since(check::Base),
}

/// Whether the verify cache may stand in for the checks up to the witness: only a cache that
/// passes its own digest, was written by this build against the same trust, describes the tip that
/// is the witness, and whose tip the ledger's tip descends from. Anything else is a full check.
fn plan(
    repo: &Repository,
    state: &StateDir,
    key: &verify_cache::Key,
    witness: Option<Oid>,
    tip: Oid,
    full: bool,
) -> Result<Plan, InspectError> {
    if full {
        return Ok(Plan::Full("asked for (--full)".into()));
    }
    let Some(witness) = witness else { return Ok(Plan::Full("no verified tip yet".into())) };
    let Some(bytes) = state.verify_cache()? else { return Ok(Plan::Full("no verify cache".into())) };
    let base = match verify_cache::decode(&bytes, key) {
        Ok(base) => base,
        Err(refused) => return Ok(Plan::Full(format!("the verify cache was not used: {refused}"))),
    };
    if base.tip != witness {
        return Ok(Plan::Full("the verify cache is for another tip than the witness".into()));
    }
    let descends = tip == witness || repo.graph_descendant_of(tip, witness).unwrap_or(false);
    if !descends {
        return Ok(Plan::Full("the ledger's tip does not descend from the witness".into()));
    }
    Ok(Plan::Since(base))
}

/// The blob id of `path` at `commit`, or None when it is not there.
fn committed_blob(repo: &Repository, commit: Oid, path: &str) -> Result<Option<Oid>, git2::Error> {
    let tree = repo.find_commit(commit)?.tree()?;
    match tree.get_path(std::path::Path::new(path)) {
        Ok(entry) => Ok(Some(entry.id())),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The ledger checked as [`verify`] checks it, always in full, without moving the witness (for
/// `tpa audit`, which only reads); its records are read by [`CheckedLedger::stream_records`].
pub struct CheckedLedger {
    pub trust: Option<TrustRef>,
    pub tip: Option<Oid>,
    checked: Option<check::Checked>,
    witness: Option<verify::Finding>,
}

pub fn verify_read_only(repo: &Repository) -> Result<CheckedLedger, InspectError> {
    let tip = notes::tip(repo)?;
    let (trust, checked) = match (tip, trusted_signers(repo, tip)?) {
        (Some(tip), Some((trust, signers))) => {
            let options = check::Options { keep_records: false, history: true, verified_before: None };
            // Off for the full check only: the audit's history checks walk commits more than once.
            crate::ledger::cache_objects(false);
            let checked = check::full(repo, tip, &signers, options);
            crate::ledger::cache_objects(true);
            (Some(trust), Some(checked?))
        }
        _ => (TrustRef::resolve(repo).ok(), None),
    };
    let witness = verify::check_witness(repo, tip, StateDir::open(repo)?.witness()?);
    Ok(CheckedLedger { trust, tip, checked, witness })
}

impl CheckedLedger {
    /// Hands the records with their findings to `each`, a batch at a time, each batch with every
    /// record of the grants it has records of (src/ledger/check.rs, `stream_records`). Returns
    /// the findings about the ledger as a whole: its history, and the witness.
    pub fn stream_records(
        self,
        repo: &Repository,
        each: impl FnMut(Vec<CheckedRecord>),
    ) -> Result<Vec<verify::Finding>, InspectError> {
        let mut findings = match self.checked {
            Some(checked) => checked.stream_records(repo, each)?,
            None => Vec::new(),
        };
        findings.extend(self.witness);
        Ok(findings)
    }
}

fn sort_newest_first(records: &mut [CheckedRecord]) {
    records.sort_by_key(newest_first);
}

/// The order `tpa log` and `tpa verify` list records in: newest first, then by note and, within a
/// note, the later line first.
pub fn newest_first(record: &CheckedRecord) -> impl Ord + Copy + use<> {
    (std::cmp::Reverse(verify::issued_at(record)), record.annotated, std::cmp::Reverse(record.line_no))
}

/// Puts back every signed record that was removed from the ledger since the last search (the
/// whole history and the notes ref's reflog the first time), and returns what came back. The
/// search resumes from the tip it examined, so a sweep pays only for what is new.
pub fn restore_removed(repo: &Repository) -> Result<Vec<restore::RemovedLine>, InspectError> {
    let state = StateDir::open(repo)?;
    let lock = state.lock()?;
    let (examined, removed) = restore::removed_lines(repo, state.restore_cursor()?)?;
    if !removed.is_empty() {
        restore::restore(repo, &removed)?;
    }
    if let Some(searched) = examined {
        state.set_restore_cursor(&lock, &searched)?;
    }
    Ok(removed)
}

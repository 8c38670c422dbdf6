//! Running the checks of src/ledger/verify.rs over a notes tip: in full (every record and the
//! notes ref's whole history), or since the last verified tip with what the verify cache holds.
//!
//! The full check is what an auditor's CI runs on a fresh clone. Its work is cut into units that
//! the cores take in turn, each thread with its own handle on the repository (a `Repository` is
//! not shared across threads), at most one thread per core: the tip's notes (a unit per top-level
//! fan-out directory), their records (signatures are most of the CPU), and the history. Every
//! object is read once: the history reads each distinct tree of the notes ref's past once, skips
//! every subtree that is also in the tip (all of its notes are at the tip), and reads only the
//! blobs that are no longer at the tip.
//!
//! On hashing what is read. libgit2 holds every object it reads to its id with SHA-1DC (its "strict
//! hash verification", git's SHA-1 with collision detection). The history walk reads with that
//! switched off and holds each tree and earlier note version to its id with plain SHA-1 instead
//! ([`notes::read_checked`]; on x86's SHA instructions where the CPU has them): at 100,000 grants
//! the walk reads about 5 GB (300,000 notes commits' trees, every earlier version of every note),
//! and SHA-1DC over it was a fifth of the full check's CPU. What is given up is collision detection
//! on those objects: an object rewritten in place under its old id is still refused (damage, an
//! altered copy in a shared object store, a bit flip in a pack's delta offsets that makes another
//! version stand for this one), unless its rewritten bytes were made beforehand to collide with the
//! original under SHA-1, by whoever wrote that original into the ledger. The tip's note blobs, the
//! signed records themselves, stay under libgit2's SHA-1DC. The switch is the process's
//! ([`UnhashedReads`]): only a process that runs one check at a time switches it
//! ([`checks_run_one_at_a_time`]); elsewhere the walk's reads are hashed by both.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use git2::{Oid, Repository};
use sha2::{Digest, Sha256};

use super::notes::{self, Dir, Entry, Note, NoteKey, RawTree};
use super::signature::KeyCache;
use super::signers::AllowedSigners;
use super::verify::{self, Finding, Kept, Line, Placed};

/// A note at the tip, with its lines checked (now, or by an earlier run: the verify cache).
#[derive(Clone, Debug)]
pub struct CheckedNote {
    pub note: Note,
    pub lines: Vec<Line>,
    /// The record and signer of each line (same order as `lines`); only when asked for.
    pub records: Vec<Kept>,
    /// Checked in this run from its blob (not taken from the cache).
    pub fresh: bool,
}

impl CheckedNote {
    /// Every line passed its own checks: what the verify cache may keep for this blob.
    pub fn is_clean(&self) -> bool {
        self.lines.iter().all(Line::is_clean)
    }
}

/// A line that was in an earlier state of a note and is not at the tip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    pub annotated: Oid,
    /// sha256 of the line's bytes: stable across runs, unlike the keyed hashes used to compare.
    pub line_sha256: [u8; 32],
    pub finding: Finding,
}

/// The checks over one notes tip.
#[derive(Debug)]
pub struct Checked {
    pub tip: Oid,
    /// Every note at the tip, ordered by key.
    pub notes: Vec<CheckedNote>,
    /// What the history walk found, ordered by commit and line digest. Empty when not walked.
    pub removed: Vec<Removed>,
}

/// What a `tpa verify` reports of a [`Checked`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Lines at the tip, copies git made set aside.
    pub records: usize,
    pub findings: Vec<Finding>,
    pub git_copies: Vec<verify::GitCopy>,
}

impl Checked {
    fn placed(&self) -> Vec<Placed<'_>> {
        self.notes
            .iter()
            .flat_map(|n| n.lines.iter().map(move |line| Placed { annotated: n.note.key.annotated, line }))
            .collect()
    }

    /// Findings of every line, then of the history, in an order that does not depend on how the
    /// lines were checked (a full check and one since the witness report the same list).
    pub fn summary(&self) -> Summary {
        let placed = self.placed();
        let across = verify::check_across(&placed);
        let mut extra: HashMap<usize, Vec<&Finding>> = HashMap::new();
        for (index, finding) in &across.findings {
            extra.entry(*index).or_default().push(finding);
        }
        let mut summary = Summary { git_copies: across.git_copies.clone(), ..Summary::default() };
        for (index, p) in placed.iter().enumerate() {
            if across.copies[index] {
                continue;
            }
            summary.records += 1;
            summary.findings.extend(p.line.findings.iter().cloned());
            summary.findings.extend(extra.get(&index).into_iter().flatten().map(|f| (*f).clone()));
        }
        summary.findings.extend(self.removed.iter().map(|r| r.finding.clone()));
        summary
    }

    /// The records with their findings (for log, show, status and the broker), copies git made
    /// set aside. Needs a check that kept records.
    pub fn into_records(self) -> (Vec<verify::CheckedRecord>, Vec<verify::GitCopy>, Vec<Finding>) {
        let mut across = self.across_by_line();
        let mut out = Vec::new();
        let mut first = 0;
        for note in self.notes {
            let kept = note.records;
            first = across.records_of(note.note.key.annotated, note.lines, kept, first, &mut out);
        }
        (out, across.git_copies, self.removed.into_iter().map(|r| r.finding).collect())
    }

    /// [`Self::into_records`] for a check that kept no records, and a reader that cannot hold them
    /// all at once (the audit of an organisation's ledger: 300,000 parsed records are most of a
    /// gigabyte). The notes' blobs are read again, a few hundred notes at a time on the cores, and
    /// `each` gets the records batch by batch, in note order. Each batch holds every record of each
    /// grant it has a record of: records of a grant spread over several notes (hand edits, or two
    /// fan-outs of one commit's note) are held back for the last batch. Signatures are not
    /// verified again: each record carries this check's findings. Returns the findings about the
    /// history.
    pub fn stream_records(
        self,
        repo: &Repository,
        mut each: impl FnMut(Vec<verify::CheckedRecord>),
    ) -> Result<Vec<Finding>, git2::Error> {
        let mut across = self.across_by_line();
        let spread = self.grants_on_several_notes(&across.copies);
        let mut held = Vec::new();
        let mut first = 0;
        let per_batch = notes_per_batch();
        let mut notes = self.notes.into_iter();
        loop {
            let batch: Vec<CheckedNote> = notes.by_ref().take(per_batch).collect();
            if batch.is_empty() {
                break;
            }
            let units: Vec<&[CheckedNote]> = batch.chunks(RECORDS_PER_UNIT.min(batch.len())).collect();
            let reread = parallel(repo.path(), units, |worker, unit| {
                let mut records = Vec::with_capacity(unit.len());
                for note in unit {
                    let blob = worker.repo.find_blob(note.note.blob)?;
                    let raw: Vec<&[u8]> =
                        verify::numbered_lines(blob.content()).map(|(_, raw)| raw).collect();
                    // The same bytes as the check read: libgit2's strict hash check holds a blob to its
                    // id, so nobody can swap the lines between the check and this read.
                    debug_assert_eq!(raw.len(), note.lines.len());
                    records.push(
                        note.lines
                            .iter()
                            .zip(raw)
                            .map(|(line, raw)| verify::reread_line(line, raw))
                            .collect(),
                    );
                }
                Ok(records)
            })?;
            let mut out = Vec::new();
            for (note, kept) in batch.into_iter().zip(reread.into_iter().flatten()) {
                first = across.records_of(note.note.key.annotated, note.lines, kept, first, &mut out);
            }
            if !spread.is_empty() {
                let (later, now): (Vec<_>, Vec<_>) = out.into_iter().partition(|r| {
                    r.record
                        .as_ref()
                        .is_some_and(|record| spread.contains(&verify::GrantKey::of(&record.grant_id)))
                });
                held.extend(later);
                out = now;
            }
            each(out);
        }
        if !held.is_empty() {
            each(held);
        }
        Ok(self.removed.into_iter().map(|r| r.finding).collect())
    }

    /// The grants with records on more than one note (copies git made, which are set aside, not
    /// counted).
    fn grants_on_several_notes(&self, copies: &[bool]) -> HashSet<verify::GrantKey> {
        let mut note_of: HashMap<verify::GrantKey, NoteKey> = HashMap::new();
        let mut spread = HashSet::new();
        let lines = self.notes.iter().flat_map(|n| n.lines.iter().map(move |line| (n.note.key, line)));
        for ((key, line), copy) in lines.zip(copies) {
            let Some(facts) = line.facts.as_ref().filter(|_| !copy) else { continue };
            if *note_of.entry(facts.grant).or_insert(key) != key {
                spread.insert(facts.grant);
            }
        }
        spread
    }

    fn across_by_line(&self) -> AcrossByLine {
        let across = {
            let placed = self.placed();
            verify::check_across(&placed)
        };
        let mut extra: HashMap<usize, Vec<Finding>> = HashMap::new();
        for (index, finding) in across.findings {
            extra.entry(index).or_default().push(finding);
        }
        AcrossByLine { copies: across.copies, extra, git_copies: across.git_copies }
    }
}

/// What the checks across records found, by a line's place among all lines at the tip.
struct AcrossByLine {
    copies: Vec<bool>,
    extra: HashMap<usize, Vec<Finding>>,
    git_copies: Vec<verify::GitCopy>,
}

impl AcrossByLine {
    /// The records of one note's lines, the first of them at place `first`, with their findings;
    /// copies git made are left out. Returns the place of the next note's first line.
    fn records_of(
        &mut self,
        annotated: Oid,
        lines: Vec<Line>,
        kept: Vec<Kept>,
        first: usize,
        out: &mut Vec<verify::CheckedRecord>,
    ) -> usize {
        let mut kept = kept.into_iter();
        let mut index = first;
        for line in lines {
            let kept = kept.next().unwrap_or_default();
            let this = index;
            index += 1;
            if self.copies[this] {
                continue;
            }
            let mut findings = line.findings;
            findings.extend(self.extra.remove(&this).unwrap_or_default());
            out.push(verify::CheckedRecord {
                annotated,
                line_no: line.line_no as usize,
                record: kept.record,
                payload_sha256: line.payload_sha256.map(hex::encode),
                signer: kept.signer,
                findings,
            });
        }
        index
    }
}

/// What a full check does besides the records' own checks.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    /// Keep each line's parsed record (log, show, status, the broker); `tpa verify` and the audit
    /// (which reads them again, [`Checked::stream_records`]) need only facts.
    pub keep_records: bool,
    /// Walk the notes ref's history for removed records.
    pub history: bool,
    /// Note blobs whose lines all passed their own checks against these signers before (the
    /// records cache), in increasing order: their signatures are not verified again.
    pub verified_before: Option<&'a [Oid]>,
}

/// Every record at `tip`, and with `options.history` every line its history ever held.
pub fn full(
    repo: &Repository,
    tip: Oid,
    signers: &AllowedSigners,
    options: Options<'_>,
) -> Result<Checked, git2::Error> {
    if !hash_checks_wanted() {
        git2::opts::strict_hash_verification(false);
    }
    let git_dir = repo.path();
    let tip_tree = repo.find_commit(tip)?.tree()?;
    let root = Dir::root();
    let mut notes_at_tip = Vec::new();
    let mut top_dirs = Vec::new();
    for entry in tip_tree.iter() {
        match notes::classify(&root, &entry) {
            Entry::Dir(dir, id) => top_dirs.push((dir, id)),
            Entry::Note(note) => notes_at_tip.push(note),
            Entry::Other => {}
        }
    }

    // First the tip's notes, a unit per top-level directory, and beside them the list of commits.
    enum First {
        Walk,
        List(Dir, Oid),
    }
    enum FirstOut {
        Roots(Vec<Oid>),
        Listed(Vec<Note>, Vec<(Dir, Oid)>),
    }
    let mut units: Vec<First> = Vec::new();
    if options.history {
        units.push(First::Walk);
    }
    units.extend(top_dirs.iter().cloned().map(|(dir, id)| First::List(dir, id)));
    let first = parallel(git_dir, units, |worker, unit| match unit {
        First::Walk => Ok(FirstOut::Roots(root_trees(&worker.repo, tip)?)),
        First::List(dir, id) => {
            let (mut found, mut dirs) = (Vec::new(), vec![(dir.clone(), id)]);
            notes::list_under(&worker.repo, &worker.repo.find_tree(id)?, &dir, &mut found, &mut dirs)?;
            Ok(FirstOut::Listed(found, dirs))
        }
    })?;
    let mut roots = Vec::new();
    let mut tip_dirs: HashSet<(Dir, Oid)> = HashSet::new();
    for out in first {
        match out {
            FirstOut::Roots(r) => roots = r,
            FirstOut::Listed(found, dirs) => {
                notes_at_tip.extend(found);
                tip_dirs.extend(dirs);
            }
        }
    }
    notes_at_tip.sort_by_key(|n| n.key);

    // Then the records, and the history's trees level by level.
    let hasher = RandomState::new();
    let checked =
        check_notes(git_dir, &notes_at_tip, signers, options.keep_records, options.verified_before, &hasher)?;
    let removed = if options.history {
        let _unhashed = UnhashedReads::start();
        roots.retain(|r| *r != tip_tree.id());
        let historic = historic_pairs(git_dir, roots, &tip_dirs, &notes_at_tip)?;
        let needed: HashSet<Oid> = historic.iter().map(|(annotated, _)| *annotated).collect();
        let tip_hashes =
            tip_line_hashes(checked.iter().filter(|(n, _)| needed.contains(&n.note.key.annotated)));
        compare_historic(git_dir, historic, &tip_hashes, &hasher)?
    } else {
        Vec::new()
    };
    Ok(Checked { tip, notes: checked.into_iter().map(|(n, _)| n).collect(), removed })
}

/// libgit2's strict hash verification off until dropped, for the history walk, which checks its
/// reads itself (why: the top of this module). The option is the process's, so it is switched
/// only in a process that said it runs one check at a time ([`checks_run_one_at_a_time`]: `tpa
/// verify`, the audit of one repository); anywhere else it stays on, and the walk's reads are
/// hashed twice. Walks take turns, so that one ending does not switch it on under another.
struct UnhashedReads {
    /// Held while the check is off: None where this process does not switch it.
    turn: Option<MutexGuard<'static, ()>>,
}

static HISTORY_WALK: Mutex<()> = Mutex::new(());
static ONE_AT_A_TIME: AtomicBool = AtomicBool::new(false);

/// This process runs one full check at a time, and nothing else reads objects while it runs:
/// the history walk may switch libgit2's hash check off for its own reads. Not for a process
/// that checks several repositories at once (the organisation's audit), where it would switch
/// the check off for what the others read meanwhile.
pub fn checks_run_one_at_a_time() {
    ONE_AT_A_TIME.store(true, Ordering::SeqCst);
}

impl UnhashedReads {
    fn start() -> Self {
        if !ONE_AT_A_TIME.load(Ordering::SeqCst) {
            return UnhashedReads { turn: None };
        }
        Self::switch_off()
    }

    fn switch_off() -> Self {
        let turn = HISTORY_WALK.lock().unwrap_or_else(PoisonError::into_inner);
        git2::opts::strict_hash_verification(false);
        UnhashedReads { turn: Some(turn) }
    }
}

impl Drop for UnhashedReads {
    fn drop(&mut self) {
        if self.turn.is_some() {
            git2::opts::strict_hash_verification(hash_checks_wanted());
        }
    }
}

/// Runs `read` as the history walk reads: libgit2's hash check off, no walk of another test
/// meanwhile.
#[cfg(test)]
pub(crate) fn as_the_walk_reads<T>(read: impl FnOnce() -> T) -> T {
    let _unhashed = UnhashedReads::switch_off();
    read()
}

/// Whether objects outside the history walk are hashed when read: always, but in the benchmark's
/// measure of what the remaining checks cost (bench/ledger.sh, `TPA_TEST_NO_STRICT_HASH`).
fn hash_checks_wanted() -> bool {
    #[cfg(feature = "testing")]
    if std::env::var_os("TPA_TEST_NO_STRICT_HASH").is_some() {
        return false;
    }
    true
}

/// Some of the notes at `tip` (ordered by key), checked as [`full`] checks them, without the
/// history: for a reader that knows which notes hold the records it wants (the grant index). The
/// checks across records ([`Checked::into_records`]) then see only these notes: exact for every
/// grant all of whose notes are among them, since those checks relate records of one grant.
pub fn some(
    repo: &Repository,
    tip: Oid,
    notes: &[Note],
    signers: &AllowedSigners,
    options: Options<'_>,
) -> Result<Checked, git2::Error> {
    let hasher = RandomState::new();
    let checked =
        check_notes(repo.path(), notes, signers, options.keep_records, options.verified_before, &hasher)?;
    Ok(Checked { tip, notes: checked.into_iter().map(|(n, _)| n).collect(), removed: Vec::new() })
}

/// What the verify cache knew at the last verified tip (src/ledger/verify_cache.rs).
pub struct Base {
    pub tip: Oid,
    /// Every note at that tip, ordered by key.
    pub notes: Vec<BaseNote>,
    pub removed: Vec<Removed>,
}

/// A note at the base: its lines as checked then, or None when they had a finding (such a note is
/// checked again every time).
pub struct BaseNote {
    pub note: Note,
    pub lines: Option<Vec<Line>>,
}

/// What changed since the base, for `tpa verify --json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub commits: usize,
    pub notes_checked: usize,
}

/// The checks at `tip` from the verified state at `base.tip`, which must be an ancestor of `tip`
/// (or the tip itself), checked against the same trust. Gives what [`full`] would give (without
/// records): see docs/verify.md for why nothing can be skipped.
pub fn since(
    repo: &Repository,
    base: Base,
    tip: Oid,
    signers: &AllowedSigners,
) -> Result<(Checked, Delta), git2::Error> {
    let git_dir = repo.path();
    let base_tree = repo.find_commit(base.tip)?.tree()?;
    let tip_tree = repo.find_commit(tip)?.tree()?;
    let mut changes = Vec::new();
    if base_tree.id() != tip_tree.id() {
        notes::diff_notes(repo, Some(&base_tree), Some(&tip_tree), &Dir::root(), &mut changes)?;
    }

    // The notes at the tip: the base's, less what changed, plus what is new; every note whose
    // blob is new, or had a finding at the base, is checked now.
    let changed: HashSet<NoteKey> = changes.iter().map(|c| c.key).collect();
    let mut kept = Vec::new();
    let mut to_check: Vec<Note> = changes.iter().filter_map(notes::NoteChange::new_note).collect();
    for note in base.notes {
        if changed.contains(&note.note.key) {
            continue;
        }
        match note.lines {
            Some(lines) => {
                kept.push(CheckedNote { note: note.note, lines, records: Vec::new(), fresh: false })
            }
            None => to_check.push(note.note),
        }
    }
    to_check.sort_by_key(|n| n.key);
    let hasher = RandomState::new();
    let checked = check_notes(git_dir, &to_check, signers, false, None, &hasher)?;
    let delta_checked = checked.len();
    let mut fresh: HashMap<NoteKey, Vec<u64>> = HashMap::new();
    let mut all: Vec<CheckedNote> = kept;
    for (note, hashes) in checked {
        fresh.insert(note.note.key, hashes);
        all.push(note);
    }
    all.sort_by_key(|n| n.note.key);

    // History since the base: what commits after it held, and what the base's tip held that the
    // tip no longer does, is compared with the tip; what was already missing at the base is
    // missing still unless the tip's note of that object changed.
    let mut candidates: Vec<(Oid, Oid)> =
        changes.iter().filter_map(|c| Some((c.key.annotated, c.old?))).collect();
    let mut walk = repo.revwalk()?;
    walk.push(tip)?;
    walk.hide(base.tip)?;
    let mut commits = 0;
    for oid in walk {
        let commit = repo.find_commit(oid?)?;
        commits += 1;
        let tree = commit.tree()?;
        let mut introduced = Vec::new();
        if commit.parent_count() == 0 {
            notes::diff_notes(repo, None, Some(&tree), &Dir::root(), &mut introduced)?;
        }
        for parent in commit.parents() {
            notes::diff_notes(repo, Some(&parent.tree()?), Some(&tree), &Dir::root(), &mut introduced)?;
        }
        candidates.extend(introduced.iter().filter_map(|c| Some((c.key.annotated, c.new?))));
    }
    candidates.sort();
    candidates.dedup();
    candidates.retain(|(annotated, blob)| !notes_of(&all, *annotated).iter().any(|n| n.note.blob == *blob));

    let touched: HashSet<Oid> = changed.iter().map(|k| k.annotated).collect();
    let mut removed: Vec<Removed> = Vec::new();
    let mut recheck: Vec<Removed> = Vec::new();
    for entry in base.removed {
        if touched.contains(&entry.annotated) { recheck.push(entry) } else { removed.push(entry) }
    }
    // The tip's lines of every object the comparison needs: those checked now are hashed
    // already, the others are read once.
    let needed: HashSet<Oid> = candidates.iter().map(|(a, _)| *a).collect();
    let mut tip_hashes: HashMap<Oid, HashSet<u64>> = HashMap::new();
    for annotated in &needed {
        let set = tip_hashes.entry(*annotated).or_default();
        for note in notes_of(&all, *annotated) {
            match fresh.get(&note.note.key) {
                Some(hashes) => set.extend(hashes.iter().copied()),
                None => {
                    let blob = repo.find_blob(note.note.blob)?;
                    set.extend(verify::numbered_lines(blob.content()).map(|(_, l)| hasher.hash_one(l)));
                }
            }
        }
    }
    for entry in recheck {
        let mut present = false;
        for note in notes_of(&all, entry.annotated) {
            let blob = repo.find_blob(note.note.blob)?;
            present |= verify::numbered_lines(blob.content())
                .any(|(_, l)| <[u8; 32]>::from(Sha256::digest(l)) == entry.line_sha256);
        }
        if !present {
            removed.push(entry);
        }
    }
    let found = compare_historic(git_dir, candidates, &tip_hashes, &hasher)?;
    removed.extend(found);
    removed.sort_by_key(|a| (a.annotated, a.line_sha256));
    removed.dedup_by(|a, b| a.annotated == b.annotated && a.line_sha256 == b.line_sha256);
    Ok((Checked { tip, notes: all, removed }, Delta { commits, notes_checked: delta_checked }))
}

/// The notes of one object in notes ordered by key (usually one; more when git's fan-out differs).
fn notes_of(notes: &[CheckedNote], annotated: Oid) -> &[CheckedNote] {
    let start = notes.partition_point(|n| n.note.key.annotated < annotated);
    let end = start + notes[start..].partition_point(|n| n.note.key.annotated == annotated);
    &notes[start..end]
}

/// One worker thread's state.
struct Worker {
    repo: Repository,
    keys: KeyCache,
}

/// Runs `work` over `units` on at most one thread per core (and at most 8), each with its own
/// handle on the repository; results in the order of the units.
fn parallel<U: Send, R: Send>(
    git_dir: &Path,
    units: Vec<U>,
    work: impl Fn(&mut Worker, U) -> Result<R, git2::Error> + Sync,
) -> Result<Vec<R>, git2::Error> {
    let count = units.len();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8).min(count);
    if threads <= 1 {
        let mut worker = Worker { repo: Repository::open(git_dir)?, keys: KeyCache::default() };
        return units.into_iter().map(|u| work(&mut worker, u)).collect();
    }
    let units: Vec<Mutex<Option<U>>> = units.into_iter().map(|u| Mutex::new(Some(u))).collect();
    let results: Vec<Mutex<Option<R>>> = (0..count).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<git2::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let run = || -> Result<(), git2::Error> {
                    let mut worker = Worker { repo: Repository::open(git_dir)?, keys: KeyCache::default() };
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= count || failed.lock().expect("not poisoned").is_some() {
                            return Ok(());
                        }
                        let unit = units[index].lock().expect("not poisoned").take().expect("taken once");
                        let result = work(&mut worker, unit)?;
                        *results[index].lock().expect("not poisoned") = Some(result);
                    }
                };
                if let Err(e) = run() {
                    failed.lock().expect("not poisoned").get_or_insert(e);
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().expect("not poisoned") {
        return Err(e);
    }
    Ok(results.into_iter().map(|r| r.into_inner().expect("not poisoned").expect("every unit ran")).collect())
}

/// How many records a unit of record checks holds: enough to amortise taking a unit, small enough
/// that the cores finish together.
const RECORDS_PER_UNIT: usize = 256;
/// How many notes a batch of [`Checked::stream_records`] holds: a unit for each core, so that the
/// cores stay busy while a batch's records, parsed, stay a few megabytes.
fn notes_per_batch() -> usize {
    // The tests' way to make a small ledger take several batches.
    #[cfg(feature = "testing")]
    if let Some(n) = std::env::var("TPA_TEST_NOTES_PER_BATCH").ok().and_then(|n| n.parse::<usize>().ok()) {
        return n.max(1);
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    threads * RECORDS_PER_UNIT
}

/// How many trees a unit of the history walk reads.
const TREES_PER_UNIT: usize = 2048;

/// Checks the lines of `notes` (ordered by key) on the cores. With each note, the keyed hashes of
/// its lines, for the history comparison.
fn check_notes(
    git_dir: &Path,
    notes: &[Note],
    signers: &AllowedSigners,
    keep_records: bool,
    verified_before: Option<&[Oid]>,
    hasher: &RandomState,
) -> Result<Vec<(CheckedNote, Vec<u64>)>, git2::Error> {
    let units: Vec<&[Note]> = notes.chunks(RECORDS_PER_UNIT).collect();
    let out = parallel(git_dir, units, |worker, chunk| {
        let mut out = Vec::with_capacity(chunk.len());
        for note in chunk {
            let blob = worker.repo.find_blob(note.blob)?;
            // Sized exactly: a note holds a few lines, and a vector grown to four slots for three
            // was a quarter of the lines' memory at 100,000 notes.
            let count = verify::numbered_lines(blob.content()).count();
            let records = if keep_records { Vec::with_capacity(count) } else { Vec::new() };
            let mut checked =
                CheckedNote { note: *note, lines: Vec::with_capacity(count), records, fresh: true };
            let mut hashes = Vec::with_capacity(count);
            let signature_check = match verified_before {
                // A search, not a set: building a set of a large cache costs more than the few
                // notes a reader through the grant index checks.
                Some(blobs) if blobs.binary_search(&note.blob).is_ok() => {
                    verify::SignatureCheck::VerifiedBefore
                }
                _ => verify::SignatureCheck::Verify,
            };
            for (line_no, raw) in verify::numbered_lines(blob.content()) {
                let (line, kept) = verify::check_line(
                    note.key.annotated,
                    line_no,
                    raw,
                    signers,
                    &mut worker.keys,
                    keep_records,
                    signature_check,
                );
                checked.lines.push(line);
                if keep_records {
                    checked.records.push(kept);
                }
                hashes.push(hasher.hash_one(raw));
            }
            out.push((checked, hashes));
        }
        Ok(out)
    })?;
    let mut all = Vec::with_capacity(notes.len());
    all.extend(out.into_iter().flatten());
    Ok(all)
}

fn tip_line_hashes<'a>(
    checked: impl IntoIterator<Item = &'a (CheckedNote, Vec<u64>)>,
) -> HashMap<Oid, HashSet<u64>> {
    let mut by: HashMap<Oid, HashSet<u64>> = HashMap::new();
    for (note, hashes) in checked {
        by.entry(note.note.key.annotated).or_default().extend(hashes.iter().copied());
    }
    by
}

/// The root tree of every commit reachable from `tip`, each commit read once, in walk order
/// (a commit's parent follows it in linear history, so neighbouring trees differ little).
fn root_trees(repo: &Repository, tip: Oid) -> Result<Vec<Oid>, git2::Error> {
    let mut seen = HashSet::from([tip]);
    let mut stack = vec![tip];
    let mut roots = Vec::new();
    let mut seen_roots = HashSet::new();
    while let Some(oid) = stack.pop() {
        let commit = repo.find_commit(oid)?;
        if seen_roots.insert(commit.tree_id()) {
            roots.push(commit.tree_id());
        }
        for parent in commit.parent_ids() {
            if seen.insert(parent) {
                stack.push(parent);
            }
        }
    }
    Ok(roots)
}

/// Every (annotated object, blob) any tree in `roots` holds that the tip does not. Reads each
/// distinct tree once, level by level: a unit reads a run of trees of one directory and keeps of
/// each only the entries that differ from the tree before it in the run (the others were taken
/// from that tree already); a subtree that the tip also has is not read at all.
fn historic_pairs(
    git_dir: &Path,
    roots: Vec<Oid>,
    tip_dirs: &HashSet<(Dir, Oid)>,
    tip_notes: &[Note],
) -> Result<Vec<(Oid, Oid)>, git2::Error> {
    let mut level: Vec<(Dir, Vec<Oid>)> = vec![(Dir::root(), roots)];
    let mut pairs: HashSet<(Oid, Oid)> = HashSet::new();
    while !level.is_empty() {
        let units: Vec<(Dir, &[Oid])> = level
            .iter()
            .flat_map(|(dir, ids)| ids.chunks(TREES_PER_UNIT).map(move |chunk| (dir.clone(), chunk)))
            .collect();
        let outs = parallel(git_dir, units, |worker, (dir, ids)| {
            let odb = worker.repo.odb()?;
            let mut previous: Option<RawTree<'_>> = None;
            let mut subdirs: Vec<(Dir, Oid)> = Vec::new();
            let mut leaves: Vec<(Oid, Oid)> = Vec::new();
            for id in ids {
                let tree = RawTree::read(&odb, *id)?;
                let mut b = 0;
                for index in 0..tree.len() {
                    let bytes = tree.bytes(index);
                    // Most entries are the tree before's, byte for byte: those were taken from it
                    // already.
                    let seen =
                        |b: usize| previous.as_ref().is_some_and(|p| b < p.len() && p.bytes(b) == bytes);
                    if seen(b) {
                        b += 1;
                        continue;
                    }
                    let entry = tree.entry(index);
                    if let Some(before) = &previous {
                        while b < before.len() && before.entry(b).git_order(&entry).is_lt() {
                            b += 1;
                        }
                    }
                    if seen(b) {
                        b += 1;
                        continue;
                    }
                    match notes::classify_named(&dir, entry.name, Some(entry.kind()), entry.id) {
                        Entry::Dir(sub, sub_id) => {
                            if !tip_dirs.contains(&(sub.clone(), sub_id)) {
                                subdirs.push((sub, sub_id));
                            }
                        }
                        Entry::Note(note) => leaves.push((note.key.annotated, note.blob)),
                        Entry::Other => {}
                    }
                }
                previous = Some(tree);
            }
            Ok((subdirs, leaves))
        })?;
        let mut next: HashMap<Dir, (Vec<Oid>, HashSet<Oid>)> = HashMap::new();
        for (subdirs, leaves) in outs {
            pairs.extend(leaves);
            for (dir, id) in subdirs {
                let (ids, seen) = next.entry(dir).or_default();
                if seen.insert(id) {
                    ids.push(id);
                }
            }
        }
        let mut next: Vec<(Dir, Vec<Oid>)> = next.into_iter().map(|(dir, (ids, _))| (dir, ids)).collect();
        next.sort_by(|a, b| a.0.cmp(&b.0));
        level = next;
    }
    let at_tip: HashSet<(Oid, Oid)> = tip_notes.iter().map(|n| (n.key.annotated, n.blob)).collect();
    let mut historic: Vec<(Oid, Oid)> = pairs.into_iter().filter(|p| !at_tip.contains(p)).collect();
    historic.sort();
    Ok(historic)
}

/// Reads each historic blob (ordered by annotated object) and reports every line of it that no
/// note of the same object at the tip holds, once per object and line.
fn compare_historic(
    git_dir: &Path,
    historic: Vec<(Oid, Oid)>,
    tip_lines: &HashMap<Oid, HashSet<u64>>,
    hasher: &RandomState,
) -> Result<Vec<Removed>, git2::Error> {
    if historic.is_empty() {
        return Ok(Vec::new());
    }
    // Units never split one object's blobs, so each object's lines are compared in one place.
    let mut units: Vec<&[(Oid, Oid)]> = Vec::new();
    let mut start = 0;
    for end in 1..=historic.len() {
        let full = end - start >= RECORDS_PER_UNIT;
        if end == historic.len() || (full && historic[end].0 != historic[end - 1].0) {
            units.push(&historic[start..end]);
            start = end;
        }
    }
    let nothing = HashSet::new();
    let outs = parallel(git_dir, units, |worker, unit| {
        let odb = worker.repo.odb()?;
        let mut found = Vec::new();
        let mut reported: HashSet<(Oid, u64)> = HashSet::new();
        for &(annotated, blob) in unit {
            let present = tip_lines.get(&annotated).unwrap_or(&nothing);
            let blob = notes::read_checked(&odb, blob, git2::ObjectType::Blob)?;
            for (_, line) in verify::numbered_lines(blob.data()) {
                let hash = hasher.hash_one(line);
                if present.contains(&hash) || !reported.insert((annotated, hash)) {
                    continue;
                }
                found.push(Removed {
                    annotated,
                    line_sha256: Sha256::digest(line).into(),
                    finding: verify::removed_finding(annotated, line),
                });
            }
        }
        Ok(found)
    })?;
    let mut removed: Vec<Removed> = outs.into_iter().flatten().collect();
    removed.sort_by_key(|a| (a.annotated, a.line_sha256));
    removed.dedup_by(|a, b| a.annotated == b.annotated && a.line_sha256 == b.line_sha256);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository whose notes ref holds one note, "first" then "first\nsecond": the two notes
    /// commits.
    fn two_appends() -> (tempfile::TempDir, Repository, Oid, Oid) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        repo.config().unwrap().set_str("user.name", "t").unwrap();
        repo.config().unwrap().set_str("user.email", "t@example.com").unwrap();
        let annotated = Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap();
        let first = notes::append_line(&repo, annotated, "first").unwrap();
        let tip = notes::append_line(&repo, annotated, "second").unwrap();
        (dir, repo, first, tip)
    }

    fn full_with_history(repo: &Repository, tip: Oid) -> Result<Checked, git2::Error> {
        let signers = AllowedSigners::parse("").unwrap();
        full(repo, tip, &signers, Options { keep_records: false, history: true, verified_before: None })
    }

    /// An earlier version of a note rewritten in place under its id stops the full check: the
    /// walk holds what it reads to its id itself.
    #[test]
    fn the_history_walk_refuses_an_earlier_version_rewritten_in_place() {
        // As `tpa verify` does, so that the refusal is tpa's check and not libgit2's.
        checks_run_one_at_a_time();
        let (_dir, repo, first, tip) = two_appends();
        let earlier =
            notes::list_notes(&repo, &repo.find_commit(first).unwrap().tree().unwrap()).unwrap()[0].blob;
        notes::rewrite_in_place(&repo, earlier, git2::ObjectType::Blob, b"second\n");
        let error = full_with_history(&repo, tip).expect_err("the rewritten version is refused");
        assert!(
            error.message().contains(&earlier.to_string())
                && error.message().contains("do not hash to its id"),
            "{error}"
        );
    }

    /// The history walk reads with libgit2's hash check off (why: the top of this module); every
    /// read after it, the audit's second read of the tip's records included, is checked again.
    #[test]
    fn reads_after_the_history_walk_are_hash_checked_again() {
        let (_dir, repo, _, tip) = two_appends();
        let checked = full_with_history(&repo, tip).unwrap();
        assert_eq!(checked.notes.len(), 1);
        assert!(checked.removed.is_empty(), "an append removes nothing");

        let blob = checked.notes[0].note.blob;
        notes::rewrite_in_place(&repo, blob, git2::ObjectType::Blob, b"first\nforged\n");
        // No other test's walk has the check off meanwhile.
        let _no_walk = HISTORY_WALK.lock().unwrap_or_else(PoisonError::into_inner);
        let error = repo.find_blob(blob).map(|_| ()).expect_err("a blob whose bytes are not its id's");
        assert!(error.message().contains("hash mismatch"), "{error}");
    }
}

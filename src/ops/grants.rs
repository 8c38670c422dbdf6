//! Grants as the ledger tells them: records grouped by grant id, with a state. Read-only.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use git2::Repository;
use serde::Serialize;

use crate::grant::{GrantId, GrantState, Record, RecordKind};
use crate::ledger::grant_index::{GrantIndex, IndexedNote};
use crate::ledger::notes::{Note, NoteChange, NoteKey};
use crate::ledger::verify::{CheckedRecord, FindingKind, GrantKey};
use crate::ops::ledger::{self, InspectError};
use crate::provider::{Ending, ProviderKind};

/// One grant, summarised from its records.
#[derive(Clone, Debug, Serialize)]
pub struct GrantView {
    pub grant_id: GrantId,
    pub state: GrantState,
    pub principal: String,
    pub role: Option<String>,
    pub target: String,
    pub provider: ProviderKind,
    pub branch: String,
    pub commit: String,
    pub reason: String,
    pub requested_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Seconds until expiry, 0 once expired; only for grants that were issued.
    pub seconds_left: Option<i64>,
    /// Every record of the grant verified (signature and trusted signer).
    pub verified: bool,
    /// The grant's intent record and the sha256 of its payload: what later records name. For a
    /// request that has no intent yet, the request record (and an empty sha256).
    #[serde(skip)]
    pub intent: Record,
    #[serde(skip)]
    pub intent_sha256: String,
    /// The request record, for grants asked for with one (approvals, break-glass).
    #[serde(skip)]
    pub request: Option<Record>,
    #[serde(skip)]
    pub request_sha256: Option<String>,
    /// Who signed the request (or the intent): a key fingerprint, for telling self-approval by key.
    #[serde(skip)]
    pub requester_key: Option<String>,
    /// Approval records naming this grant's request, oldest first.
    #[serde(skip)]
    pub approvals: Vec<ApprovalView>,
    /// Granted at once under `break_glass`.
    pub break_glass: bool,
    /// The request's signature verifies with a key trusted at the trust ref (what a broker checks).
    #[serde(skip)]
    pub request_verified: bool,
    /// The newest grant record, once AWS issued credentials.
    #[serde(skip)]
    pub issued: Option<Record>,
    /// Revoke records so far, oldest first (retries of a pending revocation add one each).
    #[serde(skip)]
    pub revokes: Vec<Record>,
}

impl GrantView {
    /// Whom the grant is for: the requester (a broker may have written its intent and grant).
    pub fn grantee(&self) -> &crate::grant::Principal {
        &self.request.as_ref().unwrap_or(&self.intent).principal
    }

    /// What the provider's backend needs to end it.
    pub fn ending(&self) -> Ending<'_> {
        Ending { grant_id: &self.grant_id, target: &self.target, database: self.intent.database.as_deref() }
    }
}

/// An approval record as counted: its payload's sha256 (what grant records name), and whether its
/// signer is trusted at the trust ref and valid at its time.
#[derive(Clone, Debug)]
pub struct ApprovalView {
    pub record: Record,
    pub sha256: String,
    pub verified: bool,
    pub signer: Option<String>,
}

/// Records whose bytes are what their signer signed. Trust in the signer is not required here:
/// that is `tpa verify`'s question; a forged or damaged record is never counted.
fn authentic(checked: &CheckedRecord) -> bool {
    checked.record.is_some()
        && !checked.findings.iter().any(|f| {
            matches!(
                f.kind,
                FindingKind::BadSignature
                    | FindingKind::WrongNamespace
                    | FindingKind::MalformedLine
                    | FindingKind::InvalidRecord
                    | FindingKind::WrongCommit
                    | FindingKind::IntentMismatch
            )
        })
}

pub fn list(repo: &Repository, now: DateTime<Utc>) -> Result<Vec<GrantView>, InspectError> {
    Ok(from_checked(ledger::records_lenient(repo)?.report.records, now))
}

/// How long after its end the sweep still looks after a grant: it drops the grant's keyring entry
/// (revoked or expired elsewhere, from another clone) and writes back its deny entry while it is
/// unexpired. An STS session lives 12 hours at most, so a week leaves no usable secret behind.
pub const SWEPT_AFTER_END_DAYS: i64 = 7;

/// Whether the sweep still looks after a grant that is not open: one that ended within the last
/// [`SWEPT_AFTER_END_DAYS`] (by its expiry, or by its request when it was never issued), or a
/// database login past its expiry and not yet dropped (its role and sessions outlive the expiry).
/// For fixed records, a grant this is false of at one instant stays so (the grant index relies on
/// it): the window only moves forward, and an ended grant's state does not change with time.
pub fn swept_after_end(grant: &GrantView, now: DateTime<Utc>) -> bool {
    !grant.state.is_open()
        && ((grant.provider.outlives_expiry() && grant.state == GrantState::Expired)
            || ended(grant) > now - chrono::Duration::days(SWEPT_AFTER_END_DAYS))
}

/// When a grant that is not open ended, for [`swept_after_end`]: its expiry, or its request when
/// it was never issued. A lapsed request's approvals may still count for an approval window after
/// the last instant one could be given (`ops::approval::evaluate`: both windows the policy's at the
/// time, at most [`crate::policy::MAX_APPROVAL_WINDOW`]): a broker may mint it until then, so it
/// ends then, whatever the policy says later.
fn ended(grant: &GrantView) -> DateTime<Utc> {
    if grant.state == GrantState::Lapsed {
        let windows = chrono::Duration::seconds(2 * crate::policy::MAX_APPROVAL_WINDOW as i64);
        return grant.requested_at.checked_add_signed(windows).unwrap_or(DateTime::<Utc>::MAX_UTC);
    }
    grant.expires_at.unwrap_or(grant.requested_at)
}

/// Whether a grant that is not open is kept in the grant index's `watched` list: the sweep still
/// looks after it ([`swept_after_end`]), or it was granted under break-glass (approvers review
/// those whatever their state; they are few). False of a grant at one instant, it stays so.
fn watched(grant: &GrantView, now: DateTime<Utc>) -> bool {
    !grant.state.is_open() && (grant.break_glass || swept_after_end(grant, now))
}

/// Which grants a reading through the grant index is after, besides the grants of the notes that
/// changed since the index (which every reading reads again).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// The open grants.
    Open,
    /// The open grants and those [`swept_after_end`].
    Sweep,
    /// The open grants and those granted under break-glass.
    Approvers,
}

impl Reader {
    fn keeps(self, grant: &GrantView, now: DateTime<Utc>) -> bool {
        grant.state.is_open()
            || match self {
                Reader::Open => false,
                Reader::Sweep => swept_after_end(grant, now),
                Reader::Approvers => grant.break_glass,
            }
    }
}

/// The grants open at `now` (`tpa status`, `who`, `exec`, `env`, `credential-process`), newest
/// first: the same grants as [`list`] filtered on [`GrantState::is_open`], read through the grant
/// index (src/ledger/grant_index.rs), so that their cost follows the open grants and what changed
/// in the ledger, not its size.
pub fn open(repo: &Repository, now: DateTime<Utc>) -> Result<Vec<GrantView>, InspectError> {
    read_for(repo, now, Reader::Open)
}

/// The grants the sweep looks after at `now`, newest first: the open ones and those
/// [`swept_after_end`]; [`list`] filtered on them, read through the grant index.
pub fn swept(repo: &Repository, now: DateTime<Utc>) -> Result<Vec<GrantView>, InspectError> {
    read_for(repo, now, Reader::Sweep)
}

/// The grants open at `now` and those granted under break-glass, newest first: what approvers
/// look at (`tpa approvals`), read through the grant index.
pub fn for_approvers(repo: &Repository, now: DateTime<Utc>) -> Result<Vec<GrantView>, InspectError> {
    read_for(repo, now, Reader::Approvers)
}

fn read_for(repo: &Repository, now: DateTime<Utc>, reader: Reader) -> Result<Vec<GrantView>, InspectError> {
    let Some(reading) = ledger::indexed_reading(repo)? else {
        return Ok(list(repo, now)?.into_iter().filter(|g| reader.keeps(g, now)).collect());
    };
    Ok(current_index(repo, &reading, now, reader)?.1)
}

/// One grant by its id, as [`list`] tells it, read through the grant index.
pub fn find(
    repo: &Repository,
    grant_id: &GrantId,
    now: DateTime<Utc>,
) -> Result<Option<GrantView>, InspectError> {
    Ok(find_all(repo, std::slice::from_ref(grant_id), now)?.into_iter().next())
}

/// The grants of `grant_ids` the ledger knows, as [`list`] tells them, newest first, read through
/// the grant index.
pub fn find_all(
    repo: &Repository,
    grant_ids: &[GrantId],
    now: DateTime<Utc>,
) -> Result<Vec<GrantView>, InspectError> {
    if grant_ids.is_empty() {
        return Ok(Vec::new());
    }
    let Some(reading) = ledger::indexed_reading(repo)? else {
        return Ok(list(repo, now)?.into_iter().filter(|g| grant_ids.contains(&g.grant_id)).collect());
    };
    let index = index_at_tip(repo, &reading, now)?;
    let wanted: HashSet<GrantKey> = grant_ids.iter().map(GrantKey::of).collect();
    grants_of(repo, &reading, &index, &wanted, now)
}

/// The grants the sweep looks after at `now` that `keep` selects, with every record of theirs
/// (authentic or not, with its findings): what the broker's pass serves. Read through the grant
/// index; without one, from a read of every record (against nobody when the trust ref has no
/// allowed_signers).
pub fn swept_with_records(
    repo: &Repository,
    now: DateTime<Utc>,
    keep: impl Fn(&GrantView) -> bool,
) -> Result<(Vec<GrantView>, Vec<CheckedRecord>), InspectError> {
    let Some(reading) = ledger::indexed_reading(repo)? else {
        let mut records = ledger::records_lenient(repo)?.report.records;
        let grants: Vec<GrantView> = from_records(&records, now)
            .into_iter()
            .filter(|g| Reader::Sweep.keeps(g, now) && keep(g))
            .collect();
        let ids: HashSet<&GrantId> = grants.iter().map(|g| &g.grant_id).collect();
        records.retain(|c| c.record.as_ref().is_some_and(|r| ids.contains(&r.grant_id)));
        return Ok((grants, records));
    };
    let (index, swept) = current_index(repo, &reading, now, Reader::Sweep)?;
    let grants: Vec<GrantView> = swept.into_iter().filter(keep).collect();
    let wanted: HashSet<GrantKey> = grants.iter().map(|g| GrantKey::of(&g.grant_id)).collect();
    let records = records_of_grants(repo, &reading, &index, &wanted)?;
    Ok((grants, records))
}

/// The lines that are no record (annotated object, line number) that came into the ledger between
/// the notes tip `since` and the tip, and the tip: each such line once, for the broker to report.
/// Every note is read without `since`, or when it cannot be compared; a changed note's lines that
/// its earlier version held already are not told again.
pub fn strays_since(
    repo: &Repository,
    since: Option<git2::Oid>,
) -> Result<(Option<git2::Oid>, Vec<ledger::Stray>), InspectError> {
    let Some(reading) = ledger::indexed_reading(repo)? else {
        let report = ledger::records_lenient(repo)?.report;
        let strays =
            report.records.iter().filter(|c| c.record.is_none()).map(|c| (c.annotated, c.line_no)).collect();
        return Ok((report.tip, strays));
    };
    let Some(changes) = since.and_then(|s| reading.changed_since(repo, s)) else {
        let strays = reading.check(repo, None, false)?.strays;
        return Ok((
            Some(reading.tip),
            strays.into_iter().map(|(note, line_no)| (note.key.annotated, line_no)).collect(),
        ));
    };
    let lines_of = |blob: git2::Oid| -> Vec<Vec<u8>> {
        repo.find_blob(blob)
            .map(|b| b.content().split(|c| *c == b'\n').map(<[u8]>::to_vec).collect())
            .unwrap_or_default()
    };
    // The lines each object's notes held before, under any fan-out (a tree git fanned out anew
    // moves every note), counted: a second copy of a line told before is new.
    let mut before: HashMap<git2::Oid, HashMap<Vec<u8>, usize>> = HashMap::new();
    for change in &changes {
        for line in change.old.map(lines_of).unwrap_or_default() {
            *before.entry(change.key.annotated).or_default().entry(line).or_default() += 1;
        }
    }
    let changed: Vec<Note> = changes.iter().filter_map(NoteChange::new_note).collect();
    let mut lines: HashMap<git2::Oid, Vec<Vec<u8>>> = HashMap::new();
    let mut strays = Vec::new();
    for (note, line_no) in reading.check(repo, Some(&changed), false)?.strays {
        let stray = (note.key.annotated, line_no);
        let Some(line) =
            lines.entry(note.blob).or_insert_with(|| lines_of(note.blob)).get(line_no.wrapping_sub(1))
        else {
            strays.push(stray);
            continue;
        };
        match before.entry(note.key.annotated).or_default().get_mut(line) {
            Some(count) if *count > 0 => *count -= 1,
            _ => strays.push(stray),
        }
    }
    Ok((Some(reading.tip), strays))
}

/// Every record of the grant `grant_id` (authentic or not, with its findings), newest first, as
/// `tpa show` lists them, read through the grant index. Like [`ledger::records`], it needs
/// allowed_signers at the trust ref.
pub fn records_of(
    repo: &Repository,
    grant_id: &GrantId,
    now: DateTime<Utc>,
) -> Result<Vec<CheckedRecord>, InspectError> {
    let named = |c: &CheckedRecord| c.record.as_ref().is_some_and(|r| &r.grant_id == grant_id);
    let Some(reading) = ledger::indexed_reading(repo)? else {
        return Ok(ledger::records(repo)?.report.records.into_iter().filter(named).collect());
    };
    let index = index_at_tip(repo, &reading, now)?;
    let wanted: HashSet<GrantKey> = [GrantKey::of(grant_id)].into();
    let mut records = records_of_grants(repo, &reading, &index, &wanted)?;
    records.sort_by_key(ledger::newest_first);
    Ok(records)
}

/// The index of the tip: the one kept, if it is of the tip (which notes hold which grants does not
/// depend on the time it was written at), else brought forward.
fn index_at_tip(
    repo: &Repository,
    reading: &ledger::IndexedReading,
    now: DateTime<Utc>,
) -> Result<GrantIndex, InspectError> {
    match reading.index() {
        Some(index) if index.tip == reading.tip => Ok(index),
        _ => Ok(current_index(repo, reading, now, Reader::Open)?.0),
    }
}

/// The grant index at the tip, and the grants `reader` is after at `now`. An index of an earlier
/// tip is brought forward from the notes that changed since; with none that serves (none yet,
/// another build's or other signers', damaged, written at a later instant, of a tip no longer in
/// the repository), every note is read and a new one written.
fn current_index(
    repo: &Repository,
    reading: &ledger::IndexedReading,
    now: DateTime<Utc>,
    reader: Reader,
) -> Result<(GrantIndex, Vec<GrantView>), InspectError> {
    if let Some(old) = reading.index().filter(|i| i.built_at <= now)
        && let Some(changes) = reading.changed_since(repo, old.tip)
        && let moved = old.tip != reading.tip
        && let Some((index, mut wanted)) = brought_forward(repo, reading, old, &changes)?
    {
        if reader != Reader::Open {
            wanted.extend(index.watched.iter().copied());
        }
        let read = grants_of(repo, reading, &index, &wanted, now)?;
        let (open, watched_now) = keys_of(&read, now);
        // Watched grants not read now are carried over (more than needed is harmless); the list
        // changes only where grants were read, so a reading of a few grants does not rebuild it.
        let touched =
            !watched_now.is_empty() || wanted.iter().any(|k| index.watched.binary_search(k).is_ok());
        let watched = touched.then(|| {
            let mut watched: Vec<GrantKey> =
                index.watched.iter().filter(|k| !wanted.contains(k)).copied().chain(watched_now).collect();
            // Two sorted runs: a stable sort merges them in one pass.
            watched.sort();
            watched.dedup();
            watched
        });
        if moved || index.open != open || watched.as_ref().is_some_and(|w| *w != index.watched) {
            let watched = watched.unwrap_or_else(|| index.watched.clone());
            reading.save(&GrantIndex { built_at: now, open, watched, ..index.clone() });
        }
        return Ok((index, read.into_iter().filter(|g| reader.keeps(g, now)).collect()));
    }
    let read = reading.check(repo, None, true)?;
    let all = from_checked(read.records, now);
    let (open, watched) = keys_of(&all, now);
    let index = GrantIndex { tip: reading.tip, built_at: now, notes: read.notes, open, watched };
    reading.save(&index);
    Ok((index, all.into_iter().filter(|g| reader.keeps(g, now)).collect()))
}

/// The index's lists at `now` from the grants read: the open ones and the [`watched`] ones
/// (sorted, each once).
fn keys_of(read: &[GrantView], now: DateTime<Utc>) -> (Vec<GrantKey>, Vec<GrantKey>) {
    let sorted = |keys: Vec<GrantKey>| {
        let mut keys = keys;
        keys.sort();
        keys.dedup();
        keys
    };
    let open = read.iter().filter(|g| g.state.is_open()).map(|g| GrantKey::of(&g.grant_id)).collect();
    let watched = read.iter().filter(|g| watched(g, now)).map(|g| GrantKey::of(&g.grant_id)).collect();
    (sorted(open), sorted(watched))
}

/// The index at the tip from one of an earlier tip and the notes changed since, and the grants
/// whose state must be read again: those open before, and every grant a changed note held or
/// holds a record of. Every other grant was ended at the index's time and its records are the
/// same, so it is ended still. None when the index does not match the changes (it is not of the
/// tip it names): then it is rebuilt.
fn brought_forward(
    repo: &Repository,
    reading: &ledger::IndexedReading,
    old: GrantIndex,
    changes: &[NoteChange],
) -> Result<Option<(GrantIndex, HashSet<GrantKey>)>, InspectError> {
    let mut wanted: HashSet<GrantKey> = old.open.iter().copied().collect();
    if changes.is_empty() {
        return Ok(Some((GrantIndex { tip: reading.tip, ..old }, wanted)));
    }
    let new_notes: Vec<Note> = changes.iter().filter_map(NoteChange::new_note).collect();
    let fresh = reading.check(repo, Some(&new_notes), false)?.notes;
    let mut by_key: BTreeMap<NoteKey, IndexedNote> = old.notes.into_iter().map(|n| (n.note.key, n)).collect();
    for change in changes {
        let before = by_key.remove(&change.key);
        if before.as_ref().map(|n| n.note.blob) != change.old {
            return Ok(None);
        }
        wanted.extend(before.into_iter().flat_map(|n| n.grants));
    }
    for note in fresh {
        wanted.extend(note.grants.iter().copied());
        by_key.insert(note.note.key, note);
    }
    let index = GrantIndex {
        tip: reading.tip,
        built_at: old.built_at,
        notes: by_key.into_values().collect(),
        open: old.open,
        watched: old.watched,
    };
    Ok(Some((index, wanted)))
}

/// The grants among `wanted`, from the notes that hold their records, newest first.
fn grants_of(
    repo: &Repository,
    reading: &ledger::IndexedReading,
    index: &GrantIndex,
    wanted: &HashSet<GrantKey>,
    now: DateTime<Utc>,
) -> Result<Vec<GrantView>, InspectError> {
    Ok(from_checked(records_of_grants(repo, reading, index, wanted)?, now))
}

/// The records of the grants among `wanted`, with their findings, from the notes that hold them.
fn records_of_grants(
    repo: &Repository,
    reading: &ledger::IndexedReading,
    index: &GrantIndex,
    wanted: &HashSet<GrantKey>,
) -> Result<Vec<CheckedRecord>, InspectError> {
    let notes = index.notes_holding(wanted);
    let mut records = reading.check(repo, Some(&notes), true)?.records;
    // Other grants' records on those notes may lack their grant's other notes: theirs are not read.
    records.retain(|c| c.record.as_ref().is_some_and(|r| wanted.contains(&GrantKey::of(&r.grant_id))));
    Ok(records)
}

/// The grants of records already read and checked, newest first. The records are copied: see
/// [`from_checked`] for a caller done with them.
pub fn from_records(records: &[CheckedRecord], now: DateTime<Utc>) -> Vec<GrantView> {
    from_checked(records.iter().filter(|c| authentic(c)).cloned().collect(), now)
}

/// The grants of `records`, newest first. The records move into the grants, and the ones no
/// grant keeps are dropped: a ledger of 300,000 records is then in memory once, not twice.
pub fn from_checked(records: Vec<CheckedRecord>, now: DateTime<Utc>) -> Vec<GrantView> {
    let mut by_grant: BTreeMap<GrantId, Vec<CheckedRecord>> = BTreeMap::new();
    for checked in records.into_iter().filter(authentic) {
        let grant_id = checked.record.as_ref().expect("authentic records parse").grant_id.clone();
        by_grant.entry(grant_id).or_default().push(checked);
    }
    let mut grants: Vec<GrantView> =
        by_grant.into_iter().filter_map(|(grant_id, checked)| summarise(grant_id, checked, now)).collect();
    grants.sort_by_key(|g| std::cmp::Reverse(g.requested_at));
    grants
}

fn summarise(grant_id: GrantId, mut checked: Vec<CheckedRecord>, now: DateTime<Utc>) -> Option<GrantView> {
    // Oldest first, so that the first of a kind is the earliest; records of the same instant in
    // the order `tpa log` lists them (whatever order they came in: the audit streams them by note).
    checked
        .sort_by_key(|c| (c.record.as_ref().map(|r| r.issued_at), c.annotated, std::cmp::Reverse(c.line_no)));
    let first_of =
        |kind: RecordKind| checked.iter().position(|c| c.record.as_ref().is_some_and(|r| r.kind == kind));
    let request_at = first_of(RecordKind::Request);
    // A grant's story starts with its request or intent; records without one are verify's business.
    let intent_at = first_of(RecordKind::Intent);
    let origin_at = intent_at.or(request_at)?;
    let issued_at = checked
        .iter()
        .enumerate()
        .filter(|(_, c)| c.record.as_ref().is_some_and(|r| r.kind == RecordKind::Grant))
        .max_by_key(|(_, c)| c.record.as_ref().map(|r| r.issued_at))
        .map(|(at, _)| at);
    let state = GrantState::of(checked.iter().filter_map(|c| c.record.as_ref()), now);
    let verified = checked.iter().all(|c| c.is_verified());
    let request_verified = request_at.is_some_and(|at| checked[at].is_verified());
    let requester_key = checked[request_at.unwrap_or(origin_at)].signer.clone();
    let intent_sha256 = intent_at.and_then(|at| checked[at].payload_sha256.clone()).unwrap_or_default();
    let request_sha256 = request_at.and_then(|at| checked[at].payload_sha256.clone());

    // Take out what the view keeps; the rest is dropped with `checked`.
    let mut take = |at: usize| checked[at].record.take();
    let request = request_at.and_then(&mut take);
    let intent = if Some(origin_at) == request_at { request.clone() } else { take(origin_at) }?;
    let issued = issued_at.and_then(&mut take);
    let mut approvals = Vec::new();
    let mut revokes = Vec::new();
    for c in &mut checked {
        match c.record.as_ref().map(|r| r.kind) {
            Some(RecordKind::Approval) => {
                let (Some(record), Some(sha256)) = (c.record.take(), c.payload_sha256.take()) else {
                    continue;
                };
                approvals.push(ApprovalView {
                    record,
                    sha256,
                    verified: c.findings.is_empty(),
                    signer: c.signer.take(),
                });
            }
            Some(RecordKind::Revoke) => revokes.extend(c.record.take()),
            _ => {}
        }
    }
    let expires_at = issued.as_ref().and_then(|g| g.expires_at);
    Some(GrantView {
        grant_id,
        state,
        // Whom the grant is for: the requester, also when a broker wrote its intent and grant.
        principal: request.as_ref().unwrap_or(&intent).principal.email.clone(),
        role: intent.role.clone(),
        target: intent.target.clone(),
        provider: ProviderKind::parse(&intent.provider),
        branch: intent.branch.clone(),
        commit: intent.commit.clone(),
        reason: intent.reason.clone(),
        requested_at: intent.issued_at,
        expires_at,
        seconds_left: expires_at.map(|at| (at - now).num_seconds().max(0)),
        verified,
        break_glass: intent.break_glass == Some(true),
        intent,
        intent_sha256,
        request,
        request_sha256,
        requester_key,
        approvals,
        request_verified,
        issued,
        revokes,
    })
}

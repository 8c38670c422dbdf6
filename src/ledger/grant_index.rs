//! The grant index: which notes at a notes tip hold records of which grants, which grants were
//! open when it was written, and which ended ones the sweep or approvers still looked after then,
//! so that the commands that want a few grants (`tpa status`, `who`, `exec`, `env`,
//! `credential-process`, `show`, `revoke`, `approvals`, a grant by its id, the sweep and the
//! broker) read those grants' notes instead of the whole ledger. It lives in the state dir (`tpa/grant-index`) beside the records cache and holds
//! no secret: object ids and grant ids.
//!
//! Why "open when written" is enough: a grant's state is a function of its records and of the time
//! (`GrantState::of`), and for fixed records a grant that is not open at one instant is not open
//! at any later one (a revocation, a failure or a cancellation does not depend on the time; an
//! expiry and a lapsed approval window stay past). So at a later instant, with the same notes, the
//! open grants are among the ones open then. The same holds of the grants the sweep looks after
//! (`ops::grants::swept_after_end`: open, ended within a window that only moves forward, or a
//! database login expired and not yet dropped) and of break-glass grants: a grant outside them
//! all stays outside. The index
//! is used only at or after the instant it was written, and only for the tip it names; a moved tip
//! updates it from the notes that changed.
//!
//! Keyed and sealed like the records cache ([`Key`]: this build, the digest of the signers; a
//! sha256 over everything): a damaged file or another build's is refused whole and costs a read
//! of the ledger in full. It is as trustworthy as the clone's `.git` directory, like the records
//! cache: whoever can rewrite it can equally rewrite `refs/notes/tpa`. `tpa verify`, `tpa audit`,
//! `tpa log` and `status --history` never use it.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use git2::Oid;

use super::notes::{Note, NoteKey};
use super::verify::GrantKey;
use super::verify_cache::{Key, Refused, put_header, seal, unseal};

/// The file's name in the state dir.
pub const FILE: &str = "grant-index";
const MAGIC: &[u8] = b"tpa grant index\n";
/// Bumped whenever what an entry means changes.
const FORMAT: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantIndex {
    /// The notes tip it describes.
    pub tip: Oid,
    /// When the open grants were found open: the index serves no earlier instant.
    pub built_at: DateTime<Utc>,
    /// Every note at the tip, ordered by key, with the grants its lines are records of.
    pub notes: Vec<IndexedNote>,
    /// The grants open at `built_at`, sorted.
    pub open: Vec<GrantKey>,
    /// Sorted: at least every grant not open at `built_at` that the sweep still looked after then,
    /// or granted under break-glass (`ops::grants::watched`; more is harmless: those are read and
    /// dropped).
    pub watched: Vec<GrantKey>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedNote {
    pub note: Note,
    /// Sorted, each once. A line that is no record (damaged, forged beyond parsing) names none.
    pub grants: Vec<GrantKey>,
}

impl GrantIndex {
    /// The notes holding a record of any of `grants`, ordered by key.
    pub fn notes_holding(&self, grants: &HashSet<GrantKey>) -> Vec<Note> {
        self.notes.iter().filter(|n| n.grants.iter().any(|g| grants.contains(g))).map(|n| n.note).collect()
    }
}

pub fn encode(key: &Key, index: &GrantIndex) -> Vec<u8> {
    let keys: usize = index.notes.iter().map(|n| n.grants.len()).sum();
    let mut out = Vec::with_capacity(
        MAGIC.len() + 128 + index.notes.len() * 52 + (keys + index.open.len() + index.watched.len()) * 26,
    );
    put_header(&mut out, MAGIC, FORMAT, key);
    out.extend_from_slice(index.tip.as_bytes());
    // To the nanosecond, as tpa's clock reads: an index rounded either way could serve an instant
    // before the one it was built at, or never serve the instant it was built at.
    let nanos = index.built_at.timestamp_nanos_opt().unwrap_or(i64::MAX);
    out.extend_from_slice(&nanos.to_le_bytes());
    out.extend_from_slice(&(index.notes.len() as u32).to_le_bytes());
    for indexed in &index.notes {
        out.extend_from_slice(indexed.note.key.annotated.as_bytes());
        out.extend_from_slice(&indexed.note.key.splits.to_le_bytes());
        out.extend_from_slice(indexed.note.blob.as_bytes());
        put_keys(&mut out, &indexed.grants);
    }
    put_keys(&mut out, &index.open);
    put_keys(&mut out, &index.watched);
    seal(out)
}

fn put_keys(out: &mut Vec<u8>, keys: &[GrantKey]) {
    out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for key in keys {
        out.extend_from_slice(&key.0);
    }
}

/// Reads an index written for `key`. Everything is checked before anything is used.
pub fn decode(bytes: &[u8], key: &Key) -> Result<GrantIndex, Refused> {
    let damaged = Refused::Damaged;
    let mut r = unseal(bytes, MAGIC, FORMAT, key)?;
    let tip = r.oid()?;
    let built_at = DateTime::from_timestamp_nanos(i64::from_le_bytes(r.array()?));
    let count = r.count(52)?;
    let mut notes: Vec<IndexedNote> = Vec::with_capacity(count);
    for _ in 0..count {
        let annotated = r.oid()?;
        let splits = u64::from_le_bytes(r.array()?);
        let blob = r.oid()?;
        let key = NoteKey { annotated, splits };
        if notes.last().is_some_and(|last| last.note.key >= key) {
            return Err(damaged("its notes are out of order"));
        }
        notes.push(IndexedNote { note: Note { key, blob }, grants: keys(&mut r)? });
    }
    let open = keys(&mut r)?;
    let watched = keys(&mut r)?;
    if !r.rest.is_empty() {
        return Err(damaged("it has bytes after its end"));
    }
    Ok(GrantIndex { tip, built_at, notes, open, watched })
}

fn keys(r: &mut super::verify_cache::Reader<'_>) -> Result<Vec<GrantKey>, Refused> {
    let count = r.count(26)?;
    let mut keys: Vec<GrantKey> = Vec::with_capacity(count);
    for _ in 0..count {
        let key = GrantKey(r.array()?);
        if keys.last().is_some_and(|last| *last >= key) {
            return Err(Refused::Damaged("its grants are out of order"));
        }
        // Not parsed as a grant id (a tenth of a read at 100,000 notes): keys are only compared
        // with those of records read, and 26 bytes that are no id match none.
        keys.push(key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(byte: u8) -> Oid {
        Oid::from_bytes(&[byte; 20]).unwrap()
    }

    fn grant(last: u8) -> GrantKey {
        let mut key = *b"01JDZ0000000000000000000A0";
        key[25] = last;
        GrantKey(key)
    }

    fn key() -> Key {
        Key::this_build([7; 32])
    }

    fn index() -> GrantIndex {
        GrantIndex {
            tip: oid(9),
            built_at: DateTime::from_timestamp_micros(1_764_700_000_123_456).unwrap(),
            notes: vec![
                IndexedNote {
                    note: Note { key: NoteKey { annotated: oid(1), splits: 0 }, blob: oid(11) },
                    grants: vec![grant(b'A'), grant(b'B')],
                },
                IndexedNote {
                    note: Note { key: NoteKey { annotated: oid(1), splits: 0b100 }, blob: oid(12) },
                    grants: vec![],
                },
                IndexedNote {
                    note: Note { key: NoteKey { annotated: oid(2), splits: 0 }, blob: oid(13) },
                    grants: vec![grant(b'B')],
                },
            ],
            open: vec![grant(b'B')],
            watched: vec![grant(b'A')],
        }
    }

    #[test]
    fn round_trips_and_finds_the_notes_of_grants() {
        let index = index();
        let decoded = decode(&encode(&key(), &index), &key()).unwrap();
        assert_eq!(decoded, index);
        let wanted: HashSet<GrantKey> = [grant(b'B')].into();
        let keys: Vec<Oid> = decoded.notes_holding(&wanted).iter().map(|n| n.blob).collect();
        assert_eq!(keys, vec![oid(11), oid(13)]);
    }

    #[test]
    fn its_time_is_kept_to_the_nanosecond() {
        let mut index = index();
        index.built_at = DateTime::from_timestamp(1_764_700_000, 123_456_001).unwrap();
        assert_eq!(decode(&encode(&key(), &index), &key()).unwrap().built_at, index.built_at);
    }

    #[test]
    fn another_build_or_trust_is_not_used() {
        let bytes = encode(&key(), &index());
        assert_eq!(decode(&bytes, &Key::this_build([8; 32])), Err(Refused::OtherTrust));
        assert_eq!(decode(&bytes, &Key { build: "another".into(), ..key() }), Err(Refused::OtherBuild));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = encode(&key(), &index());
        crate::ledger::verify_cache::assert_every_damage_refused(&bytes, |bytes| decode(bytes, &key()));
    }

    #[test]
    fn unordered_entries_are_refused_even_when_sealed() {
        let mut swapped = index();
        swapped.notes.swap(0, 2);
        assert_eq!(
            decode(&encode(&key(), &swapped), &key()),
            Err(Refused::Damaged("its notes are out of order"))
        );
        let mut twice = index();
        twice.open = vec![grant(b'B'), grant(b'B')];
        assert_eq!(
            decode(&encode(&key(), &twice), &key()),
            Err(Refused::Damaged("its grants are out of order"))
        );
    }
}

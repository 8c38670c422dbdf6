//! The verify cache: what `tpa verify` found at the tip it last verified (the witness), so that
//! the next run checks only what is new since. It lives beside the witness in the state dir
//! (`tpa/verify-cache`) and holds no secret: object ids, sha256 digests of payloads and lines,
//! grant ids, record kinds, and the `record_removed` messages `tpa verify` prints anyway.
//!
//! What it says is keyed by content: a note blob's checks are stored under the blob's id, and the
//! whole file under the tpa build that wrote it, a digest of the trust it was checked against
//! (allowed_signers as parsed, the policy's blob) and the tip it describes. Any other build, trust
//! or tip makes it unused. It checks its own integrity (a sha256 over everything before it), and a
//! file that is truncated, damaged, or edited without that digest is refused whole: the result is a
//! full check, never a skipped finding. It is as trustworthy as the witness beside it: whoever can
//! rewrite both can equally rewrite `refs/notes/tpa`, which is why an auditor's CI runs from a fresh
//! clone, with neither.

use git2::Oid;
use sha2::{Digest, Sha256};

use super::check::{Base, BaseNote, Checked, Removed};
use super::notes::{Note, NoteKey};
use super::signers::AllowedSigners;
use super::verify::{CommitRef, Facts, Finding, FindingKind, GrantKey, Line, PayloadRef};
use crate::grant::RecordKind;

/// The file's name in the state dir.
pub const FILE: &str = "verify-cache";
const MAGIC: &[u8] = b"tpa verify cache\n";
/// Bumped whenever what is stored, or what a stored entry means, changes.
const FORMAT: u32 = 2;

/// What a cache must have been written for, besides its tip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// The tpa build: another build may check records differently.
    pub build: String,
    /// Digest of the trust the records were checked against.
    pub trust: [u8; 32],
}

impl Key {
    pub fn this_build(trust: [u8; 32]) -> Self {
        Key {
            build: format!("{} {} format {FORMAT}", env!("CARGO_PKG_VERSION"), env!("TPA_BUILD_COMMIT")),
            trust,
        }
    }
}

/// Digest of everything a record's own checks depend on besides its bytes: allowed_signers as
/// parsed (so that `valid-before` without `Z`, read in local time, counts as the instant it
/// means) and the policy's blob at the trust ref. The policy decides nothing `tpa verify` checks
/// today; it is in the key so that a check that comes to depend on it cannot be skipped by a cache.
pub fn trust_digest(signers: &AllowedSigners, policy_blob: Option<Oid>) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"tpa trust 1\n");
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| match t {
        Some(t) => format!("{}.{}", t.timestamp(), t.timestamp_subsec_nanos()),
        None => "-".to_owned(),
    };
    for entry in &signers.entries {
        field(entry.principals.as_bytes());
        field(entry.namespaces.as_deref().unwrap_or("\0").as_bytes());
        field(time(entry.valid_after).as_bytes());
        field(time(entry.valid_before).as_bytes());
        field(&[u8::from(entry.cert_authority)]);
        field(entry.key.fingerprint(ssh_key::HashAlg::Sha256).as_bytes());
    }
    field(policy_blob.map(|b| b.to_string()).unwrap_or_default().as_bytes());
    hash.finalize().into()
}

/// Why a cache was not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("it is damaged ({0})")]
    Damaged(&'static str),
    #[error("another tpa build wrote it")]
    OtherBuild,
    #[error("allowed_signers or the policy at the trust ref changed since")]
    OtherTrust,
}

/// The cache for the checks at `checked.tip`: every note with its lines' facts when they passed
/// their own checks (else marked to be checked again), and what the history walk found.
pub fn encode(key: &Key, checked: &Checked) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + checked.notes.len() * 170);
    put_header(&mut out, MAGIC, FORMAT, key);
    out.extend_from_slice(checked.tip.as_bytes());
    out.extend_from_slice(&(checked.notes.len() as u32).to_le_bytes());
    for note in &checked.notes {
        out.extend_from_slice(note.note.key.annotated.as_bytes());
        out.extend_from_slice(&note.note.key.splits.to_le_bytes());
        out.extend_from_slice(note.note.blob.as_bytes());
        if !note.is_clean() {
            out.push(0);
            continue;
        }
        out.push(1);
        out.extend_from_slice(&(note.lines.len() as u32).to_le_bytes());
        for line in &note.lines {
            let (Some(sha), Some(facts)) = (&line.payload_sha256, &line.facts) else {
                unreachable!("a clean line has both")
            };
            let CommitRef::Sha1(commit) = &facts.commit else {
                unreachable!("a clean line's commit is plain")
            };
            out.extend_from_slice(&line.line_no.to_le_bytes());
            out.extend_from_slice(sha);
            out.extend_from_slice(&facts.grant.0);
            out.push(kind_byte(facts.kind));
            for named in [facts.intent, facts.request] {
                match named {
                    None => out.push(0),
                    Some(PayloadRef::Sha(sha)) => {
                        out.push(1);
                        out.extend_from_slice(&sha);
                    }
                    Some(PayloadRef::Other) => unreachable!("a clean line's digests are plain"),
                }
            }
            out.extend_from_slice(commit);
        }
    }
    out.extend_from_slice(&(checked.removed.len() as u32).to_le_bytes());
    for removed in &checked.removed {
        out.extend_from_slice(removed.annotated.as_bytes());
        out.extend_from_slice(&removed.line_sha256);
        match &removed.finding.grant_id {
            Some(id) => {
                out.push(1);
                out.extend_from_slice(&GrantKey::of(id).0);
            }
            None => out.push(0),
        }
        put_str(&mut out, &removed.finding.message);
    }
    seal(out)
}

/// Reads a cache written for `key`. Everything is checked before anything is used.
pub fn decode(bytes: &[u8], key: &Key) -> Result<Base, Refused> {
    let damaged = Refused::Damaged;
    let mut r = unseal(bytes, MAGIC, FORMAT, key)?;
    let tip = r.oid()?;
    let count = r.count(49)?;
    let mut notes = Vec::with_capacity(count);
    let mut last: Option<NoteKey> = None;
    for _ in 0..count {
        let annotated = r.oid()?;
        let splits = u64::from_le_bytes(r.array()?);
        let blob = r.oid()?;
        let key = NoteKey { annotated, splits };
        if last.is_some_and(|l| l >= key) {
            return Err(damaged("its notes are out of order"));
        }
        last = Some(key);
        let lines = match r.byte()? {
            0 => None,
            1 => {
                let count = r.count(85)?;
                let mut lines = Vec::with_capacity(count);
                for _ in 0..count {
                    let line_no = r.u32()?;
                    let payload = r.array::<32>()?;
                    let grant = GrantKey(r.array()?);
                    if !crate::grant::is_grant_id(&grant.0) {
                        return Err(damaged("a grant id is invalid"));
                    }
                    let kind = kind_of(r.byte()?).ok_or(damaged("a record kind is invalid"))?;
                    let intent = r.payload_ref()?;
                    let request = r.payload_ref()?;
                    if !fits(kind, intent.is_some(), request.is_some()) {
                        return Err(damaged("a payload reference does not fit its record"));
                    }
                    let commit = CommitRef::Sha1(r.array()?);
                    lines.push(Line {
                        line_no,
                        payload_sha256: Some(payload),
                        facts: Some(Facts { grant, kind, intent, request, commit }),
                        findings: Vec::new(),
                    });
                }
                Some(lines)
            }
            _ => return Err(damaged("a note's state is invalid")),
        };
        notes.push(BaseNote { note: Note { key, blob }, lines });
    }
    let count = r.count(57)?;
    let mut removed = Vec::with_capacity(count);
    for _ in 0..count {
        let annotated = r.oid()?;
        let line_sha256 = r.array::<32>()?;
        let grant_id = match r.byte()? {
            0 => None,
            1 => Some(GrantKey(r.array()?).grant_id().ok_or(damaged("a grant id is invalid"))?),
            _ => return Err(damaged("a removed record is invalid")),
        };
        let message = r.str()?.to_owned();
        removed.push(Removed {
            annotated,
            line_sha256,
            finding: Finding {
                kind: FindingKind::RecordRemoved,
                commit: Some(annotated.to_string()),
                line: None,
                grant_id,
                message,
            },
        });
    }
    if !r.rest.is_empty() {
        return Err(damaged("it has bytes after its end"));
    }
    Ok(Base { tip, notes, removed })
}

/// The header the tpa caches share: what the file is, its format, and the key it was written for.
pub(super) fn put_header(out: &mut Vec<u8>, magic: &[u8], format: u32, key: &Key) {
    out.extend_from_slice(magic);
    out.extend_from_slice(&format.to_le_bytes());
    put_str(out, &key.build);
    out.extend_from_slice(&key.trust);
}

/// Appends the sha256 over everything before it.
pub(super) fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// What follows the header of a cache file sealed by [`seal`], once its digest, its magic, its
/// format and its key are what they must be.
pub(super) fn unseal<'a>(
    bytes: &'a [u8],
    magic: &[u8],
    format: u32,
    key: &Key,
) -> Result<Reader<'a>, Refused> {
    if bytes.len() < magic.len() + 32 || !bytes.starts_with(magic) {
        return Err(Refused::Damaged("not a tpa cache of this kind"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(Refused::Damaged("its digest does not match its contents"));
    }
    let mut r = Reader { rest: &body[magic.len()..] };
    if r.u32()? != format || r.str()? != key.build {
        return Err(Refused::OtherBuild);
    }
    if r.array::<32>()? != key.trust {
        return Err(Refused::OtherTrust);
    }
    Ok(r)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn kind_byte(kind: RecordKind) -> u8 {
    match kind {
        RecordKind::Intent => 0,
        RecordKind::Grant => 1,
        RecordKind::Failed => 2,
        RecordKind::Revoke => 3,
        RecordKind::Request => 4,
        RecordKind::Approval => 5,
    }
}

fn kind_of(byte: u8) -> Option<RecordKind> {
    Some(match byte {
        0 => RecordKind::Intent,
        1 => RecordKind::Grant,
        2 => RecordKind::Failed,
        3 => RecordKind::Revoke,
        4 => RecordKind::Request,
        5 => RecordKind::Approval,
        _ => return None,
    })
}

/// Whether a record of `kind` may name an intent and a request as stored, by the rules of
/// `Record::validate`: a stored entry that breaks them was not written by tpa.
fn fits(kind: RecordKind, intent: bool, request: bool) -> bool {
    use RecordKind::*;
    match kind {
        Request => !intent && !request,
        Intent => !intent,
        Approval => !intent && request,
        Grant | Failed | Revoke => intent || request,
    }
}

pub(super) struct Reader<'a> {
    pub(super) rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Refused> {
        if self.rest.len() < n {
            return Err(Refused::Damaged("it ends early"));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], Refused> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn byte(&mut self) -> Result<u8, Refused> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u32(&mut self) -> Result<u32, Refused> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A count of items at least `min_size` bytes each: never more than the bytes left can hold,
    /// so a damaged count cannot make the reader allocate without bound.
    pub(super) fn count(&mut self, min_size: usize) -> Result<usize, Refused> {
        let count = self.u32()? as usize;
        if count > self.rest.len() / min_size {
            return Err(Refused::Damaged("a count is larger than the file"));
        }
        Ok(count)
    }

    fn payload_ref(&mut self) -> Result<Option<PayloadRef>, Refused> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(PayloadRef::Sha(self.array()?))),
            _ => Err(Refused::Damaged("a payload reference is invalid")),
        }
    }

    pub(super) fn oid(&mut self) -> Result<Oid, Refused> {
        Oid::from_bytes(self.take(20)?).map_err(|_| Refused::Damaged("an object id is invalid"))
    }

    fn str(&mut self) -> Result<&'a str, Refused> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| Refused::Damaged("a text is not UTF-8"))
    }
}

/// For the tests of the files sealed here: every truncation of `bytes`, and every byte of it with
/// a bit flipped (two different bits), is refused by `decode` (which must not panic either).
#[cfg(test)]
pub(super) fn assert_every_damage_refused<T>(bytes: &[u8], decode: impl Fn(&[u8]) -> Result<T, Refused>) {
    for len in 0..bytes.len() {
        assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
    }
    for at in 0..bytes.len() {
        for bit in [0x01, 0x20] {
            let mut damaged = bytes.to_vec();
            damaged[at] ^= bit;
            assert!(decode(&damaged).is_err(), "byte {at} flipped ({bit:#x})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::check::CheckedNote;

    fn oid(byte: u8) -> Oid {
        Oid::from_bytes(&[byte; 20]).unwrap()
    }

    fn sample() -> Checked {
        let grant = GrantKey(*b"01JD3M5Q8Z6N2X4V7B9C1R0T5K");
        let intent = Line {
            line_no: 1,
            payload_sha256: Some([1; 32]),
            facts: Some(Facts {
                grant,
                kind: RecordKind::Intent,
                intent: None,
                request: None,
                commit: CommitRef::Sha1([9; 20]),
            }),
            findings: vec![],
        };
        let revoke = Line {
            line_no: 3,
            payload_sha256: Some([2; 32]),
            facts: Some(Facts {
                grant,
                kind: RecordKind::Revoke,
                intent: Some(PayloadRef::Sha([1; 32])),
                request: Some(PayloadRef::Sha([6; 32])),
                commit: CommitRef::Sha1([9; 20]),
            }),
            findings: vec![],
        };
        let bad = Line {
            line_no: 1,
            payload_sha256: None,
            facts: None,
            findings: vec![Finding {
                kind: FindingKind::MalformedLine,
                commit: None,
                line: Some(1),
                grant_id: None,
                message: "x".into(),
            }],
        };
        let note = |a: u8, blob: u8, lines: Vec<Line>| CheckedNote {
            note: Note { key: NoteKey { annotated: oid(a), splits: 0b10100 }, blob: oid(blob) },
            lines,
            records: vec![],
            fresh: true,
        };
        Checked {
            tip: oid(7),
            notes: vec![note(1, 2, vec![intent, revoke]), note(3, 4, vec![bad])],
            removed: vec![Removed {
                annotated: oid(1),
                line_sha256: [5; 32],
                finding: crate::ledger::verify::removed_finding(oid(1), b"junk"),
            }],
        }
    }

    fn key() -> Key {
        Key::this_build([3; 32])
    }

    #[test]
    fn round_trips_and_keeps_a_note_with_findings_for_a_new_check() {
        let checked = sample();
        let base = decode(&encode(&key(), &checked), &key()).unwrap();
        assert_eq!(base.tip, checked.tip);
        assert_eq!(base.notes.len(), 2);
        assert_eq!(base.notes[0].lines.as_deref(), Some(&checked.notes[0].lines[..]));
        assert!(base.notes[1].lines.is_none(), "a note with a finding is checked again");
        assert_eq!(base.removed, checked.removed);
    }

    #[test]
    fn another_build_or_trust_is_not_used() {
        let bytes = encode(&key(), &sample());
        let other = Key { trust: [4; 32], ..key() };
        assert_eq!(decode(&bytes, &other).err(), Some(Refused::OtherTrust));
        let other = Key { build: "0.0.0 other".into(), ..key() };
        assert_eq!(decode(&bytes, &other).err(), Some(Refused::OtherBuild));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused_without_a_panic() {
        assert_every_damage_refused(&encode(&key(), &sample()), |bytes| decode(bytes, &key()));
    }

    #[test]
    fn a_damaged_body_with_a_recomputed_digest_is_refused_or_read_without_a_panic() {
        // Someone who edits the file and fixes the digest: the reader still never panics and
        // never allocates beyond the file, whatever the bytes say.
        let bytes = encode(&key(), &sample());
        let body_len = bytes.len() - 32;
        for i in MAGIC.len()..body_len {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut body = bytes[..body_len].to_vec();
                body[i] ^= flip;
                let digest = Sha256::digest(&body);
                body.extend_from_slice(&digest);
                let _ = decode(&body, &key());
            }
        }
    }
}

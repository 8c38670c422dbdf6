//! Checking the ledger: every record's signature and signer against the trust ref's
//! allowed_signers, its place in the notes tree, its grant's intent, and the notes ref's own
//! history (nothing removed, nothing rewritten since the last verified tip). This file holds the
//! checks themselves; src/ledger/check.rs runs them over a notes tip, in full or since the last
//! verified tip.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use git2::{Oid, Repository};
use serde::Serialize;
use sha2::{Digest, Sha256};
use ssh_key::SshSig;

use super::notes;
use super::signature::{self, KeyCache};
use super::signers::{AllowedSigners, NAMESPACE, SignerCheck};
use super::{NoteLine, StoredLine};
use crate::grant::{GrantId, Record, RecordKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A note line that is not `{"payload": ..., "sig": ...}`.
    MalformedLine,
    /// A payload that is not a valid record of this version.
    InvalidRecord,
    /// A payload of a newer record version than this tpa reads.
    UnsupportedVersion,
    /// A signature that does not verify over the payload, or is not an SSHSIG at all.
    BadSignature,
    /// A signature made for another namespace than `tpa` (e.g. `git`).
    WrongNamespace,
    /// The signing key is not in allowed_signers at the trust ref (or not for namespace `tpa`).
    UnknownSigner,
    /// The signing key was not valid (valid-after / valid-before) at the record's issued_at.
    SignerNotValid,
    /// The signing key belongs to another principal than the record's.
    PrincipalMismatch,
    /// The record is stored in the note of another commit than the one its payload names.
    WrongCommit,
    /// A grant, failed or revoke record whose grant has no intent record in the ledger.
    OrphanRecord,
    /// A record whose intent_sha256 does not match its grant's intent.
    IntentMismatch,
    /// A record present in an earlier state of refs/notes/tpa but removed or altered at its tip.
    RecordRemoved,
    /// The notes ref's tip no longer descends from the last tip tpa verified.
    HistoryRewritten,
}

impl FindingKind {
    pub const ALL: [FindingKind; 13] = [
        FindingKind::MalformedLine,
        FindingKind::InvalidRecord,
        FindingKind::UnsupportedVersion,
        FindingKind::BadSignature,
        FindingKind::WrongNamespace,
        FindingKind::UnknownSigner,
        FindingKind::SignerNotValid,
        FindingKind::PrincipalMismatch,
        FindingKind::WrongCommit,
        FindingKind::OrphanRecord,
        FindingKind::IntentMismatch,
        FindingKind::RecordRemoved,
        FindingKind::HistoryRewritten,
    ];

    /// The stable name (`--json`, docs/verify.md).
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::MalformedLine => "malformed_line",
            FindingKind::InvalidRecord => "invalid_record",
            FindingKind::UnsupportedVersion => "unsupported_version",
            FindingKind::BadSignature => "bad_signature",
            FindingKind::WrongNamespace => "wrong_namespace",
            FindingKind::UnknownSigner => "unknown_signer",
            FindingKind::SignerNotValid => "signer_not_valid",
            FindingKind::PrincipalMismatch => "principal_mismatch",
            FindingKind::WrongCommit => "wrong_commit",
            FindingKind::OrphanRecord => "orphan_record",
            FindingKind::IntentMismatch => "intent_mismatch",
            FindingKind::RecordRemoved => "record_removed",
            FindingKind::HistoryRewritten => "history_rewritten",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// The commit whose note holds the line, when the finding is about one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<GrantId>,
    pub message: String,
}

/// A record as found at the tip, with what its checks found.
#[derive(Clone, Debug)]
pub struct CheckedRecord {
    pub annotated: Oid,
    pub line_no: usize,
    pub record: Option<Record>,
    pub payload_sha256: Option<String>,
    /// The SHA256 fingerprint of the key whose signature over the payload verified (trusted or
    /// not): who really signed, whatever the record says (self-approval is judged by key too).
    pub signer: Option<String>,
    pub findings: Vec<Finding>,
}

impl CheckedRecord {
    pub fn is_verified(&self) -> bool {
        self.record.is_some() && self.findings.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub tip: Option<Oid>,
    pub records: Vec<CheckedRecord>,
    /// Copies git made of records (`notes.rewriteRef` on amend/rebase) onto commits they do not
    /// name, while the original stays on its own commit: set aside, neither findings nor records.
    pub git_copies: Vec<GitCopy>,
    /// Findings about the ledger as a whole (history), not about one record at the tip.
    pub ledger_findings: Vec<Finding>,
}

impl Report {
    pub fn empty(tip: Option<Oid>) -> Self {
        Report { tip, records: Vec::new(), git_copies: Vec::new(), ledger_findings: Vec::new() }
    }

    pub fn all_findings(&self) -> impl Iterator<Item = &Finding> {
        self.records.iter().flat_map(|r| r.findings.iter()).chain(self.ledger_findings.iter())
    }

    pub fn is_clean(&self) -> bool {
        self.all_findings().next().is_none()
    }
}

/// A record git copied onto a rewritten commit.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct GitCopy {
    /// The commit whose note holds the copy.
    pub commit: String,
    pub line: usize,
    pub grant_id: Option<GrantId>,
    /// The commit the record names, whose note still holds the original.
    pub original: String,
}

/// A grant id as its 26 characters (always a valid ULID in upper case): a key of fixed size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKey(pub [u8; 26]);

impl GrantKey {
    pub fn of(id: &GrantId) -> Self {
        let mut key = [0; 26];
        key.copy_from_slice(id.as_str().as_bytes());
        GrantKey(key)
    }

    /// None when the bytes are no grant id (a damaged cache).
    pub fn grant_id(&self) -> Option<GrantId> {
        std::str::from_utf8(&self.0).ok()?.parse().ok()
    }
}

/// A payload a record names by its sha256 (`intent_sha256`, `request_sha256`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadRef {
    /// 64 lower-case hex digits, decoded.
    Sha([u8; 32]),
    /// Anything else (upper-case digits pass record validation): it names no payload, since
    /// payload digests are always written in lower case.
    Other,
}

/// The commit a record names (`commit`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitRef {
    /// 40 lower-case hex digits, decoded: a SHA-1 object id.
    Sha1([u8; 20]),
    /// A 64-digit id: never the name of a note in a SHA-1 repository.
    Other(String),
}

impl CommitRef {
    fn of(commit: &str) -> Self {
        let mut raw = [0; 20];
        match hex::decode_to_slice(commit, &mut raw) {
            Ok(()) if commit.len() == 40 && !commit.bytes().any(|b| b.is_ascii_uppercase()) => {
                CommitRef::Sha1(raw)
            }
            _ => CommitRef::Other(commit.to_owned()),
        }
    }

    /// Does it name `annotated`?
    pub fn names(&self, annotated: Oid) -> bool {
        matches!(self, CommitRef::Sha1(raw) if raw == annotated.as_bytes())
    }

    fn text(&self) -> String {
        match self {
            CommitRef::Sha1(raw) => hex::encode(raw),
            CommitRef::Other(text) => text.clone(),
        }
    }
}

/// What the checks across records (intents, git copies, place) read of a record. The same for a
/// record checked in this run and one whose note blob an earlier run checked (the verify cache).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub grant: GrantKey,
    pub kind: RecordKind,
    /// The intent it names: never on a request, intent or approval (record validation refuses
    /// one there); on the other kinds unless they name a request instead (a cancelled request).
    pub intent: Option<PayloadRef>,
    /// The request it names: on approvals, and on every record of a grant asked for with one.
    pub request: Option<PayloadRef>,
    pub commit: CommitRef,
}

impl Facts {
    pub fn of(record: &Record) -> Self {
        let named = |digest: &str| {
            let mut raw = [0; 32];
            match hex::decode_to_slice(digest, &mut raw) {
                Ok(()) if !digest.bytes().any(|b| b.is_ascii_uppercase()) => PayloadRef::Sha(raw),
                _ => PayloadRef::Other,
            }
        };
        Facts {
            grant: GrantKey::of(&record.grant_id),
            kind: record.kind,
            intent: record.intent_sha256.as_deref().map(named),
            request: record.request_sha256.as_deref().map(named),
            commit: CommitRef::of(&record.commit),
        }
    }

    /// Fits the verify cache: every id in its decoded form.
    pub fn is_plain(&self) -> bool {
        matches!(self.commit, CommitRef::Sha1(_))
            && !matches!(self.intent, Some(PayloadRef::Other))
            && !matches!(self.request, Some(PayloadRef::Other))
    }
}

/// One line of a note, checked on its own: format, payload, signature, signer. None of that depends
/// on where the line is stored, so for a given note blob and trust it is always the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number within the note.
    pub line_no: u32,
    /// sha256 of the payload, once the line is `{"payload", "sig"}`.
    pub payload_sha256: Option<[u8; 32]>,
    /// Once the payload is a valid record.
    pub facts: Option<Facts>,
    /// What the line's own checks found.
    pub findings: Vec<Finding>,
}

impl Line {
    /// Nothing found, and everything the verify cache needs in plain form.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
            && self.payload_sha256.is_some()
            && self.facts.as_ref().is_some_and(Facts::is_plain)
    }
}

/// What the flows that read records (log, show, status, the audit) keep of a line besides its
/// [`Line`]: the record, and who really signed it.
#[derive(Clone, Debug, Default)]
pub struct Kept {
    pub record: Option<Record>,
    /// The SHA256 fingerprint of the key whose signature over the payload verified (trusted or
    /// not), once the payload is a valid record: see [`CheckedRecord::signer`].
    pub signer: Option<String>,
}

/// Whether a line's signature is verified now, or was verified before over these very bytes and
/// against the same signers (the records cache, src/ledger/records_cache.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    Verify,
    VerifiedBefore,
}

/// Checks one stored line on its own. Returns the line and, with `keep`, the record and its signer
/// (`tpa verify` needs neither, and skips the fingerprint).
pub fn check_line(
    annotated: Oid,
    line_no: usize,
    raw: &[u8],
    signers: &AllowedSigners,
    keys: &mut KeyCache,
    keep: bool,
    signature_check: SignatureCheck,
) -> (Line, Kept) {
    let (line, record, signer) =
        check_line_inner(annotated, line_no, raw, signers, keys, keep, signature_check);
    let kept = if keep { Kept { record, signer } } else { Kept::default() };
    (line, kept)
}

/// A line's record and signer read again, for a check that kept none (src/ledger/check.rs,
/// `stream_records`): what [`check_line`] with `keep` gives for it. What the check found of the
/// line (`line`) stands for its checks: its payload parsed into a valid record (so it parses
/// again), and a signature that failed names no signer.
pub fn reread_line(line: &Line, raw: &[u8]) -> Kept {
    if line.facts.is_none() {
        return Kept::default();
    }
    let Ok(stored) = serde_json::from_str::<NoteLine>(&String::from_utf8_lossy(raw)) else {
        return Kept::default();
    };
    let record: Option<Record> = serde_json::from_str(&stored.payload).ok();
    let verified = !line
        .findings
        .iter()
        .any(|f| matches!(f.kind, FindingKind::BadSignature | FindingKind::WrongNamespace));
    let signer = (verified && record.is_some())
        .then(|| SshSig::from_pem(stored.sig.as_bytes()).ok())
        .flatten()
        .map(|sig| sig.public_key().fingerprint(ssh_key::HashAlg::Sha256).to_string());
    Kept { record, signer }
}

fn check_line_inner(
    annotated: Oid,
    line_no: usize,
    raw: &[u8],
    signers: &AllowedSigners,
    keys: &mut KeyCache,
    keep: bool,
    signature_check: SignatureCheck,
) -> (Line, Option<Record>, Option<String>) {
    let mut signer = None;
    let commit = annotated.to_string();
    let mut checked =
        Line { line_no: line_no as u32, payload_sha256: None, facts: None, findings: Vec::new() };
    let finding = |kind, grant_id: Option<GrantId>, message: String| Finding {
        kind,
        commit: Some(commit.clone()),
        line: Some(line_no),
        grant_id,
        message,
    };
    // As before: a line that is not UTF-8 is read with replacement characters, so its signature
    // (over other bytes than were signed) fails, or its JSON does.
    let text = String::from_utf8_lossy(raw);
    let line: NoteLine = match serde_json::from_str(&text) {
        Ok(line) => line,
        Err(e) => {
            checked.findings.push(finding(
                FindingKind::MalformedLine,
                None,
                format!("not a ledger line: {e}"),
            ));
            return (checked, None, None);
        }
    };
    checked.payload_sha256 = Some(Sha256::digest(line.payload.as_bytes()).into());

    let record = parse_payload(&line.payload);
    let grant_id = record.as_ref().ok().map(|r| r.grant_id.clone());
    if let Err((kind, message)) = &record {
        checked.findings.push(finding(*kind, None, message.clone()));
    }
    let record = record.ok();
    checked.facts = record.as_ref().map(Facts::of);

    let signature = match SshSig::from_pem(line.sig.as_bytes()) {
        Ok(sig) => sig,
        Err(e) => {
            checked.findings.push(finding(
                FindingKind::BadSignature,
                grant_id,
                format!("not an SSH signature: {e}"),
            ));
            return (checked, record, signer);
        }
    };
    if signature.namespace() != NAMESPACE {
        let message = format!("signed for namespace `{}`, not `{NAMESPACE}`", signature.namespace());
        checked.findings.push(finding(FindingKind::WrongNamespace, grant_id, message));
    } else if let Err(e) = match signature_check {
        SignatureCheck::Verify => signature::verify(&signature, line.payload.as_bytes(), keys),
        // Everything else about the line is checked again: only the curve arithmetic is skipped.
        SignatureCheck::VerifiedBefore => Ok(()),
    } {
        let message = format!("signature does not match the payload: {e}");
        checked.findings.push(finding(FindingKind::BadSignature, grant_id, message));
    } else if let Some(record) = &record {
        let fingerprint = || signature.public_key().fingerprint(ssh_key::HashAlg::Sha256);
        if keep {
            signer = Some(fingerprint().to_string());
        }
        let email = &record.principal.email;
        let at = record.issued_at;
        let problem = match signers.check(signature.public_key(), email, at) {
            SignerCheck::Allowed => None,
            SignerCheck::UnknownKey => Some((
                FindingKind::UnknownSigner,
                format!("key {} is not in .tpa/allowed_signers at the trust ref", fingerprint()),
            )),
            SignerCheck::WrongNamespace => Some((
                FindingKind::UnknownSigner,
                format!("key {} of {email} is not allowed for namespace `{NAMESPACE}`", fingerprint()),
            )),
            SignerCheck::OtherPrincipal(owners) => Some((
                FindingKind::PrincipalMismatch,
                format!("record says {email}, but key {} belongs to {owners}", fingerprint()),
            )),
            SignerCheck::NotValidAt => Some((
                FindingKind::SignerNotValid,
                format!("key {} of {email} was not valid at {}", fingerprint(), at.to_rfc3339()),
            )),
        };
        if let Some((kind, message)) = problem {
            checked.findings.push(finding(kind, grant_id, message));
        }
    }
    (checked, record, signer)
}

fn parse_payload(payload: &str) -> Result<Record, (FindingKind, String)> {
    // The common case parses once; only a payload that fails is probed for its version, so that a
    // newer record is told apart from a broken one.
    let parsed: Result<Record, _> = serde_json::from_str(payload);
    if let Ok(record) = &parsed
        && record.validate().is_ok()
    {
        return parsed.map_err(|_| unreachable!());
    }
    #[derive(serde::Deserialize)]
    struct VersionProbe {
        version: Option<u32>,
    }
    let probe: VersionProbe = serde_json::from_str(payload)
        .map_err(|e| (FindingKind::InvalidRecord, format!("payload is not a JSON object: {e}")))?;
    if let Some(version) = probe.version
        && version > crate::grant::RECORD_VERSION
    {
        return Err((
            FindingKind::UnsupportedVersion,
            format!("record version {version} is newer than this tpa reads: upgrade tpa"),
        ));
    }
    let record = parsed.map_err(|e| (FindingKind::InvalidRecord, format!("payload: {e}")))?;
    record.validate().map_err(|e| (FindingKind::InvalidRecord, e.to_string()))?;
    Ok(record)
}

/// Checks each line on its own, and its place (`wrong_commit`), spread over the cores; no checks
/// across records. For `tpa export` and the audit's events, which ship records one by one.
pub fn check_lines(lines: Vec<StoredLine>, signers: &AllowedSigners) -> Vec<CheckedRecord> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    let chunk = lines.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = lines
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut keys = KeyCache::default();
                    part.iter()
                        .map(|stored| {
                            let (line, kept) = check_line(
                                stored.annotated,
                                stored.line_no,
                                stored.text.as_bytes(),
                                signers,
                                &mut keys,
                                true,
                                SignatureCheck::Verify,
                            );
                            let placed = [Placed { annotated: stored.annotated, line: &line }];
                            let mut findings = line.findings.clone();
                            findings.extend(wrong_commit(&placed).into_iter().map(|(_, f)| f));
                            CheckedRecord {
                                annotated: stored.annotated,
                                line_no: stored.line_no,
                                record: kept.record,
                                payload_sha256: line.payload_sha256.map(hex::encode),
                                signer: kept.signer,
                                findings,
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a checker thread never panics")).collect()
    })
}

/// A line as the checks across records see it: where it is stored, and what it is.
#[derive(Clone, Copy)]
pub struct Placed<'a> {
    pub annotated: Oid,
    pub line: &'a Line,
}

/// What the checks across records found.
#[derive(Debug, Default)]
pub struct Across {
    /// Per line (same order as given): a copy git made, set aside.
    pub copies: Vec<bool>,
    /// Findings to add to a line (index into the lines given), in the order they were made.
    pub findings: Vec<(usize, Finding)>,
    pub git_copies: Vec<GitCopy>,
}

fn is_misplaced(placed: &Placed<'_>) -> bool {
    placed.line.facts.as_ref().is_some_and(|f| !f.commit.names(placed.annotated))
}

/// The intents (or requests) at the tip: the grants that have one, and each one's payload digests.
/// Built on every `tpa verify` over every record, so one map, hashed once per record: foldhash,
/// seeded per process, hashes these keys at a fraction of SipHash's cost, and its seed keeps
/// crafted grant ids from colliding on purpose.
struct Named {
    by_grant: HashMap<GrantKey, Digests, foldhash::fast::RandomState>,
}

/// A grant's intent (or request) digests: one, unless its records were tampered with.
struct Digests {
    first: [u8; 32],
    more: HashSet<[u8; 32], foldhash::fast::RandomState>,
}

impl Named {
    fn with_capacity(records: usize) -> Self {
        Named { by_grant: HashMap::with_capacity_and_hasher(records, Default::default()) }
    }

    fn insert(&mut self, grant: GrantKey, sha: [u8; 32]) {
        match self.by_grant.entry(grant) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Digests { first: sha, more: HashSet::default() });
            }
            std::collections::hash_map::Entry::Occupied(mut digests) => {
                let digests = digests.get_mut();
                if digests.first != sha {
                    digests.more.insert(sha);
                }
            }
        }
    }

    fn has(&self, grant: &GrantKey) -> bool {
        self.by_grant.contains_key(grant)
    }

    /// Is `named` one of `grant`'s? A digest not in lower-case hex names no payload.
    fn names(&self, grant: GrantKey, named: PayloadRef) -> bool {
        let PayloadRef::Sha(sha) = named else { return false };
        self.by_grant.get(&grant).is_some_and(|d| d.first == sha || d.more.contains(&sha))
    }
}

/// A `wrong_commit` finding for each record stored on another commit than the one it names.
fn wrong_commit(lines: &[Placed<'_>]) -> Vec<(usize, Finding)> {
    let mut out = Vec::new();
    for (index, placed) in lines.iter().enumerate() {
        if let (true, Some(facts)) = (is_misplaced(placed), &placed.line.facts) {
            let commit = placed.annotated.to_string();
            out.push((
                index,
                Finding {
                    kind: FindingKind::WrongCommit,
                    message: format!("record is for commit {} but stored on {commit}", facts.commit.text()),
                    commit: Some(commit),
                    line: Some(placed.line.line_no as usize),
                    grant_id: facts.grant.grant_id(),
                },
            ));
        }
    }
    out
}

/// The checks that depend on where a line is stored and on the other records: the record's place
/// (`wrong_commit`), copies git made of it (`notes.rewriteRef`), and its grant's intent. They are
/// always run over every line at the tip, whether its own checks were made now or read from the
/// verify cache, so a record added, moved or removed changes what they find exactly as in a full
/// check.
pub fn check_across(lines: &[Placed<'_>]) -> Across {
    let mut across = Across { copies: vec![false; lines.len()], ..Across::default() };
    let wrong: Vec<bool> = lines.iter().map(is_misplaced).collect();
    across.findings = wrong_commit(lines);

    // Git copies: a record on a commit it does not name whose payload is also stored, unaltered
    // and in its right place, on the commit it names. Such a copy is no second record and no
    // tampering. A record whose original is gone (moved, not copied) stays, with its finding.
    if wrong.iter().any(|w| *w) {
        let in_place: HashSet<([u8; 32], Oid), foldhash::fast::RandomState> = lines
            .iter()
            .zip(&wrong)
            .filter(|(_, wrong)| !**wrong)
            .filter_map(|(p, _)| Some((p.line.payload_sha256?, p.annotated)))
            .collect();
        for (index, placed) in lines.iter().enumerate() {
            let (Some(facts), Some(sha)) = (&placed.line.facts, placed.line.payload_sha256) else { continue };
            let CommitRef::Sha1(named) = &facts.commit else { continue };
            if wrong[index] && in_place.contains(&(sha, Oid::from_bytes(named).expect("20 bytes"))) {
                across.copies[index] = true;
                across.git_copies.push(GitCopy {
                    commit: placed.annotated.to_string(),
                    line: placed.line.line_no as usize,
                    grant_id: facts.grant.grant_id(),
                    original: facts.commit.text(),
                });
            }
        }
        // A copy is set aside: none of its findings (the wrong place) stand.
        let copies = &across.copies;
        across.findings.retain(|(index, _)| !copies[*index]);
    }

    // Each later record names its grant's intent, and a record naming a request names its
    // grant's request.
    // Which grants have an intent (a request), and which (grant, payload sha256) pairs are one:
    // sets, not a list per grant, since this runs over every record on every `tpa verify`.
    let records = lines.len();
    let (mut intents, mut requests) = (Named::with_capacity(records / 2), Named::with_capacity(records / 8));
    for (index, placed) in lines.iter().enumerate() {
        if let (Some(facts), Some(sha), false) =
            (&placed.line.facts, placed.line.payload_sha256, across.copies[index])
        {
            match facts.kind {
                RecordKind::Intent => intents.insert(facts.grant, sha),
                RecordKind::Request => requests.insert(facts.grant, sha),
                _ => {}
            }
        }
    }
    for (index, placed) in lines.iter().enumerate() {
        let Some(facts) = &placed.line.facts else { continue };
        if facts.kind == RecordKind::Request || across.copies[index] {
            continue;
        }
        // A record naming a request (approvals, the intent of an approved grant, a cancelled
        // request) must name this grant's request.
        if let Some(named) = facts.request
            && !requests.names(facts.grant, named)
        {
            let grant_id = facts.grant.grant_id();
            let shown = grant_id.as_ref().map(ToString::to_string).unwrap_or_default();
            across.findings.push((
                index,
                Finding {
                    kind: if requests.has(&facts.grant) {
                        FindingKind::IntentMismatch
                    } else {
                        FindingKind::OrphanRecord
                    },
                    commit: Some(placed.annotated.to_string()),
                    line: Some(placed.line.line_no as usize),
                    grant_id,
                    message: format!("{} record names a request that is not grant {shown}'s", facts.kind),
                },
            ));
            continue;
        }
        if matches!(facts.kind, RecordKind::Intent | RecordKind::Approval) || facts.intent.is_none() {
            continue;
        }
        // The grant id is built only for a finding: most records have none.
        let kind = match facts.intent {
            _ if !intents.has(&facts.grant) => FindingKind::OrphanRecord,
            Some(named) if !intents.names(facts.grant, named) => FindingKind::IntentMismatch,
            _ => continue,
        };
        let grant_id = facts.grant.grant_id();
        let shown = grant_id.as_ref().map(ToString::to_string).unwrap_or_default();
        let message = if kind == FindingKind::OrphanRecord {
            format!("{} record for grant {shown} whose intent is not in the ledger", facts.kind)
        } else {
            format!("{} record names an intent that is not grant {shown}'s", facts.kind)
        };
        let finding = Finding {
            kind,
            commit: Some(placed.annotated.to_string()),
            line: Some(placed.line.line_no as usize),
            grant_id,
            message,
        };
        across.findings.push((index, finding));
    }
    across
}

/// Lines of a note blob, with their 1-based line numbers; empty lines (`git notes append` adds
/// them) are no lines.
pub fn numbered_lines(content: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    content.split(|b| *b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()).map(|(i, l)| (i + 1, l))
}

/// What a line that is gone from the tip was, for the `record_removed` finding.
pub fn describe_line(line: &[u8]) -> (Option<GrantId>, String) {
    let parsed = std::str::from_utf8(line)
        .ok()
        .and_then(|text| serde_json::from_str::<NoteLine>(text).ok())
        .and_then(|l| serde_json::from_str::<serde_json::Value>(&l.payload).ok());
    let Some(payload) = parsed else { return (None, "a line".to_owned()) };
    let grant_id = payload.get("grant_id").and_then(|v| v.as_str()).and_then(|s| s.parse().ok());
    let kind = payload.get("kind").and_then(|v| v.as_str()).unwrap_or("unknown");
    let what = match &grant_id {
        Some(id) => format!("the {kind} record of grant {id}"),
        None => format!("a {kind} record"),
    };
    (grant_id, what)
}

/// The `record_removed` finding for a line of an earlier state of `annotated`'s note.
pub fn removed_finding(annotated: Oid, line: &[u8]) -> Finding {
    let (grant_id, what) = describe_line(line);
    Finding {
        kind: FindingKind::RecordRemoved,
        commit: Some(annotated.to_string()),
        line: None,
        grant_id,
        message: format!("{what} was in the ledger's history but is missing or altered at its tip"),
    }
}

/// Is the tip still a descendant of (or equal to) the last verified tip?
pub fn check_witness(repo: &Repository, tip: Option<Oid>, witness: Option<Oid>) -> Option<Finding> {
    let witness = witness?;
    let finding = |message: String| Finding {
        kind: FindingKind::HistoryRewritten,
        commit: None,
        line: None,
        grant_id: None,
        message,
    };
    let Some(tip) = tip else {
        return Some(finding(format!("{} is gone; tpa last verified it at {witness}", notes::NOTES_REF)));
    };
    if tip == witness {
        return None;
    }
    match repo.graph_descendant_of(tip, witness) {
        Ok(true) => None,
        Ok(false) => Some(finding(format!(
            "{} was rewritten: its tip {tip} does not descend from {witness}, the tip tpa last verified",
            notes::NOTES_REF
        ))),
        Err(_) => Some(finding(format!(
            "{} was rewritten: {witness}, the tip tpa last verified, is no longer in the repository",
            notes::NOTES_REF
        ))),
    }
}

/// The time a record speaks for, for ordering.
pub fn issued_at(checked: &CheckedRecord) -> Option<DateTime<Utc>> {
    checked.record.as_ref().map(|r| r.issued_at)
}

#[cfg(test)]
mod tests {
    use super::FindingKind;

    #[test]
    fn finding_names_are_their_serialized_names() {
        for kind in FindingKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}

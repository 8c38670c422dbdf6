//! Checking the ledger: every record's signature and signer against the trust ref's
//! allowed_signers, its place in the notes tree, its grant's intent, and the notes ref's own
//! history (nothing removed, nothing rewritten since the last verified tip).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use chrono::{DateTime, Utc};
use git2::{Oid, Repository};
use serde::Serialize;
use ssh_key::SshSig;

use super::notes::{self, NoteEntry};
use super::signers::{AllowedSigners, NAMESPACE, SignerCheck};
use super::{NoteLine, StoredLine};
use crate::grant::{GrantId, Record, RecordKind, sha256_hex};

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

#[derive(Clone, Debug, Serialize)]
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
    pub fn all_findings(&self) -> impl Iterator<Item = &Finding> {
        self.records.iter().flat_map(|r| r.findings.iter()).chain(self.ledger_findings.iter())
    }

    pub fn is_clean(&self) -> bool {
        self.all_findings().next().is_none()
    }
}

/// A record git copied onto a rewritten commit.
#[derive(Clone, Debug, Serialize)]
pub struct GitCopy {
    /// The commit whose note holds the copy.
    pub commit: String,
    pub line: usize,
    pub grant_id: Option<GrantId>,
    /// The commit the record names, whose note still holds the original.
    pub original: String,
}

/// Takes out of `records` each record stored on a commit it does not name whose payload is also
/// stored, unaltered and in its right place, on the commit it names: git's `notes.rewriteRef`
/// copies a commit's note to the commit that replaces it on `commit --amend` and `rebase`. Such a
/// copy is no second record and no tampering. A record whose original is gone (moved, not copied)
/// stays, with its `wrong_commit` finding.
pub fn set_aside_git_copies(records: &mut Vec<CheckedRecord>) -> Vec<GitCopy> {
    let in_place: HashSet<(&str, String)> = records
        .iter()
        .filter(|c| !c.findings.iter().any(|f| f.kind == FindingKind::WrongCommit))
        .filter_map(|c| Some((c.payload_sha256.as_deref()?, c.annotated.to_string())))
        .collect();
    let is_copy = |c: &CheckedRecord| {
        c.findings.iter().any(|f| f.kind == FindingKind::WrongCommit)
            && matches!((&c.record, &c.payload_sha256), (Some(r), Some(sha)) if in_place.contains(&(sha.as_str(), r.commit.clone())))
    };
    let copies: Vec<bool> = records.iter().map(is_copy).collect();
    let mut set_aside = Vec::new();
    let mut index = 0;
    records.retain(|c| {
        let copy = copies[index];
        index += 1;
        if copy {
            set_aside.push(GitCopy {
                commit: c.annotated.to_string(),
                line: c.line_no,
                grant_id: c.record.as_ref().map(|r| r.grant_id.clone()),
                original: c.record.as_ref().map(|r| r.commit.clone()).unwrap_or_default(),
            });
        }
        !copy
    });
    set_aside
}

/// Checks each line on its own: format, payload, signature, signer, place. Spread over the cores.
pub fn check_lines(lines: Vec<StoredLine>, signers: &AllowedSigners) -> Vec<CheckedRecord> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    let chunk = lines.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = lines
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut keys = KeyCache::default();
                    part.iter().map(|l| check_line(l, signers, &mut keys)).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a checker thread never panics")).collect()
    })
}

/// Decompressed ed25519 keys by their bytes: a ledger has few signers and many records, and
/// decompressing the key is a good part of a verification.
#[derive(Default)]
struct KeyCache(HashMap<[u8; 32], Option<ed25519_dalek::VerifyingKey>>);

/// Verifies an SSHSIG over `payload` in namespace `tpa`. Ed25519 (the common case) goes through a
/// cached key; everything else through ssh-key's general path.
fn verify_signature(signature: &SshSig, payload: &[u8], keys: &mut KeyCache) -> Result<(), String> {
    if let ssh_key::public::KeyData::Ed25519(public) = signature.public_key()
        && signature.algorithm() == ssh_key::Algorithm::Ed25519
        && signature.reserved().is_empty()
    {
        let key =
            keys.0.entry(public.0).or_insert_with(|| ed25519_dalek::VerifyingKey::from_bytes(&public.0).ok());
        let key = key.as_ref().ok_or("the signing key is not a valid ed25519 point")?;
        let signed =
            SshSig::signed_data(NAMESPACE, signature.hash_alg(), payload).map_err(|e| e.to_string())?;
        let raw =
            ed25519_dalek::Signature::from_slice(signature.signature_bytes()).map_err(|e| e.to_string())?;
        return key.verify_strict(&signed, &raw).map_err(|e| e.to_string());
    }
    ssh_key::PublicKey::from(signature.public_key().clone())
        .verify(NAMESPACE, payload, signature)
        .map_err(|e| e.to_string())
}

fn check_line(stored: &StoredLine, signers: &AllowedSigners, keys: &mut KeyCache) -> CheckedRecord {
    let commit = stored.annotated.to_string();
    let mut checked = CheckedRecord {
        annotated: stored.annotated,
        line_no: stored.line_no,
        record: None,
        payload_sha256: None,
        signer: None,
        findings: Vec::new(),
    };
    let finding = |kind, grant_id: Option<GrantId>, message: String| Finding {
        kind,
        commit: Some(commit.clone()),
        line: Some(stored.line_no),
        grant_id,
        message,
    };
    let line: NoteLine = match serde_json::from_str(&stored.text) {
        Ok(line) => line,
        Err(e) => {
            checked.findings.push(finding(
                FindingKind::MalformedLine,
                None,
                format!("not a ledger line: {e}"),
            ));
            return checked;
        }
    };
    checked.payload_sha256 = Some(sha256_hex(line.payload.as_bytes()));

    let record = parse_payload(&line.payload);
    let grant_id = record.as_ref().ok().map(|r| r.grant_id.clone());
    match &record {
        Ok(_) => {}
        Err((kind, message)) => checked.findings.push(finding(*kind, None, message.clone())),
    }

    let signature = match SshSig::from_pem(line.sig.as_bytes()) {
        Ok(sig) => sig,
        Err(e) => {
            checked.findings.push(finding(
                FindingKind::BadSignature,
                grant_id,
                format!("not an SSH signature: {e}"),
            ));
            checked.record = record.ok();
            return checked;
        }
    };
    if signature.namespace() != NAMESPACE {
        let message = format!("signed for namespace `{}`, not `{NAMESPACE}`", signature.namespace());
        checked.findings.push(finding(FindingKind::WrongNamespace, grant_id.clone(), message));
    } else if let Err(e) = verify_signature(&signature, line.payload.as_bytes(), keys) {
        let message = format!("signature does not match the payload: {e}");
        checked.findings.push(finding(FindingKind::BadSignature, grant_id.clone(), message));
    } else if let Ok(record) = &record {
        let fingerprint = signature.public_key().fingerprint(ssh_key::HashAlg::Sha256);
        checked.signer = Some(fingerprint.to_string());
        let email = &record.principal.email;
        let at = record.issued_at;
        let problem = match signers.check(signature.public_key(), email, at) {
            SignerCheck::Allowed => None,
            SignerCheck::UnknownKey => Some((
                FindingKind::UnknownSigner,
                format!("key {fingerprint} is not in .tpa/allowed_signers at the trust ref"),
            )),
            SignerCheck::WrongNamespace => Some((
                FindingKind::UnknownSigner,
                format!("key {fingerprint} of {email} is not allowed for namespace `{NAMESPACE}`"),
            )),
            SignerCheck::OtherPrincipal(owners) => Some((
                FindingKind::PrincipalMismatch,
                format!("record says {email}, but key {fingerprint} belongs to {owners}"),
            )),
            SignerCheck::NotValidAt => Some((
                FindingKind::SignerNotValid,
                format!("key {fingerprint} of {email} was not valid at {}", at.to_rfc3339()),
            )),
        };
        if let Some((kind, message)) = problem {
            checked.findings.push(finding(kind, grant_id.clone(), message));
        }
    }
    if let Ok(record) = &record
        && record.commit != commit
    {
        let message = format!("record is for commit {} but stored on {commit}", record.commit);
        checked.findings.push(finding(FindingKind::WrongCommit, grant_id, message));
    }
    checked.record = record.ok();
    checked
}

fn parse_payload(payload: &str) -> Result<Record, (FindingKind, String)> {
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
    let record: Record =
        serde_json::from_str(payload).map_err(|e| (FindingKind::InvalidRecord, format!("payload: {e}")))?;
    record.validate().map_err(|e| (FindingKind::InvalidRecord, e.to_string()))?;
    Ok(record)
}

/// Links each later record to its grant's intent.
pub fn check_intents(records: &mut [CheckedRecord]) {
    let mut intents: HashMap<GrantId, Vec<String>> = HashMap::new();
    let mut requests: HashMap<GrantId, Vec<String>> = HashMap::new();
    for checked in records.iter() {
        if let (Some(record), Some(sha)) = (&checked.record, &checked.payload_sha256) {
            match record.kind {
                RecordKind::Intent => intents.entry(record.grant_id.clone()).or_default().push(sha.clone()),
                RecordKind::Request => requests.entry(record.grant_id.clone()).or_default().push(sha.clone()),
                _ => {}
            }
        }
    }
    for checked in records.iter_mut() {
        let Some(record) = &checked.record else { continue };
        if record.kind == RecordKind::Request {
            continue;
        }
        // A record naming a request (approvals, the intent of an approved grant, a cancelled
        // request) must name this grant's request.
        if let Some(named) = &record.request_sha256
            && !requests.get(&record.grant_id).is_some_and(|shas| shas.contains(named))
        {
            checked.findings.push(Finding {
                kind: if requests.contains_key(&record.grant_id) {
                    FindingKind::IntentMismatch
                } else {
                    FindingKind::OrphanRecord
                },
                commit: Some(checked.annotated.to_string()),
                line: Some(checked.line_no),
                grant_id: Some(record.grant_id.clone()),
                message: format!(
                    "{} record names a request that is not grant {}'s",
                    record.kind, record.grant_id
                ),
            });
            continue;
        }
        if matches!(record.kind, RecordKind::Intent | RecordKind::Approval) || record.intent_sha256.is_none()
        {
            continue;
        }
        let base = Finding {
            kind: FindingKind::OrphanRecord,
            commit: Some(checked.annotated.to_string()),
            line: Some(checked.line_no),
            grant_id: Some(record.grant_id.clone()),
            message: String::new(),
        };
        match intents.get(&record.grant_id) {
            None => checked.findings.push(Finding {
                message: format!(
                    "{} record for grant {} whose intent is not in the ledger",
                    record.kind, record.grant_id
                ),
                ..base
            }),
            Some(shas) if !shas.iter().any(|s| Some(s) == record.intent_sha256.as_ref()) => {
                checked.findings.push(Finding {
                    kind: FindingKind::IntentMismatch,
                    message: format!(
                        "{} record names an intent that is not grant {}'s",
                        record.kind, record.grant_id
                    ),
                    ..base
                })
            }
            Some(_) => {}
        }
    }
}

/// Walks the notes ref's own history: every line that was ever in a note must still be in that
/// note at the tip. Returns one finding per line that is gone.
pub fn check_history(repo: &Repository, tip: Oid) -> Result<Vec<Finding>, git2::Error> {
    let tip_tree = repo.find_commit(tip)?.tree()?;
    let tip_notes = notes::list_notes(repo, &tip_tree)?;
    let tip_pairs: HashSet<(Oid, Oid)> = tip_notes.iter().map(|n| (n.annotated, n.blob)).collect();
    let blob_of: HashMap<Oid, Oid> = tip_notes.iter().map(|n| (n.annotated, n.blob)).collect();

    // Every (annotated, blob) a notes commit introduced, minus the blobs still at the tip.
    let mut historic: Vec<NoteEntry> = Vec::new();
    let mut seen: HashSet<(Oid, Oid)> = HashSet::new();
    let mut walk = repo.revwalk()?;
    walk.push(tip)?;
    // The walk goes from the tip back; a linear history visits each commit right after its child,
    // so the parent tree loaded for one step is the new tree of the next.
    let mut carried: Option<(Oid, git2::Tree)> = None;
    for oid in walk {
        let commit = repo.find_commit(oid?)?;
        let tree = match carried.take() {
            Some((id, tree)) if id == commit.id() => tree,
            _ => commit.tree()?,
        };
        let mut changed = Vec::new();
        if commit.parent_count() == 0 {
            notes::changed_notes(repo, None, &tree, "", &mut changed)?;
        } else {
            for parent in commit.parents() {
                let parent_tree = parent.tree()?;
                notes::changed_notes(repo, Some(&parent_tree), &tree, "", &mut changed)?;
                if carried.is_none() {
                    carried = Some((parent.id(), parent_tree));
                }
            }
        }
        for note in changed {
            let pair = (note.annotated, note.blob);
            if !tip_pairs.contains(&pair) && seen.insert(pair) {
                historic.push(note);
            }
        }
    }
    if historic.is_empty() {
        return Ok(Vec::new());
    }

    let hasher = std::collections::hash_map::RandomState::new();
    let mut tip_lines: HashMap<Oid, HashSet<u64>> = HashMap::new();
    let mut findings = Vec::new();
    let mut reported: HashSet<(Oid, u64)> = HashSet::new();
    for note in historic {
        let present = match tip_lines.get(&note.annotated) {
            Some(set) => set,
            None => {
                let set = match blob_of.get(&note.annotated) {
                    Some(blob) => {
                        lines_of(repo.find_blob(*blob)?.content()).map(|l| hasher.hash_one(l)).collect()
                    }
                    None => HashSet::new(),
                };
                tip_lines.entry(note.annotated).or_insert(set)
            }
        };
        let old_blob = repo.find_blob(note.blob)?;
        for line in lines_of(old_blob.content()) {
            let hash = hasher.hash_one(line);
            if present.contains(&hash) || !reported.insert((note.annotated, hash)) {
                continue;
            }
            let (grant_id, what) = describe_line(line);
            findings.push(Finding {
                kind: FindingKind::RecordRemoved,
                commit: Some(note.annotated.to_string()),
                line: None,
                grant_id,
                message: format!("{what} was in the ledger's history but is missing or altered at its tip"),
            });
        }
    }
    Ok(findings)
}

fn lines_of(content: &[u8]) -> impl Iterator<Item = &[u8]> {
    content.split(|b| *b == b'\n').filter(|l| !l.is_empty())
}

fn describe_line(line: &[u8]) -> (Option<GrantId>, String) {
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

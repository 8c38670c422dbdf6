//! Grants and the records that make up their history: pure data, no I/O.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The payload schema version this tpa writes.
pub const RECORD_VERSION: u32 = 1;

/// Crockford's base32 alphabet, as ULIDs use it.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A grant's id: a ULID (48-bit millisecond time, 80 random bits, 26 Crockford base32 characters).
/// `tpa-<id>` is the STS session name, so it must stay within STS's character set: it does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GrantId(String);

impl GrantId {
    pub fn generate(now: DateTime<Utc>) -> Self {
        let mut random = [0u8; 10];
        if !seeded(&mut random) {
            OsRng.fill_bytes(&mut random);
        }
        Self::from_parts(now.timestamp_millis().max(0) as u64, random)
    }

    fn from_parts(millis: u64, random: [u8; 10]) -> Self {
        let mut value: u128 = u128::from(millis & ((1 << 48) - 1)) << 80;
        for (i, byte) in random.iter().enumerate() {
            value |= u128::from(*byte) << (72 - 8 * i);
        }
        let text = (0..26).map(|i| CROCKFORD[((value >> (125 - 5 * i)) & 0x1f) as usize] as char).collect();
        GrantId(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The STS RoleSessionName and SourceIdentity of this grant.
    pub fn session_name(&self) -> String {
        format!("tpa-{}", self.0)
    }

    /// The grant whose [`GrantId::session_name`] `name` is, if it is one.
    pub fn of_session_name(name: &str) -> Option<GrantId> {
        name.strip_prefix("tpa-")?.parse().ok()
    }
}

/// A test build may fix the random part of grant ids with TPA_TEST_SEED (the test environment
/// gives each command a seed of its own, as jj does): with the pinned clock, outputs that show ids
/// are then the same at every run. A release build has no such door.
#[cfg(feature = "testing")]
fn seeded(random: &mut [u8; 10]) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    let Ok(seed) = std::env::var("TPA_TEST_SEED") else { return false };
    let draw = DRAWN.fetch_add(1, Ordering::SeqCst);
    let digest = Sha256::digest(format!("{seed}/{draw}").as_bytes());
    random.copy_from_slice(&digest[..10]);
    true
}

#[cfg(not(feature = "testing"))]
fn seeded(_: &mut [u8; 10]) -> bool {
    false
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{}` is not a grant id (26 characters of Crockford base32, like 01JD3M5Q8Z6N2X4V7B9C1R0T5K)",
    crate::escape::excerpt(.0)
)]
pub struct BadGrantId(pub String);

impl FromStr for GrantId {
    type Err = BadGrantId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = s.len() == 26
            && s.bytes().all(|b| is_crockford(b.to_ascii_uppercase()))
            // 26 * 5 = 130 bits: the first character carries only 3 of them.
            && s.as_bytes()[0] <= b'7';
        if valid { Ok(GrantId(s.to_ascii_uppercase())) } else { Err(BadGrantId(s.to_owned())) }
    }
}

/// Whether `bytes` are a grant id as tpa writes it (upper case), without building one.
pub(crate) fn is_grant_id(bytes: &[u8]) -> bool {
    bytes.len() == 26 && bytes[0] <= b'7' && bytes.iter().all(|b| is_crockford(*b))
}

/// Whether `b` is one of [`CROCKFORD`]'s digits, without a search (every record's grant id is
/// checked, and the verify cache checks each one it reads).
fn is_crockford(b: u8) -> bool {
    IS_CROCKFORD[b as usize]
}

const IS_CROCKFORD: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < CROCKFORD.len() {
        table[CROCKFORD[i] as usize] = true;
        i += 1;
    }
    table
};

impl TryFrom<String> for GrantId {
    type Error = BadGrantId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<GrantId> for String {
    fn from(id: GrantId) -> String {
        id.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// Asks for access that needs approvals (or is break-glass): what exactly is asked, before
    /// anyone approves it.
    Request,
    /// An approver's signed decision on a request: approve, deny, or review (a break-glass grant,
    /// after the fact).
    Approval,
    Intent,
    Grant,
    Failed,
    Revoke,
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::Request => "request",
            RecordKind::Approval => "approval",
            RecordKind::Intent => "intent",
            RecordKind::Grant => "grant",
            RecordKind::Failed => "failed",
            RecordKind::Revoke => "revoke",
        })
    }
}

/// What an approver decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalDecision {
    Approve,
    /// Ends the request.
    Deny,
    /// A break-glass grant, looked at after the fact.
    Review,
}

impl ApprovalDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalDecision::Approve => "approve",
            ApprovalDecision::Deny => "deny",
            ApprovalDecision::Review => "review",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevokeTrigger {
    Manual,
    Merged,
    Abandoned,
    Expired,
    Audit,
    NotifyFailed,
    /// The credentials could not be handed over (the keyring refused them after the grant was
    /// recorded): the session was ended at once.
    Undelivered,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokeResult {
    Done,
    Pending,
    Irrevocable,
    /// Asked of the broker: a clone without the provider's rights cannot end a broker-minted
    /// grant, so it records the revocation and the broker applies it (and records it done).
    Requested,
}

impl RevokeTrigger {
    /// The name records carry.
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeTrigger::Manual => "manual",
            RevokeTrigger::Merged => "merged",
            RevokeTrigger::Abandoned => "abandoned",
            RevokeTrigger::Expired => "expired",
            RevokeTrigger::Audit => "audit",
            RevokeTrigger::NotifyFailed => "notify-failed",
            RevokeTrigger::Undelivered => "undelivered",
        }
    }
}

impl RevokeResult {
    /// The name records carry.
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeResult::Done => "done",
            RevokeResult::Pending => "pending",
            RevokeResult::Irrevocable => "irrevocable",
            RevokeResult::Requested => "requested",
        }
    }
}

/// Who wrote a record: the signer's principal is `email`, as in `.tpa/allowed_signers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub email: String,
    pub user: String,
    pub host: String,
}

/// The session policy a grant was scoped by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub name: String,
    pub sha256: String,
}

/// One signed event in a grant's life. Every record carries the grant's context (repo, branch,
/// commit, target...) so that it can be read on its own; `principal` is always the record's author,
/// which for a revoke may be a CI runner rather than the engineer who asked for the grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub version: u32,
    pub kind: RecordKind,
    pub grant_id: GrantId,
    pub issued_at: DateTime<Utc>,
    pub principal: Principal,
    pub reason: String,
    pub repo: String,
    /// Full refname, e.g. `refs/heads/hotfix/INC-4211`.
    pub branch: String,
    pub commit: String,
    pub base: Option<String>,
    pub policy_commit: Option<String>,
    pub provider: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `[databases.NAME]` for database grants (providers `rds-iam` and `postgres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    pub scope: Option<Scope>,
    /// For an intent, the expiry asked for; for a grant, the provider's own expiry.
    pub expires_at: Option<DateTime<Utc>>,
    pub credential_fingerprint: Option<String>,
    /// sha256 (hex) of the payload bytes of this grant's intent record; absent on the intent itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<RevokeTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RevokeResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// sha256 (hex) of the payload of this grant's request record: on approvals, and on the
    /// records of a grant that was asked for with a request (approvals, break-glass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_sha256: Option<String>,
    /// Approval records only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<ApprovalDecision>,
    /// The sha256 of each approval record the grant relied on (intent and grant records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<Vec<String>>,
    /// Granted at once under the role's `break_glass`, to be reviewed after the fact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<bool>,
    /// Request records only: when the request lapses if no quorum of approvals is reached (the
    /// policy's `approval_window` after the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approve_by: Option<DateTime<Utc>>,
    /// Request records of a broker-minted role only: the one-time age X25519 recipient the broker
    /// encrypts the credentials to (its identity stays in the requester's keyring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_key: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("unsupported record version {0} (this tpa reads version {RECORD_VERSION}): upgrade tpa")]
    Version(u32),
    #[error("{kind} record must have `{field}`")]
    Missing { kind: RecordKind, field: &'static str },
    #[error("{kind} record must not have `{field}`")]
    Unexpected { kind: RecordKind, field: &'static str },
    #[error("`{field}` is not a full hex object id: {value:?}")]
    BadObjectId { field: &'static str, value: String },
    #[error("branch {0:?} is not a full refname (refs/heads/...)")]
    BadBranch(String),
}

impl Record {
    /// The payload bytes that get signed: compact JSON in field order.
    pub fn to_payload(&self) -> String {
        serde_json::to_string(self).expect("a record always serializes")
    }

    /// Checks what serde cannot: fields each kind requires or forbids, and id formats.
    pub fn validate(&self) -> Result<(), RecordError> {
        use RecordKind::*;
        if self.version != RECORD_VERSION {
            return Err(RecordError::Version(self.version));
        }
        if !is_object_id(&self.commit) {
            return Err(RecordError::BadObjectId { field: "commit", value: self.commit.clone() });
        }
        for (field, value) in [("base", &self.base), ("policy_commit", &self.policy_commit)] {
            if let Some(value) = value.as_ref().filter(|v| !is_object_id(v)) {
                return Err(RecordError::BadObjectId { field, value: value.clone() });
            }
        }
        if !self.branch.starts_with("refs/") {
            return Err(RecordError::BadBranch(self.branch.clone()));
        }
        let kind = self.kind;
        let require = |present: bool, field| {
            if present { Ok(()) } else { Err(RecordError::Missing { kind, field }) }
        };
        let forbid = |present: bool, field| {
            if present { Err(RecordError::Unexpected { kind, field }) } else { Ok(()) }
        };
        // Every record after the first of its grant names it: the intent, else (a request that
        // never got one: an approval, a cancelled request) the request.
        match kind {
            Request | Intent | Approval => forbid(self.intent_sha256.is_some(), "intent_sha256")?,
            _ => require(self.intent_sha256.is_some() || self.request_sha256.is_some(), "intent_sha256")?,
        }
        match kind {
            Request => forbid(self.request_sha256.is_some(), "request_sha256")?,
            Approval => require(self.request_sha256.is_some(), "request_sha256")?,
            _ => {}
        }
        for (field, digest) in
            [("intent_sha256", &self.intent_sha256), ("request_sha256", &self.request_sha256)]
        {
            if let Some(digest) = digest
                && !is_sha256(digest)
            {
                return Err(RecordError::BadObjectId { field, value: digest.clone() });
            }
        }
        if let Some(approval) = self.approvals.iter().flatten().find(|a| !is_sha256(a)) {
            return Err(RecordError::BadObjectId { field: "approvals", value: approval.clone() });
        }
        match kind {
            Grant => {
                require(self.expires_at.is_some(), "expires_at")?;
                require(self.credential_fingerprint.is_some(), "credential_fingerprint")?;
            }
            Failed => require(self.error.is_some(), "error")?,
            Revoke => {
                require(self.trigger.is_some(), "trigger")?;
                require(self.result.is_some(), "result")?;
            }
            Request => require(self.approve_by.is_some(), "approve_by")?,
            Approval => require(self.decision.is_some(), "decision")?,
            Intent => {}
        }
        if kind != Revoke {
            forbid(self.trigger.is_some(), "trigger")?;
            forbid(self.result.is_some(), "result")?;
        }
        if kind != Approval {
            forbid(self.decision.is_some(), "decision")?;
        }
        if kind != Request {
            forbid(self.approve_by.is_some(), "approve_by")?;
            forbid(self.delivery_key.is_some(), "delivery_key")?;
        }
        if let Some(key) = self.delivery_key.as_ref().filter(|k| !crate::ledger::delivery::is_recipient(k)) {
            return Err(RecordError::BadObjectId {
                field: "delivery_key",
                value: crate::escape::excerpt(key),
            });
        }
        Ok(())
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn is_object_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A credential's fingerprint for the ledger: enough to match it against CloudTrail's
/// `accessKeyId` by hashing, never the key id itself.
pub fn credential_fingerprint(access_key_id: &str) -> String {
    format!("sha256:{}", &sha256_hex(access_key_id.as_bytes())[..16])
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{}` is not a duration: write a number with a unit, like 900s, 30m, 1h or 1h30m (at most 36500d)",
    crate::escape::excerpt(.0)
)]
pub struct BadDuration(pub String);

/// The longest duration tpa takes (100 years): everything downstream adds durations to dates, and
/// a bound here keeps all of that arithmetic far from overflowing.
pub const MAX_DURATION_SECONDS: u64 = 36_500 * 86_400;

/// Parses `90s`, `30m`, `1h`, `1h30m`, `2d` into seconds. A bare number is refused: "30" is
/// ambiguous between seconds and minutes, and ambiguity in a TTL is how access outlives intent.
pub fn parse_duration(text: &str) -> Result<u64, BadDuration> {
    let bad = || BadDuration(text.to_owned());
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in trimmed.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|s| total.checked_add(s)).ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || total > MAX_DURATION_SECONDS {
        return Err(bad());
    }
    Ok(total)
}

/// A timeout: a duration of at least a second (`0s` would fail every call it bounds).
pub fn parse_timeout(text: &str) -> Result<u64, BadTimeout> {
    match parse_duration(text) {
        Ok(0) => Err(BadTimeout::Zero),
        Ok(seconds) => Ok(seconds),
        Err(e) => Err(BadTimeout::Bad(e)),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadTimeout {
    #[error("a timeout of 0s would fail every call: give at least 1s")]
    Zero,
    #[error(transparent)]
    Bad(BadDuration),
}

/// Where a grant stands, from its records alone (what the ledger says, not what AWS says).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// A request waiting for its approvals.
    AwaitingApproval,
    /// A request an approver denied.
    Denied,
    /// A request that got no quorum of approvals within its window.
    Lapsed,
    /// A request ended before it was granted (its branch was merged or abandoned, or by hand).
    Cancelled,
    /// An intent with no grant or failed record after it: tpa stopped mid-request.
    Incomplete,
    Failed,
    Active,
    Expired,
    Revoked,
    /// A revocation was attempted and is queued for retry.
    Pending,
    Irrevocable,
}

impl GrantState {
    /// Not ended yet: what revocation and the hooks still have to look after.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            GrantState::Active
                | GrantState::Pending
                | GrantState::Irrevocable
                | GrantState::Incomplete
                | GrantState::AwaitingApproval
        )
    }

    /// A request that has not become a grant (yet, or ever).
    pub fn is_request(self) -> bool {
        matches!(
            self,
            GrantState::AwaitingApproval | GrantState::Denied | GrantState::Lapsed | GrantState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::AwaitingApproval => "awaiting_approval",
            GrantState::Denied => "denied",
            GrantState::Lapsed => "lapsed",
            GrantState::Cancelled => "cancelled",
            GrantState::Incomplete => "incomplete",
            GrantState::Failed => "failed",
            GrantState::Active => "active",
            GrantState::Expired => "expired",
            GrantState::Revoked => "revoked",
            GrantState::Pending => "pending",
            GrantState::Irrevocable => "irrevocable",
        }
    }

    /// Derives the state from one grant's records, in any order.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a Record>, now: DateTime<Utc>) -> GrantState {
        let mut records: Vec<&Record> = records.into_iter().collect();
        records.sort_by_key(|r| r.issued_at);
        // Before its intent, a grant is a request: waiting, ended, or past its window. (A deny
        // counts only from an approver, which takes the policy: see `ops::approval`.)
        if !records.iter().any(|r| r.kind == RecordKind::Intent)
            && let Some(request) = records.iter().find(|r| r.kind == RecordKind::Request)
        {
            if records.iter().any(|r| r.kind == RecordKind::Revoke) {
                return GrantState::Cancelled;
            }
            // A broker refused it, with its reason.
            if records.iter().any(|r| r.kind == RecordKind::Failed) {
                return GrantState::Failed;
            }
            if request.approve_by.is_some_and(|by| by <= now) {
                return GrantState::Lapsed;
            }
            return GrantState::AwaitingApproval;
        }
        let latest_revoke = records.iter().rev().find(|r| r.kind == RecordKind::Revoke);
        let granted = records.iter().rev().find(|r| r.kind == RecordKind::Grant);
        let expired = granted.and_then(|g| g.expires_at).is_some_and(|at| at <= now);
        // A revoke that names no intent cancelled the request; a grant minted after it (a broker
        // that had not seen the cancellation yet) is still owed its revocation.
        if records.iter().any(|r| {
            r.kind == RecordKind::Revoke && r.intent_sha256.is_some() && r.result == Some(RevokeResult::Done)
        }) {
            return GrantState::Revoked;
        }
        let cancelled = records.iter().any(|r| r.kind == RecordKind::Revoke && r.intent_sha256.is_none());
        match latest_revoke.and_then(|r| r.result) {
            Some(RevokeResult::Irrevocable) if !expired => return GrantState::Irrevocable,
            Some(RevokeResult::Pending | RevokeResult::Requested) if !expired => return GrantState::Pending,
            _ if cancelled && granted.is_some() && !expired => return GrantState::Pending,
            _ => {}
        }
        if granted.is_some() {
            return if expired { GrantState::Expired } else { GrantState::Active };
        }
        if records.iter().any(|r| r.kind == RecordKind::Failed) {
            return GrantState::Failed;
        }
        GrantState::Incomplete
    }
}

impl fmt::Display for GrantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_what_records_carry() {
        use super::{RevokeResult, RevokeTrigger};
        for t in [
            RevokeTrigger::Manual,
            RevokeTrigger::Merged,
            RevokeTrigger::Abandoned,
            RevokeTrigger::Expired,
            RevokeTrigger::Audit,
            RevokeTrigger::NotifyFailed,
            RevokeTrigger::Undelivered,
        ] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        for r in
            [RevokeResult::Done, RevokeResult::Pending, RevokeResult::Irrevocable, RevokeResult::Requested]
        {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    #[test]
    fn grant_ids_are_ulids_that_sort_by_time() {
        let a = GrantId::from_parts(1_700_000_000_000, [0; 10]);
        let b = GrantId::from_parts(1_700_000_000_001, [0xff; 10]);
        assert_eq!(a.as_str().len(), 26);
        assert!(a < b);
        assert_eq!(a.as_str().parse::<GrantId>().unwrap(), a);
        assert_eq!(GrantId::from_parts(0, [0; 10]).as_str(), "00000000000000000000000000");
        assert_eq!(GrantId::from_parts((1 << 48) - 1, [0xff; 10]).as_str(), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
    }

    #[test]
    fn grant_id_parsing_refuses_what_sts_or_ulid_would_not_take() {
        for bad in ["", "tpa-01", "8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "0000000000000000000000000U", "$(id)"] {
            assert!(bad.parse::<GrantId>().is_err(), "{bad}");
        }
        assert!("01jd3m5q8z6n2x4v7b9c1r0t5k".parse::<GrantId>().is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("900s"), Ok(900));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        for bad in ["", "30", "m", "1x", "-5m", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    fn intent() -> Record {
        Record {
            version: RECORD_VERSION,
            kind: RecordKind::Intent,
            grant_id: GrantId::from_parts(1, [1; 10]),
            issued_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            principal: Principal { email: "a@example.com".into(), user: "a".into(), host: "h".into() },
            reason: "INC-1: test".into(),
            repo: "origin".into(),
            branch: "refs/heads/hotfix/x".into(),
            commit: "a".repeat(40),
            base: None,
            policy_commit: None,
            provider: "aws-sts".into(),
            target: "arn:aws:iam::123456789012:role/r".into(),
            role: Some("r".into()),
            scope: None,
            expires_at: None,
            credential_fingerprint: None,
            database: None,
            intent_sha256: None,
            trigger: None,
            result: None,
            error: None,
            request_sha256: None,
            decision: None,
            approvals: None,
            break_glass: None,
            approve_by: None,
            delivery_key: None,
        }
    }

    #[test]
    fn a_session_name_names_its_grant_back() {
        let id: GrantId = "01JD3M5Q8Z6N2X4V7B9C1R0T5K".parse().unwrap();
        assert_eq!(GrantId::of_session_name(&id.session_name()), Some(id));
        assert_eq!(GrantId::of_session_name("01JD3M5Q8Z6N2X4V7B9C1R0T5K"), None);
        assert_eq!(GrantId::of_session_name("tpa-not-a-grant"), None);
    }

    #[test]
    fn validation_follows_the_kind() {
        let intent = intent();
        assert_eq!(intent.validate(), Ok(()));
        let mut revoke = intent.clone();
        revoke.kind = RecordKind::Revoke;
        assert!(matches!(revoke.validate(), Err(RecordError::Missing { field: "intent_sha256", .. })));
        revoke.intent_sha256 = Some(sha256_hex(intent.to_payload().as_bytes()));
        revoke.trigger = Some(RevokeTrigger::Merged);
        assert!(matches!(revoke.validate(), Err(RecordError::Missing { field: "result", .. })));
        revoke.result = Some(RevokeResult::Done);
        assert_eq!(revoke.validate(), Ok(()));
        let mut bad = intent.clone();
        bad.commit = "HEAD".into();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn payload_round_trips_and_rejects_unknown_fields() {
        let record = intent();
        let payload = record.to_payload();
        assert_eq!(serde_json::from_str::<Record>(&payload).unwrap(), record);
        let extra = payload.replacen('{', "{\"admin\":true,", 1);
        assert!(serde_json::from_str::<Record>(&extra).is_err());
    }

    #[test]
    fn state_follows_the_records() {
        let now = DateTime::from_timestamp(1_800_000_100, 0).unwrap();
        let intent = intent();
        assert_eq!(GrantState::of([&intent], now), GrantState::Incomplete);
        let mut grant = intent.clone();
        grant.kind = RecordKind::Grant;
        grant.issued_at = intent.issued_at + chrono::Duration::seconds(1);
        grant.expires_at = Some(now + chrono::Duration::seconds(60));
        assert_eq!(GrantState::of([&intent, &grant], now), GrantState::Active);
        assert_eq!(
            GrantState::of([&grant, &intent], now + chrono::Duration::seconds(61)),
            GrantState::Expired
        );
        let mut revoke = grant.clone();
        revoke.kind = RecordKind::Revoke;
        revoke.intent_sha256 = Some(sha256_hex(intent.to_payload().as_bytes()));
        revoke.result = Some(RevokeResult::Pending);
        assert_eq!(GrantState::of([&intent, &grant, &revoke], now), GrantState::Pending);
        revoke.result = Some(RevokeResult::Requested);
        assert_eq!(GrantState::of([&intent, &grant, &revoke], now), GrantState::Pending);
        revoke.result = Some(RevokeResult::Done);
        assert_eq!(GrantState::of([&intent, &grant, &revoke], now), GrantState::Revoked);
    }

    #[test]
    fn a_grant_minted_after_its_request_was_cancelled_is_owed_a_revocation() {
        let now = DateTime::from_timestamp(1_800_000_100, 0).unwrap();
        let mut request = intent();
        request.kind = RecordKind::Request;
        request.approve_by = Some(now + chrono::Duration::seconds(600));
        let mut cancel = request.clone();
        cancel.kind = RecordKind::Revoke;
        cancel.request_sha256 = Some(sha256_hex(request.to_payload().as_bytes()));
        cancel.trigger = Some(RevokeTrigger::Merged);
        cancel.result = Some(RevokeResult::Done);
        assert_eq!(GrantState::of([&request, &cancel], now), GrantState::Cancelled);
        let intent = intent();
        let mut grant = intent.clone();
        grant.kind = RecordKind::Grant;
        grant.expires_at = Some(now + chrono::Duration::seconds(60));
        assert_eq!(GrantState::of([&request, &cancel, &intent, &grant], now), GrantState::Pending);
    }

    #[test]
    fn crockford_digits_are_exactly_the_alphabet() {
        for b in 0..=255u8 {
            assert_eq!(is_crockford(b), CROCKFORD.contains(&b), "byte {b}");
        }
        assert!("01jd3m5q8z6n2x4v7b9c1r0t5k".parse::<GrantId>().is_ok());
        assert!("81JD3M5Q8Z6N2X4V7B9C1R0T5K".parse::<GrantId>().is_err());
        assert!("01JD3M5Q8Z6N2X4V7B9C1R0T5I".parse::<GrantId>().is_err());
    }

    #[test]
    fn fingerprint_never_contains_the_key_id() {
        let fp = credential_fingerprint("ASIAEXAMPLE123");
        assert!(fp.starts_with("sha256:") && !fp.contains("ASIA"));
    }
}

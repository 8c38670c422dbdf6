//! OCSF 1.8.0 events for the SIEM an organisation already runs: every ledger record as a User
//! Access Management event (class 3005) and every audit finding as a Compliance Finding (class
//! 2003). Pure: no I/O. docs/siem.md has the field mapping and the reasons for it.
//!
//! Events are serialised from borrowed structs, one JSON object a line, so a large ledger streams
//! without building a `serde_json::Value` per event. An event's `metadata.uid` is stable: a record's
//! is the sha256 of its signed payload, so a record shipped twice (at-least-once delivery) is the
//! same event twice and a SIEM can drop the copy.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit::{Category, Finding, Severity};
use crate::grant::{Principal, Record, RecordKind, RevokeResult, sha256_hex};

/// The OCSF schema version the events follow (`metadata.version`).
pub const VERSION: &str = "1.8.0";

const PRODUCT: Product = Product { name: "tpa", vendor_name: "tpa", version: env!("CARGO_PKG_VERSION") };

/// Identity & Access Management, and its class User Access Management.
const IAM: (u32, &str) = (3, "Identity & Access Management");
const USER_ACCESS: (u32, &str) = (3005, "User Access Management");
/// Findings, and its class Compliance Finding.
const FINDINGS: (u32, &str) = (2, "Findings");
const COMPLIANCE_FINDING: (u32, &str) = (2003, "Compliance Finding");

/// What a record did to the grantee's privileges (the class's `activity_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    AssignPrivileges,
    RevokePrivileges,
    /// `activity_id` 99 with this `activity_name`.
    Other(&'static str),
}

impl Activity {
    pub fn id(self) -> u32 {
        match self {
            Activity::AssignPrivileges => 1,
            Activity::RevokePrivileges => 2,
            Activity::Other(_) => 99,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Activity::AssignPrivileges => "Assign Privileges",
            Activity::RevokePrivileges => "Revoke Privileges",
            Activity::Other(name) => name,
        }
    }
}

/// The outcome of the activity (`status_id`): 1 Success, 2 Failure, 99 Other with a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Success,
    Failure,
    Other(&'static str),
}

impl Status {
    fn id(self) -> u32 {
        match self {
            Status::Success => 1,
            Status::Failure => 2,
            Status::Other(_) => 99,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Status::Success => "Success",
            Status::Failure => "Failure",
            Status::Other(name) => name,
        }
    }
}

/// How each record kind maps onto User Access Management. A new record kind is one arm here (the
/// compiler asks for it: there is no catch-all).
pub fn classify(record: &Record) -> (Activity, Option<Status>) {
    match record.kind {
        RecordKind::Request => (Activity::Other("Request Assignment"), None),
        RecordKind::Approval => (
            Activity::Other(match record.decision {
                Some(crate::grant::ApprovalDecision::Deny) => "Deny Request",
                Some(crate::grant::ApprovalDecision::Review) => "Review Assignment",
                _ => "Approve Request",
            }),
            None,
        ),
        RecordKind::Intent => (Activity::Other("Intend Assignment"), None),
        RecordKind::Grant => (Activity::AssignPrivileges, Some(Status::Success)),
        RecordKind::Failed => (Activity::AssignPrivileges, Some(Status::Failure)),
        RecordKind::Revoke => (Activity::RevokePrivileges, Some(revoke_status(record.result))),
    }
}

fn revoke_status(result: Option<RevokeResult>) -> Status {
    match result {
        Some(RevokeResult::Done) => Status::Success,
        Some(RevokeResult::Irrevocable) => Status::Failure,
        Some(RevokeResult::Pending | RevokeResult::Requested) | None => Status::Other("Pending"),
    }
}

/// `severity_id` and its caption: a revocation that failed needs action now; one still pending,
/// soon; a refused grant is worth a look; everything else is information.
fn record_severity(activity: Activity, status: Option<Status>) -> (u32, &'static str) {
    match (activity, status) {
        (Activity::RevokePrivileges, Some(Status::Failure)) => (4, "High"),
        (_, Some(Status::Other(_))) => (3, "Medium"),
        (_, Some(Status::Failure)) => (2, "Low"),
        _ => (1, "Informational"),
    }
}

fn finding_severity(severity: Severity) -> (u32, &'static str) {
    match severity {
        Severity::Error => (4, "High"),
        Severity::Warning => (3, "Medium"),
        Severity::Info => (1, "Informational"),
    }
}

#[derive(Clone, Copy, Serialize)]
struct Product {
    name: &'static str,
    vendor_name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct Metadata<'a> {
    version: &'static str,
    product: Product,
    /// Stable: the same record (or finding of one audit run) is the same uid.
    uid: String,
    /// The grant id: every event of one grant shares it.
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_uid: Option<&'a str>,
    log_name: &'static str,
    log_provider: &'static str,
    event_code: std::borrow::Cow<'a, str>,
}

#[derive(Serialize)]
struct User<'a> {
    /// tpa's identity of a person: the git `user.email` that signs the records.
    uid: &'a str,
    /// The operating-system login that ran tpa.
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_addr: Option<&'a str>,
}

impl<'a> User<'a> {
    fn of(principal: &'a Principal) -> Self {
        User {
            uid: &principal.email,
            name: &principal.user,
            email_addr: is_email(&principal.email).then_some(principal.email.as_str()),
        }
    }
}

#[derive(Serialize)]
struct Actor<'a> {
    user: User<'a>,
}

#[derive(Serialize)]
struct Endpoint<'a> {
    hostname: &'a str,
}

#[derive(Serialize)]
struct Resource<'a> {
    uid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// Where a record's signature is described: OCSF 1.8.0 has no attribute for the signature over an
/// event record (`digital_signature` exists only on files), so it goes in `unmapped.tpa.signature`.
#[derive(Clone, Debug, Serialize)]
pub struct SignatureInfo {
    /// `SHA256:…` of the signing key, as `ssh-keygen -lf` prints it.
    pub key_fingerprint: String,
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, ...
    pub key_algorithm: String,
    /// Whether the signature verified and its key was an allowed signer at the record's time;
    /// absent when the export did not check (`tpa export --no-verify`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
}

impl SignatureInfo {
    /// Reads the signer's key from an armored SSHSIG (without verifying it).
    pub fn from_armored(sig: &str, verified: Option<bool>) -> Option<SignatureInfo> {
        let sig = ssh_key::SshSig::from_pem(sig).ok()?;
        let key = ssh_key::PublicKey::from(sig.public_key().clone());
        Some(SignatureInfo {
            key_fingerprint: key.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
            key_algorithm: key.algorithm().as_str().to_owned(),
            verified,
        })
    }
}

#[derive(Serialize)]
struct RecordUnmapped<'a> {
    tpa: TpaRecord<'a>,
}

/// The record as signed, plus what the export knows about it.
#[derive(Serialize)]
struct TpaRecord<'a> {
    #[serde(flatten)]
    record: &'a Record,
    /// The STS session name (and SourceIdentity) of the grant.
    session_name: String,
    /// sha256 of the signed payload: also `metadata.uid`.
    record_sha256: &'a str,
    /// The commit whose note holds the record, and the line in it.
    note_commit: &'a str,
    note_line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<&'a SignatureInfo>,
}

/// One ledger record and what is known around it.
pub struct RecordInput<'a> {
    pub record: &'a Record,
    /// sha256 (hex) of the record's signed payload bytes.
    pub payload_sha256: &'a str,
    /// The grantee: the principal of the grant's intent (a revoke's own principal is whoever
    /// revoked). None when the intent is not in the ledger: the record's principal stands in.
    pub grantee: Option<&'a Principal>,
    pub signature: Option<&'a SignatureInfo>,
    /// Signature verified and signer allowed (tpa verify's checks of this one record); None when
    /// not checked.
    pub verified: Option<bool>,
    pub note_commit: &'a str,
    pub note_line: usize,
}

/// A User Access Management event (class 3005).
#[derive(Serialize)]
pub struct UserAccessEvent<'a> {
    category_uid: u32,
    category_name: &'static str,
    class_uid: u32,
    class_name: &'static str,
    activity_id: u32,
    activity_name: &'static str,
    type_uid: u32,
    type_name: String,
    /// When the record was signed, in milliseconds since the epoch.
    time: i64,
    severity_id: u32,
    severity: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_detail: Option<&'a str>,
    message: String,
    metadata: Metadata<'a>,
    user: User<'a>,
    actor: Actor<'a>,
    src_endpoint: Endpoint<'a>,
    privileges: [&'a str; 1],
    resources: [Resource<'a>; 1],
    unmapped: RecordUnmapped<'a>,
}

/// The event of one ledger record.
pub fn record_event<'a>(input: &RecordInput<'a>) -> UserAccessEvent<'a> {
    let record = input.record;
    let (activity, status) = classify(record);
    let (severity_id, severity) = record_severity(activity, status);
    let grantee = input.grantee.unwrap_or(&record.principal);
    // What the privilege is called in the policy: the role or database name, else its target.
    let privilege = record.database.as_deref().or(record.role.as_deref()).unwrap_or(&record.target);
    let kind = if record.database.is_some() { "Database" } else { "IAM Role" };
    UserAccessEvent {
        category_uid: IAM.0,
        category_name: IAM.1,
        class_uid: USER_ACCESS.0,
        class_name: USER_ACCESS.1,
        activity_id: activity.id(),
        activity_name: activity.name(),
        type_uid: USER_ACCESS.0 * 100 + activity.id(),
        type_name: format!("{}: {}", USER_ACCESS.1, activity.name()),
        time: record.issued_at.timestamp_millis(),
        severity_id,
        severity,
        status_id: status.map(Status::id),
        status: status.map(Status::name),
        status_detail: record.error.as_deref(),
        message: format!(
            "{}: {privilege} for {} on {} at {}; reason: {}",
            activity.name(),
            grantee.email,
            record.branch,
            &record.commit[..record.commit.len().min(12)],
            record.reason
        ),
        metadata: Metadata {
            version: VERSION,
            product: PRODUCT,
            uid: input.payload_sha256.to_owned(),
            correlation_uid: Some(record.grant_id.as_str()),
            log_name: crate::ledger::NOTES_REF,
            log_provider: "tpa",
            event_code: record.kind.to_string().into(),
        },
        user: User::of(grantee),
        actor: Actor { user: User::of(&record.principal) },
        src_endpoint: Endpoint { hostname: &record.principal.host },
        privileges: [privilege],
        resources: [Resource {
            uid: &record.target,
            name: record.database.as_deref().or(record.role.as_deref()),
            kind,
        }],
        unmapped: RecordUnmapped {
            tpa: TpaRecord {
                record,
                session_name: record.grant_id.session_name(),
                record_sha256: input.payload_sha256,
                note_commit: input.note_commit,
                note_line: input.note_line,
                verified: input.verified,
                signature: input.signature,
            },
        },
    }
}

#[derive(Serialize)]
struct FindingInfo<'a> {
    /// Stable across audit runs: the same finding about the same grant is the same uid.
    uid: String,
    title: String,
    desc: &'a str,
    types: [&'static str; 1],
    created_time: i64,
}

#[derive(Serialize)]
struct Compliance<'a> {
    control: &'a str,
    standards: [&'static str; 1],
    category: &'static str,
    status_id: u32,
    status: &'static str,
}

#[derive(Serialize)]
struct Remediation<'a> {
    desc: &'a str,
}

#[derive(Serialize)]
struct FindingUnmapped<'a> {
    tpa: TpaFinding<'a>,
}

#[derive(Serialize)]
struct TpaFinding<'a> {
    repo: &'a str,
    #[serde(flatten)]
    finding: &'a Finding,
}

/// A Compliance Finding event (class 2003).
#[derive(Serialize)]
pub struct ComplianceFindingEvent<'a> {
    category_uid: u32,
    category_name: &'static str,
    class_uid: u32,
    class_name: &'static str,
    activity_id: u32,
    activity_name: &'static str,
    type_uid: u32,
    type_name: String,
    time: i64,
    severity_id: u32,
    severity: &'static str,
    status_id: u32,
    status: &'static str,
    message: &'a str,
    metadata: Metadata<'a>,
    finding_info: FindingInfo<'a>,
    compliance: Compliance<'a>,
    remediation: Remediation<'a>,
    resources: Vec<Resource<'a>>,
    unmapped: FindingUnmapped<'a>,
}

impl ComplianceFindingEvent<'_> {
    /// `metadata.uid`.
    pub fn uid(&self) -> &str {
        &self.metadata.uid
    }
}

/// The event of one audit finding about repository `repo`, found by the audit of `generated_at`.
pub fn finding_event<'a>(
    finding: &'a Finding,
    repo: &'a str,
    generated_at: DateTime<Utc>,
) -> ComplianceFindingEvent<'a> {
    let (severity_id, severity) = finding_severity(finding.severity);
    let grant = finding.grant_id.as_ref().map(|g| g.as_str());
    let finding_uid = sha256_hex(
        format!("{repo}\n{}\n{}\n{}", finding.kind, grant.unwrap_or(""), finding.message).as_bytes(),
    );
    // A check that could not run is a compliance "warning" (no result), every other finding a fail.
    let (compliance_id, compliance) = match finding.category {
        Category::Coverage => (2, "Warning"),
        _ => (3, "Fail"),
    };
    let category = category_name(finding.category);
    let mut resources = vec![Resource { uid: repo, name: None, kind: "Git Repository" }];
    if let Some(grant) = grant {
        resources.push(Resource { uid: grant, name: finding.branch.as_deref(), kind: "tpa Grant" });
    }
    let created = generated_at.timestamp_millis();
    ComplianceFindingEvent {
        category_uid: FINDINGS.0,
        category_name: FINDINGS.1,
        class_uid: COMPLIANCE_FINDING.0,
        class_name: COMPLIANCE_FINDING.1,
        activity_id: 1,
        activity_name: "Create",
        type_uid: COMPLIANCE_FINDING.0 * 100 + 1,
        type_name: format!("{}: Create", COMPLIANCE_FINDING.1),
        time: created,
        severity_id,
        severity,
        status_id: 1,
        status: "New",
        message: &finding.message,
        metadata: Metadata {
            version: VERSION,
            product: PRODUCT,
            uid: sha256_hex(format!("{finding_uid}\n{created}").as_bytes()),
            correlation_uid: grant,
            log_name: "tpa audit",
            log_provider: "tpa",
            event_code: finding.kind.as_str().into(),
        },
        finding_info: FindingInfo {
            uid: finding_uid,
            title: format!("tpa audit: {}", finding.kind),
            desc: &finding.message,
            types: [category],
            created_time: created,
        },
        compliance: Compliance {
            control: &finding.kind,
            standards: ["tpa audit"],
            category,
            status_id: compliance_id,
            status: compliance,
        },
        remediation: Remediation { desc: &finding.action },
        resources,
        unmapped: FindingUnmapped { tpa: TpaFinding { repo, finding } },
    }
}

fn category_name(category: Category) -> &'static str {
    match category {
        Category::Dangling => "dangling",
        Category::Revocation => "revocation",
        Category::History => "history",
        Category::Integrity => "integrity",
        Category::Policy => "policy",
        Category::Drift => "drift",
        Category::Coverage => "coverage",
    }
}

/// Whether OCSF's `email_t` would take this (its pattern: `local@label.rest`), so that a
/// principal that is no email address goes only in `uid` instead of making the event invalid.
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else { return false };
    let local_ok = !local.is_empty()
        && local.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.,".contains(&b));
    let Some((first, rest)) = domain.split_once('.') else { return false };
    local_ok
        && !first.is_empty()
        && first.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Appends `event` as one JSON line.
pub fn write_line(out: &mut Vec<u8>, event: &impl Serialize) {
    serde_json::to_writer(&mut *out, event).expect("events always serialize");
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::{GrantId, RECORD_VERSION, RevokeTrigger};

    fn record(kind: RecordKind) -> Record {
        Record {
            version: RECORD_VERSION,
            kind,
            grant_id: "01JD3M5Q8Z6N2X4V7B9C1R0T5K".parse::<GrantId>().unwrap(),
            issued_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            principal: Principal {
                email: "ci@example.com".into(),
                user: "runner".into(),
                host: "ci-1".into(),
            },
            reason: "INC-1: fix".into(),
            repo: "git@example.com:shop/api.git".into(),
            branch: "refs/heads/hotfix/x".into(),
            commit: "a".repeat(40),
            base: None,
            policy_commit: None,
            provider: "aws-sts".into(),
            target: "arn:aws:iam::123456789012:role/r".into(),
            role: Some("r".into()),
            database: None,
            scope: None,
            expires_at: None,
            credential_fingerprint: None,
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

    fn event(record: &Record, grantee: Option<&Principal>) -> serde_json::Value {
        let input = RecordInput {
            record,
            payload_sha256: "ab",
            grantee,
            signature: None,
            verified: Some(true),
            note_commit: &record.commit,
            note_line: 1,
        };
        serde_json::to_value(record_event(&input)).unwrap()
    }

    #[test]
    fn kinds_map_to_activities_and_type_uids() {
        for (kind, activity, type_uid) in [
            (RecordKind::Intent, 99, 300599),
            (RecordKind::Grant, 1, 300501),
            (RecordKind::Failed, 1, 300501),
            (RecordKind::Revoke, 2, 300502),
        ] {
            let e = event(&record(kind), None);
            assert_eq!((e["activity_id"].as_u64(), e["type_uid"].as_u64()), (Some(activity), Some(type_uid)));
            assert_eq!(e["metadata"]["event_code"], kind.to_string());
        }
    }

    #[test]
    fn a_revoke_names_the_grantee_as_user_and_the_revoker_as_actor() {
        let mut revoke = record(RecordKind::Revoke);
        revoke.trigger = Some(RevokeTrigger::Merged);
        revoke.result = Some(RevokeResult::Irrevocable);
        revoke.error = Some("AccessDenied".into());
        let grantee =
            Principal { email: "alice@example.com".into(), user: "alice".into(), host: "laptop".into() };
        let e = event(&revoke, Some(&grantee));
        assert_eq!(e["user"]["uid"], "alice@example.com");
        assert_eq!(e["actor"]["user"]["uid"], "ci@example.com");
        assert_eq!(e["src_endpoint"]["hostname"], "ci-1");
        assert_eq!((e["status_id"].as_u64(), e["severity_id"].as_u64()), (Some(2), Some(4)));
        assert_eq!(e["status_detail"], "AccessDenied");
        assert_eq!(e["unmapped"]["tpa"]["trigger"], "merged");
        assert_eq!(e["unmapped"]["tpa"]["session_name"], "tpa-01JD3M5Q8Z6N2X4V7B9C1R0T5K");
        assert_eq!(e["metadata"]["correlation_uid"], "01JD3M5Q8Z6N2X4V7B9C1R0T5K");
    }

    #[test]
    fn a_principal_that_is_no_email_address_stays_out_of_email_addr() {
        assert!(is_email("alice@example.com") && is_email("a.b+c@x-y.example.org"));
        for bad in ["alice", "alice@localhost", "@example.com", "a@.com", "a b@example.com", "a@b."] {
            assert!(!is_email(bad), "{bad}");
        }
        let mut r = record(RecordKind::Grant);
        r.principal.email = "not an address".into();
        let e = event(&r, None);
        assert_eq!(e["user"]["uid"], "not an address");
        assert!(e["user"].get("email_addr").is_none());
    }

    #[test]
    fn findings_have_a_uid_stable_across_runs_and_an_event_uid_per_run() {
        let finding = Finding::new(Severity::Error, Category::Dangling, "dangling", "merged".into(), "sweep");
        let t1 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let t2 = t1 + chrono::Duration::days(7);
        let a = serde_json::to_value(finding_event(&finding, "r", t1)).unwrap();
        let b = serde_json::to_value(finding_event(&finding, "r", t2)).unwrap();
        assert_eq!(a["finding_info"]["uid"], b["finding_info"]["uid"]);
        assert_ne!(a["metadata"]["uid"], b["metadata"]["uid"]);
        assert_eq!((a["class_uid"].as_u64(), a["type_uid"].as_u64()), (Some(2003), Some(200301)));
        assert_eq!(a["compliance"]["status"], "Fail");
        assert_eq!(a["severity_id"], 4);
    }
}

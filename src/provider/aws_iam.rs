//! Revoking STS sessions. STS credentials cannot be invalidated; AWS denies them by policy. tpa
//! keeps one customer-managed policy per role, `tpa-revocations-<role>`, attached to the role, whose
//! default version denies everything to the sessions named `tpa-<grant id>` it lists. Managed, not
//! inline: writing versions of one managed policy lets a revoker deny but (on a role with a
//! permissions boundary) never widen, where `iam:PutRolePolicy` could grant the role anything.
//! IAM has no compare-and-swap, so every write is read back and retried until the entry is there.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use std::time::Duration;

use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};
use serde_json::json;

use crate::grant::GrantId;

/// IAM's limit on a managed policy document, in characters (whitespace excluded; ours has none).
pub const POLICY_MAX_CHARS: usize = 6144;
/// IAM keeps at most this many versions of a managed policy.
pub const MAX_VERSIONS: usize = 5;
const ATTEMPTS: usize = 6;
/// An entry is pruned once AWS's clock is this far past its grant's expiry.
const PRUNE_MARGIN_MINUTES: i64 = 10;
/// A session name no grant has (ids are 26 characters): IAM refuses an empty condition list.
const PLACEHOLDER: &str = "tpa-none";

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error(
        "not allowed to manage {policy_arn}: {message}\nhint: run `tpa setup-aws --role {role}` once with \
         IAM rights, and give revokers iam:GetPolicy, iam:GetPolicyVersion, iam:ListPolicyVersions, \
         iam:CreatePolicyVersion and iam:DeletePolicyVersion on that policy (see docs/revocation.md)"
    )]
    AccessDenied { role: String, policy_arn: String, message: String },
    #[error(
        "the revocation policy of role {role} would exceed IAM's {POLICY_MAX_CHARS} characters ({length})"
    )]
    TooLarge { role: String, length: usize },
    #[error("IAM kept changing the revocation policy of role {role}: gave up after {ATTEMPTS} attempts")]
    Contended { role: String },
    #[error("cannot reach IAM: {0}")]
    Unreachable(String),
    #[error("IAM error: {code}: {message}")]
    Iam { code: String, message: String },
    #[error("{0} is not an IAM role ARN")]
    BadRoleArn(String),
}

impl RevokeError {
    /// Worth retrying later (a queue, a later sweep), as opposed to needing an operator.
    pub fn is_transient(&self) -> bool {
        matches!(self, RevokeError::Unreachable(_) | RevokeError::Contended { .. })
            || matches!(self, RevokeError::Iam { code, .. } if code.contains("Throttl") || code == "ServiceFailure")
    }
}

/// The revocation policy of one role.
#[derive(Clone, Debug)]
pub struct RevocationTarget {
    pub role_name: String,
    pub policy_arn: String,
}

impl RevocationTarget {
    pub fn for_role(role_arn: &str) -> Result<Self, RevokeError> {
        // arn:<partition>:iam::<account>:role/<path/>name
        let bad = || RevokeError::BadRoleArn(role_arn.to_owned());
        let parts: Vec<&str> = role_arn.splitn(6, ':').collect();
        let [_, partition, "iam", "", account, resource] = parts.as_slice() else { return Err(bad()) };
        let role_name = resource.strip_prefix("role/").and_then(|r| r.rsplit('/').next()).ok_or_else(bad)?;
        Ok(RevocationTarget {
            role_name: role_name.to_owned(),
            policy_arn: format!("arn:{partition}:iam::{account}:policy/tpa/tpa-revocations-{role_name}"),
        })
    }

    fn policy_name(&self) -> String {
        format!("tpa-revocations-{}", self.role_name)
    }
}

/// The policy document denying `sessions` (session names `tpa-<id>`).
pub fn document(sessions: &BTreeSet<String>) -> String {
    document_with_cut(sessions, None)
}

/// Like [`document`], plus, when `cut` is set, a deny on every session of the role issued before
/// it (`aws:TokenIssueTime`): the fallback once the list no longer fits in IAM's size limit.
pub fn document_with_cut(sessions: &BTreeSet<String>, cut: Option<DateTime<Utc>>) -> String {
    let mut names: Vec<&str> = sessions.iter().map(String::as_str).collect();
    if names.is_empty() {
        names.push(PLACEHOLDER);
    }
    let user_ids: Vec<String> = names.iter().map(|n| format!("*:{n}")).collect();
    let mut statements = vec![
        json!({"Sid": "TpaRevokedSessions", "Effect": "Deny", "Action": "*", "Resource": "*",
               "Condition": {"StringLike": {"aws:userid": user_ids}}}),
        json!({"Sid": "TpaRevokedSourceIdentities", "Effect": "Deny", "Action": "*", "Resource": "*",
               "Condition": {"StringLike": {"aws:SourceIdentity": names}}}),
    ];
    if let Some(cut) = cut {
        statements.push(json!({"Sid": "TpaCutOlderSessions", "Effect": "Deny", "Action": "*", "Resource": "*",
            "Condition": {"DateLessThan": {"aws:TokenIssueTime": cut.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}}}));
    }
    serde_json::to_string(&json!({"Version": "2012-10-17", "Statement": statements}))
        .expect("JSON serializes")
}

/// The largest prefix of `sessions` that, with `cut`, fits in one policy version.
fn fitting(sessions: &BTreeSet<String>, cut: DateTime<Utc>) -> BTreeSet<String> {
    let mut kept = BTreeSet::new();
    for session in sessions {
        kept.insert(session.clone());
        if document_with_cut(&kept, Some(cut)).chars().count() > POLICY_MAX_CHARS {
            kept.remove(session);
            break;
        }
    }
    kept
}

/// `"Effect": "Deny"` on every action and resource.
fn denies_everything(statement: &serde_json::Value) -> bool {
    let star = |key: &str| match statement.get(key) {
        Some(serde_json::Value::String(s)) => s == "*",
        Some(serde_json::Value::Array(items)) => items.iter().any(|i| i == "*"),
        _ => false,
    };
    statement.get("Effect").and_then(|e| e.as_str()) == Some("Deny") && star("Action") && star("Resource")
}

/// The `aws:TokenIssueTime` cut a document carries, if any.
pub fn cut_of(document: &str) -> Option<DateTime<Utc>> {
    let value: serde_json::Value = serde_json::from_str(document).ok()?;
    let statements = value.get("Statement")?.as_array()?.clone();
    statements
        .iter()
        .filter(|s| denies_everything(s))
        .filter_map(|s| s.pointer("/Condition/DateLessThan/aws:TokenIssueTime")?.as_str())
        .filter_map(|t| DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&Utc)))
        .max()
}

/// The session names a document denies (from either statement).
pub fn denied_sessions(document: &str) -> BTreeSet<String> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(document) else { return BTreeSet::new() };
    let mut out = BTreeSet::new();
    let statements = match value.get("Statement") {
        Some(serde_json::Value::Array(items)) => items.clone(),
        Some(single) => vec![single.clone()],
        None => Vec::new(),
    };
    for statement in statements {
        // Only what really denies everything counts: an edited Allow, or a deny narrowed to some
        // actions, denies nobody's session.
        if !denies_everything(&statement) {
            continue;
        }
        let Some(like) = statement.pointer("/Condition/StringLike") else { continue };
        for key in ["aws:userid", "aws:SourceIdentity"] {
            let values = match like.get(key) {
                Some(serde_json::Value::Array(items)) => items.clone(),
                Some(single) => vec![single.clone()],
                None => continue,
            };
            for v in values.iter().filter_map(|v| v.as_str()) {
                let name = v.strip_prefix("*:").unwrap_or(v);
                if name.starts_with("tpa-") && name != PLACEHOLDER {
                    out.insert(name.to_owned());
                }
            }
        }
    }
    out
}

/// IAM returns policy documents URL-encoded (RFC 3986); the SDK does not decode them.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(high), Some(low)) =
                (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
        {
            out.push(high * 16 + low);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The deny in force for a role: sessions listed by name, and every session issued before `cut`.
#[derive(Clone, Debug, Default)]
pub struct InForce {
    pub sessions: BTreeSet<String>,
    pub cut: Option<DateTime<Utc>>,
}

impl InForce {
    /// Whether a session of this name, issued at `issued_at`, is denied.
    pub fn denies(&self, session_name: &str, issued_at: DateTime<Utc>) -> bool {
        self.sessions.contains(session_name) || self.cut.is_some_and(|cut| issued_at < cut)
    }
}

pub struct AwsIam {
    runtime: tokio::runtime::Runtime,
    client: aws_sdk_iam::Client,
}

impl AwsIam {
    pub fn new(profile: Option<&str>, timeout: Duration) -> Self {
        // IAM is global; its endpoint lives in us-east-1 (aws partition).
        let sdk = super::aws::load(&super::aws::Reach {
            profile,
            region: Some("us-east-1"),
            fallback_region: "us-east-1",
            timeout,
            max_attempts: None,
        });
        AwsIam { runtime: sdk.runtime, client: aws_sdk_iam::Client::new(&sdk.config) }
    }

    /// Creates the revocation policy of a role (if missing) and attaches it (if not attached).
    /// Returns whether anything changed.
    pub fn set_up(&self, target: &RevocationTarget) -> Result<bool, RevokeError> {
        let mut changed = false;
        if self.current(target)?.is_none() {
            let created = self.runtime.block_on(
                self.client
                    .create_policy()
                    .policy_name(target.policy_name())
                    .path("/tpa/")
                    .description("tpa: denies revoked tpa sessions of this role; managed by tpa, do not edit")
                    .policy_document(document(&BTreeSet::new()))
                    .send(),
            );
            match created {
                Ok(_) => changed = true,
                Err(e) if code_of(&e) == "EntityAlreadyExists" => {}
                Err(e) => return Err(self.classify(target, e)),
            }
        }
        let attached = self
            .runtime
            .block_on(self.client.list_attached_role_policies().role_name(&target.role_name).send())
            .map_err(|e| self.classify(target, e))?;
        let is_attached =
            attached.attached_policies().iter().any(|p| p.policy_arn() == Some(target.policy_arn.as_str()));
        if !is_attached {
            self.runtime
                .block_on(
                    self.client
                        .attach_role_policy()
                        .role_name(&target.role_name)
                        .policy_arn(&target.policy_arn)
                        .send(),
                )
                .map_err(|e| self.classify(target, e))?;
            changed = true;
        }
        Ok(changed)
    }

    /// The sessions the role's revocation policy denies now, or None when the policy is missing.
    pub fn current(&self, target: &RevocationTarget) -> Result<Option<BTreeSet<String>>, RevokeError> {
        let policy =
            match self.runtime.block_on(self.client.get_policy().policy_arn(&target.policy_arn).send()) {
                Ok(out) => out,
                Err(e) if code_of(&e) == "NoSuchEntity" => return Ok(None),
                Err(e) => return Err(self.classify(target, e)),
            };
        let Some(version) = policy.policy().and_then(|p| p.default_version_id()) else {
            return Ok(Some(BTreeSet::new()));
        };
        let out = self
            .runtime
            .block_on(
                self.client.get_policy_version().policy_arn(&target.policy_arn).version_id(version).send(),
            )
            .map_err(|e| self.classify(target, e))?;
        let text = out.policy_version().and_then(|v| v.document()).map(percent_decode).unwrap_or_default();
        Ok(Some(denied_sessions(&text)))
    }

    /// What the role's revocation policy denies in force now (its default version): the listed
    /// sessions and the `aws:TokenIssueTime` cut. None when the policy is missing.
    /// A policy that exists but is not attached to the role denies nothing: None too.
    pub fn in_force(&self, target: &RevocationTarget) -> Result<Option<InForce>, RevokeError> {
        let attached = self
            .runtime
            .block_on(self.client.list_attached_role_policies().role_name(&target.role_name).send())
            .map_err(|e| self.classify(target, e))?
            .attached_policies()
            .iter()
            .any(|p| p.policy_arn() == Some(target.policy_arn.as_str()));
        if !attached {
            return Ok(None);
        }
        Ok(self.versions(target)?.map(|v| InForce { sessions: v.default, cut: v.default_cut }))
    }

    /// Whether the IAM role exists (GetRole).
    pub fn role_exists(&self, target: &RevocationTarget) -> Result<bool, RevokeError> {
        match self.runtime.block_on(self.client.get_role().role_name(&target.role_name).send()) {
            Ok(_) => Ok(true),
            Err(e) if code_of(&e) == "NoSuchEntity" => Ok(false),
            Err(e) => Err(self.classify(target, e)),
        }
    }

    /// Every version of the role's revocation policy: what the default denies, and the union of
    /// what any version denies. None when the policy is missing.
    fn versions(&self, target: &RevocationTarget) -> Result<Option<Versions>, RevokeError> {
        let listed = match self
            .runtime
            .block_on(self.client.list_policy_versions().policy_arn(&target.policy_arn).send())
        {
            Ok(out) => out,
            Err(e) if code_of(&e) == "NoSuchEntity" => return Ok(None),
            Err(e) => return Err(self.classify(target, e)),
        };
        let mut versions = Versions::default();
        for version in listed.versions() {
            let Some(id) = version.version_id() else { continue };
            let fetched = self.runtime.block_on(
                self.client.get_policy_version().policy_arn(&target.policy_arn).version_id(id).send(),
            );
            let out = match fetched {
                Ok(out) => out,
                Err(e) if code_of(&e) == "NoSuchEntity" => continue, // deleted meanwhile by another writer
                Err(e) => return Err(self.classify(target, e)),
            };
            let text =
                out.policy_version().and_then(|v| v.document()).map(percent_decode).unwrap_or_default();
            let sessions = denied_sessions(&text);
            let created = version.create_date().and_then(|d| DateTime::<Utc>::from_timestamp(d.secs(), 0));
            versions.aws_now = versions.aws_now.max(created);
            versions.cut = versions.cut.max(cut_of(&text));
            versions.entries.push((created, sessions.clone()));
            if version.is_default_version() {
                versions.default = sessions;
                versions.default_cut = cut_of(&text);
            }
        }
        Ok(Some(versions))
    }

    /// Makes sure every session in `deny` is denied, keeping every entry any version holds.
    ///
    /// IAM has no compare-and-swap, so two writers can each make their own version the default and
    /// the later one drops the other's entry. Hence every writer builds its version from the union
    /// of *all* versions (a raced version survives as a non-default one), deletes only a version
    /// whose entries it has merged, and after writing reads everything back, rewriting until the
    /// default holds the union: whoever writes last repairs what it overwrote.
    ///
    /// Entries of sessions that `expiries` says expired by AWS's clock (the newest version's
    /// CreateDate, never this machine's clock) more than a margin ago are left out of what is
    /// written; it is asked about the sessions the policy lists, not about every grant there is.
    pub fn deny(
        &self,
        target: &RevocationTarget,
        deny: &BTreeSet<String>,
        expiries: &dyn super::Expiries,
    ) -> Result<Denied, RevokeError> {
        let mut outcome = Denied::Listed;
        // Once a cut was written for them, the sessions of this call that did not fit need no entry.
        let mut deny = deny.clone();
        for _ in 0..ATTEMPTS {
            let Some(versions) = self.versions(target)? else {
                self.set_up(target)?;
                continue;
            };
            let margin = chrono::Duration::minutes(PRUNE_MARGIN_MINUTES);
            let union = versions.union();
            let expiries = expiries.of(&union);
            let expired = |session: &String| {
                !deny.contains(session)
                    && matches!((expiries.get(session), versions.aws_now), (Some(e), Some(now)) if *e + margin < now)
            };
            let cut = versions.active_cut();
            let wanted: BTreeSet<String> = union.union(&deny).filter(|s| !expired(s)).cloned().collect();
            if wanted.is_subset(&versions.default) && versions.default_cut >= cut {
                return Ok(outcome);
            }
            let mut text = document_with_cut(&wanted, cut);
            if text.chars().count() > POLICY_MAX_CHARS {
                // The list is full: deny every session of the role issued before AWS's now. That cuts
                // sessions nobody asked to revoke, and the caller says so loudly.
                // Every session of this call was issued before AWS's now, so the cut covers them all,
                // however many; as many as fit stay listed by name, for the audit's reading.
                let now = self.aws_clock(target, &versions)?;
                let new_cut = now + chrono::Duration::seconds(1);
                deny = fitting(&deny, new_cut);
                text = document_with_cut(&deny, Some(new_cut));
                if text.chars().count() > POLICY_MAX_CHARS {
                    return Err(RevokeError::TooLarge {
                        role: target.role_name.clone(),
                        length: text.chars().count(),
                    });
                }
                outcome = Denied::CutOlderSessions(new_cut);
            }
            self.make_room(target)?;
            let created = self.runtime.block_on(
                self.client
                    .create_policy_version()
                    .policy_arn(&target.policy_arn)
                    .policy_document(text)
                    .set_as_default(true)
                    .send(),
            );
            match created {
                Ok(_) => {}
                // Another writer filled the last slot first: look again.
                Err(e) if code_of(&e) == "LimitExceeded" => continue,
                Err(e) => return Err(self.classify(target, e)),
            }
        }
        Err(RevokeError::Contended { role: target.role_name.clone() })
    }

    /// AWS's clock now: the CreateDate of a version written for the purpose (not made the default,
    /// so it changes nothing). Never this machine's clock.
    fn aws_clock(
        &self,
        target: &RevocationTarget,
        versions: &Versions,
    ) -> Result<DateTime<Utc>, RevokeError> {
        self.make_room(target)?;
        let unchanged = document_with_cut(&versions.default, versions.default_cut);
        let created = self
            .runtime
            .block_on(
                self.client
                    .create_policy_version()
                    .policy_arn(&target.policy_arn)
                    .policy_document(unchanged)
                    .set_as_default(false)
                    .send(),
            )
            .map_err(|e| self.classify(target, e))?;
        created
            .policy_version()
            .and_then(|v| v.create_date())
            .and_then(|d| DateTime::<Utc>::from_timestamp(d.secs(), 0))
            .or(versions.aws_now)
            .ok_or_else(|| RevokeError::Iam {
                code: "NoCreateDate".into(),
                message: "IAM gave no version date".into(),
            })
    }

    /// Deletes the oldest non-default version when the policy has IAM's maximum. Whoever deletes a
    /// version has folded its entries into what it writes next (or a cut covers them).
    fn make_room(&self, target: &RevocationTarget) -> Result<(), RevokeError> {
        let listed = self
            .runtime
            .block_on(self.client.list_policy_versions().policy_arn(&target.policy_arn).send())
            .map_err(|e| self.classify(target, e))?;
        if listed.versions().len() < MAX_VERSIONS {
            return Ok(());
        }
        let oldest = listed.versions().iter().filter(|v| !v.is_default_version()).min_by_key(|v| {
            (v.create_date().map(|d| d.secs()).unwrap_or(i64::MAX), version_number(v.version_id()))
        });
        if let Some(id) = oldest.and_then(|v| v.version_id()) {
            let deleted = self.runtime.block_on(
                self.client.delete_policy_version().policy_arn(&target.policy_arn).version_id(id).send(),
            );
            match deleted {
                Ok(_) => {}
                Err(e) if code_of(&e) == "NoSuchEntity" => {} // a concurrent writer deleted it
                Err(e) => return Err(self.classify(target, e)),
            }
        }
        Ok(())
    }

    fn classify<E, R>(&self, target: &RevocationTarget, error: SdkError<E, R>) -> RevokeError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        match super::service_error(&error) {
            Some((code, message)) if code.starts_with("AccessDenied") => RevokeError::AccessDenied {
                role: target.role_name.clone(),
                policy_arn: target.policy_arn.clone(),
                message,
            },
            Some((code, message)) => RevokeError::Iam { code, message },
            None => RevokeError::Unreachable(
                aws_smithy_types::error::display::DisplayErrorContext(&error).to_string(),
            ),
        }
    }
}

#[derive(Default)]
struct Versions {
    default: BTreeSet<String>,

    /// The newest version's CreateDate: AWS's clock was at least this at the last write.
    aws_now: Option<DateTime<Utc>>,
    /// The latest `aws:TokenIssueTime` cut any version carries, and the default version's.
    cut: Option<DateTime<Utc>>,
    default_cut: Option<DateTime<Utc>>,
    /// Each version's CreateDate and the sessions it denies.
    entries: Vec<(Option<DateTime<Utc>>, BTreeSet<String>)>,
}

impl Versions {
    /// A cut stays while a session issued before it could still be alive (STS's 12-hour maximum).
    fn active_cut(&self) -> Option<DateTime<Utc>> {
        self.cut.filter(|cut| self.aws_now.is_none_or(|now| now < *cut + chrono::Duration::hours(12)))
    }

    /// Every entry of every version, except those of versions written before the active cut: the
    /// cut already denies the sessions they name.
    fn union(&self) -> BTreeSet<String> {
        let cut = self.active_cut();
        self.entries
            .iter()
            .filter(|(created, _)| match (cut, created) {
                (Some(cut), Some(created)) => *created >= cut,
                _ => true,
            })
            .flat_map(|(_, sessions)| sessions.iter().cloned())
            .collect()
    }
}

/// How a deny was made to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// The sessions are on the role's deny list.
    Listed,
    /// The list was full: every session of the role issued before this instant is denied.
    CutOlderSessions(DateTime<Utc>),
}

fn version_number(id: Option<&str>) -> u64 {
    id.and_then(|v| v.trim_start_matches('v').parse().ok()).unwrap_or(u64::MAX)
}

fn code_of<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> &str {
    match error {
        SdkError::ServiceError(context) => context.err().code().unwrap_or(""),
        _ => "",
    }
}

/// The session names of grants, as the deny lists hold them.
pub fn session_names<'a>(grants: impl IntoIterator<Item = &'a GrantId>) -> BTreeSet<String> {
    grants.into_iter().map(|g| g.session_name()).collect()
}

/// Ends STS sessions (`aws-sts`, `rds-iam`) with a deny in their role's revocation policy, one
/// write per role for however many grants, read back; a list too long for IAM falls back to the
/// `aws:TokenIssueTime` cut (and says so in the outcome's note).
pub struct IamBackend {
    profile: Option<String>,
    timeout: Duration,
    iam: Option<AwsIam>,
}

impl IamBackend {
    pub fn new(profile: Option<&str>, timeout: Duration) -> Self {
        IamBackend { profile: profile.map(str::to_owned), timeout, iam: None }
    }

    /// The client, made on first use: a backend that has nothing to do costs no SDK set-up.
    fn iam(&mut self) -> &AwsIam {
        self.iam.get_or_insert_with(|| AwsIam::new(self.profile.as_deref(), self.timeout))
    }

    fn by_role<'g>(grants: &[super::Ending<'g>]) -> BTreeMap<&'g str, Vec<usize>> {
        let mut by_role: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (index, grant) in grants.iter().enumerate() {
            by_role.entry(grant.target).or_default().push(index);
        }
        by_role
    }
}

impl super::Backend for IamBackend {
    fn end(&mut self, grants: &[super::Ending<'_>], expiries: &dyn super::Expiries) -> Vec<super::Ended> {
        let mut outcomes: Vec<super::Ended> = vec![Ok(None); grants.len()];
        for (role_arn, indexes) in Self::by_role(grants) {
            let sessions = session_names(indexes.iter().map(|&i| grants[i].grant_id));
            let iam = self.iam();
            let denied = RevocationTarget::for_role(role_arn).and_then(|t| iam.deny(&t, &sessions, expiries));
            let outcome: super::Ended = match denied {
                Ok(Denied::Listed) => Ok(None),
                Ok(Denied::CutOlderSessions(before)) => Ok(Some(format!(
                    "the revocation policy of this role is full: EVERY session of the role issued before {} was \
                     cut, not only this grant's (see docs/revocation.md)",
                    before.to_rfc3339()
                ))),
                Err(e) => Err(e.to_string()),
            };
            for i in indexes {
                outcomes[i] = outcome.clone();
            }
        }
        outcomes
    }

    fn reassert(
        &mut self,
        grants: &[super::Ending<'_>],
        expiries: &dyn super::Expiries,
    ) -> Result<usize, String> {
        let mut reasserted = 0;
        let mut errors = Vec::new();
        for (role_arn, indexes) in Self::by_role(grants) {
            let sessions = session_names(indexes.iter().map(|&i| grants[i].grant_id));
            let iam = self.iam();
            match RevocationTarget::for_role(role_arn).and_then(|t| iam.deny(&t, &sessions, expiries)) {
                Ok(_) => reasserted += sessions.len(),
                Err(e) => errors.push(format!("{role_arn}: {e}")),
            }
        }
        if errors.is_empty() { Ok(reasserted) } else { Err(errors.join("; ")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_statements_that_deny_everything_count() {
        let names: BTreeSet<String> = ["tpa-01JD3M5Q8Z6N2X4V7B9C1R0T5K".to_owned()].into();
        let cut = DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z").unwrap().to_utc();
        let real = document_with_cut(&names, Some(cut));
        assert_eq!(denied_sessions(&real), names);
        assert_eq!(cut_of(&real), Some(cut));
        let allowed = real.replace("\"Deny\"", "\"Allow\"");
        assert!(denied_sessions(&allowed).is_empty(), "an edited Allow denies nobody");
        assert_eq!(cut_of(&allowed), None);
        let narrowed = real.replace("\"Action\":\"*\"", "\"Action\":\"s3:ListBucket\"");
        assert_ne!(narrowed, real);
        assert!(denied_sessions(&narrowed).is_empty(), "a deny of some actions is not a revocation");
    }

    #[test]
    fn documents_round_trip_and_stay_valid_when_empty() {
        let empty = document(&BTreeSet::new());
        assert!(empty.contains("*:tpa-none"));
        assert!(denied_sessions(&empty).is_empty());
        let names: BTreeSet<String> = ["tpa-01JD3M5Q8Z6N2X4V7B9C1R0T5K".to_owned()].into();
        let text = document(&names);
        assert!(text.contains("\"*:tpa-01JD3M5Q8Z6N2X4V7B9C1R0T5K\""));
        assert!(text.contains("aws:SourceIdentity"));
        assert_eq!(denied_sessions(&text), names);
    }

    #[test]
    fn a_cut_always_fits_however_many_sessions_it_covers() {
        let names: BTreeSet<String> = (0..500).map(|i| format!("tpa-01JD3M5Q8Z6N2X4V7B9C1R{i:04}")).collect();
        let cut = Utc::now();
        let kept = fitting(&names, cut);
        assert!(!kept.is_empty() && kept.len() < names.len(), "{}", kept.len());
        assert!(document_with_cut(&kept, Some(cut)).chars().count() <= POLICY_MAX_CHARS);
        assert!(fitting(&BTreeSet::new(), cut).is_empty());
    }

    #[test]
    fn about_75_grants_fit_in_one_policy() {
        let names: BTreeSet<String> = (0..75).map(|i| format!("tpa-01JD3M5Q8Z6N2X4V7B9C1R{i:04}")).collect();
        assert!(document(&names).len() <= POLICY_MAX_CHARS, "{}", document(&names).len());
    }

    #[test]
    fn targets_come_from_role_arns() {
        let t = RevocationTarget::for_role("arn:aws:iam::123456789012:role/ops/prod-readonly").unwrap();
        assert_eq!(t.role_name, "prod-readonly");
        assert_eq!(t.policy_arn, "arn:aws:iam::123456789012:policy/tpa/tpa-revocations-prod-readonly");
        assert!(RevocationTarget::for_role("arn:aws:s3:::bucket").is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%7B%22a%22%3A1%7D"), "{\"a\":1}");
        assert_eq!(percent_decode("{\"a\":1}"), "{\"a\":1}");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("a+b%2Bc%é"), "a+b+c%é");
    }
}

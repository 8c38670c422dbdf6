//! `tpa audit`: every grant of a period checked against git history, the ledger's integrity, the
//! policy it was taken under and the provider's state. Only reads: nothing is revoked or recorded,
//! not even the verify witness moves.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use git2::{Oid, Repository};
use serde::Serialize;

use crate::audit::{self, Category, Finding, GrantFacts, Severity};
use crate::grant::{GrantState, RevokeResult};
use crate::lifecycle::{self, AbandonReason, Situation, Verdict};
use crate::ops::context;
use crate::ops::grants::{self, GrantView};
use crate::ops::ledger::{self, InspectError};
use crate::policy::POLICY_PATH;
use crate::policy::Policy;
use crate::provider::aws_iam::{AwsIam, InForce, RevocationTarget};
use crate::provider::cloudtrail::{AssumeRoleEvent, CloudTrail};
use crate::state::StateDir;
use crate::trust::{TrustOrigin, TrustRef};

/// An intent younger than this may still be waiting on STS in another process.
const INCOMPLETE_GRACE_SECONDS: i64 = 300;
/// How far back CloudTrail's event history goes.
const CLOUDTRAIL_DAYS: i64 = 90;

#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Grants that ended before this are left out (None: since the first record).
    pub from: Option<DateTime<Utc>>,
    /// Grants requested after this are left out.
    pub to: DateTime<Utc>,
    pub now: DateTime<Utc>,
    /// None: the provider is not asked (`--offline`).
    pub aws: Option<AwsAccess>,
    /// Read CloudTrail's AssumeRole events for sessions with no record.
    pub cloudtrail: bool,
}

#[derive(Clone, Debug)]
pub struct AwsAccess {
    pub profile: Option<String>,
    pub region: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("git error: {0}")]
    Git(#[from] git2::Error),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("--cloudtrail needs the provider: drop --offline")]
    CloudTrailOffline,
}

/// One grant as the report tells it: who, why, on which change, for how long.
///
/// An audit holds one for every grant of the period (100,000 in an organisation's ledger), so
/// what grants share (who, which role, which branch) is held once, as [`Shared`].
#[derive(Clone, Debug, Serialize)]
pub struct AuditedGrant {
    pub grant_id: crate::grant::GrantId,
    pub state: GrantState,
    pub principal: Shared,
    pub provider: Shared,
    pub role: Option<Shared>,
    pub target: Shared,
    pub branch: Shared,
    pub commit: Shared,
    pub reason: String,
    pub requested_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// When access ended (revoked, expired, failed); None while it lasts.
    pub ended_at: Option<DateTime<Utc>>,
    /// `merged`, `abandoned`, `manual`, ... for revocations; `expiry`; `failed`.
    pub ended_by: Option<Shared>,
    /// How long credentials were (or have been) usable, in seconds; None when none were issued.
    pub duration_seconds: Option<i64>,
    pub verified: bool,
}

/// A string many grants of a report hold, held once ([`Strings`]); serialised as the string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shared(Arc<str>);

impl std::ops::Deref for Shared {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Shared {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Shared {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// The distinct strings of one report.
#[derive(Default)]
struct Strings(HashSet<Arc<str>>);

impl Strings {
    fn shared(&mut self, text: &str) -> Shared {
        if let Some(held) = self.0.get(text) {
            return Shared(held.clone());
        }
        let held: Arc<str> = text.into();
        self.0.insert(held.clone());
        Shared(held)
    }
}

/// The checks an audit runs, beyond the ledger's own: stable names (`--json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    Ledger,
    Aws,
    Iam,
    Cloudtrail,
    Postgres,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Ledger => "ledger",
            Check::Aws => "aws",
            Check::Iam => "iam",
            Check::Cloudtrail => "cloudtrail",
            Check::Postgres => "postgres",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ran,
    Skipped,
    Failed,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Ran => "ran",
            CheckStatus::Skipped => "skipped",
            CheckStatus::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckRun {
    pub name: Check,
    pub status: CheckStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    pub schema: u32,
    pub generated_at: DateTime<Utc>,
    pub from: Option<DateTime<Utc>>,
    pub to: DateTime<Utc>,
    pub repo: String,
    pub ledger_tip: Option<String>,
    pub trust_ref: Option<String>,
    pub trust_commit: Option<String>,
    pub records: usize,
    pub grants: Vec<AuditedGrant>,
    pub findings: Vec<Finding>,
    pub checks: Vec<CheckRun>,
}

impl AuditReport {
    pub fn count(&self, severity: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == severity).count()
    }

    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}

pub fn audit(repo: &Repository, options: &AuditOptions) -> Result<AuditReport, AuditError> {
    if options.cloudtrail && options.aws.is_none() {
        return Err(AuditError::CloudTrailOffline);
    }
    let now = options.now;
    let checked = ledger::verify_read_only(repo)?;
    let mut findings: Vec<Finding> = Vec::new();
    let mut checks = vec![CheckRun { name: Check::Ledger, status: CheckStatus::Ran, detail: None }];
    let ledger_tip = checked.tip;

    let trust = checked.trust.clone().or_else(|| TrustRef::resolve(repo).ok());
    let policy_now = trust.as_ref().map(|t| crate::policy::load(repo, t));
    let policy_now = match policy_now {
        Some(Ok((policy, _))) if policy.protected_branches.is_empty() => {
            findings.push(Finding::new(
                Severity::Error,
                Category::Policy,
                "no_protected_branches",
                "protected_branches in the policy at the trust ref is empty: no merge ends a grant, and \
                 grants on any branch (main included) pass the branch check"
                    .to_owned(),
                "list the branches work is merged into in protected_branches (e.g. [\"main\"]) through review",
            ));
            Some(policy)
        }
        Some(Ok((policy, _))) => Some(policy),
        Some(Err(e)) => {
            findings.push(Finding::new(
                Severity::Warning,
                Category::Coverage,
                "policy_unreadable",
                format!("the policy at the trust ref cannot be read: {e}"),
                "fix .tpa/policy.toml on the protected branch; the branch checks used main and master",
            ));
            None
        }
        None => None,
    };
    let fallback = Policy::parse("", "defaults").expect("the empty policy is valid");
    let state = StateDir::open(repo)?;
    let left = state.left_branches()?;
    let mut grant_checks = GrantChecks {
        repo,
        now,
        trust: trust.as_ref(),
        current: policy_now.as_ref().unwrap_or(&fallback),
        left: &left,
        head_branch: repo
            .find_reference("HEAD")
            .ok()
            .and_then(|h| h.symbolic_target().ok().flatten().map(str::to_owned)),
        me: context::principal(repo).ok(),
        policies: PolicyCache::default(),
        findings: Vec::new(),
    };

    // At 100,000 grants the parsed records take most of a gigabyte: the grants are audited a batch
    // at a time, and only a summary of each is kept.
    let mut records = 0;
    let mut any_grant = false;
    let mut in_period = Vec::new();
    let mut strings = Strings::default();
    let mut provider = ProviderView::default();
    let mut record_findings = Vec::new();
    let ledger_findings = checked.stream_records(repo, |batch| {
        records += batch.len();
        for record in &batch {
            let at = ledger::newest_first(record);
            record_findings.extend(record.findings.iter().map(|f| (at, integrity_finding(f))));
        }
        for grant in grants::from_checked(batch, now) {
            any_grant = true;
            if overlaps(&grant, options, now) {
                grant_checks.check(&grant);
                in_period.push(audited(&grant, now, &mut strings));
            }
            if options.aws.is_some() {
                provider.add(grant, options.cloudtrail, now);
            }
        }
    })?;
    // The records' findings in the order `tpa verify` lists them (newest record first), whatever
    // order the batches came in: audit::sort keeps it among findings of one kind and grant.
    record_findings.sort_by_key(|(at, _)| *at);
    findings.extend(record_findings.into_iter().map(|(_, finding)| finding));
    findings.extend(ledger_findings.iter().map(integrity_finding));
    findings.append(&mut grant_checks.findings);
    if trust.as_ref().is_some_and(|t| t.origin == TrustOrigin::LocalNoRemote) && any_grant {
        findings.push(Finding::new(
            Severity::Info,
            Category::Coverage,
            "unreviewed_trust_ref",
            "no remote: signers and policy commits were checked against the local protected branch, \
             which nobody reviewed"
                .into(),
            "run the audit in CI on a clone of the server's repository",
        ));
    }
    // Newest first, as `tpa log` lists them. Grant ids are unique, so the order is total and an
    // unstable sort gives the same one without a buffer of half the summaries.
    in_period.sort_unstable_by(|a, b| {
        b.requested_at.cmp(&a.requested_at).then_with(|| a.grant_id.cmp(&b.grant_id))
    });

    if let (Some(aws), Some(policy)) = (&options.aws, &policy_now) {
        postgres_checks(&provider.live, policy, aws.timeout, &mut findings, &mut checks);
    }
    match &options.aws {
        Some(aws) => provider_checks(&provider, aws, options, &mut findings, &mut checks, now),
        None => checks.push(CheckRun {
            name: Check::Aws,
            status: CheckStatus::Skipped,
            detail: Some("--offline: IAM and CloudTrail were not asked".into()),
        }),
    }

    audit::sort(&mut findings);
    Ok(AuditReport {
        schema: 1,
        generated_at: now,
        from: options.from,
        to: options.to,
        repo: context::repo_url(repo),
        ledger_tip: ledger_tip.map(|t| t.to_string()),
        trust_ref: trust.as_ref().map(|t| t.refname.clone()),
        trust_commit: trust.as_ref().map(|t| t.commit.to_string()),
        records,
        grants: in_period,
        findings,
        checks,
    })
}

/// The checks of one grant of the period against git and the policies.
struct GrantChecks<'a> {
    repo: &'a Repository,
    now: DateTime<Utc>,
    trust: Option<&'a TrustRef>,
    /// The policy at the trust ref (the defaults when there is none).
    current: &'a Policy,
    left: &'a crate::state::LeftBranches,
    head_branch: Option<String>,
    me: Option<crate::grant::Principal>,
    policies: PolicyCache,
    findings: Vec<Finding>,
}

impl GrantChecks<'_> {
    fn check(&mut self, grant: &GrantView) {
        let now = self.now;
        let facts = facts_of(grant);
        let issued = grant.issued.is_some();
        match grant.state {
            GrantState::Incomplete
                if (now - grant.requested_at).num_seconds() >= INCOMPLETE_GRACE_SECONDS =>
            {
                self.findings.push(
                    Finding::new(
                        Severity::Error,
                        Category::Integrity,
                        "intent_without_outcome",
                        "an intent with no grant or failed record: tpa stopped mid-request, so a session \
                         may exist with no record"
                            .into(),
                        "run `tpa sweep` (it denies the session), then `tpa audit --cloudtrail` to see \
                         whether the session was used",
                    )
                    .about(&facts),
                );
            }
            GrantState::Pending | GrantState::Irrevocable => {
                let attempts = grant.revokes.iter().filter(|r| r.result != Some(RevokeResult::Done)).count();
                let last_error = grant.revokes.last().and_then(|r| r.error.clone()).unwrap_or_default();
                self.findings.push(
                    Finding::new(
                        Severity::Error,
                        Category::Revocation,
                        "revocation_stuck",
                        format!(
                            "revocation {} after {attempts} attempt(s): {}",
                            grant.state,
                            crate::escape::text(&last_error)
                        ),
                        "fix what the error says (IAM rights, network), then `tpa revoke GRANT`",
                    )
                    .about(&facts),
                );
            }
            GrantState::Active => {
                let me = self.me.as_ref();
                if let Some(finding) =
                    dangling(self.repo, grant, &facts, self.current, self.left, &self.head_branch, me, now)
                {
                    self.findings.push(finding);
                }
            }
            _ => {}
        }
        if issued || grant.state == GrantState::Incomplete {
            let (repo, trust, current) = (self.repo, self.trust, self.current);
            history_findings(repo, grant, &facts, trust, &mut self.policies, current, &mut self.findings);
        }
    }
}

/// What the provider checks read of the ledger's grants, all of them and not only the period's:
/// the grants whose session or login role may still exist, and for CloudTrail the roles and
/// session names of every grant.
#[derive(Default)]
struct ProviderView {
    live: Vec<GrantView>,
    sts_roles: BTreeSet<String>,
    sessions: BTreeSet<String>,
}

impl ProviderView {
    fn add(&mut self, grant: GrantView, cloudtrail: bool, now: DateTime<Utc>) {
        if cloudtrail {
            self.sessions.insert(grant.grant_id.session_name());
            // Looked up before inserting: a clone of the role per grant is not needed.
            if is_sts(&grant) && !self.sts_roles.contains(&grant.target) {
                self.sts_roles.insert(grant.target.clone());
            }
        }
        let open = matches!(grant.state, GrantState::Active | GrantState::Pending | GrantState::Irrevocable);
        let live = if is_sts(&grant) {
            open || (grant.state == GrantState::Revoked && unexpired(&grant, now))
        } else {
            grant.provider == crate::provider::ProviderKind::Postgres
                && (open || matches!(grant.state, GrantState::Incomplete | GrantState::Expired))
        };
        if live {
            self.live.push(grant);
        }
    }
}

/// Within its lifetime, by its grant record or, before one, its intent.
fn unexpired(grant: &GrantView, now: DateTime<Utc>) -> bool {
    grant.expires_at.or(grant.intent.expires_at).is_some_and(|at| at > now)
}

/// Whether a grant's life touches the period.
fn overlaps(grant: &GrantView, options: &AuditOptions, now: DateTime<Utc>) -> bool {
    let (ended_at, _) = ending(grant);
    grant.requested_at <= options.to && options.from.is_none_or(|from| ended_at.unwrap_or(now) >= from)
}

/// When and how a grant's access ended.
fn ending(grant: &GrantView) -> (Option<DateTime<Utc>>, Option<String>) {
    let revoked = grant.revokes.iter().find(|r| r.result == Some(RevokeResult::Done));
    match grant.state {
        GrantState::Revoked => {
            let trigger = revoked.and_then(|r| r.trigger).map(|t| {
                serde_json::to_value(t).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            });
            let at = revoked.map(|r| r.issued_at);
            // A grant that expired before anyone revoked it ended at its expiry.
            match (at, grant.expires_at) {
                (Some(at), Some(expiry)) if expiry < at => (Some(expiry), Some("expiry".into())),
                _ => (at, trigger),
            }
        }
        GrantState::Expired => (grant.expires_at, Some("expiry".into())),
        GrantState::Failed => (Some(grant.requested_at), Some("failed".into())),
        _ => (None, None),
    }
}

fn audited(grant: &GrantView, now: DateTime<Utc>, strings: &mut Strings) -> AuditedGrant {
    let (ended_at, ended_by) = ending(grant);
    let duration_seconds = grant.issued.as_ref().map(|issued| {
        let end = ended_at.unwrap_or(now).min(grant.expires_at.unwrap_or(now));
        (end - issued.issued_at.min(end)).num_seconds()
    });
    AuditedGrant {
        grant_id: grant.grant_id.clone(),
        state: grant.state,
        principal: strings.shared(&grant.principal),
        provider: strings.shared(grant.provider.name()),
        role: grant.role.as_deref().map(|role| strings.shared(role)),
        target: strings.shared(&grant.target),
        branch: strings.shared(&grant.branch),
        commit: strings.shared(&grant.commit),
        reason: grant.reason.clone(),
        requested_at: grant.requested_at,
        expires_at: grant.expires_at,
        ended_at,
        ended_by: ended_by.map(|by| strings.shared(&by)),
        duration_seconds,
        verified: grant.verified,
    }
}

fn facts_of(grant: &GrantView) -> GrantFacts {
    GrantFacts {
        grant_id: grant.grant_id.clone(),
        principal: grant.principal.clone(),
        branch: grant.branch.clone(),
        reason: grant.reason.clone(),
        role: grant.role.clone(),
        requested_at: grant.requested_at,
        expires_at: grant.expires_at,
    }
}

fn integrity_finding(f: &crate::ledger::verify::Finding) -> Finding {
    let kind =
        serde_json::to_value(f.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let place = match (&f.commit, f.line) {
        (Some(c), Some(l)) => format!(" (note of {}, line {l})", &c[..c.len().min(12)]),
        (Some(c), None) => format!(" (note of {})", &c[..c.len().min(12)]),
        _ => String::new(),
    };
    let mut finding = Finding::new(
        Severity::Error,
        Category::Integrity,
        &kind,
        format!("{}{place}", f.message),
        "see docs/verify.md for this finding; the ledger's records cannot be trusted until it is resolved",
    );
    finding.grant_id = f.grant_id.clone();
    finding
}

#[allow(clippy::too_many_arguments)]
fn dangling(
    repo: &Repository,
    grant: &GrantView,
    facts: &GrantFacts,
    policy: &Policy,
    left: &crate::state::LeftBranches,
    head_branch: &Option<String>,
    me: Option<&crate::grant::Principal>,
    now: DateTime<Utc>,
) -> Option<Finding> {
    let holds = me.is_some_and(|me| grant.grantee().email == me.email && grant.grantee().host == me.host);
    let mut lifecycle_facts =
        lifecycle::GrantFacts::from_record(grant.issued.as_ref().unwrap_or(&grant.intent)).ok()?;
    lifecycle_facts.expires_at = grant.expires_at;
    let situation = Situation {
        protected: &policy.protected_branches,
        abandon_after: chrono::Duration::seconds(policy.abandon_after as i64),
        now,
        holds_grant: holds,
        left_at: left.get(&grant.branch).copied(),
        head_branch: head_branch.clone(),
        // Only active grants come here: few, each reads the protected tips itself.
        protected_tips: None,
    };
    let why = match lifecycle::decide(repo, &lifecycle_facts, &situation).ok()? {
        Verdict::Merged { into, how } => format!(
            "its branch is merged into {} ({}) but the grant is still active",
            crate::escape::text(&into),
            match how {
                lifecycle::MergeKind::Ancestry => "merge or fast-forward",
                lifecycle::MergeKind::PatchEquivalent => "squash, rebase or cherry-pick",
            }
        ),
        Verdict::Abandoned(AbandonReason::BranchGone) => {
            "its branch is gone but the grant is still active".to_owned()
        }
        Verdict::Abandoned(AbandonReason::LeftTooLong { since }) => {
            format!("its branch was left at {} and the grant is still active", since.to_rfc3339())
        }
        Verdict::Keep | Verdict::Expired => return None,
    };
    Some(
        Finding::new(
            Severity::Error,
            Category::Dangling,
            "dangling",
            why,
            "run `tpa sweep` (or `tpa revoke GRANT`), and check why the hooks and the CI sweep missed it",
        )
        .about(facts),
    )
}

/// The policy file as of a commit, parsed once per commit.
#[derive(Default)]
struct PolicyCache {
    by_commit: HashMap<Oid, Option<Policy>>,
    reviewed: HashMap<Oid, bool>,
}

impl PolicyCache {
    fn policy_at(&mut self, repo: &Repository, commit: Oid) -> Option<&Policy> {
        self.by_commit
            .entry(commit)
            .or_insert_with(|| {
                let name = commit.to_string();
                let bytes = crate::trust::read_committed(repo, commit, POLICY_PATH, &name).ok()??;
                Policy::parse(&String::from_utf8_lossy(&bytes), &format!("{commit}:{POLICY_PATH}")).ok()
            })
            .as_ref()
    }

    fn is_reviewed(&mut self, repo: &Repository, trust: Oid, commit: Oid) -> bool {
        *self
            .reviewed
            .entry(commit)
            .or_insert_with(|| commit == trust || repo.graph_descendant_of(trust, commit).unwrap_or(false))
    }
}

fn history_findings(
    repo: &Repository,
    grant: &GrantView,
    facts: &GrantFacts,
    trust: Option<&TrustRef>,
    policies: &mut PolicyCache,
    current: &Policy,
    findings: &mut Vec<Finding>,
) {
    let commit_known = Oid::from_str(&grant.commit).ok().is_some_and(|oid| repo.find_commit(oid).is_ok());
    if !commit_known {
        findings.push(
            Finding::new(
                Severity::Warning,
                Category::History,
                "commit_missing",
                format!(
                    "the grant's commit {} is not in this repository (force-push, rebase or gc)",
                    crate::escape::text(&grant.commit)
                ),
                "fetch every branch (`git fetch --all`); if it is still missing, ask the grantee what the \
                 change was and attach it to the audit ticket",
            )
            .about(facts),
        );
    }
    let policy_commit = grant.intent.policy_commit.as_deref().and_then(|c| Oid::from_str(c).ok());
    let then = match (policy_commit, trust) {
        (Some(pc), Some(trust)) => {
            if !policies.is_reviewed(repo, trust.commit, pc) {
                findings.push(
                    Finding::new(
                        Severity::Error,
                        Category::Integrity,
                        "policy_commit_unreviewed",
                        format!(
                            "the policy commit it was checked against, {}, is not on {}",
                            &pc.to_string()[..12],
                            crate::escape::text(&trust.refname)
                        ),
                        "find out where that policy came from: a grant must be checked against the \
                         reviewed policy of the protected branch",
                    )
                    .about(facts),
                );
            }
            let then = policies.policy_at(repo, pc).cloned();
            if then.is_none() && grant.issued.is_some() {
                findings.push(
                    Finding::new(
                        Severity::Warning,
                        Category::Coverage,
                        "policy_unreadable_then",
                        format!(
                            "the policy at its policy commit {} cannot be read or parsed: its ttl and reason \
                             were not checked",
                            &pc.to_string()[..12]
                        ),
                        "fetch the protected branch's full history (`git fetch --unshallow`), then audit again",
                    )
                    .about(facts),
                );
            }
            then
        }
        (None, _) => {
            findings.push(
                Finding::new(
                    Severity::Error,
                    Category::Integrity,
                    "policy_commit_unreviewed",
                    "the grant records no policy commit: it was not checked against a reviewed policy".into(),
                    "find out how the grant was made",
                )
                .about(facts),
            );
            None
        }
        (Some(_), None) => None,
    };
    if grant.issued.is_some() {
        findings.extend(audit::policy_deviations(facts, then.as_ref(), current));
    }
    approval_findings(grant, facts, then.as_ref().unwrap_or(current), findings);
}

/// Approvals, judged under the policy the grant was checked against: a grant on a role that
/// required approvals without a counting quorum before its intent (how a modified tpa or a
/// hand-written record shows), approvals that could never count, and break-glass grants nobody
/// reviewed.
fn approval_findings(grant: &GrantView, facts: &GrantFacts, policy: &Policy, findings: &mut Vec<Finding>) {
    use crate::ops::approval::{self, ApprovalProblem, Quorum};
    let Some(rules) = approval::rules_for(policy, grant) else { return };
    for a in &grant.approvals {
        let (kind, message) = match approval::problem(grant, a, policy, rules) {
            Some(ApprovalProblem::SelfApproval) => (
                "self_approval",
                format!("{} approved their own request", crate::escape::text(&a.record.principal.email)),
            ),
            Some(ApprovalProblem::NotAnApprover) => (
                "approval_by_non_approver",
                format!(
                    "{} signed an approval but is not an approver of {}",
                    crate::escape::text(&a.record.principal.email),
                    crate::escape::text(&approval::what(grant))
                ),
            ),
            None => continue,
        };
        findings.push(
            Finding::new(
                Severity::Error,
                Category::Policy,
                kind,
                message,
                "it did not count; find out why it was written",
            )
            .about(facts),
        );
    }
    let Some(intent_at) = grant.issued.as_ref().map(|_| grant.intent.issued_at) else { return };
    if grant.break_glass && rules.break_glass {
        if !approval::reviewed(grant, policy) {
            let due = intent_at + chrono::Duration::seconds(rules.review_within as i64);
            let late = crate::clock::now() > due;
            findings.push(
                Finding::new(
                    if late { Severity::Error } else { Severity::Warning },
                    Category::Policy,
                    "break_glass_unreviewed",
                    format!(
                        "a break-glass grant nobody has reviewed{}",
                        if late { format!(" (it was due by {})", due.to_rfc3339()) } else { String::new() }
                    ),
                    "an approver looks at what was done and runs `tpa approve GRANT` (a review)",
                )
                .about(facts),
            );
        }
        return;
    }
    if rules.approvals == 0 {
        return;
    }
    // The approvals that counted when the grant was minted: judged as of its intent.
    let quorum = match (&grant.request, grant.request_sha256.as_ref()) {
        (Some(_), Some(_)) => {
            let mut before = grant.clone();
            before.state = GrantState::AwaitingApproval;
            before.approvals.retain(|a| a.record.issued_at <= intent_at);
            approval::evaluate(&before, policy, rules, intent_at)
        }
        _ => Quorum::Closed,
    };
    if !matches!(quorum, Quorum::Reached { .. }) {
        findings.push(
            Finding::new(
                Severity::Error,
                Category::Policy,
                "grant_without_approval",
                format!(
                    "{} needed {} approval(s) under the policy it was checked against, and no counting \
                     quorum came before it was minted",
                    crate::escape::text(&approval::what(grant)),
                    rules.approvals
                ),
                "find out how it was minted (a modified tpa, a hand-written record); revoke it if it is still open",
            )
            .about(facts),
        );
    }
}

/// A grant that is an STS session on a role (rds-iam grants are too).
fn is_sts(grant: &GrantView) -> bool {
    grant.provider.is_sts_session()
}

/// Everything that asks AWS: revocations in force, roles that still exist, and CloudTrail.
fn provider_checks(
    provider: &ProviderView,
    aws: &AwsAccess,
    options: &AuditOptions,
    findings: &mut Vec<Finding>,
    checks: &mut Vec<CheckRun>,
    now: DateTime<Utc>,
) {
    let sts_grant = |g: &&GrantView| is_sts(g);
    let all = &provider.live;
    // Revoked but still within their lifetime: the deny must be in force.
    let revoked: Vec<&GrantView> = all
        .iter()
        .filter(sts_grant)
        .filter(|g| g.state == GrantState::Revoked && unexpired(g, now))
        .collect();
    let open: Vec<&GrantView> = all
        .iter()
        .filter(sts_grant)
        .filter(|g| matches!(g.state, GrantState::Active | GrantState::Pending | GrantState::Irrevocable))
        .collect();
    if revoked.is_empty() && open.is_empty() && !options.cloudtrail {
        checks.push(CheckRun {
            name: Check::Iam,
            status: CheckStatus::Skipped,
            detail: Some("no grant needed it".into()),
        });
        return;
    }
    let iam = AwsIam::new(aws.profile.as_deref(), aws.timeout);
    let mut failed = Vec::new();
    let mut by_role: BTreeMap<&str, Vec<&GrantView>> = BTreeMap::new();
    for g in &revoked {
        by_role.entry(g.target.as_str()).or_default().push(g);
    }
    for (role_arn, grants) in by_role {
        let in_force = RevocationTarget::for_role(role_arn).and_then(|t| iam.in_force(&t).map(|f| (t, f)));
        let (target, in_force) = match in_force {
            Ok(found) => found,
            Err(e) => {
                failed.push(format!("{role_arn}: {e}"));
                continue;
            }
        };
        let in_force: InForce = in_force.unwrap_or_default();
        for g in grants {
            let issued_at = g.issued.as_ref().map(|r| r.issued_at).unwrap_or(g.requested_at);
            if !in_force.denies(&g.grant_id.session_name(), issued_at) {
                findings.push(
                    Finding::new(
                        Severity::Error,
                        Category::Revocation,
                        "revocation_not_effective",
                        format!(
                            "revoked in the ledger, unexpired, but {} does not deny its session {}",
                            target.policy_arn,
                            g.grant_id.session_name()
                        ),
                        "run `tpa sweep` now (it re-asserts every deny entry), then find out who edited \
                         the revocation policy",
                    )
                    .about(&facts_of(g)),
                );
            }
        }
    }
    let roles: BTreeSet<&str> = open.iter().map(|g| g.target.as_str()).collect();
    for role_arn in roles {
        let exists = RevocationTarget::for_role(role_arn).and_then(|t| iam.role_exists(&t));
        match exists {
            Ok(true) => {}
            Ok(false) => {
                for g in open.iter().filter(|g| g.target == role_arn) {
                    findings.push(
                        Finding::new(
                            Severity::Error,
                            Category::Drift,
                            "role_missing",
                            format!(
                                "recorded as {} but the role {role_arn} no longer exists in IAM",
                                g.state
                            ),
                            "find out who deleted the role; revoke the grant (`tpa revoke GRANT`) so the \
                             ledger says it ended",
                        )
                        .about(&facts_of(g)),
                    );
                }
            }
            Err(e) => failed.push(format!("{role_arn}: {e}")),
        }
    }
    checks.push(match failed.is_empty() {
        true => CheckRun { name: Check::Iam, status: CheckStatus::Ran, detail: None },
        false => {
            findings.push(Finding::new(
                Severity::Error,
                Category::Coverage,
                "check_failed",
                format!("IAM could not be read, so revocations were not all checked: {}", failed.join("; ")),
                "give the auditor iam:GetPolicy, iam:ListPolicyVersions, iam:GetPolicyVersion, iam:ListAttachedRolePolicies and \
                 iam:GetRole, or run with --offline to audit the ledger alone",
            ));
            CheckRun { name: Check::Iam, status: CheckStatus::Failed, detail: Some(failed.join("; ")) }
        }
    });

    if options.cloudtrail {
        cloudtrail_check(provider, aws, options, findings, checks, now);
    }
}

fn cloudtrail_check(
    provider: &ProviderView,
    aws: &AwsAccess,
    options: &AuditOptions,
    findings: &mut Vec<Finding>,
    checks: &mut Vec<CheckRun>,
    now: DateTime<Utc>,
) {
    let from = options.from.unwrap_or(now - chrono::Duration::days(CLOUDTRAIL_DAYS));
    let trail = CloudTrail::new(aws.profile.as_deref(), aws.region.as_deref(), aws.timeout);
    let events = match trail.assume_role_events(from, options.to) {
        Ok(events) => events,
        Err(e) => {
            findings.push(Finding::new(
                Severity::Error,
                Category::Coverage,
                "check_failed",
                format!("CloudTrail could not be read: {e}"),
                "give the auditor cloudtrail:LookupEvents in the roles' region (--region)",
            ));
            checks.push(CheckRun {
                name: Check::Cloudtrail,
                status: CheckStatus::Failed,
                detail: Some(e.to_string()),
            });
            return;
        }
    };
    // The roles tpa manages: every role a grant was ever for.
    let (roles, recorded) = (&provider.sts_roles, &provider.sessions);
    let mut unrecorded = 0;
    for event in events.iter().filter(|e| roles.contains(e.role_arn.as_str())) {
        if recorded.contains(&event.session_name) {
            continue;
        }
        unrecorded += 1;
        findings.push(unrecorded_finding(event));
    }
    checks.push(CheckRun {
        name: Check::Cloudtrail,
        status: CheckStatus::Ran,
        detail: Some(format!("{} AssumeRole events, {unrecorded} with no record", events.len())),
    });
}

fn unrecorded_finding(event: &AssumeRoleEvent) -> Finding {
    let mut finding = Finding::new(
        Severity::Error,
        Category::Drift,
        "unrecorded_session",
        format!(
            "{} assumed {} as session `{}`{} and the ledger has no record of it (event {})",
            crate::escape::text(&event.caller),
            crate::escape::text(&event.role_arn),
            crate::escape::text(&event.session_name),
            event
                .source_ip
                .as_deref()
                .map(|ip| format!(" from {}", crate::escape::text(ip)))
                .unwrap_or_default(),
            crate::escape::text(&event.event_id),
        ),
        "find out who bypassed tpa (or which record was lost), and apply templates/trust-policy.json to \
         the role so that only tpa-* sessions with a tpa-grant tag can assume it",
    );
    finding.principal = Some(event.caller.clone());
    finding.at = Some(event.at);
    finding
}

/// For each postgres database of the policy: tpa's login roles on the server against the ledger.
/// A role with no open grant is an orphan (made outside tpa, or a revocation that never finished);
/// an open grant whose role is gone was ended behind the ledger's back.
fn postgres_checks(
    live: &[GrantView],
    policy: &Policy,
    timeout: Duration,
    findings: &mut Vec<Finding>,
    checks: &mut Vec<CheckRun>,
) {
    for database in policy.databases.values().filter(|d| d.provider == crate::policy::DbProvider::Postgres) {
        let open: Vec<&GrantView> = live
            .iter()
            .filter(|g| {
                g.provider == crate::provider::ProviderKind::Postgres
                    && g.intent.database.as_deref() == Some(database.name.as_str())
            })
            .filter(|g| {
                matches!(
                    g.state,
                    GrantState::Active
                        | GrantState::Pending
                        | GrantState::Irrevocable
                        | GrantState::Incomplete
                        | GrantState::Expired
                )
            })
            .collect();
        let roles =
            crate::provider::postgres::pg_admin(database, timeout).and_then(|mut pg| Ok(pg.tpa_roles()?));
        let roles = match roles {
            Ok(roles) => roles,
            Err(crate::provider::postgres::DbAdminError::NoAdmin { variables, .. }) => {
                checks.push(CheckRun {
                    name: Check::Postgres,
                    status: CheckStatus::Skipped,
                    detail: Some(format!("database {}: no admin connection ({variables})", database.name)),
                });
                continue;
            }
            Err(e) => {
                findings.push(Finding::new(
                    Severity::Error,
                    Category::Coverage,
                    "check_failed",
                    format!("database {}: the login roles could not be listed: {e}", database.name),
                    "give the auditor an admin connection that may read pg_roles, or run with --offline",
                ));
                checks.push(CheckRun {
                    name: Check::Postgres,
                    status: CheckStatus::Failed,
                    detail: Some(database.name.clone()),
                });
                continue;
            }
        };
        let expected: BTreeMap<String, &GrantView> =
            open.iter().map(|g| (crate::provider::postgres::pg_role_name(&g.grant_id), *g)).collect();
        for role in roles.iter().filter(|r| !expected.contains_key(&r.name)) {
            findings.push(Finding::new(
                Severity::Error,
                Category::Drift,
                "orphan_role",
                format!(
                    "database {}: login role {} exists (can log in: {}) but no open grant in the ledger is its",
                    database.name,
                    crate::escape::text(&role.name),
                    role.can_login
                ),
                "find out who made it; drop it (`DROP ROLE`), after `pg_terminate_backend` of its sessions",
            ));
        }
        let present: BTreeSet<&str> = roles.iter().map(|r| r.name.as_str()).collect();
        for (name, grant) in &expected {
            if grant.state == GrantState::Expired && present.contains(name.as_str()) {
                findings.push(
                    Finding::new(
                        Severity::Error,
                        Category::Dangling,
                        "expired_role_present",
                        format!(
                            "expired, but its login role {name} still exists on database {}: sessions opened \
                             before the expiry stay open until it is dropped",
                            database.name
                        ),
                        "run `tpa sweep` with the admin connection (it drops the role and ends its sessions)",
                    )
                    .about(&facts_of(grant)),
                );
            }
            if grant.state == GrantState::Active && !present.contains(name.as_str()) {
                findings.push(
                    Finding::new(
                        Severity::Error,
                        Category::Drift,
                        "role_missing",
                        format!(
                            "recorded as active but its login role {name} is gone from database {}",
                            database.name
                        ),
                        "find out who dropped it; `tpa revoke GRANT` so the ledger says it ended",
                    )
                    .about(&facts_of(grant)),
                );
            }
        }
        checks.push(CheckRun {
            name: Check::Postgres,
            status: CheckStatus::Ran,
            detail: Some(database.name.clone()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_are_held_once_and_serialised_as_strings() {
        let mut strings = Strings::default();
        let first = strings.shared("refs/heads/hotfix/x");
        let again = strings.shared(&String::from("refs/heads/hotfix/x"));
        let other = strings.shared("refs/heads/hotfix/y");
        assert!(Arc::ptr_eq(&first.0, &again.0));
        assert!(!Arc::ptr_eq(&first.0, &other.0));
        assert_eq!(strings.0.len(), 2);
        assert_eq!(
            serde_json::to_string(&[first, other]).unwrap(),
            r#"["refs/heads/hotfix/x","refs/heads/hotfix/y"]"#
        );
    }
}

//! What `tpa audit` reports: findings with a severity, and the pure checks of a grant against the
//! policy it was taken under. The flow that gathers git, ledger and provider facts is `ops::audit`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::grant::GrantId;
use crate::policy::{Policy, PolicyRefusal, format_duration};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// Which question a finding answers. Stable names: docs/audit.md lists each with what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Still active although its branch is merged or abandoned.
    Dangling,
    /// Revoked on paper but not denied in the provider, or a revocation stuck.
    Revocation,
    /// The grant's place in git history.
    History,
    /// Signatures, signers, removed records, rewritten history, unreviewed policy.
    Integrity,
    /// The grant broke the policy it was taken under.
    Policy,
    /// The provider disagrees with the ledger.
    Drift,
    /// A check that could not run.
    Coverage,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub category: Category,
    /// Stable, snake_case: `dangling`, `revocation_not_effective`, `bad_signature`, ...
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<GrantId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// When what the finding is about happened (the grant's request, the session's start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    pub message: String,
    /// What to do about it.
    pub action: String,
}

impl Finding {
    pub fn new(severity: Severity, category: Category, kind: &str, message: String, action: &str) -> Self {
        Finding {
            severity,
            category,
            kind: kind.to_owned(),
            grant_id: None,
            principal: None,
            branch: None,
            at: None,
            message,
            action: action.to_owned(),
        }
    }

    pub fn about(mut self, grant: &GrantFacts) -> Self {
        self.grant_id = Some(grant.grant_id.clone());
        self.principal = Some(grant.principal.clone());
        self.branch = Some(grant.branch.clone());
        self.at = Some(grant.requested_at);
        self
    }
}

/// The facts of an issued grant that the policy checks look at.
#[derive(Clone, Debug)]
pub struct GrantFacts {
    pub grant_id: GrantId,
    pub principal: String,
    /// Full refname.
    pub branch: String,
    pub reason: String,
    /// `[roles.X]` or `[databases.X]` name the grant was for.
    pub role: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Checks a grant that issued credentials against the policy it was taken under (`then`, read at
/// the policy commit the grant recorded) and the protected branches of the policy in force now.
pub fn policy_deviations(grant: &GrantFacts, then: Option<&Policy>, now: &Policy) -> Vec<Finding> {
    let mut findings = Vec::new();
    let short = grant.branch.strip_prefix("refs/heads/").unwrap_or(&grant.branch);
    let protected_now = now.is_protected(short);
    let refused_then = then.map(|p| p.check_branch(&grant.branch));
    match refused_then {
        _ if protected_now || matches!(refused_then, Some(Err(PolicyRefusal::BranchProtected { .. }))) => {
            findings.push(
                Finding::new(
                    Severity::Warning,
                    Category::Policy,
                    "protected_branch",
                    format!(
                        "taken on the protected branch {short}: access is meant to be tied to a change \
                         under review, not to the protected branch itself"
                    ),
                    "ask the grantee what was changed with it; if the policy allowed it then, tighten \
                     protected_branches",
                )
                .about(grant),
            )
        }
        Some(Err(refusal)) => findings.push(
            Finding::new(
                Severity::Warning,
                Category::Policy,
                "branch_not_allowed",
                format!("the policy it was checked against refused this branch: {refusal}"),
                "find out how the grant was made (an old or modified tpa); review the branch's changes",
            )
            .about(grant),
        ),
        _ => {}
    }
    let Some(then) = then else { return findings };
    if let (Some(name), Some(expires_at)) = (&grant.role, grant.expires_at) {
        let seconds = (expires_at - grant.requested_at).num_seconds().max(0) as u64;
        let max =
            then.roles.get(name).map(|r| r.max_ttl).or_else(|| then.databases.get(name).map(|d| d.max_ttl));
        // A minute of slack: the expiry is STS's clock, the request time the requester's.
        if let Some(max) = max
            && seconds > max + 60
        {
            findings.push(
                Finding::new(
                    Severity::Warning,
                    Category::Policy,
                    "ttl_exceeded",
                    format!(
                        "lasted {} while max_ttl of `{name}` was {} in the policy it was checked against",
                        format_duration(seconds),
                        format_duration(max)
                    ),
                    "find out how the grant was made (an old or modified tpa); check the role's \
                     MaxSessionDuration in IAM",
                )
                .about(grant),
            );
        }
    }
    if let Err(refusal @ PolicyRefusal::ReasonTooShort { .. } | refusal @ PolicyRefusal::ReasonMissing) =
        then.check_reason(&grant.reason)
    {
        findings.push(
            Finding::new(
                Severity::Warning,
                Category::Policy,
                "reason_too_short",
                short_reason(&refusal),
                "ask the grantee for the incident this access was for, and note it in the audit ticket",
            )
            .about(grant),
        );
    }
    findings
}

fn short_reason(refusal: &PolicyRefusal) -> String {
    match refusal {
        PolicyRefusal::ReasonTooShort { min, got } => {
            format!("the reason has {got} characters; the policy asked for at least {min}")
        }
        _ => "no reason was given".to_owned(),
    }
}

/// Orders findings for every report: most severe first, then by category, time and grant.
pub fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.category.cmp(&b.category))
            .then_with(|| a.at.cmp(&b.at))
            .then_with(|| a.grant_id.cmp(&b.grant_id))
            .then_with(|| a.kind.cmp(&b.kind))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "[roles.ops]\narn = \"arn:aws:iam::123456789012:role/ops\"\nregion = \"us-east-1\"\n\
                        max_ttl = \"1h\"\n";

    fn policy(top: &str) -> Policy {
        Policy::parse(&format!("{top}\n{ROLE}"), "test").expect("valid policy")
    }

    fn grant(branch: &str, reason: &str, ttl_seconds: i64) -> GrantFacts {
        let at = DateTime::parse_from_rfc3339("2026-11-01T10:00:00Z").unwrap().with_timezone(&Utc);
        GrantFacts {
            grant_id: GrantId::generate(at),
            principal: "dev@example.com".into(),
            branch: format!("refs/heads/{branch}"),
            reason: reason.into(),
            role: Some("ops".into()),
            requested_at: at,
            expires_at: Some(at + chrono::Duration::seconds(ttl_seconds)),
        }
    }

    fn kinds(findings: &[Finding]) -> Vec<&str> {
        findings.iter().map(|f| f.kind.as_str()).collect()
    }

    #[test]
    fn a_grant_within_its_policy_has_no_findings() {
        let p = policy("min_reason_length = 10");
        assert!(policy_deviations(&grant("hotfix/a", "INC-1: fix invoices", 3600), Some(&p), &p).is_empty());
    }

    #[test]
    fn protected_by_the_policy_now_even_when_the_old_policy_allowed_it() {
        let old = policy("protected_branches = []");
        let now = policy("protected_branches = [\"main\"]");
        let findings = policy_deviations(&grant("main", "INC-1: fix invoices", 600), Some(&old), &now);
        assert_eq!(kinds(&findings), ["protected_branch"]);
        assert_eq!(findings[0].severity, Severity::Warning);
    }

    #[test]
    fn a_branch_the_policy_then_did_not_allow() {
        let p = policy("request_branches = [\"hotfix/*\"]");
        assert_eq!(
            kinds(&policy_deviations(&grant("feature/x", "INC-1: fix invoices", 600), Some(&p), &p)),
            ["branch_not_allowed"]
        );
    }

    #[test]
    fn longer_than_max_ttl_then_with_a_minute_of_slack() {
        let p = policy("");
        assert!(policy_deviations(&grant("hotfix/a", "INC-1: fix invoices", 3660), Some(&p), &p).is_empty());
        assert_eq!(
            kinds(&policy_deviations(&grant("hotfix/a", "INC-1: fix invoices", 7200), Some(&p), &p)),
            ["ttl_exceeded"]
        );
    }

    #[test]
    fn reason_shorter_than_the_minimum_then() {
        let p = policy("min_reason_length = 20");
        assert_eq!(
            kinds(&policy_deviations(&grant("hotfix/a", "fix", 600), Some(&p), &p)),
            ["reason_too_short"]
        );
    }

    #[test]
    fn without_the_policy_then_only_the_protected_check_runs() {
        let now = policy("");
        assert!(policy_deviations(&grant("hotfix/a", "x", 90_000), None, &now).is_empty());
        assert_eq!(kinds(&policy_deviations(&grant("main", "x", 600), None, &now)), ["protected_branch"]);
    }

    #[test]
    fn sorted_by_severity_first() {
        let mut findings = vec![
            Finding::new(Severity::Info, Category::Coverage, "a", String::new(), ""),
            Finding::new(Severity::Error, Category::Drift, "b", String::new(), ""),
            Finding::new(Severity::Warning, Category::Policy, "c", String::new(), ""),
            Finding::new(Severity::Error, Category::Dangling, "d", String::new(), ""),
        ];
        sort(&mut findings);
        assert_eq!(kinds(&findings), ["d", "b", "c", "a"]);
    }
}

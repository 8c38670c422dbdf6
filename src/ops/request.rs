//! `tpa request`: the policy at the trust ref decides what may be asked for and how; the result is
//! a planned grant with its provider's [`Issuer`], which `ops::issue` (the one executor every grant
//! goes through) turns into records, a secret and a keyring entry. Then the policy's required
//! webhooks are told, before anything is handed out: one that cannot be told ends the grant.

use chrono::{DateTime, Utc};
use git2::Repository;
use serde_json::json;

use crate::grant::{GrantId, Record, Scope, sha256_hex};
use crate::interrupt::Interruption;
use crate::ledger::signing::Signer;
use crate::ops::context::{self, ContextError, GitContext};
use crate::ops::issue::{self, IssueError, IssueRequest};
use crate::policy::{DbProvider, POLICY_PATH, PolicyRefusal, RolePolicy};
use crate::provider::aws_sts::{StsIssuer, StsOptions};
use crate::provider::postgres::PgIssuer;
use crate::provider::{Issuer, MintRequest, ProviderKind, Secret};
use crate::secrets::SecretStore;
use crate::trust::{TrustError, TrustRef};

/// STS's limit on an inline session policy, in characters.
pub const SESSION_POLICY_MAX: usize = 2048;
/// STS's limit on session tags per AssumeRole.
pub const MAX_SESSION_TAGS: usize = 50;
const TAG_VALUE_MAX: usize = 256;

/// A request, as the user asked for it (flags and environment resolved by the CLI).
#[derive(Clone, Debug, Default)]
pub struct RequestSpec {
    pub role: String,
    /// `[databases.NAME]` of provider rds-iam: the grant is its role's STS session, recorded as a
    /// database grant. (`role` is then ignored.)
    pub database: Option<String>,
    pub reason: Option<String>,
    pub ttl_seconds: Option<u64>,
    pub mfa_code: Option<String>,
    pub sts: StsOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Policy(#[from] crate::policy::LoadError),
    #[error("{0}")]
    Refused(#[from] PolicyRefusal),
    #[error("role {role} requires MFA: pass --mfa-code CODE from your MFA device")]
    MfaRequired { role: String },
    #[error("role {role} requires MFA but has no mfa_serial in {POLICY_PATH}: add it through review")]
    MfaSerialMissing { role: String },
    #[error(
        "the session policy {path} of role {role} is not committed at the trust ref {trust}: commit it there"
    )]
    SessionPolicyMissing { role: String, path: String, trust: String },
    #[error("the session policy {path} of role {role} is not valid JSON: {message}")]
    SessionPolicyInvalid { role: String, path: String, message: String },
    #[error(
        "the session policy for role {role} is {length} characters, above STS's limit of {SESSION_POLICY_MAX} \
         (tpa adds a deny on sts:AssumeRole* and iam:* unless allow_role_chaining = true): shorten {path}"
    )]
    SessionPolicyTooLong { role: String, path: String, length: usize },
    #[error("{count} session tags is more than STS's limit of {MAX_SESSION_TAGS}")]
    TooManyTags { count: usize },
    #[error(
        "database {database} is provider = \"postgres\": its grants are asked for with `tpa request --db`"
    )]
    NotRdsIam { database: String },
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error(
        "grant {grant_id} was {ended} and not handed out: a required notification could not be delivered ({})",
        failures.join("; ")
    )]
    NotifyFailed { grant_id: GrantId, ended: String, failures: Vec<String> },
    #[error("git error: {0}")]
    Git(#[from] git2::Error),
}

/// What a successful request produced. `secret` is for `--format` output only; everything else
/// goes through the keyring.
pub struct Granted {
    pub record: Record,
    pub secret: Secret,
    pub policy_commit: String,
    /// How long the provider's round trip and the keyring write took (for benchmarks).
    pub mint_elapsed: std::time::Duration,
    pub keyring_elapsed: std::time::Duration,
}

impl RequestError {
    /// Interrupted by a signal, with what was started recorded.
    pub fn is_interruption(&self) -> bool {
        matches!(self, RequestError::Issue(e) if e.is_interruption())
    }
}

/// A grant decided against the policy, with the issuer of its provider: nothing written yet.
pub struct Planned {
    pub ctx: GitContext,
    pub trust: TrustRef,
    pub grant_id: GrantId,
    pub reason: String,
    pub ttl_seconds: u64,
    pub now: DateTime<Utc>,
    pub issuer: Box<dyn Issuer>,
    /// What is asked for, for people: the role, or the database.
    pub what: String,
    /// How to reach the provider again to end the grant, if it has to be ended at once.
    pub profile: Option<String>,
    pub timeout: std::time::Duration,
}

impl Planned {
    pub fn kind(&self) -> ProviderKind {
        self.issuer.kind()
    }
}

/// Reads policy from the trust ref and checks the request against it. No side effects.
pub fn plan(repo: &Repository, spec: &RequestSpec, now: DateTime<Utc>) -> Result<Planned, RequestError> {
    let trust = TrustRef::resolve(repo)?;
    let (policy, _) = crate::policy::load(repo, &trust)?;
    let ctx = context::capture(repo, Some(&trust))?;
    let reason = spec.reason.clone().unwrap_or_default();
    policy.check_reason(&reason)?;
    policy.check_branch(&ctx.branch)?;
    let grant_id = GrantId::generate(now);
    let database = spec.database.as_ref().map(|name| policy.database(name).cloned()).transpose()?;
    if let Some(database) = database.as_ref().filter(|d| d.provider == DbProvider::Postgres) {
        let ttl_seconds = spec.ttl_seconds.unwrap_or_else(|| policy.default_ttl_within(database.max_ttl));
        database.check_ttl(ttl_seconds)?;
        let valid_until = now + chrono::Duration::seconds(ttl_seconds as i64);
        let issuer = PgIssuer::new(database.clone(), grant_id.clone(), valid_until, spec.sts.timeout);
        return Ok(Planned {
            ctx,
            trust,
            grant_id,
            reason,
            ttl_seconds,
            now,
            issuer: Box::new(issuer),
            what: format!("database {}", database.name),
            profile: spec.sts.profile.clone(),
            timeout: spec.sts.timeout,
        });
    }
    // A role's STS session; for an rds-iam database, the session of the role its tokens are signed with.
    let role_name = database.as_ref().and_then(|d| d.role.clone()).unwrap_or_else(|| spec.role.clone());
    let role = policy.role(&role_name)?.clone();
    let max_ttl = database.as_ref().map_or(role.max_ttl, |d| d.max_ttl.min(role.max_ttl));
    let ttl_seconds = spec.ttl_seconds.unwrap_or_else(|| policy.default_ttl_within(max_ttl));
    role.check_ttl(ttl_seconds)?;
    if let Some(database) = &database {
        database.check_ttl(ttl_seconds)?;
    }
    let mfa = if role.require_mfa {
        let code =
            spec.mfa_code.clone().ok_or_else(|| RequestError::MfaRequired { role: role.name.clone() })?;
        let user = ctx.principal.email.split('@').next().unwrap_or_default();
        let serial = role
            .mfa_serial_for(user)
            .ok_or_else(|| RequestError::MfaSerialMissing { role: role.name.clone() })?;
        Some((serial, code))
    } else {
        None
    };
    let (session_policy, scope) = session_policy(repo, &trust, &role)?;
    let tags = if role.session_tags { session_tags(&grant_id, &ctx) } else { Vec::new() };
    if tags.len() > MAX_SESSION_TAGS {
        return Err(RequestError::TooManyTags { count: tags.len() });
    }
    let mint = MintRequest {
        role_arn: role.arn.clone(),
        session_name: grant_id.session_name(),
        duration_seconds: ttl_seconds as u32,
        tags,
        source_identity: role.source_identity.then(|| grant_id.session_name()),
        session_policy,
        mfa,
        external_id: role.external_id.clone(),
    };
    let issuer = StsIssuer {
        kind: if database.is_some() { ProviderKind::RdsIam } else { ProviderKind::AwsSts },
        mint,
        role: role.name.clone(),
        database: database.as_ref().map(|d| d.name.clone()),
        scope,
        options: StsOptions { region: role.region.clone().or(spec.sts.region.clone()), ..spec.sts.clone() },
    };
    let what = match &database {
        Some(database) => format!("database {}", database.name),
        None => role.arn.clone(),
    };
    Ok(Planned {
        ctx,
        trust,
        grant_id,
        reason,
        ttl_seconds,
        now,
        issuer: Box::new(issuer),
        what,
        profile: spec.sts.profile.clone(),
        timeout: spec.sts.timeout,
    })
}

/// Issues a planned grant through the one executor, then tells the required webhooks before
/// anything is handed out: a grant they cannot be told of is ended (trigger `notify-failed`) and
/// refused.
pub fn execute(
    repo: &Repository,
    mut planned: Planned,
    signer: &Signer,
    store: &dyn SecretStore,
    interruption: &Interruption,
) -> Result<Granted, RequestError> {
    let request = IssueRequest {
        ctx: &planned.ctx,
        trust: &planned.trust,
        grant_id: planned.grant_id.clone(),
        reason: &planned.reason,
        ttl_seconds: planned.ttl_seconds,
        now: planned.now,
        profile: planned.profile.clone(),
        timeout: planned.timeout,
    };
    let issued = issue::issue(repo, &request, planned.issuer.as_mut(), signer, store, interruption)?;
    if let Err(failed) = crate::ops::notifications::required(repo, &issued.record) {
        use crate::ops::revoke::{RevokeSelector, RevokeSpec};
        let spec = RevokeSpec {
            selector: RevokeSelector::Grant(planned.grant_id.clone()),
            reason: Some("a required notification could not be delivered".into()),
            trigger: crate::grant::RevokeTrigger::NotifyFailed,
            profile: planned.profile.clone(),
            timeout: planned.timeout,
        };
        // Whatever happens to the revocation, nothing of this grant stays to be handed out.
        store.forget(&planned.grant_id);
        drop(issued.secret);
        let ended = match crate::ops::revoke::revoke(repo, &spec, signer, crate::clock::now()) {
            Ok(outcomes) if outcomes.iter().all(|o| o.result == Some(crate::grant::RevokeResult::Done)) => {
                "revoked".to_owned()
            }
            Ok(_) => "recorded for revocation (pending: `tpa sweep` retries)".to_owned(),
            Err(e) => format!("NOT revoked ({e}): run `tpa revoke {}`", planned.grant_id),
        };
        return Err(RequestError::NotifyFailed {
            grant_id: planned.grant_id,
            ended,
            failures: failed.failures,
        });
    }
    Ok(Granted {
        record: issued.record,
        secret: issued.secret,
        policy_commit: planned.trust.commit.to_string(),
        mint_elapsed: issued.mint_elapsed,
        keyring_elapsed: issued.keyring_elapsed,
    })
}

/// The session policy sent to STS: the role's own (read from the trust ref) plus, unless the role
/// allows chaining, a deny on assuming other roles and on IAM — a deny on this role does not follow
/// a session into another role. A session policy only narrows, so without a role policy the deny
/// rides on an allow-all.
fn session_policy(
    repo: &Repository,
    trust: &TrustRef,
    role: &RolePolicy,
) -> Result<(Option<String>, Option<Scope>), RequestError> {
    let base = match &role.session_policy {
        Some(path) => {
            let bytes = trust.read_file(repo, path)?.ok_or_else(|| RequestError::SessionPolicyMissing {
                role: role.name.clone(),
                path: path.clone(),
                trust: trust.refname.clone(),
            })?;
            let invalid = |message: String| RequestError::SessionPolicyInvalid {
                role: role.name.clone(),
                path: path.clone(),
                message,
            };
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
            if !value.get("Statement").is_some_and(|s| s.is_array() || s.is_object()) {
                return Err(invalid("it has no Statement".into()));
            }
            Some(value)
        }
        None => None,
    };
    let deny = json!({
        "Sid": "TpaNoRoleChaining",
        "Effect": "Deny",
        "Action": ["sts:AssumeRole*", "iam:*"],
        "Resource": "*"
    });
    let document = match (base, role.allow_role_chaining) {
        (None, true) => return Ok((None, None)),
        (Some(policy), true) => policy,
        (Some(mut policy), false) => {
            let statements = policy.get_mut("Statement").expect("checked above");
            if statements.is_object() {
                *statements = json!([statements.take()]);
            }
            statements.as_array_mut().expect("an array now").push(deny);
            policy
        }
        (None, false) => json!({
            "Version": "2012-10-17",
            "Statement": [{"Sid": "TpaRoleScope", "Effect": "Allow", "Action": "*", "Resource": "*"}, deny]
        }),
    };
    let text = serde_json::to_string(&document).expect("JSON serializes");
    let name = role.session_policy.clone().unwrap_or_else(|| "tpa:no-role-chaining".to_owned());
    if text.chars().count() > SESSION_POLICY_MAX {
        return Err(RequestError::SessionPolicyTooLong {
            role: role.name.clone(),
            path: name,
            length: text.chars().count(),
        });
    }
    let scope = Scope { name, sha256: sha256_hex(text.as_bytes()) };
    Ok((Some(text), Some(scope)))
}

/// tpa-grant, tpa-principal, tpa-commit, tpa-branch, with values encoded to STS's tag characters.
fn session_tags(grant_id: &GrantId, ctx: &GitContext) -> Vec<(String, String)> {
    let branch = ctx.branch.strip_prefix("refs/heads/").unwrap_or(&ctx.branch);
    vec![
        ("tpa-grant".to_owned(), grant_id.to_string()),
        ("tpa-principal".to_owned(), tag_value(&ctx.principal.email)),
        ("tpa-commit".to_owned(), ctx.commit.to_string()),
        ("tpa-branch".to_owned(), tag_value(branch)),
    ]
}

/// STS tag values allow letters, digits, spaces and `_ . : / = + - @`, up to 256 characters.
/// Anything else becomes `=XX` per UTF-8 byte (and `=` itself `=3D`), so the value stays readable
/// and reversible; the ledger keeps the exact text.
pub fn tag_value(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let allowed = c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '.' | ':' | '/' | '+' | '-' | '@');
        let encoded = if allowed {
            c.to_string()
        } else {
            c.encode_utf8(&mut [0; 4]).bytes().map(|b| format!("={b:02X}")).collect()
        };
        if out.len() + encoded.len() > TAG_VALUE_MAX {
            break;
        }
        out.push_str(&encoded);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::tag_value;

    #[test]
    fn tag_values_stay_in_the_sts_character_set() {
        assert_eq!(tag_value("hotfix/INC-1"), "hotfix/INC-1");
        assert_eq!(tag_value("a$(b)=c"), "a=24=28b=29=3Dc");
        assert_eq!(tag_value("é"), "=C3=A9");
        let long = tag_value(&"$".repeat(500));
        assert!(long.len() <= 256 && long.len().is_multiple_of(3), "{}", long.len());
        assert!(tag_value(&"x".repeat(300)).len() == 256);
    }
}

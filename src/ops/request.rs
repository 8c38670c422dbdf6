//! `tpa request`: policy -> intent record -> STS -> grant record -> keyring. Fail closed: the
//! secret goes nowhere unless its grant record was written first.

use chrono::{DateTime, Utc};
use git2::Repository;
use serde_json::json;

use crate::grant::{self, GrantId, Record, RecordKind, Scope, sha256_hex};
use crate::ledger::signing::Signer;
use crate::ledger::{self, LedgerError};
use crate::ops::context::{self, ContextError, GitContext};
use crate::ops::database;
use crate::policy::{DatabasePolicy, DbProvider, Policy, PolicyError, PolicyRefusal, RolePolicy};
use crate::provider::aws_sts::{AwsSts, StsOptions};
use crate::provider::{Credentials, MintError, MintRequest};
use crate::secrets::{self, SecretsError};
use crate::trust::{TrustError, TrustRef};

pub const POLICY_PATH: &str = ".tpa/policy.toml";
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
    #[error(
        "there is no {POLICY_PATH} at the trust ref {0}: commit one there (`tpa init` writes a starting point) \
         and get it merged through review; tpa never reads policy from your working tree"
    )]
    NoPolicy(String),
    #[error("{0}")]
    Policy(#[from] PolicyError),
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
    #[error("{error}\n(recorded as failed grant {grant_id})")]
    DbMint { grant_id: GrantId, error: crate::ops::database::DbAdminError },
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error("cannot write the intent record, so nothing was asked of AWS: {0}")]
    Intent(#[source] LedgerError),
    #[error("{error}\n(recorded as failed grant {grant_id})")]
    Mint { grant_id: GrantId, error: MintError },
    #[error(
        "AWS issued credentials for grant {grant_id}, but the grant record could not be written ({source}); \
         the credentials were discarded and not handed out. They stay valid at AWS until {expires_at} \
         unless denied: run `tpa request` again once the ledger is writable"
    )]
    GrantRecord {
        grant_id: GrantId,
        expires_at: DateTime<Utc>,
        #[source]
        source: LedgerError,
    },
    #[error("nothing was asked of the provider: the OS keyring cannot keep the credentials ({source})")]
    KeyringUnusable {
        #[source]
        source: SecretsError,
    },
    #[error(
        "grant {grant_id} is recorded, but its credentials could not be kept in the OS keyring: {source}"
    )]
    Keyring {
        grant_id: GrantId,
        #[source]
        source: SecretsError,
    },
    #[error("git error: {0}")]
    Git(#[from] git2::Error),
}

/// What a successful request produced. `credentials` is for `--format` output only; everything
/// else goes through the keyring.
pub struct Granted {
    pub record: Record,
    pub credentials: Credentials,
    pub policy_commit: String,
    /// How long the STS round trip and the keyring write took (for benchmarks).
    pub sts_elapsed: std::time::Duration,
    pub keyring_elapsed: std::time::Duration,
}

/// Everything decided before any record is written or any AWS call made.
pub struct Plan {
    pub ctx: GitContext,
    pub trust: TrustRef,
    pub role: RolePolicy,
    pub database: Option<DatabasePolicy>,
    pub reason: String,
    pub ttl_seconds: u64,
    pub mint: MintRequest,
    pub scope: Option<Scope>,
    pub grant_id: GrantId,
    pub now: DateTime<Utc>,
}

/// Reads policy from the trust ref and checks the request against it. No side effects.
pub fn plan(repo: &Repository, spec: &RequestSpec, now: DateTime<Utc>) -> Result<Plan, RequestError> {
    let trust = TrustRef::resolve(repo)?;
    let (policy, _) = load_policy(repo, &trust)?;
    let ctx = context::capture(repo, Some(&trust))?;
    let reason = spec.reason.clone().unwrap_or_default();
    policy.check_reason(&reason)?;
    let database = match &spec.database {
        Some(name) => {
            let database = policy.database(name)?.clone();
            if database.provider != DbProvider::RdsIam {
                return Err(RequestError::NotRdsIam { database: name.clone() });
            }
            Some(database)
        }
        None => None,
    };
    let role_name = database.as_ref().and_then(|d| d.role.clone()).unwrap_or_else(|| spec.role.clone());
    let role = policy.role(&role_name)?.clone();
    let max_ttl = database.as_ref().map_or(role.max_ttl, |d| d.max_ttl.min(role.max_ttl));
    let ttl_seconds = spec.ttl_seconds.unwrap_or_else(|| policy.default_ttl_within(max_ttl));
    role.check_ttl(ttl_seconds)?;
    if let Some(database) = &database {
        database.check_ttl(ttl_seconds)?;
    }
    policy.check_branch(&ctx.branch)?;
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
    let grant_id = GrantId::generate(now);
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
    Ok(Plan { ctx, trust, role, database, reason, ttl_seconds, mint, scope, grant_id, now })
}

pub fn load_policy(repo: &Repository, trust: &TrustRef) -> Result<(Policy, String), RequestError> {
    let bytes =
        trust.read_file(repo, POLICY_PATH)?.ok_or_else(|| RequestError::NoPolicy(trust.refname.clone()))?;
    let source = format!("{}:{POLICY_PATH}", trust.refname);
    let text = String::from_utf8_lossy(&bytes);
    Ok((Policy::parse(&text, &source)?, trust.commit.to_string()))
}

/// Executes a plan: intent, AssumeRole, grant record, keyring.
pub fn execute(
    repo: &Repository,
    plan: Plan,
    signer: &Signer,
    sts: &StsOptions,
    faults: &Faults,
) -> Result<Granted, RequestError> {
    // A keyring that is locked, full or refuses shows itself before anything exists to undo.
    let until = plan.now + chrono::Duration::seconds(plan.ttl_seconds as i64);
    secrets::reserve(&plan.grant_id, until).map_err(|source| RequestError::KeyringUnusable { source })?;
    let intent = record(&plan, RecordKind::Intent, plan.now);
    let appended = ledger::append(repo, &intent, signer).map_err(RequestError::Intent)?;
    let intent_sha256 = appended.payload_sha256;

    let sts =
        AwsSts::new(&StsOptions { region: plan.role.region.clone().or(sts.region.clone()), ..sts.clone() });
    let started = std::time::Instant::now();
    let minted = sts.assume_role(&plan.mint);
    let sts_elapsed = started.elapsed();
    let now = Utc::now().max(plan.now);
    let credentials = match minted {
        Ok(credentials) => credentials,
        Err(error) => {
            let mut failed = record(&plan, RecordKind::Failed, now);
            failed.intent_sha256 = Some(intent_sha256);
            failed.error = Some(error.to_string());
            // The failure itself is the news; a ledger problem now is secondary and reported by verify.
            let _ = ledger::append(repo, &failed, signer);
            let _ = secrets::delete_credentials(&plan.grant_id);
            return Err(RequestError::Mint { grant_id: plan.grant_id, error });
        }
    };

    let mut granted = record(&plan, RecordKind::Grant, now);
    granted.intent_sha256 = Some(intent_sha256);
    granted.expires_at = Some(credentials.expiration);
    granted.credential_fingerprint = Some(grant::credential_fingerprint(&credentials.access_key_id));
    let written = match faults.fail_grant_record {
        true => Err(LedgerError::BadCommit("injected fault: grant record write".into())),
        false => ledger::append(repo, &granted, signer),
    };
    if let Err(source) = written {
        let expires_at = credentials.expiration;
        drop(credentials); // zeroized: nothing of it is kept or shown
        let _ = secrets::delete_credentials(&plan.grant_id);
        return Err(RequestError::GrantRecord { grant_id: plan.grant_id, expires_at, source });
    }
    // The hooks' fast path: a local index of the grants this clone holds. Best effort: `tpa sweep`
    // rebuilds it from the ledger.
    let _ = crate::ops::sweep::index_grant(
        repo,
        &plan.grant_id,
        crate::state::LocalGrant {
            branch: plan.ctx.branch.clone(),
            expires_at: Some(credentials.expiration),
        },
    );
    let started = std::time::Instant::now();
    secrets::store_credentials(&plan.grant_id, &credentials)
        .map_err(|source| RequestError::Keyring { grant_id: plan.grant_id.clone(), source })?;
    let keyring_elapsed = started.elapsed();
    Ok(Granted {
        record: granted,
        credentials,
        policy_commit: plan.trust.commit.to_string(),
        sts_elapsed,
        keyring_elapsed,
    })
}

/// Faults a test build can inject; always off in release builds.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub fail_grant_record: bool,
}

fn record(plan: &Plan, kind: RecordKind, issued_at: DateTime<Utc>) -> Record {
    Record {
        provider: if plan.database.is_some() { "rds-iam" } else { "aws-sts" }.to_owned(),
        target: plan.role.arn.clone(),
        role: Some(plan.role.name.clone()),
        database: plan.database.as_ref().map(|d| d.name.clone()),
        scope: plan.scope.clone(),
        expires_at: Some(plan.now + chrono::Duration::seconds(plan.ttl_seconds as i64)),
        ..plan.ctx.record(kind, &plan.grant_id, issued_at, &plan.reason, Some(plan.trust.commit.to_string()))
    }
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

/// What a request turned into, before anything is written: an STS session (roles and rds-iam
/// databases), or a PostgreSQL login role.
pub enum Planned {
    Sts(Box<Plan>),
    Postgres(Box<PgPlan>),
}

/// A request for a `provider = "postgres"` database, checked against the policy.
pub struct PgPlan {
    pub ctx: GitContext,
    pub trust: TrustRef,
    pub database: DatabasePolicy,
    pub reason: String,
    pub ttl_seconds: u64,
    pub grant_id: GrantId,
    pub now: DateTime<Utc>,
    pub timeout: std::time::Duration,
}

/// Plans any request: postgres databases get a [`PgPlan`], everything else an STS [`Plan`].
pub fn plan_request(
    repo: &Repository,
    spec: &RequestSpec,
    now: DateTime<Utc>,
) -> Result<Planned, RequestError> {
    if let Some(name) = &spec.database {
        let trust = TrustRef::resolve(repo)?;
        let (policy, _) = load_policy(repo, &trust)?;
        let database = policy.database(name)?.clone();
        if database.provider == DbProvider::Postgres {
            let ctx = context::capture(repo, Some(&trust))?;
            let reason = spec.reason.clone().unwrap_or_default();
            policy.check_reason(&reason)?;
            let ttl_seconds = spec.ttl_seconds.unwrap_or_else(|| policy.default_ttl_within(database.max_ttl));
            database.check_ttl(ttl_seconds)?;
            policy.check_branch(&ctx.branch)?;
            return Ok(Planned::Postgres(Box::new(PgPlan {
                ctx,
                trust,
                database,
                reason,
                ttl_seconds,
                grant_id: GrantId::generate(now),
                now,
                timeout: spec.sts.timeout,
            })));
        }
    }
    plan(repo, spec, now).map(|plan| Planned::Sts(Box::new(plan)))
}

/// Executes a postgres plan: intent, a login role made by the admin connection, grant record,
/// keyring. The keyring entry holds the role name as its key id and the password as its secret.
pub fn execute_postgres(repo: &Repository, plan: PgPlan, signer: &Signer) -> Result<Granted, RequestError> {
    let valid_until = plan.now + chrono::Duration::seconds(plan.ttl_seconds as i64);
    secrets::reserve(&plan.grant_id, valid_until)
        .map_err(|source| RequestError::KeyringUnusable { source })?;
    let intent = pg_record(&plan, RecordKind::Intent, plan.now);
    let intent_sha256 = ledger::append(repo, &intent, signer).map_err(RequestError::Intent)?.payload_sha256;
    let role = database::pg_role_name(&plan.grant_id);
    let started = std::time::Instant::now();
    let mut admin = None;
    let created = database::pg_admin(&plan.database, plan.timeout).and_then(|mut pg| {
        let password =
            pg.create_login(&role, valid_until, &plan.database.grant_roles, plan.database.connection_limit)?;
        admin = Some(pg);
        Ok(password)
    });
    let elapsed = started.elapsed();
    let now = Utc::now().max(plan.now);
    let password = match created {
        Ok(password) => password,
        Err(error) => {
            let mut failed = pg_record(&plan, RecordKind::Failed, now);
            failed.intent_sha256 = Some(intent_sha256);
            failed.error = Some(error.to_string());
            let _ = ledger::append(repo, &failed, signer);
            let _ = secrets::delete_credentials(&plan.grant_id);
            return Err(RequestError::DbMint { grant_id: plan.grant_id, error });
        }
    };
    let mut granted = pg_record(&plan, RecordKind::Grant, now);
    granted.intent_sha256 = Some(intent_sha256);
    granted.expires_at = Some(valid_until);
    granted.credential_fingerprint = Some(grant::credential_fingerprint(&role));
    if let Err(source) = ledger::append(repo, &granted, signer) {
        // Unrecorded access must not exist: the role goes again (VALID UNTIL ends it otherwise).
        if let Some(pg) = admin.as_mut() {
            let _ = pg.revoke_login(&role);
        }
        let _ = secrets::delete_credentials(&plan.grant_id);
        return Err(RequestError::GrantRecord { grant_id: plan.grant_id, expires_at: valid_until, source });
    }
    let _ = crate::ops::sweep::index_grant(
        repo,
        &plan.grant_id,
        crate::state::LocalGrant { branch: plan.ctx.branch.clone(), expires_at: Some(valid_until) },
    );
    let credentials = Credentials {
        access_key_id: role,
        secret_access_key: password,
        session_token: zeroize::Zeroizing::new(String::new()),
        expiration: valid_until,
    };
    let started = std::time::Instant::now();
    secrets::store_credentials(&plan.grant_id, &credentials)
        .map_err(|source| RequestError::Keyring { grant_id: plan.grant_id.clone(), source })?;
    Ok(Granted {
        record: granted,
        credentials,
        policy_commit: plan.trust.commit.to_string(),
        sts_elapsed: elapsed,
        keyring_elapsed: started.elapsed(),
    })
}

/// Where a postgres grant's role lives, as recorded: never with credentials.
pub fn pg_target(database: &DatabasePolicy) -> String {
    format!("postgresql://{}:{}/{}", database.host, database.port, database.dbname)
}

fn pg_record(plan: &PgPlan, kind: RecordKind, issued_at: DateTime<Utc>) -> Record {
    Record {
        provider: "postgres".to_owned(),
        target: pg_target(&plan.database),
        database: Some(plan.database.name.clone()),
        expires_at: Some(plan.now + chrono::Duration::seconds(plan.ttl_seconds as i64)),
        ..plan.ctx.record(kind, &plan.grant_id, issued_at, &plan.reason, Some(plan.trust.commit.to_string()))
    }
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

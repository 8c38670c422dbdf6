//! `tpa request`: policy -> intent record -> STS -> grant record -> keyring. Fail closed: the
//! secret goes nowhere unless its grant record was written first.

use chrono::{DateTime, Utc};
use git2::Repository;
use serde_json::json;

use crate::grant::{self, GrantId, Record, RecordKind, Scope, sha256_hex};
use crate::interrupt::Interruption;
use crate::ledger::signing::Signer;
use crate::ledger::{self, LedgerError};
use crate::ops::context::{self, ContextError, GitContext};
use crate::ops::database;
use crate::policy::{DatabasePolicy, DbProvider, POLICY_PATH, PolicyRefusal, RolePolicy};
use crate::provider::aws_sts::{AwsSts, StsOptions};
use crate::provider::{Credentials, MintError, MintRequest};
use crate::secrets::{self, SecretsError};
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
    #[error("{error}\n(recorded as failed grant {grant_id})")]
    DbMint { grant_id: GrantId, error: crate::ops::database::DbAdminError },
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(
        "your signing key {fingerprint} is not a valid signer for {principal} in .tpa/allowed_signers at \
         {trust} ({why}), so nothing was asked of the provider: records it signs would not verify. \
         Commit your line (`tpa init` writes it) and get it merged into {trust} through review"
    )]
    UntrustedSigner { fingerprint: String, principal: String, trust: String, why: String },
    #[error(transparent)]
    Signers(#[from] crate::ops::ledger::InspectError),
    #[error("cannot write the intent record, so nothing was asked of AWS: {0}")]
    Intent(#[source] LedgerError),
    #[error("{error}\n(recorded as failed grant {grant_id})")]
    Mint { grant_id: GrantId, error: MintError },
    #[error(
        "the provider issued credentials for grant {grant_id}, but the grant record could not be written \
         ({source}); the credentials were discarded and not handed out, and {ended}. Run `tpa request` \
         again once the ledger is writable",
        ended = if *denied { "their session was ended" } else {
            "their session could NOT be ended now (it lasts until {expires_at} unless `tpa sweep` denies it)"
        }
    )]
    GrantRecord {
        grant_id: GrantId,
        expires_at: DateTime<Utc>,
        denied: bool,
        #[source]
        source: LedgerError,
    },
    #[error("nothing was asked of the provider: the OS keyring cannot keep the credentials ({source})")]
    KeyringUnusable {
        #[source]
        source: SecretsError,
    },
    #[error(
        "grant {grant_id} was recorded, but its credentials could not be kept in the OS keyring ({source}); \
         the session was {ended} and nothing was handed out"
    )]
    Keyring {
        grant_id: GrantId,
        ended: String,
        #[source]
        source: SecretsError,
    },
    #[error(
        "interrupted before anything was asked of the provider{}",
        if *recorded { format!(": recorded as failed grant {grant_id}") } else { String::new() }
    )]
    Interrupted { grant_id: GrantId, recorded: bool },
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
    let (policy, _) = crate::policy::load(repo, &trust)?;
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

/// Executes a plan: intent, AssumeRole, grant record, keyring.
pub fn execute(
    repo: &Repository,
    plan: Plan,
    signer: &Signer,
    sts: &StsOptions,
    faults: &Faults,
    interruption: &Interruption,
) -> Result<Granted, RequestError> {
    check_signer(repo, &plan.trust, signer, &plan.ctx.principal.email, plan.now)?;
    // A keyring that is locked, full or refuses shows itself before anything exists to undo.
    let until = plan.now + chrono::Duration::seconds(plan.ttl_seconds as i64);
    secrets::reserve(&plan.grant_id, until).map_err(|source| RequestError::KeyringUnusable { source })?;
    if interruption.is_set() {
        let _ = secrets::delete_credentials(&plan.grant_id);
        return Err(RequestError::Interrupted { grant_id: plan.grant_id, recorded: false });
    }
    let intent = record(&plan, RecordKind::Intent, plan.now);
    let appended = match ledger::append(repo, &intent, signer) {
        Ok(appended) => appended,
        Err(e) => {
            let _ = secrets::delete_credentials(&plan.grant_id);
            return Err(RequestError::Intent(e));
        }
    };
    let intent_sha256 = appended.payload_sha256;
    if interruption.is_set() {
        let mut failed = record(&plan, RecordKind::Failed, Utc::now().max(plan.now));
        failed.intent_sha256 = Some(intent_sha256);
        return Err(end_interrupted(repo, failed, signer));
    }

    // From here on AWS may have issued credentials: an interruption waits for the outcome to be
    // recorded, so that no live session is left without its record.
    let client =
        AwsSts::new(&StsOptions { region: plan.role.region.clone().or(sts.region.clone()), ..sts.clone() });
    let started = std::time::Instant::now();
    let minted = client.assume_role(&plan.mint);
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
        // Unrecorded access must not stay usable: deny the session, best effort (the intent record
        // already names it, and the sweep denies intents that never got an outcome).
        use crate::provider::aws_iam::{AwsIam, RevocationTarget, session_names};
        let iam = AwsIam::new(sts.profile.as_deref(), sts.timeout);
        let denied = RevocationTarget::for_role(&plan.role.arn)
            .and_then(|target| iam.deny(&target, &session_names([&plan.grant_id]), &Default::default()))
            .is_ok();
        return Err(RequestError::GrantRecord { grant_id: plan.grant_id, expires_at, denied, source });
    }
    // The hooks' fast path: a local index of the grants this clone holds. Best effort: `tpa sweep`
    // rebuilds it from the ledger.
    let _ = crate::ops::sweep::index_grant(
        repo,
        &plan.grant_id,
        crate::state::LocalGrant {
            branch: plan.ctx.branch.clone(),
            expires_at: Some(credentials.expiration),
            target: Some(granted.target.clone()),
            provider: Some(granted.provider.clone()),
        },
    );
    let started = std::time::Instant::now();
    let stored = match faults.fail_keyring_store {
        true => Err(SecretsError::Unavailable("injected fault: keyring store".into())),
        false => secrets::store_credentials(&plan.grant_id, &credentials),
    };
    if let Err(source) = stored {
        drop(credentials);
        let ended = end_undelivered(repo, &plan.grant_id, signer, sts.profile.clone(), sts.timeout);
        return Err(RequestError::Keyring { grant_id: plan.grant_id, ended, source });
    }
    let keyring_elapsed = started.elapsed();
    Ok(Granted {
        record: granted,
        credentials,
        policy_commit: plan.trust.commit.to_string(),
        sts_elapsed,
        keyring_elapsed,
    })
}

/// The signer must be one the trust ref's allowed_signers accepts for this principal now: a grant
/// whose records would not verify is refused before anything is minted.
fn check_signer(
    repo: &Repository,
    trust: &TrustRef,
    signer: &Signer,
    principal: &str,
    now: DateTime<Utc>,
) -> Result<(), RequestError> {
    use crate::ledger::signers::SignerCheck;
    let signers = crate::ops::ledger::load_signers(repo, trust)?;
    let why = match signers.check(signer.public_key.key_data(), principal, now) {
        SignerCheck::Allowed => return Ok(()),
        SignerCheck::UnknownKey => "the key is not listed".to_owned(),
        SignerCheck::OtherPrincipal(others) => format!("the key is listed for {others}"),
        SignerCheck::WrongNamespace => "the key's line does not allow namespace \"tpa\"".to_owned(),
        SignerCheck::NotValidAt => "the key's line is not valid now (valid-after/valid-before)".to_owned(),
    };
    Err(RequestError::UntrustedSigner {
        fingerprint: signer.public_key.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
        principal: principal.to_owned(),
        trust: trust.refname.clone(),
        why,
    })
}

/// Records a request interrupted before anything was minted as failed, and drops its keyring
/// reservation.
fn end_interrupted(repo: &Repository, mut failed: Record, signer: &Signer) -> RequestError {
    failed.error = Some("interrupted before anything was asked of the provider".to_owned());
    let grant_id = failed.grant_id.clone();
    let _ = ledger::append(repo, &failed, signer);
    let _ = secrets::delete_credentials(&grant_id);
    RequestError::Interrupted { grant_id, recorded: true }
}

/// A recorded grant whose credentials could not be handed over is ended at once: denied and
/// recorded as revoked (trigger `undelivered`). Returns how it ended, for the error message.
fn end_undelivered(
    repo: &Repository,
    grant_id: &GrantId,
    signer: &Signer,
    profile: Option<String>,
    timeout: std::time::Duration,
) -> String {
    use crate::ops::revoke::{RevokeSelector, RevokeSpec};
    let spec = RevokeSpec {
        selector: RevokeSelector::Grant(grant_id.clone()),
        reason: Some("its credentials could not be kept in the OS keyring".into()),
        trigger: crate::grant::RevokeTrigger::Undelivered,
        profile,
        timeout,
    };
    let _ = secrets::delete_credentials(grant_id);
    match crate::ops::revoke::revoke(repo, &spec, signer, crate::clock::now()) {
        Ok(outcomes) if outcomes.iter().all(|o| o.result == Some(crate::grant::RevokeResult::Done)) => {
            "revoked".to_owned()
        }
        Ok(_) => "recorded for revocation (pending: `tpa sweep` retries)".to_owned(),
        Err(e) => format!("NOT revoked ({e}): run `tpa revoke {grant_id}`"),
    }
}

/// Faults a test build can inject; always off in release builds.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub fail_grant_record: bool,
    pub fail_keyring_store: bool,
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
        let (policy, _) = crate::policy::load(repo, &trust)?;
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
pub fn execute_postgres(
    repo: &Repository,
    plan: PgPlan,
    signer: &Signer,
    faults: &Faults,
    interruption: &Interruption,
) -> Result<Granted, RequestError> {
    check_signer(repo, &plan.trust, signer, &plan.ctx.principal.email, plan.now)?;
    let valid_until = plan.now + chrono::Duration::seconds(plan.ttl_seconds as i64);
    secrets::reserve(&plan.grant_id, valid_until)
        .map_err(|source| RequestError::KeyringUnusable { source })?;
    if interruption.is_set() {
        let _ = secrets::delete_credentials(&plan.grant_id);
        return Err(RequestError::Interrupted { grant_id: plan.grant_id, recorded: false });
    }
    let intent = pg_record(&plan, RecordKind::Intent, plan.now);
    let intent_sha256 = match ledger::append(repo, &intent, signer) {
        Ok(appended) => appended.payload_sha256,
        Err(e) => {
            let _ = secrets::delete_credentials(&plan.grant_id);
            return Err(RequestError::Intent(e));
        }
    };
    if interruption.is_set() {
        let mut failed = pg_record(&plan, RecordKind::Failed, Utc::now().max(plan.now));
        failed.intent_sha256 = Some(intent_sha256);
        return Err(end_interrupted(repo, failed, signer));
    }
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
        let denied = admin.as_mut().is_some_and(|pg| pg.revoke_login(&role).is_ok());
        let _ = secrets::delete_credentials(&plan.grant_id);
        return Err(RequestError::GrantRecord {
            grant_id: plan.grant_id,
            expires_at: valid_until,
            denied,
            source,
        });
    }
    let _ = crate::ops::sweep::index_grant(
        repo,
        &plan.grant_id,
        crate::state::LocalGrant {
            branch: plan.ctx.branch.clone(),
            expires_at: Some(valid_until),
            target: Some(granted.target.clone()),
            provider: Some(granted.provider.clone()),
        },
    );
    let credentials = Credentials {
        access_key_id: role,
        secret_access_key: password,
        session_token: zeroize::Zeroizing::new(String::new()),
        expiration: valid_until,
    };
    let started = std::time::Instant::now();
    let stored = match faults.fail_keyring_store {
        true => Err(SecretsError::Unavailable("injected fault: keyring store".into())),
        false => secrets::store_credentials(&plan.grant_id, &credentials),
    };
    if let Err(source) = stored {
        drop(credentials);
        let ended = end_undelivered(repo, &plan.grant_id, signer, None, plan.timeout);
        return Err(RequestError::Keyring { grant_id: plan.grant_id, ended, source });
    }
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

//! `tpa request`: the policy at the trust ref decides what may be asked for and how; the result is
//! a planned grant with its provider's [`Issuer`], which `ops::issue` (the one executor every grant
//! goes through) turns into records, a secret and a keyring entry. Then the policy's required
//! webhooks are told, before anything is handed out: one that cannot be told ends the grant.

use chrono::{DateTime, Utc};
use git2::Repository;
use serde_json::json;

use crate::grant::RecordKind;
use crate::grant::{GrantId, Record, Scope, sha256_hex};
use crate::interrupt::Interruption;
use crate::ledger::delivery::{self, DeliveryKey};
use crate::ledger::signing::Signer;
use crate::ops::approval::Quorum;
use crate::ops::context::{self, ContextError, GitContext};
use crate::ops::issue::{self, IssueError, IssueRequest};
use crate::policy::{ApprovalRules, DbProvider, Mint, NotifyEvent, POLICY_PATH, PolicyRefusal, RolePolicy};
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
    #[error(transparent)]
    Ledger(#[from] crate::ops::ledger::InspectError),
    #[error(
        "grant {grant_id} was {ended} and not handed out: a required notification could not be delivered ({})",
        failures.join("; ")
    )]
    NotifyFailed { grant_id: GrantId, ended: String, failures: Vec<String> },
    #[error(
        "{what} does not allow break-glass: ask for approval (without --break-glass), or set `break_glass = true` for it in .tpa/policy.toml through review"
    )]
    BreakGlassNotAllowed { what: String },
    #[error("request {grant_id} was refused: {why}")]
    BrokerRefused { grant_id: GrantId, why: String },
    #[error("grant {grant_id} is not trusted: {why}; nothing was taken from its delivery")]
    NotFromTheBroker { grant_id: GrantId, why: String },
    #[error(
        "grant {grant_id}'s delivery could not be taken: {why}. The grant stays until it expires: `tpa revoke {grant_id}` ends it, then ask again"
    )]
    Delivery { grant_id: GrantId, why: String },
    #[error("no request {0} in the ledger: `tpa status --history` lists yours")]
    UnknownRequest(GrantId),
    #[error("request {grant_id} was made by {by}: only they can resume it")]
    NotYourRequest { grant_id: GrantId, by: String },
    #[error("request {grant_id} was denied by {by}: {reason}")]
    Denied { grant_id: GrantId, by: String, reason: String },
    #[error("request {grant_id} cannot be granted: {why}")]
    RequestClosed { grant_id: GrantId, why: String },
    #[error(
        "stopped waiting for approvals: request {grant_id} stays pending; `tpa request --resume {grant_id}` waits again (or mints, once approved)"
    )]
    WaitInterrupted { grant_id: GrantId },
    #[error("git error: {0}")]
    Git(#[from] git2::Error),
}

/// What a successful request produced. `secret` is for `--format` output only; everything else
/// goes through the keyring.
pub struct Granted {
    pub record: Record,
    pub secret: Secret,
    pub policy_commit: String,
    /// How long the placeholder and the intent record, the provider's round trip and the keyring
    /// write took (for benchmarks).
    pub intent_elapsed: std::time::Duration,
    pub mint_elapsed: std::time::Duration,
    pub keyring_elapsed: std::time::Duration,
    /// Minted by the broker and taken from its delivery (the broker told the webhooks).
    pub delivered: bool,
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
    /// Who must approve it first (none by default), and whether break-glass is allowed.
    pub rules: ApprovalRules,
    /// The role of a role grant, for a request to resume with.
    pub role: Option<String>,
    pub mfa_code: Option<String>,
}

impl Planned {
    pub fn kind(&self) -> ProviderKind {
        self.issuer.kind()
    }

    fn issuer_role(&self) -> Option<String> {
        self.role.clone()
    }

    /// Minted here, as soon as asked: no approvals to wait for, no broker to mint it.
    fn mints_when_asked(&self) -> bool {
        self.rules.approvals == 0 && self.rules.mint != Mint::Broker
    }
}

/// Reads policy from the trust ref and checks the request, made here and now (HEAD's branch and
/// commit), against it. Writes nothing; a request that mints at once starts making the provider's
/// client and fetching the base credentials ([`crate::provider::Issuer::prepare`]).
pub fn plan(repo: &Repository, spec: &RequestSpec, now: DateTime<Utc>) -> Result<Planned, RequestError> {
    let trust = TrustRef::resolve(repo)?;
    let ctx = context::capture(repo, Some(&trust))?;
    let mut planned = plan_in(repo, spec, ctx, trust, GrantId::generate(now), now, None)?;
    if planned.mints_when_asked() {
        // Minted here and at once: the provider's client is made while the signer is opened and
        // the intent recorded.
        planned.issuer.prepare();
    }
    Ok(planned)
}

/// Plans a request in a given context (a request record's, when it resumes after approval, or a
/// broker mints it). `grantee`: whom the session is for, when not the context's principal (the
/// broker's): its session tags name them.
fn plan_in(
    repo: &Repository,
    spec: &RequestSpec,
    ctx: GitContext,
    trust: TrustRef,
    grant_id: GrantId,
    now: DateTime<Utc>,
    grantee: Option<&crate::grant::Principal>,
) -> Result<Planned, RequestError> {
    let (policy, _) = crate::policy::load(repo, &trust)?;
    let reason = spec.reason.clone().unwrap_or_default();
    policy.check_reason(&reason)?;
    policy.check_branch(&ctx.branch)?;
    let rules =
        policy.approval_rules(Some(&spec.role), spec.database.as_deref()).cloned().unwrap_or_default();
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
            rules,
            role: None,
            mfa_code: spec.mfa_code.clone(),
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
    let grantee = grantee.unwrap_or(&ctx.principal);
    let tags = if role.session_tags { session_tags(&grant_id, &ctx, &grantee.email) } else { Vec::new() };
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
    let issuer = StsIssuer::new(
        if database.is_some() { ProviderKind::RdsIam } else { ProviderKind::AwsSts },
        mint,
        role.name.clone(),
        database.as_ref().map(|d| d.name.clone()),
        scope,
        StsOptions { region: role.region.clone().or(spec.sts.region.clone()), ..spec.sts.clone() },
    );
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
        rules,
        role: Some(role_name),
        mfa_code: spec.mfa_code.clone(),
    })
}

/// How a request proceeds when its role needs approvals.
#[derive(Clone, Debug, Default)]
pub struct Approach {
    /// `--break-glass`: granted at once (where the policy allows it), reviewed after the fact.
    pub break_glass: bool,
    /// Wait for the approvals (fetching every `poll`), or return at once with the request made.
    pub wait: Option<std::time::Duration>,
}

/// What a request came to.
pub enum Outcome {
    Granted(Box<Granted>),
    /// The request is recorded (and pushed); it waits for approvals.
    Awaiting {
        grant_id: GrantId,
        quorum: Quorum,
    },
}

/// Runs a planned request: at once where no approval is needed; else a signed `request` record
/// first, then (break-glass) the grant at once, or the wait for approvals ([`resume`]).
/// `on_wait` hears each count while waiting (the CLI's spinner).
pub fn execute(
    repo: &Repository,
    planned: Planned,
    signer: &Signer,
    store: &dyn SecretStore,
    interruption: &Interruption,
    approach: &Approach,
    on_wait: &mut dyn FnMut(&Quorum),
) -> Result<Outcome, RequestError> {
    if approach.break_glass && !planned.rules.break_glass {
        return Err(RequestError::BreakGlassNotAllowed { what: planned.what.clone() });
    }
    if planned.mints_when_asked() && !approach.break_glass {
        return issue_planned(repo, planned, signer, store, interruption, None)
            .map(|g| Outcome::Granted(Box::new(g)));
    }
    let by_broker = planned.rules.mint == Mint::Broker;
    // The request, signed before anything else: what exactly is asked, for approvers to see. Its
    // signer must be one the trust ref accepts, as for any record.
    issue::check_signer(repo, &planned.trust, signer, &planned.ctx.principal.email, planned.now)?;
    // For the broker: a one-time key whose public half the request carries; the broker encrypts
    // the credentials to it. Its secret half stays in this keyring until the delivery is opened.
    let delivery_key = if by_broker {
        let key = DeliveryKey::generate();
        let until = planned.now
            + chrono::Duration::seconds(planned.rules.window as i64)
            + chrono::Duration::seconds(planned.ttl_seconds as i64);
        crate::secrets::store_until(
            &crate::secrets::delivery_account(&planned.grant_id),
            &key.to_secret(),
            until,
        )
        .map_err(|source| IssueError::KeyringUnusable { source })?;
        Some(key.recipient())
    } else {
        None
    };
    let mut record = planned.ctx.record(
        RecordKind::Request,
        &planned.grant_id,
        planned.now,
        &planned.reason,
        Some(planned.trust.commit.to_string()),
    );
    planned.issuer.describe(&mut record);
    record.expires_at = Some(planned.now + chrono::Duration::seconds(planned.ttl_seconds as i64));
    record.approve_by = Some(planned.now + chrono::Duration::seconds(planned.rules.window as i64));
    record.break_glass = approach.break_glass.then_some(true);
    record.delivery_key = delivery_key;
    let request_sha256 =
        crate::ledger::append(repo, &record, signer).map_err(IssueError::Intent)?.payload_sha256;
    // The hooks look after it from now on: merging or abandoning its branch cancels it.
    let _ = crate::state::index_grant(repo, &planned.grant_id, crate::state::LocalGrant::of(&record));
    if approach.break_glass && !by_broker {
        let approved = Approved { request_sha256, approvals: Vec::new(), break_glass: true };
        return issue_planned(repo, planned, signer, store, interruption, Some(approved))
            .map(|g| Outcome::Granted(Box::new(g)));
    }
    // Approvers (and the broker) see the request once it is on the remote, and the webhooks say
    // where to look.
    let _ = crate::ops::sync::push_if_policy_says(repo, std::time::Duration::from_secs(15), by_broker);
    if planned.rules.approvals > 0 && !approach.break_glass {
        crate::ops::notifications::tell(
            repo,
            &record,
            NotifyEvent::ApprovalRequested,
            None,
            crate::clock::now(),
        );
    }
    let grant_id = planned.grant_id.clone();
    let spec = RequestSpec {
        role: planned.issuer_role().unwrap_or_default(),
        database: record.database.clone(),
        reason: Some(planned.reason.clone()),
        ttl_seconds: Some(planned.ttl_seconds),
        mfa_code: planned.mfa_code.clone(),
        sts: StsOptions { profile: planned.profile.clone(), region: None, timeout: planned.timeout },
    };
    resume(repo, &grant_id, &spec, signer, store, interruption, approach.wait, on_wait)
}

/// A request approved by enough approvers (or break-glass): what its intent record names.
pub struct Approved {
    pub request_sha256: String,
    pub approvals: Vec<String>,
    pub break_glass: bool,
}

/// The broker's side of a request: plans it again under the policy at the trust ref now, in the
/// request's context (with the broker as the context's principal, and the requester as the
/// grantee its session tags name), and issues it through the one executor into `store` (the
/// delivery).
#[allow(clippy::too_many_arguments)]
pub fn mint_for(
    repo: &Repository,
    spec: &RequestSpec,
    ctx: GitContext,
    trust: TrustRef,
    grant_id: GrantId,
    grantee: &crate::grant::Principal,
    signer: &Signer,
    store: &dyn SecretStore,
    interruption: &Interruption,
    approved: Approved,
) -> Result<Granted, RequestError> {
    let planned = plan_in(repo, spec, ctx, trust, grant_id, crate::clock::now(), Some(grantee))?;
    issue_planned(repo, planned, signer, store, interruption, Some(approved))
}

/// Continues a request that waits for approvals: fetches the ledger every `wait` (None: once) and
/// counts; with a quorum, plans again under the policy at the trust ref now, in the request's own
/// context (its branch and commit, whatever HEAD is now), and issues, naming the approvals.
#[allow(clippy::too_many_arguments)]
pub fn resume(
    repo: &Repository,
    grant_id: &GrantId,
    spec: &RequestSpec,
    signer: &Signer,
    store: &dyn SecretStore,
    interruption: &Interruption,
    wait: Option<std::time::Duration>,
    on_wait: &mut dyn FnMut(&Quorum),
) -> Result<Outcome, RequestError> {
    loop {
        if crate::gitconfig::GitConfig::of(repo).is_ok_and(|c| !c.remotes().is_empty()) {
            let options = crate::ops::sync::SyncOptions {
                remotes: None,
                timeout: std::time::Duration::from_secs(15),
                interactive: false,
            };
            // Offline is no reason to stop waiting: the next round fetches again.
            let _ = crate::ops::sync::sync(repo, &options);
        }
        let now = crate::clock::now();
        let grant = crate::ops::grants::find(repo, grant_id, now)?
            .ok_or_else(|| RequestError::UnknownRequest(grant_id.clone()))?;
        let trust = TrustRef::resolve(repo)?;
        let (policy, _) = crate::policy::load(repo, &trust)?;
        if grant.request.as_ref().is_some_and(|r| r.delivery_key.is_some()) {
            match from_the_broker(repo, &grant, &policy, store)? {
                Some(granted) => return Ok(Outcome::Granted(Box::new(granted))),
                None => {
                    let break_glass = grant.request.as_ref().is_some_and(|r| r.break_glass == Some(true));
                    let quorum = match crate::ops::approval::rules_for(&policy, &grant) {
                        // The broker mints break-glass at once (where the role allows it).
                        _ if break_glass => Quorum::Reached { approvals: Vec::new() },
                        Some(rules) => crate::ops::approval::evaluate(&grant, &policy, rules, now),
                        None => Quorum::Closed,
                    };
                    if let Quorum::Denied { by, reason } = quorum {
                        return Err(RequestError::Denied { grant_id: grant_id.clone(), by, reason });
                    }
                    on_wait(&quorum);
                    let Some(poll) = wait else {
                        return Ok(Outcome::Awaiting { grant_id: grant_id.clone(), quorum });
                    };
                    pause(poll, interruption, grant_id)?;
                    continue;
                }
            }
        }
        let rules =
            crate::ops::approval::rules_for(&policy, &grant).ok_or_else(|| RequestError::RequestClosed {
                grant_id: grant_id.clone(),
                why: "its role or database is no longer in the policy".into(),
            })?;
        let quorum = crate::ops::approval::evaluate(&grant, &policy, rules, now);
        match quorum {
            Quorum::Reached { approvals } => {
                let request = grant.request.clone().expect("a quorum needs a request");
                let me = context::principal(repo)?;
                if me.email != request.principal.email {
                    return Err(RequestError::NotYourRequest {
                        grant_id: grant_id.clone(),
                        by: request.principal.email,
                    });
                }
                let ctx = GitContext {
                    principal: me,
                    repo_url: request.repo.clone(),
                    branch: request.branch.clone(),
                    commit: git2::Oid::from_str(&request.commit)?,
                    base: request.base.as_deref().and_then(|b| git2::Oid::from_str(b).ok()),
                };
                let ttl = request.expires_at.map(|e| (e - request.issued_at).num_seconds().max(0) as u64);
                let spec = RequestSpec {
                    role: request.role.clone().unwrap_or_default(),
                    database: request.database.clone(),
                    reason: Some(request.reason.clone()),
                    ttl_seconds: ttl,
                    ..spec.clone()
                };
                let planned = plan_in(repo, &spec, ctx, trust, grant_id.clone(), now, None)?;
                let approved = Approved {
                    request_sha256: grant.request_sha256.clone().expect("a quorum needs a request"),
                    approvals,
                    break_glass: false,
                };
                return issue_planned(repo, planned, signer, store, interruption, Some(approved))
                    .map(|g| Outcome::Granted(Box::new(g)));
            }
            Quorum::Denied { by, reason } => {
                return Err(RequestError::Denied { grant_id: grant_id.clone(), by, reason });
            }
            Quorum::Lapsed => {
                return Err(RequestError::RequestClosed {
                    grant_id: grant_id.clone(),
                    why: "no quorum of approvals came within its window: ask again".into(),
                });
            }
            Quorum::Closed => {
                return Err(RequestError::RequestClosed {
                    grant_id: grant_id.clone(),
                    why: format!("it is {}", grant.state),
                });
            }
            Quorum::Waiting { .. } => {
                on_wait(&quorum);
                let Some(poll) = wait else {
                    return Ok(Outcome::Awaiting { grant_id: grant_id.clone(), quorum });
                };
                pause(poll, interruption, grant_id)?;
            }
        }
    }
}

/// Waits `poll` in short steps, so that an interruption stops the wait at once.
fn pause(
    poll: std::time::Duration,
    interruption: &Interruption,
    grant_id: &GrantId,
) -> Result<(), RequestError> {
    let until = std::time::Instant::now() + poll;
    while std::time::Instant::now() < until {
        if interruption.is_set() {
            return Err(RequestError::WaitInterrupted { grant_id: grant_id.clone() });
        }
        std::thread::sleep(std::time::Duration::from_millis(50).min(poll));
    }
    Ok(())
}

/// A request to the broker: None while it waits (for approvals, or for the broker's next pass);
/// the credentials once the broker's signed grant record and its delivery are on the remote; an
/// error when it ended otherwise. The delivery must open with this request's one-time key and be
/// the very credentials the broker's grant record names (by fingerprint): anyone can encrypt to
/// the public key, only the broker signs grant records.
fn from_the_broker(
    repo: &Repository,
    grant: &crate::ops::grants::GrantView,
    policy: &crate::policy::Policy,
    store: &dyn SecretStore,
) -> Result<Option<Granted>, RequestError> {
    use crate::grant::GrantState;
    let grant_id = &grant.grant_id;
    let me = context::principal(repo)?;
    if me.email != grant.grantee().email {
        return Err(RequestError::NotYourRequest {
            grant_id: grant_id.clone(),
            by: grant.grantee().email.clone(),
        });
    }
    let account = crate::secrets::delivery_account(grant_id);
    if !matches!(grant.state, GrantState::AwaitingApproval | GrantState::Active) {
        // Nothing will be delivered: the one-time key has nothing left to open.
        let _ = crate::secrets::delete(&account);
    }
    match grant.state {
        GrantState::AwaitingApproval => return Ok(None),
        GrantState::Failed => {
            return Err(RequestError::BrokerRefused {
                grant_id: grant_id.clone(),
                why: newest_verified(repo, grant_id, RecordKind::Failed)
                    .and_then(|r| r.error)
                    .unwrap_or_else(|| "no reason recorded".into()),
            });
        }
        GrantState::Active => {}
        GrantState::Lapsed => {
            return Err(RequestError::RequestClosed {
                grant_id: grant_id.clone(),
                why: "no quorum of approvals came within its window: ask again".into(),
            });
        }
        state => {
            return Err(RequestError::RequestClosed {
                grant_id: grant_id.clone(),
                why: format!("it is {state}"),
            });
        }
    }
    let issued = grant.issued.clone().expect("an active grant has its grant record");
    let trusted = newest_verified(repo, grant_id, RecordKind::Grant)
        .is_some_and(|record| record == issued && policy.brokers.contains(&record.principal.email));
    if !trusted {
        return Err(RequestError::NotFromTheBroker {
            grant_id: grant_id.clone(),
            why: format!(
                "its grant record is not signed by a trusted broker (it names {})",
                issued.principal.email
            ),
        });
    }
    let remotes = crate::gitconfig::GitConfig::of(repo).map(|c| c.remotes()).unwrap_or_default();
    let refname = delivery::delivery_ref(grant_id);
    let timeout = std::time::Duration::from_secs(15);
    let mut ciphertext = None;
    for remote in &remotes {
        match crate::ops::sync::fetch_remote_blob(repo, remote, &refname, delivery::MAX_DELIVERY, timeout) {
            Ok(Some(bytes)) => {
                ciphertext = Some((remote.clone(), bytes));
                break;
            }
            Ok(None) => {}
            Err(e) => return Err(RequestError::Delivery { grant_id: grant_id.clone(), why: e }),
        }
    }
    let Some((remote, ciphertext)) = ciphertext else {
        return Err(RequestError::Delivery {
            grant_id: grant_id.clone(),
            why: format!(
                "the broker granted it, but there is no delivery under {refname} (picked up elsewhere?)"
            ),
        });
    };
    let bad = |why: String| RequestError::Delivery { grant_id: grant_id.clone(), why };
    let key = crate::secrets::load(&account)
        .map_err(|e| bad(format!("the one-time key is not in the keyring: {e}")))?;
    let key = DeliveryKey::from_secret(&key).map_err(|e| bad(e.to_string()))?;
    let plain = key.open(&ciphertext).map_err(|e| bad(e.to_string()))?;
    let secret = std::str::from_utf8(&plain)
        .ok()
        .and_then(crate::secrets::from_json)
        .ok_or_else(|| bad("the delivery holds no credentials tpa can read".into()))?;
    if issued.credential_fingerprint.as_deref() != Some(secret.fingerprint().as_str()) {
        return Err(bad("the delivery holds other credentials than the broker's grant record names: not made by the broker".into()));
    }
    store.store(grant_id, &secret).map_err(|source| IssueError::KeyringUnusable { source })?;
    // Picked up: the ciphertext goes from the remote, the one-time key from the keyring.
    let _ = crate::ops::sync::delete_remote_ref(repo, &remote, &refname, timeout);
    let _ = crate::secrets::delete(&account);
    let _ = crate::state::index_grant(repo, grant_id, crate::state::LocalGrant::of(&issued));
    Ok(Some(Granted {
        policy_commit: issued.policy_commit.clone().unwrap_or_default(),
        record: issued,
        secret,
        intent_elapsed: std::time::Duration::ZERO,
        mint_elapsed: std::time::Duration::ZERO,
        keyring_elapsed: std::time::Duration::ZERO,
        delivered: true,
    }))
}

/// The grant's newest record of `kind` whose signature verifies with a key trusted for its
/// principal (the broker's grant record, or the `failed` record of a refusal).
fn newest_verified(repo: &Repository, grant_id: &GrantId, kind: RecordKind) -> Option<Record> {
    crate::ops::grants::records_of(repo, grant_id, crate::clock::now())
        .ok()?
        .into_iter()
        .filter(|c| c.is_verified())
        .filter_map(|c| c.record)
        .filter(|r| &r.grant_id == grant_id && r.kind == kind)
        .max_by_key(|r| r.issued_at)
}

/// Issues a planned grant through the one executor, then tells the required webhooks before
/// anything is handed out: a grant they cannot be told of is ended (trigger `notify-failed`) and
/// refused. A break-glass grant is told to every webhook.
fn issue_planned(
    repo: &Repository,
    mut planned: Planned,
    signer: &Signer,
    store: &dyn SecretStore,
    interruption: &Interruption,
    approved: Option<Approved>,
) -> Result<Granted, RequestError> {
    let break_glass = approved.as_ref().is_some_and(|a| a.break_glass);
    let request = IssueRequest {
        ctx: &planned.ctx,
        trust: &planned.trust,
        grant_id: planned.grant_id.clone(),
        reason: &planned.reason,
        ttl_seconds: planned.ttl_seconds,
        now: planned.now,
        profile: planned.profile.clone(),
        timeout: planned.timeout,
        request_sha256: approved.as_ref().map(|a| a.request_sha256.clone()),
        approvals: approved.as_ref().filter(|a| !a.break_glass).map(|a| a.approvals.clone()),
        break_glass,
    };
    let issued = issue::issue(repo, &request, planned.issuer.as_mut(), signer, store, interruption)?;
    let event = if break_glass { NotifyEvent::BreakGlass } else { NotifyEvent::Grant };
    if let Err(failed) = crate::ops::notifications::required(repo, &issued.record, event) {
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
        intent_elapsed: issued.intent_elapsed,
        mint_elapsed: issued.mint_elapsed,
        keyring_elapsed: issued.keyring_elapsed,
        delivered: false,
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
fn session_tags(grant_id: &GrantId, ctx: &GitContext, grantee: &str) -> Vec<(String, String)> {
    let branch = ctx.branch.strip_prefix("refs/heads/").unwrap_or(&ctx.branch);
    vec![
        ("tpa-grant".to_owned(), grant_id.to_string()),
        ("tpa-principal".to_owned(), tag_value(grantee)),
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

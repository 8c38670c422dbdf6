use std::io::{IsTerminal, Write};

use clap::{Args, ValueEnum};
use serde_json::json;

use super::{Ctx, exit, print_json, render};
use crate::escape;
use crate::grant::parse_duration;
use crate::grant::{RevokeResult, RevokeTrigger};
use crate::ops::context;
use crate::ops::deliver;
use crate::ops::notifications;
use crate::ops::request::{self, Faults, Planned, RequestError, RequestSpec};
use crate::ops::revoke::{self, RevokeSelector, RevokeSpec};
use crate::policy::NotifyEvent;
use crate::policy::PolicyRefusal;
use crate::provider::aws_sts::StsOptions;

/// Ask for short-lived AWS credentials for a role, tied to this branch and commit. The grant is
/// recorded (signed) before the credentials go anywhere; they are kept in the OS keyring for
/// `tpa exec`, `tpa env` and `tpa credential-process`.
#[derive(Args)]
pub struct RequestArgs {
    /// The role, as named in .tpa/policy.toml ([roles.NAME]).
    #[arg(long, required_unless_present = "db", conflicts_with = "db")]
    role: Option<String>,
    /// A database of provider rds-iam ([databases.NAME]): the grant is its role's STS session;
    /// `tpa db-token` and `tpa exec --db` turn it into IAM auth tokens.
    #[arg(long, value_name = "NAME")]
    db: Option<String>,
    /// Why: the incident and what you will do (asked for interactively when missing on a terminal).
    #[arg(long)]
    reason: Option<String>,
    /// How long, e.g. 15m, 1h (default: the policy's default_ttl, capped at the role's max_ttl).
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<u64>,
    /// The current code of your MFA device, for roles that require MFA.
    #[arg(long, env = "TPA_MFA_CODE", hide_env_values = true)]
    mfa_code: Option<String>,
    /// The AWS profile holding your base credentials (default: the standard chain).
    #[arg(long)]
    profile: Option<String>,
    /// How long to wait for STS before giving up.
    #[arg(long, value_parser = crate::grant::parse_timeout, default_value = "20s")]
    timeout: u64,
    /// Print the grant's metadata as JSON (never a secret).
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// Print the credentials themselves, once, for scripts.
    #[arg(long, value_enum)]
    format: Option<SecretFormat>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SecretFormat {
    Json,
    Env,
    CredentialProcess,
}

pub fn run(ctx: &Ctx, args: RequestArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let mut spec = RequestSpec {
        role: args.role.clone().unwrap_or_default(),
        database: args.db.clone(),
        reason: args.reason.clone(),
        ttl_seconds: args.ttl,
        mfa_code: args.mfa_code.clone(),
        sts: StsOptions {
            profile: args.profile.clone(),
            region: None,
            timeout: std::time::Duration::from_secs(args.timeout),
        },
    };
    let now = super::now();
    let started = std::time::Instant::now();
    let plan = loop {
        match request::plan_request(&repo, &spec, now) {
            Err(RequestError::Refused(
                refusal @ (PolicyRefusal::ReasonMissing | PolicyRefusal::ReasonTooShort { .. }),
            )) if super::interactive() => {
                eprintln!("{refusal}");
                spec.reason = Some(dialoguer::Input::<String>::new().with_prompt("reason").interact_text()?);
            }
            other => break other?,
        }
    };
    let trust = match &plan {
        Planned::Sts(p) => &p.trust,
        Planned::Postgres(p) => &p.trust,
    };
    if matches!(plan, Planned::Postgres(_)) && args.format.is_some() {
        anyhow::bail!(
            "--format prints AWS credentials, and a postgres database grant has none: connect with \
             `tpa exec --db {} -- psql`",
            args.db.as_deref().unwrap_or_default()
        );
    }
    if trust.origin == crate::trust::TrustOrigin::LocalNoRemote {
        eprintln!(
            "note: no remote: policy was read from the local branch {}, which nobody reviewed",
            render::branch(&trust.refname)
        );
    }
    let planned = started.elapsed();
    let signer = ctx.signer(&repo)?;
    // From the intent record on, a signal must not leave a live session without its outcome
    // recorded: signals only set a flag, which the flow reads at its safe points.
    let interruption = crate::interrupt::Interruption::catch()?;
    let signer_ready = started.elapsed();
    let granted = match plan {
        Planned::Sts(plan) => {
            let _spinner = render::Spinner::start(&format!("asking AWS STS for {}", plan.role.name));
            request::execute(&repo, *plan, &signer, &spec.sts, &faults(), &interruption)
        }
        Planned::Postgres(plan) => {
            let _spinner =
                render::Spinner::start(&format!("creating a login role on {}", plan.database.name));
            request::execute_postgres(&repo, *plan, &signer, &faults(), &interruption)
        }
    };
    let granted = match granted {
        Err(e @ RequestError::Interrupted { .. }) => {
            eprintln!("tpa: {e}");
            return Ok(exit::INTERRUPTED);
        }
        other => other?,
    };
    if interruption.is_set() {
        eprintln!(
            "note: interrupted while AWS was issuing the credentials: the grant was finished and recorded \
             first, so that no session is left unrecorded; `tpa revoke {}` ends it",
            granted.record.grant_id
        );
    }
    if let Err(failed) = notifications::required(&repo, &granted.record) {
        // Fail closed: a grant that the required webhooks do not know of is ended, and recorded so.
        let revoke_spec = RevokeSpec {
            selector: RevokeSelector::Grant(granted.record.grant_id.clone()),
            reason: Some("a required notification could not be delivered".into()),
            trigger: RevokeTrigger::NotifyFailed,
            profile: spec.sts.profile.clone(),
            timeout: spec.sts.timeout,
        };
        // Whatever happens to the revocation, nothing of this grant stays to be handed out.
        let _ = crate::secrets::delete_credentials(&granted.record.grant_id);
        let revoked = revoke::revoke(&repo, &revoke_spec, &signer, super::now());
        super::share(&repo);
        let ended = match &revoked {
            Ok(outcomes) if outcomes.iter().all(|o| o.result == Some(RevokeResult::Done)) => {
                "revoked".to_owned()
            }
            Ok(_) => "recorded for revocation (pending: `tpa sweep` retries)".to_owned(),
            Err(e) => format!("NOT revoked ({e}): run `tpa revoke {}`", granted.record.grant_id),
        };
        anyhow::bail!(
            "grant {} was {ended} and not handed out: a required notification could not be delivered ({})",
            granted.record.grant_id,
            failed.failures.join("; ")
        );
    }
    let queued = notifications::tell(&repo, &granted.record, NotifyEvent::Grant, None, super::now());
    if !queued.is_empty() {
        eprintln!("note: notification to {} failed; queued for retry", queued.join(", "));
    }
    let executed = started.elapsed();
    let record = &granted.record;
    let me = context::principal(&repo)?.email;
    deliver::forget_ended(&repo, &me, super::now());
    super::housekeeping(&repo);
    super::share(&repo);
    #[cfg(feature = "testing")]
    if std::env::var_os("TPA_TEST_TIMING").is_some() {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        eprintln!(
            "plan_ms={:.3} signer_ms={:.3} execute_ms={:.3} sts_ms={:.3} keyring_ms={:.3} forget_ms={:.3}",
            ms(planned),
            ms(signer_ready - planned),
            ms(executed - signer_ready),
            ms(granted.sts_elapsed),
            ms(granted.keyring_elapsed),
            ms(started.elapsed() - executed)
        );
    }
    #[cfg(not(feature = "testing"))]
    let _ = (planned, signer_ready, executed);

    let mut out = std::io::stdout().lock();
    let credentials = &granted.credentials;
    match (args.format, args.json) {
        (Some(SecretFormat::Json), _) => print_json(&json!({
            "grant_id": record.grant_id,
            "AccessKeyId": credentials.access_key_id,
            "SecretAccessKey": credentials.secret_access_key.as_str(),
            "SessionToken": credentials.session_token.as_str(),
            "Expiration": render::time(credentials.expiration),
        }))?,
        (Some(SecretFormat::Env), _) => write!(out, "{}", super::env::export_lines(credentials))?,
        (Some(SecretFormat::CredentialProcess), _) => {
            super::credential_process::print(credentials)?;
        }
        (None, true) => print_json(&json!({
            "grant_id": record.grant_id,
            "expires_at": record.expires_at.map(render::time),
            "branch": record.branch,
            "commit": record.commit,
            "role": record.role,
            "database": record.database,
            "target": record.target,
            "policy_commit": granted.policy_commit,
        }))?,
        (None, false) => {
            let expires = record.expires_at.expect("a grant record has an expiry");
            let minutes = (expires - super::now()).num_minutes();
            writeln!(
                out,
                "granted {} until {} ({minutes} min left)",
                args.db
                    .as_deref()
                    .map_or_else(|| granted.record.target.clone(), |db| format!("database {db}")),
                render::time(expires)
            )?;
            writeln!(out, "  grant   {}", record.grant_id)?;
            writeln!(
                out,
                "  branch  {} @ {}",
                render::branch(&record.branch),
                render::short(&record.commit)
            )?;
            match &args.db {
                Some(db) => writeln!(out, "use it:   tpa exec --db {} -- psql", escape::text(db))?,
                None => {
                    writeln!(out, "use it:   tpa exec -- aws sts get-caller-identity")?;
                    writeln!(out, "          eval \"$(tpa env)\"")?;
                }
            }
        }
    }
    if args.format.is_some() && std::io::stdout().is_terminal() {
        eprintln!("note: these are live credentials; they were printed because --format asked for them");
    }
    Ok(exit::OK)
}

fn faults() -> Faults {
    #[cfg(feature = "testing")]
    {
        let fault = std::env::var("TPA_TEST_FAULT").unwrap_or_default();
        Faults { fail_grant_record: fault == "grant-record", fail_keyring_store: fault == "keyring-store" }
    }
    #[cfg(not(feature = "testing"))]
    Faults::default()
}

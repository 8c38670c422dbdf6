use std::io::{IsTerminal, Write};

use clap::{Args, ValueEnum};
use serde_json::json;

use super::{Ctx, exit, print_json, render};
use crate::escape;
use crate::grant::parse_duration;
use crate::ops::approval::Quorum;
use crate::ops::request::{self, Approach, Outcome, RequestError, RequestSpec};
use crate::policy::PolicyRefusal;
use crate::provider::aws_sts::StsOptions;

/// Ask for short-lived AWS credentials for a role, tied to this branch and commit. The grant is
/// recorded (signed) before the credentials go anywhere; they are kept in the OS keyring for
/// `tpa exec`, `tpa env` and `tpa credential-process`.
#[derive(Args)]
pub struct RequestArgs {
    /// The role, as named in .tpa/policy.toml ([roles.NAME]).
    #[arg(long, required_unless_present_any = ["db", "resume"], conflicts_with = "db")]
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
    /// How long to wait for STS before giving up (and, before it, for your base credentials).
    #[arg(long, value_parser = crate::grant::parse_timeout, default_value = "20s")]
    timeout: u64,
    /// Print the grant's metadata as JSON (never a secret).
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// Print the credentials themselves, once, for scripts.
    #[arg(long, value_enum)]
    format: Option<SecretFormat>,
    /// Grant at once without approvals, where the role allows break-glass: everyone is told, and
    /// the grant stays an audit finding until an approver reviews it (`tpa approve ID`).
    #[arg(long)]
    break_glass: bool,
    /// Where approvals (or the broker) are needed: record the request and return at once, instead
    /// of waiting; `--resume ID` picks it up later.
    #[arg(long)]
    no_wait: bool,
    /// Continue a request that waits for approvals: wait again, or mint once approved.
    #[arg(long, value_name = "ID", conflicts_with_all = ["role", "db", "break_glass"])]
    resume: Option<crate::grant::GrantId>,
    /// How often to fetch the ledger while waiting for approvals.
    #[arg(long, value_parser = crate::grant::parse_timeout, default_value = "2s")]
    poll: u64,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SecretFormat {
    Json,
    Env,
    CredentialProcess,
}

pub fn run(ctx: &Ctx, args: RequestArgs) -> anyhow::Result<u8> {
    // The signer and the grant's secret are in the keyring: it opens while the request is planned.
    crate::secrets::open_ahead();
    // So are the TLS roots the STS client needs.
    crate::provider::aws::read_tls_roots_ahead();
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
    let planned = match &args.resume {
        Some(_) => None,
        None => Some(loop {
            match request::plan(&repo, &spec, now) {
                Err(RequestError::Refused(
                    refusal @ (PolicyRefusal::ReasonMissing | PolicyRefusal::ReasonTooShort { .. }),
                )) if super::interactive() => {
                    eprintln!("{refusal}");
                    spec.reason =
                        Some(dialoguer::Input::<String>::new().with_prompt("reason").interact_text()?);
                }
                other => break other?,
            }
        }),
    };
    if let Some(planned) = &planned {
        if !planned.kind().is_sts_session() && args.format.is_some() {
            anyhow::bail!(
                "--format prints AWS credentials, and a {} grant has none: connect with `tpa exec --db {} -- psql`",
                planned.kind(),
                args.db.as_deref().unwrap_or_default()
            );
        }
        if planned.trust.origin == crate::trust::TrustOrigin::LocalNoRemote {
            eprintln!(
                "note: no remote: policy was read from the local branch {}, which nobody reviewed",
                render::branch(&planned.trust.refname)
            );
        }
    }
    let plan_elapsed = started.elapsed();
    let signer = ctx.signer(&repo)?;
    let signer_ready = started.elapsed();
    // From the intent record on, a signal must not leave a live session without its outcome
    // recorded: signals only set a flag, which the executor reads at its safe points.
    let interruption = crate::interrupt::Interruption::catch()?;
    let what = planned.as_ref().map(|p| format!("asking {} for {}", p.kind(), p.what));
    let spinner = render::Spinner::start(what.as_deref().unwrap_or("looking for approvals"));
    let wait = (!args.no_wait).then(|| std::time::Duration::from_secs(args.poll));
    let mut told = false;
    let mut on_wait = |quorum: &Quorum| {
        if let Quorum::Reached { .. } = quorum {
            spinner.set_message("approved: waiting for the broker to mint and deliver");
            if !told && wait.is_some() {
                told = true;
                eprintln!(
                    "tpa: request recorded; waiting for the broker (Ctrl-C stops waiting; the request stays)"
                );
            }
        }
        if let Quorum::Waiting { have, need, approvers } = quorum {
            let message = format!(
                "waiting for {} approval(s) from {}",
                need - have,
                approvers.iter().map(|a| escape::text(a)).collect::<Vec<_>>().join(", ")
            );
            spinner.set_message(&message);
            if !told && wait.is_some() {
                told = true;
                eprintln!("tpa: request recorded; {message} (Ctrl-C stops waiting; the request stays)");
            }
        }
    };
    let outcome = match (planned, &args.resume) {
        (Some(planned), _) => {
            let approach = Approach { break_glass: args.break_glass, wait };
            request::execute(
                &repo,
                planned,
                &signer,
                &crate::secrets::OsKeyring,
                &interruption,
                &approach,
                &mut on_wait,
            )
        }
        (None, Some(id)) => request::resume(
            &repo,
            id,
            &spec,
            &signer,
            &crate::secrets::OsKeyring,
            &interruption,
            wait,
            &mut on_wait,
        ),
        (None, None) => unreachable!("a request is planned unless it resumes"),
    };
    drop(spinner);
    let granted = match outcome {
        Err(e @ RequestError::WaitInterrupted { .. }) => {
            eprintln!("tpa: {e}");
            return Ok(exit::INTERRUPTED);
        }
        Err(e) if e.is_interruption() => {
            eprintln!("tpa: {e}");
            return Ok(exit::INTERRUPTED);
        }
        Err(e) => return Err(e.into()),
        Ok(Outcome::Awaiting { grant_id, quorum }) => return awaiting(&repo, &grant_id, &quorum, args.json),
        Ok(Outcome::Granted(granted)) => *granted,
    };
    if interruption.is_set() {
        eprintln!(
            "note: interrupted while the provider was issuing the credentials: the grant was finished and \
             recorded first, so that no session is left unrecorded; `tpa revoke {}` ends it",
            granted.record.grant_id
        );
    }
    let executed = started.elapsed();
    let record = &granted.record;
    // A delivered grant was recorded, pushed and told by the broker that minted it.
    if !granted.delivered {
        let written = [crate::ops::finish::Written::Granted(record)];
        super::report_finished(&crate::ops::finish::after_write(&repo, &written, super::now()));
    }
    #[cfg(feature = "testing")]
    if std::env::var_os("TPA_TEST_TIMING").is_some() {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        eprintln!(
            "plan_ms={:.3} signer_ms={:.3} execute_ms={:.3} intent_ms={:.3} sts_ms={:.3} keyring_ms={:.3} finish_ms={:.3}",
            ms(plan_elapsed),
            ms(signer_ready - plan_elapsed),
            ms(executed - signer_ready),
            ms(granted.intent_elapsed),
            ms(granted.mint_elapsed),
            ms(granted.keyring_elapsed),
            ms(started.elapsed() - executed)
        );
    }
    #[cfg(not(feature = "testing"))]
    let _ = (plan_elapsed, signer_ready, executed);

    let mut out = std::io::stdout().lock();
    let aws = match &granted.secret {
        crate::provider::Secret::Aws(credentials) => Some(credentials),
        crate::provider::Secret::DbLogin(_) => None,
    };
    match (args.format.zip(aws), args.json) {
        (Some((SecretFormat::Json, credentials)), _) => print_json(&json!({
            "grant_id": record.grant_id,
            "AccessKeyId": credentials.access_key_id,
            "SecretAccessKey": credentials.secret_access_key.as_str(),
            "SessionToken": credentials.session_token.as_str(),
            "Expiration": render::time(credentials.expiration),
        }))?,
        (Some((SecretFormat::Env, credentials)), _) => {
            write!(out, "{}", super::env::export_lines(credentials))?
        }
        (Some((SecretFormat::CredentialProcess, credentials)), _) => {
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

/// A request recorded and waiting for approvals (`--no-wait`, or no quorum yet).
fn awaiting(
    repo: &git2::Repository,
    grant_id: &crate::grant::GrantId,
    quorum: &Quorum,
    json: bool,
) -> anyhow::Result<u8> {
    let finished = crate::ops::finish::after_write(repo, &[], super::now());
    super::report_finished(&finished);
    let (have, need, approvers) = match quorum {
        Quorum::Waiting { have, need, approvers } => (*have, *need, approvers.clone()),
        _ => (0, 0, Vec::new()),
    };
    let approved = matches!(quorum, Quorum::Reached { .. });
    if json {
        print_json(&json!({
            "grant_id": grant_id,
            "state": if approved { "awaiting_broker" } else { "awaiting_approval" },
            "approvals": have,
            "needed": need,
            "approvers": approvers,
        }))?;
    } else if approved {
        let mut out = std::io::stdout().lock();
        writeln!(out, "request {grant_id} recorded: waiting for the broker to mint and deliver it")?;
        writeln!(out, "  then       tpa request --resume {grant_id}")?;
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "request {grant_id} recorded: waiting for {} approval(s)", need - have)?;
        writeln!(
            out,
            "  approvers  {}",
            approvers.iter().map(|a| escape::text(a)).collect::<Vec<_>>().join(", ")
        )?;
        writeln!(out, "  they run   tpa approve {grant_id}")?;
        writeln!(out, "  then       tpa request --resume {grant_id}")?;
    }
    Ok(exit::OK)
}

use std::ffi::OsString;
use std::process::Command;

use clap::Args;

use super::Ctx;
use crate::grant::GrantId;
use crate::ops::context;
use crate::ops::database::{self, DbSelector};
use crate::ops::deliver::{self, Selector};

/// The variable tpa sets in the child, so that a nested `tpa exec` can refuse.
pub const NESTED_MARKER: &str = "TPA_EXEC_GRANT";

/// Run a command with an active grant's AWS credentials in its environment (and nowhere else).
#[derive(Args)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Your newest active grant for this role.
    #[arg(long)]
    role: Option<String>,
    /// Connect to this database ([databases.NAME]) instead: the child gets the client's variables
    /// (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD = a fresh IAM token, PGSSLMODE=require; or
    /// MySQL's) and no AWS credentials.
    #[arg(long, value_name = "NAME", conflicts_with = "role")]
    db: Option<String>,
    /// The grant, then `--`, then the command: `tpa exec [GRANT] -- CMD ARGS...`.
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true, value_name = "[GRANT] -- CMD")]
    command: Vec<OsString>,
}

pub fn run(ctx: &Ctx, args: ExecArgs) -> anyhow::Result<u8> {
    if let Some(outer) = std::env::var_os(NESTED_MARKER) {
        anyhow::bail!(
            "already inside `tpa exec` (grant {}): nesting would mix two grants' credentials; run the command directly",
            outer.to_string_lossy()
        );
    }
    let (grant, command) = split_grant(args.command)?;
    let repo = ctx.repo()?;
    let me = context::principal(&repo)?.email;
    if let Some(db) = args.db {
        let selector = match grant {
            Some(id) => DbSelector::Grant(id),
            None => DbSelector::Database(db),
        };
        let login = database::login(&repo, &selector, &me, super::now(), true)?;
        let (program, rest) = command.split_first().expect("clap requires a command");
        let mut child = Command::new(program);
        child.args(rest).env(NESTED_MARKER, login.grant_id.as_str());
        for (key, value) in login.client_environment() {
            child.env(key, value);
        }
        // The grant's AWS credentials are not this child's business; a stray profile neither.
        for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"] {
            child.env_remove(key);
        }
        drop(login);
        return run_child(child, program);
    }
    let selector = match (grant, args.role) {
        (Some(_), Some(_)) => anyhow::bail!("give a grant id or --role, not both"),
        (Some(id), None) => Selector::Grant(id),
        (None, Some(role)) => Selector::Role(role),
        (None, None) => Selector::Newest,
    };
    let (grant, credentials) = deliver::credentials_for(&repo, &selector, &me, super::now())?;
    let (program, rest) = command.split_first().expect("clap requires a command");
    let mut child = Command::new(program);
    child
        .args(rest)
        .env("AWS_ACCESS_KEY_ID", &credentials.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key.as_str())
        .env("AWS_SESSION_TOKEN", credentials.session_token.as_str())
        .env("AWS_CREDENTIAL_EXPIRATION", super::render::time(credentials.expiration))
        .env(NESTED_MARKER, grant.grant_id.as_str())
        // A profile in the environment would make some tools prefer it over these credentials.
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_DEFAULT_PROFILE");
    drop(credentials);
    run_child(child, program)
}

/// `[GRANT] -- CMD ARGS...`: clap keeps everything after the first positional; a leading word that
/// parses as a grant id is the grant.
fn split_grant(mut words: Vec<OsString>) -> anyhow::Result<(Option<GrantId>, Vec<OsString>)> {
    let mut grant = None;
    if let Some(first) = words.first().and_then(|w| w.to_str())
        && first != "--"
        && words.len() > 1
        && let Ok(id) = first.parse::<GrantId>()
    {
        grant = Some(id);
        words.remove(0);
    }
    if words.first().is_some_and(|w| w == "--") {
        words.remove(0);
    }
    if words.is_empty() {
        anyhow::bail!("no command to run: tpa exec [GRANT] -- CMD ARGS...");
    }
    Ok((grant, words))
}

#[cfg(unix)]
fn run_child(mut child: Command, program: &OsString) -> anyhow::Result<u8> {
    use std::os::unix::process::CommandExt;
    // Replace tpa: signals, exit status and the terminal are the command's own.
    let error = child.exec();
    anyhow::bail!("cannot run {}: {error}", program.to_string_lossy())
}

#[cfg(not(unix))]
fn run_child(mut child: Command, program: &OsString) -> anyhow::Result<u8> {
    let status =
        child.status().map_err(|e| anyhow::anyhow!("cannot run {}: {e}", program.to_string_lossy()))?;
    Ok(status.code().map(|c| c as u8).unwrap_or(super::exit::ERROR))
}

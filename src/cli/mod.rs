//! The command line: one file per command that parses, calls an op and renders. The only code
//! that prints, and the one place that decides how errors look and which exit code they get.

mod approvals;
mod approve;
mod audit;
mod broker;
mod completions;
mod credential_process;
mod db_token;
#[cfg(feature = "testing")]
mod debug;
mod doctor;
mod env;
mod exec;
mod export;
mod hook;
mod init;
mod log;
mod man;
mod render;
mod request;
mod revoke;
mod setup_aws;
mod show;
mod status;
mod sweep;
mod sync;
mod uninstall;
mod verify;
mod who;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::ledger::signing::{self, Signer, SignerSource, SigningError};

/// Exit codes, stable for scripts and hooks (docs/exit-codes in README.md).
pub mod exit {
    /// Success, nothing found.
    pub const OK: u8 = 0;
    /// The command ran and found problems (`tpa verify` findings).
    pub const FINDINGS: u8 = 1;
    /// The command could not do its job: bad usage, configuration, git or keyring errors.
    pub const ERROR: u8 = 2;
    /// Interrupted (SIGINT, SIGTERM, SIGHUP) and ended cleanly: what was started is recorded.
    pub const INTERRUPTED: u8 = 130;
}

/// Temporary production access, recorded as signed git notes and revoked by git events.
#[derive(Parser)]
#[command(
    name = "tpa",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("TPA_BUILD_COMMIT"), ")"),
    about,
    max_term_width = 100
)]
struct Cli {
    /// Run as if tpa was started in PATH (like `git -C`).
    #[arg(short = 'C', global = true, value_name = "PATH")]
    directory: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Init(init::InitArgs),
    Request(request::RequestArgs),
    Approvals(approvals::ApprovalsArgs),
    Approve(approve::ApproveArgs),
    Deny(approve::DenyArgs),
    Revoke(revoke::RevokeArgs),
    Sweep(sweep::SweepArgs),
    Broker(broker::BrokerArgs),
    Sync(sync::SyncArgs),
    Status(status::StatusArgs),
    Who(who::WhoArgs),
    Exec(exec::ExecArgs),
    Env(env::EnvArgs),
    DbToken(db_token::DbTokenArgs),
    CredentialProcess(credential_process::CredentialProcessArgs),
    SetupAws(setup_aws::SetupAwsArgs),
    Uninstall(uninstall::UninstallArgs),
    #[command(hide = true)]
    Hook(hook::HookArgs),
    Log(log::LogArgs),
    Show(show::ShowArgs),
    Verify(verify::VerifyArgs),
    Audit(audit::AuditArgs),
    Export(export::ExportArgs),
    Doctor(doctor::DoctorArgs),
    Completions(completions::CompletionsArgs),
    Man(man::ManArgs),
    #[cfg(feature = "testing")]
    #[command(hide = true)]
    Debug(debug::DebugArgs),
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.kind() == clap::error::ErrorKind::ValueValidation => {
            // clap would echo the whole value; a megabyte of it helps nobody.
            let _ = writeln!(std::io::stderr(), "tpa: error: {}", render::invalid_value(&e));
            return ExitCode::from(exit::ERROR);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::ERROR } else { exit::OK });
        }
    };
    let result = run(cli);
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => ExitCode::from(exit::OK),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tpa: error: {}", render::error_chain(&e));
            ExitCode::from(exit::ERROR)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let dir = cli.directory.unwrap_or_else(|| PathBuf::from("."));
    let ctx = Ctx { dir };
    match cli.command {
        Command::Init(args) => init::run(&ctx, args),
        Command::Request(args) => request::run(&ctx, args),
        Command::Approvals(args) => approvals::run(&ctx, args),
        Command::Approve(args) => approve::approve(&ctx, args),
        Command::Deny(args) => approve::deny(&ctx, args),
        Command::Revoke(args) => revoke::run(&ctx, args),
        Command::Sweep(args) => sweep::run(&ctx, args),
        Command::Broker(args) => broker::run(&ctx, args),
        Command::Sync(args) => sync::run(&ctx, args),
        Command::Uninstall(args) => uninstall::run(&ctx, args),
        Command::Hook(args) => hook::run(&ctx, args),
        Command::SetupAws(args) => setup_aws::run(&ctx, args),
        Command::Status(args) => status::run(&ctx, args),
        Command::Who(args) => who::run(&ctx, args),
        Command::Exec(args) => exec::run(&ctx, args),
        Command::Env(args) => env::run(&ctx, args),
        Command::DbToken(args) => db_token::run(&ctx, args),
        Command::CredentialProcess(args) => credential_process::run(&ctx, args),
        Command::Log(args) => log::run(&ctx, args),
        Command::Show(args) => show::run(&ctx, args),
        Command::Verify(args) => verify::run(&ctx, args),
        Command::Audit(args) => audit::run(&ctx, args),
        Command::Export(args) => export::run(&ctx, args),
        Command::Doctor(args) => doctor::run(&ctx, args),
        Command::Completions(args) => completions::run(args),
        Command::Man(args) => man::run(args),
        #[cfg(feature = "testing")]
        Command::Debug(args) => debug::run(&ctx, args),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    })
}

/// What every command gets: where to run.
pub(crate) struct Ctx {
    dir: PathBuf,
}

impl Ctx {
    fn repo(&self) -> anyhow::Result<git2::Repository> {
        match git2::Repository::discover(&self.dir) {
            Ok(repo) => Ok(repo),
            // git refuses repositories owned by someone else too ("dubious ownership").
            Err(e) if e.code() == git2::ErrorCode::Owner => anyhow::bail!(
                "the repository at {} is owned by another user, and git (and tpa) refuse to work in it \
                 unless you trust it: `git config --global --add safe.directory PATH` (see `git help config`, \
                 safe.directory), or run tpa as the repository's owner",
                self.dir.display()
            ),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "{} is not inside a git repository: run tpa in your project's clone",
                    self.dir.display()
                )
            }),
        }
    }

    /// The signer for this repository: TPA_SIGNING_KEY, else what `tpa init` recorded.
    fn signer(&self, repo: &git2::Repository) -> Result<Signer, SigningError> {
        Self::signer_for(repo)
    }

    fn signer_for(repo: &git2::Repository) -> Result<Signer, SigningError> {
        if let Some(path) = std::env::var_os("TPA_SIGNING_KEY").filter(|p| !p.is_empty()) {
            return Signer::open(SignerSource::KeyFile(PathBuf::from(path)));
        }
        let config = crate::gitconfig::GitConfig::of(repo).map_err(|_| SigningError::NotConfigured)?;
        let value = config.get(signing::CONFIG_KEY).ok_or(SigningError::NotConfigured)?;
        let source = SignerSource::from_config(value, config.get("user.signingkey").map(str::to_owned))?;
        Signer::open(source)
    }
}

/// Writes JSON to stdout, pretty, with a trailing newline.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    // Buffered: stdout alone writes line by line, and pretty JSON is a line per field.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// The current time ([`crate::clock`]).
pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    crate::clock::now()
}

/// May tpa ask the user something? Only on a terminal, and never with TPA_NONINTERACTIVE=1.
pub(crate) fn interactive() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
        && std::io::stderr().is_terminal()
        && std::env::var("TPA_NONINTERACTIVE").map_or(true, |v| v.is_empty() || v == "0")
}

/// How to reach IAM, for the commands that write revocation policies.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct IamArgs {
    /// The AWS profile whose credentials may write the revocation policies (default: the standard chain).
    #[arg(long)]
    pub profile: Option<String>,
    /// How long to wait for IAM before giving up.
    #[arg(long, value_parser = crate::grant::parse_timeout, default_value = "20s")]
    pub timeout: u64,
}

impl IamArgs {
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout)
    }
}

/// Says what the after-write chain could not do now (it is done later, nothing is lost).
pub(crate) fn report_finished(finished: &crate::ops::finish::Finished) {
    for (remote, error) in &finished.unpushed {
        eprintln!(
            "note: the ledger was not pushed to {} ({}): it is kept here and goes with the next `tpa sync`",
            crate::escape::text(remote),
            crate::escape::text(error)
        );
    }
    if !finished.queued.is_empty() {
        eprintln!(
            "note: notification to {} failed; queued for retry",
            finished.queued.iter().map(|h| crate::escape::text(h)).collect::<Vec<_>>().join(", ")
        );
    }
}

//! `tpa doctor`: run the readiness checks and render them.

use std::io::Write;

use clap::Args;

use super::{Ctx, exit, print_json};
use crate::ops::doctor::{self, Inputs, Status};

/// Check that this machine and this clone are ready for tpa: git and ssh-keygen, the OS keyring,
/// the signing key, the hooks, the ledger's fetch refspecs, the policy at the trust ref, AWS
/// credentials and the clock against STS. Each problem comes with what to do about it. Prints no
/// secret.
///
/// Exit status: 0 when no check failed (warnings allowed), 1 when one did, 2 when doctor could not run.
#[derive(Args)]
pub struct DoctorArgs {
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
    /// How long to wait for AWS (credentials, then STS).
    #[arg(long, value_parser = crate::grant::parse_timeout, default_value = "10s")]
    timeout: u64,
}

pub fn run(ctx: &Ctx, args: DoctorArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo().ok();
    let hook_binary = super::init::hook_binary().ok();
    let report = doctor::run(&Inputs {
        repo: repo.as_ref(),
        open_signer: &Ctx::signer_for,
        hook_binary: hook_binary.as_deref(),
        aws_timeout: std::time::Duration::from_secs(args.timeout),
    });
    if args.json {
        print_json(&report)?;
    } else {
        let mut out = std::io::stdout().lock();
        for check in &report.checks {
            let mark = match check.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            writeln!(out, "{mark} {:<16} {}", check.id, check.detail)?;
            if let Some(fix) = &check.fix {
                writeln!(out, "     {:<16} fix: {fix}", "")?;
            }
        }
    }
    Ok(if report.failed() { exit::FINDINGS } else { exit::OK })
}

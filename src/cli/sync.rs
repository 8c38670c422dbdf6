//! `tpa sync`: fetch, merge and push the ledger through every remote.

use std::io::Write;

use clap::Args;

use super::{Ctx, exit, print_json};
use crate::escape;
use crate::ops::sync::{self, SyncOptions};

/// Share the ledger: fetch refs/notes/tpa from each remote, merge it record by record (nothing is
/// ever lost on either side), and push the result, retrying when another clone pushed first.
#[derive(Args)]
pub struct SyncArgs {
    /// Only this remote (repeatable; default: every remote).
    #[arg(long = "remote", value_name = "NAME")]
    remotes: Vec<String>,
    /// How long each git fetch or push may take.
    #[arg(long, value_parser = crate::grant::parse_timeout, default_value = "60s")]
    timeout: u64,
    /// Print what happened per remote as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, args: SyncArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let options = SyncOptions {
        remotes: (!args.remotes.is_empty()).then_some(args.remotes),
        timeout: std::time::Duration::from_secs(args.timeout),
        interactive: super::interactive(),
    };
    let results = sync::sync(&repo, &options)?;
    crate::ops::finish::housekeeping(&repo);
    let failed = results.iter().any(|r| !r.pushed);
    if args.json {
        print_json(&results)?;
    } else {
        let mut out = std::io::stdout().lock();
        for r in &results {
            match (&r.error, r.pushed) {
                (_, true) => writeln!(out, "{}: {} and pushed", escape::text(&r.remote), r.merged)?,
                (Some(e), false) => {
                    writeln!(out, "{}: NOT pushed: {}", escape::text(&r.remote), escape::text(e))?
                }
                (None, false) => writeln!(out, "{}: NOT pushed", escape::text(&r.remote))?,
            }
        }
    }
    if failed {
        eprintln!(
            "tpa: the ledger is not on every remote yet; the records stay here and go with the next `tpa sync`"
        );
    }
    Ok(if failed { exit::ERROR } else { exit::OK })
}

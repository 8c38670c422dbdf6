//! Hidden test plumbing, compiled only with the `testing` feature: writes records without a
//! provider so the ledger can be exercised on its own.

use std::io::Read;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{Ctx, exit, print_json};
use crate::grant::Record;
use crate::ops::record;

#[derive(Args)]
pub struct DebugArgs {
    #[command(subcommand)]
    command: DebugCommand,
}

#[derive(Subcommand)]
enum DebugCommand {
    /// Record an intent for HEAD, as `tpa request` does before minting.
    Intent {
        #[arg(long)]
        reason: String,
        #[arg(long, default_value = "arn:aws:iam::123456789012:role/test")]
        target: String,
    },
    /// Sign and append the record read (as JSON) from stdin.
    Append,
    /// Append one intent per commit listed on stdin (one id a line), each as its own notes
    /// commit, in one process: builds large ledgers for the benchmarks.
    Bulk {
        /// Complete, ended grants instead: intent, grant and revoke (merged, done) records per
        /// line `COMMIT [BRANCH-REFNAME]` (no branch: HEAD's), three notes commits each.
        #[arg(long)]
        grants: bool,
        /// With --grants: the role's name in the policy.
        #[arg(long, default_value = "bench", requires = "grants")]
        role: String,
        /// With --grants: the role's ARN.
        #[arg(long, default_value = "arn:aws:iam::123456789012:role/bench", requires = "grants")]
        target: String,
    },
}

pub fn run(ctx: &Ctx, args: DebugArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let signer = ctx.signer(&repo)?;
    match args.command {
        DebugCommand::Intent { reason, target } => {
            let (record, appended) = record::record_intent(&repo, &signer, &reason, &target)?;
            print_json(&json!({
                "grant_id": record.grant_id,
                "branch": record.branch,
                "commit": record.commit,
                "payload_sha256": appended.payload_sha256,
                "record": record,
            }))?;
        }
        DebugCommand::Append => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            let record: Record = serde_json::from_str(&input)?;
            let appended = record::append_record(&repo, &signer, &record)?;
            print_json(&json!({ "payload_sha256": appended.payload_sha256 }))?;
        }
        DebugCommand::Bulk { grants: false, .. } => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            let commits: Vec<&str> = input.split_whitespace().collect();
            let count = record::bulk_intents(&repo, &signer, &commits)?;
            print_json(&json!({ "appended": count }))?;
        }
        DebugCommand::Bulk { grants: true, role, target } => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            let targets: Vec<record::BulkTarget> = input
                .lines()
                .filter_map(|line| {
                    let mut words = line.split_whitespace();
                    Some(record::BulkTarget { commit: words.next()?, branch: words.next() })
                })
                .collect();
            // The pinnable clock: a benchmark can fill a ledger dated days ago.
            let count = record::bulk_grants(&repo, &signer, &targets, &role, &target, super::now())?;
            print_json(&json!({ "grants": count, "appended": count * 3 }))?;
        }
    }
    Ok(exit::OK)
}

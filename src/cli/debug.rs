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
    Bulk,
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
        DebugCommand::Bulk => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            let commits: Vec<&str> = input.split_whitespace().collect();
            let count = record::bulk_intents(&repo, &signer, &commits)?;
            print_json(&json!({ "appended": count }))?;
        }
    }
    Ok(exit::OK)
}

use std::io::Write;

use clap::Args;

use super::{Ctx, exit, print_json, render};
use crate::escape;
use crate::grant::RecordKind;
use crate::ops::ledger;

/// List the ledger's records, newest first, each with its verification status.
#[derive(Args)]
pub struct LogArgs {
    /// Print the records as a JSON array.
    #[arg(long)]
    json: bool,
    /// Show at most N records.
    #[arg(short = 'n', long, value_name = "N")]
    max_count: Option<usize>,
}

pub fn run(ctx: &Ctx, args: LogArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let mut out = std::io::stdout().lock();
    let view = ledger::records(&repo)?;
    let records = view.report.records.iter().take(args.max_count.unwrap_or(usize::MAX));
    if args.json {
        print_json(&records.map(render::record_json).collect::<Vec<_>>())?;
        return Ok(exit::OK);
    }
    let mut any = false;
    for checked in records {
        any = true;
        let status = render::status(checked);
        match &checked.record {
            Some(r) => {
                writeln!(
                    out,
                    "{}  {:<7} {}  {}  {} @ {}  {status}",
                    render::time(r.issued_at),
                    r.kind.to_string(),
                    r.grant_id,
                    escape::text(&r.principal.email),
                    render::branch(&r.branch),
                    render::short(&r.commit),
                )?;
                if r.kind == RecordKind::Intent {
                    writeln!(out, "    reason: {}", escape::text(&r.reason))?;
                }
            }
            None => writeln!(
                out,
                "(unreadable record at {}:{})  {status}",
                render::short(&checked.annotated.to_string()),
                checked.line_no
            )?,
        }
    }
    if !any {
        writeln!(out, "no records yet")?;
    }
    Ok(exit::OK)
}

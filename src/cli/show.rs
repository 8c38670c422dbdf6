use std::io::Write;

use clap::Args;
use serde_json::json;

use super::{Ctx, exit, print_json, render};
use crate::escape;
use crate::grant::{GrantId, GrantState};
use crate::ops::grants;

/// Show one grant and its whole history (intent, grant or failed, revokes).
#[derive(Args)]
pub struct ShowArgs {
    /// The grant id (as `tpa log` shows it).
    grant: GrantId,
    /// Print the grant as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, args: ShowArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let mut out = std::io::stdout().lock();
    let records = grants::records_of(&repo, &args.grant, super::now())?;
    let mut history: Vec<_> = records.iter().collect();
    if history.is_empty() {
        anyhow::bail!(
            "no grant {} in the ledger: `tpa log` lists them (fetch others' records with `git fetch`)",
            args.grant
        );
    }
    history.reverse(); // oldest first: the life of the grant in order
    let state = GrantState::of(history.iter().filter_map(|c| c.record.as_ref()), super::now());
    let verified = history.iter().all(|c| c.is_verified());
    if args.json {
        print_json(&json!({
            "grant_id": args.grant,
            "state": state,
            "verified": verified,
            "records": history.iter().map(|c| render::record_json(c)).collect::<Vec<_>>(),
        }))?;
        return Ok(exit::OK);
    }
    let first = history.iter().find_map(|c| c.record.as_ref()).expect("filtered on records");
    writeln!(
        out,
        "grant {}  {state}{}",
        args.grant,
        if verified { "" } else { "  (UNVERIFIED records below)" }
    )?;
    writeln!(
        out,
        "  principal  {} ({}@{})",
        escape::text(&first.principal.email),
        escape::text(&first.principal.user),
        escape::text(&first.principal.host)
    )?;
    writeln!(out, "  reason     {}", escape::text(&first.reason))?;
    writeln!(out, "  repo       {}", escape::text(&first.repo))?;
    writeln!(out, "  branch     {}", escape::text(&first.branch))?;
    writeln!(out, "  commit     {}", first.commit)?;
    writeln!(out, "  target     {} ({})", escape::text(&first.target), escape::text(&first.provider))?;
    if let Some(expires) = history.iter().rev().filter_map(|c| c.record.as_ref()).find_map(|r| r.expires_at) {
        writeln!(out, "  expires    {}", render::time(expires))?;
    }
    writeln!(out, "history:")?;
    for checked in &history {
        let r = checked.record.as_ref().expect("filtered on records");
        let mut detail = String::new();
        if let Some(trigger) = r.trigger {
            detail.push_str(&format!(" trigger={}", trigger.as_str()));
        }
        if let Some(result) = r.result {
            detail.push_str(&format!(" result={}", result.as_str()));
        }
        if let Some(error) = &r.error {
            detail.push_str(&format!(" error={}", escape::text(error)));
        }
        writeln!(
            out,
            "  {}  {:<7} by {}{detail}  {}",
            render::time(r.issued_at),
            r.kind.to_string(),
            escape::text(&r.principal.email),
            render::status(checked)
        )?;
    }
    Ok(exit::OK)
}

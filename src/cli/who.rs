//! `tpa who`: who has production access right now, from the ledger as this clone has it
//! (`tpa sync` first to see the whole team's).

use std::io::Write;

use clap::Args;
use serde_json::json;

use super::{Ctx, exit, print_json, render};
use crate::escape;
use crate::grant::GrantState;
use crate::ops::grants;

/// Everyone's active grants: person, role or database, branch, reason, time left.
#[derive(Args)]
pub struct WhoArgs {
    /// Print the grants as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, args: WhoArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let active: Vec<_> =
        grants::open(&repo, super::now())?.into_iter().filter(|g| g.state == GrantState::Active).collect();
    if args.json {
        let rows: Vec<_> = active
            .iter()
            .map(|g| {
                json!({
                    "grant_id": g.grant_id,
                    "principal": g.principal,
                    "access": g.intent.database.clone().or(g.role.clone()).unwrap_or(g.target.clone()),
                    "provider": g.provider,
                    "branch": g.branch,
                    "reason": g.reason,
                    "expires_at": g.expires_at.map(render::time),
                    "seconds_left": g.seconds_left,
                })
            })
            .collect();
        print_json(&rows)?;
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    if active.is_empty() {
        writeln!(
            out,
            "nobody has an active grant (in the ledger as this clone has it; `tpa sync` fetches the team's)"
        )?;
        return Ok(exit::OK);
    }
    let cell = |text: &str, width: usize| {
        let text = escape::text(text);
        if text.chars().count() > width {
            format!("{}…", text.chars().take(width - 1).collect::<String>())
        } else {
            text
        }
    };
    writeln!(out, "{:<24} {:<18} {:<24} {:>8}  REASON", "WHO", "ACCESS", "BRANCH", "LEFT")?;
    for g in &active {
        let access = match &g.intent.database {
            Some(db) => format!("db:{db}"),
            None => g.role.clone().unwrap_or_else(|| g.target.clone()),
        };
        let left = g.seconds_left.map(|s| format!("{}m{:02}s", s / 60, s % 60)).unwrap_or_default();
        writeln!(
            out,
            "{:<24} {:<18} {:<24} {:>8}  {}",
            cell(&g.principal, 24),
            cell(&access, 18),
            cell(g.branch.strip_prefix("refs/heads/").unwrap_or(&g.branch), 24),
            left,
            escape::text(&g.reason),
        )?;
    }
    Ok(exit::OK)
}

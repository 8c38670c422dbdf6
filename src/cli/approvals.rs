//! `tpa approvals`: what waits for an approver: requests for roles and databases that need
//! approvals, and break-glass grants that need a review.

use std::io::Write;

use clap::Args;

use super::{Ctx, exit, print_json, render};
use crate::escape;
use crate::ops::approval::{self, Quorum};

/// List requests waiting for approval (and break-glass grants waiting for a review), after fetching
/// the team's ledger: who asks for what, for how long, why, on which branch, and the commits since
/// the branch left the protected branch, so you see the change you are approving.
#[derive(Args)]
pub struct ApprovalsArgs {
    /// Do not fetch the ledger from the remotes first.
    #[arg(long)]
    no_fetch: bool,
    /// Print the list as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, args: ApprovalsArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    if !args.no_fetch {
        super::approve::fetch(&repo);
    }
    let pending = approval::pending(&repo, super::now())?;
    if args.json {
        print_json(&pending)?;
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    if pending.is_empty() {
        writeln!(out, "nothing waits for an approver")?;
        return Ok(exit::OK);
    }
    for p in &pending {
        let needs = match &p.quorum {
            Some(Quorum::Waiting { have, need, .. }) => format!("{have}/{need} approvals"),
            _ if p.break_glass => "BREAK-GLASS, to review".to_owned(),
            _ => String::new(),
        };
        writeln!(out, "{}  {}  {}", p.grant_id, p.state, needs)?;
        writeln!(out, "  who      {}", escape::text(&p.principal))?;
        let ttl = p
            .ttl_seconds
            .map(|s| format!(" for {}", crate::policy::format_duration(s.max(0) as u64)))
            .unwrap_or_default();
        writeln!(out, "  what     {}{ttl}", escape::text(&p.what))?;
        writeln!(out, "  reason   {}", escape::text(&p.reason))?;
        writeln!(
            out,
            "  branch   {} @ {}{}",
            render::branch(&p.branch),
            render::short(&p.commit),
            if p.pushed { "" } else { "  (NOT pushed: you cannot see this commit on the remote)" }
        )?;
        for commit in &p.commits {
            writeln!(out, "           {}", escape::text(commit))?;
        }
        writeln!(out, "  approve  tpa approve {}   deny: tpa deny {} --reason ...", p.grant_id, p.grant_id)?;
    }
    Ok(exit::OK)
}

//! `tpa approve ID` and `tpa deny ID --reason`: an approver's signed decision on a request (or the
//! review of a break-glass grant), pushed so the requester's tpa sees it.

use std::io::Write;

use clap::Args;
use serde_json::json;

use super::{Ctx, exit, print_json};
use crate::escape;
use crate::grant::{ApprovalDecision, GrantId};
use crate::ops::approval;

/// Approve a request waiting for approvals (after fetching it), or review a break-glass grant after
/// the fact. Writes a signed approval record naming the exact request, and pushes it.
#[derive(Args)]
pub struct ApproveArgs {
    /// The request's grant id (`tpa approvals` lists them).
    grant: GrantId,
    /// A word on why (recorded, signed).
    #[arg(long)]
    reason: Option<String>,
    /// Print the approval record as JSON.
    #[arg(long)]
    json: bool,
}

/// Deny a request: one deny from an approver ends it.
#[derive(Args)]
pub struct DenyArgs {
    /// The request's grant id.
    grant: GrantId,
    /// Why (required; the requester sees it).
    #[arg(long)]
    reason: String,
    /// Print the approval record as JSON.
    #[arg(long)]
    json: bool,
}

pub fn approve(ctx: &Ctx, args: ApproveArgs) -> anyhow::Result<u8> {
    decide(ctx, args.grant, ApprovalDecision::Approve, args.reason, args.json)
}

pub fn deny(ctx: &Ctx, args: DenyArgs) -> anyhow::Result<u8> {
    decide(ctx, args.grant, ApprovalDecision::Deny, Some(args.reason), args.json)
}

fn decide(
    ctx: &Ctx,
    grant: GrantId,
    decision: ApprovalDecision,
    reason: Option<String>,
    json: bool,
) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    fetch(&repo);
    let signer = ctx.signer(&repo)?;
    let record = approval::decide(&repo, &grant, decision, reason, &signer, super::now())?;
    let finished = crate::ops::finish::after_write(&repo, &[], super::now());
    super::report_finished(&finished);
    // The requester waits on the remote: push whatever the policy says about sync.
    let pushed = push(&repo);
    if json {
        print_json(&json!({
            "grant_id": record.grant_id,
            "decision": record.decision.map(ApprovalDecision::as_str),
            "request_sha256": record.request_sha256,
            "pushed": pushed,
        }))?;
    } else {
        let done = match record.decision {
            Some(ApprovalDecision::Deny) => "denied",
            Some(ApprovalDecision::Review) => "reviewed (break-glass)",
            _ => "approved",
        };
        writeln!(std::io::stdout(), "{done} {} ({})", record.grant_id, escape::text(&record.reason))?;
        if !pushed {
            eprintln!("note: not pushed yet: the requester sees it after `tpa sync`");
        }
    }
    Ok(exit::OK)
}

/// Fetches the team's branches (to see the change asked for) and ledger (best effort: offline,
/// the local one is what there is).
pub fn fetch(repo: &git2::Repository) {
    let remotes = crate::gitconfig::GitConfig::of(repo).map(|c| c.remotes()).unwrap_or_default();
    let dir = repo.workdir().unwrap_or_else(|| repo.path());
    for remote in &remotes {
        let _ = std::process::Command::new("git")
            .args(["fetch", "--quiet", "--no-write-fetch-head", "--"])
            .arg(remote)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let _ = push(repo);
}

/// Fetches, merges and pushes the ledger through every remote; whether every remote took it.
fn push(repo: &git2::Repository) -> bool {
    let has_remote = crate::gitconfig::GitConfig::of(repo).is_ok_and(|c| !c.remotes().is_empty());
    if !has_remote {
        return false;
    }
    let options = crate::ops::sync::SyncOptions {
        remotes: None,
        timeout: std::time::Duration::from_secs(30),
        interactive: super::interactive(),
    };
    crate::ops::sync::sync(repo, &options).is_ok_and(|results| results.iter().all(|r| r.pushed))
}

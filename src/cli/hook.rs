//! `tpa hook NAME ARGS...`: what the installed git hooks run. It never fails git and never
//! noticeably slows it: a moved-aside foreign hook runs first (its exit status is the hook's),
//! then tpa decides from its local index whether there is anything to do at all.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;

use clap::Args;

use super::Ctx;
use crate::hooks;
use crate::ledger::signing::LazySigner;
use crate::ops::sweep::{self, SweepOptions};
use crate::state::StateDir;

#[derive(Args)]
pub struct HookArgs {
    /// post-merge, post-commit, post-checkout or post-rewrite.
    name: String,
    /// What git passed to the hook.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub fn run(ctx: &Ctx, mut args: HookArgs) -> anyhow::Result<u8> {
    // Started by pre-commit, git's arguments are in PRE_COMMIT_* variables.
    let (git_args, from_pre_commit) = hooks::git_args(&args.name, args.args, |k| std::env::var_os(k));
    args.args = git_args;
    // Only post-rewrite gets input (the rewritten commits); read it once, hand it to both parts.
    let mut stdin = Vec::new();
    if args.name == "post-rewrite" && !from_pre_commit {
        let _ = std::io::stdin().read_to_end(&mut stdin);
    }
    let repo = ctx.repo().ok();
    let dir = std::env::var_os(hooks::HOOKS_DIR_ENV)
        .map(PathBuf::from)
        .or_else(|| repo.as_ref().and_then(|r| hooks::hooks_dir(r).ok()).map(|d| d.dir));
    // tpa-hook (the fast path) may already have run the original and handed over the rest.
    let original_done = std::env::var("TPA_HOOK_ORIGINAL_DONE").is_ok_and(|v| v == "1");
    let status = dir
        .filter(|_| !original_done)
        .and_then(|d| hooks::run_original(&d, &args.name, &args.args, &stdin).ok().flatten());
    if let Some(repo) = &repo
        && let Err(e) = tpa_part(repo, &args)
    {
        eprintln!("tpa: hook {}: {}", args.name, crate::escape::controls(&format!("{e:#}")));
    }
    Ok(status.map(hooks::exit_code).unwrap_or(0))
}

fn tpa_part(repo: &git2::Repository, args: &HookArgs) -> anyhow::Result<()> {
    let state = StateDir::open(repo)?;
    let grants = state.local_grants()?;
    if grants.is_empty() {
        return Ok(()); // the fast path: this clone holds no open grant
    }
    if args.name == "post-checkout" {
        // A checkout can only start an abandonment clock (or stop one): sweep only when a branch
        // holding a grant was left or returned to, or a clock is already running.
        let switched = args.args.get(2).is_some_and(|flag| flag == "1") && track_branch_switch(repo, &state)?;
        if !switched && state.left_branches()?.is_empty() {
            return Ok(());
        }
    }
    if std::env::var("TPA_HOOK_FOREGROUND").is_ok_and(|v| v == "1") {
        let signer = LazySigner::deferred(|| Ctx::signer_for(repo));
        let options =
            SweepOptions { profile: None, timeout: std::time::Duration::from_secs(20), now: super::now() };
        let report = sweep::sweep(repo, &signer, &options)?;
        // The same after-write chain as `tpa sweep`; the hook's own output goes to stderr.
        let outcomes: Vec<_> = report.items.iter().filter_map(|i| i.outcome.clone()).collect();
        let finished = crate::ops::finish::after_write(
            repo,
            &[crate::ops::finish::Written::Revoked(&outcomes)],
            super::now(),
        );
        super::report_finished(&finished);
        for item in report.items.iter().filter(|i| i.outcome.is_some()) {
            let result = item.outcome.as_ref().and_then(|o| o.result).map(|r| r.as_str());
            eprintln!("tpa: {} grant {}: {}", item.decision, item.grant_id, result.unwrap_or_default());
        }
        return Ok(());
    }
    // Network work happens in the background, logged under the state dir; git does not wait.
    let log = std::fs::OpenOptions::new().create(true).append(true).open(state.path().join("sweep.log"))?;
    let workdir = repo.workdir().unwrap_or_else(|| repo.path());
    std::process::Command::new(std::env::current_exe()?)
        .args(["sweep", "--json"])
        .current_dir(workdir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok(())
}

/// post-checkout of a branch switch: remember when HEAD left a branch, forget it on return.
/// Returns whether anything changed.
/// git's reflog says `checkout: moving from A to B`; a rebase's detached checkouts say otherwise
/// and so are not "leaving".
fn track_branch_switch(repo: &git2::Repository, state: &StateDir) -> anyhow::Result<bool> {
    let Some((from, to)) = hooks::checkout_move(repo) else { return Ok(false) };
    if from == to {
        return Ok(false);
    }
    let lock = state.lock()?;
    let mut left = state.left_branches()?;
    let before = left.clone();
    let from_ref = format!("refs/heads/{from}");
    if state.local_grants()?.values().any(|g| g.branch == from_ref) {
        left.insert(from_ref, super::now());
    }
    left.remove(&format!("refs/heads/{to}"));
    if left == before {
        return Ok(false);
    }
    state.set_left_branches(&lock, &left)?;
    Ok(true)
}

use std::io::Write;

use clap::Args;

use super::{Ctx, exit, print_json};
use crate::escape;
use crate::ops::sweep::{self, SweepOptions};

/// Reconcile: revoke every open grant whose branch was merged or abandoned, retry pending
/// revocations, deny sessions of intents that never got an outcome, and re-assert the deny entries
/// of revoked grants. Run by the git hooks, and by CI on every push to the protected branch.
#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    iam: super::IamArgs,
    /// Print the decisions as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, args: SweepArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let signer = ctx.signer(&repo)?;
    let options = SweepOptions { timeout: args.iam.timeout(), profile: args.iam.profile, now: super::now() };
    let report = sweep::sweep(&repo, &signer, &options)?;
    super::housekeeping(&repo);
    if report.items.iter().any(|i| i.outcome.is_some()) {
        super::share(&repo);
        let outcomes: Vec<_> = report.items.iter().filter_map(|i| i.outcome.clone()).collect();
        crate::ops::notifications::tell_revoked(&repo, &outcomes, super::now());
    }
    // Notifications that failed earlier (queued) go out when due.
    crate::ops::notifications::retry_queued(&repo, super::now());
    if args.json {
        print_json(&report)?;
    } else {
        let mut out = std::io::stdout().lock();
        if let Some(e) = &report.policy_error {
            writeln!(
                out,
                "warning: policy unreadable, deciding with main/master and 2h: {}",
                escape::controls(e)
            )?;
        }
        for item in report.items.iter().filter(|i| i.decision != "keep") {
            let result = item
                .outcome
                .as_ref()
                .and_then(|o| o.result)
                .map(|r| {
                    serde_json::to_value(r)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                })
                .map(|r| format!(" -> {r}"))
                .unwrap_or_default();
            let detail =
                item.detail.as_deref().map(|d| format!(" ({})", escape::controls(d))).unwrap_or_default();
            writeln!(out, "{} {}{detail}{result}", item.decision, item.grant_id)?;
        }
        let kept = report.items.iter().filter(|i| i.decision == "keep").count();
        writeln!(out, "{kept} open grant(s) kept; {} deny entr(ies) re-asserted", report.reasserted)?;
        for e in &report.reassert_errors {
            writeln!(out, "warning: could not re-assert: {}", escape::controls(e))?;
        }
    }
    Ok(if report.needs_attention() { exit::ERROR } else { exit::OK })
}

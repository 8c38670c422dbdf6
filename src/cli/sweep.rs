use std::io::Write;

use clap::Args;

use super::{Ctx, exit, print_json};
use crate::escape;
use crate::ledger::signing::LazySigner;
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
    let signer = LazySigner::deferred(|| ctx.signer(&repo));
    let options = SweepOptions { timeout: args.iam.timeout(), profile: args.iam.profile, now: super::now() };
    let report = sweep::sweep(&repo, &signer, &options)?;
    let outcomes: Vec<_> = report.items.iter().filter_map(|i| i.outcome.clone()).collect();
    let finished = crate::ops::finish::after_write(
        &repo,
        &[crate::ops::finish::Written::Revoked(&outcomes)],
        super::now(),
    );
    super::report_finished(&finished);
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
        for item in report.items.iter().filter(|i| i.decision != crate::ops::sweep::Decision::Keep) {
            let result = item
                .outcome
                .as_ref()
                .and_then(|o| o.result)
                .map(|r| format!(" -> {}", r.as_str()))
                .unwrap_or_default();
            let detail =
                item.detail.as_deref().map(|d| format!(" ({})", escape::controls(d))).unwrap_or_default();
            writeln!(out, "{} {}{detail}{result}", item.decision, item.grant_id)?;
        }
        let kept = report.items.iter().filter(|i| i.decision == crate::ops::sweep::Decision::Keep).count();
        writeln!(out, "{kept} open grant(s) kept; {} deny entr(ies) re-asserted", report.reasserted)?;
        for e in &report.reassert_errors {
            writeln!(out, "warning: could not re-assert: {}", escape::controls(e))?;
        }
    }
    Ok(if report.needs_attention() { exit::ERROR } else { exit::OK })
}

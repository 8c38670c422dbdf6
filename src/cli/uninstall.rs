use std::io::Write;

use clap::Args;

use super::{Ctx, exit, print_json};
use crate::hooks::{self, UninstallOutcome};

/// Remove tpa's git hooks and put back any hook they had moved aside, byte for byte. The ledger,
/// the policy and your keys stay.
#[derive(Args)]
pub struct UninstallArgs {
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, args: UninstallArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let outcome = hooks::uninstall(&repo, &super::init::hook_binary()?)?;
    if args.json {
        print_json(&outcome)?;
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    match outcome {
        UninstallOutcome::Uninstalled(report) => {
            for hook in &report.hooks {
                writeln!(
                    out,
                    "{}: {}",
                    hook.name,
                    serde_json::to_value(hook.change)?.as_str().unwrap_or_default()
                )?;
            }
        }
        UninstallOutcome::HooksPathInTree(in_tree) => {
            writeln!(
                out,
                "core.hooksPath is {} (in your working tree): remove these lines yourself:",
                in_tree.dir.display()
            )?;
            for line in &in_tree.lines {
                writeln!(out, "  {}: {}", line.name, line.line)?;
            }
        }
    }
    Ok(exit::OK)
}

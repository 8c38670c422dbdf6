use std::io::Write;

use clap::Args;

use super::{Ctx, exit, print_json};
use crate::escape;
use crate::ops::broker::{self, Action, BrokerOptions, BrokerReport};

/// Serve requests for roles with `mint = "broker"`: check each approved request again against the
/// trust ref, mint it with this identity, deliver the credentials encrypted to the requester's
/// one-time key, refuse (with a signed reason) what does not hold, and apply the revocations that
/// clones without IAM rights asked for. Run by trusted automation (a CI job with an OIDC role, or
/// a systemd service) with the identity that alone may assume the broker roles.
#[derive(Args)]
pub struct BrokerArgs {
    /// One pass, then exit (the default; for scheduled CI jobs).
    #[arg(long, conflicts_with = "watch")]
    once: bool,
    /// Keep serving, a pass every --interval, until interrupted.
    #[arg(long)]
    watch: bool,
    /// The pause between two passes of --watch.
    #[arg(long, value_parser = crate::grant::parse_duration, default_value = "5s", requires = "watch")]
    interval: u64,
    /// The remote the team shares the ledger and branches through.
    #[arg(long, default_value = "origin")]
    remote: String,
    #[command(flatten)]
    iam: super::IamArgs,
    /// Print each pass as JSON (one object per line with --watch).
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Ctx, args: BrokerArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let signer = ctx.signer(&repo)?;
    let options =
        BrokerOptions { remote: args.remote, profile: args.iam.profile.clone(), timeout: args.iam.timeout() };
    let interruption = crate::interrupt::Interruption::catch()?;
    if !args.watch {
        let report = broker::pass(&repo, &signer, &options, &interruption)?;
        if args.json {
            print_json(&report)?;
        } else {
            render(&report)?;
        }
        return Ok(if report.needs_attention() { exit::ERROR } else { exit::OK });
    }
    // One line a pass with --json (JSON Lines, for a journal or a log shipper). A pass that fails
    // (the remote is down) is said and retried: the next may succeed.
    let mut on_pass = |pass: Result<BrokerReport, broker::BrokerError>| {
        let shown = match (pass, args.json) {
            (Ok(report), true) => json_line(&report),
            (Ok(report), false) => render(&report),
            (Err(e), true) => json_line(&serde_json::json!({ "error": e.to_string() })),
            (Err(e), false) => {
                eprintln!("tpa: broker pass failed: {}", escape::controls(&e.to_string()));
                Ok(())
            }
        };
        // stdout gone (a closed pipe) is no reason to stop minting and revoking.
        let _ = shown;
    };
    broker::watch(
        &repo,
        &signer,
        &options,
        std::time::Duration::from_secs(args.interval),
        &interruption,
        &mut on_pass,
    );
    Ok(exit::INTERRUPTED)
}

fn json_line(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn render(report: &BrokerReport) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for item in &report.items {
        let action = match item.action {
            Action::Minted => "minted",
            Action::Refused => "refused",
            Action::Waiting => "waiting",
            Action::Denied => "denied",
            Action::TakenElsewhere => "taken-elsewhere",
            Action::Error => "error",
        };
        let detail =
            item.detail.as_deref().map(|d| format!(" ({})", escape::controls(d))).unwrap_or_default();
        writeln!(out, "{action} {}{detail}", item.grant_id)?;
    }
    if let Some(sweep) = &report.sweep {
        for item in sweep.items.iter().filter(|i| i.decision != crate::ops::sweep::Decision::Keep) {
            let result = item
                .outcome
                .as_ref()
                .and_then(|o| o.result)
                .map(|r| format!(" -> {}", r.as_str()))
                .unwrap_or_default();
            writeln!(out, "sweep {} {}{result}", item.decision, item.grant_id)?;
        }
    }
    if report.deliveries_removed > 0 {
        writeln!(out, "{} undelivered delivery(ies) of ended grants removed", report.deliveries_removed)?;
    }
    for finding in &report.findings {
        writeln!(out, "finding: {}", escape::controls(finding))?;
    }
    for e in &report.unpushed {
        writeln!(out, "warning: the ledger was not pushed: {}", escape::controls(e))?;
    }
    if report.items.is_empty() {
        writeln!(out, "no request for the broker")?;
    }
    Ok(())
}

use std::io::Write;

use clap::Args;
use serde_json::json;

use super::{Ctx, exit, print_json, render};
use crate::escape;
use crate::ops::ledger;
use crate::trust::TrustOrigin;

/// Check the whole ledger: signatures, signers (as of the trust ref), where each record is stored,
/// and the notes ref's history. Exits 1 when there is any finding.
#[derive(Args)]
pub struct VerifyArgs {
    /// Print the findings as JSON.
    #[arg(long)]
    json: bool,
    /// After you have examined a reported rewrite of refs/notes/tpa, accept its current tip as the
    /// new reference point.
    #[arg(long)]
    accept_rewrite: bool,
    /// Check every record and the whole history even when the last verified tip and its cache
    /// would let tpa check only what is new since.
    #[arg(long)]
    full: bool,
}

pub fn run(ctx: &Ctx, args: VerifyArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let mut out = std::io::stdout().lock();
    crate::ledger::check::checks_run_one_at_a_time();
    let options = ledger::VerifyOptions { accept_rewrite: args.accept_rewrite, full: args.full };
    let verified = ledger::verify(&repo, options)?;
    let summary = &verified.summary;
    let findings = &summary.findings;
    if args.json {
        print_json(&json!({
            "ok": findings.is_empty(),
            "tip": verified.tip.map(|t| t.to_string()),
            "trust_ref": verified.trust.as_ref().map(|t| &t.refname),
            "trust_commit": verified.trust.as_ref().map(|t| t.commit.to_string()),
            "records": summary.records,
            "findings": findings,
            "git_copies": summary.git_copies,
            "checked": verified.coverage,
        }))?;
    } else {
        if let Some(trust) = &verified.trust {
            if trust.origin == TrustOrigin::LocalNoRemote {
                eprintln!(
                    "note: no remote: trusting the local branch {}, which nobody reviewed",
                    render::branch(&trust.refname)
                );
            }
            writeln!(
                out,
                "checked {} records against .tpa/allowed_signers at {} ({})",
                summary.records,
                escape::text(&trust.refname),
                render::short(&trust.commit.to_string())
            )?;
            if let ledger::Coverage::SinceWitness { commits, notes_checked, .. } = &verified.coverage {
                writeln!(
                    out,
                    "since the last verified tip: {commits} new notes commit(s), {notes_checked} note(s) checked; \
                     the rest as verified then (--full checks everything again)"
                )?;
            }
        } else {
            writeln!(out, "the ledger is empty")?;
        }
        for f in findings {
            let place = match (&f.commit, f.line) {
                (Some(c), Some(l)) => format!(" {}:{l}", render::short(c)),
                (Some(c), None) => format!(" {}", render::short(c)),
                _ => String::new(),
            };
            let grant = f.grant_id.as_ref().map(|g| format!(" grant {g}")).unwrap_or_default();
            let kind = f.kind.as_str();
            writeln!(out, "{kind}{place}{grant}: {}", escape::text(&f.message))?;
        }
        if !summary.git_copies.is_empty() {
            writeln!(
                out,
                "info: {} record(s) copied by git (notes.rewriteRef) onto rewritten commits, originals in \
                 place: ignored",
                summary.git_copies.len()
            )?;
        }
        match findings.len() {
            0 => writeln!(out, "ok: no findings")?,
            1 => writeln!(out, "1 finding")?,
            n => writeln!(out, "{n} findings")?,
        }
    }
    Ok(if findings.is_empty() { exit::OK } else { exit::FINDINGS })
}

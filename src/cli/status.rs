use std::io::Write;

use clap::Args;

use super::{Ctx, exit, print_json, render};
use crate::escape;
use crate::grant::GrantState;
use crate::ops::{context, grants};

/// Your grants in this repository that are still open (or everyone's, with --all), with time left.
#[derive(Args)]
pub struct StatusArgs {
    /// Everyone's grants, not only yours.
    #[arg(long)]
    all: bool,
    /// Include grants that ended (expired, revoked, failed).
    #[arg(long)]
    history: bool,
    /// Print the grants as a JSON array.
    #[arg(long)]
    json: bool,
    /// Refresh every few seconds until interrupted (after `tpa sync`, the whole team's grants).
    #[arg(long, conflicts_with = "json")]
    watch: bool,
    /// How often --watch refreshes.
    #[arg(long, value_parser = crate::grant::parse_duration, default_value = "5s", requires = "watch")]
    interval: u64,
}

pub fn run(ctx: &Ctx, args: StatusArgs) -> anyhow::Result<u8> {
    if !args.watch {
        return run_once(ctx, &args);
    }
    use std::io::IsTerminal;
    let terminal = std::io::stdout().is_terminal();
    loop {
        if terminal {
            // Clear the screen and go home: a live view, not a scrolling log.
            print!("\x1b[2J\x1b[H");
        } else {
            println!("--- {}", render::time(super::now()));
        }
        run_once(ctx, &args)?;
        std::io::stdout().flush()?;
        std::thread::sleep(std::time::Duration::from_secs(args.interval.max(1)));
    }
}

/// Whether the ledger has records of the grant `id` (an id that does not parse has none).
fn in_ledger(repo: &git2::Repository, id: &str, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<bool> {
    let Ok(grant_id) = id.parse() else { return Ok(false) };
    Ok(grants::find(repo, &grant_id, now)?.is_some())
}

fn run_once(ctx: &Ctx, args: &StatusArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    let me = context::principal(&repo)?.email;
    let now = super::now();
    // Without --history only the open grants are read (through the grant index).
    let all = if args.history { grants::list(&repo, now)? } else { grants::open(&repo, now)? };
    // Grants this clone holds whose records are gone from the ledger: loud, since nothing else
    // would show them until a sweep puts the records back.
    for (id, local) in crate::state::StateDir::open(&repo)?.local_grants()? {
        let unexpired = local.expires_at.is_some_and(|e| e > now);
        if unexpired && !all.iter().any(|g| g.grant_id.as_str() == id) && !in_ledger(&repo, &id, now)? {
            eprintln!(
                "WARNING: grant {} (branch {}) is held here but its records are missing from the ledger: \
                 run `tpa sweep` to put them back and end it",
                escape::text(&id),
                render::branch(&local.branch)
            );
        }
    }
    let shown: Vec<_> = all
        .into_iter()
        .filter(|g| args.all || g.principal == me)
        .filter(|g| args.history || g.state.is_open())
        .collect();
    if args.json {
        print_json(&shown)?;
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    if shown.is_empty() {
        writeln!(out, "no open grants{}", if args.all { "" } else { " of yours (--all for everyone's)" })?;
        return Ok(exit::OK);
    }
    for g in &shown {
        let left = match (g.state, g.seconds_left) {
            (GrantState::Active, Some(s)) => format!("{}m{:02}s left", s / 60, s % 60),
            _ => String::new(),
        };
        let what = g.role.clone().unwrap_or_else(|| g.target.clone());
        writeln!(
            out,
            "{}  {:<11} {:<14} {}  {} @ {}  {}",
            g.grant_id,
            g.state.to_string(),
            left,
            escape::text(&what),
            render::branch(&g.branch),
            render::short(&g.commit),
            if args.all { escape::text(&g.principal) } else { String::new() },
        )?;
        writeln!(out, "    reason: {}", escape::text(&g.reason))?;
    }
    match crate::secrets::backend() {
        Ok(backend) => writeln!(out, "keyring: {backend}")?,
        Err(e) => writeln!(out, "keyring: not usable here ({e})")?,
    }
    Ok(exit::OK)
}

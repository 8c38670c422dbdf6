use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{Ctx, exit, print_json};
use crate::escape;
use crate::hooks::{InstallOutcome, ManagerReport};
use crate::ops::init::{Change, InitOptions, InitReport, init, plan_hooks};
use crate::trust::TrustOrigin;

/// Set up tpa in this repository: a signing key, your entry in .tpa/allowed_signers, a starter
/// .tpa/policy.toml, and fetching of others' records. Safe to run again.
#[derive(Args)]
pub struct InitArgs {
    /// Sign with this unencrypted OpenSSH private key file (CI). Without it: TPA_SIGNING_KEY, else
    /// git's SSH signing key (gpg.format=ssh + user.signingkey), else a new key in the OS keyring.
    #[arg(long, value_name = "PATH")]
    signing_key: Option<PathBuf>,
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
    /// Change nothing: show what installing the hooks would change, in git's hooks directory or in
    /// your hook manager's files (husky, lefthook: as diffs). The other steps are skipped.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(ctx: &Ctx, args: InitArgs) -> anyhow::Result<u8> {
    let repo = ctx.repo()?;
    if args.dry_run {
        let outcome = plan_hooks(&repo, &hook_binary()?)?;
        if args.json {
            print_json(&outcome)?;
        } else {
            print_hooks(&mut std::io::stdout().lock(), &outcome, true)?;
        }
        return Ok(exit::OK);
    }
    let options = InitOptions {
        signing_key: args.signing_key,
        env_signing_key: std::env::var_os("TPA_SIGNING_KEY").filter(|p| !p.is_empty()).map(PathBuf::from),
        tpa_path: Some(hook_binary()?),
    };
    let report = init(&repo, &options)?;
    if args.json {
        print_json(&report)?;
    } else {
        print_human(&report)?;
    }
    Ok(exit::OK)
}

fn print_human(r: &InitReport) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let signer = match r.signer {
        "file" => "key file",
        "user-file" => {
            "ed25519 key file in your config dir (this machine's only keyring, the kernel's, forgets at reboot)"
        }
        "env" => "key file from TPA_SIGNING_KEY",
        "ssh-keygen" => "your git SSH signing key, through ssh-keygen",
        _ => "ed25519 key in the OS keyring",
    };
    let fresh = if r.signer_change == Change::Created { "set up" } else { "already set up" };
    writeln!(out, "signer:          {signer} ({}), {fresh}", r.signer_fingerprint)?;
    if let (Some(path), "user-file") = (&r.signer_key_file, r.signer) {
        writeln!(out, "                 {} (mode 0600; back it up like an SSH key)", path.display())?;
    }
    let who = escape::text(&r.principal);
    match r.allowed_signers {
        Change::Created => {
            writeln!(out, "allowed signers: added {who} to {}", r.allowed_signers_path.display())?
        }
        Change::Unchanged => {
            writeln!(out, "allowed signers: key already in {}", r.allowed_signers_path.display())?
        }
    }
    if let Some(other) = &r.key_listed_for {
        eprintln!(
            "warning: that key is listed for {}, not for {who}: records you sign will not verify",
            escape::text(other)
        );
    }
    match r.policy {
        Change::Created => {
            writeln!(out, "policy:          wrote {} (a commented starting point)", r.policy_path.display())?
        }
        Change::Unchanged => {
            writeln!(out, "policy:          {} exists, left as is", r.policy_path.display())?
        }
    }
    for spec in &r.refspecs_added {
        writeln!(out, "remote fetch:    {}", escape::text(spec))?;
    }
    if let Some(hooks) = &r.hooks {
        print_hooks(&mut out, hooks, false)?;
    }
    match (&r.trust_ref, r.trust_origin) {
        (Some(refname), Some(TrustOrigin::LocalNoRemote)) => writeln!(
            out,
            "trust ref:       {} (no remote: nobody reviews what lands there)",
            escape::text(refname)
        )?,
        (Some(refname), _) => writeln!(out, "trust ref:       {}", escape::text(refname))?,
        (None, _) => writeln!(out, "trust ref:       none yet (no main or master branch)")?,
    }
    if !r.key_trusted {
        let branch = r.trust_ref.as_deref().map(super::render::branch).unwrap_or_else(|| "main".into());
        writeln!(
            out,
            "next:            commit .tpa/ and get it merged into {branch} through review; until your key is \
             in .tpa/allowed_signers there, `tpa verify` reports your records as unknown_signer"
        )?;
    }
    Ok(())
}

fn print_hooks(out: &mut impl Write, outcome: &InstallOutcome, dry_run: bool) -> std::io::Result<()> {
    match outcome {
        InstallOutcome::Installed(report) => {
            let refused: Vec<&str> = report.refused().map(|h| h.name).collect();
            writeln!(out, "git hooks:       {} ({} hooks)", report.dir.display(), report.hooks.len())?;
            for hook in report.hooks.iter().filter(|_| dry_run) {
                let change = serde_json::to_value(hook.change).unwrap_or_default();
                writeln!(
                    out,
                    "                 {}: would be {}",
                    hook.name,
                    change.as_str().unwrap_or_default()
                )?;
            }
            for hook in report.hooks.iter().filter(|h| h.original.is_some()) {
                writeln!(out, "                 kept your {} hook: it runs first, as before", hook.name)?;
            }
            if !refused.is_empty() {
                eprintln!("warning: not installed (a .tpa-orig backup is in the way): {refused:?}");
            }
        }
        InstallOutcome::HooksPathInTree(in_tree) => {
            writeln!(
                out,
                "git hooks:       core.hooksPath is {} (in your tree); add to each hook, after its first line:",
                in_tree.dir.display()
            )?;
            for line in &in_tree.lines {
                writeln!(out, "                 {}:", line.name)?;
                for text in line.line.lines() {
                    writeln!(out, "                   {text}")?;
                }
            }
        }
        InstallOutcome::Manager(report) => print_manager(out, report)?,
    }
    Ok(())
}

fn print_manager(out: &mut impl Write, r: &ManagerReport) -> std::io::Result<()> {
    let name = r.manager.name();
    let shown = |p: &std::path::Path| escape::text(&p.display().to_string());
    writeln!(out, "git hooks:       through {name} ({})", shown(&r.config))?;
    let (created, edited) = if r.dry_run { ("would create", "would edit") } else { ("created", "edited") };
    for edit in &r.edits {
        let what = if edit.created { created } else { edited };
        writeln!(out, "                 {what} {} ({})", shown(&edit.path), edit.hooks.join(", "))?;
        for line in edit.diff.lines() {
            writeln!(out, "                 {}", escape::text(line))?;
        }
    }
    for step in &r.manual {
        writeln!(
            out,
            "                 add to {} yourself ({}: {}):",
            shown(&step.path),
            step.hooks.join(", "),
            escape::text(&step.reason)
        )?;
        for line in step.add.lines() {
            writeln!(out, "                   {}", escape::text(line))?;
        }
    }
    if r.edits.is_empty() && r.manual.is_empty() {
        writeln!(out, "                 {name} already runs tpa for {}", crate::hooks::HOOKS.join(", "))?;
    }
    if let Some(command) = &r.activate {
        writeln!(
            out,
            "next:            run `{command}` so that git runs {name} for tpa's hooks in this clone"
        )?;
    }
    Ok(())
}

/// What the git hooks run: `tpa-hook` beside this binary (no AWS SDK, fast start) when installed,
/// else tpa itself.
pub fn hook_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let fast = me.with_file_name(format!("tpa-hook{}", std::env::consts::EXE_SUFFIX));
    Ok(if fast.exists() { fast } else { me })
}

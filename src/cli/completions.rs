//! `tpa completions SHELL`: the shell completion script, on stdout.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, exit};

/// Print a completion script for SHELL. E.g. `tpa completions bash > ~/.local/share/bash-completion/completions/tpa`,
/// `tpa completions zsh > "${fpath[1]}/_tpa"`, `tpa completions fish > ~/.config/fish/completions/tpa.fish`.
#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

pub fn run(args: CompletionsArgs) -> anyhow::Result<u8> {
    let mut cmd = public_command();
    // Into a buffer first: clap_complete panics on a write error (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "tpa", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(exit::OK)
}

/// tpa's command line without its hidden subcommands (`hook`, `debug`): clap_complete would
/// otherwise offer them, and they are plumbing, not for people.
pub(super) fn public_command() -> clap::Command {
    let full = Cli::command();
    let mut cmd = clap::Command::new("tpa").args(full.get_arguments().cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    // Any version makes clap add --version/-V for completion; the text is not shown.
    cmd.version(env!("CARGO_PKG_VERSION"))
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
        .subcommand_required(true)
        .max_term_width(100)
}

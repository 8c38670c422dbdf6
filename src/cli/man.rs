//! `tpa man`: the man page (roff), on stdout.

use std::io::Write;

use clap::{Args, CommandFactory};

use super::{Cli, exit};

/// Print tpa's man page (roff). E.g. `tpa man > ~/.local/share/man/man1/tpa.1`, or
/// `tpa man | man -l -`. Each command's details are in `tpa COMMAND --help`.
#[derive(Args)]
pub struct ManArgs {}

pub fn run(_args: ManArgs) -> anyhow::Result<u8> {
    // clap_mangen leaves hidden subcommands (hook, debug) out of the page.
    let man = clap_mangen::Man::new(Cli::command());
    let mut out = std::io::stdout().lock();
    man.render(&mut out)?;
    out.flush()?;
    Ok(exit::OK)
}

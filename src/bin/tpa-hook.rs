//! The git hooks' fast path: a small binary that links no AWS SDK and no keyring client, so a git
//! command pays only for what a hook with nothing to do needs. It runs a moved-aside foreign hook,
//! looks at the local index of grants this clone holds, and hands over to `tpa hook` only when
//! there is something to decide.
//!
//! Started three ways, always as `tpa-hook hook NAME [GIT'S ARGUMENTS...]`:
//! - by the script `tpa init` installs (hooks/NAME), which sets `TPA_HOOKS_DIR`: a foreign hook
//!   moved aside to `NAME.tpa-orig` runs first, with git's arguments and stdin, and its exit status
//!   is the hook's;
//! - by pre-commit (through hooks/NAME, `.pre-commit-hooks.yaml`), with no arguments: git's are in
//!   the `PRE_COMMIT_*` variables;
//! - by a line in a hook manager's files (lefthook, husky): no `TPA_HOOKS_DIR`, so no original to
//!   run, and stdin is left alone for the team's own commands.
//!
//! In every case tpa's own part exits 0.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use tpa::hooks;

const USAGE: &str = "tpa-hook: run by tpa's git hooks as `tpa-hook hook NAME ARGS...`";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let (Some(hook), Some(name)) = (args.first(), args.get(1).and_then(|n| n.to_str())) else {
        eprintln!("{USAGE}");
        return ExitCode::SUCCESS;
    };
    if hook != "hook" || !hooks::HOOKS.contains(&name) {
        eprintln!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let (rest, from_pre_commit) = hooks::git_args(name, args[2..].to_vec(), |k| std::env::var_os(k));
    let dir = std::env::var_os(hooks::HOOKS_DIR_ENV).filter(|d| !d.is_empty()).map(PathBuf::from);
    // git's stdin (post-rewrite's list of rewritten commits) is read only to hand to an original
    // hook; under a manager it belongs to the team's own commands.
    let mut stdin = Vec::new();
    if name == "post-rewrite" && dir.is_some() && !from_pre_commit {
        let _ = std::io::stdin().read_to_end(&mut stdin);
    }
    let status =
        dir.and_then(|d| hooks::run_original(&d, name, &rest, &stdin).ok().flatten()).map(hooks::exit_code);
    if !needs_tpa(name, &rest) {
        return ExitCode::from(status.unwrap_or(0));
    }
    hand_over(name, &rest, &stdin, status)
}

/// Decided from local state in a few file reads: usually there is nothing to do, and then not even
/// libgit2 is asked.
fn needs_tpa(name: &str, rest: &[OsString]) -> bool {
    let fast = hooks::fast_index(std::path::Path::new("."), |k| std::env::var_os(k));
    if fast == Some(hooks::FastIndex::Absent) {
        return false;
    }
    match git2::Repository::discover(".") {
        // Once: then the index is gone, and the next hook (and the lines in a manager's files)
        // need not even start.
        Ok(repo) if fast == Some(hooks::FastIndex::Empty) => {
            hooks::drop_empty_index(&repo);
            false
        }
        Ok(repo) => hooks::needs_tpa(&repo, name, rest),
        Err(_) => false, // not in a repository: nothing of tpa's to look after
    }
}

/// Runs the full `tpa hook` (beside this binary, else on PATH). The original, if any, has run: the
/// hook's exit status stays its own.
fn hand_over(name: &str, rest: &[OsString], stdin: &[u8], status: Option<u8>) -> ExitCode {
    let tpa = std::env::current_exe()
        .ok()
        .and_then(|me| me.parent().map(|d| d.join("tpa")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("tpa"));
    let mut command = Command::new(tpa);
    command.arg("hook").arg(name).args(rest).stdin(Stdio::piped()).env("TPA_HOOK_ORIGINAL_DONE", "1");
    match command.spawn() {
        Ok(mut child) => {
            if let Some(mut input) = child.stdin.take() {
                let _ = input.write_all(stdin);
            }
            let _ = child.wait();
        }
        Err(e) => eprintln!("tpa-hook: cannot run tpa ({e}); run `tpa init` again or `tpa uninstall`"),
    }
    ExitCode::from(status.unwrap_or(0))
}

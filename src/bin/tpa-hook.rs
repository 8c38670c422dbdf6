//! The git hooks' fast path: a small binary that links no AWS SDK and no keyring client, so a git
//! command pays only for what a hook with nothing to do needs. It runs a moved-aside foreign hook,
//! looks at the local index of grants this clone holds, and hands over to `tpa hook` only when
//! there is something to decide.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use tpa::hooks;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let (Some(hook), Some(name)) = (args.first(), args.get(1).and_then(|n| n.to_str())) else {
        eprintln!("tpa-hook: run by tpa's git hooks as `tpa-hook hook NAME ARGS...`");
        return ExitCode::SUCCESS;
    };
    if hook != "hook" {
        eprintln!("tpa-hook: run by tpa's git hooks as `tpa-hook hook NAME ARGS...`");
        return ExitCode::SUCCESS;
    }
    let rest = &args[2..];
    let mut stdin = Vec::new();
    if name == "post-rewrite" {
        let _ = std::io::stdin().read_to_end(&mut stdin);
    }
    let Some(dir) = std::env::var_os(hooks::HOOKS_DIR_ENV).map(PathBuf::from) else {
        // Not started by tpa's script: let the full tpa work out everything.
        return hand_over(name, rest, &stdin, false, None);
    };
    let status = hooks::run_original(&dir, name, rest, &stdin).ok().flatten().map(hooks::exit_code);
    if !needs_tpa(name, rest) {
        return ExitCode::from(status.unwrap_or(0));
    }
    hand_over(name, rest, &stdin, true, status)
}

/// Decided from local state in a few file reads: usually there is nothing to do.
fn needs_tpa(name: &str, rest: &[OsString]) -> bool {
    match git2::Repository::discover(".") {
        Ok(repo) => hooks::needs_tpa(&repo, name, rest),
        Err(_) => false, // not in a repository: nothing of tpa's to look after
    }
}

/// Runs the full `tpa hook` (beside this binary, else on PATH); the hook's exit status stays the
/// foreign hook's.
fn hand_over(
    name: &str,
    rest: &[OsString],
    stdin: &[u8],
    original_done: bool,
    status: Option<u8>,
) -> ExitCode {
    let tpa = std::env::current_exe()
        .ok()
        .and_then(|me| me.parent().map(|d| d.join("tpa")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("tpa"));
    let mut command = Command::new(tpa);
    command.arg("hook").arg(name).args(rest).stdin(Stdio::piped());
    if original_done {
        command.env("TPA_HOOK_ORIGINAL_DONE", "1");
    }
    let code = match command.spawn() {
        Ok(mut child) => {
            if let Some(mut input) = child.stdin.take() {
                let _ = input.write_all(stdin);
            }
            child.wait().ok().map(hooks::exit_code)
        }
        Err(e) => {
            eprintln!("tpa-hook: cannot run tpa ({e}); run `tpa init` again or `tpa uninstall`");
            None
        }
    };
    ExitCode::from(if original_done { status.unwrap_or(0) } else { code.unwrap_or(0) })
}

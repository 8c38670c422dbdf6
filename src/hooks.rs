//! tpa's git hooks: installing them where git really looks, uninstalling them, and running the foreign
//! hook that was there before.
//!
//! A hook is a tiny `#!/bin/sh` script that execs `tpa hook <name> "$@"`. tpa never overwrites a
//! hook that is not its own: it moves it aside to `<name>.tpa-orig`, and `tpa hook` runs it first
//! (with [`run_original`]) with the same arguments and stdin, passing its exit status through.
//! `tpa uninstall` puts it back, byte for byte.
//!
//! The hooks directory is asked of the real `git` (`git rev-parse --path-format=absolute --git-path
//! hooks`) rather than recomputed with libgit2: the directory only matters if git runs hooks from it, and
//! git's own answer honours everything git honours (`core.hooksPath` with `~` and relative values,
//! `includeIf`, `-c` and `GIT_CONFIG_*` overrides, per-worktree config, the common dir of linked
//! worktrees), where a reimplementation would quietly install hooks that never run. It costs one git
//! process at `tpa init` and `tpa uninstall` only: a running hook learns its directory from
//! [`HOOKS_DIR_ENV`], which the script sets from its own path.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use git2::Repository;
use serde::Serialize;

pub mod managers;

pub use managers::{Manager, ManagerReport};

/// The hooks tpa installs. post-commit is among them because the commit after `merge --squash`,
/// after a conflicted merge and after a cherry-pick fires only post-commit.
pub const HOOKS: [&str; 4] = ["post-merge", "post-commit", "post-checkout", "post-rewrite"];

/// The second line of every hook tpa writes; only files carrying it are tpa's to rewrite or remove.
pub const MARKER: &str = "# tpa-managed-hook v1";
/// What identifies a tpa hook of any version.
const MARKER_PREFIX: &str = "# tpa-managed-hook";

/// A foreign hook moved aside is kept as `<name>` + this suffix, in the same directory.
pub const ORIGINAL_SUFFIX: &str = ".tpa-orig";

/// Set by the hook script to the absolute directory it runs from, before it execs `tpa hook`: the
/// directory to hand to [`run_original`] without asking git again (a hook must be fast).
pub const HOOKS_DIR_ENV: &str = "TPA_HOOKS_DIR";

/// tpa's own hooks are a few hundred bytes; anything much larger is not one of them.
const MAX_TPA_HOOK_LEN: u64 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot run git to find the hooks directory: {source}; is git installed and on PATH?")]
    GitSpawn {
        #[source]
        source: io::Error,
    },
    #[error("`git rev-parse --git-path hooks` failed ({status}): {stderr}")]
    GitFailed { status: ExitStatus, stderr: String },
    #[error(
        "`git rev-parse --path-format=absolute --git-path hooks` printed no absolute path ({output:?}); \
         tpa needs git 2.31 or later"
    )]
    GitTooOld { output: String },
    #[error("the path of tpa written into a hook must be absolute, not {path}")]
    RelativeTpaPath { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HookError + '_ {
    move |source| HookError::Io { path: path.to_owned(), source }
}

/// Where git runs hooks from, for one repository (or linked worktree).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HooksDir {
    /// Absolute, symlinks resolved (as git prints it); it may not exist yet.
    pub dir: PathBuf,
    /// `core.hooksPath` points into the working tree (husky and friends): the directory is
    /// committed, and tpa does not write there.
    pub in_work_tree: bool,
    /// `core.hooksPath` moved the directory away from `<common git dir>/hooks`. If it is outside
    /// the tree it may be shared with other repositories (a global `core.hooksPath`).
    pub configured: bool,
}

/// What happened to one hook at install time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookChange {
    /// There was no hook: tpa's was written.
    Installed,
    /// tpa's hook was already there, as it would be written now: nothing changed.
    AlreadyInstalled,
    /// tpa's hook was there but differed (another tpa path, an older version, a wrong mode): rewritten.
    Updated,
    /// A foreign hook was moved to `<name>.tpa-orig` and tpa's written; `tpa hook` runs it first.
    InstalledKeepingOriginal,
    /// A foreign hook is there and `<name>.tpa-orig` exists too: nothing was touched. The user must
    /// merge or remove one of them and run `tpa init` again.
    RefusedBackupExists,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookResult {
    pub name: &'static str,
    pub change: HookChange,
    /// `<name>.tpa-orig` when it exists after the install (tpa runs it first), or, with
    /// [`HookChange::RefusedBackupExists`], the backup that blocked it.
    pub original: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstallReport {
    pub dir: PathBuf,
    /// See [`HooksDir::configured`].
    pub configured: bool,
    pub hooks: Vec<HookResult>,
}

impl InstallReport {
    /// The hooks that could not be installed.
    pub fn refused(&self) -> impl Iterator<Item = &HookResult> {
        self.hooks.iter().filter(|h| h.change == HookChange::RefusedBackupExists)
    }
}

/// One line to add to (or, at uninstall, remove from) a committed hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookLine {
    pub name: &'static str,
    /// [`hook_line`] (three lines of sh): tpa-hook from PATH, no path of this machine (the file is
    /// committed). Best placed right after the shebang line: it always succeeds, so the hook's own
    /// exit status stays that of its last command.
    pub line: String,
}

/// `core.hooksPath` points into the working tree: tpa wrote (or removed) nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HooksPathInTree {
    pub dir: PathBuf,
    pub lines: Vec<HookLine>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum InstallOutcome {
    Installed(InstallReport),
    HooksPathInTree(HooksPathInTree),
    /// A hook manager (husky, lefthook, pre-commit) owns the hooks: tpa went through it.
    Manager(ManagerReport),
}

/// What happened to one hook at uninstall time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UninstallChange {
    /// tpa's hook was removed; there was no original to restore.
    Removed,
    /// `<name>.tpa-orig` was put back as `<name>` (replacing tpa's hook, if it was still there).
    RestoredOriginal,
    /// Neither tpa's hook nor a backup: whatever is there (a foreign hook) was left alone.
    NotInstalled,
    /// A foreign hook and `<name>.tpa-orig` are both there: neither was touched.
    RefusedForeignHook,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UninstallResult {
    pub name: &'static str,
    pub change: UninstallChange,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UninstallReport {
    pub dir: PathBuf,
    pub hooks: Vec<UninstallResult>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum UninstallOutcome {
    Uninstalled(UninstallReport),
    HooksPathInTree(HooksPathInTree),
}

/// The directory git runs this repository's hooks from (see the module doc for why git is asked).
pub fn hooks_dir(repo: &Repository) -> Result<HooksDir, HookError> {
    hooks_dir_with(repo, Command::new("git"))
}

/// Installs tpa's hooks, `tpa` being the absolute path of the running binary, written into each hook;
/// or, where a hook manager owns the hooks ([`managers::detect`]), adds tpa to the manager's files.
/// With `dry_run`, writes nothing and reports what would change.
pub fn install(repo: &Repository, tpa: &Path, dry_run: bool) -> Result<InstallOutcome, HookError> {
    install_dry_with(repo, tpa, Command::new("git"), dry_run)
}

/// Removes tpa's hooks and restores the ones they replaced. `tpa` is only used to name the lines to
/// remove when `core.hooksPath` points into the tree.
pub fn uninstall(repo: &Repository, tpa: &Path) -> Result<UninstallOutcome, HookError> {
    uninstall_with(repo, tpa, Command::new("git"))
}

/// `git` is the command to run git with, environment included (the test seam).
fn hooks_dir_with(repo: &Repository, mut git: Command) -> Result<HooksDir, HookError> {
    // Point git at the very repository the caller opened, whatever way it was found.
    git.arg("--git-dir").arg(repo.path());
    match repo.workdir() {
        Some(workdir) => git.arg("--work-tree").arg(workdir).current_dir(workdir),
        None => git.current_dir(repo.path()),
    };
    git.args(["rev-parse", "--path-format=absolute", "--git-path", "hooks"])
        .env_remove("GIT_COMMON_DIR")
        .stdin(Stdio::null());
    let out = git.output().map_err(|source| HookError::GitSpawn { source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(HookError::GitFailed { status: out.status, stderr });
    }
    let mut stdout = out.stdout;
    // Exactly one newline ends the path; a path may hold others.
    if stdout.last() == Some(&b'\n') {
        stdout.pop();
    }
    let dir = PathBuf::from(os_string_from_bytes(&stdout));
    if !dir.is_absolute() {
        return Err(HookError::GitTooOld { output: String::from_utf8_lossy(&stdout).into_owned() });
    }
    let canonical = |p: &Path| fs::canonicalize(p).map_err(io_err(p));
    let common = canonical(repo.commondir())?;
    let git_dir = canonical(repo.path())?;
    let in_work_tree = match repo.workdir() {
        Some(workdir) => {
            dir.starts_with(canonical(workdir)?) && !dir.starts_with(&common) && !dir.starts_with(&git_dir)
        }
        None => false,
    };
    let configured = dir != common.join("hooks");
    Ok(HooksDir { dir, in_work_tree, configured })
}

#[cfg(test)]
fn install_with(repo: &Repository, tpa: &Path, git: Command) -> Result<InstallOutcome, HookError> {
    install_dry_with(repo, tpa, git, false)
}

fn install_dry_with(
    repo: &Repository,
    tpa: &Path,
    git: Command,
    dry_run: bool,
) -> Result<InstallOutcome, HookError> {
    check_tpa_path(tpa)?;
    let hooks = hooks_dir_with(repo, git)?;
    if let Some(found) = repo.workdir().and_then(managers::detect) {
        let workdir = repo.workdir().unwrap_or(Path::new("."));
        return Ok(InstallOutcome::Manager(managers::install(workdir, &hooks, &found, dry_run)?));
    }
    if hooks.in_work_tree {
        return Ok(InstallOutcome::HooksPathInTree(in_tree(hooks.dir)));
    }
    let mut report = install_in_with(&hooks.dir, tpa, dry_run)?;
    report.configured = hooks.configured;
    Ok(InstallOutcome::Installed(report))
}

fn uninstall_with(repo: &Repository, tpa: &Path, git: Command) -> Result<UninstallOutcome, HookError> {
    let hooks = hooks_dir_with(repo, git)?;
    if hooks.in_work_tree {
        check_tpa_path(tpa)?;
        return Ok(UninstallOutcome::HooksPathInTree(in_tree(hooks.dir)));
    }
    Ok(UninstallOutcome::Uninstalled(uninstall_in(&hooks.dir)?))
}

fn check_tpa_path(tpa: &Path) -> Result<(), HookError> {
    if tpa.is_absolute() { Ok(()) } else { Err(HookError::RelativeTpaPath { path: tpa.to_owned() }) }
}

fn in_tree(dir: PathBuf) -> HooksPathInTree {
    let lines = HOOKS.iter().map(|&name| HookLine { name, line: hook_line(name) }).collect();
    HooksPathInTree { dir, lines }
}

/// Installs tpa's hooks into `dir` (created if missing), whatever git would say about it.
pub fn install_in(dir: &Path, tpa: &Path) -> Result<InstallReport, HookError> {
    install_in_with(dir, tpa, false)
}

fn install_in_with(dir: &Path, tpa: &Path, dry_run: bool) -> Result<InstallReport, HookError> {
    check_tpa_path(tpa)?;
    if !dry_run {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let hooks =
        HOOKS.iter().map(|&name| install_one(dir, name, tpa, dry_run)).collect::<Result<Vec<_>, _>>()?;
    Ok(InstallReport { dir: dir.to_owned(), configured: false, hooks })
}

fn install_one(dir: &Path, name: &'static str, tpa: &Path, dry_run: bool) -> Result<HookResult, HookError> {
    let path = dir.join(name);
    let original = original_path(dir, name);
    let wanted = script(tpa, name);
    let has_original = exists(&original)?;
    let result = |change, original: Option<PathBuf>| HookResult { name, change, original };
    let kept = has_original.then(|| original.clone());
    match existing(&path)? {
        Existing::Missing => {
            if !dry_run {
                write_hook(dir, &path, &wanted, false)?;
            }
            Ok(result(HookChange::Installed, kept))
        }
        Existing::Tpa { bytes, mode } => {
            if bytes == wanted && mode == 0o755 {
                Ok(result(HookChange::AlreadyInstalled, kept))
            } else {
                if !dry_run {
                    write_hook(dir, &path, &wanted, true)?;
                }
                Ok(result(HookChange::Updated, kept))
            }
        }
        Existing::Foreign if has_original => Ok(result(HookChange::RefusedBackupExists, Some(original))),
        Existing::Foreign if dry_run => Ok(result(HookChange::InstalledKeepingOriginal, Some(original))),
        Existing::Foreign => {
            // rename keeps the bytes, the mode, even a symlink as a symlink.
            fs::rename(&path, &original).map_err(io_err(&path))?;
            if let Err(e) = write_hook(dir, &path, &wanted, false) {
                if !exists(&path).unwrap_or(true) {
                    let _ = fs::rename(&original, &path);
                }
                return Err(e);
            }
            Ok(result(HookChange::InstalledKeepingOriginal, Some(original)))
        }
    }
}

/// Removes tpa's hooks from `dir` and restores the originals they replaced. Idempotent.
pub fn uninstall_in(dir: &Path) -> Result<UninstallReport, HookError> {
    let hooks = HOOKS
        .iter()
        .map(|&name| uninstall_one(dir, name).map(|change| UninstallResult { name, change }))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(UninstallReport { dir: dir.to_owned(), hooks })
}

fn uninstall_one(dir: &Path, name: &str) -> Result<UninstallChange, HookError> {
    let path = dir.join(name);
    let original = original_path(dir, name);
    let has_original = exists(&original)?;
    match (existing(&path)?, has_original) {
        // One rename over tpa's hook: there is no moment without a hook.
        (Existing::Tpa { .. } | Existing::Missing, true) => {
            fs::rename(&original, &path).map_err(io_err(&original))?;
            Ok(UninstallChange::RestoredOriginal)
        }
        (Existing::Tpa { .. }, false) => {
            fs::remove_file(&path).map_err(io_err(&path))?;
            Ok(UninstallChange::Removed)
        }
        (Existing::Foreign, true) => Ok(UninstallChange::RefusedForeignHook),
        (Existing::Missing | Existing::Foreign, false) => Ok(UninstallChange::NotInstalled),
    }
}

/// `<dir>/<name>.tpa-orig`.
pub fn original_path(dir: &Path, name: &str) -> PathBuf {
    let mut file = OsString::from(name);
    file.push(ORIGINAL_SUFFIX);
    dir.join(file)
}

enum Existing {
    Missing,
    /// A regular file carrying the marker.
    Tpa {
        bytes: Vec<u8>,
        mode: u32,
    },
    /// Anything else: another script, a binary, a symlink, a directory.
    Foreign,
}

fn existing(path: &Path) -> Result<Existing, HookError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Missing),
        Err(e) => return Err(io_err(path)(e)),
    };
    if !meta.is_file() || meta.len() > MAX_TPA_HOOK_LEN {
        return Ok(Existing::Foreign);
    }
    let bytes = fs::read(path).map_err(io_err(path))?;
    if is_tpa_hook(&bytes) { Ok(Existing::Tpa { bytes, mode: mode(&meta) }) } else { Ok(Existing::Foreign) }
}

fn exists(path: &Path) -> Result<bool, HookError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes a hook atomically (a temporary file renamed into place, so git never runs half a hook),
/// mode 0755 whatever the umask. Unless `replace`, fails rather than clobber a file that appeared.
fn write_hook(dir: &Path, path: &Path, bytes: &[u8], replace: bool) -> Result<(), HookError> {
    let mut tmp = tempfile::Builder::new().prefix(".tpa-hook-").tempfile_in(dir).map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
    set_mode(tmp.as_file(), 0o755).map_err(io_err(path))?;
    if replace {
        tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| io_err(path)(e.error))?;
    }
    Ok(())
}

/// Whether these bytes are a hook tpa wrote (any version): a shebang, then the marker line.
pub fn is_tpa_hook(bytes: &[u8]) -> bool {
    let mut lines = bytes.split(|&b| b == b'\n');
    lines.next().is_some_and(|l| l.starts_with(b"#!"))
        && lines.next().is_some_and(|l| l.starts_with(MARKER_PREFIX.as_bytes()))
}

/// The hook scripts as shipped in `hooks/` (one source of truth: what `tpa init` installs and what
/// pre-commit runs through `.pre-commit-hooks.yaml`), embedded at build time.
const SHIPPED: [(&str, &[u8]); 4] = [
    ("post-merge", include_bytes!("../hooks/post-merge")),
    ("post-commit", include_bytes!("../hooks/post-commit")),
    ("post-checkout", include_bytes!("../hooks/post-checkout")),
    ("post-rewrite", include_bytes!("../hooks/post-rewrite")),
];

/// The line of a shipped script that `tpa init` replaces with the exec of the tpa it installed.
pub const INSTALLED_PATH_LINE: &str = "# tpa init: the installed tpa-hook";

/// The shipped script for `name` (one of [`HOOKS`]), as in `hooks/`: it finds tpa-hook on PATH.
pub fn shipped(name: &str) -> Option<&'static [u8]> {
    SHIPPED.iter().find(|(n, _)| *n == name).map(|(_, bytes)| *bytes)
}

/// The hook script for `name` as `tpa init` installs it: the shipped script with the exec of the
/// tpa at `tpa` in place of [`INSTALLED_PATH_LINE`]. Only `tpa` varies, and it is quoted: nothing
/// from git ends up in the text. LF line endings.
pub fn script(tpa: &Path, name: &str) -> Vec<u8> {
    let quoted = sh_quote(&path_bytes(tpa));
    let mut exec = b"if [ -x ".to_vec();
    for part in [&quoted[..], b" ]; then exec ", &quoted, b" hook ", name.as_bytes(), b" \"$@\"; fi"] {
        exec.extend_from_slice(part);
    }
    let template = shipped(name).unwrap_or_else(|| panic!("`{name}` is not one of tpa's hooks"));
    let mut s = Vec::with_capacity(template.len() + exec.len());
    for line in template.split_inclusive(|&b| b == b'\n') {
        if line.strip_suffix(b"\n").unwrap_or(line) == INSTALLED_PATH_LINE.as_bytes() {
            s.extend_from_slice(&exec);
            s.push(b'\n');
        } else {
            s.extend_from_slice(line);
        }
    }
    s
}

/// The lines that run tpa from a hook file someone else manages and that is committed (husky, a
/// `core.hooksPath` in the tree): tpa-hook from PATH, never a path of this machine, and a no-op
/// where tpa is not installed. They always succeed, so placed first in a hook they leave that hook's
/// exit status to the hook's own commands; they read no stdin.
///
/// A hook with nothing to do must cost next to nothing, and a manager such as husky costs only a
/// few shells: so where git runs the hook at the top of a main work tree (`.git` a directory, no
/// `$GIT_DIR`) and this clone holds no grant ([`INDEX`] absent, see [`drop_empty_index`]), they
/// start no process at all. Anywhere else tpa-hook decides.
pub fn hook_line(name: &str) -> String {
    format!(
        "if [ -e .git/{INDEX} ] || [ ! -d .git ] || [ -n \"${{GIT_DIR-}}\" ]; then\n  \
         if command -v tpa-hook >/dev/null 2>&1; then tpa-hook hook {name} \"$@\" || :; fi\nfi"
    )
}

/// The local index of the grants this clone holds, relative to the common git dir (state.rs).
pub const INDEX: &str = "tpa/active.json";

/// Removes the local index of grants when, read again under the state lock, it lists none: an
/// absent index reads as empty, and its absence is what [`hook_line`] tests without starting a
/// process. Best-effort: a hook never fails for it.
pub fn drop_empty_index(repo: &Repository) {
    let Ok(state) = crate::state::StateDir::open(repo) else { return };
    let Ok(_lock) = state.lock() else { return };
    if state.local_grants().is_ok_and(|grants| grants.is_empty()) {
        let _ = fs::remove_file(repo.commondir().join(INDEX));
    }
}

/// Quotes bytes as one sh word: single quotes, each `'` written as `'\''`. Every other byte,
/// newlines included, is literal inside single quotes.
pub fn sh_quote(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.push(b'\'');
    for &b in bytes {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// Runs `<hooks_dir>/<name>.tpa-orig`, if it exists and is executable (as git would run a hook), with
/// `args` and `stdin` (git's stdin, read once by the caller and also given to tpa's own logic),
/// inheriting stdout, stderr, the environment and the working directory. Returns its exit status for
/// the caller to pass through ([`exit_code`]), or `None` when there is nothing to run.
///
/// Like git, a file without a `#!` line is run by `/bin/sh`. `name` must be one of [`HOOKS`].
pub fn run_original(
    hooks_dir: &Path,
    name: &str,
    args: &[OsString],
    stdin: &[u8],
) -> io::Result<Option<ExitStatus>> {
    if !HOOKS.contains(&name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{name}` is not one of tpa's hooks"),
        ));
    }
    let path = original_path(hooks_dir, name);
    let meta = match fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_file() || !is_executable(&meta) {
        return Ok(None);
    }
    let mut command = Command::new(&path);
    // A binary sees the name git would have run it under.
    set_arg0(&mut command, hooks_dir.join(name));
    command.args(args);
    match spawn_with_stdin(&mut command, stdin) {
        Err(e) if is_enoexec(&e) => {
            let mut sh = Command::new("/bin/sh");
            sh.arg(&path).args(args);
            spawn_with_stdin(&mut sh, stdin).map(Some)
        }
        other => other.map(Some),
    }
}

/// Runs `command`, feeding it `stdin` through a pipe, and waits for it. Empty stdin is /dev/null,
/// as git gives hooks that take no input.
fn spawn_with_stdin(command: &mut Command, stdin: &[u8]) -> io::Result<ExitStatus> {
    command.stdin(if stdin.is_empty() { Stdio::null() } else { Stdio::piped() });
    let mut child = command.spawn()?;
    if let Some(mut pipe) = child.stdin.take() {
        let bytes = stdin.to_vec();
        // A writer of its own: a hook that exits without reading (or leaves a grandchild holding the
        // pipe) must neither deadlock nor block us. Write errors (EPIPE) are the hook's business.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    child.wait()
}

/// The exit code to pass a hook's status through, as git reports one: the code, or 128 + signal.
pub fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return code as u8;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128u8.wrapping_add(signal as u8);
        }
    }
    1
}

#[cfg(unix)]
mod sys {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};

    pub fn path_bytes(path: &Path) -> Vec<u8> {
        path.as_os_str().as_bytes().to_vec()
    }

    pub fn os_string_from_bytes(bytes: &[u8]) -> OsString {
        OsString::from_vec(bytes.to_vec())
    }

    pub fn mode(meta: &std::fs::Metadata) -> u32 {
        meta.mode() & 0o7777
    }

    pub fn is_executable(meta: &std::fs::Metadata) -> bool {
        meta.mode() & 0o111 != 0
    }

    pub fn set_mode(file: &std::fs::File, mode: u32) -> std::io::Result<()> {
        file.set_permissions(std::fs::Permissions::from_mode(mode))
    }

    pub fn set_arg0(command: &mut std::process::Command, arg0: PathBuf) {
        command.arg0(arg0);
    }

    pub fn is_enoexec(e: &std::io::Error) -> bool {
        // ENOEXEC is 8 on Linux, macOS and the BSDs.
        e.raw_os_error() == Some(8)
    }
}

#[cfg(not(unix))]
mod sys {
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};

    pub fn path_bytes(path: &Path) -> Vec<u8> {
        path.to_string_lossy().replace('\\', "/").into_bytes()
    }

    pub fn os_string_from_bytes(bytes: &[u8]) -> OsString {
        OsString::from(String::from_utf8_lossy(bytes).into_owned())
    }

    pub fn mode(_meta: &std::fs::Metadata) -> u32 {
        0o755
    }

    pub fn is_executable(_meta: &std::fs::Metadata) -> bool {
        true
    }

    pub fn set_mode(_file: &std::fs::File, _mode: u32) -> std::io::Result<()> {
        Ok(())
    }

    pub fn set_arg0(_command: &mut std::process::Command, _arg0: PathBuf) {}

    pub fn is_enoexec(_e: &std::io::Error) -> bool {
        false
    }
}

use sys::{is_enoexec, is_executable, mode, os_string_from_bytes, path_bytes, set_arg0, set_mode};

#[cfg(all(test, unix))]
mod tests {
    use std::ffi::OsString;
    use std::fs;
    use std::os::unix::ffi::OsStringExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};

    use git2::Repository;
    use tempfile::TempDir;

    use super::*;

    /// git with a sealed environment: no user or system config, HOME in the temp dir.
    fn git_command(home: &Path) -> Command {
        let mut cmd = Command::new("git");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("LC_ALL", "C");
        cmd
    }

    struct Fixture {
        tmp: TempDir,
        repo_dir: PathBuf,
        /// A fake tpa at a path with a space and a single quote: it appends its arguments (one per
        /// line) and TPA_HOOKS_DIR to $TPA_FAKE_LOG.
        tpa: PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let repo_dir = tmp.path().join("repo");
            fs::create_dir(&repo_dir).unwrap();
            let f = Fixture { tpa: tmp.path().join("bin dir/it's tpa"), repo_dir, tmp };
            f.git(&f.repo_dir, &["init", "-q", "-b", "main"]);
            f.git(&f.repo_dir, &["config", "user.name", "Test"]);
            f.git(&f.repo_dir, &["config", "user.email", "test@example.com"]);
            f.git(&f.repo_dir, &["commit", "-q", "--allow-empty", "-m", "initial"]);
            fs::create_dir_all(f.tpa.parent().unwrap()).unwrap();
            write_exec(
                &f.tpa,
                b"#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> \"$TPA_FAKE_LOG\"; done\n\
                  printf 'dir=%s\\n' \"$TPA_HOOKS_DIR\" >> \"$TPA_FAKE_LOG\"\n",
                0o755,
            );
            f
        }

        fn home(&self) -> &Path {
            self.tmp.path()
        }

        fn git(&self, dir: &Path, args: &[&str]) -> Output {
            let out = git_command(self.home()).current_dir(dir).args(args).output().unwrap();
            assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            out
        }

        fn repo(&self) -> Repository {
            Repository::open(&self.repo_dir).unwrap()
        }

        fn git_dir_hooks(&self) -> PathBuf {
            fs::canonicalize(self.repo_dir.join(".git")).unwrap().join("hooks")
        }

        fn install(&self) -> InstallOutcome {
            install_with(&self.repo(), &self.tpa, git_command(self.home())).unwrap()
        }

        fn installed(&self) -> InstallReport {
            match self.install() {
                InstallOutcome::Installed(report) => report,
                other => panic!("expected an install, got {other:?}"),
            }
        }

        fn uninstalled(&self) -> UninstallReport {
            match uninstall_with(&self.repo(), &self.tpa, git_command(self.home())).unwrap() {
                UninstallOutcome::Uninstalled(report) => report,
                other => panic!("expected an uninstall, got {other:?}"),
            }
        }
    }

    fn write_exec(path: &Path, bytes: &[u8], mode: u32) {
        fs::write(path, bytes).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn changes(report: &InstallReport) -> Vec<(&'static str, HookChange)> {
        report.hooks.iter().map(|h| (h.name, h.change)).collect()
    }

    fn all(change: HookChange) -> Vec<(&'static str, HookChange)> {
        HOOKS.iter().map(|&name| (name, change)).collect()
    }

    fn head(f: &Fixture) -> String {
        String::from_utf8(f.git(&f.repo_dir, &["rev-parse", "HEAD"]).stdout).unwrap().trim().to_owned()
    }

    /// A foreign hook that records its arguments and stdin next to itself, then exits 3.
    const FOREIGN: &[u8] = b"#!/bin/sh\n# someone's hook \xff\r\n\
        printf '%s\\n' \"$@\" > \"${0%/*}/../foreign-args\"\n\
        cat > \"${0%/*}/../foreign-stdin\"\nexit 3\n";

    #[test]
    fn fresh_install_writes_four_executable_hooks_with_marker_and_quoted_path() {
        let f = Fixture::new();
        let report = f.installed();
        assert_eq!(report.dir, f.git_dir_hooks());
        assert!(!report.configured);
        assert_eq!(changes(&report), all(HookChange::Installed));
        assert!(report.hooks.iter().all(|h| h.original.is_none()));
        let quoted = format!("'{}'", f.tpa.to_str().unwrap().replace('\'', r"'\''"));
        for name in HOOKS {
            let path = report.dir.join(name);
            let bytes = fs::read(&path).unwrap();
            let text = String::from_utf8(bytes.clone()).unwrap();
            assert!(text.starts_with("#!/bin/sh\n# tpa-managed-hook v1\n"), "{text}");
            assert!(!text.contains('\r'));
            assert!(text.contains(&format!("exec {quoted} hook {name} \"$@\"")), "{text}");
            assert!(is_tpa_hook(&bytes));
            assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o755);
        }
        // No temporary file is left behind.
        let mut names: Vec<_> = fs::read_dir(&report.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.retain(|n| n.starts_with(".tpa-hook-"));
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn git_runs_the_installed_hook_which_runs_tpa_with_gits_arguments() {
        let f = Fixture::new();
        let report = f.installed();
        let log = f.tmp.path().join("tpa.log");
        let out = git_command(f.home())
            .current_dir(&f.repo_dir)
            .env("TPA_FAKE_LOG", &log)
            .args(["checkout", "-q", "-b", "x"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let head = head(&f);
        let logged = fs::read_to_string(&log).unwrap();
        let dir = report.dir.to_str().unwrap();
        assert_eq!(logged, format!("hook\npost-checkout\n{head}\n{head}\n1\ndir={dir}\n"));
    }

    #[test]
    fn the_script_falls_back_to_tpa_on_path_then_warns_and_runs_the_original() {
        let f = Fixture::new();
        let dir = f.tmp.path().join("hooks");
        let moved = f.tmp.path().join("moved tpa");
        install_in(&dir, &moved).unwrap();
        let log = f.tmp.path().join("tpa.log");
        let run = |path: &str| {
            Command::new(dir.join("post-rewrite"))
                .env_clear()
                .env("PATH", path)
                .env("TPA_FAKE_LOG", &log)
                .arg("amend")
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        // On PATH (as `tpa`).
        let bin = f.tmp.path().join("path-bin");
        fs::create_dir(&bin).unwrap();
        fs::copy(&f.tpa, bin.join("tpa")).unwrap();
        let out = run(&format!("{}:/usr/bin:/bin", bin.display()));
        assert!(out.status.success());
        assert_eq!(
            fs::read_to_string(&log).unwrap(),
            format!("hook\npost-rewrite\namend\ndir={}\n", dir.display())
        );
        // Nowhere: one line on stderr, exit 0.
        let out = run("/usr/bin:/bin");
        assert_eq!(out.status.code(), Some(0));
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("tpa: post-rewrite hook: tpa is neither"), "{stderr}");
        // Nowhere, with an original: it still runs, and its status is the hook's.
        write_exec(&original_path(&dir, "post-rewrite"), b"#!/bin/sh\nexit 5\n", 0o755);
        assert_eq!(run("/usr/bin:/bin").status.code(), Some(5));
    }

    #[test]
    fn a_foreign_hook_is_moved_aside_and_run_original_runs_it_with_the_same_args_and_stdin() {
        let f = Fixture::new();
        let hooks = f.git_dir_hooks();
        fs::create_dir_all(&hooks).unwrap();
        write_exec(&hooks.join("post-checkout"), FOREIGN, 0o750);
        let report = f.installed();
        let original = original_path(&hooks, "post-checkout");
        let expected: Vec<_> = HOOKS
            .iter()
            .map(|&n| {
                (
                    n,
                    if n == "post-checkout" {
                        HookChange::InstalledKeepingOriginal
                    } else {
                        HookChange::Installed
                    },
                )
            })
            .collect();
        assert_eq!(changes(&report), expected);
        assert_eq!(report.hooks[2].original.as_deref(), Some(original.as_path()));
        assert_eq!(fs::read(&original).unwrap(), FOREIGN);
        assert_eq!(fs::metadata(&original).unwrap().mode() & 0o7777, 0o750);
        assert!(is_tpa_hook(&fs::read(hooks.join("post-checkout")).unwrap()));

        let args: Vec<OsString> = vec!["a b".into(), OsString::from_vec(b"\xff'$(x)\n".to_vec()), "1".into()];
        let stdin = b"old new\nrewritten \x00 bytes\n";
        let status = run_original(&hooks, "post-checkout", &args, stdin).unwrap().unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(exit_code(status), 3);
        let git_dir = hooks.parent().unwrap();
        assert_eq!(fs::read(git_dir.join("foreign-args")).unwrap(), b"a b\n\xff'$(x)\n\n1\n");
        assert_eq!(fs::read(git_dir.join("foreign-stdin")).unwrap(), stdin);

        // The other hooks have no original.
        assert!(run_original(&hooks, "post-merge", &args, b"").unwrap().is_none());
    }

    #[test]
    fn run_original_skips_what_git_would_skip_and_runs_a_shebangless_script_with_sh() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let original = original_path(dir, "post-commit");
        write_exec(&original, b"#!/bin/sh\nexit 4\n", 0o644);
        assert!(run_original(dir, "post-commit", &[], b"").unwrap().is_none());
        write_exec(&original, b"echo \"$1\" > \"$(dirname \"$0\")/out\"; exit 6\n", 0o755);
        let status = run_original(dir, "post-commit", &["hi".into()], b"").unwrap().unwrap();
        assert_eq!(status.code(), Some(6));
        assert_eq!(fs::read_to_string(dir.join("out")).unwrap(), "hi\n");
        // A hook that reads nothing of a large stdin neither fails nor hangs.
        write_exec(&original, b"#!/bin/sh\nexit 0\n", 0o755);
        let big = vec![b'x'; 1 << 20];
        assert_eq!(run_original(dir, "post-commit", &[], &big).unwrap().unwrap().code(), Some(0));
        // A name that is not a hook is refused, not joined to a path.
        assert!(run_original(dir, "../x", &[], b"").is_err());
    }

    #[test]
    fn a_second_install_is_a_no_op_and_a_moved_tpa_updates_the_hooks() {
        let f = Fixture::new();
        let first = f.installed();
        let inode = |name: &str| fs::metadata(first.dir.join(name)).unwrap().ino();
        let before: Vec<_> = HOOKS.iter().map(|n| inode(n)).collect();
        let second = f.installed();
        assert_eq!(changes(&second), all(HookChange::AlreadyInstalled));
        assert_eq!(HOOKS.iter().map(|n| inode(n)).collect::<Vec<_>>(), before);

        let moved = f.tmp.path().join("elsewhere/tpa");
        let report = install_in(&first.dir, &moved).unwrap();
        assert_eq!(changes(&report), all(HookChange::Updated));
        let text = fs::read_to_string(first.dir.join("post-merge")).unwrap();
        assert!(text.contains(&format!("exec '{}' hook post-merge", moved.display())));
        assert!(!text.contains("it'\\''s tpa"));

        // A wrong mode is repaired too.
        fs::set_permissions(first.dir.join("post-commit"), fs::Permissions::from_mode(0o644)).unwrap();
        let report = install_in(&first.dir, &moved).unwrap();
        assert_eq!(report.hooks[1].change, HookChange::Updated);
        assert_eq!(fs::metadata(first.dir.join("post-commit")).unwrap().mode() & 0o7777, 0o755);
    }

    #[test]
    fn install_refuses_a_foreign_hook_whose_backup_exists() {
        let f = Fixture::new();
        let hooks = f.git_dir_hooks();
        fs::create_dir_all(&hooks).unwrap();
        write_exec(&hooks.join("post-merge"), b"#!/bin/sh\necho new\n", 0o755);
        let original = original_path(&hooks, "post-merge");
        write_exec(&original, b"#!/bin/sh\necho old\n", 0o700);
        let report = f.installed();
        assert_eq!(report.hooks[0].change, HookChange::RefusedBackupExists);
        assert_eq!(report.hooks[0].original.as_deref(), Some(original.as_path()));
        assert_eq!(report.refused().map(|h| h.name).collect::<Vec<_>>(), ["post-merge"]);
        assert!(report.hooks[1..].iter().all(|h| h.change == HookChange::Installed));
        assert_eq!(fs::read(hooks.join("post-merge")).unwrap(), b"#!/bin/sh\necho new\n");
        assert_eq!(fs::read(&original).unwrap(), b"#!/bin/sh\necho old\n");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["hooks"][0]["change"], "refused-backup-exists");
    }

    #[test]
    fn uninstall_restores_the_original_bytes_and_mode_and_removes_tpas_hooks() {
        let f = Fixture::new();
        let hooks = f.git_dir_hooks();
        fs::create_dir_all(&hooks).unwrap();
        write_exec(&hooks.join("post-checkout"), FOREIGN, 0o750);
        // A symlinked hook is foreign too, and comes back as the same symlink.
        std::os::unix::fs::symlink("../../shared hook", hooks.join("post-rewrite")).unwrap();
        // An unrelated hook is never touched.
        write_exec(&hooks.join("pre-commit"), b"#!/bin/sh\n", 0o755);
        let report = f.installed();
        assert_eq!(report.hooks[3].change, HookChange::InstalledKeepingOriginal);

        let report = f.uninstalled();
        let got: Vec<_> = report.hooks.iter().map(|h| (h.name, h.change)).collect();
        assert_eq!(
            got,
            [
                ("post-merge", UninstallChange::Removed),
                ("post-commit", UninstallChange::Removed),
                ("post-checkout", UninstallChange::RestoredOriginal),
                ("post-rewrite", UninstallChange::RestoredOriginal),
            ]
        );
        assert_eq!(fs::read(hooks.join("post-checkout")).unwrap(), FOREIGN);
        assert_eq!(fs::metadata(hooks.join("post-checkout")).unwrap().mode() & 0o7777, 0o750);
        assert_eq!(fs::read_link(hooks.join("post-rewrite")).unwrap(), Path::new("../../shared hook"));
        let mut left: Vec<_> =
            fs::read_dir(&hooks).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.retain(|n| !n.ends_with(".sample"));
        left.sort();
        assert_eq!(left, ["post-checkout", "post-rewrite", "pre-commit"]);

        // Idempotent.
        let again = f.uninstalled();
        assert!(again.hooks.iter().all(|h| h.change == UninstallChange::NotInstalled));
        assert_eq!(fs::read(hooks.join("post-checkout")).unwrap(), FOREIGN);
    }

    #[test]
    fn uninstall_leaves_a_foreign_hook_and_its_backup_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_exec(&dir.join("post-merge"), b"#!/bin/sh\necho mine\n", 0o755);
        write_exec(&original_path(dir, "post-merge"), b"#!/bin/sh\necho old\n", 0o755);
        // A backup whose tpa hook is gone comes back.
        write_exec(&original_path(dir, "post-commit"), b"#!/bin/sh\necho kept\n", 0o700);
        let report = uninstall_in(dir).unwrap();
        assert_eq!(report.hooks[0].change, UninstallChange::RefusedForeignHook);
        assert_eq!(report.hooks[1].change, UninstallChange::RestoredOriginal);
        assert_eq!(fs::read(dir.join("post-merge")).unwrap(), b"#!/bin/sh\necho mine\n");
        assert_eq!(fs::read(dir.join("post-commit")).unwrap(), b"#!/bin/sh\necho kept\n");
        assert!(original_path(dir, "post-merge").exists());
    }

    #[test]
    fn core_hooks_path_inside_the_tree_yields_lines_and_writes_nothing() {
        let f = Fixture::new();
        f.git(&f.repo_dir, &["config", "core.hooksPath", ".husky"]);
        let outcome = f.install();
        let InstallOutcome::HooksPathInTree(in_tree) = &outcome else { panic!("{outcome:?}") };
        assert_eq!(in_tree.dir, fs::canonicalize(&f.repo_dir).unwrap().join(".husky"));
        // The lines go into committed files: tpa-hook from PATH, no path of this machine.
        let lines: Vec<_> = in_tree.lines.iter().map(|l| (l.name, l.line.clone())).collect();
        assert!(lines.iter().all(|(n, l)| l.contains(&format!("tpa-hook hook {n} \"$@\""))));
        let expected: Vec<_> = HOOKS.iter().map(|&n| (n, hook_line(n))).collect();
        assert!(lines.iter().all(|(n, l)| l.contains(&format!("tpa-hook hook {n} \"$@\""))
            && !l.contains(f.tmp.path().to_str().unwrap())));
        assert_eq!(lines, expected);
        assert!(!f.repo_dir.join(".husky").exists());
        assert!(!HOOKS.iter().any(|n| f.git_dir_hooks().join(n).exists()));
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["outcome"], "hooks-path-in-tree");

        let outcome = uninstall_with(&f.repo(), &f.tpa, git_command(f.home())).unwrap();
        assert!(matches!(outcome, UninstallOutcome::HooksPathInTree(_)));

        let hooks = hooks_dir_with(&f.repo(), git_command(f.home())).unwrap();
        assert!(hooks.in_work_tree && hooks.configured);
    }

    #[test]
    fn core_hooks_path_outside_the_tree_is_written_and_flagged() {
        let f = Fixture::new();
        let shared = f.tmp.path().join("shared hooks");
        f.git(&f.repo_dir, &["config", "core.hooksPath", shared.to_str().unwrap()]);
        let report = f.installed();
        assert_eq!(report.dir, fs::canonicalize(f.tmp.path()).unwrap().join("shared hooks"));
        assert!(report.configured);
        assert!(HOOKS.iter().all(|n| is_tpa_hook(&fs::read(shared.join(n)).unwrap())));
        // A hooksPath inside .git is not the tree.
        f.git(&f.repo_dir, &["config", "core.hooksPath", ".git/my-hooks"]);
        let hooks = hooks_dir_with(&f.repo(), git_command(f.home())).unwrap();
        assert!(!hooks.in_work_tree && hooks.configured);
    }

    #[test]
    fn a_linked_worktree_resolves_to_the_main_worktrees_hooks_dir() {
        let f = Fixture::new();
        let wt = f.tmp.path().join("linked wt");
        f.git(&f.repo_dir, &["worktree", "add", "-q", "-b", "side", wt.to_str().unwrap()]);
        let main = hooks_dir_with(&f.repo(), git_command(f.home())).unwrap();
        let linked = hooks_dir_with(&Repository::open(&wt).unwrap(), git_command(f.home())).unwrap();
        assert_eq!(main, linked);
        assert_eq!(main.dir, f.git_dir_hooks());
        assert!(!linked.in_work_tree && !linked.configured);
        // Installed from the linked worktree, the hooks fire in the main one.
        let report =
            match install_with(&Repository::open(&wt).unwrap(), &f.tpa, git_command(f.home())).unwrap() {
                InstallOutcome::Installed(report) => report,
                other => panic!("{other:?}"),
            };
        assert_eq!(report.dir, f.git_dir_hooks());
    }

    #[test]
    fn install_needs_an_absolute_tpa_path() {
        let f = Fixture::new();
        let err = install_with(&f.repo(), Path::new("tpa"), git_command(f.home())).unwrap_err();
        assert!(matches!(err, HookError::RelativeTpaPath { .. }), "{err}");
    }

    #[test]
    fn sh_quote_survives_hostile_bytes() {
        let hostile: &[u8] = b"it's a \"path\" with $HOME `id` $(id) \\ \n newline\t\xff\xfe ''";
        let mut cmd = b"printf %s ".to_vec();
        cmd.extend(sh_quote(hostile));
        let out = Command::new("/bin/sh").arg("-c").arg(OsString::from_vec(cmd)).output().unwrap();
        assert_eq!(out.stdout, hostile);
        assert_eq!(sh_quote(b"a'b"), b"'a'\\''b'");
    }

    #[test]
    fn the_marker_is_recognised_only_where_tpa_puts_it() {
        let tpa = Path::new("/opt/tpa/bin/tpa");
        assert!(is_tpa_hook(&script(tpa, "post-merge")));
        assert!(is_tpa_hook(b"#!/bin/sh\n# tpa-managed-hook v2\nexec tpa\n"));
        assert!(!is_tpa_hook(b"#!/bin/sh\necho hi\n# tpa-managed-hook v1\n"));
        assert!(!is_tpa_hook(b"# tpa-managed-hook v1\n"));
        assert!(!is_tpa_hook(b""));
        // The script's variable part is the quoted path alone.
        let a = script(tpa, "post-merge");
        let b = script(Path::new("/x"), "post-merge");
        let a = String::from_utf8(a).unwrap().replace("'/opt/tpa/bin/tpa'", "'/x'");
        assert_eq!(a.as_bytes(), b.as_slice());
    }

    #[test]
    fn the_shipped_scripts_are_one_shape_and_what_init_installs() {
        let shape =
            |name: &str| String::from_utf8(shipped(name).unwrap().to_vec()).unwrap().replace(name, "NAME");
        for name in HOOKS {
            assert_eq!(shape(name), shape("post-merge"), "hooks/{name} differs from hooks/post-merge");
            let text = String::from_utf8(shipped(name).unwrap().to_vec()).unwrap();
            assert!(is_tpa_hook(text.as_bytes()));
            assert_eq!(text.lines().filter(|l| *l == INSTALLED_PATH_LINE).count(), 1);
            assert!(!text.contains('\r') && !text.contains("/work/") && !text.contains("/home/"));
            // Installed: the shipped script with that one line replaced by the exec of this tpa.
            let installed = String::from_utf8(script(Path::new("/opt/tpa"), name)).unwrap();
            let exec = format!("if [ -x '/opt/tpa' ]; then exec '/opt/tpa' hook {name} \"$@\"; fi");
            assert_eq!(installed, text.replace(INSTALLED_PATH_LINE, &exec));
        }
        assert!(shipped("pre-commit").is_none());
    }

    #[test]
    fn the_shipped_script_run_as_is_finds_tpa_hook_on_path_and_passes_gits_arguments() {
        let f = Fixture::new();
        let dir = f.tmp.path().join("clone/hooks");
        fs::create_dir_all(&dir).unwrap();
        write_exec(&dir.join("post-checkout"), shipped("post-checkout").unwrap(), 0o755);
        let bin = f.tmp.path().join("bin");
        fs::create_dir(&bin).unwrap();
        fs::copy(&f.tpa, bin.join("tpa-hook")).unwrap();
        let log = f.tmp.path().join("tpa.log");
        let out = Command::new(dir.join("post-checkout"))
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("TPA_FAKE_LOG", &log)
            .args(["a", "b c", "1"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            fs::read_to_string(&log).unwrap(),
            format!("hook\npost-checkout\na\nb c\n1\ndir={}\n", dir.display())
        );
    }

    #[test]
    fn the_fast_idle_check_reads_the_common_dirs_index_without_libgit2() {
        let f = Fixture::new();
        let none = |_: &str| None;
        let common = fs::canonicalize(f.repo_dir.join(".git")).unwrap();
        assert!(holds_no_grant_fast(&f.repo_dir, none), "no state dir yet");
        fs::create_dir_all(common.join("tpa")).unwrap();
        fs::write(common.join("tpa/active.json"), "{}").unwrap();
        assert!(holds_no_grant_fast(&f.repo_dir, none));
        let wt = f.tmp.path().join("linked");
        f.git(&f.repo_dir, &["worktree", "add", "-q", "-b", "side", wt.to_str().unwrap()]);
        assert!(holds_no_grant_fast(&wt, none));
        fs::write(
            common.join("tpa/active.json"),
            r#"{"01J": {"branch": "refs/heads/x", "expires_at": null}}"#,
        )
        .unwrap();
        assert!(!holds_no_grant_fast(&f.repo_dir, none));
        assert!(!holds_no_grant_fast(&wt, none), "a linked worktree shares the index");
        let git_dir = |k: &str| (k == "GIT_DIR").then(|| OsString::from(".git"));
        assert!(!holds_no_grant_fast(&f.repo_dir, git_dir));
        // Not at the top of a work tree: no answer, libgit2 decides.
        assert!(!holds_no_grant_fast(f.tmp.path(), none));
    }

    #[test]
    fn the_committed_lines_start_tpa_hook_only_where_a_grant_may_be_held() {
        let f = Fixture::new();
        let bin = f.tmp.path().join("bin");
        fs::create_dir(&bin).unwrap();
        fs::copy(&f.tpa, bin.join("tpa-hook")).unwrap();
        let log = f.tmp.path().join("tpa.log");
        let run = || {
            let out = Command::new("/bin/sh")
                .args(["-e", "-c", &format!("{}\nexit 5", hook_line("post-merge")), "sh", "0"])
                .current_dir(&f.repo_dir)
                .env_clear()
                .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
                .env("TPA_FAKE_LOG", &log)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
            fs::read_to_string(&log).unwrap_or_default()
        };
        assert_eq!(run(), "", "no index: no process");
        let index = f.repo_dir.join(".git").join(INDEX);
        fs::create_dir_all(index.parent().unwrap()).unwrap();
        fs::write(&index, "{}").unwrap();
        assert_eq!(run(), "hook\npost-merge\n0\ndir=\n");
        // tpa-hook drops an index that lists no grant, under the state lock.
        drop_empty_index(&f.repo());
        assert!(!index.exists());
        fs::write(&index, r#"{"01J": {"branch": "refs/heads/x", "expires_at": null}}"#).unwrap();
        drop_empty_index(&f.repo());
        assert!(index.exists(), "an index listing a grant stays");
    }

    #[test]
    fn git_args_come_from_pre_commits_variables_only_when_pre_commit_gave_none() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
        };
        const PC: &[(&str, &str)] = &[
            ("PRE_COMMIT", "1"),
            ("PRE_COMMIT_FROM_REF", "aaa"),
            ("PRE_COMMIT_TO_REF", "bbb"),
            ("PRE_COMMIT_CHECKOUT_TYPE", "1"),
            ("PRE_COMMIT_IS_SQUASH_MERGE", "0"),
            ("PRE_COMMIT_REWRITE_COMMAND", "rebase"),
        ];
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(git_args("post-checkout", vec![], env(PC)), (os(&["aaa", "bbb", "1"]), true));
        assert_eq!(git_args("post-merge", vec![], env(PC)), (os(&["0"]), true));
        assert_eq!(git_args("post-rewrite", vec![], env(PC)), (os(&["rebase"]), true));
        assert_eq!(git_args("post-commit", vec![], env(PC)), (vec![], true));
        // git's own arguments win; without PRE_COMMIT=1 the variables are not pre-commit's.
        assert_eq!(git_args("post-merge", os(&["1"]), env(PC)), (os(&["1"]), false));
        assert_eq!(git_args("post-merge", vec![], env(&PC[1..])), (vec![], false));
    }
}

/// The variables pre-commit passes git's arguments in, per hook, in git's order.
const PRE_COMMIT_ARGS: [(&str, &[&str]); 4] = [
    ("post-checkout", &["PRE_COMMIT_FROM_REF", "PRE_COMMIT_TO_REF", "PRE_COMMIT_CHECKOUT_TYPE"]),
    ("post-merge", &["PRE_COMMIT_IS_SQUASH_MERGE"]),
    ("post-rewrite", &["PRE_COMMIT_REWRITE_COMMAND"]),
    ("post-commit", &[]),
];

/// git's arguments to hook `name`: `args` as given, or, when pre-commit started the hook (it sets
/// `PRE_COMMIT=1` and passes no arguments), read back from its `PRE_COMMIT_*` variables. The
/// second value says whether they came from pre-commit (then git's stdin is not ours to read).
pub fn git_args(
    name: &str,
    args: Vec<OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> (Vec<OsString>, bool) {
    if !args.is_empty() || env("PRE_COMMIT").is_none_or(|v| v != "1") {
        return (args, false);
    }
    let Some((_, vars)) = PRE_COMMIT_ARGS.iter().find(|(n, _)| *n == name) else { return (args, false) };
    (vars.iter().map_while(|v| env(v)).collect(), true)
}

/// The hooks' cheapest answer, before libgit2 is even asked to open the repository: true when the
/// repository whose work tree is `top` (git runs hooks at the top of the work tree) certainly holds
/// no open grant, its local index (`tpa/active.json` in the common git dir) being absent or empty.
/// Finds the common dir as git lays it out (`$GIT_DIR` and `$GIT_COMMON_DIR`, else a `.git`
/// directory, or a `.git` file's `gitdir:` with its `commondir`); anything unusual answers false,
/// and [`needs_tpa`] decides.
pub fn holds_no_grant_fast(top: &Path, env: impl Fn(&str) -> Option<OsString>) -> bool {
    fast_index(top, env).is_some_and(|index| index != FastIndex::Grants)
}

/// What [`fast_index`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastIndex {
    /// No index: no grant.
    Absent,
    /// An index listing no grant (or a damaged one, which reads as empty): [`drop_empty_index`].
    Empty,
    Grants,
}

/// The local index of grants of the repository whose work tree is `top`, read without libgit2;
/// None when the repository is not laid out as [`holds_no_grant_fast`] expects.
pub fn fast_index(top: &Path, env: impl Fn(&str) -> Option<OsString>) -> Option<FastIndex> {
    let git_dir = match env("GIT_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => top.join(dir),
        None => {
            let dot_git = top.join(".git");
            let meta = fs::symlink_metadata(&dot_git).ok()?;
            if meta.is_dir() {
                dot_git
            } else if meta.is_file() {
                let text = fs::read_to_string(&dot_git).ok()?;
                top.join(text.strip_prefix("gitdir:")?.trim())
            } else {
                return None;
            }
        }
    };
    let common = match env("GIT_COMMON_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => top.join(dir),
        None => match fs::read_to_string(git_dir.join("commondir")) {
            Ok(text) => git_dir.join(text.trim_end_matches(['\n', '\r'])),
            Err(e) if e.kind() == io::ErrorKind::NotFound => git_dir,
            Err(_) => return None,
        },
    };
    if !common.join("HEAD").is_file() {
        return None; // not what it seemed: let libgit2 find the repository
    }
    match fs::read(common.join(INDEX)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(FastIndex::Absent),
        Err(_) => None,
        // As StateDir::local_grants reads it: damaged reads as empty.
        Ok(bytes) => match serde_json::from_slice::<crate::state::LocalGrants>(&bytes) {
            Ok(grants) if !grants.is_empty() => Some(FastIndex::Grants),
            _ => Some(FastIndex::Empty),
        },
    }
}

/// The fast path's question: must the full tpa run for this hook? No when this clone holds no open
/// grant, and for a post-checkout that neither leaves nor returns to a branch holding one while no
/// abandonment clock runs. Anything unreadable answers yes: the full tpa then decides.
pub fn needs_tpa(repo: &Repository, name: &str, args: &[OsString]) -> bool {
    let Ok(state) = crate::state::StateDir::open(repo) else { return true };
    let Ok(grants) = state.local_grants() else { return true };
    if grants.is_empty() {
        return false;
    }
    if name != "post-checkout" {
        return true;
    }
    let Ok(left) = state.left_branches() else { return true };
    if !left.is_empty() {
        return true;
    }
    if args.get(2).is_none_or(|flag| flag != "1") {
        return false;
    }
    match checkout_move(repo) {
        Some((from, to)) => {
            let holds = |branch: &str| grants.values().any(|g| g.branch == format!("refs/heads/{branch}"));
            from != to && (holds(&from) || holds(&to))
        }
        None => false,
    }
}

/// The branch switch HEAD's reflog records last (`checkout: moving from A to B`), as short names.
/// A rebase's detached checkouts record something else, and so are no switch.
pub fn checkout_move(repo: &Repository) -> Option<(String, String)> {
    let reflog = repo.reflog("HEAD").ok()?;
    let entry = reflog.get(0)?;
    let message = entry.message().ok().flatten()?.strip_prefix("checkout: moving from ")?;
    let (from, to) = message.split_once(" to ")?;
    Some((from.to_owned(), to.to_owned()))
}

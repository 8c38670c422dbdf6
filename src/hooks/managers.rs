//! Hook managers: pre-commit, lefthook and husky own git's hooks in the repositories that use them
//! (pre-commit and lefthook write every hook in git's hooks directory, husky points `core.hooksPath`
//! at `.husky/_`), so tpa goes through them instead of beside them.
//!
//! - husky: tpa adds [`hook_line`] at the top of `.husky/<hook>` (creating the file if needed).
//! - lefthook: tpa adds a `tpa` command to each hook's section of the team's `lefthook.yml`.
//! - pre-commit: tpa is a hook repository (`.pre-commit-hooks.yaml`, ids `tpa-post-merge` …); the
//!   team lists it in `.pre-commit-config.yaml`. tpa does not edit that file: it cannot know which
//!   URL and revision of tpa the team pins, so it says exactly what to add.
//!
//! Everything written into the team's files is fixed text: it runs `tpa-hook` from PATH (no path of
//! this machine), takes git's arguments from git (`"$@"`, lefthook's `{1}`), and is a no-op where tpa
//! is not installed. Edits only insert lines, never rewrite the team's own; anything tpa cannot
//! edit safely (a YAML shape it does not recognise, a symlink, CRLF line endings) is left alone and
//! explained instead.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{HOOKS, HookError, HooksDir, INDEX, hook_line, io_err};

/// The hook managers tpa knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Manager {
    PreCommit,
    Lefthook,
    Husky,
}

impl Manager {
    pub fn name(self) -> &'static str {
        match self {
            Manager::PreCommit => "pre-commit",
            Manager::Lefthook => "lefthook",
            Manager::Husky => "husky",
        }
    }
}

/// pre-commit's configuration file, at the root of the working tree.
pub const PRE_COMMIT_CONFIG: &str = ".pre-commit-config.yaml";
/// lefthook's main configuration file, in the order lefthook looks for it.
pub const LEFTHOOK_CONFIGS: [&str; 4] = ["lefthook.yml", ".lefthook.yml", "lefthook.yaml", ".lefthook.yaml"];
/// husky's directory of hook scripts.
pub const HUSKY_DIR: &str = ".husky";

/// The pre-commit hook id tpa's `.pre-commit-hooks.yaml` offers for a hook: `tpa-post-merge` ….
pub fn pre_commit_id(name: &str) -> String {
    format!("tpa-{name}")
}

/// A manager found in a working tree, and its configuration (a file, or husky's directory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Found {
    pub manager: Manager,
    pub config: PathBuf,
}

/// The hook manager of this working tree, if any. husky first (its `core.hooksPath` makes git ignore
/// the hooks directory the others install into), then lefthook, then pre-commit.
pub fn detect(workdir: &Path) -> Option<Found> {
    let husky = workdir.join(HUSKY_DIR);
    if husky.is_dir() {
        return Some(Found { manager: Manager::Husky, config: husky });
    }
    if let Some(config) = LEFTHOOK_CONFIGS.iter().map(|f| workdir.join(f)).find(|p| p.is_file()) {
        return Some(Found { manager: Manager::Lefthook, config });
    }
    let pre_commit = workdir.join(PRE_COMMIT_CONFIG);
    pre_commit.is_file().then_some(Found { manager: Manager::PreCommit, config: pre_commit })
}

/// How one of tpa's hooks is reached through the manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ManagedHook {
    pub name: &'static str,
    /// The team's configuration runs tpa for this hook.
    pub configured: bool,
    /// git runs the manager for this hook in this clone (the manager installed its hook).
    pub wired: bool,
}

/// What tpa found (and, at install, did) in a manager's files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ManagerReport {
    pub manager: Manager,
    pub config: PathBuf,
    /// Nothing was written: `edits` shows what would be.
    pub dry_run: bool,
    pub hooks: Vec<ManagedHook>,
    /// The team's files tpa changed (or, in a dry run, would change), with their diffs.
    pub edits: Vec<FileEdit>,
    /// What tpa could not do safely, and exactly what to add where.
    pub manual: Vec<ManualStep>,
    /// The manager's own command that makes git run the configured hooks in this clone, when some
    /// hook is configured but not wired.
    pub activate: Option<String>,
}

impl ManagerReport {
    /// Every tpa hook is configured and wired.
    pub fn complete(&self) -> bool {
        self.hooks.iter().all(|h| h.configured && h.wired)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileEdit {
    pub path: PathBuf,
    /// The file did not exist.
    pub created: bool,
    pub hooks: Vec<&'static str>,
    /// A unified diff of the change (`a/` and `b/` paths relative to the working tree).
    pub diff: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ManualStep {
    pub path: PathBuf,
    pub hooks: Vec<&'static str>,
    /// Why tpa did not edit it.
    pub reason: String,
    /// The text to add.
    pub add: String,
}

/// Reads what the manager runs for each of tpa's hooks; writes nothing.
pub fn inspect(workdir: &Path, hooks: &HooksDir, found: &Found) -> ManagerReport {
    let text = match found.manager {
        Manager::Husky => None,
        _ => fs::read(&found.config).ok().map(|b| String::from_utf8_lossy(&b).into_owned()),
    };
    let hooks_state = HOOKS
        .iter()
        .map(|&name| ManagedHook {
            name,
            configured: configured(found, text.as_deref(), name),
            wired: wired(workdir, hooks, found.manager, name),
        })
        .collect();
    let mut report = ManagerReport {
        manager: found.manager,
        config: found.config.clone(),
        dry_run: false,
        hooks: hooks_state,
        edits: Vec::new(),
        manual: Vec::new(),
        activate: None,
    };
    report.activate = activate(&report);
    report
}

/// Adds tpa to the manager's files (or, with `dry_run`, works out the diff only), then reports.
pub fn install(
    workdir: &Path,
    hooks: &HooksDir,
    found: &Found,
    dry_run: bool,
) -> Result<ManagerReport, HookError> {
    let before = inspect(workdir, hooks, found);
    let missing: Vec<&'static str> = before.hooks.iter().filter(|h| !h.configured).map(|h| h.name).collect();
    let mut edits = Vec::new();
    let mut manual = Vec::new();
    if !missing.is_empty() {
        match found.manager {
            Manager::Husky => {
                for &name in &missing {
                    match husky_plan(&found.config, name)? {
                        Plan::Write { old, new } => edits.push(write_plan(
                            workdir,
                            &found.config.join(name),
                            old,
                            new,
                            vec![name],
                            dry_run,
                        )?),
                        Plan::Manual(reason) => manual.push(ManualStep {
                            path: found.config.join(name),
                            hooks: vec![name],
                            reason,
                            add: format!("{}\n", husky_lines(name)),
                        }),
                    }
                }
            }
            Manager::Lefthook => {
                let bytes = fs::read(&found.config).map_err(io_err(&found.config))?;
                let mut text = String::from_utf8(bytes.clone()).ok();
                let mut done = Vec::new();
                for &name in &missing {
                    let outcome = match &text {
                        Some(t) => lefthook_add(t, name),
                        None => Err("it is not UTF-8".to_owned()),
                    };
                    match outcome {
                        Ok(new) => {
                            text = Some(new);
                            done.push(name);
                        }
                        Err(reason) => manual.push(ManualStep {
                            path: found.config.clone(),
                            hooks: vec![name],
                            reason,
                            add: lefthook_section(name, 2),
                        }),
                    }
                }
                if let (false, Some(new)) = (done.is_empty(), text) {
                    let old = String::from_utf8(bytes).unwrap_or_default();
                    edits.push(write_plan(workdir, &found.config, Some(old), new, done, dry_run)?);
                }
            }
            Manager::PreCommit => manual.push(ManualStep {
                path: found.config.clone(),
                hooks: missing.clone(),
                reason: "tpa does not know which URL and revision of tpa your team pins".to_owned(),
                add: pre_commit_snippet(&missing),
            }),
        }
    }
    let mut report = if dry_run || edits.is_empty() { before } else { inspect(workdir, hooks, found) };
    if dry_run {
        // What the report would say once the edits are made.
        for hook in &mut report.hooks {
            hook.configured |= edits.iter().any(|e| e.hooks.contains(&hook.name));
        }
        report.activate = activate(&report);
    }
    report.dry_run = dry_run;
    report.edits = edits;
    report.manual = manual;
    Ok(report)
}

fn activate(report: &ManagerReport) -> Option<String> {
    let unwired: Vec<&str> =
        report.hooks.iter().filter(|h| h.configured && !h.wired).map(|h| h.name).collect();
    if unwired.is_empty() {
        return None;
    }
    Some(match report.manager {
        Manager::PreCommit => {
            let types: Vec<String> = unwired.iter().map(|n| format!("--hook-type {n}")).collect();
            format!("pre-commit install {}", types.join(" "))
        }
        Manager::Lefthook => "lefthook install".to_owned(),
        Manager::Husky => "npx husky".to_owned(),
    })
}

fn configured(found: &Found, text: Option<&str>, name: &str) -> bool {
    match found.manager {
        Manager::Husky => fs::read(found.config.join(name))
            .is_ok_and(|b| String::from_utf8_lossy(&b).contains(&format!("tpa-hook hook {name} "))),
        Manager::Lefthook => text
            .and_then(|t| section(&lines(t), name).map(|(start, end)| (t, start, end)))
            .is_some_and(|(t, start, end)| {
                lines(t)[start..end].iter().any(|l| l.contains(&format!("tpa-hook hook {name}")))
            }),
        Manager::PreCommit => text.is_some_and(|t| contains_word(t, &pre_commit_id(name))),
    }
}

/// `word` occurs in `text` with no identifier character right after it (`tpa-post-commit` is not
/// `tpa-post-commit-msg`).
fn contains_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        !text[i + word.len()..].chars().next().is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_')
    })
}

/// Whether git runs the manager for `name` in this clone.
fn wired(workdir: &Path, hooks: &HooksDir, manager: Manager, name: &str) -> bool {
    let hook = fs::read(hooks.dir.join(name)).map(|b| String::from_utf8_lossy(&b).into_owned());
    match manager {
        Manager::Husky => {
            let husky = fs::canonicalize(workdir).map(|w| w.join(HUSKY_DIR)).unwrap_or_default();
            // husky 9: stubs in .husky/_ that source .husky/_/h, which runs .husky/<name>; husky 4-8:
            // core.hooksPath is .husky itself.
            (hooks.dir == husky.join("_") && hooks.dir.join("h").is_file() && hook.is_ok())
                || (hooks.dir == husky
                    && fs::metadata(hooks.dir.join(name)).is_ok_and(|m| super::is_executable(&m)))
        }
        Manager::Lefthook => {
            hook.is_ok_and(|h| h.contains("lefthook") && h.contains(&format!("run \"{name}\"")))
        }
        Manager::PreCommit => hook.is_ok_and(|h| {
            h.contains("File generated by pre-commit") && h.contains(&format!("--hook-type={name}"))
        }),
    }
}

enum Plan {
    Write { old: Option<String>, new: String },
    Manual(String),
}

/// The lines tpa adds to `.husky/<name>`: a comment saying what they are, and [`hook_line`].
pub fn husky_lines(name: &str) -> String {
    format!("# tpa: ends temporary production access when its branch is merged or left\n{}", hook_line(name))
}

fn husky_plan(dir: &Path, name: &str) -> Result<Plan, HookError> {
    let path = dir.join(name);
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Plan::Write { old: None, new: format!("{}\n", husky_lines(name)) });
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    if !meta.is_file() {
        return Ok(Plan::Manual("it is not a regular file (a symlink?)".to_owned()));
    }
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    let Ok(text) = String::from_utf8(bytes) else {
        return Ok(Plan::Manual("it is not UTF-8".to_owned()));
    };
    if text.contains('\r') {
        return Ok(Plan::Manual("it has CRLF line endings".to_owned()));
    }
    // First, so the script's own last command still decides its exit status; after the shebang and
    // husky 4-8's `. "$(dirname -- "$0")/_/husky.sh"`.
    let all = lines(&text);
    let mut at = 0;
    if all.first().is_some_and(|l| l.starts_with("#!")) {
        at = 1;
    }
    if all.get(at).is_some_and(|l| l.trim_start().starts_with('.') && l.contains("husky.sh")) {
        at += 1;
    }
    let mut new: String = all[..at].concat();
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&husky_lines(name));
    new.push('\n');
    new.push_str(&all[at..].concat());
    Ok(Plan::Write { old: Some(text), new })
}

fn write_plan(
    workdir: &Path,
    path: &Path,
    old: Option<String>,
    new: String,
    hooks: Vec<&'static str>,
    dry_run: bool,
) -> Result<FileEdit, HookError> {
    let shown = path.strip_prefix(workdir).unwrap_or(path);
    let diff = unified_diff(old.as_deref().unwrap_or(""), &new, shown, old.is_none());
    if !dry_run {
        write_file(path, new.as_bytes(), old.is_none())?;
    }
    Ok(FileEdit { path: path.to_owned(), created: old.is_none(), hooks, diff })
}

/// Atomic (a temporary file renamed over), keeping an existing file's mode; a new file is 0755 (git
/// runs `.husky/<hook>` itself when `core.hooksPath` is `.husky`). A new file never clobbers one
/// that appeared meanwhile.
fn write_file(path: &Path, bytes: &[u8], create: bool) -> Result<(), HookError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mode =
        if create { 0o755 } else { fs::metadata(path).map(|m| super::mode(&m)).map_err(io_err(path))? };
    let mut tmp = tempfile::Builder::new().prefix(".tpa-edit-").tempfile_in(dir).map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
    super::set_mode(tmp.as_file(), mode).map_err(io_err(path))?;
    if create {
        tmp.persist_noclobber(path).map_err(|e| io_err(path)(e.error))?;
    } else {
        tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    }
    Ok(())
}

/// Lines with their endings.
fn lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Neither blank nor a comment.
fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// `key: rest` of a block mapping line (the key unquoted, `rest` without a trailing comment).
fn key_value(line: &str) -> Option<(&str, &str)> {
    let t = line.trim();
    let (key, rest) = if let Some(q @ ('"' | '\'')) = t.chars().next() {
        let end = t[1..].find(q)? + 1;
        (&t[1..end], t[end + 1..].strip_prefix(':')?)
    } else {
        let colon = t.find(':')?;
        let rest = &t[colon + 1..];
        if !(rest.is_empty() || rest.starts_with(' ')) {
            return None;
        }
        (&t[..colon], rest)
    };
    let rest = rest.trim();
    let rest = if rest.starts_with('#') { "" } else { rest };
    Some((key, rest))
}

/// The lines `[start, end)` of the top-level section `name`: its key line and everything up to the
/// next top-level key.
fn section(all: &[&str], name: &str) -> Option<(usize, usize)> {
    let start = all
        .iter()
        .position(|l| indent(l) == 0 && is_content(l) && key_value(l).is_some_and(|(k, _)| k == name))?;
    let end = all[start + 1..]
        .iter()
        .position(|l| indent(l) == 0 && is_content(l))
        .map_or(all.len(), |i| start + 1 + i);
    Some((start, end))
}

/// The `run:` of tpa's lefthook command for `name`: git's arguments as lefthook's `{1}` …, tpa-hook
/// from PATH, and nothing at all where tpa is not installed.
pub fn lefthook_run(name: &str) -> String {
    let args = match name {
        "post-checkout" => " {1} {2} {3}",
        "post-merge" | "post-rewrite" => " {1}",
        _ => "",
    };
    // As in hook_line: where this clone certainly holds no grant, no tpa-hook is started.
    format!(
        "'if [ -e .git/{INDEX} ] || [ ! -d .git ] || [ -n \"$GIT_DIR\" ]; then \
         if command -v tpa-hook >/dev/null 2>&1; then tpa-hook hook {name}{args} || :; fi; fi'"
    )
}

/// A whole lefthook section running tpa for `name`, indented by `step`.
pub fn lefthook_section(name: &str, step: usize) -> String {
    let (a, b, c) = (" ".repeat(step), " ".repeat(2 * step), " ".repeat(3 * step));
    format!("{name}:\n{a}commands:\n{b}tpa:\n{c}run: {}\n", lefthook_run(name))
}

/// `text` with tpa's command added to the section of `name`, or why that cannot be done safely.
fn lefthook_add(text: &str, name: &str) -> Result<String, String> {
    if text.contains('\r') {
        return Err("it has CRLF line endings".to_owned());
    }
    let all = lines(text);
    if all.iter().any(|l| l.starts_with('\t') || l.trim_start_matches(' ').starts_with('\t')) {
        return Err("it is indented with tabs".to_owned());
    }
    // The indentation step the file uses, from its first indented line.
    let step = all.iter().filter(|l| is_content(l)).map(|l| indent(l)).find(|&i| i > 0).unwrap_or(2);
    let Some((start, end)) = section(&all, name) else {
        let mut new = text.to_owned();
        if !new.is_empty() && !new.ends_with('\n') {
            new.push('\n');
        }
        if !new.trim().is_empty() {
            new.push('\n');
        }
        new.push_str(&lefthook_section(name, step));
        return Ok(new);
    };
    let (_, rest) = key_value(all[start]).ok_or("its section is not a block mapping")?;
    if !rest.is_empty() {
        return Err(format!("`{name}:` has an inline value (`{rest}`)"));
    }
    let body: Vec<(usize, &str)> =
        (start + 1..end).map(|i| (i, all[i])).filter(|(_, l)| is_content(l)).collect();
    let child = body.first().map_or(step, |(_, l)| indent(l));
    let anchored = |l: &str| {
        let t = l.trim_start().trim_start_matches("- ");
        t.starts_with("<<")
            || t.starts_with('&')
            || t.starts_with('*')
            || key_value(l).is_some_and(|(_, v)| v.starts_with('&') || v.starts_with('*'))
    };
    if body.iter().any(|(_, l)| anchored(l)) {
        return Err(format!("`{name}:` uses YAML anchors or merge keys"));
    }
    // Keys at the section's first level; a `- ` line there belongs to the list of the key before it.
    let children: Vec<(usize, &str, &str)> = body
        .iter()
        .filter(|(_, l)| indent(l) == child && !l.trim_start().starts_with("- "))
        .map(|&(i, l)| {
            key_value(l).map(|(k, v)| (i, k, v)).ok_or_else(|| format!("`{name}:` is not a block mapping"))
        })
        .collect::<Result<_, _>>()?;
    let line_end = |i: usize| end.min(children.iter().map(|c| c.0).find(|&j| j > i).unwrap_or(end));
    let nested =
        |i: usize| -> Vec<&str> { (i + 1..line_end(i)).map(|j| all[j]).filter(|l| is_content(l)).collect() };
    let insert_after = |i: usize, added: String| {
        let mut new: String = all[..=i].concat();
        if !new.ends_with('\n') {
            new.push('\n');
        }
        new.push_str(&added);
        new.push_str(&all[i + 1..].concat());
        new
    };
    let run = lefthook_run(name);
    if let Some(&(i, _, value)) = children.iter().find(|c| c.1 == "commands") {
        if !value.is_empty() {
            return Err(format!("`{name}.commands` has an inline value"));
        }
        let inner = nested(i);
        let at = inner.first().map_or(child + step, |l| indent(l));
        if inner.iter().any(|l| indent(l) == at && key_value(l).is_some_and(|(k, _)| k == "tpa")) {
            return Err(format!("`{name}.commands` already has a command named tpa"));
        }
        let sub = " ".repeat(at + at.saturating_sub(child).max(1));
        return Ok(insert_after(i, format!("{}tpa:\n{sub}run: {run}\n", " ".repeat(at))));
    }
    if let Some(&(i, _, value)) = children.iter().find(|c| c.1 == "jobs") {
        if !value.is_empty() {
            return Err(format!("`{name}.jobs` has an inline value"));
        }
        let inner = nested(i);
        let at = inner.first().map_or(child + step, |l| indent(l));
        if inner.first().is_some_and(|l| !l.trim_start().starts_with("- ")) {
            return Err(format!("`{name}.jobs` is not a list tpa can read"));
        }
        let pad = " ".repeat(at);
        return Ok(insert_after(i, format!("{pad}- name: tpa\n{pad}  run: {run}\n")));
    }
    let (a, b) = (" ".repeat(child), " ".repeat(child + step));
    Ok(insert_after(start, format!("{a}commands:\n{b}tpa:\n{b}{}run: {run}\n", " ".repeat(step))))
}

/// What to add to `.pre-commit-config.yaml` for the hooks in `names`.
pub fn pre_commit_snippet(names: &[&str]) -> String {
    let mut s = String::from(
        "repos:   # add to the list, and install with the command after it\n  \
         - repo: <the git URL of tpa that your team pins>   # a repository holding .pre-commit-hooks.yaml\n    \
         rev: <a tag or commit of it>\n    hooks:\n",
    );
    for name in names {
        s.push_str(&format!("      - id: {}\n", pre_commit_id(name)));
    }
    s.push_str("# then, in each clone: pre-commit install");
    for name in names {
        s.push_str(&format!(" --hook-type {name}"));
    }
    s.push('\n');
    s.push_str(
        "# (or list the hook types in `default_install_hook_types` and run `pre-commit install`);\n\
         # tpa-hook must be on PATH (./install.sh puts it in ~/.local/bin)\n",
    );
    s
}

/// A unified diff of `old` → `new` (line based, 3 lines of context), `path` relative to the tree.
pub fn unified_diff(old: &str, new: &str, path: &Path, created: bool) -> String {
    let a: Vec<&str> = lines(old);
    let b: Vec<&str> = lines(new);
    // The longest common subsequence table, from the ends (files here are small).
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    // The edit script: (' ' | '-' | '+', line).
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            ops.push(('+', b[j]));
            j += 1;
        } else {
            ops.push(('-', a[i]));
            i += 1;
        }
    }
    let shown = path.display().to_string();
    let mut out = if created {
        format!("--- /dev/null\n+++ b/{shown}\n")
    } else {
        format!("--- a/{shown}\n+++ b/{shown}\n")
    };
    const CONTEXT: usize = 3;
    let changed: Vec<usize> = ops.iter().enumerate().filter(|(_, o)| o.0 != ' ').map(|(k, _)| k).collect();
    let mut k = 0;
    while k < changed.len() {
        let first = changed[k];
        let mut last = first;
        while k + 1 < changed.len() && changed[k + 1] <= last + 2 * CONTEXT + 1 {
            k += 1;
            last = changed[k];
        }
        k += 1;
        let from = first.saturating_sub(CONTEXT);
        let to = (last + CONTEXT + 1).min(ops.len());
        let old_start = ops[..from].iter().filter(|o| o.0 != '+').count();
        let new_start = ops[..from].iter().filter(|o| o.0 != '-').count();
        let old_len = ops[from..to].iter().filter(|o| o.0 != '+').count();
        let new_len = ops[from..to].iter().filter(|o| o.0 != '-').count();
        let start = |s: usize, len: usize| if len == 0 { s } else { s + 1 };
        out.push_str(&format!(
            "@@ -{},{old_len} +{},{new_len} @@\n",
            start(old_start, old_len),
            start(new_start, new_len)
        ));
        for (op, line) in &ops[from..to] {
            out.push(*op);
            out.push_str(line);
            if !line.ends_with('\n') {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEAM: &str = "# the team's hooks\npre-commit:\n  commands:\n    lint:\n      run: make lint\n\npost-checkout:\n  commands:\n    deps:\n      run: ./scripts/deps {1} {2}   # keep\n";

    #[test]
    fn lefthook_gets_a_command_in_an_existing_section_and_new_sections_for_the_rest() {
        let mut text = TEAM.to_owned();
        for name in HOOKS {
            text = lefthook_add(&text, name).unwrap();
        }
        // The team's lines are all still there, in order (only lines were inserted).
        let mut team = TEAM.lines().peekable();
        for line in text.lines() {
            if team.peek() == Some(&line) {
                team.next();
            }
        }
        assert_eq!(team.next(), None, "{text}");
        assert!(text.contains(
            "post-checkout:\n  commands:\n    tpa:\n      run: 'if [ -e .git/tpa/active.json ] || [ ! -d .git ] || [ -n \"$GIT_DIR\" ]; then if command -v tpa-hook >/dev/null 2>&1; then tpa-hook hook post-checkout {1} {2} {3} || :; fi; fi'\n    deps:\n"
        ), "{text}");
        assert!(text.contains("\npost-merge:\n  commands:\n    tpa:\n      run: 'if [ -e .git/tpa/active.json ] || [ ! -d .git ] || [ -n \"$GIT_DIR\" ]; then if command -v tpa-hook >/dev/null 2>&1; then tpa-hook hook post-merge {1} || :; fi; fi'\n"), "{text}");
        assert!(text.contains("tpa-hook hook post-commit || :; fi; fi'"), "{text}");
        let found = Found { manager: Manager::Lefthook, config: PathBuf::new() };
        assert!(HOOKS.iter().all(|n| configured(&found, Some(&text), n)));
        assert!(!configured(&found, Some(TEAM), "post-checkout"));
    }

    #[test]
    fn lefthook_jobs_deeper_indentation_and_an_empty_section() {
        let jobs = "post-merge:\n    jobs:\n        - name: deps\n          run: npm ci\n";
        let text = lefthook_add(jobs, "post-merge").unwrap();
        assert!(
            text.starts_with("post-merge:\n    jobs:\n        - name: tpa\n          run: 'if [ -e .git/tpa"),
            "{text}"
        );
        let other =
            "post-rewrite:\n    parallel: true\n    scripts:\n        x.sh:\n            runner: bash\n";
        let text = lefthook_add(other, "post-rewrite").unwrap();
        assert!(
            text.starts_with("post-rewrite:\n    commands:\n        tpa:\n            run: 'if"),
            "{text}"
        );
        assert!(
            text.ends_with("    parallel: true\n    scripts:\n        x.sh:\n            runner: bash\n")
        );
        let empty = "post-commit:\n";
        let text = lefthook_add(empty, "post-commit").unwrap();
        assert_eq!(
            text,
            format!("post-commit:\n  commands:\n    tpa:\n      run: {}\n", lefthook_run("post-commit"))
        );
    }

    #[test]
    fn lefthook_shapes_tpa_cannot_edit_safely_are_refused() {
        for (text, why) in [
            ("post-merge: {commands: {}}\n", "inline value"),
            ("post-merge:\n  <<: *common\n", "anchors"),
            ("post-merge:\n  commands:\n    tpa:\n      run: something else\n", "named tpa"),
            ("post-merge:\r\n  commands:\r\n", "CRLF"),
            ("post-merge:\n\tcommands:\n", "tabs"),
        ] {
            let err = lefthook_add(text, "post-merge").unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn husky_lines_go_after_the_shebang_and_husky_sh() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(
            dir.join("post-merge"),
            "#!/usr/bin/env sh\n. \"$(dirname -- \"$0\")/_/husky.sh\"\n\nnpm ci\n",
        )
        .unwrap();
        fs::write(dir.join("post-commit"), "echo done\nexit 3\n").unwrap();
        let Plan::Write { new, .. } = husky_plan(dir, "post-merge").unwrap() else { panic!() };
        assert_eq!(
            new,
            format!(
                "#!/usr/bin/env sh\n. \"$(dirname -- \"$0\")/_/husky.sh\"\n{}\n\nnpm ci\n",
                husky_lines("post-merge")
            )
        );
        let Plan::Write { new, .. } = husky_plan(dir, "post-commit").unwrap() else { panic!() };
        assert_eq!(new, format!("{}\necho done\nexit 3\n", husky_lines("post-commit")));
        let Plan::Write { old: None, new } = husky_plan(dir, "post-rewrite").unwrap() else { panic!() };
        assert_eq!(new, format!("{}\n", husky_lines("post-rewrite")));
        std::os::unix::fs::symlink("post-merge", dir.join("post-checkout")).unwrap();
        assert!(matches!(husky_plan(dir, "post-checkout").unwrap(), Plan::Manual(_)));
    }

    #[test]
    fn the_lines_for_committed_files_hold_no_path_and_survive_sh() {
        for name in HOOKS {
            for text in [husky_lines(name), lefthook_run(name), pre_commit_snippet(&[name])] {
                for machine in [env!("CARGO_MANIFEST_DIR"), "/home/", "/tmp/", "/usr/", "/opt/"] {
                    assert!(!text.contains(machine), "{text}");
                }
            }
        }
        // The husky line is a no-op (status 0) where tpa-hook is not on PATH, even under `sh -e`.
        let out = std::process::Command::new("/bin/sh")
            .args(["-e", "-c", &format!("{}\nexit 7", hook_line("post-merge")), "sh", "a"])
            .env("PATH", "/nonexistent")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(7));
        assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn unified_diff_shows_insertions_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nX\nb\nc\nd\ne\nf\ng\nh\nY\n";
        let diff = unified_diff(old, new, Path::new("lefthook.yml"), false);
        assert_eq!(
            diff,
            "--- a/lefthook.yml\n+++ b/lefthook.yml\n@@ -1,4 +1,5 @@\n a\n+X\n b\n c\n d\n@@ -6,3 +7,4 @@\n f\n g\n h\n+Y\n"
        );
        let created = unified_diff("", "x\n", Path::new(".husky/post-merge"), true);
        assert_eq!(created, "--- /dev/null\n+++ b/.husky/post-merge\n@@ -0,0 +1,1 @@\n+x\n");
        assert!(contains_word("- id: tpa-post-commit\n", "tpa-post-commit"));
        assert!(!contains_word("- id: tpa-post-commit-msg\n", "tpa-post-commit"));
    }
}

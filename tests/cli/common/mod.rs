//! The sealed test environment: every test runs the real `tpa` binary and the real `git` in a
//! temporary directory, with a cleared environment, HOME in the temp dir, no global or system git
//! config, fixed commit dates, and the real OS keyring (gnome-keyring's Secret Service on a private
//! D-Bus session started once per test binary).

#![allow(dead_code)]

pub mod aws;
pub mod botocore;
pub mod cloudtrail;
pub mod grants;
pub mod moto;
pub mod notes;
pub mod ocsf;
pub mod postgres;
pub mod proxy;
pub mod webhook;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;

pub const TPA: &str = env!("CARGO_BIN_EXE_tpa");
pub const EMAIL: &str = "alice@example.com";

/// A private D-Bus session with an unlocked gnome-keyring. It lives as long as the test binary:
/// the session's `cat` waits on a pipe whose writing end only this process holds, so the session
/// (and the keyring daemon with it) ends when the tests end.
pub struct KeyringSession {
    pub address: String,
    pub dir: PathBuf,
    _keep_alive: ChildStdin,
    _child: Child,
}

pub fn keyring() -> &'static KeyringSession {
    static SESSION: OnceLock<KeyringSession> = OnceLock::new();
    SESSION.get_or_init(start_keyring)
}

fn start_keyring() -> KeyringSession {
    let dir = tempfile::Builder::new().prefix("tpa-keyring-").tempdir().unwrap().keep();
    for sub in ["data", "runtime", "config", "home"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let runtime = dir.join("runtime");
    std::fs::set_permissions(&runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let log = dir.join("session.log");
    // A fixed script: its only inputs are positional parameters, never interpolated.
    let script = r#"printf %s "$1" | gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>>"$2" || exit 1
echo "$DBUS_SESSION_BUS_ADDRESS"
exec cat >/dev/null"#;
    let mut child = Command::new("dbus-run-session")
        .args(["--", "sh", "-c", script, "sh", "test-keyring-password"])
        .arg(&log)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.join("home"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_RUNTIME_DIR", &runtime)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("dbus.log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start dbus-run-session ({e}): install dbus and gnome-keyring (see .ci/run)")
        });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address = line.trim().to_owned();
    if address.is_empty() {
        let status = child.wait().unwrap();
        panic!(
            "the test keyring did not start ({status}): install gnome-keyring and dbus (see .ci/run)\n{}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(dir.join("dbus.log")).unwrap_or_default()
        );
    }
    let keep_alive = child.stdin.take().unwrap();
    KeyringSession { address, dir, _keep_alive: keep_alive, _child: child }
}

/// One test's world: a temp dir holding HOME and the repositories.
pub struct TestEnv {
    pub root: tempfile::TempDir,
    pub home: PathBuf,
    /// With the test binary's gnome-keyring session bus; without, a headless machine.
    desktop: bool,
    extra_env: Vec<(String, String)>,
    /// A pinned clock and a fresh id seed for every tpa command (see [`TestEnv::pin`]).
    pinned: Option<(String, std::sync::atomic::AtomicU64)>,
}

impl TestEnv {
    /// A desktop: the Secret Service of the test binary's private D-Bus session.
    pub fn new() -> Self {
        Self::with_desktop(true)
    }

    /// A headless machine: no session bus (its address points at a socket nobody listens on, so
    /// the developer's own desktop bus is never reached), so tpa keeps grant credentials in the
    /// kernel keyring. Processes share the test binary's session keyring (scripts/test runs the
    /// tests inside a `keyctl session` of their own); grant ids keep their entries apart.
    pub fn headless() -> Self {
        Self::with_desktop(false)
    }

    fn with_desktop(desktop: bool) -> Self {
        let root = tempfile::Builder::new().prefix("tpa-test-").tempdir().unwrap();
        let home = root.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        TestEnv { root, home, desktop, extra_env: Vec::new(), pinned: None }
    }

    /// Every tpa command from now on sees the clock at `now` (RFC 3339) and a grant-id seed of its
    /// own (the first command 1, the next 2, ...): with crafted records, outputs are the same at
    /// every run, and can be pinned as snapshots. (jj's test environment does the same.)
    pub fn pin(&mut self, now: &str) {
        self.pinned = Some((now.to_owned(), std::sync::atomic::AtomicU64::new(0)));
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    pub fn set_env(&mut self, key: &str, value: impl Into<String>) {
        self.extra_env.push((key.to_owned(), value.into()));
    }

    fn sealed(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("USER", "alice")
            .env("LANG", "C.UTF-8")
            .env("TZ", "UTC")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                match self.desktop {
                    true => keyring().address.clone(),
                    false => format!("unix:path={}", self.root.path().join("no-bus").display()),
                },
            )
            .env("XDG_RUNTIME_DIR", self.root.path())
            // Hooks sweep inline, so a test sees their effect when git returns.
            .env("TPA_HOOK_FOREGROUND", "1")
            .stdin(Stdio::null());
        for (key, value) in &self.extra_env {
            cmd.env(key, value);
        }
        cmd
    }

    /// `tpa` in `dir`.
    pub fn tpa(&self, dir: &Path) -> Run {
        let mut cmd = self.sealed(TPA);
        cmd.current_dir(dir);
        if let Some((now, seed)) = &self.pinned {
            let seed = seed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            cmd.env("TPA_TEST_NOW", now).env("TPA_TEST_SEED", seed.to_string());
        }
        Run { cmd, stdin: None }
    }

    /// `git` in `dir`; panics when git fails.
    pub fn git(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git_output(dir, args);
        assert!(out.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    pub fn git_output(&self, dir: &Path, args: &[&str]) -> Output {
        self.sealed("git").current_dir(dir).args(args).output().unwrap()
    }

    pub fn git_bytes(&self, dir: &Path, args: &[&OsStr]) -> Output {
        self.sealed("git").current_dir(dir).args(args).output().unwrap()
    }

    /// A repository with one commit on main, user.email set, and no remote.
    pub fn repo(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        self.git(&dir, &["init", "-q", "-b", "main"]);
        self.git(&dir, &["config", "user.email", EMAIL]);
        self.git(&dir, &["config", "user.name", "Alice"]);
        std::fs::write(dir.join("README"), "hello\n").unwrap();
        self.git(&dir, &["add", "README"]);
        self.git(&dir, &["commit", "-q", "-m", "initial"]);
        dir
    }

    /// A repository cloned from a bare `origin`, so the trust ref is `refs/remotes/origin/main`.
    pub fn repo_with_origin(&self, name: &str) -> (PathBuf, PathBuf) {
        let seed = self.repo(&format!("{name}-seed"));
        let origin = self.path(&format!("{name}-origin.git"));
        self.git(
            self.root.path(),
            &["clone", "-q", "--bare", seed.to_str().unwrap(), origin.to_str().unwrap()],
        );
        let dir = self.path(name);
        self.git(self.root.path(), &["clone", "-q", origin.to_str().unwrap(), dir.to_str().unwrap()]);
        self.git(&dir, &["config", "user.email", EMAIL]);
        self.git(&dir, &["config", "user.name", "Alice"]);
        (dir, origin)
    }

    /// A fresh unencrypted ed25519 key file made by ssh-keygen; returns its path.
    pub fn ssh_key(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        let out = self
            .sealed("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
        path
    }

    pub fn command(&self, program: &str) -> Command {
        self.sealed(program)
    }

    /// `tpa init` + commit `.tpa/` on main: the repo's key is trusted, HEAD is on `hotfix/one`.
    pub fn trusted_repo(&self, name: &str) -> PathBuf {
        let dir = self.repo(name);
        self.tpa(&dir).arg("init").run().success();
        self.git(&dir, &["add", ".tpa"]);
        self.git(&dir, &["commit", "-q", "-m", "tpa: allow alice"]);
        self.git(&dir, &["switch", "-q", "-c", "hotfix/one"]);
        dir
    }
}

pub struct Run {
    cmd: Command,
    stdin: Option<Vec<u8>>,
}

pub struct Done {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    what: String,
}

impl Run {
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.cmd.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.cmd.env_remove(key);
        self
    }

    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    pub fn spawn(mut self) -> Child {
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        self.cmd.spawn().unwrap()
    }

    /// Spawns with stdin, stdout and stderr piped: for a session the test talks to.
    pub fn spawn_piped(mut self) -> Child {
        self.cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        self.cmd.spawn().unwrap()
    }

    pub fn run(mut self) -> Done {
        let what = format!("{:?}", self.cmd);
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if self.stdin.is_some() {
            self.cmd.stdin(Stdio::piped());
        }
        let mut child = self.cmd.spawn().unwrap();
        if let Some(input) = self.stdin.take() {
            child.stdin.take().unwrap().write_all(&input).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        Done::from_output(out, what)
    }
}

impl Done {
    pub fn from_output(out: Output, what: String) -> Self {
        Done {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            what,
        }
    }

    pub fn code(self, expected: i32) -> Self {
        assert_eq!(
            self.code, expected,
            "{}\nexit {} (expected {expected})\nstdout:\n{}\nstderr:\n{}",
            self.what, self.code, self.stdout, self.stderr
        );
        self
    }

    pub fn success(self) -> Self {
        self.code(0)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }
}

/// The finding kinds of a `tpa verify --json` result, sorted.
pub fn finding_kinds(verify_json: &serde_json::Value) -> Vec<String> {
    let mut kinds: Vec<String> = verify_json["findings"]
        .as_array()
        .expect("findings array")
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// `tpa verify --json` as a developer runs it (since the witness, when a verified tip and its
/// cache are there), then `--full`, then once more from the cache the full run left. Then, from the
/// witness and cache that were there before the first run: once with the cache damaged, and once
/// with allowed_signers changed on the trust ref (one more signer, who signed nothing here). Every
/// run must agree with `--full` on the exit code, the record count, every finding (every field)
/// and the git copies, so that neither a check since the witness nor a damaged or stale cache can
/// ever report less than a full check. Leaves the trust ref, the witness and the cache as the third
/// run left them. Returns the first run's exit code and JSON (whose `checked` says how it checked).
pub fn verify_each_way(env: &TestEnv, dir: &Path) -> (i32, serde_json::Value) {
    let state =
        PathBuf::from(env.git(dir, &["rev-parse", "--path-format=absolute", "--git-common-dir"])).join("tpa");
    let (witness_file, cache_file) = (state.join("witness"), state.join("verify-cache"));
    let before = (std::fs::read(&witness_file).ok(), std::fs::read(&cache_file).ok());
    let run = |args: &[&str]| {
        let run = env.tpa(dir).args(args).run();
        let json = run.json();
        (run.code, json)
    };
    let runs: Vec<(i32, serde_json::Value)> =
        [&["verify", "--json"][..], &["verify", "--json", "--full"], &["verify", "--json"]]
            .iter()
            .map(|args| run(args))
            .collect();
    let comparable = |(code, json): &(i32, serde_json::Value)| {
        (
            *code,
            json["records"].clone(),
            json["findings"].clone(),
            json["git_copies"].clone(),
            json["ok"].clone(),
        )
    };
    let same_as_full = |what: &str, other: &(i32, serde_json::Value)| {
        assert_eq!(comparable(other), comparable(&runs[1]), "{what} vs --full:\n{}\n{}", other.1, runs[1].1);
    };
    same_as_full("since the witness", &runs[0]);
    same_as_full("again from the cache", &runs[2]);
    assert_eq!(runs[1].1["checked"]["mode"], "full");
    let after = (std::fs::read(&witness_file).ok(), std::fs::read(&cache_file).ok());
    let put = |file: &Path, bytes: &Option<Vec<u8>>| match bytes {
        Some(bytes) => std::fs::write(file, bytes).unwrap(),
        None => {
            let _ = std::fs::remove_file(file);
        }
    };

    if let (Some(witness), Some(cache)) = &before {
        // The cache that was there, damaged (one bit in the middle, the digest left as it was).
        let mut damaged = cache.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 1;
        std::fs::write(&witness_file, witness).unwrap();
        std::fs::write(&cache_file, &damaged).unwrap();
        let damaged_run = run(&["verify", "--json"]);
        assert_eq!(
            damaged_run.1["checked"]["mode"], "full",
            "a damaged cache is not used: {}",
            damaged_run.1
        );
        same_as_full("with a damaged cache", &damaged_run);

        // allowed_signers changed on the trust ref between the two runs: one more signer.
        if let Some(trust_ref) = runs[1].1["trust_ref"].as_str().filter(|_| runs[1].1["records"] != 0) {
            let old = env.git(dir, &["rev-parse", trust_ref]);
            let signers = env.git(dir, &["show", &format!("{old}:.tpa/allowed_signers")]);
            let index = env.path("trust-index");
            let _ = std::fs::remove_file(&index);
            let git = |args: &[&str], input: Option<&str>| {
                let mut cmd = env.command("git");
                cmd.current_dir(dir).env("GIT_INDEX_FILE", &index).args(args);
                if input.is_some() {
                    cmd.stdin(std::process::Stdio::piped());
                }
                cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
                let mut child = cmd.spawn().unwrap();
                if let Some(input) = input {
                    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
                }
                let out = child.wait_with_output().unwrap();
                assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            };
            let more = format!(
                "{signers}\nnobody@example.com namespaces=\"tpa\" \
                 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAVFuAj+KOG7Jil4cFbABSuDwnqXCKv6D3KDN9ztQvgo\n"
            );
            let blob = git(&["hash-object", "-w", "--stdin"], Some(&more));
            git(&["read-tree", &old], None);
            git(&["update-index", "--cacheinfo", &format!("100644,{blob},.tpa/allowed_signers")], None);
            let tree = git(&["write-tree"], None);
            let commit = git(&["commit-tree", &tree, "-p", &old, "-m", "one more signer"], None);
            git(&["update-ref", trust_ref, &commit], None);
            std::fs::write(&witness_file, witness).unwrap();
            std::fs::write(&cache_file, cache).unwrap();
            let trust_run = run(&["verify", "--json"]);
            git(&["update-ref", trust_ref, &old], None);
            assert_eq!(trust_run.1["checked"]["mode"], "full", "other signers: {}", trust_run.1);
            assert!(
                trust_run.1["checked"]["reason"].as_str().unwrap().contains("allowed_signers"),
                "{}",
                trust_run.1
            );
            same_as_full("with allowed_signers changed on the trust ref", &trust_run);
        }
        put(&witness_file, &after.0);
        put(&cache_file, &after.1);
    }
    runs.into_iter().next().unwrap()
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &std::path::PathBuf) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

//! tpa through the hook managers teams already run, end to end with the real managers: pre-commit
//! (PyPI, in .venv), lefthook 2.2.1 and husky 9 (npm, in .tools/; `scripts/test --setup-only`
//! installs them). Each test sets the manager up as its own docs say, adds tpa through it, and then
//! drives real git merges against moto's IAM: the team's own hook keeps running with its exit
//! status, and a second `tpa init` changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::aws::AwsRepo;
use crate::common::aws::denied;
use crate::common::*;

const TOOLS_INSTALL: &str = "scripts/test --setup-only (npm install --prefix .tools lefthook@2.2.1 husky@9)";

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `.tools/node_modules/<rest>`, or a loud failure naming the command that installs it.
fn tool(rest: &str) -> PathBuf {
    let path = manifest().join(".tools/node_modules").join(rest);
    assert!(path.exists(), "{} is missing: run {TOOLS_INSTALL}", path.display());
    path
}

fn lefthook() -> PathBuf {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => other,
    };
    tool(&format!("lefthook-{}-{arch}/bin/lefthook", std::env::consts::OS))
}

fn pre_commit() -> PathBuf {
    let path = manifest().join(".venv/bin/pre-commit");
    assert!(path.exists(), "{} is missing: run scripts/test --setup-only", path.display());
    path
}

/// A headless test world whose PATH has tpa-hook (as ./install.sh puts it on PATH) and `extra`.
fn env_with_path(extra: &[&Path]) -> TestEnv {
    let mut env = TestEnv::headless();
    let mut dirs: Vec<PathBuf> = vec![Path::new(TPA).parent().unwrap().to_owned()];
    dirs.extend(extra.iter().map(|p| p.to_path_buf()));
    dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    env.set_env("PATH", std::env::join_paths(dirs).unwrap().into_string().unwrap());
    env
}

/// The AWS repository with tpa's plain hooks taken out again (AwsRepo's set-up ran `tpa init`
/// before any manager existed), HEAD on main.
fn aws_repo(env: TestEnv) -> AwsRepo {
    let aws = AwsRepo::in_env(env, "", "");
    aws.tpa().arg("uninstall").run().success();
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// The team's own hook: logs its name and arguments to .git/team.log and exits with the number in
/// .git/team-status (0 without it).
const TEAM_HOOK: &str =
    "#!/bin/sh\necho \"$*\" >> .git/team.log\nexit \"$(cat .git/team-status 2>/dev/null || echo 0)\"\n";

fn team_log(aws: &AwsRepo) -> String {
    std::fs::read_to_string(aws.dir.join(".git/team.log")).unwrap_or_default()
}

/// Every file under the given paths (relative to the repository), with its bytes and mode.
fn snapshot(aws: &AwsRepo, roots: &[&str]) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    fn walk(path: &Path, out: &mut BTreeMap<PathBuf, (Vec<u8>, u32)>) {
        let Ok(meta) = std::fs::symlink_metadata(path) else { return };
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                walk(&entry.unwrap().path(), out);
            }
        } else {
            use std::os::unix::fs::PermissionsExt;
            out.insert(path.to_owned(), (std::fs::read(path).unwrap_or_default(), meta.permissions().mode()));
        }
    }
    let mut out = BTreeMap::new();
    for root in roots {
        walk(&aws.dir.join(root), &mut out);
    }
    out
}

/// `tpa init --json`'s hooks part.
fn init_hooks(aws: &AwsRepo, args: &[&str]) -> serde_json::Value {
    let out = aws.tpa().arg("init").arg("--json").args(args).run().success().json();
    if args.contains(&"--dry-run") { out } else { out["hooks"].clone() }
}

fn doctor_hooks(aws: &AwsRepo) -> serde_json::Value {
    let out = aws.tpa().args(["doctor", "--json"]).run().json();
    out["checks"].as_array().unwrap().iter().find(|c| c["id"] == "hooks").unwrap().clone()
}

fn grant(aws: &AwsRepo) -> String {
    aws.request().arg("--json").run().success().json()["grant_id"].as_str().unwrap().to_owned()
}

/// The grant's state and the trigger of its last revoke record.
fn state(aws: &AwsRepo, grant_id: &str) -> (String, Option<String>) {
    let show = aws.tpa().args(["show", grant_id, "--json"]).run().success().json();
    let trigger = show["records"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r["record"]["kind"] == "revoke")
        .map(|r| r["record"]["trigger"].as_str().unwrap().to_owned());
    (show["state"].as_str().unwrap().to_owned(), trigger)
}

/// The team's hook logged branch switches with git's three arguments (two commits, then 1).
fn assert_checkouts_logged(log: &str) {
    let hex = |s: &str| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let switches = log
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() == 4 && f[0] == "post-checkout" && hex(f[1]) && hex(f[2]) && f[3] == "1")
        .count();
    assert!(switches >= 6, "{log}");
}

/// No line tpa wrote into a committed file names a path of this machine.
fn assert_no_machine_paths(text: &str, aws: &AwsRepo) {
    for local in [aws.env.root.path(), manifest(), Path::new(TPA).parent().unwrap()] {
        assert!(!text.contains(local.to_str().unwrap()), "{} in:\n{text}", local.display());
    }
}

/// The life of grants through the manager, the repository on main with the manager committed:
/// a merge revokes (IAM denies the session), leaving and coming back does not, a squash merge
/// revokes at its commit.
fn merges_revoke_through_the_manager(aws: &AwsRepo) {
    aws.env.git(&aws.dir, &["switch", "-q", "-c", "hotfix/one"]);
    aws.env.git(&aws.dir, &["commit", "-q", "--allow-empty", "-m", "fix one"]);
    let merged = grant(aws);
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.env.git(&aws.dir, &["switch", "-q", "hotfix/one"]);
    assert_eq!(state(aws, &merged), ("active".into(), None), "switching away and back ends nothing");
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.env.git(&aws.dir, &["merge", "-q", "--no-ff", "-m", "merge one", "hotfix/one"]);
    assert_eq!(state(aws, &merged), ("revoked".into(), Some("merged".into())));
    assert!(denied(&aws.role_name).contains(&format!("tpa-{merged}")), "IAM denies the merged grant");

    aws.env.git(&aws.dir, &["switch", "-q", "-c", "hotfix/two"]);
    std::fs::write(aws.dir.join("fix.txt"), "the fix\n").unwrap();
    aws.env.git(&aws.dir, &["add", "fix.txt"]);
    aws.env.git(&aws.dir, &["commit", "-q", "-m", "fix two"]);
    let squashed = grant(aws);
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    aws.env.git(&aws.dir, &["merge", "-q", "--squash", "hotfix/two"]);
    assert_eq!(state(aws, &squashed).0, "active", "a squash without its commit is not merged yet");
    aws.env.git(&aws.dir, &["commit", "-q", "-m", "squashed two"]);
    assert_eq!(state(aws, &squashed), ("revoked".into(), Some("merged".into())));
    assert!(denied(&aws.role_name).contains(&format!("tpa-{squashed}")));
    assert!(!denied(&aws.role_name).is_empty());
}

/// A repository holding tpa's `.pre-commit-hooks.yaml` and `hooks/` as this checkout has them: what
/// a team's `repo:` points at. Returns its path and commit.
fn tpa_hook_repository(env: &TestEnv) -> (PathBuf, String) {
    let dir = env.path("tpa-hook-repository");
    std::fs::create_dir_all(dir.join("hooks")).unwrap();
    std::fs::copy(manifest().join(".pre-commit-hooks.yaml"), dir.join(".pre-commit-hooks.yaml")).unwrap();
    for name in ["post-merge", "post-commit", "post-checkout", "post-rewrite"] {
        std::fs::copy(manifest().join("hooks").join(name), dir.join("hooks").join(name)).unwrap();
    }
    env.git(&dir, &["init", "-q", "-b", "main"]);
    env.git(&dir, &["-c", "user.email=t@example.com", "-c", "user.name=T", "add", "."]);
    env.git(
        &dir,
        &["-c", "user.email=t@example.com", "-c", "user.name=T", "commit", "-q", "-m", "tpa hooks"],
    );
    let rev = env.git(&dir, &["rev-parse", "HEAD"]);
    (dir, rev)
}

#[test]
fn pre_commit_runs_tpa_from_its_hook_repository() {
    let bin = pre_commit();
    let mut env = env_with_path(&[]);
    env.set_env("PRE_COMMIT_HOME", env.path("pre-commit-home").to_str().unwrap().to_owned());
    let aws = aws_repo(env);
    let dir = &aws.dir;

    // The team's pre-commit, as its docs say: a config with their lint, then `pre-commit install`.
    write_exec(&dir.join("lint.sh"), TEAM_HOOK);
    let team = "repos:\n  - repo: local\n    hooks:\n      - id: lint\n        name: lint\n        entry: ./lint.sh\n        \
                language: script\n        pass_filenames: false\n        always_run: true\n        stages: [pre-commit]\n";
    std::fs::write(dir.join(".pre-commit-config.yaml"), team).unwrap();
    aws.env.git(dir, &["add", "lint.sh", ".pre-commit-config.yaml"]);
    aws.env.git(dir, &["commit", "-q", "-m", "pre-commit"]);
    let out = aws.env.command(bin.to_str().unwrap()).current_dir(dir).arg("install").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // tpa init finds pre-commit, writes nothing, and says what to add.
    let before = snapshot(&aws, &[".git/hooks", ".pre-commit-config.yaml"]);
    let hooks = init_hooks(&aws, &[]);
    assert_eq!(hooks["outcome"], "manager");
    assert_eq!(hooks["manager"], "pre-commit");
    assert_eq!(hooks["edits"].as_array().unwrap().len(), 0);
    let add = hooks["manual"][0]["add"].as_str().unwrap();
    for id in ["tpa-post-merge", "tpa-post-commit", "tpa-post-checkout", "tpa-post-rewrite"] {
        assert!(add.contains(&format!("- id: {id}\n")), "{add}");
    }
    assert_eq!(snapshot(&aws, &[".git/hooks", ".pre-commit-config.yaml"]), before);
    assert_eq!(doctor_hooks(&aws)["status"], "fail");

    // The team adds tpa like any hook repository.
    let (repo, rev) = tpa_hook_repository(&aws.env);
    let tpa_repo = format!(
        "  - repo: {}\n    rev: {rev}\n    hooks:\n      - id: tpa-post-merge\n      - id: tpa-post-commit\n      \
         - id: tpa-post-checkout\n      - id: tpa-post-rewrite\n",
        repo.display()
    );
    std::fs::write(dir.join(".pre-commit-config.yaml"), format!("{team}{tpa_repo}")).unwrap();
    aws.env.git(dir, &["commit", "-q", "-am", "tpa through pre-commit"]);
    let hooks = init_hooks(&aws, &[]);
    assert!(
        hooks["hooks"].as_array().unwrap().iter().all(|h| h["configured"] == true && h["wired"] == false),
        "{hooks}"
    );
    let activate = hooks["activate"].as_str().unwrap();
    assert_eq!(
        activate,
        "pre-commit install --hook-type post-merge --hook-type post-commit --hook-type post-checkout --hook-type post-rewrite"
    );
    assert_eq!(doctor_hooks(&aws)["fix"], format!("run `{activate}`"));
    let out = aws
        .env
        .command(bin.to_str().unwrap())
        .current_dir(dir)
        .args(activate.split(' ').skip(1))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hooks = init_hooks(&aws, &[]);
    assert!(
        hooks["hooks"].as_array().unwrap().iter().all(|h| h["configured"] == true && h["wired"] == true),
        "{hooks}"
    );
    assert!(hooks["activate"].is_null() && hooks["manual"].as_array().unwrap().is_empty(), "{hooks}");
    assert_eq!(doctor_hooks(&aws)["status"], "ok", "{}", doctor_hooks(&aws));

    // A second tpa init changes nothing.
    let settled = snapshot(&aws, &[".git/hooks", ".pre-commit-config.yaml"]);
    init_hooks(&aws, &[]);
    assert_eq!(snapshot(&aws, &[".git/hooks", ".pre-commit-config.yaml"]), settled);

    merges_revoke_through_the_manager(&aws);

    // The team's lint ran on every commit, and still decides whether a commit happens.
    assert!(team_log(&aws).lines().count() >= 3, "{}", team_log(&aws));
    std::fs::write(dir.join(".git/team-status"), "3\n").unwrap();
    let refused = aws.env.git_output(dir, &["commit", "-q", "--allow-empty", "-m", "refused by lint"]);
    assert!(!refused.status.success(), "the lint's failure still refuses the commit");
    assert_ne!(aws.env.git(dir, &["log", "-1", "--format=%s"]), "refused by lint");
}

#[test]
fn lefthook_gets_tpas_commands_in_the_teams_lefthook_yml() {
    let bin = lefthook();
    let aws = aws_repo(env_with_path(&[bin.parent().unwrap()]));
    let dir = &aws.dir;
    let lefthook = |args: &[&str]| {
        let out = aws.env.command(bin.to_str().unwrap()).current_dir(dir).args(args).output().unwrap();
        assert!(out.status.success(), "lefthook {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };

    // The team's lefthook, as its docs say: lefthook.yml, then `lefthook install`.
    write_exec(&dir.join("team-hook.sh"), TEAM_HOOK);
    let team = "# the team's hooks\npost-checkout:\n  commands:\n    team:\n      run: ./team-hook.sh post-checkout {1} {2} {3}\n";
    std::fs::write(dir.join("lefthook.yml"), team).unwrap();
    aws.env.git(dir, &["add", "team-hook.sh", "lefthook.yml"]);
    aws.env.git(dir, &["commit", "-q", "-m", "lefthook"]);
    lefthook(&["install"]);

    // --dry-run shows the diff and writes nothing.
    let before = snapshot(&aws, &[".git/hooks", "lefthook.yml"]);
    let plan = init_hooks(&aws, &["--dry-run"]);
    assert_eq!(
        (plan["outcome"].as_str(), plan["manager"].as_str(), plan["dry_run"].as_bool()),
        (Some("manager"), Some("lefthook"), Some(true))
    );
    let diff = plan["edits"][0]["diff"].as_str().unwrap();
    assert!(diff.starts_with("--- a/lefthook.yml\n+++ b/lefthook.yml\n"), "{diff}");
    assert!(diff.contains("+    tpa:\n"), "{diff}");
    assert!(!diff.lines().any(|l| l.starts_with('-') && !l.starts_with("---")), "only insertions: {diff}");
    assert_eq!(snapshot(&aws, &[".git/hooks", "lefthook.yml"]), before);

    let hooks = init_hooks(&aws, &[]);
    assert_eq!(hooks["edits"][0]["diff"].as_str().unwrap(), diff);
    assert_eq!(hooks["activate"], "lefthook install");
    let text = std::fs::read_to_string(dir.join("lefthook.yml")).unwrap();
    assert!(text.starts_with("# the team's hooks\npost-checkout:\n  commands:\n"), "{text}");
    assert!(text.contains("    team:\n      run: ./team-hook.sh post-checkout {1} {2} {3}\n"), "{text}");
    assert_no_machine_paths(&text, &aws);
    assert_eq!(doctor_hooks(&aws)["status"], "fail", "post-merge etc. are not installed by lefthook yet");
    lefthook(&["validate"]);
    lefthook(&["install"]);
    assert_eq!(doctor_hooks(&aws)["status"], "ok", "{}", doctor_hooks(&aws));
    aws.env.git(dir, &["commit", "-q", "-am", "tpa through lefthook"]);

    let settled = snapshot(&aws, &[".git/hooks", "lefthook.yml"]);
    let again = init_hooks(&aws, &[]);
    assert!(again["edits"].as_array().unwrap().is_empty() && again["activate"].is_null(), "{again}");
    assert_eq!(snapshot(&aws, &[".git/hooks", "lefthook.yml"]), settled);

    merges_revoke_through_the_manager(&aws);

    // The team's command ran with git's arguments, and its failure is still the checkout's.
    assert_checkouts_logged(&team_log(&aws));
    std::fs::write(dir.join(".git/team-status"), "3\n").unwrap();
    let failed = aws.env.git_output(dir, &["switch", "-q", "hotfix/one"]);
    assert_eq!(failed.status.code(), Some(1), "lefthook reports a failed command as 1");
    std::fs::write(dir.join(".git/team-status"), "0\n").unwrap();
    assert!(aws.env.git_output(dir, &["switch", "-q", "main"]).status.success());
}

#[test]
fn husky_scripts_get_tpas_line_first_and_keep_their_exit_status() {
    let husky = tool("husky/bin.js");
    let aws = aws_repo(env_with_path(&[]));
    let dir = &aws.dir;

    // The team's husky, as its docs say: `npx husky init` in a package, then their own scripts.
    std::fs::write(dir.join("package.json"), "{\n  \"name\": \"team\",\n  \"private\": true\n}\n").unwrap();
    let out = aws.env.command("node").current_dir(dir).arg(&husky).arg("init").output().unwrap();
    assert!(out.status.success(), "husky init: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(aws.env.git(dir, &["config", "core.hooksPath"]), ".husky/_");
    std::fs::write(dir.join(".husky/pre-commit"), "./team-hook.sh pre-commit\n").unwrap();
    let team_checkout = "# the team's post-checkout\n./team-hook.sh post-checkout \"$@\"\n";
    std::fs::write(dir.join(".husky/post-checkout"), team_checkout).unwrap();
    write_exec(&dir.join("team-hook.sh"), TEAM_HOOK);
    aws.env.git(dir, &["add", "package.json", ".husky", "team-hook.sh"]);
    aws.env.git(dir, &["commit", "-q", "-m", "husky"]);

    let before = snapshot(&aws, &[".husky", ".git/hooks"]);
    let plan = init_hooks(&aws, &["--dry-run"]);
    assert_eq!(plan["manager"], "husky");
    assert_eq!(plan["edits"].as_array().unwrap().len(), 4);
    assert_eq!(snapshot(&aws, &[".husky", ".git/hooks"]), before);

    let git_hooks = snapshot(&aws, &[".git/hooks"]);
    let hooks = init_hooks(&aws, &[]);
    assert!(
        hooks["hooks"].as_array().unwrap().iter().all(|h| h["configured"] == true && h["wired"] == true),
        "{hooks}"
    );
    assert!(hooks["activate"].is_null());
    assert_eq!(snapshot(&aws, &[".git/hooks"]), git_hooks, "git's own hooks directory is left alone");
    let edits = hooks["edits"].as_array().unwrap();
    let created: Vec<bool> = edits.iter().map(|e| e["created"].as_bool().unwrap()).collect();
    assert_eq!(created, [true, true, false, true], "post-checkout was the team's");
    let checkout = std::fs::read_to_string(dir.join(".husky/post-checkout")).unwrap();
    assert!(checkout.starts_with("# tpa: "), "tpa's line comes first: {checkout}");
    assert!(checkout.ends_with(team_checkout), "{checkout}");
    for name in ["post-merge", "post-commit", "post-checkout", "post-rewrite"] {
        assert_no_machine_paths(&std::fs::read_to_string(dir.join(".husky").join(name)).unwrap(), &aws);
    }
    assert_eq!(doctor_hooks(&aws)["status"], "ok", "{}", doctor_hooks(&aws));
    aws.env.git(dir, &["add", ".husky"]);
    aws.env.git(dir, &["commit", "-q", "-m", "tpa through husky"]);

    let settled = snapshot(&aws, &[".husky", ".git/hooks"]);
    let again = init_hooks(&aws, &[]);
    assert!(again["edits"].as_array().unwrap().is_empty(), "{again}");
    assert_eq!(snapshot(&aws, &[".husky", ".git/hooks"]), settled);

    merges_revoke_through_the_manager(&aws);

    // The team's scripts ran, with git's arguments, and their exit status is the hook's.
    let log = team_log(&aws);
    assert_checkouts_logged(&log);
    assert!(log.lines().any(|l| l == "pre-commit"), "{log}");
    std::fs::write(dir.join(".git/team-status"), "3\n").unwrap();
    let hook = aws
        .env
        .command(dir.join(".husky/_/post-checkout").to_str().unwrap())
        .current_dir(dir)
        .args(["a", "b", "1"])
        .output()
        .unwrap();
    assert_eq!(hook.status.code(), Some(3), "the hook exits with the script's status");
    // git makes any failing post-checkout its own exit status 1.
    assert_eq!(aws.env.git_output(dir, &["switch", "-q", "hotfix/one"]).status.code(), Some(1));
    std::fs::write(dir.join(".git/team-status"), "0\n").unwrap();
    assert!(aws.env.git_output(dir, &["switch", "-q", "main"]).status.success());
}

#[test]
fn without_tpa_on_path_the_managers_lines_do_nothing_and_fail_nothing() {
    // A teammate who has not installed tpa: the committed husky lines are silent no-ops.
    let mut env = TestEnv::headless();
    env.set_env("PATH", "/usr/bin:/bin");
    let dir = env.repo("work");
    std::fs::create_dir_all(dir.join(".husky/_")).unwrap();
    env.git(&dir, &["config", "core.hooksPath", ".husky/_"]);
    // husky's stubs, reduced to what they do: run .husky/<hook> with `sh -e`.
    std::fs::write(dir.join(".husky/_/h"), "").unwrap();
    for name in ["post-merge", "post-commit", "post-checkout", "post-rewrite"] {
        write_exec(
            &dir.join(".husky/_").join(name),
            &format!("#!/bin/sh\nexec sh -e .husky/{name} \"$@\"\n"),
        );
    }
    let hooks = env.tpa(&dir).args(["init", "--json"]).run().success().json()["hooks"].clone();
    assert_eq!(hooks["manager"], "husky");
    let out = env.git_output(&dir, &["switch", "-q", "-c", "elsewhere"]);
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    // doctor names what is missing: tpa-hook is not on this PATH.
    let doctor = env.tpa(&dir).args(["doctor", "--json"]).run().json();
    let check = doctor["checks"].as_array().unwrap().iter().find(|c| c["id"] == "hooks").unwrap().clone();
    assert_eq!(check["status"], "fail", "{check}");
    assert!(check["detail"].as_str().unwrap().contains("tpa-hook"), "{check}");
}

#[test]
fn dry_run_in_a_plain_repository_writes_nothing_and_an_in_tree_hooks_path_gets_no_machine_path() {
    let env = TestEnv::headless();
    let dir = env.repo("work");
    let hooks = dir.join(".git/hooks");
    let installed =
        |name: &str| std::fs::read_to_string(hooks.join(name)).is_ok_and(|t| t.contains("tpa-managed-hook"));
    let plan = env.tpa(&dir).args(["init", "--dry-run", "--json"]).run().success().json();
    assert_eq!(plan["outcome"], "installed");
    let changes: Vec<&str> =
        plan["hooks"].as_array().unwrap().iter().map(|h| h["change"].as_str().unwrap()).collect();
    assert_eq!(changes, ["installed"; 4]);
    assert!(!installed("post-merge") && !dir.join(".tpa").exists(), "a dry run writes nothing");
    env.tpa(&dir).arg("init").run().success();
    assert!(["post-merge", "post-commit", "post-checkout", "post-rewrite"].iter().all(|n| installed(n)));

    // A hooks directory of the team's own, in the tree, and no manager tpa knows: it says what to add.
    env.git(&dir, &["config", "core.hooksPath", ".githooks"]);
    let out = env.tpa(&dir).arg("init").run().success();
    assert!(out.stdout.contains("tpa-hook hook post-rewrite \"$@\""), "{}", out.stdout);
    let lines: String =
        out.stdout.lines().skip_while(|l| !l.contains("core.hooksPath")).collect::<Vec<_>>().join("\n");
    assert!(!lines.contains(Path::new(TPA).parent().unwrap().to_str().unwrap()), "{lines}");
    assert!(!dir.join(".githooks").exists());
}

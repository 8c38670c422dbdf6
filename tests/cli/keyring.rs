//! Where tpa keeps secrets: the Secret Service on a desktop, the kernel keyring (keyutils) on a
//! headless machine, chosen automatically or by TPA_KEYRING; and git configuration read as git
//! reads it.

use std::time::{Duration, Instant};

use crate::common::aws::AwsRepo;
use crate::common::*;

/// `keyctl search @s user tpa:grant:ID`: is the grant's entry in the kernel keyring tpa uses?
fn in_kernel_keyring(env: &TestEnv, grant_id: &str) -> bool {
    env.command("keyctl")
        .args(["search", "@s", "user", &format!("tpa:grant:{grant_id}")])
        .output()
        .unwrap_or_else(|e| panic!("cannot run keyctl ({e}): install keyutils (scripts/test does)"))
        .status
        .success()
}

const WHOAMI: &str = "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])";

#[test]
fn headless_grants_live_in_the_kernel_keyring_from_request_to_revoke() {
    let aws = AwsRepo::headless();
    // No persistent keyring here: `tpa init` (run by AwsRepo) made a key file for the signing key.
    let init = aws.tpa().args(["init", "--json"]).run().success().json();
    let key_file = aws.env.home.join(".config/tpa/signing_key");
    assert_eq!(init["signer_key_file"], key_file.to_str().unwrap());
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key_file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{key_file:?}");

    let doctor = aws.tpa().args(["doctor", "--json"]).run().json();
    let keyring = doctor["checks"].as_array().unwrap().iter().find(|c| c["id"] == "keyring").unwrap().clone();
    assert_eq!(keyring["status"], "ok", "{keyring}");
    assert!(keyring["detail"].as_str().unwrap().starts_with("keyutils"), "{keyring}");

    let granted = aws.request().arg("--json").run().success().json();
    let grant_id = granted["grant_id"].as_str().unwrap().to_owned();
    assert!(in_kernel_keyring(&aws.env, &grant_id));
    let status = aws.tpa().arg("status").run().success().stdout;
    assert!(status.contains("keyring: keyutils"), "{status}");

    let whoami =
        aws.tpa().args(["exec", "--"]).arg(crate::common::aws::python()).args(["-c", WHOAMI]).run().success();
    assert!(whoami.stdout.trim().ends_with(&format!("/tpa-{grant_id}")), "{}", whoami.stdout);
    let env = aws.tpa().arg("env").run().success().stdout;
    let secret = env
        .lines()
        .find_map(|l| l.strip_prefix("export AWS_SESSION_TOKEN="))
        .unwrap()
        .trim_matches('\'')
        .to_owned();
    assert!(secret.len() >= 16);

    aws.tpa().args(["revoke", &grant_id]).run().success();
    assert!(!in_kernel_keyring(&aws.env, &grant_id), "revoking drops the kernel keyring entry");
    aws.tpa().arg("env").run().code(2);

    for file in crate::common::walk(&aws.env.root.path().to_path_buf()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&secret),
            "the session token is in {}",
            file.display()
        );
    }
}

/// The Secret Service items that hold `username` for service `tpa` (in any collection): their
/// secrets, as `secret-tool search --all` prints them.
fn secret_service_items(env: &TestEnv, username: &str) -> Vec<String> {
    let out = env
        .command("secret-tool")
        .args(["search", "--all", "service", "tpa", "username", username])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run secret-tool ({e}): install libsecret-tools (scripts/test does)")
        });
    // secret-tool prints each item's fields on stdout, its secret among them.
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("secret = ").map(str::to_owned))
        .collect()
}

#[test]
fn a_grant_is_one_secret_service_item_from_placeholder_to_revocation() {
    let aws = AwsRepo::new();
    let granted = aws.request().arg("--json").run().success().json();
    let grant_id = granted["grant_id"].as_str().unwrap().to_owned();
    let account = format!("grant:{grant_id}");
    // The placeholder written before the intent was replaced in place, not joined by a second item.
    let items = secret_service_items(&aws.env, &account);
    assert_eq!(items.len(), 1, "items for {account}");
    let stored: serde_json::Value = serde_json::from_str(&items[0]).expect("the credentials as JSON");
    let field = |name: &str| stored[name].as_str().unwrap_or_default().to_owned();
    assert!(
        !field("AccessKeyId").is_empty() && !field("SessionToken").is_empty(),
        "the grant's credentials, not the placeholder"
    );

    // An entry in the shape keyring 4's store wrote (its label, its content type) and that this
    // process did not write is found as before: earlier tpa versions' signing keys are such entries.
    let secret = items[0].clone();
    let store = |args: &[&str]| {
        let mut child =
            aws.env.command("secret-tool").args(args).stdin(std::process::Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), secret.as_bytes()).unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success(), "secret-tool {args:?}");
    };
    aws.env.command("secret-tool").args(["clear", "service", "tpa", "username", &account]).status().unwrap();
    assert!(secret_service_items(&aws.env, &account).is_empty());
    let label = format!("keyring:{account}@tpa");
    store(&["store", "--label", &label, "service", "tpa", "username", &account]);
    let whoami =
        aws.tpa().args(["exec", "--"]).arg(crate::common::aws::python()).args(["-c", WHOAMI]).run().success();
    assert!(whoami.stdout.trim().ends_with(&format!("/tpa-{grant_id}")), "{}", whoami.stdout);

    aws.tpa().args(["revoke", &grant_id]).run().success();
    assert!(secret_service_items(&aws.env, &account).is_empty(), "revoking deletes the item");
}

#[test]
fn a_kernel_keyring_entry_vanishes_when_its_grant_expires() {
    let aws = AwsRepo::headless();
    // The test clock stands 890 s into a 900 s grant: the kernel keeps the entry for what is left.
    let late = chrono::Utc::now() + chrono::Duration::seconds(890);
    let granted = aws
        .request()
        .args(["--ttl", "15m", "--json"])
        .env("TPA_TEST_NOW", late.to_rfc3339())
        .run()
        .success()
        .json();
    let grant_id = granted["grant_id"].as_str().unwrap().to_owned();
    assert!(in_kernel_keyring(&aws.env, &grant_id));
    let deadline = Instant::now() + Duration::from_secs(60);
    while in_kernel_keyring(&aws.env, &grant_id) {
        assert!(Instant::now() < deadline, "the entry outlived its grant by far");
        std::thread::sleep(Duration::from_millis(200)); // polling the kernel, bounded by the deadline
    }
}

#[test]
fn an_unknown_keyring_name_is_refused_with_the_known_ones() {
    let aws = AwsRepo::headless();
    let out = aws.request().env("TPA_KEYRING", "plaintext").run().code(2);
    assert!(out.stderr.contains("TPA_KEYRING=plaintext is not a keyring tpa knows"), "{}", out.stderr);
    assert!(out.stderr.contains("secret-service, keyutils"), "{}", out.stderr);
    assert_eq!(aws.notes_tip(), None, "nothing recorded, nothing minted");
    assert_eq!(aws.proxy.connections(), 0);
}

#[test]
fn a_secret_service_forced_where_none_answers_is_an_error_not_a_fall_back() {
    let aws = AwsRepo::headless();
    let out = aws.request().env("TPA_KEYRING", "secret-service").run().code(2);
    assert!(out.stderr.contains("no Secret Service answers"), "{}", out.stderr);
    assert_eq!(aws.notes_tip(), None);
    assert_eq!(aws.proxy.connections(), 0);
}

#[test]
fn a_locked_secret_service_refuses_before_anything_is_minted() {
    let locked = LockedKeyring::start();
    let mut env = TestEnv::new();
    env.set_env("DBUS_SESSION_BUS_ADDRESS", locked.address.clone());
    // The signing key is a file (CI's way): only the grant's credentials meet the locked keyring.
    let key = env.ssh_key("signer");
    env.set_env("TPA_SIGNING_KEY", key.to_str().unwrap());
    let aws = AwsRepo::in_env(env, "", "");
    let out = aws.request().run().code(2);
    assert!(out.stderr.contains("locked"), "{}", out.stderr);
    assert!(out.stderr.contains("nothing was asked of the provider"), "{}", out.stderr);
    assert_eq!(aws.proxy.connections(), 0, "no STS call");
    assert!(aws.kinds().is_empty(), "no record: {:?}", aws.kinds());
}

/// A D-Bus session whose gnome-keyring holds a login keyring that is locked (started without
/// `--unlock` after the keyring was made): what a desktop looks like before the user unlocks it.
struct LockedKeyring {
    address: String,
    _session: std::process::Child,
    _keep_alive: std::process::ChildStdin,
    _dir: tempfile::TempDir,
}

impl LockedKeyring {
    fn start() -> Self {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::set_permissions(&runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        // First run: create and unlock the login keyring, so it exists on disk; then restart the
        // daemon without a password, which leaves it locked. A fixed script, no interpolation.
        let script = r#"printf %s pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null 2>&1 || exit 1
secret-tool store --label=seed service seed username seed <<EOF >/dev/null 2>&1
seed
EOF
gnome-keyring-daemon --replace --components=secrets </dev/null >/dev/null 2>&1 || exit 1
echo "$DBUS_SESSION_BUS_ADDRESS"
exec cat >/dev/null"#;
        let mut child = std::process::Command::new("dbus-run-session")
            .args(["--", "sh", "-c", script])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_RUNTIME_DIR", &runtime)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dbus-run-session (install dbus and gnome-keyring)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(!line.trim().is_empty(), "the locked test keyring did not start");
        let keep_alive = child.stdin.take().unwrap();
        LockedKeyring { address: line.trim().to_owned(), _session: child, _keep_alive: keep_alive, _dir: dir }
    }
}

#[test]
fn user_email_from_git_config_global_is_what_git_answers() {
    let env = TestEnv::new();
    let dir = env.path("repo");
    std::fs::create_dir_all(&dir).unwrap();
    env.git(&dir, &["init", "-q", "-b", "main"]);
    let global = env.path("dotfiles-gitconfig");
    std::fs::write(&global, "[user]\n\temail = carol@example.com\n\tname = Carol\n").unwrap();
    let git = |args: &[&str]| {
        let out = env
            .command("git")
            .current_dir(&dir)
            .env("GIT_CONFIG_GLOBAL", &global)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(git(&["config", "user.email"]), "carol@example.com");
    git(&["commit", "-q", "--allow-empty", "-m", "initial"]);
    let init =
        env.tpa(&dir).arg("init").arg("--json").env("GIT_CONFIG_GLOBAL", &global).run().success().json();
    assert_eq!(init["principal"], "carol@example.com");
    let signers = std::fs::read_to_string(dir.join(".tpa/allowed_signers")).unwrap();
    assert!(signers.starts_with("carol@example.com "), "{signers}");
}

#[test]
fn git_dash_c_reaches_tpa_through_the_hooks_environment() {
    let aws = AwsRepo::new();
    let granted = aws.request().arg("--json").run().success().json();
    let grant_id = granted["grant_id"].as_str().unwrap().to_owned();
    aws.env.git(&aws.dir, &["switch", "-q", "main"]);
    // git passes `-c` values to its hooks in GIT_CONFIG_PARAMETERS; the hook's revoke record must
    // name who git says is merging.
    aws.env.git(
        &aws.dir,
        &["-c", "user.email=dave@example.com", "merge", "-q", "--no-ff", "-m", "merge", "hotfix/INC-4211"],
    );
    let show = aws.tpa().args(["show", &grant_id, "--json"]).run().success().json();
    let revoke = show["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["record"]["kind"] == "revoke")
        .unwrap_or_else(|| panic!("no revoke record: {show}"))
        .clone();
    assert_eq!(revoke["record"]["principal"]["email"], "dave@example.com", "{revoke}");
    assert_eq!(revoke["record"]["trigger"], "merged");
}

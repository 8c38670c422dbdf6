use crate::common::*;

#[test]
fn init_sets_up_keyring_signer_signers_policy_and_refspecs_idempotently() {
    let env = TestEnv::new();
    let (dir, _origin) = env.repo_with_origin("work");

    let first = env.tpa(&dir).args(["init", "--json"]).run().success().json();
    assert_eq!(first["signer"], "keyring");
    assert_eq!(first["signer_change"], "created");
    assert_eq!(first["allowed_signers"], "created");
    assert_eq!(first["policy"], "created");
    assert_eq!(first["trust_ref"], "refs/remotes/origin/main");
    assert_eq!(first["key_trusted"], false);
    let fingerprint = first["signer_fingerprint"].as_str().unwrap().to_owned();
    assert!(fingerprint.starts_with("SHA256:"));

    let signers = std::fs::read_to_string(dir.join(".tpa/allowed_signers")).unwrap();
    assert_eq!(signers.lines().count(), 1);
    assert!(signers.starts_with(&format!("{EMAIL} namespaces=\"tpa\" ssh-ed25519 ")), "{signers}");
    assert!(dir.join(".tpa/policy.toml").exists());
    assert_eq!(
        env.git(&dir, &["config", "--get-all", "remote.origin.fetch"]),
        "+refs/heads/*:refs/remotes/origin/*\n+refs/notes/tpa*:refs/notes/remotes/origin/tpa*"
    );
    assert!(env.git_output(&dir, &["config", "--get-all", "remote.origin.push"]).stdout.is_empty());
    // A remote with no ledger yet must not break a plain `git fetch`.
    env.git(&dir, &["fetch", "-q", "origin"]);
    assert_eq!(env.git(&dir, &["config", "tpa.signingKey"]), format!("keyring:{fingerprint}"));

    let second = env.tpa(&dir).args(["init", "--json"]).run().success().json();
    assert_eq!(second["signer_change"], "unchanged");
    assert_eq!(second["signer_fingerprint"], fingerprint.as_str());
    assert_eq!(second["allowed_signers"], "unchanged");
    assert_eq!(second["policy"], "unchanged");
    assert_eq!(second["refspecs_added"].as_array().unwrap().len(), 0);
    assert_eq!(std::fs::read_to_string(dir.join(".tpa/allowed_signers")).unwrap(), signers);
    assert_eq!(env.git(&dir, &["config", "--get-all", "remote.origin.fetch"]).lines().count(), 2);

    // The private key lives in the keyring, nowhere in the repository or its config.
    let secret = keyring_secret(&env, &fingerprint);
    assert!(secret.contains("OPENSSH PRIVATE KEY"));
    assert_no_secret_in_repo(&env, &dir, &secret);
}

#[test]
fn init_human_output_tells_what_to_do_next() {
    let env = TestEnv::new();
    let dir = env.repo("work");
    let out = env.tpa(&dir).arg("init").run().success();
    assert!(out.stdout.contains("commit .tpa/ and get it merged into main through review"), "{}", out.stdout);
    assert!(out.stdout.contains("no remote"), "{}", out.stdout);
}

#[test]
fn init_with_a_key_file_records_it_and_never_touches_the_keyring() {
    let env = TestEnv::new();
    let dir = env.repo("work");
    let key = env.ssh_key("ci_key");
    let out = env.tpa(&dir).args(["init", "--json", "--signing-key"]).arg(&key).run().success().json();
    assert_eq!(out["signer"], "file");
    assert_eq!(env.git(&dir, &["config", "tpa.signingKey"]), format!("file:{}", key.display()));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let key_body = public.split_whitespace().nth(1).unwrap();
    assert!(std::fs::read_to_string(dir.join(".tpa/allowed_signers")).unwrap().contains(key_body));
}

#[test]
fn init_uses_the_git_ssh_signing_key_through_ssh_keygen() {
    let env = TestEnv::new();
    let dir = env.repo("work");
    let key = env.ssh_key("id_sign");
    env.git(&dir, &["config", "gpg.format", "ssh"]);
    env.git(&dir, &["config", "user.signingkey", key.to_str().unwrap()]);
    let out = env.tpa(&dir).args(["init", "--json"]).run().success().json();
    assert_eq!(out["signer"], "ssh-keygen");
    env.git(&dir, &["add", ".tpa"]);
    env.git(&dir, &["commit", "-q", "-m", "trust"]);
    env.git(&dir, &["switch", "-q", "-c", "hotfix/ssh"]);
    env.tpa(&dir).args(["debug", "intent", "--reason", "INC-7: signed by ssh-keygen"]).run().success();
    let verify = env.tpa(&dir).args(["verify", "--json"]).run().success().json();
    assert_eq!(verify["records"], 1);
    assert_eq!(finding_kinds(&verify), Vec::<String>::new());
}

#[test]
fn init_with_a_secret_service_that_does_not_answer_fails_and_writes_no_key_anywhere() {
    // Where the Secret Service is asked for (TPA_KEYRING) and none answers, nothing falls back.
    let env = TestEnv::new();
    let dir = env.repo("work");
    let out = env
        .tpa(&dir)
        .arg("init")
        .env("DBUS_SESSION_BUS_ADDRESS", format!("unix:path={}", env.path("no-bus").display()))
        .env("TPA_KEYRING", "secret-service")
        .run()
        .code(2);
    assert!(out.stderr.contains("no Secret Service answers"), "{}", out.stderr);
    assert!(out.stderr.contains("unset TPA_KEYRING"), "{}", out.stderr);
    assert!(!dir.join(".tpa/allowed_signers").exists());
    assert!(env.git_output(&dir, &["config", "tpa.signingKey"]).stdout.is_empty());
    let stray = walk(&env.root.path().to_path_buf())
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| String::from_utf8_lossy(&b).contains("PRIVATE KEY")))
        .collect::<Vec<_>>();
    assert!(stray.is_empty(), "private key material on disk: {stray:?}");
}

/// The PEM text of a tpa-made signing key, read from the Secret Service with `secret-tool`.
pub fn keyring_secret(env: &TestEnv, fingerprint: &str) -> String {
    let out = env
        .command("secret-tool")
        .args(["lookup", "service", "tpa", "username", &format!("signing-key:{fingerprint}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "secret-tool: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// No trace of the private key (PEM, or the base64 body of any of its lines) in any git object or
/// any file under .git (config, state dir, notes).
pub fn assert_no_secret_in_repo(env: &TestEnv, dir: &std::path::Path, pem: &str) {
    let needles: Vec<&str> =
        pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 20).collect::<Vec<_>>();
    assert!(!needles.is_empty());
    let objects = env
        .command("git")
        .current_dir(dir)
        .args(["cat-file", "--batch-all-objects", "--batch"])
        .output()
        .unwrap();
    assert!(objects.status.success());
    let haystack = String::from_utf8_lossy(&objects.stdout);
    assert!(!haystack.is_empty());
    for needle in &needles {
        assert!(!haystack.contains(needle), "private key material in a git object");
    }
    for file in walk(&dir.to_path_buf()) {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        for needle in &needles {
            assert!(!text.contains(needle), "private key material in {}", file.display());
        }
    }
}

//! `tpa doctor`: is this machine and this clone ready for tpa? Each check says ok, warn or fail and,
//! when not ok, what to do. Only reads, except a probe entry written to and removed from the keyring.
//! Never reports a secret: of AWS credentials only whether they resolved, and from where.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use git2::Repository;
use serde::Serialize;

use crate::ledger::signing::{Signer, SignerSource, SigningError};
use crate::trust::TrustRef;

/// The oldest git tpa works with (`git for-each-ref --format` features and notes behaviour).
pub const MIN_GIT: (u32, u32) = (2, 29);
/// Clock skew above which doctor warns, and above which it fails (SigV4 rejects > 5 minutes).
pub const SKEW_WARN_SECS: i64 = 60;
pub const SKEW_FAIL_SECS: i64 = 300;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Stable identifier, for scripts: git, ssh-keygen, keyring, signer, hooks, refspec, policy,
    /// aws-credentials, clock-skew.
    pub id: &'static str,
    pub status: Status,
    /// What was found, one line.
    pub detail: String,
    /// What to do about it, one line; None when ok.
    pub fix: Option<String>,
    /// The measured skew (server minus local clock), for `clock-skew` when it was measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skew_seconds: Option<i64>,
}

impl Check {
    fn ok(id: &'static str, detail: impl Into<String>) -> Self {
        Check { id, status: Status::Ok, detail: detail.into(), fix: None, skew_seconds: None }
    }

    fn warn(id: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check { id, status: Status::Warn, detail: detail.into(), fix: Some(fix.into()), skew_seconds: None }
    }

    fn fail(id: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check { id, status: Status::Fail, detail: detail.into(), fix: Some(fix.into()), skew_seconds: None }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// No check failed (warnings allowed).
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }
}

/// What the checks need from the caller: the repository (None outside one), how to open its
/// signer, the path of the binary the hooks should run, and how long AWS may take.
pub struct Inputs<'a> {
    pub repo: Option<&'a Repository>,
    pub open_signer: &'a dyn Fn(&Repository) -> Result<Signer, SigningError>,
    pub hook_binary: Option<&'a Path>,
    pub aws_timeout: Duration,
}

pub fn run(inputs: &Inputs<'_>) -> Report {
    let mut checks = vec![git_version(), ssh_keygen(), keyring()];
    match inputs.repo {
        Some(repo) => {
            checks.push(signer(repo, inputs.open_signer));
            checks.push(hooks(repo, inputs.hook_binary));
            checks.push(refspecs(repo));
            checks.push(policy(repo));
            if let Some(check) = broker(repo, inputs.open_signer, inputs.aws_timeout) {
                checks.push(check);
            }
        }
        None => {
            for id in ["signer", "hooks", "refspec", "policy"] {
                checks.push(Check::fail(
                    id,
                    "not inside a git repository",
                    "run tpa doctor in your project's clone (or pass -C PATH)",
                ));
            }
        }
    }
    let (credentials, skew) = aws(inputs.aws_timeout);
    checks.push(credentials);
    checks.push(skew);
    let mut report = Report { ok: true, checks };
    report.ok = !report.failed();
    report
}

/// `git version 2.39.5` (or `2.45.1.windows.1`, `2.39.3 (Apple Git-145)`) → (2, 39).
pub fn parse_git_version(text: &str) -> Option<(u32, u32)> {
    let version = text.trim().strip_prefix("git version ")?.split_whitespace().next()?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn git_version() -> Check {
    const ID: &str = "git";
    let out = match Command::new("git").arg("--version").stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => out,
        Ok(_) | Err(_) => {
            return Check::fail(
                ID,
                "git is not on PATH (or `git --version` failed)",
                "install git 2.29 or newer",
            );
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    match parse_git_version(&text) {
        Some(v) if v >= MIN_GIT => Check::ok(ID, text.trim().to_owned()),
        Some(_) => Check::fail(
            ID,
            format!("{} is too old", text.trim()),
            format!("install git {}.{} or newer", MIN_GIT.0, MIN_GIT.1),
        ),
        None => Check::warn(
            ID,
            format!("could not read the version from `{}`", text.trim()),
            format!("make sure git is {}.{} or newer", MIN_GIT.0, MIN_GIT.1),
        ),
    }
}

fn ssh_keygen() -> Check {
    const ID: &str = "ssh-keygen";
    // Any invocation proves it is there; `-?` only prints usage.
    match Command::new("ssh-keygen")
        .arg("-?")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Check::ok(ID, "ssh-keygen is on PATH"),
        Err(e) => Check::fail(
            ID,
            format!("ssh-keygen cannot be run ({e})"),
            "install OpenSSH's client tools (ssh-keygen verifies signatures)",
        ),
    }
}

fn keyring() -> Check {
    const ID: &str = "keyring";
    let mut nonce = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let account = format!("doctor-probe:{}", hex::encode(nonce));
    let value = "tpa doctor probe";
    let backend = match crate::secrets::backend() {
        Ok(backend) => backend,
        Err(e) => {
            return Check::fail(
                ID,
                e.to_string(),
                "on a desktop start and unlock a Secret Service; on a server use the kernel keyring (TPA_KEYRING=keyutils)",
            );
        }
    };
    let until = chrono::Utc::now() + chrono::Duration::seconds(60);
    let result = crate::secrets::store_until(&account, value, until).and_then(|()| {
        let read = crate::secrets::load(&account);
        let deleted = crate::secrets::delete(&account);
        let read = read?;
        deleted?;
        Ok(read.as_str() == value)
    });
    match result {
        Ok(true) => Check::ok(
            ID,
            match backend {
                crate::secrets::Backend::Keyutils => format!(
                    "{backend} (the kernel keyring: grant credentials vanish at expiry or reboot): a probe entry was written, read back and deleted"
                ),
                _ => format!("{backend}: a probe entry was written, read back and deleted"),
            },
        ),
        Ok(false) => Check::fail(
            ID,
            "the keyring returned something else than was stored",
            "check your keyring daemon",
        ),
        Err(e) => {
            let _ = crate::secrets::delete(&account);
            let detail = format!("{backend}: {e}");
            Check::fail(
                ID,
                detail,
                "start and unlock a Secret Service / Keychain, or use a key file: `tpa init --signing-key PATH`",
            )
        }
    }
}

fn signer(repo: &Repository, open: &dyn Fn(&Repository) -> Result<Signer, SigningError>) -> Check {
    const ID: &str = "signer";
    match open(repo) {
        Ok(signer) => {
            let fingerprint = signer.public_key.fingerprint(ssh_key::HashAlg::Sha256);
            let kind = match &signer.source {
                SignerSource::KeyFile(path) => {
                    format!("key file {}", crate::escape::text(&path.display().to_string()))
                }
                SignerSource::Keyring(_) => "key in the OS keyring".to_owned(),
                SignerSource::SshKeygen(_) => "git's user.signingkey through ssh-keygen".to_owned(),
            };
            Check::ok(ID, format!("{kind}, {fingerprint}"))
        }
        Err(SigningError::NotConfigured) => {
            Check::fail(ID, "no signing key is set up", "run `tpa init` (or set TPA_SIGNING_KEY=PATH)")
        }
        Err(e) => Check::fail(ID, format!("the signing key cannot be loaded: {e}"), "run `tpa init` again"),
    }
}

fn hooks(repo: &Repository, binary: Option<&Path>) -> Check {
    const ID: &str = "hooks";
    let dir = match crate::hooks::hooks_dir(repo) {
        Ok(dir) => dir,
        Err(e) => {
            return Check::fail(
                ID,
                format!("cannot find the hooks directory: {e}"),
                "check `git config core.hooksPath`",
            );
        }
    };
    if let Some(found) = repo.workdir().and_then(crate::hooks::managers::detect) {
        let workdir = repo.workdir().unwrap_or(Path::new("."));
        return managed_hooks(&crate::hooks::managers::inspect(workdir, &dir, &found), on_path("tpa-hook"));
    }
    let shown = crate::escape::text(&dir.dir.display().to_string());
    let mut missing = Vec::new();
    let mut outdated = Vec::new();
    for name in crate::hooks::HOOKS {
        match std::fs::read(dir.dir.join(name)) {
            Ok(bytes) if crate::hooks::is_tpa_hook(&bytes) => {
                if binary.is_some_and(|tpa| bytes != crate::hooks::script(tpa, name)) {
                    outdated.push(name);
                }
            }
            // In a committed hooks directory tpa's line sits inside the project's own hooks.
            Ok(bytes)
                if dir.in_work_tree
                    && String::from_utf8_lossy(&bytes).contains(&format!(" hook {name} ")) => {}
            Ok(_) | Err(_) => missing.push(name),
        }
    }
    if !missing.is_empty() {
        let fix = if dir.in_work_tree {
            "core.hooksPath is in the working tree: add the lines `tpa init` prints to those hooks"
        } else {
            "run `tpa init` to install them"
        };
        Check::fail(ID, format!("not installed in {shown}: {}", missing.join(", ")), fix)
    } else if !outdated.is_empty() {
        Check::warn(
            ID,
            format!("installed by another tpa or an older version: {}", outdated.join(", ")),
            "run `tpa init` to update them",
        )
    } else {
        Check::ok(ID, format!("{} installed in {shown}", crate::hooks::HOOKS.join(", ")))
    }
}

/// The hooks check where a hook manager owns the hooks: tpa must be in the manager's configuration
/// for every hook, git must run the manager for it, and the `tpa-hook` those lines call must be on
/// PATH.
fn managed_hooks(report: &crate::hooks::ManagerReport, tpa_hook: Option<std::path::PathBuf>) -> Check {
    const ID: &str = "hooks";
    let manager = report.manager.name();
    let config = crate::escape::text(&report.config.display().to_string());
    let names = |pick: &dyn Fn(&crate::hooks::managers::ManagedHook) -> bool| -> Vec<&str> {
        report.hooks.iter().filter(|h| pick(h)).map(|h| h.name).collect()
    };
    let unconfigured = names(&|h| !h.configured);
    if !unconfigured.is_empty() {
        return Check::fail(
            ID,
            format!("{manager} ({config}) does not run tpa for: {}", unconfigured.join(", ")),
            format!("run `tpa init`: it adds tpa to {manager}'s files, or says exactly what to add"),
        );
    }
    let unwired = names(&|h| !h.wired);
    if !unwired.is_empty() {
        let command = report.activate.clone().unwrap_or_else(|| format!("{manager} install"));
        return Check::fail(
            ID,
            format!("git does not run {manager} in this clone for: {}", unwired.join(", ")),
            format!("run `{command}`"),
        );
    }
    let Some(tpa_hook) = tpa_hook else {
        return Check::fail(
            ID,
            format!("{manager} runs `tpa-hook` from PATH, and it is not on PATH"),
            "install tpa with ./install.sh (tpa and tpa-hook into ~/.local/bin) and put that directory on PATH",
        );
    };
    Check::ok(
        ID,
        format!(
            "{} through {manager} ({config}); tpa-hook is {}",
            crate::hooks::HOOKS.join(", "),
            crate::escape::text(&tpa_hook.display().to_string())
        ),
    )
}

/// The file `name` resolves to on PATH, as sh would find it.
fn on_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| {
            m.is_file() && {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o111 != 0
                }
                #[cfg(not(unix))]
                true
            }
        })
    })
}

fn refspecs(repo: &Repository) -> Check {
    const ID: &str = "refspec";
    let config = match crate::gitconfig::GitConfig::of(repo) {
        Ok(config) => config,
        Err(e) => return Check::fail(ID, format!("cannot list remotes: {e}"), "check `git config --list`"),
    };
    let remotes = config.remotes();
    if remotes.is_empty() {
        return Check::ok(ID, "no remotes");
    }
    let mut missing = Vec::new();
    for name in &remotes {
        let spec = format!("+{}*:refs/notes/remotes/{name}/tpa*", crate::ledger::NOTES_REF);
        let present = config.get_all(&format!("remote.{name}.fetch")).any(|s| s == spec);
        if !present {
            missing.push(name.clone());
        }
    }
    if missing.is_empty() {
        Check::ok(ID, format!("the ledger is fetched from {}", remotes.join(", ")))
    } else {
        Check::fail(
            ID,
            format!(
                "no ledger fetch refspec for {}",
                missing.iter().map(|m| crate::escape::text(m.as_ref())).collect::<Vec<_>>().join(", ")
            ),
            format!(
                "run `tpa init` (or `git config --add remote.{0}.fetch '+{1}*:refs/notes/remotes/{0}/tpa*'`)",
                crate::escape::text(&missing[0]),
                crate::ledger::NOTES_REF
            ),
        )
    }
}

fn policy(repo: &Repository) -> Check {
    const ID: &str = "policy";
    let trust = match TrustRef::resolve(repo) {
        Ok(trust) => trust,
        Err(e) => return Check::fail(ID, "no trust ref to read the policy from", e.to_string()),
    };
    let refname = crate::escape::text(&trust.refname);
    match crate::policy::load(repo, &trust) {
        Ok((policy, commit)) => Check::ok(
            ID,
            format!("{refname} at {}: {} role(s)", &commit[..commit.len().min(12)], policy.roles.len()),
        ),
        Err(e) => Check::fail(
            ID,
            format!("the policy at {refname} is not usable: {e}"),
            "commit a valid .tpa/policy.toml on the protected branch and push it (`tpa init` writes one)",
        ),
    }
}

/// On the broker's host (this identity is one of the policy's `brokers`): its key is trusted for
/// the broker's principal at the trust ref, and the remote it serves is reachable. None elsewhere.
/// (No AssumeRole is tried: it would mint a real session; `tpa broker --once` reports a role it
/// cannot assume as that request's failure.)
fn broker(
    repo: &Repository,
    open: &dyn Fn(&Repository) -> Result<Signer, SigningError>,
    timeout: Duration,
) -> Option<Check> {
    const ID: &str = "broker";
    let me = crate::ops::context::principal(repo).ok()?;
    let trust = TrustRef::resolve(repo).ok()?;
    let (policy, _) = crate::policy::load(repo, &trust).ok()?;
    if !policy.brokers.contains(&me.email) {
        return None;
    }
    let roles: Vec<&str> = policy
        .roles
        .values()
        .filter(|r| r.approval.mint == crate::policy::Mint::Broker)
        .map(|r| r.name.as_str())
        .collect();
    let Ok(signer) = open(repo) else {
        return Some(Check::fail(
            ID,
            format!("{} is a broker but has no signing key", me.email),
            "set TPA_SIGNING_KEY=PATH",
        ));
    };
    let signers = match crate::ops::ledger::load_signers(repo, &trust) {
        Ok(signers) => signers,
        Err(e) => {
            return Some(Check::fail(
                ID,
                e.to_string(),
                "commit .tpa/allowed_signers on the protected branch",
            ));
        }
    };
    if signers.check(signer.public_key.key_data(), &me.email, crate::clock::now())
        != crate::ledger::signers::SignerCheck::Allowed
    {
        return Some(Check::fail(
            ID,
            format!("this signing key is not trusted for {} at {}", me.email, trust.refname),
            "add the broker's line to .tpa/allowed_signers and get it merged through review",
        ));
    }
    let remote = "origin";
    if let Err(e) = crate::ops::sync::list_remote_refs(repo, remote, "refs/tpa/", timeout) {
        return Some(Check::fail(
            ID,
            format!("the remote {remote} cannot be read: {}", crate::escape::text(&e)),
            "give this host read and push access to the repository",
        ));
    }
    Some(Check::ok(
        ID,
        format!(
            "{} serves {} broker role(s) ({}) from {remote}; its key is trusted at {}",
            me.email,
            roles.len(),
            roles.join(", "),
            trust.refname
        ),
    ))
}

/// Records when the request left and what the response's `Date` header said.
#[derive(Debug, Default)]
struct DateProbe {
    sent: Mutex<Option<(Instant, chrono::DateTime<chrono::Utc>)>>,
    received: Mutex<Option<(Instant, String)>>,
}

#[derive(Debug)]
struct DateInterceptor(Arc<DateProbe>);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl aws_sdk_sts::config::Intercept for DateInterceptor {
    fn name(&self) -> &'static str {
        "tpa-doctor-date"
    }

    fn read_before_transmit(
        &self,
        _context: &aws_sdk_sts::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_sts::config::RuntimeComponents,
        _cfg: &mut aws_sdk_sts::config::ConfigBag,
    ) -> Result<(), BoxError> {
        *self.0.sent.lock().expect("not poisoned") = Some((Instant::now(), chrono::Utc::now()));
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        context: &aws_sdk_sts::config::interceptors::BeforeDeserializationInterceptorContextRef<'_>,
        _components: &aws_sdk_sts::config::RuntimeComponents,
        _cfg: &mut aws_sdk_sts::config::ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(date) = context.response().headers().get("date") {
            *self.0.received.lock().expect("not poisoned") = Some((Instant::now(), date.to_owned()));
        }
        Ok(())
    }
}

/// Server time minus local time, in whole seconds, taking the local time halfway through the
/// round trip. `date` is an HTTP date (`Sat, 28 Nov 2026 13:46:22 GMT`).
pub fn skew_seconds(date: &str, sent_at: chrono::DateTime<chrono::Utc>, round_trip: Duration) -> Option<i64> {
    let server = chrono::DateTime::parse_from_rfc2822(date.trim()).ok()?.with_timezone(&chrono::Utc);
    let local = sent_at + chrono::Duration::from_std(round_trip / 2).ok()?;
    // The header has whole seconds: round the difference to the nearest second.
    Some(((server - local).num_milliseconds() as f64 / 1000.0).round() as i64)
}

pub fn classify_skew(skew: i64) -> Status {
    match skew.unsigned_abs() {
        s if s > SKEW_FAIL_SECS as u64 => Status::Fail,
        s if s > SKEW_WARN_SECS as u64 => Status::Warn,
        _ => Status::Ok,
    }
}

fn aws(timeout: Duration) -> (Check, Check) {
    use aws_credential_types::provider::ProvideCredentials;

    const CREDS: &str = "aws-credentials";
    const SKEW: &str = "clock-skew";
    let profile = std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty());
    // STS answers in every region; one is only needed to pick an endpoint.
    let sdk = crate::provider::aws::load(&crate::provider::aws::Reach {
        profile: None, // the chain reads AWS_PROFILE itself
        region: None,
        fallback_region: "us-east-1",
        timeout,
        max_attempts: None,
    });
    let config = sdk.config;
    sdk.runtime.block_on(async {
        let from =
            profile.as_deref().map(|p| format!(" (profile {})", crate::escape::text(p))).unwrap_or_default();
        let Some(provider) = config.credentials_provider() else {
            return (
                Check::fail(CREDS, "no AWS credentials provider is configured", aws_fix()),
                Check::warn(SKEW, "not checked: no AWS credentials to call STS with", aws_fix()),
            );
        };
        let credentials = match tokio::time::timeout(timeout, provider.provide_credentials()).await {
            Ok(Ok(c)) => Check::ok(
                CREDS,
                format!(
                    "resolved{}{from}: {}",
                    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some_and(|v| !v.is_empty()) {
                        " from the environment"
                    } else {
                        " by the default chain"
                    },
                    match c.expiry() {
                        Some(at) => format!(
                            "temporary, valid for {} more minute(s)",
                            at.duration_since(std::time::SystemTime::now()).unwrap_or_default().as_secs()
                                / 60
                        ),
                        None => "long-term key".to_owned(),
                    }
                ),
            ),
            Ok(Err(e)) => {
                let detail = format!("not resolved{from}: {}", crate::escape::text(&error_chain(&e)));
                return (
                    Check::fail(CREDS, detail, aws_fix()),
                    Check::warn(SKEW, "not checked: no AWS credentials to call STS with", aws_fix()),
                );
            }
            Err(_) => {
                return (
                    Check::fail(
                        CREDS,
                        format!("not resolved within {}s{from}", timeout.as_secs()),
                        aws_fix(),
                    ),
                    Check::warn(SKEW, "not checked: no AWS credentials to call STS with", aws_fix()),
                );
            }
        };
        (credentials, clock_skew(&config, timeout).await)
    })
}

/// An error and its sources on one line (the SDK's chain errors span several lines).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.dedup();
    parts.join(": ").lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

fn aws_fix() -> &'static str {
    "configure AWS credentials: `aws sso login`, AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
}

async fn clock_skew(config: &aws_config::SdkConfig, timeout: Duration) -> Check {
    const ID: &str = "clock-skew";
    let probe = Arc::new(DateProbe::default());
    let sts_config =
        aws_sdk_sts::config::Builder::from(config).interceptor(DateInterceptor(probe.clone())).build();
    let client = aws_sdk_sts::Client::from_conf(sts_config);
    // The answer does not matter (even a signature error carries a Date header), only its time.
    let _ = tokio::time::timeout(timeout, client.get_caller_identity().send()).await;
    let endpoint = std::env::var("AWS_ENDPOINT_URL_STS")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "the STS endpoint".to_owned());
    let endpoint = crate::escape::text(&endpoint);
    let sent = *probe.sent.lock().expect("not poisoned");
    let received = probe.received.lock().expect("not poisoned").clone();
    let (Some((sent_instant, sent_at)), Some((received_instant, date))) = (sent, received) else {
        return Check::warn(
            ID,
            format!("not measured: no answer with a Date header from {endpoint}"),
            "check network access to STS (a proxy, AWS_ENDPOINT_URL)",
        );
    };
    let Some(skew) = skew_seconds(&date, sent_at, received_instant.saturating_duration_since(sent_instant))
    else {
        return Check::warn(
            ID,
            format!("not measured: {endpoint} sent an unreadable Date header"),
            "nothing to do",
        );
    };
    let detail = format!("{skew:+} s against {endpoint}");
    let fix = "sync the system clock (e.g. enable NTP: `timedatectl set-ntp true`); AWS rejects requests more than 5 minutes off";
    let mut check = match classify_skew(skew) {
        Status::Ok => Check::ok(ID, detail),
        Status::Warn => Check::warn(ID, detail, fix),
        Status::Fail => Check::fail(ID, detail, fix),
    };
    check.skew_seconds = Some(skew);
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_versions() {
        assert_eq!(parse_git_version("git version 2.39.5\n"), Some((2, 39)));
        assert_eq!(parse_git_version("git version 2.45.1.windows.1"), Some((2, 45)));
        assert_eq!(parse_git_version("git version 2.39.3 (Apple Git-145)"), Some((2, 39)));
        assert_eq!(parse_git_version("hg 6"), None);
        assert!(parse_git_version("git version 2.28.0").unwrap() < MIN_GIT);
    }

    #[test]
    fn skew_from_date_header() {
        let sent =
            chrono::DateTime::parse_from_rfc3339("2026-11-28T13:46:20Z").unwrap().with_timezone(&chrono::Utc);
        let skew = skew_seconds("Sat, 28 Nov 2026 13:46:22 GMT", sent, Duration::from_secs(2));
        assert_eq!(skew, Some(1));
        assert_eq!(skew_seconds("Sat, 28 Nov 2026 13:40:20 GMT", sent, Duration::ZERO), Some(-360));
        assert_eq!(skew_seconds("yesterday", sent, Duration::ZERO), None);
        assert_eq!(classify_skew(5), Status::Ok);
        assert_eq!(classify_skew(-61), Status::Warn);
        assert_eq!(classify_skew(301), Status::Fail);
    }
}

//! A repository wired to moto, and reading back what tpa did in moto's IAM.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::moto::{moto, unique_name, xml_text};
use super::proxy::Proxy;
use super::{Run, TestEnv};

pub const BASE_KEY_ID: &str = "AKIABASECREDENTIALS0";
pub const REASON: &str = "INC-4211: fix stuck invoices";

/// A repository cloned from `origin`, whose reviewed main (pushed to origin) holds a policy for
/// one moto role; HEAD on `hotfix/INC-4211` with a commit of its own. tpa talks to moto through
/// `proxy`.
pub struct AwsRepo {
    pub env: TestEnv,
    pub dir: PathBuf,
    pub proxy: Proxy,
    pub role_name: String,
    pub role_arn: String,
}

pub fn policy(arn: &str, extra: &str) -> String {
    policy_with_top(arn, "", extra)
}

/// `top` goes before the first table (top-level keys), `extra` after the role's table.
pub fn policy_with_top(arn: &str, top: &str, extra: &str) -> String {
    format!(
        "protected_branches = [\"main\"]\nrequest_branches = [\"hotfix/*\", \"fix/*\"]\nmin_reason_length = 10\n\
         default_ttl = \"30m\"\n{top}\n[roles.prod-readonly]\narn = \"{arn}\"\nregion = \"us-east-1\"\nmax_ttl = \"1h\"\n{extra}"
    )
}

impl AwsRepo {
    pub fn new() -> Self {
        Self::with_policy_extra("")
    }

    pub fn with_policy_extra(extra: &str) -> Self {
        Self::with_policy_parts("", extra)
    }

    pub fn with_policy_parts(top: &str, extra: &str) -> Self {
        Self::in_env(TestEnv::new(), top, extra)
    }

    /// On a headless machine: grant credentials go to the kernel keyring.
    pub fn headless() -> Self {
        Self::in_env(TestEnv::headless(), "", "")
    }

    pub fn in_env(env: TestEnv, top: &str, extra: &str) -> Self {
        let moto = moto();
        let role_name = unique_name("tpa-test-role");
        let role_arn = moto.create_role(&role_name);
        Self::on(env, moto.addr, (BASE_KEY_ID, "base-secret-not-a-grant"), (role_name, role_arn), top, extra)
    }

    /// The same, against the moto at `addr`, as the IAM user whose access key is `keys`, for an
    /// existing role `(name, arn)`.
    pub fn on(
        mut env: TestEnv,
        addr: std::net::SocketAddr,
        keys: (&str, &str),
        (role_name, role_arn): (String, String),
        top: &str,
        extra: &str,
    ) -> Self {
        let proxy = Proxy::start(addr);
        env.set_env("AWS_ENDPOINT_URL", proxy.endpoint());
        env.set_env("AWS_ACCESS_KEY_ID", keys.0);
        env.set_env("AWS_SECRET_ACCESS_KEY", keys.1);
        env.set_env("AWS_REGION", "us-east-1");
        env.set_env("AWS_DEFAULT_REGION", "us-east-1");
        env.set_env("AWS_EC2_METADATA_DISABLED", "true");
        env.set_env("TPA_NONINTERACTIVE", "1");
        let (dir, _origin) = env.repo_with_origin("work");
        env.tpa(&dir).arg("init").run().success();
        std::fs::write(dir.join(".tpa/policy.toml"), policy_with_top(&role_arn, top, extra)).unwrap();
        env.git(&dir, &["add", ".tpa"]);
        env.git(&dir, &["commit", "-q", "-m", "tpa policy"]);
        env.git(&dir, &["push", "-q", "origin", "main"]);
        env.git(&dir, &["switch", "-q", "-c", "hotfix/INC-4211"]);
        env.git(&dir, &["commit", "-q", "--allow-empty", "-m", "fix stuck invoices"]);
        AwsRepo { env, dir, proxy, role_name, role_arn }
    }

    pub fn tpa(&self) -> Run {
        self.env.tpa(&self.dir)
    }

    /// A teammate's clone of the same origin, with a signing key of their own whose line is
    /// committed to main and pushed (as review would merge it).
    pub fn teammate(&self, name: &str, email: &str) -> PathBuf {
        let origin = self.env.path("work-origin.git");
        let dir = self.env.path(name);
        self.env.git(self.env.root.path(), &["clone", "-q", origin.to_str().unwrap(), dir.to_str().unwrap()]);
        self.env.git(&dir, &["config", "user.email", email]);
        self.env.git(&dir, &["config", "user.name", name]);
        let key = self.env.ssh_key(&format!("{name}-key"));
        self.env.tpa(&dir).args(["init", "--signing-key"]).arg(&key).run().success();
        self.env.git(&dir, &["add", ".tpa"]);
        self.env.git(&dir, &["commit", "-q", "-m", &format!("tpa: allow {email} to sign")]);
        self.env.git(&dir, &["pull", "-q", "--rebase", "origin", "main"]);
        self.env.git(&dir, &["push", "-q", "origin", "main"]);
        dir
    }

    pub fn request(&self) -> Run {
        self.tpa().args(["request", "--role", "prod-readonly", "--reason", REASON])
    }

    /// The sha256 of the payload of request `id`'s record on HEAD's note, as approvals name it.
    pub fn request_sha256(&self, id: &str) -> String {
        let lines = super::notes::note_lines(&self.env, &self.dir, &self.head());
        let line =
            lines.iter().find(|l| l.contains("\\\"kind\\\":\\\"request\\\"") && l.contains(id)).unwrap();
        let payload =
            serde_json::from_str::<serde_json::Value>(line).unwrap()["payload"].as_str().unwrap().to_owned();
        tpa::grant::sha256_hex(payload.as_bytes())
    }

    pub fn notes_tip(&self) -> Option<String> {
        let out = self.env.git_output(&self.dir, &["rev-parse", "--verify", "-q", "refs/notes/tpa"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    pub fn head(&self) -> String {
        self.env.git(&self.dir, &["rev-parse", "HEAD"])
    }

    /// Record kinds in the ledger, oldest first.
    pub fn kinds(&self) -> Vec<String> {
        let log = self.tpa().args(["log", "--json"]).run().success().json();
        let mut kinds: Vec<String> = log
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["record"]["kind"].as_str().unwrap().to_owned())
            .collect();
        kinds.reverse();
        kinds
    }

    /// How many of this repository's grants have credentials in the (shared) test keyring.
    pub fn keyring_grants(&self) -> usize {
        let log = self.tpa().args(["log", "--json"]).run().success().json();
        let mut ids: Vec<String> = log
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["record"]["grant_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        ids.iter().filter(|id| self.keyring_holds(id)).count()
    }

    /// Whether the OS keyring (the Secret Service, asked through secret-tool) holds grant `id`.
    pub fn keyring_holds(&self, id: &str) -> bool {
        self.env
            .command("secret-tool")
            .args(["lookup", "service", "tpa", "username", &format!("grant:{id}")])
            .output()
            .unwrap()
            .status
            .success()
    }
}

/// The Python that has boto3 (moto's own environment).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TPA_TEST_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.exists() { venv } else { PathBuf::from("python3") }
}

pub const POLICY_PREFIX: &str = "arn:aws:iam::123456789012:policy/tpa/tpa-revocations-";

fn unescape_xml(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The role's revocation policy's default document, as moto has it now.
pub fn default_document(role: &str) -> Option<String> {
    let arn = format!("{POLICY_PREFIX}{role}");
    let (status, body) =
        moto().call("iam", &[("Action", "GetPolicy"), ("Version", "2010-05-08"), ("PolicyArn", &arn)]);
    if status != 200 {
        return None;
    }
    let version = xml_text(&body, "DefaultVersionId").unwrap().to_owned();
    let (status, body) = moto().call(
        "iam",
        &[
            ("Action", "GetPolicyVersion"),
            ("Version", "2010-05-08"),
            ("PolicyArn", &arn),
            ("VersionId", &version),
        ],
    );
    assert_eq!(status, 200, "{body}");
    Some(tpa::provider::aws_iam::percent_decode(&unescape_xml(xml_text(&body, "Document").unwrap())))
}

/// The session names the role's revocation policy denies, as moto has it now.
pub fn denied(role: &str) -> BTreeSet<String> {
    default_document(role).map(|d| tpa::provider::aws_iam::denied_sessions(&d)).unwrap_or_default()
}

/// Makes `document` the default version of the role's revocation policy, behind tpa's back.
pub fn seed_policy(role: &str, document: &str) {
    let arn = format!("{POLICY_PREFIX}{role}");
    let (status, body) = moto().call(
        "iam",
        &[
            ("Action", "CreatePolicyVersion"),
            ("Version", "2010-05-08"),
            ("PolicyArn", &arn),
            ("PolicyDocument", document),
            ("SetAsDefault", "true"),
        ],
    );
    assert_eq!(status, 200, "{body}");
}

//! The broker (issue 16): where a role says `mint = "broker"`, only the broker's identity can
//! assume it. A moto of these tests' own with IAM enforcement on and two IAM users: the requester
//! (no sts:AssumeRole) and the broker (may assume the target roles and write their revocation
//! policies). Three clones of one bare remote: alice (requester), bob (approver), the broker.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::aws::{AwsRepo, POLICY_PREFIX, REASON, python};
use crate::common::moto::{ACCOUNT_ID, Moto, start_separate, xml_text};
use crate::common::*;

const BROKER: &str = "tpa-broker@example.com";
const TOP: &str = "brokers = [\"tpa-broker@example.com\"]\n";
const RULES: &str = "approvals = 1\napprovers = [\"@sre\"]\napproval_window = \"30m\"\nmint = \"broker\"\n\
    [roles.local-one]\narn = \"arn:aws:iam::123456789012:role/local-one\"\nregion = \"us-east-1\"\nmax_ttl = \"1h\"\n\
    [groups]\nsre = [\"bob@example.com\"]\n";
/// How many roles the enforcing moto is set up with: one per test that mints.
const ROLES: usize = 12;

struct Keys {
    id: String,
    secret: String,
}

/// The enforcing moto: users, keys and roles made while its auth was off, then switched on.
struct Enforcing {
    moto: Moto,
    requester: Keys,
    broker: Keys,
    roles: Vec<(String, String)>,
    next_role: AtomicUsize,
}

fn enforcing() -> &'static Enforcing {
    static ENFORCING: OnceLock<Enforcing> = OnceLock::new();
    ENFORCING.get_or_init(|| {
        let moto = start_separate();
        let ok = |(status, body): (u16, String)| {
            assert_eq!(status, 200, "{body}");
            body
        };
        let user = |name: &str, actions: &str| {
            ok(moto.call("iam", &[("Action", "CreateUser"), ("Version", "2010-05-08"), ("UserName", name)]));
            let document = format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":{actions},"Resource":"*"}}]}}"#
            );
            ok(moto.call(
                "iam",
                &[
                    ("Action", "PutUserPolicy"),
                    ("Version", "2010-05-08"),
                    ("UserName", name),
                    ("PolicyName", "what-it-may-do"),
                    ("PolicyDocument", &document),
                ],
            ));
            let body =
                ok(moto.call("iam", &[("Action", "CreateAccessKey"), ("Version", "2010-05-08"), ("UserName", name)]));
            Keys {
                id: xml_text(&body, "AccessKeyId").unwrap().to_owned(),
                secret: xml_text(&body, "SecretAccessKey").unwrap().to_owned(),
            }
        };
        let requester = user("alice", r#"["sts:GetCallerIdentity"]"#);
        let broker = user("broker", r#"["sts:*","iam:*"]"#);
        let roles = (0..ROLES)
            .map(|i| {
                let name = format!("tpa-broker-role-{i}");
                // The target roles trust only the broker.
                let trust = format!(
                    r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{ACCOUNT_ID}:user/broker"}},"Action":["sts:AssumeRole","sts:TagSession","sts:SetSourceIdentity"]}}]}}"#
                );
                let body = ok(moto.call(
                    "iam",
                    &[
                        ("Action", "CreateRole"),
                        ("Version", "2010-05-08"),
                        ("RoleName", &name),
                        ("AssumeRolePolicyDocument", &trust),
                        ("MaxSessionDuration", "43200"),
                    ],
                ));
                let arn = xml_text(&body, "Arn").unwrap().to_owned();
                let may = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sts:GetCallerIdentity","Resource":"*"}]}"#;
                ok(moto.call(
                    "iam",
                    &[
                        ("Action", "PutRolePolicy"),
                        ("Version", "2010-05-08"),
                        ("RoleName", &name),
                        ("PolicyName", "whoami"),
                        ("PolicyDocument", may),
                    ],
                ));
                (name, arn)
            })
            .collect();
        switch_auth_on(&moto);
        Enforcing { moto, requester, broker, roles, next_role: AtomicUsize::new(0) }
    })
}

/// moto with auth on rejects the Rust SDK's IAM CreatePolicy/CreatePolicyVersion with
/// SignatureDoesNotMatch (boto3's identical request passes; measured with moto 5.x), so the
/// broker's IAM writes run with enforcement switched off for a moment: tests that rely on
/// enforcement hold this lock for reading, the write leg for writing.
static ENFORCEMENT: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// `POST /moto-api/reset-auth` with a text/plain body of 0: every later request is checked.
fn switch_auth_on(moto: &Moto) {
    reset_auth(moto, "0");
}

/// Runs `leg` with moto's enforcement off (see [`ENFORCEMENT`]), then switches it on again.
fn without_enforcement<T>(leg: impl FnOnce() -> T) -> T {
    let _exclusive = ENFORCEMENT.write().unwrap_or_else(|e| e.into_inner());
    reset_auth(&enforcing().moto, "inf");
    let result = leg();
    reset_auth(&enforcing().moto, "0");
    result
}

fn reset_auth(moto: &Moto, count: &str) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(moto.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "POST /moto-api/reset-auth HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{count}",
        moto.addr,
        count.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "moto did not reset auth to {count}: {answer}");
}

/// A Python snippet run with boto3 against the enforcing moto, as `keys`; its output.
fn boto3(env: &TestEnv, keys: (&str, &str), script: &str) -> Output {
    env.command(python().to_str().unwrap())
        .args(["-c", script])
        .env("AWS_ENDPOINT_URL", enforcing().moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", keys.0)
        .env("AWS_SECRET_ACCESS_KEY", keys.1)
        .env_remove("AWS_SESSION_TOKEN")
        .output()
        .unwrap()
}

struct Team {
    aws: AwsRepo,
    bob: PathBuf,
    broker: PathBuf,
}

impl Team {
    fn new() -> Self {
        Self::with(RULES)
    }

    fn with(rules: &str) -> Self {
        let enforcing = enforcing();
        let index = enforcing.next_role.fetch_add(1, Ordering::Relaxed);
        let role =
            enforcing.roles.get(index).expect("raise ROLES: every test that mints takes a role").clone();
        let keys = (enforcing.requester.id.as_str(), enforcing.requester.secret.as_str());
        let aws = AwsRepo::on(TestEnv::new(), enforcing.moto.addr, keys, role, TOP, rules);
        let clone = |name: &str, email: &str| aws.teammate(name, email);
        let bob = clone("bob", "bob@example.com");
        let broker = clone("broker", BROKER);
        for dir in [&bob, &broker] {
            aws.env.git(dir, &["pull", "-q", "--rebase", "origin", "main"]);
        }
        aws.env.git(&aws.dir, &["fetch", "-q", "origin"]);
        aws.env.git(&aws.dir, &["push", "-q", "origin", "hotfix/INC-4211"]);
        Team { aws, bob, broker }
    }

    fn tpa_in(&self, dir: &Path) -> Run {
        self.aws.env.tpa(dir)
    }

    /// `tpa broker --once --json` in the broker's clone, with the broker's keys.
    fn broker_once(&self) -> Run {
        self.broker_in(&self.broker).args(["broker", "--once", "--json"])
    }

    fn broker_in(&self, dir: &Path) -> Run {
        let enforcing = enforcing();
        self.tpa_in(dir)
            .env("AWS_ACCESS_KEY_ID", &enforcing.broker.id)
            .env("AWS_SECRET_ACCESS_KEY", &enforcing.broker.secret)
    }

    /// alice asks, without waiting: the request's id.
    fn ask(&self) -> String {
        let out = self.aws.request().args(["--no-wait", "--json"]).run().success().json();
        out["grant_id"].as_str().unwrap().to_owned()
    }

    fn approve(&self, id: &str) {
        self.tpa_in(&self.bob).args(["sync"]).run();
        self.tpa_in(&self.bob).args(["approve", id, "--reason", "looked at the diff"]).run().success();
    }

    /// What the broker did with `id` in its report.
    fn action(report: &Value, id: &str) -> (String, String) {
        let item = report["items"].as_array().unwrap().iter().find(|i| i["grant_id"] == id);
        let item = item.unwrap_or_else(|| panic!("{id} is not in the broker's report: {report}"));
        (item["action"].as_str().unwrap().to_owned(), item["detail"].as_str().unwrap_or_default().to_owned())
    }

    fn records(&self, dir: &Path, id: &str, kind: &str) -> Vec<Value> {
        self.tpa_in(dir).args(["sync"]).run();
        let show = self.tpa_in(dir).args(["show", id, "--json"]).run().success().json();
        show["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["record"].clone())
            .filter(|r| r["kind"] == kind)
            .collect()
    }

    fn remote_refs(&self, prefix: &str) -> String {
        self.aws.env.git(&self.aws.dir, &["ls-remote", "origin", &format!("{prefix}*")])
    }

    /// Every object in every clone and the remote, as text: for scanning for secrets.
    fn all_objects(&self) -> String {
        let mut all = String::new();
        for dir in [
            self.aws.dir.clone(),
            self.bob.clone(),
            self.broker.clone(),
            self.aws.env.path("work-origin.git"),
        ] {
            let out =
                self.aws.env.git_output(&dir, &["cat-file", "--batch-all-objects", "--batch", "--unordered"]);
            all.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        all
    }
}

const WHOAMI: &str = "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])";

#[test]
fn only_the_broker_can_mint_and_the_requester_gets_the_credentials() {
    let _enforced = ENFORCEMENT.read().unwrap_or_else(|e| e.into_inner());
    let team = Team::new();
    let env = &team.aws.env;
    let enforcing = enforcing();
    // alice's own identity cannot assume the role: without tpa's broker there is no access.
    let assume = format!(
        "import boto3\ntry:\n  boto3.client('sts').assume_role(RoleArn='{}', RoleSessionName='mine')\n  print('ASSUMED')\nexcept Exception as e:\n  print(type(e).__name__, e)",
        team.aws.role_arn
    );
    let out = boto3(env, (&enforcing.requester.id, &enforcing.requester.secret), &assume);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("AccessDenied") && !said.contains("ASSUMED"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // alice asks and waits; bob approves; one broker pass; alice's wait ends with credentials.
    let waiting = team.aws.request().args(["--poll", "1s", "--json"]).spawn_piped();
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        team.tpa_in(&team.bob).args(["sync"]).run();
        let pending = team.tpa_in(&team.bob).args(["approvals", "--json"]).run().success().json();
        if let Some(p) = pending.as_array().unwrap().first() {
            break p["grant_id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the request never reached the approver");
        std::thread::sleep(Duration::from_millis(200)); // polling git, bounded by the deadline
    };
    let request = &team.records(&team.bob, &id, "request")[0];
    assert!(request["delivery_key"].as_str().unwrap().starts_with("age1"), "{request}");
    team.approve(&id);
    let pass = team.broker_once().run();
    let report = pass.json();
    assert_eq!(Team::action(&report, &id).0, "minted", "{report}");
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let granted: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(granted["grant_id"], id.as_str());

    // The credentials work, as the session tpa named; the broker signed the grant for alice.
    let who = team.aws.tpa().args(["exec", "--"]).arg(python()).args(["-c", WHOAMI]).run().success();
    assert!(who.stdout.trim().ends_with(&format!("/tpa-{id}")), "{}", who.stdout);
    let grant = &team.records(&team.aws.dir, &id, "grant")[0];
    assert_eq!(grant["principal"]["email"], BROKER);
    let status = team.aws.tpa().args(["status", "--json"]).run().success().json();
    let mine = status.as_array().unwrap().iter().find(|g| g["grant_id"] == id.as_str()).cloned();
    assert_eq!(mine.unwrap_or_default()["principal"], "alice@example.com", "{status}");

    // The delivery is gone from the remote; no secret in any object anywhere, nor in the broker's output.
    assert_eq!(team.remote_refs("refs/tpa/deliveries/"), "");
    let secret_key = exported(&team, "AWS_SECRET_ACCESS_KEY");
    let token = exported(&team, "AWS_SESSION_TOKEN");
    let objects = team.all_objects();
    for secret in [&secret_key, &token] {
        assert!(!objects.contains(secret.as_str()), "a secret is in a git object");
        assert!(!pass.stdout.contains(secret.as_str()) && !pass.stderr.contains(secret.as_str()));
    }
    // The audit finds nothing wrong with a grant the broker minted for alice on bob's approval.
    let audit = team.aws.tpa().args(["audit", "--offline", "--json"]).run().json();
    let errors: Vec<&Value> =
        audit["findings"].as_array().unwrap().iter().filter(|f| f["severity"] == "error").collect();
    assert!(errors.is_empty(), "{errors:?}");
    // bob cannot take what is alice's.
    let theirs = team.tpa_in(&team.bob).args(["request", "--resume", &id]).run().code(2);
    assert!(theirs.stderr.contains("only they can"), "{}", theirs.stderr);
}

#[test]
fn a_delivery_left_for_the_requester_opens_only_with_their_key_and_goes_once_picked_up() {
    let team = Team::new();
    let id = team.ask();
    team.approve(&id);
    let report = team.broker_once().run().json();
    assert_eq!(Team::action(&report, &id).0, "minted", "{report}");
    let refname = format!("refs/tpa/deliveries/{id}");
    assert!(team.remote_refs("refs/tpa/deliveries/").contains(&refname));

    // The ciphertext: age, to one X25519 recipient; the request's key opens it, bob's tpa cannot.
    team.aws.env.git(&team.bob, &["fetch", "-q", "origin", &format!("{refname}:{refname}")]);
    let blob = team.aws.env.git_output(&team.bob, &["cat-file", "blob", &refname]).stdout;
    assert!(
        blob.starts_with(b"age-encryption.org/v1\n-> X25519 "),
        "{}",
        String::from_utf8_lossy(&blob[..60])
    );
    let out = team.tpa_in(&team.bob).args(["request", "--resume", &id]).run().code(2);
    assert!(out.stderr.contains("only they can"), "{}", out.stderr);

    assert!(one_time_key_kept(&team, &id), "the one-time key waits in alice's keyring");
    let got = team.aws.tpa().args(["request", "--resume", &id, "--json"]).run().success().json();
    assert_eq!(got["grant_id"], id.as_str());
    assert_eq!(team.remote_refs("refs/tpa/deliveries/"), "");
    assert!(!one_time_key_kept(&team, &id), "opened: the one-time key is gone");
    let token = exported(&team, "AWS_SESSION_TOKEN");
    assert!(token.len() > 20 && !String::from_utf8_lossy(&blob).contains(&token));
    // Picked up once: asking again finds no delivery and says so.
    let again = team.aws.tpa().args(["request", "--resume", &id]).run().code(2);
    assert!(again.stderr.contains("delivery"), "{}", again.stderr);

    // A delivery nobody picks up goes once its grant has expired.
    let id = team.ask();
    team.approve(&id);
    assert_eq!(Team::action(&team.broker_once().run().json(), &id).0, "minted");
    assert!(team.remote_refs("refs/tpa/deliveries/").contains(&id));
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let report = team.broker_once().env("TPA_TEST_NOW", &later).run().json();
    assert_eq!(report["deliveries_removed"], 1, "{report}");
    assert_eq!(team.remote_refs("refs/tpa/deliveries/"), "");
}

#[test]
fn the_broker_refuses_what_does_not_hold_and_says_why_in_the_ledger() {
    let team = Team::new();
    let env = &team.aws.env;
    let refused = |id: &str, why: &str| {
        let report = team.broker_once().run().json();
        let (action, detail) = Team::action(&report, id);
        assert_eq!(action, "refused", "{report}");
        assert!(detail.contains(why), "{detail}");
        let failed = team.records(&team.aws.dir, id, "failed");
        assert_eq!(failed.len(), 1, "one signed refusal");
        assert_eq!(failed[0]["principal"]["email"], BROKER);
        let out = team.aws.tpa().args(["request", "--resume", id]).run().code(2);
        assert!(out.stderr.contains("refused") && out.stderr.contains(why), "{}", out.stderr);
        assert!(!one_time_key_kept(&team, id), "nothing will be delivered: the one-time key goes");
    };

    // A commit that was never pushed: approvers could not have seen it.
    env.git(&team.aws.dir, &["commit", "-q", "--allow-empty", "-m", "not pushed"]);
    let id = team.ask();
    team.approve(&id);
    refused(&id, "push the branch");
    env.git(&team.aws.dir, &["push", "-q", "origin", "hotfix/INC-4211"]);

    // Self-approval, written by hand with alice's trusted key.
    let id = team.ask();
    let request = team.records(&team.aws.dir, &id, "request")[0].clone();
    let sha = team.aws.request_sha256(&id);
    let mut own = request.clone();
    own["kind"] = json!("approval");
    own["decision"] = json!("approve");
    own["request_sha256"] = json!(sha);
    own["issued_at"] = json!(chrono::Utc::now().to_rfc3339());
    for field in ["approve_by", "delivery_key"] {
        own.as_object_mut().unwrap().remove(field);
    }
    team.aws.tpa().args(["debug", "append"]).stdin(own.to_string()).run().success();
    team.aws.tpa().args(["sync"]).run().success();
    refused(&id, "self-approval");

    // The request changed after bob approved it: a second, different request record for the grant.
    let id = team.ask();
    team.approve(&id);
    let mut edited = team.records(&team.aws.dir, &id, "request")[0].clone();
    edited["reason"] = json!(format!("{REASON} and a bit more"));
    team.aws.tpa().args(["debug", "append"]).stdin(edited.to_string()).run().success();
    team.aws.tpa().args(["sync"]).run();
    let report = team.broker_once().run().json();
    let (action, detail) = Team::action(&report, &id);
    assert_eq!(action, "refused", "{report}");
    assert!(detail.contains("changed"), "{detail}");

    // Signed by a key the trust ref does not list.
    let id = team.ask();
    let mut stranger = team.records(&team.aws.dir, &id, "request")[0].clone();
    let other = fresh_id();
    stranger["grant_id"] = json!(other);
    let key = env.ssh_key("stranger-key");
    team.aws
        .tpa()
        .args(["debug", "append"])
        .env("TPA_SIGNING_KEY", &key)
        .stdin(stranger.to_string())
        .run()
        .success();
    team.aws.tpa().args(["sync"]).run();
    refused(&other, "not signed by a key");

    // Requests to the broker for a role the policy mints locally, and for one it does not have.
    let id = team.ask();
    for (role, why) in [("local-one", "minted locally"), ("no-such-role", "not in the policy")] {
        let mut request = team.records(&team.aws.dir, &id, "request")[0].clone();
        let other = fresh_id();
        request["grant_id"] = json!(other);
        request["role"] = json!(role);
        team.aws.tpa().args(["debug", "append"]).stdin(request.to_string()).run().success();
        team.aws.tpa().args(["sync"]).run();
        refused(&other, why);
    }

    // No quorum within the window: refused once the window is over.
    let id = team.ask();
    let report = team.broker_once().run().json();
    assert_eq!(Team::action(&report, &id).0, "waiting", "{report}");
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let report = team.broker_once().env("TPA_TEST_NOW", &later).run().json();
    let (action, detail) = Team::action(&report, &id);
    assert_eq!(action, "refused", "{report}");
    assert!(detail.contains("no quorum"), "{detail}");
}

/// A value `tpa env` exports in alice's clone.
fn exported(team: &Team, name: &str) -> String {
    let out = team.aws.tpa().arg("env").run().success();
    let line = out.stdout.lines().find(|l| l.starts_with(&format!("export {name}="))).unwrap().to_owned();
    line.split_once('=').unwrap().1.trim_matches('\'').to_owned()
}

/// Whether alice's keyring still holds the one-time delivery key of request `id`.
fn one_time_key_kept(team: &Team, id: &str) -> bool {
    let lookup = ["lookup", "service", "tpa", "username", &format!("delivery:{id}")];
    team.aws.env.command("secret-tool").args(lookup).output().unwrap().status.success()
}

fn fresh_id() -> String {
    tpa::grant::GrantId::generate(chrono::Utc::now()).to_string()
}

#[test]
fn merging_the_hotfix_asks_the_broker_which_denies_the_session() {
    let team = Team::new();
    let env = &team.aws.env;
    let id = team.ask();
    team.approve(&id);
    let report = team.broker_once().run().json();
    assert_eq!(Team::action(&report, &id).0, "minted", "{report}");
    team.aws.tpa().args(["request", "--resume", &id, "--json"]).run().success();

    // alice merges her hotfix: the post-merge hook finds it merged, and her clone (no IAM
    // rights) asks the broker.
    env.git(&team.aws.dir, &["switch", "-q", "main"]);
    env.git(&team.aws.dir, &["merge", "-q", "--ff-only", "origin/main"]);
    env.git(&team.aws.dir, &["merge", "-q", "--no-ff", "-m", "merge the fix", "hotfix/INC-4211"]);
    env.git(&team.aws.dir, &["push", "-q", "origin", "main"]);
    let revokes = team.records(&team.aws.dir, &id, "revoke");
    assert_eq!(revokes.len(), 1, "the hook asked");
    assert_eq!(revokes[0]["trigger"], "merged");
    // Her sweep has nothing more to do, and nothing to worry about.
    let swept = team.aws.tpa().args(["sweep", "--json"]).run();
    let sweep = swept.json();
    let item =
        sweep["items"].as_array().unwrap().iter().find(|i| i["grant_id"] == id.as_str()).cloned().unwrap();
    assert_eq!(item["decision"], "requested", "{sweep}");
    assert_eq!(swept.code, 0, "a request to the broker is all a clone can do: {}", swept.stdout);
    let revokes = team.records(&team.aws.dir, &id, "revoke");
    assert_eq!(revokes.len(), 1);
    assert_eq!(revokes[0]["result"], "requested");
    assert!(
        revokes[0]["error"].as_str().unwrap_or_default().contains("broker"),
        "it never called IAM: {}",
        revokes[0]
    );
    assert!(denied_by_iam(env, &team.aws.role_name).is_empty(), "nothing denied yet");

    let report = without_enforcement(|| team.broker_once().run().json());
    let items = report["sweep"]["items"].as_array().unwrap();
    let item = items.iter().find(|i| i["grant_id"] == id.as_str()).unwrap_or_else(|| panic!("{report}"));
    assert_eq!(item["outcome"]["result"], "done", "{report}");
    assert!(denied_by_iam(env, &team.aws.role_name).contains(&format!("tpa-{id}")));
    let revokes = team.records(&team.aws.dir, &id, "revoke");
    assert_eq!(revokes.last().unwrap()["result"], "done");
    assert_eq!(revokes.last().unwrap()["principal"]["email"], BROKER);
    let status = team.aws.tpa().args(["show", &id, "--json"]).run().success().json();
    assert_eq!(status["state"], "revoked", "{status}");
}

/// The session names the role's revocation policy denies, read back from IAM with the broker's keys.
fn denied_by_iam(env: &TestEnv, role: &str) -> std::collections::BTreeSet<String> {
    let enforcing = enforcing();
    let script = format!(
        "import boto3, urllib.parse\niam = boto3.client('iam')\ntry:\n  p = iam.get_policy(PolicyArn='{POLICY_PREFIX}{role}')['Policy']\nexcept iam.exceptions.NoSuchEntityException:\n  raise SystemExit(0)\nv = iam.get_policy_version(PolicyArn=p['Arn'], VersionId=p['DefaultVersionId'])['PolicyVersion']['Document']\nimport json\nprint(v if isinstance(v, str) else json.dumps(v))"
    );
    let out = boto3(env, (&enforcing.broker.id, &enforcing.broker.secret), &script);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let document = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if document.is_empty() {
        return Default::default();
    }
    tpa::provider::aws_iam::denied_sessions(&tpa::provider::aws_iam::percent_decode(&document))
}

#[test]
fn two_brokers_at_once_mint_each_request_exactly_once() {
    let team = Team::new();
    let second = team.aws.env.path("broker-2");
    let origin = team.aws.env.path("work-origin.git");
    team.aws
        .env
        .git(team.aws.env.root.path(), &["clone", "-q", origin.to_str().unwrap(), second.to_str().unwrap()]);
    team.aws.env.git(&second, &["config", "user.email", BROKER]);
    team.aws
        .env
        .tpa(&second)
        .args(["init", "--signing-key"])
        .arg(team.aws.env.path("broker-key"))
        .run()
        .success();
    let ids: Vec<String> = (0..2).map(|_| team.ask()).collect();
    for id in &ids {
        team.approve(id);
    }
    let one = team.broker_once().spawn_piped();
    let two = team.broker_in(&second).args(["broker", "--once", "--json"]).spawn_piped();
    let reports: Vec<Value> = [one, two]
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect();
    for id in &ids {
        let minted = reports
            .iter()
            .filter(|r| {
                r["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i["grant_id"] == id.as_str() && i["action"] == "minted")
            })
            .count();
        assert_eq!(minted, 1, "{reports:?}");
        assert_eq!(team.records(&team.aws.dir, id, "intent").len(), 1);
        assert_eq!(team.records(&team.aws.dir, id, "grant").len(), 1);
        team.aws.tpa().args(["request", "--resume", id, "--json"]).run().success();
    }
}

#[test]
fn bad_input_is_skipped_with_a_finding_and_the_broker_keeps_serving() {
    let team = Team::new();
    let env = &team.aws.env;
    let id = team.ask();
    team.approve(&id);
    // A malformed line and a 10 MB note on other commits, and a delivery nobody minted.
    env.git(&team.aws.dir, &["commit", "-q", "--allow-empty", "-m", "other"]);
    let other = team.aws.head();
    std::fs::write(env.path("junk"), "{\"not\": \"a record\"\n").unwrap();
    env.git(
        &team.aws.dir,
        &["notes", "--ref", "tpa", "add", "-f", "-F", env.path("junk").to_str().unwrap(), &other],
    );
    env.git(&team.aws.dir, &["commit", "-q", "--allow-empty", "-m", "big"]);
    let big = team.aws.head();
    std::fs::write(env.path("big"), "x".repeat(10 * 1024 * 1024)).unwrap();
    env.git(
        &team.aws.dir,
        &["notes", "--ref", "tpa", "add", "-f", "-F", env.path("big").to_str().unwrap(), &big],
    );
    env.git(&team.aws.dir, &["push", "-q", "origin", "hotfix/INC-4211"]);
    team.aws.tpa().args(["sync"]).run().success();
    let fake = env.git(&team.aws.dir, &["rev-parse", "HEAD^{tree}"]);
    env.git(
        &team.aws.dir,
        &["push", "-q", "origin", &format!("{fake}:refs/tpa/deliveries/01JDZZZZZZZZZZZZZZZZZZZZZZ")],
    );

    let out = team.broker_once().run();
    let report = out.json();
    assert_eq!(Team::action(&report, &id).0, "minted", "{report}");
    let findings = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert!(findings.iter().any(|f| f.contains(&other) && f.contains("not a tpa record")), "{findings:?}");
    assert!(findings.iter().any(|f| f.contains(&big)), "{findings:?}");
    assert!(
        findings.iter().any(|f| f.contains("01JDZZZZZZZZZZZZZZZZZZZZZZ") && f.contains("no grant")),
        "{findings:?}"
    );
    assert!(out.stdout.len() < 64 * 1024, "the 10 MB note is not echoed");
    team.aws.tpa().args(["request", "--resume", &id, "--json"]).run().success();

    // Each such line is told once: the next pass tells of the lines that came since, here none,
    // although the next request's records go on the 10 MB note's commit.
    let next = team.ask();
    team.approve(&next);
    let report = team.broker_once().run().json();
    assert_eq!(Team::action(&report, &next).0, "minted", "{report}");
    let told = report["findings"].to_string();
    assert!(!told.contains("not a tpa record") && !told.contains(&big), "{told}");
    // A line that is no record added to a note the broker told of before is told.
    let with_more = std::fs::read_to_string(env.path("junk")).unwrap() + "more junk\n";
    std::fs::write(env.path("junk"), with_more).unwrap();
    env.git(
        &team.aws.dir,
        &["notes", "--ref", "tpa", "add", "-f", "-F", env.path("junk").to_str().unwrap(), &other],
    );
    team.aws.tpa().args(["sync"]).run().success();
    let report = team.broker_once().run().json();
    let told: Vec<&str> = report["findings"].as_array().unwrap().iter().filter_map(|f| f.as_str()).collect();
    let strays: Vec<&&str> = told.iter().filter(|f| f.contains("not a tpa record")).collect();
    assert_eq!(strays.len(), 1, "{told:?}");
    assert!(strays[0].contains(&format!("{other} line 2")), "{told:?}");
}

#[test]
fn doctor_on_the_broker_host_checks_the_brokers_identity_key_and_remote() {
    let team = Team::new();
    let check = |dir: &Path| {
        let out = team.broker_in(dir).args(["doctor", "--json"]).run();
        let report: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("{}", out.stdout));
        report["checks"].as_array().unwrap().iter().find(|c| c["id"] == "broker").cloned()
    };
    let on_the_broker = check(&team.broker).expect("the broker's clone gets the broker check");
    assert_eq!(on_the_broker["status"], "ok", "{on_the_broker}");
    let detail = on_the_broker["detail"].as_str().unwrap();
    assert!(detail.contains(BROKER) && detail.contains("1 broker role(s) (prod-readonly)"), "{detail}");
    assert!(check(&team.aws.dir).is_none(), "alice is no broker");
    // The broker's principal with a key the trust ref does not list for it.
    let stranger = team.aws.env.ssh_key("not-the-broker-key");
    let out = team.broker_in(&team.broker).args(["doctor", "--json"]).env("TPA_SIGNING_KEY", &stranger).run();
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let broker = report["checks"].as_array().unwrap().iter().find(|c| c["id"] == "broker").unwrap();
    assert_eq!(broker["status"], "fail", "{broker}");
    assert!(broker["detail"].as_str().unwrap().contains("not trusted"), "{broker}");
}

#[test]
fn a_break_glass_request_to_the_broker_is_minted_without_approvals_where_the_role_allows_it() {
    let team = Team::with(&RULES.replace("mint = \"broker\"\n", "mint = \"broker\"\nbreak_glass = true\n"));
    let out = team.aws.request().args(["--break-glass", "--no-wait", "--json"]).run().success().json();
    let id = out["grant_id"].as_str().unwrap().to_owned();
    assert_eq!(out["state"], "awaiting_broker", "{out}");
    let report = team.broker_once().run().json();
    assert_eq!(Team::action(&report, &id).0, "minted", "{report}");
    let got = team.aws.tpa().args(["request", "--resume", &id, "--json"]).run().success().json();
    assert_eq!(got["grant_id"], id.as_str());
    let grant = &team.records(&team.aws.dir, &id, "grant")[0];
    assert_eq!(grant["break_glass"], true, "{grant}");
    assert_eq!(grant["principal"]["email"], BROKER);
    // Not allowed for the role: the broker refuses a break-glass request written by hand.
    let strict = Team::new();
    let id = strict.ask();
    let mut request = strict.records(&strict.aws.dir, &id, "request")[0].clone();
    let other = fresh_id();
    request["grant_id"] = json!(other);
    request["break_glass"] = json!(true);
    strict.aws.tpa().args(["debug", "append"]).stdin(request.to_string()).run().success();
    strict.aws.tpa().args(["sync"]).run();
    let report = strict.broker_once().run().json();
    let (action, detail) = Team::action(&report, &other);
    assert_eq!(action, "refused", "{report}");
    assert!(detail.contains("does not allow break-glass"), "{detail}");
}

#[test]
fn a_watching_broker_serves_each_approval_and_stops_cleanly_on_sigterm() {
    let team = Team::new();
    let mut watching =
        team.broker_in(&team.broker).args(["broker", "--watch", "--interval", "1s", "--json"]).spawn_piped();
    for _ in 0..2 {
        let id = team.ask();
        team.approve(&id);
        let got = team
            .aws
            .tpa()
            .args(["request", "--resume", &id, "--poll", "1s", "--json"])
            .run()
            .success()
            .json();
        assert_eq!(got["grant_id"], id.as_str());
    }
    let pid = watching.id().to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = watching.wait().unwrap();
    assert_eq!(status.code(), Some(130), "a signal ends the watch as an interruption");
    let mut stdout = String::new();
    std::io::Read::read_to_string(watching.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let passes: Vec<Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("{l}"))).collect();
    let minted = passes
        .iter()
        .flat_map(|p| p["items"].as_array().cloned().unwrap_or_default())
        .filter(|i| i["action"] == "minted")
        .count();
    assert_eq!(minted, 2, "{stdout}");
}

//! The main outputs people read (`status`, `log`, `show`, `audit` as a table and as Markdown,
//! `who`), pinned whole: a ledger crafted with fixed ids and times, read with a pinned clock.
//! Object ids, key fingerprints and temp paths vary from run to run and are normalised.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::common::notes::intent_json;
use crate::common::*;

const NOW: &str = "2026-06-01T12:00:00Z";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/prod-readonly";

struct Ledger {
    env: TestEnv,
    dir: PathBuf,
}

impl Ledger {
    /// A clone of `origin` whose main (pushed) trusts the test key and a policy with one role,
    /// HEAD on `hotfix/INC-4211`; then three grants: active, revoked when merged, refused by AWS.
    fn new() -> Self {
        let mut env = TestEnv::new();
        let (dir, _origin) = env.repo_with_origin("work");
        let key = env.ssh_key("signer");
        env.set_env("TPA_SIGNING_KEY", key.to_str().unwrap());
        env.tpa(&dir).arg("init").run().success();
        std::fs::write(
            dir.join(".tpa/policy.toml"),
            format!(
                "protected_branches = [\"main\"]\nrequest_branches = [\"hotfix/*\"]\n\n[roles.prod-readonly]\n\
                 arn = \"{ROLE_ARN}\"\nmax_ttl = \"1h\"\n"
            ),
        )
        .unwrap();
        env.git(&dir, &["add", ".tpa"]);
        env.git(&dir, &["commit", "-q", "-m", "tpa"]);
        env.git(&dir, &["push", "-q", "origin", "main"]);
        env.git(&dir, &["switch", "-q", "-c", "hotfix/INC-4211"]);
        env.git(&dir, &["commit", "-q", "--allow-empty", "-m", "fix stuck invoices"]);
        env.pin(NOW);
        let ledger = Ledger { env, dir };
        ledger.grant(
            "01JWKZ8X9A0000000000000001",
            "2026-06-01T11:50:00Z",
            "INC-4211: fix stuck invoices",
            &[],
        );
        ledger.grant(
            "01JWKZ8X9A0000000000000002",
            "2026-06-01T09:00:00Z",
            "INC-4207: replay the failed payouts",
            &[("revoke", "2026-06-01T09:20:00Z")],
        );
        ledger.grant(
            "01JWKZ8X9A0000000000000003",
            "2026-06-01T10:00:00Z",
            "INC-4209: look at the \u{1b}[31mqueue",
            &[("failed", "2026-06-01T10:00:01Z")],
        );
        ledger
    }

    fn head(&self) -> String {
        self.env.git(&self.dir, &["rev-parse", "HEAD"])
    }

    fn append(&self, record: &serde_json::Value) -> String {
        let out = self.env.tpa(&self.dir).args(["debug", "append"]).stdin(record.to_string()).run().success();
        out.json()["payload_sha256"].as_str().unwrap().to_owned()
    }

    /// An intent at `at`, then (unless `then` says `failed` first) a grant a second later, valid
    /// for 30 minutes from `at`, then each of `then`.
    fn grant(&self, id: &str, at: &str, reason: &str, then: &[(&str, &str)]) {
        let at_time = chrono::DateTime::parse_from_rfc3339(at).unwrap();
        let later = |seconds: i64| (at_time + chrono::Duration::seconds(seconds)).to_rfc3339();
        let mut intent = intent_json(&self.head(), id, at);
        intent["reason"] = json!(reason);
        intent["branch"] = json!("refs/heads/hotfix/INC-4211");
        intent["provider"] = json!("aws-sts");
        intent["target"] = json!(ROLE_ARN);
        intent["role"] = json!("prod-readonly");
        intent["expires_at"] = json!(later(1800));
        intent["policy_commit"] = json!(self.env.git(&self.dir, &["rev-parse", "origin/main"]));
        intent["principal"]["host"] = json!("laptop.example.com");
        let sha = self.append(&intent);
        let with = |kind: &str, issued_at: &str| {
            let mut record = intent.clone();
            record["kind"] = json!(kind);
            record["issued_at"] = json!(issued_at);
            record["intent_sha256"] = json!(sha);
            record
        };
        if then.first().map(|t| t.0) != Some("failed") {
            let mut granted = with("grant", &later(1));
            granted["credential_fingerprint"] = json!("sha256:0011223344556677");
            self.append(&granted);
        }
        for (kind, when) in then {
            let mut record = with(kind, when);
            match *kind {
                "revoke" => {
                    record["trigger"] = json!("merged");
                    record["result"] = json!("done");
                }
                "failed" => record["error"] = json!("AWS denied the request: not authorized"),
                _ => {}
            }
            self.append(&record);
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.env.tpa(&self.dir).args(args).run();
        normalise(&format!("{}{}", out.stdout, out.stderr), self.env.root.path())
    }
}

/// Object ids, key fingerprints and the temp dir vary from run to run.
fn normalise(text: &str, root: &Path) -> String {
    let text = text.replace(root.to_str().unwrap(), "<tmp>");
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let hex = word.len() >= 7 && word.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if hex && word.len() == 40 {
            out.push_str("<commit>");
        } else if hex && word.len() == 10 {
            out.push_str("<short>");
        } else if hex {
            out.push_str("<hex>");
        } else if let Some(fp) = word.strip_prefix("SHA256:") {
            let _ = fp;
            out.push_str("SHA256:<key>");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == ':' || c == '+' || c == '/' && word.starts_with("SHA256:") {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[test]
fn status_log_and_show() {
    let ledger = Ledger::new();
    insta::assert_snapshot!(ledger.run(&["status", "--all", "--history"]), @r#"
01JWKZ8X9A0000000000000001  active      20m00s left    prod-readonly  hotfix/INC-4211 @ <short>  alice@example.com
    reason: INC-4211: fix stuck invoices
01JWKZ8X9A0000000000000003  failed                     prod-readonly  hotfix/INC-4211 @ <short>  alice@example.com
    reason: INC-4209: look at the \u{1b}[31mqueue
01JWKZ8X9A0000000000000002  revoked                    prod-readonly  hotfix/INC-4211 @ <short>  alice@example.com
    reason: INC-4207: replay the failed payouts
keyring: secret-service
"#);
    insta::assert_snapshot!(ledger.run(&["log"]), @r#"
2026-06-01T11:50:01Z  grant   01JWKZ8X9A0000000000000001  alice@example.com  hotfix/INC-4211 @ <short>  verified
2026-06-01T11:50:00Z  intent  01JWKZ8X9A0000000000000001  alice@example.com  hotfix/INC-4211 @ <short>  verified
    reason: INC-4211: fix stuck invoices
2026-06-01T10:00:01Z  failed  01JWKZ8X9A0000000000000003  alice@example.com  hotfix/INC-4211 @ <short>  verified
2026-06-01T10:00:00Z  intent  01JWKZ8X9A0000000000000003  alice@example.com  hotfix/INC-4211 @ <short>  verified
    reason: INC-4209: look at the \u{1b}[31mqueue
2026-06-01T09:20:00Z  revoke  01JWKZ8X9A0000000000000002  alice@example.com  hotfix/INC-4211 @ <short>  verified
2026-06-01T09:00:01Z  grant   01JWKZ8X9A0000000000000002  alice@example.com  hotfix/INC-4211 @ <short>  verified
2026-06-01T09:00:00Z  intent  01JWKZ8X9A0000000000000002  alice@example.com  hotfix/INC-4211 @ <short>  verified
    reason: INC-4207: replay the failed payouts
"#);
    insta::assert_snapshot!(ledger.run(&["show", "01JWKZ8X9A0000000000000002"]), @r#"
grant 01JWKZ8X9A0000000000000002  revoked
  principal  alice@example.com (alice@laptop.example.com)
  reason     INC-4207: replay the failed payouts
  repo       origin
  branch     refs/heads/hotfix/INC-4211
  commit     <commit>
  target     arn:aws:iam::123456789012:role/prod-readonly (aws-sts)
  expires    2026-06-01T09:30:00Z
history:
  2026-06-01T09:00:00Z  intent  by alice@example.com  verified
  2026-06-01T09:00:01Z  grant   by alice@example.com  verified
  2026-06-01T09:20:00Z  revoke  by alice@example.com trigger=merged result=done  verified
"#);
}

#[test]
fn audit_as_a_table_and_as_markdown() {
    let ledger = Ledger::new();
    insta::assert_snapshot!(ledger.run(&["audit", "--offline"]), @r#"
tpa audit of everything up to 2026-06-01T12:00:00Z: 3 grants, 7 records

GRANTS
  grant                       state       who                      branch                 lasted     reason
  01JWKZ8X9A0000000000000001  active      alice@example.com        hotfix/INC-4211        9m59s      INC-4211: fix stuck invoices
  01JWKZ8X9A0000000000000003  failed      alice@example.com        hotfix/INC-4211        -          INC-4209: look at the \u{1b}[31mqueue
  01JWKZ8X9A0000000000000002  revoked     alice@example.com        hotfix/INC-4211        19m59s     INC-4207: replay the failed payouts

note: aws check skipped: --offline: IAM and CloudTrail were not asked

ok: no findings
"#);
    insta::assert_snapshot!(ledger.run(&["audit", "--offline", "--format", "markdown"]), @r#"
## tpa audit

Period: everything up to 2026-06-01T12:00:00Z. Repository: <tmp>/work-origin.git. 3 grants, 7 records. Ledger tip `<hex>`, trust ref refs/remotes/origin/main.

**0 error(s), 0 warning(s), 0 info**

### Grants

| grant | state | who | role | branch | commit | requested | lasted | ended by | reason |
|---|---|---|---|---|---|---|---|---|---|
| 01JWKZ8X9A0000000000000001 | active | alice@example.com | prod-readonly | hotfix/INC-4211 | `<short>` | 2026-06-01T11:50:00Z | 9m59s |  | INC-4211: fix stuck invoices |
| 01JWKZ8X9A0000000000000003 | failed | alice@example.com | prod-readonly | hotfix/INC-4211 | `<short>` | 2026-06-01T10:00:00Z | - | failed | INC-4209: look at the \\u{1b}\[31mqueue |
| 01JWKZ8X9A0000000000000002 | revoked | alice@example.com | prod-readonly | hotfix/INC-4211 | `<short>` | 2026-06-01T09:00:00Z | 19m59s | merged | INC-4207: replay the failed payouts |

_aws check skipped: --offline: IAM and CloudTrail were not asked_
"#);
}

#[test]
fn who() {
    let ledger = Ledger::new();
    insta::assert_snapshot!(ledger.run(&["who"]), @r#"
WHO                      ACCESS             BRANCH                       LEFT  REASON
alice@example.com        prod-readonly      hotfix/INC-4211            20m00s  INC-4211: fix stuck invoices
"#);
}

//! botocore, the reference that tpa's RDS IAM tokens are compared with.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// Reads a JSON list of cases on stdin and prints botocore's tokens for them as a JSON list.
const BOTOCORE: &str = r#"
import datetime, json, sys
from unittest import mock
import botocore.session

session = botocore.session.get_session()
tokens = []
for case in json.load(sys.stdin):
    client = session.create_client(
        "rds",
        region_name=case["region"],
        aws_access_key_id=case["access_key_id"],
        aws_secret_access_key=case["secret_access_key"],
        aws_session_token=case["session_token"],
    )
    now = datetime.datetime.fromtimestamp(case["epoch"], datetime.timezone.utc).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=now):
        tokens.append(client.generate_db_auth_token(
            DBHostname=case["host"], Port=case["port"], DBUsername=case["user"], Region=case["region"]))
json.dump(tokens, sys.stdout)
"#;

fn botocore_python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: these tests compare against botocore; install it with \
         python3 -m venv .venv && .venv/bin/pip install 'moto[server]' (see .ci/run)",
        python.display()
    );
    python
}

/// botocore's tokens for cases given as JSON objects (host, port, user, region, access_key_id,
/// secret_access_key, session_token, epoch), in order, from one Python process in a sealed
/// environment.
pub fn botocore(input: &[Value]) -> Vec<String> {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(botocore_python())
        .args(["-c", BOTOCORE])
        .env_clear()
        .env("HOME", home.path())
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("PYTHONIOENCODING", "utf-8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child.stdin.take().unwrap().write_all(serde_json::to_string(&input).unwrap().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "botocore failed ({}): {}\nhint: is botocore installed in .venv? (.venv/bin/pip install 'moto[server]')",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("botocore prints a JSON list of tokens")
}

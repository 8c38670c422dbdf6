//! A moto server (an in-memory fake of AWS) shared by every test of the binary, and a tiny Query-API
//! client for setting up what tpa expects to find there (roles, for now).
//!
//! moto routes a request to a service by the credential scope of its Authorization header, and with
//! its auth switched off (the default) it checks nothing else: `call` sends a well-formed but unsigned
//! SigV4 header so that moto knows which service is meant.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The account moto puts every resource in when the access key does not name one.
pub const ACCOUNT_ID: &str = "123456789012";

const INSTALL_HINT: &str =
    "install moto: python3 -m venv .venv && .venv/bin/pip install 'moto[server]' (see .ci/run)";
/// Generous: the first start of moto imports a lot of Python, and CI machines can be slow.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Bounds every request, so a wedged server fails a test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The test binary's moto server. It lives as long as the test binary: a watcher waits on a pipe
/// whose writing end only this process holds, and kills moto when that pipe closes.
pub struct Moto {
    pub addr: SocketAddr,
    /// moto's stdout and stderr.
    pub log: PathBuf,
    _keep_alive: ChildStdin,
    _child: Child,
}

/// Starts moto on first use. A failed start is remembered, so every later test fails at once with
/// the same message instead of waiting out the deadline again.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Result<Moto, String>> = OnceLock::new();
    match MOTO.get_or_init(start_moto) {
        Ok(moto) => moto,
        Err(message) => panic!("{message}"),
    }
}

/// A moto server of the caller's own (not the shared one): for tests that switch IAM enforcement
/// on, which is global to a server. It lives as long as the test binary, as the shared one does.
pub fn start_separate() -> Moto {
    start_moto().unwrap_or_else(|message| panic!("{message}"))
}

/// A name no other caller in this test binary gets (moto lives as long as the binary, so this is
/// unique within moto too). Only characters IAM accepts in role and session names.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The program to run: an explicit override, the project's venv (what CI creates), or PATH.
fn moto_program() -> PathBuf {
    if let Some(program) = std::env::var_os("TPA_TEST_MOTO_SERVER") {
        return program.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    if venv.exists() { venv } else { PathBuf::from("moto_server") }
}

fn start_moto() -> Result<Moto, String> {
    let program = moto_program();
    let dir = tempfile::Builder::new()
        .prefix("tpa-moto-")
        .tempdir()
        .map_err(|e| format!("cannot create moto's temp dir: {e}"))?
        .keep();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    // Another process can take the port between our probe and moto's bind: try a few ports.
    let mut failures = String::new();
    for attempt in 1..=3 {
        let log = dir.join(format!("moto-{attempt}.log"));
        match start_on_free_port(&program, &dir, &log) {
            Ok(moto) => return Ok(moto),
            Err(Failure { message, port_taken: true }) => failures.push_str(&message),
            Err(Failure { message, .. }) => return Err(format!("{message}\n{INSTALL_HINT}")),
        }
    }
    Err(format!("{failures}\n{INSTALL_HINT}"))
}

struct Failure {
    message: String,
    port_taken: bool,
}

fn start_on_free_port(program: &Path, dir: &Path, log: &Path) -> Result<Moto, Failure> {
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let log_file = std::fs::File::create(log).unwrap();
    // A fixed script: its only inputs are positional parameters, never interpolated. The shell
    // becomes moto (exec), so the Child below is moto itself and an early exit shows at once. A
    // background watcher holds the test's pipe (as fd 3: a background job's stdin is /dev/null)
    // and kills moto ($$ is moto after the exec) when the pipe closes, i.e. when the test binary
    // ends, however it ends.
    let script = r#"exec 3<&0
{ cat <&3 >/dev/null; kill "$$" 2>/dev/null; } &
exec "$1" -H 127.0.0.1 -p "$2" 3<&- </dev/null"#;
    let mut command = Command::new("sh");
    command
        .args(["-c", script, "sh"])
        .arg(program)
        .arg(port.to_string())
        // Sealed, so that nothing in the developer's environment (INITIAL_NO_AUTH_ACTION_COUNT,
        // MOTO_*, AWS_*) changes how moto behaves. pyenv's variables only pick the interpreter.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.join("home"))
        .env("LANG", "C.UTF-8")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped())
        // Never the test's own stdout/stderr: a server holding them open would keep CI's pipe open.
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    for key in ["PYENV_ROOT", "PYENV_VERSION"] {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    let mut child = command.spawn().map_err(|e| Failure {
        message: format!("cannot run sh to start {} ({e})", program.display()),
        port_taken: false,
    })?;
    let keep_alive = child.stdin.take().unwrap();
    let mut moto = Moto { addr, log: log.to_owned(), _keep_alive: keep_alive, _child: child };

    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        // Ready means moto answers a real request, not merely that its port accepts.
        let probe =
            query_api(moto.addr, "sts", &[("Action", "GetCallerIdentity"), ("Version", "2011-06-15")]);
        if let Ok((200, _)) = probe {
            return Ok(moto);
        }
        let exited = moto._child.try_wait().unwrap();
        if exited.is_some() || Instant::now() >= deadline {
            // SIGKILL: a hung program may ignore the watcher's SIGTERM, and waiting must not hang.
            let _ = moto._child.kill();
            let _ = moto._child.wait();
            let output = std::fs::read_to_string(log).unwrap_or_default();
            let why = match exited {
                Some(status) => format!("exited ({status})"),
                None => format!("was not ready after {READY_DEADLINE:?} (last probe: {probe:?})"),
            };
            return Err(Failure {
                message: format!("moto server `{}` on {addr} {why}; its log:\n{output}", program.display()),
                port_taken: exited.is_some() && output.contains("in use"),
            });
        }
        // A poll interval, bounded by the deadline above.
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port for moto");
    listener.local_addr().unwrap().port()
}

impl Moto {
    /// What tpa and AWS SDKs take as `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates an IAM role that the account's principals may assume (with session tags and a source
    /// identity, as tpa asks for) for up to 12 hours, and returns its ARN. Role names are global to
    /// the test binary's moto: pass a `unique_name`.
    pub fn create_role(&self, name: &str) -> String {
        let trust_policy = [
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","#,
            &format!(r#""Principal":{{"AWS":"arn:aws:iam::{ACCOUNT_ID}:root"}},"#),
            r#""Action":["sts:AssumeRole","sts:TagSession","sts:SetSourceIdentity"]}]}"#,
        ]
        .concat();
        let (status, body) = self.call(
            "iam",
            &[
                ("Action", "CreateRole"),
                ("Version", "2010-05-08"),
                ("RoleName", name),
                ("AssumeRolePolicyDocument", &trust_policy),
                ("MaxSessionDuration", "43200"),
            ],
        );
        assert_eq!(status, 200, "moto CreateRole {name}: {body}");
        xml_text(&body, "Arn")
            .unwrap_or_else(|| panic!("no <Arn> in moto's CreateRole answer: {body}"))
            .to_owned()
    }

    /// POSTs a form-encoded Query API request (`Action=...&Version=...`) to `service` and returns the
    /// status and body. Panics when moto cannot be reached at all.
    pub fn call(&self, service: &str, form: &[(&str, &str)]) -> (u16, String) {
        query_api(self.addr, service, form)
            .unwrap_or_else(|e| panic!("moto {service} {form:?} at {}: {e}", self.endpoint()))
    }
}

/// A Query API POST (form-encoded `Action=...&Version=...`) to `service` at `addr`, which is moto or a
/// proxy in front of it; the status and body of the answer. Unsigned: moto, with auth off, reads only
/// the service out of the credential scope. Every step is bounded by a timeout.
pub fn query_api(addr: SocketAddr, service: &str, form: &[(&str, &str)]) -> io::Result<(u16, String)> {
    let body = form
        .iter()
        .map(|(key, value)| format!("{}={}", url_encode(key), url_encode(value)))
        .collect::<Vec<_>>()
        .join("&");
    let request = format!(
        "POST / HTTP/1.1\r\n\
         Host: {addr}\r\n\
         Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n\
         Authorization: AWS4-HMAC-SHA256 \
         Credential=AKIAIOSFODNN7EXAMPLE/20260101/us-east-1/{service}/aws4_request, \
         SignedHeaders=content-type;host, Signature=0\r\n\
         Content-Length: {length}\r\n\
         Connection: close\r\n\
         \r\n\
         {body}",
        length = body.len(),
    );
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    parse_response(&response)
}

/// Percent-encodes everything but RFC 3986's unreserved characters, as AWS's Query API expects.
fn url_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The status and body of a whole HTTP/1.1 response read up to the server's close.
fn parse_response(response: &[u8]) -> io::Result<(u16, String)> {
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} in HTTP response: {:?}", String::from_utf8_lossy(response)),
        )
    };
    let head_end = find(response, b"\r\n\r\n").ok_or_else(|| invalid("no end of head"))?;
    let head = std::str::from_utf8(&response[..head_end]).map_err(|_| invalid("non-UTF-8 head"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid("no status code"))?;
    let mut body = response[head_end + 4..].to_vec();
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    };
    if header("Transfer-Encoding").is_some_and(|value| value.eq_ignore_ascii_case("chunked")) {
        body = unchunk(&body).ok_or_else(|| invalid("bad chunked body"))?;
    } else if let Some(length) = header("Content-Length") {
        let length: usize = length.parse().map_err(|_| invalid("bad Content-Length"))?;
        if body.len() < length {
            return Err(invalid("truncated body"));
        }
        body.truncate(length);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn unchunk(mut chunked: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(chunked, b"\r\n")?;
        let size_text = std::str::from_utf8(&chunked[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        chunked = &chunked[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(chunked.get(..size)?);
        chunked = chunked.get(size + 2..)?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// The text of the first `<tag>...</tag>` element: enough for moto's flat, attribute-free answers.
pub fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(&xml[start..end])
}

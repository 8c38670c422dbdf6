//! A PostgreSQL server shared by every test of the binary: a fresh cluster (initdb) in a temp dir,
//! listening on 127.0.0.1 (a free port, TLS offered with a test CA) and on a unix socket in that
//! dir, scram-sha-256 for every connection, every statement logged to a file the tests read.
//!
//! PostgreSQL refuses to run as root, and tests and CI run as root: then initdb and pg_ctl run as the
//! `postgres` user (which Debian's postgresql package creates) through `runuser`.
//!
//! Inside the cluster: the superuser `postgres`, the admin role tpa logs in as (`ops_admin`, with
//! CREATEROLE and pg_signal_backend), and in database `app` a table `invoices` readable through the
//! group role `app_readonly`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use tpa::provider::postgres::{AdminCredentials, PgTarget};
use zeroize::Zeroizing;

pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "superuser-test-password";
pub const ADMIN_USER: &str = "ops_admin";
pub const ADMIN_PASSWORD: &str = "admin-test-password";
pub const DBNAME: &str = "app";
pub const GROUP_ROLE: &str = "app_readonly";

const INSTALL_HINT: &str = "install PostgreSQL's server and client: apt-get install postgresql \
     postgresql-client openssl (see .ci/run), or point TPA_TEST_PG_BINDIR at the directory holding \
     initdb and pg_ctl";
/// Bounds a psql session's wait for its next line, so a wedged session fails a test.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// The test binary's server. A watcher, waiting on a pipe whose writing end only this process
/// holds, stops the server and deletes its data when that pipe closes, i.e. when the test binary
/// ends, however it ends.
pub struct PgServer {
    pub port: u16,
    pub dir: PathBuf,
    pub socket_dir: PathBuf,
    /// The server's log: every statement (log_statement = all) and connection.
    pub log: PathBuf,
    /// The CA that signed the server's certificate (for IP 127.0.0.1 only).
    pub ca_file: PathBuf,
    /// A CA that signed nothing the server has.
    pub other_ca_file: PathBuf,
    bin: PathBuf,
    _keep_alive: ChildStdin,
    _watcher: Child,
}

/// Starts the server on first use. A failed start is remembered, so every later test fails at once
/// with the same message.
pub fn pg() -> &'static PgServer {
    static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
    match SERVER.get_or_init(start) {
        Ok(server) => server,
        Err(message) => panic!("{message}"),
    }
}

/// A `tpa_` role name no other caller in this test binary gets.
pub fn unique_role(label: &str) -> String {
    unique_name(&format!("tpa_{label}"))
}

/// A name (for roles, databases) no other caller in this test binary gets.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}_{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl PgServer {
    /// The server over TCP, without TLS (loopback).
    pub fn target(&self) -> PgTarget {
        PgTarget { host: "127.0.0.1".into(), port: self.port, dbname: DBNAME.into(), ca_file: None }
    }

    pub fn admin(&self) -> AdminCredentials {
        AdminCredentials { user: ADMIN_USER.into(), password: Some(Zeroizing::new(ADMIN_PASSWORD.into())) }
    }

    /// Runs SQL as the superuser (over the unix socket) and returns psql's unaligned, tuples-only
    /// output. Panics when psql fails.
    pub fn superuser_sql(&self, sql: &str) -> String {
        self.superuser_sql_in(DBNAME, sql)
    }

    /// `superuser_sql` in another database.
    pub fn superuser_sql_in(&self, dbname: &str, sql: &str) -> String {
        self.try_superuser_sql(dbname, sql).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_superuser_sql(&self, dbname: &str, sql: &str) -> Result<String, String> {
        let output = self
            .psql_command(SUPERUSER, SUPERUSER_PASSWORD, &self.socket_dir.to_string_lossy(), dbname)
            .args(["-c", sql])
            .output()
            .map_err(|e| format!("cannot run psql: {e}\n{INSTALL_HINT}"))?;
        if !output.status.success() {
            return Err(format!(
                "psql as superuser failed on {sql:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(String::from_utf8(output.stdout).unwrap())
    }

    /// One psql run over TCP as `user`: its status and output, failures included.
    pub fn psql(&self, user: &str, password: &str, sql: &str) -> Output {
        self.psql_command(user, password, "127.0.0.1", DBNAME).args(["-c", sql]).output().expect("run psql")
    }

    /// A psql session over TCP as `user`, kept open and fed through its stdin.
    pub fn session(&self, user: &str, password: &str) -> PsqlSession {
        let mut child = self
            .psql_command(user, password, "127.0.0.1", DBNAME)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        let stdin = child.stdin.take();
        let lines = reader(child.stdout.take().unwrap());
        let errors = reader(child.stderr.take().unwrap());
        PsqlSession { child, stdin, lines, errors }
    }

    /// What the server has logged so far.
    pub fn log_contents(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap()).into_owned()
    }

    /// The real psql, sealed: PGPASSWORD in this child's environment only, nothing else from ours.
    fn psql_command(&self, user: &str, password: &str, host: &str, dbname: &str) -> Command {
        let psql = self.bin.join("psql");
        let mut command = Command::new(if psql.exists() { psql } else { PathBuf::from("psql") });
        command
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", host, "-p", &self.port.to_string(), "-U", user, "-d", dbname])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("LANG", "C")
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null());
        command
    }
}

/// An open psql session.
pub struct PsqlSession {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    errors: Receiver<String>,
}

impl PsqlSession {
    /// Sends one statement and waits for one line of its output; None when psql ends first.
    pub fn query_line(&mut self, sql: &str) -> Option<String> {
        let stdin = self.stdin.as_mut().expect("session still open");
        if writeln!(stdin, "{sql}").and_then(|()| stdin.flush()).is_err() {
            return None;
        }
        match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!("psql answered nothing within {LINE_TIMEOUT:?}"),
        }
    }

    /// Closes stdin and waits for psql to end: its exit code and everything it wrote to stderr.
    pub fn finish(mut self) -> (Option<i32>, String) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        let stderr: Vec<String> = self.errors.iter().collect();
        (status.code(), stderr.join("\n"))
    }
}

impl Drop for PsqlSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A thread forwarding the lines of `stream`; the channel closes with the stream.
fn reader(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

fn start() -> Result<PgServer, String> {
    let bin =
        bin_dir().ok_or_else(|| format!("cannot find PostgreSQL's initdb and pg_ctl\n{INSTALL_HINT}"))?;
    let as_root = run_text(Command::new("id").arg("-u"))? == "0";
    let dir = tempfile::Builder::new()
        .prefix("tpa-pg-")
        .tempdir_in(temp_base(as_root)?)
        .map_err(|e| format!("cannot create PostgreSQL's temp dir: {e}"))?
        .keep();
    let data = dir.join("data");
    let socket_dir = dir.join("socket");
    let log = dir.join("server.log");
    std::fs::create_dir(&socket_dir).unwrap();
    let password_file = dir.join("superuser-password");
    std::fs::write(&password_file, SUPERUSER_PASSWORD).unwrap();
    let tls = make_certificates(&dir)?;
    if as_root {
        // The cluster, its socket, its log and its TLS key belong to the user that runs it.
        run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir)).map_err(|e| {
            format!("{e}\nPostgreSQL cannot run as root; it needs the `postgres` user\n{INSTALL_HINT}")
        })?;
    }
    let as_server = |program: &str| {
        let program = bin.join(program);
        if as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    };

    run(as_server("initdb")
        .arg("-D")
        .arg(&data)
        .args(["-U", SUPERUSER, "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"])
        .arg(format!("--pwfile={}", password_file.display())))
    .map_err(|e| format!("initdb failed: {e}\n{INSTALL_HINT}"))?;

    // From here on the cluster exists: the watcher stops it (if running) and deletes it, keeping
    // the log, when the test binary ends.
    let script = r#"data=$1; shift
cat >/dev/null
"$@" >/dev/null 2>&1
rm -rf "$data""#;
    let mut watcher = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(&data)
        .args(as_server("pg_ctl").get_program_and_args())
        .args(["-D"])
        .arg(&data)
        .args(["-m", "immediate", "-w", "stop"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the watcher shell: {e}"))?;
    let keep_alive = watcher.stdin.take().unwrap();

    let settings = format!(
        "\nlisten_addresses = '127.0.0.1'\n\
         unix_socket_directories = '{socket}'\n\
         log_statement = 'all'\n\
         log_connections = on\n\
         log_disconnections = on\n\
         ssl = on\n\
         ssl_cert_file = '{cert}'\n\
         ssl_key_file = '{key}'\n\
         fsync = off\n\
         max_connections = 100\n",
        socket = socket_dir.display(),
        cert = tls.cert.display(),
        key = tls.key.display(),
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .and_then(|mut conf| conf.write_all(settings.as_bytes()))
        .map_err(|e| format!("cannot configure the cluster: {e}"))?;

    // Another process can take the port between our probe and the server's bind: try a few.
    let mut port = 0;
    let mut failures = String::new();
    for _ in 0..3 {
        port = free_port();
        let started = run(as_server("pg_ctl").arg("-D").arg(&data).arg("-l").arg(&log).args([
            "-o",
            &format!("-p {port}"),
            "-w",
            "-t",
            "60",
            "start",
        ]));
        match started {
            Ok(_) => {
                failures.clear();
                break;
            }
            Err(e) => {
                let server_log = std::fs::read_to_string(&log).unwrap_or_default();
                failures = format!("pg_ctl start failed: {e}\nserver log {}:\n{server_log}", log.display());
                if !server_log.contains("could not bind") {
                    break;
                }
            }
        }
    }
    if !failures.is_empty() {
        return Err(format!("{failures}\n{INSTALL_HINT}"));
    }

    let server = PgServer {
        port,
        dir: dir.clone(),
        socket_dir,
        log,
        ca_file: tls.ca,
        other_ca_file: tls.other_ca,
        bin,
        _keep_alive: keep_alive,
        _watcher: watcher,
    };
    let setup = [
        format!("CREATE ROLE {ADMIN_USER} LOGIN CREATEROLE PASSWORD '{ADMIN_PASSWORD}'"),
        format!("GRANT pg_signal_backend TO {ADMIN_USER}"),
        format!("CREATE ROLE {GROUP_ROLE} NOLOGIN"),
        // PostgreSQL 16+ lets a CREATEROLE role grant only roles it has ADMIN OPTION on.
        format!("GRANT {GROUP_ROLE} TO {ADMIN_USER} WITH ADMIN OPTION"),
        "CREATE TABLE invoices (id int PRIMARY KEY, status text NOT NULL)".to_owned(),
        "INSERT INTO invoices VALUES (1, 'stuck'), (2, 'paid')".to_owned(),
        format!("GRANT SELECT ON invoices TO {GROUP_ROLE}"),
    ];
    // The database first, from the always-present `postgres` database.
    server.try_superuser_sql("postgres", &format!("CREATE DATABASE {DBNAME}"))?;
    for sql in setup {
        server.try_superuser_sql(DBNAME, &sql)?;
    }
    Ok(server)
}

/// The directory of initdb and pg_ctl: TPA_TEST_PG_BINDIR, `pg_config --bindir`, Debian's
/// /usr/lib/postgresql/<newest version>/bin, or PATH.
fn bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("TPA_TEST_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    if let Ok(dir) = run_text(Command::new("pg_config").arg("--bindir")) {
        let dir = PathBuf::from(dir);
        if has_tools(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| has_tools(dir))
}

/// Where the cluster's temp dir goes: the system's temp dir, unless (as root) the `postgres` user
/// could not reach into it, in which case /tmp.
fn temp_base(as_root: bool) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let traversable = |dir: &Path| {
        dir.ancestors().all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    };
    let base = std::env::temp_dir();
    if !as_root || traversable(&base) {
        return Ok(base);
    }
    let tmp = PathBuf::from("/tmp");
    if traversable(&tmp) {
        return Ok(tmp);
    }
    Err(format!("neither {} nor /tmp is reachable for the postgres user", base.display()))
}

struct Certificates {
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A test CA, the server's certificate for IP 127.0.0.1 signed by it, and an unrelated CA.
fn make_certificates(dir: &Path) -> Result<Certificates, String> {
    let tls = dir.join("tls");
    std::fs::create_dir(&tls).unwrap();
    let openssl = |args: &[&str]| {
        run(Command::new("openssl").args(args).current_dir(&tls))
            .map_err(|e| format!("openssl {}: {e}\n{INSTALL_HINT}", args.first().unwrap_or(&"")))
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for (name, cn) in [("ca", "tpa test CA"), ("other-ca", "tpa unrelated CA")] {
        let (key, pem, subject) = (format!("{name}.key"), format!("{name}.pem"), format!("/CN={cn}"));
        let mut args = vec!["req", "-x509", "-days", "3", "-subj", &subject, "-keyout", &key, "-out", &pem];
        args.extend(ec);
        args.extend([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        openssl(&args)?;
    }
    let mut args = vec!["req", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr"];
    args.extend(ec);
    openssl(&args)?;
    std::fs::write(
        tls.join("server.ext"),
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ])?;
    // PostgreSQL refuses a key that others can read.
    std::fs::set_permissions(tls.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();
    Ok(Certificates {
        ca: tls.join("ca.pem"),
        other_ca: tls.join("other-ca.pem"),
        cert: tls.join("server.crt"),
        key: tls.join("server.key"),
    })
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port for PostgreSQL");
    listener.local_addr().unwrap().port()
}

/// Runs a setup command to its end, with no stdin; its stdout, or why it failed.
fn run(command: &mut Command) -> Result<String, String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))?;
    if !output.status.success() {
        return Err(format!(
            "{:?} {:?} failed ({}): {}{}",
            command.get_program(),
            command.get_args().collect::<Vec<_>>(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run_text(command: &mut Command) -> Result<String, String> {
    run(command).map(|text| text.trim().to_owned())
}

trait ProgramAndArgs {
    fn get_program_and_args(&self) -> Vec<std::ffi::OsString>;
}

impl ProgramAndArgs for Command {
    fn get_program_and_args(&self) -> Vec<std::ffi::OsString> {
        std::iter::once(self.get_program().to_owned()).chain(self.get_args().map(ToOwned::to_owned)).collect()
    }
}

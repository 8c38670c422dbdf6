//! A tiny HTTP/1.1 webhook receiver on 127.0.0.1 for the notify tests: it records every request
//! (method, path with query, headers, body) and answers with a scripted sequence of replies, then
//! with a fallback reply (200 unless changed). Keep-alive connections are served request after
//! request, as a real server would, so retries over a pooled connection are seen too.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the receiver answers one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// This status, with a short text body.
    Status(u16),
    /// This status and body.
    Body(u16, String),
    /// A redirect (301, 302, 307, 308...) to `location`.
    Redirect(u16, String),
    /// Read the request, then never answer (until the client gives up or the receiver is dropped).
    Hang,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as on the request line.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("the body is UTF-8")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

pub struct Webhook {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    script: Mutex<VecDeque<Reply>>,
    fallback: Mutex<Reply>,
    requests: Mutex<Vec<Request>>,
    connections: AtomicUsize,
    closing: AtomicBool,
    /// Clones of live connections' sockets, shut down on drop to free hanging handlers.
    sockets: Mutex<Vec<TcpStream>>,
}

impl Webhook {
    /// Answers with `script` in order, then 200.
    pub fn start(script: impl IntoIterator<Item = Reply>) -> Webhook {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the webhook's port");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            script: Mutex::new(script.into_iter().collect()),
            fallback: Mutex::new(Reply::Status(200)),
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept(listener, shared))
        };
        Webhook { addr, shared, acceptor: Some(acceptor) }
    }

    /// Answers every request with `reply`.
    pub fn always(reply: Reply) -> Webhook {
        let webhook = Webhook::start([]);
        webhook.set_fallback(reply);
        webhook
    }

    /// Replaces what is answered once the script is used up.
    pub fn set_fallback(&self, reply: Reply) {
        *self.shared.fallback.lock().unwrap() = reply;
    }

    /// Appends to the script.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
    }

    /// `http://127.0.0.1:<port><path_and_query>`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every complete request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// TCP connections accepted so far: zero means nobody even connected.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` connections were accepted (the acceptor counts them on its own
    /// thread); false if that has not happened within 10 s.
    pub fn saw_connections(&self, n: usize) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.connections() < n {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for socket in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

fn accept(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            shared.sockets.lock().unwrap().push(clone);
        }
        let shared = shared.clone();
        std::thread::spawn(move || {
            let _ = serve(stream, &shared);
        });
    }
}

/// Serves requests on one connection until the client closes it (or a reply hangs).
fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(request) = read_request(&mut reader)? else { return Ok(()) };
        shared.requests.lock().unwrap().push(request);
        let reply = shared.script.lock().unwrap().pop_front();
        let reply = reply.unwrap_or_else(|| shared.fallback.lock().unwrap().clone());
        let (status, extra, body) = match reply {
            Reply::Status(status) => (status, String::new(), format!("status {status}")),
            Reply::Body(status, body) => (status, String::new(), body),
            Reply::Redirect(status, location) => (status, format!("Location: {location}\r\n"), String::new()),
            Reply::Hang => {
                // Keep the connection open, answering nothing, until the client hangs up.
                let mut sink = [0u8; 1024];
                while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
                return Ok(());
            }
        };
        write!(
            writer,
            "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            reason(status),
            body.len()
        )?;
        writer.flush()?;
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Some(Request { method, path, headers, body }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

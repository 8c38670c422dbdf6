//! A TCP proxy that tests put between tpa and moto to inject faults. moto keeps its state in memory,
//! so an outage is simulated here rather than by stopping moto.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy does with connections accepted from now on. A connection keeps the mode it was
/// accepted in: the tpa run under test sees one consistent behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Pass bytes both ways between the client and the upstream.
    Forward,
    /// Not listening: connecting fails with ECONNREFUSED, as when the service is unreachable.
    Down,
    /// Accept and read, but never answer nor close (until the proxy is dropped): a stalled service.
    Hang,
    /// Answer every HTTP request with this response, without contacting the upstream.
    Respond { status: u16, body: String, content_type: &'static str },
}

/// The proxy's port is bound once, by number, and stays bound until the proxy is dropped: while
/// `Down` the socket stops listening (Linux turns a listening socket that is shut down back into a
/// bound, closed one), so connections are refused by the kernel, and the port is never free for
/// another test's listener (the kernel hands out no bound port to a bind of port 0) nor for an
/// outgoing connection's ephemeral port.
pub struct Proxy {
    addr: SocketAddr,
    socket: socket2::Socket,
    shared: Arc<Shared>,
    /// The accepting thread; `None` while `Down`.
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    upstream: SocketAddr,
    mode: Mutex<Mode>,
    connections: AtomicUsize,
    /// Tells the accepting thread that its accept failing is the proxy stopping, not an error.
    closing: AtomicBool,
    next_id: AtomicU64,
    sockets: Mutex<Sockets>,
    handlers: Mutex<Vec<JoinHandle<()>>>,
}

/// The sockets of live connections, so that dropping the proxy can unblock every thread on them.
#[derive(Default)]
struct Sockets {
    stopped: bool,
    by_connection: HashMap<u64, Vec<TcpStream>>,
}

impl Proxy {
    /// A proxy in `Forward` mode on a free port of 127.0.0.1.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let (socket, addr) = bind_owned_port();
        let shared = Arc::new(Shared {
            upstream,
            mode: Mutex::new(Mode::Forward),
            connections: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            sockets: Mutex::new(Sockets::default()),
            handlers: Mutex::new(Vec::new()),
        });
        let acceptor = spawn_acceptor(listen(&socket), shared.clone());
        Proxy { addr, socket, shared, acceptor: Mutex::new(Some(acceptor)) }
    }

    /// What tpa takes as `AWS_ENDPOINT_URL`. The same for the proxy's whole life, `Down` included.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes effect for connections made after it returns: in particular, once `set_mode(Down)`
    /// returns the port refuses connections, and once it is left the port accepts them again.
    pub fn set_mode(&self, mode: Mode) {
        let mut acceptor = self.acceptor.lock().unwrap();
        let listen = mode != Mode::Down;
        *self.shared.mode.lock().unwrap() = mode;
        match (acceptor.take(), listen) {
            (Some(running), false) => self.stop_accepting(running),
            (None, true) => *acceptor = Some(self.listen_again()),
            (running, _) => *acceptor = running,
        }
    }

    /// Connections accepted since the start (not counting those refused while `Down`): zero means
    /// the client never reached the "service".
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Stops listening, synchronously: shutting a listening socket down fails its blocked accept
    /// (EINVAL) and leaves it bound and closed, so when this returns the port refuses connections.
    /// Connections still in the backlog are reset by the kernel, never half-accepted.
    fn stop_accepting(&self, acceptor: JoinHandle<()>) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.socket.shutdown(Shutdown::Read).expect("stop the proxy's listener");
        acceptor.join().expect("the proxy's accepting thread panicked");
    }

    fn listen_again(&self) -> JoinHandle<()> {
        self.shared.closing.store(false, Ordering::SeqCst);
        spawn_acceptor(listen(&self.socket), self.shared.clone())
    }
}

/// A socket bound to a port of 127.0.0.1 by number. Bound to port 0 the kernel could release the
/// port when the socket stops listening; bound by number it keeps it. The number comes from a
/// probe socket; if another process takes it in between, try another.
fn bind_owned_port() -> (socket2::Socket, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    for _ in 0..50 {
        let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("find a free port");
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("create the proxy's socket");
        // Connections it accepted before going Down still hold the port (ESTABLISHED or TIME_WAIT):
        // listening again beside them needs SO_REUSEADDR, as std's own listeners have.
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        if socket.bind(&addr.into()).is_ok() {
            return (socket, addr);
        }
    }
    panic!("the proxy found no port it could bind");
}

/// Starts (or restarts) listening and returns a listener for the accepting thread.
fn listen(socket: &socket2::Socket) -> TcpListener {
    socket.listen(128).expect("the proxy's socket listens");
    socket.try_clone().expect("clone the proxy's socket").into()
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Connections are cut below; the port itself is released when `socket` drops, after this.
        if let Some(acceptor) = self.acceptor.get_mut().unwrap().take() {
            self.stop_accepting(acceptor);
        }
        {
            let mut sockets = self.shared.sockets.lock().unwrap();
            sockets.stopped = true;
            for socket in sockets.by_connection.values().flatten() {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
        let handlers = std::mem::take(&mut *self.shared.handlers.lock().unwrap());
        for handler in handlers {
            let _ = handler.join();
        }
    }
}

fn spawn_acceptor(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for incoming in listener.incoming() {
            let client = match incoming {
                Err(_) if shared.closing.load(Ordering::SeqCst) => break,
                Ok(_) if shared.closing.load(Ordering::SeqCst) => break,
                Ok(client) => client,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("test proxy: accept failed, no longer listening: {e}");
                    break;
                }
            };
            let mode = shared.mode.lock().unwrap().clone();
            if mode == Mode::Down {
                // Accepted while switching to Down: close it, as if refused.
                continue;
            }
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
            let connection_shared = shared.clone();
            let handler = std::thread::spawn(move || {
                let shared = connection_shared;
                if shared.register(id, &client) {
                    let _ = match mode {
                        Mode::Forward => forward(&shared, id, &client),
                        Mode::Hang => io::copy(&mut &client, &mut io::sink()).map(drop),
                        Mode::Respond { status, body, content_type } => {
                            respond(&client, status, &body, content_type)
                        }
                        Mode::Down => unreachable!("Down connections are not handled"),
                    };
                }
                shared.sockets.lock().unwrap().by_connection.remove(&id);
            });
            let mut handlers = shared.handlers.lock().unwrap();
            handlers.retain(|handler| !handler.is_finished());
            handlers.push(handler);
        }
    })
}

impl Shared {
    /// Records a connection's socket for `Drop` to cut. False when the proxy is already stopping
    /// (the socket is then cut at once), so no thread can start blocking after `Drop` swept.
    fn register(&self, id: u64, socket: &TcpStream) -> bool {
        let mut sockets = self.sockets.lock().unwrap();
        let Ok(clone) = socket.try_clone() else { return false };
        if sockets.stopped {
            let _ = socket.shutdown(Shutdown::Both);
            return false;
        }
        sockets.by_connection.entry(id).or_default().push(clone);
        true
    }
}

fn forward(shared: &Shared, id: u64, client: &TcpStream) -> io::Result<()> {
    // Upstream unreachable: closing the client is the closest a TCP proxy can get to that.
    let upstream = TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT)?;
    if !shared.register(id, &upstream) {
        return Ok(());
    }
    // Each direction ends at its EOF and passes the half-close on, so HTTP keep-alive and
    // "Connection: close" behave as without the proxy.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _ = io::copy(&mut &upstream, &mut &*client);
            let _ = client.shutdown(Shutdown::Write);
        });
        let _ = io::copy(&mut &*client, &mut &upstream);
        let _ = upstream.shutdown(Shutdown::Write);
    });
    Ok(())
}

/// Answers each request of the connection with the canned response, after reading all of it (head
/// and Content-Length body) so that the next request on a kept-alive connection parses.
fn respond(client: &TcpStream, status: u16, body: &str, content_type: &str) -> io::Result<()> {
    let mut reader = BufReader::new(client);
    loop {
        let mut content_length = 0;
        let mut framed = true;
        let mut close = false;
        let mut expects_continue = false;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else { continue };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_ascii_lowercase());
            match name.as_str() {
                "content-length" => content_length = value.parse().unwrap_or(0),
                "transfer-encoding" => framed = false,
                "connection" => close = value == "close",
                "expect" => expects_continue = value == "100-continue",
                _ => {}
            }
        }
        if expects_continue {
            (&*client).write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        // A body of unknown length (chunked) cannot be skipped without parsing it: answer and close.
        if framed {
            io::copy(&mut (&mut reader).take(content_length), &mut io::sink())?;
        }
        let close = close || !framed;
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\n\
             Content-Type: {content_type}\r\n\
             Content-Length: {length}\r\n\
             {connection}\r\n\
             {body}",
            reason = reason_phrase(status),
            length = body.len(),
            connection = if close { "Connection: close\r\n" } else { "" },
        );
        (&*client).write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

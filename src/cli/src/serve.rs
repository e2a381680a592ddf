//! A small HTTP/1.1 server for what zmtrace serves to a local browser or scraper: the page of
//! `zmtrace view --serve`, and a running program's heap profiles for scrapers (`zmtrace run
//! --serve`, [`crate::scrape`]). It is shaped by what it must
//! never do, since whatever it serves holds a program's stacks and command line:
//!
//! - listen anywhere but the loopback interface unless told to ([`Server::bind_loopback`];
//!   [`Server::bind`] only for an address the user gave), or answer a request
//!   whose `Host` is not this address (a web page of another site cannot read it through DNS
//!   rebinding: its requests name that site);
//! - let one client's request grow without bound: the request head is read into a buffer of
//!   [`MAX_HEAD`] bytes, and must arrive whole within [`HEAD_TIMEOUT`], else the answer is 431 or
//!   408 and the connection is closed; request bodies are refused;
//! - let one client hold up the others: each connection has a thread, up to [`MAX_CONNECTIONS`]
//!   at once (more are answered 503 at once, never queued behind a slow one).
//!
//! Requests are parsed by `httparse` (hyper's parser). One request per connection (each answer
//! says `Connection: close`), GET and HEAD only. [`Server::serve`] returns after
//! [`Shutdown::stop`], once the connections in flight have ended.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// What a handler is given: the method, and the target's path (without its `?query`).
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
}

/// What a handler answers.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Arc<[u8]>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Arc<[u8]>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: &str) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body.as_bytes())
    }
}

pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// POST requests go to the handler too ([`Server::allow_post`]).
    post: bool,
}

/// Stops a [`Server`] from another thread.
#[derive(Clone)]
pub struct Shutdown {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Shutdown {
    /// Makes [`Server::serve`] return (after the connections in flight).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

impl Server {
    /// Listens on 127.0.0.1 at `port` (0: a free one).
    pub fn bind_loopback(port: u16) -> std::io::Result<Server> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
        let addr = listener.local_addr()?;
        Ok(Server {
            listener,
            addr,
            stop: Arc::new(AtomicBool::new(false)),
            post: false,
        })
    }

    /// Listens at `addr` (`zmtrace run --serve`: loopback unless the user names another
    /// address).
    pub fn bind(addr: SocketAddr) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        Ok(Server {
            listener,
            addr,
            stop: Arc::new(AtomicBool::new(false)),
            post: false,
        })
    }

    /// Hands POST requests to the handler as well. Their body is never read (it is drained
    /// and dropped after the answer, as an oversized head is): pprof POSTs the addresses it wants
    /// named to `/debug/pprof/symbol`, and has its answer without us reading them.
    pub fn allow_post(mut self) -> Server {
        self.post = true;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown(&self) -> Shutdown {
        Shutdown {
            addr: self.addr,
            stop: self.stop.clone(),
        }
    }

    /// Serves until [`Shutdown::stop`]; `handler` answers each well-formed GET or HEAD.
    pub fn serve<H>(self, handler: H) -> std::io::Result<()>
    where
        H: Fn(&Request) -> Response + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        let active = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for conn in self.listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            // A client that goes away mid-request is its own business.
            let Ok(conn) = conn else { continue };
            threads.retain(|t: &std::thread::JoinHandle<()>| !t.is_finished());
            if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::AcqRel);
                let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = respond(
                    conn,
                    false,
                    &Response::text(503, "too many connections; try again\n"),
                );
                continue;
            }
            let (handler, mine, addr, post) =
                (handler.clone(), active.clone(), self.addr, self.post);
            let spawned = std::thread::Builder::new()
                .name("zmtrace-http".into())
                .spawn(move || {
                    let _ = answer(conn, addr, post, &*handler);
                    mine.fetch_sub(1, Ordering::AcqRel);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(_) => {
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    }
}

/// Reads one request head (bounded in size and time), answers it, closes.
fn answer(
    mut conn: TcpStream,
    addr: SocketAddr,
    post: bool,
    handler: &dyn Fn(&Request) -> Response,
) -> std::io::Result<()> {
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut buf = [0u8; MAX_HEAD];
    let mut len = 0;
    let request = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return respond(conn, false, &Response::text(408, "request timeout\n"));
        }
        conn.set_read_timeout(Some(left))?;
        let n = match conn.read(&mut buf[len..]) {
            Ok(0) => return Ok(()), // closed before a whole request
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return respond(conn, false, &Response::text(408, "request timeout\n"));
            }
            Err(e) => return Err(e),
        };
        len += n;
        match parse(&buf[..len], addr, post) {
            Ok(Some(r)) => break r,
            Ok(None) if len == buf.len() => {
                return respond(
                    conn,
                    false,
                    &Response::text(431, "request head too large\n"),
                );
            }
            Ok(None) => {}
            Err(status) => {
                return respond(conn, false, &Response::text(status, "bad request\n"));
            }
        }
    };
    let head_only = request.method == "HEAD";
    let response = if request.method == "GET" || head_only || (post && request.method == "POST") {
        handler(&request)
    } else {
        Response::text(405, "only GET and HEAD\n")
    };
    respond(conn, head_only, &response)
}

/// The request, if its head is complete; an error status if it is not acceptable.
fn parse(data: &[u8], addr: SocketAddr, post: bool) -> Result<Option<Request>, u16> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(data) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(431),
        Err(_) => return Err(400),
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    // A page of another site that got its name resolved to 127.0.0.1 sends its own name here.
    // Bound elsewhere (an address the user gave `run --serve`, for a scraper on another host),
    // a Host that is an IP literal with our port is accepted too: a rebinding page always sends
    // a name, never an address.
    let host_ok = header("host").is_some_and(|h| {
        let h = std::str::from_utf8(h).unwrap_or("");
        let port = addr.port();
        [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ]
        .iter()
        .any(|ok| h.eq_ignore_ascii_case(ok))
            || (!addr.ip().is_loopback() && h.parse::<SocketAddr>().is_ok_and(|a| a.port() == port))
    });
    if !host_ok {
        return Err(421);
    }
    let is_post = post && req.method == Some("POST");
    if (!is_post && header("content-length").is_some_and(|v| v != b"0"))
        || header("transfer-encoding").is_some()
    {
        return Err(413); // nothing served here reads a body
    }
    let target = req.path.unwrap_or("/");
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(Some(Request {
        method: req.method.unwrap_or("").to_owned(),
        path: path.to_owned(),
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn respond(mut conn: TcpStream, head_only: bool, r: &Response) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    )?;
    if !head_only {
        conn.write_all(&r.body)?;
    }
    conn.flush()?;
    // Our side ends here. Whatever the client still sends (the rest of an oversized head) is
    // read and dropped for a moment: closing with unread data would reset the connection, and
    // the client could lose the answer.
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < (1 << 20) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match conn.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:4000".parse().unwrap()
    }

    #[test]
    fn parses_a_complete_head_and_waits_for_a_partial_one() {
        let r = parse(
            b"GET /a?b=1 HTTP/1.1\r\nHost: 127.0.0.1:4000\r\n\r\n",
            addr(),
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/a"));
        assert!(parse(b"GET / HTTP/1.1\r\nHost: 127.0.0", addr(), false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn refuses_other_hosts_bodies_and_garbage() {
        let head = |h: &str| format!("GET / HTTP/1.1\r\n{h}\r\n\r\n");
        assert_eq!(
            parse(head("Host: evil.example:4000").as_bytes(), addr(), false).err(),
            Some(421)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n", addr(), false).err(),
            Some(421)
        );
        assert!(parse(head("Host: localhost:4000").as_bytes(), addr(), false).is_ok());
        // Bound to another address: an IP literal with our port, never a name.
        let any: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        assert!(parse(head("Host: 10.1.2.3:4000").as_bytes(), any, false).is_ok());
        assert_eq!(
            parse(head("Host: evil.example:4000").as_bytes(), any, false).err(),
            Some(421)
        );
        assert_eq!(
            parse(head("Host: 10.1.2.3:4001").as_bytes(), any, false).err(),
            Some(421)
        );
        assert_eq!(
            parse(
                head("Host: localhost:4000\r\nContent-Length: 5").as_bytes(),
                addr(),
                false
            )
            .err(),
            Some(413)
        );
        // A POST's body is left unread where POSTs are allowed, refused elsewhere.
        let post = b"POST /debug/pprof/symbol HTTP/1.1\r\nHost: localhost:4000\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(parse(post, addr(), false).err(), Some(413));
        assert_eq!(parse(post, addr(), true).unwrap().unwrap().method, "POST");
        assert_eq!(
            parse(b"\x01\x02 / HTTP/1.1\r\n\r\n", addr(), false).err(),
            Some(400)
        );
    }
}

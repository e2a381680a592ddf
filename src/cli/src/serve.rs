//! The HTTP server for what zmtrace serves to a local browser or scraper: the page of
//! `zmtrace view --serve`, and a running program's heap profiles for scrapers (`zmtrace run
//! --serve`, [`crate::scrape`]). HTTP itself is hyper's (its HTTP/1 server, on a
//! single-threaded tokio runtime that lives as long as [`Server::serve`]); this module is the
//! policy around it, shaped by what it must never do, since whatever it serves holds a program's
//! stacks and command line:
//!
//! - listen anywhere but the loopback interface unless told to ([`Server::bind_loopback`];
//!   [`Server::bind`] only for an address the user gave), or answer a request whose `Host` is
//!   not this address (a web page of another site cannot read it through DNS rebinding: its
//!   requests name that site) — checked here, before the handler ([`check`]);
//! - let one client's request grow without bound: hyper reads the request head into a buffer of
//!   at most [`MAX_HEAD`] bytes (its `max_buf_size`/`max_header_size`: 431 beyond) and closes a
//!   connection whose head has not arrived whole within [`HEAD_TIMEOUT`] (its
//!   `header_read_timeout`); request bodies are refused (413, here) and never read;
//! - let one client hold up the others: each connection is a task of its own, up to
//!   [`MAX_CONNECTIONS`] at once; more are answered 503 at once, never queued behind a slow one
//!   (hyper has no connection cap: the count is kept here, in the accept loop). The handler runs
//!   on tokio's blocking pool, so a slow one (a replay of a large dump) stalls no other
//!   connection.
//!
//! One request per connection (hyper's keep-alive is off: each answer says `Connection:
//! close`), GET and HEAD only (hyper sends no body to a HEAD). [`Server::serve`] returns after
//! [`Shutdown::stop`], once the connections in flight have ended.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;

/// The largest request head (request line and headers) read: hyper's smallest `max_buf_size`.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to take the answer. hyper has no write timeout: the whole connection
/// gets [`HEAD_TIMEOUT`] plus this, then is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Connections being answered 503 at once; beyond them a connection is closed unanswered (a
/// flood of connections costs a bounded number of tasks).
const MAX_REFUSING: usize = 64;
/// How long a refused connection is given to send its head and take the 503.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Headers a request may have (hyper answers 431 to more).
const MAX_HEADERS: usize = 64;

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
    /// More headers (names in lower case).
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Arc<[u8]>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// With one more header; a value that cannot be a header's is left out.
    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }

    pub fn text(status: u16, body: &str) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body.as_bytes())
    }

    fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let mut r = hyper::Response::new(Full::new(Bytes::from_owner(self.body)));
        *r.status_mut() = hyper::StatusCode::from_u16(self.status)
            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(CONNECTION, HeaderValue::from_static("close"));
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        r
    }
}

pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    stop: Arc<Stop>,
    /// POST requests go to the handler too ([`Server::allow_post`]).
    post: bool,
}

#[derive(Default)]
struct Stop {
    stopped: AtomicBool,
    /// Wakes the accept loop (`notify_one` keeps a permit if it is not waiting yet).
    wake: tokio::sync::Notify,
}

/// Stops a [`Server`] from another thread.
#[derive(Clone)]
pub struct Shutdown {
    stop: Arc<Stop>,
}

impl Shutdown {
    /// Makes [`Server::serve`] return (after the connections in flight).
    pub fn stop(&self) {
        self.stop.stopped.store(true, Ordering::SeqCst);
        self.stop.wake.notify_one();
    }
}

impl Server {
    /// Listens on 127.0.0.1 at `port` (0: a free one).
    pub fn bind_loopback(port: u16) -> std::io::Result<Server> {
        Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    /// Listens at `addr` (`zmtrace run --serve`: loopback unless the user names another
    /// address). The socket is bound here, before any runtime exists, so that a taken port
    /// fails at once.
    pub fn bind(addr: SocketAddr) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        Ok(Server {
            listener,
            addr,
            stop: Arc::default(),
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
            stop: self.stop.clone(),
        }
    }

    /// Serves until [`Shutdown::stop`]; `handler` answers each well-formed GET or HEAD.
    pub fn serve<H>(self, handler: H) -> std::io::Result<()>
    where
        H: Fn(&Request) -> Response + Send + Sync + 'static,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(self.accept(Arc::new(handler)))
    }

    async fn accept<H>(self, handler: Arc<H>) -> std::io::Result<()>
    where
        H: Fn(&Request) -> Response + Send + Sync + 'static,
    {
        self.listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let active = Arc::new(AtomicUsize::new(0));
        let refusing = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        let (addr, post) = (self.addr, self.post);
        while !self.stop.stopped.load(Ordering::SeqCst) {
            let conn = tokio::select! {
                _ = self.stop.wake.notified() => break,
                conn = listener.accept() => conn,
            };
            while tasks.try_join_next().is_some() {}
            let stream = match conn {
                Ok((stream, _)) => stream,
                // Out of descriptors, or a client gone before its accept: wait a moment rather
                // than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if let Some(slot) = Slot::take(&active, MAX_CONNECTIONS) {
                let handler = handler.clone();
                tasks.spawn(async move {
                    let _slot = slot;
                    let service = service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(answer(req, addr, post, handler).await) }
                    });
                    connection(stream, HEAD_TIMEOUT, HEAD_TIMEOUT + WRITE_TIMEOUT, service).await;
                });
            } else if let Some(slot) = Slot::take(&refusing, MAX_REFUSING) {
                tasks.spawn(async move {
                    let _slot = slot;
                    let service = service_fn(|_| async {
                        Ok::<_, Infallible>(
                            Response::text(503, "too many connections; try again\n").into_hyper(),
                        )
                    });
                    connection(stream, REFUSE_TIMEOUT, 2 * REFUSE_TIMEOUT, service).await;
                });
            }
        }
        drop(listener);
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// One of a bounded number of connections; given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        if count.fetch_add(1, Ordering::AcqRel) >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one request on `stream` with hyper, within `head` for the request head and `total`
/// for everything, then closes.
async fn connection<S>(
    mut stream: tokio::net::TcpStream,
    head: Duration,
    total: Duration,
    service: S,
) where
    S: hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = hyper::Response<Full<Bytes>>,
        Error = Infallible,
    >,
    S::Future: 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(head)
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .keep_alive(false);
    // hyper is given the stream by reference, so that it is still ours to linger on after.
    let conn = http.serve_connection(TokioIo::new(&mut stream), service);
    // hyper bounds the head's time, not the answer's: the whole connection is bounded here.
    if tokio::time::timeout(total, conn).await.is_err() {
        return;
    }
    // Our side has ended (hyper shut down its writing). Whatever the client still sends (the
    // rest of an oversized head, a POST's body) is read and dropped for a moment: closing with
    // unread data would reset the connection, and the client could lose the answer.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < (1 << 20) {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// The answer to one request hyper has parsed: refused by [`check`], else the handler's (on the
/// blocking pool: it may replay a dump for seconds).
async fn answer<H>(
    req: hyper::Request<hyper::body::Incoming>,
    addr: SocketAddr,
    post: bool,
    handler: Arc<H>,
) -> hyper::Response<Full<Bytes>>
where
    H: Fn(&Request) -> Response + Send + Sync + 'static,
{
    let response = match check(&req, addr, post) {
        Err(status) => Response::text(status, refusal(status)),
        Ok(request) => tokio::task::spawn_blocking(move || handler(&request))
            .await
            .unwrap_or_else(|_| Response::text(500, "internal error\n")),
    };
    response.into_hyper()
}

fn refusal(status: u16) -> &'static str {
    match status {
        405 => "only GET and HEAD\n",
        413 => "request bodies are not read here\n",
        421 => "misdirected request: name this server's address in Host\n",
        _ => "bad request\n",
    }
}

/// Whether `host` (a `Host` header, or an absolute target's authority) names this server.
fn host_ok(host: &str, addr: SocketAddr) -> bool {
    let port = addr.port();
    // A page of another site that got its name resolved to 127.0.0.1 sends its own name here.
    // Bound elsewhere (an address the user gave `run --serve`, for a scraper on another host),
    // a Host that is an IP literal with our port is accepted too: a rebinding page always sends
    // a name, never an address.
    [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ]
    .iter()
    .any(|ok| host.eq_ignore_ascii_case(ok))
        || (!addr.ip().is_loopback() && host.parse::<SocketAddr>().is_ok_and(|a| a.port() == port))
}

/// The request for the handler, or the status it is refused with.
fn check<B>(req: &hyper::Request<B>, addr: SocketAddr, post: bool) -> Result<Request, u16> {
    let header = |name| req.headers().get(name).map(HeaderValue::as_bytes);
    let host = header(hyper::header::HOST).and_then(|h| std::str::from_utf8(h).ok());
    let authority_ok = req
        .uri()
        .authority()
        .is_none_or(|a| host_ok(a.as_str(), addr));
    if !host.is_some_and(|h| host_ok(h, addr)) || !authority_ok {
        return Err(421);
    }
    let method = req.method().as_str();
    let is_post = post && method == "POST";
    if (!is_post && header(hyper::header::CONTENT_LENGTH).is_some_and(|v| v != b"0"))
        || header(hyper::header::TRANSFER_ENCODING).is_some()
    {
        return Err(413); // nothing served here reads a body
    }
    if !(method == "GET" || method == "HEAD" || is_post) {
        return Err(405);
    }
    Ok(Request {
        method: method.to_owned(),
        path: req.uri().path().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn addr() -> SocketAddr {
        "127.0.0.1:4000".parse().unwrap()
    }

    fn req(method: &str, target: &str, headers: &[(&str, &str)]) -> hyper::Request<()> {
        let mut b = hyper::Request::builder().method(method).uri(target);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn get(host: &str) -> hyper::Request<()> {
        req("GET", "/", &[("host", host)])
    }

    #[test]
    fn takes_the_path_without_its_query() {
        let r = check(
            &req("GET", "/a?b=1", &[("host", "127.0.0.1:4000")]),
            addr(),
            false,
        )
        .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/a"));
    }

    #[test]
    fn refuses_other_hosts_bodies_and_other_methods() {
        assert_eq!(
            check(&get("evil.example:4000"), addr(), false).err(),
            Some(421)
        );
        assert_eq!(check(&req("GET", "/", &[]), addr(), false).err(), Some(421));
        assert!(check(&get("localhost:4000"), addr(), false).is_ok());
        // An absolute target must name us too, whatever the Host says.
        let absolute = req(
            "GET",
            "http://evil.example:4000/",
            &[("host", "localhost:4000")],
        );
        assert_eq!(check(&absolute, addr(), false).err(), Some(421));
        // Bound to another address: an IP literal with our port, never a name.
        let any: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        assert!(check(&get("10.1.2.3:4000"), any, false).is_ok());
        assert_eq!(
            check(&get("evil.example:4000"), any, false).err(),
            Some(421)
        );
        assert_eq!(check(&get("10.1.2.3:4001"), any, false).err(), Some(421));
        let body = req(
            "GET",
            "/",
            &[("host", "localhost:4000"), ("content-length", "5")],
        );
        assert_eq!(check(&body, addr(), false).err(), Some(413));
        // A POST's body is left unread where POSTs are allowed, refused elsewhere.
        let post = req(
            "POST",
            "/debug/pprof/symbol",
            &[("host", "localhost:4000"), ("content-length", "5")],
        );
        assert_eq!(check(&post, addr(), false).err(), Some(413));
        assert_eq!(check(&post, addr(), true).unwrap().method, "POST");
        let put = req("PUT", "/", &[("host", "localhost:4000")]);
        assert_eq!(check(&put, addr(), true).err(), Some(405));
    }

    /// Through a socket: what hyper refuses (garbage, 400), a HEAD (no body), and a stop that
    /// ends `serve`.
    #[test]
    fn garbage_is_a_bad_request_head_has_no_body_and_stop_returns() {
        let server = Server::bind_loopback(0).unwrap();
        let (addr, shutdown) = (server.addr(), server.shutdown());
        let t =
            std::thread::spawn(move || server.serve(|_| Response::text(200, "hello\n")).unwrap());
        let exchange = |data: &[u8]| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(data).unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        };
        let bad = exchange(b"\x01\x02 / HTTP/1.1\r\n\r\n");
        assert!(bad.starts_with("HTTP/1.1 400 Bad Request"), "{bad}");
        let head = exchange(format!("HEAD / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
        let (h, body) = head.split_once("\r\n\r\n").unwrap();
        assert!(h.starts_with("HTTP/1.1 200 OK"), "{h}");
        assert!(h.contains("content-length: 6"), "{h}");
        assert!(h.contains("connection: close"), "{h}");
        assert_eq!(body, "");
        let get = exchange(format!("GET /x HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
        assert!(get.ends_with("\r\n\r\nhello\n"), "{get}");
        shutdown.stop();
        t.join().unwrap();
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "still listening"
        );
    }

    /// A client that never finishes its head is dropped once hyper's header timeout passes.
    #[test]
    fn a_head_not_finished_in_time_closes_the_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.write_all(b"GET / HTTP/1.1\r\nHost: 127").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        rt.block_on(async {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let service = service_fn(|_| async {
                Ok::<_, Infallible>(Response::text(200, "never\n").into_hyper())
            });
            let head = Duration::from_millis(300);
            connection(stream, head, Duration::from_secs(20), service).await;
        });
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "closed after {took:?}"
        );
        client
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut out = Vec::new();
        assert!(client.read_to_end(&mut out).is_ok(), "not closed");
        assert!(!String::from_utf8_lossy(&out).contains("never"));
    }
}

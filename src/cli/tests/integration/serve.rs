//! `zmtrace view --serve`: one client's slow or endless request holds up no one and costs
//! bounded memory; only loopback, only requests that name it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::*;

struct Served {
    child: Child,
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Served {
    static DUMP: OnceLock<Run> = OnceLock::new();
    let run = DUMP.get_or_init(|| run_traced(&sample("leaky"), &[]));
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let mut child = Command::new(zmtrace_bin())
        .args(["view", run.only_dump().path.to_str().unwrap(), "--serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    Served { child, addr }
}

/// A whole GET, answered within `limit`.
fn get(addr: &str, host: &str, limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("no answer within {limit:?}: {e}"));
    out
}

/// The server's peak resident memory (VmHWM), in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_request_line_without_newline_held_open_blocks_no_other_client() {
    let s = serve();
    let mut slow = TcpStream::connect(&s.addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let page = get(&s.addr, &s.addr, Duration::from_secs(5));
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page:.200}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "served after {took:?}");
    // Still held open, neither answered nor dropped (it has not finished its request).
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut b = [0u8; 1];
    match slow.read(&mut b) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the slow client got {other:?}"),
    }
}

#[test]
fn a_huge_request_line_is_refused_with_bounded_memory() {
    let s = serve();
    let before = peak_kib(s.child.id());
    let mut huge = TcpStream::connect(&s.addr).unwrap();
    huge.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    huge.write_all(b"GET /").unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    // Up to 256 MiB, until the server stops taking it.
    while sent < 256 << 20 {
        match huge.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    huge.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = huge.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
        "{answer:.200} (after {sent} bytes)"
    );
    assert!(sent < 64 << 20, "the server took {sent} bytes of one line");
    let grown = peak_kib(s.child.id()).saturating_sub(before);
    assert!(grown < 16 * 1024, "the server grew by {grown} KiB");
    // And it still serves.
    let page = get(&s.addr, &s.addr, Duration::from_secs(5));
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page:.200}");
}

#[test]
fn requests_that_do_not_name_the_loopback_address_are_refused() {
    let s = serve();
    let port = s.addr.rsplit(':').next().unwrap();
    let evil = get(
        &s.addr,
        &format!("attacker.example:{port}"),
        Duration::from_secs(5),
    );
    assert!(evil.starts_with("HTTP/1.1 421"), "{evil:.200}");
    let local = get(
        &s.addr,
        &format!("localhost:{port}"),
        Duration::from_secs(5),
    );
    assert!(local.starts_with("HTTP/1.1 200 OK"), "{local:.200}");
}

#[test]
fn connections_beyond_the_cap_are_turned_away_at_once() {
    let s = serve();
    let idle: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(&s.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let busy = get(&s.addr, &s.addr, Duration::from_secs(5));
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy:.200}");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(idle);
    // The idle ones leave (the server sees them close); then it serves again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = get(&s.addr, &s.addr, Duration::from_secs(5));
        if page.starts_with("HTTP/1.1 200 OK") {
            break;
        }
        assert!(Instant::now() < deadline, "{page:.200}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

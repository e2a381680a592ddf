//! `zmtrace run --serve ADDR`: a running program's heap scraped as Go's net/http/pprof serves it
//! (`/debug/pprof/heap`, `/debug/pprof/allocs`), checked with a real pprof (`go tool pprof`)
//! against the amounts `samples/phases.c` holds in each of its phases.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::common::*;

/// `samples/phases.c`'s documented figures.
const PHASE_1_INUSE: [(&str, u64); 1] = [("zs_phase_one", 4000)];
const PHASE_2_INUSE: [(&str, u64); 2] = [("zs_phase_one", 2000), ("zs_phase_two", 6000)];
const PHASE_2_INUSE_OBJECTS: [(&str, u64); 2] = [("zs_phase_one", 2), ("zs_phase_two", 3)];
const PHASE_2_ALLOCATED: [(&str, u64); 2] = [("zs_phase_one", 4000), ("zs_phase_two", 6000)];
const END_INUSE: [(&str, u64); 2] = [("zs_phase_one", 2000), ("zs_phase_three", 500)];

fn map(v: &[(&str, u64)]) -> BTreeMap<String, u64> {
    v.iter().map(|(f, n)| (f.to_string(), *n)).collect()
}

/// `zmtrace run -o DIR --serve ADDR -- phases 3`, with the program's stdin ours.
struct Live {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Receiver<String>,
    err: Receiver<String>,
    stdout: String,
    stderr: String,
    addr: String,
    dir: PathBuf,
}

impl Live {
    fn start(serve: &str, run_opts: &[&str]) -> Live {
        Live::start_env(serve, run_opts, &[])
    }

    /// [`Live::start`] with more environment variables for zmtrace (and the program).
    fn start_env(serve: &str, run_opts: &[&str], env: &[(&str, &str)]) -> Live {
        Live::start_program(
            serve,
            run_opts,
            env,
            &[sample("phases").to_str().unwrap(), "3"],
        )
    }

    /// `zmtrace run -o DIR --serve ADDR RUN_OPTS -- PROGRAM...` with `env`.
    fn start_program(
        serve: &str,
        run_opts: &[&str],
        env: &[(&str, &str)],
        program: &[&str],
    ) -> Live {
        ensure_preload_built();
        let dir = fresh_dir("scrape");
        let mut cmd = Command::new(zmtrace_bin());
        cmd.envs(env.iter().copied());
        cmd.args(["run", "-o", dir.to_str().unwrap(), "--serve", serve])
            .args(run_opts)
            .arg("--")
            .args(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().expect("start zmtrace");
        let stdin = child.stdin.take();
        let out = pipe_lines(child.stdout.take().unwrap());
        let err = pipe_lines(child.stderr.take().unwrap());
        let mut live = Live {
            child,
            stdin,
            out,
            err,
            stdout: String::new(),
            stderr: String::new(),
            addr: String::new(),
            dir,
        };
        let line = live.stderr_line_with("serving http://");
        let url = line.split_whitespace().find(|w| w.starts_with("http://"));
        live.addr = url
            .and_then(|u| u.strip_prefix("http://"))
            .and_then(|u| u.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        live
    }

    fn stderr_line_with(&mut self, want: &str) -> String {
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err.recv_timeout(left) {
                Ok(l) => {
                    self.stderr.push_str(&l);
                    self.stderr.push('\n');
                    if l.contains(want) {
                        return l;
                    }
                }
                Err(_) => panic!("no {want:?} on zmtrace's stderr:\n{}", self.stderr),
            }
        }
    }

    /// Waits for the program to print `want` (its next phase).
    fn expect(&mut self, want: &str) {
        let line = self
            .out
            .recv_timeout(RUN_TIMEOUT)
            .unwrap_or_else(|_| panic!("no {want:?} from the program; stdout:\n{}", self.stdout));
        self.stdout.push_str(&line);
        self.stdout.push('\n');
        assert_eq!(line, want, "program's stdout so far:\n{}", self.stdout);
    }

    /// Lets the program go on to its next phase.
    fn next(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for zmtrace to end; its exit code.
    fn finish(mut self) -> (Option<i32>, String, String, PathBuf) {
        drop(self.stdin.take());
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "zmtrace did not end");
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(l) = self.out.recv_timeout(Duration::from_secs(5)) {
            self.stdout.push_str(&l);
            self.stdout.push('\n');
        }
        while let Ok(l) = self.err.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push_str(&l);
            self.stderr.push('\n');
        }
        (
            status.code(),
            self.stdout.clone(),
            self.stderr.clone(),
            self.dir.clone(),
        )
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the process group we started (nothing left of it normally).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A GET through a plain socket: status and body.
fn get(addr: &str, path: &str, host: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8_lossy(&all[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {head:?}"));
    (status, all[end + 4..].to_vec())
}

/// `go tool pprof -raw`: the sample types in order, and each one's total.
fn pprof_raw_totals(source: &str) -> Vec<(String, u64)> {
    let text = go_pprof(&["-raw"], source);
    let mut lines = text.lines().skip_while(|l| l.trim() != "Samples:").skip(1);
    let types: Vec<String> = lines
        .next()
        .unwrap_or_else(|| panic!("no samples in:\n{text}"))
        .split_whitespace()
        .map(|t| t.split('/').next().unwrap().to_owned())
        .collect();
    let mut totals = vec![0u64; types.len()];
    for l in lines {
        let Some((values, _locations)) = l.split_once(':') else {
            break;
        };
        let values: Vec<u64> = match values.split_whitespace().map(str::parse).collect() {
            Ok(v) => v,
            Err(_) => break, // past the samples
        };
        assert_eq!(values.len(), types.len(), "{l:?}");
        for (t, v) in totals.iter_mut().zip(values) {
            *t += v;
        }
    }
    types.into_iter().zip(totals).collect()
}

fn total(v: &[(String, u64)], t: &str) -> u64 {
    v.iter()
        .find(|(n, _)| n == t)
        .unwrap_or_else(|| panic!("no {t} in {v:?}"))
        .1
}

/// Scrapes `path` until sample type `t` per function is `want` (the dump is flushed at least
/// every 0.1 s: it is there at once, give or take a loaded machine), or fails with the last.
fn scrape_until(live: &Live, path: &str, t: &str, want: &BTreeMap<String, u64>) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(10);
    let file = fresh_dir("scraped").join("profile.pb.gz");
    loop {
        let (status, body) = get(&live.addr, path, &live.addr);
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        std::fs::write(&file, &body).unwrap();
        let got = pprof_flat(&file, t, &[]);
        if &got == want {
            return file;
        }
        assert!(
            Instant::now() < deadline,
            "{path} {t}: got {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Phase by phase, the heap scraped is what the program holds then, and the allocations since the
/// start are what it allocated; the program's output and status are its own.
#[test]
fn heap_scraped_in_each_phase_is_what_the_program_holds_then() {
    let mut live = Live::start("127.0.0.1:0", &[]);
    live.expect("phase 1");
    let file = scrape_until(
        &live,
        "/debug/pprof/heap",
        "inuse_space",
        &map(&PHASE_1_INUSE),
    );
    // Go's heap profile: in-use types first (and shown), then the allocations.
    let raw = pprof_raw_totals(file.to_str().unwrap());
    let names: Vec<&str> = raw.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "inuse_objects",
            "inuse_space",
            "alloc_objects",
            "alloc_space"
        ]
    );
    assert_eq!(total(&raw, "inuse_space"), 4000);
    assert_eq!(total(&raw, "inuse_objects"), 4);

    live.next();
    live.expect("phase 2");
    let file = scrape_until(
        &live,
        "/debug/pprof/heap",
        "inuse_space",
        &map(&PHASE_2_INUSE),
    );
    assert_eq!(
        pprof_flat(&file, "inuse_objects", &[]),
        map(&PHASE_2_INUSE_OBJECTS)
    );
    let raw = pprof_raw_totals(file.to_str().unwrap());
    assert_eq!(total(&raw, "inuse_space"), 8000);
    let allocs = scrape_until(
        &live,
        "/debug/pprof/allocs",
        "alloc_space",
        &map(&PHASE_2_ALLOCATED),
    );
    let raw = pprof_raw_totals(allocs.to_str().unwrap());
    let names: Vec<&str> = raw.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ]
    );
    assert_eq!(total(&raw, "alloc_space"), 10000);
    assert_eq!(total(&raw, "alloc_objects"), 7);

    live.next();
    let (code, stdout, stderr, dir) = live.finish();
    // As without zmtrace: the same output and status.
    let mut plain = Command::new(sample("phases"))
        .arg("3")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    plain.stdin.take().unwrap().write_all(b"\n\n").unwrap();
    let plain = plain.wait_with_output().unwrap();
    assert_eq!(stdout.as_bytes(), plain.stdout, "stderr:\n{stderr}");
    assert_eq!(stdout, "phase 1\nphase 2\ndone\n");
    assert_eq!(code, plain.status.code());
    assert_eq!(code, Some(3), "{stderr}");

    // The finished dump exports the end's figures.
    let dump = dump_files(&dir).pop().expect("a dump");
    let out = dir.join("end.pb.gz");
    let f = run_zmtrace(&[
        "export",
        dump.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    assert_eq!(pprof_flat(&out, "inuse_space", &[]), map(&END_INUSE));
}

/// `go tool pprof -raw URL` fetches the endpoint itself; its samples total what is in use.
#[test]
fn go_tool_pprof_fetches_the_heap_endpoint() {
    let mut live = Live::start("127.0.0.1:0", &[]);
    live.expect("phase 1");
    live.next();
    live.expect("phase 2");
    scrape_until(
        &live,
        "/debug/pprof/heap",
        "inuse_space",
        &map(&PHASE_2_INUSE),
    );
    let url = format!("http://{}/debug/pprof/heap", live.addr);
    let raw = pprof_raw_totals(&url);
    assert_eq!(total(&raw, "inuse_space"), 8000, "{raw:?}");
    assert_eq!(total(&raw, "inuse_objects"), 5, "{raw:?}");
    assert_eq!(total(&raw, "alloc_space"), 10000, "{raw:?}");
    let url = format!("http://{}/debug/pprof/allocs", live.addr);
    let raw = pprof_raw_totals(&url);
    assert_eq!(raw[0].0, "alloc_objects");
    assert_eq!(total(&raw, "alloc_space"), 10000, "{raw:?}");
    live.next();
    let (code, _, stderr, _) = live.finish();
    assert_eq!(code, Some(3), "{stderr}");
}

/// The `x-zmtrace-replay` header of a scrape of `path`: (dump length read, bytes read from it
/// over every scrape so far, events decoded so far, frames looked up in module files so far),
/// and the profile.
fn replay_cost(addr: &str, path: &str) -> ((u64, u64, u64, u64), Vec<u8>) {
    let (h, body) = scrape_headers(addr, path);
    let keys = ["dump", "read", "decoded", "lookups"];
    let r = fields(&h, "x-zmtrace-replay", &keys);
    ((r["dump"], r["read"], r["decoded"], r["lookups"]), body)
}

/// A scrape of `path`: its headers (names in lower case) and its body.
fn scrape_headers(addr: &str, path: &str) -> (BTreeMap<String, String>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (headers, all[end + 4..].to_vec())
}

/// The `key=number` fields of header `name`, each required.
fn fields(headers: &BTreeMap<String, String>, name: &str, keys: &[&str]) -> BTreeMap<String, u64> {
    let value = headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"));
    let all: BTreeMap<String, u64> = value
        .split_whitespace()
        .map(|w| {
            let (k, v) = w
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}: {value:?}"));
            let v = v
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {k} in {value:?}"));
            (k.to_owned(), v)
        })
        .collect();
    for k in keys {
        assert!(all.contains_key(*k), "no {k} in {name}: {value:?}");
    }
    all
}

const TIME_KEYS: [&str; 6] = [
    "read_us",
    "replay_us",
    "symbolize_us",
    "build_us",
    "total_us",
    "cached",
];

/// Each scrape says where its time went (`x-zmtrace-time`): reading the dump, replaying it,
/// symbolizing, building the profiles; the parts add up to no more than the whole, and a scrape
/// that finds the dump unchanged builds nothing (the profiles built last are served).
#[test]
fn a_scrape_says_where_its_time_went() {
    let mut live = Live::start("127.0.0.1:0", &[]);
    live.expect("phase 1");
    scrape_until(
        &live,
        "/debug/pprof/heap",
        "inuse_space",
        &map(&PHASE_1_INUSE),
    );
    // Phase 2's records are new to the replay: this scrape reads, replays and builds.
    live.next();
    live.expect("phase 2");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (built, dump) = loop {
        let (h, _) = scrape_headers(&live.addr, "/debug/pprof/heap");
        let t = fields(&h, "x-zmtrace-time", &TIME_KEYS);
        let r = fields(&h, "x-zmtrace-replay", &["dump", "decoded", "behind"]);
        if t["cached"] == 0 && r["decoded"] == 4 + 3 + 2 {
            break (t, r["dump"]);
        }
        assert!(Instant::now() < deadline, "phase 2 never replayed: {h:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let parts = built["read_us"] + built["replay_us"] + built["symbolize_us"] + built["build_us"];
    assert!(parts <= built["total_us"], "{built:?}");
    // Phase 2's new stack was looked up, and two profiles were encoded and gzipped: neither
    // takes under a microsecond.
    assert!(
        built["symbolize_us"] > 0 && built["build_us"] > 0,
        "{built:?}"
    );
    assert!(built["total_us"] < 30_000_000, "{built:?}");
    // Nothing new since: the profiles built are served as they are.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (h, body) = scrape_headers(&live.addr, "/debug/pprof/heap");
        let t = fields(&h, "x-zmtrace-time", &TIME_KEYS);
        let r = fields(&h, "x-zmtrace-replay", &["dump"]);
        if r["dump"] == dump {
            assert_eq!(t["cached"], 1, "{t:?}");
            assert_eq!((t["symbolize_us"], t["build_us"]), (0, 0), "{t:?}");
            let file = fresh_dir("scraped").join("cached.pb.gz");
            std::fs::write(&file, body).unwrap();
            assert_eq!(pprof_flat(&file, "inuse_space", &[]), map(&PHASE_2_INUSE));
            break;
        }
        assert!(Instant::now() < deadline, "the dump kept growing: {r:?}");
    }
    live.next();
    let (code, _, stderr, _) = live.finish();
    assert_eq!(code, Some(3), "{stderr}");
}

/// With `ZMTRACE_SERVE_READ_LIMIT=1` (a record a batch) and `ZMTRACE_SERVE_REPLAY_RATE` (a slow
/// follower), the scrapes that come while the follower is still behind serve the heap as far as it
/// has gone, saying how far behind they are, and each next one is further on, until it has caught
/// up.
#[test]
fn a_scrape_while_the_follower_is_behind_says_so_and_the_next_is_further_on() {
    let mut live = Live::start_env(
        "127.0.0.1:0",
        &[],
        &[
            ("ZMTRACE_SERVE_READ_LIMIT", "1"),
            ("ZMTRACE_SERVE_REPLAY_RATE", "4000"),
        ],
    );
    live.expect("phase 1");
    // The writer flushes at least every 0.1 s: phase 1's events are in the dump by then.
    std::thread::sleep(Duration::from_millis(500));
    let mut seen = Vec::new();
    let file = fresh_dir("scraped").join("limited.pb.gz");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (h, body) = scrape_headers(&live.addr, "/debug/pprof/heap");
        let r = fields(&h, "x-zmtrace-replay", &["dump", "behind", "decoded"]);
        if seen.last().is_none_or(|&(d, _, _)| d != r["dump"]) {
            seen.push((r["dump"], r["behind"], r["decoded"]));
        }
        if r["behind"] == 0 {
            std::fs::write(&file, body).unwrap();
            break;
        }
        assert!(Instant::now() < deadline, "never caught up: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Several states, each one further on, the first one behind.
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen[0].1 > 0, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    let (dump, _, decoded) = *seen.last().unwrap();
    assert_eq!(decoded, 4, "{seen:?}");
    assert_eq!(pprof_flat(&file, "inuse_space", &[]), map(&PHASE_1_INUSE));
    // The whole dump was read about once, over all those batches.
    let (h, _) = scrape_headers(&live.addr, "/debug/pprof/heap");
    let r = fields(&h, "x-zmtrace-replay", &["dump", "read", "batches"]);
    assert!(r["read"] >= dump && r["read"] < 3 * dump, "{r:?} of {dump}");
    assert!(r["batches"] >= seen.len() as u64, "{r:?} {seen:?}");
    live.next();
    live.next();
    let (code, _, stderr, _) = live.finish();
    assert_eq!(code, Some(3), "{stderr}");
}

const BURST: u64 = 300_000;

/// The program makes 300,000 allocations (and as many frees, but the last 1,000) with no
/// scrape: the follower replays them meanwhile, so the first scrape, once the program sleeps,
/// has them all without reading the dump itself; and while the program sleeps the follower
/// does not spin.
#[test]
fn the_first_scrape_after_a_burst_has_it_all_and_the_follower_sleeps_when_idle() {
    let steps = BURST.to_string();
    let mut live = Live::start_program(
        "127.0.0.1:0",
        &[],
        &[],
        &[sample("burst").to_str().unwrap(), &steps],
    );
    live.expect(&format!("made {BURST}"));
    let zm = live.child.id();
    // The replay of 600,000 events takes ~0.5 s on a loaded 2-core machine (~7 s unoptimized):
    // generously bounded.
    let took = wait_idle(zm, Duration::from_millis(500), Duration::from_secs(60));
    eprintln!("follower idle {took:?} after the program's last event");
    let (h, body) = scrape_headers(&live.addr, "/debug/pprof/allocs");
    let r = fields(
        &h,
        "x-zmtrace-replay",
        &["dump", "behind", "decoded", "batches"],
    );
    let t = fields(
        &h,
        "x-zmtrace-time",
        &["read_us", "follow_read_us", "follow_replay_us"],
    );
    eprintln!("{h:?}");
    assert_eq!(r["behind"], 0, "{h:?}");
    // The frees of a block (the first 1,000 free NULL) and the mallocs, all decoded
    // before this scrape, in batches, by the follower; this scrape read nothing itself.
    assert!(r["decoded"] >= 2 * BURST - 1000, "{r:?}");
    assert!(r["batches"] >= 2, "{r:?}");
    assert_eq!(t["read_us"], 0, "{t:?}");
    assert!(t["follow_replay_us"] > 0, "{t:?}");
    let file = fresh_dir("scraped").join("burst.pb.gz");
    std::fs::write(&file, body).unwrap();
    let raw = pprof_raw_totals(file.to_str().unwrap());
    assert_eq!(total(&raw, "alloc_objects"), BURST, "{raw:?}");
    assert_eq!(total(&raw, "inuse_objects"), 1000, "{raw:?}");

    // The program sleeps on its stdin: a follower polling a dump that does not grow costs next
    // to nothing (one that spun would take the whole interval, 2 s).
    let before = cpu_ticks(zm);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(zm) - before;
    assert!(
        spent * 10 <= 2 * ticks_per_s(),
        "zmtrace took {spent} ticks of CPU in 2 s while the program slept"
    );
    live.next();
    let (code, stdout, stderr, _) = live.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.ends_with("done\n"), "{stdout}");
    // Whether the follower kept up depends on the build and the machine (an unoptimized
    // zmtrace replays ~0.1 M events/s): said at most once either way.
    assert!(stderr.matches("cannot keep up").count() <= 1, "{stderr}");
}

/// A follower slower than the program (throttled here to 20 kB of dump a second) says so once on
/// stderr and in `behind=`; the traced program is not held up by it, and when the program ends
/// zmtrace ends too, at once, rather than replaying its backlog for no one.
#[test]
fn a_follower_that_cannot_keep_up_says_so_once_and_the_run_still_ends() {
    let steps = BURST.to_string();
    let mut live = Live::start_program(
        "127.0.0.1:0",
        &[],
        &[("ZMTRACE_SERVE_REPLAY_RATE", "20000")],
        &[sample("burst").to_str().unwrap(), &steps],
    );
    live.expect(&format!("made {BURST}"));
    let warning = live.stderr_line_with("cannot keep up");
    assert!(warning.starts_with("zmtrace: "), "{warning}");
    assert!(warning.contains("behind"), "{warning}");
    let (h, body) = scrape_headers(&live.addr, "/debug/pprof/allocs");
    let r = fields(&h, "x-zmtrace-replay", &["dump", "behind"]);
    assert!(r["behind"] > 100_000, "{r:?}");
    let file = fresh_dir("scraped").join("behind.pb.gz");
    std::fs::write(&file, body).unwrap();
    let raw = pprof_raw_totals(file.to_str().unwrap());
    assert!(total(&raw, "alloc_objects") < BURST, "{raw:?}");
    let ended = Instant::now();
    live.next();
    let (code, stdout, stderr, _) = live.finish();
    assert!(
        ended.elapsed() < Duration::from_secs(20),
        "zmtrace took {:?} to end",
        ended.elapsed()
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.ends_with("done\n"), "{stdout}");
    assert_eq!(stderr.matches("cannot keep up").count(), 1, "{stderr}");
}

/// A scrape after more allocations replays only the records added since the last one: it
/// decodes exactly the events made since, reads the dump once over all the scrapes (not once
/// per scrape), and shows exactly the allocations made since.
#[test]
fn a_later_scrape_replays_only_what_was_added_since() {
    let mut live = Live::start("127.0.0.1:0", &[]);
    live.expect("phase 1");
    let file = scrape_until(
        &live,
        "/debug/pprof/allocs",
        "alloc_space",
        &map(&[("zs_phase_one", 4000)]),
    );
    let raw = pprof_raw_totals(file.to_str().unwrap());
    assert_eq!(total(&raw, "alloc_objects"), 4);
    let ((dump1, read1, decoded1, lookups1), _) = replay_cost(&live.addr, "/debug/pprof/allocs");
    // Phase 1 is four mallocs, nothing else (phases.c allocates nothing more).
    assert_eq!(decoded1, 4);
    assert!(read1 >= dump1, "read {read1} of {dump1}");

    live.next();
    live.expect("phase 2");
    let file = scrape_until(
        &live,
        "/debug/pprof/allocs",
        "alloc_space",
        &map(&PHASE_2_ALLOCATED),
    );
    let raw = pprof_raw_totals(file.to_str().unwrap());
    // Exactly three more: phase 2's mallocs.
    assert_eq!(total(&raw, "alloc_objects"), 4 + 3);
    assert_eq!(total(&raw, "inuse_objects"), 4 + 3 - 2);
    let ((dump2, read2, decoded2, lookups2), body) = replay_cost(&live.addr, "/debug/pprof/heap");
    // Phase 2's events only: three mallocs and two frees.
    assert_eq!(decoded2 - decoded1, 3 + 2);
    assert!(dump2 > dump1);
    // Each byte read once, give or take a record caught half-written (read again whole next
    // time): well under the second dump read whole again on top of the first.
    assert!(
        read2 >= dump2 && read2 < dump2 + dump1,
        "read {read2} in all, dumps of {dump1} then {dump2}"
    );
    // Only phase 2's new return addresses were looked up: the ones below zs_phase_two (main,
    // the C library's start code, the recorder's frames) were found for phase 1 and kept.
    eprintln!("lookups {lookups1} then {lookups2}");
    assert!(
        lookups2 > lookups1 && lookups2 - lookups1 < lookups1,
        "lookups {lookups1} then {lookups2}"
    );
    let heap = fresh_dir("scraped").join("heap.pb.gz");
    std::fs::write(&heap, body).unwrap();
    assert_eq!(pprof_flat(&heap, "inuse_space", &[]), map(&PHASE_2_INUSE));
    live.next();
    let (code, _, stderr, _) = live.finish();
    assert_eq!(code, Some(3), "{stderr}");
}

/// The local address a listening TCP socket of port `port` has, from /proc/net/tcp (hex).
fn listening_on(port: u16) -> Vec<String> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let (ip, p) = cols.get(1)?.split_once(':')?;
            (u16::from_str_radix(p, 16).ok()? == port && cols.get(3) == Some(&"0A"))
                .then(|| ip.to_owned())
        })
        .collect()
}

/// `--serve :PORT` listens on 127.0.0.1 only; unknown paths are 404, another Host 421.
#[test]
fn a_port_alone_binds_loopback_and_unknown_paths_are_not_found() {
    let mut live = Live::start(":0", &[]);
    let port: u16 = live.addr.rsplit(':').next().unwrap().parse().unwrap();
    assert!(live.addr.starts_with("127.0.0.1:"), "{}", live.addr);
    // 0100007F is 127.0.0.1 (little-endian hex); 00000000 would be every interface.
    assert_eq!(listening_on(port), ["0100007F"]);
    live.expect("phase 1");
    let (status, body) = get(&live.addr, "/debug/pprof/profile", &live.addr);
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("/debug/pprof/heap"));
    assert_eq!(get(&live.addr, "/", &live.addr).0, 404);
    let host = format!("attacker.example:{port}");
    assert_eq!(get(&live.addr, "/debug/pprof/heap", &host).0, 421);
    // A query (Go's ?gc=1, ?debug=0) is ignored.
    let (status, body) = get(&live.addr, "/debug/pprof/heap?gc=1", &live.addr);
    assert_eq!(status, 200);
    assert_eq!(&body[..2], b"\x1f\x8b", "gzipped");
    live.next();
    live.next();
    let (code, stdout, _, _) = live.finish();
    assert_eq!(
        (code, stdout.as_str()),
        (Some(3), "phase 1\nphase 2\ndone\n")
    );
    assert!(
        listening_on(port).is_empty(),
        "still listening after the run"
    );
}

/// A bad address is a one-line error before anything runs.
#[test]
fn a_bad_serve_address_is_refused_before_the_program_runs() {
    let dir = fresh_dir("scrape-bad");
    for bad in ["6060", "nohost:1", ":70000"] {
        let f = run_zmtrace(&[
            "run",
            "-o",
            dir.to_str().unwrap(),
            "--serve",
            bad,
            "--",
            sample("phases").to_str().unwrap(),
        ]);
        assert_eq!(f.code, Some(2), "{bad}: {}", f.stderr);
        assert_eq!(f.stderr.lines().count(), 1, "{}", f.stderr);
        assert!(f.stderr.contains("--serve"), "{}", f.stderr);
        assert!(f.stdout.is_empty(), "the program ran: {}", f.stdout);
    }
    assert!(dump_files(&dir).is_empty());
}

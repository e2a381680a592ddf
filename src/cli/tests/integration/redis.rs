//! Redis end to end: Debian's `redis-server` (7.0, jemalloc, symbols in `.dynsym` only) under
//! `zmtrace run`, loaded by `redis-benchmark` over loopback, saved by `BGSAVE` (a forked child),
//! shut down by `SHUTDOWN NOSAVE`; then the dumps read back and analyzed through the CLI.
//!
//! Two servers, so that each churn report has one known winner:
//! - strings: SET/GET/INCR, then APPEND growing 100 strings to 3,200 bytes on average, then
//!   BGSAVE. The site that copies the most bytes by reallocating is `_sdsMakeRoomFor` (via
//!   `zrealloc_usable`, called from `appendCommand`);
//! - list: LPUSH only. The site that copies the most is `lpInsert` (listpack nodes growing).
//!
//! Exact numbers come from Redis's own accounting: `redis-benchmark -n 20000 -P 16` sends
//! exactly 20,000 requests per test (1,250 pipelines of 16), which `INFO commandstats`, `LLEN`,
//! `STRLEN` and the INCR counter confirm; and Redis 7.0 parses each request into one argv array
//! plus one object per argument (`processMultibulkBuffer`), so the allocations under that
//! function are exactly the sum over all commands of (arguments + 1).
//!
//! Every process and network exchange is bounded: the server (zmtrace and Redis's process
//! group) is killed when a test fails, each client command has a time limit, and only
//! 127.0.0.1 is used.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

/// Requests per redis-benchmark test: a multiple of the pipeline depth, so that redis-benchmark
/// sends exactly this many (it hands out requests by whole pipelines).
const REQUESTS: u64 = 20_000;
const PIPELINE: u64 = 16;
/// APPEND keys: `-r 100` turns `__rand_int__` into a 12-digit number below 100.
const APPEND_KEYS: u64 = 100;
const APPEND_VALUE: &str = "0123456789abcdef";

/// One client command (redis-cli, redis-benchmark) may take at most this long.
const CLIENT_LIMIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------------------
// Processes with time limits
// ------------------------------------------------------------------------------------------------

/// Runs `cmd` (stdin: `input`), killing it after `limit`; returns (status, stdout, stderr).
fn bounded(cmd: &mut Command, input: &str, limit: Duration) -> (ExitStatus, String, String) {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = read_in_thread(child.stdout.take().unwrap());
    let err = read_in_thread(child.stderr.take().unwrap());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{shown} did not finish within {limit:?}; killed. stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    (
        status,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

// ------------------------------------------------------------------------------------------------
// The traced server
// ------------------------------------------------------------------------------------------------

/// `zmtrace run -- redis-server` on a free loopback port. Dropped before a clean shutdown (a
/// failed assertion), it kills Redis's process group (the server and a BGSAVE child) and
/// zmtrace's.
struct Server {
    port: u16,
    zmtrace: Child,
    /// The redis-server process (zmtrace starts it in its own process group).
    redis_pid: u32,
    dumps: PathBuf,
    work: PathBuf,
    log: PathBuf,
    /// zmtrace's exit status, once it has ended.
    exited: Option<ExitStatus>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

impl Server {
    fn start(name: &str) -> Server {
        require("redis-server", "redis-server");
        require("redis-cli", "redis-tools");
        require("redis-benchmark", "redis-tools");
        ensure_preload_built();
        let port = free_port();
        let dumps = fresh_dir(&format!("redis-{name}-dumps"));
        let work = fresh_dir(&format!("redis-{name}-work"));
        let log = work.join("zmtrace-run.log");
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(zmtrace_bin());
        cmd.arg("run")
            .arg("-o")
            .arg(&dumps)
            .args(["--", "redis-server", "--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&work)
            .args(["--daemonize", "no", "--loglevel", "notice"])
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .process_group(0);
        let zmtrace = cmd.spawn().expect("start zmtrace run -- redis-server");
        let mut server = Server {
            port,
            zmtrace,
            redis_pid: 0,
            dumps,
            work,
            log,
            exited: None,
        };
        server.wait_ready();
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 20 s) until `PING` answers `PONG`, and checks that the server answering is
    /// the one zmtrace started.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.zmtrace.try_wait().unwrap() {
                self.exited = Some(s);
                panic!(
                    "zmtrace run ended ({s}) before Redis answered:\n{}",
                    self.log()
                );
            }
            if self.redis_pid == 0 {
                self.redis_pid = children_of(self.zmtrace.id()).first().copied().unwrap_or(0);
            }
            let (_, out, _) = bounded(
                Command::new("redis-cli").args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "ping",
                ]),
                "",
                CLIENT_LIMIT,
            );
            if out.trim() == "PONG" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Redis did not answer PING within 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.redis_pid == 0 {
            self.redis_pid = children_of(self.zmtrace.id()).first().copied().unwrap_or(0);
        }
        let info = self.cli(&["INFO", "server"]);
        assert_eq!(
            info_field(&info, "process_id"),
            Some(self.redis_pid.to_string()),
            "the server on port {} is not the traced redis-server (pid {})",
            self.port,
            self.redis_pid
        );
    }

    /// One command through redis-cli; its reply (raw: redis-cli's output when not on a terminal).
    fn cli(&self, args: &[&str]) -> String {
        let (status, out, err) = bounded(
            Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(args),
            "",
            CLIENT_LIMIT,
        );
        assert!(
            status.success() && !out.starts_with("ERR") && !out.contains("Could not connect"),
            "redis-cli {args:?}: {status}\n{out}{err}"
        );
        out.trim_end().to_string()
    }

    /// Several commands through one redis-cli (one per line on its stdin); one reply line each.
    fn cli_batch(&self, commands: &[String]) -> Vec<String> {
        let mut input = commands.join("\n");
        input.push('\n');
        let (status, out, err) = bounded(
            Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &self.port.to_string()]),
            &input,
            CLIENT_LIMIT,
        );
        let lines: Vec<String> = out.lines().map(str::to_string).collect();
        assert!(
            status.success() && lines.len() == commands.len(),
            "redis-cli with {} commands: {status}, {} reply lines\n{out}{err}",
            commands.len(),
            lines.len()
        );
        lines
    }

    /// redis-benchmark against this server (quiet); returns the `NAME: N requests per second`
    /// results by test name.
    fn benchmark(&self, args: &[&str]) -> BTreeMap<String, f64> {
        let (status, out, err) = bounded(
            Command::new("redis-benchmark")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .args(args),
            "",
            CLIENT_LIMIT,
        );
        assert!(
            status.success(),
            "redis-benchmark {args:?}: {status}\n{out}{err}"
        );
        let mut results = BTreeMap::new();
        for line in out.split(['\r', '\n']) {
            if let Some((name, rest)) = line.split_once(": ") {
                if let Some(rps) = requests_per_second(rest) {
                    results.insert(name.trim().to_string(), rps);
                }
            }
        }
        assert!(
            !results.is_empty() && !out.contains("rror"),
            "redis-benchmark {args:?} reported no result or an error:\n{out}{err}"
        );
        results
    }

    /// `INFO commandstats`: calls by command name (`config|get`, `set`…).
    fn command_calls(&self) -> BTreeMap<String, u64> {
        let info = self.cli(&["INFO", "commandstats"]);
        let mut calls = BTreeMap::new();
        for line in info.lines() {
            let Some(rest) = line.trim().strip_prefix("cmdstat_") else {
                continue;
            };
            let (name, fields) = rest.split_once(':').unwrap();
            let n = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no calls= in {line}"));
            calls.insert(name.to_string(), n);
        }
        calls
    }

    /// `SHUTDOWN NOSAVE`, then waits (at most 60 s: zmtrace summarizes the dumps) for zmtrace to
    /// exit; returns its status.
    fn shutdown(&mut self) -> ExitStatus {
        // The server closes the connection without a reply: redis-cli's status says nothing.
        let _ = bounded(
            Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["SHUTDOWN", "NOSAVE"]),
            "",
            CLIENT_LIMIT,
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.zmtrace.try_wait().unwrap() {
                self.exited = Some(s);
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "zmtrace run did not end within 60 s of SHUTDOWN NOSAVE:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The dumps, read back (each must open), parent first.
    fn dumps(&self) -> Vec<Dump> {
        let mut v: Vec<Dump> = dump_files(&self.dumps)
            .iter()
            .map(|p| {
                Dump::open(p).unwrap_or_else(|e| panic!("{}: {e}\n{}", p.display(), self.log()))
            })
            .collect();
        v.sort_by_key(|d| (process(d).origin != Origin::Start, process(d).start_unix_ns));
        v
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        // Redis's process group (server and BGSAVE child), then zmtrace's.
        let mut groups: BTreeSet<u32> = children_of(self.zmtrace.id()).into_iter().collect();
        if self.redis_pid != 0 {
            groups.insert(self.redis_pid);
        }
        for g in groups {
            unsafe {
                libc::kill(-(g as i32), libc::SIGKILL);
            }
        }
        unsafe {
            libc::kill(-(self.zmtrace.id() as i32), libc::SIGKILL);
        }
        let _ = self.zmtrace.wait();
    }
}

/// `"12345.67 requests per second, p50=…"` → 12345.67.
fn requests_per_second(result: &str) -> Option<f64> {
    let i = result.find(" requests per second")?;
    result[..i].trim().parse().ok()
}

fn info_field(info: &str, key: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .map(str::to_string)
}

// ------------------------------------------------------------------------------------------------
// Reading the dumps through the CLI
// ------------------------------------------------------------------------------------------------

fn zmtrace_json(args: &[&OsStr]) -> Value {
    let f = run_zmtrace(args);
    assert_eq!(f.code, Some(0), "zmtrace {args:?} failed:\n{}", f.stderr);
    serde_json::from_str(&f.stdout).unwrap_or_else(|e| panic!("zmtrace {args:?}: {e}"))
}

fn report_json(cmd: &str, dump: &Path) -> Value {
    zmtrace_json(&[
        OsStr::new(cmd),
        dump.as_os_str(),
        OsStr::new("--json"),
        OsStr::new("--top"),
        OsStr::new("0"),
    ])
}

/// The functions of a JSON site's stack, innermost first (None where unknown).
fn functions(site: &Value) -> Vec<String> {
    site["stack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn has(site: &Value, function: &str) -> bool {
    functions(site).iter().any(|f| f == function)
}

/// Short description of the first `n` sites, for failure messages.
fn show_sites(sites: &Value, field: &str, n: usize) -> String {
    let mut s = String::new();
    for site in sites.as_array().unwrap().iter().take(n) {
        let f = functions(site);
        s += &format!(
            "  {} {}: {}\n",
            site[field],
            site["site"],
            f[..f.len().min(8)].join(" < ")
        );
    }
    s
}

/// Allocations (the `allocations` metric of the folded flamegraph) on stacks containing
/// `function`.
fn allocations_under(dump: &Path, function: &str) -> u64 {
    let f = run_zmtrace(&[
        OsStr::new("flamegraph"),
        dump.as_os_str(),
        OsStr::new("--metric"),
        OsStr::new("allocations"),
        OsStr::new("--folded"),
    ]);
    assert_eq!(
        f.code,
        Some(0),
        "zmtrace flamegraph --folded:\n{}",
        f.stderr
    );
    f.stdout
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(stack, _)| stack.split(';').any(|fr| fr == function))
        .map(|(_, n)| n.parse::<u64>().expect("folded count"))
        .sum()
}

/// Σ (arguments + 1) over the commands Redis executed (`INFO commandstats`), plus the
/// `INFO commandstats` that read them (not counted in its own output) and the `SHUTDOWN NOSAVE`
/// to come: the allocations `processMultibulkBuffer` makes (an argv array per command, an
/// object per argument, every argument here under 44 bytes: one allocation each).
fn argv_allocations(calls: &BTreeMap<String, u64>) -> u64 {
    // The arguments of each command as this test and redis-benchmark send it.
    let argc = |name: &str| -> u64 {
        match name {
            "ping" | "dbsize" | "bgsave" => 1,
            // (redis-cli reading commands from its stdin asks for COMMAND DOCS first.)
            "get" | "incr" | "strlen" | "llen" | "info" | "command|docs" => 2,
            "set" | "append" | "lpush" | "config|get" => 3,
            other => panic!("unexpected command {other} in INFO commandstats: {calls:?}"),
        }
    };
    let executed: u64 = calls.iter().map(|(n, &c)| c * (argc(n) + 1)).sum();
    executed + (2 + 1) + (2 + 1)
}

/// The parent dump is complete, ended by exit(0) (SHUTDOWN), and its total allocation count lies
/// within what the workload implies; the argv allocations are exact.
fn check_parent(server: &Server, dump: &Dump, argv_expected: u64) -> Value {
    let sym = Symbolizer::new();
    let (r, events) = replay_counts(dump, &sym, &|_| false);
    let run = Run {
        program: "redis-server".into(),
        args: vec![],
        dir: server.dumps.clone(),
        code: server.exited.and_then(|s| s.code()),
        stdout: String::new(),
        stderr: server.log(),
        dumps: vec![],
        started_unix_ns: 0,
        finished_unix_ns: 0,
    };
    assert_complete_counted(&run, dump, &r, events);
    let end = dump.end.unwrap();
    assert_eq!(end.reason, EndReason::Exit, "SHUTDOWN ends Redis by exit()");

    let argv = allocations_under(&dump.path, "processMultibulkBuffer");
    assert_eq!(
        argv, argv_expected,
        "allocations under processMultibulkBuffer: one argv array and one object per argument of \
         every command Redis executed"
    );
    let report = report_json("report", &dump.path);
    let total = report["allocations"].as_u64().unwrap();
    // Beyond the argv allocations: Redis's start-up (22,700 when the server only answers PING:
    // 10,176 shared objects, the command table, OpenSSL…), ~25 per client connection (100
    // redis-benchmark connections at most, a dozen redis-cli ones), one reply-list node per
    // pipeline (1,250 per test) and the values the load creates (a few hundred). At least the
    // 10,000 shared integers plus the rest of start-up; double-counted or lost events leave the
    // range.
    let (low, high) = (argv_expected + 15_000, argv_expected + 45_000);
    assert!(
        (low..=high).contains(&total),
        "{} allocations, expected {low}..={high} ({argv_expected} of them for the commands' \
         arguments)",
        total
    );
    eprintln!(
        "{}: {total} allocations ({argv} for arguments), {events} events",
        dump.path.display()
    );
    check_leaks(&report);
    report
}

/// The leak check at SHUTDOWN: Redis frees little before it exits, but its keyspace and its
/// shared objects are still reachable from its globals (the server struct); what is lost is
/// at most a small fraction (valgrind memcheck finds nothing definitely lost on such a run).
fn check_leaks(report: &Value) {
    let kind = |k: &str| report["kinds"][k]["bytes"].as_u64().unwrap();
    let live = report["leaked_bytes"].as_u64().unwrap();
    let lost = kind("definite") + kind("indirect");
    assert_eq!(report["check"]["trigger"], "exit", "{:#}", report["check"]);
    assert!(
        lost * 100 <= live,
        "{lost} bytes lost of {live} live at exit: {:#}",
        report["kinds"]
    );
    assert!(
        (kind("reachable") + kind("possible")) * 100 >= live * 90,
        "less than 90% of the {live} bytes live at exit reachable: {:#}",
        report["kinds"]
    );
    // main's three bio threads stop; jemalloc's background thread blocks every signal.
    assert!(
        report["check"]["threads_stopped"].as_u64().unwrap() >= 3,
        "{:#}",
        report["check"]
    );
}

// ------------------------------------------------------------------------------------------------
// The tests
// ------------------------------------------------------------------------------------------------

#[test]
fn redis_strings_append_and_bgsave() {
    let started = Instant::now();
    let mut server = Server::start("strings");
    let n = REQUESTS.to_string();
    let p = PIPELINE.to_string();

    // (a) SET, GET, INCR, pipelined. Without -r every request uses the same key.
    let results = server.benchmark(&["-n", &n, "-P", &p, "-t", "set,get,incr"]);
    assert_eq!(
        results.keys().collect::<Vec<_>>(),
        ["GET", "INCR", "SET"],
        "{results:?}"
    );
    assert_eq!(
        server.cli(&["GET", "counter:__rand_int__"]),
        n,
        "INCR count"
    );
    assert_eq!(
        server.cli(&["STRLEN", "key:__rand_int__"]),
        "3",
        "SET value (-d 3)"
    );

    // (b) APPEND 16 bytes to one of 100 keys at random, 20,000 times.
    let append = format!("APPEND key:__rand_int__ {APPEND_VALUE}");
    let results = server.benchmark(&[
        "-n",
        &n,
        "-P",
        &p,
        "-r",
        &APPEND_KEYS.to_string(),
        "APPEND",
        "key:__rand_int__",
        APPEND_VALUE,
    ]);
    assert_eq!(results.keys().collect::<Vec<_>>(), [&append], "{results:?}");
    let lens: Vec<u64> = server
        .cli_batch(
            &(0..APPEND_KEYS)
                .map(|i| format!("STRLEN key:{i:012}"))
                .collect::<Vec<_>>(),
        )
        .iter()
        .map(|l| l.parse().expect("STRLEN reply"))
        .collect();
    assert!(
        lens.iter().all(|&l| l > 0 && l % 16 == 0),
        "every key got whole appends: {lens:?}"
    );
    assert_eq!(
        lens.iter().sum::<u64>(),
        REQUESTS * APPEND_VALUE.len() as u64,
        "bytes appended over the 100 keys: no request lost"
    );
    assert_eq!(
        server.cli(&["DBSIZE"]),
        (APPEND_KEYS + 2).to_string(),
        "key:__rand_int__, counter:__rand_int__ and the 100 APPEND keys"
    );

    // (c) BGSAVE: a forked child writes dump.rdb.
    assert_eq!(server.cli(&["BGSAVE"]), "Background saving started");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = server.cli(&["INFO", "persistence"]);
        if info_field(&info, "rdb_bgsave_in_progress").as_deref() == Some("0") {
            assert_eq!(
                info_field(&info, "rdb_last_bgsave_status").as_deref(),
                Some("ok"),
                "{info}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "BGSAVE still running after 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.work.join("dump.rdb").is_file());

    // Exactly the requests sent, as Redis counted them.
    let calls = server.command_calls();
    for cmd in ["set", "incr", "append"] {
        assert_eq!(calls.get(cmd), Some(&REQUESTS), "{cmd} calls: {calls:?}");
    }
    assert_eq!(calls.get("get"), Some(&(REQUESTS + 1)), "{calls:?}");
    let argv_expected = argv_allocations(&calls);

    // (d) SHUTDOWN NOSAVE: zmtrace exits with Redis's status.
    let status = server.shutdown();
    assert_eq!(
        status.code(),
        Some(0),
        "zmtrace run: {status}\n{}",
        server.log()
    );
    let load_done = started.elapsed();

    let dumps = server.dumps();
    assert_eq!(
        dumps.len(),
        2,
        "the server and its BGSAVE child\n{}",
        server.log()
    );
    let (parent, child) = (&dumps[0], &dumps[1]);
    let (pp, cp) = (process(parent), process(child));
    assert_eq!(
        (pp.origin, cp.origin, cp.parent_pid, pp.pid),
        (Origin::Start, Origin::Fork, pp.pid, server.redis_pid),
        "(parent origin, child origin, child's parent pid, parent pid)"
    );

    // The parent.
    check_parent(&server, parent, argv_expected);
    let churn = report_json("churn", &parent.path);
    let top = &churn["sites"][0];
    assert!(
        top["site"] == "_sdsMakeRoomFor"
            && has(top, "zrealloc_usable")
            && has(top, "appendCommand"),
        "the churn report's first site (most bytes copied) is APPEND growing strings: \
         _sdsMakeRoomFor < zrealloc_usable, from appendCommand; sites:\n{}",
        show_sites(&churn["sites"], "bytes_copied", 5)
    );
    // 100 strings grown from 16 bytes to ~3,200 by geometric steps: several reallocs each.
    let (reallocs, grew) = (
        top["reallocs"].as_u64().unwrap(),
        top["grew"].as_u64().unwrap(),
    );
    assert!(
        reallocs >= 2 * APPEND_KEYS && grew == reallocs && top["bytes_copied"].as_u64() > Some(0),
        "{top:#}"
    );

    let leaks = report_json("leaks", &parent.path);
    let sites = leaks["sites"].as_array().unwrap();
    let names: BTreeSet<&str> = sites.iter().map(|s| s["site"].as_str().unwrap()).collect();
    for f in [
        "aeCreateEventLoop",
        "createClient",
        "dictCreate",
        "createObject",
        "_sdsMakeRoomFor",
    ] {
        assert!(
            names.contains(f),
            "SHUTDOWN leaves Redis's structures allocated: no leak site {f}:\n{}",
            show_sites(&leaks["sites"], "bytes", 30)
        );
    }
    // The 100 APPEND values: live at exit, each grown by realloc, under appendCommand.
    let appended: Vec<&Value> = sites
        .iter()
        .filter(|s| s["site"] == "_sdsMakeRoomFor" && has(s, "appendCommand"))
        .collect();
    let sum = |v: &[&Value], k: &str| v.iter().map(|s| s[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(
        (sum(&appended, "blocks"), sum(&appended, "via_realloc")),
        (APPEND_KEYS, APPEND_KEYS),
        "leaked APPEND values (blocks, grown by realloc):\n{}",
        show_sites(&leaks["sites"], "blocks", 30)
    );
    // Redis's 10,000 shared integers (and other shared objects), made at start-up.
    let shared: Vec<&Value> = sites
        .iter()
        .filter(|s| s["site"] == "createObject" && has(s, "createSharedObjects"))
        .collect();
    let shared_blocks = sum(&shared, "blocks");
    assert!(
        (10_000..11_000).contains(&shared_blocks),
        "{shared_blocks} shared objects"
    );

    // The BGSAVE child: complete, ended by _exit(0), and what it allocated is the save path:
    // rdbSaveLzfStringObject compresses each of the 100 APPEND values (the only strings over 20
    // bytes) into a buffer of length - 4 + 1 bytes, freed right away.
    let sym = Symbolizer::new();
    let (r, events) = replay_counts(child, &sym, &|_| false);
    let run = Run {
        program: "redis-server".into(),
        args: vec![],
        dir: server.dumps.clone(),
        code: Some(0),
        stdout: String::new(),
        stderr: server.log(),
        dumps: vec![],
        started_unix_ns: 0,
        finished_unix_ns: 0,
    };
    assert_complete_counted(&run, child, &r, events);
    let end = child.end.unwrap();
    assert_eq!((end.reason, end.status), (EndReason::UnderscoreExit, 0));
    assert!(
        !child.inherited.is_empty(),
        "the child inherits the dataset"
    );
    let report = report_json("report", &child.path);
    let top_allocs = &report["top"]["allocations"];
    assert!(
        top_allocs[0]["site"]
            .as_str()
            .is_some_and(|s| s.starts_with("rdbSave")),
        "the BGSAVE child's first allocation site is Redis's save path:\n{}",
        show_sites(top_allocs, "value", 5)
    );
    let by_site = |list: &Value, name: &str| -> u64 {
        list.as_array()
            .unwrap()
            .iter()
            .filter(|s| s["site"] == name)
            .map(|s| s["value"].as_u64().unwrap())
            .sum()
    };
    let total_len: u64 = lens.iter().sum();
    assert_eq!(
        (
            by_site(top_allocs, "rdbSaveLzfStringObject"),
            by_site(&report["top"]["bytes"], "rdbSaveLzfStringObject"),
            by_site(&report["top"]["temporary"], "rdbSaveLzfStringObject"),
        ),
        (APPEND_KEYS, total_len - 3 * APPEND_KEYS, APPEND_KEYS),
        "rdbSaveLzfStringObject: (allocations, bytes, temporary)\n{}",
        show_sites(top_allocs, "value", 5)
    );
    eprintln!(
        "redis strings: load and shutdown {:.1} s, checked at {:.1} s",
        load_done.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn redis_list_push() {
    let started = Instant::now();
    let mut server = Server::start("list");
    let n = REQUESTS.to_string();
    let p = PIPELINE.to_string();
    let results = server.benchmark(&["-n", &n, "-P", &p, "-t", "lpush"]);
    assert_eq!(results.keys().collect::<Vec<_>>(), ["LPUSH"], "{results:?}");
    // redis-benchmark's LPUSH pushes onto "mylist".
    assert_eq!(server.cli(&["LLEN", "mylist"]), n, "no LPUSH lost");
    let calls = server.command_calls();
    assert_eq!(calls.get("lpush"), Some(&REQUESTS), "{calls:?}");
    let argv_expected = argv_allocations(&calls);
    let status = server.shutdown();
    assert_eq!(
        status.code(),
        Some(0),
        "zmtrace run: {status}\n{}",
        server.log()
    );

    let dumps = server.dumps();
    assert_eq!(dumps.len(), 1, "no fork without BGSAVE\n{}", server.log());
    let parent = &dumps[0];
    check_parent(&server, parent, argv_expected);

    let churn = report_json("churn", &parent.path);
    let top = &churn["sites"][0];
    assert!(
        top["site"] == "lpInsert" && has(top, "pushGenericCommand"),
        "the churn report's first site is the list's listpack nodes growing (lpInsert, from \
         pushGenericCommand); sites:\n{}",
        show_sites(&churn["sites"], "bytes_copied", 5)
    );
    assert_eq!(top["grew"], top["reallocs"], "{top:#}");
    // 20,000 entries of 5 bytes (a 3-byte string) in listpack nodes of at most 8 KiB: at least 13
    // nodes, each grown by realloc, all live at exit.
    let leaks = report_json("leaks", &parent.path);
    let nodes: Vec<&Value> = leaks["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["site"] == "lpInsert")
        .collect();
    let blocks: u64 = nodes.iter().map(|s| s["blocks"].as_u64().unwrap()).sum();
    let via: u64 = nodes
        .iter()
        .map(|s| s["via_realloc"].as_u64().unwrap())
        .sum();
    assert!(
        (13..=40).contains(&blocks) && via == blocks,
        "listpack nodes leaked at lpInsert: {blocks} blocks, {via} grown by realloc"
    );
    eprintln!(
        "redis list: checked at {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

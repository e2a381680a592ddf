//! `zmtrace run --serve ADDR`: while the program runs, its heap as Go's `net/http/pprof` serves
//! one, for Parca, Grafana Alloy's `pyroscope.scrape` or `go tool pprof URL`:
//!
//! - `/debug/pprof/heap`: what is in use now (`inuse_*` sample types first, `inuse_space` shown);
//! - `/debug/pprof/allocs`: everything allocated since the start (`alloc_*` first,
//!   `alloc_space` shown).
//!
//! Both are gzipped `profile.proto`, written by the export's encoder
//! ([`zmtrace_report::export::pprof`]). They are built here, in the `zmtrace` process, never in
//! the traced program: the recorder's writer thread appends whole records to the dump at least
//! every 0.1 s, and the reader takes every intact record of a dump still being written.
//!
//! A follower thread ([`Profiles::follow`]) replays the dump as it grows, whether or not anyone
//! scrapes ([`zmtrace_analyze::follow`] reads only the records added since its last batch): a
//! scrape only sums up the state it has reached and encodes it, so the heap served is that of a
//! fraction of a second ago whenever the replay is faster than the recording. (Replaying on
//! request, bounded to 4 s of replay a scrape, a program making ~1 M events/s left the scrapes
//! of every 10 s further behind each time: 353 MB behind after 2.5 min, scrapes of 4-9 s.) The
//! state is one mutex, held by the follower for one batch (~0.1 s of replay) at a time and by a
//! scrape while it builds; a waiting scrape gets it at the end of the batch in progress. The
//! backlog of a program faster than the replay stays in the file (a batch reads a bounded
//! part of it), so memory does not grow with it; the program is never held up by it (it only
//! writes its dump); `behind=` and one line on stderr say so. The profiles are cached by the
//! dump's length.
//!
//! The dump served is the main process's: the process `run` started (after an `exec`, its newest
//! dump). Forked children have dumps of their own, not served (`zmtrace export` reads them after).
//!
//! HTTP is [`crate::serve`]'s (hyper, with its bounds; the one `view --serve` uses), with two routes.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use zmtrace_analyze::follow::Follow;
use zmtrace_analyze::{Analysis, FrameCache, Symbolizer};
use zmtrace_format::Dump;
use zmtrace_report::export::pprof;
use zmtrace_report::export::{Profile, SampleType};

use crate::serve::{Response, Server, Shutdown};
use crate::Failure;

/// `--serve`'s address: `HOST:PORT`, an IP literal (`[::1]:PORT` for IPv6), `localhost:PORT`, or
/// `:PORT` for 127.0.0.1. Nothing is bound to a non-loopback address unless it is written out.
pub fn parse_addr(s: &str) -> Result<SocketAddr, Failure> {
    let bad = || {
        Failure::bad_input(format!(
            "bad --serve address {s:?}: expected HOST:PORT or :PORT (127.0.0.1), e.g. \
             127.0.0.1:6060"
        ))
    };
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.parse().map_err(|_| bad())
}

/// What the follower thread and the requests share.
struct Profiles {
    dir: PathBuf,
    session: String,
    pid: u32,
    state: Mutex<State>,
    /// Requests waiting for `state`: the follower lets them have it between two batches (a
    /// `Mutex` is not fair, and the follower would take it again at once).
    waiting: AtomicUsize,
    /// Set by [`Scrape::stop`]; `wake` ends the follower's sleep.
    stop: Mutex<bool>,
    wake: Condvar,
    /// Bytes of dump the follower replays per second at most (`ZMTRACE_SERVE_REPLAY_RATE`).
    max_rate: Option<f64>,
    /// The most bytes one batch reads (`ZMTRACE_SERVE_READ_LIMIT`).
    cap: u64,
}

/// The dump's length when the profiles were built, and the two gzipped profiles (heap, allocs).
type Built = (u64, Arc<[u8]>, Arc<[u8]>);

#[derive(Default)]
struct State {
    dump: Option<PathBuf>,
    /// When the session's dumps were last looked for (after an `exec` the dump served changes).
    looked: Option<Instant>,
    /// The dump served, read and replayed as far as the follower has gone.
    follow: Option<Follow>,
    built: Option<Built>,
    /// Frames looked up so far, so that a scrape looks up in module files only the new
    /// addresses (the lookups were most of a scrape's time, every scrape again).
    frames: FrameCache,
    /// Bytes of dump read and replayed per second by the last batch that read enough to tell:
    /// what [`batch_limit`] sizes the next batch by.
    rate: Option<f64>,
    /// The last batch's error (one line), until a batch succeeds.
    error: Option<String>,
    /// When a batch last ended within [`CAUGHT_UP_S`] of replay of the dump's end.
    caught_up: Option<Instant>,
    /// The follower's work so far: reading and parsing, replaying, and batches.
    follow_read: Duration,
    follow_replay: Duration,
    batches: u64,
    /// The one-line warning that the replay cannot keep up has been printed.
    warned: bool,
}

/// What one batch of the follower found.
#[derive(Debug, PartialEq)]
enum Step {
    /// No dump yet, or nothing new in it: sleep.
    Idle,
    /// Read something, more may be there: go on.
    Busy { bytes: u64, spent: Duration },
}

/// The `inuse_*` types first: Go's `/debug/pprof/heap`.
const HEAP: [SampleType; 5] = [
    SampleType::InuseObjects,
    SampleType::InuseSpace,
    SampleType::AllocObjects,
    SampleType::AllocSpace,
    SampleType::LostSpace,
];
/// The `alloc_*` types first: Go's `/debug/pprof/allocs`.
const ALLOCS: [SampleType; 5] = [
    SampleType::AllocObjects,
    SampleType::AllocSpace,
    SampleType::InuseObjects,
    SampleType::InuseSpace,
    SampleType::LostSpace,
];

/// How long one batch of the follower replays, about: the longest a request waits for the
/// follower to let go of the state, and how far behind the dump's end "in use now" is at most
/// while the follower keeps up.
const BATCH_S: f64 = 0.1;
/// What the first batch reads at most, before any rate is known.
const FIRST_BATCH: u64 = 1 << 20;
/// The least a batch reads (a record larger is read whole all the same).
const MIN_BATCH: u64 = 64 << 10;
/// Below this, a batch is too small to time.
const RATE_MIN_BYTES: u64 = 64 << 10;
/// How often the follower looks at a dump that has not grown: the recorder's writer flushes
/// every 0.1 s, so a scrape finds the state at most this much plus that behind the program.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// An aggregated (or damaged) dump is read whole at each update: not more often than this.
const WHOLE_POLL: Duration = Duration::from_secs(1);
/// How often the session's dumps are looked for again (a new one after an `exec`).
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Behind the dump's end by no more than this much replay: caught up. (A program that writes
/// all the time leaves the follower a batch or so behind at any moment, never at the very end.)
const CAUGHT_UP_S: f64 = 1.0;
/// Not caught up for this long: the replay cannot keep up (one warning).
const BEHIND_WARN: Duration = Duration::from_secs(5);

impl Profiles {
    /// The main process's dump: the newest of the session's dumps of the pid `run` started (a
    /// second one is its dump after an `exec`).
    fn dump_path(&self, st: &mut State) -> Option<PathBuf> {
        if st.dump.is_none() || st.looked.is_none_or(|t| t.elapsed() >= LOOK_EVERY) {
            st.looked = Some(Instant::now());
            let newest = crate::run::session_dumps(&self.dir, &self.session)
                .into_iter()
                .rfind(|p| Dump::peek_process(p).is_some_and(|proc| proc.pid == self.pid));
            if newest.is_some() {
                st.dump = newest;
            }
        }
        st.dump.clone()
    }

    /// One batch: reads and replays what the dump has added since the last one, about
    /// [`BATCH_S`] of replay of it.
    fn step(&self, st: &mut State) -> Step {
        let Some(path) = self.dump_path(st) else {
            return Step::Idle;
        };
        // After an exec, the dump served is another file: followed from its start.
        if st.follow.as_ref().is_none_or(|f| f.path() != path) {
            st.follow = Some(Follow::new(&path));
            st.built = None;
            st.frames = FrameCache::default();
            st.rate = None;
            // Counted from here: a long first batch is not "behind" yet.
            st.caught_up = Some(Instant::now());
        }
        let follow = st.follow.as_mut().expect("just set");
        // Throttled, a batch is what the rate allows in [`BATCH_S`], so that the follower looks
        // at the dump (and tells how far behind it is) as often as unthrottled.
        let cap = self
            .max_rate
            .map_or(self.cap, |r| self.cap.min((r * BATCH_S) as u64));
        follow.set_limit(batch_limit(st.rate, cap));
        let before = follow.len();
        if let Err(e) = follow.update() {
            st.error = Some(one_line(&e));
            return Step::Idle;
        }
        st.error = None;
        let cost = follow.last_update();
        let spent = cost.read + cost.replay;
        st.follow_read += cost.read;
        st.follow_replay += cost.replay;
        st.batches += 1;
        if cost.bytes >= RATE_MIN_BYTES && !spent.is_zero() {
            st.rate = Some(next_rate(st.rate, cost.bytes as f64 / spent.as_secs_f64()));
        }
        let near = st.rate.map_or(FIRST_BATCH, |r| (r * CAUGHT_UP_S) as u64);
        let near = self
            .max_rate
            .map_or(near, |r| near.min((r * CAUGHT_UP_S) as u64));
        if follow.behind() <= near {
            st.caught_up = Some(Instant::now());
        } else if !st.warned && st.caught_up.is_some_and(|t| t.elapsed() >= BEHIND_WARN) {
            st.warned = true;
            eprintln!(
                "zmtrace: --serve cannot keep up: the program writes its dump faster than it is \
                 replayed ({} MiB behind); scrapes serve the heap as far as the replay is \
                 (behind= in x-zmtrace-replay)",
                follow.behind() >> 20
            );
        }
        // No whole record more (a record half-written stays for the next batch, after a sleep).
        if follow.len() == before {
            Step::Idle
        } else {
            Step::Busy {
                bytes: cost.bytes,
                spent,
            }
        }
    }

    /// The follower thread: replays the dump as it grows, whether or not anyone scrapes, until
    /// [`Scrape::stop`]. It holds the state for one batch at a time, and lets a waiting request
    /// have it between two.
    fn follow(&self) {
        loop {
            while self.waiting.load(Ordering::Acquire) > 0 && !self.stopped() {
                std::thread::sleep(Duration::from_millis(1));
            }
            let (step, whole) = {
                let mut st = self.lock();
                let step = self.step(&mut st);
                let whole = st.follow.as_ref().is_some_and(|f| f.replay().is_none());
                (step, whole)
            };
            let pause = match step {
                Step::Idle if whole => WHOLE_POLL,
                Step::Idle => IDLE_POLL,
                Step::Busy { bytes, spent } => match self.max_rate {
                    // Throttled: the batch's bytes take this long at the rate allowed.
                    Some(r) => Duration::from_secs_f64(bytes as f64 / r).saturating_sub(spent),
                    None => Duration::ZERO,
                },
            };
            if self.sleep(pause) {
                return;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps `d`, or less if stopped; whether stopped.
    fn sleep(&self, d: Duration) -> bool {
        let stop = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        if d.is_zero() {
            return *stop;
        }
        let (stop, _) = self
            .wake
            .wait_timeout_while(stop, d, |s| !*s)
            .unwrap_or_else(|e| e.into_inner());
        *stop
    }

    fn get(&self, heap: bool) -> Response {
        let started = Instant::now();
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let mut st = self.lock();
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let mut time = Timing {
            wait: started.elapsed(),
            ..Timing::default()
        };
        if st.follow.is_none() {
            // The follower has not found the dump yet (or this came first): a batch now.
            let t = Instant::now();
            self.step(&mut st);
            time.read = t.elapsed();
        }
        let st = &mut *st; // its fields borrowed apart
        if let Some(e) = &st.error {
            return Response::text(503, &format!("{e}\n"));
        }
        let Some(follow) = st.follow.as_ref().filter(|f| !f.is_empty()) else {
            return Response::text(503, "the program has not opened its dump yet\n");
        };
        let len = follow.len();
        // How old the state served may be: since the follower was last within a second of
        // replay of the dump's end.
        let age = st.caught_up.map_or(0, |t| t.elapsed().as_millis());
        let fresh = st.built.as_ref().filter(|b| b.0 == len).cloned();
        time.cached = fresh.is_some();
        let (_, h, a) = match fresh {
            Some(b) => b,
            None => {
                let analysing = Instant::now();
                let analysis = follow.analysis();
                time.replay = analysing.elapsed();
                match build(follow.dump(), &analysis, &mut st.frames, &mut time) {
                    Ok((h, a)) => {
                        st.built = Some((len, h.into(), a.into()));
                        st.built.clone().expect("just built")
                    }
                    Err(e) => return Response::text(503, &format!("{}\n", one_line(&e))),
                }
            }
        };
        // Behind the dump as it is now, not as the follower last saw it.
        let file_len = std::fs::metadata(follow.path()).map_or(0, |m| m.len());
        // What serving cost so far, for whoever wonders (and the tests): the dump's length
        // replayed, the bytes read from it, the events decoded, the frames looked up in module
        // files (each address once), the bytes of dump not replayed yet, how long ago the
        // follower was last within a second of the dump's end, and its batches.
        let cost = format!(
            "dump={len} read={} decoded={} lookups={} behind={} age_ms={age} batches={}",
            follow.bytes_read(),
            follow.replay().map_or(0, |r| r.decoded),
            st.frames.lookups,
            file_len.saturating_sub(len),
            st.batches,
        );
        time.follow_read = st.follow_read;
        time.follow_replay = st.follow_replay;
        time.total = started.elapsed();
        Response::new(200, "application/octet-stream", if heap { h } else { a })
            .with_header("x-zmtrace-replay", cost)
            .with_header("x-zmtrace-time", time.header())
    }
}

/// An error as one line (a header, or one line of a 503's body).
fn one_line(e: &str) -> String {
    e.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Where one scrape's time went, in the `x-zmtrace-time` header. The dump is read and replayed
/// by the follower thread, in the background; this scrape's own parts are waiting for the
/// follower's batch in progress to end, reading (only when the follower had not opened the dump
/// yet), replaying (the newest second of events, held back from the kept replay, on a copy, and
/// the sum of the heap), looking the new stacks' addresses up in the module files, and encoding
/// and gzipping the two profiles. A scrape that finds the dump as it was at the last one serves
/// the profiles built then. `follow_read_us`/`follow_replay_us` are the follower's totals since
/// the start, not this scrape's.
#[derive(Default)]
struct Timing {
    wait: Duration,
    read: Duration,
    replay: Duration,
    symbolize: Duration,
    build: Duration,
    total: Duration,
    cached: bool,
    follow_read: Duration,
    follow_replay: Duration,
}

impl Timing {
    fn header(&self) -> String {
        let us = |d: Duration| d.as_micros();
        format!(
            "wait_us={} read_us={} replay_us={} symbolize_us={} build_us={} total_us={} \
             cached={} follow_read_us={} follow_replay_us={}",
            us(self.wait),
            us(self.read),
            us(self.replay),
            us(self.symbolize),
            us(self.build),
            us(self.total),
            u8::from(self.cached),
            us(self.follow_read),
            us(self.follow_replay),
        )
    }
}

/// The rate the next batch is sized by, after one that ran at `now`: down at once, up by half
/// the way (on a shared machine one batch's rate is a poor forecast of the next one's).
fn next_rate(last: Option<f64>, now: f64) -> f64 {
    last.map_or(now, |l| now.min((l + now) / 2.0))
}

/// The most bytes of dump one batch reads and replays: what the last batch's rate replays in
/// [`BATCH_S`] (bytes are a poor measure of replay time by themselves: an event takes 1.35 to 10
/// bytes of dump, by how well its stream compresses), at least [`MIN_BATCH`], at most `cap`.
fn batch_limit(rate: Option<f64>, cap: u64) -> u64 {
    let budget = rate.map_or(FIRST_BATCH, |r| ((r * BATCH_S) as u64).max(MIN_BATCH));
    budget.min(cap)
}

/// `ZMTRACE_SERVE_READ_LIMIT`: the most bytes a batch reads (default
/// [`zmtrace_analyze::follow::DEFAULT_LIMIT`]).
fn read_cap() -> u64 {
    env_number("ZMTRACE_SERVE_READ_LIMIT").unwrap_or(zmtrace_analyze::follow::DEFAULT_LIMIT)
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
}

/// Both profiles of the dump read so far (`dump`: its records; `a`: what its events say).
fn build(
    dump: &Dump,
    a: &Analysis,
    frames: &mut FrameCache,
    time: &mut Timing,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let symbolizing = Instant::now();
    let profile = Profile::from_analysis(a);
    let mut sym = Symbolizer::with_frames(dump, std::mem::take(frames));
    // Every stack's addresses looked up now, so that the time of the lookups is told apart from
    // the encoding's (which then finds them in the symbolizer's cache).
    for (id, _) in &profile.stacks {
        let _ = sym.stack_addresses(*id);
    }
    time.symbolize = symbolizing.elapsed();
    let building = Instant::now();
    let wrappers = zmtrace_report::reports::Options::default().wrappers;
    let mut one = |shown, order: &[SampleType]| {
        let mut p = pprof::build_with_types(dump, &profile, &mut sym, &wrappers, shown, order);
        // The dump is still being written: "in use" is now, not where a dump cut short ends.
        pprof::set_inuse_comment(
            &mut p,
            "inuse_*: live now (the program is running; zmtrace run --serve)",
        );
        let mut out = Vec::new();
        pprof::gzip(&p, &mut out).map(|()| out)
    };
    let heap = one(SampleType::InuseSpace, &HEAP);
    let allocs = one(SampleType::AllocSpace, &ALLOCS);
    time.build = building.elapsed();
    // Kept even if a profile failed: the frames found are right either way.
    *frames = sym.take_frames();
    Ok((
        heap.map_err(|e| e.to_string())?,
        allocs.map_err(|e| e.to_string())?,
    ))
}

/// Serving on a thread of its own, and following the dump on another, until [`Scrape::stop`].
pub struct Scrape {
    shutdown: Shutdown,
    thread: std::thread::JoinHandle<()>,
    profiles: Arc<Profiles>,
    follower: std::thread::JoinHandle<()>,
}

/// Binds `addr` (before the program starts: a taken port fails `run` at once).
pub fn bind(addr: SocketAddr) -> Result<Server, Failure> {
    Server::bind(addr).map_err(|e| Failure::setup(format!("cannot listen on {addr}: {e}")))
}

/// Serves the profiles of the dumps `pid` writes in `dir` for `session`.
pub fn start(server: Server, dir: PathBuf, session: String, pid: u32) -> Scrape {
    let shutdown = server.shutdown();
    let profiles = Arc::new(Profiles {
        dir,
        session,
        pid,
        state: Mutex::default(),
        waiting: AtomicUsize::new(0),
        stop: Mutex::new(false),
        wake: Condvar::new(),
        max_rate: env_number("ZMTRACE_SERVE_REPLAY_RATE").map(|r| r as f64),
        cap: read_cap(),
    });
    let p = profiles.clone();
    let follower = std::thread::spawn(move || p.follow());
    let p = profiles.clone();
    let thread = std::thread::spawn(move || {
        let _ = server
            .allow_post()
            .serve(move |r| match (r.method.as_str(), r.path.as_str()) {
                (_, "/debug/pprof/symbol") => {
                    // Go's symbol service, which pprof asks (a POST of addresses) for the frames of a
                    // mapping the profile could not name all of: zmtrace named what it could when it
                    // built the profile, so the answer is that it knows no more. (pprof has tried
                    // the files on its own machine by then.)
                    Response::text(200, "num_symbols: 1\n")
                }
                ("POST", _) => Response::text(405, "only GET and HEAD here\n"),
                (_, "/debug/pprof/heap") => p.get(true),
                (_, "/debug/pprof/allocs") => p.get(false),
                _ => Response::text(
                    404,
                    "not found: /debug/pprof/heap (in use now) and /debug/pprof/allocs (since the \
                 start) are served\n",
                ),
            });
    });
    Scrape {
        shutdown,
        thread,
        profiles,
        follower,
    }
}

impl Scrape {
    /// Stops serving once the program has ended: the requests in flight are answered, then the
    /// follower stops where it is (a backlog it had not replayed yet is not replayed for no one).
    pub fn stop(self) {
        self.shutdown.stop();
        let _ = self.thread.join();
        *self.profiles.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.profiles.wake.notify_all();
        let _ = self.follower.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch reads what the last one's rate replays in [`BATCH_S`]: 1 MiB before any rate, at
    /// least 64 KiB, at most the cap.
    #[test]
    fn a_batch_reads_what_the_last_rate_replays_in_its_budget() {
        assert_eq!(next_rate(None, 8.0), 8.0);
        assert_eq!(next_rate(Some(8.0), 2.0), 2.0);
        assert_eq!(next_rate(Some(2.0), 8.0), 5.0);
        let cap = 64 << 20;
        assert_eq!(batch_limit(None, cap), FIRST_BATCH);
        assert_eq!(batch_limit(Some(1e7), cap), (1e7 * BATCH_S) as u64);
        assert_eq!(batch_limit(Some(10.0), cap), MIN_BATCH);
        assert_eq!(batch_limit(Some(1e12), cap), cap);
        assert_eq!(batch_limit(None, 1), 1);
    }

    #[test]
    fn errors_are_one_line() {
        assert_eq!(one_line("a: b\n  c\n"), "a: b c");
    }

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(parse_addr(":6060").unwrap().to_string(), "127.0.0.1:6060");
        assert_eq!(
            parse_addr("localhost:6060").unwrap().to_string(),
            "127.0.0.1:6060"
        );
        assert_eq!(parse_addr("0.0.0.0:80").unwrap().to_string(), "0.0.0.0:80");
        assert_eq!(parse_addr("[::1]:7").unwrap().to_string(), "[::1]:7");
        for bad in ["", "6060", ":", ":99999", "host:1", "127.0.0.1"] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }
}

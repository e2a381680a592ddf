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
//! every 0.1 s, and the reader takes every intact record of a dump still being written, so a
//! replay of the dump as it is now is the heap of ~0.1 s ago. The replay is kept from one request
//! to the next ([`zmtrace_analyze::follow`]): each request reads and replays only the records
//! added since the last one, and the profiles are cached by the dump's length. (Replaying the
//! whole dump for each one cost what `zmtrace report` costs on it: 6.3 s at 446 MB.)
//!
//! The dump served is the main process's: the process `run` started (after an `exec`, its newest
//! dump). Forked children have dumps of their own, not served (`zmtrace export` reads them after).
//!
//! HTTP is [`crate::serve`]'s (hyper, with its bounds; the one `view --serve` uses), with two routes.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
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

/// The routes, and the profiles last built.
struct Profiles {
    dir: PathBuf,
    session: String,
    pid: u32,
    cache: Mutex<Cache>,
}

/// The dump's length when the profiles were built, and the two gzipped profiles (heap, allocs).
type Built = (u64, Arc<[u8]>, Arc<[u8]>);

#[derive(Default)]
struct Cache {
    dump: Option<PathBuf>,
    /// The dump served, read and replayed up to where it was at the last request.
    follow: Option<Follow>,
    built: Option<Built>,
    /// Frames looked up so far, so that a scrape looks up in module files only the new
    /// addresses (the lookups were most of a scrape's time, every scrape again).
    frames: FrameCache,
    /// Bytes of dump read and replayed per second at the last scrape that read enough to
    /// tell: what [`read_limit`] sizes the next one's read by.
    rate: Option<f64>,
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

impl Profiles {
    /// The main process's dump: the newest of the session's dumps of the pid `run` started (a
    /// second one is its dump after an `exec`).
    fn dump_path(&self, cache: &mut Cache) -> Option<PathBuf> {
        let newest = crate::run::session_dumps(&self.dir, &self.session)
            .into_iter()
            .rfind(|p| Dump::peek_process(p).is_some_and(|proc| proc.pid == self.pid));
        if newest.is_some() {
            cache.dump = newest;
        }
        cache.dump.clone()
    }

    fn get(&self, heap: bool) -> Response {
        let started = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let Some(path) = self.dump_path(&mut cache) else {
            return Response::text(503, "the program has not opened its dump yet\n");
        };
        let cache = &mut *cache; // its fields borrowed apart
                                 // After an exec, the dump served is another file: followed from its start.
        if cache.follow.as_ref().is_none_or(|f| f.path() != path) {
            cache.follow = Some(Follow::new(&path));
            cache.built = None;
            cache.frames = FrameCache::default();
            cache.rate = None;
        }
        let follow = cache.follow.as_mut().expect("just set");
        follow.set_limit(read_limit(cache.rate));
        if let Err(e) = follow.update() {
            return Response::text(503, &format!("{e}\n"));
        }
        let update = follow.last_update();
        let spent = (update.read + update.replay).as_secs_f64();
        // Too little read to time (a few records, microseconds): the rate stays as it was.
        if update.bytes >= RATE_MIN_BYTES && spent > 0.0 {
            cache.rate = Some(next_rate(cache.rate, update.bytes as f64 / spent));
        }
        let len = follow.len();
        let mut time = Timing {
            read: update.read,
            replay: update.replay,
            ..Timing::default()
        };
        let fresh = cache.built.as_ref().filter(|b| b.0 == len).cloned();
        time.cached = fresh.is_some();
        let (_, h, a) = match fresh {
            Some(b) => b,
            None => {
                let analysing = Instant::now();
                let analysis = follow.analysis();
                time.replay += analysing.elapsed();
                match build(follow.dump(), &analysis, &mut cache.frames, &mut time) {
                    Ok((h, a)) => {
                        cache.built = Some((len, h.into(), a.into()));
                        cache.built.clone().expect("just built")
                    }
                    Err(e) => return Response::text(503, &format!("{e}\n")),
                }
            }
        };
        // What serving cost so far, for whoever wonders (and the tests): the dump's length read,
        // the bytes read from it, the events decoded, the bytes of dump not read yet (an update
        // reads at most `read_limit()`). Without the kept replay, each scrape read and decoded
        // the whole dump again. `lookups`: the frames looked up in module files so far (each
        // address once).
        let cost = format!(
            "dump={len} read={} decoded={} lookups={} behind={}",
            follow.bytes_read(),
            follow.replay().map_or(0, |r| r.decoded),
            cache.frames.lookups,
            follow.behind(),
        );
        time.total = started.elapsed();
        Response::new(200, "application/octet-stream", if heap { h } else { a })
            .with_header("x-zmtrace-replay", cost)
            .with_header("x-zmtrace-time", time.header())
    }
}

/// Where one scrape's time went, in the `x-zmtrace-time` header: reading the dump's new bytes
/// (and parsing their records), replaying their events (and summing the heap up), looking the
/// new stacks' addresses up in the module files, and encoding and gzipping the two profiles. A
/// scrape that finds the dump as it was at the last one serves the profiles built then.
#[derive(Default)]
struct Timing {
    read: Duration,
    replay: Duration,
    symbolize: Duration,
    build: Duration,
    total: Duration,
    cached: bool,
}

impl Timing {
    fn header(&self) -> String {
        let us = |d: Duration| d.as_micros();
        format!(
            "read_us={} replay_us={} symbolize_us={} build_us={} total_us={} cached={}",
            us(self.read),
            us(self.replay),
            us(self.symbolize),
            us(self.build),
            us(self.total),
            u8::from(self.cached)
        )
    }
}

/// How long a scrape may spend reading and replaying the dump's backlog: inside the scrapers'
/// timeouts (Grafana Alloy's is 10 s by default, Parca's the scrape interval, 10 s by default),
/// with room for the symbolizing, the encoding, and the replay of the newest second held back.
/// A program that makes more events per scrape interval than that replays (at 10 s, 40 % of the
/// replay's rate) is served further and further behind, as `behind=` says, rather than with
/// scrapes that time out.
const REPLAY_BUDGET_S: f64 = 4.0;
/// What the first scrape reads at most, before any rate is known: ~2-3 s of replay where events
/// compress best (samples/steady.c: 1.35 bytes an event, replayed at 1.6 M events/s on a
/// loaded 2-core machine).
const FIRST_READ: u64 = 4 << 20;
/// The least a scrape reads, however slow the last one was.
const MIN_READ: u64 = 1 << 20;
/// Below this, an update is too small to time.
const RATE_MIN_BYTES: u64 = 256 << 10;

/// The rate the next scrape is sized by, after one that ran at `now`: down at once, up by half
/// the way. On a shared machine the rate of one scrape is a poor forecast of the next one's
/// (scrapes of 2 to 8.4 s at a budget of 4 s with the last rate alone, scripts/memflat.sh).
fn next_rate(last: Option<f64>, now: f64) -> f64 {
    last.map_or(now, |l| now.min((l + now) / 2.0))
}

/// The most bytes of dump a scrape reads and replays: what the last scrape's rate replays in
/// [`REPLAY_BUDGET_S`] (bytes are a poor measure of replay time by themselves: an event takes
/// 1.35 to 10 bytes of dump, by how well its stream compresses), at most
/// `ZMTRACE_SERVE_READ_LIMIT` bytes (default [`zmtrace_analyze::follow::DEFAULT_LIMIT`]). A
/// scrape of a larger backlog serves the heap as of where it stopped (`behind=` in
/// `x-zmtrace-replay` says how far the dump is ahead), and the next goes on from there: no
/// scrape waits for a whole long run to be replayed.
fn read_limit(rate: Option<f64>) -> u64 {
    let cap = std::env::var("ZMTRACE_SERVE_READ_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(zmtrace_analyze::follow::DEFAULT_LIMIT);
    let budget = rate.map_or(FIRST_READ, |r| ((r * REPLAY_BUDGET_S) as u64).max(MIN_READ));
    budget.min(cap)
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

/// Serving on a thread of its own until [`Scrape::stop`].
pub struct Scrape {
    shutdown: Shutdown,
    thread: std::thread::JoinHandle<()>,
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
        cache: Mutex::default(),
    });
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
                (_, "/debug/pprof/heap") => profiles.get(true),
                (_, "/debug/pprof/allocs") => profiles.get(false),
                _ => Response::text(
                    404,
                    "not found: /debug/pprof/heap (in use now) and /debug/pprof/allocs (since the \
                 start) are served\n",
                ),
            });
    });
    Scrape { shutdown, thread }
}

impl Scrape {
    /// Stops serving (after the requests in flight) once the program has ended.
    pub fn stop(self) {
        self.shutdown.stop();
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scrape reads what the last one's rate replays in the budget: 4 MiB before any rate, at
    /// least 1 MiB, at most the cap.
    #[test]
    fn a_scrape_reads_what_the_last_rate_replays_in_its_budget() {
        if std::env::var_os("ZMTRACE_SERVE_READ_LIMIT").is_some() {
            return; // the cap is the user's then
        }
        assert_eq!(next_rate(None, 8.0), 8.0);
        assert_eq!(next_rate(Some(8.0), 2.0), 2.0);
        assert_eq!(next_rate(Some(2.0), 8.0), 5.0);
        assert_eq!(read_limit(None), FIRST_READ);
        assert_eq!(read_limit(Some(1e6)), (1e6 * REPLAY_BUDGET_S) as u64);
        assert_eq!(read_limit(Some(10.0)), MIN_READ);
        assert_eq!(
            read_limit(Some(1e12)),
            zmtrace_analyze::follow::DEFAULT_LIMIT
        );
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

//! `zmtrace run`'s summary made while the program runs: a thread follows the run's dumps as they
//! grow ([`Follow`]) and replays their events, so that once the program has ended only its last
//! events (those held back, [`HOLD_NS`] and [`MAX_HELD`], and what the writer wrote last) and
//! the leak check's record are left to replay before the summary is printed. Replayed after the end instead, a dump kept `run` busy as long as a
//! `zmtrace report` of it: 0.35 s after gawk's 1.4 s (3.3 M events), 0.8 s after python3's 1.2 s.
//!
//! - **Only spare CPU.** The thread runs under `SCHED_IDLE`: it gets a core only when nothing
//!   else wants one. A program that keeps both cores busy with the recorder's writer leaves it
//!   next to nothing (mix.c with 2 threads: 2.6 % slower in 16 interleaved runs, within this
//!   machine's noise), and what it has not done by the end, `run` does then, as before.
//! - **The same summary.** A dump followed is used only when its [`Follow`] says it read exactly
//!   what [`Dump::open`] would ([`Follow::same_as_read`]: no events replayed out of order, no
//!   record cut off or skipped) and the file has not grown since; any other dump is read whole
//!   after the end, as before.
//! - **Bounded memory.** At most [`FOLLOWED`] dumps are followed at a time (each holds its live
//!   set), and a dump whose process has ended is finished at once, so a run of many short
//!   processes keeps their analyses, not their replays.
//!
//! `ZMTRACE_RUN_FOLLOW=0` turns it off (the summary is then made after the end only);
//! `ZMTRACE_RUN_FOLLOW=stats` prints, for each dump, how much of it was replayed while the
//! program ran, or why it was read again after the end.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zmtrace_analyze::analysis::{Analysis, RELEASE_BATCH};
use zmtrace_analyze::follow::Follow;
use zmtrace_format::Dump;

/// Dumps followed at once.
const FOLLOWED: usize = 4;
/// How long the replay holds the newest events back: the writer writes a thread's events within
/// ~0.1 s of the call (`PERIOD_MS` and `HOLD_NS` of the recorder's `output.rs`); a dump whose
/// events came later than this is read again after the end.
const HOLD_NS: u64 = 150_000_000;
/// The most events held back (64 bytes each, 4 MiB in all): sites.c makes 3 M events in 0.25 s,
/// and a hold of that long took `run` from 25 to 96 MB. Beyond it the oldest are replayed at
/// once: a thread's events come in order, so a dump of several threads that overflows the bound
/// ([`zmtrace_analyze::analysis::Replay::overflowed`]) is given up on, and read after the end.
/// (The queue holds up to a release batch more, and grows by doubling.)
const MAX_HELD: usize = (64 << 10) - RELEASE_BATCH;
/// Bytes an update reads at most once the program has ended: the rest of a dump is read into
/// memory a piece at a time (`report` maps the file instead).
const END_LIMIT: u64 = 8 << 20;
/// Bytes one update reads at most: the thread goes round its dumps, and once the program has
/// ended `run` waits for the update under way (~25 ms of replay at most; 2 MiB made it wait
/// 115-145 ms) before reading the rest itself.
const LIMIT: u64 = 512 << 10;
/// Nothing is followed before the run is this old: a shorter program's dumps are replayed after
/// it in a fraction of this, and one that kept both cores busy (no spare CPU to follow with)
/// would only leave a replay half done to wait for.
const START_AFTER: Duration = Duration::from_millis(500);
/// How long the thread sleeps when no dump grew.
const IDLE: Duration = Duration::from_millis(50);
/// How often the directory is looked at for new dumps of the run.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// A dump replayed to its end: its records (without events), what the replay found, the file's
/// length then, and how much of it was replayed while the program ran.
pub struct Done {
    pub dump: Dump,
    pub analysis: Analysis,
    len: u64,
    during: u64,
}

/// What became of a dump: replayed, or why it has to be read after the end.
type Outcome = Result<Done, &'static str>;

/// The follower thread of a run.
pub struct Early {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Found>,
    stats: bool,
}

/// What the thread leaves: the dumps it is done with, and those it was still following.
#[derive(Default)]
struct Found {
    done: HashMap<PathBuf, Outcome>,
    following: Vec<Follow>,
}

/// Starts following the dumps of `session` in `dir`, unless `ZMTRACE_RUN_FOLLOW=0`.
pub fn start(dir: &Path, session: &str) -> Option<Early> {
    let env = std::env::var_os("ZMTRACE_RUN_FOLLOW");
    if env.as_ref().is_some_and(|v| v == "0") {
        return None;
    }
    let stats = env.is_some_and(|v| v == "stats");
    let stop = Arc::new(AtomicBool::new(false));
    let (dir, session, flag) = (dir.to_owned(), session.to_owned(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("zmtrace-follow".into())
        .spawn(move || follow(&dir, &session, &flag, stats))
        .ok()?;
    Some(Early {
        stop,
        thread,
        stats,
    })
}

impl Early {
    /// The program has ended: stops the thread and takes what it did. The dumps it was still
    /// following are read to their end here, at normal priority.
    pub fn finish(self) -> Finished {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        let mut found = self.thread.join().unwrap_or_default();
        for mut f in std::mem::take(&mut found.following) {
            let during = f.len();
            f.set_limit(END_LIMIT);
            // The program is over, so its events are all written: none can come in late, and
            // the rest is replayed as it is decoded instead of held for `into_analysis`.
            f.set_hold(0);
            // Until nothing more is read (`behind` is as of the last update, before the end): a
            // record cut off at the end (the program was killed) stays unread, and that dump is
            // then read whole.
            let failed = loop {
                let before = f.len();
                if f.update().is_err() {
                    break true;
                }
                // A replay that will not be used is not taken further.
                if f.len() == before || f.diverged() {
                    break false;
                }
            };
            let path = f.path().to_owned();
            let outcome = if failed {
                Err("it did not read")
            } else {
                done(f, during)
            };
            found.done.insert(path, outcome);
        }
        Finished {
            done: found.done,
            stats: self.stats,
        }
    }
}

/// The dumps replayed by the end of the program.
pub struct Finished {
    done: HashMap<PathBuf, Outcome>,
    stats: bool,
}

impl Finished {
    /// The replay of the dump at `path`, when it was replayed to the file's present end.
    pub fn take(&mut self, path: &Path) -> Option<Done> {
        let outcome = match self.done.remove(path) {
            Some(Ok(d)) if std::fs::metadata(path).is_ok_and(|m| m.len() == d.len) => Ok(d),
            Some(Ok(_)) => Err("it grew after it was replayed"),
            Some(Err(why)) => Err(why),
            None => Err("it was not followed"),
        };
        if self.stats {
            match &outcome {
                Ok(d) => eprintln!(
                    "zmtrace: {}: {} of {} bytes replayed while the program ran",
                    path.display(),
                    d.during,
                    d.len
                ),
                Err(why) => eprintln!(
                    "zmtrace: {}: replayed after the program ended: {why}",
                    path.display()
                ),
            }
        }
        outcome.ok()
    }
}

/// The replay of `f`, when it read all of its file and reads as [`Dump::open`] would;
/// `during`: the bytes it had read while the program ran.
fn done(f: Follow, during: u64) -> Outcome {
    if f.replay().is_none() {
        return Err("it is read whole (aggregated, or damaged)");
    }
    if !f.same_as_read() {
        return Err("its replay could differ from the whole file's (events out of order, cut off)");
    }
    let len = f.len();
    let (dump, analysis) = f.finish();
    Ok(Done {
        dump,
        analysis,
        len,
        during,
    })
}

/// The thread: follows the run's dumps, [`FOLLOWED`] at a time, until `stop`; `stats`: says
/// on stderr when it starts following one.
fn follow(dir: &Path, session: &str, stop: &AtomicBool, stats: bool) -> Found {
    // SAFETY: sets the calling thread's policy; no memory is handed over.
    unsafe {
        let p = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &p);
    }
    let mut found = Found::default();
    let started = Instant::now();
    while started.elapsed() < START_AFTER {
        if stop.load(Ordering::Acquire) {
            return found;
        }
        std::thread::park_timeout(START_AFTER - started.elapsed());
    }
    // Every path looked at: the run's dumps in the order the run started them, and the others.
    let mut ours: Vec<PathBuf> = Vec::new();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    // Dumps given up on (read again after the end) or finished.
    let mut over: HashSet<PathBuf> = HashSet::new();
    let mut looked: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        if looked.is_none_or(|t| t.elapsed() >= LOOK_EVERY) {
            looked = Some(Instant::now());
            look(dir, session, &mut seen, &mut ours);
        }
        while found.following.len() < FOLLOWED {
            let next = ours.iter().find(|p| {
                !over.contains(*p) && !found.following.iter().any(|f| f.path() == p.as_path())
            });
            let Some(p) = next else { break };
            if stats {
                eprintln!("zmtrace: {}: followed while the program runs", p.display());
            }
            found
                .following
                .push(Follow::with_limit(p, LIMIT).with_hold(HOLD_NS, MAX_HELD));
        }
        let mut busy = false;
        let mut i = 0;
        while i < found.following.len() && !stop.load(Ordering::Acquire) {
            let f = &mut found.following[i];
            let before = f.len();
            let ok = f.update().is_ok();
            busy |= f.len() != before;
            // Read whole at each update (aggregated, or damaged): nothing gained by following.
            let whole = !f.is_empty() && f.replay().is_none();
            let ended = f.dump().end.is_some() && f.behind() == 0;
            // Its replay will not be used: its memory and the CPU to go on are freed now.
            let diverged = f.diverged();
            if !ok || whole || ended || diverged {
                let f = found.following.swap_remove(i);
                let path = f.path().to_owned();
                over.insert(path.clone());
                let outcome = match (ok, whole) {
                    (false, _) => Err("it did not read"),
                    (_, true) => Err("it is read whole (aggregated, or damaged)"),
                    _ => {
                        let len = f.len();
                        done(f, len)
                    }
                };
                found.done.insert(path, outcome);
                continue;
            }
            i += 1;
        }
        if !busy {
            std::thread::park_timeout(IDLE);
        }
    }
    found
}

/// Adds to `ours` the dumps of the run that appeared in `dir` since the last look, in the order
/// their processes started.
fn look(dir: &Path, session: &str, seen: &mut HashSet<PathBuf>, ours: &mut Vec<PathBuf>) {
    let mut new: Vec<(u64, PathBuf)> = Vec::new();
    for p in crate::run::dump_files(dir) {
        if seen.contains(&p) {
            continue;
        }
        // A dump whose process record is not written yet is looked at again next time.
        let Some(proc) = Dump::peek_process(&p) else {
            continue;
        };
        seen.insert(p.clone());
        if proc.session == session {
            new.push((proc.start_unix_ns, p));
        }
    }
    new.sort();
    ours.extend(new.into_iter().map(|(_, p)| p));
}

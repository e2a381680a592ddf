//! The dump writer: drains the per-thread rings, compresses them, and appends whole records to
//! `zmtrace.<program>.<pid>.zmt` with plain `write(2)` calls.
//!
//! A background thread does this at least ten times a second (and sooner when a ring is half
//! full), so the program's threads never wait for the disk unless a ring fills up (then the
//! thread drains the rings itself). Everything here runs under the `OUTPUT` lock and the recorder
//! guard. When the dump cannot be written (full disk, removed directory) recording stops with one
//! message on stderr and the program goes on. The descriptor itself is [`crate::dumpfd`]'s.
//!
//! **Signals.** A fatal signal's handler ([`finish_on_signal`]) never takes a lock: it asks the
//! writer thread for the final flush and waits for it. That is safe because no program thread
//! holds a recorder lock where the handler can run: every path that takes one is inside the
//! recorder guard, and a signal landing there is deferred until the thread leaves it
//! ([`crate::sync::defer_signal`]). The writer blocks every signal.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use zmtrace_format::event::MAX_EVENT_LEN;
use zmtrace_format::{write, Block, End, EndReason, LiveSite, Origin, Process, RecordKind};

use crate::dumpfd;
use crate::modules::{ModuleChange, MODULES};
use crate::stacks::PENDING_STACKS;
use crate::state::{Core, DROPPED, SEQ};
use crate::sync::{Guard, SpinLock};
use crate::threads::{all_threads, ThreadState};

pub(crate) struct Output {
    path: String,
    /// The process this dump belongs to (after `fork`, the child opens its own).
    pid: u32,
    failed: bool,
    finished: bool,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    raw: Vec<u8>,
    /// The record being compressed, in lanes (kept for its capacity), and the splitter's
    /// buffers.
    lanes: Vec<u8>,
    splitter: zmtrace_format::lanes::Splitter,
    /// Per thread, the `Events` record being filled (see [`Pending`]).
    pending: Vec<Pending>,
    /// A pass's rings to pack: (ring's thread, its `pending` index, bytes left to pack this
    /// pass). Kept for its capacity.
    work: Vec<(&'static ThreadState, usize, usize)>,
    events: Vec<u8>,
    meta: Vec<u8>,
    events_written: u64,
    last_reap_ns: u64,
    last_snapshot_ns: u64,
    /// Each thread state's ring position (stream, pushed) at two writer passes at least
    /// [`ACTIVE_NS`] apart, and when the newer was taken: a thread whose ring has moved on since
    /// the older one was still allocating when the dump ended.
    activity_old: Vec<(u32, usize)>,
    activity_new: Vec<(u32, usize)>,
    activity_ns: u64,
    /// Tracing was stopped and started again: the new dump needs every module and stack.
    restarted: bool,
}

pub(crate) static OUTPUT: SpinLock<Output> = SpinLock::new(Output {
    path: String::new(),
    pid: 0,
    failed: false,
    finished: false,
    zstd: None,
    raw: Vec::new(),
    lanes: Vec::new(),
    splitter: zmtrace_format::lanes::Splitter::new(),
    pending: Vec::new(),
    work: Vec::new(),
    events: Vec::new(),
    meta: Vec::new(),
    events_written: 0,
    last_reap_ns: 0,
    last_snapshot_ns: 0,
    activity_old: Vec::new(),
    activity_new: Vec::new(),
    activity_ns: 0,
    restarted: false,
});

/// The pid that owns the dump: a `vfork` child shares our memory but must not touch the dump.
pub(crate) static OWNER_PID: AtomicU32 = AtomicU32::new(0);
static WRITER_RUNNING: AtomicBool = AtomicBool::new(false);
static WRITER_IDLE: AtomicBool = AtomicBool::new(false);
static WAKE: AtomicU32 = AtomicU32::new(0);
/// Packed event bytes per `Events` record, at most: a dump cut short (a full disk, a kill during
/// a write) loses at most this much of each thread's events besides what it had not written yet.
/// Small records cost little: the packer's tables (addresses, sites) carry over from one record
/// of a thread to the next (a record *group*, see `Packer`); only zstd starts afresh in each.
const RECORD_BYTES: usize = 64 * 1024;
/// zstd's level for every record. Level 5 made dumps 5-10 % smaller than level 1 (sites 19.1 /
/// 21.3 MiB, Redis 183 / 210 KB), but on a program that allocates from few stacks the writer is
/// then the bottleneck that the hooks wait on: mix.c ran 5.79 times untraced at level 5, 3.91 at
/// level 1 and 4.07 at 3 (scripts/bench.sh, same machine). Level 3 keeps most of the size.
const ZSTD_LEVEL: i32 = 3;
/// The least a zstd block of a record in lanes holds (see [`Output::compress_after`]): below it,
/// a block header and a Huffman table cost more than a table of its own saves (measured on the
/// suite's dumps: 128 to 512 B made no difference, 2 KiB lost 1 %).
const BLOCK_MIN: usize = 256;

/// `raw` as one zstd frame after `prefix` (none if empty), with its content size, a block ending
/// at each of `ends` at least [`BLOCK_MIN`] past the previous one; None on any zstd error.
fn blocks(
    c: &mut zstd::zstd_safe::CCtx<'static>,
    raw: &[u8],
    ends: &[usize],
    prefix: &'static [u8],
) -> Option<Vec<u8>> {
    use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::{ZSTD_e_end, ZSTD_e_flush};
    use zstd::zstd_safe::{InBuffer, OutBuffer, ResetDirective};
    c.reset(ResetDirective::SessionOnly).ok()?;
    if !prefix.is_empty() {
        c.ref_prefix(prefix).ok()?;
    }
    c.set_pledged_src_size(Some(raw.len() as u64)).ok()?;
    // A flushed block costs its 3-byte header at worst beyond compress_bound.
    let mut out =
        Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()) + 4 * ends.len() + 32);
    let mut start = 0;
    let cuts = ends
        .iter()
        .copied()
        .filter(|&e| e < raw.len())
        .chain(std::iter::once(raw.len()));
    for end in cuts {
        if end < start + BLOCK_MIN && end != raw.len() {
            continue;
        }
        let last = end == raw.len();
        let mut input = InBuffer::around(&raw[start..end]);
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(raw.len() / 4 + 64);
            }
            let pos = out.len();
            let mut o = OutBuffer::around_pos(&mut out, pos);
            let left = c
                .compress_stream2(
                    &mut o,
                    &mut input,
                    if last { ZSTD_e_end } else { ZSTD_e_flush },
                )
                .ok()?;
            if left == 0 && input.pos() == input.src.len() {
                break;
            }
        }
        start = end;
    }
    Some(out)
}
/// Every how many records of a stream the writer compresses one both ways, in lanes and as the
/// packed events, and keeps the smaller; the records up to the next try are stored the way that
/// won. Lanes win on most programs (gawk 18 %, sites 31 % smaller than packed), but a server
/// that repeats one request's events (Redis, sqlite3's inserts) matches whole requests in the
/// packed bytes, which the lanes break up: Redis's events were 19 % larger in lanes, sqlite3's
/// 13 %. Measured on the suite's dumps (`examples/recompress.rs`): trying every 8th record took
/// Redis's events 156 → 126 KiB and sqlite3's 1,928 → 1,704 KiB, jq's 617 → 593 KiB, and cost
/// python3 1 % (614 → 621 KiB); trying every record gained 2 % more for twice the zstd work.
const TRY_BOTH_EVERY: u32 = 8;
/// Plain bytes packed before they are given back to their ring (see `flush_pass`).
const DRAIN_CHUNK: usize = 16 * 1024;
/// How often the writer drains the rings when nobody wakes it.
const PERIOD_MS: i64 = 50;
/// A thread's record is written once its oldest events were packed this long ago, full or not.
/// An event waits at most [`PERIOD_MS`] in its ring and then at most one more period in its
/// record, so a SIGKILL loses at most about 0.1 s of events.
const HOLD_NS: u64 = 40_000_000;

/// One thread's `Events` record being filled across writer passes: the packer's tables (the
/// addresses and sites the record has named) and the packed bytes so far.
struct Pending {
    stream: u32,
    tid: u32,
    packer: zmtrace_format::event::Packer,
    packed: Vec<u8>,
    /// The previous record's bytes as compressed (in lanes), while its group goes on: the next
    /// record's zstd prefix.
    prev: Vec<u8>,
    /// When its first event was packed.
    since_ns: u64,
    /// Its records since the last one compressed both ways (see [`TRY_BOTH_EVERY`]).
    since_try: u32,
    /// Whether that one was smaller as packed events than in lanes: how the records up to the
    /// next try are stored.
    packed_wins: bool,
}
static FLUSHES: AtomicU64 = AtomicU64::new(0);
/// A snapshot was asked for ([`request_snapshot`]), at this event number and time.
static SNAPSHOT_ASKED: AtomicBool = AtomicBool::new(false);
static SNAPSHOT_SEQ: AtomicU64 = AtomicU64::new(0);
static SNAPSHOT_TS: AtomicU64 = AtomicU64::new(0);

/// From the snapshot signal's handler: notes the moment (event number, time) and wakes the
/// writer, which writes the snapshot. Async-signal-safe: atomics, the clock and a futex wake;
/// nothing is taken or written here. Two requests before the writer runs make one snapshot (the
/// later).
pub(crate) fn request_snapshot() {
    SNAPSHOT_SEQ.store(SEQ.load(Ordering::SeqCst), Ordering::Relaxed);
    SNAPSHOT_TS.store(crate::clock::timestamp(), Ordering::Relaxed);
    SNAPSHOT_ASKED.store(true, Ordering::Release);
    wake_writer_now();
}
/// The dump is finished or failed: what `Output::finished || Output::failed` says, readable
/// without the lock (by a signal handler).
static CLOSED: AtomicBool = AtomicBool::new(false);

fn getpid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::getpid() as u32 }
}

/// False in a `vfork` child, which shares our memory (and so this dump) with its parent.
pub(crate) fn owns_dump() -> bool {
    OWNER_PID.load(Ordering::Acquire) == getpid()
}

/// Wakes the writer early (a ring is half full). Cheap when the writer is busy anyway.
#[inline]
pub(crate) fn wake_writer() {
    if WRITER_IDLE.load(Ordering::Relaxed) && WRITER_IDLE.swap(false, Ordering::AcqRel) {
        wake_writer_now();
    }
}

/// Wakes the writer whatever it is doing. Async-signal-safe: an atomic and a syscall.
fn wake_writer_now() {
    WAKE.fetch_add(1, Ordering::Release);
    // SAFETY: futex wake on a static word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            WAKE.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}

/// The slow path of an event: the thread's ring is full. Wait for the writer to give room back,
/// or drain it ourselves (waiting for the writer's lock), or count the event as dropped once the
/// dump is closed. This thread is inside the recorder guard, so a fatal signal that lands while
/// it holds the lock waits for it to finish (see the module docs): it never holds up the handler.
pub(crate) fn push_when_full(t: &ThreadState, bytes: &[u8]) {
    // The writer gives the ring back a chunk at a time as it packs it (see `flush_pass`): sleep
    // until it has given one back. Packing here instead means waiting for its lock and then a
    // whole pass over every ring on the program's thread, the wait that made a program that
    // allocates fast (manyblocks.c) slow on a loaded machine. Sleeping, not yielding: yields
    // hand the processor to whatever else is runnable (another program, on a loaded machine)
    // and come straight back when nothing is, so they neither wait for the writer nor leave
    // the core to it. Bounded: a writer that gives nothing back for [`FULL_WAIT_MS`] (stopped,
    // or stuck on the disk) leaves it to the pass below. No lock is held here.
    if WRITER_RUNNING.load(Ordering::Acquire) && !CLOSED.load(Ordering::Acquire) {
        ROOM_WAITERS.fetch_add(1, Ordering::SeqCst);
        // Pairs with `room_given_back`'s fence.
        std::sync::atomic::fence(Ordering::SeqCst);
        let mut pushed = false;
        for _ in 0..FULL_WAIT_MS {
            let seen = ROOM.load(Ordering::SeqCst);
            // SAFETY: we are the ring's owner.
            if unsafe { t.ring.push(bytes) } {
                pushed = true;
                break;
            }
            if CLOSED.load(Ordering::Acquire) || !WRITER_RUNNING.load(Ordering::Acquire) {
                break;
            }
            wake_writer();
            futex_wait(&ROOM, seen, 1_000_000);
        }
        ROOM_WAITERS.fetch_sub(1, Ordering::SeqCst);
        if pushed {
            return;
        }
    }
    loop {
        {
            let mut out = OUTPUT.lock();
            if out.finished || out.failed || !owns_dump() {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                return;
            }
            out.flush_pass(crate::state::CORE.get(), false);
        }
        // SAFETY: we are the ring's owner.
        if unsafe { t.ring.push(bytes) } {
            return;
        }
    }
}

/// Room was given back in a ring (a futex word, bumped only while someone waits for it).
static ROOM: AtomicU32 = AtomicU32::new(0);
/// Threads waiting in [`push_when_full`] for room.
static ROOM_WAITERS: AtomicU32 = AtomicU32::new(0);
/// Milliseconds a thread whose ring is full waits for the writer at most, one futex wait each.
const FULL_WAIT_MS: u32 = 20;

/// After a drainer gave bytes back: wakes the threads that wait for room, if any (no system call
/// when none does, the usual case). The fence pairs with the waiter's: either it sees the
/// consumer's new position, or this sees it waiting.
#[inline]
fn room_given_back() {
    std::sync::atomic::fence(Ordering::SeqCst);
    if ROOM_WAITERS.load(Ordering::Relaxed) != 0 {
        ROOM.fetch_add(1, Ordering::SeqCst);
        futex_wake_all(&ROOM);
    }
}

/// Waits (at most `ns`) while `word` still holds `seen`. Async-signal-safe: one syscall.
fn futex_wait(word: &AtomicU32, seen: u32, ns: i64) {
    let ts = libc::timespec {
        tv_sec: ns / 1_000_000_000,
        tv_nsec: ns % 1_000_000_000,
    };
    // SAFETY: futex wait on a static word with a timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            seen,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes every thread waiting on `word`. Async-signal-safe.
fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: futex wake on a static word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

/// A fatal signal arrived (its number): the writer writes everything and the `End` record.
static FINAL_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// 1 once the writer has written the `End` record for [`FINAL_SIGNAL`] (a futex word).
static FINAL_DONE: AtomicU32 = AtomicU32::new(0);
/// The writer's kernel thread id: a signal handler running on it must not wait for itself.
static WRITER_TID: AtomicU32 = AtomicU32::new(0);

/// The writer thread's id (0 if there is none), waiting a moment for a writer that has been
/// created but has not run yet (a short program can reach `exit` first).
pub(crate) fn writer_tid() -> u32 {
    let deadline = crate::clock::now_mono() + 200_000_000;
    loop {
        let tid = WRITER_TID.load(Ordering::Acquire);
        if tid != 0
            || !WRITER_RUNNING.load(Ordering::Acquire)
            || crate::clock::now_mono() > deadline
        {
            return tid;
        }
        // SAFETY: plain syscall.
        unsafe { libc::sched_yield() };
    }
}

extern "C" fn writer_main(_: *mut libc::c_void) -> *mut libc::c_void {
    Guard::enter_forever();
    // SAFETY: blocks every signal in this thread only: process signals go to the program's
    // threads, whose handlers may ask this thread for the final flush and wait for it.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        WRITER_TID.store(libc::syscall(libc::SYS_gettid) as u32, Ordering::Release);
        // Named, so that its CPU time can be told from the program's threads' (top -H,
        // /proc/PID/task/*/comm, perf --sort comm). The name says nothing about the program.
        libc::prctl(libc::PR_SET_NAME, c"zmtrace-writer".as_ptr());
    }
    loop {
        WRITER_IDLE.store(true, Ordering::Release);
        let seen = WAKE.load(Ordering::Acquire);
        // Looked at before sleeping too: a signal that came during the last pass must not wait
        // for the next period.
        if FINAL_SIGNAL.load(Ordering::Acquire) == 0 {
            futex_wait(&WAKE, seen, PERIOD_MS * 1_000_000);
        }
        WRITER_IDLE.store(false, Ordering::Release);
        let sig = FINAL_SIGNAL.load(Ordering::Acquire);
        if sig != 0 {
            finish(EndReason::Signal, sig);
            FINAL_DONE.store(1, Ordering::Release);
            futex_wake_all(&FINAL_DONE);
        }
        let mut out = OUTPUT.lock();
        if out.finished || out.failed {
            WRITER_RUNNING.store(false, Ordering::Release);
            return std::ptr::null_mut();
        }
        // A snapshot's events are written before its marker.
        let snapshot = SNAPSHOT_ASKED.swap(false, Ordering::AcqRel);
        out.flush_pass(crate::state::CORE.get(), snapshot);
        if snapshot {
            out.write_snapshot(
                SNAPSHOT_TS.load(Ordering::Relaxed),
                SNAPSHOT_SEQ.load(Ordering::Relaxed),
            );
        }
        let now = crate::clock::now_mono();
        if now.saturating_sub(out.activity_ns) >= ACTIVE_NS {
            out.activity_old = std::mem::take(&mut out.activity_new);
            out.activity_new = all_threads().map(|t| (t.stream, t.ring.pushed())).collect();
            out.activity_ns = now;
        }
        drop(out);
        if crate::aggregate::on() {
            let mut out = OUTPUT.lock();
            if now.saturating_sub(out.last_snapshot_ns) > SNAPSHOT_NS {
                // Counters only: a killed process keeps them up to here. The live set can be
                // large (a server's whole keyspace), so it is written only at the end.
                out.last_snapshot_ns = now;
                out.write_aggregate(false);
            }
        }
    }
}

/// How far back "still allocating" looks when the dump ends (one to two of these).
const ACTIVE_NS: u64 = 100_000_000;

/// How often an aggregated recording writes its counters while the program runs.
const SNAPSHOT_NS: u64 = 2_000_000_000;

/// From a signal handler, on the thread the fatal signal hit: has the writer thread write
/// everything and the `End` record, and waits for it (2 s at most, in case the disk hangs).
/// Only async-signal-safe calls here, and no lock: the thread may have been interrupted anywhere
/// outside the recorder, in `malloc` too (inside the recorder the signal is deferred, see the
/// module docs). A second fatal signal, on another thread, waits for the same flush.
pub(crate) fn finish_on_signal(sig: i32) {
    // SAFETY: plain syscalls.
    let me = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
    if CLOSED.load(Ordering::Acquire)
        || !WRITER_RUNNING.load(Ordering::Acquire)
        || me == WRITER_TID.load(Ordering::Acquire)
    {
        return;
    }
    let _ = FINAL_SIGNAL.compare_exchange(0, sig, Ordering::AcqRel, Ordering::Acquire);
    wake_writer_now();
    let deadline = crate::clock::now_mono() + 2_000_000_000;
    while FINAL_DONE.load(Ordering::Acquire) == 0 && WRITER_RUNNING.load(Ordering::Acquire) {
        let now = crate::clock::now_mono();
        if now >= deadline {
            break;
        }
        futex_wait(&FINAL_DONE, 0, (deadline - now).min(100_000_000) as i64);
    }
}

/// Set once the dump ended with the process (exit, `_exit`, abort): threads that still allocate
/// after that leave a `Late` record, once each. Not after a fatal signal: the dump is complete up
/// to the signal, and what other threads do while the process dies comes after it.
static ENDED_WITH_PROCESS: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Const, no destructor: see `sync`.
    static LATE_NOTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// An event after the end of the dump: say so in the dump, once per thread.
pub(crate) fn note_late() {
    if !ENDED_WITH_PROCESS.load(Ordering::Acquire) || LATE_NOTED.with(|n| n.replace(true)) {
        return;
    }
    // Waited for, not tried: several threads get here at once when `exit` ends the dump under
    // them, and each must be named.
    let out = OUTPUT.lock();
    if !dumpfd::is_open() || out.failed || !owns_dump() {
        return;
    }
    let mut buf = Vec::new();
    // SAFETY: no preconditions.
    write::late(&mut buf, unsafe { libc::syscall(libc::SYS_gettid) } as u32);
    let _ = dumpfd::write(&buf);
}

pub(crate) fn start_writer() {
    if WRITER_RUNNING.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: a detached thread running a plain extern "C" function. A raw pthread rather than
    // std::thread: std registers thread-locals with destructors, which must not exist here.
    unsafe {
        // Created with every signal blocked: a new thread starts with its creator's mask, and
        // blocking them in `writer_main` leaves a moment in which a process-directed signal (a
        // program's SIGALRM) runs the program's handler on our thread. The creator's own mask is
        // restored at once.
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut saved: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut saved);
        let mut th: libc::pthread_t = 0;
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        libc::pthread_attr_setstacksize(&mut attr, 256 * 1024);
        let rc = libc::pthread_create(&mut th, &attr, writer_main, std::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut());
        if rc != 0 {
            // No writer: threads flush their own rings when full, and at exit.
            WRITER_RUNNING.store(false, Ordering::Release);
        }
    }
}

pub(crate) fn finish(reason: EndReason, status: i32) {
    let mut out = OUTPUT.lock();
    if out.finished {
        return;
    }
    out.flush_pass(crate::state::CORE.get(), true);
    out.finished = true;
    CLOSED.store(true, Ordering::Release);
    let with_process = !matches!(
        reason,
        EndReason::Stopped | EndReason::Signal | EndReason::Exec
    );
    if with_process {
        out.write_still_allocating();
    }
    out.write_end(reason, status);
    if with_process {
        // This thread ends the process: what it does from here on (the C library's own
        // teardown) is not another thread caught mid-run, and the dump did end normally.
        LATE_NOTED.with(|n| n.set(true));
        ENDED_WITH_PROCESS.store(true, Ordering::Release);
    }
    // Threads still running after this cannot be written any more: stop recording them rather
    // than capture stacks for nothing.
    crate::disable();
}

/// Opens the dump now if it is not open: when recording starts, so that the descriptor is taken
/// before the program closes or reopens its own (and so that [`crate::start`] can report a
/// failure).
pub(crate) fn open_now() -> Result<(), String> {
    let mut out = OUTPUT.lock();
    if !dumpfd::is_open() && !out.failed && !out.finished {
        if let Some(core) = crate::state::CORE.get() {
            out.open(core, Origin::Start, 0, 0);
        }
    }
    if out.failed {
        Err(format!("cannot write the dump {}", out.path))
    } else {
        Ok(())
    }
}

/// Forgets the finished dump: the next flush opens a new one, with every module and stack.
pub(crate) fn restart() {
    let mut out = OUTPUT.lock();
    dumpfd::close();
    out.finished = false;
    out.failed = false;
    CLOSED.store(false, Ordering::Release);
    out.events_written = 0;
    out.restarted = true;
    DROPPED.store(0, Ordering::Relaxed);
}

/// Appends one whole record (a leak check's) to the dump, unless it is finished or failed.
pub(crate) fn write_record(bytes: &[u8]) {
    let mut out = OUTPUT.lock();
    if !dumpfd::is_open() && !out.finished && !out.failed {
        if let Some(core) = crate::state::CORE.get() {
            out.open(core, Origin::Start, 0, 0);
        }
    }
    if dumpfd::is_open() && !out.finished && !out.failed {
        out.write_all_or_fail(bytes);
    }
}

pub(crate) fn flush_now() {
    let mut out = OUTPUT.lock();
    out.flush_pass(crate::state::CORE.get(), true);
    if !out.finished {
        out.write_aggregate(true);
    }
}

pub(crate) fn path() -> Option<String> {
    let out = OUTPUT.lock();
    (!out.path.is_empty()).then(|| out.path.clone())
}

/// Writes everything recorded so far, the `Exec` record and an `End` of reason exec: if the exec
/// succeeds, nothing more comes; if it fails, recording goes on and a later `End` replaces it.
pub(crate) fn before_exec(path: &str) {
    let mut out = OUTPUT.lock();
    if out.finished {
        return;
    }
    out.flush_pass(crate::state::CORE.get(), true);
    let mut buf = Vec::new();
    write::exec(&mut buf, path);
    out.write_all_or_fail(&buf);
    out.write_end(EndReason::Exec, -1);
}

impl Output {
    /// Aggregated mode: the counters and (`with_live`) the live set, as of now. Each snapshot
    /// replaces the last one for the reader, so writing one more (`dump_now`, then the end) is
    /// harmless.
    fn write_aggregate(&mut self, with_live: bool) {
        if !crate::aggregate::on() || !dumpfd::is_open() || self.failed {
            return;
        }
        let Some(core) = crate::state::CORE.get() else {
            return;
        };
        // Counted first, then the stacks written: every stack the counters and the live set name
        // is interned by then, so its record comes before theirs.
        let a = crate::aggregate::snapshot();
        let live = with_live.then(|| live_sites(core));
        self.write_meta();
        let raw = write::aggregate_raw(&a);
        let z = self.compress(&raw);
        let mut buf = Vec::new();
        write::compressed(&mut buf, RecordKind::Aggregate, raw.len(), &z);
        if let Some(sites) = live {
            let raw = write::live_raw(sites.into_iter());
            let z = self.compress(&raw);
            write::compressed(&mut buf, RecordKind::LiveAtEnd, raw.len(), &z);
        }
        self.write_all_or_fail(&buf);
    }

    /// A snapshot on demand: the marker (time, event number: the reader replays the events
    /// before it); an aggregated recording adds its counters and live set as of now.
    fn write_snapshot(&mut self, ts_ns: u64, seq: u64) {
        if !dumpfd::is_open() || self.failed || self.finished {
            return;
        }
        // The stacks first, so that nothing stands between the marker and its aggregate.
        self.write_meta();
        let mut buf = Vec::new();
        write::snapshot(&mut buf, ts_ns, seq);
        self.write_all_or_fail(&buf);
        self.write_aggregate(true);
    }

    fn write_end(&mut self, reason: EndReason, status: i32) {
        if !dumpfd::is_open() || self.failed {
            return;
        }
        self.write_aggregate(true);
        let end = self.end_record(reason, status);
        let mut buf = Vec::new();
        write::end(&mut buf, &end);
        self.write_all_or_fail(&buf);
    }

    /// The process ends (`exit`, `_exit`, `abort`) while other threads may still allocate: each
    /// one alive that recorded in the last tenth of a second or so gets a `Late` record (what it
    /// does from now on is not in the dump), unless it is idle now. Counted here, not by the
    /// threads themselves: the process may be gone before they run again.
    ///
    /// Idle means asleep (state `S`: a pool's worker waiting for work, as gdb's are, a few
    /// milliseconds after it allocated at start-up) and not inside the recorder. Sleep alone
    /// does not tell: a thread mid-event sleeps too when it waits for the output lock that this
    /// thread holds while it writes the end. The guard tells that one apart.
    fn write_still_allocating(&mut self) {
        let me = crate::threads::gettid();
        let mut buf = Vec::new();
        for t in all_threads() {
            let tid = t.tid.load(Ordering::Acquire);
            if !t.in_use.load(Ordering::Acquire) || tid == me || thread_is_gone(tid) {
                continue;
            }
            let before = self
                .activity_old
                .iter()
                .find(|&&(s, _)| s == t.stream)
                .map_or(0, |&(_, p)| p);
            if t.ring.pushed() != before && !(t.inside_now() == Some(false) && thread_sleeps(tid)) {
                write::late(&mut buf, tid);
            }
        }
        self.write_all_or_fail(&buf);
    }

    fn end_record(&self, reason: EndReason, status: i32) -> End {
        let mut end = End {
            reason,
            status,
            events: self.events_written,
            // Aggregated mode: calls from stacks beyond the counter table are lost too.
            dropped: DROPPED.load(Ordering::Relaxed) + crate::aggregate::overflow(),
            untracked_frees: 0,
            free_null: 0,
            truncated_stacks: 0,
            compared_stacks: 0,
            mismatched_stacks: 0,
        };
        for t in all_threads() {
            let c = &t.counters;
            end.untracked_frees += c.untracked_frees.load(Ordering::Relaxed);
            end.free_null += c.free_null.load(Ordering::Relaxed);
            end.truncated_stacks += c.truncated_stacks.load(Ordering::Relaxed);
            end.compared_stacks += c.compared_stacks.load(Ordering::Relaxed);
            end.mismatched_stacks += c.mismatched_stacks.load(Ordering::Relaxed);
        }
        end
    }
}

/// The live set summed per stack and leak class. Classified by the leak check made at the end,
/// when there is one: the reports need the classes per stack, and a summed live set has no
/// addresses to match them by.
fn live_sites(core: &Core) -> Vec<LiveSite> {
    let check = crate::reach::LAST_EXIT_CHECK.lock().take();
    let mut sites: std::collections::HashMap<(u32, u8), LiveSite> = Default::default();
    core.live.for_each(|addr, b| {
        let kind = check
            .as_ref()
            .and_then(|r| r.kind_of(addr))
            .map_or(LiveSite::UNCHECKED, |k| k as u8);
        let s = sites.entry((b.stack, kind)).or_insert(LiveSite {
            stack: b.stack,
            kind,
            ..LiveSite::default()
        });
        s.blocks += 1;
        s.bytes += b.size;
        s.usable += b.usable;
        s.via_realloc += u64::from(b.chain > 0);
    });
    let mut sites: Vec<LiveSite> = sites.into_values().collect();
    sites.sort_unstable_by_key(|s| (s.stack, s.kind));
    sites
}

/// In a forked child: leave the parent's dump alone, start our own with what we inherited.
pub(crate) fn after_fork_in_child(core: &Core) {
    let parent = OWNER_PID.load(Ordering::Acquire);
    let fork_seq = SEQ.load(Ordering::Relaxed);
    crate::clock::mark_start();
    {
        let mut out = OUTPUT.lock();
        // Our copy of the parent's descriptor.
        dumpfd::close();
        out.events_written = 0;
        // The parent's events, which the parent writes.
        out.pending.clear();
        if out.finished || out.failed {
            return;
        }
        out.open(core, Origin::Fork, parent, fork_seq);
    }
    WRITER_RUNNING.store(false, Ordering::Release);
    // The parent's writer is not in this process; ours publishes its id when it runs.
    WRITER_TID.store(0, Ordering::Release);
    // A fatal signal the parent was handling is the parent's.
    FINAL_SIGNAL.store(0, Ordering::Release);
    FINAL_DONE.store(0, Ordering::Release);
    start_writer();
}

impl Output {
    /// Opens the dump and writes what every dump starts with.
    fn open(&mut self, core: &Core, origin: Origin, parent_pid: u32, fork_seq: u64) {
        let pid = getpid();
        let dir = crate::OUT_DIR
            .lock()
            .clone()
            .or_else(|| core.proc.env("ZMTRACE_OUT"))
            .unwrap_or_else(|| ".".into());
        let name = core.proc.program_name();
        let mut fd = -1;
        let mut path = String::new();
        for attempt in 0..1000 {
            path = if attempt == 0 {
                format!("{dir}/zmtrace.{name}.{pid}.zmt")
            } else {
                // Same pid again: an exec of the same program, or a recycled pid.
                format!("{dir}/zmtrace.{name}.{pid}.{attempt}.zmt")
            };
            let Ok(c) = std::ffi::CString::new(path.clone()) else {
                break;
            };
            // A new file only (O_EXCL: never one planted for us, never through a symlink), private
            // to the user (the dump holds the command line and the program's stacks).
            // SAFETY: plain open(2) of a path we own.
            fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_APPEND
                        | libc::O_CLOEXEC,
                    0o600,
                )
            };
            if fd >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                break;
            }
        }
        self.path = path;
        self.pid = pid;
        // A new dump: its first records start their tables afresh (after a fork or a restart the
        // packers still hold the old dump's).
        self.pending.clear();
        OWNER_PID.store(pid, Ordering::Release);
        if fd < 0 {
            self.fail(&std::io::Error::last_os_error());
            return;
        }
        // Moved at once far above the program's descriptors (see dumpfd).
        if let Err(e) = dumpfd::adopt(fd) {
            self.fail(&e);
            return;
        }
        let origin = match (origin, core.proc.env("ZMTRACE_EXEC_FROM")) {
            // Set by our execve hook: the same pid traced before this image.
            (Origin::Start, Some(p)) if p == pid.to_string() => Origin::Exec,
            (o, _) => o,
        };
        // `zmtrace run --no-argv`: the arguments may hold secrets (`--password=…`).
        let no_argv = core.proc.env("ZMTRACE_NO_ARGV").as_deref() == Some("1");
        let mut buf = write::file_header().to_vec();
        write::process(
            &mut buf,
            &Process {
                pid,
                // SAFETY: no preconditions.
                ppid: unsafe { libc::getppid() } as u32,
                origin,
                parent_pid,
                fork_seq,
                start_unix_ns: crate::clock::START_UNIX.load(Ordering::Relaxed),
                session: core.proc.env("ZMTRACE_SESSION").unwrap_or_default(),
                exe: core.proc.exe.clone(),
                argv: if no_argv {
                    core.proc.argv.iter().take(1).cloned().collect()
                } else {
                    core.proc.argv.clone()
                },
                aggregated: crate::aggregate::on(),
                sample_interval: crate::sample::interval(),
                all_blocks: crate::sample::all_blocks(),
                args_left_out: if no_argv {
                    core.proc.argv.len().saturating_sub(1) as u32
                } else {
                    0
                },
            },
        );
        // The file header and `Process` record: what the dump still says (whose it is, why it
        // is empty) if even this first write finds the disk full.
        let head_len = buf.len();
        if origin == Origin::Fork || std::mem::take(&mut self.restarted) {
            // Everything known so far: modules and every stack (and, after a fork, the blocks
            // live at the fork).
            let mut m = MODULES.lock();
            for module in &m.list {
                write::module(&mut buf, &module.info);
            }
            m.pending.clear();
            drop(m);
            PENDING_STACKS.lock().clear();
            let all: Vec<(u32, Box<[u64]>)> = core
                .stacks
                .iter()
                .map(|e| (*e.value(), e.key().clone()))
                .collect();
            for chunk in all.chunks(4096) {
                write::stacks(
                    &mut buf,
                    chunk.iter().map(|(id, f)| (*id, &f[..])),
                    &mut |b| self.compress(b),
                );
            }
            let mut raw = Vec::new();
            core.live.for_each(|addr, b| {
                let blk = Block {
                    addr,
                    size: b.size,
                    usable: b.usable,
                    stack: b.stack,
                };
                write::inherited_block(&mut raw, &blk);
            });
            if origin == Origin::Fork && !raw.is_empty() {
                let z = self.compress(&raw);
                write::inherited(&mut buf, raw.len(), &z);
            }
        }
        self.write_or_fail(&buf, &buf[..head_len]);
    }

    /// [`Output::compress`] with `prefix` as zstd's prefix (the matches may point into it), a
    /// zstd block ending at each of `ends` that closes a long enough run; returns the frame and
    /// the prefix's length (0 when zstd would not take it).
    ///
    /// Why the blocks: zstd codes the literals of a block with one Huffman table, and a record
    /// in lanes puts fields of very different statistics one after the other (tags, sites, the
    /// cut address varints' random low bytes and their sparse high ones). A block per lane
    /// gives each its own table, and the LZ window still spans the whole record and its prefix;
    /// a reader needs nothing new, since a frame's blocks are its own business. A lane shorter
    /// than [`BLOCK_MIN`] goes into the next lane's block.
    fn compress_after(&mut self, raw: &[u8], ends: &[usize], prefix: &[u8]) -> (Vec<u8>, usize) {
        let z = self
            .zstd
            .get_or_insert_with(|| zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd context"));
        // SAFETY: zstd keeps a prefix for the next frame only and drops it as that frame starts
        // (ZSTD_CCtx_refPrefix); the frame is made whole before this function returns, so zstd
        // never reads `prefix` after this borrow ends. The 'static is only what the context's
        // type asks.
        let prefix: &'static [u8] = unsafe { std::mem::transmute::<&[u8], &'static [u8]>(prefix) };
        match blocks(z.context_mut(), raw, ends, prefix) {
            Some(v) => (v, prefix.len()),
            None => {
                // A frame that failed part-way keeps its session and prefix: drop both.
                let c = z.context_mut();
                let _ = c.reset(zstd::zstd_safe::ResetDirective::SessionOnly);
                let _ = c.ref_prefix(&[]);
                (self.compress(raw), 0)
            }
        }
    }

    fn compress(&mut self, raw: &[u8]) -> Vec<u8> {
        let z = self
            .zstd
            .get_or_insert_with(|| zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd context"));
        z.compress(raw).unwrap_or_default()
    }

    /// Drains every ring and writes what it found, after the stacks and modules it refers to:
    /// the records that are full or old enough, or (`all`) every one.
    pub(crate) fn flush_pass(&mut self, core: Option<&Core>, all: bool) {
        let Some(core) = core else { return };
        if self.finished || self.failed {
            return;
        }
        if !dumpfd::is_open() {
            self.open(core, Origin::Start, 0, 0);
            if self.failed {
                return;
            }
        }
        FLUSHES.fetch_add(1, Ordering::Relaxed);
        // Threads that are gone: found before draining, released after, so their last events
        // are written and a new thread cannot take the state in between.
        let now = crate::clock::now_mono();
        let reap = now.saturating_sub(self.last_reap_ns) > 1_000_000_000;
        let mut gone = Vec::new();
        if reap {
            self.last_reap_ns = now;
            for t in all_threads() {
                if t.in_use.load(Ordering::Acquire) && thread_is_gone(t.tid.load(Ordering::Acquire))
                {
                    gone.push(t);
                }
            }
        }
        // 1. The events, first, so that every stack they name is already pending below.
        self.events.clear();
        let mut work = std::mem::take(&mut self.work);
        work.clear();
        for t in all_threads() {
            // SAFETY (every ring call here): we hold OUTPUT, so we are the only drainer, and
            // each pair of slices is dropped before the `consume` that follows it.
            let (first, second) = unsafe { t.ring.readable() };
            // What was there when we looked, no more: a thread that never stops allocating
            // must not keep the writer on its ring.
            let budget = first.len() + second.len();
            if budget == 0 {
                continue;
            }
            // Read after looking: a new owner's tid is published before its first event.
            let tid = t.tid.load(Ordering::Acquire);
            let i = self.pending_for(t.stream, tid);
            work.push((t, i, budget));
        }
        // Packed in place, straight from the ring, and given back a chunk at a time so that its
        // thread has room again while the rest is packed; the rings take turns, a chunk each, so
        // that a thread whose ring is full waits for one chunk of each other ring, not for all
        // of them. Only an event cut by the end of the buffer is copied (with the start of the
        // rest), once per turn of the ring.
        let mut left = work.len();
        while left > 0 {
            left = 0;
            for (t, i, budget) in work.iter_mut() {
                if *budget == 0 {
                    continue;
                }
                let (first, second) = unsafe { t.ring.readable() };
                let chunk = &first[..first.len().min(*budget).min(DRAIN_CHUNK)];
                let mut used = self.pack_from(*i, now, chunk);
                if used == 0 && chunk.len() == first.len() && !second.is_empty() {
                    let mut raw = std::mem::take(&mut self.raw);
                    raw.clear();
                    raw.extend_from_slice(first);
                    raw.extend_from_slice(&second[..second.len().min(MAX_EVENT_LEN)]);
                    used = self.pack_from(*i, now, &raw);
                    self.raw = raw;
                }
                if used == 0 {
                    // Not an event (the hooks write none such): what is left is dropped, as a
                    // damaged record's rest is.
                    unsafe { t.ring.consume(*budget) };
                    room_given_back();
                    *budget = 0;
                    continue;
                }
                unsafe { t.ring.consume(used) };
                room_given_back();
                // An event packed across the end of the buffer may take the budget past 0.
                *budget = budget.saturating_sub(used);
                left += usize::from(*budget > 0);
            }
        }
        self.work = work;
        for i in 0..self.pending.len() {
            let p = &self.pending[i];
            if !p.packed.is_empty()
                && (all
                    || now.saturating_sub(p.since_ns) >= HOLD_NS
                    || gone.iter().any(|t| t.stream == p.stream))
            {
                self.emit(i);
            }
        }
        for t in gone {
            t.in_use.store(false, Ordering::Release);
        }
        // 2. Modules and stacks that appeared since the last pass, then the events.
        self.write_meta();
        let events = std::mem::take(&mut self.events);
        self.write_all_or_fail(&events);
        self.events = events;
    }

    /// Packs the whole events at the start of `plain` into `pending[i]`, writing the records that
    /// fill up; returns the bytes used (a cut event at the end stays).
    fn pack_from(&mut self, i: usize, now: u64, plain: &[u8]) -> usize {
        let mut pos = 0;
        while pos < plain.len() {
            let p = &mut self.pending[i];
            if p.packed.is_empty() {
                p.since_ns = now;
            }
            let (n, used) = p
                .packer
                .pack_some(&plain[pos..], &mut p.packed, RECORD_BYTES);
            if used == 0 {
                break;
            }
            pos += used;
            self.events_written += n;
            let p = &self.pending[i];
            if p.packed.len() >= RECORD_BYTES || p.packer.is_full() {
                self.emit(i);
            }
        }
        pos
    }

    /// The record being filled for `stream`; one of another thread that had the stream before
    /// (its state was reused) is finished first.
    fn pending_for(&mut self, stream: u32, tid: u32) -> usize {
        let Some(i) = self.pending.iter().position(|p| p.stream == stream) else {
            self.pending.push(Pending {
                stream,
                tid,
                packer: Default::default(),
                packed: Vec::new(),
                prev: Vec::new(),
                since_ns: 0,
                since_try: 0,
                packed_wins: false,
            });
            return self.pending.len() - 1;
        };
        if self.pending[i].tid != tid {
            self.emit(i);
            self.pending[i].tid = tid;
            // Another thread's records do not continue this one's tables.
            self.pending[i].packer.reset();
        }
        i
    }

    /// Compresses the record being filled at `pending[i]` into `self.events` (written at the end
    /// of the pass) and starts the next one.
    fn emit(&mut self, i: usize) {
        let mut packed = std::mem::take(&mut self.pending[i].packed);
        let mut prev = std::mem::take(&mut self.pending[i].prev);
        // What zstd gets: the packed events regrouped by field (version 6's lanes), or as they
        // are when the split does not take them or when they compress better so.
        let mut body = std::mem::take(&mut self.lanes);
        if !packed.is_empty() {
            let p = &mut self.pending[i];
            let try_both = p.since_try == 0;
            p.since_try = (p.since_try + 1) % TRY_BOTH_EVERY;
            let in_lanes = (try_both || !p.packed_wins) && self.splitter.split(&packed, &mut body);
            // A record that continues its group is compressed after the previous one, as one
            // big record would be: zstd finds the program's repetitions across records.
            let prefix = if self.pending[i].packer.continues() {
                &prev[..]
            } else {
                &[][..]
            };
            let (z, used) = if in_lanes {
                // Taken out for the call (no allocation: its buffers move), put back after.
                let splitter = std::mem::take(&mut self.splitter);
                let (z, used) = self.compress_after(&body, splitter.lane_ends(), prefix);
                self.splitter = splitter;
                if try_both {
                    let (zp, usedp) = self.compress_after(&packed, &[], prefix);
                    let packed_wins = zp.len() < z.len();
                    self.pending[i].packed_wins = packed_wins;
                    if packed_wins {
                        body.clear();
                        body.extend_from_slice(&packed);
                        (zp, usedp)
                    } else {
                        (z, used)
                    }
                } else {
                    (z, used)
                }
            } else {
                body.clear();
                body.extend_from_slice(&packed);
                self.compress_after(&body, &[], prefix)
            };
            let p = &self.pending[i];
            write::events_after(&mut self.events, p.stream, p.tid, body.len(), used, &z);
        }
        let p = &mut self.pending[i];
        p.packer.finish_record(packed.len());
        packed.clear();
        p.packed = packed;
        prev.clear();
        if p.packer.continues() {
            // The next record's prefix: this one as compressed.
            p.prev = body;
            self.lanes = prev;
        } else {
            p.prev = prev;
            body.clear();
            self.lanes = body;
        }
    }

    /// Writes the modules and stacks that appeared since the last time.
    fn write_meta(&mut self) {
        self.meta.clear();
        {
            let mut m = MODULES.lock();
            for change in m.pending.drain(..) {
                match change {
                    ModuleChange::Loaded(info) => write::module(&mut self.meta, &info),
                    ModuleChange::Gone { base, seq } => {
                        write::module_gone(&mut self.meta, base, seq)
                    }
                }
            }
        }
        let stacks = std::mem::take(&mut *PENDING_STACKS.lock());
        for chunk in stacks.chunks(4096) {
            let mut meta = std::mem::take(&mut self.meta);
            write::stacks(
                &mut meta,
                chunk.iter().map(|(id, f)| (*id, &f[..])),
                &mut |b| self.compress(b),
            );
            self.meta = meta;
        }
        let meta = std::mem::take(&mut self.meta);
        self.write_all_or_fail(&meta);
        self.meta = meta;
    }

    fn write_all_or_fail(&mut self, buf: &[u8]) {
        self.write_or_fail(buf, &[]);
    }

    /// [`Self::write_all_or_fail`]; `head` is what must precede an `End` written instead of
    /// `buf`: the dump's header and `Process` record for its first write (no reserve behind it
    /// yet, and an `End` alone would not read as a dump), nothing for the later ones.
    fn write_or_fail(&mut self, buf: &[u8], head: &[u8]) {
        if self.failed {
            return;
        }
        match dumpfd::write(buf) {
            Ok(()) => {}
            Err(dumpfd::WriteError::NoSpace(e)) => {
                // Nothing of `buf` was written, and the space reserved by the last write takes
                // an `End` that says why the dump stops here.
                let end = self.end_record(EndReason::WriteError, e.raw_os_error().unwrap_or(0));
                // In place of a first write there is no reserve either: a disk with less free than
                // the reserve may still take these few hundred bytes.
                let mut last = head.to_vec();
                write::end(&mut last, &end);
                let _ = dumpfd::write_reserved(&last);
                self.fail(&e);
            }
            Err(dumpfd::WriteError::Failed(e)) => self.fail(&e),
        }
    }

    /// Stops recording: the program must go on unharmed, with one line saying why.
    fn fail(&mut self, e: &std::io::Error) {
        self.failed = true;
        CLOSED.store(true, Ordering::Release);
        crate::disable();
        let msg = format!(
            "zmtrace: recording stopped: could not write the dump {} ({}); the program goes on\n",
            self.path,
            zmtrace_format::describe_os_error(e)
        );
        // SAFETY: raw write to stderr: Rust's stderr may be unusable at exit.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    }
}

/// True when thread `tid` is asleep now (state `S`: waiting on a condition, a socket, a timer).
/// Missed by [`Output::write_still_allocating`]: a thread asleep on an arena's lock inside the
/// allocator itself (our hook's guard is not held there), whose allocation the end comes before;
/// the thread holding that lock runs, and is named.
fn thread_sleeps(tid: u32) -> bool {
    let path = format!("/proc/self/task/{tid}/stat\0");
    let Ok(path) = std::ffi::CStr::from_bytes_with_nul(path.as_bytes()) else {
        return false;
    };
    let stat = crate::procinfo::read_file(path);
    // "TID (COMM) STATE ...": COMM may hold spaces and parentheses, the state follows the last ')'.
    stat.iter()
        .rposition(|&c| c == b')')
        .is_some_and(|i| stat.get(i + 2) == Some(&b'S'))
}

fn thread_is_gone(tid: u32) -> bool {
    // SAFETY: signal 0 only checks that the thread exists.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, getpid(), tid, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocks of a zstd frame: (last, type, size) of each, from its block headers.
    fn frame_blocks(z: &[u8]) -> Vec<(bool, u8, usize)> {
        assert_eq!(&z[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        let fhd = z[4];
        let single = fhd & 0x20 != 0;
        let fcs = match fhd >> 6 {
            0 => usize::from(single),
            1 => 2,
            2 => 4,
            _ => 8,
        };
        let dict = [0, 1, 2, 4][usize::from(fhd & 3)];
        let mut p = 5 + usize::from(!single) + dict + fcs;
        let mut blocks = Vec::new();
        loop {
            let h = u32::from(z[p]) | u32::from(z[p + 1]) << 8 | u32::from(z[p + 2]) << 16;
            let (last, kind, size) = (h & 1 == 1, ((h >> 1) & 3) as u8, (h >> 3) as usize);
            blocks.push((last, kind, size));
            p += 3 + if kind == 1 { 1 } else { size };
            if last {
                break;
            }
        }
        assert_eq!(p + if fhd & 4 != 0 { 4 } else { 0 }, z.len());
        blocks
    }

    #[test]
    fn a_record_in_lanes_is_one_frame_with_a_block_per_long_enough_lane() {
        // Lanes of different statistics: small codes, random bytes, a repeated pattern.
        let mut raw = Vec::new();
        let mut x = 0x1234_5678_u32;
        let mut rand = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        };
        raw.extend((0..300).map(|i| (i % 5) as u8));
        raw.extend((0..10).map(|_| 0xee));
        raw.extend((0..1690).map(|_| rand() & 0x7f));
        raw.extend((0..3000).map(|i| [1u8, 2, 3, 250][i % 4]));
        raw.extend((0..700).map(|_| rand()));
        let ends = [300, 310, 2000, 5000, raw.len()];
        let prefix: Vec<u8> = (0..4000).map(|i| (i % 5) as u8).collect();
        let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL).unwrap();
        // SAFETY: `prefix` outlives the frame, which `blocks` makes whole before it returns.
        let p: &'static [u8] = unsafe { std::mem::transmute::<&[u8], &'static [u8]>(&prefix) };
        let z = blocks(c.context_mut(), &raw, &ends, p).unwrap();
        // The 10-byte lane shares the next one's block: four blocks, the last one marked.
        let b = frame_blocks(&z);
        assert_eq!(b.len(), 4, "{b:?}");
        assert!(b[..3].iter().all(|x| !x.0) && b[3].0, "{b:?}");
        // The frame says its content size (the reader checks it) and reads back after its
        // prefix, with nothing new on the reader's side.
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&z).ok(),
            Some(Some(raw.len() as u64))
        );
        let mut d = zstd::zstd_safe::DCtx::create();
        d.ref_prefix(&prefix[..]).unwrap();
        let mut back = Vec::with_capacity(raw.len());
        d.decompress(&mut back, &z).unwrap();
        assert_eq!(back, raw);
        // The context serves the next frame as it did: a whole frame of its own, no prefix.
        let again = c.compress(&raw).unwrap();
        assert_eq!(frame_blocks(&again).len(), 1);
        assert_eq!(zstd::bulk::decompress(&again, raw.len()).unwrap(), raw);
        // With no lanes, one block.
        let one = blocks(c.context_mut(), &raw, &[], &[]).unwrap();
        assert_eq!(frame_blocks(&one).len(), 1);
        assert_eq!(zstd::bulk::decompress(&one, raw.len()).unwrap(), raw);
    }
}

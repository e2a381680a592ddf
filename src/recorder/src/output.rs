//! The dump writer: drains the per-thread rings, compresses them, and appends whole records to
//! `zmtrace.<program>.<pid>.zmt` with plain `write(2)` calls.
//!
//! A background thread does this at least ten times a second (and sooner when a ring is half
//! full), so the program's threads never wait for the disk unless a ring fills up. Everything here
//! runs under the `OUTPUT` lock and the recorder guard. When the dump cannot be written (full disk,
//! removed directory) recording stops with one message on stderr and the program goes on.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use zmtrace_format::{write, Block, End, EndReason, LiveSite, Origin, Process, RecordKind};

use crate::modules::MODULES;
use crate::stacks::PENDING_STACKS;
use crate::state::{Core, DROPPED, SEQ};
use crate::sync::{Guard, SpinLock};
use crate::threads::{all_threads, ThreadState};

pub(crate) struct Output {
    fd: i32,
    path: String,
    /// The process this dump belongs to (after `fork`, the child opens its own).
    pid: u32,
    failed: bool,
    finished: bool,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    raw: Vec<u8>,
    packed: Vec<u8>,
    events: Vec<u8>,
    meta: Vec<u8>,
    events_written: u64,
    last_reap_ns: u64,
    last_snapshot_ns: u64,
    /// Tracing was stopped and started again: the new dump needs every module and stack.
    restarted: bool,
}

pub(crate) static OUTPUT: SpinLock<Output> = SpinLock::new(Output {
    fd: -1,
    path: String::new(),
    pid: 0,
    failed: false,
    finished: false,
    zstd: None,
    raw: Vec::new(),
    packed: Vec::new(),
    events: Vec::new(),
    meta: Vec::new(),
    events_written: 0,
    last_reap_ns: 0,
    last_snapshot_ns: 0,
    restarted: false,
});

/// The pid that owns the dump: a `vfork` child shares our memory but must not touch the dump.
pub(crate) static OWNER_PID: AtomicU32 = AtomicU32::new(0);
static WRITER_RUNNING: AtomicBool = AtomicBool::new(false);
static WRITER_IDLE: AtomicBool = AtomicBool::new(false);
static WAKE: AtomicU32 = AtomicU32::new(0);
/// Packed event bytes per `Events` record (before compression: ~8 KiB after).
const RECORD_BYTES: usize = 32 * 1024;
/// How often the writer drains the rings when nobody wakes it.
const PERIOD_MS: i64 = 100;
static FLUSHES: AtomicU64 = AtomicU64::new(0);

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

/// The slow path of an event: the thread's ring is full. Drain it ourselves (waiting for the
/// writer's lock), or count the event as dropped once the dump is closed.
pub(crate) fn push_when_full(t: &ThreadState, bytes: &[u8]) {
    loop {
        {
            let mut out = OUTPUT.lock();
            if out.finished || out.failed || !owns_dump() {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                return;
            }
            out.flush_pass(crate::state::CORE.get());
        }
        // SAFETY: we are the ring's owner.
        if unsafe { t.ring.push(bytes) } {
            return;
        }
    }
}

/// A fatal signal arrived (its number): the writer writes everything and the `End` record.
static FINAL_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
static FINAL_DONE: AtomicBool = AtomicBool::new(false);
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
    }
    loop {
        WRITER_IDLE.store(true, Ordering::Release);
        let seen = WAKE.load(Ordering::Acquire);
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: PERIOD_MS * 1_000_000,
        };
        // SAFETY: futex wait on a static word with a timeout.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                WAKE.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                seen,
                &ts as *const libc::timespec,
            );
        }
        WRITER_IDLE.store(false, Ordering::Release);
        let sig = FINAL_SIGNAL.load(Ordering::Acquire);
        if sig != 0 {
            finish(EndReason::Signal, sig);
            FINAL_DONE.store(true, Ordering::Release);
        }
        let mut out = OUTPUT.lock();
        if out.finished || out.failed {
            WRITER_RUNNING.store(false, Ordering::Release);
            return std::ptr::null_mut();
        }
        out.flush_pass(crate::state::CORE.get());
        let now = crate::clock::now_mono();
        if crate::aggregate::on() && now.saturating_sub(out.last_snapshot_ns) > SNAPSHOT_NS {
            // Counters only: a killed process keeps them up to here. The live set can be
            // large (a server's whole keyspace), so it is written only at the end.
            out.last_snapshot_ns = now;
            out.write_aggregate(false);
        }
    }
}

/// How often an aggregated recording writes its counters while the program runs.
const SNAPSHOT_NS: u64 = 2_000_000_000;

/// From a signal handler, on the thread the fatal signal hit: has the writer thread write
/// everything and the `End` record, and waits for it (2 s at most). Only async-signal-safe
/// calls here: the thread may have been interrupted anywhere, in `malloc` too, so it must not
/// allocate or take a lock itself.
pub(crate) fn finish_on_signal(sig: i32) {
    // SAFETY: plain syscalls.
    let me = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
    if !WRITER_RUNNING.load(Ordering::Acquire) || me == WRITER_TID.load(Ordering::Acquire) {
        return;
    }
    if FINAL_SIGNAL
        .compare_exchange(0, sig, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return; // another thread's signal is being handled
    }
    wake_writer_now();
    // SAFETY: nanosleep is an async-signal-safe syscall.
    unsafe {
        for _ in 0..2000 {
            if FINAL_DONE.load(Ordering::Acquire) {
                break;
            }
            let ms = libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            };
            libc::nanosleep(&ms, std::ptr::null_mut());
        }
    }
}

/// Set once the dump ended with the process (exit, `_exit`, abort, a signal): threads that
/// still allocate after that leave a `Late` record, once each.
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
    let Some(out) = OUTPUT.try_lock() else { return };
    if out.fd < 0 || out.failed || !owns_dump() {
        return;
    }
    let mut buf = Vec::new();
    // SAFETY: no preconditions.
    write::late(&mut buf, unsafe { libc::syscall(libc::SYS_gettid) } as u32);
    // SAFETY: one write of our own buffer to our own descriptor.
    unsafe { libc::write(out.fd, buf.as_ptr().cast(), buf.len()) };
}

pub(crate) fn start_writer() {
    if WRITER_RUNNING.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: a detached thread running a plain extern "C" function. A raw pthread rather than
    // std::thread: std registers thread-locals with destructors, which must not exist here.
    unsafe {
        let mut th: libc::pthread_t = 0;
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        libc::pthread_attr_setstacksize(&mut attr, 256 * 1024);
        let rc = libc::pthread_create(&mut th, &attr, writer_main, std::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
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
    out.flush_pass(crate::state::CORE.get());
    out.finished = true;
    out.write_end(reason, status);
    if reason != EndReason::Stopped {
        ENDED_WITH_PROCESS.store(true, Ordering::Release);
    }
    // Threads still running after this cannot be written any more: stop recording them rather
    // than capture stacks for nothing.
    crate::disable();
}

/// Writes everything recorded so far, the `Exec` record and an `End` of reason exec: if the exec
/// succeeds, nothing more comes; if it fails, recording goes on and a later `End` replaces it.
/// Opens the dump now if it is not open (so that [`crate::start`] can report a failure).
pub(crate) fn open_now() -> Result<(), String> {
    let mut out = OUTPUT.lock();
    if out.fd < 0 && !out.failed && !out.finished {
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
    if out.fd >= 0 {
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(out.fd) };
    }
    out.fd = -1;
    out.finished = false;
    out.failed = false;
    out.events_written = 0;
    out.restarted = true;
    DROPPED.store(0, Ordering::Relaxed);
}

/// Appends one whole record (a leak check's) to the dump, unless it is finished or failed.
pub(crate) fn write_record(bytes: &[u8]) {
    let mut out = OUTPUT.lock();
    if out.fd < 0 && !out.finished && !out.failed {
        if let Some(core) = crate::state::CORE.get() {
            out.open(core, Origin::Start, 0, 0);
        }
    }
    if out.fd >= 0 && !out.finished && !out.failed {
        out.write_all_or_fail(bytes);
    }
}

pub(crate) fn flush_now() {
    let mut out = OUTPUT.lock();
    out.flush_pass(crate::state::CORE.get());
    if !out.finished {
        out.write_aggregate(true);
    }
}

pub(crate) fn path() -> Option<String> {
    let out = OUTPUT.lock();
    (!out.path.is_empty()).then(|| out.path.clone())
}

pub(crate) fn before_exec(path: &str) {
    let mut out = OUTPUT.lock();
    if out.finished {
        return;
    }
    out.flush_pass(crate::state::CORE.get());
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
        if !crate::aggregate::on() || self.fd < 0 || self.failed {
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

    fn write_end(&mut self, reason: EndReason, status: i32) {
        if self.fd < 0 || self.failed {
            return;
        }
        self.write_aggregate(true);
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
        let mut buf = Vec::new();
        write::end(&mut buf, &end);
        self.write_all_or_fail(&buf);
    }
}

/// The live set summed per stack and leak class. Classified by the leak check made at the end,
/// when there is one: the reports need the classes per stack, and a summed live set has no
/// addresses to match them by.
fn live_sites(core: &Core) -> Vec<LiveSite> {
    let check = crate::reach::LAST_EXIT_CHECK.lock().take();
    let mut sites: std::collections::HashMap<(u32, u8), LiveSite> = Default::default();
    for e in core.live.iter() {
        let b = e.value();
        let kind = check
            .as_ref()
            .and_then(|r| r.kind_of(*e.key() as u64))
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
    }
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
        if out.fd >= 0 {
            // SAFETY: closing our copy of the parent's descriptor.
            unsafe { libc::close(out.fd) };
        }
        out.fd = -1;
        out.events_written = 0;
        if out.finished || out.failed {
            return;
        }
        out.open(core, Origin::Fork, parent, fork_seq);
    }
    WRITER_RUNNING.store(false, Ordering::Release);
    // The parent's writer is not in this process; ours publishes its id when it runs.
    WRITER_TID.store(0, Ordering::Release);
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
            // SAFETY: plain open(2) of a path we own.
            fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                break;
            }
        }
        self.path = path;
        self.pid = pid;
        OWNER_PID.store(pid, Ordering::Release);
        if fd < 0 {
            self.fail(&std::io::Error::last_os_error());
            return;
        }
        self.fd = fd;
        let origin = match (origin, core.proc.env("ZMTRACE_EXEC_FROM")) {
            // Set by our execve hook: the same pid traced before this image.
            (Origin::Start, Some(p)) if p == pid.to_string() => Origin::Exec,
            (o, _) => o,
        };
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
                argv: core.proc.argv.clone(),
                aggregated: crate::aggregate::on(),
            },
        );
        if origin == Origin::Fork || std::mem::take(&mut self.restarted) {
            // Everything known so far: modules and every stack (and, after a fork, the blocks
            // live at the fork).
            let mut m = MODULES.lock();
            for module in &m.list {
                write::module(&mut buf, &module.info);
            }
            m.written = m.list.len();
            m.gone.clear();
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
            let raw = write::inherited_raw(core.live.iter().map(|e| Block {
                addr: *e.key() as u64,
                size: e.value().size,
                usable: e.value().usable,
                stack: e.value().stack,
            }));
            if origin == Origin::Fork && !raw.is_empty() {
                let z = self.compress(&raw);
                write::inherited(&mut buf, raw.len(), &z);
            }
        }
        self.write_all_or_fail(&buf);
    }

    fn compress(&mut self, raw: &[u8]) -> Vec<u8> {
        let z = self
            .zstd
            .get_or_insert_with(|| zstd::bulk::Compressor::new(1).expect("zstd context"));
        z.compress(raw).unwrap_or_default()
    }

    /// Drains every ring and writes what it found, after the stacks and modules it refers to.
    pub(crate) fn flush_pass(&mut self, core: Option<&Core>) {
        let Some(core) = core else { return };
        if self.finished || self.failed {
            return;
        }
        if self.fd < 0 {
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
        for t in all_threads() {
            self.raw.clear();
            // SAFETY: we hold OUTPUT, so we are the only drainer.
            if unsafe { t.ring.drain_into(&mut self.raw) } == 0 {
                continue;
            }
            // Read after draining: a new owner's tid is published before its first event.
            let tid = t.tid.load(Ordering::Acquire);
            // Records of bounded size: a dump cut anywhere (a full disk, a kill mid-write) keeps
            // every record before the cut.
            let raw = std::mem::take(&mut self.raw);
            let mut pos = 0;
            while pos < raw.len() {
                self.packed.clear();
                let (n, used) =
                    zmtrace_format::event::pack_some(&raw[pos..], &mut self.packed, RECORD_BYTES);
                if used == 0 {
                    break;
                }
                pos += used;
                self.events_written += n;
                let packed = std::mem::take(&mut self.packed);
                let z = self.compress(&packed);
                write::events(&mut self.events, t.stream, tid, packed.len(), &z);
                self.packed = packed;
            }
            self.raw = raw;
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

    /// Writes the modules and stacks that appeared since the last time.
    fn write_meta(&mut self) {
        self.meta.clear();
        {
            let mut m = MODULES.lock();
            for base in std::mem::take(&mut m.gone) {
                write::module_gone(&mut self.meta, base);
            }
            for module in &m.list[m.written..] {
                write::module(&mut self.meta, &module.info);
            }
            m.written = m.list.len();
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

    fn write_all_or_fail(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() && !self.failed {
            // SAFETY: writing our own buffer to our own descriptor.
            let n = unsafe { libc::write(self.fd, buf.as_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                self.fail(&e);
                return;
            }
            buf = &buf[n as usize..];
        }
    }

    /// Stops recording: the program must go on unharmed, with one line saying why.
    fn fail(&mut self, e: &std::io::Error) {
        self.failed = true;
        crate::disable();
        let msg = format!(
            "zmtrace: cannot write dump {}: {e}; recording stopped, the program goes on\n",
            self.path
        );
        // SAFETY: raw write to stderr: Rust's stderr may be unusable at exit.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    }
}

fn thread_is_gone(tid: u32) -> bool {
    // SAFETY: signal 0 only checks that the thread exists.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, getpid(), tid, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

//! The zmtrace recorder: the part of the tracer that runs inside the traced process, shared by
//! every front end (the `LD_PRELOAD` library, the `zmalloc` C API, the Rust global allocator).
//!
//! A front end calls the real allocator and reports what happened:
//! [`on_alloc`]/[`record_alloc`] after an allocation, [`on_free`] *before* a free (so that
//! another thread cannot be handed the same address before the free is numbered), and
//! [`realloc_begin`] / [`realloc_end`] around a reallocation (numbered twice: before, when the old
//! block may go back to the allocator, and after). For each event the recorder
//!
//! 1. captures the call stack as raw return addresses with a cached CFI unwinder (framehop, over
//!    the in-memory `.eh_frame_hdr`/`.eh_frame` of each module; one unwinder copy and rule cache per
//!    thread, so no lock is taken), dropping its own frames;
//! 2. interns the stack (identical stacks are stored once; a new one is queued for the dump);
//! 3. updates the live set (a `dashmap` keyed by address);
//! 4. numbers the event from one process-wide counter and appends it, varint-encoded, to the
//!    thread's own ring buffer.
//!
//! Nothing else happens on the hot path: no symbolization, no formatting, no I/O. A background
//! thread ([`output`]) drains the rings at least ten times a second, compresses them and appends
//! whole records to the dump, so a crash loses at most the last fraction of a second.
//!
//! Every path that may allocate runs under the per-thread [`sync::Guard`], so the recorder's own
//! allocations are never recorded and never re-enter it. `fork` is handled with `pthread_atfork`
//! handlers that hold every recorder lock across the fork; the child starts a dump of its own that
//! begins with the blocks it inherited. The dump ends with an `End` record written at `exit`,
//! `_exit`, `abort`, `exec`, [`stop`], or from a front end's fatal-signal handler
//! ([`finish_on_signal`], which hands the work to the writer thread). Before the `End` of an
//! `exit` or `_exit`, and whenever the program calls [`leak_check`], a leak check ([`reach`])
//! classifies the live set as memcheck would and writes a `Reach` record.

mod aggregate;
pub mod modules;
pub mod output;
pub mod reach;
pub mod ring;
pub mod sync;
mod unwind;

use std::cell::{Cell, UnsafeCell};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::ptr;
use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::OnceLock;

use dashmap::DashMap;
use zmtrace_format::event::{encode_alloc, encode_failed, encode_free, encode_realloc, EventBuf};
pub use zmtrace_format::{AllocKind, EndReason, KindTotal, LeakKind, ReachTrigger};

use crate::ring::Ring;
use crate::sync::{Guard, SpinLock};

/// Bytes of event ring per thread. At ~25 bytes an event this holds ~10,000 events: the writer
/// drains it well before it fills unless the disk stalls, and then the thread waits instead of
/// losing events.
const RING_BYTES: usize = 256 * 1024;
/// The deepest stack recorded; deeper stacks keep their innermost frames and count as truncated.
pub const MAX_FRAMES: usize = 256;

/// Which frames at the top of a stack are the tracer's own, to be dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Those in the module that holds the front end (the preload library).
    OwnModule,
    /// Those at or below this stack pointer: a front end linked into the program reads its
    /// stack pointer in its exported entry function (see [`stack_pointer`]), so its caller's frame
    /// is the first one kept.
    Below(u64),
}

/// The current stack pointer, for [`Skip::Below`]. Inlined into the caller, so it reads the
/// caller's own frame.
#[inline(always)]
pub fn stack_pointer() -> u64 {
    let sp: u64;
    // SAFETY: reads one register.
    unsafe {
        std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags));
    }
    sp
}

/// What a front end tells the recorder about itself.
pub struct FrontEnd {
    /// The real allocator's usable size of a block (`malloc_usable_size` of the next allocator).
    pub usable_size: unsafe fn(*mut u8) -> usize,
    /// A function of the front end: the module that holds it is the recorder's own, and its
    /// frames are dropped from the top of every stack ([`Skip::OwnModule`]).
    pub own_code: fn(),
    /// True: tracing starts with the first event (the preload library). False: nothing is
    /// recorded until [`start`] (the C API and the Rust allocator, which the environment or the
    /// program turns on).
    pub auto_start: bool,
}

static FRONT_END: OnceLock<&'static FrontEnd> = OnceLock::new();

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
const READY: u8 = 2;
const DISABLED: u8 = 3;
static STATE: AtomicU8 = AtomicU8::new(UNINIT);

/// The event sequence counter: one total order over all threads' events.
static SEQ: AtomicU64 = AtomicU64::new(1);
/// CLOCK_MONOTONIC at start, in ns: event timestamps are relative to it.
static START_MONO: AtomicU64 = AtomicU64::new(0);
/// The wall clock at the same moment (Unix ns): the dump's start time, to which timestamps add.
pub(crate) static START_UNIX: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds per TSC tick, as a 32.32 fixed-point number; 0 when timestamps come from
/// `clock_gettime` instead. Reading the TSC costs a third of the vDSO clock, and the clock was the
/// largest single cost left on the hot path.
static TSC_MULT: AtomicU64 = AtomicU64::new(0);
static START_TSC: AtomicU64 = AtomicU64::new(0);

#[inline]
fn rdtsc() -> u64 {
    // SAFETY: reads the time-stamp counter; x86_64 always has it.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// Uses the TSC only where the kernel itself trusts it as its clock source (invariant and
/// synchronised across CPUs); measures its rate against CLOCK_MONOTONIC over 2 ms.
fn calibrate_tsc() {
    let source =
        procinfo::read_file(c"/sys/devices/system/clocksource/clocksource0/current_clocksource");
    if source.trim_ascii() != b"tsc" {
        return;
    }
    let (m0, t0) = (now_mono(), rdtsc());
    let mut m1 = m0;
    while m1 - m0 < 2_000_000 {
        m1 = now_mono();
    }
    let t1 = rdtsc();
    if t1 > t0 {
        TSC_MULT.store(
            (((m1 - m0) as u128) << 32).div_ceil((t1 - t0) as u128) as u64,
            Ordering::Relaxed,
        );
    }
}

/// Takes the two start clocks together: at the first event, and again in a forked child, whose
/// dump starts at the fork.
pub(crate) fn mark_start() {
    START_TSC.store(rdtsc(), Ordering::Relaxed);
    START_MONO.store(now_mono(), Ordering::Relaxed);
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    START_UNIX.store(unix, Ordering::Relaxed);
}
/// Events that could not be written (after the final flush, or after a write error).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// How stacks are captured (`ZMTRACE_UNWIND`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UnwindMode {
    /// framehop over the in-memory unwind tables (default).
    Fast,
    /// The `backtrace` crate (`_Unwind_Backtrace`): the reference, slow.
    Backtrace,
    /// Both, recording the fast one and counting the stacks where they differ.
    Compare,
}

#[derive(Default)]
pub(crate) struct Fx(u64);
impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64)
    }
}
type FxBuild = BuildHasherDefault<Fx>;

/// A live block, as the recorder keeps it.
#[derive(Clone, Copy, Debug)]
pub struct LiveBlock {
    pub size: u64,
    pub usable: u64,
    pub stack: u32,
    /// Reallocs the block went through.
    pub chain: u32,
    /// The stream (thread state) that allocated or last reallocated it.
    pub stream: u32,
}

/// State set up once, on the first event.
struct Core {
    mode: UnwindMode,
    /// Address range of the module holding the recorder (its frames are dropped).
    own: Range<u64>,
    live: DashMap<usize, LiveBlock, FxBuild>,
    stacks: DashMap<Box<[u64]>, u32, FxBuild>,
    /// Process facts for the dump's first record.
    proc: procinfo::ProcInfo,
}

static CORE: OnceLock<Core> = OnceLock::new();
static NEXT_STACK: AtomicU32 = AtomicU32::new(1);
/// Stacks interned but not yet written to the dump.
static PENDING_STACKS: SpinLock<Vec<(u32, Box<[u64]>)>> = SpinLock::new(Vec::new());

/// The module list and the master copy of the unwinder; threads copy it when `generation` moves.
pub(crate) struct ModuleTable {
    pub list: Vec<modules::LoadedModule>,
    /// How many of `list` are in the dump already.
    pub written: usize,
    /// Load biases of unloaded modules not yet in the dump.
    pub gone: Vec<u64>,
    pub unwinder: Option<framehop::x86_64::UnwinderX86_64<&'static [u8]>>,
}
pub(crate) static MODULES: SpinLock<ModuleTable> = SpinLock::new(ModuleTable {
    list: Vec::new(),
    written: 0,
    gone: Vec::new(),
    unwinder: None,
});
/// Bumped when the module list changes (`dlopen`, `dlclose`).
pub(crate) static MODULES_GENERATION: AtomicU64 = AtomicU64::new(0);
static MODULES_DIRTY: AtomicBool = AtomicBool::new(false);

/// Per-thread recorder state. Never freed: when its thread is gone the writer marks it free and a
/// new thread takes it over, so a program that creates threads by the million uses a bounded set.
pub struct ThreadState {
    next: AtomicPtr<ThreadState>,
    in_use: AtomicBool,
    /// Fixed index of this state, written in each `Events` record.
    pub stream: u32,
    pub tid: AtomicU32,
    pub ring: Ring,
    pub counters: Counters,
    /// Aggregated mode: the block this thread allocated last, while it may still be temporary
    /// (cleared by whichever thread frees it, hence atomic).
    last_alloc: AtomicUsize,
    /// Aggregated mode: frees made by this thread, and whether it recorded anything yet.
    agg_frees: AtomicU64,
    agg_seen: AtomicBool,
    /// Touched only by the owning thread.
    local: UnsafeCell<unwind::Local>,
}

unsafe impl Sync for ThreadState {}

impl ThreadState {
    /// The top of the stack of the thread that owns this state.
    pub(crate) fn stack_top(&self) -> u64 {
        // SAFETY: a plain read of a field written only when a thread claims the state; the
        // leak check reads it from the owning thread or while that thread is stopped.
        unsafe { (*self.local.get()).stack_top() }
    }
}

/// Per-thread tallies, written only by the owner (relaxed load + store, no atomic RMW).
#[derive(Default)]
pub struct Counters {
    pub untracked_frees: AtomicU64,
    pub free_null: AtomicU64,
    pub truncated_stacks: AtomicU64,
    pub compared_stacks: AtomicU64,
    pub mismatched_stacks: AtomicU64,
}

#[inline]
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

static THREADS: AtomicPtr<ThreadState> = AtomicPtr::new(ptr::null_mut());
static NEXT_STREAM: AtomicU32 = AtomicU32::new(0);

thread_local! {
    // Const-initialised, no destructor: see `sync`.
    static CURRENT: Cell<*const ThreadState> = const { Cell::new(ptr::null()) };
}

/// Every thread state ever made.
pub(crate) fn all_threads() -> impl Iterator<Item = &'static ThreadState> {
    let mut p = THREADS.load(Ordering::Acquire);
    std::iter::from_fn(move || {
        // SAFETY: thread states are leaked, never freed.
        let s = unsafe { p.as_ref()? };
        p = s.next.load(Ordering::Acquire);
        Some(s)
    })
}

fn gettid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// This thread's state, claimed on first use. Must be called under the guard.
fn current_thread(core: &Core) -> &'static ThreadState {
    let p = CURRENT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: states are never freed.
        return unsafe { &*p };
    }
    let state = claim_thread(core);
    CURRENT.with(|c| c.set(state));
    state
}

fn claim_thread(core: &Core) -> &'static ThreadState {
    let tid = gettid();
    let top = unwind::stack_top();
    for s in all_threads() {
        if !s.in_use.load(Ordering::Relaxed)
            && s.in_use
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            // SAFETY: the state is ours now; its previous thread is gone.
            unsafe { (*s.local.get()).reset_for_thread(top) };
            s.last_alloc.store(0, Ordering::Relaxed);
            s.agg_seen.store(false, Ordering::Relaxed);
            s.tid.store(tid, Ordering::Release);
            return s;
        }
    }
    let s: &'static ThreadState = Box::leak(Box::new(ThreadState {
        next: AtomicPtr::new(ptr::null_mut()),
        in_use: AtomicBool::new(true),
        stream: NEXT_STREAM.fetch_add(1, Ordering::Relaxed),
        tid: AtomicU32::new(tid),
        ring: Ring::new(RING_BYTES),
        counters: Counters::default(),
        last_alloc: AtomicUsize::new(0),
        agg_frees: AtomicU64::new(0),
        agg_seen: AtomicBool::new(false),
        local: UnsafeCell::new(unwind::Local::new(top, core.mode)),
    }));
    aggregate::register_stream(s);
    let mut head = THREADS.load(Ordering::Relaxed);
    loop {
        s.next.store(head, Ordering::Relaxed);
        match THREADS.compare_exchange_weak(
            head,
            s as *const _ as *mut _,
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => return s,
            Err(h) => head = h,
        }
    }
}

/// Makes the recorder ready; called on the first event. Returns the core if recording.
#[inline]
fn core() -> Option<&'static Core> {
    if STATE.load(Ordering::Acquire) == READY {
        return CORE.get();
    }
    init_slow()
}

/// Set by [`start`]: a front end without `auto_start` initialises only then.
static START_REQUESTED: AtomicBool = AtomicBool::new(false);

#[cold]
fn init_slow() -> Option<&'static Core> {
    let front = FRONT_END.get().copied()?;
    if !front.auto_start && !START_REQUESTED.load(Ordering::Acquire) {
        return None;
    }
    if STATE
        .compare_exchange(UNINIT, INITIALIZING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Being set up by this very thread (an allocation made while initialising) or disabled.
        return match STATE.load(Ordering::Acquire) {
            READY => CORE.get(),
            DISABLED => {
                output::note_late();
                None
            }
            _ => None,
        };
    }
    calibrate_tsc();
    mark_start();
    let proc = procinfo::ProcInfo::read();
    let mode = match proc.env("ZMTRACE_UNWIND").as_deref() {
        Some("backtrace") => UnwindMode::Backtrace,
        Some("compare") => UnwindMode::Compare,
        _ => UnwindMode::Fast,
    };
    aggregate::ON.store(
        proc.env("ZMTRACE_AGGREGATE").as_deref() == Some("1"),
        Ordering::Relaxed,
    );
    let list = modules::enumerate();
    let own_addr = front.own_code as usize as u64;
    let own = list
        .iter()
        .find(|m| {
            m.info
                .segments
                .iter()
                .any(|&(s, e)| s <= own_addr && own_addr < e)
        })
        .map(|m| m.range.clone())
        .unwrap_or(0..0);
    {
        let mut t = MODULES.lock();
        t.unwinder = Some(modules::build_unwinder(&list));
        t.list = list;
    }
    MODULES_GENERATION.fetch_add(1, Ordering::Release);
    let _ = CORE.set(Core {
        mode,
        own,
        live: DashMap::with_hasher_and_shard_amount(FxBuild::default(), 64),
        stacks: DashMap::with_hasher_and_shard_amount(FxBuild::default(), 64),
        proc,
    });
    // SAFETY: registering handlers has no preconditions; they are plain extern "C" functions.
    unsafe {
        libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
    }
    // SAFETY: no preconditions.
    output::OWNER_PID.store(unsafe { libc::getpid() } as u32, Ordering::Release);
    STATE.store(READY, Ordering::Release);
    CORE.get()
}

/// Registers the front end. Call once, before the first event.
pub fn set_front_end(front: &'static FrontEnd) {
    let _ = FRONT_END.set(front);
}

/// Stops recording for good in this process (e.g. `ZMTRACE` says so, or a write failed).
pub fn disable() {
    STATE.store(DISABLED, Ordering::Release);
}

pub fn is_recording() -> bool {
    STATE.load(Ordering::Acquire) == READY
}

fn now_mono() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_MONOTONIC is served by the vDSO without a syscall.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds since the dump's start.
#[inline]
fn timestamp() -> u64 {
    let mult = TSC_MULT.load(Ordering::Relaxed);
    if mult != 0 {
        let ticks = rdtsc().saturating_sub(START_TSC.load(Ordering::Relaxed));
        ((ticks as u128 * mult as u128) >> 32) as u64
    } else {
        now_mono().saturating_sub(START_MONO.load(Ordering::Relaxed))
    }
}

/// Captures and interns the current stack.
#[inline(always)]
fn stack_id(core: &Core, t: &ThreadState, skip: Skip) -> u32 {
    // SAFETY: `local` is only touched by its owning thread, which is this one.
    let local = unsafe { &mut *t.local.get() };
    local.stack_id(core, &t.counters, skip)
}

/// The id of a stack, and where the stack store keeps its frames (stable: stacks are never
/// removed, so the per-thread cache may point at them).
pub(crate) fn intern(core: &Core, frames: &[u64]) -> (u32, *const u64) {
    if let Some(r) = core.stacks.get(frames) {
        return (*r.value(), r.key().as_ptr());
    }
    let r = core.stacks.entry(frames.into()).or_insert_with(|| {
        let id = NEXT_STACK.fetch_add(1, Ordering::Relaxed);
        PENDING_STACKS.lock().push((id, frames.into()));
        id
    });
    (*r.value(), r.key().as_ptr())
}

#[inline]
fn emit(t: &ThreadState, ev: &EventBuf) {
    // SAFETY: only the owning thread pushes to its ring.
    if unsafe { t.ring.push(ev.as_slice()) } {
        if t.ring.len() > RING_BYTES / 2 {
            output::wake_writer();
        }
        return;
    }
    output::push_when_full(t, ev.as_slice());
}

/// Records an allocation that returned `ptr` (NULL: a failed allocation) for `size` bytes; the
/// usable size is asked of the front end.
///
/// # Safety
/// `ptr` is null or a block the real allocator just returned.
#[inline]
pub unsafe fn on_alloc(kind: AllocKind, ptr: *mut u8, size: usize) {
    record_alloc(kind, ptr, size, None, Skip::OwnModule)
}

/// Records an allocation, with the usable size when the front end knows it and the frames to
/// drop.
///
/// # Safety
/// `ptr` is null or a block the real allocator just returned.
#[inline]
pub unsafe fn record_alloc(
    kind: AllocKind,
    ptr: *mut u8,
    size: usize,
    usable: Option<usize>,
    skip: Skip,
) {
    let Some(_g) = Guard::enter() else { return };
    let Some(core) = core() else { return };
    let t = current_thread(core);
    let stack = stack_id(core, t, skip);
    if ptr.is_null() {
        if aggregate::on() {
            aggregate::failed(t, stack);
            return;
        }
        let mut ev = EventBuf::default();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        encode_failed(&mut ev, seq, timestamp(), kind, size as u64, stack);
        emit(t, &ev);
        return;
    }
    let usable = usable.map_or_else(|| usable_size(ptr), |u| u as u64);
    core.live.insert(
        ptr as usize,
        LiveBlock {
            size: size as u64,
            usable,
            stack,
            chain: 0,
            stream: t.stream,
        },
    );
    if aggregate::on() {
        aggregate::alloc(t, ptr as usize, size as u64, stack);
        return;
    }
    let mut ev = EventBuf::default();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    encode_alloc(
        &mut ev,
        seq,
        timestamp(),
        kind,
        ptr as u64,
        size as u64,
        usable,
        stack,
    );
    emit(t, &ev);
}

unsafe fn usable_size(ptr: *mut u8) -> u64 {
    match FRONT_END.get() {
        Some(f) => (f.usable_size)(ptr) as u64,
        None => 0,
    }
}

/// Records a free. Call it *before* the real free: once the real allocator has the block back,
/// another thread may be given the same address, and its allocation must be numbered after this.
///
/// # Safety
/// `ptr` is the argument of a `free` about to happen.
#[inline]
pub unsafe fn on_free(ptr: *mut u8) {
    let Some(_g) = Guard::enter() else { return };
    let Some(core) = core() else { return };
    let t = current_thread(core);
    if ptr.is_null() {
        bump(&t.counters.free_null);
        return;
    }
    let Some((_, block)) = core.live.remove(&(ptr as usize)) else {
        // Allocated before the recorder started, or by a path it does not see: no event, or the
        // dump would hold a free without its allocation.
        bump(&t.counters.untracked_frees);
        return;
    };
    if aggregate::on() {
        aggregate::free(t, ptr as usize, &block);
        return;
    }
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut ev = EventBuf::default();
    encode_free(&mut ev, seq, timestamp(), ptr as u64);
    emit(t, &ev);
}

/// What [`realloc_begin`] learnt about the old block.
pub struct ReallocToken {
    old: *mut u8,
    block: Option<LiveBlock>,
    /// The old block's number of leaving: taken before the real `realloc`, which may give its
    /// address to another thread before it returns.
    out_seq: u64,
    recording: bool,
}

/// Call before the real `realloc(old, …)` with a non-null `old`: the old address leaves the live
/// set first, because the moment the real `realloc` moves the block another thread may get it.
///
/// # Safety
/// `old` is the non-null argument of a `realloc` about to happen.
#[inline]
pub unsafe fn realloc_begin(old: *mut u8) -> ReallocToken {
    let Some(_g) = Guard::enter() else {
        return ReallocToken {
            old,
            block: None,
            out_seq: 0,
            recording: false,
        };
    };
    let Some(core) = core() else {
        return ReallocToken {
            old,
            block: None,
            out_seq: 0,
            recording: false,
        };
    };
    let block = core.live.remove(&(old as usize)).map(|(_, b)| b);
    let out_seq = if block.is_some() && !aggregate::on() {
        SEQ.fetch_add(1, Ordering::Relaxed)
    } else {
        0
    };
    ReallocToken {
        old,
        block,
        out_seq,
        recording: true,
    }
}

/// Call after the real `realloc` returned `new` for `size` bytes.
///
/// # Safety
/// `tok` comes from [`realloc_begin`] for this very call.
#[inline]
pub unsafe fn realloc_end(tok: ReallocToken, kind: AllocKind, new: *mut u8, size: usize) {
    record_realloc(tok, kind, new, size, None, Skip::OwnModule)
}

/// [`realloc_end`] with the usable size when the front end knows it, and the frames to drop.
///
/// # Safety
/// `tok` comes from [`realloc_begin`] for this very call.
#[inline]
pub unsafe fn record_realloc(
    tok: ReallocToken,
    kind: AllocKind,
    new: *mut u8,
    size: usize,
    usable: Option<usize>,
    skip: Skip,
) {
    if !tok.recording {
        return;
    }
    let Some(_g) = Guard::enter() else { return };
    let Some(core) = core() else { return };
    let t = current_thread(core);
    let stack = stack_id(core, t, skip);
    // Aggregated mode: the same cases and the same live set, counted instead of written.
    let agg = aggregate::on();
    let mut ev = EventBuf::default();
    let ts_seq = || (SEQ.fetch_add(1, Ordering::Relaxed), timestamp());
    match (new.is_null(), tok.block) {
        (true, block) if size != 0 => {
            // Failed: the old block, if there was one, is untouched and still live.
            if let Some(block) = block {
                core.live.insert(tok.old as usize, block);
            }
            if agg {
                aggregate::failed(t, stack);
                return;
            }
            let (seq, ts) = ts_seq();
            encode_failed(&mut ev, seq, ts, kind, size as u64, stack);
        }
        (true, Some(block)) => {
            // realloc(p, 0) that freed p (glibc).
            if agg {
                aggregate::realloc(t, tok.old as usize, &block, 0, 0, stack);
                return;
            }
            let (seq, ts) = ts_seq();
            encode_realloc(
                &mut ev,
                seq,
                tok.out_seq,
                ts,
                tok.old as u64,
                0,
                0,
                0,
                stack,
            );
        }
        (true, None) => {
            bump(&t.counters.untracked_frees);
            return;
        }
        (false, block) => {
            let usable = usable.map_or_else(|| usable_size(new), |u| u as u64);
            core.live.insert(
                new as usize,
                LiveBlock {
                    size: size as u64,
                    usable,
                    stack,
                    chain: block.map_or(0, |b| b.chain.saturating_add(1)),
                    stream: t.stream,
                },
            );
            if block.is_none() {
                // The old block was never seen: to the dump this is a new block.
                bump(&t.counters.untracked_frees);
            }
            if agg {
                match block {
                    Some(b) => aggregate::realloc(
                        t,
                        tok.old as usize,
                        &b,
                        new as usize,
                        size as u64,
                        stack,
                    ),
                    None => aggregate::alloc(t, new as usize, size as u64, stack),
                }
                return;
            }
            let (seq, ts) = ts_seq();
            if block.is_some() {
                encode_realloc(
                    &mut ev,
                    seq,
                    tok.out_seq,
                    ts,
                    tok.old as u64,
                    new as u64,
                    size as u64,
                    usable,
                    stack,
                );
            } else {
                encode_alloc(
                    &mut ev,
                    seq,
                    ts,
                    kind,
                    new as u64,
                    size as u64,
                    usable,
                    stack,
                );
            }
        }
    }
    emit(t, &ev);
}

/// Tells the recorder that modules were loaded or unloaded (`dlopen`, `dlclose`).
pub fn modules_changed() {
    let Some(_g) = Guard::enter() else { return };
    if STATE.load(Ordering::Acquire) != READY {
        return;
    }
    MODULES_DIRTY.store(true, Ordering::Release);
    refresh_modules();
}

/// Re-reads the module list if it changed, and publishes a new unwinder generation.
pub(crate) fn refresh_modules() {
    if !MODULES_DIRTY.swap(false, Ordering::AcqRel) {
        return;
    }
    let now = modules::enumerate();
    let mut t = MODULES.lock();
    let old_bases: Vec<u64> = t.list.iter().map(|m| m.info.base).collect();
    let new_bases: Vec<u64> = now.iter().map(|m| m.info.base).collect();
    let gone: Vec<u64> = old_bases
        .iter()
        .copied()
        .filter(|b| !new_bases.contains(b))
        .collect();
    t.gone.extend(gone);
    // Keep the dump's order: modules already written stay first, new ones are appended.
    let mut list: Vec<_> = t
        .list
        .iter()
        .filter(|m| new_bases.contains(&m.info.base))
        .cloned()
        .collect();
    let kept = list.len();
    let written = t.written.min(kept);
    list.extend(
        now.into_iter()
            .filter(|m| !old_bases.contains(&m.info.base)),
    );
    t.unwinder = Some(modules::build_unwinder(&list));
    t.list = list;
    t.written = written;
    drop(t);
    MODULES_GENERATION.fetch_add(1, Ordering::Release);
}

/// Writes everything recorded so far and the `End` record; later events are counted as dropped.
/// Called from the library destructor (`exit`), `_exit` and `abort`.
pub fn finish(reason: EndReason, status: i32) {
    let _g = Guard::enter();
    if STATE.load(Ordering::Acquire) != READY || !output::owns_dump() {
        return;
    }
    let trigger = match reason {
        EndReason::Exit => Some(ReachTrigger::Exit),
        EndReason::UnderscoreExit => Some(ReachTrigger::UnderscoreExit),
        _ => None,
    };
    if let (Some(trigger), Some(core)) = (trigger, CORE.get()) {
        write_leak_check(core, trigger);
    }
    output::finish(reason, status);
}

/// Runs a leak check now and writes it to the dump; returns the blocks and bytes of each
/// [`LeakKind`] (in its order), or None when nothing is being recorded (or another check is
/// under way).
pub fn leak_check() -> Option<[KindTotal; 4]> {
    let _g = Guard::enter()?;
    if STATE.load(Ordering::Acquire) != READY || !output::owns_dump() {
        return None;
    }
    write_leak_check(CORE.get()?, ReachTrigger::Request)
}

/// Aggregated mode: the check made at the end, to classify the live set written after it (see
/// `output`).
pub(crate) static LAST_EXIT_CHECK: SpinLock<Option<Box<zmtrace_format::Reach>>> =
    SpinLock::new(None);

fn write_leak_check(core: &Core, trigger: ReachTrigger) -> Option<[KindTotal; 4]> {
    let outcome = reach::check(core, trigger)?;
    let r = outcome.reach;
    let raw = zmtrace_format::write::reach_raw(&r.addrs);
    let z = zstd::bulk::compress(&raw, 1).ok()?;
    let mut buf = Vec::new();
    zmtrace_format::write::reach(&mut buf, &r, raw.len(), &z);
    output::write_record(&buf);
    let totals = r.totals;
    if aggregate::on() && trigger != ReachTrigger::Request {
        *LAST_EXIT_CHECK.lock() = Some(Box::new(r));
    }
    Some(totals)
}

/// Where [`start`] was told to write (overrides `ZMTRACE_OUT`).
pub(crate) static OUT_DIR: SpinLock<Option<String>> = SpinLock::new(None);
static AT_EXIT_REGISTERED: AtomicBool = AtomicBool::new(false);

extern "C" fn finish_at_exit() {
    finish(EndReason::Exit, -1);
}

/// Starts tracing (a front end without `auto_start`): the dump is opened now, in `out_dir` or
/// else `ZMTRACE_OUT` or else the current directory. After a [`stop`], starts a new dump.
/// Returns the dump's path (made under the guard: not an allocation of the program's), or why
/// the dump cannot be written.
pub fn start(out_dir: Option<&str>) -> Result<String, String> {
    let _g = Guard::enter();
    if FRONT_END.get().is_none() {
        return Err("no zmtrace front end is registered".into());
    }
    if let Some(d) = out_dir {
        *OUT_DIR.lock() = Some(d.to_owned());
    }
    match STATE.load(Ordering::Acquire) {
        READY => return Ok(output::path().unwrap_or_default()),
        UNINIT => {
            START_REQUESTED.store(true, Ordering::Release);
            init_slow();
        }
        DISABLED => {
            // A new session: forget what the last one saw (blocks freed while tracing was off
            // would otherwise stay live), and start a new dump with everything it refers to.
            let Some(core) = CORE.get() else {
                return Err("tracing cannot start again".into());
            };
            core.live.clear();
            for t in all_threads() {
                t.ring.discard();
            }
            aggregate::reset();
            mark_start();
            output::restart();
            STATE.store(READY, Ordering::Release);
        }
        _ => {}
    }
    if STATE.load(Ordering::Acquire) != READY {
        return Err("the recorder could not start".into());
    }
    output::open_now()?;
    output::start_writer();
    if !AT_EXIT_REGISTERED.swap(true, Ordering::AcqRel) {
        // SAFETY: registers a plain extern "C" function.
        unsafe { libc::atexit(finish_at_exit) };
    }
    Ok(output::path().unwrap_or_default())
}

/// Stops tracing: writes everything and the `End` record. Allocations go on untraced.
pub fn stop() {
    finish(EndReason::Stopped, -1);
}

/// Writes everything recorded so far to the dump now.
pub fn dump_now() {
    let _g = Guard::enter();
    if STATE.load(Ordering::Acquire) == READY && output::owns_dump() {
        output::flush_now();
    }
}

/// True while events are being recorded: the front ends' one-load check.
#[inline]
pub fn tracing() -> bool {
    STATE.load(Ordering::Relaxed) == READY
}

/// The path of the current (or last) dump.
pub fn dump_path() -> Option<String> {
    output::path()
}

/// From a handler of a fatal signal (the front end's): writes everything up to now and the `End`
/// record (reason [`EndReason::Signal`]) before the signal takes its default action.
/// Async-signal-safe: the work is done by the writer thread.
pub fn finish_on_signal(sig: i32) {
    if STATE.load(Ordering::Acquire) == READY && output::owns_dump() {
        output::finish_on_signal(sig);
    }
}

/// Flushes everything before `execve` replaces the image (the new image writes its own dump).
/// Returns false in a process that does not own the dump (a `vfork` child, which must not
/// allocate either: it shares the parent's heap).
pub fn before_exec(path: &str) -> bool {
    let _g = Guard::enter();
    if !output::owns_dump() {
        return false;
    }
    if STATE.load(Ordering::Acquire) == READY {
        output::before_exec(path);
    }
    true
}

/// Starts the background writer. Call from the front end's constructor, once the C runtime is up.
pub fn start_writer() {
    let _g = Guard::enter();
    if core().is_some() {
        output::start_writer();
    }
}

// ---- fork ----------------------------------------------------------------------------------

/// Takes every recorder lock so that no other thread holds one at the fork: a child inherits only
/// the forking thread, and a lock held by any other thread would stay locked in it forever.
extern "C" fn fork_prepare() {
    Guard::enter_forever(); // released in fork_parent / fork_child
    let Some(core) = CORE.get() else { return };
    if STATE.load(Ordering::Acquire) == READY {
        reach::before_fork(core);
    }
    output::OUTPUT.raw_lock();
    MODULES.raw_lock();
    for shard in core.stacks.shards() {
        // SAFETY: paired with the unlock in fork_parent / fork_child.
        unsafe { lock_api::RawRwLock::lock_exclusive(shard.raw()) };
    }
    PENDING_STACKS.raw_lock();
    for shard in core.live.shards() {
        unsafe { lock_api::RawRwLock::lock_exclusive(shard.raw()) };
    }
}

fn unlock_after_fork() {
    let Some(core) = CORE.get() else { return };
    // SAFETY: fork_prepare took all of these in this thread (or, in the child, its parent did).
    unsafe {
        for shard in core.live.shards() {
            lock_api::RawRwLock::unlock_exclusive(shard.raw());
        }
        PENDING_STACKS.raw_unlock();
        for shard in core.stacks.shards() {
            lock_api::RawRwLock::unlock_exclusive(shard.raw());
        }
        MODULES.raw_unlock();
        output::OUTPUT.raw_unlock();
    }
}

extern "C" fn fork_parent() {
    unlock_after_fork();
    Guard::leave_forever();
}

extern "C" fn fork_child() {
    unlock_after_fork();
    reach::IN_FORKED_CHILD.store(true, Ordering::Release);
    if let Some(core) = CORE.get() {
        let me = CURRENT.with(|c| c.get());
        for s in all_threads() {
            // Unread events belong to the parent, which writes them to its own dump.
            s.ring.discard();
            s.counters.untracked_frees.store(0, Ordering::Relaxed);
            s.counters.free_null.store(0, Ordering::Relaxed);
            s.counters.truncated_stacks.store(0, Ordering::Relaxed);
            s.counters.compared_stacks.store(0, Ordering::Relaxed);
            s.counters.mismatched_stacks.store(0, Ordering::Relaxed);
            if ptr::eq(s, me) {
                s.tid.store(gettid(), Ordering::Release);
            } else {
                // Its thread does not exist in the child.
                s.in_use.store(false, Ordering::Release);
            }
        }
        DROPPED.store(0, Ordering::Relaxed);
        if aggregate::on() {
            // The child's counts start at the fork; it inherits the live blocks.
            aggregate::reset();
        }
        output::after_fork_in_child(core);
    }
    Guard::leave_forever();
}

mod procinfo {
    //! Facts about the process, read from `/proc` with plain syscalls so that they work at any
    //! point of start-up (the first `malloc` can come before the C library has set `environ`).

    pub struct ProcInfo {
        pub argv: Vec<String>,
        pub environ: Vec<String>,
        pub exe: String,
    }

    pub fn read_file(path: &std::ffi::CStr) -> Vec<u8> {
        let mut out = Vec::new();
        // SAFETY: plain syscalls on a buffer we own.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return out;
            }
            let mut buf = [0u8; 4096];
            loop {
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n as usize]);
            }
            libc::close(fd);
        }
        out
    }

    /// NUL-terminated strings; an empty argument (`""`) stays an empty string.
    fn split_nul(b: &[u8]) -> Vec<String> {
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        if b.is_empty() {
            return Vec::new();
        }
        b.split(|&c| c == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }

    impl ProcInfo {
        pub fn read() -> ProcInfo {
            ProcInfo {
                argv: split_nul(&read_file(c"/proc/self/cmdline")),
                environ: split_nul(&read_file(c"/proc/self/environ")),
                exe: std::fs::read_link("/proc/self/exe")
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            }
        }

        pub fn env(&self, name: &str) -> Option<String> {
            self.environ.iter().find_map(|kv| {
                kv.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('='))
                    .map(str::to_owned)
            })
        }

        /// The program's name for the dump's file name: `argv[0]`'s last component, made safe.
        pub fn program_name(&self) -> String {
            let a0 = self.argv.first().map(String::as_str).unwrap_or("");
            let base = a0.rsplit('/').next().unwrap_or("");
            let base = if base.is_empty() {
                self.exe.rsplit('/').next().unwrap_or("program")
            } else {
                base
            };
            let clean: String = base
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-+".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .take(64)
                .collect();
            if clean.is_empty() {
                "program".into()
            } else {
                clean
            }
        }
    }
}

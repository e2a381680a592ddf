//! The zmtrace recorder: the part of the tracer that runs inside the traced process, shared by
//! every front end (the `LD_PRELOAD` library, the `zmalloc` C API, the Rust global allocator).
//!
//! A front end calls the real allocator and reports what happened:
//! [`on_alloc`]/[`record_alloc`] after an allocation, [`on_free`] *before* a free (so that
//! another thread cannot be handed the same address before the free is numbered), and
//! [`realloc_begin`] / [`realloc_end`] around a reallocation (numbered twice: before, when the old
//! block may go back to the allocator, and after). For each event the recorder
//!
//! 1. captures the call stack as raw return addresses with a table of compact unwind rules that
//!    every thread shares without a lock (derived from the in-memory `.eh_frame` of each module
//!    the first time an address is seen; framehop for the frames a rule cannot describe; through
//!    signal frames), dropping its own frames;
//! 2. interns the stack (identical stacks are stored once; a new one is queued for the dump);
//! 3. updates the live set (`live`: 16-byte entries in 64 shards of open addressing);
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
//!
//! # Where things are
//!
//! This file holds the API the front ends call: the hot path ([`on_alloc`], [`record_alloc`],
//! [`on_free`], [`realloc_begin`], [`realloc_end`], [`record_realloc`]) and the calls that start,
//! stop, flush, check and end a dump. The rest, by job:
//!
//! - `state`: the state machine, the front end, the `Core` (live set, stack store) and its
//!   set-up on the first event, the event counter, [`LiveBlock`], [`disable`].
//! - `live`: the live set.
//! - `threads`: the per-thread state ([`ThreadState`]: ring, counters, unwinder cache), claimed on
//!   a thread's first event and handed on when the thread is gone.
//! - `stacks`: [`Skip`], [`stack_pointer`], [`MAX_FRAMES`], [`UnwindMode`] and interning.
//! - `unwind`: stack capture (the rule table, the walk, signal frames; framehop for the rest; the
//!   `backtrace` crate as reference).
//! - `clock`: the start clocks and the event timestamps (TSC or `CLOCK_MONOTONIC`).
//! - [`modules`]: the loaded modules, and the master unwinder rebuilt after `dlopen`/`dlclose`.
//! - `aggregate`: the aggregated mode's counters, kept instead of events.
//! - [`ring`]: the per-thread event ring; [`output`]: the writer thread and the dump file;
//!   [`dumpfd`]: the dump's descriptor, kept out of the program's way.
//! - [`reach`]: the leak check.
//! - [`heap`]: the recorder's own heap ([`heap::OwnHeap`]), in mappings of its own.
//! - `fork`: the `pthread_atfork` handlers; `procinfo`: facts about the process from `/proc`.
//! - [`sync`]: the re-entrancy guard, the spin lock and the per-thread sums.

mod aggregate;
mod clock;
pub mod dumpfd;
mod fork;
pub mod heap;
mod live;
pub mod modules;
pub mod output;
mod procinfo;
pub mod reach;
pub mod ring;
mod sample;
mod stacks;
mod state;
pub mod sync;
mod threads;
mod tls;
mod unwind;

use std::sync::atomic::{AtomicBool, Ordering};

use zmtrace_format::event::{
    encode_alloc, encode_failed, encode_free, encode_left, encode_realloc, MAX_EVENT_LEN,
};
use zmtrace_format::varint::Sink;
pub use zmtrace_format::{AllocKind, EndReason, KindTotal, LeakKind, ReachTrigger};

pub use crate::stacks::{stack_pointer, Skip, UnwindMode, MAX_FRAMES};
pub use crate::state::{disable, secure_execution, FrontEnd, LiveBlock};
pub use crate::sync::defer_signal;
pub use crate::threads::{Counters, ThreadState};

use crate::clock::{mark_start, timestamp};
use crate::modules::{refresh_modules, MODULES_DIRTY};
use crate::reach::write_leak_check;
use crate::stacks::stack_id;
use crate::state::{
    core, init_slow, CORE, DISABLED, FRONT_END, READY, SEQ, START_REQUESTED, STATE, UNINIT,
};
use crate::sync::{Guard, SpinLock};
use crate::threads::{all_threads, bump, current_thread};

/// Registers the front end. Call once, before the first event.
pub fn set_front_end(front: &'static FrontEnd) {
    let _ = FRONT_END.set(front);
}

/// Encodes an event with `encode` straight into the thread's ring, and publishes it. Encoding
/// into a buffer on the stack and copying it in loads the event back in 16-byte pieces right
/// after it was stored field by field at odd offsets: no load could be forwarded from one
/// store, and each waited for the stores to reach the cache (on Redis, that copy was 5 % of
/// the server's samples, most of them on those loads).
#[inline(always)]
fn emit_with(t: &ThreadState, encode: impl FnOnce(&mut RingSink)) {
    // SAFETY: only the owning thread pushes to its ring; nothing else is pushed before the
    // publish, and the sink writes at most MAX_EVENT_LEN bytes (the largest event).
    unsafe {
        if let Some(p) = t.ring.slot(MAX_EVENT_LEN) {
            let mut sink = RingSink { p, len: 0 };
            encode(&mut sink);
            t.ring.publish(sink.len);
            wake_if_over_half(t);
            return;
        }
    }
    // No room in one piece at the tail (the ring wraps there, or is full): encoded aside, then
    // copied in.
    let mut buf = [0u8; MAX_EVENT_LEN];
    let mut sink = RingSink {
        p: buf.as_mut_ptr(),
        len: 0,
    };
    encode(&mut sink);
    let len = sink.len;
    // SAFETY: only the owning thread pushes to its ring.
    if unsafe { t.ring.push(&buf[..len]) } {
        wake_if_over_half(t);
        return;
    }
    output::push_when_full(t, &buf[..len]);
}

#[inline(always)]
fn wake_if_over_half(t: &ThreadState) {
    // SAFETY: only the owning thread asks (`t` is this thread's state).
    if unsafe { t.ring.over_half() } {
        output::wake_writer();
    }
}

/// [`emit_with`]'s encoder: writes at `p`, which has room for [`MAX_EVENT_LEN`] bytes.
struct RingSink {
    p: *mut u8,
    len: usize,
}

impl Sink for RingSink {
    #[inline(always)]
    fn put<const N: usize>(&mut self, bytes: [u8; N]) {
        debug_assert!(self.len + N <= MAX_EVENT_LEN);
        // SAFETY: within the slot (no event is longer than MAX_EVENT_LEN); `[u8; N]` has no
        // alignment to keep.
        unsafe { self.p.add(self.len).cast::<[u8; N]>().write(bytes) };
        self.len += N;
    }
}

/// Records an allocation that returned `ptr` (NULL: a failed allocation) for `size` bytes; the
/// usable size is asked of the front end.
///
/// # Safety
/// `ptr` is null or a block the real allocator just returned.
#[inline]
pub unsafe fn on_alloc(kind: AllocKind, ptr: *mut u8, size: usize) {
    // Here too, inlined into the front end's hook: an unsampled block then costs no call.
    if !ptr.is_null() && unsampled_fast(size) {
        return;
    }
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
    if !ptr.is_null() && unsampled_fast(size) {
        return;
    }
    let Some(_g) = Guard::enter() else { return };
    let Some(core) = core() else { return };
    let t = current_thread(core);
    if !ptr.is_null() && !sampled(t, size) {
        if sample::all_blocks() {
            // `--all-blocks`: the leak check needs every block (address and size), not its stack.
            insert_unsampled(core, t, ptr, size, usable);
        }
        return;
    }
    if !ptr.is_null() {
        // The unwind takes about as long as a miss to memory: the live set's slot arrives
        // meanwhile.
        core.live.prefetch(ptr as usize);
    }
    let stack = stack_id(core, t, skip);
    if ptr.is_null() {
        if aggregate::on() {
            aggregate::failed(t, stack);
            return;
        }
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let ts = timestamp();
        emit_with(t, |b| encode_failed(b, seq, ts, kind, size as u64, stack));
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
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let ts = timestamp();
    emit_with(t, |b| {
        encode_alloc(b, seq, ts, kind, ptr as u64, size as u64, usable, stack)
    });
}

/// Sampled recording: counts `size` bytes on this thread's countdown; true when the block is to
/// be recorded (always, when not sampling). The only cost of an unsampled block.
#[inline]
fn sampled(t: &ThreadState, size: usize) -> bool {
    let interval = sample::interval();
    if interval == 0 {
        return true;
    }
    // SAFETY: only the owning thread touches its sampler (`t` is this thread's state).
    let s = unsafe { &mut *t.sampler.get() };
    // The countdown lives in the thread's TLS word of its mode, where the hooks' fast paths
    // ([`countdown_skips`], [`countdown_skips_all`]) count the blocks they let through.
    let word = countdown_word();
    s.set_left(word.get());
    let picked = s.take(size as u64, interval);
    word.set(s.left());
    picked
}

/// Sampled recording without `--all-blocks`: counts `size` bytes on this thread's countdown and
/// returns true when the block is certainly not sampled: the caller then needs nothing else
/// (no guard, no recorder state, no event). False, with nothing counted: the full path decides
/// (a pick, the thread's first event, a call from inside the recorder, any other mode: there
/// the word is always 0; inside the recorder the guard holds the countdown, and the word is 0).
///
/// A front end may call it *before* the real allocation (the countdown depends on the size
/// alone), and then go straight to the real allocator; a failed allocation must still go to
/// the full path ([`on_alloc`] with a null pointer), which records it.
///
/// Without the guard: the countdown is only the owning thread's, and a call from inside the
/// recorder (the guard held: its own allocation, through a front end that does not keep those
/// apart) finds it 0 and goes on to the full path, which refuses it, so it never counts. One
/// compare: the guard is not asked. A word above 0 also
/// tells that this thread has recorded through a front end, whose allocator is then known.
#[inline(always)]
pub fn countdown_skips(size: usize) -> bool {
    skips_on(&tls::tls().left, size)
}

/// [`countdown_skips`] for `--all-blocks`: true when the block is certainly not sampled, and
/// counted; the caller then tracks it with [`track_unsampled`] once the real allocator returned
/// it (no stack, no event). False, with nothing counted: the full path decides.
#[inline(always)]
pub fn countdown_skips_all(size: usize) -> bool {
    skips_on(&tls::tls().left_all, size)
}

/// This thread's countdown of its mode, as the recorder sees it: inside the guard (where the
/// recorder always is when it counts), the word that the guard holds it in (`Tls::held`).
#[inline]
pub(crate) fn countdown_word() -> &'static std::cell::Cell<u64> {
    let tls = tls::tls();
    let i = if sample::only_sampled() { 0 } else { 1 };
    debug_assert!(tls.inside.load(Ordering::Relaxed));
    &tls.held[i]
}

/// Both countdowns' step: `word` is the mode's countdown in this thread's `tls`, 0 while the
/// thread is inside the recorder (`sync::Guard` holds it meanwhile): no check of the guard here.
#[inline(always)]
fn skips_on(word: &std::cell::Cell<u64>, size: usize) -> bool {
    match sample::skip(word.get(), size as u64) {
        Some(left) => {
            word.set(left);
            true
        }
        None => false,
    }
}

/// `--all-blocks`, after [`countdown_skips_all`] said yes and the real allocator returned `ptr`
/// (not null) for `size` bytes, `usable` usable: the block goes in the live set without a stack,
/// for the leak check only. What the full path does for it, without the rest of that path.
///
/// # Safety
/// `ptr` is a block the real allocator just returned, on this thread.
#[inline(never)]
pub unsafe fn track_unsampled(ptr: *mut u8, size: usize, usable: usize) {
    let Some(_g) = Guard::enter() else { return };
    // A running countdown means that this thread has its state and the recorder its core.
    let (Some(core), Some(t)) = (CORE.get(), tls::tls().current.get().as_ref()) else {
        return;
    };
    insert_unsampled(core, t, ptr, size, Some(usable));
}

/// Claims this thread's recorder state now, if the recorder runs (as its first event would).
/// A front end calls it before a call that holds a lock of the thread's own which claiming
/// takes: glibc's `pthread_getattr_np` on the calling thread holds the thread's descriptor lock
/// while it allocates (the main thread's `/proc/self/maps`, any thread's CPU set), and a first
/// event there would ask `pthread_getattr_np` for the thread's stack, and wait for itself.
/// Rust's runtime makes that call on every thread it starts, before the thread allocates.
pub fn claim_current_thread() {
    let Some(_g) = Guard::enter() else { return };
    let Some(core) = core() else { return };
    current_thread(core);
}

/// `--all-blocks`: true once this thread's countdown runs (its first sampled event drew it), so
/// that its frees may take [`forget_block`] instead of the whole of [`on_free`].
#[inline(always)]
pub fn tracking_all_blocks() -> bool {
    // 0 inside the recorder too (the guard holds it).
    tls::tls().left_all.get() != 0
}

/// `--all-blocks`, [`tracking_all_blocks`] true: [`on_free`] of `ptr` (not null, the program's,
/// about to be freed) without the checks that this mode and thread make needless: the block
/// leaves the live set, with a `Free` event if it was sampled.
///
/// # Safety
/// As [`on_free`].
#[inline(never)]
pub unsafe fn forget_block(ptr: *mut u8) {
    let Some(_g) = Guard::enter() else { return };
    let Some(core) = CORE.get() else { return };
    if let Some(block) = core.live.remove_sampled(ptr as usize) {
        if block.stack != sample::UNSAMPLED {
            free_recorded(core, ptr, &block);
        }
    }
}

#[inline(always)]
fn unsampled_fast(size: usize) -> bool {
    countdown_skips(size)
}

/// `--all-blocks`: an unsampled block goes in the live set with no stack ([`sample::UNSAMPLED`]),
/// for the leak check only: it has no events.
#[inline]
unsafe fn insert_unsampled(
    core: &state::Core,
    t: &ThreadState,
    ptr: *mut u8,
    size: usize,
    usable: Option<usize>,
) {
    let usable = usable.map_or_else(|| usable_size(ptr), |u| u as u64);
    core.live.insert(
        ptr as usize,
        LiveBlock {
            size: size as u64,
            usable,
            stack: sample::UNSAMPLED,
            chain: 0,
            stream: t.stream,
        },
    );
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
    if free_surely_unheld(ptr) {
        // Sampled recording: most frees are of unsampled blocks, and the live set's filter says
        // so without a lock, the guard or the thread's state (see `live`).
        return;
    }
    let Some(_g) = Guard::enter() else { return };
    let Some(core) = core() else { return };
    if sample::interval() > 0 && !ptr.is_null() {
        // Sampled recording: most frees are of unsampled blocks, and all such a free needs is
        // the one live-set lookup (not even the thread's state).
        // Unsampled (`--all-blocks`: kept for the leak check only): no event.
        if let Some(block) = core.live.remove_sampled(ptr as usize) {
            if block.stack != sample::UNSAMPLED {
                free_recorded(core, ptr, &block);
            }
        }
        return;
    }
    // A head start on the live set's slot (see `LiveSet::prefetch`); null frees are rare.
    core.live.prefetch(ptr as usize);
    let t = current_thread(core);
    if ptr.is_null() {
        bump(&t.counters.free_null);
        return;
    }
    let Some(block) = core.live.remove(ptr as usize) else {
        // Allocated before the recorder started, or by a path it does not see: no event, or the
        // dump would hold a free without its allocation.
        bump(&t.counters.untracked_frees);
        return;
    };
    free_recorded(core, ptr, &block);
}

/// Sampled recording without `--all-blocks`: true when `ptr` is not null and the live set
/// certainly does not hold it (its free filter says so, in one load: see `live`). A free of such
/// a block needs nothing from the recorder, and a front end may hand it straight to the real
/// allocator. False in every other mode, and before the recorder is set up.
#[inline(always)]
pub fn free_surely_unheld(ptr: *mut u8) -> bool {
    !ptr.is_null() && live::filter_says_absent(ptr as usize)
}

/// The free of a recorded block, once it left the live set.
#[inline]
unsafe fn free_recorded(core: &'static state::Core, ptr: *mut u8, block: &LiveBlock) {
    let t = current_thread(core);
    left_recording(t, ptr, block, None)
}

/// Block `block` at `ptr` leaves the recording: its free, numbered `seq` when the number was
/// taken as it left the live set (a realloc's), else now.
#[inline]
fn left_recording(t: &ThreadState, ptr: *mut u8, block: &LiveBlock, seq: Option<u64>) {
    if aggregate::on() {
        match seq {
            // A realloc's exit (sampled, the new block not drawn): no free of the program's.
            Some(_) => aggregate::left(t, ptr as usize, block),
            None => aggregate::free(t, ptr as usize, block),
        }
        return;
    }
    match seq {
        // A realloc's: the program did not free the block, and an estimate of frees must be
        // able to tell (it would count every such exit as a free of the block's weight).
        Some(seq) => {
            let ts = timestamp();
            emit_with(t, |b| encode_left(b, seq, ts, ptr as u64))
        }
        None => {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let ts = timestamp();
            emit_with(t, |b| encode_free(b, seq, ts, ptr as u64))
        }
    }
}

/// What [`realloc_begin`] learnt about the old block.
pub struct ReallocToken {
    old: *mut u8,
    block: Option<LiveBlock>,
    /// `--all-blocks`: the old block, unsampled (put back if the realloc fails).
    unsampled: Option<LiveBlock>,
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
            unsampled: None,
            out_seq: 0,
            recording: false,
        };
    };
    let Some(core) = core() else {
        return ReallocToken {
            old,
            block: None,
            unsampled: None,
            out_seq: 0,
            recording: false,
        };
    };
    let mut block = core.live.remove(old as usize);
    let mut unsampled = None;
    if let Some(b) = block.filter(|b| b.stack == sample::UNSAMPLED) {
        // `--all-blocks`: the old block was not sampled; to the recording this realloc is a
        // free of it (no event) and a new allocation, sampled or not.
        unsampled = Some(b);
        block = None;
    }
    let out_seq = if block.is_some() && !aggregate::on() {
        SEQ.fetch_add(1, Ordering::Relaxed)
    } else {
        0
    };
    ReallocToken {
        old,
        block,
        unsampled,
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

/// Sampled recording without `--all-blocks`: true when the live set certainly does not hold
/// `old` (its filter says so), so [`realloc_begin`] has nothing to take out; the caller then
/// calls the real `realloc` and [`realloc_unheld_end`] instead of the begin/end pair. Most
/// reallocs are of unsampled blocks, and this costs no guard, lock or probe for them.
#[inline(always)]
pub fn realloc_old_unheld(old: *mut u8) -> bool {
    free_surely_unheld(old)
}

/// The end of a realloc whose old block [`realloc_old_unheld`] found unheld: to the recording,
/// an unsampled free (nothing) and an allocation of `size`, which the sampler's countdown
/// usually skips right here; a pick (or a failure) takes the full path, as
/// [`realloc_begin`] + [`realloc_end`] would with the old block not found.
///
/// # Safety
/// `old` was the argument and `new` the result of the real `realloc(old, size)` just made.
#[inline(always)]
pub unsafe fn realloc_unheld_end(old: *mut u8, kind: AllocKind, new: *mut u8, size: usize) {
    if !new.is_null() && unsampled_fast(size) {
        return;
    }
    realloc_unheld_slow(old, kind, new, size)
}

#[inline(never)]
unsafe fn realloc_unheld_slow(old: *mut u8, kind: AllocKind, new: *mut u8, size: usize) {
    let tok = ReallocToken {
        old,
        block: None,
        unsampled: None,
        out_seq: 0,
        recording: true,
    };
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
    if let Some(b) = tok.unsampled.filter(|_| new.is_null() && size != 0) {
        core.live.insert(tok.old as usize, b); // failed: the old block is still there
    }
    if tok.block.is_none() && sample::interval() > 0 {
        // Sampled recording, the old block unsampled (or NULL): an unsampled free and a malloc
        // of `size` for the countdown; a failed call is recorded as ever.
        if new.is_null() && size == 0 {
            return;
        }
        if !new.is_null() && !sampled(t, size) {
            if sample::all_blocks() {
                insert_unsampled(core, t, new, size, usable);
            }
            return;
        }
    }
    if let Some(block) = tok
        .block
        .filter(|_| sample::interval() > 0 && !new.is_null())
    {
        // Sampled recording, the old block sampled: the new block is drawn afresh at its new
        // size, as a malloc of it would be. The countdown is memoryless, so every live block is
        // then sampled with the probability of its current size and its weight is that of its
        // size. Keeping the old block sampled instead would count a block twice in expectation
        // (sampled at its malloc, or else at its realloc: a 16 B malloc grown to 512 B was
        // estimated 2.1 times), and would record every later realloc of a grown block.
        if !sampled(t, size) {
            // Not drawn: the old block leaves the recording here, and the new one is unsampled.
            left_recording(t, tok.old, &block, Some(tok.out_seq));
            if sample::all_blocks() {
                insert_unsampled(core, t, new, size, usable);
            }
            return;
        }
    }
    let stack = stack_id(core, t, skip);
    // Aggregated mode: the same cases and the same live set, counted instead of written.
    let agg = aggregate::on();
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
            emit_with(t, |b| encode_failed(b, seq, ts, kind, size as u64, stack));
        }
        (true, Some(block)) => {
            // realloc(p, 0) that freed p (glibc).
            if agg {
                aggregate::realloc(t, tok.old as usize, &block, 0, 0, stack);
                return;
            }
            let (seq, ts) = ts_seq();
            let (out_seq, old) = (tok.out_seq, tok.old as u64);
            emit_with(t, |b| {
                encode_realloc(b, seq, out_seq, ts, old, 0, 0, 0, stack)
            });
        }
        (true, None) => {
            if sample::interval() == 0 {
                bump(&t.counters.untracked_frees);
            }
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
            if block.is_none() && sample::interval() == 0 && !tok.old.is_null() {
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
            let (out_seq, old, new, size) = (tok.out_seq, tok.old as u64, new as u64, size as u64);
            if block.is_some() {
                emit_with(t, |b| {
                    encode_realloc(b, seq, out_seq, ts, old, new, size, usable, stack)
                });
            } else {
                emit_with(t, |b| {
                    encode_alloc(b, seq, ts, kind, new, size, usable, stack)
                });
            }
        }
    }
}

// ---- the program's own mappings ----------------------------------------------------------------
//
// Two uses: the leak check's roots (`reach::regions`, always, even before the recorder is ready)
// and the `Map`/`Unmap`/`Remap` events, a metric of their own. Neither for the allocator's
// mappings (`allocator`: a call from a foreign allocator's code, which the front end tells by the
// caller's address; glibc's malloc maps with internal calls that never reach a hook), nor for the recorder's
// (raw system calls, or calls made under the guard, which `Guard::enter` refuses).

/// The format's mapping flags of `mmap` flags.
fn map_flags(flags: i32) -> u32 {
    use zmtrace_format::event::{MAP_ANONYMOUS, MAP_FIXED, MAP_SHARED};
    let mut f = 0;
    if flags & libc::MAP_ANONYMOUS != 0 {
        f |= MAP_ANONYMOUS;
    }
    // MAP_SHARED_VALIDATE (3) is shared too; MAP_PRIVATE is 2.
    if flags & libc::MAP_SHARED != 0 {
        f |= MAP_SHARED;
    }
    if flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) != 0 {
        f |= MAP_FIXED;
    }
    f
}

/// The program mapped memory (`mmap`, `mmap64`) at `addr`, with `mmap`'s `prot` and `flags`: a
/// root of the leak check and a `Map` event with its stack, unless `allocator` says that the
/// allocator made the call (from its own code, in any call of its API). See `reach::regions`.
/// Safe to call before the recorder is ready.
pub fn on_mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, allocator: bool) {
    reach::regions::mapped(addr as u64, len as u64, allocator);
    if allocator {
        return;
    }
    // The same path as an allocation: the guard (no re-entry; the recorder's own calls are
    // refused here), the thread's state, the stack.
    let Some(_g) = Guard::enter() else { return };
    let Some(core) = core() else { return };
    if aggregate::on() {
        return; // an aggregated recording counts heap blocks only
    }
    let t = current_thread(core);
    let stack = stack_id(core, t, Skip::OwnModule);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let ts = timestamp();
    let (prot, flags) = ((prot & 7) as u32, map_flags(flags));
    emit_with(t, |b| {
        zmtrace_format::event::encode_map(b, seq, ts, addr as u64, len as u64, prot, flags, stack)
    });
}

/// Call before the program's `munmap` (or `mremap`) system call: the number of its event, taken
/// now because once the range is gone another thread's `mmap` may be given it, and must be
/// numbered after. 0: nothing to record. Give it to [`on_munmap`] (or [`on_mremap`]).
pub fn unmap_begin(allocator: bool) -> u64 {
    if allocator {
        return 0;
    }
    let Some(_g) = Guard::enter() else { return 0 };
    if core().is_none() || aggregate::on() {
        return 0;
    }
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// The program unmapped memory (`munmap`) successfully; `seq` from [`unmap_begin`].
pub fn on_munmap(addr: *mut u8, len: usize, seq: u64) {
    reach::regions::unmapped(addr as u64, len as u64);
    if seq == 0 {
        return;
    }
    let Some(_g) = Guard::enter() else { return };
    let Some(core) = core() else { return };
    let t = current_thread(core);
    let ts = timestamp();
    emit_with(t, |b| {
        zmtrace_format::event::encode_unmap(b, seq, ts, addr as u64, len as u64)
    });
}

/// The program moved or resized a mapping (`mremap`) from `old` to `new`; `out_seq` from
/// [`unmap_begin`], taken before the call.
pub fn on_mremap(
    old: *mut u8,
    old_len: usize,
    new: *mut u8,
    new_len: usize,
    allocator: bool,
    out_seq: u64,
) {
    reach::regions::remapped(
        old as u64,
        old_len as u64,
        new as u64,
        new_len as u64,
        allocator,
    );
    if allocator || out_seq == 0 {
        return;
    }
    let Some(_g) = Guard::enter() else { return };
    let Some(core) = core() else { return };
    let t = current_thread(core);
    let stack = stack_id(core, t, Skip::OwnModule);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let ts = timestamp();
    let (old, old_len, new, new_len) = (old as u64, old_len as u64, new as u64, new_len as u64);
    emit_with(t, |b| {
        zmtrace_format::event::encode_remap(b, seq, out_seq, ts, old, old_len, new, new_len, stack)
    });
}

/// Notes the writable anonymous mappings that exist now, before the recorder's first event (the
/// loader's early memory): roots of the leak check. A front end that sees the program's mappings
/// calls it once, as early as it can (its first allocator call, before the real allocator).
pub fn mappings_at_start() {
    reach::regions::at_start();
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

/// Where a thread entered zmtrace to end the process or to ask for a leak check: its caller's
/// stack pointer (as it was at the call) and the callee-saved registers as the caller left them.
///
/// The leak check scans that thread's stack from `sp` up, never below: below lie the frames of
/// the exit machinery (`__run_exit_handlers`), of the recorder and of the check itself, whose
/// unwritten slots hold copies of pointers that earlier calls left there (the last block
/// allocated, typically). memcheck does not see those, since it never scans words that were not
/// written; the caller's registers stand for the spilled copies it does see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub sp: u64,
    /// rbx, rbp, r12, r13, r14, r15.
    pub regs: [u64; 6],
}

/// The [`Entry`] of the thread that called `exit`, for the check that the library destructor
/// makes later on the same thread.
static EXIT_ENTRY: SpinLock<Option<(u32, Entry)>> = SpinLock::new(None);

/// A front end's `exit` hook: remembers where the program called `exit` (see [`Entry`]).
pub fn note_exit_entry(entry: Entry) {
    let tid = crate::threads::gettid();
    *EXIT_ENTRY.lock() = Some((tid, entry));
}

fn exit_entry() -> Option<Entry> {
    let tid = crate::threads::gettid();
    match *EXIT_ENTRY.lock() {
        Some((t, e)) if t == tid => Some(e),
        _ => None,
    }
}

/// Writes everything recorded so far and the `End` record; later events are counted as dropped.
/// Called from the library destructor (`exit`), `_exit` and `abort`.
pub fn finish(reason: EndReason, status: i32) {
    finish_from(reason, status, None)
}

/// [`finish`] from a front end's entry point that knows where the program called it: the check
/// made on the way out scans this thread's stack from there (see [`Entry`]). At `exit`, the
/// entry its hook noted ([`note_exit_entry`]) comes first, `entry` after it.
pub fn finish_from(reason: EndReason, status: i32, entry: Option<Entry>) {
    if reason == EndReason::Exit {
        // Outside the guard: its frees are the program's, recorded as any.
        freeres();
    }
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
        // At `exit`, the entry its hook noted comes first (the front end's is a fallback).
        let entry = match reason {
            EndReason::Exit => exit_entry().or(entry),
            _ => entry,
        };
        write_leak_check(core, trigger, entry);
    }
    if let Some(core) = CORE.get() {
        unwind::write_stats(core);
    }
    output::finish(reason, status);
}

/// glibc's and libstdc++'s `freeres` at `exit`, before the check, as memcheck runs them: they
/// free what those libraries keep until the end (stdio buffers, locale and time zone data,
/// libstdc++'s emergency exception pool), so that a clean program reports nothing.
///
/// Only when this thread is the program's last (a thread still running may be using what they
/// free), never at `_exit` (`__libc_freeres` flushes stdio, which `_exit` must not: a forked
/// child would print its parent's buffered output twice), and not with `ZMTRACE_FREERES=0`
/// (`zmtrace run --no-freeres`). What they do not free is left to the default suppressions.
fn freeres() {
    static DONE: AtomicBool = AtomicBool::new(false);
    if STATE.load(Ordering::Acquire) != READY
        || !output::owns_dump()
        || Guard::is_held()
        || DONE.swap(true, Ordering::AcqRel)
    {
        return;
    }
    let off = CORE
        .get()
        .and_then(|c| c.proc.env("ZMTRACE_FREERES"))
        .is_some_and(|v| v == "0");
    if off || !reach::only_thread_left() {
        return;
    }
    // Looked up under the guard: a failed dlsym (a C program has no libstdc++) allocates its
    // error message, which is ours, not the program's. Called outside it.
    let fns = {
        let Some(_g) = Guard::enter() else { return };
        [c"_ZN9__gnu_cxx9__freeresEv", c"__libc_freeres"]
            // SAFETY: dlsym has no precondition.
            .map(|name| unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) })
    };
    for f in fns.into_iter().filter(|f| !f.is_null()) {
        // SAFETY: both take nothing and return nothing.
        unsafe { std::mem::transmute::<*mut libc::c_void, extern "C" fn()>(f)() };
    }
}

/// Runs a leak check now and writes it to the dump; returns the blocks and bytes of each
/// [`LeakKind`] (in its order), or None when nothing is being recorded (or another check is
/// under way).
pub fn leak_check() -> Option<[KindTotal; 4]> {
    leak_check_from(None)
}

/// [`leak_check`] from a front end's exported entry point that knows where its caller's frame
/// is: this thread's stack is scanned from there (see [`Entry`]).
pub fn leak_check_from(entry: Option<Entry>) -> Option<[KindTotal; 4]> {
    let _g = Guard::enter()?;
    if STATE.load(Ordering::Acquire) != READY || !output::owns_dump() {
        return None;
    }
    write_leak_check(CORE.get()?, ReachTrigger::Request, entry)
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
        if state::secure_execution() {
            return Err(
                "not recording a set-user-ID, set-group-ID or file-capability program \
                        (secure execution): its memory and arguments are not its user's to see"
                    .into(),
            );
        }
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

/// True once tracing has been started in this process (even if stopped since): the recorder may
/// have memory of its own ([`heap`]) from then on.
#[inline]
pub fn started() -> bool {
    STATE.load(Ordering::Relaxed) != UNINIT
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
/// Async-signal-safe: the work is done by the writer thread. Call it only where the thread is not
/// inside the recorder (see [`defer_signal`]), or for a fault, which cannot wait.
pub fn finish_on_signal(sig: i32) {
    if STATE.load(Ordering::Acquire) == READY && output::owns_dump() {
        output::finish_on_signal(sig);
    }
}

/// From the snapshot signal's handler (the front end's): a snapshot of the heap as of now is
/// written by the writer thread (a marker in an event recording; the counters and live set in an
/// aggregated one). Async-signal-safe, and takes no lock: callable anywhere.
pub fn request_snapshot() {
    if STATE.load(Ordering::Acquire) == READY && output::owns_dump() {
        output::request_snapshot();
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

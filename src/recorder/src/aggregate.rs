//! Aggregated recording (`ZMTRACE_AGGREGATE=1`, set by `zmtrace run --aggregate`): instead of an
//! event stream, per-stack counters and the live set, written when the dump ends. For servers
//! that run for days: the dump stays small and nothing waits for a writer, at the price of the
//! timeline (no peak, no memory over time).
//!
//! The counters are the ones the analyzer computes when it replays events (allocations, bytes,
//! temporaries, failures, realloc churn), kept with the same rules so that both kinds of dump of
//! one run report the same numbers.
//!
//! Counters live in one process-wide table indexed by stack id (ids are dense, handed out in
//! order). Allocation counters are atomic adds: a per-thread table would avoid the `lock xadd`,
//! but it costs memory per thread × per stack and makes a mid-run snapshot racy. The realloc
//! statistics (growth steps) take a small per-stack lock: a realloc already costs far more.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use zmtrace_format::{Aggregate, AggregateSite, Churn};

use crate::state::LiveBlock;
use crate::sync::SpinLock;
use crate::threads::{all_threads, ThreadState};

/// Set once at start-up when the environment asks for aggregated recording.
pub(crate) static ON: AtomicBool = AtomicBool::new(false);

#[inline(always)]
pub(crate) fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

const CHUNK: usize = 1024;
const CHUNKS: usize = 4096;

struct Entry {
    allocations: AtomicU64,
    bytes: AtomicU64,
    temporary: AtomicU64,
    failed: AtomicU64,
    /// Boxed on a stack's first realloc: most stacks never realloc.
    churn: SpinLock<Option<Box<Churn>>>,
}

impl Default for Entry {
    fn default() -> Entry {
        Entry {
            allocations: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            temporary: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            churn: SpinLock::new(None),
        }
    }
}

type Chunk = [Entry; CHUNK];

/// Stack id → counters, in chunks made on first use. 4M stack ids: a program with more distinct
/// stacks gets the rest counted in `OVERFLOW` (reported as lost precision, never silently).
static TABLE: [AtomicPtr<Chunk>; CHUNKS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; CHUNKS];
static OVERFLOW: AtomicU64 = AtomicU64::new(0);
/// Threads that recorded something.
pub(crate) static THREADS_SEEN: AtomicU64 = AtomicU64::new(0);
/// Stream index → thread state, to find the thread that made a block when another one frees it.
const STREAMS: usize = 4096;
static BY_STREAM: [AtomicPtr<ThreadState>; STREAMS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; STREAMS];

pub(crate) fn register_stream(t: &'static ThreadState) {
    if let Some(slot) = BY_STREAM.get(t.stream as usize) {
        slot.store(t as *const _ as *mut _, Ordering::Release);
    }
}

fn entry(stack: u32) -> Option<&'static Entry> {
    let (c, i) = (stack as usize / CHUNK, stack as usize % CHUNK);
    let Some(slot) = TABLE.get(c) else {
        OVERFLOW.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let mut p = slot.load(Ordering::Acquire);
    if p.is_null() {
        let fresh: Box<Chunk> = Box::new(std::array::from_fn(|_| Entry::default()));
        let fresh = Box::into_raw(fresh);
        match slot.compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => p = fresh,
            Err(other) => {
                // SAFETY: ours, never published.
                drop(unsafe { Box::from_raw(fresh) });
                p = other;
            }
        }
    }
    // SAFETY: chunks are never freed.
    Some(unsafe { &(*p)[i] })
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The thread that allocated `b` made no other allocation since: the block was temporary.
/// Called when the block goes (free or realloc); clears that thread's mark either way.
fn took_last(me: &ThreadState, b: &LiveBlock, addr: usize) -> bool {
    let owner = if b.stream == me.stream {
        me
    } else {
        let p = BY_STREAM
            .get(b.stream as usize)
            .map_or(std::ptr::null_mut(), |s| s.load(Ordering::Acquire));
        // SAFETY: thread states are never freed.
        match unsafe { p.as_ref() } {
            Some(t) => t,
            None => return false,
        }
    };
    owner
        .last_alloc
        .compare_exchange(addr, 0, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
}

pub(crate) fn alloc(t: &ThreadState, addr: usize, size: u64, stack: u32) {
    seen(t);
    t.last_alloc.store(addr, Ordering::Relaxed);
    if let Some(e) = entry(stack) {
        add(&e.allocations, 1);
        add(&e.bytes, size);
    }
}

pub(crate) fn failed(t: &ThreadState, stack: u32) {
    seen(t);
    t.last_alloc.store(0, Ordering::Relaxed);
    if let Some(e) = entry(stack) {
        add(&e.failed, 1);
    }
}

pub(crate) fn free(t: &ThreadState, addr: usize, b: &LiveBlock) {
    seen(t);
    t.agg_frees
        .store(t.agg_frees.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    if took_last(t, b, addr) {
        if let Some(e) = entry(b.stack) {
            add(&e.temporary, 1);
        }
    }
}

/// Sampled recording: `old` (at `old_addr`), sampled, was reallocated into a block not drawn, so
/// it leaves the recording here. The program freed nothing: counted as a free, each such exit
/// would be estimated as a free of the whole block's weight (the event stream's `Left`). To its
/// thread it is a realloc all the same: the block is not temporary, and the thread's last
/// allocation is no longer its newest.
pub(crate) fn left(t: &ThreadState, old_addr: usize, old: &LiveBlock) {
    seen(t);
    took_last(t, old, old_addr);
    t.last_alloc.store(0, Ordering::Relaxed);
}

/// A successful realloc of `old` (at `old_addr`) into `new_size` bytes at `new_addr`, made from
/// `stack`; or, with `new_addr == 0`, a `realloc(p, 0)` that freed it.
pub(crate) fn realloc(
    t: &ThreadState,
    old_addr: usize,
    old: &LiveBlock,
    new_addr: usize,
    new_size: u64,
    stack: u32,
) {
    seen(t);
    // A realloc is an allocation of its thread, and a reallocated block is never temporary.
    took_last(t, old, old_addr);
    t.last_alloc.store(0, Ordering::Relaxed);
    if new_addr == 0 {
        t.agg_frees
            .store(t.agg_frees.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        return;
    }
    let Some(e) = entry(stack) else { return };
    add(&e.bytes, new_size);
    e.churn.lock().get_or_insert_with(Box::default).add(
        old.size,
        new_size,
        new_addr != old_addr,
        old.chain.saturating_add(1),
    );
}

/// Everything counted so far.
pub(crate) fn snapshot() -> Aggregate {
    let mut a = Aggregate {
        threads: THREADS_SEEN.load(Ordering::Relaxed),
        ..Aggregate::default()
    };
    for (ci, slot) in TABLE.iter().enumerate() {
        let p = slot.load(Ordering::Acquire);
        if p.is_null() {
            continue;
        }
        // SAFETY: chunks are never freed.
        for (i, e) in unsafe { &*p }.iter().enumerate() {
            let mut s = AggregateSite {
                stack: (ci * CHUNK + i) as u32,
                allocations: e.allocations.load(Ordering::Relaxed),
                bytes: e.bytes.load(Ordering::Relaxed),
                temporary: e.temporary.load(Ordering::Relaxed),
                failed: e.failed.load(Ordering::Relaxed),
                ..AggregateSite::default()
            };
            if let Some(c) = e.churn.lock().as_deref() {
                s.churn = c.clone();
            }
            if s.allocations + s.failed + s.churn.reallocs + s.bytes == 0 {
                continue;
            }
            a.allocations += s.allocations;
            a.reallocs += s.churn.reallocs;
            a.failed += s.failed;
            a.bytes_allocated += s.bytes;
            a.temporary += s.temporary;
            a.sites.push(s);
        }
    }
    a.frees = all_threads()
        .map(|t| t.agg_frees.load(Ordering::Relaxed))
        .sum();
    a.calls = a.allocations + a.frees + a.reallocs + a.failed;
    a
}

/// Events that did not fit the table (more than 4M distinct stacks).
pub(crate) fn overflow() -> u64 {
    OVERFLOW.load(Ordering::Relaxed)
}

/// Forgets every count: in a forked child (whose counts start at the fork: the parent's dump
/// has what came before) and when tracing starts again. Other threads do not exist in a child;
/// a lock one of them held is simply remade.
pub(crate) fn reset() {
    for slot in &TABLE {
        let p = slot.load(Ordering::Acquire);
        if p.is_null() {
            continue;
        }
        // SAFETY: chunks are never freed.
        for e in unsafe { &*p }.iter() {
            for c in [&e.allocations, &e.bytes, &e.temporary, &e.failed] {
                c.store(0, Ordering::Relaxed);
            }
            if e.churn.try_lock().is_none() {
                // Held by a thread that does not exist in this child.
                // SAFETY: nobody else can hold it now (see above).
                unsafe { e.churn.raw_unlock() };
            }
            *e.churn.lock() = None;
        }
    }
    for t in all_threads() {
        t.agg_frees.store(0, Ordering::Relaxed);
        t.last_alloc.store(0, Ordering::Relaxed);
        t.agg_seen.store(false, Ordering::Relaxed);
    }
    OVERFLOW.store(0, Ordering::Relaxed);
    THREADS_SEEN.store(0, Ordering::Relaxed);
}

/// Counts the thread once, on its first recorded call (as the analyzer counts the threads that
/// have events).
#[inline(always)]
fn seen(t: &ThreadState) {
    if !t.agg_seen.load(Ordering::Relaxed) {
        t.agg_seen.store(true, Ordering::Relaxed);
        THREADS_SEEN.fetch_add(1, Ordering::Relaxed);
    }
}

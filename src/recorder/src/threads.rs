//! Per-thread recorder state: each thread that records claims a [`ThreadState`] (its event ring,
//! its counters, its unwinder cache) on its first event and keeps it in a const-initialised
//! thread-local. States are never freed, only handed on to new threads, so the writer and the
//! leak check can walk them without a lock.

use std::cell::{Cell, UnsafeCell};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::ring::Ring;
use crate::sample::Sampler;
use crate::state::Core;
use crate::tls::tls;
use crate::{aggregate, unwind};

/// Bytes of event ring per thread. At 25-61 bytes an event (fixed width: an allocation 46, a
/// free 25) this holds ~6,000-10,000 events: the writer drains it well before it fills unless the
/// disk stalls, and then the thread waits instead of losing events.
pub(crate) const RING_BYTES: usize = 256 * 1024;

/// Per-thread recorder state. Never freed: when its thread is gone the writer marks it free and a
/// new thread takes it over, so a program that creates threads by the million uses a bounded set.
pub struct ThreadState {
    next: AtomicPtr<ThreadState>,
    pub(crate) in_use: AtomicBool,
    /// Fixed index of this state, written in each `Events` record.
    pub stream: u32,
    pub tid: AtomicU32,
    /// Where the owning thread's re-entrancy guard (`tls().inside`) is: how the thread that
    /// ends the process tells a thread caught inside the recorder from an idle one
    /// ([`ThreadState::inside_now`]). In the owner's TLS, so it may be unmapped once the owner
    /// is gone: read only with a read that cannot fault.
    inside: AtomicPtr<AtomicBool>,
    pub ring: Ring,
    pub counters: Counters,
    /// Aggregated mode: the block this thread allocated last, while it may still be temporary
    /// (cleared by whichever thread frees it, hence atomic).
    pub(crate) last_alloc: AtomicUsize,
    /// Aggregated mode: frees made by this thread, and whether it recorded anything yet.
    pub(crate) agg_frees: AtomicU64,
    pub(crate) agg_seen: AtomicBool,
    /// Touched only by the owning thread.
    pub(crate) local: UnsafeCell<unwind::Local>,
    /// Sampled recording: the byte countdown and its PRNG. Touched only by the owning thread;
    /// it lives here (not in a thread-local of its own) so the hot path reaches it with the
    /// state it already has, without allocating.
    pub(crate) sampler: UnsafeCell<Sampler>,
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

impl ThreadState {
    /// Whether the owning thread is inside the recorder at this moment (mid-event, or waiting
    /// for a lock of the recorder's), read from another thread; None when its guard could not
    /// be read (the thread is gone, or the kernel refuses the read). A snapshot: the owner may
    /// enter or leave the moment after.
    pub(crate) fn inside_now(&self) -> Option<bool> {
        let p = self.inside.load(Ordering::Relaxed);
        if p.is_null() {
            return None;
        }
        let mut word = [0u64; 1];
        // The guard is the first byte of the owner's `Tls` block (48 bytes, 16-aligned), so the
        // 8 bytes from it are all in the block.
        (crate::reach::read_own(p as u64, &mut word, 8) == 8).then_some(word[0] & 0xff != 0)
    }
}

fn inside_word() -> *mut AtomicBool {
    &tls().inside as *const AtomicBool as *mut AtomicBool
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
pub(crate) fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

static THREADS: AtomicPtr<ThreadState> = AtomicPtr::new(ptr::null_mut());
static NEXT_STREAM: AtomicU32 = AtomicU32::new(0);

/// This thread's state, in the recorder's initial-exec TLS block (`tls`: no `__tls_get_addr`
/// call on the hot path). `CURRENT.with(|c| ..)` as with the `thread_local!` it was.
pub(crate) struct Current;
pub(crate) static CURRENT: Current = Current;

impl Current {
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&Cell<*const ThreadState>) -> R) -> R {
        f(&tls().current)
    }
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

pub(crate) fn gettid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// This thread's state, claimed on first use. Must be called under the guard.
#[inline]
pub(crate) fn current_thread(core: &Core) -> &'static ThreadState {
    let p = tls().current.get();
    if !p.is_null() {
        // SAFETY: states are never freed.
        return unsafe { &*p };
    }
    let state = claim_thread(core);
    tls().current.set(state);
    state
}

#[cold]
#[inline(never)]
fn claim_thread(core: &Core) -> &'static ThreadState {
    let tid = gettid();
    let stack = unwind::stack_bounds();
    for s in all_threads() {
        if !s.in_use.load(Ordering::Relaxed)
            && s.in_use
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            // SAFETY: the state is ours now; its previous thread is gone.
            unsafe { (*s.local.get()).reset_for_thread(stack.clone()) };
            s.last_alloc.store(0, Ordering::Relaxed);
            s.agg_seen.store(false, Ordering::Relaxed);
            // SAFETY: as above, the state is ours.
            unsafe { *s.sampler.get() = Sampler::new(s.stream, tid) };
            s.inside.store(inside_word(), Ordering::Relaxed);
            s.tid.store(tid, Ordering::Release);
            return s;
        }
    }
    let stream = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
    let s: &'static ThreadState = Box::leak(Box::new(ThreadState {
        next: AtomicPtr::new(ptr::null_mut()),
        in_use: AtomicBool::new(true),
        stream,
        tid: AtomicU32::new(tid),
        inside: AtomicPtr::new(inside_word()),
        ring: Ring::new(RING_BYTES),
        counters: Counters::default(),
        last_alloc: AtomicUsize::new(0),
        agg_frees: AtomicU64::new(0),
        agg_seen: AtomicBool::new(false),
        local: UnsafeCell::new(unwind::Local::new(stack, core.mode)),
        sampler: UnsafeCell::new(Sampler::new(stream, tid)),
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

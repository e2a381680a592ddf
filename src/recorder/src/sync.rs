//! The three synchronisation primitives of the recorder: the per-thread re-entrancy guard (which
//! also defers a fatal signal that lands inside the recorder), a
//! small lock that a `fork` handler can take and release by hand, and [`ThreadSum`], a sum that
//! each thread adds to in a slot of its own, without an atomic read-modify-write.

use std::cell::{Cell, UnsafeCell};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicUsize, Ordering};

use crate::tls::{tls, Tls};

// The guard's per-thread state (whether the thread is inside the recorder, and the fatal signal
// that arrived meanwhile and waits for it to leave, [`defer_signal`]) is in the recorder's
// initial-exec TLS block (`tls`): two instructions to reach, where a `thread_local!` of the
// preload library costs a `__tls_get_addr` call. Atomics only for their ordering against a
// signal handler on the same thread: relaxed loads and stores, plain moves. Const-initialised
// (zero) and without a destructor: a lazily initialised thread-local, or one with a destructor,
// registers itself through `__cxa_thread_atexit_impl`, which allocates through the very `malloc`
// we are hooking, and aborts the process when touched after its destruction (glibc frees its own
// TLS bookkeeping through the hooked `free` at thread exit).

/// What runs a deferred fatal signal once its thread leaves the recorder (the front end's).
static RESUME: AtomicUsize = AtomicUsize::new(0);

/// Set while a thread runs recorder code. Everything the recorder does that may allocate (maps,
/// stack store, unwinder caches, compression, libc calls) happens under it, so that an allocation
/// made *by the recorder* passes straight through the hooks instead of being recorded, or
/// re-entering a lock this thread already holds.
///
/// It also tells a fatal signal's handler that its thread may hold recorder locks: the handler
/// then defers the signal ([`defer_signal`]) to the moment the thread leaves, instead of waiting
/// for a lock its own thread holds, or for a writer that waits for that lock.
pub struct Guard(());

impl Guard {
    /// Enters the recorder, or returns `None` if this thread is already inside it.
    #[inline]
    pub fn enter() -> Option<Guard> {
        let g = tls();
        if g.inside.load(Ordering::Relaxed) {
            None
        } else {
            enter_on(g);
            Some(Guard(()))
        }
    }

    /// Marks this thread as inside the recorder for good (the writer thread).
    pub fn enter_forever() {
        enter_on(tls());
    }

    /// Ends [`Self::enter_forever`] (the `fork` handlers hold the guard across `fork`).
    pub fn leave_forever() {
        leave();
    }

    #[inline]
    pub fn is_held() -> bool {
        tls().inside.load(Ordering::Relaxed)
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        leave();
    }
}

/// Marks the thread inside, and holds its sampling countdowns (`Tls::held`): a countdown of 0
/// sends every hook's fast path to the full hook, which sees the guard and refuses to record.
/// A signal handler's `malloc` that lands before the countdowns are zeroed takes the fast path
/// to the real allocator, as it would outside: the recorder holds no lock yet.
#[inline]
fn enter_on(g: &Tls) {
    g.inside.store(true, Ordering::Relaxed);
    compiler_fence(Ordering::SeqCst);
    g.held[0].set(g.left.replace(0));
    g.held[1].set(g.left_all.replace(0));
    compiler_fence(Ordering::SeqCst);
}

#[inline]
fn leave() {
    let g = tls();
    // The countdowns back first: a signal handler's `malloc` that lands between these stores
    // and the guard's release takes the fast path, which is what it would do a moment later.
    compiler_fence(Ordering::SeqCst);
    g.left.set(g.held[0].get());
    g.left_all.set(g.held[1].get());
    compiler_fence(Ordering::SeqCst);
    // Cleared before the check: a signal that lands after the store is handled at once by its
    // handler, one that landed before it is seen here.
    g.inside.store(false, Ordering::Relaxed);
    compiler_fence(Ordering::SeqCst);
    if g.deferred.load(Ordering::Relaxed) != 0 {
        run_deferred(g);
    }
}

#[cold]
fn run_deferred(g: &Tls) {
    let sig = g.deferred.swap(0, Ordering::Relaxed);
    let f = RESUME.load(Ordering::Acquire);
    if sig != 0 && f != 0 {
        // SAFETY: stored by defer_signal from a function of this type.
        let f = unsafe { std::mem::transmute::<usize, extern "C" fn(i32)>(f) };
        f(sig);
    }
}

/// From a fatal signal's handler: if its thread is inside the recorder (where it may hold a
/// recorder lock, or be between two halves of an update), keeps `sig` for later and returns
/// true: `resume(sig)` then runs as the thread leaves the recorder, which it does within one
/// event. Returns false when the thread is outside: the handler can go ahead. Async-signal-safe.
pub fn defer_signal(sig: i32, resume: extern "C" fn(i32)) -> bool {
    let g = tls();
    if !g.inside.load(Ordering::Relaxed) {
        return false;
    }
    RESUME.store(resume as usize, Ordering::Release);
    if g.deferred.load(Ordering::Relaxed) == 0 {
        g.deferred.store(sig, Ordering::Relaxed);
    }
    true
}

/// Forgets a deferred signal: in a forked child, it was the parent's.
pub(crate) fn forget_deferred_signal() {
    tls().deferred.store(0, Ordering::Relaxed);
}

/// A test-and-set lock that yields while it waits. The recorder holds its locks for short spans
/// (or, for the dump writer, on a background thread), and it needs one thing the standard locks do
/// not give: a `fork` handler must take every lock in the parent before `fork` and release it in
/// both processes afterwards, without a guard object living across the call.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

unsafe impl<T: Send> Sync for SpinLock<T> {}
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub const fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    #[inline]
    pub fn lock(&self) -> SpinGuard<'_, T> {
        self.raw_lock();
        SpinGuard { lock: self }
    }

    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            Some(SpinGuard { lock: self })
        } else {
            None
        }
    }

    /// Takes the lock with no guard: for the `fork` handlers, paired with [`Self::raw_unlock`].
    #[inline]
    pub fn raw_lock(&self) {
        if self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
    }

    /// The wait, out of line: the uncontended path (the live set's, on every event) stays a
    /// compare-and-swap without the registers and the loop of this one.
    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
    }

    /// # Safety
    /// The caller took the lock with [`Self::raw_lock`] (in this process or, after `fork`, in the
    /// parent) and holds no guard for it.
    pub unsafe fn raw_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves the lock is held, exclusively.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

/// How many [`ThreadSum`]s a program may have (one per front end that counts memory).
pub const MAX_SUMS: usize = 4;
/// Per-thread slots of a [`ThreadSum`]; threads beyond them share one atomic.
pub const SUM_SLOTS: usize = 256;

/// One thread's part of a [`ThreadSum`], alone on its cache line.
#[repr(align(64))]
struct SumSlot {
    value: std::sync::atomic::AtomicI64,
    taken: AtomicBool,
}

/// A sum that every thread adds to without an atomic read-modify-write: each thread owns a slot
/// and updates it with a plain load and store, and a reader adds the slots up. An exact
/// `used_memory` counter with one `lock xadd` per call tripled the cost of a malloc+free pair;
/// this one costs a thread-local load and a store. The total is exact whenever no thread is
/// between its update and the read (as with one atomic: no reader sees "every moment" of a
/// running program at once); a thread's slot is folded into the shared part when the thread ends.
///
/// Not for the `LD_PRELOAD` hooks: claiming a slot registers a thread-exit destructor, which
/// allocates through `malloc`.
pub struct ThreadSum {
    id: usize,
    slots: [SumSlot; SUM_SLOTS],
    shared: std::sync::atomic::AtomicI64,
}

static SUMS: [std::sync::atomic::AtomicPtr<ThreadSum>; MAX_SUMS] =
    [const { std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()) }; MAX_SUMS];

thread_local! {
    // Const, no destructor: readable at any time, even during thread exit.
    static HELD: [Cell<u16>; MAX_SUMS] = const { [const { Cell::new(0) }; MAX_SUMS] };
    // Its destructor gives this thread's slots back when the thread ends.
    static RELEASER: Releaser = const { Releaser };
}

struct Releaser;

impl Drop for Releaser {
    fn drop(&mut self) {
        for (id, sum) in SUMS.iter().enumerate() {
            let held = HELD.with(|h| h[id].replace(0));
            let sum = sum.load(Ordering::Acquire);
            if held == 0 || sum.is_null() {
                continue;
            }
            // SAFETY: sums are statics, registered on first use.
            let sum = unsafe { &*sum };
            let slot = &sum.slots[held as usize - 1];
            sum.shared
                .fetch_add(slot.value.swap(0, Ordering::AcqRel), Ordering::AcqRel);
            slot.taken.store(false, Ordering::Release);
        }
    }
}

impl ThreadSum {
    /// `id` (below [`MAX_SUMS`]) must be unique among the program's sums.
    pub const fn new(id: usize) -> ThreadSum {
        ThreadSum {
            id,
            slots: [const {
                SumSlot {
                    value: std::sync::atomic::AtomicI64::new(0),
                    taken: AtomicBool::new(false),
                }
            }; SUM_SLOTS],
            shared: std::sync::atomic::AtomicI64::new(0),
        }
    }

    #[inline]
    pub fn add(&'static self, n: i64) {
        let held = HELD.with(|h| h[self.id].get());
        if held != 0 {
            let v = &self.slots[held as usize - 1].value;
            v.store(v.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        } else {
            self.add_slow(n);
        }
    }

    #[cold]
    fn add_slow(&'static self, n: i64) {
        SUMS[self.id].store(self as *const _ as *mut _, Ordering::Release);
        // Only with a working thread-exit destructor may the thread keep a slot.
        let registered = RELEASER.try_with(|_| ()).is_ok();
        let free = registered
            .then(|| {
                self.slots.iter().position(|s| {
                    !s.taken.load(Ordering::Relaxed)
                        && s.taken
                            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                            .is_ok()
                })
            })
            .flatten();
        match free {
            Some(i) => {
                HELD.with(|h| h[self.id].set(i as u16 + 1));
                let v = &self.slots[i].value;
                v.store(v.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
            }
            None => {
                self.shared.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// The sum over all threads.
    pub fn total(&self) -> i64 {
        self.slots
            .iter()
            .map(|s| s.value.load(Ordering::Relaxed))
            .fold(self.shared.load(Ordering::Relaxed), i64::wrapping_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SUM: ThreadSum = ThreadSum::new(3);

    #[test]
    fn thread_sum_is_exact_across_threads_that_end() {
        let before = SUM.total();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..10_000i64 {
                        SUM.add(i % 7 + t);
                        SUM.add(-(i % 7));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Each thread left t * 10_000, and every slot was given back.
        assert_eq!(
            SUM.total() - before,
            (0..8).map(|t| t * 10_000).sum::<i64>()
        );
        assert!(SUM.slots.iter().all(|s| !s.taken.load(Ordering::Relaxed)));
    }
}

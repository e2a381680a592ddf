//! The two synchronisation primitives of the recorder: the per-thread re-entrancy guard and a
//! small lock that a `fork` handler can take and release by hand.

use std::cell::{Cell, UnsafeCell};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    // IMPORTANT: const-initialised and without a destructor. A lazily initialised thread-local, or
    // one with a destructor, registers itself through `__cxa_thread_atexit_impl`, which allocates
    // through the very `malloc` we are hooking, and aborts the process when touched after its
    // destruction (glibc frees its own TLS bookkeeping through the hooked `free` at thread exit).
    static IN_RECORDER: Cell<bool> = const { Cell::new(false) };
}

/// Set while a thread runs recorder code. Everything the recorder does that may allocate (maps,
/// stack store, unwinder caches, compression, libc calls) happens under it, so that an allocation
/// made *by the recorder* passes straight through the hooks instead of being recorded, or
/// re-entering a lock this thread already holds.
pub struct Guard(());

impl Guard {
    /// Enters the recorder, or returns `None` if this thread is already inside it.
    #[inline]
    pub fn enter() -> Option<Guard> {
        IN_RECORDER.with(|g| {
            if g.get() {
                None
            } else {
                g.set(true);
                Some(Guard(()))
            }
        })
    }

    /// Marks this thread as inside the recorder for good (the writer thread).
    pub fn enter_forever() {
        IN_RECORDER.with(|g| g.set(true));
    }

    /// Ends [`Self::enter_forever`] (the `fork` handlers hold the guard across `fork`).
    pub fn leave_forever() {
        IN_RECORDER.with(|g| g.set(false));
    }

    #[inline]
    pub fn is_held() -> bool {
        IN_RECORDER.with(|g| g.get())
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        IN_RECORDER.with(|g| g.set(false));
    }
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
    pub fn raw_lock(&self) {
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
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

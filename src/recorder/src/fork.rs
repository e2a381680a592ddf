//! `fork`: `pthread_atfork` handlers that hold every recorder lock across the fork, so that the
//! child, which inherits only the forking thread, never finds one locked forever; the child then
//! starts a dump of its own that begins with the blocks it inherited.

use std::ptr;
use std::sync::atomic::Ordering;

use crate::modules::MODULES;
use crate::stacks::PENDING_STACKS;
use crate::state::{CORE, DROPPED, READY, STATE};
use crate::sync::Guard;
use crate::threads::{all_threads, gettid, CURRENT};
use crate::{aggregate, output, reach};

/// Takes every recorder lock so that no other thread holds one at the fork: a child inherits only
/// the forking thread, and a lock held by any other thread would stay locked in it forever.
pub(crate) extern "C" fn fork_prepare() {
    Guard::enter_forever(); // released in fork_parent / fork_child
    crate::sample::before_fork();
    let Some(core) = CORE.get() else { return };
    // Every signal blocked while the locks are held (restored in fork_parent / fork_child): the
    // dump descriptor's lock must never be held by a thread a signal handler can interrupt.
    // One fork at a time gets here (OUTPUT is held), so one saved mask is enough.
    // SAFETY: plain signal-mask calls.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, SAVED_MASK.0.get());
    }
    if STATE.load(Ordering::Acquire) == READY {
        reach::before_fork(core);
    }
    output::OUTPUT.raw_lock();
    crate::dumpfd::raw_lock();
    MODULES.raw_lock();
    for shard in core.stacks.shards() {
        // SAFETY: paired with the unlock in fork_parent / fork_child.
        unsafe { lock_api::RawRwLock::lock_exclusive(shard.raw()) };
    }
    PENDING_STACKS.raw_lock();
    core.live.lock_all();
    reach::regions::REGIONS.raw_lock();
    // Last: taking the locks above may allocate, from this very heap.
    crate::heap::HEAP.raw_lock();
}

fn unlock_after_fork() {
    let Some(core) = CORE.get() else { return };
    // SAFETY: fork_prepare took all of these in this thread (or, in the child, its parent did).
    unsafe {
        crate::heap::HEAP.raw_unlock();
        reach::regions::REGIONS.raw_unlock();
        core.live.unlock_all();
        PENDING_STACKS.raw_unlock();
        for shard in core.stacks.shards() {
            lock_api::RawRwLock::unlock_exclusive(shard.raw());
        }
        MODULES.raw_unlock();
        crate::dumpfd::raw_unlock();
        output::OUTPUT.raw_unlock();
        libc::pthread_sigmask(libc::SIG_SETMASK, SAVED_MASK.0.get(), std::ptr::null_mut());
    }
}

struct SavedMask(std::cell::UnsafeCell<libc::sigset_t>);
// SAFETY: written in fork_prepare and read in fork_parent / fork_child, with OUTPUT held between.
unsafe impl Sync for SavedMask {}
// SAFETY: an all-zero sigset_t is an empty set.
static SAVED_MASK: SavedMask = SavedMask(std::cell::UnsafeCell::new(unsafe { std::mem::zeroed() }));

pub(crate) extern "C" fn fork_parent() {
    unlock_after_fork();
    Guard::leave_forever();
}

pub(crate) extern "C" fn fork_child() {
    // A fatal signal deferred during the fork was the parent's (pending signals are not
    // inherited).
    crate::sync::forget_deferred_signal();
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
                // SAFETY: the forking thread's own state (the only thread in the child).
                unsafe { (*s.sampler.get()).reseed_in_child() };
                // The hooks' countdown (TLS, copied from the parent) starts afresh too.
                // The guard is held across the fork: it holds the countdowns too.
                let tls = crate::tls::tls();
                tls.left.set(0);
                tls.left_all.set(0);
                tls.held[0].set(0);
                tls.held[1].set(0);
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

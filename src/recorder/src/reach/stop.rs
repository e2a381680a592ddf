//! Stopping the other threads for the check, and letting them go: a real-time signal whose
//! handler saves the thread's registers in a static slot and parks it on a futex until the check
//! ends.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::sys::{gettid, thread_pointer};
use crate::clock::now_mono;
use crate::sync::Guard;
use crate::threads::CURRENT;

/// How long the other threads have to stop before their stacks are scanned as they are.
const STOP_WAIT_NS: u64 = 250_000_000;
/// A stopped thread gives up waiting after this long, should the check never end.
const PARK_LIMIT_NS: u64 = 30_000_000_000;

/// The signal that stops a thread for the check: near the top of the real-time range, away from
/// the low ones that programs (and glibc's own 32 and 33) use.
pub fn stop_signal() -> c_int {
    libc::SIGRTMAX() - 1
}

const ASKED: u32 = 0;
pub(super) const PARKED: u32 = 1;
/// The thread was inside the recorder when asked: it must be asked again.
const BUSY: u32 = 2;
const LEFT: u32 = 3;

/// Threads stopped at most in one check; those beyond are scanned as if they did not answer.
const MAX_STOPPED: usize = 1024;

/// One thread asked to stop, and what its handler saved.
pub(super) struct Slot {
    pub(super) tid: AtomicU32,
    pub(super) state: AtomicU32,
    pub(super) sp: AtomicU64,
    /// Its thread pointer (`%fs` base).
    pub(super) tp: AtomicU64,
    /// The top of its stack, as the recorder learnt it when the thread first allocated (0: not
    /// known).
    pub(super) top: AtomicU64,
    /// General-purpose registers but `rsp` and `rip` (ucontext order).
    pub(super) regs: [AtomicU64; 15],
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            tid: AtomicU32::new(0),
            state: AtomicU32::new(ASKED),
            sp: AtomicU64::new(0),
            tp: AtomicU64::new(0),
            top: AtomicU64::new(0),
            regs: [const { AtomicU64::new(0) }; 15],
        }
    }
}

/// The threads asked to stop by the last check (`SLOTS[..NSLOTS]`), read by the handler. Static
/// and never freed: a signal of an old check may still be delivered while a handler reads them.
static SLOTS: [Slot; MAX_STOPPED] = [const { Slot::new() }; MAX_STOPPED];
static NSLOTS: AtomicUsize = AtomicUsize::new(0);
/// 1 while threads are to stay stopped: the futex word they wait on.
static HOLD: AtomicU32 = AtomicU32::new(0);

/// The action our handler replaced, called for the signals that are not ours.
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());
static PREVIOUS_STORE: crate::sync::SpinLock<Option<libc::sigaction>> =
    crate::sync::SpinLock::new(None);

extern "C" fn on_stop(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: only async-signal-safe work: atomics, gettid, futex, clock_gettime.
    unsafe {
        let errno = *libc::__errno_location();
        if !park(ctx) {
            chain(sig, info, ctx);
        }
        *libc::__errno_location() = errno;
    }
}

/// Saves this thread's registers and waits for the end of the check; false when the signal is
/// not a check's (this thread was not asked).
unsafe fn park(ctx: *mut c_void) -> bool {
    let n = NSLOTS.load(Ordering::Acquire).min(MAX_STOPPED);
    let me = gettid();
    let Some(slot) = SLOTS[..n]
        .iter()
        .find(|s| s.tid.load(Ordering::Acquire) == me)
    else {
        return false;
    };
    if HOLD.load(Ordering::Acquire) == 0 {
        return true; // asked by a check that has ended
    }
    if Guard::is_held() {
        // Inside the recorder, perhaps holding a lock of the live set: ask again later.
        slot.state.store(BUSY, Ordering::Release);
        return true;
    }
    let uc = ctx as *const libc::ucontext_t;
    if !uc.is_null() {
        let g = &(*uc).uc_mcontext.gregs;
        for (i, r) in slot.regs.iter().enumerate() {
            r.store(g[i] as u64, Ordering::Relaxed);
        }
        slot.sp
            .store(g[libc::REG_RSP as usize] as u64, Ordering::Relaxed);
    }
    slot.tp.store(thread_pointer(), Ordering::Relaxed);
    let state = CURRENT.with(|c| c.get());
    let top = state.as_ref().map_or(0, |s| s.stack_top());
    slot.top.store(top, Ordering::Relaxed);
    slot.state.store(PARKED, Ordering::Release);
    let start = now_mono();
    while HOLD.load(Ordering::Acquire) == 1 && now_mono() - start < PARK_LIMIT_NS {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        libc::syscall(
            libc::SYS_futex,
            HOLD.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            1,
            &ts as *const libc::timespec,
        );
    }
    slot.state.store(LEFT, Ordering::Release);
    true
}

/// Hands a signal that is not the check's to the program's own handler, if it had one.
unsafe fn chain(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    let prev = PREVIOUS.load(Ordering::Acquire);
    let Some(prev) = prev.as_ref() else { return };
    let h = prev.sa_sigaction;
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        return;
    }
    if prev.sa_flags & libc::SA_SIGINFO != 0 {
        let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) = std::mem::transmute(h);
        f(sig, info, ctx);
    } else {
        let f: extern "C" fn(c_int) = std::mem::transmute(h);
        f(sig);
    }
}

/// Installs the handler (it stays: a signal of ours still pending after the check must not
/// meet the default action, which would end the process).
pub(super) fn install_handler() -> bool {
    let sig = stop_signal();
    // SAFETY: sigaction with a plain extern "C" handler.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
            return false;
        }
        let ours = on_stop as extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) as usize;
        if old.sa_sigaction == ours {
            return true;
        }
        {
            let mut store = PREVIOUS_STORE.lock();
            *store = Some(old);
            if let Some(p) = store.as_mut() {
                PREVIOUS.store(p as *mut libc::sigaction, Ordering::Release);
            }
        }
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = ours;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigfillset(&mut act.sa_mask);
        libc::sigaction(sig, &act, std::ptr::null_mut()) == 0
    }
}

fn sleep_ns(ns: i64) {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: ns,
    };
    // SAFETY: plain syscall.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// Asks the threads `tids` to stop (at most [`MAX_STOPPED`]; the others are returned) and
/// waits for them ([`STOP_WAIT_NS`] at most).
pub(super) fn stop_threads(tids: &[u32]) -> (&'static [Slot], &[u32]) {
    let (asked, left) = tids.split_at(tids.len().min(MAX_STOPPED));
    NSLOTS.store(0, Ordering::Release);
    for (s, &tid) in SLOTS.iter().zip(asked) {
        s.tid.store(tid, Ordering::Relaxed);
        s.state.store(ASKED, Ordering::Relaxed);
        s.top.store(0, Ordering::Relaxed);
    }
    let slots = &SLOTS[..asked.len()];
    NSLOTS.store(slots.len(), Ordering::Release);
    HOLD.store(1, Ordering::Release);
    let sig = stop_signal();
    // SAFETY: no preconditions.
    let pid = unsafe { libc::getpid() };
    let send = |tid: u32| {
        // SAFETY: a signal to a thread of our own process.
        unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
    };
    for s in slots {
        send(s.tid.load(Ordering::Relaxed));
    }
    let deadline = now_mono() + STOP_WAIT_NS;
    loop {
        let mut waiting = false;
        for s in slots {
            match s.state.load(Ordering::Acquire) {
                ASKED => waiting = true,
                BUSY => {
                    waiting = true;
                    s.state.store(ASKED, Ordering::Release);
                    send(s.tid.load(Ordering::Relaxed));
                }
                _ => {}
            }
        }
        if !waiting || now_mono() > deadline {
            return (slots, left);
        }
        sleep_ns(100_000);
    }
}

/// Lets the stopped threads go, and waits (a second at most) until they have left the handler,
/// so that the next check finds them running.
pub(super) fn resume_threads(slots: &[Slot]) {
    HOLD.store(0, Ordering::Release);
    // SAFETY: futex wake on a static word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            HOLD.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
    let deadline = now_mono() + 1_000_000_000;
    while slots
        .iter()
        .any(|s| s.state.load(Ordering::Acquire) == PARKED)
        && now_mono() < deadline
    {
        sleep_ns(100_000);
    }
}

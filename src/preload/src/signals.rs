//! Fatal signals: a program killed by Ctrl-C, SIGTERM or a crash still leaves a complete dump.
//!
//! At start-up, for each signal whose action would end the process and that the program has not
//! claimed (its action is still the default), a handler is installed that has the recorder write
//! everything up to now and the `End` record, then lets the signal take its default action (the
//! exit status is the one the program would have had). The handler takes no lock and never waits
//! for its own thread: the writer thread does the flush, and a signal that lands while its
//! thread is inside the recorder (where it may hold the locks the flush needs) is deferred until
//! the thread leaves it, within one event. `sigaction` and `signal` are interposed
//! so that the program never notices: asking for the action of such a signal answers "default",
//! and installing its own handler simply replaces ours. SIGKILL and SIGSTOP cannot be caught: a
//! program killed by SIGKILL leaves its dump as of the last flush (a tenth of a second).
//!
//! **The snapshot signal** (`ZMTRACE_SNAPSHOT_SIGNAL`, a number; `zmtrace run` sets SIGUSR2 or
//! its `--snapshot-signal`): while the program leaves it at its default action, our handler
//! notes the moment and wakes the writer thread, which writes the snapshot ([`rec::request_snapshot`]:
//! nothing is done in the handler itself). It is installed with `SA_RESTART`, so a `read` or
//! `write` of the program's it interrupts goes on; calls that never restart (`nanosleep`,
//! `poll`, `epoll_wait`...) return `EINTR` as they would for any handled signal.
//! If the program installs its own action for it, the program keeps the signal: its action
//! replaces ours (as for the fatal ones) and the recorder says once on stderr that snapshots on
//! that signal are off. Chaining (ours, then theirs) is not done: a program that claims SIGUSR2
//! uses it for its own purpose (reload, log rotation), and a snapshot at each of those would be a
//! side effect it did not ask for, while emulating its `sa_flags` and mask in our handler would
//! change how its handler runs.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use zmtrace_recorder as rec;

/// Signals whose default action ends the process, and which are worth a final flush.
/// (SIGXFSZ is left alone: the recorder's own write may be what raises it.)
const FATAL: [c_int; 11] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGPIPE,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGABRT,
    libc::SIGXCPU,
];

const NSIG: usize = 65;
/// The snapshot signal (0: none).
static SNAPSHOT_SIGNAL: AtomicUsize = AtomicUsize::new(0);
static SNAPSHOT_WARNED: AtomicBool = AtomicBool::new(false);
/// Whether our handler is the one installed for a signal.
static OURS: [AtomicBool; NSIG] = [const { AtomicBool::new(false) }; NSIG];
static REAL_SIGACTION: AtomicUsize = AtomicUsize::new(0);

type SigactionFn =
    unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;

unsafe fn real_sigaction() -> SigactionFn {
    let mut f = REAL_SIGACTION.load(Ordering::Acquire);
    if f == 0 {
        f = crate::real::sym::<usize>(c"sigaction");
        REAL_SIGACTION.store(f, Ordering::Release);
    }
    std::mem::transmute::<usize, SigactionFn>(f)
}

fn ours(sig: c_int) -> bool {
    usize::try_from(sig)
        .ok()
        .and_then(|s| OURS.get(s))
        .is_some_and(|o| o.load(Ordering::Acquire))
}

fn set_ours(sig: c_int, v: bool) {
    if let Some(o) = usize::try_from(sig).ok().and_then(|s| OURS.get(s)) {
        o.store(v, Ordering::Release);
    }
}

/// The default action, as the program would have seen it.
fn default_action() -> libc::sigaction {
    // SAFETY: an all-zero sigaction is SIG_DFL with no flags and an empty mask.
    unsafe { std::mem::zeroed() }
}

/// Installs the handler for every fatal signal still at its default action.
pub unsafe fn install() {
    let real = real_sigaction();
    for sig in FATAL {
        let mut old: libc::sigaction = std::mem::zeroed();
        if real(sig, std::ptr::null(), &mut old) != 0 || old.sa_sigaction != libc::SIG_DFL {
            continue;
        }
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction =
            on_fatal as extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigfillset(&mut act.sa_mask);
        if real(sig, &act, std::ptr::null_mut()) == 0 {
            set_ours(sig, true);
        }
    }
    install_snapshot(real);
}

/// The snapshot signal's handler, if `ZMTRACE_SNAPSHOT_SIGNAL` names a signal still at its
/// default action. (Read with getenv: the constructor runs before any thread of the program.)
unsafe fn install_snapshot(real: SigactionFn) {
    let v = libc::getenv(c"ZMTRACE_SNAPSHOT_SIGNAL".as_ptr());
    if v.is_null() {
        return;
    }
    let Some(sig) = std::ffi::CStr::from_ptr(v)
        .to_str()
        .ok()
        .and_then(|s| s.parse::<c_int>().ok())
        .filter(|&s| s > 0 && (s as usize) < NSIG && !FATAL.contains(&s))
    else {
        return;
    };
    if sig == libc::SIGKILL || sig == libc::SIGSTOP {
        return;
    }
    let mut old: libc::sigaction = std::mem::zeroed();
    if real(sig, std::ptr::null(), &mut old) != 0 || old.sa_sigaction != libc::SIG_DFL {
        return;
    }
    let mut act: libc::sigaction = std::mem::zeroed();
    act.sa_sigaction = on_snapshot as extern "C" fn(c_int) as usize;
    act.sa_flags = libc::SA_RESTART;
    libc::sigemptyset(&mut act.sa_mask);
    if real(sig, &act, std::ptr::null_mut()) == 0 {
        SNAPSHOT_SIGNAL.store(sig as usize, Ordering::Release);
        set_ours(sig, true);
    }
}

extern "C" fn on_snapshot(_sig: c_int) {
    // Atomics, the clock and a futex wake: the writer thread does the work.
    rec::request_snapshot();
}

/// The program installs an action of its own for the snapshot signal: it keeps the signal.
/// Said once, with a plain write(2) (async-signal-safe, no allocation: this may run anywhere).
fn snapshot_signal_taken(sig: c_int, act: &libc::sigaction) {
    if SNAPSHOT_SIGNAL.load(Ordering::Acquire) != sig as usize
        || act.sa_sigaction == libc::SIG_DFL
        || SNAPSHOT_WARNED.swap(true, Ordering::AcqRel)
    {
        return;
    }
    let msg: &[u8] = b"zmtrace: the program handles the snapshot signal itself: it keeps it, and \
                      snapshots on that signal are off (zmtrace run --snapshot-signal picks another)\n";
    // SAFETY: write(2) of a static buffer.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

extern "C" fn on_fatal(sig: c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // A fault raised by an instruction (a bad access) happens again when the handler returns,
    // now with the default action; anything sent (kill, raise, the terminal) is sent again.
    // SAFETY: the kernel passes a valid siginfo (or none).
    let sent = info.is_null() || unsafe { (*info).si_code } <= 0;
    let synchronous = !sent
        && matches!(
            sig,
            libc::SIGSEGV | libc::SIGBUS | libc::SIGFPE | libc::SIGILL
        );
    if synchronous {
        rec::finish_on_signal(sig);
        // SAFETY: async-signal-safe calls: back to the default action; returning faults again.
        unsafe {
            set_ours(sig, false);
            real_sigaction()(sig, &default_action(), std::ptr::null_mut());
        }
        return;
    }
    // Inside the recorder this thread may hold the very locks the final flush needs: the signal
    // is taken up again as the thread leaves the recorder, within one event.
    if rec::defer_signal(sig, finish_and_raise) {
        return;
    }
    finish_and_raise(sig);
}

/// Writes the dump's end, then lets `sig` do what it would have done untraced. Runs in our
/// handler, or (deferred) as the thread leaves the recorder. Async-signal-safe.
extern "C" fn finish_and_raise(sig: c_int) {
    // SAFETY: async-signal-safe calls only.
    unsafe {
        if ours(sig) {
            rec::finish_on_signal(sig);
            set_ours(sig, false);
            real_sigaction()(sig, &default_action(), std::ptr::null_mut());
        }
        // (Deferred, and the program has installed its own handler since: it gets the signal.)
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
}

/// `sigaction`, with our handlers invisible: they read as the default action, and the
/// program's own handler replaces them.
#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    oldact: *mut libc::sigaction,
) -> c_int {
    let real = real_sigaction();
    if !ours(sig) {
        return real(sig, act, oldact);
    }
    let rc = real(sig, act, std::ptr::null_mut());
    if rc == 0 {
        if !act.is_null() {
            set_ours(sig, false);
            snapshot_signal_taken(sig, &*act);
        }
        if !oldact.is_null() {
            *oldact = default_action();
        }
    }
    rc
}

/// `signal` with glibc's (BSD) semantics, through our `sigaction` (glibc's `signal` calls its
/// internal one, which would bypass it).
#[no_mangle]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    let mut act: libc::sigaction = std::mem::zeroed();
    act.sa_sigaction = handler;
    act.sa_flags = libc::SA_RESTART;
    libc::sigemptyset(&mut act.sa_mask);
    if libc::sigaddset(&mut act.sa_mask, sig) != 0 {
        return libc::SIG_ERR;
    }
    let mut old: libc::sigaction = std::mem::zeroed();
    if sigaction(sig, &act, &mut old) != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

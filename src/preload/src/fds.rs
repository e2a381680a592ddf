//! The program's descriptor calls that could take or lose the dump's descriptor: `close`, `dup`,
//! `dup2`, `dup3`, `close_range`, `closefrom`. Each passes straight through (one load and a
//! compare) unless it names the dump's number; then the program sees what it would see untraced,
//! where that number is not open: `close` and `dup` of it fail with `EBADF`, `dup2(x, it)` gives
//! the program the number (the dump moves first), and a range close leaves it open. See the
//! recorder's `dumpfd` for the rest (the number is far above the program's; raw system calls are
//! caught by the check before each write).

use std::ffi::{c_int, c_uint};
use std::sync::atomic::{AtomicUsize, Ordering};

use zmtrace_recorder::dumpfd;

/// `dlsym(RTLD_NEXT, name)` once, then from `slot`.
unsafe fn next_fn<F: Copy>(name: &std::ffi::CStr, slot: &AtomicUsize) -> F {
    let mut p = slot.load(Ordering::Acquire);
    if p == 0 {
        p = crate::real::sym::<usize>(name);
        slot.store(p, Ordering::Release);
    }
    std::mem::transmute_copy(&p)
}

fn ebadf() -> c_int {
    // SAFETY: errno is thread-local.
    unsafe { *libc::__errno_location() = libc::EBADF };
    -1
}

/// `close_range` flags (linux/close_range.h).
const CLOSE_RANGE_CLOEXEC: c_uint = 1 << 2;

static CLOSE: AtomicUsize = AtomicUsize::new(0);
static DUP: AtomicUsize = AtomicUsize::new(0);
static DUP2: AtomicUsize = AtomicUsize::new(0);
static DUP3: AtomicUsize = AtomicUsize::new(0);

unsafe fn real_close(fd: c_int) -> c_int {
    next_fn::<unsafe extern "C" fn(c_int) -> c_int>(c"close", &CLOSE)(fd)
}

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    dumpfd::with_ours(fd, |ours| if ours { ebadf() } else { real_close(fd) })
}

#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    let f = next_fn::<unsafe extern "C" fn(c_int) -> c_int>(c"dup", &DUP);
    dumpfd::with_ours(fd, |ours| if ours { ebadf() } else { f(fd) })
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    let f = next_fn::<unsafe extern "C" fn(c_int, c_int) -> c_int>(c"dup2", &DUP2);
    if dumpfd::is_ours(old) {
        return dumpfd::with_ours(old, |ours| if ours { ebadf() } else { f(old, new) });
    }
    dumpfd::give_up(new, || f(old, new))
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    let f = next_fn::<unsafe extern "C" fn(c_int, c_int, c_int) -> c_int>(c"dup3", &DUP3);
    if dumpfd::is_ours(old) {
        return dumpfd::with_ours(old, |ours| if ours { ebadf() } else { f(old, new, flags) });
    }
    dumpfd::give_up(new, || f(old, new, flags))
}

/// The `close_range` system call (not glibc's wrapper: older glibcs have none, and `dlsym` of a
/// missing symbol must not stop the program).
unsafe fn sys_close_range(first: c_uint, last: c_uint, flags: c_uint) -> c_int {
    libc::syscall(libc::SYS_close_range, first, last, flags) as c_int
}

/// Closes `first..=last` but `ours`, in up to two calls.
unsafe fn close_range_around(first: c_uint, last: c_uint, flags: c_uint, ours: c_uint) -> c_int {
    let mut rc = 0;
    if ours > first && sys_close_range(first, ours - 1, flags) != 0 {
        rc = -1;
    }
    if ours < last && sys_close_range(ours + 1, last, flags) != 0 {
        rc = -1;
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let flags = flags as c_uint;
    // CLOSE_RANGE_CLOEXEC only marks the range close-on-exec, as the dump's already is.
    if first > last || flags & CLOSE_RANGE_CLOEXEC != 0 {
        return sys_close_range(first, last, flags);
    }
    dumpfd::skip_in_range(first, last, |ours| match ours {
        Some(ours) => close_range_around(first, last, flags, ours),
        None => sys_close_range(first, last, flags),
    })
}

#[no_mangle]
pub unsafe extern "C" fn closefrom(low: c_int) {
    let low = low.max(0) as c_uint;
    let done = dumpfd::skip_in_range(low, c_uint::MAX, |ours| match ours {
        Some(ours) => close_range_around(low, c_uint::MAX, 0, ours) == 0,
        None => sys_close_range(low, c_uint::MAX, 0) == 0,
    });
    if !done {
        // No close_range (a kernel before 5.9): one by one, up to the limit.
        let mut r: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur.min(1 << 20) as c_int
        } else {
            1024
        };
        for fd in low as c_int..max {
            close(fd);
        }
    }
}

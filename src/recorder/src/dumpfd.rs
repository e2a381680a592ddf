//! The dump's file descriptor. The program's descriptors are the program's: the dump must never
//! take a number the program counts on (a daemon that closes 0..2 and reopens `/dev/null` expects
//! 0, 1 and 2 back), and the program must never take ours and get zstd records written into its
//! own files (a `dup2(log, 3)` over the dump's descriptor did exactly that).
//!
//! - The dump is opened when recording starts, and its descriptor is moved at once to the top of
//!   the table (`F_DUPFD_CLOEXEC` just under `RLIMIT_NOFILE`, at most [`MAX_FD`]), far above the
//!   numbers `open` hands out. Close-on-exec: an exec'ed image opens its own dump.
//! - The front end's `close`, `dup`, `dup2`, `dup3`, `close_range` and `closefrom` ask [`is_ours`]
//!   first. Closing or duplicating our number fails with `EBADF`, as it would untraced (the
//!   program never opened it); `dup2(x, ours)` gives the program that number and moves the dump
//!   first ([`give_up`]); a range close skips it ([`skip_in_range`]).
//! - Every write checks first that the number still names the file opened (device and inode): a
//!   raw `syscall(SYS_close)` or `SYS_dup2` cannot be interposed. When it does not, the file is
//!   reopened by its absolute path (`O_APPEND|O_NOFOLLOW`, and only if it is still the same file).
//!   Nothing is ever written to a descriptor that is not the dump's.
//! - Each write is preceded by `fallocate(FALLOC_FL_KEEP_SIZE)` of its length plus [`RESERVE`]:
//!   when that fails for lack of space the write is not made, and the reserve that the previous
//!   call allocated still takes the `End` record saying why recording stopped.
//!
//! Whatever uses or moves the number runs under [`LOCK`] with every signal blocked: no thread is
//! ever interrupted while it holds the lock, so a signal handler that closes a descriptor cannot
//! wait for its own thread, and the hooks never take it unless the number they are given is ours.
//! The dump's own descriptors are closed with the raw syscall: `close` is our hook.

use std::io::Error;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::sync::SpinLock;

/// The dump's descriptor number, or -1. Read without the lock by the hooks' first check.
static FD: AtomicI32 = AtomicI32::new(-1);
/// Set when the program took the dump's number and no other was free to move it to.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The highest number the dump takes: `RLIMIT_NOFILE` is often a million, and a descriptor up
/// there would make the kernel's table (copied by every `fork`) 8 MiB.
pub const MAX_FD: i32 = 16384;

/// Space kept allocated past the end of the dump, for the `End` record after a full disk.
const RESERVE: i64 = 16 * 1024;

struct File {
    dev: u64,
    ino: u64,
    /// Absolute path, NUL-terminated: to reopen the dump whatever the program's directory.
    path: Vec<u8>,
    /// The file's size (we append, alone), where the next reservation starts.
    size: i64,
    /// `fallocate` works on this file system.
    reserve: bool,
}

static LOCK: SpinLock<File> = SpinLock::new(File {
    dev: 0,
    ino: 0,
    path: Vec::new(),
    size: 0,
    reserve: true,
});

/// Why a write did not happen.
pub(crate) enum WriteError {
    /// No space (or quota) left: nothing of the buffer was written, the reserve is intact.
    NoSpace(Error),
    /// Any other failure (the buffer may be partly written).
    Failed(Error),
}

/// Every signal blocked for as long as it lives (restored on drop).
struct NoSignals(libc::sigset_t);

impl NoSignals {
    fn new() -> NoSignals {
        // SAFETY: plain signal-mask calls on local sets.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            NoSignals(old)
        }
    }
}

impl Drop for NoSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in new().
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

fn raw_close(fd: i32) {
    // SAFETY: closing a descriptor of our own, past the `close` hook.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

fn identity(fd: i32) -> Option<(u64, u64, i64)> {
    // SAFETY: fstat into a local struct.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some((st.st_dev, st.st_ino, st.st_size))
    }
}

/// The top of the table we may use now (the program may lower `RLIMIT_NOFILE`).
fn top() -> i32 {
    // SAFETY: getrlimit into a local struct.
    let cur = unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        r.rlim_cur
    };
    cur.min(MAX_FD as libc::rlim_t) as i32
}

/// A close-on-exec copy of `fd` as high in the table as there is room, never `avoid`.
fn place_high(fd: i32, avoid: i32) -> Result<i32, Error> {
    let top = top();
    let mut gap = 1;
    let mut last = Error::from_raw_os_error(libc::EMFILE);
    // From the top down, in growing steps: one call when the top is free, a few when the program
    // has filled the table up there.
    while top - gap > 2 {
        // SAFETY: duplicates a descriptor we hold.
        let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, top - gap) };
        if new >= 0 && new != avoid {
            return Ok(new);
        }
        if new == avoid {
            raw_close(new);
        } else {
            last = Error::last_os_error();
        }
        gap *= 2;
    }
    Err(last)
}

/// Takes over a freshly opened dump descriptor: moves it high and remembers what it names.
pub(crate) fn adopt(fd: i32) -> Result<(), Error> {
    let _s = NoSignals::new();
    let mut f = LOCK.lock();
    let Some((dev, ino, size)) = identity(fd) else {
        let e = Error::last_os_error();
        raw_close(fd);
        return Err(e);
    };
    let high = place_high(fd, -1);
    raw_close(fd);
    let high = high?;
    let mut path = std::fs::read_link(format!("/proc/self/fd/{high}"))
        .map(|p| std::os::unix::ffi::OsStringExt::into_vec(p.into_os_string()))
        .unwrap_or_default();
    if !path.starts_with(b"/") {
        path.clear(); // no /proc: the dump cannot be reopened, only kept
    }
    path.push(0);
    *f = File {
        dev,
        ino,
        path,
        size,
        reserve: true,
    };
    TAKEN.store(false, Ordering::Release);
    FD.store(high, Ordering::Release);
    Ok(())
}

/// True while a dump is open.
pub(crate) fn is_open() -> bool {
    FD.load(Ordering::Acquire) >= 0
}

/// Closes the dump's descriptor (after a `fork`, the child's copy of its parent's).
pub(crate) fn close() {
    let _s = NoSignals::new();
    let _f = LOCK.lock();
    let fd = FD.swap(-1, Ordering::AcqRel);
    if fd >= 0 {
        raw_close(fd);
    }
}

/// The dump's descriptor, checked to still name the dump, or reopened. Under the lock.
fn checked(f: &mut File) -> Result<i32, Error> {
    let fd = FD.load(Ordering::Acquire);
    if fd < 0 {
        return Err(if TAKEN.load(Ordering::Acquire) {
            Error::other(
                "the program took its descriptor's number (dup2) and no other descriptor was free",
            )
        } else {
            Error::from_raw_os_error(libc::EBADF)
        });
    }
    if let Some((dev, ino, _)) = identity(fd) {
        if (dev, ino) == (f.dev, f.ino) {
            return Ok(fd);
        }
    }
    // Closed or replaced behind our back (a raw system call): the number is not ours any more,
    // so it is forgotten, never closed, never written to.
    FD.store(-1, Ordering::Release);
    let lost = || {
        Error::other(
            "its descriptor was closed or replaced by the program (a raw system call), and the \
             file cannot be reopened",
        )
    };
    if f.path.len() < 2 {
        return Err(lost());
    }
    // SAFETY: open(2) of a NUL-terminated path; no O_CREAT: the dump must still exist.
    let fd = unsafe {
        libc::open(
            f.path.as_ptr().cast(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(lost());
    }
    match identity(fd) {
        Some((dev, ino, size)) if (dev, ino) == (f.dev, f.ino) => {
            let high = place_high(fd, -1);
            raw_close(fd);
            let high = high.map_err(|_| lost())?;
            f.size = size;
            FD.store(high, Ordering::Release);
            Ok(high)
        }
        _ => {
            raw_close(fd);
            Err(lost())
        }
    }
}

/// Appends `buf` to the dump, after making sure that it, and the reserve after it, have room.
pub(crate) fn write(buf: &[u8]) -> Result<(), WriteError> {
    write_inner(buf, true)
}

/// Appends `buf` without reserving: for the last record, which goes into the reserve.
pub(crate) fn write_reserved(buf: &[u8]) -> Result<(), WriteError> {
    write_inner(buf, false)
}

fn write_inner(mut buf: &[u8], reserve: bool) -> Result<(), WriteError> {
    if buf.is_empty() {
        return Ok(());
    }
    let _s = NoSignals::new();
    let mut f = LOCK.lock();
    let fd = checked(&mut f).map_err(WriteError::Failed)?;
    if reserve && f.reserve {
        // SAFETY: fallocate on our own descriptor; KEEP_SIZE leaves the file's size alone.
        let rc = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_KEEP_SIZE,
                f.size,
                buf.len() as i64 + RESERVE,
            )
        };
        if rc != 0 {
            let e = Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => return Err(WriteError::NoSpace(e)),
                Some(libc::EINTR) => {}
                // Not supported here (EOPNOTSUPP, EINVAL...): plain appends from now on.
                _ => f.reserve = false,
            }
        }
    }
    while !buf.is_empty() {
        // SAFETY: writing our own buffer to the dump's descriptor, checked above.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(WriteError::Failed(e));
        }
        f.size += n as i64;
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// True if `fd` is the dump's descriptor in this process (a `vfork` child's table is its own).
/// The hooks' first check: one load when it is not.
#[inline]
pub fn is_ours(fd: i32) -> bool {
    fd >= 0 && fd == FD.load(Ordering::Relaxed) && crate::output::owns_dump()
}

/// Runs `f` (a close or dup of `fd` by the program) with the answer to "is `fd` the dump's?"
/// settled under the lock, so that the dump cannot move onto or off `fd` in between.
pub fn with_ours<R>(fd: i32, f: impl FnOnce(bool) -> R) -> R {
    if !is_ours(fd) {
        return f(false);
    }
    let _s = NoSignals::new();
    let _l = LOCK.lock();
    f(fd == FD.load(Ordering::Acquire))
}

/// `dup2(x, fd)` / `dup3(x, fd, …)` by the program, `fd` being ours: the dump moves to another
/// high number first, then `f` (the real call) runs, still under the lock. If there is no other
/// number for the dump, recording stops (the next write says why) and the program gets `fd`.
pub fn give_up<R>(fd: i32, f: impl FnOnce() -> R) -> R {
    if !is_ours(fd) {
        return f();
    }
    let _s = NoSignals::new();
    let _l = LOCK.lock();
    if fd == FD.load(Ordering::Acquire) {
        match place_high(fd, fd) {
            Ok(new) => FD.store(new, Ordering::Release),
            Err(_) => {
                // The next write fails and says why; the program's call must go ahead.
                TAKEN.store(true, Ordering::Release);
                FD.store(-1, Ordering::Release);
            }
        }
    }
    // The real dup2 replaces `fd` (closing our old copy) atomically.
    f()
}

/// `close_range(lo, hi, …)` / `closefrom(lo)` by the program: returns the dump's descriptor if it
/// lies in `lo..=hi`, and runs `f(ours)` under the lock, so that `f` can close around it.
pub fn skip_in_range<R>(lo: u32, hi: u32, f: impl FnOnce(Option<u32>) -> R) -> R {
    let fd = FD.load(Ordering::Relaxed);
    if fd < 0 || (fd as u32) < lo || (fd as u32) > hi || !crate::output::owns_dump() {
        return f(None);
    }
    let _s = NoSignals::new();
    let _l = LOCK.lock();
    let fd = FD.load(Ordering::Acquire);
    let inside = fd >= 0 && (fd as u32) >= lo && (fd as u32) <= hi;
    f(inside.then_some(fd as u32))
}

/// For the `fork` handlers: held across `fork` with the other recorder locks.
pub(crate) fn raw_lock() {
    LOCK.raw_lock();
}

/// # Safety
/// Paired with [`raw_lock`] (in this process or, after `fork`, in the parent).
pub(crate) unsafe fn raw_unlock() {
    LOCK.raw_unlock();
}

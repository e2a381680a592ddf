//! The leak check: which blocks of the live set the program can still reach, made inside the
//! traced process when it ends normally (`exit`, a return from `main`, `_exit`) and when the
//! program asks ([`crate::leak_check`]). Never on the hot path.
//!
//! The classes are valgrind memcheck's, computed its way (`mc_leakcheck.c`):
//!
//! 1. **Roots**: the writable `PT_LOAD` segments of every loaded module (`dl_iterate_phdr`), the
//!    registers and stacks of the threads still alive, and their static TLS. A glibc thread's
//!    static TLS and descriptor sit at the top of its stack mapping, so its stack is scanned from
//!    below its stack pointer (the 128-byte red zone) to the top of that mapping; the main
//!    thread's are in a mapping of their own, the one holding its `%fs` base. The recorder's own
//!    module, its heap and its writer thread are not roots: the program's blocks are exactly the
//!    live set's entries, so the allocator's arenas are never roots either (they hold every block).
//! 2. Every aligned word of a root that points at a block (its start, or inside it) marks the
//!    block: *reachable* for a pointer to its start, *possibly lost* for a pointer inside it. The
//!    blocks marked are scanned in turn (a worklist); what a possibly lost block points at is
//!    possibly lost at best.
//! 3. The blocks left unmarked are lost. Taken in address order, each one still unmarked leads a
//!    clique: whatever it reaches that is unmarked (start or interior pointer) is *indirectly
//!    lost*; the leaders are *definitely lost*.
//!
//! Blocks are looked up by binary search in one sorted array of addresses, so the check costs
//! (bytes of roots + bytes of reachable blocks) × log(blocks).
//!
//! **Stopping the threads.** The other threads are sent a real-time signal ([`stop_signal`])
//! whose handler saves the thread's registers and stack pointer (from its `ucontext`) and waits on
//! a futex until the check ends. A thread caught inside the recorder (it may hold a live-set
//! lock) returns from the handler at once and is asked again; a thread that blocks the signal, or
//! does not answer in time, has its whole stack mapping scanned instead, as far as it can be
//! found. Interrupted system calls may return `EINTR` in the program, as with any signal.
//!
//! **No allocation while threads are stopped.** A stopped thread may hold the allocator's lock
//! (it was stopped inside `malloc`), so between stopping and resuming them nothing here calls
//! `malloc`, takes a lock another thread could hold, or calls into the loader: the check's arrays
//! are anonymous mappings of their own ([`Buf`]), `/proc` is read with plain system calls, and
//! the modules are listed before the threads are stopped.

use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use zmtrace_format::{KindTotal, LeakKind, Reach, ReachTrigger};

use crate::clock::now_mono;
use crate::state::{Core, SEQ};
use crate::sync::{Guard, SpinLock};
use crate::threads::CURRENT;
use crate::{aggregate, output};

/// Bytes below the stack pointer that a leaf function may use without moving it (x86-64 ABI).
const RED_ZONE: u64 = 128;
/// How long the other threads have to stop before their stacks are scanned as they are.
const STOP_WAIT_NS: u64 = 250_000_000;
/// A stopped thread gives up waiting after this long, should the check never end.
const PARK_LIMIT_NS: u64 = 30_000_000_000;
/// Blocks from this size up are read with `process_vm_readv` when a thread could not be
/// stopped: such blocks are mapped by themselves, and a running thread that frees one unmaps it.
const LARGE_BLOCK: u64 = 128 * 1024;

/// The signal that stops a thread for the check: near the top of the real-time range, away from
/// the low ones that programs (and glibc's own 32 and 33) use.
pub fn stop_signal() -> c_int {
    libc::SIGRTMAX() - 1
}

// ---- memory of our own ------------------------------------------------------------------------

/// A growable array in an anonymous mapping of its own: usable while other threads are stopped
/// inside `malloc`, and never part of the trace.
pub(crate) struct Buf<T> {
    ptr: *mut T,
    len: usize,
    cap: usize,
}

impl<T> Buf<T> {
    pub(crate) fn new() -> Buf<T> {
        Buf {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }

    /// Room for `extra` more elements; false when the system refuses the memory.
    pub(crate) fn reserve(&mut self, extra: usize) -> bool {
        let Some(need) = self.len.checked_add(extra) else {
            return false;
        };
        if need <= self.cap {
            return true;
        }
        let size = std::mem::size_of::<T>().max(1);
        let cap = need.max(self.cap.saturating_mul(2)).max(4096 / size);
        let Some(bytes) = cap.checked_mul(size) else {
            return false;
        };
        // SAFETY: a fresh private anonymous mapping; the old one is copied and unmapped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return false;
            }
            if !self.ptr.is_null() {
                std::ptr::copy_nonoverlapping(self.ptr, p.cast::<T>(), self.len);
                libc::munmap(self.ptr.cast(), self.cap * size);
            }
            self.ptr = p.cast();
        }
        self.cap = cap;
        true
    }

    pub(crate) fn push(&mut self, v: T) -> bool {
        if !self.reserve(1) {
            return false;
        }
        // SAFETY: reserve made room for one more.
        unsafe { self.ptr.add(self.len).write(v) };
        self.len += 1;
        true
    }

    fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: below len, written by push.
        Some(unsafe { self.ptr.add(self.len).read() })
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: len elements were written.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        if self.ptr.is_null() {
            return &mut [];
        }
        // SAFETY: len elements were written; we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T: Copy> Buf<T> {
    /// `n` copies of `v`.
    fn filled(n: usize, v: T) -> Option<Buf<T>> {
        let mut b = Buf::new();
        if !b.reserve(n) {
            return None;
        }
        for _ in 0..n {
            b.push(v);
        }
        Some(b)
    }
}

/// Elements are plain data or atomics: nothing to drop but the mapping.
impl<T> Drop for Buf<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: our own mapping, of cap elements.
            unsafe { libc::munmap(self.ptr.cast(), self.cap * std::mem::size_of::<T>().max(1)) };
        }
    }
}

// ---- /proc, read with plain system calls -------------------------------------------------------

/// Reads a whole (small) file into `out`.
fn read_file(path: &CStr, out: &mut Buf<u8>) -> bool {
    out.len = 0;
    // SAFETY: plain syscalls into memory we own.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        loop {
            if !out.reserve(4096) {
                break;
            }
            let n = libc::read(fd, out.ptr.add(out.len).cast(), out.cap - out.len);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            out.len += n as usize;
        }
        libc::close(fd);
    }
    true
}

/// `/proc/self/task/<tid>/<leaf>` as a C string, in a buffer on the stack.
fn task_path<'a>(tid: u32, leaf: &[u8], buf: &'a mut [u8; 64]) -> Option<&'a CStr> {
    let mut digits = [0u8; 10];
    let mut n = 0;
    let mut t = tid;
    loop {
        digits[n] = b'0' + (t % 10) as u8;
        n += 1;
        t /= 10;
        if t == 0 {
            break;
        }
    }
    let head = b"/proc/self/task/";
    let len = head.len() + n + 1 + leaf.len();
    if len + 1 > buf.len() {
        return None;
    }
    buf[..head.len()].copy_from_slice(head);
    for i in 0..n {
        buf[head.len() + i] = digits[n - 1 - i];
    }
    buf[head.len() + n] = b'/';
    buf[head.len() + n + 1..len].copy_from_slice(leaf);
    buf[len] = 0;
    CStr::from_bytes_with_nul(&buf[..=len]).ok()
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    let s = s.strip_prefix(b"0x").unwrap_or(s);
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = v << 4 | u64::from(d);
    }
    Some(v)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MapKind {
    /// `[heap]`: the `brk` heap, where the allocator keeps blocks.
    Heap,
    /// `[stack]`: the main thread's stack.
    Stack,
    Other,
}

#[derive(Clone, Copy, Debug)]
struct Mapping {
    start: u64,
    end: u64,
    readable: bool,
    kind: MapKind,
}

/// `/proc/self/maps`, in address order.
fn read_maps(text: &mut Buf<u8>, maps: &mut Buf<Mapping>) -> bool {
    maps.len = 0;
    if !read_file(c"/proc/self/maps", text) {
        return false;
    }
    for line in text.as_slice().split(|&c| c == b'\n') {
        let mut fields = line.split(|&c| c == b' ').filter(|f| !f.is_empty());
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let mut ends = range.split(|&c| c == b'-');
        let (Some(start), Some(end)) = (
            ends.next().and_then(parse_hex),
            ends.next().and_then(parse_hex),
        ) else {
            continue;
        };
        // offset, device, inode, then the name (if any)
        let name = fields.nth(3).unwrap_or(b"");
        let kind = match name {
            b"[heap]" => MapKind::Heap,
            b"[stack]" => MapKind::Stack,
            _ => MapKind::Other,
        };
        maps.push(Mapping {
            start,
            end,
            readable: perms.first() == Some(&b'r'),
            kind,
        });
    }
    true
}

fn mapping_of(maps: &[Mapping], addr: u64) -> Option<Mapping> {
    let i = maps.partition_point(|m| m.start <= addr);
    let m = *maps.get(i.checked_sub(1)?)?;
    (addr < m.end).then_some(m)
}

/// The threads of this process (`/proc/self/task`).
fn list_threads(out: &mut Buf<u32>) {
    out.len = 0;
    // SAFETY: plain syscalls; the directory entries are parsed within the bytes read.
    unsafe {
        let fd = libc::open(
            c"/proc/self/task".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            let n = libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len());
            if n <= 0 {
                break;
            }
            let mut pos = 0usize;
            while pos + 19 < n as usize {
                // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name
                let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
                if reclen == 0 || pos + reclen > n as usize {
                    break;
                }
                let name = &buf[pos + 19..pos + reclen];
                let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
                let mut tid = 0u32;
                let numeric = !name.is_empty()
                    && name.iter().all(|&c| {
                        tid = tid
                            .wrapping_mul(10)
                            .wrapping_add(u32::from(c.wrapping_sub(b'0')));
                        c.is_ascii_digit()
                    });
                if numeric {
                    out.push(tid);
                }
                pos += reclen;
            }
        }
        libc::close(fd);
    }
}

/// True when thread `tid` blocks signal `sig` (`SigBlk` in its status): it cannot be stopped.
fn blocks_signal(tid: u32, sig: c_int, text: &mut Buf<u8>) -> bool {
    let mut path = [0u8; 64];
    let Some(p) = task_path(tid, b"status", &mut path) else {
        return false;
    };
    if !read_file(p, text) {
        return false;
    }
    text.as_slice()
        .split(|&c| c == b'\n')
        .find_map(|l| l.strip_prefix(b"SigBlk:"))
        .and_then(|v| parse_hex(v.trim_ascii()))
        .is_some_and(|mask| sig >= 1 && mask >> (sig - 1) & 1 == 1)
}

/// The stack pointer of a thread blocked in a system call (`/proc/self/task/<tid>/syscall`).
fn syscall_sp(tid: u32, text: &mut Buf<u8>) -> Option<u64> {
    let mut path = [0u8; 64];
    if !read_file(task_path(tid, b"syscall", &mut path)?, text) {
        return None;
    }
    // "nr arg1 … arg6 sp pc" in a system call, "-1 sp pc" blocked elsewhere, "running".
    let mut words = [0u64; 9];
    let mut n = 0;
    for w in text.as_slice().split(|c| c.is_ascii_whitespace()) {
        if w.is_empty() {
            continue;
        }
        if n == words.len() {
            return None;
        }
        words[n] = if w == b"-1" { u64::MAX } else { parse_hex(w)? };
        n += 1;
    }
    match n {
        9 => Some(words[7]),
        3 => Some(words[1]),
        _ => None,
    }
}

fn gettid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// The thread pointer: `%fs:0` holds the TCB's address (x86-64 TLS ABI, variant II).
#[inline(always)]
fn thread_pointer() -> u64 {
    let fs: u64;
    // SAFETY: reads the first word of this thread's TCB, which points to itself.
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) fs, options(nostack, readonly, preserves_flags));
    }
    fs
}

// ---- stopping the other threads ----------------------------------------------------------------

const ASKED: u32 = 0;
const PARKED: u32 = 1;
/// The thread was inside the recorder when asked: it must be asked again.
const BUSY: u32 = 2;
const LEFT: u32 = 3;

/// Threads stopped at most in one check; those beyond are scanned as if they did not answer.
const MAX_STOPPED: usize = 1024;

/// One thread asked to stop, and what its handler saved.
struct Slot {
    tid: AtomicU32,
    state: AtomicU32,
    sp: AtomicU64,
    /// Its thread pointer (`%fs` base).
    tp: AtomicU64,
    /// The top of its stack, as the recorder learnt it when the thread first allocated (0: not
    /// known).
    top: AtomicU64,
    /// General-purpose registers but `rsp` and `rip` (ucontext order).
    regs: [AtomicU64; 15],
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
/// One check at a time (exit in one thread while another asks for a check).
static CHECKING: AtomicBool = AtomicBool::new(false);
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
fn install_handler() -> bool {
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
fn stop_threads(tids: &[u32]) -> (&'static [Slot], &[u32]) {
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
fn resume_threads(slots: &[Slot]) {
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

// ---- the scan ----------------------------------------------------------------------------------

const UNREACHED: u8 = 0;
const INDIRECT: u8 = 1;
const POSSIBLE: u8 = 2;
const REACHABLE: u8 = 3;
/// Set while a block is on the worklist.
const PENDING: u8 = 0x80;
/// One address in this many goes into [`Graph::sparse`].
const SPARSE: usize = 16;

/// How memory is read: directly, or with `process_vm_readv` where a running thread may unmap it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reads {
    Direct,
    Careful,
}

/// The live set, sorted, with each block's state: the graph the scan walks.
struct Graph<'a> {
    addr: &'a [u64],
    size: &'a [u64],
    state: &'a mut [u8],
    work: Buf<u32>,
    /// Every [`SPARSE`]th address: a first search in this small array (it stays in the cache)
    /// leaves a short run of `addr` to search, instead of a dozen cache misses down the big one.
    sparse: Buf<u64>,
    /// Every block lies in `lo..hi`: most words fail this test and need no search.
    lo: u64,
    hi: u64,
    reads: Reads,
    root_bytes: u64,
}

impl<'a> Graph<'a> {
    fn new(addr: &'a [u64], size: &'a [u64], state: &'a mut [u8], reads: Reads) -> Graph<'a> {
        let lo = addr.first().copied().unwrap_or(0);
        let hi = addr
            .iter()
            .zip(size)
            .map(|(&a, &s)| a.saturating_add(s.max(1)))
            .max()
            .unwrap_or(0);
        let mut work = Buf::new();
        work.reserve(addr.len());
        let mut sparse = Buf::new();
        sparse.reserve(addr.len() / SPARSE + 1);
        for a in addr.iter().step_by(SPARSE) {
            sparse.push(*a);
        }
        Graph {
            addr,
            size,
            state,
            work,
            sparse,
            lo,
            hi,
            reads,
            root_bytes: 0,
        }
    }

    /// The block that `v` points into (its start, or inside it; a block of size 0 only at its
    /// start).
    #[inline]
    fn find(&self, v: u64) -> Option<usize> {
        if v < self.lo || v >= self.hi {
            return None;
        }
        let run = self
            .sparse
            .as_slice()
            .partition_point(|&a| a <= v)
            .checked_sub(1)?
            * SPARSE;
        let end = (run + SPARSE).min(self.addr.len());
        let i = run + self.addr[run..end].partition_point(|&a| a <= v) - 1;
        let (a, s) = (self.addr[i], self.size[i]);
        (v == a || v - a < s).then_some(i)
    }

    fn push(&mut self, i: usize) {
        if self.state[i] & PENDING == 0 {
            self.state[i] |= PENDING;
            self.work.push(i as u32);
        }
    }

    fn pop(&mut self) -> Option<usize> {
        let i = self.work.pop()? as usize;
        self.state[i] &= !PENDING;
        Some(i)
    }

    /// A word found in a root (`definite`), or in a reachable (`definite`) or possibly lost
    /// block: memcheck's `lc_push_without_clique_if_a_chunk_ptr`.
    #[inline]
    fn reach_word(&mut self, v: u64, definite: bool) {
        let Some(i) = self.find(v) else { return };
        let st = self.state[i] & !PENDING;
        if st == REACHABLE {
            return;
        }
        if v == self.addr[i] && definite {
            self.state[i] = (self.state[i] & PENDING) | REACHABLE;
            self.push(i);
        } else if st == UNREACHED {
            self.state[i] = (self.state[i] & PENDING) | POSSIBLE;
            self.push(i);
        }
    }

    /// A word found in a lost block of the clique led by `leader`.
    #[inline]
    fn clique_word(&mut self, v: u64, leader: usize) {
        let Some(i) = self.find(v) else { return };
        if self.state[i] & !PENDING == UNREACHED && i != leader {
            self.state[i] = (self.state[i] & PENDING) | INDIRECT;
            self.push(i);
        }
    }

    /// Calls `f` with every aligned word of `start..end`.
    fn words(reads: Reads, start: u64, end: u64, mut f: impl FnMut(u64)) {
        let start = (start + 7) & !7;
        let end = end & !7;
        if start >= end {
            return;
        }
        match reads {
            Reads::Direct => {
                let mut p = start;
                while p < end {
                    // SAFETY: the caller gives ranges that are mapped and readable, and no
                    // thread that could unmap them is running.
                    f(unsafe { (p as *const u64).read_volatile() });
                    p += 8;
                }
            }
            Reads::Careful => {
                let mut buf = [0u64; 2048];
                let mut p = start;
                while p < end {
                    let want = ((end - p) as usize).min(buf.len() * 8);
                    let got = read_own(p, &mut buf, want);
                    for &w in &buf[..got / 8] {
                        f(w);
                    }
                    p += got as u64;
                    if got < want {
                        // Unmapped here: go on at the next page.
                        p = (p + 4096) & !4095;
                    }
                }
            }
        }
    }

    fn scan_root(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        self.root_bytes += end - start;
        let reads = self.reads;
        Self::words(reads, start, end, |w| self.reach_word(w, true));
    }

    fn block_reads(&self, i: usize) -> Reads {
        if self.reads == Reads::Careful && self.size[i] >= LARGE_BLOCK {
            Reads::Careful
        } else {
            Reads::Direct
        }
    }

    /// Marks everything reachable from the roots pushed so far.
    fn mark(&mut self) {
        while let Some(i) = self.pop() {
            let definite = self.state[i] & !PENDING != POSSIBLE;
            let (a, s) = (self.addr[i], self.size[i]);
            let reads = self.block_reads(i);
            Self::words(reads, a, a + s, |w| self.reach_word(w, definite));
        }
    }

    /// Sorts the blocks not reached into cliques: memcheck's second pass.
    fn cliques(&mut self) {
        for leader in 0..self.addr.len() {
            if self.state[leader] != UNREACHED {
                continue;
            }
            self.push(leader);
            while let Some(i) = self.pop() {
                let (a, s) = (self.addr[i], self.size[i]);
                let reads = self.block_reads(i);
                Self::words(reads, a, a + s, |w| self.clique_word(w, leader));
            }
        }
    }

    fn kind(&self, i: usize) -> LeakKind {
        match self.state[i] & !PENDING {
            REACHABLE => LeakKind::Reachable,
            POSSIBLE => LeakKind::Possible,
            INDIRECT => LeakKind::Indirect,
            _ => LeakKind::Definite,
        }
    }
}

/// Reads `len` bytes of our own memory at `addr` without faulting; returns the bytes read.
fn read_own(addr: u64, buf: &mut [u64], len: usize) -> usize {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len.min(buf.len() * 8),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut c_void,
        iov_len: local.iov_len,
    };
    // Every argument a full word: `syscall` is variadic and reads each as a `long`, and the last
    // one goes on the stack, where a 32-bit `0` leaves the upper half to whatever was there (the
    // kernel then refuses the flags with EINVAL and nothing is read).
    // SAFETY: the kernel copies into our buffer and fails instead of faulting.
    let n = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            libc::getpid() as libc::c_long,
            &local as *const libc::iovec,
            1 as libc::c_ulong,
            &remote as *const libc::iovec,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if n < 0 {
        0
    } else {
        (n as usize) & !7
    }
}

// ---- the check ---------------------------------------------------------------------------------

/// The writable `PT_LOAD` segments of the loaded modules, but the recorder's own (unless it is
/// linked into the program itself).
fn writable_segments_from_loader(core: &Core, out: &mut Buf<(u64, u64)>) {
    struct Ctx<'a> {
        out: &'a mut Buf<(u64, u64)>,
        own: std::ops::Range<u64>,
        first: bool,
        skip_own: bool,
    }
    unsafe extern "C" fn cb(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> c_int {
        let ctx = &mut *(data as *mut Ctx);
        let info = &*info;
        let phdrs = std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
        let loads = phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD);
        let holds_own = loads.clone().any(|p| {
            let s = info.dlpi_addr.wrapping_add(p.p_vaddr);
            s <= ctx.own.start && ctx.own.start < s.wrapping_add(p.p_memsz)
        });
        if ctx.first {
            // The program itself: if the recorder is linked into it, its data is the program's.
            ctx.first = false;
            ctx.skip_own = !holds_own;
        } else if holds_own && ctx.skip_own {
            return 0;
        }
        for p in loads.filter(|p| p.p_flags & libc::PF_W != 0) {
            let s = info.dlpi_addr.wrapping_add(p.p_vaddr);
            ctx.out.push((s, s.wrapping_add(p.p_memsz)));
        }
        0
    }
    let mut ctx = Ctx {
        out,
        own: core.own.clone(),
        first: true,
        skip_own: true,
    };
    // SAFETY: the callback only reads the program headers the loader hands it.
    unsafe { libc::dl_iterate_phdr(Some(cb), &mut ctx as *mut Ctx as *mut c_void) };
}

/// The writable segments as they were just before the last `fork`, and the module generation
/// then: what a forked child's check uses instead of asking the loader. `dl_iterate_phdr` takes
/// the loader's write lock, which glibc does not reset in the child: if another thread of the
/// parent held it at the fork (a C++ exception being unwound, say), the child's check at `_exit`
/// would wait for it forever.
static PREFORK_SEGMENTS: crate::sync::SpinLock<Vec<(u64, u64)>> =
    crate::sync::SpinLock::new(Vec::new());
static PREFORK_GENERATION: AtomicU64 = AtomicU64::new(u64::MAX);
/// Set in a forked child (until it loads a module itself, which proves the loader usable).
pub(crate) static IN_FORKED_CHILD: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// From the `fork` prepare handler, before it takes the recorder's locks (a thread inside the
/// loader may be about to allocate): what a check in the child will need from the loader.
pub(crate) fn before_fork(core: &Core) {
    static_tls_size();
    let mut segments = Buf::new();
    writable_segments_from_loader(core, &mut segments);
    let mut v = PREFORK_SEGMENTS.lock();
    v.clear();
    v.extend_from_slice(segments.as_slice());
    PREFORK_GENERATION.store(
        crate::modules::MODULES_GENERATION.load(Ordering::Acquire),
        Ordering::Release,
    );
}

/// The writable segments to scan: from the loader, or in a forked child from the snapshot taken
/// before the fork (unless the child loaded or unloaded modules since).
fn writable_segments(core: &Core, out: &mut Buf<(u64, u64)>) {
    if IN_FORKED_CHILD.load(Ordering::Acquire)
        && PREFORK_GENERATION.load(Ordering::Acquire)
            == crate::modules::MODULES_GENERATION.load(Ordering::Acquire)
    {
        // Held only by a thread of the parent that was forking at the same moment.
        if let Some(segments) = PREFORK_SEGMENTS.try_lock() {
            for &seg in segments.iter() {
                out.push(seg);
            }
            return;
        }
    }
    writable_segments_from_loader(core, out);
}

/// glibc's size of the static TLS block (`_dl_get_tls_static_info`), 0 if unknown.
fn static_tls_size() -> u64 {
    static SIZE: AtomicU64 = AtomicU64::new(u64::MAX);
    let s = SIZE.load(Ordering::Relaxed);
    if s != u64::MAX {
        return s;
    }
    // SAFETY: looks up a glibc function (the one sanitizers use) and calls it as declared there.
    let size = unsafe {
        let f = libc::dlsym(libc::RTLD_DEFAULT, c"_dl_get_tls_static_info".as_ptr());
        if f.is_null() {
            0
        } else {
            let f: extern "C" fn(*mut libc::size_t, *mut libc::size_t) = std::mem::transmute(f);
            let (mut size, mut align) = (0, 0);
            f(&mut size, &mut align);
            size as u64
        }
    };
    SIZE.store(size, Ordering::Relaxed);
    size
}

/// A thread's memory to scan.
#[derive(Clone, Copy, Default)]
struct ThreadRoots {
    sp: u64,
    /// The stack's top if the recorder knows it, else 0.
    top: u64,
    tp: u64,
}

/// The callee-saved registers of the checking thread, read on entry: values of its callers that
/// no frame has spilled to the stack yet.
#[inline(always)]
fn callee_saved() -> [u64; 6] {
    let r: [u64; 6];
    // SAFETY: reads registers.
    unsafe {
        let (rbx, rbp, r12, r13, r14, r15): (u64, u64, u64, u64, u64, u64);
        std::arch::asm!(
            "mov {0}, rbx", "mov {1}, rbp", "mov {2}, r12", "mov {3}, r13", "mov {4}, r14", "mov {5}, r15",
            out(reg) rbx, out(reg) rbp, out(reg) r12, out(reg) r13, out(reg) r14, out(reg) r15,
            options(nomem, nostack, preserves_flags)
        );
        r = [rbx, rbp, r12, r13, r14, r15];
    }
    r
}

/// Aggregated mode: the check made at the end, to classify the live set written after it (see
/// `output`).
pub(crate) static LAST_EXIT_CHECK: SpinLock<Option<Box<Reach>>> = SpinLock::new(None);

/// Runs a check and writes its `Reach` record; returns the blocks and bytes of each class.
pub(crate) fn write_leak_check(core: &Core, trigger: ReachTrigger) -> Option<[KindTotal; 4]> {
    let outcome = check(core, trigger)?;
    let r = outcome.reach;
    let raw = zmtrace_format::write::reach_raw(&r.addrs);
    let z = zstd::bulk::compress(&raw, 1).ok()?;
    let mut buf = Vec::new();
    zmtrace_format::write::reach(&mut buf, &r, raw.len(), &z);
    output::write_record(&buf);
    let totals = r.totals;
    if aggregate::on() && trigger != ReachTrigger::Request {
        *LAST_EXIT_CHECK.lock() = Some(Box::new(r));
    }
    Some(totals)
}

/// What one check found, for the record and for the caller.
pub(crate) struct Outcome {
    pub reach: Reach,
}

/// Runs a check now. Called under the recorder guard with the recorder ready; returns None when
/// another check is under way or the memory for it cannot be had.
#[inline(never)]
pub(crate) fn check(core: &Core, trigger: ReachTrigger) -> Option<Outcome> {
    // Our callers' frames (the program's, above this one) are roots; ours below are not.
    let sp = crate::stack_pointer();
    let regs = callee_saved();
    if CHECKING.swap(true, Ordering::AcqRel) {
        return None;
    }
    let out = check_locked(core, trigger, sp, regs);
    CHECKING.store(false, Ordering::Release);
    out
}

#[inline(never)]
fn check_locked(
    core: &Core,
    trigger: ReachTrigger,
    my_sp: u64,
    my_regs: [u64; 6],
) -> Option<Outcome> {
    let started = now_mono();
    // Everything that may allocate or take a lock comes first.
    let mut segments = Buf::new();
    writable_segments(core, &mut segments);
    let tls_size = static_tls_size();
    if !install_handler() {
        return None;
    }
    let me = gettid();
    let writer = crate::output::writer_tid();
    let sig = stop_signal();
    let mut text = Buf::new();
    let mut tids = Buf::new();
    list_threads(&mut tids);
    // Threads that block the signal cannot be stopped: their stacks are scanned as they are.
    let mut unstoppable: Buf<u32> = Buf::new();
    let mut stoppable: Buf<u32> = Buf::new();
    for &tid in tids.as_slice() {
        if tid == me || tid == writer {
            continue;
        }
        if blocks_signal(tid, sig, &mut text) {
            unstoppable.push(tid);
        } else {
            stoppable.push(tid);
        }
    }

    // ---- threads stopped from here: no malloc, no locks of others, no loader ----
    let (slots, too_many) = stop_threads(stoppable.as_slice());
    for &tid in too_many {
        unstoppable.push(tid);
    }
    let result = scan(
        core,
        &segments,
        slots,
        &unstoppable,
        tls_size,
        me,
        my_sp,
        my_regs,
    );
    resume_threads(slots);
    // ---- threads running again ----
    let (seq, blocks, stopped, unstopped, root_bytes) = result?;
    let mut reach = Reach {
        trigger,
        seq,
        threads_stopped: stopped,
        threads_unstopped: unstopped,
        root_bytes,
        ..Reach::default()
    };
    for &(addr, size, kind) in blocks.as_slice() {
        let k = kind as usize;
        reach.totals[k].blocks += 1;
        reach.totals[k].bytes += size;
        reach.addrs[k].push(addr);
    }
    reach.scan_ns = now_mono().saturating_sub(started);
    Some(Outcome { reach })
}

type ScanResult = (u64, Buf<(u64, u64, LeakKind)>, u32, u32, u64);

/// The part of the check made while the threads are stopped.
#[allow(clippy::too_many_arguments)]
fn scan(
    core: &Core,
    segments: &Buf<(u64, u64)>,
    slots: &[Slot],
    unstoppable: &Buf<u32>,
    tls_size: u64,
    me: u32,
    my_sp: u64,
    my_regs: [u64; 6],
) -> Option<ScanResult> {
    let seq = SEQ.load(Ordering::Acquire);
    let blocks = snapshot(core)?;
    let n = blocks.len;
    let mut addr = Buf::filled(n, 0u64)?;
    let mut size = Buf::filled(n, 0u64)?;
    for (i, &(a, s)) in blocks.as_slice().iter().enumerate() {
        addr.as_mut_slice()[i] = a;
        size.as_mut_slice()[i] = s;
    }
    drop(blocks);
    let mut state = Buf::filled(n, UNREACHED)?;
    let mut text = Buf::new();
    let mut maps = Buf::new();
    read_maps(&mut text, &mut maps);
    let maps = maps.as_slice();

    // One view of who stopped, used throughout: a thread may still park after the wait ended.
    let mut parked: Buf<bool> = Buf::new();
    for s in slots {
        parked.push(s.state.load(Ordering::Acquire) == PARKED);
    }
    let parked = parked.as_slice();
    let stopped = parked.iter().filter(|&&p| p).count() as u32;
    let unstopped = slots.len() as u32 - stopped + unstoppable.len as u32;
    let reads = if unstopped > 0 {
        Reads::Careful
    } else {
        Reads::Direct
    };
    let (addr_s, size_s) = (addr.as_slice(), size.as_slice());
    let mut g = Graph::new(addr_s, size_s, state.as_mut_slice(), reads);

    // Only what is mapped and readable is read.
    let scan_mapped = |g: &mut Graph, start: u64, end: u64| {
        let mut p = start;
        while p < end {
            let Some(m) = mapping_of(maps, p) else {
                let next = maps.partition_point(|m| m.start <= p);
                match maps.get(next) {
                    Some(m) if m.start < end => {
                        p = m.start;
                        continue;
                    }
                    _ => return,
                }
            };
            let e = end.min(m.end);
            if m.readable {
                g.scan_root(p, e);
            }
            p = e;
        }
    };

    for &(s, e) in segments.as_slice() {
        scan_mapped(&mut g, s, e);
    }
    // Our own stack, from our callers' frames up, and the registers they may still hold.
    let my_top = CURRENT.with(|c| c.get());
    // SAFETY: thread states are never freed.
    let my_top = unsafe { my_top.as_ref() }.map_or(0, |s| s.stack_top());
    let mut threads = [ThreadRoots {
        sp: my_sp,
        top: my_top,
        tp: thread_pointer(),
    }]
    .into_iter()
    .chain(
        slots
            .iter()
            .zip(parked)
            .filter(|(_, &p)| p)
            .map(|(s, _)| ThreadRoots {
                sp: s.sp.load(Ordering::Relaxed),
                top: s.top.load(Ordering::Relaxed),
                tp: s.tp.load(Ordering::Relaxed),
            }),
    );
    for &w in &my_regs {
        g.reach_word(w, true);
    }
    for (s, &p) in slots.iter().zip(parked) {
        if p {
            for r in &s.regs {
                g.reach_word(r.load(Ordering::Relaxed), true);
            }
        }
    }
    for t in &mut threads {
        if let Some((lo, hi)) = stack_range(&g, maps, t.sp, t.top) {
            scan_mapped(&mut g, lo, hi);
            if !(lo..hi).contains(&t.tp) {
                if let Some((lo, hi)) = tls_range(&g, maps, t.tp, tls_size) {
                    scan_mapped(&mut g, lo, hi);
                }
            }
        }
    }
    // Threads that did not stop: their whole stack mapping, as far as it can be found.
    let unanswered = slots
        .iter()
        .zip(parked)
        .filter(|(_, &p)| !p)
        .map(|(s, _)| s.tid.load(Ordering::Relaxed));
    for tid in unanswered.chain(unstoppable.as_slice().iter().copied()) {
        if tid == me {
            continue;
        }
        let known_top = crate::threads::all_threads()
            .find(|t| t.in_use.load(Ordering::Acquire) && t.tid.load(Ordering::Acquire) == tid)
            .map(|t| t.stack_top());
        let range = match known_top {
            Some(top) if top > 0 => mapping_of(maps, top - 1)
                .filter(|m| m.kind != MapKind::Heap)
                .map(|m| (m.start, top)),
            _ => syscall_sp(tid, &mut text).and_then(|sp| {
                let m = mapping_of(maps, sp)?;
                let (_, hi) = stack_range(&g, maps, sp, 0)?;
                Some((m.start, hi))
            }),
        };
        if let Some((lo, hi)) = range {
            scan_mapped(&mut g, lo, hi);
        }
    }

    g.mark();
    g.cliques();
    let root_bytes = g.root_bytes;
    let mut out = Buf::new();
    if !out.reserve(n) {
        return None;
    }
    for i in 0..n {
        out.push((addr_s[i], size_s[i], g.kind(i)));
    }
    Some((seq, out, stopped, unstopped, root_bytes))
}

/// A thread's stack from below its stack pointer to its top: the top the recorder knows, else
/// the end of the mapping holding the stack pointer, but never into a live block (a stack
/// mapping merged with a neighbouring heap mapping must not make the heap a root).
fn stack_range(g: &Graph, maps: &[Mapping], sp: u64, top: u64) -> Option<(u64, u64)> {
    let m = mapping_of(maps, sp)?;
    let lo = sp.saturating_sub(RED_ZONE).max(m.start);
    // The known top only if the stack pointer is on that stack (not on a signal stack or a
    // coroutine's, where everything between the two would be scanned).
    if top > sp && mapping_of(maps, top - 1).is_some_and(|t| t.start == m.start) {
        return Some((lo, top));
    }
    if m.kind == MapKind::Heap {
        return None;
    }
    let mut hi = m.end;
    if let Some(i) = g.find(sp) {
        // A stack inside a block (a coroutine's): up to the block's end.
        hi = hi.min(g.addr[i] + g.size[i]);
    } else {
        let next = g.addr.partition_point(|&a| a < sp);
        if let Some(&a) = g.addr.get(next) {
            hi = hi.min(a);
        }
    }
    Some((lo, hi))
}

/// The static TLS of a thread whose thread pointer is outside its stack (the main thread): the
/// mapping that holds it, unless that mapping holds blocks too, then the static TLS block alone.
fn tls_range(g: &Graph, maps: &[Mapping], tp: u64, tls_size: u64) -> Option<(u64, u64)> {
    let m = mapping_of(maps, tp)?;
    if m.kind == MapKind::Heap {
        return None;
    }
    let first = g.addr.partition_point(|&a| a < m.start);
    let holds_blocks = g.addr.get(first).is_some_and(|&a| a < m.end);
    if !holds_blocks {
        return Some((m.start, m.end));
    }
    let size = if tls_size > 0 { tls_size } else { 4096 };
    Some((tp.saturating_sub(size).max(m.start), (tp + size).min(m.end)))
}

/// The live set as (address, requested size), sorted by address. Shard locks are only tried:
/// a stopped thread never holds one (it was stopped outside the recorder), and waiting in the
/// lock's slow path could allocate.
fn snapshot(core: &Core) -> Option<Buf<(u64, u64)>> {
    let deadline = now_mono() + 2_000_000_000;
    let mut out: Buf<(u64, u64)> = Buf::new();
    for shard in core.live.shards() {
        let guard = loop {
            if let Some(g) = shard.try_read() {
                break g;
            }
            if now_mono() > deadline {
                return None;
            }
            // SAFETY: no preconditions.
            unsafe { libc::sched_yield() };
        };
        if !out.reserve(guard.len()) {
            return None;
        }
        // SAFETY: the table is read under its shard's read lock.
        unsafe {
            for bucket in guard.iter() {
                let (addr, block) = bucket.as_ref();
                out.push((*addr as u64, block.get().size));
            }
        }
    }
    out.as_mut_slice().sort_unstable_by_key(|&(a, _)| a);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks made of real memory, so that the graph reads them as the check does.
    struct Heap {
        blocks: Vec<Box<[u64]>>,
    }

    impl Heap {
        fn new(sizes_in_words: &[usize]) -> Heap {
            Heap {
                blocks: sizes_in_words
                    .iter()
                    .map(|&n| vec![0u64; n].into_boxed_slice())
                    .collect(),
            }
        }
        fn at(&self, i: usize) -> u64 {
            self.blocks[i].as_ptr() as u64
        }
        fn set(&mut self, i: usize, word: usize, v: u64) {
            self.blocks[i][word] = v;
        }
        /// Classifies with `roots` as the only root words.
        fn classify(&self, roots: &[u64]) -> Vec<LeakKind> {
            let mut order: Vec<usize> = (0..self.blocks.len()).collect();
            order.sort_by_key(|&i| self.at(i));
            let addr: Vec<u64> = order.iter().map(|&i| self.at(i)).collect();
            let size: Vec<u64> = order
                .iter()
                .map(|&i| self.blocks[i].len() as u64 * 8)
                .collect();
            let mut state = vec![UNREACHED; addr.len()];
            let mut g = Graph::new(&addr, &size, &mut state, Reads::Direct);
            let root = roots.to_vec();
            let (s, e) = (
                root.as_ptr() as u64,
                root.as_ptr() as u64 + 8 * root.len() as u64,
            );
            g.scan_root(s, e);
            g.mark();
            g.cliques();
            let mut kinds = vec![LeakKind::Definite; addr.len()];
            for (pos, &i) in order.iter().enumerate() {
                kinds[i] = g.kind(pos);
            }
            kinds
        }
    }

    use LeakKind::*;

    #[test]
    fn a_start_pointer_from_a_root_reaches_a_chain() {
        let mut h = Heap::new(&[4, 4, 4]);
        h.set(0, 1, h.at(1));
        h.set(1, 3, h.at(2));
        assert_eq!(h.classify(&[h.at(0)]), [Reachable, Reachable, Reachable]);
    }

    #[test]
    fn a_lost_list_has_one_definite_head_and_indirect_nodes() {
        let mut h = Heap::new(&[2, 2, 2, 2]);
        for i in 0..3 {
            h.set(i, 0, h.at(i + 1));
        }
        assert_eq!(h.classify(&[]), [Definite, Indirect, Indirect, Indirect]);
    }

    #[test]
    fn an_interior_pointer_makes_a_block_and_what_it_points_to_possibly_lost() {
        let mut h = Heap::new(&[8, 2]);
        h.set(0, 0, h.at(1));
        assert_eq!(h.classify(&[h.at(0) + 24]), [Possible, Possible]);
        // A start pointer from a definite place upgrades a possibly lost block.
        assert_eq!(h.classify(&[h.at(0) + 24, h.at(1)]), [Possible, Reachable]);
    }

    #[test]
    fn a_lost_cycle_has_exactly_one_definite_block() {
        let mut h = Heap::new(&[2, 2, 2]);
        h.set(0, 0, h.at(1));
        h.set(1, 0, h.at(2));
        h.set(2, 0, h.at(0));
        let kinds = h.classify(&[]);
        let lowest = (0..3).min_by_key(|&i| h.at(i)).unwrap();
        for (i, k) in kinds.iter().enumerate() {
            assert_eq!(*k, if i == lowest { Definite } else { Indirect });
        }
    }

    #[test]
    fn a_pointer_one_past_the_end_is_not_a_pointer_into_the_block() {
        let h = Heap::new(&[2]);
        assert_eq!(h.classify(&[h.at(0) + 16]), [Definite]);
        assert_eq!(h.classify(&[h.at(0) + 15]), [Possible]);
    }

    #[test]
    fn a_lost_block_reached_from_a_later_lost_block_joins_its_clique() {
        // Whatever the address order, only the block nothing points to stays definite.
        let mut h = Heap::new(&[2, 2]);
        h.set(1, 0, h.at(0));
        assert_eq!(h.classify(&[]), [Indirect, Definite]);
        let mut h = Heap::new(&[2, 2]);
        h.set(0, 0, h.at(1));
        assert_eq!(h.classify(&[]), [Definite, Indirect]);
    }

    /// Leaves non-zero words in the stack below the caller's frame, where the next call's frame
    /// (and its stack-passed arguments) will be.
    #[inline(never)]
    fn dirty_the_stack() {
        let junk = [u64::MAX; 512];
        std::hint::black_box(&junk);
    }

    #[inline(never)]
    fn read_own_here(src: &[u64; 4]) -> usize {
        let mut buf = [0u64; 4];
        read_own(src.as_ptr() as u64, &mut buf, 32)
    }

    #[test]
    fn read_own_reads_from_a_dirty_stack() {
        // process_vm_readv's last argument goes on the stack: passed as a 32-bit int, its upper
        // half was whatever the stack held, and the kernel refused the call (EINVAL).
        let src = [1u64, 2, 3, 4];
        for _ in 0..3 {
            dirty_the_stack();
            assert_eq!(read_own_here(std::hint::black_box(&src)), 32);
        }
    }

    #[test]
    fn buf_grows_in_its_own_mapping() {
        let mut b: Buf<u64> = Buf::new();
        for i in 0..100_000 {
            assert!(b.push(i));
        }
        assert_eq!(b.as_slice().len(), 100_000);
        assert_eq!(b.as_slice()[99_999], 99_999);
        assert_eq!(b.pop(), Some(99_999));
    }

    #[test]
    fn proc_helpers_parse_this_process() {
        let mut tids = Buf::new();
        list_threads(&mut tids);
        assert!(tids.as_slice().contains(&gettid()));
        let (mut text, mut maps) = (Buf::new(), Buf::new());
        assert!(read_maps(&mut text, &mut maps));
        let here = 0u64;
        let m = mapping_of(maps.as_slice(), &here as *const u64 as u64).expect("our stack");
        assert!(m.readable);
        let mut p = [0u8; 64];
        assert_eq!(
            task_path(1234, b"status", &mut p).unwrap().to_bytes(),
            b"/proc/self/task/1234/status"
        );
    }
}

//! `libzmtrace.so`: the `LD_PRELOAD` front end of the recorder.
//!
//! Each exported hook is a few lines: make sure the next allocator in the chain is known, call it,
//! hand what happened to the recorder. "Next" is `dlsym(RTLD_NEXT, …)`, so a program linked with
//! jemalloc keeps jemalloc (going to `__libc_malloc` instead would move it onto glibc's heap while
//! its `mallctl` still talks to jemalloc).
//!
//! The library's own heap (maps, stacks, buffers, and the `malloc` calls of C code it runs, such
//! as zstd) is the recorder's ([`rec::heap`]): anonymous mappings of its own, never the
//! program's allocator, so nothing the recorder writes and frees is handed to the program.

// The exported functions are the C library's allocator and process functions; their safety
// contract is libc's, documented there, not restated on each hook.
#![allow(clippy::missing_safety_doc)]

mod deepbind;
mod fds;
mod real;
mod signals;

use std::ffi::{c_char, c_int, c_void, CStr};

use real::{next, Next};
use zmtrace_recorder::{self as rec, AllocKind, EndReason, FrontEnd};

// ---- the library's own heap ------------------------------------------------------------------

/// Everything the recorder keeps lives in mappings of its own ([`rec::heap`]), never in the
/// program's allocator: freed there, its words would come back to the program in blocks that
/// `malloc` hands out unwritten, and the leak check would take them for pointers.
#[global_allocator]
static OWN_HEAP: rec::heap::OwnHeap = rec::heap::OwnHeap;

/// True when this `malloc` call comes from code running inside the recorder (zstd, the
/// unwinder, the loader on its behalf): such memory is the recorder's, served by its own heap.
#[inline(always)]
fn recorder_inside() -> bool {
    rec::sync::Guard::is_held()
}

/// The recorder's C-side allocation, or null to use the real allocator (see `heap::c_malloc`).
#[inline(always)]
unsafe fn own_c_malloc(size: usize, align: usize) -> *mut c_void {
    rec::heap::c_malloc(size, align).cast()
}

// ---- set-up and tear-down --------------------------------------------------------------------

unsafe fn usable_size(p: *mut u8) -> usize {
    match next() {
        Some(n) => (n.usable_size)(p.cast()),
        None => 0,
    }
}

fn marker() {}

pub(crate) static FRONT: FrontEnd = FrontEnd {
    usable_size,
    own_code: marker,
    auto_start: true,
};

/// The next allocator (resolved, and the recorder told about us, on the first call).
#[inline(always)]
fn ready() -> Option<&'static Next> {
    next()
}

extern "C" fn on_load() {
    if rec::secure_execution() {
        // setuid, setgid or file capabilities: nothing is recorded (the recorder checks too), and
        // no handler is installed. The hooks pass every call straight through.
        return;
    }
    ready();
    // SAFETY: dlsym lookups of libc functions with their C signatures; sigaction calls.
    unsafe {
        next_getattr();
        real::resolve_exits();
        signals::install();
    }
    rec::start_writer();
}

extern "C" fn on_unload() {
    if LAST_AT_EXIT.load(std::sync::atomic::Ordering::Acquire) {
        // `last_at_exit` ends the dump, after every other library's destructor.
        return;
    }
    end_at_exit();
}

fn end_at_exit() {
    // An `exit` through our hook has noted its caller; a return from main has not.
    rec::finish_from(EndReason::Exit, -1, main_returned());
}

/// Set once `last_at_exit` is registered: the dump then ends there, not in our destructor.
static LAST_AT_EXIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The end of the dump at `exit`: the leak check and the `End` record. Registered with
/// `__cxa_atexit` before glibc's `__libc_start_main` registers the loader's `_dl_fini`, so it
/// runs after it, once every module's destructors have run. Our own destructor runs inside
/// `_dl_fini`, in the reverse order of the constructors, and a library initialised before ours
/// (tar's libselinux, any library the program links) is finalised after it: what its
/// destructor freed stayed live in the dump, and its frees made the dump say that another
/// thread was still allocating when the process ended.
extern "C" fn last_at_exit(_: *mut c_void) {
    end_at_exit();
}

extern "C" {
    fn __cxa_atexit(f: extern "C" fn(*mut c_void), arg: *mut c_void, dso: *mut c_void) -> c_int;
}

// The constructor starts the writer thread once the C runtime is up; the dump ends after the
// program's own atexit handlers and every module's destructors (`last_at_exit`), so their frees
// are in the dump.
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = on_load;
#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = on_unload;

// ---- the allocator hooks ---------------------------------------------------------------------

// Each hook of a call that sampled recording usually leaves out starts with its fast path:
// `rec::countdown_skips` (the thread's countdown in its TLS word: the block is certainly not
// sampled) before the allocation, `rec::free_surely_unheld` (the live set's filter: the block
// was never sampled) before a free, then the check that the block is not the recorder's own
// (`heap::surely_not_ours`), and the real function, called directly: a tail
// call for free, whatever the allocator (its mappings are told from the program's by their
// caller, in maps.c, not by marking the calls into it). Anything else (a pick, a failure, every other mode) goes to the full
// hook, out of line, so that the fast path keeps no frame it does not need.

#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    if rec::countdown_skips(size) {
        // SAFETY: a running countdown means this thread recorded through a hook: resolved.
        let p = (real::resolved().malloc)(size);
        if !p.is_null() {
            return p;
        }
        return alloc_failed(AllocKind::Malloc, size);
    }
    if rec::countdown_skips_all(size) {
        return tracked((real::resolved().malloc)(size), AllocKind::Malloc, size);
    }
    malloc_full(size)
}

/// `--all-blocks`, a block the countdown let through ([`rec::countdown_skips_all`]): tracked
/// without a stack; a failure is recorded as ever.
#[inline(always)]
unsafe fn tracked(p: *mut c_void, kind: AllocKind, size: usize) -> *mut c_void {
    if p.is_null() {
        return alloc_failed(kind, size);
    }
    // The usable size is the requested one here, not the allocator's: an unsampled block's is
    // never read (the leak check scans `size` bytes, the reports leave unsampled blocks out of
    // every per-site figure), and asking jemalloc for it cost ~40 instructions a `malloc`.
    rec::track_unsampled(p.cast(), size, size);
    p
}

/// A failed allocation on a fast path: recorded as ever (its stack, a `Failed` event).
#[cold]
#[inline(never)]
unsafe fn alloc_failed(kind: AllocKind, size: usize) -> *mut c_void {
    rec::on_alloc(kind, std::ptr::null_mut(), size);
    std::ptr::null_mut()
}

#[inline(never)]
unsafe extern "C" fn malloc_full(size: usize) -> *mut c_void {
    let Some(n) = ready() else {
        return real::bootstrap_alloc(size, 16);
    };
    if recorder_inside() {
        let p = own_c_malloc(size, 16);
        if !p.is_null() {
            return p;
        }
    }
    let p = (n.malloc)(size);
    rec::on_alloc(AllocKind::Malloc, p.cast(), size);
    p
}

#[no_mangle]
pub unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    if let Some(total) = count.checked_mul(size) {
        if rec::countdown_skips(total) {
            // SAFETY: as in `malloc`.
            let p = (real::resolved().calloc)(count, size);
            if !p.is_null() {
                return p;
            }
            return alloc_failed(AllocKind::Calloc, total);
        }
        if rec::countdown_skips_all(total) {
            let p = (real::resolved().calloc)(count, size);
            return tracked(p, AllocKind::Calloc, total);
        }
    }
    calloc_full(count, size)
}

#[inline(never)]
unsafe extern "C" fn calloc_full(count: usize, size: usize) -> *mut c_void {
    let Some(n) = ready() else {
        // dlsym asks for memory while we look the allocator up: zeroed.
        return match count.checked_mul(size) {
            Some(total) => real::bootstrap_alloc(total, 16),
            None => std::ptr::null_mut(),
        };
    };
    if recorder_inside() {
        if let Some(total) = count.checked_mul(size) {
            let p = own_c_malloc(total, 16);
            if !p.is_null() {
                p.cast::<u8>().write_bytes(0, total);
                return p;
            }
        }
    }
    let p = (n.calloc)(count, size);
    rec::on_alloc(AllocKind::Calloc, p.cast(), count.saturating_mul(size));
    p
}

/// Not the recorder's own block (start-up blocks are, see `real::bootstrap_alloc`), and the next
/// allocator known: the real function may have the block (the rest of a fast path's
/// conditions). One compare (see `heap::surely_not_ours`); null passes.
#[inline(always)]
fn programs_block(p: *mut c_void) -> bool {
    rec::heap::surely_not_ours(p.cast())
}

#[no_mangle]
pub unsafe extern "C" fn realloc(old: *mut c_void, size: usize) -> *mut c_void {
    // The countdown last: it counts the block when it answers yes.
    if rec::realloc_old_unheld(old.cast()) && programs_block(old) && rec::countdown_skips(size) {
        // SAFETY: resolved (`programs_block`).
        let p = (real::resolved().realloc)(old, size);
        if p.is_null() {
            // Failed (or glibc's realloc(p, 0), a free): the full path's end of it.
            rec::realloc_unheld_end(old.cast(), AllocKind::Realloc, p.cast(), size);
        }
        return p;
    }
    do_realloc(old, size, AllocKind::Realloc)
}

unsafe fn do_realloc(old: *mut c_void, size: usize, kind: AllocKind) -> *mut c_void {
    if rec::heap::contains(old.cast()) {
        // The recorder's own block: it stays in the recorder's heap.
        if size == 0 {
            rec::heap::c_free(old.cast());
            return std::ptr::null_mut();
        }
        return rec::heap::c_realloc(old.cast(), size).cast();
    }
    let Some(n) = ready() else {
        return real::bootstrap_alloc(size, 16);
    };
    if old.is_null() {
        if recorder_inside() {
            let p = own_c_malloc(size, 16);
            if !p.is_null() {
                return p;
            }
        }
        let p = (n.realloc)(old, size);
        rec::on_alloc(kind, p.cast(), size);
        return p;
    }
    if rec::realloc_old_unheld(old.cast()) {
        // Sampled recording, the old block not sampled (the usual case): no begin/end pair.
        let p = (n.realloc)(old, size);
        rec::realloc_unheld_end(old.cast(), kind, p.cast(), size);
        return p;
    }
    let tok = rec::realloc_begin(old.cast());
    let p = (n.realloc)(old, size);
    rec::realloc_end(tok, kind, p.cast(), size);
    p
}

#[no_mangle]
pub unsafe extern "C" fn reallocarray(old: *mut c_void, count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        Some(total) => do_realloc(old, total, AllocKind::Reallocarray),
        None => {
            *libc::__errno_location() = libc::ENOMEM;
            std::ptr::null_mut()
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if rec::free_surely_unheld(p.cast()) && programs_block(p) {
        // SAFETY: resolved (`programs_block`).
        return (real::resolved().free)(p);
    }
    if rec::tracking_all_blocks() {
        return free_tracked(p);
    }
    free_full(p)
}

/// `--all-blocks`: the block leaves the live set first (see `rec::on_free`), then the real free.
/// Out of line, as `free_full`, so that `free` itself keeps no frame.
#[inline(never)]
unsafe extern "C" fn free_tracked(p: *mut c_void) {
    if p.is_null() || !programs_block(p) {
        return free_full(p);
    }
    rec::forget_block(p.cast());
    // SAFETY: resolved (`programs_block`).
    (real::resolved().free)(p)
}

// `extern "C"` (it cannot unwind): the hooks then reach it with a tail call, and keep no frame.
#[inline(never)]
unsafe extern "C" fn free_full(p: *mut c_void) {
    if rec::heap::contains(p.cast()) {
        rec::heap::c_free(p.cast());
        return;
    }
    let Some(n) = ready() else { return };
    rec::on_free(p.cast());
    (n.free)(p);
}

#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // jemalloc programs (Redis's zmalloc) ask it on every malloc and free: one compare and a
    // tail call. Null too: the real function answers 0 for it.
    if programs_block(p) {
        // SAFETY: resolved (`programs_block`).
        return (real::resolved().usable_size)(p);
    }
    usable_size_full(p)
}

#[inline(never)]
unsafe extern "C" fn usable_size_full(p: *mut c_void) -> usize {
    if rec::heap::contains(p.cast()) {
        return rec::heap::c_size(p.cast());
    }
    match ready() {
        Some(n) if !p.is_null() => (n.usable_size)(p),
        _ => 0,
    }
}

unsafe fn aligned(kind: AllocKind, align: usize, size: usize) -> *mut c_void {
    let Some(n) = ready() else {
        return real::bootstrap_alloc(size, align);
    };
    if recorder_inside() && align.is_power_of_two() {
        let p = own_c_malloc(size, align);
        if !p.is_null() {
            return p;
        }
    }
    let p = (n.memalign)(align, size);
    rec::on_alloc(kind, p.cast(), size);
    p
}

#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    aligned(AllocKind::Memalign, align, size)
}

#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    let Some(n) = ready() else {
        return real::bootstrap_alloc(size, align);
    };
    if recorder_inside() && align.is_power_of_two() {
        let p = own_c_malloc(size, align);
        if !p.is_null() {
            return p;
        }
    }
    let p = (n.aligned_alloc)(align, size);
    rec::on_alloc(AllocKind::AlignedAlloc, p.cast(), size);
    p
}

#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    aligned(AllocKind::Valloc, real::page_size(), size)
}

#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    // pvalloc rounds the size up to whole pages; built on memalign so that any allocator that
    // has memalign serves it (jemalloc has no pvalloc, and glibc's would use the wrong heap).
    let page = real::page_size();
    let rounded = size.max(1).div_ceil(page).saturating_mul(page);
    aligned(AllocKind::Pvalloc, page, rounded)
}

#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    let Some(n) = ready() else {
        *out = real::bootstrap_alloc(size, align);
        return 0;
    };
    if recorder_inside() && align.is_power_of_two() && align >= std::mem::size_of::<usize>() {
        let p = own_c_malloc(size, align);
        if !p.is_null() {
            *out = p;
            return 0;
        }
    }
    let rc = (n.posix_memalign)(out, align, size);
    let p = if rc == 0 { *out } else { std::ptr::null_mut() };
    rec::on_alloc(AllocKind::PosixMemalign, p.cast(), size);
    rc
}

// ---- the program's own mappings: roots of the leak check ----------------------------------------

/// `mmap` itself: the raw system call (what glibc's does on x86-64). Not the next `mmap` found
/// by `dlsym`: a call may come from inside the allocator while it is being looked up.
unsafe fn sys_mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    libc::syscall(
        libc::SYS_mmap,
        addr,
        len,
        prot as libc::c_long,
        flags as libc::c_long,
        fd as libc::c_long,
        off,
    ) as *mut c_void
}

// The C entry points (maps.c) call these with their caller's address: an allocator's own
// mappings (its heap) are told from the program's by it (`real::in_allocator`).

extern "C" {
    // maps.c: the exported hooks, named here for `deepbind` (`mmap64` is an alias of `mmap`).
    pub fn mmap(
        addr: *mut c_void,
        len: usize,
        prot: c_int,
        flags: c_int,
        fd: c_int,
        off: libc::off_t,
    ) -> *mut c_void;
    pub fn munmap(addr: *mut c_void, len: usize) -> c_int;
    pub fn mremap(
        old: *mut c_void,
        old_len: usize,
        new_len: usize,
        flags: c_int,
        ...
    ) -> *mut c_void;
}

#[no_mangle]
pub unsafe extern "C" fn zmtrace_mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
    caller: *const c_void,
) -> *mut c_void {
    let p = sys_mmap(addr, len, prot, flags, fd, off);
    if p != libc::MAP_FAILED {
        rec::on_mmap(p.cast(), len, prot, flags, real::in_allocator(caller));
    }
    p
}

#[no_mangle]
pub unsafe extern "C" fn zmtrace_munmap(
    addr: *mut c_void,
    len: usize,
    caller: *const c_void,
) -> c_int {
    // Numbered before the call: once the range is gone, another thread may map it.
    let seq = rec::unmap_begin(real::in_allocator(caller));
    let rc = libc::syscall(libc::SYS_munmap, addr, len) as c_int;
    if rc == 0 {
        rec::on_munmap(addr.cast(), len, seq);
    }
    rc
}

/// `void *mremap(void *old, size_t old_len, size_t new_len, int flags, ... /* void *new */)`:
/// maps.c reads the variadic fifth argument only with `MREMAP_FIXED`, as the kernel does, and
/// passes null otherwise.
#[no_mangle]
pub unsafe extern "C" fn zmtrace_mremap(
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    fixed: *mut c_void,
    caller: *const c_void,
) -> *mut c_void {
    let allocator = real::in_allocator(caller);
    // The old range leaves before the call (see `zmtrace_munmap`).
    let out_seq = rec::unmap_begin(allocator);
    let p = libc::syscall(
        libc::SYS_mremap,
        old,
        old_len,
        new_len,
        flags as libc::c_long,
        fixed,
    ) as *mut c_void;
    if p != libc::MAP_FAILED {
        // With MREMAP_DONTUNMAP the old range stays mapped (emptied): nothing of it left, as for
        // an `old_len` of 0 (a second mapping of shared pages).
        let gone = if flags & libc::MREMAP_DONTUNMAP != 0 {
            0
        } else {
            old_len
        };
        rec::on_mremap(old.cast(), gone, p.cast(), new_len, allocator, out_seq);
    }
    p
}

// ---- threads --------------------------------------------------------------------------------

type GetattrFn = unsafe extern "C" fn(libc::pthread_t, *mut libc::pthread_attr_t) -> c_int;

/// The next `pthread_getattr_np`, looked up by [`on_load`] (not inside a hook: `dlsym` takes
/// the loader's lock), or 0.
static NEXT_GETATTR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

unsafe fn next_getattr() -> GetattrFn {
    let mut f = NEXT_GETATTR.load(std::sync::atomic::Ordering::Acquire);
    if f == 0 {
        f = real::sym::<GetattrFn>(c"pthread_getattr_np") as usize;
        NEXT_GETATTR.store(f, std::sync::atomic::Ordering::Release);
    }
    // SAFETY: the address of the next `pthread_getattr_np`, of this signature.
    std::mem::transmute::<usize, GetattrFn>(f)
}

/// Interposed so that a thread asking for its own attributes is claimed by the recorder first
/// (see `rec::claim_current_thread`): glibc's holds the thread's lock while it allocates, and a
/// first event there would deadlock on it (the recorder asks the same function for the stack).
#[no_mangle]
pub unsafe extern "C" fn pthread_getattr_np(
    thread: libc::pthread_t,
    attr: *mut libc::pthread_attr_t,
) -> c_int {
    if libc::pthread_equal(thread, libc::pthread_self()) != 0 {
        rec::claim_current_thread();
    }
    next_getattr()(thread, attr)
}

// ---- process events: exit, abort, exec, dlopen ------------------------------------------------

// `exit`, `_exit`, `_Exit` and `zmtrace_leak_check` themselves are in `entry.S`: they pass the
// caller's stack pointer and registers to the halves below (see `rec::Entry`).

unsafe fn entry(sp: u64, regs: *const [u64; 6]) -> rec::Entry {
    rec::Entry { sp, regs: *regs }
}

#[no_mangle]
pub unsafe extern "C" fn zmtrace_exit_entry(status: c_int, sp: u64, regs: *const [u64; 6]) -> ! {
    // The check runs later, from the library destructor, on this thread.
    rec::note_exit_entry(entry(sp, regs));
    (real::exit_fn(c"exit"))(status)
}

#[no_mangle]
pub unsafe extern "C" fn zmtrace_underscore_exit_entry(
    status: c_int,
    sp: u64,
    regs: *const [u64; 6],
) -> ! {
    rec::finish_from(EndReason::UnderscoreExit, status, Some(entry(sp, regs)));
    (real::exit_fn(c"_exit"))(status)
}

#[no_mangle]
pub unsafe extern "C" fn zmtrace_underscore_Exit_entry(
    status: c_int,
    sp: u64,
    regs: *const [u64; 6],
) -> ! {
    rec::finish_from(EndReason::UnderscoreExit, status, Some(entry(sp, regs)));
    (real::exit_fn(c"_Exit"))(status)
}

#[no_mangle]
pub unsafe extern "C" fn abort() -> ! {
    rec::finish(EndReason::Abort, -1);
    (real::abort_fn())()
}

type MainFn = unsafe extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char, *mut c_void) -> c_int;
type StartMainFn = unsafe extern "C" fn(
    MainFn,
    c_int,
    *mut *mut c_char,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    *mut c_void,
) -> c_int;

extern "C" {
    // entry.S: the trampoline main is entered through, and what it notes.
    fn zmtrace_main_trampoline(
        argc: c_int,
        argv: *mut *mut c_char,
        envp: *mut *mut c_char,
        auxv: *mut c_void,
    ) -> c_int;
    static mut zmtrace_real_main: usize;
    static zmtrace_main_sp: u64;
    static zmtrace_main_ret: u64;
    static zmtrace_main_tp: u64;
}

/// glibc's start of a dynamically linked program: `main` is entered through a trampoline that
/// notes where its frame is (see `entry.S`), for the check after a return from `main`. The
/// trampoline jumps to `main`: no frame of ours is in the program's stacks.
#[no_mangle]
pub unsafe extern "C" fn __libc_start_main(
    main: MainFn,
    argc: c_int,
    argv: *mut *mut c_char,
    init: *mut c_void,
    fini: *mut c_void,
    rtld_fini: *mut c_void,
    stack_end: *mut c_void,
) -> c_int {
    let real: StartMainFn = real::sym(c"__libc_start_main");
    std::ptr::addr_of_mut!(zmtrace_real_main).write(main as usize);
    // No module handle: a handler of ours would be run by our own destructor's
    // `__cxa_finalize`, before the other modules' destructors.
    if __cxa_atexit(last_at_exit, std::ptr::null_mut(), std::ptr::null_mut()) == 0 {
        LAST_AT_EXIT.store(true, std::sync::atomic::Ordering::Release);
    }
    real(
        zmtrace_main_trampoline,
        argc,
        argv,
        init,
        fini,
        rtld_fini,
        stack_end,
    )
}

/// After a return from `main` (on its thread, its return address slot overwritten by the
/// `exit` call of main's caller): that caller's frame, where the check at exit starts. Its
/// registers are the caller's own again (main restored them): none of main's pointers.
fn main_returned() -> Option<rec::Entry> {
    // SAFETY: plain reads of words the trampoline wrote; the slot is in this thread's stack.
    unsafe {
        let sp = std::ptr::addr_of!(zmtrace_main_sp).read();
        if sp == 0 || std::ptr::addr_of!(zmtrace_main_tp).read() != thread_pointer() {
            return None;
        }
        let slot = (sp as *const u64).read_volatile();
        (slot != std::ptr::addr_of!(zmtrace_main_ret).read()).then_some(rec::Entry {
            sp: sp + 8,
            regs: [0; 6],
        })
    }
}

fn thread_pointer() -> u64 {
    let tp: u64;
    // SAFETY: reads the first word of this thread's TCB, which points to itself (x86-64).
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags));
    }
    tp
}

type ExecveFn =
    unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
type FexecveFn = unsafe extern "C" fn(c_int, *const *const c_char, *const *const c_char) -> c_int;

extern "C" {
    static environ: *const *const c_char;
}

/// Writes out the dump before the image is replaced, and makes sure the new image is traced too
/// (its environment keeps `LD_PRELOAD` and the `ZMTRACE_*` settings) and knows it was exec'ed.
/// In a `vfork` child the environment is passed on untouched.
unsafe fn exec_prepare(what: *const c_char, envp: *const *const c_char) -> Option<real::ExecEnv> {
    let name = if what.is_null() {
        String::new()
    } else {
        CStr::from_ptr(what).to_string_lossy().into_owned()
    };
    if rec::before_exec(&name) {
        Some(real::ExecEnv::new(envp))
    } else {
        None
    }
}

fn env_ptr(env: &Option<real::ExecEnv>, given: *const *const c_char) -> *const *const c_char {
    env.as_ref().map_or(given, |e| e.as_ptr())
}

#[no_mangle]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let env = exec_prepare(path, envp);
    let f: ExecveFn = real::sym(c"execve");
    f(path, argv, env_ptr(&env, envp))
}

#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    execve(path, argv, environ)
}

#[no_mangle]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let env = exec_prepare(file, envp);
    let f: ExecveFn = real::sym(c"execvpe");
    f(file, argv, env_ptr(&env, envp))
}

#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    execvpe(file, argv, environ)
}

#[no_mangle]
pub unsafe extern "C" fn fexecve(
    fd: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let env = exec_prepare(c"(fexecve)".as_ptr(), envp);
    let f: FexecveFn = real::sym(c"fexecve");
    f(fd, argv, env_ptr(&env, envp))
}

#[no_mangle]
pub unsafe extern "C" fn dlopen(file: *const c_char, flags: c_int) -> *mut c_void {
    let f: unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void = real::sym(c"dlopen");
    if flags & libc::RTLD_DEEPBIND == 0 {
        let h = f(file, flags);
        rec::modules_changed();
        return h;
    }
    // Its allocator calls would bind to libc's, past us: point them at our hooks.
    let before = deepbind::loaded();
    let h = f(file, flags);
    if !h.is_null() {
        deepbind::rebind_new(&before);
    }
    rec::modules_changed();
    h
}

#[no_mangle]
pub unsafe extern "C" fn dlclose(handle: *mut c_void) -> c_int {
    let f: unsafe extern "C" fn(*mut c_void) -> c_int = real::sym(c"dlclose");
    let rc = f(handle);
    rec::modules_changed();
    rc
}

// ---- leak checks on request ------------------------------------------------------------------

/// `long zmtrace_leak_check(void)` (in `entry.S`, which calls this with its caller's frame):
/// classifies the blocks live now (definitely, indirectly, possibly lost, still reachable) and
/// writes the result to the dump. Returns the bytes definitely and indirectly lost, or -1 when
/// nothing is being recorded. A program finds it with `dlsym(RTLD_DEFAULT,
/// "zmtrace_leak_check")` or a weak declaration, so that it also runs untraced.
#[no_mangle]
pub unsafe extern "C" fn zmtrace_leak_check_entry(
    sp: u64,
    regs: *const [u64; 6],
) -> std::ffi::c_long {
    match rec::leak_check_from(Some(entry(sp, regs))) {
        Some(t) => {
            let lost = t[rec::LeakKind::Definite as usize].bytes
                + t[rec::LeakKind::Indirect as usize].bytes;
            lost.min(std::ffi::c_long::MAX as u64) as std::ffi::c_long
        }
        None => -1,
    }
}

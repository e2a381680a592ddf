//! Redis's `zmalloc` API (`include/zmalloc.h`), instrumented: a drop-in for a C project's own
//! `zmalloc.c`, writing the same dumps as the preload library when tracing is on.
//!
//! Each exported function reads its stack pointer on entry and hands it to the recorder
//! ([`Skip::Below`]), so a recorded stack starts at the `z*` function's caller: the wrapper's own
//! frames never show. With tracing off, the cost over `malloc` is Redis's own (the size lookup
//! and the `used_memory` update) plus one load.
//!
//! The semantics are Redis 7's `zmalloc.c`, edge cases included (see the header). The layout is a
//! build option: by default the allocator reports a block's size (`malloc_usable_size`, Redis's
//! `HAVE_MALLOC_SIZE`); with the `prefix-size` feature a `PREFIX_SIZE` header before the block
//! holds it.

// The exported functions are the C API documented in zmalloc.h; their safety contract is the C
// one (pointers from this API, or NULL), not restated on each.
#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use zmtrace_recorder::{self as rec, AllocKind, FrontEnd, Skip};

/// The library's own Rust memory (the recorder's tables and buffers) is the recorder's heap,
/// mappings of its own: not the program's `malloc`, whose freed chunks would hand the recorder's
/// words back to the program (and the leak check would take them for pointers). The blocks of
/// the API are the program's, from `malloc` as ever. (C code inside the recorder, zstd, still
/// calls the program's `malloc`: only the preload library can route those.)
#[global_allocator]
static OWN_HEAP: rec::heap::OwnHeap = rec::heap::OwnHeap;

/// Bytes of the size header in the `prefix-size` layout (Redis: `sizeof(size_t)`).
#[cfg(feature = "prefix-size")]
pub const PREFIX_SIZE: usize = std::mem::size_of::<usize>();
#[cfg(not(feature = "prefix-size"))]
pub const PREFIX_SIZE: usize = 0;

/// `zmalloc_used_memory()`: per-thread parts, not one contended atomic (see `ThreadSum`).
static USED_MEMORY: rec::sync::ThreadSum = rec::sync::ThreadSum::new(0);
static OOM_HANDLER: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// Redis's MALLOC_MIN_SIZE: a zero-byte request still gets a `long`.
#[inline]
fn min_size(size: usize) -> usize {
    if size > 0 {
        size
    } else {
        std::mem::size_of::<libc::c_long>()
    }
}

fn usable_size(p: *mut u8) -> usize {
    // SAFETY: called by the recorder for blocks of this API only when it was given no size.
    unsafe { zmalloc_usable_size(p.cast()) }
}

unsafe fn recorder_usable(p: *mut u8) -> usize {
    usable_size(p)
}

fn marker() {}

static FRONT: FrontEnd = FrontEnd {
    usable_size: recorder_usable,
    own_code: marker,
    auto_start: false,
};

static ENV_CHECKED: AtomicBool = AtomicBool::new(false);

/// True when events are to be recorded. The first call registers with the recorder and starts
/// tracing if the environment asks for it (`ZMTRACE=1`).
#[inline(always)]
fn tracing() -> bool {
    if !ENV_CHECKED.load(Ordering::Relaxed) {
        check_env();
    }
    rec::tracing()
}

#[cold]
fn check_env() {
    if ENV_CHECKED.swap(true, Ordering::AcqRel) {
        return;
    }
    rec::set_front_end(&FRONT);
    if std::env::var_os("ZMTRACE").is_some_and(|v| v == "1") {
        if let Err(e) = rec::start(None).map(drop) {
            eprintln!("zmtrace: {e}; the program goes on untraced");
        }
    }
}

#[cold]
fn oom(size: usize) {
    let h = OOM_HANDLER.load(Ordering::Acquire);
    if h.is_null() {
        let msg = format!("zmalloc: Out of memory trying to allocate {size} bytes\n");
        // The dump ends with the failed allocation that caused this.
        rec::finish(rec::EndReason::Abort, -1);
        // SAFETY: raw writes and abort: the heap may be exhausted.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::abort();
        }
    }
    // SAFETY: set by zmalloc_set_oom_handler to a `void (*)(size_t)`.
    let h: extern "C" fn(usize) = unsafe { std::mem::transmute(h) };
    h(size);
}

// ---- the implementation, shared by the exported functions --------------------------------------

/// malloc or calloc of `size` bytes, Redis's ztrymalloc_usable / ztrycalloc_usable.
#[inline(always)]
unsafe fn try_alloc(size: usize, zeroed: bool, usable: *mut usize, sp: u64) -> *mut c_void {
    let kind = if zeroed {
        AllocKind::Calloc
    } else {
        AllocKind::Malloc
    };
    // Possible overflow: fail, so that the caller can panic or handle it.
    if size >= usize::MAX / 2 {
        if tracing() {
            rec::record_alloc(kind, std::ptr::null_mut(), size, None, Skip::Below(sp));
        }
        return std::ptr::null_mut();
    }
    let n = min_size(size) + PREFIX_SIZE;
    let raw = if zeroed {
        libc::calloc(1, n)
    } else {
        libc::malloc(n)
    };
    if raw.is_null() {
        if tracing() {
            rec::record_alloc(kind, std::ptr::null_mut(), size, None, Skip::Below(sp));
        }
        return std::ptr::null_mut();
    }
    let (ptr, got) = if cfg!(feature = "prefix-size") {
        let s = min_size(size);
        (raw as *mut usize).write_unaligned(s);
        USED_MEMORY.add((s + PREFIX_SIZE) as i64);
        (raw.cast::<u8>().add(PREFIX_SIZE).cast::<c_void>(), s)
    } else {
        let s = libc::malloc_usable_size(raw);
        USED_MEMORY.add(s as i64);
        (raw, s)
    };
    if !usable.is_null() {
        *usable = got;
    }
    if tracing() {
        rec::record_alloc(kind, ptr.cast(), size, Some(got), Skip::Below(sp));
    }
    ptr
}

/// Redis's zfree / zfree_usable.
#[inline(always)]
unsafe fn free_impl(ptr: *mut c_void, usable: *mut usize) {
    if ptr.is_null() {
        if tracing() {
            rec::on_free(std::ptr::null_mut());
        }
        return;
    }
    if tracing() {
        // Before the real free: the address may be handed out again at once.
        rec::on_free(ptr.cast());
    }
    if cfg!(feature = "prefix-size") {
        let real = ptr.cast::<u8>().sub(PREFIX_SIZE);
        let old = (real as *const usize).read_unaligned();
        USED_MEMORY.add(-((old + PREFIX_SIZE) as i64));
        if !usable.is_null() {
            *usable = old;
        }
        libc::free(real.cast());
    } else {
        let old = libc::malloc_usable_size(ptr);
        USED_MEMORY.add(-(old as i64));
        if !usable.is_null() {
            *usable = old;
        }
        libc::free(ptr);
    }
}

/// Redis 7's ztryrealloc_usable.
#[inline(always)]
unsafe fn try_realloc(ptr: *mut c_void, size: usize, usable: *mut usize, sp: u64) -> *mut c_void {
    let set_usable = |v: usize| {
        if !usable.is_null() {
            *usable = v;
        }
    };
    // Not allocating anything: just a free.
    if size == 0 && !ptr.is_null() {
        free_impl(ptr, std::ptr::null_mut());
        set_usable(0);
        return std::ptr::null_mut();
    }
    // Not freeing anything: just an allocation.
    if ptr.is_null() {
        return try_alloc(size, false, usable, sp);
    }
    // Possible overflow: fail, and (as Redis 7 does) free the old block.
    if size >= usize::MAX / 2 {
        if tracing() {
            rec::record_alloc(
                AllocKind::Realloc,
                std::ptr::null_mut(),
                size,
                None,
                Skip::Below(sp),
            );
        }
        free_impl(ptr, std::ptr::null_mut());
        set_usable(0);
        return std::ptr::null_mut();
    }
    let traced = tracing();
    let tok = if traced {
        Some(rec::realloc_begin(ptr.cast()))
    } else {
        None
    };
    let (new, got) = if cfg!(feature = "prefix-size") {
        let real = ptr.cast::<u8>().sub(PREFIX_SIZE);
        let old = (real as *const usize).read_unaligned();
        let raw = libc::realloc(real.cast(), size + PREFIX_SIZE);
        if raw.is_null() {
            (std::ptr::null_mut(), 0)
        } else {
            (raw as *mut usize).write_unaligned(size);
            USED_MEMORY.add(size as i64 - old as i64);
            (raw.cast::<u8>().add(PREFIX_SIZE).cast::<c_void>(), size)
        }
    } else {
        let old = libc::malloc_usable_size(ptr);
        let raw = libc::realloc(ptr, size);
        if raw.is_null() {
            (std::ptr::null_mut(), 0)
        } else {
            let s = libc::malloc_usable_size(raw);
            USED_MEMORY.add(s as i64 - old as i64);
            (raw, s)
        }
    };
    if let Some(tok) = tok {
        let u = if new.is_null() { None } else { Some(got) };
        rec::record_realloc(
            tok,
            AllocKind::Realloc,
            new.cast(),
            size,
            u,
            Skip::Below(sp),
        );
    }
    set_usable(got);
    new
}

// ---- the C API -------------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn ztrymalloc_usable(size: usize, usable: *mut usize) -> *mut c_void {
    try_alloc(size, false, usable, rec::stack_pointer())
}

#[no_mangle]
pub unsafe extern "C" fn ztrymalloc(size: usize) -> *mut c_void {
    try_alloc(size, false, std::ptr::null_mut(), rec::stack_pointer())
}

#[no_mangle]
pub unsafe extern "C" fn zmalloc(size: usize) -> *mut c_void {
    let p = try_alloc(size, false, std::ptr::null_mut(), rec::stack_pointer());
    if p.is_null() {
        oom(size);
    }
    p
}

#[no_mangle]
pub unsafe extern "C" fn zmalloc_usable(size: usize, usable: *mut usize) -> *mut c_void {
    let p = try_alloc(size, false, usable, rec::stack_pointer());
    if p.is_null() {
        oom(size);
    }
    p
}

#[no_mangle]
pub unsafe extern "C" fn ztrycalloc_usable(size: usize, usable: *mut usize) -> *mut c_void {
    try_alloc(size, true, usable, rec::stack_pointer())
}

#[no_mangle]
pub unsafe extern "C" fn ztrycalloc(size: usize) -> *mut c_void {
    try_alloc(size, true, std::ptr::null_mut(), rec::stack_pointer())
}

#[no_mangle]
pub unsafe extern "C" fn zcalloc(size: usize) -> *mut c_void {
    let p = try_alloc(size, true, std::ptr::null_mut(), rec::stack_pointer());
    if p.is_null() {
        oom(size);
    }
    p
}

#[no_mangle]
pub unsafe extern "C" fn zcalloc_usable(size: usize, usable: *mut usize) -> *mut c_void {
    let p = try_alloc(size, true, usable, rec::stack_pointer());
    if p.is_null() {
        oom(size);
    }
    p
}

#[no_mangle]
pub unsafe extern "C" fn ztryrealloc_usable(
    ptr: *mut c_void,
    size: usize,
    usable: *mut usize,
) -> *mut c_void {
    try_realloc(ptr, size, usable, rec::stack_pointer())
}

#[no_mangle]
pub unsafe extern "C" fn ztryrealloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    try_realloc(ptr, size, std::ptr::null_mut(), rec::stack_pointer())
}

#[no_mangle]
pub unsafe extern "C" fn zrealloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    let p = try_realloc(ptr, size, std::ptr::null_mut(), rec::stack_pointer());
    if p.is_null() && size != 0 {
        oom(size);
    }
    p
}

#[no_mangle]
pub unsafe extern "C" fn zrealloc_usable(
    ptr: *mut c_void,
    size: usize,
    usable: *mut usize,
) -> *mut c_void {
    let p = try_realloc(ptr, size, usable, rec::stack_pointer());
    if p.is_null() && size != 0 {
        oom(size);
    }
    p
}

#[no_mangle]
pub unsafe extern "C" fn zfree(ptr: *mut c_void) {
    free_impl(ptr, std::ptr::null_mut())
}

#[no_mangle]
pub unsafe extern "C" fn zfree_usable(ptr: *mut c_void, usable: *mut usize) {
    free_impl(ptr, usable)
}

#[no_mangle]
pub unsafe extern "C" fn zstrdup(s: *const c_char) -> *mut c_char {
    let l = libc::strlen(s) + 1;
    let p = try_alloc(l, false, std::ptr::null_mut(), rec::stack_pointer());
    if p.is_null() {
        oom(l);
        return std::ptr::null_mut();
    }
    std::ptr::copy_nonoverlapping(s.cast::<u8>(), p.cast::<u8>(), l);
    p.cast()
}

#[no_mangle]
pub extern "C" fn zmalloc_used_memory() -> usize {
    USED_MEMORY.total().max(0) as usize
}

#[no_mangle]
pub extern "C" fn zmalloc_set_oom_handler(handler: Option<extern "C" fn(usize)>) {
    let p = handler.map_or(std::ptr::null_mut(), |h| h as *mut c_void);
    OOM_HANDLER.store(p, Ordering::Release);
}

#[no_mangle]
pub unsafe extern "C" fn zmalloc_size(ptr: *mut c_void) -> usize {
    if ptr.is_null() {
        return 0;
    }
    if cfg!(feature = "prefix-size") {
        let real = ptr.cast::<u8>().sub(PREFIX_SIZE);
        (real as *const usize).read_unaligned() + PREFIX_SIZE
    } else {
        libc::malloc_usable_size(ptr)
    }
}

#[no_mangle]
pub unsafe extern "C" fn zmalloc_usable_size(ptr: *mut c_void) -> usize {
    if ptr.is_null() {
        return 0;
    }
    zmalloc_size(ptr) - PREFIX_SIZE
}

#[no_mangle]
pub extern "C" fn zmalloc_layout() -> *const c_char {
    if cfg!(feature = "prefix-size") {
        c"prefix_size".as_ptr()
    } else {
        c"usable_size".as_ptr()
    }
}

// ---- tracing control ----------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn zmtrace_start(dir: *const c_char) -> c_int {
    ENV_CHECKED.store(true, Ordering::Release);
    rec::set_front_end(&FRONT);
    let dir = if dir.is_null() {
        None
    } else {
        Some(std::ffi::CStr::from_ptr(dir).to_string_lossy().into_owned())
    };
    match rec::start(dir.as_deref()) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("zmtrace: {e}");
            -1
        }
    }
}

#[no_mangle]
pub extern "C" fn zmtrace_stop() {
    rec::stop();
}

#[no_mangle]
pub extern "C" fn zmtrace_dump_now() {
    rec::dump_now();
}

/// A leak check now, written to the dump: the bytes definitely and indirectly lost, or -1 when
/// not tracing (see `zmtrace_leak_check` in zmalloc.h).
#[no_mangle]
pub extern "C" fn zmtrace_leak_check() -> std::ffi::c_long {
    match rec::leak_check() {
        Some(t) => {
            let lost = t[rec::LeakKind::Definite as usize].bytes
                + t[rec::LeakKind::Indirect as usize].bytes;
            lost.min(std::ffi::c_long::MAX as u64) as std::ffi::c_long
        }
        None => -1,
    }
}

//! Finding the next allocator in the chain, and the start-up blocks (from the recorder's own
//! heap) that serve the allocations made while we look it up (`dlsym` may call `calloc`, which
//! is us).

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

pub struct Next {
    pub malloc: unsafe extern "C" fn(usize) -> *mut c_void,
    pub calloc: unsafe extern "C" fn(usize, usize) -> *mut c_void,
    pub realloc: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void,
    pub free: unsafe extern "C" fn(*mut c_void),
    pub memalign: unsafe extern "C" fn(usize, usize) -> *mut c_void,
    pub aligned_alloc: unsafe extern "C" fn(usize, usize) -> *mut c_void,
    pub posix_memalign: unsafe extern "C" fn(*mut *mut c_void, usize, usize) -> c_int,
    pub usable_size: unsafe extern "C" fn(*mut c_void) -> usize,
}

struct NextCell(UnsafeCell<Option<Next>>);
unsafe impl Sync for NextCell {}
static NEXT: NextCell = NextCell(UnsafeCell::new(None));
const UNRESOLVED: u8 = 0;
const RESOLVING: u8 = 1;
const RESOLVED: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNRESOLVED);

/// The next allocator, or `None` while it is being looked up (use `bootstrap_alloc` then).
#[inline(always)]
pub fn next() -> Option<&'static Next> {
    if STATE.load(Ordering::Acquire) == RESOLVED {
        // SAFETY: written once before RESOLVED was published, never again.
        return unsafe { (*NEXT.0.get()).as_ref() };
    }
    resolve()
}

#[cold]
fn resolve() -> Option<&'static Next> {
    if STATE
        .compare_exchange(UNRESOLVED, RESOLVING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Looked up right now by this thread (dlsym allocating) or another one: `bootstrap_alloc`.
        return None;
    }
    // Before anything else of ours runs: the mappings there now are the loader's and the
    // program's, not the allocator's (it has not run yet).
    zmtrace_recorder::mappings_at_start();
    // SAFETY: dlsym of the standard allocator symbols; each has the C signature given in Next.
    unsafe {
        let n = Next {
            malloc: sym(c"malloc"),
            calloc: sym(c"calloc"),
            realloc: sym(c"realloc"),
            free: sym(c"free"),
            memalign: sym(c"memalign"),
            aligned_alloc: sym(c"aligned_alloc"),
            posix_memalign: sym(c"posix_memalign"),
            usable_size: sym(c"malloc_usable_size"),
        };
        // glibc's malloc maps its memory with internal calls that never reach our `mmap`; any
        // other allocator's calls must be told apart from the program's (see `in_allocator`).
        let libc_malloc = libc::dlsym(libc::RTLD_DEFAULT, c"__libc_malloc".as_ptr());
        let foreign = libc_malloc.is_null() || libc_malloc as usize != n.malloc as usize;
        if foreign {
            if let Some((lo, hi)) = code_span_of(n.malloc as usize) {
                ALLOCATOR_CODE[0].store(lo, Ordering::Relaxed);
                ALLOCATOR_CODE[1].store(hi, Ordering::Relaxed);
            }
        }
        FOREIGN_ALLOCATOR.store(foreign, Ordering::Release);
        *NEXT.0.get() = Some(n);
        STATE.store(RESOLVED, Ordering::Release);
        zmtrace_recorder::set_front_end(&crate::FRONT);
        // From now on the fast paths may hand a block to the real allocator.
        zmtrace_recorder::heap::open_fast_paths();
        (*NEXT.0.get()).as_ref()
    }
}

/// The next allocator, known to be resolved: `heap::surely_not_ours` said yes (the fast paths
/// open once it is), or this thread's
/// sampling countdown is running (`rec::countdown_skips` said so), which only a hook that had
/// resolved it can have started.
///
/// # Safety
/// The next allocator is resolved.
#[inline(always)]
pub unsafe fn resolved() -> &'static Next {
    debug_assert_eq!(STATE.load(Ordering::Relaxed), RESOLVED);
    // SAFETY: written once before RESOLVED was published, never again.
    (*NEXT.0.get()).as_ref().unwrap_unchecked()
}

/// True when the next allocator is not glibc's: its calls to `mmap` come through our hook, and
/// are told apart by their caller ([`in_allocator`]).
static FOREIGN_ALLOCATOR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The code of the module that defines the next `malloc` (a foreign allocator's library):
/// the start of its lowest executable segment and the end of its highest.
static ALLOCATOR_CODE: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// True when a mapping call made from `caller` (its return address) is the foreign
/// allocator's: its heap, not one of the program's mappings (a root of the leak check). glibc's
/// malloc maps with internal calls, which never reach our hooks. A call made from anywhere
/// else (the program, another library) is the program's, even while a `malloc` is under way on
/// its thread, and a call from the allocator is the allocator's in any of its functions and on
/// any thread (jemalloc's `mallctl` and `mallocx` map memory too, outside every hook of ours).
pub fn in_allocator(caller: *const c_void) -> bool {
    let c = caller as usize;
    FOREIGN_ALLOCATOR.load(Ordering::Acquire)
        && ALLOCATOR_CODE[0].load(Ordering::Relaxed) <= c
        && c < ALLOCATOR_CODE[1].load(Ordering::Relaxed)
}

/// The executable segments' span of the loaded module whose segments hold `addr`, or None.
/// Through `dl_iterate_phdr`, which neither allocates nor asks for anything the hooks could be
/// holding: called once, from [`resolve`], on the first allocation (before the program has
/// threads of its own that could hold the loader's locks).
fn code_span_of(addr: usize) -> Option<(usize, usize)> {
    struct Find {
        addr: usize,
        span: Option<(usize, usize)>,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: the loader passes a valid info with `dlpi_phnum` headers; `data` is our Find.
        let (info, find) = unsafe { (&*info, &mut *data.cast::<Find>()) };
        let base = info.dlpi_addr as usize;
        let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
        let mut holds = false;
        let (mut lo, mut hi) = (usize::MAX, 0);
        for h in headers.iter().filter(|h| h.p_type == libc::PT_LOAD) {
            let start = base.wrapping_add(h.p_vaddr as usize);
            let end = start.wrapping_add(h.p_memsz as usize);
            holds |= start <= find.addr && find.addr < end;
            if h.p_flags & libc::PF_X != 0 {
                lo = lo.min(start);
                hi = hi.max(end);
            }
        }
        if holds && lo < hi {
            find.span = Some((lo, hi));
            return 1;
        }
        0
    }
    let mut find = Find { addr, span: None };
    // SAFETY: `each` matches the callback's signature and only reads what it is given.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut find as *mut Find).cast()) };
    find.span
}

/// The next definition of `name` after this library.
///
/// # Safety
/// `F` must be a function pointer type matching the symbol's C signature.
pub unsafe fn sym<F: Copy>(name: &CStr) -> F {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    let p = libc::dlsym(libc::RTLD_NEXT, name.as_ptr());
    if p.is_null() {
        let msg = format!(
            "zmtrace: cannot find the next `{}` (dlsym RTLD_NEXT): cannot run\n",
            name.to_string_lossy()
        );
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::syscall(libc::SYS_exit_group, 127);
    }
    std::mem::transmute_copy(&p)
}

static EXIT: AtomicUsize = AtomicUsize::new(0);
static PLAIN_EXIT: AtomicUsize = AtomicUsize::new(0);
static UNDERSCORE_EXIT: AtomicUsize = AtomicUsize::new(0);
static ABORT: AtomicUsize = AtomicUsize::new(0);

/// `dlsym` once, then from the cache: `_exit` may be called in a `vfork` child, which should not
/// run the loader's lookup (or allocate) on its parent's memory.
unsafe fn cached(name: &CStr, slot: &AtomicUsize) -> usize {
    let p = slot.load(Ordering::Acquire);
    if p != 0 {
        return p;
    }
    let f: usize = sym(name);
    slot.store(f, Ordering::Release);
    f
}

/// Looks up the process-ending functions early (from the library constructor).
pub unsafe fn resolve_exits() {
    cached(c"_exit", &EXIT);
    cached(c"exit", &PLAIN_EXIT);
    cached(c"_Exit", &UNDERSCORE_EXIT);
    cached(c"abort", &ABORT);
}

pub unsafe fn exit_fn(name: &CStr) -> unsafe extern "C" fn(c_int) -> ! {
    let slot = if name == c"_exit" {
        &EXIT
    } else if name == c"exit" {
        &PLAIN_EXIT
    } else {
        &UNDERSCORE_EXIT
    };
    std::mem::transmute::<usize, unsafe extern "C" fn(c_int) -> !>(cached(name, slot))
}

pub unsafe fn abort_fn() -> unsafe extern "C" fn() -> ! {
    std::mem::transmute::<usize, unsafe extern "C" fn() -> !>(cached(c"abort", &ABORT))
}

pub fn page_size() -> usize {
    // SAFETY: no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

// ---- start-up blocks -------------------------------------------------------------------------

/// An allocation made while the next allocator is looked up (`dlsym` may ask for memory, through
/// us): served by the recorder's own heap, zeroed (`calloc` may be the caller). Its free, realloc
/// and size go to the full hooks, which find it there (`heap::contains`), as every block of the
/// recorder's own: the fast paths need no separate test for these blocks. Null when that heap
/// cannot serve it (no memory; an alignment that is not a power of two).
pub fn bootstrap_alloc(size: usize, align: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return std::ptr::null_mut();
    }
    // SAFETY: `align` is a power of two; the block is `size` bytes (at least 1) of our own.
    unsafe {
        let p = zmtrace_recorder::heap::c_malloc(size, align);
        if !p.is_null() {
            p.write_bytes(0, size);
        }
        p.cast()
    }
}

// ---- exec ------------------------------------------------------------------------------------

/// The environment for an exec'ed image: the program's own, plus what zmtrace needs if the
/// program dropped it (`LD_PRELOAD`, `ZMTRACE_*`), plus `ZMTRACE_EXEC_FROM=<pid>` so the new image
/// knows it follows an exec.
pub struct ExecEnv {
    _strings: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl ExecEnv {
    /// # Safety
    /// `envp` is null or a NULL-terminated array of C strings.
    pub unsafe fn new(envp: *const *const c_char) -> ExecEnv {
        let mut given: Vec<*const c_char> = Vec::new();
        if !envp.is_null() {
            let mut i = 0;
            while !(*envp.add(i)).is_null() {
                given.push(*envp.add(i));
                i += 1;
            }
        }
        let has = |given: &[*const c_char], key: &str| {
            given.iter().any(|&s| {
                CStr::from_ptr(s)
                    .to_bytes()
                    .strip_prefix(key.as_bytes())
                    .is_some_and(|r| r.first() == Some(&b'='))
            })
        };
        let mut strings = Vec::new();
        for key in [
            "LD_PRELOAD",
            "ZMTRACE_OUT",
            "ZMTRACE_SESSION",
            "ZMTRACE_UNWIND",
            "ZMTRACE_NO_ARGV",
            "ZMTRACE_FREERES",
            "ZMTRACE_HEURISTICS",
        ] {
            if !has(&given, key) {
                if let Some(v) = std::env::var_os(key) {
                    let mut s = key.as_bytes().to_vec();
                    s.push(b'=');
                    s.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()));
                    if let Ok(c) = CString::new(s) {
                        strings.push(c);
                    }
                }
            }
        }
        given.retain(|&s| {
            !CStr::from_ptr(s)
                .to_bytes()
                .starts_with(b"ZMTRACE_EXEC_FROM=")
        });
        if let Ok(c) = CString::new(format!("ZMTRACE_EXEC_FROM={}", libc::getpid())) {
            strings.push(c);
        }
        let mut ptrs = given;
        ptrs.extend(strings.iter().map(|c| c.as_ptr()));
        ptrs.push(std::ptr::null());
        ExecEnv {
            _strings: strings,
            ptrs,
        }
    }

    pub fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }
}

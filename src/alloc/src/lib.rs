//! zmtrace for Rust programs: a global allocator that keeps an exact count of the memory in use
//! and, while a [`Tracing`] guard lives, records every allocation, reallocation and free with its
//! call stack into a zmtrace dump — the same dumps as `zmtrace run`, read by `zmtrace report`,
//! `leaks`, `churn` and `flamegraph`.
//!
//! ```
//! #[global_allocator]
//! static ALLOC: zmtrace::Zmalloc = zmtrace::Zmalloc::system();
//!
//! fn main() {
//!     // Tracing runs until the guard is dropped, which writes the end of the dump.
//!     let tracing = zmtrace::Tracing::start_in(std::env::temp_dir()).expect("dump directory");
//!     let v: Vec<u64> = (0..1000).collect();
//!     assert!(zmtrace::used_memory() >= 8000);
//!     drop(v);
//!     let dump = tracing.dump_path().unwrap().to_owned();
//!     drop(tracing);
//!     // `zmtrace leaks DUMP`, `zmtrace churn DUMP`… read it now.
//!     assert!(std::fs::metadata(&dump).unwrap().len() > 0);
//!     # std::fs::remove_file(dump).unwrap();
//! }
//! ```
//!
//! Without a guard the allocator only counts: a thread-local add and one load per call on top of
//! the inner allocator ([`std::alloc::System`] unless you wrap another).
//!
//! Stacks start at the code that allocated: the allocator's own frames are left out (the frame
//! of the allocation shim and everything below it). The tracer's own memory is not the program's:
//! what the recorder allocates (under its guard) comes from its own heap (`zmtrace_recorder::heap`,
//! mappings of its own), is neither counted in [`used_memory`] nor handed back to the program.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};

use zmtrace_recorder::{self as rec, AllocKind, FrontEnd, Skip};

/// Per-thread parts, not one contended atomic (see `ThreadSum`).
static USED: rec::sync::ThreadSum = rec::sync::ThreadSum::new(1);

/// Bytes allocated through [`Zmalloc`] and not freed yet (the sum of the live blocks' sizes).
pub fn used_memory() -> usize {
    USED.total().max(0) as usize
}

/// The global allocator: wraps `A` (by default the system allocator), counts, and traces.
pub struct Zmalloc<A: GlobalAlloc = System> {
    inner: A,
}

impl Zmalloc<System> {
    /// The system allocator, counted and traceable.
    pub const fn system() -> Zmalloc<System> {
        Zmalloc { inner: System }
    }
}

impl<A: GlobalAlloc> Zmalloc<A> {
    /// Wraps another allocator.
    pub const fn new(inner: A) -> Zmalloc<A> {
        Zmalloc { inner }
    }
}

/// True when the recorder itself allocates (under its guard): its memory is its own heap's
/// ([`rec::heap`]), never the program's allocator, where its freed words would come back to the
/// program in blocks handed out unwritten (and look like pointers to the leak check). Before
/// tracing ever started, one load.
#[inline(always)]
fn recorder_inside() -> bool {
    rec::started() && rec::sync::Guard::is_held()
}

unsafe impl<A: GlobalAlloc> GlobalAlloc for Zmalloc<A> {
    // Inlined into the compiler's allocation shim (`__rust_alloc`…), so the stack pointer read
    // here is the shim's and the recorded stack starts at the code that allocated.
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if recorder_inside() {
            return rec::heap::OwnHeap.alloc(layout);
        }
        let sp = rec::stack_pointer();
        let p = self.inner.alloc(layout);
        if !p.is_null() {
            USED.add(layout.size() as i64);
        }
        if rec::tracing() {
            rec::record_alloc(
                AllocKind::Malloc,
                p,
                layout.size(),
                Some(layout.size()),
                Skip::Below(sp),
            );
        }
        p
    }

    // Inlined into the compiler's allocation shim (`__rust_alloc`…), so the stack pointer read
    // here is the shim's and the recorded stack starts at the code that allocated.
    #[inline(always)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if recorder_inside() {
            return rec::heap::OwnHeap.alloc_zeroed(layout);
        }
        let sp = rec::stack_pointer();
        let p = self.inner.alloc_zeroed(layout);
        if !p.is_null() {
            USED.add(layout.size() as i64);
        }
        if rec::tracing() {
            rec::record_alloc(
                AllocKind::Calloc,
                p,
                layout.size(),
                Some(layout.size()),
                Skip::Below(sp),
            );
        }
        p
    }

    // Inlined into the compiler's allocation shim (`__rust_alloc`…), so the stack pointer read
    // here is the shim's and the recorded stack starts at the code that allocated.
    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if rec::heap::contains(ptr) {
            return rec::heap::OwnHeap.dealloc(ptr, layout);
        }
        if rec::tracing() {
            // Before the real free: the address may be handed out again at once.
            rec::on_free(ptr);
        }
        self.inner.dealloc(ptr, layout);
        USED.add(-(layout.size() as i64));
    }

    // Inlined into the compiler's allocation shim (`__rust_alloc`…), so the stack pointer read
    // here is the shim's and the recorded stack starts at the code that allocated.
    #[inline(always)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if rec::heap::contains(ptr) {
            return rec::heap::OwnHeap.realloc(ptr, layout, new_size);
        }
        let sp = rec::stack_pointer();
        let tok = if rec::tracing() {
            Some(rec::realloc_begin(ptr))
        } else {
            None
        };
        let p = self.inner.realloc(ptr, layout, new_size);
        if !p.is_null() {
            USED.add(new_size as i64 - layout.size() as i64);
        }
        if let Some(tok) = tok {
            let usable = (!p.is_null()).then_some(new_size);
            rec::record_realloc(
                tok,
                AllocKind::Realloc,
                p,
                new_size,
                usable,
                Skip::Below(sp),
            );
        }
        p
    }
}

unsafe fn no_usable_size(_: *mut u8) -> usize {
    0
}

fn marker() {}

static FRONT: FrontEnd = FrontEnd {
    usable_size: no_usable_size,
    own_code: marker,
    auto_start: false,
};

/// Why tracing could not start.
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "zmtrace: {}", self.0)
    }
}

impl std::error::Error for Error {}

/// Traces every allocation while it lives; dropping it writes the end of the dump. One at a
/// time: starting a second while one lives returns the same dump.
///
/// The program must use [`Zmalloc`] as its `#[global_allocator]`, or nothing is recorded.
#[must_use = "tracing stops when the guard is dropped"]
pub struct Tracing {
    path: Option<PathBuf>,
}

impl Tracing {
    /// Starts tracing into `ZMTRACE_OUT`, or the current directory.
    pub fn start() -> Result<Tracing, Error> {
        Tracing::begin(None)
    }

    /// Starts tracing into `dir` (which must exist and be writable).
    pub fn start_in(dir: impl AsRef<Path>) -> Result<Tracing, Error> {
        let dir = dir.as_ref().to_string_lossy().into_owned();
        Tracing::begin(Some(&dir))
    }

    fn begin(dir: Option<&str>) -> Result<Tracing, Error> {
        rec::set_front_end(&FRONT);
        let path = rec::start(dir).map_err(Error)?;
        Ok(Tracing {
            path: Some(PathBuf::from(path)),
        })
    }

    /// The dump being written.
    pub fn dump_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Writes what was recorded so far to the dump now.
    pub fn dump_now(&self) {
        rec::dump_now();
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        rec::stop();
    }
}

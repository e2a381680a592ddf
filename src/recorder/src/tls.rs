//! The recorder's per-thread words (the re-entrancy guard, the thread's state) in one block of
//! initial-exec TLS, reached in two instructions.
//!
//! Why not `thread_local!`: the preload library is a `cdylib`, so rustc compiles its
//! thread-locals with the general-dynamic model (every access calls `__tls_get_addr`, about 15
//! instructions, and the hot path made four such calls per `malloc`: about 65 instructions of
//! the 142 that an untraced `malloc`+`free` pair costs). Stable Rust cannot choose the model
//! (`-Z tls-model` and `#[thread_local]` are nightly-only), so the block is defined here in
//! assembly, in `.tbss`, and addressed the initial-exec way: its offset from the thread pointer
//! comes from a GOT slot that the loader fills once (`R_X86_64_TPOFF64`), and `%fs:0` is the
//! thread pointer.
//!
//! Initial-exec is sound for a library that is loaded with the program: `LD_PRELOAD` libraries,
//! and libraries the program is linked with (the `zmalloc` front end), are, and their TLS is
//! part of the static TLS block that glibc sizes at start-up. The linker marks such a library
//! `DF_STATIC_TLS`; a `dlopen` of it after start-up is served from the static TLS surplus that
//! glibc keeps for this (`glibc.rtld.optional_static_tls`, 512 bytes by default; this library's
//! whole TLS segment is under 256 bytes), and when that is used up the loader refuses the
//! `dlopen` with "cannot allocate memory in static TLS block", a clear error rather than a
//! crash. (A `dlopen`ed preload library would not interpose `malloc` anyway.)
//!
//! Everything here is zero-initialised (`.tbss`): `false`, 0 and null are the valid start
//! state, and nothing needs a constructor or a destructor (see `sync` for why that matters).
//! Other targets keep a const-initialised `thread_local!`, with the same layout.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32};

use crate::threads::ThreadState;

/// One thread's words. `repr(C)` and all-zero valid: the assembly below reserves
/// `size_of::<Tls>()` zero bytes for it.
#[repr(C)]
pub(crate) struct Tls {
    /// Inside the recorder (`sync::Guard`).
    pub(crate) inside: AtomicBool,
    /// A fatal signal deferred until the thread leaves the recorder (`sync::defer_signal`).
    pub(crate) deferred: AtomicI32,
    /// The thread's state (`threads::current_thread`), null until its first event.
    pub(crate) current: Cell<*const ThreadState>,
    /// Sampled recording without `--all-blocks`: the thread's countdown (bytes left before the
    /// next picked byte), here rather than in its state so that the hooks' fast path reaches it
    /// with no load of the state and no check of the mode. 0 in every other mode, and until
    /// the thread's first sampled event draws a gap: then the fast path always declines.
    pub(crate) left: Cell<u64>,
    /// The same countdown with `--all-blocks` ([`crate::countdown_skips_all`]): a block it lets
    /// through is still tracked, without a stack. 0 in every other mode.
    pub(crate) left_all: Cell<u64>,
    /// The two countdowns while the thread is inside the recorder (`sync::Guard`), which sets
    /// `left` and `left_all` to 0 meanwhile and puts these back when it leaves: a hook's fast
    /// path then needs no check of `inside` (a countdown of 0 declines), and the recorder counts
    /// on these ([`crate::countdown_word`]).
    pub(crate) held: [Cell<u64>; 2],
}

const TLS_BYTES: usize = 48;
const _: () = assert!(std::mem::size_of::<Tls>() == TLS_BYTES && std::mem::align_of::<Tls>() <= 16);
// Another thread reads the guard as the first byte of the block (`ThreadState::inside_now`).
const _: () = assert!(std::mem::offset_of!(Tls, inside) == 0);

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
std::arch::global_asm!(
    // Global but hidden: the accessor is inlined into other codegen units and crates (the front
    // ends), which must link to it, and it must never be exported or interposed.
    ".pushsection .tbss.zmtrace_recorder_tls,\"awT\",@nobits",
    ".p2align 4",
    ".globl zmtrace_recorder_tls",
    ".hidden zmtrace_recorder_tls",
    ".type zmtrace_recorder_tls,@object",
    ".size zmtrace_recorder_tls,48",
    "zmtrace_recorder_tls:",
    ".zero 48",
    ".popsection",
);

/// This thread's block.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[inline(always)]
pub(crate) fn tls() -> &'static Tls {
    let p: *const Tls;
    // SAFETY: the initial-exec sequence for the block defined above: the thread pointer plus
    // the block's offset, which the loader wrote into the GOT. The result is the same for the
    // whole life of the thread (hence `pure, nomem`: the compiler may reuse it), and the block
    // lives as long as the thread. `Tls` holds `Cell`s, so the reference cannot leave the thread.
    unsafe {
        std::arch::asm!(
            "movq zmtrace_recorder_tls@GOTTPOFF(%rip), {p}",
            "addq %fs:0, {p}",
            p = out(reg) p,
            options(att_syntax, pure, nomem, nostack),
        );
        &*p
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
thread_local! {
    // Const-initialised, no destructor: see `sync`.
    static TLS: Tls = const {
        Tls {
            inside: AtomicBool::new(false),
            deferred: AtomicI32::new(0),
            current: Cell::new(std::ptr::null()),
            left: Cell::new(0),
            left_all: Cell::new(0),
            held: [Cell::new(0), Cell::new(0)],
        }
    };
}

/// This thread's block.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[inline(always)]
pub(crate) fn tls() -> &'static Tls {
    // SAFETY: the block lives as long as the thread, and `Tls` is not `Send` (it holds a
    // `Cell`), so the reference cannot outlive it on another thread.
    TLS.with(|t| unsafe { &*(t as *const Tls) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn each_thread_has_its_own_zeroed_block() {
        let here = tls() as *const Tls as usize;
        tls().inside.store(true, Ordering::Relaxed);
        tls().deferred.store(7, Ordering::Relaxed);
        tls().held[0].set(5);
        let there = std::thread::spawn(|| {
            let t = tls();
            assert!(!t.inside.load(Ordering::Relaxed));
            assert_eq!(t.deferred.load(Ordering::Relaxed), 0);
            assert!(t.current.get().is_null());
            // A new thread's countdowns are 0 (its first call takes the hooks' full path, which
            // claims the thread), held ones too: a guard leaving puts them back as they are.
            assert_eq!(t.left.get(), 0);
            assert_eq!(t.left_all.get(), 0);
            assert_eq!([t.held[0].get(), t.held[1].get()], [0, 0]);
            t as *const Tls as usize
        })
        .join()
        .unwrap();
        assert_ne!(here, there);
        assert!(tls().inside.load(Ordering::Relaxed));
        assert_eq!(tls().deferred.load(Ordering::Relaxed), 7);
        tls().inside.store(false, Ordering::Relaxed);
        tls().deferred.store(0, Ordering::Relaxed);
        assert_eq!(tls().held[0].replace(0), 5);
    }
}

//! The roots of the check: the writable segments of the loaded modules (and the copy taken before
//! a `fork`, for the child), the static TLS, each thread's stack range and the checking thread's
//! callee-saved registers.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};

use super::graph::Graph;
use super::sys::{mapping_of, read_own, Buf, MapKind, Mapping};
use crate::state::Core;

/// Bytes below the stack pointer that a leaf function may use without moving it (x86-64 ABI).
pub(super) const RED_ZONE: u64 = 128;

/// One writable segment of a loaded module, and what module it is: [`PLAIN`], [`LIBC`] or
/// [`OWN`].
pub(super) type Segment = (u64, u64, u8);
pub(super) const PLAIN: u8 = 0;
/// glibc's `libc.so`, whose data holds its allocator's state (see [`glibc_main_arena`]).
pub(super) const LIBC: u8 = 1;
/// The recorder's own module (not linked into the program): never a root, whatever else says
/// so (the mappings there at start, say, which include its `.bss`).
pub(super) const OWN: u8 = 2;

/// The writable `PT_LOAD` segments of the loaded modules, but the recorder's own (unless it is
/// linked into the program itself).
fn writable_segments_from_loader(core: &Core, out: &mut Buf<Segment>) {
    struct Ctx<'a> {
        out: &'a mut Buf<Segment>,
        own: std::ops::Range<u64>,
        first: bool,
        first_done: bool,
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
            ctx.first_done = true;
            ctx.skip_own = !holds_own;
        }
        let own = holds_own && ctx.skip_own && !ctx.first_done;
        ctx.first_done = false;
        let name = if info.dlpi_name.is_null() {
            &[][..]
        } else {
            std::ffi::CStr::from_ptr(info.dlpi_name).to_bytes()
        };
        let file = name.rsplit(|&c| c == b'/').next().unwrap_or(name);
        let kind = if own {
            OWN
        } else if file.starts_with(b"libc.so") {
            LIBC
        } else {
            PLAIN
        };
        for p in loads.filter(|p| p.p_flags & libc::PF_W != 0) {
            let s = info.dlpi_addr.wrapping_add(p.p_vaddr);
            // The whole page span: the anonymous rest of `.bss` is the module's too.
            let e = s.wrapping_add(p.p_memsz).next_multiple_of(4096);
            ctx.out.push((s, e, kind));
        }
        0
    }
    let mut ctx = Ctx {
        out,
        own: core.own.clone(),
        first: true,
        first_done: false,
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
static PREFORK_SEGMENTS: crate::sync::SpinLock<Vec<Segment>> =
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
pub(super) fn writable_segments(core: &Core, out: &mut Buf<Segment>) {
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
pub(super) fn static_tls_size() -> u64 {
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
pub(super) struct ThreadRoots {
    pub(super) sp: u64,
    /// The stack's top if the recorder knows it, else 0.
    pub(super) top: u64,
    pub(super) tp: u64,
    /// `sp` is a caller's at a call (an [`Entry`](crate::Entry)): nothing below it is live, not
    /// even a red zone (a function that calls has none).
    pub(super) at_call: bool,
}

/// The callee-saved registers of the checking thread, read on entry: values of its callers that
/// no frame has spilled to the stack yet.
#[inline(always)]
pub(super) fn callee_saved() -> [u64; 6] {
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

/// A thread's stack from below its stack pointer to its top: the top the recorder knows, else
/// the end of the mapping holding the stack pointer, but never into a live block (a stack
/// mapping merged with a neighbouring heap mapping must not make the heap a root).
pub(super) fn stack_range(
    g: &Graph,
    maps: &[Mapping],
    sp: u64,
    top: u64,
    at_call: bool,
) -> Option<(u64, u64)> {
    let m = mapping_of(maps, sp)?;
    let red_zone = if at_call { 0 } else { RED_ZONE };
    let lo = sp.saturating_sub(red_zone).max(m.start);
    // The known top only if the stack pointer is on that stack (not on a signal stack or a
    // coroutine's, where everything between the two would be scanned).
    if top > sp && mapping_of(maps, top - 1).is_some_and(|t| t.start == m.start) {
        // The main thread's known top is glibc's (`pthread_getattr_np`): the page above the
        // start code's stack pointer, `__libc_stack_end`. Above it lie argv, envp, the auxiliary
        // vector and their strings, which a program may write blocks into (ld stores its
        // rewritten "-lX" arguments in argv): memcheck scans the stack segment to its end.
        let hi = if m.kind == MapKind::Stack { m.end } else { top };
        return Some((lo, hi));
    }
    if m.kind == MapKind::Heap {
        return None;
    }
    let mut hi = m.end;
    if let Some(i) = g.find(sp) {
        // A stack inside a block (a coroutine's): up to the block's end.
        hi = hi.min(g.addr(i) + g.size(i));
    } else if let Some(a) = g.first_at_or_above(sp) {
        hi = hi.min(a);
    }
    Some((lo, hi))
}

/// A thread running on a signal stack (its stack pointer is not on the stack the recorder knows
/// for it): the part of its own stack that is live, from the stack pointer it was interrupted
/// at up. That stack pointer is in the kernel's signal frame, above the handler's frames on the
/// signal stack: its `ucontext_t` names the signal stack (`uc_stack`: base, flags, size, which
/// hold the thread's stack pointer) and holds the interrupted registers (`uc_mcontext`).
/// None when the thread is on its own stack, or the frame is not found (a coroutine's stack:
/// then its own stack is not scanned, as before).
pub(super) fn interrupted_stack(maps: &[Mapping], t: &ThreadRoots) -> Option<(u64, u64)> {
    if t.top == 0 {
        return None;
    }
    let own = mapping_of(maps, t.top - 1)?;
    let here = mapping_of(maps, t.sp)?;
    if own.start == here.start || !here.readable {
        return None;
    }
    // ucontext_t (x86-64): uc_flags, uc_link, uc_stack { ss_sp, ss_flags (+4), ss_size },
    // uc_mcontext.gregs[23] (REG_RSP is 15).
    const STACK: u64 = 16;
    const RSP: u64 = 40 + 15 * 8;
    let read = |a: u64| -> Option<u64> {
        if a < here.start || a + 8 > here.end {
            return None;
        }
        let mut w = [0u64; 1];
        (read_own(a, &mut w, 8) == 8).then_some(w[0])
    };
    let mut x = t.sp & !7;
    while x + RSP + 8 <= here.end {
        let (Some(ss_sp), Some(ss_size)) = (read(x + STACK), read(x + STACK + 16)) else {
            break;
        };
        let holds_sp = ss_sp <= t.sp && t.sp < ss_sp.wrapping_add(ss_size);
        if holds_sp && ss_size >= 2048 && ss_sp.wrapping_add(ss_size) <= here.end {
            let rsp = read(x + RSP)?;
            if own.start <= rsp && rsp < t.top {
                return Some((rsp.saturating_sub(RED_ZONE).max(own.start), t.top));
            }
        }
        x += 8;
    }
    None
}

/// The static TLS of a thread whose thread pointer is outside its stack (the main thread): the
/// mapping that holds it, unless that mapping holds blocks too, then the static TLS block alone.
pub(super) fn tls_range(g: &Graph, maps: &[Mapping], tp: u64, tls_size: u64) -> Option<(u64, u64)> {
    let m = mapping_of(maps, tp)?;
    if m.kind == MapKind::Heap {
        return None;
    }
    let holds_blocks = g.first_at_or_above(m.start).is_some_and(|a| a < m.end);
    if !holds_blocks {
        return Some((m.start, m.end));
    }
    let size = if tls_size > 0 { tls_size } else { 4096 };
    Some((tp.saturating_sub(size).max(m.start), (tp + size).min(m.end)))
}

/// glibc's `main_arena` (its allocator's state for the `brk` heap, in libc's data): not a root.
///
/// Its `top`, `last_remainder`, fast-bin and bin pointers name chunk headers, which lie inside
/// the block before them (the header of the chunk after a block is its last 8 usable bytes): the
/// block allocated last is pointed into by `top`, and would be "possibly lost" instead of lost.
/// memcheck never sees these words (its allocator replaces glibc's). The structure is not
/// exported, so it is found by its shape: an empty bin `i` is a list head pointing to itself,
/// both of its words holding its own address minus 16, and the arenas form a ring through
/// `next`, which for the main arena comes back to it. Layout of glibc 2.27 to 2.40 (x86-64):
/// `mutex, flags, have_fastchunks` (16 bytes), `fastbinsY[10]`, `top`, `last_remainder`,
/// `bins[254]`, `binmap[4]`, `next`. A libc of another shape is not found: nothing is excluded.
pub(super) fn glibc_main_arena(segments: &[Segment], maps: &[Mapping]) -> Option<(u64, u64)> {
    const BINS: u64 = 112;
    const NEXT: u64 = BINS + 254 * 8 + 16;
    const SIZE: u64 = NEXT + 8 * 5;
    // Words outside libc's data (the other arenas, in their heaps): one system call each.
    let read_far = |a: u64| -> Option<u64> {
        let m = mapping_of(maps, a)?;
        if !m.readable || !a.is_multiple_of(8) || a + 8 > m.end {
            return None;
        }
        let mut w = [0u64; 1];
        (read_own(a, &mut w, 8) == 8).then_some(w[0])
    };
    for &(start, end, kind) in segments {
        if kind != LIBC {
            continue;
        }
        // A copy of the segment, read in a few calls: the search then reads memory only.
        let start = (start + 7) & !7;
        let words = ((end.saturating_sub(start)) / 8) as usize;
        let Some(mut copy) = Buf::filled(words, 0u64) else {
            continue;
        };
        let mut got = 0;
        while got < words {
            let chunk = (words - got).min(2048);
            let n = read_own(
                start + 8 * got as u64,
                &mut copy.as_mut_slice()[got..got + chunk],
                chunk * 8,
            ) / 8;
            if n == 0 {
                break;
            }
            got += n;
        }
        let copy = &copy.as_slice()[..got];
        let word = |a: u64| -> Option<u64> {
            if a >= start && a < start + 8 * got as u64 {
                Some(copy[((a - start) / 8) as usize])
            } else {
                read_far(a)
            }
        };
        // The largest bins (chunks of a megabyte and more) are nearly always empty: most of
        // them hold the self-pointing pattern in any arena, and in nothing else.
        let looks_like_arena = |a: u64| -> bool {
            (119..127u64)
                .filter(|j| {
                    let p = a + BINS + 16 * j;
                    word(p) == Some(p - 16) && word(p + 8) == Some(p - 16)
                })
                .count()
                >= 4
        };
        let is_arena = |base: u64| -> bool {
            if !looks_like_arena(base) {
                return false;
            }
            let mut a = base;
            for _ in 0..64 {
                match word(a + NEXT) {
                    Some(n) if n == base => return true,
                    Some(n) if n != 0 && n.is_multiple_of(8) && looks_like_arena(n) => a = n,
                    _ => return false,
                }
            }
            false
        };
        for (k, pair) in copy.windows(2).enumerate() {
            let w = start + 8 * k as u64;
            if pair[0] != w.wrapping_sub(16) || pair[1] != w.wrapping_sub(16) {
                continue;
            }
            // `w` is &bins[2j] of an empty bin j: try each j.
            for j in 0..127u64 {
                let Some(base) = w.checked_sub(16 * j + BINS) else {
                    break;
                };
                if base < start {
                    break;
                }
                if base + SIZE <= start + 8 * got as u64
                    && copy[((base + NEXT - start) / 8) as usize] != 0
                    && is_arena(base)
                {
                    return Some((base, base + SIZE));
                }
            }
        }
    }
    None
}

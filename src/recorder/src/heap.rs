//! The recorder's own heap: every table, stack, buffer and cache the recorder keeps lives in
//! anonymous mappings of its own, never in the program's allocator.
//!
//! Why: memory that the recorder frees or resizes in the program's heap (a live-set table, a
//! vector of block addresses) leaves its words behind in chunks that the program later gets
//! from `malloc` without writing to them. The leak check then finds "pointers" that the program
//! never wrote, and a lost block is reported reachable, or a lost array indirectly lost behind
//! a random block. memcheck is immune because its own heap is not the program's; so are we now.
//!
//! The allocator is `talc` (a dlmalloc-style allocator that runs over memory it is given), behind
//! a [`SpinLock`] that the `fork` handlers take last and release first (see `fork`), over a few
//! chunks mapped with a raw `mmap` system call, never through the program's (interposed) `mmap`
//! and never from the program's heap. Chunks double in size, so the recorder's whole heap is a
//! handful of mappings; [`contains`] tells in a few compares whether an address is ours, which
//! the front ends use to send a `free` to the right heap.
//!
//! [`OwnHeap`] is the `GlobalAlloc` of the front ends (the preload library, the C API's
//! library), and [`c_malloc`] and friends serve C code running inside the recorder (zstd), whose
//! `malloc` calls the preload library routes here while the recorder guard is held.

use std::alloc::{GlobalAlloc, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use talc::base::binning::Binning;
use talc::base::Talc;
use talc::source::Source;
use talc::DefaultBinning;

use crate::sync::SpinLock;

/// The first chunk; each next one is twice the last (or as large as the request needs).
const FIRST_CHUNK: usize = 4 << 20;
/// Chunks at most: with doubling from 4 MiB this is far more than any address space.
const MAX_CHUNKS: usize = 32;

/// The chunks mapped so far (`[start, end)`), published for [`contains`] without the lock.
static CHUNK_START: [AtomicUsize; MAX_CHUNKS] = [const { AtomicUsize::new(0) }; MAX_CHUNKS];
static CHUNK_END: [AtomicUsize; MAX_CHUNKS] = [const { AtomicUsize::new(0) }; MAX_CHUNKS];
static CHUNKS: AtomicUsize = AtomicUsize::new(0);
/// The bounds of the chunks outside the reservation: most addresses that are not ours fail
/// this test alone.
static LOWEST: AtomicUsize = AtomicUsize::new(usize::MAX);
static HIGHEST: AtomicUsize = AtomicUsize::new(0);

/// One range reserved (mapped, `MAP_NORESERVE`: untouched pages cost nothing) on the first chunk,
/// from which the chunks are cut while they fit (4 + 8 + ... + 512 MiB do): then [`contains`],
/// which runs on every `free`, `realloc` and `malloc_usable_size` of the program, is one
/// subtraction and one compare. Chunks that do not fit, or all of them if the reservation was
/// refused (an address-space limit), are mapped on their own and listed ([`SPILLED`]).
const RESERVE: usize = 1 << 30;
/// The reservation's start, the fast paths' bound and whether a chunk lies outside it
/// ([`surely_not_ours`] reads the first two through one address).
#[repr(C)]
struct Reservation {
    base: AtomicUsize,
    /// What [`surely_not_ours`] compares an address's offset from `base` with: `usize::MAX`
    /// (no address passes, every hook takes its full path) until a front end opens its fast
    /// paths ([`open_fast_paths`]) and again once a chunk lies outside the reservation, else
    /// [`RESERVE`]. One compare then answers "not ours", "no chunk elsewhere" and "the front end
    /// is ready" at once.
    fast_len: AtomicUsize,
    /// Not 0 once a chunk lies outside the reservation: [`contains`] then searches the list.
    spilled: AtomicUsize,
}
static RES: Reservation = Reservation {
    base: AtomicUsize::new(NO_BASE),
    fast_len: AtomicUsize::new(usize::MAX),
    spilled: AtomicUsize::new(0),
};

/// The reservation's start until it is made: one that no user address reaches (the top of the
/// address space, the kernel's).
const NO_BASE: usize = usize::MAX - RESERVE + 1;

/// Maps the reservation, once (`reserved_used` `usize::MAX`: refused). Under the heap's lock.
fn reserve(src: &mut Chunks) {
    if src.reserved_used == 0 && RES.base.load(Ordering::Relaxed) == NO_BASE {
        match map_anon(RESERVE) {
            // Published before any block of it exists: a thread that is handed one (through
            // the program's synchronisation, after the heap's lock) sees the new start.
            Some(r) => RES.base.store(r.as_ptr() as usize, Ordering::Release),
            None => src.reserved_used = usize::MAX,
        }
    }
}

/// Lets [`surely_not_ours`] say yes from now on: the front end calls it once it can serve the
/// fast paths (its next allocator known). Makes the reservation now, so that every block the
/// recorder's heap ever hands out (the front end's start-up blocks included) is in it, or, if
/// it is refused, leaves the fast paths shut (the full paths ask [`contains`]).
pub fn open_fast_paths() {
    let mut h = lock();
    reserve(&mut h.source);
    // Under the heap's lock, as a spill is: a spill cannot slip in between the test and the
    // store.
    if h.source.reserved_used != usize::MAX && RES.spilled.load(Ordering::Relaxed) == 0 {
        RES.fast_len.store(RESERVE, Ordering::Release);
    }
}

/// Maps fresh chunks when talc runs out: a raw system call, so that it neither reaches the
/// program's `mmap` (interposed by the preload library, which records the program's mappings)
/// nor allocates.
#[derive(Debug)]
pub struct Chunks {
    next: usize,
    /// Bytes of the reservation handed to talc so far; `usize::MAX`: no reservation (refused).
    reserved_used: usize,
}

/// Every mapping [`map_anon`] made and [`unmap`] did not take back (start, length; start 0 is
/// a free slot), so that the leak check never scans one as a root. The program's mappings are
/// roots ([`crate::reach::regions`]): one the loader made before the recorder started, then
/// unmapped with a call that no hook sees, leaves a stale region behind, and a mapping of ours
/// that the kernel puts at the same address would be scanned as the program's. A live-set
/// table there makes every block reachable.
const MAX_RAW: usize = 1024;
static RAW_START: [AtomicUsize; MAX_RAW] = [const { AtomicUsize::new(0) }; MAX_RAW];
static RAW_LEN: [AtomicUsize; MAX_RAW] = [const { AtomicUsize::new(0) }; MAX_RAW];

fn register(p: usize, len: usize) {
    for (s, l) in RAW_START.iter().zip(&RAW_LEN) {
        if s.load(Ordering::Relaxed) == 0
            && s.compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            l.store(len, Ordering::Relaxed);
            s.store(p, Ordering::Release);
            return;
        }
    }
    // More than MAX_RAW at once: not seen by the check (only the stale-region case above
    // would make it a root).
}

fn unregister(p: usize) {
    for (s, l) in RAW_START.iter().zip(&RAW_LEN) {
        if s.load(Ordering::Acquire) == p {
            l.store(0, Ordering::Relaxed);
            s.store(0, Ordering::Release);
            return;
        }
    }
}

/// The recorder's raw mappings now, `[start, end)`: never roots of the leak check.
pub(crate) fn raw_mappings() -> impl Iterator<Item = (u64, u64)> {
    RAW_START.iter().zip(&RAW_LEN).filter_map(|(s, l)| {
        let s = s.load(Ordering::Acquire);
        (s != 0 && s != usize::MAX).then(|| (s as u64, (s + l.load(Ordering::Relaxed)) as u64))
    })
}

/// An anonymous private read-write mapping made with the raw system call; None if refused.
/// Registered for the leak check (see [`raw_mappings`]) until [`unmap`].
pub(crate) fn map_anon(len: usize) -> Option<NonNull<u8>> {
    // SAFETY: a fresh anonymous mapping, no memory of ours is touched.
    let p = unsafe {
        libc::syscall(
            libc::SYS_mmap,
            0usize,
            len,
            (libc::PROT_READ | libc::PROT_WRITE) as libc::c_long,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE) as libc::c_long,
            -1 as libc::c_long,
            0usize,
        )
    };
    if p < 0 || p as usize > usize::MAX - 4096 {
        return None;
    }
    register(p as usize, len);
    NonNull::new(p as *mut u8)
}

/// Below this a table gets no huge pages: one 2 MiB page is the smallest there is.
const HUGE_TABLE: usize = 2 << 20;

/// [`map_anon`] for a table that is touched all over (a hash table: the live set's shards):
/// from 2 MiB on, asks for transparent huge pages (`MADV_HUGEPAGE`; systems in THP's default
/// `madvise` mode give them only to who asks). A program with millions of live blocks then
/// takes one page fault per 2 MiB of table instead of 512, and its random probes miss the TLB
/// far less often: manyblocks.c (5 M live blocks) spent most of its traced time in those
/// misses. Not for the heap's reservation, most of which is never touched.
pub(crate) fn map_table(len: usize) -> Option<NonNull<u8>> {
    let p = map_anon(len)?;
    if len >= HUGE_TABLE {
        // SAFETY: advice on our own fresh mapping; refused advice changes nothing.
        unsafe {
            libc::syscall(
                libc::SYS_madvise,
                p.as_ptr() as usize,
                len,
                libc::MADV_HUGEPAGE as libc::c_long,
            )
        };
    }
    Some(p)
}

/// Unmaps what [`map_anon`] mapped (all of it).
pub(crate) fn unmap(p: *mut u8, len: usize) {
    unregister(p as usize);
    // SAFETY: the caller's own mapping.
    unsafe { libc::syscall(libc::SYS_munmap, p as usize, len) };
}

// SAFETY: `acquire` touches no allocator: it maps memory with a system call and claims it.
unsafe impl Source for Chunks {
    fn acquire<B: Binning>(talc: &mut Talc<Self, B>, layout: Layout) -> Result<(), ()> {
        let n = CHUNKS.load(Ordering::Relaxed);
        if n == MAX_CHUNKS {
            return Err(());
        }
        let want = layout
            .size()
            .checked_add(layout.align())
            .and_then(|s| s.checked_add(64 << 10))
            .ok_or(())?;
        let size = talc
            .source
            .next
            .max(FIRST_CHUNK)
            .max(want.next_multiple_of(4096));
        reserve(&mut talc.source);
        let used = talc.source.reserved_used;
        let p = if used != usize::MAX && size <= RESERVE - used {
            talc.source.reserved_used = used + size;
            // SAFETY: inside the reservation (`used + size <= RESERVE`).
            unsafe { NonNull::new_unchecked((RES.base.load(Ordering::Relaxed) + used) as *mut u8) }
        } else {
            map_anon(size).ok_or(())?
        };
        // SAFETY: the memory is fresh and ours for good.
        unsafe { talc.claim(p.as_ptr(), size) }.ok_or(())?;
        talc.source.next = size.saturating_mul(2);
        let (s, e) = (p.as_ptr() as usize, p.as_ptr() as usize + size);
        CHUNK_START[n].store(s, Ordering::Relaxed);
        CHUNK_END[n].store(e, Ordering::Relaxed);
        if s.wrapping_sub(RES.base.load(Ordering::Relaxed)) >= RESERVE {
            LOWEST.fetch_min(s, Ordering::Relaxed);
            HIGHEST.fetch_max(e, Ordering::Relaxed);
            RES.spilled.store(1, Ordering::Release);
            RES.fast_len.store(usize::MAX, Ordering::Release);
        }
        CHUNKS.store(n + 1, Ordering::Release);
        Ok(())
    }
}

type Heap = Talc<Chunks, DefaultBinning>;

/// The heap. Taken by the `fork` handlers last (everything else they do may allocate) and
/// released first.
pub(crate) static HEAP: SpinLock<Heap> = SpinLock::new(Talc::new(Chunks {
    next: 0,
    reserved_used: 0,
}));

/// The thread holding [`HEAP`] (its thread pointer), 0 when free: a signal handler that
/// allocates while its thread is inside the heap must not wait for itself.
static OWNER: AtomicUsize = AtomicUsize::new(0);

fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: reads the first word of this thread's TCB, which points to itself (x86-64).
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags));
    }
    tp
}

struct Locked(crate::sync::SpinGuard<'static, Heap>);

impl std::ops::Deref for Locked {
    type Target = Heap;
    fn deref(&self) -> &Heap {
        &self.0
    }
}

impl std::ops::DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut Heap {
        &mut self.0
    }
}

/// Runs before the inner guard's drop releases the lock.
impl Drop for Locked {
    fn drop(&mut self) {
        OWNER.store(0, Ordering::Relaxed);
    }
}

fn lock() -> Locked {
    let g = HEAP.lock();
    OWNER.store(thread_pointer(), Ordering::Relaxed);
    Locked(g)
}

/// True when this thread holds the heap (a signal handler interrupted it there).
pub fn held_here() -> bool {
    OWNER.load(Ordering::Relaxed) == thread_pointer()
}

/// True when `p` lies in the recorder's own heap.
#[inline]
pub fn contains(p: *const u8) -> bool {
    let a = p as usize;
    // Anything in the reservation is ours (nothing else can be mapped there), claimed or not.
    if a.wrapping_sub(RES.base.load(Ordering::Relaxed)) < RESERVE {
        return true;
    }
    RES.spilled.load(Ordering::Relaxed) != 0 && spilled_contains(a)
}

/// True when `p` is certainly not in the recorder's heap (outside the reservation, with no
/// chunk outside it) and the front end has opened its fast paths ([`open_fast_paths`]). The
/// hooks' fast paths ask this (a false answer sends them to the full hook, which asks
/// [`contains`]). Null passes: the real allocator's `free` and `malloc_usable_size` take it.
#[inline(always)]
pub fn surely_not_ours(p: *const u8) -> bool {
    let len = RES.fast_len.load(Ordering::Acquire);
    (p as usize).wrapping_sub(RES.base.load(Ordering::Relaxed)) >= len
}

fn spilled_contains(a: usize) -> bool {
    if a < LOWEST.load(Ordering::Relaxed) || a >= HIGHEST.load(Ordering::Relaxed) {
        return false;
    }
    let n = CHUNKS.load(Ordering::Acquire);
    (0..n).any(|i| {
        CHUNK_START[i].load(Ordering::Relaxed) <= a && a < CHUNK_END[i].load(Ordering::Relaxed)
    })
}

/// The recorder's `GlobalAlloc`: the front ends make it their `#[global_allocator]`.
pub struct OwnHeap;

unsafe impl GlobalAlloc for OwnHeap {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() == 0 {
            return l.align() as *mut u8;
        }
        lock()
            .allocate(l)
            .map_or(std::ptr::null_mut(), |p| p.as_ptr())
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if l.size() != 0 {
            lock().deallocate(p, l)
        }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if l.size() == 0 || new == 0 {
            // Zero-sized layouts are not talc's: go through alloc and dealloc.
            let q = self.alloc(Layout::from_size_align_unchecked(new, l.align()));
            if !q.is_null() {
                std::ptr::copy_nonoverlapping(p, q, l.size().min(new));
                self.dealloc(p, l);
            }
            return q;
        }
        let mut heap = lock();
        if new <= l.size() {
            heap.shrink(p, l, new);
            return p;
        }
        if heap.try_grow_in_place(p, l, new) {
            return p;
        }
        let Some(q) = heap.allocate(Layout::from_size_align_unchecked(new, l.align())) else {
            return std::ptr::null_mut();
        };
        std::ptr::copy_nonoverlapping(p, q.as_ptr(), l.size());
        heap.deallocate(p, l);
        q.as_ptr()
    }
}

// ---- for C code inside the recorder: malloc and free without a size ---------------------------

/// Bytes before a C block: its size and alignment, so that `free` can give talc its layout.
const C_HEADER: usize = 16;

/// `malloc`/`memalign` for C code the recorder runs (its `free` has no size, so a header keeps
/// it). Null when the memory cannot be had, or when this thread is inside the heap already (a
/// signal handler of the program's that allocates): the caller then uses the real allocator.
///
/// # Safety
/// `align` is a power of two.
pub unsafe fn c_malloc(size: usize, align: usize) -> *mut u8 {
    if held_here() {
        return std::ptr::null_mut();
    }
    let align = align.max(C_HEADER);
    let Some(total) = size.max(1).checked_add(align) else {
        return std::ptr::null_mut();
    };
    let Ok(l) = Layout::from_size_align(total, align) else {
        return std::ptr::null_mut();
    };
    let base = OwnHeap.alloc(l);
    if base.is_null() {
        return base;
    }
    let p = base.add(align);
    (p.sub(C_HEADER) as *mut usize).write(size.max(1));
    (p.sub(C_HEADER / 2) as *mut usize).write(align);
    p
}

/// The size `c_malloc` was asked for, for `malloc_usable_size` and `realloc`.
///
/// # Safety
/// `p` came from [`c_malloc`].
pub unsafe fn c_size(p: *mut u8) -> usize {
    (p.sub(C_HEADER) as *const usize).read()
}

/// # Safety
/// `p` came from [`c_malloc`] and is not used again.
pub unsafe fn c_free(p: *mut u8) {
    let size = c_size(p);
    let align = (p.sub(C_HEADER / 2) as *const usize).read();
    let l = Layout::from_size_align_unchecked(size + align, align);
    OwnHeap.dealloc(p.sub(align), l);
}

/// # Safety
/// `p` came from [`c_malloc`]; on success it is not used again.
pub unsafe fn c_realloc(p: *mut u8, size: usize) -> *mut u8 {
    let q = c_malloc(size, C_HEADER);
    if !q.is_null() {
        std::ptr::copy_nonoverlapping(p, q, c_size(p).min(size.max(1)));
        c_free(p);
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_come_from_our_own_mappings_and_go_back() {
        let l = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: plain use of the allocator.
        unsafe {
            let p = OwnHeap.alloc(l);
            assert!(!p.is_null() && contains(p));
            p.write_bytes(0xab, 100);
            let q = OwnHeap.realloc(p, l, 1 << 20);
            assert!(contains(q));
            assert_eq!(q.read(), 0xab);
            OwnHeap.dealloc(q, Layout::from_size_align(1 << 20, 8).unwrap());
            let c = c_malloc(24, 64);
            assert!(contains(c) && (c as usize).is_multiple_of(64));
            assert_eq!(c_size(c), 24);
            let c = c_realloc(c, 5000);
            assert_eq!(c_size(c), 5000);
            c_free(c);
            let big = OwnHeap.alloc(Layout::from_size_align(64 << 20, 4096).unwrap());
            assert!(contains(big) && (big as usize).is_multiple_of(4096));
            OwnHeap.dealloc(big, Layout::from_size_align(64 << 20, 4096).unwrap());
        }
        let on_stack = 0u64;
        assert!(!contains(&on_stack as *const u64 as *const u8));
        let boxed = Box::new(1u64); // the test harness's allocator, not ours
        assert!(!contains(&*boxed as *const u64 as *const u8));
    }

    #[test]
    fn raw_mappings_are_listed_until_unmapped() {
        let listed = |p: usize| raw_mappings().any(|(s, e)| s == p as u64 && e == p as u64 + 8192);
        let p = map_anon(8192).unwrap().as_ptr();
        assert!(listed(p as usize));
        unmap(p, 8192);
        assert!(!listed(p as usize));
    }
}

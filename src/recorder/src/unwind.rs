//! Stack capture on the hot path.
//!
//! Each thread keeps its own copy of the unwinder (cheap: modules share their tables) and its own
//! rule cache, so capturing a stack takes no lock: the cost is one cached rule lookup and one
//! stack read per frame. The `backtrace` crate (`_Unwind_Backtrace`) is the reference the tests
//! compare against, and the fallback (`ZMTRACE_UNWIND=backtrace`) for stacks the fast unwinder
//! cannot walk (a signal or coroutine stack outside the thread's own).

use std::sync::atomic::Ordering;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{FrameAddress, Unwinder};

use crate::modules::{MODULES, MODULES_GENERATION};
use crate::stacks::{Skip, UnwindMode, MAX_FRAMES};
use crate::state::Core;
use crate::threads::{bump, Counters};

/// framehop's rule cache is direct-mapped with 509 slots, far fewer than the return addresses of
/// a real program (Redis touches ~3,000): misses re-parse the CFI, and that was a quarter of the
/// recorder's time. The addresses are spread over [`SUB_CACHES`] caches instead (an 8,144-slot
/// direct-mapped cache in effect), each made on first use.
const SUB_CACHES: usize = 16;
const FRAMEHOP_SLOTS: u64 = 509;

/// One walk of a stack: the frames, the unwinding state (sp, bp) at each, and every stack word the
/// unwinder read to go from each frame to the next.
struct Walk {
    n: usize,
    /// Leading frames that are the recorder's own (not part of the stack recorded).
    own: usize,
    truncated: bool,
    /// False when the read log overflowed: this walk cannot be reused.
    reusable: bool,
    frames: [u64; MAX_FRAMES],
    sp: [u64; MAX_FRAMES],
    bp: [u64; MAX_FRAMES],
    /// Reads of the step from frame i to i+1: `reads[read_start[i]..read_start[i + 1]]`.
    read_start: [u32; MAX_FRAMES + 1],
    reads: Vec<(u64, u64)>,
}

const MAX_READS: usize = 4 * MAX_FRAMES;

impl Walk {
    fn new() -> Box<Walk> {
        Box::new(Walk {
            n: 0,
            own: 0,
            truncated: false,
            reusable: false,
            frames: [0; MAX_FRAMES],
            sp: [0; MAX_FRAMES],
            bp: [0; MAX_FRAMES],
            read_start: [0; MAX_FRAMES + 1],
            reads: Vec::with_capacity(MAX_READS),
        })
    }
}

/// The per-thread cache's hash of a stack: two independent multiply chains (even and odd
/// frames), half the latency of one over a deep stack.
#[inline]
fn hash_frames(frames: &[u64]) -> u64 {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let (mut a, mut b) = (frames.len() as u64, 0x9e37_79b9_7f4a_7c15u64);
    let mut pairs = frames.chunks_exact(2);
    for p in &mut pairs {
        a = (a.rotate_left(5) ^ p[0]).wrapping_mul(K);
        b = (b.rotate_left(5) ^ p[1]).wrapping_mul(K);
    }
    if let [last] = pairs.remainder() {
        a = (a.rotate_left(5) ^ last).wrapping_mul(K);
    }
    (a ^ b.rotate_left(32)).wrapping_mul(K) | 1
}

/// A per-thread cache in front of the shared stack store: a thread usually allocates from the
/// same few stacks, and a hit costs a hash and a compare instead of a shard lock.
const INTERN_SLOTS: usize = 512;

#[derive(Clone, Copy)]
struct Interned {
    hash: u64,
    frames: *const u64,
    len: u32,
    id: u32,
}

pub(crate) struct Local {
    interned: Box<[Interned; INTERN_SLOTS]>,
    unwinder: UnwinderX86_64<&'static [u8]>,
    caches: [Option<Box<CacheX86_64>>; SUB_CACHES],
    generation: u64,
    /// The highest address of this thread's stack: reads above it are refused.
    stack_top: u64,
    mode: UnwindMode,
    /// The walk being made, and the previous one (whose outer frames are usually still there).
    cur: Box<Walk>,
    prev: Box<Walk>,
    /// The stack id of the previous walk's frames (0: none), for a walk that ends up the same,
    /// and where the stack store keeps them.
    prev_id: u32,
    prev_frames: *const u64,
    prev_len: u32,
    reference: [u64; MAX_FRAMES],
}

impl Local {
    pub fn new(stack_top: u64, mode: UnwindMode) -> Local {
        Local {
            interned: Box::new(
                [Interned {
                    hash: 0,
                    frames: std::ptr::null(),
                    len: 0,
                    id: 0,
                }; INTERN_SLOTS],
            ),
            unwinder: UnwinderX86_64::new(),
            caches: Default::default(),
            generation: u64::MAX,
            stack_top,
            mode,
            cur: Walk::new(),
            prev: Walk::new(),
            prev_id: 0,
            prev_frames: std::ptr::null(),
            prev_len: 0,
            reference: [0; MAX_FRAMES],
        }
    }

    pub fn stack_top(&self) -> u64 {
        self.stack_top
    }

    pub fn reset_for_thread(&mut self, stack_top: u64) {
        self.stack_top = stack_top;
        self.prev.reusable = false;
        self.prev_id = 0;
    }

    /// Captures the current stack and returns its interned id.
    #[inline(always)]
    pub fn stack_id(&mut self, core: &Core, counters: &Counters, skip: Skip) -> u32 {
        let frames: &[u64] = match self.mode {
            UnwindMode::Fast => {
                let (start, n, same) = self.capture_fast(core, counters, skip);
                if same && self.prev_id != 0 {
                    return self.prev_id;
                }
                &self.prev.frames[start..n]
            }
            // The reference modes are slow anyway: no cache.
            _ => return crate::stacks::intern(core, self.capture(core, counters, skip)).0,
        };
        // The walk could not prove it (a register such as rbp changed below the program's
        // frames) but the stack is often the previous one all the same: a compare is cheaper
        // than the hash.
        if self.prev_id != 0 && frames.len() == self.prev_len as usize {
            // SAFETY: `prev_frames` points into the stack store, whose stacks are never freed.
            let p = unsafe { std::slice::from_raw_parts(self.prev_frames, frames.len()) };
            if p == frames {
                return self.prev_id;
            }
        }
        let hash = hash_frames(frames);
        let slot = &mut self.interned[(hash as usize >> 7) % INTERN_SLOTS];
        if slot.hash == hash && slot.len as usize == frames.len() {
            // SAFETY: `slot.frames` points into the stack store, whose stacks are never freed.
            let cached = unsafe { std::slice::from_raw_parts(slot.frames, frames.len()) };
            if cached == frames {
                self.prev_id = slot.id;
                self.prev_frames = slot.frames;
                self.prev_len = slot.len;
                return slot.id;
            }
        }
        let (id, ptr) = crate::stacks::intern(core, frames);
        *slot = Interned {
            hash,
            frames: ptr,
            len: frames.len() as u32,
            id,
        };
        self.prev_id = id;
        self.prev_frames = ptr;
        self.prev_len = frames.len() as u32;
        id
    }

    /// The current call stack, innermost first, without the recorder's own frames.
    #[inline(always)]
    pub fn capture(&mut self, core: &Core, counters: &Counters, skip: Skip) -> &[u64] {
        match self.mode {
            UnwindMode::Fast => {
                let (start, n, _) = self.capture_fast(core, counters, skip);
                &self.prev.frames[start..n]
            }
            UnwindMode::Backtrace => {
                let n = capture_backtrace(core, skip, &mut self.reference);
                &self.reference[..n]
            }
            UnwindMode::Compare => {
                let (start, n, _) = self.capture_fast(core, counters, skip);
                let mut reference = [0u64; MAX_FRAMES];
                let m = capture_backtrace(core, skip, &mut reference);
                bump(&counters.compared_stacks);
                if self.prev.frames[start..n] != reference[..m] {
                    bump(&counters.mismatched_stacks);
                }
                &self.prev.frames[start..n]
            }
        }
    }

    /// Walks the stack with framehop, one cached rule per frame, and stops early where the rest of
    /// the stack is provably the previous walk's: the same frame in the same state (return
    /// address, sp, bp), and every stack word the previous walk read from there on still holds the
    /// value it read. Unwinding is a function of the state and those words, so the outer frames
    /// are then exactly the previous ones, for a few compares instead of a rule lookup each.
    ///
    /// The recorder's own frames are walked (and matched) too, then left out: the walk of a
    /// second call from the same place usually matches at its very first return address.
    ///
    /// Returns `(start, n, same)`: the stack is `self.prev.frames[start..n]` (the walks are
    /// swapped at the end), and `same` says it is the previous walk's stack, unchanged.
    #[inline(never)]
    fn capture_fast(
        &mut self,
        core: &Core,
        counters: &Counters,
        skip: Skip,
    ) -> (usize, usize, bool) {
        let generation = MODULES_GENERATION.load(Ordering::Acquire);
        if generation != self.generation {
            crate::modules::refresh_modules();
            if let Some(u) = MODULES.lock().unwinder.as_ref() {
                self.unwinder = u.clone();
            }
            self.generation = generation;
            self.prev.reusable = false;
            self.prev_id = 0;
        }
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers; no memory is touched.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
                options(nomem, nostack, preserves_flags)
            );
        }
        let top = self.stack_top;
        if sp >= top || top - sp > (1 << 30) {
            // Not on this thread's own stack (sigaltstack, a coroutine): use the slow unwinder,
            // which needs no bounds.
            let n = capture_backtrace(core, skip, &mut self.prev.frames);
            self.prev.n = n;
            self.prev.own = 0;
            self.prev.reusable = false;
            self.prev_id = 0;
            return (0, n, false);
        }
        let on_stack = move |addr: u64| {
            addr >= sp && addr.checked_add(8).is_some_and(|e| e <= top) && addr.is_multiple_of(8)
        };
        let cur = &mut *self.cur;
        let prev = &mut *self.prev;
        cur.reads.clear();
        cur.truncated = false;
        cur.reusable = true;
        let mut regs = UnwindRegsX86_64::new(ip, sp, bp);
        let mut frame = FrameAddress::InstructionPointer(ip);
        let mut n = 0;
        let mut pj = 0; // the first frame of the previous walk not below the current sp
                        // Where the previous walk was taken over: (index here, index there).
        let mut reused: Option<(usize, usize)> = None;
        loop {
            // The first frame is this function itself: only return addresses are recorded.
            if frame.is_return_address() {
                if n == MAX_FRAMES {
                    cur.truncated = true;
                    break;
                }
                let (a, fsp, fbp) = (frame.address(), regs.sp(), regs.bp());
                cur.frames[n] = a;
                cur.sp[n] = fsp;
                cur.bp[n] = fbp;
                cur.read_start[n] = cur.reads.len() as u32;
                if prev.reusable {
                    while pj < prev.n && prev.sp[pj] < fsp {
                        pj += 1;
                    }
                    if pj < prev.n
                        && prev.sp[pj] == fsp
                        && prev.frames[pj] == a
                        && prev.bp[pj] == fbp
                        && cur.reads.len() + prev.reads.len() <= MAX_READS
                    {
                        let from = prev.read_start[pj] as usize;
                        let same = prev.reads[from..].iter().all(|&(addr, v)| {
                            // SAFETY: inside this thread's live stack, checked first.
                            on_stack(addr) && unsafe { (addr as *const u64).read() } == v
                        });
                        if same && n + (prev.n - pj) <= MAX_FRAMES {
                            reused = Some((n, pj));
                            break;
                        }
                    }
                }
                n += 1;
            }
            let lookup = frame.address_for_lookup();
            let slot = ((lookup / FRAMEHOP_SLOTS) % SUB_CACHES as u64) as usize;
            let cache = self.caches[slot].get_or_insert_with(|| Box::new(CacheX86_64::new()));
            let reads = &mut cur.reads;
            let reusable = &mut cur.reusable;
            let mut read_stack = |addr: u64| -> Result<u64, ()> {
                if !on_stack(addr) {
                    return Err(());
                }
                // SAFETY: inside this thread's live stack, checked above.
                let v = unsafe { (addr as *const u64).read() };
                if reads.len() < MAX_READS {
                    reads.push((addr, v));
                } else {
                    *reusable = false;
                }
                Ok(v)
            };
            match self
                .unwinder
                .unwind_frame(frame, &mut regs, cache, &mut read_stack)
            {
                Ok(Some(ret)) => match FrameAddress::from_return_address(ret) {
                    Some(f) => frame = f,
                    None => break, // a zero return address: the outermost frame
                },
                Ok(None) => break,
                Err(_) => {
                    // A frame framehop could not unwind (no unwind info and no usable frame
                    // pointer): the stack ends here.
                    cur.truncated = true;
                    break;
                }
            }
        }
        let mut in_place_at = None;
        let old_own = prev.own;
        match reused {
            // The same depth and the same reads before the match (the usual case: another call
            // from the same place): the new frames go into the previous walk, which is kept.
            Some((k, j)) if k == j && cur.read_start[k] == prev.read_start[j] => {
                let r = cur.read_start[k] as usize;
                prev.frames[..k].copy_from_slice(&cur.frames[..k]);
                prev.sp[..k].copy_from_slice(&cur.sp[..k]);
                prev.bp[..k].copy_from_slice(&cur.bp[..k]);
                prev.read_start[..k].copy_from_slice(&cur.read_start[..k]);
                prev.reads[..r].copy_from_slice(&cur.reads[..r]);
                in_place_at = Some(k);
            }
            Some((k, j)) => {
                let take = prev.n - j;
                let from = prev.read_start[j] as usize;
                cur.frames[k..k + take].copy_from_slice(&prev.frames[j..prev.n]);
                cur.sp[k..k + take].copy_from_slice(&prev.sp[j..prev.n]);
                cur.bp[k..k + take].copy_from_slice(&prev.bp[j..prev.n]);
                let base = cur.reads.len() as i64 - from as i64;
                for i in 0..=take {
                    cur.read_start[k + i] = (prev.read_start[j + i] as i64 + base) as u32;
                }
                cur.reads.extend_from_slice(&prev.reads[from..]);
                cur.n = k + take;
                cur.truncated = prev.truncated;
                std::mem::swap(&mut self.cur, &mut self.prev);
            }
            None => {
                cur.n = n;
                cur.read_start[n] = cur.reads.len() as u32;
                std::mem::swap(&mut self.cur, &mut self.prev);
            }
        }
        let w = &mut *self.prev;
        // The recorder's own frames lead the stack.
        let own = &core.own;
        w.own = (0..w.n)
            .take_while(|&i| match skip {
                Skip::OwnModule => own.contains(&w.frames[i]),
                // The front end's entry frame and everything it called (the recorder) are at
                // or below its stack pointer.
                Skip::Below(boundary) => w.sp[i] <= boundary,
            })
            .count();
        if w.truncated {
            bump(&counters.truncated_stacks);
        }
        // Taken over from within the recorder's own frames, which are as many as before: the
        // stack recorded is the previous one.
        let same = in_place_at.is_some_and(|k| k <= w.own && w.own == old_own);
        (w.own, w.n, same)
    }
}

/// The reference unwinder. `trace_unsynchronized`, because `trace` takes a global lock that
/// another thread may hold across a `fork`.
#[inline(never)]
fn capture_backtrace(core: &Core, skip: Skip, out: &mut [u64; MAX_FRAMES]) -> usize {
    let own = &core.own;
    let mut n = 0;
    let mut skipping = true;
    // `Frame::sp` is the stack pointer register in each frame's context: the same value
    // framehop's walk has for the frame, so a boundary means the same in both.
    // SAFETY: no other unwinding of this thread's stack runs concurrently.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            let a = frame.ip() as u64;
            let own_frame = match skip {
                Skip::OwnModule => own.contains(&a),
                Skip::Below(boundary) => (frame.sp() as u64) <= boundary,
            };
            if skipping && own_frame {
                return true;
            }
            skipping = false;
            if a == 0 || n == MAX_FRAMES {
                return false;
            }
            out[n] = a;
            n += 1;
            true
        });
    }
    n
}

/// The top of the calling thread's stack.
pub(crate) fn stack_top() -> u64 {
    // SAFETY: plain libc queries about the calling thread.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) == 0 {
            let mut addr: *mut libc::c_void = std::ptr::null_mut();
            let mut size: libc::size_t = 0;
            let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0;
            libc::pthread_attr_destroy(&mut attr);
            if ok && !addr.is_null() {
                return addr as u64 + size as u64;
            }
        }
    }
    // Unknown: allow nothing above the current frame's neighbourhood (stacks will be short).
    let here = 0u8;
    &here as *const u8 as u64 + 4096
}

//! Stack capture on the hot path.
//!
//! # The walk
//!
//! A stack is walked one frame at a time with a compact rule per code address, kept in a table
//! that every thread shares and reads without a lock ([`table`]): one probe gives "the CFA is rsp
//! (or rbp) plus a constant, the return address is at CFA - 8, rbp is unchanged (or at CFA minus
//! a constant)", then two or three loads give the caller's frame. The first time an address is
//! seen its rule is derived from the module's `.eh_frame` ([`rules`]); the addresses whose rule
//! does not fit the table (a CFA given by a DWARF expression, a PLT stub, code without unwind
//! information) are unwound by framehop, with a per-thread copy of its unwinder and rule caches,
//! as before this table existed. The `backtrace` crate (`_Unwind_Backtrace`) is the reference the
//! tests compare against (`ZMTRACE_UNWIND=compare`), and the fallback for stacks that are neither
//! the thread's own nor its signal stack (a coroutine's).
//!
//! # Signal frames
//!
//! A signal handler's stack runs through the kernel's signal frame: the handler returns to the
//! `rt_sigreturn` trampoline (`__restore_rt`), and above it, at the CFA, lies the `ucontext` the
//! kernel saved, whose `uc_mcontext` holds the interrupted rip, rsp and rbp. The walk reads them
//! there and goes on from the interrupted instruction, which is recorded as it is (not a return
//! address: its rule is looked up at the instruction itself, not one byte before), as libgcc's
//! unwinder, and so the `backtrace` crate, reports it. A handler on a `sigaltstack` starts on the
//! alternate stack (asked of the kernel with `sigaltstack(NULL, …)` only when the stack pointer is
//! off the thread's stack, then cached) and moves to the thread's stack at the signal frame: the
//! bounds every read is checked against follow it.
//!
//! # Taking a walk over from the previous one
//!
//! A thread usually allocates from stacks whose outer part it had last time. Before walking, the
//! previous walk's frames are checked from the outermost inwards: a frame is still there when the
//! words its walk read to reach it (its return address, and its saved rbp when the rule restored
//! it) still hold the values read. During the walk, when a frame has the same return address,
//! stack pointer and rbp as a previous frame whose outer frames are all still there, the rest of
//! the stack is exactly the previous walk's (a walk is a function of that state and of the words
//! it reads), and is copied instead of walked. The per-frame cost of this is three stores and one
//! compare; a walk that involved a signal frame, framehop, or ended early is not taken over.

mod rules;
mod table;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{FrameAddress, Unwinder};

use crate::modules::{UnwindSections, MODULES, MODULES_GENERATION};
use crate::stacks::{Skip, UnwindMode, MAX_FRAMES};
use crate::state::Core;
use crate::threads::{bump, Counters};
use table::Rule;

/// framehop's rule cache is direct-mapped with 509 slots, far fewer than the return addresses of
/// a real program (Redis touches ~3,000): misses re-parse the CFI. The addresses framehop serves
/// are spread over [`SUB_CACHES`] caches instead (an 8,144-slot direct-mapped cache in effect),
/// each made on first use.
const SUB_CACHES: usize = 16;
const FRAMEHOP_SLOTS: u64 = 509;

/// Stack pointers this far below the thread's stack top are taken to be on its stack when its
/// real bounds are unknown.
const UNKNOWN_STACK_SPAN: u64 = 1 << 30;

/// The registers the kernel saved in a signal frame, as offsets from the `ucontext`.
const UC_RBP: u64 = uc_greg(libc::REG_RBP);
const UC_RSP: u64 = uc_greg(libc::REG_RSP);
const UC_RIP: u64 = uc_greg(libc::REG_RIP);
const UC_STACK_SP: u64 = std::mem::offset_of!(libc::ucontext_t, uc_stack) as u64;
const UC_STACK_SIZE: u64 = UC_STACK_SP + std::mem::offset_of!(libc::stack_t, ss_size) as u64;
const UC_STACK_FLAGS: u64 = UC_STACK_SP + std::mem::offset_of!(libc::stack_t, ss_flags) as u64;

const fn uc_greg(reg: libc::c_int) -> u64 {
    (std::mem::offset_of!(libc::ucontext_t, uc_mcontext) + 8 * reg as usize) as u64
}

/// Forgets the rules of a module that was unloaded.
pub(crate) fn forget_module(range: Range<u64>) {
    table::forget(range);
}

/// One walk of a stack: the frames, and the unwinding state (sp, bp) at each.
struct Walk {
    n: usize,
    /// Leading frames that are the recorder's own (not part of the stack recorded).
    own: usize,
    truncated: bool,
    /// The next walk may take this one over: every step was a table rule on the thread's own
    /// stack, and the walk reached the outermost frame.
    reusable: bool,
    frames: [u64; MAX_FRAMES],
    sp: [u64; MAX_FRAMES],
    bp: [u64; MAX_FRAMES],
    /// Where the step to frame i read its rbp (0: rbp was unchanged).
    bp_at: [u64; MAX_FRAMES],
    /// Where the last step read a zero return address (0: an `END` rule ended the walk).
    end_at: u64,
}

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
            bp_at: [0; MAX_FRAMES],
            end_at: 0,
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

/// The unwinder's tallies for one thread (`ZMTRACE_UNWIND_STATS`): written by the owner only,
/// with a relaxed load and store, read at the end.
#[derive(Default)]
pub(crate) struct UnwindCounters {
    captures: AtomicU64,
    /// Steps walked (a frame to its caller), of which by framehop and through signal frames.
    steps: AtomicU64,
    slow_steps: AtomicU64,
    signal_steps: AtomicU64,
    /// Frames copied from the previous walk instead of walked.
    taken_over: AtomicU64,
    /// Captures made by the reference unwinder because the stack was not one the fast one knows.
    foreign: AtomicU64,
}

#[inline]
fn add(c: &AtomicU64, v: u64) {
    c.store(c.load(Ordering::Relaxed) + v, Ordering::Relaxed);
}

/// Where reads are allowed: `lo <= addr && addr + 8 <= hi`, as one compare.
#[derive(Clone, Copy)]
struct Bounds {
    lo: u64,
    /// `hi - 8 - lo`.
    span: u64,
}

impl Bounds {
    #[inline(always)]
    fn new(lo: u64, hi: u64) -> Bounds {
        // Less than a word: only the last word below `hi` (the top word of a stack, mapped).
        let last = hi.saturating_sub(8);
        let lo = lo.min(last);
        Bounds {
            lo,
            span: last - lo,
        }
    }
    #[inline(always)]
    fn ok(self, addr: u64) -> bool {
        addr.wrapping_sub(self.lo) <= self.span
    }
    #[inline(always)]
    fn read(self, addr: u64) -> Option<u64> {
        if self.ok(addr) {
            // SAFETY: inside a live stack of this thread (its own, or its signal stack).
            Some(unsafe { (addr as *const u64).read_unaligned() })
        } else {
            None
        }
    }
}

pub(crate) struct Local {
    interned: Box<[Interned; INTERN_SLOTS]>,
    unwinder: UnwinderX86_64<&'static [u8]>,
    caches: [Option<Box<CacheX86_64>>; SUB_CACHES],
    /// The modules' unwind tables, for deriving rules; copied when the module list changes.
    sections: Vec<UnwindSections>,
    /// gimli's unwind context for deriving rules, made on the first miss.
    cfi: Option<Box<rules::Context>>,
    generation: u64,
    /// This thread's stack: `[stack_lo, stack_top)`.
    stack_lo: u64,
    stack_top: u64,
    /// The signal stack last seen in use (`sigaltstack`), `[lo, hi)`; empty if none.
    alt: Range<u64>,
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
    pub(crate) counters: UnwindCounters,
}

/// How a walk ended.
enum End {
    /// At the outermost frame (an `END` rule or a zero return address).
    Outermost,
    /// At frame `k`, which is the previous walk's frame `j`, with everything above it.
    TakenOver(usize, usize),
    /// Cut short: no rule, or a read out of bounds.
    Truncated,
    /// On a stack the walk has no bounds for: the reference unwinder does it.
    Foreign,
}

impl Local {
    pub fn new(stack: Range<u64>, mode: UnwindMode) -> Local {
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
            sections: Vec::new(),
            cfi: None,
            generation: u64::MAX,
            stack_lo: stack.start,
            stack_top: stack.end,
            alt: 0..0,
            mode,
            cur: Walk::new(),
            prev: Walk::new(),
            prev_id: 0,
            prev_frames: std::ptr::null(),
            prev_len: 0,
            reference: [0; MAX_FRAMES],
            counters: UnwindCounters::default(),
        }
    }

    pub fn stack_top(&self) -> u64 {
        self.stack_top
    }

    pub fn reset_for_thread(&mut self, stack: Range<u64>) {
        self.stack_lo = stack.start;
        self.stack_top = stack.end;
        self.alt = 0..0;
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

    /// Copies the new unwinder and module list after a `dlopen` or `dlclose`.
    #[cold]
    #[inline(never)]
    fn new_generation(&mut self, generation: u64) {
        crate::modules::refresh_modules();
        {
            let t = MODULES.lock();
            if let Some(u) = t.unwinder.as_ref() {
                self.unwinder = u.clone();
            }
            self.sections = t.list.iter().filter_map(|m| m.unwind_sections()).collect();
        }
        self.generation = generation;
        self.prev.reusable = false;
        self.prev_id = 0;
        // Mapped before the first walk, so that the walk's hoisted pointer to it is not null.
        table::map();
    }

    /// The rule for an address the table does not have: derived and put in, or `SLOW` when the
    /// address is in no module the unwinder knows (not put in: JIT code would fill the table) or
    /// the table is full.
    #[cold]
    #[inline(never)]
    fn miss(&mut self, key: u64) -> Rule {
        if key == 0 || key >= table::MAX_KEY - 1 || !table::has_room() {
            return Rule::SLOW;
        }
        let Some(m) = self.sections.iter().find(|m| m.range.contains(&key)) else {
            return Rule::SLOW;
        };
        let cfi = self
            .cfi
            .get_or_insert_with(|| Box::new(rules::Context::new()));
        let rule = rules::derive(m, key, cfi);
        table::insert(key, rule);
        rule
    }

    /// One step by framehop: from the frame at `addr` (an instruction pointer if `ip`) with
    /// `sp`/`bp`, reads checked against `bounds`. Returns the caller's (return address, sp, bp),
    /// `Ok(None)` at the outermost frame, `Err` where framehop cannot go on.
    #[cold]
    #[inline(never)]
    fn framehop_step(
        &mut self,
        addr: u64,
        ip: bool,
        sp: u64,
        bp: u64,
        bounds: Bounds,
    ) -> Result<Option<(u64, u64, u64)>, ()> {
        let frame = if ip {
            FrameAddress::InstructionPointer(addr)
        } else {
            FrameAddress::from_return_address(addr).ok_or(())?
        };
        let mut regs = UnwindRegsX86_64::new(addr, sp, bp);
        let lookup = frame.address_for_lookup();
        let slot = ((lookup / FRAMEHOP_SLOTS) % SUB_CACHES as u64) as usize;
        let cache = self.caches[slot].get_or_insert_with(|| Box::new(CacheX86_64::new()));
        let mut read_stack = |a: u64| bounds.read(a).ok_or(());
        match self
            .unwinder
            .unwind_frame(frame, &mut regs, cache, &mut read_stack)
        {
            Ok(Some(ret)) => Ok(Some((ret, regs.sp(), regs.bp()))),
            Ok(None) => Ok(None),
            Err(_) => Err(()),
        }
    }

    /// The signal stack that holds `sp`, if any: the cached one, else the kernel's answer.
    #[cold]
    #[inline(never)]
    fn alt_stack(&mut self, sp: u64) -> Option<u64> {
        if self.alt.contains(&sp) {
            return Some(self.alt.end);
        }
        // SAFETY: a query of this thread's signal stack; async-signal-safe, takes no lock.
        let mut ss: libc::stack_t = unsafe { std::mem::zeroed() };
        if unsafe { libc::sigaltstack(std::ptr::null(), &mut ss) } != 0
            || ss.ss_flags & libc::SS_DISABLE != 0
        {
            return None;
        }
        let lo = ss.ss_sp as u64;
        let alt = lo..lo.saturating_add(ss.ss_size as u64);
        if !alt.contains(&sp) {
            return None;
        }
        self.alt = alt;
        Some(self.alt.end)
    }

    /// True if `sp` is on this thread's own stack.
    #[inline(always)]
    fn on_thread_stack(&self, sp: u64) -> bool {
        sp >= self.stack_lo && sp < self.stack_top
    }

    /// Walks the stack from its own frame, and stops early where the rest of the stack is
    /// provably the previous walk's (see the module docs).
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
            self.new_generation(generation);
        }
        let (ip, sp0, bp0): (u64, u64, u64);
        // SAFETY: reads three registers; no memory is touched.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp0,
                bp = out(reg) bp0,
                options(nomem, nostack, preserves_flags)
            );
        }
        add(&self.counters.captures, 1);
        let own_stack = self.on_thread_stack(sp0);
        let mut bounds = if own_stack {
            Bounds::new(sp0, self.stack_top)
        } else {
            match self.alt_stack(sp0) {
                Some(hi) => Bounds::new(sp0, hi),
                None => return self.foreign(core, skip),
            }
        };

        // The previous walk's frames that are still in place: `from` and above (their reads
        // still hold), and the stack pointer of the first of them.
        let prev = &*self.prev;
        let mut pj = prev.n;
        if prev.reusable && own_stack && (prev.end_at == 0 || bounds.read(prev.end_at) == Some(0)) {
            while pj > 1 {
                let i = pj - 1;
                let ra_ok = bounds.read(prev.sp[i].wrapping_sub(8)) == Some(prev.frames[i]);
                let bp_ok = prev.bp_at[i] == 0 || bounds.read(prev.bp_at[i]) == Some(prev.bp[i]);
                if !(ra_ok && bp_ok) {
                    break;
                }
                pj = i;
            }
            // Frame pj - 1 itself may still be matched: only its own arrival may differ.
            pj = pj.saturating_sub(1);
        }
        let mut cand_sp = if pj < prev.n { prev.sp[pj] } else { u64::MAX };

        let cur = &mut *self.cur;
        cur.truncated = false;
        cur.reusable = own_stack;
        cur.end_at = 0;
        let (mut sp, mut bp) = (sp0, bp0);
        // The lookup address of the frame being stepped from, and whether it is an instruction
        // pointer (this function's own, or one a signal interrupted) or a return address.
        let mut key = ip;
        let mut at_ip = true;
        let mut n = 0;
        let mut slow = 0u64;
        let mut signals = 0u64;
        let rules_table = table::get();
        let end = loop {
            let rule = match table::lookup(rules_table, key) {
                Some(r) => r,
                None => self.miss(key),
            };
            let r = rule.0 as u64;
            let (cfa, bp_at);
            match r & 3 {
                0 => {
                    cfa = sp + ((r >> 2) << 3);
                    bp_at = 0;
                }
                1 => {
                    cfa = sp + ((r >> 2 & 0x3ff) << 3);
                    bp_at = cfa - ((r >> 12) << 3);
                }
                2 => {
                    cfa = bp.wrapping_add((r >> 2 & 0x3ff) << 3);
                    bp_at = cfa.wrapping_sub((r >> 12) << 3);
                    if cfa <= sp {
                        break End::Truncated;
                    }
                }
                _ => {
                    // Special rules, off the common path.
                    let addr = if at_ip { key } else { key + 1 };
                    if rule == Rule::END {
                        break End::Outermost;
                    }
                    let next = if rule == Rule::SIGNAL {
                        signals += 1;
                        match self.signal_step(sp, own_stack, &mut bounds) {
                            Ok(v) => v,
                            Err(e) => break e,
                        }
                    } else {
                        slow += 1;
                        match self.framehop_step(addr, at_ip, sp, bp, bounds) {
                            Ok(Some((ra, nsp, nbp))) => Some((ra, nsp, nbp, false)),
                            Ok(None) => None,
                            Err(()) => break End::Truncated,
                        }
                    };
                    let cur = &mut *self.cur;
                    cur.reusable = false;
                    let Some((a, nsp, nbp, is_ip)) = next else {
                        break End::Outermost;
                    };
                    if a == 0 {
                        break End::Outermost;
                    }
                    (sp, bp) = (nsp, nbp);
                    if n == MAX_FRAMES {
                        break End::Truncated;
                    }
                    cur.frames[n] = a;
                    cur.sp[n] = sp;
                    cur.bp[n] = bp;
                    cur.bp_at[n] = 0;
                    n += 1;
                    key = if is_ip { a } else { a - 1 };
                    at_ip = is_ip;
                    continue;
                }
            }
            if bp_at != 0 {
                match bounds.read(bp_at) {
                    Some(v) => bp = v,
                    None => break End::Truncated,
                }
            }
            let ra = match bounds.read(cfa - 8) {
                Some(v) => v,
                None => break End::Truncated,
            };
            if ra == 0 {
                self.cur.end_at = cfa - 8;
                break End::Outermost;
            }
            sp = cfa;
            if n == MAX_FRAMES {
                break End::Truncated;
            }
            let cur = &mut *self.cur;
            cur.frames[n] = ra;
            cur.sp[n] = sp;
            cur.bp[n] = bp;
            cur.bp_at[n] = bp_at;
            if sp >= cand_sp {
                let prev = &*self.prev;
                while pj < prev.n && prev.sp[pj] < sp {
                    pj += 1;
                }
                if pj < prev.n
                    && prev.sp[pj] == sp
                    && prev.frames[pj] == ra
                    && prev.bp[pj] == bp
                    && n + (prev.n - pj) <= MAX_FRAMES
                {
                    break End::TakenOver(n, pj);
                }
                cand_sp = if pj < prev.n { prev.sp[pj] } else { u64::MAX };
            }
            n += 1;
            key = ra - 1;
            at_ip = false;
        };

        let stepped;
        let mut in_place_at = None;
        let old_own = self.prev.own;
        match end {
            End::Foreign => return self.foreign(core, skip),
            // The same depth (the usual case: another call from the same place): the new frames
            // go into the previous walk, which is kept.
            End::TakenOver(k, j) if k == j => {
                let (cur, prev) = (&*self.cur, &mut *self.prev);
                prev.frames[..k].copy_from_slice(&cur.frames[..k]);
                prev.sp[..k].copy_from_slice(&cur.sp[..k]);
                prev.bp[..k].copy_from_slice(&cur.bp[..k]);
                prev.bp_at[..k].copy_from_slice(&cur.bp_at[..k]);
                prev.reusable &= cur.reusable;
                in_place_at = Some(k);
                stepped = k + 1;
                add(&self.counters.taken_over, (prev.n - j) as u64);
            }
            End::TakenOver(k, j) => {
                let (cur, prev) = (&mut *self.cur, &*self.prev);
                let take = prev.n - j;
                cur.frames[k..k + take].copy_from_slice(&prev.frames[j..prev.n]);
                cur.sp[k..k + take].copy_from_slice(&prev.sp[j..prev.n]);
                cur.bp[k..k + take].copy_from_slice(&prev.bp[j..prev.n]);
                cur.bp_at[k..k + take].copy_from_slice(&prev.bp_at[j..prev.n]);
                cur.n = k + take;
                cur.end_at = prev.end_at;
                cur.reusable &= prev.reusable;
                std::mem::swap(&mut self.cur, &mut self.prev);
                stepped = k + 1;
                add(&self.counters.taken_over, take as u64);
            }
            End::Outermost => {
                self.cur.n = n;
                std::mem::swap(&mut self.cur, &mut self.prev);
                stepped = n + 1;
            }
            End::Truncated => {
                let cur = &mut *self.cur;
                cur.n = n;
                cur.truncated = true;
                cur.reusable = false;
                std::mem::swap(&mut self.cur, &mut self.prev);
                stepped = n + 1;
            }
        }
        add(&self.counters.steps, stepped as u64);
        if slow != 0 {
            add(&self.counters.slow_steps, slow);
        }
        if signals != 0 {
            add(&self.counters.signal_steps, signals);
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

    /// The step through a signal frame: `sp` is the CFA of the handler's frame, where the
    /// kernel's `ucontext` lies. Returns the interrupted (rip, rsp, rbp) and moves `bounds` to
    /// the stack the interrupted code ran on.
    #[cold]
    #[inline(never)]
    fn signal_step(
        &mut self,
        sp: u64,
        own_stack: bool,
        bounds: &mut Bounds,
    ) -> Result<Option<(u64, u64, u64, bool)>, End> {
        let read = |off: u64| bounds.read(sp.wrapping_add(off)).ok_or(End::Truncated);
        let (ip, nsp, nbp) = (read(UC_RIP)?, read(UC_RSP)?, read(UC_RBP)?);
        if !own_stack {
            // The kernel saved the signal stack it had at the signal: the cache follows it (the
            // program may have replaced its signal stack since the cache was filled).
            let flags = read(UC_STACK_FLAGS)? as u32 as i32;
            let (ss_sp, ss_size) = (read(UC_STACK_SP)?, read(UC_STACK_SIZE)?);
            if flags & libc::SS_DISABLE == 0 && ss_size != 0 {
                self.alt = ss_sp..ss_sp.saturating_add(ss_size);
            }
        }
        if ip == 0 {
            return Ok(None);
        }
        if bounds.ok(nsp) {
            // The same stack (a signal handled on the stack it interrupted).
        } else if self.on_thread_stack(nsp) {
            *bounds = Bounds::new(nsp, self.stack_top);
        } else if self.alt.contains(&nsp) {
            *bounds = Bounds::new(nsp, self.alt.end);
        } else {
            // Interrupted on a stack we know nothing of (a coroutine's).
            return Err(End::Foreign);
        }
        Ok(Some((ip, nsp, nbp, true)))
    }

    /// A capture by the reference unwinder, for a stack the fast one has no bounds for.
    #[cold]
    #[inline(never)]
    fn foreign(&mut self, core: &Core, skip: Skip) -> (usize, usize, bool) {
        add(&self.counters.foreign, 1);
        let n = capture_backtrace(core, skip, &mut self.prev.frames);
        self.prev.n = n;
        self.prev.own = 0;
        self.prev.reusable = false;
        self.prev_id = 0;
        (0, n, false)
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
    // the fast walk has for the frame, so a boundary means the same in both.
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

/// The calling thread's stack, `[lowest, top)`.
pub(crate) fn stack_bounds() -> Range<u64> {
    // SAFETY: plain libc queries about the calling thread.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) == 0 {
            let mut addr: *mut libc::c_void = std::ptr::null_mut();
            let mut size: libc::size_t = 0;
            let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0;
            libc::pthread_attr_destroy(&mut attr);
            if ok && !addr.is_null() {
                return addr as u64..addr as u64 + size as u64;
            }
        }
    }
    // Unknown: allow nothing above the current frame's neighbourhood (stacks will be short).
    let here = 0u8;
    let top = &here as *const u8 as u64 + 4096;
    top.saturating_sub(UNKNOWN_STACK_SPAN)..top
}

/// With `ZMTRACE_UNWIND_STATS=1`, one line on stderr when the dump ends: what the unwinder did
/// and what its rule table holds (for the benchmarks; the dump format has no place for it).
pub(crate) fn write_stats(core: &Core) {
    if core.proc.env("ZMTRACE_UNWIND_STATS").as_deref() != Some("1") {
        return;
    }
    let mut sum = [0u64; 6];
    for t in crate::threads::all_threads() {
        // SAFETY: the counters are atomics, only ever stored to by their owning thread.
        let c = unsafe { &(*t.local.get()).counters };
        let all = [
            &c.captures,
            &c.steps,
            &c.slow_steps,
            &c.signal_steps,
            &c.taken_over,
            &c.foreign,
        ];
        for (s, v) in sum.iter_mut().zip(all) {
            *s += v.load(Ordering::Relaxed);
        }
    }
    let [captures, steps, slow, signal, taken, foreign] = sum;
    let (filled, refused, bytes) = table::stats();
    let line = format!(
        "zmtrace: unwinder: {captures} captures, {steps} steps ({slow} by framehop, {signal} \
         through signal frames), {taken} frames taken over, {foreign} captures by the reference \
         unwinder; rule table: {filled} rules, {refused} refused (full), {bytes} bytes mapped\n"
    );
    // SAFETY: a plain write of a buffer we own.
    unsafe { libc::write(2, line.as_ptr() as *const libc::c_void, line.len()) };
}

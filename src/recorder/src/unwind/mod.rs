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
//! # The recorder's own frames
//!
//! Every capture starts inside the recorder, three or four frames below the program's. The
//! usual capture (on the thread's own stack, no walk being taken over, the front end in the
//! recorder's module) walks them like any other frame, in the assembly loop, and tells them by
//! their module afterwards: two or three frames at 12 instructions cost less than finding which
//! remembered path the capture came through and setting up the walk at its end did (about 106
//! instructions a capture on random depths, where four paths alternate). The other captures
//! remember the last few paths relative to the stack pointer ([`walk::OwnPath`]); when the return
//! addresses a path had are where it had them, the walk starts at the program's first frame and
//! the recorder's frames are neither walked nor copied.
//!
//! # Taking a walk over from the previous one
//!
//! A thread often allocates from stacks whose outer part it had last time. Before walking, the
//! previous walk's frames are checked from the outermost inwards: a frame is still there when the
//! words its walk read to reach it (its return address, and its saved rbp when the rule restored
//! it) still hold the values read. During the walk, when a frame has the same return address,
//! stack pointer and rbp as a previous frame whose outer frames are all still there, the rest of
//! the stack is exactly the previous walk's (a walk is a function of that state and of the words
//! it reads), and is copied instead of walked. A walk that involved a signal frame, framehop, or
//! ended early is not taken over.
//!
//! With frames at about 30 instructions, this does not pay any more, so it is off unless asked
//! for (`ZMTRACE_UNWIND_REUSE=1`). Measured by `scripts/unwind-cost.py`, in instructions of the
//! recording of an allocation (the unwinder and the interning of the stack): 6 % more with it on
//! `bench/pairs.c` (one 19-deep stack: checking the previous walk's 22 frames costs about what
//! walking them does), 10 % more on `bench/mix.c`, 2 % more on random depths (where the trials
//! below keep it off); the wall-clock differences were within the machine's noise. Asked for,
//! a thread takes walks over in trials ([`walk::ReuseTrial`]): it keeps doing so while at least a
//! third of the frames come from the previous walk, and otherwise walks lean (no stack pointers
//! recorded, rbp read only where a rule needs it) for a while before trying again;
//! `ZMTRACE_UNWIND_REUSE=always` takes them over whenever it can.

mod rules;
mod table;
mod walk;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use framehop::x86_64::{CacheX86_64, UnwinderX86_64};

use crate::modules::{UnwindSections, MODULES};
use crate::stacks::{Skip, UnwindMode, MAX_FRAMES};
use crate::state::Core;
use crate::threads::{bump, Counters};
use table::Rule;
use walk::{OwnPath, ReuseTrial, Walk, OWN_PATHS};

/// framehop's rule cache is direct-mapped with 509 slots, far fewer than the return addresses of
/// a real program (Redis touches ~3,000): misses re-parse the CFI. The addresses framehop serves
/// are spread over [`SUB_CACHES`] caches instead (an 8,144-slot direct-mapped cache in effect),
/// each made on first use.
const SUB_CACHES: usize = 16;
const FRAMEHOP_SLOTS: u64 = 509;

/// Stack pointers this far below the thread's stack top are taken to be on its stack when its
/// real bounds are unknown.
const UNKNOWN_STACK_SPAN: u64 = 1 << 30;

/// Forgets the rules of a module that was unloaded.
pub(crate) fn forget_module(range: Range<u64>) {
    table::SHARED.forget(range);
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
/// Code pages found in no module, remembered per thread until the module list changes.
const UNKNOWN_PAGES: usize = 8;

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
    /// Captures that took the recorder's own frames from a path seen before.
    own_path: AtomicU64,
    /// Captures made by the reference unwinder because the stack was not one the fast one knows.
    foreign: AtomicU64,
}

#[inline]
fn add(c: &AtomicU64, v: u64) {
    c.store(c.load(Ordering::Relaxed) + v, Ordering::Relaxed);
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
    /// Whether a walk may take the previous one over (`ZMTRACE_UNWIND_REUSE=1`: in trials,
    /// `=always`: whenever it can; not by default), and whether it does now.
    reuse: bool,
    trial: ReuseTrial,
    /// The walk being made, and the previous one (whose outer frames are usually still there).
    cur: Box<Walk>,
    prev: Box<Walk>,
    /// The stack id of the previous walk's frames (0: none), for a walk that ends up the same,
    /// and where the stack store keeps them.
    prev_id: u32,
    prev_frames: *const u64,
    prev_len: u32,
    reference: [u64; MAX_FRAMES],
    /// The paths of the recorder's own frames seen last, and the one to replace next.
    paths: [OwnPath; OWN_PATHS],
    next_path: usize,
    last_path: usize,
    pub(crate) counters: UnwindCounters,
    /// Pages of code in no module (see [`Local::miss`]), and the slot to fill next.
    unknown_pages: [u64; UNKNOWN_PAGES],
    next_unknown: usize,
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
            reuse: false,
            trial: ReuseTrial::new(false, false),
            cur: Walk::new(),
            prev: Walk::new(),
            prev_id: 0,
            prev_frames: std::ptr::null(),
            prev_len: 0,
            reference: [0; MAX_FRAMES],
            paths: [OwnPath::NONE; OWN_PATHS],
            next_path: 0,
            last_path: 0,
            counters: UnwindCounters::default(),
            unknown_pages: [u64::MAX; UNKNOWN_PAGES],
            next_unknown: 0,
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
        for p in &mut self.paths {
            p.n = 0;
        }
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
    fn new_generation(&mut self, core: &Core, generation: u64) {
        let knob = core.proc.env("ZMTRACE_UNWIND_REUSE");
        self.reuse = matches!(knob.as_deref(), Some("1" | "always"));
        self.trial = ReuseTrial::new(self.reuse, knob.as_deref() == Some("always"));
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
        self.forget_interned();
        for p in &mut self.paths {
            p.n = 0;
        }
        // Mapped before the first walk, so that the walk's hoisted pointer to it is not null.
        table::SHARED.map();
    }

    /// Takes the new module list in the middle of a walk (see [`Local::miss`]): the unwind
    /// sections and framehop's unwinder, so that this walk goes on through the new module; and
    /// forgets the stacks this thread interned, whose ids may belong to a module that is gone.
    /// The rest of a new generation (own paths, walk reuse) waits for the next capture, which
    /// sees the generation moved.
    #[cold]
    #[inline(never)]
    fn adopt_modules(&mut self) {
        {
            let t = MODULES.lock();
            if let Some(u) = t.unwinder.as_ref() {
                self.unwinder = u.clone();
            }
            self.sections = t.list.iter().filter_map(|m| m.unwind_sections()).collect();
        }
        self.forget_interned();
    }

    /// Empties the per-thread stack cache: after a module went, the same frames may be another
    /// module's, which the store gives another id.
    fn forget_interned(&mut self) {
        self.unknown_pages = [u64::MAX; UNKNOWN_PAGES];
        self.prev_id = 0;
        for slot in self.interned.iter_mut() {
            slot.hash = 0;
        }
    }

    /// The rule for an address the table does not have: derived and put in, or `SLOW` when the
    /// address is in no module the unwinder knows (not put in: JIT code would fill the table) or
    /// the table is full.
    #[cold]
    #[inline(never)]
    fn miss(&mut self, key: u64) -> Rule {
        if key >= table::MAX_KEY - 1 || !table::SHARED.has_room() {
            return Rule::SLOW;
        }
        let m = match self
            .sections
            .iter()
            .position(|m| m.range.contains(&(key - 1)))
        {
            Some(i) => &self.sections[i],
            None => {
                // In no module this thread knows: a library loaded since (its constructors
                // allocate inside `dlopen`, before any hook after it could record it), or code in
                // no module at all (a JIT's). A page found in no module stays so until the
                // module list changes: it is asked about once, not on every capture.
                let page = (key - 1) >> 12;
                if self.unknown_pages.contains(&page) {
                    return Rule::SLOW;
                }
                if crate::modules::refresh_for_unknown_code() {
                    self.adopt_modules();
                }
                match self.sections.iter().find(|m| m.range.contains(&(key - 1))) {
                    Some(m) => m,
                    None => {
                        self.unknown_pages[self.next_unknown] = page;
                        self.next_unknown = (self.next_unknown + 1) % UNKNOWN_PAGES;
                        return Rule::SLOW;
                    }
                }
            }
        };
        let cfi = self
            .cfi
            .get_or_insert_with(|| Box::new(rules::Context::new()));
        let rule = rules::derive(m, key, cfi);
        table::SHARED.insert(key, rule);
        rule
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
    let mut sum = [0u64; 7];
    for t in crate::threads::all_threads() {
        // SAFETY: the counters are atomics, only ever stored to by their owning thread.
        let c = unsafe { &(*t.local.get()).counters };
        let all = [
            &c.captures,
            &c.own_path,
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
    let [captures, own_path, steps, slow, signal, taken, foreign] = sum;
    let (filled, refused, bytes) = table::SHARED.stats();
    let line = format!(
        "zmtrace: unwinder: {captures} captures ({own_path} through a known path of the \
         recorder's own frames), {steps} steps ({slow} by framehop, {signal} \
         through signal frames), {taken} frames taken over, {foreign} captures by the reference \
         unwinder; rule table: {filled} rules, {refused} refused (full), {bytes} bytes mapped\n"
    );
    // SAFETY: a plain write of a buffer we own.
    unsafe { libc::write(2, line.as_ptr() as *const libc::c_void, line.len()) };
}

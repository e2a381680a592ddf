//! The walk itself: one stack, from the capture's own frame outwards, with the rule table, the
//! recorder's own frames taken from a path seen before, the previous walk's outer frames taken
//! over where they are provably still there, and the slow cases (framehop, signal frames,
//! stacks the walk has no bounds for) out of the way of the common one.

use std::sync::atomic::AtomicU64;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64};
use framehop::{FrameAddress, Unwinder};

use super::table::{self, Rule};
use super::{add, capture_backtrace, Local, FRAMEHOP_SLOTS, SUB_CACHES};
use crate::modules::MODULES_GENERATION;
use crate::stacks::{Skip, MAX_FRAMES};
use crate::state::Core;
use crate::threads::{bump, Counters};
use std::sync::atomic::Ordering;

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

/// Saved-rbp reads one walk keeps for taking it over later; a walk with more is not taken over.
const MAX_BP: usize = 64;

/// One walk of a stack: the frames and the stack pointer (CFA) at each; rbp is kept where it
/// changed (most steps leave it alone), which is enough to know it at every frame.
pub(super) struct Walk {
    pub(super) n: usize,
    /// Leading frames that are the recorder's own (not part of the stack recorded).
    pub(super) own: usize,
    pub(super) truncated: bool,
    /// The next walk may take this one over: every step was a table rule on the thread's own
    /// stack, and the walk reached the outermost frame.
    pub(super) reusable: bool,
    pub(super) frames: [u64; MAX_FRAMES],
    pub(super) sp: [u64; MAX_FRAMES],
    /// rbp before the first step.
    bp0: u64,
    /// The steps that read a saved rbp, in order: the frame each arrived at, where it read, what.
    nbp: usize,
    bp_frame: [usize; MAX_BP],
    bp_at: [u64; MAX_BP],
    bp_val: [u64; MAX_BP],
    /// Where the last step read a zero return address (0: an `END` rule ended the walk).
    end_at: u64,
}

impl Walk {
    pub(super) fn new() -> Box<Walk> {
        Box::new(Walk {
            n: 0,
            own: 0,
            truncated: false,
            reusable: false,
            frames: [0; MAX_FRAMES],
            sp: [0; MAX_FRAMES],
            bp0: 0,
            nbp: 0,
            bp_frame: [0; MAX_BP],
            bp_at: [0; MAX_BP],
            bp_val: [0; MAX_BP],
            end_at: 0,
        })
    }

    /// rbp at frame `i`.
    #[inline]
    fn bp_of(&self, i: usize) -> u64 {
        (0..self.nbp)
            .rev()
            .find(|&q| self.bp_frame[q] <= i)
            .map_or(self.bp0, |q| self.bp_val[q])
    }

    /// Appends `other`'s rbp reads of frames after `from`, renumbered to start at `to`.
    fn append_bp(&mut self, other: &Walk, from: usize, to: usize) {
        for q in 0..other.nbp {
            if other.bp_frame[q] > from {
                if self.nbp == MAX_BP {
                    self.reusable = false;
                    return;
                }
                self.bp_frame[self.nbp] = other.bp_frame[q] - from + to;
                self.bp_at[self.nbp] = other.bp_at[q];
                self.bp_val[self.nbp] = other.bp_val[q];
                self.nbp += 1;
            }
        }
    }
}

/// Where reads are allowed: `lo <= addr && addr + 8 <= hi`, as one compare, and only of
/// aligned words (every stack slot an unwinder reads is one; anything else is garbage).
#[derive(Clone, Copy)]
pub(super) struct Bounds {
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
    fn hi(self) -> u64 {
        self.lo + self.span + 8
    }
    #[inline(always)]
    fn ok(self, addr: u64) -> bool {
        addr.wrapping_sub(self.lo) <= self.span
    }
    #[inline(always)]
    pub(super) fn read(self, addr: u64) -> Option<u64> {
        if self.ok(addr) && addr.is_multiple_of(8) {
            // SAFETY: an aligned word inside a live stack of this thread (its own, or its
            // signal stack).
            Some(unsafe { (addr as *const u64).read() })
        } else {
            None
        }
    }
}

/// The recorder's own frames at the top of a walk, from the stack pointer the walk started at
/// to the program's first frame: for each frame, its return address and its CFA relative to
/// that stack pointer. A path is recorded only if every step along it was an rsp-based rule, so
/// the same return addresses at the same relative places are the same frames; the program's
/// first frame is then read where the path has it, and its rbp is the one the path's last
/// saved-rbp slot holds (`bp_rel`, relative too; 0: rbp unchanged).
#[derive(Clone, Copy)]
pub(super) struct OwnPath {
    /// Frames in the path: the recorder's own and the program's first (0: no path).
    pub(super) n: usize,
    ra: [u64; OWN_MAX],
    rel: [u64; OWN_MAX],
    bp_rel: u64,
}

impl OwnPath {
    pub(super) const NONE: OwnPath = OwnPath {
        n: 0,
        ra: [0; OWN_MAX],
        rel: [0; OWN_MAX],
        bp_rel: 0,
    };
}

/// The longest path of the recorder's own frames remembered, program frame included.
const OWN_MAX: usize = 12;
/// Paths remembered per thread (malloc, calloc, realloc... each has its own).
pub(super) const OWN_PATHS: usize = 4;

/// The state of a walk between its set-up and its loop.
struct Cursor {
    sp: u64,
    bp: u64,
    /// The frame being stepped from: its return address (for an instruction pointer, the
    /// address + 1: see `table`).
    key: u64,
    /// Frames recorded.
    n: usize,
    /// What `n` is while the frame being stepped from is an instruction pointer (this
    /// function's own, or one a signal interrupted).
    ip_n: usize,
    /// The first frame of the previous walk that may be taken over (its `n`: none).
    pj: usize,
    /// The first frame arrived at by a step that was not an rsp-based table rule.
    irregular: usize,
    bounds: Bounds,
    own_stack: bool,
    /// The walk starts at the program's first frame, from a path (not recorded yet).
    at_path: bool,
    /// Lean walks: where the newest saved rbp is, not read yet (0: `bp` is current).
    bp_loc: u64,
}

/// What a special rule's step found.
enum Special {
    /// The caller's frame: return address (an instruction pointer if `ip`), sp, bp.
    Next {
        ra: u64,
        sp: u64,
        bp: u64,
        ip: bool,
    },
    End(End),
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
    /// Walks the stack from its own frame, and stops early where the rest of the stack is
    /// provably the previous walk's (see the module docs).
    ///
    /// The recorder's own frames (from here to the front end's entry) are not walked when their
    /// path is one of the last few ([`OwnPath`]): their return addresses are checked where that
    /// path had them, relative to the stack pointer, and the walk starts at the program's first
    /// frame. A walk that came that way while walks are not being taken over ([`ReuseTrial`])
    /// is a lean one: it records the frames only, and reads a saved rbp only if a rule needs it.
    ///
    /// Returns `(start, n, same)`: the stack is `self.prev.frames[start..n]` (the walks are
    /// swapped at the end), and `same` says it is the previous walk's stack, unchanged.
    #[inline(never)]
    pub(super) fn capture_fast(
        &mut self,
        core: &Core,
        counters: &Counters,
        skip: Skip,
    ) -> (usize, usize, bool) {
        let generation = MODULES_GENERATION.load(Ordering::Acquire);
        if generation != self.generation {
            self.new_generation(core, generation);
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
        let own_stack = sp0 >= self.stack_lo && sp0 < self.stack_top;
        if own_stack && !self.trial.active && matches!(skip, Skip::OwnModule) {
            return self.capture_lean(core, counters, ip, sp0, bp0);
        }
        // The walk starts from this frame (`ip`, `sp0`): it is still there while the callee
        // walks.
        self.capture_general(core, counters, skip, ip, sp0, bp0, own_stack)
    }

    /// The usual capture: on the thread's own stack, no walk taken over, the recorder's own
    /// frames told by their module. Everything from `capture_fast`'s own frame is walked by the
    /// assembly loop, the recorder's frames included (two or three: walking them costs less than
    /// checking a remembered path, and leaves nothing to set up between them and the program's
    /// first frame); the frames are recorded, not their stack pointers, and a saved rbp is read
    /// only where a rule needs it. The walk ends in the loop at the outermost frame's `END` rule;
    /// anything else the loop does not take (a signal frame, framehop's frames, a zero return
    /// address) goes on in [`Local::run`] from where the loop stopped.
    #[inline(always)]
    fn capture_lean(
        &mut self,
        core: &Core,
        counters: &Counters,
        ip: u64,
        sp0: u64,
        bp0: u64,
    ) -> (usize, usize, bool) {
        let hi = self.stack_top;
        let cw: *mut Walk = &mut *self.cur;
        // SAFETY: `cw` points at this thread's own walk.
        let frames = unsafe { (*cw).frames.as_mut_ptr() };
        let t = table::SHARED.get();
        let (mut key, mut sp, mut bp, mut bp_loc) = (ip + 1, sp0, bp0, 0u64);
        let mut fp = frames;
        let top = hi.saturating_add(1);
        // SAFETY: one past the end of the buffer.
        let ends = [unsafe { frames.add(MAX_FRAMES) } as u64, top];
        let lim = top.min(sp0.saturating_add(8 * MAX_FRAMES as u64));
        // SAFETY: the buffer is empty, `lim` keeps the room; reads below `lim` <= hi + 1 and at
        // or above sp0 + 8: this thread's stack.
        let (x, cfa) = unsafe {
            lean_frames(
                t,
                &mut fp,
                &mut key,
                &mut sp,
                &mut bp_loc,
                &mut bp,
                lim,
                &ends,
            )
        };
        // SAFETY: `fp` moved along the same buffer.
        let mut n = unsafe { fp.offset_from(frames) } as usize;
        debug_assert!(n <= MAX_FRAMES);
        let truncated = if cfa == 0 && x == Rule::END.0 as u64 {
            false
        } else if cfa != 0 {
            // Past the stack's top, or the buffer full: the loop sets a new limit itself
            // otherwise.
            true
        } else {
            let mut c = Cursor {
                sp,
                bp,
                key,
                n,
                ip_n: 0,
                pj: usize::MAX,
                irregular: usize::MAX,
                bounds: Bounds::new(sp0, hi),
                own_stack: true,
                at_path: false,
                bp_loc,
            };
            let end = self.run::<true>(&mut c, cw);
            n = c.n;
            match end {
                End::Outermost => false,
                End::Truncated => true,
                End::Foreign => return self.foreign(core, Skip::OwnModule),
                // A lean walk takes nothing over.
                End::TakenOver(..) => unreachable!(),
            }
        };
        // SAFETY: as above.
        let cur = unsafe { &mut *cw };
        cur.n = n;
        cur.truncated = truncated;
        cur.reusable = false;
        cur.nbp = 0;
        cur.end_at = 0;
        cur.bp0 = bp0;
        let own = &core.own;
        let mut k = 0;
        while k < n && own.contains(&cur.frames[k]) {
            k += 1;
        }
        cur.own = k;
        std::mem::swap(&mut self.cur, &mut self.prev);
        // One step from each frame up to the last (the first, this function's, is not a frame
        // of the stack).
        let walked = n as u64 + 1;
        add(&self.counters.steps, walked);
        if self.reuse {
            self.trial.walked += walked;
            self.trial.left -= 1;
            if self.trial.left == 0 {
                self.trial.end();
            }
        }
        if truncated {
            bump(&counters.truncated_stacks);
        }
        (k, n, false)
    }

    /// The capture in every other case: another stack (a signal stack), walks taken over,
    /// or a front end whose own frames are told by their stack pointer (`Skip::Below`).
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn capture_general(
        &mut self,
        core: &Core,
        counters: &Counters,
        skip: Skip,
        ip: u64,
        sp0: u64,
        bp0: u64,
        own_stack: bool,
    ) -> (usize, usize, bool) {
        let hi = if own_stack {
            self.stack_top
        } else {
            match self.alt_stack(sp0) {
                Some(hi) => hi,
                None => return self.foreign(core, skip),
            }
        };
        let reuse_now = self.trial.active && own_stack;
        // The previous walk's frames that are still in place: `pj` and above.
        let pj = if reuse_now {
            self.still_in_place(sp0)
        } else {
            self.prev.n
        };

        // The walk is written through `cw` only until it ends: the slow steps called on the way
        // take `&mut self` but never touch it.
        let cw: *mut Walk = &mut *self.cur;
        // SAFETY: `cw` points at this thread's own walk.
        let cur = unsafe { &mut *cw };
        cur.truncated = false;
        cur.reusable = own_stack;
        cur.end_at = 0;
        cur.bp0 = bp0;
        cur.nbp = 0;
        let mut c = Cursor {
            sp: sp0,
            bp: bp0,
            key: ip + 1,
            n: 0,
            ip_n: 0,
            pj,
            irregular: usize::MAX,
            bounds: Bounds::new(sp0, hi),
            own_stack,
            at_path: false,
            bp_loc: 0,
        };

        // The recorder's own frames, from a path seen before.
        let from_path = if own_stack {
            self.own_path(sp0, hi)
        } else {
            None
        };
        let lean = from_path.is_some() && !reuse_now;
        if let Some(k) = from_path {
            // The recorder's own frames are not copied: nothing reads them (the stack recorded
            // starts after them, no walk is taken over at them, and the path knows their count).
            let p = &self.paths[k];
            let last = p.n - 1;
            c.sp = sp0 + p.rel[last];
            if p.bp_rel != 0 {
                let at = sp0 + p.bp_rel;
                if lean {
                    c.bp_loc = at;
                } else {
                    // SAFETY: between sp0 and `c.sp`, inside the stack (checked by `own_path`).
                    c.bp = unsafe { (at as *const u64).read() };
                    cur.bp_frame[0] = last;
                    cur.bp_at[0] = at;
                    cur.bp_val[0] = c.bp;
                    cur.nbp = 1;
                }
            }
            // SAFETY: c.sp - 8 is inside [sp0, hi) (checked by `own_path`).
            c.key = unsafe { ((c.sp - 8) as *const u64).read() };
            c.n = last;
            c.ip_n = usize::MAX;
            c.at_path = true;
            // Tried first next time.
            self.last_path = k;
        }
        let end = if lean {
            cur.reusable = false;
            self.run::<true>(&mut c, cw)
        } else {
            self.run::<false>(&mut c, cw)
        };
        let n = c.n;

        let walked_to = match end {
            End::TakenOver(k, _) => k,
            _ => n,
        };
        let stepped = match end {
            End::TakenOver(k, _) => k + 1,
            _ => n + 1,
        };
        let mut in_place_at = None;
        let mut changed = false;
        let old_own = self.prev.own;
        match end {
            End::Foreign => return self.foreign(core, skip),
            // The same depth (the usual case: another call from the same place): the new frames
            // go into the previous walk, which is kept.
            End::TakenOver(k, j) if k == j => {
                let (cur, prev) = (&*self.cur, &mut *self.prev);
                // The frames walked (not those a path stood for: nothing reads them).
                let from = from_path.map_or(0, |p| self.paths[p].n - 1);
                for i in from..k {
                    // The program's frames walked again, as they were: the stack recorded is
                    // still the previous one.
                    if i >= old_own && prev.frames[i] != cur.frames[i] {
                        changed = true;
                    }
                    prev.frames[i] = cur.frames[i];
                    prev.sp[i] = cur.sp[i];
                }
                // rbp reads: the new walk's up to frame k, then the previous walk's after it.
                // Those of the recorder's own frames do not matter (no frame is taken over
                // there, and rbp at frame `own` is the same in both: the frames matched), so
                // when the two walks read the same from there to frame k, nothing changes.
                let own = old_own;
                // The reads of frames own..=k in each walk: `lo..hi` of its list.
                let range = |w: &Walk| {
                    let (mut lo, mut hi) = (0, 0);
                    for q in 0..w.nbp {
                        let f = w.bp_frame[q];
                        if f > k {
                            break;
                        }
                        if f < own {
                            lo = q + 1;
                        }
                        hi = q + 1;
                    }
                    lo..hi
                };
                let (rc, rp) = (range(cur), range(prev));
                if rc.len() == rp.len() && rc.start == 0 && rp.start == 0 {
                    // The usual case: the same reads, some of another value (a register the
                    // recorder's caller keeps a loop counter in).
                    for (a, b) in rc.zip(rp) {
                        prev.bp_frame[b] = cur.bp_frame[a];
                        prev.bp_at[b] = cur.bp_at[a];
                        prev.bp_val[b] = cur.bp_val[a];
                    }
                    prev.bp0 = cur.bp0;
                } else {
                    let (head, c) = (rp.end, cur.nbp);
                    let keep = prev.nbp - head;
                    if c + keep <= MAX_BP {
                        prev.bp_frame.copy_within(head..prev.nbp, c);
                        prev.bp_at.copy_within(head..prev.nbp, c);
                        prev.bp_val.copy_within(head..prev.nbp, c);
                        prev.bp_frame[..c].copy_from_slice(&cur.bp_frame[..c]);
                        prev.bp_at[..c].copy_from_slice(&cur.bp_at[..c]);
                        prev.bp_val[..c].copy_from_slice(&cur.bp_val[..c]);
                        prev.nbp = c + keep;
                        prev.bp0 = cur.bp0;
                    } else {
                        prev.reusable = false;
                    }
                }
                prev.reusable &= cur.reusable;
                in_place_at = Some(k);
                add(&self.counters.taken_over, (prev.n - j) as u64);
            }
            End::TakenOver(k, j) => {
                let (cur, prev) = (&mut *self.cur, &*self.prev);
                let take = prev.n - j;
                cur.frames[k..k + take].copy_from_slice(&prev.frames[j..prev.n]);
                cur.sp[k..k + take].copy_from_slice(&prev.sp[j..prev.n]);
                cur.append_bp(prev, j, k);
                cur.n = k + take;
                cur.end_at = prev.end_at;
                cur.reusable &= prev.reusable;
                std::mem::swap(&mut self.cur, &mut self.prev);
                add(&self.counters.taken_over, take as u64);
            }
            End::Outermost => {
                self.cur.n = n;
                std::mem::swap(&mut self.cur, &mut self.prev);
            }
            End::Truncated => {
                let cur = &mut *self.cur;
                cur.n = n;
                cur.truncated = true;
                cur.reusable = false;
                std::mem::swap(&mut self.cur, &mut self.prev);
            }
        }
        let w = &mut *self.prev;
        // The recorder's own frames lead the stack (a path knows how many).
        w.own = match from_path {
            Some(k) => self.paths[k].n - 1,
            None => {
                let own = &core.own;
                (0..w.n)
                    .take_while(|&i| match skip {
                        Skip::OwnModule => own.contains(&w.frames[i]),
                        // The front end's entry frame and everything it called (the recorder)
                        // are at or below its stack pointer.
                        Skip::Below(boundary) => w.sp[i] <= boundary,
                    })
                    .count()
            }
        };
        let (own_n, n_all, truncated) = (w.own, w.n, w.truncated);
        // Steps walked: one from each frame up to the last (the first, this function's, is not
        // a frame of the stack); those a path stood for were not walked.
        let path_steps = from_path.map_or(0, |k| self.paths[k].n);
        let walked = (stepped - path_steps) as u64;
        add(&self.counters.steps, walked);
        if self.reuse {
            self.trial.walked += walked;
            self.trial.taken += (n_all - walked_to) as u64;
            self.trial.left -= 1;
            if self.trial.left == 0 {
                self.trial.end();
            }
        }
        if path_steps != 0 {
            add(&self.counters.own_path, 1);
        } else if own_stack
            && c.irregular > own_n
            && walked_to > own_n
            && own_n < n_all
            && own_n < OWN_MAX
        {
            self.remember_path(sp0);
        }
        if truncated {
            bump(&counters.truncated_stacks);
        }
        // Taken over in place, the recorder's own frames as many as before and the program's
        // walked again unchanged: the stack recorded is the previous one.
        let same = in_place_at.is_some() && !changed && own_n == old_own;
        (own_n, n_all, same)
    }

    /// The walk's loop, from the state in `c` to the end of the stack or to where the previous
    /// walk takes over. `LEAN`: no walk is taken over, the stack pointers of the frames are not
    /// recorded (a path gave the recorder's own), and a saved rbp is read only where a rule
    /// needs it.
    ///
    /// The common frame (its entry in its home slot, CFA = rsp + 8a, rbp unchanged) costs about
    /// 14 instructions: the probe and the rule's test are one xor and one compare (see below),
    /// and one compare against `lim` stands for three limits: the stack's top, the next frame
    /// of the previous walk that could be taken over, and the room left in the frame buffer.
    /// Every step moves the stack pointer up by at least a word (a rule's CFA offset is at
    /// least 8; the other steps check it), so while the CFA is below `sp + 8 * (MAX_FRAMES - n)`
    /// for the `sp` and `n` of the last check, fewer than `MAX_FRAMES - n` frames can have been
    /// added since: the buffer has room, and the fast path does not count. A CFA at `lim` or
    /// above takes the careful path, which checks each limit and sets the next `lim`.
    #[inline(always)]
    fn run<const LEAN: bool>(&mut self, c: &mut Cursor, cw: *mut Walk) -> End {
        // SAFETY: `cw` points at this thread's own walk, which nothing else touches meanwhile.
        let (frames, sps) = unsafe { ((*cw).frames.as_mut_ptr(), (*cw).sp.as_mut_ptr()) };
        let t = table::SHARED.get();
        let (mut sp, mut bp, mut key, mut n, mut ip_n) = (c.sp, c.bp, c.key, c.n, c.ip_n);
        let mut pj = c.pj;
        let mut irregular = c.irregular;
        // A copy, out of `c`: the special steps change it through a pointer, which would
        // otherwise keep all of `c` in memory rather than in registers.
        let mut bounds = c.bounds;
        let mut hi = bounds.hi();
        let mut bp_loc = c.bp_loc;
        let mut cand_sp = if !LEAN && pj < self.prev.n {
            self.prev.sp[pj]
        } else {
            u64::MAX
        };
        let mut lim: u64;
        // The next `lim` (see above), from the current `sp`, `n`, `hi` and `cand_sp`.
        macro_rules! relim {
            () => {{
                debug_assert!(n <= MAX_FRAMES);
                let room = sp.saturating_add(8 * (MAX_FRAMES - n) as u64);
                lim = cand_sp.min(hi.saturating_add(1)).min(room);
            }};
        }
        relim!();

        // Records frame `n` (return address `$ra`, CFA `$cfa`) and looks for it in the previous
        // walk; leaves `$walk` with `End::TakenOver` where it is found.
        macro_rules! arrive_careful {
            ($walk:lifetime, $ra:expr, $cfa:expr) => {{
                let (ra, cfa) = ($ra, $cfa);
                if n == MAX_FRAMES {
                    break $walk End::Truncated;
                }
                // SAFETY: n < MAX_FRAMES.
                unsafe {
                    *frames.add(n) = ra;
                    *sps.add(n) = cfa;
                }
                if !LEAN && cfa >= cand_sp {
                    let prev = &*self.prev;
                    while pj < prev.n && prev.sp[pj] < cfa {
                        pj += 1;
                    }
                    if pj < prev.n
                        && prev.sp[pj] == cfa
                        && prev.frames[pj] == ra
                        && n + (prev.n - pj) <= MAX_FRAMES
                        && prev.bp_of(pj) == bp
                    {
                        break $walk End::TakenOver(n, pj);
                    }
                    cand_sp = if pj < prev.n { prev.sp[pj] } else { u64::MAX };
                }
                n += 1;
                sp = cfa;
                key = ra;
                relim!();
            }};
        }

        let end = 'walk: {
            if c.at_path {
                // At the program's first frame, by the recorded path.
                arrive_careful!('walk, key, sp);
            }
            loop {
                // The frames that need nothing but their rule: a tight loop of its own, so that
                // none of the rest's state is live in it. It leaves with the rule it cannot
                // take (`x`, `cfa` 0), or with a CFA at `lim` or above.
                let (x, cfa) = if LEAN {
                    let mut fp = unsafe { frames.add(n) };
                    // SAFETY: `fp` is frame `n` of this walk's buffer, `lim` keeps the room; the
                    // reads are below `lim` <= hi + 1 and at or above sp + 8: inside the stack.
                    // SAFETY: one past the end of the buffer.
                    let ends = [
                        unsafe { frames.add(MAX_FRAMES) } as u64,
                        hi.saturating_add(1),
                    ];
                    let r = unsafe {
                        lean_frames(
                            t,
                            &mut fp,
                            &mut key,
                            &mut sp,
                            &mut bp_loc,
                            &mut bp,
                            lim,
                            &ends,
                        )
                    };
                    // SAFETY: `fp` moved along the same buffer.
                    n = unsafe { fp.offset_from(frames) } as usize;
                    // Nothing written past the buffer (too late to prevent it, but the debug
                    // builds the tests use would say so). `n` may be MAX_FRAMES when the buffer
                    // was full on entry: nothing was stored then, the careful path ends the walk.
                    debug_assert!(n <= MAX_FRAMES);
                    r
                } else {
                    let base = n;
                    let mut i = 0;
                    let r = loop {
                        let e = table::entry(t, table::home(key));
                        // The entry with the key taken out where the entry keeps it, plus one (it
                        // keeps the rule minus one): the rule alone (below 2^17) when the entry is
                        // the key's, and then a common rule is one compare. (A key of 2^47 or more, which only a return-address slot holding
                        // garbage gives, may pass for another whose low 47 bits it shares: the
                        // walk then goes on by a wrong rule, its reads still checked against
                        // `lim`.)
                        let x = (e ^ key.rotate_left(table::RULE_BITS)).wrapping_add(1);
                        let cfa;
                        if x.wrapping_sub(1) < table::A_MASK as u64 {
                            // CFA = rsp + 8a, rbp unchanged.
                            cfa = sp.wrapping_add(x << 3);
                        } else if LEAN
                            && x < table::RBP_BASE as u64
                            && x & table::A_MASK as u64 != 0
                        {
                            // CFA = rsp + 8a, rbp saved at CFA - 8b: a lean walk only notes where
                            // (between rsp and the CFA: `Rule::rsp`).
                            cfa = sp.wrapping_add((x & table::A_MASK as u64) << 3);
                            bp_loc = cfa - ((x >> table::B_SHIFT) << 3);
                        } else {
                            break (x, 0);
                        }
                        if cfa >= lim {
                            break (0, cfa);
                        }
                        // SAFETY: sp + 8 <= cfa < lim <= hi + 1: inside the stack.
                        let ra = unsafe { ((cfa - 8) as *const u64).read() };
                        debug_assert!(base + i < MAX_FRAMES);
                        // SAFETY: base + i < MAX_FRAMES: `lim` keeps the room (see above).
                        unsafe {
                            *frames.add(base + i) = ra;
                            if !LEAN {
                                *sps.add(base + i) = cfa;
                            }
                        }
                        i += 1;
                        sp = cfa;
                        key = ra;
                    };
                    n = base + i;
                    r
                };
                let cfa = if cfa != 0 {
                    cfa
                } else {
                    let r = if x >> table::RULE_BITS == 0 {
                        x
                    } else {
                        self.lookup_cold(t, key).0 as u64
                    };
                    if r.wrapping_sub(1) < table::A_MASK as u64 {
                        sp.wrapping_add(r << 3)
                    } else if r & table::A_MASK as u64 != 0 {
                        let a = (r & table::A_MASK as u64) << 3;
                        let cfa;
                        if r & table::RBP_BASE as u64 != 0 {
                            irregular = irregular.min(n);
                            if LEAN && bp_loc != 0 {
                                // SAFETY: a saved-rbp slot checked to be inside the stack.
                                bp = unsafe { (bp_loc as *const u64).read() };
                                bp_loc = 0;
                            }
                            let c = bp.wrapping_add(a);
                            // (rbp may hold anything: the CFA must be an aligned word of the
                            // stack above this frame.)
                            if c < sp.wrapping_add(8) || c > hi || !c.is_multiple_of(8) {
                                break 'walk End::Truncated;
                            }
                            cfa = c;
                        } else {
                            cfa = sp + a;
                        }
                        if cfa > hi {
                            break 'walk End::Truncated;
                        }
                        let b = (r >> table::B_SHIFT) & table::B_MASK as u64;
                        if b != 0 {
                            let at = cfa - (b << 3);
                            // An rsp-based rule saves rbp at or above rsp (`Rule::rsp`).
                            if at < sp {
                                break 'walk End::Truncated;
                            }
                            if LEAN {
                                bp_loc = at;
                            } else {
                                // SAFETY: sp <= at <= cfa - 8 <= hi - 8: inside the stack.
                                bp = unsafe { (at as *const u64).read() };
                                // SAFETY: as above.
                                let cur = unsafe { &mut *cw };
                                let q = cur.nbp;
                                if q < MAX_BP {
                                    cur.bp_frame[q] = n;
                                    cur.bp_at[q] = at;
                                    cur.bp_val[q] = bp;
                                    cur.nbp = q + 1;
                                } else {
                                    cur.reusable = false;
                                }
                            }
                        }
                        cfa
                    } else {
                        irregular = irregular.min(n);
                        if r == 0 {
                            // A zero return address (recorded as frame n - 1): the outermost
                            // frame.
                            n -= 1;
                            // SAFETY: as above.
                            unsafe { (*cw).end_at = sp - 8 };
                            break 'walk End::Outermost;
                        }
                        if r == Rule::END.0 as u64 {
                            break 'walk End::Outermost;
                        }
                        if LEAN && bp_loc != 0 {
                            // SAFETY: a saved-rbp slot checked to be inside the stack.
                            bp = unsafe { (bp_loc as *const u64).read() };
                            bp_loc = 0;
                        }
                        let at_ip = n == ip_n;
                        let step = self.special(
                            Rule(r as u32),
                            key,
                            at_ip,
                            sp,
                            bp,
                            c.own_stack,
                            &mut bounds,
                        );
                        match step {
                            Special::Next {
                                ra,
                                sp: nsp,
                                bp: nbp,
                                ip,
                            } => {
                                // SAFETY: as above.
                                unsafe { (*cw).reusable = false };
                                if bounds.hi() != hi {
                                    // Another stack (a signal frame's): no frame of the
                                    // previous walk is on it.
                                    hi = bounds.hi();
                                    cand_sp = u64::MAX;
                                }
                                if n == MAX_FRAMES {
                                    break 'walk End::Truncated;
                                }
                                // SAFETY: n < MAX_FRAMES.
                                unsafe {
                                    *frames.add(n) = ra;
                                    *sps.add(n) = nsp;
                                }
                                n += 1;
                                (sp, bp) = (nsp, nbp);
                                if ip {
                                    key = ra + 1;
                                    ip_n = n;
                                } else {
                                    key = ra;
                                }
                                // The stack pointer may have moved anywhere (another stack).
                                relim!();
                                continue;
                            }
                            Special::End(e) => break 'walk e,
                        }
                    }
                };
                // The careful arrival: at or above `lim`, or by a rule the tight loop leaves.
                if cfa > hi {
                    break 'walk End::Truncated;
                }
                // SAFETY: sp + 8 <= cfa <= hi: inside the stack.
                let ra = unsafe { ((cfa - 8) as *const u64).read() };
                arrive_careful!('walk, ra, cfa);
            }
        };
        c.n = n;
        c.irregular = irregular;
        end
    }

    /// The first frame of the previous walk that the walk about to start from `sp0` may take
    /// over: the words read to reach each frame above it (its return address, its saved rbp)
    /// still hold what was read. Frames are checked from the outermost inwards, and never the
    /// recorder's own (a walk that took them from a path did not record their rbp). Returns
    /// `prev.n` when nothing can be taken over.
    fn still_in_place(&self, sp0: u64) -> usize {
        let prev = &*self.prev;
        if !prev.reusable || prev.n <= prev.own {
            return prev.n;
        }
        let bounds = Bounds::new(sp0, self.stack_top);
        if prev.end_at != 0 && bounds.read(prev.end_at) != Some(0) {
            return prev.n;
        }
        // The saved-rbp reads first (a few): nothing at or below a frame whose read changed
        // can be taken over but that frame itself.
        let mut floor = prev.own;
        for q in (0..prev.nbp).rev() {
            let i = prev.bp_frame[q];
            if i <= floor {
                break;
            }
            if bounds.read(prev.bp_at[q]) != Some(prev.bp_val[q]) {
                floor = i;
                break;
            }
        }
        // Then the return addresses, from the outermost frame inwards.
        let mut i = prev.n - 1;
        let (sps, frames) = (prev.sp.as_ptr(), prev.frames.as_ptr());
        while i > floor {
            // SAFETY: i < prev.n <= MAX_FRAMES.
            let (s, ra) = unsafe { (*sps.add(i), *frames.add(i)) };
            // A CFA below sp0 + 8: its return address slot is below the stack pointer now, and
            // so are all those of the frames below it.
            // SAFETY: sp0 <= s - 8, and s is a CFA of this thread's stack, at most its top.
            if s < sp0 + 8 || unsafe { ((s - 8) as *const u64).read() } != ra {
                break;
            }
            i -= 1;
        }
        i
    }

    /// The path of the recorder's own frames this capture came through, if it is one of those
    /// remembered: each of its return addresses is where the path has it.
    #[inline]
    fn own_path(&self, sp0: u64, hi: u64) -> Option<usize> {
        // The one used last first.
        let first = self.last_path;
        'paths: for j in 0..OWN_PATHS {
            let k = (first + j) % OWN_PATHS;
            let p = &self.paths[k];
            if p.n == 0 {
                continue;
            }
            let last = p.n - 1;
            let top = sp0.wrapping_add(p.rel[last]);
            if top > hi || top < sp0 + 8 {
                continue;
            }
            // From the outermost of the recorder's frames inwards: the front end's entry, where
            // two paths (malloc's, calloc's...) differ, is checked first.
            for i in (0..last).rev() {
                // SAFETY: sp0 < sp0 + rel[i] <= top <= hi (CFAs increase along a path).
                if unsafe { ((sp0 + p.rel[i] - 8) as *const u64).read() } != p.ra[i] {
                    continue 'paths;
                }
            }
            return Some(k);
        }
        None
    }

    /// Records the recorder's own frames of the walk just made (`self.prev`), relative to its
    /// first stack pointer, for the next captures made through the same path.
    #[cold]
    #[inline(never)]
    fn remember_path(&mut self, sp0: u64) {
        let w = &*self.prev;
        let n = w.own + 1;
        let mut p = OwnPath::NONE;
        p.n = n;
        for i in 0..n {
            p.ra[i] = w.frames[i];
            p.rel[i] = w.sp[i] - sp0;
        }
        if let Some(q) = (0..w.nbp).rev().find(|&q| w.bp_frame[q] < n) {
            p.bp_rel = w.bp_at[q] - sp0;
        }
        let k = self.next_path;
        self.paths[k] = p;
        self.next_path = (k + 1) % OWN_PATHS;
    }

    /// The rest of a lookup whose home slot did not hold the key: the probe sequence, else the
    /// rule derived now. Key 0 (a zero return address: the stack's end) has rule 0.
    #[cold]
    #[inline(never)]
    fn lookup_cold(&mut self, t: *const AtomicU64, key: u64) -> Rule {
        if key == 0 {
            return Rule(0);
        }
        if key < table::MAX_KEY - 1 {
            if let Some(r) = table::lookup(t, key) {
                return r;
            }
        }
        self.miss(key)
    }

    /// A step by a special rule (`SLOW`, `SIGNAL`, `END`).
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn special(
        &mut self,
        rule: Rule,
        key: u64,
        at_ip: bool,
        sp: u64,
        bp: u64,
        own_stack: bool,
        bounds: &mut Bounds,
    ) -> Special {
        if rule == Rule::END {
            return Special::End(End::Outermost);
        }
        if rule == Rule::SIGNAL {
            add(&self.counters.signal_steps, 1);
            return match self.signal_step(sp, own_stack, bounds) {
                Ok(Some((ra, sp, bp))) => Special::Next {
                    ra,
                    sp,
                    bp,
                    ip: true,
                },
                Ok(None) => Special::End(End::Outermost),
                Err(e) => Special::End(e),
            };
        }
        add(&self.counters.slow_steps, 1);
        let addr = if at_ip { key - 1 } else { key };
        match self.framehop_step(addr, at_ip, sp, bp, *bounds) {
            // (framehop's stack pointer must be an aligned word of the stack above this frame,
            // as every other step's.)
            Ok(Some((ra, nsp, bp))) if nsp.is_multiple_of(8) && nsp > sp && bounds.ok(nsp - 8) => {
                Special::Next {
                    ra,
                    sp: nsp,
                    bp,
                    ip: false,
                }
            }
            Ok(Some(_)) => Special::End(End::Truncated),
            Ok(None) => Special::End(End::Outermost),
            Err(()) => Special::End(End::Truncated),
        }
    }

    /// One step by framehop: from the frame at `addr` (an instruction pointer if `ip`) with
    /// `sp`/`bp`, reads checked against `bounds`. Returns the caller's (return address, sp, bp),
    /// `Ok(None)` at the outermost frame, `Err` where framehop cannot go on.
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

    /// The step through a signal frame: `sp` is the CFA of the handler's frame, where the
    /// kernel's `ucontext` lies. Returns the interrupted (rip, rsp, rbp) and moves `bounds` to
    /// the stack the interrupted code ran on.
    fn signal_step(
        &mut self,
        sp: u64,
        own_stack: bool,
        bounds: &mut Bounds,
    ) -> Result<Option<(u64, u64, u64)>, End> {
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
        if !nsp.is_multiple_of(8) {
            return Err(End::Truncated);
        }
        if bounds.ok(nsp) {
            // The same stack (a signal handled on the stack it interrupted).
        } else if nsp >= self.stack_lo && nsp < self.stack_top {
            *bounds = Bounds::new(nsp, self.stack_top);
        } else if self.alt.contains(&nsp) {
            *bounds = Bounds::new(nsp, self.alt.end);
        } else {
            // Interrupted on a stack we know nothing of (a coroutine's).
            return Err(End::Foreign);
        }
        Ok(Some((ip, nsp, nbp)))
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

/// The lean walk's frames that need nothing but their rule, in assembly: the common frame is
/// 12 instructions (the probe and the rule's test, the check against `lim`, the return address
/// read and stored), where the compiler, with the rest of the walk's state live around the
/// loop, spilled some of it to memory. The same steps as the Rust loop of `run` (see there):
/// a CFA = rsp + 8a rule with rbp unchanged, or (lean) with rbp saved at CFA - 8b, noted in
/// `bp_loc`; a CFA = rbp + 8a rule, with the same checks as the Rust path (which does not
/// note the frame as `irregular`: only a walk that records its own path needs that, never a
/// lean one). Returns `(x, 0)` at a rule it does not take (`x`: the entry with the key taken
/// out, as in `run`; `sp` unchanged), or `(cfa, cfa)` with `sp` = the CFA when the CFA is
/// above the stack (`ends[1]` = its top + 1, or more) or the buffer is full (`*fp` = `ends[0]`,
/// its end); the frame is not recorded then. A CFA at `lim` or above but below both sets the
/// next `lim` here, as `run`'s careful path would (`lim` is a bound on the frames the buffer
/// must have room for, see there): about 0.5 times a capture on random depths, where leaving
/// the loop for it cost some 45 instructions each time.
///
/// # Safety
/// `t` is a rule table's slots; `*fp` has room for every frame below `lim` (see `run`), and
/// `ends[0]` is the buffer's end; every word in `[sp, ends[1] - 1)` is readable.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn lean_frames(
    t: *const AtomicU64,
    fp: &mut *mut u64,
    key: &mut u64,
    sp: &mut u64,
    bp_loc: &mut u64,
    bp: &mut u64,
    lim: u64,
    ends: &[u64; 2],
) -> (u64, u64) {
    // The probe takes the key's low 16 bits as its home slot (`table::home`).
    const _: () = assert!(table::SLOTS == 1 << 16);
    let (mut k, mut s, mut f, mut b, mut r) = (*key, *sp, *fp, *bp_loc, *bp);
    let (x, how): (u64, u64);
    // `x` is the entry with the key taken out: the stored rule (the rule minus one, see
    // `table::Rule`) when the entry is the key's. Every exit but the one at `lim` goes through
    // label 9, which adds the one back.
    std::arch::asm!(
        "movzx {i:e}, {k:x}",
        "mov {x}, {k}",
        "rol {x}, {bits}",
        "xor {x}, qword ptr [{t} + {i}*8]",
        "cmp {x}, {amax}",
        "ja 3f",
        // CFA = rsp + 8a.
        "4:",
        "lea {s}, [{s} + {x}*8 + 8]",
        "5:",
        "cmp {s}, {lim}",
        "jae 7f",
        "19:",
        "mov {k}, qword ptr [{s} - 8]",
        "mov qword ptr [{f}], {k}",
        "add {f}, 8",
        "movzx {i:e}, {k:x}",
        "mov {x}, {k}",
        "rol {x}, {bits}",
        "xor {x}, qword ptr [{t} + {i}*8]",
        "cmp {x}, {amax}",
        "jbe 4b",
        // CFA = rsp + 8a, rbp at CFA - 8b (b >= 1: b = 0 is the case above; a >= 1: every rule
        // below RBP_BASE but 0 has it, and 0 is none stored). Stored: (a - 1) | b << 12.
        "3:",
        "cmp {x}, {rspmax}",
        "ja 9f",
        "mov {c}, {x}",
        "and {c}, {amask}",
        "lea {s}, [{s} + {c}*8 + 8]",
        "mov {c}, {x}",
        "shr {c}, {bshift}",
        "neg {c}",
        "lea {b}, [{s} + {c}*8]",
        "jmp 5b",
        // CFA = rbp + 8a (a >= 1), rbp saved at CFA - 8b or unchanged. rbp may hold anything:
        // the CFA must be an aligned word above rsp (and below `lim`, checked at 5), the slot
        // at or above rsp. Anything else goes to the Rust path (which ends the walk there).
        "9:",
        "add {x}, 1",
        "cmp {x}, {rbpmax}",
        "ja 6f",
        "mov {c}, {x}",
        "and {c}, {amask}",
        "jz 6f",
        // The lean walk's pending saved rbp first.
        "test {b}, {b}",
        "jz 22f",
        "mov {bp}, qword ptr [{b}]",
        "xor {b:e}, {b:e}",
        "22:",
        "lea {c}, [{bp} + {c}*8]",
        "test {c}, 7",
        "jnz 6f",
        "lea {i}, [{s} + 8]",
        "cmp {c}, {i}",
        "jb 6f",
        "mov {i}, {x}",
        "shr {i}, {bshift}",
        "and {i}, {bmask}",
        "jz 23f",
        "shl {i}, 3",
        "neg {i}",
        "add {i}, {c}",
        "cmp {i}, {s}",
        "jb 6f",
        "mov {b}, {i}",
        "23:",
        "mov {s}, {c}",
        "jmp 5b",
        "6:",
        "xor {c:e}, {c:e}",
        "jmp 8f",
        // At `lim`: within the stack and with room left, the next `lim` from here.
        "7:",
        "cmp {s}, qword ptr [{e} + 8]",
        "jae 17f",
        "mov {c}, qword ptr [{e}]",
        "sub {c}, {f}",
        "jbe 17f",
        "lea {lim}, [{s} + {c}]",
        "cmp {lim}, qword ptr [{e} + 8]",
        "cmova {lim}, qword ptr [{e} + 8]",
        "jmp 19b",
        "17:",
        "mov {c:e}, 1",
        "8:",
        k = inout(reg) k,
        s = inout(reg) s,
        f = inout(reg) f,
        b = inout(reg) b,
        bp = inout(reg) r,
        t = in(reg) t,
        lim = inout(reg) lim => _,
        e = in(reg) ends,
        x = out(reg) x,
        i = out(reg) _,
        c = out(reg) how,
        bits = const table::RULE_BITS,
        amax = const table::A_MASK - 1,
        amask = const table::A_MASK,
        rspmax = const table::RBP_BASE - 2,
        rbpmax = const 2 * table::RBP_BASE - 1,
        bmask = const table::B_MASK,
        bshift = const table::B_SHIFT,
        options(nostack)
    );
    (*key, *sp, *fp, *bp_loc, *bp) = (k, s, f, b, r);
    if how != 0 {
        (s, s)
    } else {
        (x, 0)
    }
}

/// Taking walks over pays where stacks repeat (a frame taken over costs a few instructions, a
/// frame walked about twenty) and costs where they do not (the previous walk's frames are checked
/// before each walk, and a frame of it may be where the walk goes). A thread takes walks over in
/// phases: [`ReuseTrial::ON`] captures with it, then, if fewer than a third of their frames were
/// taken over, [`ReuseTrial::OFF`] captures without it before the next try.
pub(super) struct ReuseTrial {
    pub(super) active: bool,
    /// Never stop (`ZMTRACE_UNWIND_REUSE=always`).
    always: bool,
    left: u32,
    walked: u64,
    taken: u64,
}

impl ReuseTrial {
    const ON: u32 = 64;
    const OFF: u32 = 1024;

    pub(super) fn new(active: bool, always: bool) -> ReuseTrial {
        ReuseTrial {
            active,
            always,
            left: Self::ON,
            walked: 0,
            taken: 0,
        }
    }

    #[cold]
    fn end(&mut self) {
        self.active = self.always || !self.active || self.taken * 2 >= self.walked;
        self.left = if self.active { Self::ON } else { Self::OFF };
        self.walked = 0;
        self.taken = 0;
    }
}

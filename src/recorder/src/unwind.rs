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

use crate::{bump, Core, Counters, UnwindMode, MAX_FRAMES, MODULES, MODULES_GENERATION};

/// framehop's rule cache is direct-mapped with 509 slots, far fewer than the return addresses of
/// a real program (Redis touches ~3,000): misses re-parse the CFI, and that was a quarter of the
/// recorder's time. The addresses are spread over [`SUB_CACHES`] caches instead (an 8,144-slot
/// direct-mapped cache in effect), each made on first use.
const SUB_CACHES: usize = 16;
const FRAMEHOP_SLOTS: u64 = 509;

pub(crate) struct Local {
    unwinder: UnwinderX86_64<&'static [u8]>,
    caches: [Option<Box<CacheX86_64>>; SUB_CACHES],
    generation: u64,
    /// The highest address of this thread's stack: reads above it are refused.
    stack_top: u64,
    mode: UnwindMode,
    frames: [u64; MAX_FRAMES],
    reference: [u64; MAX_FRAMES],
}

impl Local {
    pub fn new(stack_top: u64, mode: UnwindMode) -> Local {
        Local {
            unwinder: UnwinderX86_64::new(),
            caches: Default::default(),
            generation: u64::MAX,
            stack_top,
            mode,
            frames: [0; MAX_FRAMES],
            reference: [0; MAX_FRAMES],
        }
    }

    pub fn reset_for_thread(&mut self, stack_top: u64) {
        self.stack_top = stack_top;
    }

    /// The current call stack, innermost first, without the recorder's own frames.
    #[inline(always)]
    pub fn capture(&mut self, core: &Core, counters: &Counters) -> &[u64] {
        let n = match self.mode {
            UnwindMode::Fast => self.capture_fast(core, counters),
            UnwindMode::Backtrace => capture_backtrace(core, &mut self.frames),
            UnwindMode::Compare => {
                let n = self.capture_fast(core, counters);
                let m = capture_backtrace(core, &mut self.reference);
                bump(&counters.compared_stacks);
                if self.frames[..n] != self.reference[..m] {
                    bump(&counters.mismatched_stacks);
                }
                n
            }
        };
        &self.frames[..n]
    }

    #[inline(never)]
    fn capture_fast(&mut self, core: &Core, counters: &Counters) -> usize {
        let generation = MODULES_GENERATION.load(Ordering::Acquire);
        if generation != self.generation {
            crate::refresh_modules();
            if let Some(u) = MODULES.lock().unwinder.as_ref() {
                self.unwinder = u.clone();
            }
            self.generation = generation;
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
            return capture_backtrace(core, &mut self.frames);
        }
        // Only this thread's stack, between the current stack pointer and its top, is read.
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            if addr >= sp && addr.checked_add(8).is_some_and(|e| e <= top) && addr % 8 == 0 {
                // SAFETY: inside this thread's live stack, checked above.
                Ok(unsafe { (addr as *const u64).read() })
            } else {
                Err(())
            }
        };
        let own = &core.own;
        let mut regs = UnwindRegsX86_64::new(ip, sp, bp);
        let mut frame = FrameAddress::InstructionPointer(ip);
        let mut n = 0;
        let mut skipping = true;
        loop {
            let a = frame.address();
            if !(skipping && own.contains(&a)) {
                skipping = false;
                if n == MAX_FRAMES {
                    bump(&counters.truncated_stacks);
                    break;
                }
                self.frames[n] = a;
                n += 1;
            }
            let lookup = frame.address_for_lookup();
            let slot = ((lookup / FRAMEHOP_SLOTS) % SUB_CACHES as u64) as usize;
            let cache = self.caches[slot].get_or_insert_with(|| Box::new(CacheX86_64::new()));
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
                    bump(&counters.truncated_stacks);
                    break;
                }
            }
        }
        n
    }
}

/// The reference unwinder. `trace_unsynchronized`, because `trace` takes a global lock that
/// another thread may hold across a `fork`.
#[inline(never)]
fn capture_backtrace(core: &Core, out: &mut [u64; MAX_FRAMES]) -> usize {
    let own = &core.own;
    let mut n = 0;
    let mut skipping = true;
    // SAFETY: no other unwinding of this thread's stack runs concurrently.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            let a = frame.ip() as u64;
            if skipping && own.contains(&a) {
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

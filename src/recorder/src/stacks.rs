//! Stacks as the recorder keeps them: the frames to drop from the top ([`Skip`]), how they are
//! captured ([`UnwindMode`]; the capture itself is in `unwind`), and interning, which turns each
//! distinct stack into a small integer the first time it is seen and queues it for the dump.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::state::Core;
use crate::sync::SpinLock;
use crate::threads::ThreadState;

/// The deepest stack recorded; deeper stacks keep their innermost frames and count as truncated.
pub const MAX_FRAMES: usize = 256;

/// Which frames at the top of a stack are the tracer's own, to be dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Those in the module that holds the front end (the preload library).
    OwnModule,
    /// Those at or below this stack pointer: a front end linked into the program reads its
    /// stack pointer in its exported entry function (see [`stack_pointer`]), so its caller's frame
    /// is the first one kept.
    Below(u64),
}

/// The current stack pointer, for [`Skip::Below`]. Inlined into the caller, so it reads the
/// caller's own frame.
#[inline(always)]
pub fn stack_pointer() -> u64 {
    let sp: u64;
    // SAFETY: reads one register.
    unsafe {
        std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags));
    }
    sp
}

/// How stacks are captured (`ZMTRACE_UNWIND`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UnwindMode {
    /// framehop over the in-memory unwind tables (default).
    Fast,
    /// The `backtrace` crate (`_Unwind_Backtrace`): the reference, slow.
    Backtrace,
    /// Both, recording the fast one and counting the stacks where they differ.
    Compare,
}

pub(crate) static NEXT_STACK: AtomicU32 = AtomicU32::new(1);
/// Stacks interned but not yet written to the dump.
pub(crate) static PENDING_STACKS: SpinLock<Vec<(u32, Box<[u64]>)>> = SpinLock::new(Vec::new());

/// Captures and interns the current stack.
#[inline(always)]
pub(crate) fn stack_id(core: &Core, t: &ThreadState, skip: Skip) -> u32 {
    // SAFETY: `local` is only touched by its owning thread, which is this one.
    let local = unsafe { &mut *t.local.get() };
    local.stack_id(core, &t.counters, skip)
}

/// Takes the stacks with a frame in `range` (a module unloaded) out of the store: the same
/// addresses in a module loaded there later are another stack, with an id of its own. Their
/// frames are left allocated (a per-thread cache may still point at them until it sees the new
/// module generation); the dump has them already, or will from `PENDING_STACKS`.
pub(crate) fn retire(range: std::ops::Range<u64>) {
    let Some(core) = crate::state::CORE.get() else {
        return;
    };
    let stale: Vec<Box<[u64]>> = core
        .stacks
        .iter()
        .filter(|e| {
            e.key()
                .iter()
                .any(|&a| range.contains(&a) || range.contains(&a.wrapping_sub(1)))
        })
        .map(|e| e.key().clone())
        .collect();
    for frames in stale {
        if let Some((key, _)) = core.stacks.remove(&frames) {
            std::mem::forget(key);
        }
    }
}

/// The id of a stack, and where the stack store keeps its frames (stable: a stack taken out of
/// the store is never freed, so the per-thread cache may point at it).
pub(crate) fn intern(core: &Core, frames: &[u64]) -> (u32, *const u64) {
    if let Some(r) = core.stacks.get(frames) {
        return (*r.value(), r.key().as_ptr());
    }
    let r = core.stacks.entry(frames.into()).or_insert_with(|| {
        let id = NEXT_STACK.fetch_add(1, Ordering::Relaxed);
        PENDING_STACKS.lock().push((id, frames.into()));
        id
    });
    (*r.value(), r.key().as_ptr())
}

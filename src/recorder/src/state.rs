//! The recorder's process-wide state: the front end that registered, the state machine
//! (`UNINIT` → `INITIALIZING` → `READY`; [`disable`] makes it `DISABLED`, a new
//! [`start`](crate::start) `READY` again), and the [`Core`] set up on the first event (the live
//! set and the stack store). All of it lives in statics that are never dropped, so that a
//! destructor running at exit, or another thread still allocating then, never finds it gone.

use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use dashmap::DashMap;

use crate::clock::{calibrate_tsc, mark_start};
use crate::fork::{fork_child, fork_parent, fork_prepare};
use crate::live::LiveSet;
use crate::stacks::UnwindMode;
use crate::{aggregate, modules, output, procinfo, sample};

/// What a front end tells the recorder about itself.
pub struct FrontEnd {
    /// The real allocator's usable size of a block (`malloc_usable_size` of the next allocator).
    pub usable_size: unsafe fn(*mut u8) -> usize,
    /// A function of the front end: the module that holds it is the recorder's own, and its
    /// frames are dropped from the top of every stack
    /// ([`Skip::OwnModule`](crate::Skip::OwnModule)).
    pub own_code: fn(),
    /// True: tracing starts with the first event (the preload library). False: nothing is
    /// recorded until [`start`](crate::start) (the C API and the Rust allocator, which the
    /// environment or the program turns on).
    pub auto_start: bool,
}

pub(crate) static FRONT_END: OnceLock<&'static FrontEnd> = OnceLock::new();

pub(crate) const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
pub(crate) const READY: u8 = 2;
pub(crate) const DISABLED: u8 = 3;
pub(crate) static STATE: AtomicU8 = AtomicU8::new(UNINIT);

/// The event sequence counter: one total order over all threads' events.
pub(crate) static SEQ: AtomicU64 = AtomicU64::new(1);

/// Events that could not be written (after the final flush, or after a write error).
pub(crate) static DROPPED: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
pub(crate) struct Fx(u64);
impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64)
    }
}
type FxBuild = BuildHasherDefault<Fx>;

/// A live block, as the recorder hands it to the live set and gets it back (the set keeps it
/// packed: see `live`).
#[derive(Clone, Copy, Debug)]
pub struct LiveBlock {
    pub size: u64,
    pub usable: u64,
    pub stack: u32,
    /// Reallocs the block went through (aggregated mode only; 0 in event mode).
    pub chain: u32,
    /// The stream (thread state) that allocated or last reallocated it (aggregated mode only).
    pub stream: u32,
}

/// State set up once, on the first event.
pub(crate) struct Core {
    pub(crate) mode: UnwindMode,
    /// Address range of the module holding the recorder (its frames are dropped).
    pub(crate) own: Range<u64>,
    pub(crate) live: LiveSet,
    pub(crate) stacks: DashMap<Box<[u64]>, u32, FxBuild>,
    /// Process facts for the dump's first record.
    pub(crate) proc: procinfo::ProcInfo,
}

pub(crate) static CORE: OnceLock<Core> = OnceLock::new();

/// Makes the recorder ready; called on the first event. Returns the core if recording.
#[inline]
pub(crate) fn core() -> Option<&'static Core> {
    if STATE.load(Ordering::Acquire) == READY {
        return CORE.get();
    }
    init_slow()
}

/// Set by [`start`](crate::start): a front end without `auto_start` initialises only then.
pub(crate) static START_REQUESTED: AtomicBool = AtomicBool::new(false);

#[cold]
pub(crate) fn init_slow() -> Option<&'static Core> {
    let front = FRONT_END.get().copied()?;
    if !front.auto_start && !START_REQUESTED.load(Ordering::Acquire) {
        return None;
    }
    if STATE
        .compare_exchange(UNINIT, INITIALIZING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Being set up by this very thread (an allocation made while initialising) or disabled.
        return match STATE.load(Ordering::Acquire) {
            READY => CORE.get(),
            DISABLED => {
                output::note_late();
                None
            }
            _ => None,
        };
    }
    if secure_execution() {
        // setuid, setgid or file capabilities: the program runs with rights its user does not
        // have, and its memory, arguments and environment are not the user's to record.
        STATE.store(DISABLED, Ordering::Release);
        return None;
    }
    calibrate_tsc();
    mark_start();
    let proc = procinfo::ProcInfo::read();
    let mode = match proc.env("ZMTRACE_UNWIND").as_deref() {
        Some("backtrace") => UnwindMode::Backtrace,
        Some("compare") => UnwindMode::Compare,
        _ => UnwindMode::Fast,
    };
    sample::configure(|k| proc.env(k));
    aggregate::ON.store(
        proc.env("ZMTRACE_AGGREGATE").as_deref() == Some("1"),
        Ordering::Relaxed,
    );
    let list = modules::enumerate();
    let own_addr = front.own_code as usize as u64;
    let own = list
        .iter()
        .find(|m| {
            m.info
                .segments
                .iter()
                .any(|&(s, e)| s <= own_addr && own_addr < e)
        })
        .map(|m| m.range.clone())
        .unwrap_or(0..0);
    modules::install(list);
    let _ = CORE.set(Core {
        mode,
        own,
        live: LiveSet::new(aggregate::on()),
        stacks: DashMap::with_hasher_and_shard_amount(FxBuild::default(), 64),
        proc,
    });
    if sample::only_sampled() {
        // Before the first insert: the filter counts every entry from the start.
        if let Some(core) = CORE.get() {
            core.live.enable_filter();
            core.live.publish_filter();
        }
    }
    // SAFETY: registering handlers has no preconditions; they are plain extern "C" functions.
    unsafe {
        libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
    }
    // SAFETY: no preconditions.
    output::OWNER_PID.store(unsafe { libc::getpid() } as u32, Ordering::Release);
    STATE.store(READY, Ordering::Release);
    if front.auto_start {
        // Now, while the process is starting (one thread): the descriptor goes high at once, and
        // the program, which may close 0..2 and reopen them in main, gets the numbers it expects.
        let _ = output::open_now();
    }
    CORE.get()
}

/// True in a secure-execution process (`AT_SECURE`: setuid, setgid, file capabilities).
pub fn secure_execution() -> bool {
    // SAFETY: getauxval has no preconditions.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// Stops recording for good in this process (e.g. `ZMTRACE` says so, or a write failed).
pub fn disable() {
    STATE.store(DISABLED, Ordering::Release);
}

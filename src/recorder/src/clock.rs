//! The recorder's clocks: the start of the dump (monotonic and wall clock, taken together) and
//! the event timestamps, read from the TSC where the kernel trusts it, else from the vDSO's
//! `CLOCK_MONOTONIC`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::procinfo;

/// CLOCK_MONOTONIC at start, in ns: event timestamps are relative to it.
static START_MONO: AtomicU64 = AtomicU64::new(0);
/// The wall clock at the same moment (Unix ns): the dump's start time, to which timestamps add.
pub(crate) static START_UNIX: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds per TSC tick, as a 32.32 fixed-point number; 0 when timestamps come from
/// `clock_gettime` instead. Reading the TSC costs a third of the vDSO clock, and the clock was the
/// largest single cost left on the hot path.
static TSC_MULT: AtomicU64 = AtomicU64::new(0);
static START_TSC: AtomicU64 = AtomicU64::new(0);

#[inline]
fn rdtsc() -> u64 {
    // SAFETY: reads the time-stamp counter; x86_64 always has it.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// Uses the TSC only where the kernel itself trusts it as its clock source (invariant and
/// synchronised across CPUs); measures its rate against CLOCK_MONOTONIC over 2 ms.
pub(crate) fn calibrate_tsc() {
    let source =
        procinfo::read_file(c"/sys/devices/system/clocksource/clocksource0/current_clocksource");
    if source.trim_ascii() != b"tsc" {
        return;
    }
    let (m0, t0) = (now_mono(), rdtsc());
    let mut m1 = m0;
    while m1 - m0 < 2_000_000 {
        m1 = now_mono();
    }
    let t1 = rdtsc();
    if t1 > t0 {
        TSC_MULT.store(
            (((m1 - m0) as u128) << 32).div_ceil((t1 - t0) as u128) as u64,
            Ordering::Relaxed,
        );
    }
}

/// Takes the two start clocks together: at the first event, and again in a forked child, whose
/// dump starts at the fork.
pub(crate) fn mark_start() {
    START_TSC.store(rdtsc(), Ordering::Relaxed);
    START_MONO.store(now_mono(), Ordering::Relaxed);
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    START_UNIX.store(unix, Ordering::Relaxed);
}

pub(crate) fn now_mono() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_MONOTONIC is served by the vDSO without a syscall.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds since the dump's start.
#[inline]
pub(crate) fn timestamp() -> u64 {
    let mult = TSC_MULT.load(Ordering::Relaxed);
    if mult != 0 {
        let ticks = rdtsc().saturating_sub(START_TSC.load(Ordering::Relaxed));
        ((ticks as u128 * mult as u128) >> 32) as u64
    } else {
        now_mono().saturating_sub(START_MONO.load(Ordering::Relaxed))
    }
}

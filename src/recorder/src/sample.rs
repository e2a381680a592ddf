//! Sampled recording (`zmtrace run --sample BYTES`): Poisson sampling over allocated bytes.
//!
//! Every byte the program allocates is picked independently with probability `1/interval`; a
//! block is recorded (stack, event, live set) when one of its bytes is picked, which happens with
//! probability `p = 1 - (1 - 1/interval)^size` ([`zmtrace_format::sample_probability`]), and the
//! analyzer weighs it by `1/p` (unbiased). The gaps between picked bytes are geometric, so each
//! thread keeps one countdown: the bytes left before the next pick. An unsampled allocation costs
//! a subtraction and a compare on that countdown, nothing else (no unwinding, no event, no
//! live-set insert unless `--all-blocks`).
//!
//! The gap is drawn as `ceil(ln U / ln(1 - 1/interval))` (the discrete form of `-ln(U) * mean`),
//! with `U` from a per-thread splitmix64 seeded from the clock and the thread id, or from
//! `ZMTRACE_SAMPLE_SEED` for reproducible runs. With `interval` 1 every gap is 1: every block.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The mean interval in bytes, 0 when not sampling. Set once at start-up.
static INTERVAL: AtomicU64 = AtomicU64::new(0);
/// `--all-blocks`: unsampled blocks still go in the live set (address and size, no stack).
static ALL_BLOCKS: AtomicBool = AtomicBool::new(false);
/// Sampling without `--all-blocks`: an unsampled block needs nothing but the countdown, and
/// the live set holds the sampled blocks only (its free filter is on: `live`).
static ONLY_SAMPLED: AtomicBool = AtomicBool::new(false);
/// `ZMTRACE_SAMPLE_SEED`, or 0: seed from the clock.
static SEED: AtomicU64 = AtomicU64::new(0);
/// Forks this process has made (counted before each; a child starts with its parent's count):
/// tells the children of one parent apart when their samplers are re-seeded.
static FORKS: AtomicU64 = AtomicU64::new(0);

/// Called before a fork (from the `pthread_atfork` prepare handler).
pub(crate) fn before_fork() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// The stack id of a block in the live set that was not sampled (`--all-blocks`): it has no
/// stack and no events, and its free writes none. 0: interned stacks are numbered from 1
/// (`stacks::NEXT_STACK`), and 0 fits every packing of the live set, so an unsampled block keeps
/// its 16-byte slot (`u32::MAX` would send each one to the overflow slab).
pub(crate) const UNSAMPLED: u32 = 0;

/// Reads the settings (`ZMTRACE_SAMPLE`, `ZMTRACE_SAMPLE_ALL`, `ZMTRACE_SAMPLE_SEED`).
pub(crate) fn configure(env: impl Fn(&str) -> Option<String>) {
    let interval = env("ZMTRACE_SAMPLE")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    INTERVAL.store(interval, Ordering::Relaxed);
    let all = interval > 0 && env("ZMTRACE_SAMPLE_ALL").as_deref() == Some("1");
    ALL_BLOCKS.store(all, Ordering::Relaxed);
    ONLY_SAMPLED.store(interval > 0 && !all, Ordering::Relaxed);
    let seed = env("ZMTRACE_SAMPLE_SEED")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    SEED.store(seed, Ordering::Relaxed);
}

/// The interval, 0 when every block is recorded.
#[inline]
pub(crate) fn interval() -> u64 {
    INTERVAL.load(Ordering::Relaxed)
}

#[inline]
pub(crate) fn all_blocks() -> bool {
    ALL_BLOCKS.load(Ordering::Relaxed)
}

/// Sampling, without `--all-blocks`.
#[inline(always)]
pub(crate) fn only_sampled() -> bool {
    ONLY_SAMPLED.load(Ordering::Relaxed)
}

/// The countdown's fast half: `left` after a block of `size` bytes that is certainly not
/// sampled, or None (nothing counted) when [`Sampler::take`] must decide (a pick, or no gap
/// drawn yet: `left` 0).
#[inline(always)]
pub(crate) fn skip(left: u64, size: u64) -> Option<u64> {
    let size = size.max(1); // malloc(0) is a block too
    (size < left).then(|| left - size)
}

/// One thread's sampler: touched only by its thread (it lives in the thread's state).
#[derive(Debug, Default)]
pub(crate) struct Sampler {
    /// Bytes left before the next picked byte; 0: not drawn yet.
    left: u64,
    rng: u64,
}

impl Sampler {
    /// A sampler for the thread with state `stream` and id `tid`: seeded from
    /// `ZMTRACE_SAMPLE_SEED` and the stream index alone (reproducible: a program's threads claim
    /// their states in the same order from run to run), or else from the clock and the id.
    pub(crate) fn new(stream: u32, tid: u32) -> Sampler {
        let salt = u64::from(stream)
            .wrapping_add(1)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let seed = match SEED.load(Ordering::Relaxed) {
            0 => {
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: a valid out pointer.
                unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
                (ts.tv_sec as u64).wrapping_mul(1_000_000_007)
                    ^ ts.tv_nsec as u64
                    ^ u64::from(tid) << 40
            }
            s => s,
        };
        Sampler::seeded(seed ^ salt)
    }

    pub(crate) fn seeded(seed: u64) -> Sampler {
        Sampler { left: 0, rng: seed }
    }

    /// The forking thread's sampler in a forked child, re-seeded: the child got a copy of the
    /// parent's countdown and generator, so, allocating as its parent does after the fork (a
    /// pre-fork server's workers), it would sample exactly the blocks the parent samples. The
    /// new seed comes from the parent's state and the fork's number ([`before_fork`]): a seeded
    /// run stays reproducible, and two children of one parent differ.
    #[cold]
    pub(crate) fn reseed_in_child(&mut self) {
        let forks = FORKS.load(Ordering::Relaxed);
        let mut mix = Sampler::seeded(self.rng ^ forks.wrapping_mul(0xd6e8_feb8_6659_fd93));
        *self = Sampler::seeded(mix.next_u64());
    }

    /// splitmix64: one add and a few multiplies, good enough statistically for gaps.
    #[inline]
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A geometric gap with mean `interval` (at least 1).
    #[cold]
    fn draw(&mut self, interval: u64) -> u64 {
        if interval <= 1 {
            return 1;
        }
        // U in (0, 1]: 53 random bits, never 0 (ln 0).
        let u = ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let gap = (u.ln() / (-1.0 / interval as f64).ln_1p()).ceil();
        if gap >= u64::MAX as f64 {
            u64::MAX
        } else {
            (gap as u64).max(1)
        }
    }

    /// The countdown (bytes left before the next pick; 0: no gap drawn yet). Without
    /// `--all-blocks` it lives in the thread's TLS word between events (see `countdown_skips`
    /// in the crate root): the full path loads it here before [`Self::take`] and stores it back.
    #[inline(always)]
    pub(crate) fn left(&self) -> u64 {
        self.left
    }

    #[inline(always)]
    pub(crate) fn set_left(&mut self, left: u64) {
        self.left = left;
    }

    /// Counts `size` allocated bytes; true when the block holds a picked byte (sample it).
    #[inline]
    pub(crate) fn take(&mut self, size: u64, interval: u64) -> bool {
        let size = size.max(1); // malloc(0) is a block too
        if self.left == 0 {
            self.left = self.draw(interval);
        }
        if size < self.left {
            self.left -= size;
            return false;
        }
        // Picked: the bytes after this block start a fresh gap (memoryless), drawn next time.
        self.left = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_have_the_interval_as_their_mean() {
        // Geometric with mean T: variance T^2 - T; the mean of n gaps is within 5 sigma
        // (sigma = sqrt(T^2 - T) / sqrt(n)) of T.
        for &t in &[2u64, 64, 4096, 524_288] {
            let mut s = Sampler::seeded(42 + t);
            let n = 200_000u64;
            let sum: f64 = (0..n).map(|_| s.draw(t) as f64).sum();
            let mean = sum / n as f64;
            let sigma = ((t * t - t) as f64).sqrt() / (n as f64).sqrt();
            assert!(
                (mean - t as f64).abs() < 5.0 * sigma,
                "interval {t}: mean gap {mean}, 5 sigma {}",
                5.0 * sigma
            );
        }
        let mut s = Sampler::seeded(1);
        assert!((0..1000).all(|_| s.draw(1) == 1));
    }

    #[test]
    fn a_child_samples_other_blocks_than_its_parent() {
        let gaps = |s: &mut Sampler| (0..64).map(|_| s.draw(4096)).collect::<Vec<_>>();
        let mut parent = Sampler::seeded(99);
        gaps(&mut parent);
        before_fork();
        let mut child = Sampler { ..parent };
        child.reseed_in_child();
        let mut twin = Sampler { ..parent };
        twin.reseed_in_child();
        // The same fork: the same child (reproducible); the parent goes on otherwise.
        assert_eq!(gaps(&mut Sampler { ..child }), gaps(&mut twin));
        assert_ne!(
            gaps(&mut Sampler { ..parent }),
            gaps(&mut Sampler { ..child })
        );
        // The next fork of the same parent: another child.
        before_fork();
        let mut second = Sampler { ..parent };
        second.reseed_in_child();
        assert_ne!(gaps(&mut second), gaps(&mut child));
        // A re-seeded countdown still has the interval as its mean gap (5 sigma).
        let n = 100_000u64;
        let mean = (0..n).map(|_| child.draw(4096) as f64).sum::<f64>() / n as f64;
        let sigma = ((4096.0f64 * 4096.0 - 4096.0) / n as f64).sqrt();
        assert!((mean - 4096.0).abs() < 5.0 * sigma, "mean gap {mean}");
    }

    #[test]
    fn blocks_are_sampled_with_the_probability_the_weight_assumes() {
        // 400,000 blocks of 64 B at 4 KiB: sampled count is binomial(n, p).
        let (t, size, n) = (4096u64, 64u64, 400_000u64);
        let mut s = Sampler::seeded(7);
        let hits = (0..n).filter(|_| s.take(size, t)).count() as f64;
        let p = zmtrace_format::sample_probability(size, t);
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (hits - n as f64 * p).abs() < 5.0 * sigma,
            "{hits} vs {}",
            n as f64 * p
        );
        // The same draws through the countdown's fast half first, as the hot path does.
        let mut s = Sampler::seeded(7);
        let fast = |s: &mut Sampler| match skip(s.left(), size) {
            Some(left) => {
                s.set_left(left);
                false
            }
            None => s.take(size, t),
        };
        let hits_fast = (0..n).filter(|_| fast(&mut s)).count() as f64;
        assert_eq!(hits_fast, hits);
        // interval 1: every block.
        let mut s = Sampler::seeded(7);
        assert!((0..1000).all(|i| s.take(i % 100, 1)));
        assert!((0..1000).all(|i| skip(s.left(), i % 100).is_none()));
    }
}

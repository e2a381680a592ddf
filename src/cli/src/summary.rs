//! Replaying a dump's events in order: the counts and the heap curve that `run` and `dump-info`
//! print. The full reports build on the same replay.

use std::collections::HashMap;

use zmtrace_format::{Dump, EventKind};

/// What a replay of one dump found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Successful allocations (malloc, calloc, memalign…, and `realloc(NULL, n)`).
    pub allocations: u64,
    /// Blocks freed (by `free`, or by `realloc(p, 0)`).
    pub frees: u64,
    /// Reallocations of an existing block (`realloc(p, n)` that returned a block).
    pub reallocs: u64,
    /// Allocations and reallocations that returned NULL.
    pub failed: u64,
    /// Requested bytes of all allocations, plus the new sizes of reallocations.
    pub bytes_allocated: u64,
    /// The highest total of requested bytes live at once, and when (ns since start).
    pub peak_bytes: u64,
    pub peak_ns: u64,
    /// Blocks still live at the end of the dump (inherited ones included).
    pub live_blocks: u64,
    pub live_bytes: u64,
    /// Threads that produced events.
    pub threads: u64,
    /// Duration covered by the events (ns).
    pub duration_ns: u64,
    /// Frees of addresses that were not live: a sign of a damaged or partial dump.
    pub inconsistent: u64,
}

pub fn summarize(d: &Dump) -> Summary {
    let mut s = Summary::default();
    let mut live: HashMap<u64, u64> = HashMap::with_capacity(d.inherited.len() + 1024);
    let mut cur: u64 = 0;
    for b in &d.inherited {
        live.insert(b.addr, b.size);
        cur += b.size;
    }
    s.peak_bytes = cur;
    let mut tids = std::collections::HashSet::new();
    for e in d.events() {
        tids.insert(e.tid);
        match e.kind {
            EventKind::Alloc { addr, size, .. } => {
                s.allocations += 1;
                s.bytes_allocated += size;
                if let Some(old) = live.insert(addr, size) {
                    s.inconsistent += 1;
                    cur -= old;
                }
                cur += size;
            }
            EventKind::Free { addr } => match live.remove(&addr) {
                Some(size) => {
                    s.frees += 1;
                    cur -= size;
                }
                None => s.inconsistent += 1,
            },
            EventKind::Realloc {
                old_addr,
                new_addr,
                size,
                ..
            } => {
                match live.remove(&old_addr) {
                    Some(old) => cur -= old,
                    None => s.inconsistent += 1,
                }
                if new_addr == 0 && size == 0 {
                    s.frees += 1;
                } else {
                    s.reallocs += 1;
                    s.bytes_allocated += size;
                    live.insert(new_addr, size);
                    cur += size;
                }
            }
            EventKind::AllocFailed { .. } => s.failed += 1,
        }
        if cur > s.peak_bytes {
            s.peak_bytes = cur;
            s.peak_ns = e.ts_ns;
        }
        s.duration_ns = s.duration_ns.max(e.ts_ns);
    }
    s.live_blocks = live.len() as u64;
    s.live_bytes = cur;
    s.threads = tids.len() as u64;
    s
}

/// Bytes for people: 1023 B, 1.5 KiB, 12.3 MiB.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_picks_the_unit() {
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
    }
}

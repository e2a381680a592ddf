//! The program's own mappings (`mmap`, `munmap`, `mremap`) as a metric of their own: never heap
//! blocks, never in the heap figures, never leaks.
//!
//! The replay keeps the mapped address space as disjoint intervals, each with the stack that
//! mapped it, so that any `munmap` is accounted exactly: the middle page of a three-page mapping
//! leaves two mappings of one page behind, a fixed mapping replaces what it covers. Lengths are
//! the kernel's: rounded up to whole pages.
//!
//! - *mapped in all*: the bytes each `mmap` mapped, and what each `mremap` added (its new length
//!   beyond its old one), so that mapped in all = unmapped in all + mapped at exit;
//! - *mapped at exit*: per stack, what of its mappings was still mapped when the dump ended (a
//!   `mremap` makes its new range its own, as a `realloc` does with its block);
//! - *peak*: the most bytes mapped at once.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;
use zmtrace_format::event::{MAP_ANONYMOUS, MAP_SHARED};
use zmtrace_format::{Event, EventKind};

/// The page size the lengths are rounded to (x86-64 Linux, where the recorder runs).
pub const PAGE: u64 = 4096;

fn pages(len: u64) -> u64 {
    len.checked_next_multiple_of(PAGE).unwrap_or(!(PAGE - 1))
}

/// What one stack mapped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapSite {
    /// `mmap` and `mremap` calls made here.
    pub calls: u64,
    /// Bytes mapped here in all (see the module docs).
    pub bytes: u64,
    /// Bytes of the mappings made here still mapped at the end.
    pub at_exit: u64,
}

impl MapSite {
    pub fn merge(&mut self, o: &MapSite) {
        self.calls += o.calls;
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.at_exit = self.at_exit.saturating_add(o.at_exit);
    }
}

#[derive(Clone, Copy, Debug)]
struct Range {
    end: u64,
    stack: u32,
    flags: u32,
}

/// The mappings of one replay. Sums saturate: a damaged dump's lengths must not overflow them.
#[derive(Clone, Debug, Default)]
pub struct Mapped {
    pub maps: u64,
    pub unmaps: u64,
    pub remaps: u64,
    pub bytes_mapped: u64,
    pub bytes_unmapped: u64,
    /// Bytes mapped now (at the end of the replay: at exit).
    pub current: u64,
    pub peak_bytes: u64,
    pub peak_ns: u64,
    /// Mapped ranges left at the end (a partial `munmap` makes two of one), and their bytes by
    /// kind.
    pub ranges_at_exit: u64,
    pub anonymous_at_exit: u64,
    pub file_at_exit: u64,
    pub shared_at_exit: u64,
    pub sites: HashMap<u32, MapSite>,
    ranges: BTreeMap<u64, Range>,
    /// Remaps whose old range left at their `RemapOut`: (thread, old address) to the old
    /// range's flags and the bytes of it that were mapped.
    remapping: HashMap<(u32, u64), (u32, u64)>,
}

impl Mapped {
    /// Takes one event; false if it is not a mapping's.
    pub fn event(&mut self, e: &Event) -> bool {
        match e.kind {
            EventKind::Map {
                addr,
                len,
                flags,
                stack,
                ..
            } => {
                let len = pages(len);
                self.maps += 1;
                self.bytes_mapped = self.bytes_mapped.saturating_add(len);
                let s = self.sites.entry(stack).or_default();
                s.calls += 1;
                s.bytes = s.bytes.saturating_add(len);
                // A fixed mapping replaces what was there (and a mapping whose unmap the dump
                // lost is gone once its address is handed out again).
                let replaced = self.remove(addr, len);
                self.bytes_unmapped = self.bytes_unmapped.saturating_add(replaced);
                self.add(addr, len, stack, flags, e.ts_ns);
            }
            EventKind::Unmap { addr, len } => {
                self.unmaps += 1;
                let cut = self.remove(addr, pages(len));
                self.bytes_unmapped = self.bytes_unmapped.saturating_add(cut);
            }
            EventKind::RemapOut { addr, len } => {
                let flags = self.flags_at(addr);
                let moved = self.remove(addr, pages(len));
                self.remapping.insert((e.tid, addr), (flags, moved));
            }
            EventKind::Remap {
                old_addr,
                old_len,
                new_addr,
                new_len,
                stack,
            } => {
                let new_len = pages(new_len);
                let (flags, moved) = match self.remapping.remove(&(e.tid, old_addr)) {
                    Some(f) => f,
                    None => {
                        let f = self.flags_at(old_addr);
                        (f, self.remove(old_addr, pages(old_len)))
                    }
                };
                self.remaps += 1;
                // What of the old range was mapped moves; the rest is new, or was given up.
                let grown = new_len.saturating_sub(moved);
                self.bytes_mapped = self.bytes_mapped.saturating_add(grown);
                self.bytes_unmapped = self
                    .bytes_unmapped
                    .saturating_add(moved.saturating_sub(new_len));
                let s = self.sites.entry(stack).or_default();
                s.calls += 1;
                s.bytes = s.bytes.saturating_add(grown);
                let cut = self.remove(new_addr, new_len);
                self.bytes_unmapped = self.bytes_unmapped.saturating_add(cut);
                self.add(new_addr, new_len, stack, flags, e.ts_ns);
            }
            _ => return false,
        }
        true
    }

    fn flags_at(&self, addr: u64) -> u32 {
        self.ranges
            .range(..=addr)
            .next_back()
            .filter(|(_, r)| r.end > addr)
            .map_or(0, |(_, r)| r.flags)
    }

    fn add(&mut self, addr: u64, len: u64, stack: u32, flags: u32, ts: u64) {
        if len == 0 {
            return;
        }
        let end = addr.saturating_add(len);
        self.ranges.insert(addr, Range { end, stack, flags });
        self.current += end - addr;
        if self.current > self.peak_bytes {
            self.peak_bytes = self.current;
            self.peak_ns = ts;
        }
    }

    /// Unmaps `[addr, addr + len)`, cutting the ranges it overlaps; returns the bytes that were
    /// mapped.
    fn remove(&mut self, addr: u64, len: u64) -> u64 {
        let end = addr.saturating_add(len);
        if end <= addr {
            return 0;
        }
        let mut cut = 0;
        // The ranges that start before `end` and end after `addr`: at most one starts before
        // `addr` (they are disjoint).
        let first = self
            .ranges
            .range(..addr)
            .next_back()
            .filter(|(_, r)| r.end > addr)
            .map(|(&s, _)| s)
            .unwrap_or(addr);
        let hit: Vec<(u64, Range)> = self
            .ranges
            .range(first..end)
            .map(|(&s, &r)| (s, r))
            .collect();
        for (s, r) in hit {
            self.ranges.remove(&s);
            let (cut_s, cut_e) = (s.max(addr), r.end.min(end));
            self.current -= cut_e - cut_s;
            cut += cut_e - cut_s;
            if s < addr {
                self.ranges.insert(s, Range { end: addr, ..r });
            }
            if r.end > end {
                self.ranges.insert(end, r);
            }
        }
        cut
    }

    /// At the end of the replay: what is still mapped, per stack.
    pub fn finish(&mut self) {
        self.remapping.clear();
        for (&s, r) in &self.ranges {
            let len = r.end - s;
            self.sites.entry(r.stack).or_default().at_exit += len;
            self.ranges_at_exit += 1;
            if r.flags & MAP_ANONYMOUS != 0 {
                self.anonymous_at_exit += len;
            } else {
                self.file_at_exit += len;
            }
            if r.flags & MAP_SHARED != 0 {
                self.shared_at_exit += len;
            }
        }
    }

    /// Mapped ranges now, ascending: (start, end, stack).
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        self.ranges.iter().map(|(&s, r)| (s, r.end, r.stack))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, kind: EventKind) -> Event {
        Event {
            seq,
            ts_ns: seq,
            tid: 1,
            kind,
        }
    }

    fn map(addr: u64, len: u64, stack: u32) -> EventKind {
        EventKind::Map {
            addr,
            len,
            prot: 3,
            flags: MAP_ANONYMOUS,
            stack,
        }
    }

    #[test]
    fn a_partial_unmap_is_exact() {
        let mut m = Mapped::default();
        m.event(&ev(1, map(0x10000, 3 * PAGE, 1)));
        m.event(&ev(
            2,
            EventKind::Unmap {
                addr: 0x10000 + PAGE,
                len: PAGE,
            },
        ));
        assert_eq!(m.current, 2 * PAGE);
        assert_eq!(
            m.ranges().collect::<Vec<_>>(),
            [
                (0x10000, 0x10000 + PAGE, 1),
                (0x10000 + 2 * PAGE, 0x10000 + 3 * PAGE, 1)
            ]
        );
        // An unmap across both pieces and beyond takes only what is mapped.
        m.event(&ev(3, map(0x40000, 10, 2)));
        m.event(&ev(
            4,
            EventKind::Unmap {
                addr: 0,
                len: 0x10000 + 3 * PAGE - 100,
            },
        ));
        m.finish();
        assert_eq!((m.current, m.peak_bytes), (PAGE, 3 * PAGE));
        assert_eq!(m.bytes_mapped, m.bytes_unmapped + m.current);
        assert_eq!(m.sites[&1].at_exit, 0);
        assert_eq!(m.sites[&2].at_exit, PAGE);
        assert_eq!(m.ranges_at_exit, 1);
    }

    #[test]
    fn a_fixed_map_replaces_and_a_remap_moves() {
        let mut m = Mapped::default();
        m.event(&ev(1, map(0x10000, 4 * PAGE, 1)));
        m.event(&ev(2, map(0x11000, PAGE, 2)));
        assert_eq!(m.current, 4 * PAGE);
        m.event(&ev(
            3,
            EventKind::RemapOut {
                addr: 0x13000,
                len: PAGE,
            },
        ));
        m.event(&ev(
            5,
            EventKind::Remap {
                old_addr: 0x13000,
                old_len: PAGE,
                new_addr: 0x90000,
                new_len: 3 * PAGE,
                stack: 3,
            },
        ));
        m.finish();
        assert_eq!(m.current, 6 * PAGE);
        assert_eq!(m.sites[&1].at_exit, 2 * PAGE);
        assert_eq!(m.sites[&2].at_exit, PAGE);
        assert_eq!(
            m.sites[&3],
            MapSite {
                calls: 1,
                bytes: 2 * PAGE,
                at_exit: 3 * PAGE
            }
        );
        assert_eq!(m.bytes_mapped, m.bytes_unmapped + m.current);
        assert_eq!(m.anonymous_at_exit, 6 * PAGE);
    }

    proptest::proptest! {
        /// Against a model that keeps each page's owner: whatever the calls, the intervals hold
        /// exactly the pages mapped, each with its stack, and what was mapped in all is what was
        /// unmapped plus what is left.
        #[test]
        fn intervals_match_a_page_model(
            ops in proptest::collection::vec((0u8..3, 0u64..48, 0u64..12, 0u64..48, 0u64..12, 1u32..4), 0..60)
        ) {
            let mut m = Mapped::default();
            let mut model: BTreeMap<u64, u32> = BTreeMap::new();
            let mut seq = 0;
            for (op, a, n, b, k, stack) in ops {
                let (a, b) = (a * PAGE, b * PAGE);
                seq += 2;
                match op {
                    0 => {
                        m.event(&ev(seq, map(a, n * PAGE, stack)));
                        for p in 0..n {
                            model.insert(a + p * PAGE, stack);
                        }
                    }
                    1 => {
                        m.event(&ev(seq, EventKind::Unmap { addr: a, len: n * PAGE }));
                        for p in 0..n {
                            model.remove(&(a + p * PAGE));
                        }
                    }
                    _ => {
                        m.event(&ev(seq - 1, EventKind::RemapOut { addr: a, len: n * PAGE }));
                        m.event(&ev(seq, EventKind::Remap {
                            old_addr: a,
                            old_len: n * PAGE,
                            new_addr: b,
                            new_len: k * PAGE,
                            stack,
                        }));
                        for p in 0..n {
                            model.remove(&(a + p * PAGE));
                        }
                        for p in 0..k {
                            model.insert(b + p * PAGE, stack);
                        }
                    }
                }
                let mut pages: BTreeMap<u64, u32> = BTreeMap::new();
                let mut last_end = 0;
                for (s, e, st) in m.ranges() {
                    proptest::prop_assert!(s >= last_end && e > s, "disjoint, not empty");
                    last_end = e;
                    for p in (s..e).step_by(PAGE as usize) {
                        pages.insert(p, st);
                    }
                }
                proptest::prop_assert_eq!(&pages, &model);
                proptest::prop_assert_eq!(m.current, model.len() as u64 * PAGE);
                proptest::prop_assert_eq!(m.bytes_mapped, m.bytes_unmapped + m.current);
                proptest::prop_assert!(m.peak_bytes >= m.current);
            }
            m.finish();
            let mut per_stack: BTreeMap<u32, u64> = BTreeMap::new();
            for st in model.values() {
                *per_stack.entry(*st).or_default() += PAGE;
            }
            let got: BTreeMap<u32, u64> = m
                .sites
                .iter()
                .filter(|(_, s)| s.at_exit > 0)
                .map(|(&id, s)| (id, s.at_exit))
                .collect();
            proptest::prop_assert_eq!(got, per_stack);
        }
    }
}

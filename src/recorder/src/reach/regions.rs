//! The program's own mappings, roots of the check as memcheck has them: every writable mapping
//! the program made itself (CPython's pymalloc arenas, GCC's GC pages, a coroutine library's
//! stacks, a file mapped `MAP_PRIVATE`), and the writable anonymous mappings that existed before
//! the recorder ran (the loader's early memory: the main thread's TLS, link maps).
//!
//! Which mappings are the program's, per mapping:
//!
//! - made by a call of the program (or of a library it uses) to `mmap`/`mremap`, seen by the
//!   front end's hooks ([`mapped`], [`remapped`]): **a root**, until `munmap` ([`unmapped`]);
//! - made by the allocator: not a root. glibc's `malloc` maps its arenas and large chunks with
//!   internal calls that no hook sees; an allocator that maps through the PLT (jemalloc) does so
//!   from inside the front end's allocator hook, which says so (the `allocator` argument);
//! - made by the recorder (its heap, the check's arrays): raw system calls, never seen; its
//!   calls under the recorder guard are ignored too;
//! - made by glibc for its own use (thread stacks, the loader's mappings of modules): not in the
//!   table; stacks and module data are roots of their own (`roots`);
//! - there before the recorder's first event ([`at_start`], from `/proc/self/maps`): a root if
//!   anonymous and writable, but the `brk` heap, the main stack and the kernel's pages.
//!
//! The check then scans what of each region is still mapped readable and writable (as memcheck,
//! it skips devices), and skips a region that holds a live block: only an allocator puts blocks
//! in a mapping, so such a region is an allocator's heap whatever made it (jemalloc's extents
//! mapped outside any hook, from `mallocx`). Freed chunks of an allocator's heap hold stale
//! pointers and must never be roots.
//!
//! The table is a sorted set of disjoint address ranges in a mapping of its own, changed under
//! the recorder guard (so a thread stopped for the check never holds its lock) and taken by the
//! `fork` handlers.

use std::sync::atomic::{AtomicBool, Ordering};

use super::sys::{read_maps, Buf, MapKind, Mapping};
use crate::sync::{Guard, SpinLock};

pub(crate) struct Regions {
    ranges: Buf<(u64, u64)>,
}

// SAFETY: the buffer is only reached under the lock.
unsafe impl Send for Regions {}

pub(crate) static REGIONS: SpinLock<Regions> = SpinLock::new(Regions { ranges: Buf::new() });

static STARTED: AtomicBool = AtomicBool::new(false);

impl Regions {
    /// Adds `[s, e)`, merging with what it touches.
    fn add(&mut self, s: u64, e: u64) {
        if s >= e {
            return;
        }
        let v = self.ranges.as_slice();
        // First range that ends at or after s, and first that starts after e.
        let i = v.partition_point(|&(_, re)| re < s);
        let j = v.partition_point(|&(rs, _)| rs <= e);
        let (mut ns, mut ne) = (s, e);
        if i < j {
            ns = ns.min(v[i].0);
            ne = ne.max(v[j - 1].1);
        }
        self.splice(i, j, &[(ns, ne)]);
    }

    /// Removes `[s, e)`, splitting what it cuts.
    fn remove(&mut self, s: u64, e: u64) {
        if s >= e {
            return;
        }
        let v = self.ranges.as_slice();
        let i = v.partition_point(|&(_, re)| re <= s);
        let j = v.partition_point(|&(rs, _)| rs < e);
        if i >= j {
            return;
        }
        let mut keep = [(0, 0); 2];
        let mut n = 0;
        if v[i].0 < s {
            keep[n] = (v[i].0, s);
            n += 1;
        }
        if v[j - 1].1 > e {
            keep[n] = (e, v[j - 1].1);
            n += 1;
        }
        self.splice(i, j, &keep[..n]);
    }

    /// Replaces `ranges[i..j]` by `with`.
    fn splice(&mut self, i: usize, j: usize, with: &[(u64, u64)]) {
        let old = self.ranges.as_slice().len();
        let new = old - (j - i) + with.len();
        if new > old && !self.ranges.reserve(new - old) {
            return; // no memory: the region is not a root (as before this table existed)
        }
        let tail = old - j;
        self.ranges.set_len(new.max(old));
        let v = self.ranges.as_mut_slice();
        v.copy_within(j..j + tail, i + with.len());
        v[i..i + with.len()].copy_from_slice(with);
        self.ranges.set_len(new);
    }

    pub(super) fn as_slice(&self) -> &[(u64, u64)] {
        self.ranges.as_slice()
    }
}

fn with_table(f: impl FnOnce(&mut Regions)) {
    // Under the guard: the check's stop signal never parks a thread that holds the lock.
    let Some(_g) = Guard::enter() else { return };
    f(&mut REGIONS.lock());
}

/// The program mapped `[addr, addr + len)`. `allocator`: from inside the allocator (not a root).
pub(crate) fn mapped(addr: u64, len: u64, allocator: bool) {
    if allocator {
        return;
    }
    let e = addr.saturating_add(len.next_multiple_of(4096));
    with_table(|t| t.add(addr, e));
}

/// The program unmapped `[addr, addr + len)`.
pub(crate) fn unmapped(addr: u64, len: u64) {
    let e = addr.saturating_add(len.next_multiple_of(4096));
    with_table(|t| t.remove(addr, e));
}

/// The program moved or resized a mapping with `mremap`.
pub(crate) fn remapped(old: u64, old_len: u64, new: u64, new_len: u64, allocator: bool) {
    let old_end = old.saturating_add(old_len.next_multiple_of(4096));
    let new_end = new.saturating_add(new_len.next_multiple_of(4096));
    with_table(|t| {
        let v = t.as_slice();
        let i = v.partition_point(|&(_, e)| e <= old);
        let was_ours = v.get(i).is_some_and(|&(s, _)| s <= old);
        t.remove(old, old_end);
        if was_ours && !allocator {
            t.add(new, new_end);
        }
    });
}

/// Records the writable anonymous mappings that exist now, before the recorder's first event:
/// once, as early as the front end can (its first allocator call).
pub(crate) fn at_start() {
    if STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    let mut text = Buf::new();
    let mut maps: Buf<Mapping> = Buf::new();
    if !read_maps(&mut text, &mut maps) {
        return;
    }
    // Our own mappings are not the program's: the recorder's static data is in its module
    // (a file mapping and the anonymous `.bss` after it, which the check excludes by module).
    with_table(|t| {
        for m in maps.as_slice() {
            let early = m.readable && m.writable && !m.file && m.kind == MapKind::Other;
            if early {
                t.add(m.start, m.end);
            }
        }
    });
}

/// A copy of the table, for a check made while the other threads are stopped (none of them
/// holds the lock: it is taken under the guard). None if it cannot be had now.
pub(super) fn snapshot(out: &mut Buf<(u64, u64)>) -> bool {
    let Some(t) = REGIONS.try_lock() else {
        return false;
    };
    if !out.reserve(t.as_slice().len()) {
        return false;
    }
    for &r in t.as_slice() {
        out.push(r);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ops: &[(bool, u64, u64)]) -> Vec<(u64, u64)> {
        let mut r = Regions { ranges: Buf::new() };
        for &(add, s, e) in ops {
            if add {
                r.add(s, e)
            } else {
                r.remove(s, e)
            }
        }
        r.as_slice().to_vec()
    }

    #[test]
    fn ranges_merge_split_and_go() {
        assert_eq!(set(&[(true, 10, 20), (true, 30, 40)]), [(10, 20), (30, 40)]);
        assert_eq!(
            set(&[(true, 30, 40), (true, 10, 20), (true, 20, 30)]),
            [(10, 40)]
        );
        assert_eq!(
            set(&[(true, 10, 40), (false, 20, 30)]),
            [(10, 20), (30, 40)]
        );
        assert_eq!(set(&[(true, 10, 40), (false, 0, 50)]), []);
        assert_eq!(
            set(&[
                (true, 10, 20),
                (true, 30, 40),
                (true, 50, 60),
                (false, 15, 55)
            ]),
            [(10, 15), (55, 60)]
        );
        assert_eq!(
            set(&[(true, 10, 20), (false, 20, 30), (false, 0, 10)]),
            [(10, 20)]
        );
        assert_eq!(set(&[(true, 10, 20), (true, 5, 25)]), [(5, 25)]);
    }
}

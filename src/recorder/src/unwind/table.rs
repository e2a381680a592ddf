//! The rule table: one compact unwind rule per code address, shared by every thread.
//!
//! A stack walk asks, for each frame, how to find the caller: where the CFA (the caller's stack
//! pointer) is, and where the return address and the caller's `rbp` were saved. On x86-64 that is
//! almost always "CFA = rsp or rbp plus a constant; the return address at CFA - 8; rbp unchanged
//! or at CFA minus a constant", which fits in 17 bits ([`Rule`]). The table maps each return
//! address seen so far to the rule of the call instruction before it (for an instruction a signal
//! interrupted, its address + 1 stands for it, so that every lookup is "the address before the
//! key"), and the walk costs one probe and two or three loads a frame. Rules are derived from
//! `.eh_frame` the first time an address is seen (`rules.rs`); addresses whose rule does not fit
//! are marked [`Rule::SLOW`] and go to framehop.
//!
//! # Why it is shaped so
//!
//! - **One word per entry**: the key (47 bits: user-space code on x86-64) and the rule (17 bits)
//!   are packed into one `AtomicU64`, so a reader sees an entry whole or not at all, without a
//!   lock, a sequence count or a second load that could belong to another entry.
//! - **Open addressing, linear probing, bounded probes**: a lookup reads at most [`MAX_PROBE`]
//!   consecutive words (usually one), and stops at an empty word.
//! - **Lock-free filling**: an entry is put in place with one compare-and-swap. There is no lock a
//!   signal handler or a forked child could find held (a thread inside the recorder is never
//!   re-entered by a handler anyway: the recorder's guard lets the handler's allocation through).
//!   Two threads that fill the same address at once may both succeed in different slots; the two
//!   entries are equal (the rule is a function of the address and the module), so readers do not
//!   care which they find.
//! - **Bounded memory**: [`SLOTS`] words (512 KiB of address space in a mapping of its own, out
//!   of the program's heap; pages are touched as entries land on them). At most [`MAX_USED`]
//!   slots are ever filled; when the table is full, new addresses take the slow path (framehop
//!   with its per-thread cache), which is slower but never wrong.
//! - **Unloading**: when a module goes away (`dlclose`) the entries of its address range are
//!   replaced by [`TOMBSTONE`], which lookups step over and filling may reuse.

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Slots in the table (a power of two).
pub(crate) const SLOTS: usize = 1 << 16;
/// Slots that may be filled: three quarters, so probe chains stay short.
pub(crate) const MAX_USED: usize = SLOTS / 4 * 3;
/// The longest probe sequence a lookup or a fill looks at.
const MAX_PROBE: usize = 16;
pub(crate) const RULE_BITS: u32 = 17;
pub(crate) const RULE_MASK: u64 = (1 << RULE_BITS) - 1;
/// The highest lookup address the table can hold (47 bits), exclusive.
pub(crate) const MAX_KEY: u64 = 1 << (64 - RULE_BITS);
/// A removed entry: lookups go on past it. No real entry has every bit set (its address would be
/// `MAX_KEY - 1`, which is never code).
const TOMBSTONE: u64 = u64::MAX;

/// A compact unwind rule for one code address (17 bits). The return address is always at
/// CFA - 8.
///
/// | bits | meaning |
/// |---|---|
/// | 0-11 | `a`: the CFA is 8a above the base register (a >= 1); 0: a special rule, below |
/// | 12-15 | `b`: rbp was saved at CFA - 8b; 0: rbp is unchanged |
/// | 16 | the base register: 0 rsp, 1 rbp |
///
/// The common case (CFA = rsp + 8a, rbp unchanged) is the rule's value itself: decoding it is a
/// mask and a test. Special rules have `a` = 0, bit 16 set and their kind in bits 12-15:
/// [`Rule::SLOW`], [`Rule::SIGNAL`], [`Rule::END`] (out of the rsp-based range, so that a walk
/// takes every rule below [`RBP_BASE`] without testing `a`); 0 is no rule (an empty slot).
///
/// An entry keeps the rule minus one ([`stored`]): the common rules are then 0 to 0xffe, one
/// compare with no adjustment, and the CFA is `rsp + 8 * stored + 8`, one `lea`. Slot 0, the home
/// of key 0 (a zero return address), is never empty (see [`Table::slots`]): an empty slot there
/// would read as a common rule for key 0.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Rule(pub(crate) u32);

pub(crate) const A_MASK: u32 = 0xfff;
pub(crate) const B_SHIFT: u32 = 12;
pub(crate) const B_MASK: u32 = 0xf;
pub(crate) const RBP_BASE: u32 = 1 << 16;

impl Rule {
    /// Not expressible: framehop unwinds this frame.
    pub const SLOW: Rule = Rule(RBP_BASE | 1 << B_SHIFT);
    /// The kernel's signal trampoline (`__restore_rt`): the interrupted registers are in the
    /// `ucontext` at the stack pointer.
    pub const SIGNAL: Rule = Rule(RBP_BASE | 2 << B_SHIFT);
    /// The outermost frame (the return address is undefined: `_start`, `clone3`).
    pub const END: Rule = Rule(RBP_BASE | 3 << B_SHIFT);

    /// rbp saved below rsp (`b > a`) does not fit: the walk reads the slot unchecked, knowing
    /// that it lies between rsp and the CFA.
    pub fn rsp(cfa_offset: i64, bp_at: Option<i64>) -> Option<Rule> {
        let a = by8(cfa_offset, 1, A_MASK)?;
        let b = match bp_at {
            None => 0,
            Some(o) => by8(-o, 1, B_MASK.min(a))?,
        };
        Some(Rule(a | b << B_SHIFT))
    }

    pub fn rbp(cfa_offset: i64, bp_at: i64) -> Option<Rule> {
        let a = by8(cfa_offset, 1, A_MASK)?;
        let b = by8(-bp_at, 1, B_MASK)?;
        Some(Rule(RBP_BASE | a | b << B_SHIFT))
    }
}

/// `v / 8` if `v` is a multiple of 8 with `lo <= v / 8 <= hi`.
fn by8(v: i64, lo: u32, hi: u32) -> Option<u32> {
    if v % 8 != 0 {
        return None;
    }
    let q = u32::try_from(v / 8).ok()?;
    (lo..=hi).contains(&q).then_some(q)
}

/// A rule table. The recorder has one, [`SHARED`]; the tests make their own.
pub(crate) struct Table {
    /// The slots: [`EMPTY`] until they are mapped, so that a lookup never tests for null.
    slots: AtomicPtr<AtomicU64>,
    /// Slots ever filled (tombstones included): the fill limit counts these.
    used: AtomicUsize,
    /// Entries put in, and fills refused because the table was full.
    filled: AtomicU64,
    refused: AtomicU64,
}

/// The recorder's table, shared by every thread.
pub(crate) static SHARED: Table = Table::new();

/// Where `key`'s probe sequence starts: its low bits. Return addresses closer than [`SLOTS`]
/// bytes never collide (a program's hot code is mostly that close), and those of different
/// modules collide as often as random numbers would; one instruction instead of a multiply.
#[inline(always)]
pub(crate) fn home(key: u64) -> usize {
    key as usize & (SLOTS - 1)
}

/// Read by lookups until a table is mapped (or if it cannot be): every slot empty but slot 0,
/// a tombstone (see [`Rule`]).
static EMPTY: [AtomicU64; SLOTS] = {
    let mut t = [const { AtomicU64::new(0) }; SLOTS];
    t[0] = AtomicU64::new(TOMBSTONE);
    t
};

/// Whether `t` is a mapped table (not [`EMPTY`]).
fn mapped(t: *const AtomicU64) -> bool {
    !std::ptr::eq(t, EMPTY.as_ptr())
}

/// The entry in `t`'s slot `i` (`i < SLOTS`).
#[inline(always)]
pub(crate) fn entry(t: *const AtomicU64, i: usize) -> u64 {
    // SAFETY: `i < SLOTS`, and a table, once made, is never unmapped. Relaxed: an entry is one
    // word, and what it names (a rule, code of a mapped module) needs no other memory.
    unsafe { (*t.add(i)).load(Ordering::Relaxed) }
}

/// The key part of an entry, and its rule part.
#[inline(always)]
pub(crate) fn key_of(e: u64) -> u64 {
    e >> RULE_BITS
}
#[inline(always)]
pub(crate) fn rule_of(e: u64) -> Rule {
    Rule((e & RULE_MASK) as u32 + 1)
}

/// What an entry keeps of `rule` (not 0: no rule is put in).
#[inline(always)]
pub(crate) fn stored(rule: Rule) -> u64 {
    rule.0 as u64 - 1
}

/// The rule for `key` (below `MAX_KEY - 1`), if the slots `t` (from [`Table::get`]) have it.
/// Never allocates, never waits. The walk looks at the home slot itself and calls this for the
/// rest.
pub(crate) fn lookup(t: *const AtomicU64, key: u64) -> Option<Rule> {
    let mut i = home(key);
    for _ in 0..MAX_PROBE {
        let e = entry(t, i);
        // A tombstone's key part is `MAX_KEY - 1`, which no key is.
        if key_of(e) == key && e != 0 {
            return Some(rule_of(e));
        }
        if e == 0 {
            return None;
        }
        i = (i + 1) & (SLOTS - 1);
    }
    None
}

impl Table {
    pub(crate) const fn new() -> Table {
        Table {
            slots: AtomicPtr::new(EMPTY.as_ptr() as *mut AtomicU64),
            used: AtomicUsize::new(0),
            filled: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The slots, for lookups (empty until [`Table::map`]).
    #[inline(always)]
    pub(crate) fn get(&self) -> *const AtomicU64 {
        self.slots.load(Ordering::Acquire)
    }

    /// Maps the slots if they are not yet.
    pub(crate) fn map(&self) {
        let _ = self.slots();
    }

    /// The slots, mapped on first use (in a mapping of their own, out of the program's heap).
    /// None if they cannot be mapped (the slow path then serves every frame).
    fn slots(&self) -> Option<*mut AtomicU64> {
        let t = self.slots.load(Ordering::Acquire);
        if mapped(t) {
            return Some(t);
        }
        let bytes = SLOTS * std::mem::size_of::<AtomicU64>();
        // Mapped with a raw system call, as all the recorder's memory is: through `mmap` it would
        // reach the preload's hook and be taken for a program mapping, a root of the leak check.
        // Zero-filled, which is "every slot empty"; slot 0 gets a tombstone before the table is
        // published (see [`Rule`]). A fill may put an entry there, `forget` a tombstone back:
        // it is never empty again.
        let p = crate::heap::map_anon(bytes)?;
        let p = p.as_ptr() as *mut AtomicU64;
        // SAFETY: slot 0 of our own mapping, not yet shared.
        unsafe { (*p).store(TOMBSTONE, Ordering::Relaxed) };
        match self
            .slots
            .compare_exchange(t, p, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                // Slot 0's tombstone is a slot filled.
                self.used.fetch_add(1, Ordering::Relaxed);
                Some(p)
            }
            Err(other) => {
                // Another thread mapped them first.
                // Our own mapping, never published.
                crate::heap::unmap(p as *mut u8, bytes);
                Some(other)
            }
        }
    }

    /// True when a fill could still find an empty slot (the miss path asks before deriving a
    /// rule: with a full table, deriving would be wasted work).
    #[inline]
    pub(crate) fn has_room(&self) -> bool {
        self.used.load(Ordering::Relaxed) < MAX_USED
    }

    /// Puts `rule` in for `key` (below [`MAX_KEY`]). Returns false when the table is full along
    /// the key's probe sequence (the caller then uses the slow path).
    pub(crate) fn insert(&self, key: u64, rule: Rule) -> bool {
        debug_assert!(key != 0 && key < MAX_KEY - 1 && rule.0 != 0 && rule.0 as u64 <= RULE_MASK);
        let Some(t) = self.slots() else { return false };
        let entry = key << RULE_BITS | stored(rule);
        // SAFETY (every `t.add`): an index below SLOTS; the slots are never unmapped.
        let at = |i: usize| unsafe { &*t.add(i) };
        let reuse_tombstone = |r: Option<usize>| {
            r.is_some_and(|r| {
                at(r)
                    .compare_exchange(TOMBSTONE, entry, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
        };
        let mut i = home(key);
        let mut reuse = None;
        for _ in 0..MAX_PROBE {
            let slot = at(i);
            let e = slot.load(Ordering::Acquire);
            if e == TOMBSTONE {
                reuse.get_or_insert(i);
            } else if e >> RULE_BITS == key {
                return true; // filled by another thread meanwhile
            } else if e == 0 {
                if reuse_tombstone(reuse) {
                    self.filled.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                if self.used.fetch_add(1, Ordering::Relaxed) >= MAX_USED {
                    self.used.fetch_sub(1, Ordering::Relaxed);
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                match slot.compare_exchange(0, entry, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        self.filled.fetch_add(1, Ordering::Relaxed);
                        return true;
                    }
                    Err(now) => {
                        self.used.fetch_sub(1, Ordering::Relaxed);
                        if now >> RULE_BITS == key && now != TOMBSTONE {
                            return true;
                        }
                        // Taken by another address: go on probing.
                    }
                }
            }
            i = (i + 1) & (SLOTS - 1);
        }
        if reuse_tombstone(reuse) {
            self.filled.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Removes the entries of addresses in `range` (a module that was unloaded). Lock-free: a
    /// thread filling an address of the range at the same time could only be walking a stack
    /// that runs through code that is gone.
    pub(crate) fn forget(&self, range: std::ops::Range<u64>) {
        let t = self.slots.load(Ordering::Acquire);
        if !mapped(t) {
            return;
        }
        for i in 0..SLOTS {
            // SAFETY: `i < SLOTS`; the slots are never unmapped.
            let slot = unsafe { &*t.add(i) };
            let e = slot.load(Ordering::Relaxed);
            // The key is a return address: the code it names is at key - 1.
            if e != 0 && e != TOMBSTONE && range.contains(&((e >> RULE_BITS) - 1)) {
                let _ = slot.compare_exchange(e, TOMBSTONE, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// What the table holds: (entries filled, fills refused because it was full, bytes mapped).
    pub(crate) fn stats(&self) -> (u64, u64, usize) {
        let bytes = if mapped(self.slots.load(Ordering::Relaxed)) {
            SLOTS * std::mem::size_of::<AtomicU64>()
        } else {
            0
        };
        (
            self.filled.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            bytes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_pack_and_refuse_what_does_not_fit() {
        assert_eq!(Rule::rsp(8, None), Some(Rule(1)));
        assert_eq!(Rule::rsp(16, Some(-16)), Some(Rule(2 | 2 << 12)));
        assert_eq!(Rule::rbp(16, -16), Some(Rule(1 << 16 | 2 | 2 << 12)));
        assert_eq!(Rule::rsp(8 * 4095, None), Some(Rule(4095)));
        assert_eq!(Rule::rsp(12, None), None, "not a multiple of 8");
        assert_eq!(
            Rule::rsp(0, None),
            None,
            "the return address would be below rsp"
        );
        assert_eq!(Rule::rsp(8 * 4096, None), None, "too far");
        assert_eq!(Rule::rsp(64, Some(8)), None, "rbp saved above the CFA");
        assert_eq!(
            Rule::rsp(64, Some(-8 * 16)),
            None,
            "rbp saved too far below the CFA"
        );
        assert_eq!(Rule::rsp(16, Some(-16)), Some(Rule(2 | 2 << 12)));
        assert_eq!(Rule::rsp(16, Some(-24)), None, "rbp saved below rsp");
        for r in [Rule::SLOW, Rule::SIGNAL, Rule::END] {
            assert_eq!(r.0 & A_MASK, 0, "{r:?} is special");
            assert_ne!(r.0, 0, "{r:?} is not an empty slot");
        }
    }

    #[test]
    fn lookups_find_what_was_inserted_and_forget_removes_it() {
        let table = Table::new();
        assert!(std::ptr::eq(table.get(), EMPTY.as_ptr()));
        assert_eq!(
            lookup(table.get(), 0x1234),
            None,
            "an unmapped table is empty"
        );
        let base = 0x7000_0000_0000u64;
        let rule = |k: u64| Rule((k % 4000) as u32 + 1);
        for k in 0..1000u64 {
            assert!(table.insert(base + k * 7, rule(k)));
        }
        let t = table.get();
        assert!(mapped(t));
        for k in 0..1000u64 {
            assert_eq!(lookup(t, base + k * 7), Some(rule(k)));
        }
        assert_eq!(lookup(t, base + 1), None);
        // Keys are return addresses: `forget` takes the code range before them.
        table.forget(base - 1..base - 1 + 7 * 500);
        for k in 0..1000u64 {
            let want = (k >= 500).then_some(rule(k));
            assert_eq!(lookup(t, base + k * 7), want, "key {k}");
        }
        // Tombstones are reused, and filled slots are counted once.
        let used = table.used.load(Ordering::Relaxed);
        for k in 0..500u64 {
            assert!(table.insert(base + k * 7, Rule(9)));
            assert_eq!(lookup(t, base + k * 7), Some(Rule(9)));
        }
        assert_eq!(table.used.load(Ordering::Relaxed), used);
        assert_eq!(table.stats(), (1500, 0, SLOTS * 8));
    }

    #[test]
    fn a_full_table_refuses_and_keeps_what_it_has() {
        let table = Table::new();
        // Keys that all start their probes in different slots, until every usable slot is
        // taken.
        let key = |k: u64| 0x5555_0000_0000 + k;
        let mut k = 1;
        while table.has_room() {
            assert!(table.insert(key(k), Rule(1 + (k % 4000) as u32)));
            k += 1;
        }
        // Slot 0 holds its tombstone.
        assert_eq!(k - 1, MAX_USED as u64 - 1);
        assert!(!table.insert(key(k), Rule(7)), "full: refused");
        assert_eq!(lookup(table.get(), key(k)), None);
        for j in (1..k).step_by(97) {
            assert_eq!(
                lookup(table.get(), key(j)),
                Some(Rule(1 + (j % 4000) as u32))
            );
        }
        let (filled, refused, _) = table.stats();
        assert_eq!((filled, refused), (MAX_USED as u64 - 1, 1));
    }

    #[test]
    fn threads_filling_at_once_agree() {
        let table = Table::new();
        let base = 0x6000_0000_0000u64;
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for k in 0..20_000u64 {
                        // The same rule for a key whichever thread puts it in.
                        assert!(table.insert(base + k * 3, Rule(1 + (k % 4000) as u32)));
                    }
                });
            }
        });
        let t = table.get();
        for k in 0..20_000u64 {
            assert_eq!(lookup(t, base + k * 3), Some(Rule(1 + (k % 4000) as u32)));
        }
        assert!(table.used.load(Ordering::Relaxed) >= 20_000);
    }
}

//! The graph the check walks: the live set sorted by address, each block's state, and the two
//! passes of memcheck's `mc_leakcheck.c` over it (marking from the roots, then the cliques of
//! what is left).

use zmtrace_format::LeakKind;

use super::sys::{mapping_of, read_own, Buf, Mapping};

/// memcheck's heuristics for interior pointers (`--leak-check-heuristics`), as bits: a pointer
/// into a block that matches one counts as a pointer to its start (the block is reachable).
pub(crate) mod heuristic {
    /// `std::string` (old ABI): length, capacity, refcount, then the characters; the pointer is
    /// to the characters.
    pub const STDSTRING: u8 = 1;
    /// A 64-bit length before the data, the block's size less 8 (sqlite's allocator).
    pub const LENGTH64: u8 = 2;
    /// `new T[n]` of a type with a destructor: the count before the array.
    pub const NEWARRAY: u8 = 4;
    /// A pointer to a second base class of an object whose first word is a vtable pointer.
    pub const MULTIPLEINHERITANCE: u8 = 8;
    pub const ALL: u8 = 15;

    /// memcheck's syntax: `all`, `none`, or names separated by commas. None for a bad name.
    pub fn parse(s: &str) -> Option<u8> {
        let mut set = 0;
        for name in s.split(',').map(str::trim) {
            set |= match name {
                "all" => ALL,
                "none" | "" => 0,
                "stdstring" => STDSTRING,
                "length64" => LENGTH64,
                "newarray" => NEWARRAY,
                "multipleinheritance" => MULTIPLEINHERITANCE,
                _ => return None,
            };
        }
        Some(set)
    }
}

/// Blocks from this size up are read with `process_vm_readv` when a thread could not be
/// stopped: such blocks are mapped by themselves, and a running thread that frees one unmaps it.
const LARGE_BLOCK: u64 = 128 * 1024;

const UNREACHED: u8 = 0;
const INDIRECT: u8 = 1;
const POSSIBLE: u8 = 2;
const REACHABLE: u8 = 3;
/// The class bits of a block's state.
const CLASS: u8 = 0x03;
/// Set while a block waits to be scanned (on the worklist, or left off it when it was full).
const PENDING: u8 = 0x80;
/// Set on a block that is not wholly in readable memory (a guard page inside it): it is read
/// with `process_vm_readv`, which skips what cannot be read instead of faulting.
const UNREADABLE: u8 = 0x40;
/// [`Index`]: a new run of blocks starts where the next block begins more than this many
/// buckets past the last one (so that the buckets of an empty stretch cost at most this).
const RUN_GAP: u64 = 64;
/// [`Index`]: buckets at most, past one per block (the budget its bucket size is chosen for).
const EXTRA_BUCKETS: usize = 1024;
/// The worklist's length at most. A block found when it is full keeps its `PENDING` bit and is
/// picked up by a sweep over the nodes once the list is empty (a mark stack's overflow, as in
/// garbage collectors): the list costs 1 MiB at most instead of 4 bytes per block (an array of
/// 5 M pointers would put all 5 M on it at once).
const WORK_MAX: usize = 1 << 18;

/// The sizes a node holds: up to 2^24 − 2 bytes; [`BIG`] says "look in the big list".
const SIZE_BITS: u32 = 24;
const BIG: u32 = (1 << SIZE_BITS) - 1;

/// One block of the graph: 12 bytes (the address, then its size and state packed in a word;
/// sizes from 16 MiB up are in the graph's list of big blocks). The check's memory is this, a
/// sixteenth of an address per block ([`Graph::sparse`]), and what the worklist holds.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub(crate) struct Node {
    addr: u64,
    /// Size (or [`BIG`]) in the high 24 bits, state in the low 8.
    meta: u32,
}

const _: () = assert!(std::mem::size_of::<Node>() == 12);

impl Node {
    /// A block not yet reached; `size` from [`BIG`] up is kept in the big list by the caller.
    pub(crate) fn new(addr: u64, size: u64) -> Node {
        Node {
            addr,
            meta: (size.min(BIG as u64) as u32) << 8,
        }
    }

    pub(crate) fn addr(&self) -> u64 {
        self.addr
    }

    /// True when the size is too large for the node (it is in the big list).
    pub(crate) fn is_big(size: u64) -> bool {
        size >= BIG as u64
    }

    fn state(&self) -> u8 {
        self.meta as u8
    }

    pub(crate) fn kind(&self) -> LeakKind {
        match self.state() & CLASS {
            REACHABLE => LeakKind::Reachable,
            POSSIBLE => LeakKind::Possible,
            INDIRECT => LeakKind::Indirect,
            _ => LeakKind::Definite,
        }
    }
}

/// Where in the sorted nodes an address falls, in a few loads instead of a binary search: the
/// binary search of every candidate word took most of the check's time (gawk's 207 K blocks at
/// exit: its two loops of mispredicted branches were the hot spots, and the check 488 ms).
///
/// The blocks are cut into runs where they lie close together (a gap of more than
/// [`RUN_GAP`] buckets starts a new run: a heap, the blocks that have mappings of their own),
/// and each run into buckets of 2^`shift` bytes from its first block's address. For each
/// bucket, the rank of the first node at or above its start; after a run's buckets, the rank
/// where the run ends. An address's run is found by a binary search over the few runs, its
/// bucket by a shift, and its rank by a search of the bucket's nodes (one or two on average:
/// `shift` is the smallest that keeps the buckets within one per block plus
/// [`EXTRA_BUCKETS`], 4 bytes each).
pub(super) struct Index {
    /// Each run: its first block's address, and where its buckets begin in `buckets`.
    runs: Buf<(u64, u32)>,
    buckets: Buf<u32>,
    shift: u32,
    /// False when no memory could be had: ranks are then a binary search over all nodes.
    ok: bool,
}

impl Index {
    fn new(nodes: &[Node]) -> Index {
        let mut ix = Index {
            runs: Buf::new(),
            buckets: Buf::new(),
            shift: 0,
            ok: false,
        };
        if nodes.is_empty() || nodes.len() >= u32::MAX as usize {
            return ix;
        }
        let budget = nodes.len() + EXTRA_BUCKETS;
        // The bucket count falls (about) as the shift grows; at 48 every address of a 47-bit
        // space is one bucket of one run.
        let (mut lo, mut hi) = (3u32, 48u32);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match Self::count(nodes, mid) {
                Some((_, b)) if b <= budget => hi = mid,
                _ => lo = mid + 1,
            }
        }
        let mut shift = lo;
        let (runs, buckets) = loop {
            match Self::count(nodes, shift) {
                Some((r, b)) if b <= budget || shift >= 63 => break (r, b),
                _ => shift += 1,
            }
        };
        if !ix.runs.reserve(runs) || !ix.buckets.reserve(buckets) {
            return ix;
        }
        ix.shift = shift;
        let mut i = 0;
        while i < nodes.len() {
            let base = nodes[i].addr();
            let end = Self::run_end(nodes, i, shift);
            ix.runs.push((base, ix.buckets.len as u32));
            let n = ((nodes[end - 1].addr() - base) >> shift) as usize + 1;
            let mut k = i;
            for b in 0..n as u64 {
                let start = base + (b << shift);
                while k < end && nodes[k].addr() < start {
                    k += 1;
                }
                ix.buckets.push(k as u32);
            }
            ix.buckets.push(end as u32);
            i = end;
        }
        ix.ok = true;
        ix
    }

    /// Where the run that begins at node `i` ends.
    fn run_end(nodes: &[Node], i: usize, shift: u32) -> usize {
        let mut j = i + 1;
        while j < nodes.len() && (nodes[j].addr() - nodes[j - 1].addr()) >> shift <= RUN_GAP {
            j += 1;
        }
        j
    }

    /// The runs and buckets (with the runs' ends) that `shift` takes; None past any budget.
    fn count(nodes: &[Node], shift: u32) -> Option<(usize, usize)> {
        let (mut runs, mut buckets, mut i) = (0usize, 0usize, 0);
        while i < nodes.len() {
            let end = Self::run_end(nodes, i, shift);
            let span = (nodes[end - 1].addr() - nodes[i].addr()) >> shift;
            buckets = buckets.checked_add(usize::try_from(span).ok()?.checked_add(2)?)?;
            runs += 1;
            i = end;
        }
        Some((runs, buckets))
    }

    /// The number of nodes whose address passes `before` (a test true up to some address:
    /// `a < v` or `a <= v`, with `v` the address it tests against).
    #[inline]
    fn rank(&self, nodes: &[Node], v: u64, before: impl Fn(u64) -> bool) -> usize {
        if !self.ok {
            return nodes.partition_point(|n| before(n.addr()));
        }
        let runs = self.runs.as_slice();
        let Some(r) = runs.partition_point(|&(a, _)| before(a)).checked_sub(1) else {
            return 0;
        };
        let (base, off) = runs[r];
        let end = runs
            .get(r + 1)
            .map_or(self.buckets.len, |&(_, o)| o as usize);
        // The run's buckets are off..end-1; end-1 holds where the run ends.
        let last = end - 2 - off as usize;
        let b = (((v - base) >> self.shift) as usize).min(last);
        let buckets = self.buckets.as_slice();
        let (lo, hi) = (
            buckets[off as usize + b] as usize,
            buckets[off as usize + b + 1] as usize,
        );
        lo + nodes[lo..hi].partition_point(|n| before(n.addr()))
    }
}

/// The classes of a check, kept after it (aggregated mode: the live set written at the end is
/// classified with them): the nodes, sorted by address.
pub(crate) struct Classes(pub(super) Buf<Node>);

// SAFETY: the buffer is plain data in a mapping of its own.
unsafe impl Send for Classes {}

impl Classes {
    /// The class of the block at `addr`, if the check saw it.
    pub(crate) fn kind_of(&self, addr: u64) -> Option<LeakKind> {
        let nodes = self.0.as_slice();
        let i = nodes.partition_point(|n| n.addr() < addr);
        nodes.get(i).filter(|n| n.addr() == addr).map(|n| n.kind())
    }
}

/// How memory is read: directly, or with `process_vm_readv` where a running thread may unmap it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Reads {
    Direct,
    Careful,
}

/// The live set, sorted, with each block's state: the graph the scan walks.
pub(super) struct Graph<'a> {
    nodes: &'a mut [Node],
    /// The blocks whose size does not fit a node: (address, size), sorted.
    big: &'a [(u64, u64)],
    work: Buf<u32>,
    /// [`WORK_MAX`] (smaller in tests).
    work_max: usize,
    /// A block was left off the full worklist; the lowest index of one.
    left_off: Option<usize>,
    /// Finds an address's place among the nodes ([`Index`]).
    index: Index,
    /// Every block lies in `lo..hi`: most words fail this test and need no search.
    lo: u64,
    hi: u64,
    reads: Reads,
    pub(super) root_bytes: u64,
    /// The heuristics in use ([`heuristic`]) and the memory map they look vtables up in.
    heuristics: u8,
    maps: &'a [Mapping],
}

impl<'a> Graph<'a> {
    /// `nodes` sorted by address, all unreached; `big` the sizes they could not hold.
    pub(super) fn new(nodes: &'a mut [Node], big: &'a [(u64, u64)], reads: Reads) -> Graph<'a> {
        let mut work = Buf::new();
        work.reserve(nodes.len().min(WORK_MAX));
        let index = Index::new(nodes);
        let mut g = Graph {
            nodes,
            big,
            work,
            work_max: WORK_MAX,
            left_off: None,
            index,
            lo: 0,
            hi: 0,
            reads,
            root_bytes: 0,
            heuristics: 0,
            maps: &[],
        };
        g.lo = g.nodes.first().map_or(0, |n| n.addr());
        g.hi = (0..g.len())
            .map(|i| g.addr(i).saturating_add(g.size(i).max(1)))
            .max()
            .unwrap_or(0);
        g
    }

    /// Turns memcheck's heuristics on (`set` of [`heuristic`] bits).
    pub(super) fn with_heuristics(mut self, set: u8, maps: &'a [Mapping]) -> Graph<'a> {
        self.heuristics = set;
        self.maps = maps;
        self
    }

    pub(super) fn len(&self) -> usize {
        self.nodes.len()
    }

    #[inline]
    pub(super) fn addr(&self, i: usize) -> u64 {
        self.nodes[i].addr()
    }

    #[inline]
    pub(super) fn size(&self, i: usize) -> u64 {
        let s = self.nodes[i].meta >> 8;
        if s != BIG {
            return s as u64;
        }
        let a = self.addr(i);
        let j = self.big.partition_point(|&(b, _)| b < a);
        self.big.get(j).map_or(0, |&(_, s)| s)
    }

    #[inline]
    fn state(&self, i: usize) -> u8 {
        self.nodes[i].state()
    }

    #[inline]
    fn set_state(&mut self, i: usize, st: u8) {
        let m = self.nodes[i].meta;
        self.nodes[i].meta = (m & !0xff) | st as u32;
    }

    /// The number of blocks whose address is below `v` (`or_at`: at most `v`).
    #[inline]
    fn rank(&self, v: u64, or_at: bool) -> usize {
        if or_at {
            self.index.rank(self.nodes, v, |a| a <= v)
        } else {
            self.index.rank(self.nodes, v, |a| a < v)
        }
    }

    /// The address of the first block at `v` or above.
    pub(super) fn first_at_or_above(&self, v: u64) -> Option<u64> {
        let i = self.rank(v, false);
        (i < self.len()).then(|| self.addr(i))
    }

    /// A word of memory the heuristics look at: in block `i`, or in a module's data.
    fn peek(&self, a: u64, careful: bool) -> Option<u64> {
        if !a.is_multiple_of(8) {
            return None;
        }
        if careful || self.reads == Reads::Careful {
            let mut w = [0u64; 1];
            return (read_own(a, &mut w, 8) == 8).then_some(w[0]);
        }
        // SAFETY: inside a live block that is wholly readable, no thread running.
        Some(unsafe { (a as *const u64).read_volatile() })
    }

    /// memcheck's `aligned_ptr_above_page0_is_vtable_addr`: `p` points into a readable file
    /// mapping at words that are null or point into executable file mappings, two of them at
    /// least among the first 20.
    fn is_vtable(&self, p: u64) -> bool {
        let Some(m) = mapping_of(self.maps, p) else {
            return false;
        };
        if !m.file || !m.readable {
            return false;
        }
        let mut fns = 0;
        let last = (p + 20 * 8).min(m.end.saturating_sub(8));
        let mut a = p;
        while a <= last {
            let Some(f) = self.peek(a, true) else {
                return false;
            };
            a += 8;
            if f == 0 {
                continue;
            }
            match mapping_of(self.maps, f) {
                Some(t) if t.file && t.executable => fns += 1,
                _ => return false,
            }
            if fns == 2 {
                return true;
            }
        }
        false
    }

    /// True when the interior pointer `v` into block `i` is, by one of the heuristics in use,
    /// as good as a pointer to its start (memcheck's `heuristic_reachedness`).
    fn heuristic_hit(&self, v: u64, i: usize) -> bool {
        let (a, size) = (self.addr(i), self.size(i));
        let careful = self.state(i) & UNREADABLE != 0;
        let word = |at: u64| self.peek(at, careful);
        let h = self.heuristics;
        if h & heuristic::STDSTRING != 0 && v == a + 24 {
            if let (Some(cap), Some(len)) = (word(a + 8), word(a)) {
                if cap.checked_add(25) == Some(size) && len <= cap {
                    return true;
                }
            }
        }
        if h & heuristic::LENGTH64 != 0 && v == a + 8 {
            if let Some(n) = word(a) {
                if n > 0 && size.checked_sub(8) == Some(n) {
                    return true;
                }
            }
        }
        if h & heuristic::NEWARRAY != 0 && v == a + 8 {
            if let Some(n) = word(a) {
                if n > 0 && size >= 8 && (size - 8) % n == 0 {
                    return true;
                }
            }
        }
        if h & heuristic::MULTIPLEINHERITANCE != 0 && v.is_multiple_of(8) && v + 8 <= a + size {
            if let (Some(inner), Some(first)) = (word(v), word(a)) {
                if inner % 8 == 0
                    && inner >= 4096
                    && first % 8 == 0
                    && first >= 4096
                    && self.is_vtable(inner)
                    && self.is_vtable(first)
                {
                    return true;
                }
            }
        }
        false
    }

    /// The block that `v` points into (its start, or inside it; a block of size 0 only at its
    /// start).
    #[inline]
    pub(super) fn find(&self, v: u64) -> Option<usize> {
        if v < self.lo || v >= self.hi {
            return None;
        }
        let i = self.rank(v, true).checked_sub(1)?;
        let a = self.addr(i);
        (v == a || v - a < self.size(i)).then_some(i)
    }

    fn push(&mut self, i: usize) {
        let st = self.state(i);
        if st & PENDING != 0 {
            return;
        }
        self.set_state(i, st | PENDING);
        if self.work.len < self.work_max {
            self.work.push(i as u32);
        } else {
            // Left for the sweep (see WORK_MAX).
            self.left_off = Some(self.left_off.map_or(i, |l| l.min(i)));
        }
    }

    fn pop(&mut self) -> Option<usize> {
        let i = self.work.pop()? as usize;
        self.set_state(i, self.state(i) & !PENDING);
        Some(i)
    }

    /// Scans every pending block, and what it makes pending in turn: `leader` None for the
    /// marking pass, Some for a clique of the second pass.
    fn drain(&mut self, leader: Option<usize>) {
        loop {
            while let Some(i) = self.pop() {
                self.visit(i, leader);
            }
            let Some(from) = self.left_off.take() else {
                return;
            };
            // The worklist is empty: every block still pending was left off it.
            for i in from..self.len() {
                let st = self.state(i);
                if st & PENDING != 0 {
                    self.set_state(i, st & !PENDING);
                    self.visit(i, leader);
                    while let Some(j) = self.pop() {
                        self.visit(j, leader);
                    }
                }
            }
        }
    }

    fn visit(&mut self, i: usize, leader: Option<usize>) {
        let (a, s) = (self.addr(i), self.size(i));
        let reads = self.block_reads(i);
        match leader {
            None => {
                let definite = self.state(i) & CLASS != POSSIBLE;
                Self::words(reads, a, a + s, |w| self.reach_word(w, definite));
            }
            Some(leader) => Self::words(reads, a, a + s, |w| self.clique_word(w, leader)),
        }
    }

    /// A word found in a root (`definite`), or in a reachable (`definite`) or possibly lost
    /// block: memcheck's `lc_push_without_clique_if_a_chunk_ptr`.
    #[inline]
    pub(super) fn reach_word(&mut self, v: u64, definite: bool) {
        let Some(i) = self.find(v) else { return };
        let st = self.state(i);
        if st & CLASS == REACHABLE {
            return;
        }
        let as_start = v == self.addr(i) || (self.heuristics != 0 && self.heuristic_hit(v, i));
        if as_start && definite {
            self.set_state(i, (st & !CLASS) | REACHABLE);
            self.push(i);
        } else if st & CLASS == UNREACHED {
            self.set_state(i, (st & !CLASS) | POSSIBLE);
            self.push(i);
        }
    }

    /// A word found in a lost block of the clique led by `leader`.
    #[inline]
    fn clique_word(&mut self, v: u64, leader: usize) {
        let Some(i) = self.find(v) else { return };
        let st = self.state(i);
        if st & CLASS == UNREACHED && i != leader {
            self.set_state(i, (st & !CLASS) | INDIRECT);
            self.push(i);
        }
    }

    /// Calls `f` with every aligned word of `start..end`.
    fn words(reads: Reads, start: u64, end: u64, mut f: impl FnMut(u64)) {
        let start = (start + 7) & !7;
        let end = end & !7;
        if start >= end {
            return;
        }
        match reads {
            Reads::Direct => {
                let mut p = start;
                while p < end {
                    // SAFETY: the caller gives ranges that are mapped and readable, and no
                    // thread that could unmap them is running.
                    f(unsafe { (p as *const u64).read_volatile() });
                    p += 8;
                }
            }
            Reads::Careful => {
                let mut buf = [0u64; 2048];
                let mut p = start;
                while p < end {
                    let want = ((end - p) as usize).min(buf.len() * 8);
                    let got = read_own(p, &mut buf, want);
                    for &w in &buf[..got / 8] {
                        f(w);
                    }
                    p += got as u64;
                    if got < want {
                        // Unmapped here: go on at the next page.
                        p = (p + 4096) & !4095;
                    }
                }
            }
        }
    }

    pub(super) fn scan_root(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        self.root_bytes += end - start;
        let reads = self.reads;
        Self::words(reads, start, end, |w| self.reach_word(w, true));
    }

    fn block_reads(&self, i: usize) -> Reads {
        if self.state(i) & UNREADABLE != 0 {
            return Reads::Careful;
        }
        if self.reads == Reads::Careful && self.size(i) >= LARGE_BLOCK {
            Reads::Careful
        } else {
            Reads::Direct
        }
    }

    /// Marks everything reachable from the roots pushed so far.
    pub(super) fn mark(&mut self) {
        self.drain(None);
    }

    /// Sorts the blocks not reached into cliques: memcheck's second pass.
    pub(super) fn cliques(&mut self) {
        for leader in 0..self.len() {
            if self.state(leader) & (CLASS | PENDING) != UNREACHED {
                continue;
            }
            self.push(leader);
            self.drain(Some(leader));
        }
    }

    /// Marks the blocks that are not wholly in readable memory (`readable(start, end)` says
    /// whether a range is): they are read without faulting, and counted. Returns their number
    /// and bytes.
    pub(super) fn mark_unreadable(&mut self, readable: impl Fn(u64, u64) -> bool) -> (u64, u64) {
        let (mut n, mut bytes) = (0, 0);
        for i in 0..self.len() {
            let (a, s) = (self.addr(i), self.size(i));
            if s > 0 && !readable(a, a + s) {
                self.set_state(i, self.state(i) | UNREADABLE);
                n += 1;
                bytes += s;
            }
        }
        (n, bytes)
    }

    pub(super) fn kind(&self, i: usize) -> LeakKind {
        self.nodes[i].kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks made of real memory, so that the graph reads them as the check does.
    struct Heap {
        blocks: Vec<Box<[u64]>>,
    }

    impl Heap {
        fn new(sizes_in_words: &[usize]) -> Heap {
            Heap {
                blocks: sizes_in_words
                    .iter()
                    .map(|&n| vec![0u64; n].into_boxed_slice())
                    .collect(),
            }
        }
        fn at(&self, i: usize) -> u64 {
            self.blocks[i].as_ptr() as u64
        }
        fn set(&mut self, i: usize, word: usize, v: u64) {
            self.blocks[i][word] = v;
        }
        /// Classifies with `roots` as the only root words.
        fn classify(&self, roots: &[u64]) -> Vec<LeakKind> {
            self.classify_with(roots, WORK_MAX)
        }

        /// The same with a worklist of `work_max` entries at most (for its overflow).
        fn classify_with(&self, roots: &[u64], work_max: usize) -> Vec<LeakKind> {
            let mut order: Vec<usize> = (0..self.blocks.len()).collect();
            order.sort_by_key(|&i| self.at(i));
            let mut nodes: Vec<Node> = order
                .iter()
                .map(|&i| Node::new(self.at(i), self.blocks[i].len() as u64 * 8))
                .collect();
            let mut g = Graph::new(&mut nodes, &[], Reads::Direct);
            g.work_max = work_max;
            let root = roots.to_vec();
            let (s, e) = (
                root.as_ptr() as u64,
                root.as_ptr() as u64 + 8 * root.len() as u64,
            );
            g.scan_root(s, e);
            g.mark();
            g.cliques();
            let mut kinds = vec![LeakKind::Definite; order.len()];
            for (pos, &i) in order.iter().enumerate() {
                kinds[i] = g.kind(pos);
            }
            kinds
        }
    }

    use LeakKind::*;

    #[test]
    fn a_start_pointer_from_a_root_reaches_a_chain() {
        let mut h = Heap::new(&[4, 4, 4]);
        h.set(0, 1, h.at(1));
        h.set(1, 3, h.at(2));
        assert_eq!(h.classify(&[h.at(0)]), [Reachable, Reachable, Reachable]);
    }

    #[test]
    fn a_lost_list_has_one_definite_head_and_indirect_nodes() {
        let mut h = Heap::new(&[2, 2, 2, 2]);
        for i in 0..3 {
            h.set(i, 0, h.at(i + 1));
        }
        assert_eq!(h.classify(&[]), [Definite, Indirect, Indirect, Indirect]);
    }

    #[test]
    fn an_interior_pointer_makes_a_block_and_what_it_points_to_possibly_lost() {
        let mut h = Heap::new(&[8, 2]);
        h.set(0, 0, h.at(1));
        assert_eq!(h.classify(&[h.at(0) + 24]), [Possible, Possible]);
        // A start pointer from a definite place upgrades a possibly lost block.
        assert_eq!(h.classify(&[h.at(0) + 24, h.at(1)]), [Possible, Reachable]);
    }

    #[test]
    fn a_lost_cycle_has_exactly_one_definite_block() {
        let mut h = Heap::new(&[2, 2, 2]);
        h.set(0, 0, h.at(1));
        h.set(1, 0, h.at(2));
        h.set(2, 0, h.at(0));
        let kinds = h.classify(&[]);
        let lowest = (0..3).min_by_key(|&i| h.at(i)).unwrap();
        for (i, k) in kinds.iter().enumerate() {
            assert_eq!(*k, if i == lowest { Definite } else { Indirect });
        }
    }

    #[test]
    fn a_pointer_one_past_the_end_is_not_a_pointer_into_the_block() {
        let h = Heap::new(&[2]);
        assert_eq!(h.classify(&[h.at(0) + 16]), [Definite]);
        assert_eq!(h.classify(&[h.at(0) + 15]), [Possible]);
    }

    #[test]
    fn a_lost_block_reached_from_a_later_lost_block_joins_its_clique() {
        // Whatever the address order, only the block nothing points to stays definite.
        let mut h = Heap::new(&[2, 2]);
        h.set(1, 0, h.at(0));
        assert_eq!(h.classify(&[]), [Indirect, Definite]);
        let mut h = Heap::new(&[2, 2]);
        h.set(0, 0, h.at(1));
        assert_eq!(h.classify(&[]), [Definite, Indirect]);
    }

    #[test]
    fn a_full_worklist_leaves_blocks_for_the_sweep_and_the_classes_stay_the_same() {
        // An array reaching 40 blocks, a lost list of 20 behind them, and a lost array of 30
        // (a clique wider than the list), each classified with worklists of 1 to 64 entries.
        let mut sizes = vec![40, 30];
        sizes.extend(std::iter::repeat_n(2, 40 + 20 + 30));
        let mut h = Heap::new(&sizes);
        for k in 0..40 {
            h.set(0, k, h.at(2 + k));
        }
        h.set(2 + 39, 1, h.at(42));
        for k in 0..19 {
            h.set(42 + k, 0, h.at(43 + k));
        }
        for k in 0..30 {
            h.set(1, k, h.at(62 + k));
        }
        let want = h.classify(&[h.at(0)]);
        assert_eq!(want[0], Reachable);
        assert!(want[2..62].iter().all(|&k| k == Reachable));
        assert_eq!(want[1], Definite);
        assert!(want[62..].iter().all(|&k| k == Indirect));
        for work_max in [1, 2, 3, 7, 64] {
            assert_eq!(h.classify_with(&[h.at(0)], work_max), want, "{work_max}");
        }
    }

    #[test]
    fn a_size_too_large_for_a_node_is_found_in_the_big_list() {
        let a = 0x10_0000u64;
        let big_size = 40 << 20;
        let mut nodes = vec![Node::new(a, big_size), Node::new(a + big_size, 16)];
        assert!(Node::is_big(big_size));
        let big = [(a, big_size)];
        let g = Graph::new(&mut nodes, &big, Reads::Direct);
        assert_eq!(g.size(0), big_size);
        assert_eq!(g.size(1), 16);
        assert_eq!(g.find(a + big_size - 1), Some(0));
        assert_eq!(g.find(a + big_size + 15), Some(1));
        assert_eq!(g.find(a + big_size + 16), None);
        assert_eq!(g.first_at_or_above(a + 1), Some(a + big_size));
    }

    /// Every rank the index gives, against a binary search over all the nodes: at each block's
    /// address, one below and one above, in the gaps and far outside.
    fn index_agrees(addrs: &[u64]) {
        let nodes: Vec<Node> = addrs.iter().map(|&a| Node::new(a, 16)).collect();
        let ix = Index::new(&nodes);
        assert!(ix.ok);
        let mut probes = vec![0, 1, u64::MAX, u64::MAX / 2];
        for w in addrs.windows(2) {
            probes.push(w[0] + (w[1] - w[0]) / 2);
        }
        for &a in addrs {
            probes.extend([
                a.saturating_sub(1),
                a,
                a + 1,
                a + 4096,
                a.saturating_sub(1 << 20),
            ]);
        }
        for v in probes {
            let want_lt = nodes.partition_point(|n| n.addr() < v);
            let want_le = nodes.partition_point(|n| n.addr() <= v);
            assert_eq!(ix.rank(&nodes, v, |a| a < v), want_lt, "{v:#x} <");
            assert_eq!(ix.rank(&nodes, v, |a| a <= v), want_le, "{v:#x} <=");
        }
        let buckets = ix.buckets.len;
        assert!(buckets <= nodes.len() + EXTRA_BUCKETS, "{buckets} buckets");
    }

    #[test]
    fn the_index_ranks_every_address_as_a_binary_search_would() {
        let mut r = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r
        };
        index_agrees(&[0x1000]);
        // A dense heap: 16-byte blocks side by side, then 16 to 4 KiB apart.
        index_agrees(
            &(0..5000)
                .map(|i| 0x5555_0000_0000 + 16 * i)
                .collect::<Vec<_>>(),
        );
        let mut a = 0x5555_0000_0000u64;
        let spread: Vec<u64> = (0..20_000)
            .map(|_| {
                a += 16 * (1 + next() % 256);
                a
            })
            .collect();
        index_agrees(&spread);
        // A heap, blocks with mappings of their own far above it, a thread's arena between,
        // and runs of one block.
        let mut mixed: Vec<u64> = spread.iter().step_by(7).copied().collect();
        mixed.extend((0..300).map(|i| 0x7f00_0000_0000 + i * (1 << 21) + 16));
        mixed.extend((0..3000).map(|i| 0x7e00_0000_0000 + 48 * i + (next() % 2) * 16));
        mixed.extend((0..50).map(|i| 0x6000_0000_0000 + i * (1 << 34)));
        mixed.sort_unstable();
        mixed.dedup();
        index_agrees(&mixed);
    }

    #[test]
    fn buf_grows_in_its_own_mapping() {
        let mut b: Buf<u64> = Buf::new();
        for i in 0..100_000 {
            assert!(b.push(i));
        }
        assert_eq!(b.as_slice().len(), 100_000);
        assert_eq!(b.as_slice()[99_999], 99_999);
        assert_eq!(b.pop(), Some(99_999));
    }
}

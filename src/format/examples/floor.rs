//! What a dump's frees cost at least, against what heaptrack's file holds of them:
//! `cargo run --release -p zmtrace-format --example floor -- DUMP...`
//!
//! heaptrack's file names a freed block by its allocation's interned (size, stack) index only; a
//! zmtrace dump names the block itself, which the leak check's addresses, realloc chains,
//! cross-thread frees and per-block lifetimes need. For each dump (its events replayed in
//! sequence order, all threads together), per free:
//! - the order-0 entropy of the block's *recency rank*: how many blocks still live were
//!   allocated after it (0 for the newest). No coder that models frees by recency alone can go
//!   below it; the packer's distance back is that rank within its group;
//! - the same, bucketed (the rank's bit length coded by its entropy, the bits below the top one
//!   stored as they are): what a coder that adapts as it goes can reach;
//! - the rank among the live blocks of the same (size, stack) site, plus the site's entropy;
//! - the change in the block's *address rank* (among the live blocks, in address order) from
//!   the previous free's, bucketed with its sign: what a coder of frees that walk the heap in
//!   address order (a structure torn down) pays;
//! - the entropy of the freed block's site: what heaptrack pays for a free.
//!
//! These are floors of those models, not of every coder: context and repetition (what zstd
//! finds) go below them where frees repeat a pattern. On a program that frees blocks picked by
//! its input (a hash table's entries, say), no model of recency or place predicts them.
//!
//! A rank is found with a Fenwick tree over allocation indices (O(log n) a free); the dump's
//! events are read once to count them, once to replay them.

use std::collections::HashMap;
use std::path::Path;

use zmtrace_format::event::EventKind;
use zmtrace_format::read::Dump;

/// Counts of live blocks by allocation index, with prefix sums.
struct Fenwick(Vec<i32>);

impl Fenwick {
    fn add(&mut self, i: usize, v: i32) {
        let mut i = i + 1;
        while i < self.0.len() {
            self.0[i] += v;
            i += i & i.wrapping_neg();
        }
    }
    /// Live blocks of indices below `i`.
    fn below(&self, mut i: usize) -> i64 {
        let mut s = 0i64;
        while i > 0 {
            s += i64::from(self.0[i]);
            i -= i & i.wrapping_neg();
        }
        s
    }
}

/// Order-0 entropy in bits of the values counted in `counts`, times their number.
fn entropy(counts: &HashMap<u64, u64>) -> f64 {
    let n = counts.values().sum::<u64>() as f64;
    counts
        .values()
        .map(|&c| -(c as f64) * (c as f64 / n).log2())
        .sum()
}

/// Bits to code `values` as their bit length (by its entropy) and the bits below the top one.
fn bucketed(values: &[u64]) -> f64 {
    let mut lengths: HashMap<u64, u64> = HashMap::new();
    let mut below = 0.0;
    for &v in values {
        let len = u64::from(64 - (v + 1).leading_zeros()) - 1;
        *lengths.entry(len).or_default() += 1;
        below += len as f64;
    }
    entropy(&lengths) + below
}

fn counted(values: &[u64]) -> HashMap<u64, u64> {
    let mut c = HashMap::new();
    for &v in values {
        *c.entry(v).or_default() += 1;
    }
    c
}

fn main() {
    for path in std::env::args().skip(1) {
        let dump = match Dump::open(Path::new(&path)) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        };
        let n = dump.events().count();
        let mut addrs: Vec<u64> = dump
            .events()
            .filter_map(|e| match e.kind {
                EventKind::Alloc { addr, .. } => Some(addr),
                EventKind::Realloc { new_addr, .. } if new_addr != 0 => Some(new_addr),
                _ => None,
            })
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        let mut live_by_addr = Fenwick(vec![0; addrs.len() + 2]);
        let place = |a: u64| addrs.binary_search(&a).expect("an allocated address");
        let mut last_place = 0i64;
        let mut place_moves = Vec::new();
        let mut live_at = Fenwick(vec![0; n + 2]);
        let mut live = 0i64;
        // Address -> (allocation index, site).
        let mut blocks: HashMap<u64, (usize, u32)> = HashMap::new();
        let mut sites: HashMap<(u32, u64), u32> = HashMap::new();
        // Per site: the allocation indices of its live blocks, in order.
        let mut site_live: Vec<Vec<usize>> = Vec::new();
        let (mut ranks, mut site_ranks, mut freed_sites) = (Vec::new(), Vec::new(), Vec::new());
        for (i, e) in dump.events().enumerate() {
            let (alloc, freed) = match e.kind {
                EventKind::Alloc {
                    addr, size, stack, ..
                } => (Some((addr, size, stack)), None),
                EventKind::Free { addr, .. } | EventKind::ReallocOut { addr } => (None, Some(addr)),
                EventKind::Realloc {
                    new_addr,
                    size,
                    stack,
                    ..
                } if new_addr != 0 => (Some((new_addr, size, stack)), None),
                _ => (None, None),
            };
            if let Some((at, site)) = freed.and_then(|a| blocks.remove(&a)) {
                ranks.push((live - live_at.below(at + 1)) as u64);
                let l = &mut site_live[site as usize];
                let pos = l
                    .binary_search(&at)
                    .expect("a live block is in its site's list");
                site_ranks.push((l.len() - 1 - pos) as u64);
                l.remove(pos);
                freed_sites.push(u64::from(site));
                let p = place(freed.unwrap());
                let rank = live_by_addr.below(p);
                let d = rank - last_place;
                place_moves.push(((d << 1) ^ (d >> 63)) as u64);
                last_place = rank;
                live_by_addr.add(p, -1);
                live_at.add(at, -1);
                live -= 1;
            }
            if let Some((addr, size, stack)) = alloc {
                let next = sites.len() as u32;
                let site = *sites.entry((stack, size)).or_insert(next);
                if site as usize == site_live.len() {
                    site_live.push(Vec::new());
                }
                site_live[site as usize].push(i);
                blocks.insert(addr, (i, site));
                live_by_addr.add(place(addr), 1);
                live_at.add(i, 1);
                live += 1;
            }
        }
        let frees = ranks.len().max(1) as f64;
        let kib = |bits: f64| bits / 8.0 / 1024.0;
        let rank0 = entropy(&counted(&ranks));
        let rank_b = bucketed(&ranks);
        let site = entropy(&counted(&freed_sites));
        let in_site = bucketed(&site_ranks);
        println!(
            "{path}: {} frees, {live} blocks live at the end",
            ranks.len()
        );
        println!(
            "  recency rank, order 0:           {:6.2} bits a free, {:9.0} KiB",
            rank0 / frees,
            kib(rank0)
        );
        println!(
            "  recency rank, bucketed:          {:6.2} bits a free, {:9.0} KiB",
            rank_b / frees,
            kib(rank_b)
        );
        println!(
            "  site + rank in the site:         {:6.2} bits a free, {:9.0} KiB",
            (site + in_site) / frees,
            kib(site + in_site)
        );
        let moves = bucketed(&place_moves);
        println!(
            "  address rank's move, bucketed:   {:6.2} bits a free, {:9.0} KiB",
            moves / frees,
            kib(moves)
        );
        println!(
            "  site alone (heaptrack's free):   {:6.2} bits a free, {:9.0} KiB",
            site / frees,
            kib(site)
        );
        let near = ranks.iter().filter(|&&r| r < 16).count() as f64;
        println!(
            "  frees of one of the 16 newest live blocks: {:.1} %",
            100.0 * near / frees
        );
    }
}

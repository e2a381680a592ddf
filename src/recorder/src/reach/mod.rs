//! The leak check: which blocks of the live set the program can still reach, made inside the
//! traced process when it ends normally (`exit`, a return from `main`, `_exit`) and when the
//! program asks ([`crate::leak_check`]). Never on the hot path.
//!
//! The classes are valgrind memcheck's, computed its way (`mc_leakcheck.c`):
//!
//! 1. **Roots**: the writable `PT_LOAD` segments of every loaded module (`dl_iterate_phdr`), the
//!    registers and stacks of the threads still alive, and their static TLS. A glibc thread's
//!    static TLS and descriptor sit at the top of its stack mapping, so its stack is scanned from
//!    below its stack pointer (the 128-byte red zone) to the top of that mapping; the main
//!    thread's are in a mapping of their own, the one holding its `%fs` base. The recorder's own
//!    module, its heap and its writer thread are not roots: the program's blocks are exactly the
//!    live set's entries, so the allocator's arenas are never roots either (they hold every block).
//! 2. Every aligned word of a root that points at a block (its start, or inside it) marks the
//!    block: *reachable* for a pointer to its start, *possibly lost* for a pointer inside it. The
//!    blocks marked are scanned in turn (a worklist); what a possibly lost block points at is
//!    possibly lost at best.
//! 3. The blocks left unmarked are lost. Taken in address order, each one still unmarked leads a
//!    clique: whatever it reaches that is unmarked (start or interior pointer) is *indirectly
//!    lost*; the leaders are *definitely lost*.
//!
//! Blocks are looked up by binary search in one sorted array of addresses, so the check costs
//! (bytes of roots + bytes of reachable blocks) × log(blocks).
//!
//! **Stopping the threads.** The other threads are sent a real-time signal ([`stop_signal`])
//! whose handler saves the thread's registers and stack pointer (from its `ucontext`) and waits on
//! a futex until the check ends. A thread caught inside the recorder (it may hold a live-set
//! lock) returns from the handler at once and is asked again; a thread that blocks the signal, or
//! does not answer in time, has its whole stack mapping scanned instead, as far as it can be
//! found. Interrupted system calls may return `EINTR` in the program, as with any signal.
//!
//! **No allocation while threads are stopped.** A stopped thread may hold the allocator's lock
//! (it was stopped inside `malloc`), so between stopping and resuming them nothing here calls
//! `malloc`, takes a lock another thread could hold, or calls into the loader: the check's arrays
//! are anonymous mappings of their own ([`Buf`]), `/proc` is read with plain system calls, and
//! the modules are listed before the threads are stopped.
//!
//! The parts: `sys` (the check's own memory, `Buf`, and `/proc` read with plain system calls),
//! `stop` (stopping and resuming the other threads: the signal, its handler, the slots they
//! park in), `roots` (the writable segments, with the snapshot taken before a `fork`, the
//! stacks, the static TLS and the registers) and `graph` (the sorted live set, marking and
//! cliques). This file runs them in order (`check`) and writes the `Reach` record.

mod graph;
pub(crate) mod regions;
mod roots;
mod stop;
mod sys;

use std::sync::atomic::{AtomicBool, Ordering};

use zmtrace_format::{KindTotal, LeakKind, Reach, ReachTrigger};

pub(crate) use self::graph::Classes;
use self::graph::{Graph, Node, Reads};
pub(crate) use self::roots::{before_fork, IN_FORKED_CHILD};
use self::roots::{
    callee_saved, stack_range, static_tls_size, tls_range, writable_segments, ThreadRoots,
};
pub use self::stop::stop_signal;
use self::stop::{install_handler, resume_threads, stop_threads, Slot, PARKED};
use self::sys::{
    blocks_signal, gettid, list_threads, mapping_of, read_maps, syscall_sp, thread_pointer, MapKind,
};
pub(crate) use self::sys::{read_own, Buf};
use crate::clock::now_mono;
use crate::state::{Core, SEQ};
use crate::sync::SpinLock;
use crate::threads::CURRENT;
use crate::{aggregate, output};

/// One check at a time (exit in one thread while another asks for a check).
static CHECKING: AtomicBool = AtomicBool::new(false);

/// Aggregated mode: the classes of the check made at the end, to classify the live set written
/// after it (see `output`).
pub(crate) static LAST_EXIT_CHECK: SpinLock<Option<Classes>> = SpinLock::new(None);

/// Runs a check and writes its `Reach` record; returns the blocks and bytes of each class.
pub(crate) fn write_leak_check(
    core: &Core,
    trigger: ReachTrigger,
    entry: Option<crate::Entry>,
) -> Option<[KindTotal; 4]> {
    if crate::sample::interval() > 0 && !crate::sample::all_blocks() {
        // Sampled recording without `--all-blocks`: the live set holds only the sampled blocks,
        // and a scan that misses blocks would call what they point to lost. No check at all.
        return None;
    }
    let outcome = check(core, trigger, entry)?;
    let r = outcome.reach;
    let raw = outcome.raw;
    let raw_len = raw.len();
    if aggregate::on() && trigger != ReachTrigger::Request {
        *LAST_EXIT_CHECK.lock() = Some(outcome.classes);
    } else {
        drop(outcome.classes);
    }
    let z = zstd::bulk::compress(&raw, 1).ok()?;
    drop(raw);
    let mut buf = Vec::new();
    zmtrace_format::write::reach(&mut buf, &r, raw_len, &z);
    output::write_record(&buf);
    Some(r.totals)
}

/// memcheck's heuristics in use: `ZMTRACE_HEURISTICS` (`zmtrace run
/// --leak-check-heuristics`), memcheck's syntax, and memcheck's default: all of them. A value
/// that does not parse keeps the default (`zmtrace run` refuses it before the program starts).
fn heuristics_in_use(core: &Core) -> u8 {
    core.proc
        .env("ZMTRACE_HEURISTICS")
        .and_then(|v| graph::heuristic::parse(&v))
        .unwrap_or(graph::heuristic::ALL)
}

/// True when the calling thread is the process's only one (the recorder's writer aside).
pub(crate) fn only_thread_left() -> bool {
    let mut tids: Buf<u32> = Buf::new();
    list_threads(&mut tids);
    let (me, writer) = (gettid(), crate::output::writer_tid());
    tids.as_slice().iter().all(|&t| t == me || t == writer)
}

/// What one check found, for the record and for the caller: the record's header (its `addrs`
/// left empty), its address lists already encoded (`reach_raw`'s bytes, made from the nodes
/// without a list of addresses in between), and the classes.
pub(crate) struct Outcome {
    pub reach: Reach,
    pub raw: Vec<u8>,
    pub classes: Classes,
}

/// Runs a check now. Called under the recorder guard with the recorder ready; returns None when
/// another check is under way or the memory for it cannot be had. `entry` is where this thread
/// entered zmtrace (its caller's frame and registers); without one, the stack is scanned from
/// this function's caller, and the registers are read here.
#[inline(never)]
pub(crate) fn check(
    core: &Core,
    trigger: ReachTrigger,
    entry: Option<crate::Entry>,
) -> Option<Outcome> {
    let here = crate::Entry {
        sp: crate::stack_pointer(),
        regs: callee_saved(),
    };
    let (sp, regs, at_call) = match entry {
        Some(e) => (e.sp, e.regs, true),
        None => (here.sp, here.regs, false),
    };
    if CHECKING.swap(true, Ordering::AcqRel) {
        return None;
    }
    let out = check_locked(core, trigger, (sp, at_call), regs);
    CHECKING.store(false, Ordering::Release);
    out
}

#[inline(never)]
fn check_locked(
    core: &Core,
    trigger: ReachTrigger,
    my_sp: (u64, bool),
    my_regs: [u64; 6],
) -> Option<Outcome> {
    let started = now_mono();
    // Everything that may allocate or take a lock comes first.
    let mut segments = Buf::new();
    writable_segments(core, &mut segments);
    let tls_size = static_tls_size();
    let heuristics = heuristics_in_use(core);
    if !install_handler() {
        return None;
    }
    let me = gettid();
    let writer = crate::output::writer_tid();
    let sig = stop_signal();
    let mut text = Buf::new();
    let mut tids = Buf::new();
    list_threads(&mut tids);
    // Threads that block the signal cannot be stopped: their stacks are scanned as they are.
    let mut unstoppable: Buf<u32> = Buf::new();
    let mut stoppable: Buf<u32> = Buf::new();
    for &tid in tids.as_slice() {
        if tid == me || tid == writer {
            continue;
        }
        if blocks_signal(tid, sig, &mut text) {
            unstoppable.push(tid);
        } else {
            stoppable.push(tid);
        }
    }

    // ---- threads stopped from here: no malloc, no locks of others, no loader ----
    let (slots, too_many) = stop_threads(stoppable.as_slice());
    for &tid in too_many {
        unstoppable.push(tid);
    }
    let result = scan(
        core,
        &segments,
        slots,
        &unstoppable,
        tls_size,
        me,
        my_sp,
        my_regs,
        heuristics,
    );
    resume_threads(slots);
    // ---- threads running again ----
    let (seq, nodes, big, stopped, unstopped, root_bytes, unreadable) = result?;
    let mut reach = Reach {
        trigger,
        seq,
        threads_stopped: stopped,
        threads_unstopped: unstopped,
        root_bytes,
        unreadable_blocks: unreadable.0,
        unreadable_bytes: unreadable.1,
        ..Reach::default()
    };
    let raw = {
        let mut nodes = nodes;
        let g = Graph::new(nodes.as_mut_slice(), big.as_slice(), Reads::Direct);
        for i in 0..g.len() {
            let k = g.kind(i) as usize;
            reach.totals[k].blocks += 1;
            reach.totals[k].bytes += g.size(i);
        }
        drop(g);
        let classes = Classes(nodes);
        let raw = encode_lists(&classes, &reach);
        (raw, classes)
    };
    reach.scan_ns = now_mono().saturating_sub(started);
    Some(Outcome {
        reach,
        raw: raw.0,
        classes: raw.1,
    })
}

/// The `Reach` record's address lists (`zmtrace_format::write::reach_raw`'s bytes), encoded
/// straight from the nodes: per class its count, then its addresses ascending as deltas, then
/// the unreadable blocks and bytes. Sized exactly first: a vector that doubles would hold up to
/// twice the bytes, and a list of addresses in between eight bytes a block.
fn encode_lists(classes: &Classes, r: &Reach) -> Vec<u8> {
    use zmtrace_format::varint::put_uvarint;
    let nodes = classes.0.as_slice();
    let varint_len = |v: u64| (64 - (v | 1).leading_zeros() as usize).div_ceil(7);
    let mut len = 2 * 10;
    for k in LeakKind::ALL {
        len += varint_len(r.totals[k as usize].blocks);
        let mut prev = 0u64;
        for n in nodes.iter().filter(|n| n.kind() == k) {
            len += varint_len(n.addr().wrapping_sub(prev));
            prev = n.addr();
        }
    }
    let mut b = Vec::with_capacity(len);
    for k in LeakKind::ALL {
        put_uvarint(&mut b, r.totals[k as usize].blocks);
        let mut prev = 0u64;
        for n in nodes.iter().filter(|n| n.kind() == k) {
            put_uvarint(&mut b, n.addr().wrapping_sub(prev));
            prev = n.addr();
        }
    }
    put_uvarint(&mut b, r.unreadable_blocks);
    put_uvarint(&mut b, r.unreadable_bytes);
    b
}

type ScanResult = (u64, Buf<Node>, Buf<(u64, u64)>, u32, u32, u64, (u64, u64));
/// The nodes, and the (address, size) of the blocks too large for a node.
type Snapshot = (Buf<Node>, Buf<(u64, u64)>);

/// The part of the check made while the threads are stopped.
#[allow(clippy::too_many_arguments)]
fn scan(
    core: &Core,
    segments: &Buf<roots::Segment>,
    slots: &[Slot],
    unstoppable: &Buf<u32>,
    tls_size: u64,
    me: u32,
    (my_sp, at_call): (u64, bool),
    my_regs: [u64; 6],
    heuristics: u8,
) -> Option<ScanResult> {
    let seq = SEQ.load(Ordering::Acquire);
    let (mut nodes, big) = snapshot(core)?;
    let mut text = Buf::new();
    let mut maps = Buf::new();
    read_maps(&mut text, &mut maps);
    let maps = maps.as_slice();

    // One view of who stopped, used throughout: a thread may still park after the wait ended.
    let mut parked: Buf<bool> = Buf::new();
    for s in slots {
        parked.push(s.state.load(Ordering::Acquire) == PARKED);
    }
    let parked = parked.as_slice();
    let stopped = parked.iter().filter(|&&p| p).count() as u32;
    let unstopped = slots.len() as u32 - stopped + unstoppable.len as u32;
    let reads = if unstopped > 0 {
        Reads::Careful
    } else {
        Reads::Direct
    };
    let mut g =
        Graph::new(nodes.as_mut_slice(), big.as_slice(), reads).with_heuristics(heuristics, maps);
    // A block with a page it cannot read (a guard page of a fiber stack or a JIT buffer, made
    // with mprotect) is read without faulting, and counted.
    let unreadable = g.mark_unreadable(|start, end| {
        let mut p = start;
        while p < end {
            match mapping_of(maps, p) {
                Some(m) if m.readable => p = m.end,
                _ => return false,
            }
        }
        true
    });

    // Never roots: the allocator's state in libc's data, the recorder's own heap.
    let mut excluded: Buf<(u64, u64)> = Buf::new();
    if let Some(arena) = roots::glibc_main_arena(segments.as_slice(), maps) {
        excluded.push(arena);
    }
    // Our own mappings: the heap's chunks, the live set's tables, this check's arrays (see
    // `heap::raw_mappings`: one of them may sit where the program had a region).
    for c in crate::heap::raw_mappings() {
        excluded.push(c);
    }
    for &(s, e, kind) in segments.as_slice() {
        if kind == roots::OWN {
            excluded.push((s, e));
        }
    }
    excluded.as_mut_slice().sort_unstable();
    let excluded = excluded.as_slice();
    let scan_root = |g: &mut Graph, start: u64, end: u64| {
        let mut p = start;
        for &(xs, xe) in excluded {
            if xe <= p || xs >= end {
                continue;
            }
            g.scan_root(p, xs.max(p));
            p = p.max(xe);
        }
        if p < end {
            g.scan_root(p, end);
        }
    };
    // Only what is mapped and readable is read.
    let scan_mapped = |g: &mut Graph, start: u64, end: u64| {
        let mut p = start;
        while p < end {
            let Some(m) = mapping_of(maps, p) else {
                let next = maps.partition_point(|m| m.start <= p);
                match maps.get(next) {
                    Some(m) if m.start < end => {
                        p = m.start;
                        continue;
                    }
                    _ => return,
                }
            };
            let e = end.min(m.end);
            if m.readable {
                scan_root(g, p, e);
            }
            p = e;
        }
    };

    for &(s, e, kind) in segments.as_slice() {
        if kind != roots::OWN {
            scan_mapped(&mut g, s, e);
        }
    }
    // Our own stack, from our callers' frames up, and the registers they may still hold.
    let my_top = CURRENT.with(|c| c.get());
    // SAFETY: thread states are never freed.
    let my_top = unsafe { my_top.as_ref() }.map_or(0, |s| s.stack_top());
    let threads = [ThreadRoots {
        sp: my_sp,
        top: my_top,
        tp: thread_pointer(),
        at_call,
    }]
    .into_iter()
    .chain(
        slots
            .iter()
            .zip(parked)
            .filter(|(_, &p)| p)
            .map(|(s, _)| ThreadRoots {
                sp: s.sp.load(Ordering::Relaxed),
                top: s.top.load(Ordering::Relaxed),
                tp: s.tp.load(Ordering::Relaxed),
                at_call: false,
            }),
    );
    let mut all: Buf<ThreadRoots> = Buf::new();
    for t in threads {
        all.push(t);
    }
    let threads = all.as_slice();
    // The program's own mappings (see `regions`): what of them is still mapped readable and
    // writable, but a mapping that holds a block, which is an allocator's heap.
    let mut program = Buf::new();
    regions::snapshot(&mut program);
    for &(s, e) in program.as_slice() {
        let mut p = s;
        while p < e {
            let Some(m) = mapping_of(maps, p) else {
                let next = maps.partition_point(|m| m.start <= p);
                match maps.get(next) {
                    Some(m) if m.start < e => {
                        p = m.start;
                        continue;
                    }
                    _ => break,
                }
            };
            let end = e.min(m.end);
            // (Within the region only: the kernel merges an allocator's mapping that happens to
            // be next to it into the same line of the memory map.)
            let holds_block = g.first_at_or_above(p).is_some_and(|a| a < end);
            if m.readable && m.writable && !m.device && !holds_block {
                // A stack in use there (a signal stack, a coroutine's): from its stack pointer
                // up, as for any stack; below lie dead frames (the recorder's among them).
                let from = threads
                    .iter()
                    .filter(|t| (p..end).contains(&t.sp))
                    .map(|t| {
                        t.sp.saturating_sub(if t.at_call { 0 } else { roots::RED_ZONE })
                    })
                    .max()
                    .unwrap_or(p)
                    .max(p);
                scan_root(&mut g, from, end);
            }
            p = end;
        }
    }
    for &w in &my_regs {
        g.reach_word(w, true);
    }
    for (s, &p) in slots.iter().zip(parked) {
        if p {
            for r in &s.regs {
                g.reach_word(r.load(Ordering::Relaxed), true);
            }
        }
    }
    for t in threads {
        if let Some((lo, hi)) = roots::interrupted_stack(maps, t) {
            // On a signal stack: the stack it was interrupted on, from where it was.
            scan_mapped(&mut g, lo, hi);
        }
        if let Some((lo, hi)) = stack_range(&g, maps, t.sp, t.top, t.at_call) {
            scan_mapped(&mut g, lo, hi);
            if !(lo..hi).contains(&t.tp) {
                if let Some((lo, hi)) = tls_range(&g, maps, t.tp, tls_size) {
                    scan_mapped(&mut g, lo, hi);
                }
            }
        }
    }
    // Threads that did not stop: their whole stack mapping, as far as it can be found.
    let unanswered = slots
        .iter()
        .zip(parked)
        .filter(|(_, &p)| !p)
        .map(|(s, _)| s.tid.load(Ordering::Relaxed));
    for tid in unanswered.chain(unstoppable.as_slice().iter().copied()) {
        if tid == me {
            continue;
        }
        let known_top = crate::threads::all_threads()
            .find(|t| t.in_use.load(Ordering::Acquire) && t.tid.load(Ordering::Acquire) == tid)
            .map(|t| t.stack_top());
        let range = match known_top {
            Some(top) if top > 0 => mapping_of(maps, top - 1)
                .filter(|m| m.kind != MapKind::Heap)
                // The main thread's: to the stack segment's end (see `roots::stack_range`).
                .map(|m| (m.start, if m.kind == MapKind::Stack { m.end } else { top })),
            _ => syscall_sp(tid, &mut text).and_then(|sp| {
                let m = mapping_of(maps, sp)?;
                let (_, hi) = stack_range(&g, maps, sp, 0, false)?;
                Some((m.start, hi))
            }),
        };
        if let Some((lo, hi)) = range {
            scan_mapped(&mut g, lo, hi);
        }
    }

    g.mark();
    g.cliques();
    let root_bytes = g.root_bytes;
    drop(g);
    Some((seq, nodes, big, stopped, unstopped, root_bytes, unreadable))
}

/// The live set as the graph's nodes, sorted by address, and the (address, size) of the blocks
/// too large for a node, sorted too. Made in place: the nodes are gathered (12 bytes a block,
/// the size clamped), then sorted where they are, so that the check never holds more than its
/// nodes per block. The live set's locks are only tried (see `LiveSet::try_for_each`).
fn snapshot(core: &Core) -> Option<Snapshot> {
    let deadline = now_mono() + 2_000_000_000;
    let mut nodes: Buf<Node> = Buf::new();
    let mut big: Buf<(u64, u64)> = Buf::new();
    // Room for all of them at once (a buffer that grows copies itself, and is twice there).
    // The count is a hint: a thread that could not be stopped may add more meanwhile.
    if !nodes.reserve(core.live.try_len(deadline)? + 1024) {
        return None;
    }
    let mut ok = true;
    let complete = core.live.try_for_each(deadline, |addr, b| {
        ok &= nodes.push(Node::new(addr, b.size));
        if Node::is_big(b.size) {
            ok &= big.push((addr, b.size));
        }
    });
    if !complete || !ok {
        return None;
    }
    nodes.as_mut_slice().sort_unstable_by_key(|n| n.addr());
    big.as_mut_slice().sort_unstable_by_key(|&(a, _)| a);
    Some((nodes, big))
}

//! Building records. The recorder calls these off the hot path (on its writer thread or while
//! flushing), with its own heap, so they may allocate.

use crate::varint::{put_bytes, put_uvarint, zigzag};
use crate::{
    Aggregate, Block, End, LiveSite, Module, Origin, Process, Reach, RecordKind, MAGIC, VERSION,
};

/// The bytes every dump starts with.
pub fn file_header() -> [u8; crate::FILE_HEADER_LEN] {
    let mut h = [0u8; crate::FILE_HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Appends one framed record (header, checksum, payload) to `out`.
pub fn record(out: &mut Vec<u8>, kind: RecordKind, payload: &[u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind as u8]);
    crc.update(payload);
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

pub fn process(out: &mut Vec<u8>, p: &Process) {
    let mut b = Vec::new();
    put_uvarint(&mut b, u64::from(p.pid));
    put_uvarint(&mut b, u64::from(p.ppid));
    b.push(match p.origin {
        Origin::Start => 0,
        Origin::Fork => 1,
        Origin::Exec => 2,
    });
    put_uvarint(&mut b, u64::from(p.parent_pid));
    put_uvarint(&mut b, p.fork_seq);
    put_uvarint(&mut b, p.start_unix_ns);
    put_bytes(&mut b, p.session.as_bytes());
    put_bytes(&mut b, p.exe.as_bytes());
    put_uvarint(&mut b, p.argv.len() as u64);
    for a in &p.argv {
        put_bytes(&mut b, a.as_bytes());
    }
    b.push(u8::from(p.aggregated));
    put_uvarint(&mut b, u64::from(p.args_left_out));
    if p.sample_interval > 0 {
        // Only when sampled: an unsampled dump stays as older writers made it.
        put_uvarint(&mut b, p.sample_interval);
        b.push(u8::from(p.all_blocks));
    }
    record(out, RecordKind::Process, &b);
}

pub fn module(out: &mut Vec<u8>, m: &Module) {
    let mut b = Vec::new();
    put_uvarint(&mut b, m.base);
    put_bytes(&mut b, m.path.as_bytes());
    put_bytes(&mut b, &m.build_id);
    put_uvarint(&mut b, m.segments.len() as u64);
    for &(s, e) in &m.segments {
        put_uvarint(&mut b, s);
        put_uvarint(&mut b, e);
    }
    // Appended: a reader that does not know it stops before it.
    put_uvarint(&mut b, m.seq);
    record(out, RecordKind::Module, &b);
}

/// The module at load bias `base` was unloaded: events numbered `seq` or later are not in it.
pub fn module_gone(out: &mut Vec<u8>, base: u64, seq: u64) {
    let mut b = Vec::new();
    put_uvarint(&mut b, base);
    put_uvarint(&mut b, seq);
    record(out, RecordKind::ModuleGone, &b);
}

/// One `Stacks` record for a batch of newly interned stacks. `compress` makes one zstd frame:
/// stacks that share their outer frames share byte runs, and compress ~5 times.
pub fn stacks<'a>(
    out: &mut Vec<u8>,
    stacks: impl ExactSizeIterator<Item = (u32, &'a [u64])>,
    compress: &mut dyn FnMut(&[u8]) -> Vec<u8>,
) {
    let mut b = Vec::new();
    put_uvarint(&mut b, stacks.len() as u64);
    for (id, frames) in stacks {
        put_uvarint(&mut b, u64::from(id));
        put_uvarint(&mut b, frames.len() as u64);
        let mut prev = 0u64;
        for (i, &f) in frames.iter().enumerate() {
            if i == 0 {
                put_uvarint(&mut b, f);
            } else {
                put_uvarint(&mut b, zigzag(f.wrapping_sub(prev) as i64));
            }
            prev = f;
        }
    }
    compressed(out, RecordKind::Stacks, b.len(), &compress(&b));
}

/// An `Events` record: `raw` is the encoded events of one thread, `compressed` its zstd frame.
pub fn events(out: &mut Vec<u8>, stream: u32, tid: u32, raw_len: usize, compressed: &[u8]) {
    events_after(out, stream, tid, raw_len, 0, compressed);
}

/// An `Events` record whose zstd frame was made with the last `prefix_len` bytes of its stream's
/// previous record (decompressed) as its prefix: the record continues that one's group (see
/// [`crate::event::Packer`]), and zstd finds its matches in it.
pub fn events_after(
    out: &mut Vec<u8>,
    stream: u32,
    tid: u32,
    raw_len: usize,
    prefix_len: usize,
    compressed: &[u8],
) {
    let mut b = Vec::with_capacity(compressed.len() + 16);
    put_uvarint(&mut b, u64::from(stream));
    put_uvarint(&mut b, u64::from(tid));
    put_uvarint(&mut b, raw_len as u64);
    put_uvarint(&mut b, prefix_len as u64);
    b.extend_from_slice(compressed);
    record(out, RecordKind::Events, &b);
}

/// Encodes inherited blocks (before compression) for an `Inherited` record.
pub fn inherited_raw(blocks: impl Iterator<Item = Block>) -> Vec<u8> {
    let mut b = Vec::new();
    for blk in blocks {
        inherited_block(&mut b, &blk);
    }
    b
}

/// Appends one block to what [`inherited_raw`] makes (for a caller that visits its blocks
/// instead of iterating them).
pub fn inherited_block(b: &mut Vec<u8>, blk: &Block) {
    put_uvarint(b, blk.addr);
    put_uvarint(b, blk.size);
    put_uvarint(b, blk.usable);
    put_uvarint(b, u64::from(blk.stack));
}

pub fn inherited(out: &mut Vec<u8>, raw_len: usize, compressed: &[u8]) {
    let mut b = Vec::with_capacity(compressed.len() + 8);
    put_uvarint(&mut b, raw_len as u64);
    b.extend_from_slice(compressed);
    record(out, RecordKind::Inherited, &b);
}

pub fn exec(out: &mut Vec<u8>, path: &str) {
    let mut b = Vec::new();
    put_bytes(&mut b, path.as_bytes());
    record(out, RecordKind::Exec, &b);
}

pub fn end(out: &mut Vec<u8>, e: &End) {
    let mut b = Vec::new();
    b.push(e.reason as u8);
    put_uvarint(&mut b, zigzag(i64::from(e.status)));
    for v in [
        e.events,
        e.dropped,
        e.untracked_frees,
        e.free_null,
        e.truncated_stacks,
        e.compared_stacks,
        e.mismatched_stacks,
    ] {
        put_uvarint(&mut b, v);
    }
    record(out, RecordKind::End, &b);
}

/// A `Late` record: thread `tid` recorded an event after the `End` record.
/// A `Snapshot` marker: when, and at which event sequence number.
pub fn snapshot(out: &mut Vec<u8>, ts_ns: u64, seq: u64) {
    let mut b = Vec::new();
    put_uvarint(&mut b, ts_ns);
    put_uvarint(&mut b, seq);
    record(out, RecordKind::Snapshot, &b);
}

pub fn late(out: &mut Vec<u8>, tid: u32) {
    let mut b = Vec::new();
    put_uvarint(&mut b, u64::from(tid));
    record(out, RecordKind::Late, &b);
}

/// Encodes an [`Aggregate`] (before compression) for an `Aggregate` record.
pub fn aggregate_raw(a: &Aggregate) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [
        a.allocations,
        a.frees,
        a.reallocs,
        a.failed,
        a.bytes_allocated,
        a.temporary,
        a.threads,
        a.calls,
    ] {
        put_uvarint(&mut b, v);
    }
    put_uvarint(&mut b, a.sites.len() as u64);
    for s in &a.sites {
        put_uvarint(&mut b, u64::from(s.stack));
        let c = &s.churn;
        for v in [
            s.allocations,
            s.bytes,
            s.temporary,
            s.failed,
            c.reallocs,
            c.grew,
            c.shrank,
            c.moved,
            c.in_place,
            c.bytes_copied,
            c.longest_chain,
            c.ratio_sum.to_bits(),
            c.other_steps,
        ] {
            put_uvarint(&mut b, v);
        }
        put_uvarint(&mut b, c.steps.len() as u64);
        for &(step, n) in &c.steps {
            put_uvarint(&mut b, step);
            put_uvarint(&mut b, n);
        }
    }
    b
}

/// Encodes live sites (before compression) for a `LiveAtEnd` record.
pub fn live_raw(sites: impl Iterator<Item = LiveSite>) -> Vec<u8> {
    let mut b = Vec::new();
    for s in sites {
        put_uvarint(&mut b, u64::from(s.stack));
        put_uvarint(&mut b, s.blocks);
        put_uvarint(&mut b, s.bytes);
        put_uvarint(&mut b, s.usable);
        put_uvarint(&mut b, s.via_realloc);
        b.push(s.kind);
    }
    b
}

/// A record of `kind` holding one zstd frame (`compressed`) of `raw_len` bytes.
pub fn compressed(out: &mut Vec<u8>, kind: RecordKind, raw_len: usize, compressed: &[u8]) {
    let mut b = Vec::with_capacity(compressed.len() + 8);
    put_uvarint(&mut b, raw_len as u64);
    b.extend_from_slice(compressed);
    record(out, kind, &b);
}

/// The address lists of a `Reach` record, before compression: per kind a count, then the
/// addresses ascending, the first absolute and the others as deltas (heap addresses are close
/// together, so most deltas take one or two bytes).
pub fn reach_raw(r: &Reach) -> Vec<u8> {
    let mut b = Vec::new();
    for list in &r.addrs {
        put_uvarint(&mut b, list.len() as u64);
        let mut prev = 0u64;
        for &a in list {
            put_uvarint(&mut b, a.wrapping_sub(prev));
            prev = a;
        }
    }
    // After the lists: readers of before these fields stop at the lists' end.
    put_uvarint(&mut b, r.unreadable_blocks);
    put_uvarint(&mut b, r.unreadable_bytes);
    b
}

/// A `Reach` record: `r`'s header fields (its `addrs` are ignored) and the compressed lists made
/// by [`reach_raw`].
pub fn reach(out: &mut Vec<u8>, r: &Reach, raw_len: usize, compressed: &[u8]) {
    let mut b = Vec::with_capacity(compressed.len() + 64);
    b.push(r.trigger as u8);
    for v in [
        r.seq,
        r.scan_ns,
        u64::from(r.threads_stopped),
        u64::from(r.threads_unstopped),
        r.root_bytes,
    ] {
        put_uvarint(&mut b, v);
    }
    for t in &r.totals {
        put_uvarint(&mut b, t.blocks);
        put_uvarint(&mut b, t.bytes);
    }
    put_uvarint(&mut b, raw_len as u64);
    b.extend_from_slice(compressed);
    record(out, RecordKind::Reach, &b);
}

//! The dump as the recorder writes it, byte by byte where the reader alone would not notice:
//! format version 6's `Events` records are in the cut lanes, and each is one zstd frame with a
//! block per lane of some size (any zstd reader reads a frame of one block or of many alike, so
//! only the bytes tell); or as packed events, where those compress better.

use crate::common::*;
use zmtrace_format::varint::Cursor;
use zmtrace_format::{Dump, RecordKind, FILE_HEADER_LEN, RECORD_HEADER_LEN};

/// The number of blocks of the zstd frame `z`, from its block headers.
fn frame_blocks(z: &[u8]) -> usize {
    assert_eq!(&z[..4], &[0x28, 0xb5, 0x2f, 0xfd], "not a zstd frame");
    let fhd = z[4];
    let single = fhd & 0x20 != 0;
    let content_size = [usize::from(single), 2, 4, 8][usize::from(fhd >> 6)];
    let dict = [0, 1, 2, 4][usize::from(fhd & 3)];
    let mut p = 5 + usize::from(!single) + dict + content_size;
    let mut blocks = 0;
    loop {
        let h = u32::from(z[p]) | u32::from(z[p + 1]) << 8 | u32::from(z[p + 2]) << 16;
        blocks += 1;
        // A block's content: its size, but one byte for an RLE block (type 1).
        p += 3 + if (h >> 1) & 3 == 1 {
            1
        } else {
            (h >> 3) as usize
        };
        if h & 1 == 1 {
            return blocks;
        }
    }
}

/// One `Events` record as written: its zstd frame's blocks and its first byte decompressed.
struct Written {
    blocks: usize,
    first: u8,
}

/// Every `Events` record of the dump at `path`, decompressed after its stream's previous record
/// as the reader does.
fn events_records(path: &std::path::Path) -> Vec<Written> {
    let data = std::fs::read(path).unwrap();
    assert_eq!(
        u32::from_le_bytes(data[8..12].try_into().unwrap()),
        zmtrace_format::VERSION
    );
    let mut pos = FILE_HEADER_LEN;
    let mut last: std::collections::HashMap<u64, Vec<u8>> = Default::default();
    let mut records = Vec::new();
    while pos + RECORD_HEADER_LEN <= data.len() {
        let len = u32::from_le_bytes(data[pos + 1..pos + 5].try_into().unwrap()) as usize;
        let payload = &data[pos + RECORD_HEADER_LEN..pos + RECORD_HEADER_LEN + len];
        if data[pos] == RecordKind::Events as u8 {
            let mut c = Cursor::new(payload);
            let (stream, _tid) = (c.uvarint().unwrap(), c.uvarint().unwrap());
            let raw_len = c.uvarint().unwrap() as usize;
            let prefix_len = c.uvarint().unwrap() as usize;
            let z = c.rest();
            let prev = last.remove(&stream).unwrap_or_default();
            let mut d = zstd::zstd_safe::DCtx::create();
            d.ref_prefix(&prev[prev.len() - prefix_len..]).unwrap();
            let mut raw = Vec::with_capacity(raw_len);
            d.decompress(&mut raw, z).unwrap();
            records.push(Written {
                blocks: frame_blocks(z),
                first: raw[0],
            });
            last.insert(stream, raw);
        }
        pos += RECORD_HEADER_LEN + len;
    }
    records
}

/// `samples/NAME ARGS` traced: its `Events` records as written, and its dump as read.
fn traced_records(name: &str, args: &[&str]) -> (Run, Vec<Written>, Dump) {
    let run = run_traced(&sample(name), args);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let path = run.only_dump().path.clone();
    let records = events_records(&path);
    assert!(records.len() > 8, "{}", records.len());
    (run, records, Dump::open(&path).unwrap())
}

#[test]
fn events_records_are_in_cut_lanes_with_a_zstd_block_per_lane() {
    // 200,000 mallocs from three sites; 199,000 frees of blocks 1,000 steps old, then the
    // last 1,000 (the first 1,000 frees are of NULL, which are no events).
    let (run, records, dump) = traced_records("burst", &["200000"]);
    // Random sizes and distances: lanes win every try, so every record is in lanes.
    assert!(records
        .iter()
        .all(|r| r.first == zmtrace_format::lanes::LANES_CUT));
    // Tags, sites, the allocations' and the frees' addresses: every record big enough has lanes
    // of 256 B and more, each in its block.
    let most = records.iter().map(|r| r.blocks).max().unwrap();
    assert!(most >= 4, "{most}");
    // And the dump reads back whole: every malloc and free.
    assert_eq!(
        alloc_and_free_counts(&dump),
        (200_000, 200_000),
        "{}",
        run.describe()
    );
}

#[test]
fn a_request_loops_events_are_stored_packed_where_that_is_smaller() {
    // 200,000 requests of 5 to 7 mallocs, 2 reallocs and as many frees, in three patterns that
    // repeat at the same addresses: packed, one record takes a few hundred bytes; in lanes,
    // two and a half times that (examples/recompress.rs on this dump: 11.5 against 28.5 KiB).
    let (run, records, dump) = traced_records("requests", &["200000"]);
    // Every record is packed events (a tag, a time mark or a continuation first, no lanes
    // marker), in a frame of one block.
    for r in &records {
        assert!(
            r.first != zmtrace_format::lanes::LANES && r.first != zmtrace_format::lanes::LANES_CUT,
            "a record in lanes"
        );
        assert_eq!(r.blocks, 1);
    }
    // 200,000 × (1 argv + 2-4 args + 1 reply) + 40,000 kept values; the reply's first realloc
    // is of NULL, an allocation; its second a realloc.
    let (allocs, frees) = alloc_and_free_counts(&dump);
    let args: usize = (0..200_000).map(|i| 2 + i % 3).sum();
    assert_eq!(allocs, 200_000 * 2 + args + 40_000, "{}", run.describe());
    assert_eq!(frees, allocs, "{}", run.describe());
}

/// Allocations and frees in `dump`.
fn alloc_and_free_counts(dump: &Dump) -> (usize, usize) {
    let mut n = (0, 0);
    for e in dump.events() {
        match e.kind {
            zmtrace_format::EventKind::Alloc { .. } => n.0 += 1,
            zmtrace_format::EventKind::Free { .. } => n.1 += 1,
            _ => {}
        }
    }
    n
}

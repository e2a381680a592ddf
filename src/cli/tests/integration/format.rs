//! The dump as the recorder writes it, byte by byte where the reader alone would not notice:
//! format version 6's `Events` records are in the cut lanes, and each is one zstd frame with a
//! block per lane of some size (any zstd reader reads a frame of one block or of many alike, so
//! only the bytes tell).

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

#[test]
fn events_records_are_in_cut_lanes_with_a_zstd_block_per_lane() {
    // 200,000 mallocs from three sites; 199,000 frees of blocks 1,000 steps old, then the
    // last 1,000 (the first 1,000 frees are of NULL, which are no events).
    let run = run_traced(&sample("burst"), &["200000"]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let path = &run.only_dump().path;
    let data = std::fs::read(path).unwrap();
    assert_eq!(
        u32::from_le_bytes(data[8..12].try_into().unwrap()),
        zmtrace_format::VERSION
    );
    let mut pos = FILE_HEADER_LEN;
    let (mut records, mut blocks, mut first_in_lanes) = (0, Vec::new(), 0);
    while pos + RECORD_HEADER_LEN <= data.len() {
        let len = u32::from_le_bytes(data[pos + 1..pos + 5].try_into().unwrap()) as usize;
        let payload = &data[pos + RECORD_HEADER_LEN..pos + RECORD_HEADER_LEN + len];
        if data[pos] == RecordKind::Events as u8 {
            let mut c = Cursor::new(payload);
            let (_stream, _tid) = (c.uvarint().unwrap(), c.uvarint().unwrap());
            let raw_len = c.uvarint().unwrap() as usize;
            let prefix_len = c.uvarint().unwrap();
            let z = c.rest();
            records += 1;
            blocks.push(frame_blocks(z));
            if prefix_len == 0 {
                // A record that starts its group decompresses alone: its first byte says the
                // layout.
                let raw = zstd::bulk::decompress(z, raw_len).unwrap();
                assert_eq!(raw[0], zmtrace_format::lanes::LANES_CUT);
                first_in_lanes += 1;
            }
        }
        pos += RECORD_HEADER_LEN + len;
    }
    assert!(
        records > 0 && first_in_lanes > 0,
        "{records} {first_in_lanes}"
    );
    // Tags, sites, the allocations' and the frees' addresses: every record big enough has lanes
    // of 256 B and more, each in its block.
    let most = *blocks.iter().max().unwrap();
    assert!(most >= 4, "{blocks:?}");
    // And the dump reads back whole: every malloc and free.
    let dump = Dump::open(path).unwrap();
    let summary = alloc_and_free_counts(&dump);
    assert_eq!(summary, (200_000, 200_000), "{}", run.describe());
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

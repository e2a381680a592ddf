//! Measures how the events of a dump pack under other grammars (the figures behind format
//! version 5): `cargo run --release -p zmtrace-format --example repack -- DUMP...`
//!
//! Reads any dump this crate reads, turns its events back into the recorder's plain events
//! (thread by thread, in order) and packs them again as the recorder does: records of at most
//! 64 KiB packed bytes or 40 ms of events, in groups ([`Packer`]), each record in lanes,
//! compressed by zstd level 3 after its group's previous record. For each dump: the compressed
//! bytes of the events (no record headers) with version 3's grammar in version 4's lanes, and
//! with version 5's (frees name their block by its site), and both's packed bytes.
//! `REPACK_ONLY=5` (or 4) packs with one grammar only, without zstd (for callgrind).

use std::collections::HashMap;
use std::path::Path;

use zmtrace_format::event::{self, EventBuf, EventKind, Packer};
use zmtrace_format::lanes::Layout;
use zmtrace_format::read::Dump;

const RECORD_BYTES: usize = 64 * 1024;
const HOLD_NS: u64 = 40_000_000;

/// One thread's plain events, and where each starts with its time.
type Stream = (Vec<u8>, Vec<(usize, u64)>);

/// Each thread's events as the recorder's rings hold them, with each event's time.
fn plain_streams(dump: &Dump) -> (Vec<Stream>, u64) {
    let mut streams: HashMap<u32, Stream> = HashMap::new();
    let mut out_seq: HashMap<u32, u64> = HashMap::new();
    let mut n = 0;
    for e in dump.events() {
        let mut b = EventBuf::default();
        let (seq, ts) = (e.seq, e.ts_ns);
        match e.kind {
            EventKind::Alloc {
                kind,
                addr,
                size,
                usable,
                stack,
            } => event::encode_alloc(&mut b, seq, ts, kind, addr, size, usable, stack),
            EventKind::Free { addr, at_realloc } => {
                if at_realloc {
                    event::encode_left(&mut b, seq, ts, addr)
                } else {
                    event::encode_free(&mut b, seq, ts, addr)
                }
            }
            EventKind::ReallocOut { .. } | EventKind::RemapOut { .. } => {
                out_seq.insert(e.tid, seq);
                continue;
            }
            EventKind::Realloc {
                old_addr,
                new_addr,
                size,
                usable,
                stack,
            } => {
                let out = out_seq.remove(&e.tid).unwrap_or(seq);
                event::encode_realloc(
                    &mut b, seq, out, ts, old_addr, new_addr, size, usable, stack,
                )
            }
            EventKind::AllocFailed { kind, size, stack } => {
                event::encode_failed(&mut b, seq, ts, kind, size, stack)
            }
            EventKind::Map {
                addr,
                len,
                prot,
                flags,
                stack,
            } => event::encode_map(&mut b, seq, ts, addr, len, prot, flags, stack),
            EventKind::Unmap { addr, len } => event::encode_unmap(&mut b, seq, ts, addr, len),
            EventKind::Remap {
                old_addr,
                old_len,
                new_addr,
                new_len,
                stack,
            } => {
                let out = out_seq.remove(&e.tid).unwrap_or(seq);
                event::encode_remap(
                    &mut b, seq, out, ts, old_addr, old_len, new_addr, new_len, stack,
                )
            }
        }
        let s = streams.entry(e.tid).or_default();
        s.1.push((s.0.len(), ts));
        s.0.extend_from_slice(b.as_slice());
        n += 1;
    }
    let mut v: Vec<_> = streams.into_iter().collect();
    v.sort_by_key(|(t, _)| *t);
    (v.into_iter().map(|(_, s)| s).collect(), n)
}

/// (packed bytes, compressed bytes) of all streams in `version`'s grammar (4 or 5).
fn repack(streams: &[Stream], version: u32, zstd: bool) -> (usize, usize) {
    let mut packed_total = 0;
    let mut z_total = 0;
    let mut splitter = zmtrace_format::lanes::Splitter::default();
    let mut body = Vec::new();
    let mut z = Vec::new();
    for (plain, times) in streams {
        let mut p = if version >= 5 {
            Packer::default()
        } else {
            Packer::version3()
        };
        let mut prev: Vec<u8> = Vec::new();
        let mut i = 0; // index into times
        while i < times.len() {
            // One record: events up to 64 KiB packed, or 40 ms after its first.
            let start = times[i].0;
            let t0 = times[i].1;
            let mut j = i;
            while j < times.len() && times[j].1.saturating_sub(t0) < HOLD_NS {
                j += 1;
            }
            let end = times.get(j).map_or(plain.len(), |t| t.0);
            let mut packed = Vec::new();
            let (n, used) = p.pack_some(&plain[start..end], &mut packed, RECORD_BYTES);
            assert!(n > 0);
            // The next record starts after what this one took.
            let next = start + used;
            while i < times.len() && times[i].0 < next {
                i += 1;
            }
            let continues = p.continues();
            p.finish_record(packed.len());
            packed_total += packed.len();
            if !zstd {
                continue;
            }
            // Version 4's lanes (versions 4 and 5), compressed as one block, as they were written.
            let raw = if splitter.split_as(Layout::Fields, &packed, &mut body) {
                &body[..]
            } else {
                &packed[..]
            };
            let prefix: &[u8] = if continues { &prev } else { &[] };
            let mut cctx = zstd::zstd_safe::CCtx::create();
            cctx.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(3))
                .unwrap();
            cctx.ref_prefix(prefix).unwrap();
            z.clear();
            z.reserve(zstd::zstd_safe::compress_bound(raw.len()));
            cctx.compress2(&mut z, raw).unwrap();
            z_total += z.len();
            drop(cctx);
            prev.clear();
            prev.extend_from_slice(raw);
        }
    }
    (packed_total, z_total)
}

fn main() {
    let only: Option<u32> = std::env::var("REPACK_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    for path in std::env::args().skip(1) {
        let dump = Dump::open(Path::new(&path)).expect("open");
        let (streams, n) = plain_streams(&dump);
        if let Some(v) = only {
            let (packed, _) = repack(&streams, v, false);
            println!("{path}: {n} events, version {v} packed {packed} bytes");
            continue;
        }
        let (p4, z4) = repack(&streams, 4, true);
        let (p5, z5) = repack(&streams, 5, true);
        println!(
            "{path}: {n} events (version {}), {} threads\n  v4 grammar: packed {:.1} KiB, zstd {:.1} KiB\n  v5 grammar: packed {:.1} KiB, zstd {:.1} KiB ({:+.1} %)",
            dump.version,
            streams.len(),
            p4 as f64 / 1024.0,
            z4 as f64 / 1024.0,
            p5 as f64 / 1024.0,
            z5 as f64 / 1024.0,
            (z5 as f64 / z4 as f64 - 1.0) * 100.0
        );
    }
}

//! Measures how a dump's `Events` records would compress under other framings (the figures
//! behind format versions 4 and 6): `cargo run --release -p zmtrace-format --example recompress -- DUMP...`
//!
//! Give it any dump from version 3 on (a record in lanes is merged back to its packed events
//! first). For each dump: bytes per record kind, then the events' compressed size as written, as one
//! zstd frame per record with the previous record as prefix (version 3, re-made here) at several
//! levels, in lanes (version 4, see `zmtrace_format::lanes`; the split's and merge's cost), in
//! version 6's cut lanes with a zstd block per lane (as the recorder writes them), and as
//! one streaming frame per group flushed at every record (not built) at several levels and
//! windows. The ms/MiB figures are wall time of this process on whatever else the machine runs.
//! `--dict FILE` adds records compressed alone and streamed with that dictionary; `--samples DIR`
//! writes every record's packed bytes there (for `zstd --train`). `SPLIT_ONLY=1`: the split's
//! and merge's cost only (for callgrind).

use std::collections::HashMap;

use zmtrace_format::lanes::Layout;

use zstd::zstd_safe::{CCtx, CParameter, DCtx, InBuffer, OutBuffer};

#[derive(Clone)]
struct Rec {
    stream: u32,
    raw: Vec<u8>,
    /// Header bytes besides the compressed frame (record header and payload varints).
    overhead: usize,
    zlen: usize,
}

fn uvarint(b: &[u8], p: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut s = 0;
    loop {
        let x = b[*p];
        *p += 1;
        v |= u64::from(x & 0x7f) << s;
        if x & 0x80 == 0 {
            return v;
        }
        s += 7;
    }
}

fn kind_name(k: u8) -> &'static str {
    [
        "?",
        "Process",
        "Module",
        "ModuleGone",
        "Stacks",
        "Events",
        "Inherited",
        "Exec",
        "End",
        "Late",
        "Aggregate",
        "LiveAtEnd",
        "Reach",
        "Snapshot",
    ]
    .get(k as usize)
    .copied()
    .unwrap_or("?")
}

fn decompress(prefix: &[u8], z: &[u8], raw_len: usize) -> Vec<u8> {
    let mut out = vec![0u8; raw_len];
    let mut d = DCtx::create();
    if !prefix.is_empty() {
        d.ref_prefix(prefix).unwrap();
    }
    let n = d.decompress(&mut out[..], z).expect("decompress");
    out.truncate(n);
    out
}

fn read(path: &str) -> (Vec<Rec>, Vec<(u8, usize, usize)>, u32) {
    let data = std::fs::read(path).unwrap();
    let version = u32::from_le_bytes(data[8..12].try_into().unwrap());
    let mut p = 12;
    let mut kinds: HashMap<u8, (usize, usize)> = HashMap::new();
    let mut recs = Vec::new();
    let mut last: HashMap<u32, Vec<u8>> = HashMap::new();
    while p + 9 <= data.len() {
        let kind = data[p];
        let len = u32::from_le_bytes(data[p + 1..p + 5].try_into().unwrap()) as usize;
        if p + 9 + len > data.len() {
            break;
        }
        let pl = &data[p + 9..p + 9 + len];
        let e = kinds.entry(kind).or_default();
        e.0 += 1;
        e.1 += 9 + len;
        if kind == 5 {
            let mut q = 0;
            let stream = uvarint(pl, &mut q) as u32;
            let _tid = uvarint(pl, &mut q);
            let raw_len = uvarint(pl, &mut q) as usize;
            let prefix_len = if version >= 3 {
                uvarint(pl, &mut q) as usize
            } else {
                0
            };
            let prev = last.entry(stream).or_default();
            let prefix = &prev[prev.len() - prefix_len..];
            let raw = decompress(prefix, &pl[q..], raw_len);
            *prev = raw.clone();
            // A record in lanes (version 4 on) is measured from its packed events, as version
            // 3 wrote them: every framing below starts from those.
            let raw = if version >= 4 && matches!(raw.first(), Some(&(0x40 | 0x41))) {
                let mut packed = Vec::new();
                zmtrace_format::lanes::merge(&raw, &mut packed).expect("lanes");
                packed
            } else {
                raw
            };
            recs.push(Rec {
                stream,
                raw,
                overhead: 9 + q,
                zlen: len - q,
            });
        }
        p += 9 + len;
    }
    let mut k: Vec<_> = kinds.into_iter().map(|(k, (n, b))| (k, n, b)).collect();
    k.sort_by_key(|x| std::cmp::Reverse(x.2));
    (recs, k, version)
}

fn continues(r: &Rec) -> bool {
    r.raw.first() == Some(&9)
        || (matches!(r.raw.first(), Some(&(0x40 | 0x41))) && is_cont_lanes(&r.raw))
}

/// One record's zstd frame after `prefix` (none if empty), a block ending at each of `ends` at
/// least 256 B past the previous one, as the recorder makes it; its size.
fn frame<'a>(
    c: &mut CCtx<'a>,
    raw: &[u8],
    ends: &[usize],
    prefix: &'a [u8],
    out: &mut [u8],
) -> usize {
    use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::{ZSTD_e_end, ZSTD_e_flush};
    c.reset(zstd::zstd_safe::ResetDirective::SessionOnly)
        .unwrap();
    if !prefix.is_empty() {
        c.ref_prefix(prefix).unwrap();
    }
    let mut o = OutBuffer::around(out);
    let mut start = 0;
    for end in ends
        .iter()
        .copied()
        .filter(|&e| e < raw.len())
        .chain([raw.len()])
    {
        if end < start + 256 && end != raw.len() {
            continue;
        }
        let mut i = InBuffer::around(&raw[start..end]);
        let op = if end == raw.len() {
            ZSTD_e_end
        } else {
            ZSTD_e_flush
        };
        while c.compress_stream2(&mut o, &mut i, op).unwrap() != 0 || i.pos() < i.src.len() {}
        start = end;
    }
    o.pos()
}

/// Each record (packed) in version 6's cut lanes, with its lane ends.
fn cut_lanes(recs: &[Rec]) -> Vec<(Vec<u8>, Vec<usize>)> {
    let mut sp = zmtrace_format::lanes::Splitter::default();
    recs.iter()
        .map(|r| {
            let mut raw = Vec::new();
            if sp.split_as(Layout::FieldsCut, &r.raw, &mut raw) {
                (raw, sp.lane_ends().to_vec())
            } else {
                (r.raw.clone(), Vec::new())
            }
        })
        .collect()
}

/// Version 6 as the recorder writes it: each record in the cut lanes, one zstd frame after the
/// previous record of its group, a block ending at each lane of 256 B or more; with `every`,
/// each record in the cut lanes or as packed events, whichever is the smaller, tried both ways
/// at every `every`-th record of a stream and kept until the next try (a record's prefix is its
/// predecessor as it was stored).
fn lanes_or_packed(recs: &[Rec], level: i32, every: Option<usize>) -> usize {
    let cut = cut_lanes(recs);
    let mut c = cctx(level, 0, false, None);
    let mut last: HashMap<u32, &[u8]> = HashMap::new();
    let mut state: HashMap<u32, (usize, bool)> = HashMap::new();
    let mut total = 0;
    let mut out = vec![0u8; 1 << 21];
    for (r, (raw, ends)) in recs.iter().zip(&cut) {
        let prev = match last.get(&r.stream) {
            Some(p) if continues(r) => *p,
            _ => &[],
        };
        let (n, in_lanes) = state.entry(r.stream).or_insert((0, true));
        if every.is_some_and(|every| *n % every == 0) {
            let a = frame(&mut c, raw, ends, prev, &mut out);
            let b = frame(&mut c, &r.raw, &[], prev, &mut out);
            *in_lanes = a <= b;
        }
        *n += 1;
        let stored: &[u8] = if *in_lanes { raw } else { &r.raw };
        let e: &[usize] = if *in_lanes { ends } else { &[] };
        total += frame(&mut c, stored, e, prev, &mut out) + r.overhead;
        last.insert(r.stream, stored);
    }
    total
}

fn cctx<'a>(level: i32, wlog: u32, ldm: bool, dict: Option<&[u8]>) -> CCtx<'a> {
    let mut c = CCtx::create();
    c.set_parameter(CParameter::CompressionLevel(level))
        .unwrap();
    if wlog > 0 {
        c.set_parameter(CParameter::WindowLog(wlog)).unwrap();
    }
    if ldm {
        c.set_parameter(CParameter::EnableLongDistanceMatching(true))
            .unwrap();
    }
    if let Some(d) = dict {
        c.load_dictionary(d).unwrap();
    }
    c.set_parameter(CParameter::ChecksumFlag(false)).unwrap();
    c.set_parameter(CParameter::ContentSizeFlag(false)).unwrap();
    c
}

/// Version 3 re-made: one frame per record, the previous record of a continuing group as prefix.
fn per_record<'a>(recs: &'a [Rec], level: i32) -> usize {
    let mut c = cctx(level, 0, false, None);
    let mut last: HashMap<u32, &'a [u8]> = HashMap::new();
    let mut total = 0;
    let mut out = vec![0u8; 1 << 20];
    for r in recs {
        let prev = last.get(&r.stream).copied().unwrap_or(&[]);
        c.reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .unwrap();
        if continues(r) && !prev.is_empty() {
            c.ref_prefix(prev).unwrap();
        }
        let n = c.compress2(&mut out[..], &r.raw).unwrap();
        total += n + r.overhead;
        last.insert(r.stream, &r.raw);
    }
    total
}

/// Each record alone, with a dictionary.
fn alone_dict(recs: &[Rec], level: i32, dict: &[u8]) -> usize {
    let mut c = cctx(level, 0, false, Some(dict));
    let mut out = vec![0u8; 1 << 20];
    recs.iter()
        .map(|r| c.compress2(&mut out[..], &r.raw).unwrap() + r.overhead)
        .sum()
}

/// Version 4: per stream one streaming frame per group, flushed at each record; at most `cap`
/// streams open at once (the least recently used one's group then goes on in a new frame).
fn streamed(recs: &[Rec], level: i32, wlog: u32, ldm: bool, dict: Option<&[u8]>) -> usize {
    let mut ctxs: HashMap<u32, CCtx<'static>> = HashMap::new();
    let mut total = 0;
    let mut out = vec![0u8; 1 << 21];
    for r in recs {
        let c = ctxs
            .entry(r.stream)
            .or_insert_with(|| cctx(level, wlog, ldm, dict));
        if !continues(r) {
            c.reset(zstd::zstd_safe::ResetDirective::SessionOnly)
                .unwrap();
        }
        let mut o = OutBuffer::around(&mut out[..]);
        let mut i = InBuffer::around(&r.raw);
        loop {
            let left = c
                .compress_stream2(
                    &mut o,
                    &mut i,
                    zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
                )
                .unwrap();
            if left == 0 {
                break;
            }
        }
        total += o.pos() + r.overhead;
    }
    total
}

/// A record in lanes continues its group when its tags lane starts with the continuation tag.
fn is_cont_lanes(raw: &[u8]) -> bool {
    let mut p = 1;
    // Version 6's lanes (0x41) have 16 lanes, version 4's 11: one length fewer each.
    let lengths = if raw[0] == 0x41 { 15 } else { 10 };
    for _ in 0..lengths {
        uvarint(raw, &mut p);
    }
    raw.get(p) == Some(&9)
}

fn kib(n: usize) -> String {
    format!("{:.1} KiB", n as f64 / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut dict = None;
    let mut samples = None;
    let mut paths = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dict" => dict = Some(std::fs::read(it.next().unwrap()).unwrap()),
            "--samples" => samples = Some(it.next().unwrap().clone()),
            _ => paths.push(a.clone()),
        }
    }
    for path in &paths {
        let (recs, kinds, version) = read(path);
        let file: usize = kinds.iter().map(|k| k.2).sum::<usize>() + 12;
        println!("## {path} (version {version}, {})", kib(file));
        for (k, n, b) in &kinds {
            println!(
                "  {:<10} {:>7} records {:>12} ({:.1} %)",
                kind_name(*k),
                n,
                kib(*b),
                *b as f64 * 100.0 / file as f64
            );
        }
        let raw: usize = recs.iter().map(|r| r.raw.len()).sum();
        let written: usize = recs.iter().map(|r| r.zlen + r.overhead).sum();
        let overhead: usize = recs.iter().map(|r| r.overhead).sum();
        let groups = recs.iter().filter(|r| !continues(r)).count();
        let streams = recs
            .iter()
            .map(|r| r.stream)
            .collect::<std::collections::HashSet<_>>()
            .len();
        println!(
            "  events: {} records, {groups} groups, {streams} streams, packed {}, written {} (headers {}), mean record {} packed",
            recs.len(), kib(raw), kib(written), kib(overhead), kib(raw / recs.len().max(1))
        );
        if let Some(dir) = &samples {
            std::fs::create_dir_all(dir).unwrap();
            for (i, r) in recs.iter().enumerate() {
                std::fs::write(format!("{dir}/{i}"), &r.raw).unwrap();
            }
        }
        let base = per_record(&recs, 3);
        let t0 = std::cell::Cell::new(std::time::Instant::now());
        let show = |name: &str, n: usize| {
            let ms = t0.get().elapsed().as_secs_f64() * 1000.0;
            println!(
                "  {name:<44} {:>12}  {:+.1} %  ({:.1} ms/MiB packed, CPU of this run)",
                kib(n),
                (n as f64 / base as f64 - 1.0) * 100.0,
                ms / (raw as f64 / 1048576.0)
            );
            t0.set(std::time::Instant::now());
        };
        t0.set(std::time::Instant::now());
        show(
            "v3 re-made: frame per record, prefix, l3",
            per_record(&recs, 3),
        );
        let t = std::time::Instant::now();
        let mut body = Vec::new();
        let mut back = Vec::new();
        let mut sp = zmtrace_format::lanes::Splitter::default();
        for r in &recs {
            sp.split_as(Layout::Fields, &r.raw, &mut body);
        }
        let split_ms = t.elapsed().as_secs_f64() * 1000.0;
        let t = std::time::Instant::now();
        for r in &recs {
            sp.split_as(Layout::Fields, &r.raw, &mut body);
            back.clear();
            let _ = zmtrace_format::lanes::merge(&body, &mut back);
        }
        let merge_ms = t.elapsed().as_secs_f64() * 1000.0 - split_ms;
        println!(
            "  lanes: split {:.1} ms/MiB packed, merge {:.1} ms/MiB",
            split_ms / (raw as f64 / 1048576.0),
            merge_ms / (raw as f64 / 1048576.0)
        );
        if std::env::var_os("SPLIT_ONLY").is_some() {
            continue;
        }
        let laned: Vec<Rec> = recs
            .iter()
            .map(|r| {
                let mut raw = Vec::new();
                if !zmtrace_format::lanes::Splitter::default().split_as(
                    Layout::Fields,
                    &r.raw,
                    &mut raw,
                ) {
                    raw = r.raw.clone();
                }
                Rec { raw, ..r.clone() }
            })
            .collect();
        show(
            "v4 lanes: frame per record, prefix, l3",
            per_record(&laned, 3),
        );
        show("v4 lanes, level 1", per_record(&laned, 1));
        show(
            "v6 lanes (cut), a block per lane, prefix, l3",
            lanes_or_packed(&recs, 3, None),
        );
        for every in [1, 8, 64] {
            show(
                &format!("v6 lanes or packed, tried every {every}, l3"),
                lanes_or_packed(&recs, 3, Some(every)),
            );
        }
        show("v4 lanes, level 5", per_record(&laned, 5));
        show(
            "v4 lanes, stream/group, flush/record, l3",
            streamed(&laned, 3, 0, false, None),
        );
        for l in [1, 9, 19] {
            show(&format!("v3 re-made, level {l}"), per_record(&recs, l));
        }
        for (l, w) in [
            (1, 22),
            (3, 20),
            (3, 21),
            (3, 22),
            (5, 22),
            (9, 22),
            (19, 22),
        ] {
            show(
                &format!("stream/group, flush/record, l{l} w{w}"),
                streamed(&recs, l, w, false, None),
            );
        }
        show(
            "stream/group, flush/record, l3 w22 +ldm",
            streamed(&recs, 3, 22, true, None),
        );
        if let Some(d) = &dict {
            show("record alone + dict, l3", alone_dict(&recs, 3, d));
            show(
                "stream/group + dict, l3 w22",
                streamed(&recs, 3, 22, false, Some(d)),
            );
        }
    }
}

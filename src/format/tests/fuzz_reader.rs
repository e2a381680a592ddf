//! A short fuzz run of the reader, in every `cargo test`: seed dumps made with the writer,
//! mutated (bit flips, overwritten bytes, cuts, splices, repeated spans) by a seeded generator,
//! each read by the fuzz target. `ZMTRACE_FUZZ_SECONDS` makes it longer (default 2 s);
//! `cargo +nightly fuzz run reader` in `src/format/fuzz` is the coverage-guided version.

use std::time::{Duration, Instant};

use zmtrace_format::event::{encode_alloc, encode_free, encode_realloc, pack, EventBuf};
use zmtrace_format::fuzz::check_reader;
use zmtrace_format::{
    write, Aggregate, AggregateSite, AllocKind, Block, Churn, End, EndReason, KindTotal, LiveSite,
    Module, Origin, Process, Reach, RecordKind,
};

fn seed(events: u64, fork: bool) -> Vec<u8> {
    let mut out = write::file_header().to_vec();
    write::process(
        &mut out,
        &Process {
            pid: 42,
            ppid: 1,
            origin: if fork { Origin::Fork } else { Origin::Start },
            parent_pid: 1,
            fork_seq: 7,
            start_unix_ns: 1_700_000_000_000_000_000,
            session: "s".into(),
            exe: "/bin/prog".into(),
            argv: vec!["prog".into(), "--x".into()],
            aggregated: fork,
            args_left_out: 0,
            sample_interval: 0,
            all_blocks: false,
        },
    );
    write::module(
        &mut out,
        &Module {
            base: 0x5555_0000_0000,
            path: "/bin/prog".into(),
            build_id: vec![1, 2, 3, 4],
            segments: vec![(0x5555_0000_0000, 0x5555_0001_0000)],
        },
    );
    let frames: Vec<u64> = (0..12).map(|i| 0x5555_0000_1000 + i * 0x40).collect();
    write::stacks(
        &mut out,
        [(1u32, &frames[..4]), (2, &frames[..])].into_iter(),
        &mut |b| zstd::bulk::compress(b, 1).unwrap(),
    );
    if fork {
        let raw = write::inherited_raw((0..5).map(|i| Block {
            addr: 0x7000 + i * 64,
            size: 48,
            usable: 56,
            stack: 1,
        }));
        write::inherited(&mut out, raw.len(), &zstd::bulk::compress(&raw, 1).unwrap());
        // The aggregated records too, so that damage to them is fuzzed as well.
        let agg = Aggregate {
            allocations: 9,
            frees: 4,
            reallocs: 2,
            calls: 15,
            sites: vec![AggregateSite {
                stack: 2,
                allocations: 9,
                churn: Churn {
                    reallocs: 2,
                    grew: 2,
                    ratio_sum: 3.5,
                    steps: vec![(16, 2)],
                    ..Churn::default()
                },
                ..AggregateSite::default()
            }],
            ..Aggregate::default()
        };
        let raw = write::aggregate_raw(&agg);
        let z = zstd::bulk::compress(&raw, 1).unwrap();
        write::compressed(&mut out, RecordKind::Aggregate, raw.len(), &z);
        let raw = write::live_raw((0..3).map(|i| LiveSite {
            stack: i + 1,
            blocks: 3,
            bytes: 72,
            usable: 72,
            via_realloc: u64::from(i),
            kind: i as u8,
        }));
        let z = zstd::bulk::compress(&raw, 1).unwrap();
        write::compressed(&mut out, RecordKind::LiveAtEnd, raw.len(), &z);
    }
    for (stream, chunk) in [(0u32, 0..events / 2), (1, events / 2..events)] {
        let mut plain = Vec::new();
        for i in chunk {
            let mut b = EventBuf::default();
            match i % 3 {
                0 => encode_alloc(
                    &mut b,
                    i * 2,
                    i * 10,
                    AllocKind::Malloc,
                    0x9000 + i * 16,
                    i,
                    i + 8,
                    1,
                ),
                1 => encode_realloc(
                    &mut b,
                    i * 2,
                    i * 2 - 1,
                    i * 10,
                    0x9000,
                    0xa000 + i,
                    i * 3,
                    i * 3,
                    2,
                ),
                _ => encode_free(&mut b, i * 2, i * 10, 0x9000 + i),
            }
            plain.extend_from_slice(b.as_slice());
        }
        let mut packed = Vec::new();
        pack(&plain, &mut packed);
        let z = zstd::bulk::compress(&packed, 1).unwrap();
        write::events(&mut out, stream, 100 + stream, packed.len(), &z);
    }
    let mut reach = Reach {
        seq: events * 2,
        ..Reach::default()
    };
    reach.addrs[0] = (0..events / 3).map(|i| 0x9000 + i * 48).collect();
    reach.addrs[3] = vec![0xa000, 0xa100];
    for (k, list) in reach.addrs.iter().enumerate() {
        reach.totals[k] = KindTotal {
            blocks: list.len() as u64,
            bytes: 16 * list.len() as u64,
        };
    }
    let raw = write::reach_raw(&reach);
    write::reach(
        &mut out,
        &reach,
        raw.len(),
        &zstd::bulk::compress(&raw, 1).unwrap(),
    );
    write::end(
        &mut out,
        &End {
            reason: EndReason::Exit,
            status: 0,
            events,
            dropped: 0,
            untracked_frees: 0,
            free_null: 0,
            truncated_stacks: 0,
            compared_stacks: 0,
            mismatched_stacks: 0,
        },
    );
    out
}

/// xorshift64*: deterministic, so a failure is reproducible from its iteration number.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(data: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 => data.truncate(rng.below(len + 1)),
            3 if len > 0 => {
                let (a, b) = (rng.below(len), rng.below(len));
                let (a, b) = (a.min(b), a.max(b));
                let span = data[a..b.min(a + 64)].to_vec();
                let at = rng.below(data.len() + 1);
                data.splice(at..at, span);
            }
            4 => {
                let at = rng.below(len + 1);
                let junk: Vec<u8> = (0..rng.below(16)).map(|_| rng.next() as u8).collect();
                data.splice(at..at, junk);
            }
            _ if len > 9 => {
                // A plausible record header with a wild length, where damage hurts most.
                let at = rng.below(len - 9);
                data[at] = 1 + rng.below(10) as u8;
                data[at + 1..at + 5].copy_from_slice(&(rng.next() as u32).to_le_bytes());
            }
            _ => {}
        }
    }
}

#[test]
fn short_fuzz_run_of_the_reader() {
    let secs: u64 = std::env::var("ZMTRACE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let seeds = [seed(0, false), seed(40, false), seed(300, true)];
    for s in &seeds {
        check_reader(s);
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let mut data = seeds[rng.below(seeds.len())].clone();
        mutate(&mut data, &mut rng);
        check_reader(&data);
        runs += 1;
    }
    assert!(runs > 100, "the fuzz loop ran {runs} times");
    eprintln!("fuzzed the reader {runs} times");
}

//! A short fuzz run of the reader, in every `cargo test`: seed dumps made with the writer,
//! mutated (bit flips, overwritten bytes, cuts, splices, repeated spans) by a seeded generator,
//! each read by the fuzz target. `ZMTRACE_FUZZ_SECONDS` makes it longer (default 2 s);
//! `cargo +nightly fuzz run reader` in `src/format/fuzz` is the coverage-guided version.
//!
//! Random damage almost never leaves a record's checksum right, so it tests the resynchronising
//! and not the parsers behind it. The second run re-seals every record it mutates (a checksum
//! that matches the damage, as a buggy or hostile writer would make) and gives compressed
//! records raw lengths of 8–60 GiB, in a child process limited to 4 GiB of address space: an
//! allocation sized by a field aborts the child ("memory allocation of … failed"), and the
//! parent sees the signal.

use std::time::{Duration, Instant};

use zmtrace_format::event::{encode_alloc, encode_free, encode_realloc, pack, EventBuf};
use zmtrace_format::fuzz::check_reader;
use zmtrace_format::{
    write, Aggregate, AggregateSite, AllocKind, Block, Churn, End, EndReason, KindTotal, LiveSite,
    Module, Origin, Process, Reach, RecordKind, RECORD_HEADER_LEN,
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
            ..Default::default()
        },
    );
    write::module(
        &mut out,
        &Module {
            base: 0x5555_0000_0000,
            path: "/bin/prog".into(),
            build_id: vec![1, 2, 3, 4],
            segments: vec![(0x5555_0000_0000, 0x5555_0001_0000)],
            seq: 0,
        },
    );
    // A plugin loaded, unloaded, and another loaded at the same address (the era fields).
    for (seq, path) in [(3u64, "/p/a.so"), (9, "/p/b.so")] {
        write::module(
            &mut out,
            &Module {
                base: 0x7f00_0000_0000,
                path: path.into(),
                build_id: vec![seq as u8],
                segments: vec![(0x7f00_0000_0000, 0x7f00_0000_4000)],
                seq,
            },
        );
        write::module_gone(&mut out, 0x7f00_0000_0000, seq + 4);
    }
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

/// Recomputes the checksum of every record from the first one on, as far as their headers hold
/// together: the damage becomes what a writer wrote.
fn reseal(data: &mut [u8]) {
    let mut pos = zmtrace_format::FILE_HEADER_LEN;
    while pos + RECORD_HEADER_LEN <= data.len() {
        let len = u32::from_le_bytes(data[pos + 1..pos + 5].try_into().unwrap()) as usize;
        let end = pos + RECORD_HEADER_LEN + len;
        if end > data.len() {
            break;
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&data[pos..pos + 1]);
        h.update(&data[pos + RECORD_HEADER_LEN..end]);
        data[pos + 5..pos + 9].copy_from_slice(&h.finalize().to_le_bytes());
        pos = end;
    }
}

/// The records of a dump: (offset, kind, payload length), as far as their headers hold.
fn records(data: &[u8]) -> Vec<(usize, u8, usize)> {
    let mut out = Vec::new();
    let mut pos = zmtrace_format::FILE_HEADER_LEN;
    while pos + RECORD_HEADER_LEN <= data.len() {
        let len = u32::from_le_bytes(data[pos + 1..pos + 5].try_into().unwrap()) as usize;
        if pos + RECORD_HEADER_LEN + len > data.len() {
            break;
        }
        out.push((pos, data[pos], len));
        pos += RECORD_HEADER_LEN + len;
    }
    out
}

fn varint_len(b: &[u8]) -> Option<usize> {
    b.iter().position(|&x| x & 0x80 == 0).map(|i| i + 1)
}

/// Gives one compressed record a raw length of 8–60 GiB (or a wild one), its checksum right:
/// the measured abort.
fn wild_raw_length(data: &mut Vec<u8>, rng: &mut Rng) {
    let candidates: Vec<_> = records(data)
        .into_iter()
        .filter(|&(_, k, _)| {
            [
                RecordKind::Stacks,
                RecordKind::Events,
                RecordKind::Inherited,
                RecordKind::Aggregate,
                RecordKind::LiveAtEnd,
            ]
            .iter()
            .any(|&r| r as u8 == k)
        })
        .collect();
    if candidates.is_empty() {
        return;
    }
    let (pos, kind, len) = candidates[rng.below(candidates.len())];
    let payload = pos + RECORD_HEADER_LEN;
    // Events: stream and thread id come before the raw length.
    let mut at = payload;
    if kind == RecordKind::Events as u8 {
        for _ in 0..2 {
            let Some(n) = varint_len(&data[at..payload + len]) else {
                return;
            };
            at += n;
        }
    }
    let Some(old) = varint_len(&data[at..payload + len]) else {
        return;
    };
    let claim = match rng.below(4) {
        0 => rng.next(),
        1 => (rng.next() % (1 << 34)) + (1 << 20),
        _ => (8 << 30) + rng.next() % (52 << 30),
    };
    let mut new = Vec::new();
    zmtrace_format::varint::put_uvarint(&mut new, claim);
    let grown = new.len() as isize - old as isize;
    data.splice(at..at + old, new);
    let len = (len as isize + grown) as u32;
    data[pos + 1..pos + 5].copy_from_slice(&len.to_le_bytes());
}

/// The mutated and re-sealed dumps of the run under a 4 GiB address-space limit.
const SEALED_CASES: u64 = 20_000;
const CHILD_ENV: &str = "ZMTRACE_FUZZ_SEALED_CHILD";

fn sealed_cases(seeds: &[Vec<u8>]) -> (u64, u64) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut read = 0;
    for _ in 0..SEALED_CASES {
        let mut data = seeds[rng.below(seeds.len())].clone();
        if rng.below(3) > 0 {
            wild_raw_length(&mut data, &mut rng);
        }
        if rng.below(2) == 0 {
            mutate(&mut data, &mut rng);
        }
        reseal(&mut data);
        check_reader(&data);
        read += 1;
    }
    (read, rng.0)
}

/// Thousands of mutated dumps whose records are CRC-valid, many with raw lengths of 8–60 GiB,
/// read in a child (this test binary again) under `setrlimit(RLIMIT_AS, 4 GiB)`: the child must
/// exit 0, not abort on an allocation the file cannot back.
#[test]
fn sealed_fuzz_run_under_a_4_gib_address_limit() {
    let seeds = [seed(0, false), seed(40, false), seed(300, true)];
    if std::env::var_os(CHILD_ENV).is_some() {
        let (n, state) = sealed_cases(&seeds);
        println!("sealed cases read: {n} (rng {state:#x})");
        return;
    }
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "sealed_fuzz_run_under_a_4_gib_address_limit",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, "1")
    .env("RUST_BACKTRACE", "0");
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 4 << 30,
                rlim_max: 4 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.success(),
        "the fuzz child failed: {:?} (signal {:?})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status.code(),
        out.status.signal(),
        stderr.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(
        stdout.contains(&format!("sealed cases read: {SEALED_CASES} ")),
        "the child did not run the cases:\n{stdout}"
    );
    eprintln!(
        "{SEALED_CASES} sealed cases under RLIMIT_AS 4 GiB in {:.1} s, 0 aborts",
        started.elapsed().as_secs_f64()
    );
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

//! `zmtrace run --sample BYTES`: sampled recording, checked for accuracy on samples/sampled.c
//! (known totals: 1,000,000 × 64 B from zs_churn, all freed; 1,000 × 4096 B lost from zs_lose;
//! 100 × 64 B still reachable from zs_keep).
//!
//! # The bound
//! Every allocated byte is picked independently with probability `q = 1/T` (T the interval), so
//! a block of `s` bytes is sampled with probability `p = 1 - (1 - q)^s`, independently of every
//! other block (disjoint bytes). A site of `n` blocks of `s` bytes has `K ~ Binomial(n, p)`
//! sampled blocks and the analyzer estimates `N = K/p` blocks and `B = s K/p` bytes: unbiased,
//! with `Var(N) = n (1 - p) / p` and `sd(B) = s sd(N)`. The tests accept `|N - n| <= 5 sd(N) + 1`
//! (the 1 for rounding) and the same for bytes: for a normal estimate a 5-sigma excursion has
//! probability 5.7e-7, so a correct implementation fails about never, and the runs are
//! deterministic anyway (`ZMTRACE_SAMPLE_SEED`). A wrong weight fails it: weighing a block by
//! `max(T/s, 1)` instead of `1/p` (checked) estimates zs_lose at 4 KiB as 606 blocks of 1,000,
//! where the bound is ±122; weight 1 misses every site by 98 % or more.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::common::*;
use serde_json::Value;

const SEED: &str = "20261202";

struct Site {
    name: &'static str,
    n: u64,
    size: u64,
    /// Blocks of it live at exit.
    live: u64,
}

const SITES: [Site; 3] = [
    Site {
        name: "zs_churn",
        n: 1_000_000,
        size: 64,
        live: 0,
    },
    Site {
        name: "zs_lose",
        n: 1000,
        size: 4096,
        live: 1000,
    },
    Site {
        name: "zs_keep",
        n: 100,
        size: 64,
        live: 100,
    },
];

fn p(size: u64, t: u64) -> f64 {
    if t == 1 {
        return 1.0;
    }
    1.0 - (1.0 - 1.0 / t as f64).powf(size as f64)
}

/// The 5-sigma bound on the estimated count of `n` blocks of `size` bytes.
fn bound(n: u64, size: u64, t: u64) -> f64 {
    bound_p(n, p(size, t))
}

/// The 5-sigma bound (plus 1, for rounding) on `K/p` as an estimate of `n`, where
/// `K ~ Binomial(n, p)`: `sd = sqrt(n (1 - p) / p)`.
fn bound_p(n: u64, p: f64) -> f64 {
    5.0 * (n as f64 * (1.0 - p) / p).sqrt() + 1.0
}

fn assert_estimate(what: &str, got: u64, n: u64, size: u64, t: u64) {
    let b = bound(n, size, t);
    assert!(
        (got as f64 - n as f64).abs() <= b,
        "{what} at interval {t}: estimated {got}, true {n}, 5-sigma bound ±{b:.0}"
    );
}

fn assert_bytes_estimate(what: &str, got: u64, n: u64, size: u64, t: u64) {
    let b = size as f64 * bound(n, size, t);
    let truth = (n * size) as f64;
    assert!(
        (got as f64 - truth).abs() <= b,
        "{what} at interval {t}: estimated {got} B, true {truth} B, 5-sigma bound ±{b:.0} B"
    );
}

/// `zmtrace run` with `extra` options on samples/sampled.c; the one dump it wrote.
fn record(stem: &str, extra: &[&str]) -> PathBuf {
    record_sample("sampled", stem, extra)
}

/// [`record`] on samples/`name`.c.
fn record_sample(name: &str, stem: &str, extra: &[&str]) -> PathBuf {
    let prog = sample(name);
    let dir = fresh_dir(stem);
    let mut args = vec!["run", "-o", dir.to_str().unwrap()];
    args.extend(extra);
    args.extend(["--", prog.to_str().unwrap()]);
    let f = run_zmtrace_env(&args, &[("ZMTRACE_SAMPLE_SEED", SEED)]);
    assert_eq!(f.code, Some(0), "zmtrace {args:?}:\n{}", f.stderr);
    let dumps = dump_files(&dir);
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    dumps[0].clone()
}

fn json(cmd: &str, dump: &Path) -> Value {
    let d = dump.to_str().unwrap();
    serde_json::from_str(&zmtrace_ok(&[cmd, d, "--json", "--top", "0"])).expect("valid JSON")
}

/// `report --json`'s `top.<list>` value of the site named `name` (0 when absent).
fn top(report: &Value, list: &str, name: &str) -> u64 {
    report["top"][list]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["site"] == name)
        .map(|s| s["value"].as_u64().unwrap())
        .sum()
}

/// `leaks --json`: (blocks, bytes) of the site named `name`, all classes together.
fn leaked(leaks: &Value, name: &str) -> (u64, u64) {
    leaks["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["site"] == name)
        .fold((0, 0), |(b, y), s| {
            (
                b + s["blocks"].as_u64().unwrap(),
                y + s["bytes"].as_u64().unwrap(),
            )
        })
}

fn assert_sites_within_bounds(report: &Value, leaks: &Value, t: u64) {
    for s in &SITES {
        assert_estimate(
            &format!("{} allocations", s.name),
            top(report, "allocations", s.name),
            s.n,
            s.size,
            t,
        );
        assert_bytes_estimate(
            &format!("{} bytes allocated", s.name),
            top(report, "bytes", s.name),
            s.n,
            s.size,
            t,
        );
        let (blocks, bytes) = leaked(leaks, s.name);
        if s.live == 0 {
            // Every sampled block of zs_churn was freed: exactly nothing live.
            assert_eq!((blocks, bytes), (0, 0), "{} live at exit", s.name);
        } else {
            assert_estimate(
                &format!("{} live at exit", s.name),
                blocks,
                s.live,
                s.size,
                t,
            );
            assert_bytes_estimate(
                &format!("{} bytes live at exit", s.name),
                bytes,
                s.live,
                s.size,
                t,
            );
        }
    }
}

/// At 4 KiB and at the default 512 KiB: estimates per site within 5 sigma, marked estimated,
/// no leak classes (and why), and no events for the unsampled blocks.
#[test]
fn sampled_estimates_fall_within_five_sigma_at_4k_and_512k() {
    for (t, opt) in [(4096u64, "4096"), (524_288, "512K")] {
        let dump = record("sampled", &["--sample", opt]);
        let report = json("report", &dump);
        let leaks = json("leaks", &dump);
        for v in [&report, &leaks] {
            assert_eq!(v["estimated"], true, "{v}");
            assert_eq!(v["sample_interval"], t);
            assert_eq!(v["all_blocks"], false);
            assert!(
                v["check"].is_null() && v["kinds"].is_null(),
                "no leak classes"
            );
        }
        assert_sites_within_bounds(&report, &leaks, t);
        // Only sampled blocks have events: an allocation and a free each for zs_churn's, about
        // 2 n p in all (+ 5 sigma), where full recording writes 2,001,100.
        let d = zmtrace_format::Dump::open(&dump).unwrap();
        let sampled: f64 = SITES
            .iter()
            .map(|s| s.n as f64 * p(s.size, t) * if s.live == 0 { 2.0 } else { 1.0 })
            .sum();
        let events = d.count_events() as f64;
        assert!(
            events <= sampled + 10.0 * sampled.sqrt() + 200.0,
            "{events} events at interval {t}, about {sampled:.0} expected"
        );
        assert_eq!(d.sample_interval(), Some(t));
        let text = zmtrace_ok(&["report", dump.to_str().unwrap()]);
        assert!(text.contains("(estimated)"), "{text}");
        assert!(text.contains("sampled recording"), "{text}");
        let text = zmtrace_ok(&["leaks", dump.to_str().unwrap()]);
        assert!(
            text.contains(
                "no leak classes: sampled recording sees only some blocks (use --all-blocks for \
                 exact classes)"
            ),
            "{text}"
        );
        assert!(text.contains("estimated"), "{text}");
        let svg = dump.with_extension("svg");
        zmtrace_ok(&[
            "flamegraph",
            dump.to_str().unwrap(),
            "-o",
            svg.to_str().unwrap(),
        ]);
        let svg = std::fs::read_to_string(&svg).unwrap();
        assert!(svg.contains("estimated (sampled every"), "flamegraph title");
    }
}

/// `ZMTRACE_SAMPLE_SEED`: the same seed samples the same blocks, run after run (the thread
/// ids differ); another seed other blocks.
#[test]
fn a_fixed_seed_makes_a_sampled_run_reproducible() {
    let figures = |dump: &Path| {
        let r = json("report", dump);
        SITES
            .iter()
            .map(|s| top(&r, "allocations", s.name))
            .collect::<Vec<_>>()
    };
    let a = figures(&record("sampled-seed", &["--sample", "4096"]));
    let b = figures(&record("sampled-seed", &["--sample", "4096"]));
    assert_eq!(a, b);
    let prog = sample("sampled");
    let dir = fresh_dir("sampled-seed2");
    let f = run_zmtrace_env(
        &[
            "run",
            "-o",
            dir.to_str().unwrap(),
            "--sample",
            "4096",
            "--",
            prog.to_str().unwrap(),
        ],
        &[("ZMTRACE_SAMPLE_SEED", "7")],
    );
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    assert!(f.stderr.contains("sampled recording"), "{}", f.stderr);
    assert_ne!(
        figures(&dump_files(&dir)[0]),
        a,
        "another seed, the same sample"
    );
}

/// `--all-blocks`: the leak check saw every block, so the classes' totals are exact; the split
/// per site is estimated (within 5 sigma).
#[test]
fn all_blocks_keeps_the_leak_class_totals_exact() {
    let t = 4096;
    let dump = record("sampled-all", &["--sample", "4096", "--all-blocks"]);
    let report = json("report", &dump);
    let leaks = json("leaks", &dump);
    for v in [&report, &leaks] {
        assert_eq!(v["estimated"], true);
        assert_eq!(v["all_blocks"], true);
        let k = &v["kinds"];
        assert_eq!(
            (&k["definite"]["blocks"], &k["definite"]["bytes"]),
            (&Value::from(1000), &Value::from(4_096_000)),
            "{k}"
        );
        assert_eq!(
            (&k["reachable"]["blocks"], &k["reachable"]["bytes"]),
            (&Value::from(100), &Value::from(6400)),
            "{k}"
        );
        assert_eq!(k["indirect"]["blocks"], 0);
        assert_eq!(k["possible"]["blocks"], 0);
        assert_eq!(v["leaked_blocks"], 1100);
        assert_eq!(v["leaked_bytes"], 4_102_400);
    }
    assert_sites_within_bounds(&report, &leaks, t);
    // Per site, the classes are those of the sites' blocks.
    for s in leaks["sites"].as_array().unwrap() {
        let want = if s["site"] == "zs_lose" {
            "definite"
        } else {
            "reachable"
        };
        assert_eq!(s["kind"], want, "{s}");
    }
    let text = zmtrace_ok(&["leaks", dump.to_str().unwrap()]);
    assert!(text.contains("exact in all, estimated per site"), "{text}");
}

/// `--sample 1`: every block is sampled with weight 1, so the figures are exact.
#[test]
fn sample_interval_one_records_every_block() {
    let dump = record("sampled-1", &["--sample", "1"]);
    let report = json("report", &dump);
    let leaks = json("leaks", &dump);
    assert_eq!(report["sample_interval"], 1);
    for s in &SITES {
        assert_eq!(top(&report, "allocations", s.name), s.n, "{}", s.name);
        assert_eq!(top(&report, "bytes", s.name), s.n * s.size, "{}", s.name);
        assert_eq!(
            leaked(&leaks, s.name),
            (s.live, s.live * s.size),
            "{}",
            s.name
        );
    }
}

/// With `--aggregate`: per-stack counters of the sampled blocks, scaled; within 5 sigma.
#[test]
fn sampling_combines_with_aggregate() {
    for t in [4096u64, 524_288] {
        let dump = record("sampled-agg", &["--aggregate", "--sample", &t.to_string()]);
        let report = json("report", &dump);
        let leaks = json("leaks", &dump);
        assert_eq!(report["aggregated"], true);
        assert_eq!(report["estimated"], true);
        assert_eq!(report["sample_interval"], t);
        assert_sites_within_bounds(&report, &leaks, t);
    }
    // And with --all-blocks, exact classes.
    let dump = record(
        "sampled-agg-all",
        &["--aggregate", "--sample", "4096", "--all-blocks"],
    );
    let leaks = json("leaks", &dump);
    assert_eq!(leaks["kinds"]["definite"]["bytes"], 4_096_000, "{leaks}");
    assert_eq!(leaks["kinds"]["reachable"]["blocks"], 100);
    assert_eq!(leaks["leaked_blocks"], 1100);
}

/// `export --format pprof` of a sampled dump: the weights are the estimates (as `report`), the
/// period the interval, and go tool pprof reads it.
#[test]
fn pprof_of_a_sampled_dump_carries_the_estimates() {
    require("go", "golang-go");
    let dump = record("sampled-pprof", &["--sample", "4096"]);
    let report = json("report", &dump);
    let out = dump.with_extension("pb.gz");
    zmtrace_ok(&[
        "export",
        dump.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let raw = go_pprof(&["-raw"], &out);
    assert!(raw.contains("Period: 4096"), "{raw}");
    let flat = *pprof_flat(&out, "alloc_objects", &[])
        .get("zs_churn")
        .expect("zs_churn in go tool pprof -top");
    assert_eq!(flat, top(&report, "allocations", "zs_churn"));
    assert_estimate("pprof zs_churn alloc_objects", flat, 1_000_000, 64, 4096);
}

#[test]
fn a_bad_sample_interval_is_a_one_line_error() {
    let prog = sample("sampled");
    for v in ["0", "abc", "4X"] {
        let f = run_zmtrace(&["run", "--sample", v, "--", prog.to_str().unwrap()]);
        assert_eq!(f.code, Some(2), "--sample {v}: {}", f.stderr);
        assert_eq!(f.stderr.trim().lines().count(), 1, "{}", f.stderr);
        assert!(f.stderr.contains("sampling interval"), "{}", f.stderr);
    }
    let f = run_zmtrace(&["run", "--all-blocks", "--", prog.to_str().unwrap()]);
    assert_eq!(f.code, Some(2), "{}", f.stderr);
}

/// samples/forksampled.c under `--sample 4096` (and `--all-blocks`): the parent's dump and its
/// forked child's.
fn forked(all_blocks: bool) -> (Run, usize, usize) {
    let mut opts = vec!["--sample", "4096"];
    if all_blocks {
        opts.push("--all-blocks");
    }
    let run = run_traced_opts(
        &sample("forksampled"),
        &[],
        &opts,
        &[("ZMTRACE_SAMPLE_SEED", SEED)],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(run.dumps.len(), 2, "{}", run.describe());
    let of = |o: Origin| {
        run.dumps
            .iter()
            .position(|d| process(d).origin == o)
            .unwrap_or_else(|| panic!("no {o:?} dump\n{}", run.describe()))
    };
    let (parent, child) = (of(Origin::Start), of(Origin::Fork));
    (run, parent, child)
}

/// The sizes of zs_same's blocks (100..1097 B) sampled in `d` after sequence number `from`, in
/// order.
fn sampled_same(d: &Dump, from: u64) -> Vec<u64> {
    d.events()
        .filter(|e| e.seq >= from)
        .filter_map(|e| match e.kind {
            EventKind::Alloc { size, .. } if (100..1097).contains(&size) => Some(size),
            _ => None,
        })
        .collect()
}

/// A forked child of a sampled recording: its dump says it is sampled; it inherits the
/// parent's sampled blocks as sampled (the same addresses, the rest unsampled, kept only with
/// `--all-blocks`); it frees the inherited blocks without a free of an untracked block; and its
/// countdown is re-seeded, so that, allocating what the parent allocates after the fork, it
/// samples other blocks than the parent does, as many as the sampling predicts (5 sigma).
#[test]
fn a_forked_child_samples_on_its_own_and_keeps_what_it_inherited() {
    let t = 4096;
    // zs_same's sizes, and the number of its blocks a sampler picks: sum of p, variance
    // sum p(1 - p).
    let (mean, var) = (0..50_000u64)
        .map(|i| p(100 + i % 997, t))
        .fold((0.0, 0.0), |(m, v), p| (m + p, v + p * (1.0 - p)));
    for all_blocks in [false, true] {
        let (run, parent, child) = forked(all_blocks);
        let (pd, cd) = (&run.dumps[parent], &run.dumps[child]);
        let cp = process(cd);
        assert_eq!(
            (cp.sample_interval, cp.all_blocks),
            (t, all_blocks),
            "the child's dump knows how it was recorded"
        );
        // zs_keep's blocks the parent sampled: its 4096-byte allocations.
        let kept: BTreeSet<u64> = pd
            .events()
            .filter_map(|e| match e.kind {
                EventKind::Alloc {
                    addr, size: 4096, ..
                } => Some(addr),
                _ => None,
            })
            .collect();
        let n = kept.len() as f64;
        let (k, sd) = (
            2000.0 * p(4096, t),
            (2000.0 * p(4096, t) * (1.0 - p(4096, t))).sqrt(),
        );
        assert!(
            (n - k).abs() <= 5.0 * sd,
            "{n} of zs_keep sampled, want {k:.0} ± {:.0}",
            5.0 * sd
        );
        let inherited_4k = cd.inherited.iter().filter(|b| b.size == 4096);
        let sampled: BTreeSet<u64> = inherited_4k
            .clone()
            .filter(|b| b.stack != 0)
            .map(|b| b.addr)
            .collect();
        assert_eq!(
            sampled, kept,
            "the blocks inherited as sampled are the parent's sampled ones"
        );
        let all = inherited_4k.count();
        assert_eq!(
            all,
            if all_blocks { 2000 } else { kept.len() },
            "inherited 4096-byte blocks"
        );
        let end = cd.end.expect("the child's dump ends");
        assert_eq!(end.untracked_frees, 0);

        // After the fork both run zs_same alike; each samples its own blocks.
        let after = sampled_same(pd, cp.fork_seq);
        let in_child = sampled_same(cd, 0);
        for (who, got) in [("parent", &after), ("child", &in_child)] {
            let got = got.len() as f64;
            assert!(
                (got - mean).abs() <= 5.0 * var.sqrt(),
                "{who}: {got} of zs_same sampled, want {mean:.0} ± {:.0}",
                5.0 * var.sqrt()
            );
        }
        assert!(
            after != in_child,
            "the child sampled the blocks its parent sampled ({} alike)",
            after.len()
        );

        let a = zmtrace_analyze::analyze(cd, false, &mut |_, _| {});
        assert_eq!(
            a.inconsistent, 0,
            "a free of a block the replay did not know"
        );
        let leaks = json("leaks", &cd.path);
        if all_blocks {
            // Every block tracked: the classes are exact. The child freed all it inherited and
            // lost zs_lose's 10 x 2000 B.
            let k = &leaks["kinds"];
            assert_eq!(
                (&k["definite"]["blocks"], &k["definite"]["bytes"]),
                (&Value::from(10), &Value::from(20_000)),
                "{k}"
            );
            assert_eq!(leaks["leaked_bytes"], 20_000, "{k}");
            let parent_leaks = json("leaks", &pd.path);
            assert_eq!(parent_leaks["leaked_bytes"], 0, "{}", parent_leaks["kinds"]);
        } else {
            // Nothing inherited is left (what is left is an estimate of zs_lose's).
            assert_eq!(leaked(&leaks, "zs_keep"), (0, 0));
        }
    }
}

/// Reallocs of unsampled blocks (samples/sampledrealloc.c): the front end skips the live set's
/// begin/end pair for them (its filter says the old block is not held) and counts the new size
/// on the sampler's countdown; a pick takes the full path. To the estimate each such realloc is
/// a new block of its new size at the realloc's site, so zs_grow's 200,000 and zs_lost's 1,000
/// reallocs to 512 B, and zs_small's 201,000 mallocs of 16 B, fall within 5 sigma; and so do the
/// bytes zs_lost leaves live at exit.
#[test]
fn reallocs_of_unsampled_blocks_are_sampled_by_their_new_size() {
    let t = 4096;
    let dump = record_sample("sampledrealloc", "sampled-realloc", &["--sample", "4096"]);
    let report = json("report", &dump);
    assert_estimate(
        "zs_small",
        top(&report, "allocations", "zs_small"),
        201_000,
        16,
        t,
    );
    assert_estimate(
        "zs_grow",
        top(&report, "allocations", "zs_grow"),
        200_000,
        512,
        t,
    );
    assert_estimate(
        "zs_lost",
        top(&report, "allocations", "zs_lost"),
        1000,
        512,
        t,
    );
    // zs_lost's 1,000 blocks, grown from 16 B to 512 B, are lost: each weighs what a 512 B block
    // weighs, whether it was drawn at its malloc or at its realloc (the recorder draws a
    // reallocated block afresh at its new size). Keeping the malloc's draw and weight counted a
    // grown block twice in expectation: 2,115 blocks estimated here before.
    assert_bytes_estimate(
        "zs_lost, not freed at exit",
        top(&report, "leaked", "zs_lost"),
        1000,
        512,
        t,
    );
    // Only sampled blocks have events: far fewer than full recording's 602,000.
    let events = zmtrace_format::Dump::open(&dump).unwrap().count_events();
    assert!(events < 120_000, "{events} events");

    // With every block tracked, a sampled block that its realloc did not draw again stays in the
    // live set unsampled: the leak check's totals are exact, 1,000 blocks of 512 B lost.
    let dump = record_sample(
        "sampledrealloc",
        "sampled-realloc-all",
        &["--sample", "4096", "--all-blocks"],
    );
    let leaks = json("leaks", &dump);
    assert_eq!(
        (&leaks["leaked_blocks"], &leaks["leaked_bytes"]),
        (&serde_json::json!(1000), &serde_json::json!(512_000)),
        "{}",
        leaks["kinds"]
    );
    assert_eq!(leaks["kinds"]["definite"]["bytes"], 512_000);
}

/// The per-site reallocs list of a sampled recording (samples/sampledrealloc.c at 4 KiB) is
/// weighted, as the total is, and marked estimated. A realloc is recorded as one only when its
/// old block was sampled (16 B: p(16)) and the recorder drew the new one (512 B: p(512)), so the
/// calls of a site are `K ~ Binomial(n, P)` with `P = p(16) p(512)`, estimated as `K/P`:
/// `sd = sqrt(n (1 - P) / P)`, and the bound is 5 sd + 1 as above (zs_grow: 200,000 reallocs,
/// ±104,400; zs_lost: 1,000, ±7,400). Unweighted, zs_grow's entry was the ~92 reallocs recorded.
#[test]
fn a_sampled_report_lists_reallocs_per_site_weighted_and_estimated() {
    let t = 4096;
    let dump = record_sample(
        "sampledrealloc",
        "sampled-realloc-list",
        &["--sample", "4096"],
    );
    let report = json("report", &dump);
    assert_eq!(report["estimated"], true);
    let pr = p(16, t) * p(512, t);
    let within = |name: &str, n: u64| {
        let got = top(&report, "reallocs", name);
        let b = bound_p(n, pr);
        assert!(
            (got as f64 - n as f64).abs() <= b,
            "{name}: estimated {got} reallocs, true {n}, 5-sigma bound ±{b:.0}"
        );
        got
    };
    let grow = within("zs_grow", 200_000);
    let lost = within("zs_lost", 1000);
    // The sites add up to the estimated total (each rounded once).
    let total = report["reallocs"].as_u64().unwrap();
    let sites: u64 = report["top"]["reallocs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"].as_u64().unwrap())
        .sum();
    assert!(grow + lost <= sites, "{grow} + {lost} of {sites}");
    assert!(sites.abs_diff(total) <= 2, "sites {sites}, total {total}");
    let text = zmtrace_ok(&["report", dump.to_str().unwrap(), "--top", "0"]);
    assert!(
        text.contains("Top sites by reallocs (estimated):"),
        "{text}"
    );
}

/// samples/forkrealloc.c at 4 KiB: 20,000 blocks of 16 B grown to 4096 B before a fork; the
/// child shrinks half of them to 64 B and exits with all of them live. The child weighs what it
/// inherited by the blocks' current size (4096 B: p(4096)), not by their malloc's (16 B), both
/// as blocks live at its exit and as the old block of its own reallocs:
/// - zs_grow's 10,000 blocks of 4096 B live at the child's exit: within 5 sigma of
///   p(4096) (±1.6 MB); weighed as 16-byte blocks (1/p(16) = 256) they would be ~1.6 GB;
/// - zs_shrink's 10,000 reallocs of inherited blocks: `P = p(4096) p(64)` (the old block sampled,
///   the new one drawn), within 5 sd of `K/P` (±5,000); with the old block weighing 256, ~16 times
///   too many;
/// - zs_shrink's 10,000 blocks of 64 B live: within 5 sigma of p(64).
#[test]
fn a_forked_child_weighs_an_inherited_reallocated_block_by_its_current_size() {
    let t = 4096;
    let run = run_traced_opts(
        &sample("forkrealloc"),
        &[],
        &["--sample", "4096"],
        &[("ZMTRACE_SAMPLE_SEED", SEED)],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(run.dumps.len(), 2, "{}", run.describe());
    let child = run
        .dumps
        .iter()
        .find(|d| process(d).origin == Origin::Fork)
        .unwrap_or_else(|| panic!("no child dump\n{}", run.describe()));
    // The child inherits the 4096-byte blocks the parent sampled, drawn at their current size.
    let inherited = child
        .inherited
        .iter()
        .filter(|b| b.size == 4096 && b.stack != 0)
        .count() as f64;
    let (k, sd) = (
        20_000.0 * p(4096, t),
        (20_000.0 * p(4096, t) * (1.0 - p(4096, t))).sqrt(),
    );
    assert!(
        (inherited - k).abs() <= 5.0 * sd,
        "{inherited} inherited as sampled, want {k:.0} ± {:.0}",
        5.0 * sd
    );
    let report = json("report", &child.path);
    assert_eq!(report["estimated"], true);
    assert_bytes_estimate(
        "zs_grow, inherited and live at the child's exit",
        top(&report, "leaked", "zs_grow"),
        10_000,
        4096,
        t,
    );
    assert_bytes_estimate(
        "zs_shrink, live at the child's exit",
        top(&report, "leaked", "zs_shrink"),
        10_000,
        64,
        t,
    );
    let pr = p(4096, t) * p(64, t);
    let b = bound_p(10_000, pr);
    let got = top(&report, "reallocs", "zs_shrink");
    assert!(
        (got as f64 - 10_000.0).abs() <= b,
        "zs_shrink: estimated {got} reallocs of inherited blocks, true 10,000, 5-sigma bound \
         ±{b:.0}"
    );
    let end = child.end.expect("the child's dump ends");
    assert_eq!(end.untracked_frees, 0);
}

/// A realloc of a sampled block that does not draw its new block takes the old one out of the
/// recording (a `Left` event), and that is no free: the estimated frees count the program's
/// frees only, each weighed by its block's current size.
/// - samples/sampledrealloc.c at 4 KiB: main frees the 200,000 blocks zs_grow made 512 B, within
///   5 sigma of p(512) (±6,100); counting the exits at zs_grow (200,000 p(16) (1 - p(512)) of
///   them, each of weight 1/p(16) = 256) as frees made it ~375,000;
/// - samples/forkrealloc.c: the parent frees its 20,000 blocks of 4096 B (±540; its zs_grow's
///   exits added ~7,500), and the child frees none, where the exits at its zs_shrink were
///   counted as ~9,800 frees of 4096-byte blocks.
#[test]
fn a_realloc_that_does_not_draw_its_new_block_is_not_a_free() {
    let t = 4096;
    let dump = record_sample(
        "sampledrealloc",
        "sampled-realloc-frees",
        &["--sample", "4096"],
    );
    // The exits are in the dump, as frees at a realloc.
    let left = zmtrace_format::Dump::open(&dump)
        .unwrap()
        .events()
        .filter(|e| {
            matches!(
                e.kind,
                zmtrace_format::EventKind::Free {
                    at_realloc: true,
                    ..
                }
            )
        })
        .count() as f64;
    let n = 201_000.0 * p(16, t) * (1.0 - p(512, t));
    let sd =
        (201_000.0 * p(16, t) * (1.0 - p(512, t)) * (1.0 - p(16, t) * (1.0 - p(512, t)))).sqrt();
    assert!(
        (left - n).abs() <= 5.0 * sd,
        "{left} exits at a realloc, want {n:.0} ± {:.0}",
        5.0 * sd
    );
    let report = json("report", &dump);
    assert_estimate("frees", report["frees"].as_u64().unwrap(), 200_000, 512, t);

    let run = run_traced_opts(
        &sample("forkrealloc"),
        &[],
        &["--sample", "4096"],
        &[("ZMTRACE_SAMPLE_SEED", SEED)],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(run.dumps.len(), 2, "{}", run.describe());
    for d in &run.dumps {
        let frees = json("report", &d.path)["frees"].as_u64().unwrap();
        if process(d).origin == Origin::Fork {
            assert_eq!(frees, 0, "the child's estimated frees");
        } else {
            assert_estimate("the parent's frees", frees, 20_000, 4096, t);
        }
    }
}

/// `zmtrace churn` on a sampled recording (samples/sampledrealloc.c at 4 KiB) weighs each site's
/// counts as the total is, and says they are estimates. Every realloc there grows a block, so a
/// site's reallocs and grows are both `K/P` of its `K` recorded reallocs, `P = p(16) p(512)`,
/// within 5 sd (zs_grow: 200,000, ±104,400). Unweighted, they were the ~90 recorded.
#[test]
fn a_sampled_churn_report_weighs_its_sites() {
    let t = 4096;
    let dump = record_sample(
        "sampledrealloc",
        "sampled-realloc-churn",
        &["--sample", "4096"],
    );
    let churn = json("churn", &dump);
    assert_eq!(churn["estimated"], true);
    let pr = p(16, t) * p(512, t);
    let sites = churn["sites"].as_array().unwrap();
    let named = |name: &str| {
        sites
            .iter()
            .find(|s| s["site"] == name)
            .unwrap_or_else(|| panic!("no churn site {name}: {churn}"))
    };
    for (name, n) in [("zs_grow", 200_000u64), ("zs_lost", 1000)] {
        let s = named(name);
        let b = bound_p(n, pr);
        for what in ["reallocs", "grew"] {
            let got = s[what].as_u64().unwrap();
            assert!(
                (got as f64 - n as f64).abs() <= b,
                "{name}: estimated {got} {what}, true {n}, 5-sigma bound ±{b:.0}"
            );
        }
        assert_eq!(s["shrank"], 0, "{s}");
        let (moved, in_place) = (
            s["moved"].as_u64().unwrap(),
            s["in_place"].as_u64().unwrap(),
        );
        assert!(
            (moved + in_place).abs_diff(s["reallocs"].as_u64().unwrap()) <= 1,
            "{s}"
        );
    }
    // The sites add up to the estimated total (each count rounded once).
    let total = churn["reallocs"].as_u64().unwrap();
    let sum: u64 = sites.iter().map(|s| s["reallocs"].as_u64().unwrap()).sum();
    assert!(sum.abs_diff(total) <= 2, "sites {sum}, total {total}");
    let copied: u64 = sites
        .iter()
        .map(|s| s["bytes_copied"].as_u64().unwrap())
        .sum();
    assert_eq!(copied, churn["bytes_copied"].as_u64().unwrap());
    let text = zmtrace_ok(&["churn", dump.to_str().unwrap(), "--top", "0"]);
    assert!(
        text.contains("zs_grow: ") && text.contains(" reallocs (estimated) (grew "),
        "{text}"
    );
    // The reallocs flamegraph and the diff weigh them too (they showed the recorded ~100).
    let folded = zmtrace_ok(&[
        "flamegraph",
        dump.to_str().unwrap(),
        "--metric",
        "reallocs",
        "--folded",
    ]);
    let grow: u64 = folded
        .lines()
        .filter(|l| l.contains("zs_grow"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    let b = bound_p(200_000, pr);
    assert!(
        (grow as f64 - 200_000.0).abs() <= b,
        "flamegraph: zs_grow {grow} reallocs, true 200000, 5-sigma bound ±{b:.0}\n{folded}"
    );
    // A recording at another interval draws other blocks: its sites differ, and the diff lists
    // both sides weighted.
    let other = record_sample(
        "sampledrealloc",
        "sampled-realloc-churn-2",
        &["--sample", "8192"],
    );
    let pr2 = p(16, 8192) * p(512, 8192);
    let b2 = bound_p(200_000, pr2);
    let diff: Value = serde_json::from_str(&zmtrace_ok(&[
        "diff",
        dump.to_str().unwrap(),
        other.to_str().unwrap(),
        "--json",
        "--top",
        "0",
    ]))
    .unwrap();
    let row = diff["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site"] == "zs_grow")
        .unwrap_or_else(|| panic!("no zs_grow in the diff: {diff}"));
    for (side, b) in [("base", b), ("new", b2)] {
        let got = row["reallocs"][side].as_u64().unwrap();
        assert!(
            (got as f64 - 200_000.0).abs() <= b,
            "diff {side}: zs_grow {got} reallocs, true 200000, 5-sigma bound ±{b:.0}: {row}"
        );
    }
}

/// The test suite's own replay (common/mod.rs) on a sampled dump (samples/sampledrealloc.c at
/// 4 KiB) agrees with the analyzer: each free it counts, weighed by its block's size as the
/// estimate weighs it, sums to the report's estimated frees (rounded per site: within 2), and the
/// realloc exits (`Left`) are neither frees there nor here. Counted as frees, the exits would
/// add ~177,000 (each a 16 B block of weight ~256).
#[test]
fn the_tests_replay_of_a_sampled_dump_agrees_with_the_estimate() {
    let t = 4096;
    let dump_path = record_sample(
        "sampledrealloc",
        "sampled-realloc-reference",
        &["--sample", "4096"],
    );
    let dump = zmtrace_format::Dump::open(&dump_path).unwrap();
    assert_eq!(dump.sample_interval(), Some(t));
    let sym = Symbolizer::new();
    let r = replay(&dump, &sym, &|_| true);
    let weighed: f64 = r
        .events()
        .filter_map(|e| match e.op {
            Op::Free(size) => Some(zmtrace_format::sample_weight(size, t)),
            _ => None,
        })
        .sum();
    let report = json("report", &dump_path);
    let frees = report["frees"].as_u64().unwrap();
    assert!(
        (frees as f64 - weighed).abs() <= 2.0,
        "report: {frees} frees estimated; the tests' replay: {weighed:.1} ({} frees, {} left)",
        r.counts.frees,
        r.counts.left
    );
    // The exits are there, as many as the sampling predicts (within 5 sd), and not frees.
    let n = 201_000.0 * p(16, t) * (1.0 - p(512, t));
    assert!(
        (r.counts.left as f64 - n).abs() <= 5.0 * n.sqrt() + 1.0,
        "{} left, want ~{n:.0}",
        r.counts.left
    );
    assert_estimate(
        "the tests' replay's frees",
        weighed.round() as u64,
        200_000,
        512,
        t,
    );
}

/// `--aggregate` with `--sample`: a sampled block reallocated into one not drawn leaves the
/// recording without being counted as a free (as the event stream's `Left`). At 512 B intervals
/// on samples/sampledrealloc.c the frees recorded are main's frees of sampled 512 B blocks,
/// `K ~ Binomial(200,000, p(512))` (mean 126,400), within 5 sd (±1,078); counting the exits as
/// frees added ~2,280 more (`201,000 p(16) (1 - p(512))`).
#[test]
fn a_sampled_aggregate_does_not_count_a_realloc_exit_as_a_free() {
    let t = 512;
    let dump_path = record_sample(
        "sampledrealloc",
        "sampled-realloc-aggregate",
        &["--aggregate", "--sample", "512"],
    );
    let dump = zmtrace_format::Dump::open(&dump_path).unwrap();
    let a = dump
        .aggregate
        .as_ref()
        .expect("an aggregated dump's counters");
    let q = p(512, t);
    let n = 200_000.0 * q;
    let sd = (200_000.0 * q * (1.0 - q)).sqrt();
    assert!(
        (a.frees as f64 - n).abs() <= 5.0 * sd,
        "{} frees recorded, want {n:.0} ± {:.0}",
        a.frees,
        5.0 * sd
    );
}

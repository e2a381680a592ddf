//! `zmtrace run --aggregate`: per-site counters and the live set, no events. Every report of an
//! aggregated dump must say what the event dump of the same program says (the samples are
//! deterministic), except the timeline: no peak, and a clear error for the peak flamegraph.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;
use serde_json::Value;
use zmtrace_format::{Dump, Origin};

fn json(cmd: &str, dump: &Path) -> Value {
    let d = dump.to_str().unwrap();
    serde_json::from_str(&zmtrace_ok(&[cmd, d, "--json", "--top", "0"])).expect("valid JSON")
}

/// The JSON without what differs between two runs of one program (addresses, pids, paths,
/// times) and without the timeline, which only an event dump has.
fn comparable(v: &Value) -> Value {
    const DROP: &[&str] = &[
        "address",
        "dump",
        "pid",
        "session",
        "start_unix_ns",
        "duration_ns",
        "peak_bytes",
        "peak_time_ns",
        "aggregated",
        "events",
        "calls",
        "peak",
        "warnings",
        "complete",
        "ending",
        // The leak check's own figures.
        "scan_ns",
        "root_bytes",
    ];
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !DROP.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), comparable(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(comparable).collect()),
        v => v.clone(),
    }
}

/// Folded stacks with the addresses of unsymbolized frames removed.
fn folded(metric: &str, dump: &Path) -> BTreeMap<String, u64> {
    let out = zmtrace_ok(&[
        "flamegraph",
        dump.to_str().unwrap(),
        "--metric",
        metric,
        "--folded",
    ]);
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let (stack, n) = line.rsplit_once(' ').unwrap();
        let stack: Vec<&str> = stack
            .split(';')
            .map(|f| f.split_once("+0x").map_or(f, |(m, _)| m))
            .collect();
        *m.entry(stack.join(";")).or_default() += n.parse::<u64>().unwrap();
    }
    m
}

fn both(name: &str, args: &[&str]) -> (Run, Run) {
    let events = run_traced(&sample(name), args);
    assert_eq!(events.code, Some(0), "{}", events.describe());
    let agg = run_traced_opts(&sample(name), args, &["--aggregate"], &[]);
    assert_eq!(agg.code, Some(0), "{}", agg.describe());
    (events, agg)
}

fn assert_same_reports(ev: &Dump, agg: &Dump) {
    assert!(!ev.is_aggregated() && agg.is_aggregated());
    assert!(agg.is_complete(), "{:?}", agg.warnings);
    assert_eq!(agg.count_events(), 0, "an aggregated dump holds no events");
    let (r_ev, r_agg) = (json("report", &ev.path), json("report", &agg.path));
    assert_eq!(comparable(&r_ev), comparable(&r_agg), "report");
    assert_eq!(r_agg["aggregated"], true);
    // Unknown without a timeline: null, not 0 (issue 16).
    for field in ["peak_bytes", "peak_time_ns", "duration_ns", "events"] {
        assert_eq!(r_agg[field], Value::Null, "{field}");
        assert!(r_ev[field].is_u64(), "{field} of the event dump");
    }
    assert_eq!(r_agg["calls"], agg.aggregate.as_ref().unwrap().calls);
    assert_eq!(r_ev["calls"], Value::Null);
    assert_eq!(r_agg["top"]["peak"], Value::Array(vec![]));
    assert_eq!(r_agg["warnings"], Value::Array(vec![]), "no warnings");
    assert_eq!(
        comparable(&json("leaks", &ev.path)),
        comparable(&json("leaks", &agg.path)),
        "leaks"
    );
    for metric in ["allocations", "bytes", "leaked", "temporary", "reallocs"] {
        assert_eq!(
            folded(metric, &ev.path),
            folded(metric, &agg.path),
            "flamegraph --metric {metric}"
        );
    }
    // Whether a realloc moves the block depends on the heap's layout, which the recorder's own
    // allocations shift: the rest of the churn report is the program's alone.
    let churn = |d: &Dump| {
        let c = json("churn", &d.path);
        let mut by_site = BTreeMap::new();
        for s in c["sites"].as_array().unwrap() {
            assert_eq!(
                s["moved"].as_u64().unwrap() + s["in_place"].as_u64().unwrap(),
                s["reallocs"].as_u64().unwrap()
            );
            let keep: Vec<Value> = [
                "reallocs",
                "grew",
                "shrank",
                "longest_chain",
                "pattern",
                "hint",
            ]
            .iter()
            .map(|k| s[*k].clone())
            .collect();
            by_site.insert(s["site"].as_str().unwrap().to_string(), keep);
        }
        (c["reallocs"].clone(), by_site)
    };
    assert_eq!(churn(ev), churn(agg), "churn");
}

#[test]
fn aggregated_churn_sample_reports_what_its_events_report() {
    let (ev, agg) = both("churn", &[]);
    assert_same_reports(ev.only_dump(), agg.only_dump());
    // And the known truth, from the aggregated dump alone (see samples/churn.c).
    let r = json("churn", &agg.only_dump().path);
    let fixed = r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site"] == "zs_grow_fixed")
        .expect("zs_grow_fixed");
    assert_eq!(fixed["reallocs"], 1000);
    assert_eq!(fixed["longest_chain"], 1000);
    assert_eq!(fixed["pattern"]["kind"], "fixed_step");
    assert_eq!(fixed["pattern"]["step"], 16);
}

#[test]
fn aggregated_leaky_sample_reports_what_its_events_report() {
    let (ev, agg) = both("leaky", &[]);
    assert_same_reports(ev.only_dump(), agg.only_dump());
}

#[test]
fn aggregated_forked_children_count_from_the_fork() {
    // samples/forker.c forks CHILDREN = 6 children: the parent's dump and one per child. With
    // fewer the loops below had nothing to compare and passed (issue 15).
    const CHILDREN: usize = 6;
    let (ev, agg) = both("forker", &[]);
    assert_eq!(ev.dumps.len(), 1 + CHILDREN, "{}", ev.describe());
    assert_eq!(agg.dumps.len(), 1 + CHILDREN, "{}", agg.describe());
    let by_marker = |run: &Run| {
        // A child is known by the size of its marker block (1000 + i).
        let mut m = BTreeMap::new();
        for d in &run.dumps {
            if process(d).origin != Origin::Fork {
                continue;
            }
            let leaks = json("leaks", &d.path);
            let marker = leaks["sites"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["site"] == "zs_child_work")
                .map(|s| s["bytes"].as_u64().unwrap())
                .sum::<u64>();
            m.insert(marker, d.path.clone());
        }
        m
    };
    let (ev_children, agg_children) = (by_marker(&ev), by_marker(&agg));
    assert_eq!(agg_children.len(), CHILDREN, "{}", agg.describe());
    assert_eq!(
        ev_children.keys().collect::<Vec<_>>(),
        agg_children.keys().collect::<Vec<_>>()
    );
    for (i, (marker, path)) in agg_children.iter().enumerate() {
        // 1000 + i bytes of marker and two 32-byte blocks left, in 3 blocks.
        assert_eq!(*marker, 1000 + i as u64 + 64);
        let d = Dump::open(path).unwrap();
        let e = Dump::open(&ev_children[marker]).unwrap();
        assert!(!d.inherited.is_empty(), "a child inherits blocks");
        assert!(d.is_complete(), "{:?}", d.warnings);
        // Only the sample's own sites: how many zs_churn blocks were live at the fork depends
        // on the moment of the fork.
        let own = |d: &Dump| {
            let mut m = BTreeMap::new();
            for s in json("leaks", &d.path)["sites"].as_array().unwrap() {
                let name = s["site"].as_str().unwrap();
                if name.starts_with("zs_child") || name.starts_with("zs_parent") {
                    let e: &mut (u64, u64) = m.entry(name.to_string()).or_default();
                    e.0 += s["blocks"].as_u64().unwrap();
                    e.1 += s["bytes"].as_u64().unwrap();
                }
            }
            for metric in ["allocations", "bytes", "temporary"] {
                for (stack, n) in folded(metric, &d.path) {
                    if stack.contains("zs_child") {
                        *m.entry(format!("{metric} {stack}")).or_default() = (n, 0);
                    }
                }
            }
            m
        };
        let (truth, got) = (own(&e), own(&d));
        assert_eq!(truth, got, "child {i}");
        // The inherited 768-byte block of zs_parent_keep is still live; the 512-byte one was
        // freed in the child.
        assert_eq!(got["zs_parent_keep"], (1, 768), "child {i}");
        assert_eq!(got["zs_child_work"], (3, 1000 + i as u64 + 64), "child {i}");
    }
}

#[test]
fn aggregated_threads_sample_counts_every_call_and_stays_small() {
    const OPS: &str = "200000";
    let (ev, agg) = both("threads", &[OPS]);
    for run in [&ev, &agg] {
        let d = run.only_dump();
        // The program's own totals (see samples/threads.c).
        let mut truth: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for line in run.stdout.lines() {
            let mut w = line.split_whitespace();
            let k = w.next().unwrap();
            truth.insert(k, w.filter_map(|n| n.parse().ok()).collect());
        }
        let sum = |m: &BTreeMap<String, u64>, f: &str| {
            m.iter()
                .filter(|(s, _)| s.split(';').any(|x| x == f))
                .map(|(_, n)| n)
                .sum::<u64>()
        };
        let allocs = folded("allocations", &d.path);
        let bytes = folded("bytes", &d.path);
        let reallocs = folded("reallocs", &d.path);
        let leaked = folded("leaked", &d.path);
        assert_eq!(
            sum(&allocs, "zs_malloc_block") + sum(&allocs, "zs_leak_t"),
            truth["malloc"][0]
        );
        assert_eq!(sum(&allocs, "zs_calloc_block"), truth["calloc"][0]);
        assert_eq!(sum(&reallocs, "zs_realloc_block"), truth["realloc"][0]);
        assert_eq!(
            sum(&bytes, "zs_calloc_block"),
            truth["calloc"][1],
            "calloc bytes"
        );
        assert_eq!(sum(&leaked, "zs_leak_t"), 40140);
        assert_eq!(
            json("report", &d.path)["threads"].as_u64().unwrap(),
            9,
            "8 workers and main"
        );
    }
    let size = |r: &Run| std::fs::metadata(&r.only_dump().path).unwrap().len();
    let (ev_size, agg_size) = (size(&ev), size(&agg));
    assert!(
        agg_size * 20 < ev_size,
        "an aggregated dump is small: {agg_size} bytes against {ev_size} with events"
    );
}

#[test]
fn the_peak_of_an_aggregated_dump_is_a_clear_error() {
    let agg = run_traced_opts(&sample("churn"), &[], &["--aggregate"], &[]);
    let d = agg.only_dump().path.to_str().unwrap().to_string();
    let f = run_zmtrace(&["flamegraph", &d, "--metric", "peak", "--folded"]);
    assert_eq!(f.code, Some(2), "{}", f.stderr);
    assert_eq!(f.stderr.lines().count(), 1, "{}", f.stderr);
    assert!(f.stderr.contains("no timeline"), "{}", f.stderr);
    let info = zmtrace_ok(&["dump-info", &d]);
    assert!(info.contains("aggregated"), "{info}");
    let report = zmtrace_ok(&["report", &d]);
    assert!(report.contains("aggregated dump: no timeline"), "{report}");
}

#[test]
fn a_killed_aggregated_process_keeps_its_last_snapshot() {
    let run = run_traced_opts(&sample("crasher"), &["kill"], &["--aggregate"], &[]);
    assert_eq!(run.code, Some(137), "{}", run.describe());
    let d = run.only_dump();
    assert!(d.end.is_none() && !d.is_complete());
    assert!(
        d.aggregate.is_some(),
        "a snapshot was written during the pause"
    );
    let r = json("report", &d.path);
    let warnings = r["warnings"].to_string();
    assert!(warnings.contains("cut short"), "{warnings}");
    // zs_early (3 mallocs and a calloc, 806 bytes) ran before the 2 s pause.
    let allocs = folded("allocations", &d.path);
    let bytes = folded("bytes", &d.path);
    let early = |m: &BTreeMap<String, u64>| {
        m.iter()
            .filter(|(s, _)| s.ends_with(";zs_early"))
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    assert_eq!(early(&allocs), 4);
    assert_eq!(early(&bytes), 806);
}

#[test]
fn aggregated_stacks_are_the_reference_unwinders() {
    let run = run_traced_opts(
        &sample("leaky"),
        &[],
        &["--aggregate"],
        &[("ZMTRACE_UNWIND", "compare")],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let d = run.only_dump();
    let end = d.end.expect("an End record");
    let a = d.aggregate.as_ref().unwrap();
    // Every capture was compared: one per allocation, realloc (`realloc(p, 0)` too, which
    // counts as a free) and failed call.
    let captures = a.allocations + a.reallocs + a.failed;
    assert!(
        (captures..=a.calls).contains(&end.compared_stacks),
        "{end:?} {a:?}"
    );
    assert_eq!(end.mismatched_stacks, 0, "{end:?}");
}

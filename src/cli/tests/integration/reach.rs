//! The leak check at exit, on the samples that make every class on purpose (`samples/reach.c`,
//! `samples/reach_threads.c`): each class's blocks and bytes per function equal the truth the
//! samples document, and the totals equal valgrind memcheck's on the same programs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use crate::common::*;
use serde_json::Value;

fn traced(args: &'static [&'static str]) -> &'static Run {
    static RUNS: OnceLock<std::sync::Mutex<BTreeMap<Vec<&str>, &'static Run>>> = OnceLock::new();
    let runs = RUNS.get_or_init(Default::default);
    let mut runs = runs.lock().unwrap_or_else(|e| e.into_inner());
    let (name, rest) = args.split_first().unwrap();
    runs.entry(args.to_vec()).or_insert_with(|| {
        let run = run_traced(&sample(name), rest);
        assert_eq!(run.code, Some(0), "{}", run.describe());
        Box::leak(Box::new(run))
    })
}

fn leaks_json(dump: &Path, extra: &[&str]) -> Value {
    let d = dump.to_str().unwrap();
    let mut args = vec!["leaks", d, "--json", "--top", "0"];
    args.extend_from_slice(extra);
    let f = run_zmtrace(&args);
    assert_eq!(f.code, Some(0), "zmtrace {args:?} failed:\n{}", f.stderr);
    serde_json::from_str(&f.stdout).expect("valid JSON")
}

/// (site, kind) -> (blocks, bytes), for the sample's own sites (`zs_`).
fn classes(l: &Value) -> BTreeMap<(String, String), (u64, u64)> {
    let mut out = BTreeMap::new();
    for s in l["sites"].as_array().unwrap() {
        let site = s["site"].as_str().unwrap();
        if !site.starts_with("zs_") {
            continue;
        }
        let e = out
            .entry((site.to_string(), s["kind"].as_str().unwrap().to_string()))
            .or_insert((0, 0));
        e.0 += s["blocks"].as_u64().unwrap();
        e.1 += s["bytes"].as_u64().unwrap();
    }
    out
}

fn expect(rows: &[(&str, &str, u64, u64)]) -> BTreeMap<(String, String), (u64, u64)> {
    rows.iter()
        .map(|&(s, k, n, b)| ((s.to_string(), k.to_string()), (n, b)))
        .collect()
}

/// The totals of `leaks --json`: kind -> (blocks, bytes).
fn totals(l: &Value) -> BTreeMap<String, (u64, u64)> {
    ["definite", "indirect", "possible", "reachable"]
        .iter()
        .map(|k| {
            let t = &l["kinds"][k];
            (
                k.to_string(),
                (t["blocks"].as_u64().unwrap(), t["bytes"].as_u64().unwrap()),
            )
        })
        .collect()
}

const REACH_SITES: &[(&str, &str, u64, u64)] = &[
    ("zs_keep_global", "reachable", 1, 1000),
    ("zs_keep_child", "reachable", 1, 200),
    ("zs_lose_outright", "definite", 1, 333),
    ("zs_list_head", "definite", 1, 48),
    ("zs_list_node", "indirect", 4, 160),
    ("zs_lose_cycle", "definite", 1, 72),
    ("zs_lose_cycle", "indirect", 1, 72),
    ("zs_keep_middle", "possible", 1, 256),
    ("zs_possible_child", "possible", 1, 24),
];

#[test]
fn every_class_of_the_reach_sample_is_exact_per_function() {
    let run = traced(&["reach"]);
    let l = leaks_json(&run.only_dump().path, &["--no-default-suppressions"]);
    assert_eq!(
        classes(&l),
        expect(REACH_SITES),
        "{l:#}\n{}",
        run.describe()
    );
    // Nothing else in the program is left at exit: the totals are the sample's.
    let t = totals(&l);
    assert_eq!(
        t,
        [
            ("definite".to_string(), (3, 453)),
            ("indirect".to_string(), (5, 232)),
            ("possible".to_string(), (2, 280)),
            ("reachable".to_string(), (2, 1200)),
        ]
        .into_iter()
        .collect(),
        "{l:#}"
    );
    // Lost first: the kinds come in memcheck's order.
    let order: Vec<&str> = l["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    let mut sorted = order.clone();
    let rank = |k: &str| {
        ["definite", "indirect", "possible", "reachable"]
            .iter()
            .position(|x| *x == k)
    };
    sorted.sort_by_key(|k| rank(k));
    assert_eq!(order, sorted);
    assert_eq!(l["check"]["trigger"], "exit");
    assert_eq!(l["check"]["unscanned_blocks"], 0);
}

#[test]
fn each_part_of_the_reach_sample_makes_only_its_own_classes() {
    for (part, rows) in [
        ("lost", &REACH_SITES[2..7]),
        ("possible", &REACH_SITES[7..9]),
        ("reachable", &REACH_SITES[0..2]),
    ] {
        let run = match part {
            "lost" => traced(&["reach", "lost"]),
            "possible" => traced(&["reach", "possible"]),
            _ => traced(&["reach", "reachable"]),
        };
        let l = leaks_json(&run.only_dump().path, &["--no-default-suppressions"]);
        assert_eq!(classes(&l), expect(rows), "reach {part}\n{l:#}");
    }
}

#[test]
fn the_kind_filter_keeps_only_the_classes_asked_for() {
    let run = traced(&["reach"]);
    let dump = &run.only_dump().path;
    let l = leaks_json(dump, &["--kind", "possible", "--kind", "definite,indirect"]);
    let mut want = REACH_SITES[2..9].to_vec();
    want.sort();
    assert_eq!(classes(&l), expect(&want));
    let l = leaks_json(dump, &["--kind=reachable"]);
    assert_eq!(classes(&l), expect(&REACH_SITES[0..2]));
    // Totals are the dump's, whatever is shown.
    assert_eq!(totals(&l)["definite"], (3, 453));
    let f = run_zmtrace(&["leaks", dump.to_str().unwrap(), "--kind", "definite,lost"]);
    assert_eq!(f.code, Some(2), "{}", f.stderr);
    assert_eq!(
        f.stderr.trim(),
        "zmtrace: error: unknown leak kind `lost`: expected definite, indirect, possible or reachable"
    );
    let missing = dump.with_file_name("missing.zmt");
    let f = run_zmtrace(&["leaks", missing.to_str().unwrap()]);
    assert_eq!(f.code, Some(2), "{}", f.stderr);
    assert_eq!(f.stderr.trim().lines().count(), 1, "{}", f.stderr);
}

#[test]
fn blocks_held_only_by_a_running_thread_are_still_reachable() {
    let run = traced(&["reach_threads"]);
    let l = leaks_json(&run.only_dump().path, &["--no-default-suppressions"]);
    assert_eq!(
        classes(&l),
        expect(&[
            ("zs_stack_block", "reachable", 1, 512),
            ("zs_register_block", "reachable", 1, 384),
            ("zs_lose_in_main", "definite", 1, 111),
        ]),
        "{l:#}\n{}",
        run.describe()
    );
    assert_eq!(l["check"]["threads_stopped"], 1, "{l:#}");
    assert_eq!(l["check"]["threads_unstopped"], 0, "{l:#}");
    // The holder thread's DTV (glibc, from pthread_create) is reached by an interior pointer
    // from its TCB, as memcheck says too; the built-in suppressions hide it.
    let with_defaults = leaks_json(&run.only_dump().path, &[]);
    assert_eq!(
        totals(&with_defaults)["possible"],
        (0, 0),
        "{with_defaults:#}"
    );
    assert_eq!(totals(&with_defaults)["reachable"], (2, 896));
}

#[test]
fn a_check_on_request_classifies_the_blocks_live_then() {
    let run = traced(&["reach", "lost", "check"]);
    let dump = run.only_dump();
    let triggers: Vec<_> = dump.reach.iter().map(|r| r.trigger).collect();
    use zmtrace_format::ReachTrigger::*;
    assert_eq!(triggers, [Request, Exit], "{}", run.describe());
    let r = &dump.reach[0];
    let t: Vec<(u64, u64)> = r.totals.iter().map(|t| (t.blocks, t.bytes)).collect();
    assert_eq!(t, [(3, 453), (5, 232), (0, 0), (0, 0)]);
    // Every block live at the check is in one list.
    let listed: usize = r.addrs.iter().map(Vec::len).sum();
    assert_eq!(listed, 8);
    let f = run_zmtrace(&["dump-info", dump.path.to_str().unwrap()]);
    assert!(
        f.stdout.contains("leak check: on request") && f.stdout.contains("leak check: at exit"),
        "{}",
        f.stdout
    );
}

#[test]
fn reach_totals_equal_valgrind_memchecks() {
    let run = traced(&["reach"]);
    let vg = memcheck(&run.program, &[]);
    let l = leaks_json(&run.only_dump().path, &["--no-default-suppressions"]);
    assert_eq!(totals(&l), vg, "zmtrace (left) vs memcheck (right)\n{l:#}");
}

#[test]
fn reach_threads_totals_equal_valgrind_memchecks() {
    let run = traced(&["reach_threads"]);
    let vg = memcheck(&run.program, &[]);
    let l = leaks_json(&run.only_dump().path, &["--no-default-suppressions"]);
    let zm = totals(&l);
    for kind in ["definite", "indirect", "reachable"] {
        assert_eq!(
            zm[kind], vg[kind],
            "{kind}: zmtrace (left) vs memcheck (right)\n{l:#}"
        );
    }
    // Possibly lost, in both: the holder thread's DTV, one block. Under zmtrace the process has
    // one TLS module more (libzmtrace.so), so glibc's DTV has one 16-byte slot more.
    assert_eq!(zm["possible"].0, 1);
    assert_eq!(vg["possible"].0, 1);
    assert_eq!(zm["possible"].1, vg["possible"].1 + 16, "{l:#}");
}

#[test]
fn a_dump_without_a_leak_check_lists_every_block_live_at_exit() {
    // abort(): the dump is complete, but no check is made on the way out.
    let run = run_traced(&sample("crasher"), &["abort"]);
    let dump = run.only_dump();
    assert!(dump.reach.is_empty(), "{}", run.describe());
    let l = leaks_json(&dump.path, &[]);
    assert!(l["kinds"].is_null() && l["check"].is_null(), "{l:#}");
    let zs: Vec<(u64, bool)> = l["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["site"].as_str().unwrap().starts_with("zs_"))
        .map(|s| (s["bytes"].as_u64().unwrap(), s["kind"].is_null()))
        .collect();
    // zs_early keeps 201 + 200 + 203 bytes, zs_late 302.
    let bytes: u64 = zs.iter().map(|z| z.0).sum();
    assert_eq!(bytes, 201 + 200 + 203 + 302, "{l:#}");
    assert!(zs.iter().all(|z| z.1));
    let f = run_zmtrace(&["leaks", dump.path.to_str().unwrap()]);
    assert!(
        f.stdout
            .contains("no reachability data: every block live at exit is listed"),
        "{}",
        f.stdout
    );
    let f = run_zmtrace(&[
        "flamegraph",
        dump.path.to_str().unwrap(),
        "--metric",
        "lost",
        "--folded",
    ]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    assert!(f.stderr.contains("no reachability data"), "{}", f.stderr);
    let total: u64 = f
        .stdout
        .lines()
        .filter(|l| l.contains("zs_"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 201 + 200 + 203 + 302, "{}", f.stdout);
}

#[test]
fn the_lost_flamegraph_counts_definitely_and_indirectly_lost_bytes() {
    let run = traced(&["reach"]);
    let f = run_zmtrace(&[
        "flamegraph",
        run.only_dump().path.to_str().unwrap(),
        "--metric",
        "lost",
        "--folded",
    ]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    let mut by_leaf: BTreeMap<String, u64> = BTreeMap::new();
    for line in f.stdout.lines() {
        let (stack, n) = line.rsplit_once(' ').unwrap();
        let leaf = stack.rsplit(';').next().unwrap().to_string();
        *by_leaf.entry(leaf).or_default() += n.parse::<u64>().unwrap();
    }
    let want: BTreeMap<String, u64> = [
        ("zs_lose_outright", 333),
        ("zs_list_head", 48),
        ("zs_list_node", 160),
        ("zs_lose_cycle", 144),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(by_leaf, want, "{}", f.stdout);
}

/// An aggregated recording has no addresses in its dump: the recorder classifies its live set
/// by the check at exit itself. Every class comes out the same as from the event dump.
#[test]
fn an_aggregated_recording_has_the_same_classes() {
    let run = run_traced_opts(&sample("reach"), &[], &["--aggregate"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let d = run.only_dump();
    assert!(d.is_aggregated() && d.is_complete(), "{:?}", d.warnings);
    let l = leaks_json(&d.path, &["--no-default-suppressions"]);
    assert_eq!(
        classes(&l),
        expect(REACH_SITES),
        "{l:#}\n{}",
        run.describe()
    );
    let events = leaks_json(
        &traced(&["reach"]).only_dump().path,
        &["--no-default-suppressions"],
    );
    assert_eq!(totals(&l), totals(&events));
    assert_eq!(l["check"]["trigger"], "exit");
    assert_eq!(l["check"]["unscanned_blocks"], 0);
}

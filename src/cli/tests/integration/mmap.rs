//! The program's own mappings as a metric of their own (`samples/mmaps.c`): `mmap`, `munmap` and
//! `mremap` calls recorded with their stacks, accounted exactly per function (a partial `munmap`,
//! an `mremap` grow, a file mapping, a shared one, one left mapped at exit) in `report`,
//! `report --json`, the flamegraphs and `dump-info`; and never in the heap's figures, which are
//! the same with the mappings as without them. The allocator's own mappings are not the
//! program's: glibc's for blocks of 256 KiB and more, jemalloc's inside Debian's `redis-server`.

use crate::cdp;

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;
use serde_json::Value;

const PAGE: u64 = 4096;

fn mmaps_run(args: &[&str]) -> Run {
    let run = run_traced(&sample("mmaps"), args);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    run
}

fn zmtrace_json(args: &[&str]) -> Value {
    let f = run_zmtrace(args);
    assert_eq!(f.code, Some(0), "zmtrace {args:?} failed:\n{}", f.stderr);
    serde_json::from_str(&f.stdout).expect("valid JSON")
}

fn report(dump: &Path) -> Value {
    zmtrace_json(&["report", dump.to_str().unwrap(), "--json", "--top", "0"])
}

/// site -> value of a top list, for the sample's own functions (`zs_`).
fn by_site(list: &Value) -> BTreeMap<String, u64> {
    list.as_array()
        .unwrap()
        .iter()
        .filter(|t| t["site"].as_str().unwrap().starts_with("zs_"))
        .map(|t| {
            (
                t["site"].as_str().unwrap().to_string(),
                t["value"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn map(rows: &[(&str, u64)]) -> BTreeMap<String, u64> {
    rows.iter().map(|&(k, v)| (k.to_string(), v)).collect()
}

/// The heap's figures of a report: everything but the mappings, the events (which count the
/// mapping calls too) and the times.
fn heap_figures(r: &Value) -> Value {
    let mut h = serde_json::Map::new();
    for k in [
        "allocations",
        "frees",
        "reallocs",
        "failed",
        "bytes_allocated",
        "peak_bytes",
        "leaked_blocks",
        "leaked_bytes",
        "temporary",
        "threads",
        "kinds",
    ] {
        h.insert(k.into(), r[k].clone());
    }
    for k in ["allocations", "bytes", "peak", "leaked", "temporary"] {
        h.insert(
            format!("top.{k}"),
            serde_json::to_value(by_site(&r["top"][k])).unwrap(),
        );
    }
    Value::Object(h)
}

/// (site, kind) -> (blocks, bytes) of `leaks --json`, every site.
fn leak_classes(dump: &Path) -> BTreeMap<(String, String), (u64, u64)> {
    let l = zmtrace_json(&[
        "leaks",
        dump.to_str().unwrap(),
        "--json",
        "--top",
        "0",
        "--no-default-suppressions",
    ]);
    let mut out = BTreeMap::new();
    for s in l["sites"].as_array().unwrap() {
        let e = out
            .entry((
                s["site"].as_str().unwrap().to_string(),
                s["kind"].as_str().unwrap_or("").to_string(),
            ))
            .or_insert((0, 0));
        e.0 += s["blocks"].as_u64().unwrap();
        e.1 += s["bytes"].as_u64().unwrap();
    }
    out
}

/// The collapsed stacks of a flamegraph metric, summed by their innermost frame.
fn folded_by_leaf(dump: &Path, metric: &str) -> BTreeMap<String, u64> {
    let f = run_zmtrace(&[
        "flamegraph",
        dump.to_str().unwrap(),
        "--metric",
        metric,
        "--folded",
    ]);
    assert_eq!(
        f.code,
        Some(0),
        "flamegraph --metric {metric}:\n{}",
        f.stderr
    );
    let mut out = BTreeMap::new();
    for line in f.stdout.lines() {
        let (stack, v) = line.rsplit_once(' ').unwrap();
        let leaf = stack.rsplit(';').next().unwrap().to_string();
        *out.entry(leaf).or_default() += v.parse::<u64>().unwrap();
    }
    out
}

#[test]
fn mappings_are_exact_per_function_and_apart_from_the_heap() {
    let run = mmaps_run(&[]);
    let dump = &run.only_dump().path;
    let r = report(dump);
    assert_eq!(r["warnings"], Value::Array(vec![]), "{r}");
    let m = &r["mapped"];
    let figures: Vec<(&str, u64)> = [
        "maps",
        "remaps",
        "unmaps",
        "bytes_mapped",
        "bytes_unmapped",
        "peak_bytes",
        "at_exit_bytes",
        "at_exit_ranges",
        "at_exit_anonymous_bytes",
        "at_exit_file_bytes",
        "at_exit_shared_bytes",
    ]
    .into_iter()
    .map(|k| (k, m[k].as_u64().unwrap()))
    .collect();
    assert_eq!(
        figures,
        [
            ("maps", 5),
            ("remaps", 1),
            ("unmaps", 3),
            // 4 + 2 + 1 + 3 + 2 pages mapped, and the mremap's growth of 2.
            ("bytes_mapped", 14 * PAGE),
            // the file's 2, the middle page, the shared 2.
            ("bytes_unmapped", 5 * PAGE),
            // everything mapped, but the middle page, before the shared mapping goes.
            ("peak_bytes", 13 * PAGE),
            ("at_exit_bytes", 9 * PAGE),
            // anon, the grown one, and the two ends of the three pages.
            ("at_exit_ranges", 4),
            ("at_exit_anonymous_bytes", 9 * PAGE),
            ("at_exit_file_bytes", 0),
            ("at_exit_shared_bytes", 0),
        ],
        "{m}"
    );
    // The dump keeps times to the millisecond (format version 3), and this program maps its peak
    // within its first few: 0 is a right answer, null (no timeline) is not.
    assert!(m["peak_time_ns"].as_u64().is_some(), "{m}");
    assert_eq!(
        by_site(&m["top"]["bytes"]),
        map(&[
            ("zs_map_anon", 4 * PAGE),
            ("zs_map_file", 2 * PAGE),
            ("zs_map_grow", PAGE),
            ("zs_map_shared", 2 * PAGE),
            ("zs_map_three", 3 * PAGE),
            ("zs_remap_grow", 2 * PAGE),
        ]),
        "{m}"
    );
    assert_eq!(
        by_site(&m["top"]["at_exit"]),
        map(&[
            ("zs_map_anon", 4 * PAGE),
            ("zs_map_three", 2 * PAGE),
            ("zs_remap_grow", 3 * PAGE),
        ]),
        "{m}"
    );
    // Only the sample's own mappings: nothing else in the process mapped through `mmap`.
    assert_eq!(m["top"]["bytes"].as_array().unwrap().len(), 6, "{m}");

    // The flamegraphs: the same per function, and the heap's metrics hold no mapping.
    assert_eq!(
        folded_by_leaf(dump, "mapped-at-exit"),
        map(&[
            ("zs_map_anon", 4 * PAGE),
            ("zs_map_three", 2 * PAGE),
            ("zs_remap_grow", 3 * PAGE),
        ])
    );
    assert_eq!(
        folded_by_leaf(dump, "mapped").values().sum::<u64>(),
        14 * PAGE
    );
    for metric in ["bytes", "leaked", "peak", "allocations"] {
        let heap = folded_by_leaf(dump, metric);
        assert!(
            heap.keys().all(|f| !f.contains("map")),
            "--metric {metric} shows a mapping: {heap:?}"
        );
    }

    // dump-info counts the calls.
    let info = run_zmtrace(&["dump-info", dump.to_str().unwrap()]);
    for (kind, n) in [("mmap", 5), ("mremap", 1), ("munmap", 3)] {
        assert!(
            info.stdout
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [kind, &n.to_string()]),
            "{kind} {n}:\n{}",
            info.stdout
        );
    }

    // The text report's own section.
    let text = run_zmtrace(&["report", dump.to_str().unwrap()]).stdout;
    assert!(
        text.contains("\nMappings (the program's own mmap, munmap and mremap calls"),
        "{text}"
    );
    assert!(
        text.contains("  mapped at exit           36.0 KiB  in 4 ranges"),
        "{text}"
    );

    // The heap: the sample's known amounts, the same as without the mappings.
    let bare = mmaps_run(&["nomaps"]);
    let bare_dump = &bare.only_dump().path;
    let b = report(bare_dump);
    assert_eq!(b["mapped"]["maps"], 0, "{b}");
    assert!(
        !run_zmtrace(&["report", bare_dump.to_str().unwrap()])
            .stdout
            .contains("Mappings"),
        "no section without mappings"
    );
    assert_eq!(heap_figures(&r), heap_figures(&b));
    assert_eq!(
        by_site(&r["top"]["bytes"]),
        map(&[
            ("zs_heap_keep", 1000),
            ("zs_heap_lose", 700),
            ("zs_heap_temp", 300)
        ])
    );
    assert_eq!(by_site(&r["top"]["temporary"]), map(&[("zs_heap_temp", 1)]));
    let classes = leak_classes(dump);
    assert_eq!(classes, leak_classes(bare_dump));
    let own: BTreeMap<_, _> = classes
        .iter()
        .filter(|((s, _), _)| s.starts_with("zs_"))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(
        own,
        [
            (("zs_heap_keep".into(), "reachable".into()), (1, 1000)),
            (("zs_heap_lose".into(), "definite".into()), (1, 700)),
        ]
        .into_iter()
        .collect::<BTreeMap<(String, String), (u64, u64)>>(),
        "mappings are never leaked blocks"
    );
}

#[test]
fn glibcs_large_blocks_are_not_program_mappings() {
    // 100,000 malloc/free of 256 KiB and more: glibc maps and unmaps each one itself.
    let run = mmaps_run(&["large"]);
    let dump = &run.only_dump().path;
    let r = report(dump);
    assert_eq!(r["warnings"], Value::Array(vec![]), "{r}");
    assert_eq!(
        by_site(&r["top"]["allocations"]),
        map(&[("zs_large", 100_000)])
    );
    let expected_bytes: u64 = (0..100_000u64).map(|i| 256 * 1024 + (i % 16) * PAGE).sum();
    assert_eq!(
        by_site(&r["top"]["bytes"]),
        map(&[("zs_large", expected_bytes)])
    );
    let m = &r["mapped"];
    for k in ["maps", "unmaps", "remaps", "bytes_mapped", "at_exit_bytes"] {
        assert_eq!(m[k], 0, "{k}: {m}");
    }
}

#[test]
fn jemallocs_mappings_are_not_program_mappings() {
    // Debian's redis-server has jemalloc inside, which maps its extents through the PLT's
    // `mmap` (our hook) from inside `malloc`: its heap, not the program's mappings. With
    // `--port 0` Redis sets itself up and exits at once.
    require("redis-server", "redis-server");
    let server = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("redis-server"))
        .find(|p| p.exists())
        .expect("redis-server on PATH");
    let run = run_traced(
        &server,
        &["--port", "0", "--save", "", "--loglevel", "warning"],
    );
    let dump = &run.only_dump().path;
    let r = report(dump);
    assert!(r["allocations"].as_u64().unwrap() > 1000, "{r}");
    let m = &r["mapped"];
    for k in ["maps", "unmaps", "remaps", "bytes_mapped", "at_exit_bytes"] {
        assert_eq!(m[k], 0, "{k}: {m}\n{}", run.describe());
    }
}

#[test]
fn jemallocs_mappings_outside_malloc_are_not_program_mappings() {
    // `samples/jemctl.c` makes jemalloc map outside any `malloc`: arenas made with `mallctl`,
    // extents of theirs with `mallocx` (neither is one of our hooks), 16 MiB in 8 mappings. They
    // are the allocator's by where the `mmap` comes from, whatever call is under way on the
    // thread; the program's own mapping is the one exact figure left.
    const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
    require(JEMALLOC, "libjemalloc2");
    let exe = scratch_dir().join("samples").join("jemctl");
    let mut flags = SAMPLE_CFLAGS.to_vec();
    flags.push("-l:libjemalloc.so.2");
    compile_c(&workspace_root().join("samples/jemctl.c"), &exe, &flags);
    let run = run_traced(&exe, &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(run.stdout, "ok\n");
    let r = report(&run.only_dump().path);
    let m = &r["mapped"];
    let expected = [
        ("maps", 1),
        ("unmaps", 1),
        ("remaps", 0),
        ("bytes_mapped", 3 * PAGE),
        ("bytes_unmapped", PAGE),
        ("peak_bytes", 3 * PAGE),
        ("at_exit_bytes", 2 * PAGE),
        ("at_exit_ranges", 1),
    ];
    for (k, v) in expected {
        assert_eq!(m[k], v, "{k}: {m}\n{}", run.describe());
    }
    assert_eq!(
        by_site(&m["top"]["bytes"]),
        map(&[("zs_map_own", 3 * PAGE)])
    );
    // The heap: the four blocks of `zs_keep` (jemalloc's own `mallocx` is not recorded).
    assert_eq!(by_site(&r["top"]["bytes"]), map(&[("zs_keep", 4000)]));
}

#[test]
fn the_page_shows_the_mappings_apart_from_the_heap() {
    let run = mmaps_run(&[]);
    let dump = &run.only_dump().path;
    let r = report(dump);
    let html = fresh_dir("mmaps-view").join("mmaps.html");
    let f = run_zmtrace(&["view", dump.to_str().unwrap(), "-o", html.to_str().unwrap()]);
    assert_eq!(f.code, Some(0), "zmtrace view:\n{}", f.stderr);
    let mut browser = cdp::Browser::launch(&fresh_dir("chromium"), 1280, 900);
    let mut page = browser.page();
    page.navigate(&format!(
        "file://{}",
        html.canonicalize().unwrap().display()
    ));
    assert_eq!(
        page.eval("document.getElementById('mapped-section').hidden"),
        false
    );
    let shown = page.eval(
        "Object.fromEntries([...document.querySelectorAll('#mapped-summary tr[data-field]')]\
         .map(tr => [tr.dataset.field, tr.querySelector('td.exact').textContent.replaceAll(',', '')]))",
    );
    let m = r["mapped"].as_object().unwrap();
    let mut compared = 0;
    for (field, v) in m {
        let Some(n) = v.as_u64() else { continue };
        assert_eq!(shown[field], n.to_string(), "mapped field {field}: {shown}");
        compared += 1;
    }
    assert_eq!(compared, 12, "{shown}");
    // One row per site, the most still mapped first: (site, bytes mapped, mapped at exit).
    let rows = page.eval(
        "[...document.querySelectorAll('#mapped-sites tbody tr')].map(tr => \
         [...tr.querySelectorAll('td')].map(td => td.textContent)).filter(r => r[0].startsWith('zs_'))\
         .map(r => [r[0], r[2].split(' ')[0].replaceAll(',', ''), r[3].split(' ')[0].replaceAll(',', '')].join(' '))",
    );
    let p = |n: u64| (n * PAGE).to_string();
    let expected: Vec<String> = [
        ("zs_map_anon", 4, 4),
        ("zs_remap_grow", 2, 3),
        ("zs_map_three", 3, 2),
        ("zs_map_file", 2, 0),
        ("zs_map_shared", 2, 0),
        ("zs_map_grow", 1, 0),
    ]
    .iter()
    .map(|&(s, b, e)| format!("{s} {} {}", p(b), p(e)))
    .collect();
    assert_eq!(rows, serde_json::to_value(expected).unwrap());
    // The heap's summary has no mapping in it: its bytes are the heap's.
    let allocated = page.eval(
        "document.querySelector('#summary tr[data-field=bytes_allocated] td.exact').textContent",
    );
    assert_eq!(
        allocated.as_str().unwrap().replace(',', ""),
        r["bytes_allocated"].to_string()
    );
    assert_eq!(page.errors(), Vec::<String>::new(), "errors on the page");
}

#[test]
fn threads_mapping_and_unmapping_the_same_pages_are_exact() {
    // Each munmap is numbered before its system call: a page one thread unmaps may be another's
    // next mmap at once, and an unmap numbered after that mmap would take it away.
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 20_000;
    for _ in 0..3 {
        let run = mmaps_run(&["threads"]);
        let dump = &run.only_dump().path;
        let r = report(dump);
        assert_eq!(r["warnings"], Value::Array(vec![]), "{r}");
        let m = &r["mapped"];
        let got: Vec<u64> = [
            "maps",
            "unmaps",
            "bytes_mapped",
            "bytes_unmapped",
            "at_exit_bytes",
            "at_exit_ranges",
        ]
        .iter()
        .map(|k| m[k].as_u64().unwrap())
        .collect();
        let kept = THREADS;
        assert_eq!(
            got,
            [
                THREADS * ROUNDS,
                THREADS * ROUNDS - kept,
                THREADS * ROUNDS * PAGE,
                (THREADS * ROUNDS - kept) * PAGE,
                kept * PAGE,
                kept
            ],
            "{m}"
        );
        // At most two pages per thread at once.
        assert!(
            m["peak_bytes"].as_u64().unwrap() <= 2 * THREADS * PAGE,
            "{m}"
        );
        assert_eq!(
            by_site(&m["top"]["at_exit"]),
            map(&[("zs_map_loop", kept * PAGE)])
        );
    }
}

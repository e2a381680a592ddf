//! The analyzer's reports on the samples: every number equals the truth the samples document,
//! per named function. Read through the CLI (`--json`, `--folded`), as users and scripts do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::*;
use serde_json::Value;

fn churn_dump() -> &'static Path {
    static RUN: OnceLock<Run> = OnceLock::new();
    let run = RUN.get_or_init(|| run_traced(&sample("churn"), &[]));
    assert_eq!(run.code, Some(0), "{}", run.describe());
    &run.only_dump().path
}

fn leaky_dump() -> &'static Path {
    static RUN: OnceLock<Run> = OnceLock::new();
    let run = RUN.get_or_init(|| run_traced(&sample("leaky"), &[]));
    assert_eq!(run.code, Some(0), "{}", run.describe());
    &run.only_dump().path
}

fn json(cmd: &str, dump: &Path, extra: &[&str]) -> Value {
    let d = dump.to_str().unwrap();
    let mut args = vec![cmd, d, "--json", "--top", "0"];
    args.extend_from_slice(extra);
    serde_json::from_str(&zmtrace_ok(&args)).expect("valid JSON")
}

/// Sums `field` over the sites whose name starts with `zs_`, by site name.
fn by_function(sites: &Value, field: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for s in sites.as_array().unwrap() {
        let name = s["site"].as_str().unwrap();
        if name.starts_with("zs_") {
            *out.entry(name.to_string()).or_default() += s[field].as_u64().unwrap();
        }
    }
    out
}

fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect()
}

#[test]
fn churn_report_counts_every_realloc_pattern_exactly() {
    let c = json("churn", churn_dump(), &[]);
    let sites = &c["sites"];
    assert_eq!(
        by_function(sites, "reallocs"),
        map(&[
            ("zs_grow_double", 12),
            ("zs_grow_fixed", 1000),
            ("zs_shrink", 3)
        ])
    );
    assert_eq!(
        by_function(sites, "grew"),
        map(&[
            ("zs_grow_double", 12),
            ("zs_grow_fixed", 1000),
            ("zs_shrink", 0)
        ])
    );
    assert_eq!(
        by_function(sites, "shrank"),
        map(&[
            ("zs_grow_double", 0),
            ("zs_grow_fixed", 0),
            ("zs_shrink", 3)
        ])
    );
    assert_eq!(
        by_function(sites, "longest_chain"),
        map(&[
            ("zs_grow_double", 12),
            ("zs_grow_fixed", 1000),
            ("zs_shrink", 3)
        ])
    );
    let site = |name: &str| {
        sites
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["site"] == name)
            .unwrap_or_else(|| panic!("no site {name} in {c:#}"))
    };
    let fixed = site("zs_grow_fixed");
    assert_eq!(fixed["pattern"]["kind"], "fixed_step");
    assert_eq!(fixed["pattern"]["step"], 16);
    assert!(fixed["hint"].as_str().unwrap().contains("fixed 16 bytes"));
    let double = site("zs_grow_double");
    assert_eq!(double["pattern"]["kind"], "geometric");
    assert_eq!(double["pattern"]["factor"].as_f64().unwrap(), 2.0);
    assert!(double["hint"].is_null());
    assert_eq!(site("zs_shrink")["pattern"]["kind"], "none");
    // Moves and copies depend on the allocator: check them against the dump's own reallocs.
    for s in sites.as_array().unwrap() {
        assert_eq!(
            s["moved"].as_u64().unwrap() + s["in_place"].as_u64().unwrap(),
            s["reallocs"].as_u64().unwrap()
        );
    }
    let dump = zmtrace_format::Dump::open(churn_dump()).unwrap();
    let sym = Symbolizer::new();
    let mut live: BTreeMap<u64, u64> = BTreeMap::new();
    let mut copied: BTreeMap<String, u64> = BTreeMap::new();
    for e in dump.events() {
        match e.kind {
            zmtrace_format::EventKind::Alloc { addr, size, .. } => {
                live.insert(addr, size);
            }
            zmtrace_format::EventKind::Free { addr, .. } => {
                live.remove(&addr);
            }
            zmtrace_format::EventKind::Realloc {
                old_addr,
                new_addr,
                size,
                stack,
                ..
            } => {
                let old = live.remove(&old_addr).unwrap();
                let f = sym.stack(&dump, stack)[0].clone();
                if new_addr != old_addr {
                    *copied.entry(f).or_default() += old.min(size);
                }
                live.insert(new_addr, size);
            }
            _ => {}
        }
    }
    let copied: BTreeMap<String, u64> = copied
        .into_iter()
        .filter(|(k, _)| k.starts_with("zs_"))
        .collect();
    let reported: BTreeMap<String, u64> = by_function(sites, "bytes_copied")
        .into_iter()
        .filter(|&(_, v)| v > 0)
        .collect();
    assert_eq!(
        reported,
        copied.into_iter().filter(|&(_, v)| v > 0).collect()
    );
}

#[test]
fn leaks_report_groups_the_known_leaks_by_function() {
    let l = json("leaks", churn_dump(), &[]);
    let sites = &l["sites"];
    assert_eq!(
        by_function(sites, "blocks"),
        map(&[("zs_grow_fixed", 1), ("zs_leak", 3), ("zs_shrink", 1)])
    );
    assert_eq!(
        by_function(sites, "bytes"),
        map(&[
            ("zs_grow_fixed", 16016),
            ("zs_leak", 3000),
            ("zs_shrink", 512)
        ])
    );
    assert_eq!(
        by_function(sites, "via_realloc"),
        map(&[("zs_grow_fixed", 1), ("zs_leak", 0), ("zs_shrink", 1)])
    );
    // Largest first, and each stack is a list of frames with the documented fields.
    let bytes: Vec<u64> = sites
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["bytes"].as_u64().unwrap())
        .collect();
    assert!(bytes.windows(2).all(|w| w[0] >= w[1]), "{bytes:?}");
    let frame = &sites[0]["stack"][0];
    for key in ["function", "file", "line", "module", "address", "inlined"] {
        assert!(frame.get(key).is_some(), "frame lacks {key}: {frame}");
    }

    let l = json("leaks", leaky_dump(), &[]);
    assert_eq!(
        by_function(&l["sites"], "bytes"),
        map(&[("zs_leak_page", 4096), ("zs_leak_small", 300)])
    );
    assert_eq!(
        by_function(&l["sites"], "blocks"),
        map(&[("zs_leak_page", 1), ("zs_leak_small", 3)])
    );
}

#[test]
fn leaks_options_filter_by_size_and_count() {
    let d = churn_dump().to_str().unwrap();
    let l: Value =
        serde_json::from_str(&zmtrace_ok(&["leaks", d, "--json", "--min-bytes", "3000"])).unwrap();
    assert_eq!(
        by_function(&l["sites"], "bytes"),
        map(&[("zs_grow_fixed", 16016), ("zs_leak", 3000)])
    );
    let l: Value =
        serde_json::from_str(&zmtrace_ok(&["leaks", d, "--json", "--top", "1"])).unwrap();
    assert_eq!(
        by_function(&l["sites"], "bytes"),
        map(&[("zs_grow_fixed", 16016)])
    );
    let text = zmtrace_ok(&["leaks", d]);
    assert!(text.contains("zs_grow_fixed"), "{text}");
    assert!(text.contains("grown by realloc"), "{text}");
}

#[test]
fn report_totals_and_top_sites_match_the_truth() {
    let r = json("report", churn_dump(), &[]);
    for key in [
        "allocations",
        "frees",
        "reallocs",
        "bytes_allocated",
        "peak_bytes",
        "leaked_blocks",
        "leaked_bytes",
        "temporary",
        "threads",
    ] {
        assert!(r[key].is_u64(), "report lacks {key}");
    }
    let top = &r["top"];
    assert_eq!(
        by_function(&top["temporary"], "value"),
        map(&[("zs_pairs", 20), ("zs_peak", 1), ("zs_temp", 50)])
    );
    assert_eq!(
        by_function(&top["allocations"], "value"),
        map(&[
            ("zs_grow_double", 1),
            ("zs_grow_fixed", 1),
            ("zs_leak", 3),
            ("zs_pairs", 40),
            ("zs_peak", 10),
            ("zs_shrink", 1),
            ("zs_temp", 50)
        ])
    );
    assert_eq!(
        by_function(&top["reallocs"], "value"),
        map(&[
            ("zs_grow_double", 12),
            ("zs_grow_fixed", 1000),
            ("zs_shrink", 3)
        ])
    );
    assert_eq!(by_function(&top["peak"], "value")["zs_peak"], 1_024_000);
    assert!(r["peak_bytes"].as_u64().unwrap() >= 1_024_000);
    assert_eq!(
        by_function(&top["leaked"], "value"),
        map(&[
            ("zs_grow_fixed", 16016),
            ("zs_leak", 3000),
            ("zs_shrink", 512)
        ])
    );
    // bytes: 16 + (32 + 48 + ... + 16016) for the fixed grower, and so on.
    let fixed: u64 = 16 + (2..=1001u64).map(|k| 16 * k).sum::<u64>();
    let double: u64 = 8 + (4..=15).map(|k| 1u64 << k).sum::<u64>();
    assert_eq!(
        by_function(&top["bytes"], "value"),
        map(&[
            ("zs_grow_double", double),
            ("zs_grow_fixed", fixed),
            ("zs_leak", 3000),
            ("zs_pairs", 20 * 81),
            ("zs_peak", 1_024_000),
            ("zs_shrink", 4096 + 2048 + 1024 + 512),
            ("zs_temp", 50 * 32)
        ])
    );
    assert_eq!(r["threads"], 1);
}

/// Sums the folded lines whose innermost frame is a `zs_` function, by that function.
fn folded_by_leaf(metric: &str, dump: &Path) -> BTreeMap<String, u64> {
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
        let leaf = stack.rsplit(';').next().unwrap();
        assert!(
            stack.starts_with("(below main);main;"),
            "outermost frame first: {line}"
        );
        if leaf.starts_with("zs_") {
            *m.entry(leaf.to_string()).or_default() += n.parse::<u64>().unwrap();
        }
    }
    m
}

#[test]
fn folded_stacks_carry_each_metric() {
    let d = churn_dump();
    assert_eq!(
        folded_by_leaf("temporary", d),
        map(&[("zs_pairs", 20), ("zs_peak", 1), ("zs_temp", 50)])
    );
    assert_eq!(
        folded_by_leaf("reallocs", d),
        map(&[
            ("zs_grow_double", 12),
            ("zs_grow_fixed", 1000),
            ("zs_shrink", 3)
        ])
    );
    assert_eq!(
        folded_by_leaf("leaked", d),
        map(&[
            ("zs_grow_fixed", 16016),
            ("zs_leak", 3000),
            ("zs_shrink", 512)
        ])
    );
    assert_eq!(folded_by_leaf("peak", d)["zs_peak"], 1_024_000);
    assert_eq!(folded_by_leaf("allocations", d)["zs_temp"], 50);
    assert_eq!(folded_by_leaf("bytes", d)["zs_peak"], 1_024_000);
}

#[test]
fn flamegraph_svg_names_the_functions_metric_and_program() {
    let dir = fresh_dir("flamegraph");
    let svg: PathBuf = dir.join("leaked.svg");
    zmtrace_ok(&[
        "flamegraph",
        churn_dump().to_str().unwrap(),
        "--metric",
        "leaked",
        "-o",
        svg.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<?xml"), "an SVG");
    assert!(
        text.contains("Bytes not freed at exit"),
        "title says the metric"
    );
    assert!(text.contains("churn"), "title says the program");
    assert!(text.contains("zs_grow_fixed") && text.contains("zs_leak"));
    assert!(
        text.contains("16,016 bytes") || text.contains("16016 bytes"),
        "counts in bytes"
    );
}

#[test]
fn a_truncated_dump_is_analyzed_with_a_warning() {
    let data = std::fs::read(churn_dump()).unwrap();
    let dir = fresh_dir("truncated");
    let cut = dir.join("cut.zmt");
    std::fs::write(&cut, &data[..data.len() * 2 / 3]).unwrap();
    let f = run_zmtrace(&["report", cut.to_str().unwrap()]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    assert!(f.stdout.contains("warning: truncated"), "{}", f.stdout);
    assert!(f.stdout.contains("did not end normally"), "{}", f.stdout);
    let foreign = dir.join("foreign.zmt");
    std::fs::write(&foreign, b"\x7fELF not a dump at all").unwrap();
    let f = run_zmtrace(&["leaks", foreign.to_str().unwrap()]);
    assert_eq!(f.code, Some(2));
    assert_eq!(f.stderr.lines().count(), 1, "{}", f.stderr);
    assert!(f.stderr.contains("not a zmtrace dump"), "{}", f.stderr);
}

#[test]
fn cxx_names_are_demangled_and_inlined_frames_named() {
    let run = run_traced(&sample("cxx"), &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let l = json("leaks", &run.only_dump().path, &[]);
    let mut by_site = BTreeMap::new();
    for s in l["sites"].as_array().unwrap() {
        by_site.insert(
            s["site"].as_str().unwrap().to_string(),
            (
                s["blocks"].as_u64().unwrap(),
                s["bytes"].as_u64().unwrap(),
                s.clone(),
            ),
        );
    }
    let (blocks, bytes, _) = &by_site["zs::Factory::make(int)"];
    assert_eq!((*blocks, *bytes), (5, 5 * 24));
    let (blocks, bytes, site) = &by_site["zs_fill"];
    assert_eq!((*blocks, *bytes), (7, 7 * 64));
    let frames = site["stack"].as_array().unwrap();
    let names: Vec<(&str, bool)> = frames
        .iter()
        .map(|f| {
            (
                f["function"].as_str().unwrap_or("?"),
                f["inlined"].as_bool().unwrap(),
            )
        })
        .collect();
    let fill = names.iter().position(|n| n.0 == "zs_fill").unwrap();
    assert!(names[fill].1, "zs_fill is an inlined frame: {names:?}");
    assert_eq!(
        names[fill + 1],
        ("zs::Factory::fill_all()", false),
        "{names:?}"
    );
    assert!(
        names[..fill]
            .iter()
            .any(|n| n.0.starts_with("operator new")),
        "{names:?}"
    );
}

#[test]
fn a_rebuilt_module_is_warned_about_and_not_symbolized_from_the_new_file() {
    let dir = fresh_dir("rebuilt");
    let exe = dir.join("churn");
    compile_c(
        &workspace_root().join("samples/churn.c"),
        &exe,
        SAMPLE_CFLAGS,
    );
    let out = dir.join("dumps");
    let f = run_zmtrace(&[
        "run",
        "-o",
        out.to_str().unwrap(),
        "--",
        exe.to_str().unwrap(),
    ]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    let dump = dump_files(&out).pop().unwrap();
    let before = zmtrace_ok(&["leaks", dump.to_str().unwrap()]);
    assert!(!before.contains("build-id differs"), "{before}");
    // The same path, other code: a different build-id.
    let mut flags = SAMPLE_CFLAGS.to_vec();
    flags.push("-DZS_REBUILT=1");
    flags.push("-O1");
    compile_c(&workspace_root().join("samples/churn.c"), &exe, &flags);
    let after = zmtrace_ok(&["leaks", dump.to_str().unwrap()]);
    assert!(
        after.contains("was rebuilt since the run (its build-id differs)"),
        "{after}"
    );
    // Its frames are not named from the new file's code, which is not what ran.
    assert!(before.contains("zs_"), "{before}");
    assert!(!after.contains("zs_"), "{after}");
    assert!(after.contains("churn+0x"), "{after}");
}

/// The progress bar is for people at a terminal: a report whose stderr is a pipe (as here, and
/// in every script) carries none of it, only what the report has to say.
#[test]
fn no_progress_bar_goes_to_a_pipe() {
    let d = leaky_dump().to_str().unwrap();
    for cmd in ["report", "leaks", "churn"] {
        let f = run_zmtrace(&[cmd, d]);
        assert_eq!(f.code, Some(0), "{}", f.stderr);
        assert!(
            !f.stderr.contains("reading events") && !f.stderr.contains('\r'),
            "zmtrace {cmd}: progress output on a pipe: {:?}",
            f.stderr
        );
    }
}

/// What `report` holds while it reads a dump of 1,000,000 blocks live at once
/// (`scripts/bench/manyblocks.c`), measured as users measure a program: `report` itself traced
/// by zmtrace, the peak of its heap read from its own dump. Each block costs the replay a
/// 16-byte slot in tables grown by half (at least half full), and each address a group of
/// events names costs the decoder 8 or 9 bytes: 38.8 bytes a live block in all. Tables that
/// doubled and addresses kept with their class in 16 bytes took 48.1; the addresses alone, 43.2.
#[test]
fn the_reports_heap_peaks_under_40_bytes_a_live_block() {
    const BLOCKS: u64 = 1_000_000;
    let dir = fresh_dir("reader-heap");
    let exe = dir.join("manyblocks");
    compile_c(
        &workspace_root().join("scripts/bench/manyblocks.c"),
        &exe,
        SAMPLE_CFLAGS,
    );
    let (rec, me) = (dir.join("recorded"), dir.join("report"));
    let (exe, n) = (exe.to_str().unwrap(), BLOCKS.to_string());
    zmtrace_ok(&["run", "-o", rec.to_str().unwrap(), "--", exe, &n]);
    let [dump] = &dump_files(&rec)[..] else {
        panic!("one dump in {}", rec.display())
    };
    // The blocks, the array that holds them and stdout's buffer.
    assert_eq!(json("report", dump, &[])["allocations"], BLOCKS + 2);
    let bin = zmtrace_bin();
    let (bin, dump) = (bin.to_str().unwrap(), dump.to_str().unwrap());
    zmtrace_ok(&["run", "-o", me.to_str().unwrap(), "--", bin, "report", dump]);
    let [own] = &dump_files(&me)[..] else {
        panic!("one dump in {}", me.display())
    };
    let peak = json("report", own, &[])["peak_bytes"].as_u64().unwrap();
    assert!(
        peak <= 40 * BLOCKS,
        "report's heap peaked at {peak} B, {:.1} B a live block",
        peak as f64 / BLOCKS as f64
    );
}

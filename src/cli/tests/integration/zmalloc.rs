//! The instrumented zmalloc (C API, both layouts) and the Rust global allocator: Redis's edge
//! cases, exact used-memory accounting, and the reports on their samples, by function name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use serde_json::Value;

/// `libzmalloc.a`, in the default layout or (`prefix`) built with the `prefix-size` feature.
fn zmalloc_lib(prefix: bool) -> PathBuf {
    static LIBS: OnceLock<std::sync::Mutex<BTreeMap<bool, PathBuf>>> = OnceLock::new();
    let mut libs = LIBS.get_or_init(Default::default).lock().unwrap();
    libs.entry(prefix)
        .or_insert_with(|| {
            let dir = if prefix {
                let target = workspace_root().join("target").join("zmalloc-prefix");
                cargo_build(
                    &["-p", "zmtrace-zmalloc", "--features", "prefix-size"],
                    Some(&target),
                )
            } else {
                cargo_build(&["-p", "zmtrace-zmalloc"], None)
            };
            dir.join("libzmalloc.a")
        })
        .clone()
}

/// A C sample linked with libzmalloc.a (the way a C project links it in place of zmalloc.c);
/// built once per test binary, and renamed into place so no test runs a half-written file.
fn zmalloc_sample(name: &str, prefix: bool) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<BTreeMap<(String, bool), PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(p) = built.get(&(name.to_string(), prefix)) {
        return p.clone();
    }
    let lib = zmalloc_lib(prefix);
    let out = scratch_dir().join("samples").join(format!(
        "{name}-{}",
        if prefix { "prefix" } else { "usable" }
    ));
    let include = format!(
        "-I{}",
        workspace_root().join("src/zmalloc/include").display()
    );
    let mut flags: Vec<&str> = SAMPLE_CFLAGS.to_vec();
    flags.push(&include);
    let src = workspace_root().join("samples").join(format!("{name}.c"));
    // The library and what the Rust standard library in it needs, after the source.
    let link = [
        lib.to_str().unwrap(),
        "-lgcc_s",
        "-lutil",
        "-lrt",
        "-lpthread",
        "-lm",
        "-ldl",
    ];
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let res = Command::new("cc")
        .args(&flags)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .args(link)
        .output()
        .expect("cc");
    assert!(
        res.status.success(),
        "cc {}: {}",
        src.display(),
        String::from_utf8_lossy(&res.stderr)
    );
    std::fs::rename(&tmp, &out).unwrap();
    built.insert((name.to_string(), prefix), out.clone());
    out
}

fn run_with(exe: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(exe)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run sample")
}

fn only_dump(dir: &Path) -> PathBuf {
    let dumps = dump_files(dir);
    assert_eq!(dumps.len(), 1, "one dump in {}: {dumps:?}", dir.display());
    dumps[0].clone()
}

fn report_json(cmd: &str, dump: &Path) -> Value {
    let f = run_zmtrace(&[cmd, dump.to_str().unwrap(), "--json", "--top", "0"]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    serde_json::from_str(&f.stdout).unwrap()
}

/// Sums `field` by site name, for the sites named by `prefix`.
fn by_site(sites: &Value, prefix: &str, field: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for s in sites.as_array().unwrap() {
        let name = s["site"].as_str().unwrap();
        if let Some(short) = name.strip_prefix(prefix) {
            if short.starts_with("zs_") {
                *m.entry(short.to_string()).or_default() += s[field].as_u64().unwrap();
            }
        }
    }
    m
}

fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect()
}

/// Runs samples/zmalloc_edges.c linked with the library of one layout: it checks every edge case
/// itself and says "ok <layout>".
fn assert_edge_cases_hold(prefix: bool, expect: &str) {
    let exe = zmalloc_sample("zmalloc_edges", prefix);
    let out = run_with(&exe, &[], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expect);
}

#[test]
fn zmalloc_edge_cases_hold_in_the_usable_size_layout() {
    assert_edge_cases_hold(false, "ok usable_size");
}

#[test]
fn zmalloc_edge_cases_hold_in_the_prefix_size_layout() {
    assert_edge_cases_hold(true, "ok prefix_size");
}

#[test]
fn zmalloc_edge_cases_hold_while_tracing_and_the_dump_is_complete() {
    let exe = zmalloc_sample("zmalloc_edges", false);
    let dir = fresh_dir("zmalloc-edges");
    let out = run_with(
        &exe,
        &[],
        &[("ZMTRACE", "1"), ("ZMTRACE_OUT", dir.to_str().unwrap())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The process and its OOM child, which ends its dump before it aborts.
    let dumps: Vec<zmtrace_format::Dump> = dump_files(&dir)
        .iter()
        .map(|p| zmtrace_format::Dump::open(p).unwrap())
        .collect();
    assert_eq!(dumps.len(), 2);
    for d in &dumps {
        let end = d.end.expect("the dump ends");
        let fork = d.process.as_ref().unwrap().origin == zmtrace_format::Origin::Fork;
        let want = if fork {
            zmtrace_format::EndReason::Abort
        } else {
            zmtrace_format::EndReason::Exit
        };
        assert_eq!(end.reason, want, "{}", d.path.display());
        assert_eq!(end.events, d.count_events());
    }
}

fn check_zredis(dump: &Path) {
    let l = report_json("leaks", dump);
    assert_eq!(
        by_site(&l["sites"], "", "blocks"),
        map(&[("zs_make_value", 3), ("zs_sds_cat_double", 1)])
    );
    assert_eq!(
        by_site(&l["sites"], "", "bytes"),
        map(&[("zs_make_value", 300), ("zs_sds_cat_double", 2064)])
    );
    let c = report_json("churn", dump);
    assert_eq!(
        by_site(&c["sites"], "", "reallocs"),
        map(&[("zs_sds_cat_double", 7), ("zs_sds_cat_step", 98)])
    );
    assert_eq!(
        by_site(&c["sites"], "", "longest_chain"),
        map(&[("zs_sds_cat_double", 7), ("zs_sds_cat_step", 98)])
    );
    for s in c["sites"].as_array().unwrap() {
        match s["site"].as_str().unwrap() {
            "zs_sds_cat_step" => {
                assert_eq!(s["pattern"]["kind"], "fixed_step");
                assert_eq!(s["pattern"]["step"], 8);
                assert!(!s["hint"].is_null());
            }
            "zs_sds_cat_double" => assert_eq!(s["pattern"]["kind"], "geometric"),
            _ => {}
        }
        // The stack starts at the z* caller: no wrapper frame.
        let first = s["stack"][0]["function"].as_str().unwrap_or("");
        assert!(
            !first.starts_with('z') || first.starts_with("zs_"),
            "{first}"
        );
    }
    let r = report_json("report", dump);
    assert_eq!(
        by_site(&r["top"]["allocations"], "", "value"),
        map(&[
            ("zs_dict_add", 40),
            ("zs_dict_create", 2),
            ("zs_dict_expand", 3),
            ("zs_make_value", 20),
            ("zs_sds_new", 2)
        ])
    );
    // Folded stacks: the z* caller is the innermost frame.
    let f = run_zmtrace(&[
        "flamegraph",
        dump.to_str().unwrap(),
        "--metric",
        "reallocs",
        "--folded",
    ]);
    let mut leaves = BTreeMap::new();
    for line in f.stdout.lines() {
        let (stack, n) = line.rsplit_once(' ').unwrap();
        *leaves
            .entry(stack.rsplit(';').next().unwrap().to_string())
            .or_insert(0u64) += n.parse::<u64>().unwrap();
    }
    assert_eq!(
        leaves,
        map(&[("zs_sds_cat_double", 7), ("zs_sds_cat_step", 98)])
    );
}

#[test]
fn zredis_started_by_zmtrace_start_reports_its_leaks_and_churn_exactly() {
    let exe = zmalloc_sample("zredis", false);
    let dir = fresh_dir("zredis-start");
    let out = run_with(
        &exe,
        &[dir.to_str().unwrap()],
        &[("ZMTRACE_UNWIND", "compare")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = only_dump(&dir);
    let d = zmtrace_format::Dump::open(&dump).unwrap();
    let end = d.end.unwrap();
    assert_eq!(end.reason, zmtrace_format::EndReason::Stopped);
    assert!(end.compared_stacks > 0);
    assert_eq!(
        end.mismatched_stacks, 0,
        "stacks equal the backtrace crate's"
    );
    check_zredis(&dump);
}

#[test]
fn zredis_started_by_the_environment_in_the_prefix_layout() {
    let exe = zmalloc_sample("zredis", true);
    let dir = fresh_dir("zredis-env");
    let out = run_with(
        &exe,
        &[],
        &[("ZMTRACE", "1"), ("ZMTRACE_OUT", dir.to_str().unwrap())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = only_dump(&dir);
    assert_eq!(
        zmtrace_format::Dump::open(&dump)
            .unwrap()
            .end
            .unwrap()
            .reason,
        zmtrace_format::EndReason::Exit
    );
    check_zredis(&dump);
}

#[test]
fn zredis_untraced_writes_no_dump() {
    let exe = zmalloc_sample("zredis", false);
    let dir = fresh_dir("zredis-off");
    let out = Command::new(&exe)
        .current_dir(&dir)
        .env_remove("ZMTRACE")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(dump_files(&dir).is_empty());
}

#[test]
fn rust_sample_reports_its_leaks_and_reallocs_by_function() {
    let bin = cargo_build(&["-p", "zmtrace-sample-rust"], None).join("zmtrace-sample-rust");
    let dir = fresh_dir("rust-sample");
    let out = run_with(
        &bin,
        &[dir.to_str().unwrap()],
        &[("ZMTRACE_UNWIND", "compare")],
    );
    // The sample checks used_memory() itself (exit 1 if it is off).
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = only_dump(&dir);
    let d = zmtrace_format::Dump::open(&dump).unwrap();
    assert_eq!(d.end.unwrap().mismatched_stacks, 0);
    let prefix = "zmtrace_sample_rust::";
    let l = report_json("leaks", &dump);
    assert_eq!(
        by_site(&l["sites"], prefix, "blocks"),
        map(&[("zs_leak_boxes", 3)])
    );
    assert_eq!(
        by_site(&l["sites"], prefix, "bytes"),
        map(&[("zs_leak_boxes", 3000)])
    );
    assert_eq!(l["leaked_blocks"], 3, "nothing else leaks while tracing");
    // In text, the stack starts at the site: the frames of `vec!`'s allocation above it (the
    // global allocator's, `alloc::`'s) are one line, and the next line is the sample's function.
    let text = zmtrace_ok(&["leaks", dump.to_str().unwrap()]);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("#1 2.9 KiB in 3 blocks: zmtrace_sample_rust::zs_leak_boxes"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        lines[at + 1].starts_with("      (")
            && lines[at + 1].contains(" frames in allocator wrappers, innermost "),
        "{text}"
    );
    assert!(
        lines[at + 2].starts_with("      zmtrace_sample_rust::zs_leak_boxes"),
        "{text}"
    );
    let c = report_json("churn", &dump);
    assert_eq!(
        by_site(&c["sites"], prefix, "reallocs"),
        map(&[("zs_grow_vec", 8), ("zs_string_steps", 99)])
    );
    for s in c["sites"].as_array().unwrap() {
        let name = s["site"].as_str().unwrap();
        if name.ends_with("zs_grow_vec") {
            assert_eq!(s["pattern"]["kind"], "geometric");
            assert_eq!(s["pattern"]["factor"].as_f64().unwrap(), 2.0);
        }
        if name.ends_with("zs_string_steps") {
            assert_eq!(s["pattern"]["kind"], "fixed_step");
            assert_eq!(s["pattern"]["step"], 8);
        }
    }
    let r = report_json("report", &dump);
    assert_eq!(
        by_site(&r["top"]["allocations"], prefix, "value"),
        map(&[
            ("zs_grow_vec", 1),
            ("zs_leak_boxes", 3),
            ("zs_string_steps", 1)
        ])
    );
}

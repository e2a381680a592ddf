//! Suppressions: the built-in set makes a clean C program (stdio, a thread, dlopen, setlocale)
//! report nothing; a suppression file hides what it names and says how much; a bad file is one
//! clear line naming the file and line.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::*;
use serde_json::Value;

/// samples/clean.c without freeres at exit (`--no-freeres`): what glibc keeps to the end is
/// live, for the built-in suppressions to hide. (With freeres, as memcheck runs it, nothing is.)
fn clean() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let run = run_traced_opts(&sample("clean"), &[], &["--no-freeres"], &[]);
        assert_eq!(run.code, Some(0), "{}", run.describe());
        run
    })
}

fn reach() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let run = run_traced(&sample("reach"), &[]);
        assert_eq!(run.code, Some(0), "{}", run.describe());
        run
    })
}

fn leaks_json(dump: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["leaks", dump.to_str().unwrap(), "--json", "--top", "0"];
    args.extend_from_slice(extra);
    let f = run_zmtrace(&args);
    assert_eq!(f.code, Some(0), "zmtrace {args:?} failed:\n{}", f.stderr);
    serde_json::from_str(&f.stdout).expect("valid JSON")
}

fn kind(l: &Value, k: &str) -> (u64, u64) {
    (
        l["kinds"][k]["blocks"].as_u64().unwrap(),
        l["kinds"][k]["bytes"].as_u64().unwrap(),
    )
}

fn supp_file(name: &str, text: &str) -> PathBuf {
    let dir = fresh_dir("suppressions");
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn with_freeres_at_exit_a_clean_program_leaves_no_block_at_all() {
    // As under memcheck ("All heap blocks were freed"): nothing to suppress.
    let run = run_traced(&sample("clean"), &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let l = leaks_json(&run.only_dump().path, &["--no-default-suppressions"]);
    assert_eq!(l["leaked_blocks"], 0, "{l:#}");
    assert!(l["sites"].as_array().unwrap().is_empty(), "{l:#}");
}

#[test]
fn the_builtin_set_leaves_a_clean_program_with_nothing_in_any_class() {
    let run = clean();
    let dump = &run.only_dump().path;
    let l = leaks_json(dump, &[]);
    for k in ["definite", "indirect", "possible", "reachable"] {
        assert_eq!(kind(&l, k), (0, 0), "{k}\n{l:#}");
    }
    assert!(l["sites"].as_array().unwrap().is_empty(), "{l:#}");
    // `zmtrace run`'s summary says the same as `leaks`, and that something was suppressed.
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("leak check:"))
        .unwrap_or_else(|| panic!("no leak check line:\n{}", run.stderr));
    assert!(
        line.contains(
            "definitely lost 0 B, indirectly lost 0 B, possibly lost 0 B, still reachable 0 B ("
        ) && line.ends_with(" suppressed)"),
        "{line}"
    );
    // What it hid is glibc's, all of it: the sample itself freed everything.
    let raw = leaks_json(dump, &["--no-default-suppressions"]);
    assert_eq!(
        l["suppressed"]["blocks"], raw["leaked_blocks"],
        "{l:#}\n{raw:#}"
    );
    assert!(raw["leaked_blocks"].as_u64().unwrap() > 0, "{raw:#}");
    assert!(
        !raw["sites"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["site"].as_str().unwrap().starts_with("zs_")),
        "{raw:#}"
    );
    let by: Vec<&str> = l["suppressed"]["by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    for name in [
        "glibc: stdio buffer",
        "glibc: thread DTV and static TLS",
        "glibc: dlopen bookkeeping",
        "glibc: locale data (setlocale)",
    ] {
        assert!(by.contains(&name), "{name} not among {by:?}");
    }
    // The gate at its strictest passes it.
    let dir = fresh_dir("clean-gate");
    let f = run_zmtrace(&[
        "run",
        "--fail-on-leak=all",
        "-o",
        dir.to_str().unwrap(),
        "--",
        run.program.to_str().unwrap(),
    ]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
}

#[test]
fn a_suppression_file_hides_what_it_names_and_counts_it() {
    let dump = &reach().only_dump().path;
    let supp = supp_file(
        "mine.supp",
        "# the outright leak is accepted\n\
         suppression accepted outright leak\n\
         \tfun:zs_lose_outright\n\
         \n\
         suppression the list, wherever it is made from main\n\
         ...\n\
         fun:zs_lose_list\n\
         mod:reach\n",
    );
    let l = leaks_json(dump, &["--suppressions", supp.to_str().unwrap()]);
    // 333 B outright, 48 B head and 4 x 40 B nodes gone; the cycle stays.
    assert_eq!(kind(&l, "definite"), (1, 72), "{l:#}");
    assert_eq!(kind(&l, "indirect"), (1, 72), "{l:#}");
    assert_eq!(kind(&l, "possible"), (2, 280), "{l:#}");
    let s = &l["suppressed"];
    assert_eq!(
        (s["blocks"].as_u64(), s["bytes"].as_u64()),
        (Some(6), Some(541))
    );
    let by: Vec<(String, u64, u64)> = s["by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["blocks"].as_u64().unwrap(),
                b["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by,
        [
            ("accepted outright leak".to_string(), 1, 333),
            (
                "the list, wherever it is made from main".to_string(),
                5,
                208
            ),
        ]
    );
    // A pattern must match the frames in order from the innermost: `fun:main` first matches
    // nothing (main never calls malloc itself).
    let none = supp_file("none.supp", "suppression main\nfun:main\n");
    let l = leaks_json(dump, &["--suppressions", none.to_str().unwrap()]);
    assert_eq!(l["suppressed"]["blocks"], 0, "{l:#}");
    // The text report says what was suppressed.
    let f = run_zmtrace(&[
        "leaks",
        dump.to_str().unwrap(),
        "--suppressions",
        supp.to_str().unwrap(),
    ]);
    assert!(
        f.stdout.contains("suppressed: 541 B in 6 blocks")
            && f.stdout.contains("accepted outright leak"),
        "{}",
        f.stdout
    );
}

#[test]
fn report_and_the_gate_apply_suppressions_too() {
    let run = reach();
    let supp = supp_file(
        "lost.supp",
        "suppression all of the lost part\n...\nfun:zs_lose_*\n",
    );
    let f = run_zmtrace(&[
        "report",
        run.only_dump().path.to_str().unwrap(),
        "--json",
        "--suppressions",
        supp.to_str().unwrap(),
    ]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    let r: Value = serde_json::from_str(&f.stdout).unwrap();
    assert_eq!(r["kinds"]["definite"]["bytes"], 0, "{r:#}");
    assert_eq!(r["kinds"]["indirect"]["bytes"], 0, "{r:#}");
    assert_eq!(r["suppressed"]["bytes"], 685, "{r:#}");
    let dir = fresh_dir("gate-suppressed");
    let f = run_zmtrace(&[
        "run",
        "--fail-on-leak",
        "--suppressions",
        supp.to_str().unwrap(),
        "-o",
        dir.to_str().unwrap(),
        "--",
        run.program.to_str().unwrap(),
    ]);
    assert_eq!(
        f.code,
        Some(0),
        "everything lost is suppressed:\n{}",
        f.stderr
    );
}

fn assert_one_line_error(f: &Finished, what: &str, needle: &str) {
    assert_eq!(f.code, Some(2), "{what}: exit {:?}\n{}", f.code, f.stderr);
    assert_eq!(f.stderr.trim().lines().count(), 1, "{what}:\n{}", f.stderr);
    assert!(
        f.stderr.contains(needle),
        "{what}: no `{needle}` in\n{}",
        f.stderr
    );
}

#[test]
fn a_bad_suppression_file_is_one_line_naming_its_line() {
    let dump = &reach().only_dump().path;
    let bad = supp_file(
        "bad.supp",
        "suppression fine\n  fun:x\n\nsuppression broken\n  function:zs_lose_outright\n",
    );
    let b = bad.to_str().unwrap();
    let f = run_zmtrace(&["leaks", dump.to_str().unwrap(), "--suppressions", b]);
    assert_one_line_error(
        &f,
        "leaks with a bad file",
        &format!("{b}:5: expected `suppression NAME`, `fun:GLOB`, `mod:GLOB` or `...`, found `function:zs_lose_outright`"),
    );
    let missing = bad.with_file_name("missing.supp");
    let m = missing.to_str().unwrap();
    let f = run_zmtrace(&["report", dump.to_str().unwrap(), "--suppressions", m]);
    assert_one_line_error(
        &f,
        "report with a missing file",
        &format!("cannot read suppressions {m}"),
    );
    // `run` refuses before the program starts: no dump is written.
    let dir = fresh_dir("bad-supp-run");
    let f = run_zmtrace(&[
        "run",
        "--fail-on-leak",
        "--suppressions",
        b,
        "-o",
        dir.to_str().unwrap(),
        "--",
        reach().program.to_str().unwrap(),
    ]);
    assert_one_line_error(&f, "run with a bad file", &format!("{b}:5:"));
    assert!(dump_files(&dir).is_empty(), "{:?}", dump_files(&dir));
}

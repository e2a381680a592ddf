//! What a new user sees first: the demo's sample (`samples/demo.c`) leaks what it documents, in
//! every class, with the lost site first, and the README's two commands work in a fresh clone.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;
use serde_json::Value;

fn json(args: &[&str]) -> Value {
    let f = run_zmtrace(args);
    assert_eq!(f.code, Some(0), "zmtrace {args:?} failed:\n{}", f.stderr);
    serde_json::from_str(&f.stdout).expect("valid JSON")
}

#[test]
fn the_demo_leaks_every_class_with_the_lost_site_first() {
    let run = run_traced(&sample("demo"), &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(run.stdout, "42 words, 9 distinct\n");
    let dump = run.only_dump().path.to_str().unwrap().to_owned();

    let l = json(&["leaks", &dump, "--json", "--top", "0"]);
    let sites: Vec<(String, String, u64, u64)> = l["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["site"].as_str().unwrap().to_owned(),
                s["kind"].as_str().unwrap().to_owned(),
                s["blocks"].as_u64().unwrap(),
                s["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    // In the order the report lists them: lost first, then largest first.
    let expect = [
        ("zs_rare_list", "definite", 3, 96),
        ("zs_note_rare", "indirect", 6, 144),
        ("zs_format_report", "possible", 1, 200),
        ("zs_count_word", "reachable", 9, 432),
        ("zs_table_new", "reachable", 1, 128),
    ]
    .map(|(s, k, n, b)| (s.to_owned(), k.to_owned(), n, b));
    assert_eq!(sites, expect, "{l:#}");

    let c = json(&["churn", &dump, "--json"]);
    let line = &c["sites"][0];
    assert_eq!(line["site"], "zs_line_append", "{c:#}");
    assert_eq!(
        (&line["reallocs"], &line["grew"], &line["pattern"]["step"]),
        (&Value::from(18), &Value::from(18), &Value::from(8)),
        "{c:#}"
    );
    // The lookup keys (zs_lower_copy) are freed at once unless a counter was allocated between
    // (33 of 42), and glibc's stdio buffer, the last block allocated (by printf), is freed by
    // freeres at exit before anything else is allocated.
    let r = json(&["report", &dump, "--json"]);
    assert_eq!(r["temporary"], 34, "{r:#}");
}

#[test]
fn the_demo_classes_equal_valgrind_memchecks() {
    let run = run_traced(&sample("demo"), &[]);
    let dump = run.only_dump().path.to_str().unwrap().to_owned();
    let l = json(&["leaks", &dump, "--json", "--no-default-suppressions"]);
    let ours: BTreeMap<String, (u64, u64)> = ["definite", "indirect", "possible", "reachable"]
        .iter()
        .map(|k| {
            let t = &l["kinds"][k];
            (
                k.to_string(),
                (t["blocks"].as_u64().unwrap(), t["bytes"].as_u64().unwrap()),
            )
        })
        .collect();
    // Both run glibc's freeres before the check (it frees the stdio buffer).
    let theirs = memcheck(&run.program, &[]);
    assert_eq!(ours, theirs, "zmtrace (left) vs memcheck (right)\n{l:#}");
}

/// `zmtrace run` of the demo with an installed `zmtrace`: the program runs traced.
fn traces_the_demo(zmtrace: &Path, demo: &Path) {
    let out = fresh_dir("installed-run");
    let text = sh(
        &out,
        Command::new(zmtrace)
            .arg("run")
            .arg("-o")
            .arg(&out)
            .arg("--")
            .arg(demo),
    );
    assert!(
        text.contains("definitely lost 96 B, indirectly lost 144 B"),
        "{} run: {text}",
        zmtrace.display()
    );
}

/// Runs `cmd` in `dir`; returns its stdout and stderr together, and fails on a non-zero exit.
fn sh(dir: &Path, cmd: &mut Command) -> String {
    let out = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// The README's first lines are the two set-up commands; on a fresh clone they build, trace the
/// demo and print its reports, and run the tests. The test command runs here on one crate only
/// (the whole suite would run this test again, and double CI's time); what it proves is the
/// set-up: the prerequisites are found or installed, and the tests build and pass.
#[test]
fn the_readme_commands_work_in_a_fresh_clone() {
    // The clone's tests must never run this test again (each would clone and test once more).
    assert!(
        std::env::var_os("ZMTRACE_FRESH_CLONE").is_none(),
        "the fresh clone's test run reached the fresh-clone test: it would recurse"
    );
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let commands: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("```sh"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .map(|l| l.split('#').next().unwrap().trim())
        .collect();
    assert_eq!(
        commands,
        ["scripts/test.sh", "scripts/demo.sh"],
        "the README's first lines"
    );

    let clone = fresh_dir("fresh-clone");
    sh(
        &root,
        Command::new("git")
            .args(["clone", "--quiet", "."])
            .arg(&clone),
    );
    // One target directory for both commands, kept across runs of this test: a fresh clone
    // compiles from scratch, which is what a new user waits for once, not at every test.
    let target = scratch_dir().join("fresh-clone-target");
    let demo = sh(
        &clone,
        Command::new("scripts/demo.sh").env("CARGO_TARGET_DIR", &target),
    );
    for line in [
        "zmtrace:   leak check: definitely lost 96 B, indirectly lost 144 B, possibly lost 200 B, still reachable 560 B",
        "#1 definitely lost: 96 B in 3 blocks: zs_rare_list",
        "#1 zs_line_append: 18 reallocs",
        "flamegraph of the bytes lost:",
        "the page of the run (open it in a browser):",
    ] {
        assert!(demo.contains(line), "the demo does not print `{line}`:\n{demo}");
    }
    let page = clone.join("target/demo/demo.html");
    assert!(page.is_file(), "no page at {}", page.display());
    let demo_program = clone.join("target/demo/demo");

    // The two ways to install: each leaves a `zmtrace` that finds its library and traces.
    let prefix = fresh_dir("fresh-clone-prefix");
    sh(
        &clone,
        Command::new("scripts/install.sh")
            .arg("--prefix")
            .arg(&prefix)
            .env("CARGO_TARGET_DIR", &target),
    );
    traces_the_demo(&prefix.join("bin/zmtrace"), &demo_program);
    sh(
        &clone,
        Command::new("cargo")
            .args(["deb", "-p", "zmtrace-cli", "--no-build", "--quiet", "-o"])
            .arg(prefix.join("zmtrace.deb"))
            .env("CARGO_TARGET_DIR", &target),
    );
    let root_dir = fresh_dir("fresh-clone-deb-root");
    sh(
        &clone,
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(prefix.join("zmtrace.deb"))
            .arg(&root_dir),
    );
    assert!(root_dir.join("usr/lib/zmtrace/libzmtrace.so").is_file());
    traces_the_demo(&root_dir.join("usr/bin/zmtrace"), &demo_program);
    // The binary alone cannot trace, and says why.
    let alone = fresh_dir("fresh-clone-alone").join("zmtrace");
    copy_executable(&prefix.join("bin/zmtrace"), &alone);
    let out = Command::new(&alone)
        .args(["run", "--"])
        .arg(&demo_program)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("cannot find the recorder library") && err.lines().count() == 1,
        "{err}"
    );

    let tests = sh(
        &clone,
        Command::new("scripts/test.sh")
            .args(["-p", "zmtrace-format"])
            .env("CARGO_TARGET_DIR", &target)
            .env("ZMTRACE_FRESH_CLONE", "1"),
    );
    assert!(
        tests.contains("test result: ok.") && !tests.contains("FAILED"),
        "{tests}"
    );
}

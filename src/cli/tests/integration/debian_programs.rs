//! Debian programs on real (generated, deterministic) input: zmtrace's four leak classes, blocks
//! and bytes, equal valgrind memcheck's exactly (without the default suppressions, since
//! freeres at exit leaves nothing for them here). The README's table (`scripts/memcheck-compare.sh`)
//! has more programs; these are the ones fast under valgrind. A program that is missing fails
//! the test (scripts/test.sh installs them).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;

type Totals = BTreeMap<&'static str, (u64, u64)>;

const KINDS: [(&str, &str); 4] = [
    ("definite", "definitely lost:"),
    ("indirect", "indirectly lost:"),
    ("possible", "possibly lost:"),
    ("reachable", "still reachable:"),
];

fn require(program: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{program} is not installed: run scripts/test.sh, or apt-get install {program}"
    );
}

/// memcheck's LEAK SUMMARY of `argv` run in `dir`.
fn memcheck(dir: &Path, argv: &[&str]) -> Totals {
    require("valgrind");
    let out = Command::new("valgrind")
        .args(["--leak-check=full", "--error-exitcode=0"])
        .args(argv)
        .current_dir(dir)
        .env("PYTHONHASHSEED", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run valgrind");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "valgrind {argv:?} failed:\n{text}");
    summary(&text)
}

/// The four classes of memcheck's LEAK SUMMARY in `text`, its output.
fn summary(text: &str) -> Totals {
    if text.contains("All heap blocks were freed") {
        return KINDS.iter().map(|&(k, _)| (k, (0, 0))).collect();
    }
    KINDS
        .iter()
        .map(|&(kind, label)| {
            let line = text
                .lines()
                .find(|l| l.contains(label))
                .unwrap_or_else(|| panic!("no `{label}` in valgrind's output:\n{text}"));
            let nums: Vec<u64> = line[line.find(label).unwrap() + label.len()..]
                .split_whitespace()
                .filter_map(|w| w.replace(',', "").parse().ok())
                .collect();
            (kind, (nums[1], nums[0]))
        })
        .collect()
}

/// zmtrace's classes of `argv` run in `dir` (its one dump), without the default suppressions.
fn zmtrace(dir: &Path, argv: &[&str]) -> Totals {
    let out = fresh_dir("debian");
    let mut args: Vec<&str> = vec!["run", "-o", out.to_str().unwrap(), "--"];
    args.extend_from_slice(argv);
    ensure_preload_built();
    let f = Command::new(zmtrace_bin())
        .args(&args)
        .current_dir(dir)
        .env("PYTHONHASHSEED", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run zmtrace");
    assert!(
        f.status.success(),
        "zmtrace {args:?}: {}",
        String::from_utf8_lossy(&f.stderr)
    );
    let dumps = dump_files(&out);
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    classes_of(&dumps[0])
}

/// A dump's four classes, without the default suppressions.
fn classes_of(dump: &Path) -> Totals {
    let l = run_zmtrace(&[
        "leaks",
        dump.to_str().unwrap(),
        "--json",
        "--no-default-suppressions",
    ]);
    assert_eq!(l.code, Some(0), "{}", l.stderr);
    let v: serde_json::Value = serde_json::from_str(&l.stdout).unwrap();
    KINDS
        .iter()
        .map(|&(k, _)| {
            let t = &v["kinds"][k];
            (
                k,
                (t["blocks"].as_u64().unwrap(), t["bytes"].as_u64().unwrap()),
            )
        })
        .collect()
}

/// The inputs of the programs, the same in every run.
fn inputs() -> std::path::PathBuf {
    let dir = fresh_dir("debian-inputs");
    let lines: String = (1..=5000u64)
        .map(|i| format!("{} w{}\n", i * 7919 % 10007, i % 97))
        .collect();
    std::fs::write(dir.join("in.txt"), lines).unwrap();
    let items: Vec<String> = (0..2000)
        .map(|i| {
            format!(
                r#"{{"id":{i},"name":"n{}","tags":["a{}","b"]}}"#,
                i % 113,
                i % 7
            )
        })
        .collect();
    std::fs::write(dir.join("in.json"), format!("[{}]\n", items.join(","))).unwrap();
    std::fs::write(
        dir.join("db.sql"),
        "create table t(id integer primary key, name text, v real);\n\
         with recursive c(x) as (select 1 union all select x+1 from c where x<5000) \
         insert into t select x, 'n'||(x%97), x*1.5 from c;\n\
         create index ti on t(name);\n\
         select name, count(*), sum(v) from t group by name order by 2 desc limit 5;\n",
    )
    .unwrap();
    dir
}

fn assert_same(dir: &Path, argv: &[&str]) {
    require(argv[0]);
    let zm = zmtrace(dir, argv);
    let vg = memcheck(dir, argv);
    assert_eq!(zm, vg, "{argv:?}: zmtrace (left) vs memcheck (right)");
}

#[test]
fn sort_jq_sqlite3_and_python3_leak_what_memcheck_says() {
    let dir = inputs();
    assert_same(&dir, &["sort", "in.txt"]);
    assert_same(
        &dir,
        &["jq", "-c", "map(select(.id % 3 == 0)) | length", "in.json"],
    );
    assert_same(&dir, &["sqlite3", ":memory:", "-init", "db.sql", ".quit"]);
    // CPython's arenas are its own mappings (roots): 0 lost, as memcheck.
    assert_same(
        &dir,
        &[
            "/usr/bin/python3",
            "-c",
            "import json, re, collections, argparse; print(json.dumps([1]))",
        ],
    );
}

#[test]
fn the_gate_passes_python3_importing_json() {
    require("/usr/bin/python3");
    let out = fresh_dir("gate-python");
    let f = run_zmtrace(&[
        "run",
        "-o",
        out.to_str().unwrap(),
        "--fail-on-leak",
        "--",
        "/usr/bin/python3",
        "-c",
        "import json",
    ]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
}

/// `env` with only `vars` (and a fixed PATH), under `zmtrace run -o out` or under valgrind (`vg`), its
/// output: the environment the traced program sees.
fn environment(dir: &Path, out: &Path, vars: &[(String, String)], vg: bool) -> String {
    let mut c = if vg {
        let mut c = Command::new("valgrind");
        c.args(["-q", "env"]);
        c
    } else {
        let mut c = Command::new(zmtrace_bin());
        c.args(["run", "-o", out.to_str().unwrap(), "--", "env"]);
        c
    };
    let f = c
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run env");
    assert!(f.status.success(), "{}", String::from_utf8_lossy(&f.stderr));
    String::from_utf8(f.stdout).unwrap()
}

/// gawk copies its environment into ENVIRON: one more variable is two more blocks, and where
/// its node chunks (4,800 B) fall decides whether one of them is kept only through an interior
/// pointer. memcheck's classes change with the number of variables too (measured: 0, 4,800 B in
/// 1 or 33,648 B in 97 blocks possibly lost). `zmtrace run` adds 7 variables (LD_PRELOAD and its
/// settings), valgrind 4: with valgrind's environment padded to as many variables and bytes as
/// zmtrace's, the classes are equal, blocks and bytes, in every environment.
#[test]
fn gawk_leaks_what_memcheck_says_in_an_environment_of_the_same_size() {
    require("gawk");
    require("valgrind");
    ensure_preload_built();
    let dir = inputs();
    let argv = ["gawk", "{s+=$1}END{print(s)}", "in.txt"];
    let mut possible = Vec::new();
    // Measured with `env -i PATH=/usr/bin:/bin X0=1 …` under zmtrace: with 20, 24, 34 or 39
    // variables gawk keeps 69, 116, 1 or 97 blocks through interior pointers only; with 0 or
    // 19, none.
    for n in [0, 19, 20, 24, 34, 39] {
        let vars: Vec<(String, String)> = (0..n).map(|k| (format!("X{k}"), "1".into())).collect();
        // The probe and the run use output directories of one length (ZMTRACE_OUT is a variable).
        let base = fresh_dir("gawk-env");
        let zenv = environment(&dir, &base.join("r"), &vars, false);
        let venv = environment(&dir, &base.join("r"), &vars, true);
        let more = zenv.lines().count() - venv.lines().count();
        assert!(
            more > 0,
            "zmtrace's environment:\n{zenv}\nvalgrind's:\n{venv}"
        );
        // Each padding variable is "Pk=" + value + a newline in env's output. When valgrind's
        // variables are the longer ones, zmtrace's output directory (ZMTRACE_OUT) gets longer.
        let bytes = zenv.len() as i64 - venv.len() as i64 - 4 * more as i64;
        let out = base.join(format!("r{}", "x".repeat((-bytes).max(0) as usize)));
        let bytes = bytes.max(0) as usize;
        let mut padded = vars.clone();
        for k in 0..more {
            let len = bytes / more + usize::from(k < bytes % more);
            padded.push((format!("P{k}"), "x".repeat(len)));
        }
        let f = Command::new(zmtrace_bin())
            .args(["run", "-o", out.to_str().unwrap(), "--"])
            .args(argv)
            .current_dir(&dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .expect("run zmtrace");
        assert!(f.status.success(), "{}", String::from_utf8_lossy(&f.stderr));
        let dumps = dump_files(&out);
        let zm = classes_of(&dumps[0]);
        let v = Command::new("valgrind")
            .args(["--leak-check=full", "--error-exitcode=0"])
            .args(argv)
            .current_dir(&dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(padded.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .expect("run valgrind");
        let vg = summary(&String::from_utf8_lossy(&v.stderr));
        assert_eq!(zm, vg, "{n} variables: zmtrace (left) vs memcheck (right)");
        possible.push(zm["possible"].0);
    }
    // The environments made both cases: none possibly lost, and some.
    assert!(
        possible.contains(&0) && possible.iter().any(|&b| b > 0),
        "{possible:?}"
    );
}

//! `zmtrace run --fail-on-leak[=lost|possible|all]`: exit 23 when the program leaks at that level
//! (beyond the suppressions), naming the sites; the program's own status otherwise.

use crate::common::*;

/// `zmtrace run [gate] -- reach PARTS`: exit code and stderr.
fn gate(flag: &str, parts: &[&str]) -> Finished {
    let dir = fresh_dir("gate");
    let program = sample("reach");
    let mut args = vec!["run"];
    if !flag.is_empty() {
        args.push(flag);
    }
    args.extend(["-o", dir.to_str().unwrap(), "--", program.to_str().unwrap()]);
    args.extend_from_slice(parts);
    run_zmtrace(&args)
}

#[test]
fn each_level_fails_exactly_on_its_classes() {
    // (level flag, the sample's parts, expected exit code)
    let cases: &[(&str, &[&str], i32)] = &[
        ("--fail-on-leak", &["lost"], 23),
        ("--fail-on-leak", &["possible"], 0),
        ("--fail-on-leak", &["reachable"], 0),
        ("--fail-on-leak=lost", &["lost"], 23),
        ("--fail-on-leak=lost", &["possible", "reachable"], 0),
        ("--fail-on-leak=possible", &["possible"], 23),
        ("--fail-on-leak=possible", &["lost"], 23),
        ("--fail-on-leak=possible", &["reachable"], 0),
        ("--fail-on-leak=all", &["reachable"], 23),
        ("", &["lost"], 0),
    ];
    for &(flag, parts, code) in cases {
        let f = gate(flag, parts);
        assert_eq!(
            f.code,
            Some(code),
            "zmtrace run {flag} -- reach {parts:?}:\n{}",
            f.stderr
        );
    }
}

#[test]
fn a_failing_gate_names_the_lost_sites() {
    let f = gate("--fail-on-leak", &["lost"]);
    assert_eq!(f.code, Some(23), "{}", f.stderr);
    for line in [
        "zmtrace: leak gate: 685 B lost in 8 blocks",
        "definitely lost 333 B in 1 block: zs_lose_outright",
        "indirectly lost 160 B in 4 blocks: zs_list_node",
    ] {
        assert!(f.stderr.contains(line), "no `{line}` in:\n{}", f.stderr);
    }
    let f = gate("--fail-on-leak=possible", &["possible"]);
    assert!(
        f.stderr
            .contains("possibly lost 256 B in 1 block: zs_keep_middle"),
        "{}",
        f.stderr
    );
}

#[test]
fn a_failed_program_keeps_its_own_status() {
    // `fail`: reach leaks its lost part, then exit(3).
    let f = gate("--fail-on-leak", &["lost", "fail"]);
    assert_eq!(f.code, Some(3), "{}", f.stderr);
    assert!(f.stderr.contains("zs_lose_outright"), "{}", f.stderr);
}

#[test]
fn a_bad_level_is_one_line() {
    let f = gate("--fail-on-leak=some", &["lost"]);
    assert_eq!(f.code, Some(2), "{}", f.stderr);
    assert_eq!(f.stderr.trim().lines().count(), 1, "{}", f.stderr);
    assert!(
        f.stderr
            .contains("--fail-on-leak=some: expected lost, possible or all"),
        "{}",
        f.stderr
    );
}

/// Regression: the gate skipped a dump it could not read, so a damaged dump passed. Here `sh`
/// runs `reach reachable` (nothing lost: the gate passes it), then overwrites 64 bytes in the
/// middle of every dump written so far, the end records left intact.
#[test]
fn a_damaged_dump_fails_the_gate() {
    // 64 zero bytes in the middle of each dump: its end record and leak check survive.
    let run = |damage: bool| {
        reach_under_the_gate(
            "gate-damaged",
            damage.then_some("n=$(($(wc -c < \"$f\") / 2)); head -c 64 /dev/zero"),
        )
    };
    let clean = run(false);
    assert_eq!(clean.code, Some(0), "{}", clean.stderr);
    let f = run(true);
    assert_eq!(f.code, Some(23), "{}", f.stderr);
    let lines: Vec<&str> = f
        .stderr
        .lines()
        .filter(|l| l.contains("leak gate:"))
        .collect();
    assert!(!lines.is_empty(), "{}", f.stderr);
    for l in &lines {
        assert!(
            l.contains("the dump is damaged (") && l.ends_with("so it fails the gate"),
            "{l}\n{}",
            f.stderr
        );
    }
}

/// A dump damaged at its very start (its process record) cannot be attributed to the run's
/// session by its contents; it was written during the run, so it is this run's: `run` names it
/// and the gate fails (it used to be skipped without a word, and the gate passed).
#[test]
fn a_dump_damaged_at_its_start_fails_the_gate() {
    // 256 zero bytes from offset 8: the process record is gone.
    let run = |damage: bool| {
        reach_under_the_gate(
            "gate-damaged-start",
            damage.then_some("n=8; head -c 256 /dev/zero"),
        )
    };
    let clean = run(false);
    assert_eq!(clean.code, Some(0), "{}", clean.stderr);
    let f = run(true);
    assert_eq!(f.code, Some(23), "{}", f.stderr);
    // Each dump damaged at its start is named by the summary and fails the gate.
    let named: Vec<&str> = f
        .stderr
        .lines()
        .filter(|l| l.contains("damaged at its start"))
        .collect();
    assert!(!named.is_empty(), "{}", f.stderr);
    for l in named {
        let path = l
            .trim_start_matches("zmtrace: ")
            .split(": ")
            .next()
            .unwrap();
        assert!(
            f.stderr.lines().any(|g| g.contains("leak gate:")
                && g.contains(path)
                && g.ends_with("so it fails the gate")),
            "{path} does not fail the gate:\n{}",
            f.stderr
        );
    }
}

/// `reach reachable` under `run --fail-on-leak`, through `sh`; then, if `damage` is given (a
/// shell snippet that sets `n` and writes zero bytes on stdout), those bytes written over each
/// dump at offset `n` before the run ends.
fn reach_under_the_gate(name: &str, damage: Option<&str>) -> Finished {
    let dir = fresh_dir(name);
    let mut script = format!("'{}' reachable", sample("reach").display());
    if let Some(d) = damage {
        script.push_str(&format!(
            "; for f in '{}'/*.zmt; do {d} | dd of=\"$f\" bs=1 seek=$n conv=notrunc \
             2>/dev/null; done",
            dir.display()
        ));
    }
    run_zmtrace(&[
        "run",
        "--fail-on-leak",
        "-o",
        dir.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        &script,
    ])
}

//! What a new user meets first (issue 16): the README's own examples on the samples, the words of
//! the reports, and the errors of a command typed slightly wrong. Each test is named after the
//! defect it guards.

use std::ffi::OsStr;
use std::path::Path;

use crate::common::*;

fn zm(args: &[&OsStr]) -> Finished {
    run_zmtrace(args)
}

fn s(x: &str) -> &OsStr {
    OsStr::new(x)
}

/// `zmtrace run -o DIR -- samples/NAME ARGS`: the run and its one dump's path.
fn traced(name: &str, args: &[&str]) -> (Run, std::path::PathBuf) {
    let run = run_traced(&sample(name), args);
    let path = run.only_dump().path.clone();
    (run, path)
}

#[test]
fn a_flamegraph_with_nothing_to_draw_is_a_valid_svg_that_says_why() {
    let (_run, dump) = traced("clean", &[]);
    let dir = fresh_dir("empty-flame");
    for (metric, why) in [
        ("leaked", "every block was freed before exit"),
        ("lost", "no block was definitely or indirectly lost at exit"),
    ] {
        let svg = dir.join(format!("{metric}.svg"));
        let f = zm(&[
            s("flamegraph"),
            dump.as_os_str(),
            s("--metric"),
            s(metric),
            s("-o"),
            svg.as_os_str(),
        ]);
        assert_eq!(f.code, Some(0), "--metric {metric}: {f:?}");
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<?xml"), "{text}");
        assert!(text.trim_end().ends_with("</svg>"), "{text}");
        assert!(!text.contains("ERROR"), "{text}");
        assert!(
            text.contains(why),
            "--metric {metric}: no `{why}` in {text}"
        );
    }
}

/// `zmtrace report --json DUMP`, parsed.
fn report_json(dump: &Path) -> serde_json::Value {
    let f = zm(&[s("report"), dump.as_os_str(), s("--json")]);
    assert_eq!(f.code, Some(0), "{f:?}");
    serde_json::from_str(&f.stdout).expect("valid JSON")
}

#[test]
fn a_dump_cut_short_near_its_end_says_so_rather_than_blame_a_running_thread() {
    // The last record cut: in most runs the final events, written after the leak check's
    // record; in the others the check's own record is last, and the cut takes the check away
    // (a dump with no check, which has no such warning): the program is run again.
    let cut = fresh_dir("cut-dump").join("cut.zmt");
    let (dump, r) = (0..8)
        .find_map(|_| {
            let (run, dump) = traced("stlchurn", &[]);
            assert_eq!(run.code, Some(0), "{}", run.describe());
            let bytes = std::fs::read(&dump).unwrap();
            std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
            let r = report_json(&cut);
            (!r["check"].is_null()).then_some((dump, r))
        })
        .expect("in 8 runs, the leak check's record was the last one each time");
    let dump = &dump;
    let check = &r["check"];
    let blocks = check["unscanned_blocks"].as_u64().unwrap();
    let b = check["unscanned_bytes"].as_u64().unwrap();
    assert!(
        blocks > 1,
        "the frees cut off leave blocks the check did not see: {r}"
    );
    let warnings: Vec<&str> = r["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    let w = warnings
        .iter()
        .find(|w| w.contains("not seen by the leak check"))
        .unwrap_or_else(|| panic!("no warning on the unseen blocks: {warnings:?}"));
    assert!(!w.contains("thread still running"), "{w}");
    assert!(w.contains("the dump is cut short"), "{w}");
    let human = zmtrace_report::reports::human_bytes(b);
    let count = zmtrace_analyze::words::plural(blocks, "block");
    assert!(w.starts_with(&format!("{count} ({human}) live")), "{w}");
    assert!(!w.contains(&format!("{b} bytes")), "a raw byte count: {w}");
    // The reader's own warning on the cut record gives its size for people too.
    let t = warnings
        .iter()
        .find(|w| w.starts_with("truncated: the last "))
        .unwrap_or_else(|| panic!("no truncation warning: {warnings:?}"));
    assert!(!t.contains(" bytes "), "a raw byte count: {t}");
    assert!(
        t.contains(" KiB (from offset ") || t.contains(" B (from offset "),
        "{t}"
    );
    // The complete dump has no such warning.
    let whole = report_json(dump);
    assert_eq!(whole["check"]["unscanned_blocks"], 0, "{whole}");
}

#[test]
fn dump_info_says_its_leak_classes_are_before_suppressions_and_what_leaks_reports() {
    // Without freeres, glibc's one-time blocks are live at exit: the built-in suppressions hide
    // them from `run` and `leaks` (a thread's DTV is definitely lost, 288 B here).
    let run = run_traced_opts(&sample("clean"), &[], &["--no-freeres"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let dump = &run.only_dump().path;
    let leaks = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["leaks", dump.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let f = run_zmtrace(&args);
        assert_eq!(f.code, Some(0), "{f:?}");
        serde_json::from_str(&f.stdout).unwrap()
    };
    let (raw, after) = (leaks(&["--no-default-suppressions"]), leaks(&[]));
    let f = zm(&[s("dump-info"), dump.as_os_str()]);
    assert_eq!(f.code, Some(0), "{f:?}");
    assert!(
        f.stdout
            .contains("  before suppressions (in brackets: after the default ones"),
        "{}",
        f.stdout
    );
    let mut suppressed_somewhere = false;
    for (key, name) in [
        ("definite", "definitely lost"),
        ("indirect", "indirectly lost"),
        ("possible", "possibly lost"),
        ("reachable", "still reachable"),
    ] {
        let line = f
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line:\n{}", f.stdout));
        let n = |v: &serde_json::Value, f: &str| v["kinds"][key][f].as_u64().unwrap();
        let (blocks, bytes) = (n(&raw, "blocks"), n(&raw, "bytes"));
        let want = format!(
            "{name:<24} {}, {}",
            zmtrace_analyze::words::plural(blocks, "block"),
            zmtrace_report::reports::human_bytes(bytes)
        );
        assert!(
            line.trim_start().starts_with(&want),
            "{line:?}, want {want:?}"
        );
        let kept = n(&after, "bytes");
        if kept != bytes || n(&after, "blocks") != blocks {
            suppressed_somewhere = true;
            let h = zmtrace_report::reports::human_bytes;
            let note = format!("[{}; {} suppressed]", h(kept), h(bytes - kept));
            assert!(line.ends_with(&note), "{line:?}, want {note:?}");
        } else {
            assert!(!line.contains('['), "{line:?}");
        }
    }
    assert!(suppressed_somewhere, "{}", f.stdout);
    // The thread's DTV: definitely lost before suppressions, 0 B after (as in issue 16).
    assert_eq!(raw["kinds"]["definite"]["bytes"], 288, "{raw}");
    assert_eq!(after["kinds"]["definite"]["bytes"], 0, "{after}");
}

/// The one line a failed `zmtrace` printed (it must be one line, with that exit code).
fn one_line(f: &Finished, code: i32) -> String {
    assert_eq!(f.code, Some(code), "{f:?}");
    let err = f.stderr.trim();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err.to_string()
}

#[test]
fn run_says_a_directory_is_a_directory() {
    let f = zm(&[
        s("run"),
        s("-o"),
        fresh_dir("dir-prog").as_os_str(),
        s("--"),
        s("/tmp"),
    ]);
    assert_eq!(
        one_line(&f, 126),
        "zmtrace: error: /tmp is a directory, not a program"
    );
}

#[test]
fn run_takes_the_word_after_fail_on_leak_for_its_level() {
    // reach's `possible` part leaks only possibly lost blocks: the default level (lost) passes
    // it, `possible` fails it with 23. (The level used to be taken for the program: exit 127.)
    let reach = sample("reach");
    let gate = |level: &[&str]| {
        let dir = fresh_dir("gate-level");
        let mut args = vec![s("run"), s("--fail-on-leak")];
        args.extend(level.iter().map(|l| s(l)));
        args.extend([
            s("-o"),
            dir.as_os_str(),
            s("--"),
            reach.as_os_str(),
            s("possible"),
        ]);
        zm(&args).code
    };
    assert_eq!(gate(&["possible"]), Some(23));
    assert_eq!(gate(&["all"]), Some(23));
    assert_eq!(gate(&["lost"]), Some(0));
    assert_eq!(gate(&[]), Some(0));
    // The program without `--` right after the flag: taken for a level, and said so.
    let f = zm(&[s("run"), s("--fail-on-leak"), reach.as_os_str()]);
    assert_eq!(
        one_line(&f, 2),
        format!(
            "zmtrace: error: `{0}` is not a leak level (lost, possible or all): put the program \
             after `--`, as in `zmtrace run --fail-on-leak -- {0}`",
            reach.display()
        )
    );
    let f = zm(&[s("run")]);
    assert_eq!(
        one_line(&f, 2),
        "zmtrace: error: no program given: zmtrace run [OPTIONS] -- PROGRAM [ARGS...]"
    );
}

#[test]
fn run_refuses_a_misspelt_unwinder_before_starting_the_program() {
    let dir = fresh_dir("bogus-unwind");
    let f = run_zmtrace_env(
        &[
            s("run"),
            s("-o"),
            dir.as_os_str(),
            s("--"),
            sample("clean").as_os_str(),
        ],
        &[("ZMTRACE_UNWIND", "bogus")],
    );
    assert_eq!(
        one_line(&f, 2),
        "zmtrace: error: ZMTRACE_UNWIND=bogus: expected fast (the default), backtrace or compare"
    );
    assert!(f.stdout.is_empty(), "the program ran: {}", f.stdout);
    assert!(dump_files(&dir).is_empty(), "the program ran");
    // The values it names are accepted.
    for ok in ["fast", "compare"] {
        let run = run_traced_env(&sample("clean"), &[], &[("ZMTRACE_UNWIND", ok)]);
        assert_eq!(run.code, Some(0), "ZMTRACE_UNWIND={ok}: {}", run.describe());
    }
}

#[test]
fn run_says_an_output_path_that_is_a_file_is_not_a_directory() {
    let f = zm(&[
        s("run"),
        s("-o"),
        s("/etc/passwd"),
        s("--"),
        sample("clean").as_os_str(),
    ]);
    assert_eq!(
        one_line(&f, 125),
        "zmtrace: error: cannot write to output directory /etc/passwd: it is not a directory"
    );
}

#[test]
fn an_aborted_program_did_not_end_normally() {
    let run = run_traced(&sample("crasher"), &["abort"]);
    assert_eq!(run.code, Some(128 + libc::SIGABRT), "{}", run.describe());
    let dump = &run.only_dump().path;
    let want = "did not end normally: the program called abort(); every event up to it is in \
                the dump";
    let r = report_json(dump);
    assert_eq!(r["ending"], want);
    let info = zm(&[s("dump-info"), dump.as_os_str()]);
    assert!(
        info.stdout.contains(&format!("ending:    {want}")),
        "{}",
        info.stdout
    );
    assert!(
        run.stderr
            .contains("zmtrace: the program was killed by SIGABRT (6)\n"),
        "{}",
        run.stderr
    );
}

/// Lines of `text` that hold `1 blocks`, `1 more frames`, or another count of one with a plural.
fn bad_plurals(text: &str) -> Vec<&str> {
    let words = [
        "blocks",
        "more frames",
        "groups",
        "other threads",
        "threads",
        "allocations",
    ];
    text.lines()
        .filter(|l| {
            words.iter().any(|w| {
                l.match_indices(&format!(" {w}")).any(|(i, _)| {
                    let before = &l[..i];
                    before.ends_with(" 1") || before == "1" || before.ends_with("(1")
                })
            })
        })
        .collect()
}

fn zmtrace_text(args: &[&str]) -> String {
    let f = run_zmtrace(args);
    assert_eq!(f.code, Some(0), "zmtrace {args:?}: {f:?}");
    f.stdout + &f.stderr
}

#[test]
fn text_output_counts_in_words_groups_digits_and_spaces_its_sites() {
    // reach's lost part: a 333 B block definitely lost, alone at its site.
    let reach = run_traced(&sample("reach"), &["lost"]);
    let d = reach.only_dump().path.to_str().unwrap().to_string();
    let leaks = zmtrace_text(&["leaks", &d]);
    assert!(
        leaks.contains("#1 definitely lost: 333 B in 1 block: zs_lose_outright"),
        "{leaks}"
    );
    assert_eq!(bad_plurals(&leaks), Vec::<&str>::new(), "{leaks}");
    // One frame left out of a stack: "1 more frame".
    let r: serde_json::Value =
        serde_json::from_str(&zmtrace_text(&["report", &d, "--json", "--depth", "0"])).unwrap();
    let len = r["top"]["allocations"][0]["stack"]
        .as_array()
        .unwrap()
        .len();
    assert!(len >= 2, "{r}");
    let depth = (len - 1).to_string();
    let report = zmtrace_text(&["report", &d, "--depth", &depth, "--top", "1"]);
    assert!(report.contains("      … 1 more frame\n"), "{report}");
    assert_eq!(bad_plurals(&report), Vec::<&str>::new(), "{report}");

    // `run` groups digits as `report` does (59,830 allocations, not 59830).
    let (run, dump) = traced("stlchurn", &[]);
    let r = report_json(&dump);
    let n = r["allocations"].as_u64().unwrap();
    assert!(n >= 1000, "{r}");
    let grouped = zmtrace_analyze::words::thousands(n);
    assert!(
        run.stderr
            .contains(&format!("zmtrace:   allocations {grouped} (")),
        "{}",
        run.stderr
    );
    let text = zmtrace_text(&["report", dump.to_str().unwrap()]);
    assert!(text.contains(&format!(" {grouped}  (")), "{text}");

    // The top-site lists: a blank line between one site's stack and the next site.
    let list = text
        .split("Top sites by allocations:\n")
        .nth(1)
        .and_then(|t| t.split("\nTop sites by").next())
        .unwrap_or_else(|| panic!("no top list: {text}"));
    let entries = list.trim_end().split("\n\n").count();
    let listed = r["top"]["allocations"].as_array().unwrap().len();
    assert!(listed >= 2, "{r}");
    assert_eq!(entries, listed, "{list}");
    for e in list.trim_end().split("\n\n") {
        // Each entry starts with its site's line: the count, then the site.
        let first = e.lines().next().unwrap().trim_start();
        assert!(first.starts_with(|c: char| c.is_ascii_digit()), "{e}");
    }
}

#[test]
fn frames_below_main_are_one_frame_as_in_memcheck() {
    let (_run, dump) = traced("leaky", &[]);
    let d = dump.to_str().unwrap();
    let folded = zmtrace_text(&["flamegraph", d, "--metric", "bytes", "--folded"]);
    let mut from_main = 0;
    for line in folded.lines() {
        let stack = line.rsplit_once(' ').unwrap().0;
        if !stack.split(';').any(|f| f == "main") {
            continue; // a thread's stack, from clone
        }
        for start in [
            "_start",
            "__libc_start_main",
            "__libc_start_call_main",
            "libc.so.6+",
        ] {
            assert!(
                !stack.split(';').any(|f| f.starts_with(start)),
                "{start} in {line}"
            );
        }
        if stack.contains(";main;") || stack.ends_with(";main") {
            assert!(stack.starts_with("(below main);main;"), "{line}");
            from_main += 1;
        }
    }
    assert!(from_main > 5, "{folded}");
    let report = zmtrace_text(&["report", d, "--depth", "0"]);
    assert!(report.contains("      main  "), "{report}");
    assert!(report.contains("      (below main)\n"), "{report}");
    assert!(!report.contains("__libc_start_main"), "{report}");
    // Threads' stacks do not reach main: they keep their frames.
    assert!(report.contains("zs_worker  "), "{report}");
}

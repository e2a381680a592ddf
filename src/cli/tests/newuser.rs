//! What a new user meets first (issue 16): the README's own examples on the samples, the words of
//! the reports, and the errors of a command typed slightly wrong. Each test is named after the
//! defect it guards.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::*;

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
        assert!(text.contains(why), "--metric {metric}: no `{why}` in {text}");
    }
}

#[allow(dead_code)]
fn exists(p: &Path) -> bool {
    p.exists()
}

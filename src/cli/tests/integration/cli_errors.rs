//! `zmtrace` refuses what it cannot do with a one-line error and a non-zero status.

use std::ffi::OsStr;
use std::path::Path;

use crate::common::*;

fn assert_one_line_error(what: &str, f: &Finished) {
    assert!(
        f.code.is_some_and(|c| c != 0),
        "{what}: zmtrace must exit non-zero, got {:?} (signal {:?})\nstderr:\n{}",
        f.code,
        f.signal,
        f.stderr
    );
    assert_eq!(
        f.stderr.trim().lines().count(),
        1,
        "{what}: the error must be one line, stderr was:\n{}",
        f.stderr
    );
}

#[test]
fn run_of_a_missing_program_fails_with_one_line_error() {
    ensure_preload_built();
    let dir = fresh_dir("missing-program");
    let f = run_zmtrace(&[
        OsStr::new("run"),
        OsStr::new("-o"),
        dir.as_os_str(),
        OsStr::new("--"),
        OsStr::new("/nonexistent/prog"),
    ]);
    assert_one_line_error("run -- /nonexistent/prog", &f);
    assert!(
        f.stderr.contains("/nonexistent/prog"),
        "the error does not name the program:\n{}",
        f.stderr
    );
    assert!(
        dump_files(&dir).is_empty(),
        "dumps written for a program that never ran: {:?}",
        dump_files(&dir)
    );
}

#[test]
fn run_into_an_unwritable_output_dir_fails_before_running_the_program() {
    ensure_preload_built();
    let dir = fresh_dir("unwritable-output");
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let marker = dir.join("the-program-ran");
    // Root ignores permission bits, so the unwritable directories are a regular file and a path
    // beneath one.
    for out in [file.clone(), file.join("sub")] {
        let f = run_zmtrace(&[
            OsStr::new("run"),
            OsStr::new("-o"),
            out.as_os_str(),
            OsStr::new("--"),
            OsStr::new("/bin/sh"),
            OsStr::new("-c"),
            OsStr::new("touch \"$0\""),
            marker.as_os_str(),
        ]);
        let what = format!("run -o {}", out.display());
        assert_one_line_error(&what, &f);
        assert!(
            f.stderr.contains(out.to_str().unwrap()),
            "{what}: the error does not name the output directory:\n{}",
            f.stderr
        );
        assert!(
            !marker.exists(),
            "{what}: the program ran although its trace could not be written"
        );
    }
}

#[test]
fn run_of_a_statically_linked_program_is_refused() {
    let libc_a = Path::new("/usr/lib/x86_64-linux-gnu/libc.a");
    require(libc_a.to_str().unwrap(), "libc6-dev");
    ensure_preload_built();
    let dir = fresh_dir("static");
    let src = dir.join("static.c");
    std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let prog = dir.join("static-prog");
    compile_c(&src, &prog, &["-static", "-O2"]);
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    let f = run_zmtrace(&[
        OsStr::new("run"),
        OsStr::new("-o"),
        out.as_os_str(),
        OsStr::new("--"),
        prog.as_os_str(),
    ]);
    assert!(
        f.code.is_some_and(|c| c != 0),
        "tracing a statically linked program must fail, got exit {:?}\nstderr:\n{}",
        f.code,
        f.stderr
    );
    assert!(
        f.stderr.contains("statically linked"),
        "the error must say the program is statically linked:\n{}",
        f.stderr
    );
}

#[test]
fn dump_info_rejects_a_file_that_is_not_a_dump() {
    let dir = fresh_dir("not-a-dump");
    let bogus = dir.join("bogus.zmt");
    std::fs::write(&bogus, "hello, I am not a zmtrace dump\n").unwrap();
    let missing = dir.join("missing.zmt");
    for path in [&bogus, &missing, &dir] {
        let f = run_zmtrace(&[OsStr::new("dump-info"), path.as_os_str()]);
        let what = format!("dump-info {}", path.display());
        assert_one_line_error(&what, &f);
        assert!(
            f.stderr.contains(path.to_str().unwrap()),
            "{what}: the error does not name the file:\n{}",
            f.stderr
        );
    }
}

#[test]
fn run_refuses_a_library_that_is_not_the_recorder() {
    ensure_preload_built();
    let program = sample("clean");
    for (lib, why) in [
        ("/etc/passwd", "not an ELF file"),
        (
            "/usr/lib/x86_64-linux-gnu/libm.so.6",
            "does not export zmtrace_leak_check",
        ),
        ("/bin/true", "does not export zmtrace_leak_check"),
        ("/nonexistent/libzmtrace.so", "is not a file"),
    ] {
        let dir = fresh_dir("wrong-lib");
        let f = run_zmtrace_env(
            &[
                OsStr::new("run"),
                OsStr::new("-o"),
                dir.as_os_str(),
                OsStr::new("--"),
                program.as_os_str(),
            ],
            &[("ZMTRACE_LIB", lib)],
        );
        assert_one_line_error(&format!("ZMTRACE_LIB={lib}"), &f);
        assert_eq!(f.code, Some(125), "{}", f.stderr);
        assert!(
            f.stderr.contains(lib) && f.stderr.contains(why),
            "ZMTRACE_LIB={lib}: {}",
            f.stderr
        );
        assert!(dump_files(&dir).is_empty(), "the program ran untraced");
    }
}

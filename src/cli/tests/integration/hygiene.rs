//! The tracer never harms the traced program: when the dump cannot be written (no directory, a
//! full disk), recording stops with one message and the program runs on to its normal end.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::common::*;

fn preload_lib() -> std::path::PathBuf {
    ensure_preload_built();
    zmtrace_bin().with_file_name("libzmtrace.so")
}

fn zmtrace_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("zmtrace:"))
        .collect()
}

#[test]
fn an_unwritable_dump_stops_recording_with_one_message() {
    let out = Command::new(sample("steady"))
        .arg("200000")
        .env("LD_PRELOAD", preload_lib())
        .env("ZMTRACE_OUT", "/nonexistent/zmtrace-dumps")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done 200000\n");
    let lines = zmtrace_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(
            "zmtrace: recording stopped: could not write the dump \
             /nonexistent/zmtrace-dumps/zmtrace.steady."
        ) && lines[0].ends_with(".zmt (No such file or directory); the program goes on"),
        "{stderr}"
    );
}

#[test]
fn a_full_disk_stops_recording_and_the_program_goes_on() {
    let dir = fresh_dir("full-disk");
    let mut cmd = Command::new(sample("steady"));
    cmd.arg("400000")
        .env("LD_PRELOAD", preload_lib())
        .env("ZMTRACE_OUT", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A file size limit stands in for a full disk: writes past it fail (EFBIG), as they would
    // with ENOSPC. SIGXFSZ is ignored so that the failing write returns an error.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: 64 * 1024,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done 400000\n");
    let lines = zmtrace_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("File too large"), "{stderr}");
    // What was written is readable, and says it is not whole.
    let dumps = dump_files(&dir);
    assert_eq!(dumps.len(), 1);
    let d = zmtrace_format::Dump::open(&dumps[0]).unwrap();
    assert!(d.file_len <= 64 * 1024);
    assert!(!d.is_complete());
    assert!(d.events().count() > 0);
}

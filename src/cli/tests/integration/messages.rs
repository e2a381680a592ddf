//! What zmtrace says when recording goes wrong, checked on the cases that used to get the wrong
//! words: a full disk (it said "the process crashed or was killed"), and `exit` while several
//! threads allocate (it named one of four). (A setuid program: see `privacy.rs`.)

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use zmtrace_format::{Dump, EndReason};

/// A tmpfs of `kib` KiB mounted at a fresh directory, unmounted when dropped. Needs root.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn new(kib: u32) -> SmallDisk {
        let dir = fresh_dir("full-disk");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kib}k,mode=0755"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a {kib} KiB tmpfs on {} (the test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `fds closeall` (1,010,001 allocations, a 38,000-byte log) traced onto `disk`; checks that
/// the program ran on unharmed.
fn fds_closeall_onto(disk: &SmallDisk) -> Finished {
    let log = fresh_dir("full-disk-log").join("log");
    let f = run_zmtrace(&[
        "run".as_ref(),
        "-o".as_ref(),
        disk.path().as_os_str(),
        "--".as_ref(),
        sample("fds").as_os_str(),
        "closeall".as_ref(),
        log.as_os_str(),
    ]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    assert_eq!(std::fs::read(&log).unwrap().len(), 38_000);
    assert!(f.stdout.contains("allocations 1000000"), "{}", f.stdout);
    f
}

#[test]
fn a_full_disk_stops_the_recording_with_the_reason_and_a_readable_dump() {
    // Smaller than the dump and the 16 KiB the recorder keeps in reserve after it: 1,010,001
    // allocations take about 14 KB in version 5 (70 KB in version 3, megabytes before it), and the
    // first flushes (modules, stacks, the first blocks) fit with the reserve.
    let disk = SmallDisk::new(24);
    let f = fds_closeall_onto(&disk);
    // One line from the recorder, the reason again in the summary.
    assert_eq!(
        f.stderr
            .matches("zmtrace: recording stopped: could not write the dump")
            .count(),
        1,
        "{}",
        f.stderr
    );
    assert!(
        f.stderr
            .contains("(No space left on device); the program goes on"),
        "{}",
        f.stderr
    );
    assert!(
        f.stderr.contains(
            "zmtrace:   recording stopped: could not write the dump (No space left on device)"
        ),
        "{}",
        f.stderr
    );
    assert!(!f.stderr.contains("crashed or was killed"), "{}", f.stderr);
    // Every record written is whole, and the last says why the dump ends there.
    let paths = dump_files(disk.path());
    assert_eq!(paths.len(), 1, "{}", f.stderr);
    let dump = Dump::open(&paths[0]).unwrap();
    assert_eq!(dump.bytes_lost, 0, "{:?}", dump.warnings);
    assert!(dump.warnings.is_empty(), "{:?}", dump.warnings);
    let end = dump.end.expect("an End record in the reserve");
    assert_eq!(
        (end.reason, end.status),
        (EndReason::WriteError, libc::ENOSPC)
    );
    assert!(dump.count_events() > 0);
    assert!(!dump.is_complete());
    let info = dump_info(&paths[0]);
    assert!(
        info.contains(
            "ending:    recording stopped: could not write the dump (No space left on device)"
        ),
        "{info}"
    );
}

#[test]
fn a_disk_too_full_for_the_first_write_still_leaves_a_dump_that_says_why() {
    // Less free than the reserve: the first write (header, process, modules) finds no room, and
    // the dump is its header, its process and an `End`, not an `End` alone that reads as no dump.
    let disk = SmallDisk::new(8);
    let f = fds_closeall_onto(&disk);
    assert!(!f.stderr.contains("no dump was written"), "{}", f.stderr);
    assert!(!f.stderr.contains("damaged"), "{}", f.stderr);
    assert!(
        f.stderr.contains(
            "zmtrace:   recording stopped: could not write the dump (No space left on device)"
        ),
        "{}",
        f.stderr
    );
    let paths = dump_files(disk.path());
    assert_eq!(paths.len(), 1, "{}", f.stderr);
    let dump = Dump::open(&paths[0]).unwrap();
    assert!(dump.warnings.is_empty(), "{:?}", dump.warnings);
    assert_eq!(dump.count_events(), 0);
    let end = dump.end.expect("an End record");
    assert_eq!(
        (end.reason, end.status),
        (EndReason::WriteError, libc::ENOSPC)
    );
}

#[test]
fn exit_while_four_threads_allocate_names_the_four() {
    for i in 0..3 {
        let run = run_traced(&sample("busy"), &["exit"]);
        assert_eq!(run.code, Some(0), "run {i}: {}", run.describe());
        let dump = run.only_dump();
        assert_eq!(dump.end.map(|e| e.reason), Some(EndReason::Exit));
        assert_eq!(dump.late_threads.len(), 4, "run {i}: {}", run.describe());
        assert!(
            run.stderr.contains(
                "zmtrace:   the process did not end normally: exit while 4 other threads still \
                 allocated"
            ),
            "run {i}: {}",
            run.describe()
        );
    }
}

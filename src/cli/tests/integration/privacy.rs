//! Private by default: dumps are 0600 and a created output directory 0700; nothing zmtrace
//! creates follows a symlink planted in a shared directory; a setuid program is refused by
//! `zmtrace run` with the reason, and not recorded by the recorder itself; `--no-argv` keeps a
//! password on the command line out of the dump. These tests run as root (as the did):
//! they make files owned by `nobody`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use zmtrace_format::Dump;

const NOBODY: u32 = 65534;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e} (these tests run as root)", p.display()));
}

#[test]
fn dumps_are_0600_and_a_created_output_directory_is_0700() {
    let base = fresh_dir("modes");
    let out = base.join("new").join("dumps");
    let f = run_zmtrace(&[
        "run".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "--".as_ref(),
        sample("leaky").as_os_str(),
    ]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    assert_eq!(mode(&base.join("new")), 0o700);
    assert_eq!(mode(&out), 0o700);
    let dumps = dump_files(&out);
    assert_eq!(dumps.len(), 1, "{}", f.stderr);
    assert_eq!(mode(&dumps[0]), 0o600);
    // An existing directory keeps its mode.
    let shared = fresh_dir("modes-shared");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let f = run_zmtrace(&[
        "run".as_ref(),
        "-o".as_ref(),
        shared.as_os_str(),
        "--".as_ref(),
        sample("leaky").as_os_str(),
    ]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    assert_eq!(mode(&shared), 0o1777);
    assert_eq!(mode(&dump_files(&shared)[0]), 0o600);
}

#[test]
fn symlinks_planted_for_the_coming_pids_are_left_untouched() {
    // A shared directory where someone planted, for each of the next few thousand pids, the
    // names zmtrace run and the recorder would create, as symlinks to a file of ours.
    let shared = fresh_dir("planted");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let precious = fresh_dir("planted-target").join("precious.txt");
    std::fs::write(&precious, "root's data\n").unwrap();
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for pid in last + 1..last + 4000 {
        for name in [
            format!(".zmtrace-probe-{pid}"),
            format!("zmtrace.leaky.{pid}.zmt"),
        ] {
            std::os::unix::fs::symlink(&precious, shared.join(name)).unwrap();
        }
    }
    let f = run_zmtrace(&[
        "run".as_ref(),
        "-o".as_ref(),
        shared.as_os_str(),
        "--".as_ref(),
        sample("leaky").as_os_str(),
    ]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "root's data\n");
    // The dump went to a name of its own, a regular file.
    let dumps: Vec<PathBuf> = dump_files(&shared)
        .into_iter()
        .filter(|p| !std::fs::symlink_metadata(p).unwrap().is_symlink())
        .collect();
    assert_eq!(dumps.len(), 1, "{}", f.stderr);
    assert!(Dump::open(&dumps[0]).unwrap().is_complete(), "{}", f.stderr);
}

#[test]
fn no_argv_keeps_the_arguments_out_of_the_dump() {
    let args = ["rlimit", "--password=hunter2"];
    let with = run_traced(&sample("fds"), &args);
    assert_eq!(with.code, Some(0), "{}", with.describe());
    let bytes = std::fs::read(&with.only_dump().path).unwrap();
    assert!(
        bytes.windows(7).any(|w| w == b"hunter2"),
        "without --no-argv the command line is in the dump"
    );

    let run = run_traced_opts(&sample("fds"), &args, &["--no-argv"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let dump = run.only_dump();
    let bytes = std::fs::read(&dump.path).unwrap();
    assert!(
        !bytes.windows(7).any(|w| w == b"hunter2"),
        "the password is in the dump"
    );
    let p = process(dump);
    let prog = sample("fds").to_str().unwrap().to_owned();
    assert_eq!(p.argv, std::slice::from_ref(&prog));
    assert_eq!(p.args_left_out, 2);
    let info = dump_info(&dump.path);
    assert!(
        info.contains(&format!("command:   {prog} (2 arguments left out)")),
        "{info}"
    );
}

/// A copy of `program` owned by nobody, set-user-ID, in a directory of its own.
fn setuid_copy(program: &Path, stem: &str) -> PathBuf {
    let copy = fresh_dir(stem).join(program.file_name().unwrap());
    copy_executable(program, &copy);
    chown(&copy, NOBODY, NOBODY);
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o4755)).unwrap();
    copy
}

#[test]
fn run_refuses_a_setuid_program_and_says_why() {
    let prog = setuid_copy(&sample("leaky"), "setuid");
    let out = fresh_dir("setuid-out");
    let f = run_zmtrace(&[
        "run".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "--".as_ref(),
        prog.as_os_str(),
    ]);
    assert_eq!(f.code, Some(126), "{}", f.stderr);
    assert_eq!(f.stderr.trim().lines().count(), 1, "{}", f.stderr);
    assert!(
        f.stderr
            .contains("is set-user-ID (it runs as nobody (uid 65534))")
            && f.stderr.contains("secure-execution mode")
            && f.stderr.contains("cannot be traced"),
        "{}",
        f.stderr
    );
    assert!(dump_files(&out).is_empty());
}

/// `samples/zredis.c` linked with libzmalloc.a: a front end that does not depend on the loader,
/// so that a set-user-ID copy reaches the recorder (LD_PRELOAD would be ignored).
fn zredis() -> PathBuf {
    let lib = cargo_build(&["-p", "zmtrace-zmalloc"], None).join("libzmalloc.a");
    let out = scratch_dir().join("samples").join("zredis-privacy");
    let include = format!(
        "-I{}",
        workspace_root().join("src/zmalloc/include").display()
    );
    let res = Command::new("cc")
        .args(SAMPLE_CFLAGS)
        .arg(&include)
        .arg("-o")
        .arg(&out)
        .arg(workspace_root().join("samples/zredis.c"))
        .arg(&lib)
        .args(["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl"])
        .output()
        .expect("cc");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    out
}

#[test]
fn the_recorder_records_nothing_in_a_setuid_process() {
    let prog = setuid_copy(&zredis(), "setuid-zredis");
    // A directory the program (running as nobody) could write its dump to.
    let out = PathBuf::from(format!("/tmp/zmtrace-secure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let res = Command::new(&prog)
        .env("ZMTRACE", "1")
        .env("ZMTRACE_OUT", &out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr).into_owned();
    let left = dump_files(&out);
    let _ = std::fs::remove_dir_all(&out);
    assert_eq!(res.status.code(), Some(0), "{stderr}");
    assert!(left.is_empty(), "a setuid process was recorded: {left:?}");
    assert!(
        stderr.contains(
            "zmtrace: not recording a set-user-ID, set-group-ID or file-capability program"
        ),
        "{stderr}"
    );
    // The same program without the bit is recorded (the test can fail).
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = fresh_dir("unsecure-zredis");
    let res = Command::new(&prog)
        .env("ZMTRACE", "1")
        .env("ZMTRACE_OUT", &out)
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(0));
    assert_eq!(dump_files(&out).len(), 1);
}

//! Snapshots on demand: the snapshot signal (SIGUSR2), `--snapshot-every`, `--snapshot-at-rss`,
//! and `zmtrace export --at N` exporting the heap as of one of them, checked with `go tool pprof`
//! against what `samples/phases.c` and `samples/rssgrow.c` hold at that moment.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::common::*;

const PHASE_1_INUSE: [(&str, u64); 1] = [("zs_phase_one", 4000)];
const END_INUSE: [(&str, u64); 2] = [("zs_phase_one", 2000), ("zs_phase_three", 500)];
const MIB: u64 = 1 << 20;

fn map(v: &[(&str, u64)]) -> BTreeMap<String, u64> {
    v.iter().map(|(f, n)| (f.to_string(), *n)).collect()
}

/// `zmtrace run -o DIR OPTS -- PROGRAM ARGS` with the program's stdin ours.
struct Traced {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Receiver<String>,
    err: std::thread::JoinHandle<String>,
    dir: PathBuf,
}

impl Traced {
    fn start(program: &Path, args: &[&str], opts: &[&str], env: &[(&str, &str)]) -> Traced {
        ensure_preload_built();
        let dir = fresh_dir("snapshots");
        let mut child = Command::new(zmtrace_bin())
            .args(["run", "-o", dir.to_str().unwrap()])
            .args(opts)
            .arg("--")
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start zmtrace");
        let stdin = child.stdin.take();
        let out = pipe_lines(child.stdout.take().unwrap());
        let err = read_in_thread(child.stderr.take().unwrap());
        Traced {
            child,
            stdin,
            out,
            err,
            dir,
        }
    }

    fn expect(&self, want: &str) {
        let line = self
            .out
            .recv_timeout(RUN_TIMEOUT)
            .unwrap_or_else(|_| panic!("no {want:?} from the program"));
        assert_eq!(line, want);
    }

    fn next(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// The traced program: zmtrace's one child.
    fn program_pid(&self) -> i32 {
        let z = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{z}/task/{z}/children")).unwrap();
        children.split_whitespace().next().unwrap().parse().unwrap()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) of the program we started.
        assert_eq!(unsafe { libc::kill(self.program_pid(), sig) }, 0);
    }

    fn dump(&self) -> Option<PathBuf> {
        dump_files(&self.dir).into_iter().next()
    }

    /// Waits until the dump being written holds `n` snapshots.
    fn wait_snapshots(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let have = self
                .dump()
                .and_then(|p| Dump::open(&p).ok())
                .map_or(0, |d| d.snapshots.len());
            if have >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{have} snapshots, want {n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets zmtrace end; its exit code, the program's stdout lines after the last read, stderr,
    /// and the dump.
    fn finish(mut self) -> (Option<i32>, Vec<String>, String, PathBuf) {
        drop(self.stdin.take());
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "zmtrace did not end");
            std::thread::sleep(Duration::from_millis(10));
        };
        let rest: Vec<String> = self.out.try_iter().collect();
        let err = std::mem::replace(&mut self.err, std::thread::spawn(String::new));
        let stderr = err.join().unwrap();
        let dump = self.dump().unwrap_or_else(|| panic!("no dump:\n{stderr}"));
        (status.code(), rest, stderr, dump)
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        // SAFETY: the process group we started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `zmtrace export DUMP [--at N]`, then `go tool pprof -top` of `t`: flat per function.
fn exported(dump: &Path, at: Option<&str>, t: &str) -> BTreeMap<String, u64> {
    require("go", "golang-go");
    let out = fresh_dir("snap-export").join("p.pb.gz");
    let mut args = vec![
        "export",
        dump.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    if let Some(n) = at {
        args.extend(["--at", n]);
    }
    zmtrace_ok(&args);
    pprof_flat(&out, t, &[])
}

/// SIGUSR2 in phase 1 leaves a snapshot whose export is phase 1's heap, while the export of the
/// whole dump is the end's; the same in an aggregated recording (its counters and live set).
#[test]
fn the_snapshot_signal_keeps_phase_one_while_the_dump_goes_on_to_the_end() {
    for opts in [&[][..], &["--aggregate"][..]] {
        let mut t = Traced::start(&sample("phases"), &["0"], opts, &[]);
        t.expect("phase 1");
        t.signal(libc::SIGUSR2);
        t.wait_snapshots(1);
        t.next();
        t.expect("phase 2");
        t.next();
        let (code, rest, stderr, dump) = t.finish();
        assert_eq!(code, Some(0), "{opts:?}: {stderr}");
        assert_eq!(rest, ["done"], "the program goes on as untraced");
        assert_eq!(
            exported(&dump, Some("1"), "inuse_space"),
            map(&PHASE_1_INUSE),
            "{opts:?}"
        );
        assert_eq!(
            exported(&dump, Some("1"), "inuse_objects"),
            map(&[("zs_phase_one", 4)]),
            "{opts:?}"
        );
        assert_eq!(
            exported(&dump, None, "inuse_space"),
            map(&END_INUSE),
            "{opts:?}"
        );
        let list = zmtrace_ok(&["export", dump.to_str().unwrap(), "--at", "list"]);
        assert_eq!(list.lines().count(), 1, "{list}");
        assert!(list.trim_start().starts_with("1 "), "{list}");
        let info = zmtrace_ok(&["dump-info", dump.to_str().unwrap()]);
        assert!(info.contains("snapshots: 1"), "{info}");
        // Only one snapshot: a second is a one-line error.
        let f = run_zmtrace(&[
            "export",
            dump.to_str().unwrap(),
            "--at",
            "2",
            "-o",
            "/dev/null",
        ]);
        assert_eq!(f.code, Some(2), "{}", f.stderr);
        assert_eq!(f.stderr.lines().count(), 1, "{}", f.stderr);
        assert!(f.stderr.contains("has 1 snapshot"), "{}", f.stderr);
    }
}

/// `--snapshot-every 100ms` over a run of about a second: about ten snapshots (a loose range:
/// the machine is shared), each later than the one before.
#[test]
fn snapshot_every_100ms_over_a_second_gives_about_ten() {
    let mut t = Traced::start(
        &sample("phases"),
        &["0"],
        &["--snapshot-every", "100ms"],
        &[],
    );
    t.expect("phase 1");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    t.next();
    t.expect("phase 2");
    t.next();
    let (code, rest, stderr, dump) = t.finish();
    let ran = started.elapsed();
    assert_eq!(
        (code, rest.as_slice()),
        (Some(0), &["done".to_string()][..]),
        "{stderr}"
    );
    let d = Dump::open(&dump).unwrap();
    let n = d.snapshots.len();
    assert!((5..=20).contains(&n), "{n} snapshots in {ran:?}");
    assert!(d.snapshots.windows(2).all(|w| w[0].ts_ns < w[1].ts_ns));
    let gaps: Vec<u64> = d
        .snapshots
        .windows(2)
        .map(|w| w[1].ts_ns - w[0].ts_ns)
        .collect();
    let median = {
        let mut g = gaps.clone();
        g.sort_unstable();
        g[g.len() / 2]
    };
    assert!(
        (50_000_000..=300_000_000).contains(&median),
        "median gap {median} ns: {gaps:?}"
    );
    // Every one of them is a heap the sample had: phase 1's (4000) or, after, phase 2's (8000).
    for i in 1..=n {
        let at = i.to_string();
        let total: u64 = exported(&dump, Some(&at), "inuse_space").values().sum();
        assert!(matches!(total, 4000 | 8000), "snapshot {i}: {total}");
    }
}

/// `--snapshot-at-rss 50` with a 64 MiB limit (ZMTRACE_MEMORY_LIMIT): the program grows by 1 MiB
/// blocks to 64 MiB and is SIGKILLed (as by the OOM killer); the dump, cut short, holds one
/// snapshot from before, with part of the growth.
#[test]
fn snapshot_at_rss_leaves_a_profile_from_before_the_kill() {
    let limit = (64 * MIB).to_string();
    let t = Traced::start(
        &sample("rssgrow"),
        &[],
        &["--snapshot-at-rss", "50"],
        &[("ZMTRACE_MEMORY_LIMIT", &limit)],
    );
    t.expect("grown");
    let (code, _, stderr, dump) = t.finish();
    assert_eq!(code, Some(128 + libc::SIGKILL), "{stderr}");
    assert!(
        stderr.contains("50% of 64.0 MiB from ZMTRACE_MEMORY_LIMIT"),
        "{stderr}"
    );
    let d = Dump::open(&dump).unwrap();
    assert!(!d.is_complete(), "killed: no end");
    assert_eq!(d.snapshots.len(), 1, "one crossing, one snapshot");
    let at = exported(&dump, Some("1"), "inuse_space");
    let grown = at.get("zs_grow_rss").copied().unwrap_or(0);
    // RSS 32 MiB = the heap grown so far + what the process had before (the program, libc,
    // the recorder: a few MiB); never the whole 64.
    assert_eq!(grown % MIB, 0, "{at:?}");
    assert!((16 * MIB..64 * MIB).contains(&grown), "{at:?}");
    assert_eq!(
        exported(&dump, None, "inuse_space"),
        map(&[("zs_grow_rss", 64 * MIB)])
    );
}

/// A program with its own SIGUSR2 handler keeps it: its handler runs, zmtrace says once that
/// snapshots on that signal are off, and none is taken.
#[test]
fn a_program_that_handles_sigusr2_keeps_it() {
    let mut t = Traced::start(&sample("phases"), &["0", "own-usr2"], &[], &[]);
    t.expect("phase 1");
    t.signal(libc::SIGUSR2);
    t.expect("usr2");
    t.signal(libc::SIGUSR2);
    t.expect("usr2");
    t.next();
    t.expect("phase 2");
    t.next();
    let (code, rest, stderr, dump) = t.finish();
    assert_eq!(
        (code, rest.as_slice()),
        (Some(0), &["done".to_string()][..]),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("handles the snapshot signal itself").count(),
        1,
        "{stderr}"
    );
    assert!(Dump::open(&dump).unwrap().snapshots.is_empty());
    // --snapshot-signal picks another one, which works.
    let mut t = Traced::start(
        &sample("phases"),
        &["0", "own-usr2"],
        &["--snapshot-signal", "USR1"],
        &[],
    );
    t.expect("phase 1");
    t.signal(libc::SIGUSR1);
    t.wait_snapshots(1);
    t.next();
    t.next();
    let (code, _, stderr, dump) = t.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("handles the snapshot signal"), "{stderr}");
    assert_eq!(
        exported(&dump, Some("1"), "inuse_space"),
        map(&PHASE_1_INUSE)
    );
}

/// Bad snapshot options are one-line errors before anything runs.
#[test]
fn bad_snapshot_options_are_refused() {
    let dir = fresh_dir("snap-bad");
    let phases = sample("phases");
    let cases: [&[&str]; 7] = [
        &["--snapshot-signal", "TERM"],
        &["--snapshot-signal", "NOPE"],
        &["--snapshot-every", "10"],
        &["--snapshot-every", "0ms"],
        &["--snapshot-at-rss", "150"],
        &["--snapshot-at-rss", "x"],
        &["--snapshot-signal", "none", "--snapshot-every", "1s"],
    ];
    for opts in cases {
        let mut args = vec!["run", "-o", dir.to_str().unwrap()];
        args.extend(opts);
        args.extend(["--", phases.to_str().unwrap()]);
        let f = run_zmtrace(&args);
        assert_eq!(f.code, Some(2), "{opts:?}: {}", f.stderr);
        assert_eq!(f.stderr.lines().count(), 1, "{opts:?}: {}", f.stderr);
        assert!(f.stdout.is_empty(), "{opts:?}: the program ran");
    }
}

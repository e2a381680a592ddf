//! The harness shared by the integration tests that run the C samples of `samples/` under
//! `zmtrace run` and check the dumps against the numbers the samples document.
//!
//! - [`ensure_preload_built`]: builds `libzmtrace.so` next to the `zmtrace` binary under test.
//! - [`sample`]: compiles `samples/<name>.c` with `cc -O2 -g -fomit-frame-pointer -pthread` (no
//!   frame pointers: the recorder has to unwind with unwind tables).
//! - [`run_traced`]: `zmtrace run -o <fresh dir> -- <program> <args>` with a timeout, and every
//!   `zmtrace.*.zmt` in the directory read back.
//! - [`Symbolizer`]: a test-only symbolizer (DWARF with inlined frames, else the symbol table).
//! - [`replay`]: replays a dump's events in sequence order and keeps the part that belongs to the
//!   sample (stack contains a `zs_` function; a free belongs to the sample when the block it frees
//!   does).
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use zmtrace_format::{AllocKind, Dump, EndReason, Event, EventKind, Origin};

/// A traced run that takes longer than this is taken for a deadlock: its process group is killed
/// and the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

pub fn zmtrace_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_zmtrace"))
}

/// Where the tests put compiled samples and run directories.
pub fn scratch_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("zmtrace-tests")
}

/// Runs `cargo build --quiet ARGS` with the test's profile; returns the profile directory of
/// the target directory it built into (`target_dir`, or the one the tests run from).
pub fn cargo_build(args: &[&str], target_dir: Option<&Path>) -> PathBuf {
    let bin = zmtrace_bin();
    let profile_dir = bin.parent().expect("zmtrace binary has a directory");
    let profile = profile_dir.file_name().and_then(OsStr::to_str);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet"])
        .args(args);
    match profile {
        Some("release") => {
            cmd.arg("--release");
        }
        Some("debug") => {}
        other => panic!(
            "unexpected profile directory {other:?} of {}",
            bin.display()
        ),
    }
    let target = target_dir
        .map(Path::to_path_buf)
        .or_else(|| profile_dir.parent().map(Path::to_path_buf))
        .expect("a target directory");
    cmd.arg("--target-dir").arg(&target);
    let out = cmd.stdin(Stdio::null()).output().expect("cannot run cargo");
    assert!(
        out.status.success(),
        "cargo build {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    target.join(profile.unwrap())
}

/// Builds `zmtrace-preload` (once per test binary), with the test's profile, so that
/// `libzmtrace.so` sits next to the `zmtrace` binary, where `zmtrace run` looks for it.
pub fn ensure_preload_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = cargo_build(&["-p", "zmtrace-preload"], None);
        let so = dir.join("libzmtrace.so");
        assert!(
            so.is_file(),
            "{} is missing after building zmtrace-preload",
            so.display()
        );
    });
}

fn unique(stem: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{stem}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh, empty directory under the scratch directory.
pub fn fresh_dir(stem: &str) -> PathBuf {
    let dir = scratch_dir().join("runs").join(unique(stem));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir
}

/// Copies an executable that a test then runs. Not `std::fs::copy`: while this (many-threaded)
/// process holds the copy open for writing, another test's `Command` may fork, and its child
/// keeps the descriptor until it execs; running the copy then fails with ETXTBSY ("Text file
/// busy": demo.rs failed so once in CI). `cp` holds it in a process of its own, and is gone
/// before this returns.
pub fn copy_executable(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg(from)
        .arg(to)
        .status()
        .unwrap_or_else(|e| panic!("cp: {e}"));
    assert!(st.success(), "cp {} {}: {st}", from.display(), to.display());
}

/// Fails the test (never skips it: a check that does not run would pass for nothing) when
/// `program` (a command on PATH, or an absolute path) is missing, naming the Debian package that
/// has it and the command that installs everything the tests need.
pub fn require(program: &str, package: &str) {
    let found = if program.starts_with('/') {
        Path::new(program).exists()
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).any(|d| d.join(program).is_file())
    };
    assert!(
        found,
        "{program} is not installed (Debian package {package}): run scripts/test.sh as root, which \
         installs what the tests need, or apt-get install {package}"
    );
}

/// Compiles C (or, for a `.cpp` file, C++) source with `cc` (`c++`) plus `flags` into `out`
/// (the `-l` ones after the source);
/// panics with the compiler's output on failure. Warnings are printed, not fatal.
pub fn compile_c(src: &Path, out: &Path, flags: &[&str]) {
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let tmp = out.with_extension(format!("tmp{}", unique("")));
    let (compiler, package) = if src.extension().is_some_and(|e| e == "cpp") {
        ("c++", "g++")
    } else {
        ("cc", "gcc")
    };
    require(compiler, package);
    // Libraries (`-l…`) after the source, whose undefined symbols they resolve.
    let (libs, flags): (Vec<&str>, Vec<&str>) = flags.iter().partition(|f| f.starts_with("-l"));
    let res = Command::new(compiler)
        .args(&flags)
        .arg("-o")
        .arg(&tmp)
        .arg(src)
        .args(&libs)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run cc");
    let diag = String::from_utf8_lossy(&res.stderr);
    assert!(
        res.status.success(),
        "cc {flags:?} {} failed ({}):\n{diag}",
        src.display(),
        res.status
    );
    if !diag.trim().is_empty() {
        eprintln!("cc {}:\n{diag}", src.display());
    }
    // Renamed into place: a program from an earlier test binary may still be running.
    std::fs::rename(&tmp, out).unwrap();
}

/// The flags every sample is built with: optimized, with debug info, and without frame pointers,
/// so that the stacks in the dumps prove the recorder unwinds with the unwind tables.
pub const SAMPLE_CFLAGS: &[&str] = &["-O2", "-g", "-fomit-frame-pointer", "-pthread", "-Wall"];

/// `samples/<name>.c` (or `.cpp`), compiled (once per test binary); returns the executable's
/// absolute path.
pub fn sample(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let mut src = workspace_root().join("samples").join(format!("{name}.c"));
    if !src.exists() {
        src.set_extension("cpp");
    }
    let out = scratch_dir().join("samples").join(name);
    compile_c(&src, &out, SAMPLE_CFLAGS);
    built.insert(name.to_owned(), out.clone());
    out
}

/// `samples/<name>.c` compiled as the shared library `lib<name>.so` beside the samples (once per
/// test binary); returns its absolute path.
pub fn sample_library(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let src = workspace_root().join("samples").join(format!("{name}.c"));
    let out = scratch_dir().join("samples").join(format!("lib{name}.so"));
    let mut flags = SAMPLE_CFLAGS.to_vec();
    flags.extend(["-shared", "-fPIC"]);
    compile_c(&src, &out, &flags);
    built.insert(name.to_owned(), out.clone());
    out
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Finished {
    /// The exit code, or None when the process was killed by a signal.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `zmtrace` with `args` in its own process group; after [`RUN_TIMEOUT`] the whole group is
/// killed and the test fails (a deadlocked traced process must not hang the test suite).
pub fn run_zmtrace<S: AsRef<OsStr>>(args: &[S]) -> Finished {
    run_zmtrace_env(args, &[])
}

/// `zmtrace ARGS`, which must succeed; its stdout.
pub fn zmtrace_ok(args: &[&str]) -> String {
    let f = run_zmtrace(args);
    assert_eq!(
        f.code,
        Some(0),
        "zmtrace {args:?} failed:\n{}{}",
        f.stdout,
        f.stderr
    );
    f.stdout
}

/// `go tool pprof ARGS SOURCE` (a file or a URL), which must succeed; its stdout. A URL's
/// profile is saved in a fresh `PPROF_TMPDIR`, not the home directory.
pub fn go_pprof(args: &[&str], source: impl AsRef<OsStr>) -> String {
    require("go", "golang-go");
    let source = source.as_ref();
    let out = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .arg(source)
        .env("PPROF_TMPDIR", fresh_dir("pprof-tmp"))
        .stdin(Stdio::null())
        .output()
        .expect("cannot run go tool pprof");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "go tool pprof {args:?} {} failed ({}):\n{stdout}{stderr}",
        source.to_string_lossy(),
        out.status
    );
    stdout
}

/// `go tool pprof -top` of sample type `t`, every node, in plain units (and `extra`): flat value
/// per function, functions with a flat value of 0 left out.
pub fn pprof_flat(source: impl AsRef<OsStr>, t: &str, extra: &[&str]) -> BTreeMap<String, u64> {
    let index = format!("-sample_index={t}");
    let mut args = vec![
        "-top",
        "-nodecount=100000",
        "-nodefraction=0",
        "-edgefraction=0",
        // Bytes as bytes, never scaled to kB (counts then print with a B too).
        "-unit=B",
        &index,
    ];
    args.extend(extra);
    let text = go_pprof(&args, source);
    let mut out = BTreeMap::new();
    let mut rows = false;
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.first() == Some(&"flat") {
            rows = true;
            continue;
        }
        if !rows || cols.len() < 6 {
            continue;
        }
        let flat: u64 = cols[0]
            .trim_end_matches('B')
            .parse()
            .unwrap_or_else(|e| panic!("pprof row {line:?}: flat {:?}: {e}\n{text}", cols[0]));
        if flat > 0 {
            // pprof marks a function seen only inlined; `report` names it plainly.
            let name = cols[5..].join(" ");
            let name = name.strip_suffix(" (inline)").unwrap_or(&name).to_string();
            assert!(
                out.insert(name.clone(), flat).is_none(),
                "{name} twice in:\n{text}"
            );
        }
    }
    assert!(rows, "no rows in go tool pprof -top:\n{text}");
    out
}

/// The lines of a pipe, on a channel, as they come.
pub fn pipe_lines(pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Pids of the processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if rest.split_whitespace().nth(1) == Some(&pid.to_string()) {
            v.push(child);
        }
    }
    v
}

/// [`run_zmtrace`] with extra environment variables (e.g. `ZMTRACE_UNWIND`).
pub fn run_zmtrace_env<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Finished {
    if args.first().is_some_and(|a| a.as_ref() == "run") {
        // `zmtrace run` needs the preload library next to it (cargo test does not build it).
        ensure_preload_built();
    }
    let mut cmd = Command::new(zmtrace_bin());
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // No core files from the crash tests.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        });
    }
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", zmtrace_bin().display()));
    let pgid = child.id() as i32;
    let out = read_in_thread(child.stdout.take().unwrap());
    let err = read_in_thread(child.stderr.take().unwrap());
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for zmtrace") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if status.is_none() {
        // `zmtrace run` puts the program in a process group of its own (the program's pid): a
        // program that hangs would outlive the kill below, hold the pipes open, and hang the
        // test instead of failing it. Its children's groups go first, while they are still its
        // children.
        for c in children_of(pgid as u32) {
            unsafe {
                libc::kill(-(c as i32), libc::SIGKILL);
            }
        }
    }
    // Whatever is left of the process group (nothing, normally) goes, so the pipes close.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let Some(status) = status else {
        let _ = child.wait();
        let stderr = err.join().unwrap_or_default();
        panic!(
            "zmtrace {shown:?} did not finish within {RUN_TIMEOUT:?} (deadlock?); its process \
             group was killed. stderr:\n{stderr}"
        );
    };
    Finished {
        code: status.code(),
        signal: status.signal(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Reads a child's pipe to the end on a thread of its own (so that a full pipe never blocks the
/// child while the test waits for it).
pub fn read_in_thread(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A program run under `zmtrace run`, with its dumps.
#[derive(Debug)]
pub struct Run {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub dir: PathBuf,
    /// `zmtrace run`'s exit code (the program's, or 128 + signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Every `zmtrace.*.zmt` in the output directory, oldest process first.
    pub dumps: Vec<Dump>,
    /// Wall clock (Unix ns) just before `zmtrace run` started and just after it ended.
    pub started_unix_ns: u64,
    pub finished_unix_ns: u64,
}

pub fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// When an event happened, in Unix ns: its process's start plus its timestamp.
pub fn unix_ns(dump: &Dump, e: &Event) -> u64 {
    process(dump).start_unix_ns + e.ts_ns
}

/// `zmtrace run -o <fresh dir> -- program args...`, then every dump in the directory read with
/// [`Dump::open`] (a dump that cannot be opened fails the test).
pub fn run_traced(program: &Path, args: &[&str]) -> Run {
    run_traced_env(program, args, &[])
}

/// [`run_traced`] with extra environment variables for zmtrace and the traced program.
pub fn run_traced_env(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    run_traced_opts(program, args, &[], env)
}

/// [`run_traced_env`] with options for `zmtrace run` itself (e.g. `--aggregate`).
pub fn run_traced_opts(
    program: &Path,
    args: &[&str],
    run_opts: &[&str],
    env: &[(&str, &str)],
) -> Run {
    ensure_preload_built();
    let stem = program.file_name().unwrap().to_string_lossy().into_owned();
    let dir = fresh_dir(&stem);
    let mut argv: Vec<&OsStr> = vec!["run".as_ref(), "-o".as_ref(), dir.as_os_str()];
    argv.extend(run_opts.iter().map(OsStr::new));
    argv.push("--".as_ref());
    argv.push(program.as_os_str());
    argv.extend(args.iter().map(|a| OsStr::new(*a)));
    let started_unix_ns = now_unix_ns();
    let fin = run_zmtrace_env(&argv, env);
    let finished_unix_ns = now_unix_ns();
    let mut dumps = Vec::new();
    for path in dump_files(&dir) {
        match Dump::open(&path) {
            Ok(d) => dumps.push(d),
            Err(e) => panic!(
                "a dump of `zmtrace run {} {}` cannot be read: {e}\nzmtrace stderr:\n{}",
                program.display(),
                args.join(" "),
                fin.stderr
            ),
        }
    }
    dumps.sort_by_key(|d| {
        let p = d.process.as_ref();
        (
            p.map_or(0, |p| p.start_unix_ns),
            p.map_or(0, |p| p.pid),
            d.path.clone(),
        )
    });
    Run {
        program: program.to_owned(),
        args: args.iter().map(|s| s.to_string()).collect(),
        dir,
        code: fin.code,
        stdout: fin.stdout,
        stderr: fin.stderr,
        dumps,
        started_unix_ns,
        finished_unix_ns,
    }
}

/// The files named `zmtrace.*.zmt` in `dir`, sorted by name.
pub fn dump_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy();
                    n.starts_with("zmtrace.") && n.ends_with(".zmt")
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `zmtrace dump-info PATH`: stdout and stderr, for failure messages.
pub fn dump_info(path: &Path) -> String {
    let f = run_zmtrace(&[OsStr::new("dump-info"), path.as_os_str()]);
    format!(
        "$ zmtrace dump-info {} (exit {:?})\n{}{}",
        path.display(),
        f.code,
        f.stdout,
        f.stderr
    )
}

impl Run {
    /// Everything useful to see when an assertion about this run fails: the command, its exit
    /// status and stderr, and `zmtrace dump-info` of every dump.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "--- zmtrace run -o {} -- {} {}\nexit code: {:?}\nstderr:\n{}\n",
            self.dir.display(),
            self.program.display(),
            self.args.join(" "),
            self.code,
            self.stderr
        );
        for d in &self.dumps {
            s += &dump_info(&d.path);
            s += &format!(
                "(read back: {} events, {} stacks, {} modules, {} inherited, end {:?}, \
                 warnings {:?})\n",
                d.count_events(),
                d.stacks.len(),
                d.modules.len(),
                d.inherited.len(),
                d.end,
                d.warnings
            );
        }
        s
    }

    /// The one dump of a run that must have exactly one.
    pub fn only_dump(&self) -> &Dump {
        assert_eq!(
            self.dumps.len(),
            1,
            "expected exactly one dump\n{}",
            self.describe()
        );
        &self.dumps[0]
    }
}

/// A dump's start time and the time of each of its events lie within the run that wrote it
/// (by the wall clock: the process started after `zmtrace run` did, and every event happened
/// before `zmtrace run` ended).
pub fn assert_times_within_run(run: &Run, dump: &Dump) {
    let start = process(dump).start_unix_ns;
    let last = dump.events().map(|e| e.ts_ns).max().unwrap_or(0);
    let ms = |t: u64| (t as f64 - run.started_unix_ns as f64) / 1e6;
    assert!(
        run.started_unix_ns <= start && start.saturating_add(last) <= run.finished_unix_ns,
        "{}: times relative to the start of `zmtrace run`: the process starts at {:.3} ms and its \
         last event is at {:.3} ms (start + {:.3} ms), but the run ended at {:.3} ms\n{}",
        dump.path.display(),
        ms(start),
        ms(start.saturating_add(last)),
        last as f64 / 1e6,
        ms(run.finished_unix_ns),
        run.describe()
    );
}

/// The dump's process record (failing the test if it is missing).
pub fn process(d: &Dump) -> &zmtrace_format::Process {
    d.process
        .as_ref()
        .unwrap_or_else(|| panic!("{}: no process record", d.path.display()))
}

// ------------------------------------------------------------------------------------------------
// Symbolization
// ------------------------------------------------------------------------------------------------

type Loader = addr2line::Loader;
/// Functions at one frame, cached by (module file, address in the file).
type FrameCache = HashMap<(PathBuf, u64), Rc<Vec<String>>>;

/// Test-only symbolizer: a return address is looked up (minus one, to land inside the call) in
/// the DWARF of the module that contains it, inlined frames included; without DWARF, in its
/// symbol table.
#[derive(Default)]
pub struct Symbolizer {
    loaders: RefCell<HashMap<PathBuf, Option<Rc<Loader>>>>,
    frames: RefCell<FrameCache>,
}

impl Symbolizer {
    pub fn new() -> Symbolizer {
        Symbolizer::default()
    }

    fn loader(&self, path: &Path) -> Option<Rc<Loader>> {
        self.loaders
            .borrow_mut()
            .entry(path.to_owned())
            .or_insert_with(|| Loader::new(path).ok().map(Rc::new))
            .clone()
    }

    /// The module of `dump` mapping `pc`, and the file to read it from.
    fn module_of(dump: &Dump, pc: u64) -> Option<(PathBuf, u64)> {
        let m = dump
            .modules
            .iter()
            .rev()
            .find(|m| m.segments.iter().any(|&(s, e)| s <= pc && pc < e))?;
        let mut path = PathBuf::from(&m.path);
        if m.path.is_empty() || !path.is_file() {
            // The main executable may be recorded without a usable path.
            let exe = dump.process.as_ref().map(|p| PathBuf::from(&p.exe))?;
            // (/proc/self/... would name the test binary here.)
            if !exe.is_file() || exe.starts_with("/proc") {
                return None;
            }
            path = exe;
        }
        Some((path, m.base))
    }

    /// The functions at return address `ret`: innermost (inlined) first; `["??"]` if unknown.
    pub fn frame(&self, dump: &Dump, ret: u64) -> Rc<Vec<String>> {
        let pc = ret.wrapping_sub(1);
        let Some((path, base)) = Symbolizer::module_of(dump, pc) else {
            return Rc::new(vec![format!("?? {ret:#x} (no module)")]);
        };
        let probe = pc.wrapping_sub(base);
        let key = (path.clone(), probe);
        if let Some(v) = self.frames.borrow().get(&key) {
            return v.clone();
        }
        let mut names = Vec::new();
        if let Some(loader) = self.loader(&path) {
            if let Ok(mut frames) = loader.find_frames(probe) {
                while let Ok(Some(f)) = frames.next() {
                    if let Some(name) = f.function.as_ref().and_then(|n| n.demangle().ok()) {
                        names.push(name.into_owned());
                    }
                }
            }
            if names.is_empty() {
                if let Some(sym) = loader.find_symbol(probe) {
                    names.push(sym.to_owned());
                }
            }
        }
        if names.is_empty() {
            names.push(format!("?? {}+{probe:#x}", path.display()));
        }
        let names = Rc::new(names);
        self.frames.borrow_mut().insert(key, names.clone());
        names
    }

    /// Every function of stack `id` of `dump`, innermost first (inlined frames included).
    pub fn stack(&self, dump: &Dump, id: u32) -> Vec<String> {
        let Some(frames) = dump.stacks.get(&id) else {
            return vec![format!("?? stack {id} is not defined in the dump")];
        };
        frames
            .iter()
            .flat_map(|&a| self.frame(dump, a).as_ref().clone())
            .collect()
    }

    /// Stack `id` frame by frame: (return address, functions there).
    pub fn stack_frames(&self, dump: &Dump, id: u32) -> Vec<(u64, Vec<String>)> {
        dump.stacks
            .get(&id)
            .map(|frames| {
                frames
                    .iter()
                    .map(|&a| (a, self.frame(dump, a).as_ref().clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// True when `needle` appears in `hay` in order (not necessarily adjacent).
pub fn is_subsequence(needle: &[&str], hay: &[String]) -> bool {
    let mut it = hay.iter();
    needle.iter().all(|n| it.any(|h| h == n))
}

/// A stack belongs to the sample when one of its functions starts with `zs_`.
pub fn is_sample(functions: &[String]) -> bool {
    functions.iter().any(|f| f.starts_with("zs_"))
}

/// A predicate: the stack has a function whose name starts with `prefix`.
pub fn has_function_prefix(prefix: &'static str) -> impl Fn(&[String]) -> bool {
    move |functions: &[String]| functions.iter().any(|f| f.starts_with(prefix))
}

// ------------------------------------------------------------------------------------------------
// Replay
// ------------------------------------------------------------------------------------------------

/// The sample's part of a dump, in numbers; compared whole with `assert_eq!` so a failure shows
/// every difference at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Alloc events by kind name: (count, requested bytes).
    pub allocs: BTreeMap<&'static str, (u64, u64)>,
    /// Realloc events (including `realloc(p, 0)`).
    pub reallocs: u64,
    /// Realloc events that freed their block (`new_addr == 0 && size == 0`).
    pub realloc_frees: u64,
    /// AllocFailed events by kind name.
    pub failed: BTreeMap<&'static str, u64>,
    /// Free events of the sample's blocks.
    pub frees: u64,
    /// Sampled recording: the sample's blocks that left the recording at a realloc whose new
    /// block was not drawn (`Left` events, read as a `Free` at a realloc). The program freed
    /// nothing there, so they are not frees.
    pub left: u64,
    /// The sample's blocks live at the end of the dump.
    pub leaked_blocks: u64,
    pub leaked_bytes: u64,
}

impl Counts {
    pub fn new() -> Counts {
        Counts::default()
    }
    pub fn alloc(mut self, kind: &'static str, count: u64, bytes: u64) -> Counts {
        self.allocs.insert(kind, (count, bytes));
        self
    }
    pub fn failed(mut self, kind: &'static str, count: u64) -> Counts {
        self.failed.insert(kind, count);
        self
    }
    pub fn reallocs(mut self, count: u64, freeing: u64) -> Counts {
        self.reallocs = count;
        self.realloc_frees = freeing;
        self
    }
    pub fn frees(mut self, count: u64) -> Counts {
        self.frees = count;
        self
    }
    pub fn leaked(mut self, blocks: u64, bytes: u64) -> Counts {
        self.leaked_blocks = blocks;
        self.leaked_bytes = bytes;
        self
    }
}

/// One of the sample's events, without addresses: what the program did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Alloc(&'static str, u64),
    /// A free, with the size of the block it freed.
    Free(u64),
    /// A realloc: the old block's size, the new size (0 when it freed the block).
    Realloc(u64, u64),
    Failed(&'static str),
}

/// A block live during the replay.
#[derive(Clone, Debug)]
pub struct LiveBlock {
    pub size: u64,
    pub usable: u64,
    pub stack: u32,
    /// Thread that allocated it (None for blocks inherited at fork).
    pub tid: Option<u32>,
    pub sample: bool,
    pub inherited: bool,
}

/// An event of the sample with its stack symbolized.
#[derive(Clone, Debug)]
pub struct SampleEvent {
    pub event: Event,
    pub op: Op,
    /// Functions of the event's stack (for a free: of the freed block's stack).
    pub functions: Vec<String>,
}

/// The result of replaying one dump.
#[derive(Debug, Default)]
pub struct Replay {
    pub counts: Counts,
    /// The sample's events in sequence order.
    pub events: Vec<SampleEvent>,
    /// Threads that produced at least one of the sample's events.
    pub tids: BTreeSet<u32>,
    /// Frees (and reallocs) of the sample's blocks on another thread than the allocating one.
    pub cross_thread_frees: u64,
    /// The sample's blocks live at the end, by address.
    pub leaks: BTreeMap<u64, LiveBlock>,
    /// Frees and reallocs of addresses not live at that point (not attributable).
    pub unknown_frees: u64,
    /// Sequence numbers seen more than once in the whole dump.
    pub duplicate_seqs: u64,
    /// Events naming a stack id the dump does not define.
    pub undefined_stacks: u64,
}

impl Replay {
    /// The sample's events, in sequence order.
    pub fn events(&self) -> std::slice::Iter<'_, SampleEvent> {
        self.events.iter()
    }
}

/// Replays `dump`'s events in sequence order, starting from its inherited blocks, and keeps the
/// events that belong to the sample according to `belongs` (applied to the symbolized stack of an
/// allocation; a free belongs where the block it frees does).
pub fn replay(dump: &Dump, sym: &Symbolizer, belongs: &dyn Fn(&[String]) -> bool) -> Replay {
    replay_impl(dump, sym, belongs, true).0
}

/// The one replay behind [`replay`] and [`replay_counts`]: with `keep`, each of the sample's
/// events is kept with its symbolized stack. Returns the number of events read too.
fn replay_impl(
    dump: &Dump,
    sym: &Symbolizer,
    belongs: &dyn Fn(&[String]) -> bool,
    keep: bool,
) -> (Replay, u64) {
    // By stack id: its functions, whether it belongs to the sample, whether the dump defines it.
    let mut stacks: HashMap<u32, (Rc<Vec<String>>, bool, bool), FastHash> = HashMap::default();
    let mut info = |id: u32| -> (Rc<Vec<String>>, bool, bool) {
        stacks
            .entry(id)
            .or_insert_with(|| {
                let fns = sym.stack(dump, id);
                let sample = belongs(&fns);
                (Rc::new(fns), sample, dump.stacks.contains_key(&id))
            })
            .clone()
    };
    let mut r = Replay::default();
    let mut live: HashMap<u64, LiveBlock, FastHash> = HashMap::default();
    for b in &dump.inherited {
        let sample = info(b.stack).1;
        live.insert(
            b.addr,
            LiveBlock {
                size: b.size,
                usable: b.usable,
                stack: b.stack,
                tid: None,
                sample,
                inherited: true,
            },
        );
    }
    let mut last_seq = None;
    let mut events = 0u64;
    // Blocks between the two halves of a realloc (ReallocOut, then Realloc).
    let mut moving: HashMap<(u32, u64), LiveBlock, FastHash> = HashMap::default();
    for e in dump.events() {
        if last_seq == Some(e.seq) {
            r.duplicate_seqs += 1;
        }
        last_seq = Some(e.seq);
        if let EventKind::ReallocOut { addr } = e.kind {
            match live.remove(&addr) {
                Some(b) => {
                    moving.insert((e.tid, addr), b);
                }
                None => r.unknown_frees += 1,
            }
            continue;
        }
        if matches!(e.kind, EventKind::RemapOut { .. }) {
            continue; // the first half of a remap: not an event of its own
        }
        events += 1;
        let push = |r: &mut Replay, op: Op, fns: &Rc<Vec<String>>| {
            if keep {
                r.events.push(SampleEvent {
                    event: e,
                    op,
                    functions: fns.as_ref().clone(),
                });
            }
        };
        match e.kind {
            EventKind::Alloc {
                kind,
                addr,
                size,
                usable,
                stack,
            } => {
                let (fns, sample, defined) = info(stack);
                r.undefined_stacks += u64::from(!defined);
                if sample {
                    let c = r.counts.allocs.entry(kind.name()).or_default();
                    c.0 += 1;
                    c.1 += size;
                    r.tids.insert(e.tid);
                    push(&mut r, Op::Alloc(kind.name(), size), &fns);
                }
                live.insert(
                    addr,
                    LiveBlock {
                        size,
                        usable,
                        stack,
                        tid: Some(e.tid),
                        sample,
                        inherited: false,
                    },
                );
            }
            EventKind::Free {
                addr,
                at_realloc: true,
            } => match live.remove(&addr) {
                Some(b) if b.sample => r.counts.left += 1,
                Some(_) => {}
                None => r.unknown_frees += 1,
            },
            EventKind::Free { addr, .. } => match live.remove(&addr) {
                Some(b) if b.sample => {
                    r.counts.frees += 1;
                    r.tids.insert(e.tid);
                    if b.tid.is_some_and(|t| t != e.tid) {
                        r.cross_thread_frees += 1;
                    }
                    let fns = info(b.stack).0;
                    push(&mut r, Op::Free(b.size), &fns);
                }
                Some(_) => {}
                None => r.unknown_frees += 1,
            },
            EventKind::Realloc {
                old_addr,
                new_addr,
                size,
                usable,
                stack,
            } => {
                let (fns, sample, defined) = info(stack);
                r.undefined_stacks += u64::from(!defined);
                let old = moving
                    .remove(&(e.tid, old_addr))
                    .or_else(|| live.remove(&old_addr));
                if old.is_none() && old_addr != 0 {
                    r.unknown_frees += 1;
                }
                if sample {
                    r.counts.reallocs += 1;
                    if new_addr == 0 && size == 0 {
                        r.counts.realloc_frees += 1;
                    }
                    r.tids.insert(e.tid);
                    if old
                        .as_ref()
                        .is_some_and(|b| b.tid.is_some_and(|t| t != e.tid))
                    {
                        r.cross_thread_frees += 1;
                    }
                    let op = Op::Realloc(old.as_ref().map_or(0, |b| b.size), size);
                    push(&mut r, op, &fns);
                }
                if new_addr != 0 {
                    live.insert(
                        new_addr,
                        LiveBlock {
                            size,
                            usable,
                            stack,
                            tid: Some(e.tid),
                            sample,
                            inherited: false,
                        },
                    );
                }
            }
            EventKind::ReallocOut { .. } | EventKind::RemapOut { .. } => {
                unreachable!("handled before the match")
            }
            // The program's own mappings: not heap blocks.
            EventKind::Map { .. } | EventKind::Unmap { .. } | EventKind::Remap { .. } => {}
            EventKind::AllocFailed { kind, stack, .. } => {
                let (fns, sample, defined) = info(stack);
                r.undefined_stacks += u64::from(!defined);
                if sample {
                    *r.counts.failed.entry(kind.name()).or_default() += 1;
                    r.tids.insert(e.tid);
                    push(&mut r, Op::Failed(kind.name()), &fns);
                }
            }
        }
    }
    for (addr, b) in live {
        if b.sample {
            r.counts.leaked_blocks += 1;
            r.counts.leaked_bytes += b.size;
            r.leaks.insert(addr, b);
        }
    }
    (r, events)
}

/// The sample's events of a replay, one line each, for failure messages.
pub fn list_events(r: &Replay) -> String {
    let mut s = String::new();
    for e in r.events() {
        let fns: Vec<&str> = e
            .functions
            .iter()
            .filter(|f| f.starts_with("zs_") || *f == "main")
            .map(String::as_str)
            .collect();
        s += &format!(
            "  seq {:>6} tid {:>7} {:?} {:?}\n",
            e.event.seq, e.event.tid, e.op, fns
        );
    }
    s
}

/// Common checks of a dump whose process ended normally: nothing lost, no warnings, the End
/// record's event count matches the events read, no duplicate sequence numbers, every stack
/// id defined.
pub fn assert_complete(run: &Run, dump: &Dump, r: &Replay) {
    assert_complete_counted(run, dump, r, dump.count_events());
}

/// [`replay`] for dumps of millions of events: the same counts, threads, cross-thread frees,
/// leaks, unknown frees, duplicate sequence numbers and undefined stacks, but without keeping
/// the sample's events (`events` stays empty; `replay` keeps each one with its symbolized stack,
/// gigabytes for 8 million events). Returns the number of events read too, for
/// [`assert_complete_counted`].
pub fn replay_counts(
    dump: &Dump,
    sym: &Symbolizer,
    belongs: &dyn Fn(&[String]) -> bool,
) -> (Replay, u64) {
    replay_impl(dump, sym, belongs, false)
}

/// A multiplicative hasher for integer keys: the test binaries are not optimized, and SipHash
/// through the generic `HashMap` code dominates a replay of millions of events.
#[derive(Clone, Copy, Default)]
pub struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        // The table indexes by the low bits: fold the well-mixed high bits into them.
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub type FastHash = std::hash::BuildHasherDefault<FastHasher>;

/// [`assert_complete`] for a replay made by [`replay_counts`], which counted the `events` it read
/// (one pass over the dump instead of two).
pub fn assert_complete_counted(run: &Run, dump: &Dump, r: &Replay, events: u64) {
    let end = dump.end.unwrap_or_else(|| {
        panic!(
            "{}: no End record although the process ended normally\n{}",
            dump.path.display(),
            run.describe()
        )
    });
    assert!(
        dump.warnings.is_empty() && dump.bytes_lost == 0 && dump.is_complete(),
        "{}: read with warnings {:?}, {} bytes lost, complete: {}\n{}",
        dump.path.display(),
        dump.warnings,
        dump.bytes_lost,
        dump.is_complete(),
        run.describe()
    );
    assert_eq!(
        (end.dropped, end.events),
        (0, events),
        "{}: (events dropped, events the End record counts); the dump holds {events}\n{}",
        dump.path.display(),
        run.describe()
    );
    assert_eq!(
        (r.duplicate_seqs, r.undefined_stacks),
        (0, 0),
        "{}: (duplicate sequence numbers, events naming undefined stacks)\n{}",
        dump.path.display(),
        run.describe()
    );
}

/// valgrind's LEAK SUMMARY: kind -> (blocks, bytes).
pub fn memcheck(program: &Path, args: &[&str]) -> BTreeMap<String, (u64, u64)> {
    // Not a skip: a comparison that silently does not run would pass for nothing.
    require("valgrind", "valgrind");
    let out = Command::new("valgrind")
        .args(["--leak-check=full", "--error-exitcode=0"])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run valgrind");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "valgrind failed:\n{text}");
    let mut found = BTreeMap::new();
    for (label, kind) in [
        ("definitely lost:", "definite"),
        ("indirectly lost:", "indirect"),
        ("possibly lost:", "possible"),
        ("still reachable:", "reachable"),
    ] {
        // "==123==    definitely lost: 1,234 bytes in 5 blocks"
        let line = text
            .lines()
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("no `{label}` in valgrind's output:\n{text}"));
        let nums: Vec<u64> = line[line.find(label).unwrap() + label.len()..]
            .split_whitespace()
            .filter_map(|w| w.replace(',', "").parse().ok())
            .collect();
        assert_eq!(nums.len(), 2, "cannot parse `{line}`");
        found.insert(kind.to_string(), (nums[1], nums[0]));
    }
    found
}

/// User and system CPU time of process `pid` so far, in clock ticks (/proc/PID/stat).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command's name (in parentheses, which may hold spaces): state is field 3, utime
    // and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

pub fn ticks_per_s() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as u64
}

/// Waits until zmtrace's CPU time has not grown for `quiet` (its follower is idle), at most
/// `within`; how long that took.
pub fn wait_idle(pid: u32, quiet: Duration, within: Duration) -> Duration {
    let started = Instant::now();
    let (mut last, mut since) = (cpu_ticks(pid), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = cpu_ticks(pid);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "zmtrace never went idle");
    }
}

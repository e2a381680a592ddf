//! `zmtrace run`: start a program with the recorder preloaded, pass Ctrl-C/SIGTERM on to it,
//! wait, and say where the dumps are.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use zmtrace_analyze::session::{self, Session};
use zmtrace_analyze::words::human_bytes;
use zmtrace_format::Dump;
use zmtrace_report::run::{self as summary, Gate, LeakLevel, RunSummary, Started};

use crate::Failure;

pub struct RunOptions {
    pub out_dir: PathBuf,
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Per-site counters and the live set only, no event stream (`--aggregate`).
    pub aggregate: bool,
    /// `--sample BYTES`: the mean sampling interval in bytes.
    pub sample: Option<u64>,
    /// `--all-blocks` (with `--sample`): every block in the live set for an exact leak check.
    pub all_blocks: bool,
    /// `--fail-on-leak`: the level that fails the run.
    pub gate: Option<LeakLevel>,
    /// glibc's and libstdc++'s freeres at exit, before the leak check (`--no-freeres`: off).
    pub freeres: bool,
    /// memcheck's heuristics for the leak check (`--leak-check-heuristics`), its syntax.
    pub heuristics: String,
    pub suppressions: zmtrace_analyze::suppressions::Suppressions,
    /// `--no-argv`: the dumps keep the program's path, not its arguments.
    pub no_argv: bool,
    /// `--serve ADDR`: the heap profiles for scrapers while the program runs ([`crate::scrape`]).
    pub serve: Option<std::net::SocketAddr>,
    /// The snapshot signal (`--snapshot-signal`, SIGUSR2 by default).
    pub snapshot_signal: i32,
    /// `--snapshot-every`: zmtrace sends the snapshot signal this often.
    pub snapshot_every: Option<std::time::Duration>,
    /// `--snapshot-at-rss`: zmtrace sends it when the program's RSS crosses this percentage of
    /// its memory limit.
    pub snapshot_at_rss: Option<f64>,
}

/// `--snapshot-signal`: a name (`USR2`, `SIGUSR1`) or a number, not one that ends the program
/// (those zmtrace already catches for the final flush) and not SIGKILL or SIGSTOP.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let sig = match name {
        "NONE" | "OFF" => return Ok(0),
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        "URG" => libc::SIGURG,
        "PWR" => libc::SIGPWR,
        n => match n.parse::<i32>() {
            Ok(v) if (1..=64).contains(&v) => v,
            _ => return Err(format!("unknown signal {s:?} for --snapshot-signal: expected USR1, USR2, WINCH, URG, PWR or a number")),
        },
    };
    let fatal = [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGPIPE,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGILL,
        libc::SIGABRT,
        libc::SIGXCPU,
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGCHLD,
        libc::SIGCONT,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
    ];
    if fatal.contains(&sig) {
        return Err(format!(
            "--snapshot-signal {s}: signal {sig} ends, stops or reports on the program; pick \
             one it does not otherwise get (USR1, USR2)"
        ));
    }
    Ok(sig)
}

/// `--snapshot-every`: `500ms`, `10s`, `2m`, `1.5s`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("bad duration {s:?} for --snapshot-every: expected e.g. 500ms, 10s, 2m");
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((t, ""), |i| t.split_at(i));
    let v: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(bad()),
    };
    if !(secs.is_finite() && secs >= 0.001) {
        return Err(format!("--snapshot-every {s}: at least 1ms"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// `--snapshot-at-rss`: a percentage, above 0 and at most 100.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("bad percentage {s:?} for --snapshot-at-rss: expected e.g. 90"))?;
    if v > 0.0 && v <= 100.0 {
        Ok(v)
    } else {
        Err(format!(
            "--snapshot-at-rss {s}: a percentage above 0, at most 100"
        ))
    }
}

/// The memory the program may use, and where that figure comes from: `ZMTRACE_MEMORY_LIMIT`
/// (bytes: a stand-in limit, for tests and for a limit zmtrace cannot see), else the cgroup v2
/// `memory.max` of zmtrace's cgroup (the program's: it starts there), else the machine's memory.
pub fn memory_limit() -> Option<(u64, String)> {
    if let Some(v) = std::env::var_os("ZMTRACE_MEMORY_LIMIT") {
        let v = v.to_string_lossy().trim().parse::<u64>().ok()?;
        return Some((v, "ZMTRACE_MEMORY_LIMIT".into()));
    }
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| {
            let path = c.lines().find_map(|l| l.strip_prefix("0::"))?.to_owned();
            let file = format!("/sys/fs/cgroup{}/memory.max", path.trim_end_matches('/'));
            let v = std::fs::read_to_string(&file).ok()?;
            v.trim().parse::<u64>().ok().map(|v| (v, file))
        });
    if cgroup.is_some() {
        return cgroup;
    }
    let mem = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kb * 1024, "/proc/meminfo MemTotal".into()))
}

/// The resident set of a process, in bytes (`/proc/PID/statm`).
fn rss(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(pages * page)
}

/// What sends the snapshot signal while the program runs: a timer (`--snapshot-every`) and an
/// RSS watch (`--snapshot-at-rss`), on one thread. Stopped once the program has exited (before
/// it is reaped: its pid cannot have been reused by then).
struct Snapshots {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Snapshots {
    fn start(opts: &RunOptions, pid: u32) -> Option<Snapshots> {
        let every = opts.snapshot_every;
        let at_rss = opts.snapshot_at_rss.and_then(|pct| {
            let (limit, from) = memory_limit()?;
            let threshold = (limit as f64 * pct / 100.0) as u64;
            eprintln!(
                "zmtrace: a snapshot when the program's RSS reaches {} ({pct}% of {} from {from})",
                human_bytes(threshold),
                human_bytes(limit)
            );
            Some(threshold)
        });
        if opts.snapshot_at_rss.is_some() && at_rss.is_none() {
            eprintln!(
                "zmtrace: warning: no memory limit found (cgroup memory.max, /proc/meminfo): \
                 --snapshot-at-rss is off (ZMTRACE_MEMORY_LIMIT=BYTES sets one)"
            );
        }
        if every.is_none() && at_rss.is_none() {
            return None;
        }
        let sig = opts.snapshot_signal;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let mut next = every.map(|e| start + e);
            let mut above = false;
            // The RSS is looked at every 20 ms: a program growing towards its limit at 1 GB/s
            // crosses 20 MB between two looks.
            let tick = std::time::Duration::from_millis(20);
            while !stopped.load(Ordering::Acquire) {
                let now = std::time::Instant::now();
                let mut send = false;
                if let (Some(t), Some(e)) = (next, every) {
                    if now >= t {
                        send = true;
                        next = Some(t + e);
                    }
                }
                if let Some(threshold) = at_rss {
                    let r = rss(pid).unwrap_or(0);
                    // Once per crossing: again only after it went below.
                    if r >= threshold && !above {
                        send = true;
                    }
                    above = r >= threshold;
                }
                if send {
                    // SAFETY: kill(2) of our own child, not yet reaped (see `wait_exited`).
                    unsafe { libc::kill(pid as libc::pid_t, sig) };
                }
                let wait = next
                    .map_or(tick, |t| {
                        t.saturating_duration_since(std::time::Instant::now())
                    })
                    .min(if at_rss.is_some() {
                        tick
                    } else {
                        std::time::Duration::from_millis(100)
                    })
                    .max(std::time::Duration::from_millis(1));
                std::thread::sleep(wait);
            }
        });
        Some(Snapshots { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}

/// Waits until the child has exited without reaping it (its pid stays ours meanwhile).
fn wait_exited(pid: u32) {
    loop {
        // SAFETY: waitid on our own child into a local struct.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Parses a `--sample` value: bytes, or with a suffix K/KiB or M/MiB; at least 1.
pub fn parse_sample(v: &str) -> Result<u64, String> {
    let t = v.trim();
    let (num, mul) = match t.find(|c: char| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some(i) => match t[i..].to_ascii_lowercase().as_str() {
            "k" | "kib" | "kb" => (&t[..i], 1 << 10),
            "m" | "mib" | "mb" => (&t[..i], 1 << 20),
            _ => (t, 0),
        },
    };
    match num.parse::<u64>().ok().and_then(|n| n.checked_mul(mul)) {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "`--sample {v}`: expected a sampling interval in bytes, at least 1 (e.g. 524288 or 512K)"
        )),
    }
}

/// Checks a `--leak-check-heuristics` value (memcheck's syntax; the recorder parses it again).
pub fn check_heuristics(set: &str) -> Result<(), String> {
    const NAMES: [&str; 6] = [
        "all",
        "none",
        "stdstring",
        "length64",
        "newarray",
        "multipleinheritance",
    ];
    match set.split(',').map(str::trim).find(|n| !NAMES.contains(n)) {
        Some(bad) => Err(format!(
            "unknown leak check heuristic `{bad}`: expected all, none, or some of \
             stdstring,length64,newarray,multipleinheritance"
        )),
        None => Ok(()),
    }
}

/// `ZMTRACE_UNWIND`, which the recorder reads in the program, checked before the program starts:
/// the recorder would take a misspelt value for the default without a word (and it has no good
/// place to say so: the program's stderr, once per process). A typo is refused here, with exit
/// 2, before a long run is spent on an unwinder nobody asked for.
fn check_unwind_env() -> Result<(), Failure> {
    const VALUES: [&str; 3] = ["fast", "backtrace", "compare"];
    match std::env::var_os("ZMTRACE_UNWIND") {
        Some(v) if !v.is_empty() && !VALUES.iter().any(|&ok| v == ok) => {
            Err(Failure::bad_input(format!(
                "ZMTRACE_UNWIND={}: expected fast (the default), backtrace or compare",
                v.to_string_lossy()
            )))
        }
        _ => Ok(()),
    }
}

/// How a run ended: the program's status, and the leak gate's verdict (`main` makes the exit
/// code of the two).
pub struct Outcome {
    /// The program's exit status (128+N when signal N killed it).
    pub status: i32,
    /// `--fail-on-leak` was given and a dump leaked at its level, or could not be checked.
    pub leaked: bool,
}

/// Runs the program, then prints the run's summary and the leak gate's verdict.
pub fn run(opts: &RunOptions) -> Result<Outcome, Failure> {
    check_unwind_env()?;
    let program = find_program(&opts.program)?;
    check_dynamic(&program)?;
    check_not_privileged(&program)?;
    let out_dir = prepare_out_dir(&opts.out_dir)?;
    let lib = find_library()?;
    let session = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let preload = match std::env::var_os("LD_PRELOAD") {
        Some(old) if !old.is_empty() => {
            let mut v = lib.clone().into_os_string();
            v.push(":");
            v.push(old);
            v
        }
        _ => lib.clone().into_os_string(),
    };

    let mut cmd = Command::new(&program);
    cmd.arg0(&opts.program)
        .args(&opts.args)
        .env("LD_PRELOAD", preload)
        .env("ZMTRACE_OUT", &out_dir)
        .env("ZMTRACE_SESSION", &session)
        .env_remove("ZMTRACE_EXEC_FROM")
        .env("ZMTRACE_AGGREGATE", if opts.aggregate { "1" } else { "0" })
        .env("ZMTRACE_FREERES", if opts.freeres { "1" } else { "0" })
        .env("ZMTRACE_HEURISTICS", &opts.heuristics)
        .env("ZMTRACE_SNAPSHOT_SIGNAL", opts.snapshot_signal.to_string())
        // Its own process group: a signal we forward reaches the program and its children once,
        // whether it came from the terminal or from `kill`.
        .process_group(0);
    if opts.no_argv {
        cmd.env("ZMTRACE_NO_ARGV", "1");
    }
    match opts.sample {
        Some(bytes) => {
            cmd.env("ZMTRACE_SAMPLE", bytes.to_string()).env(
                "ZMTRACE_SAMPLE_ALL",
                if opts.all_blocks { "1" } else { "0" },
            );
        }
        None => {
            cmd.env_remove("ZMTRACE_SAMPLE")
                .env_remove("ZMTRACE_SAMPLE_ALL");
        }
    }
    let server = opts.serve.map(crate::scrape::bind).transpose()?;
    if let Some(s) = &server {
        // On stderr, as every word of ours: the program's stdout stays its own.
        eprintln!(
            "zmtrace: serving http://{0}/debug/pprof/heap and http://{0}/debug/pprof/allocs",
            s.addr()
        );
    }
    // The dumps already in the directory (of other runs, or other sessions sharing it): a new one
    // that cannot even be attributed to a session is then this run's, damaged at its start.
    let before = dump_files(&out_dir);
    let child = cmd
        .spawn()
        .map_err(|e| Failure::cannot_run(format!("cannot start {}: {e}", program.display())))?;
    let pid = child.id();
    CHILD_PGID.store(pid, Ordering::SeqCst);
    let terminal = Terminal::hand_to(pid);
    install_forwarding();

    // With --serve the scrape's follower replays the dump already (at normal priority, for the
    // scrapes): a second replay beside it would only take the program's CPU.
    let early = match server {
        None => crate::early::start(&out_dir, &session),
        Some(_) => None,
    };
    let scrape = server.map(|s| crate::scrape::start(s, out_dir.clone(), session.clone(), pid));
    let snapshots = Snapshots::start(opts, pid);
    if let Some(s) = snapshots {
        wait_exited(pid);
        s.stop();
    }
    let status = wait(pid);
    if let Some(s) = scrape {
        s.stop();
    }
    drop(terminal);
    drop(child);

    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    };
    let unreadable: Vec<PathBuf> = dump_files(&out_dir)
        .into_iter()
        .filter(|p| !before.contains(p) && Dump::peek_process(p).is_none())
        .collect();
    let started = Started {
        pid,
        code: status.code(),
        signal: status.signal(),
    };
    let mut replayed = early.map(crate::early::Early::finish);
    let (text, gate) = summarize(
        &out_dir,
        &session,
        &started,
        opts,
        &unreadable,
        replayed.as_mut(),
    );
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    for p in &unreadable {
        let _ = writeln!(
            err,
            "zmtrace: {}: a dump written during this run whose first records cannot be read \
             (damaged at its start): nothing in it is reported",
            p.display()
        );
    }
    let _ = err.write_all(gate.text.as_bytes());
    Ok(Outcome {
        status: code,
        leaked: gate.failed,
    })
}

/// The run's summary and, with `--fail-on-leak`, the gate's verdict: each dump of the run is
/// opened and replayed once, for both (or was replayed while the program ran: `replayed`). The
/// dumps whose first records cannot be read (not the run's by their header, but written during
/// it) are the gate's only: they fail it, as what they held is unknown.
fn summarize(
    dir: &Path,
    session_id: &str,
    started: &Started,
    opts: &RunOptions,
    unreadable: &[PathBuf],
    mut replayed: Option<&mut crate::early::Finished>,
) -> (String, Gate) {
    // The same classes as `zmtrace leaks` shows: accepted leaks left out.
    let sopts = session::Options {
        peak_sites: false,
        timeline: None,
        suppressions: opts.suppressions.clone(),
    };
    let mut run = RunSummary {
        out_dir: dir.display().to_string(),
        dumps: Vec::new(),
        killed_by: started.signal.map(zmtrace_format::signal_name),
    };
    let mut gate = Gate::default();
    let mut judge = |g: Gate| {
        gate.failed |= g.failed;
        gate.text.push_str(&g.text);
    };
    for path in session_dumps(dir, session_id) {
        let (followed, opened);
        let mut s = match replayed.as_mut().and_then(|r| r.take(&path)) {
            Some(d) => {
                followed = d;
                Session::of(&followed.dump, followed.analysis, &sopts)
            }
            None => match session::open(&path) {
                Ok(dump) => {
                    opened = dump;
                    Session::new(&opened, &sopts)
                }
                Err(e) => {
                    if opts.gate.is_some() {
                        judge(summary::gate_unreadable(&e));
                    }
                    run.dumps.push(summary::unreadable(&path, e));
                    continue;
                }
            },
        };
        run.dumps.push(summary::read(&s, started));
        if let Some(level) = opts.gate {
            judge(summary::gate(&mut s, level));
        }
    }
    if let Some(level) = opts.gate {
        for path in unreadable {
            match session::open(path) {
                Ok(dump) => judge(summary::gate(&mut Session::new(&dump, &sopts), level)),
                Err(e) => judge(summary::gate_unreadable(&e)),
            }
        }
    }
    (summary::run_text(&run), gate)
}

fn find_program(name: &std::ffi::OsStr) -> Result<PathBuf, Failure> {
    let p = Path::new(name);
    if p.as_os_str().is_empty() {
        return Err(Failure::not_found("no program given".into()));
    }
    if p.components().count() > 1 || name.to_string_lossy().contains('/') {
        return if p.is_file() {
            Ok(p.to_owned())
        } else if p.is_dir() {
            Err(Failure::cannot_run(format!(
                "{} is a directory, not a program",
                p.display()
            )))
        } else {
            Err(Failure::not_found(format!(
                "program not found: {}",
                p.display()
            )))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(p))
        .find(|c| c.is_file() && is_executable(c))
        .ok_or_else(|| Failure::not_found(format!("program not found in PATH: {}", p.display())))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A statically linked program has no dynamic loader, so `LD_PRELOAD` does nothing: say so
/// instead of running it untraced and pretending.
fn check_dynamic(program: &Path) -> Result<(), Failure> {
    use object::read::elf::{FileHeader, ProgramHeader};
    let data = std::fs::read(program)
        .map_err(|e| Failure::cannot_run(format!("cannot read {}: {e}", program.display())))?;
    if data.starts_with(b"#!") {
        return Ok(()); // a script: its interpreter is what gets traced
    }
    if !is_executable(program) {
        return Err(Failure::cannot_run(format!(
            "{} is not executable",
            program.display()
        )));
    }
    let Ok(elf) = object::elf::FileHeader64::<object::Endianness>::parse(&*data) else {
        return Ok(()); // not a 64-bit ELF: let the kernel say what it is
    };
    let Ok(endian) = elf.endian() else {
        return Ok(());
    };
    let Ok(headers) = elf.program_headers(endian, &*data) else {
        return Ok(());
    };
    let has_interp = headers
        .iter()
        .any(|h| h.p_type(endian) == object::elf::PT_INTERP);
    if has_interp {
        Ok(())
    } else {
        Err(Failure::cannot_run(format!(
            "{} is statically linked: nothing can be preloaded into it, so its allocations cannot be traced",
            program.display()
        )))
    }
}

/// A setuid, setgid or file-capability program runs in secure-execution mode (`AT_SECURE`): the
/// loader ignores `LD_PRELOAD` paths there, and the recorder would refuse to record anyway (the
/// program's memory and arguments are not its user's to see). Say so rather than run it untraced.
/// What the kernel does: set-user-ID counts when the owner is not us, set-group-ID when the group
/// is not ours (and group execute is set: without it the bit means mandatory locking),
/// capabilities when we are not root; none of them on a `nosuid` mount.
fn check_not_privileged(program: &Path) -> Result<(), Failure> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(program) else {
        return Ok(());
    };
    if std::fs::read(program).is_ok_and(|d| d.starts_with(b"#!")) {
        return Ok(()); // a script: the kernel ignores set-ID bits on scripts
    }
    let Ok(c) = std::ffi::CString::new(program.as_os_str().as_bytes()) else {
        return Ok(());
    };
    // SAFETY: plain syscalls on a NUL-terminated path and local structs.
    let (uid, gid, nosuid, has_caps) = unsafe {
        let mut vfs: libc::statvfs = std::mem::zeroed();
        let nosuid = libc::statvfs(c.as_ptr(), &mut vfs) == 0 && vfs.f_flag & libc::ST_NOSUID != 0;
        let caps = libc::getxattr(
            c.as_ptr(),
            c"security.capability".as_ptr(),
            std::ptr::null_mut(),
            0,
        ) > 0;
        (libc::getuid(), libc::getgid(), nosuid, caps)
    };
    if nosuid {
        return Ok(());
    }
    let mode = meta.mode();
    let why = if mode & libc::S_ISUID != 0 && meta.uid() != uid {
        format!("is set-user-ID (it runs as {})", user_name(meta.uid()))
    } else if mode & libc::S_ISGID != 0 && mode & libc::S_IXGRP != 0 && meta.gid() != gid {
        format!("is set-group-ID (it runs with group {})", meta.gid())
    } else if has_caps && uid != 0 {
        "has file capabilities".to_string()
    } else {
        return Ok(());
    };
    Err(Failure::cannot_run(format!(
        "{} {why}: such a program runs in secure-execution mode, where the loader ignores \
         LD_PRELOAD and zmtrace records nothing, so it cannot be traced (trace a copy without \
         the privilege, or run zmtrace as the user it runs as)",
        program.display()
    )))
}

fn user_name(uid: u32) -> String {
    // SAFETY: getpwuid returns a pointer into static storage or NULL; we copy the name at once
    // (the CLI is single-threaded here).
    unsafe {
        let pw = libc::getpwuid(uid);
        if pw.is_null() || (*pw).pw_name.is_null() {
            return format!("uid {uid}");
        }
        let name = std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy();
        format!("{name} (uid {uid})")
    }
}

/// Creates the output directory if missing (private: 0700, the dumps hold command lines and
/// stacks) and checks that a file can be created in it. The check creates a file of a new name
/// only (`O_EXCL|O_NOFOLLOW`: in a shared directory a name can be planted as a symlink to a file
/// of ours, which a plain create would truncate) and removes it.
fn prepare_out_dir(dir: &Path) -> Result<PathBuf, Failure> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let bad = |e: std::io::Error| {
        Failure::setup(format!(
            "cannot write to output directory {}: {e}",
            dir.display()
        ))
    };
    if dir.exists() && !dir.is_dir() {
        return Err(Failure::setup(format!(
            "cannot write to output directory {}: it is not a directory",
            dir.display()
        )));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(bad)?;
    let dir = dir.canonicalize().map_err(bad)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for attempt in 0..100u32 {
        let probe = dir.join(format!(
            ".zmtrace-probe-{}-{nanos:08x}-{attempt}",
            std::process::id()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&probe)
        {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(bad(e)),
        }
    }
    Err(bad(std::io::Error::other(
        "every name tried for a test file exists already",
    )))
}

/// The recorder library: `ZMTRACE_LIB`, else next to the `zmtrace` executable (a build tree), else
/// `../lib/zmtrace/` from it (an installed `PREFIX/bin/zmtrace` and `PREFIX/lib/zmtrace/`, as the
/// Debian package and `scripts/install.sh` lay them out). Whatever is found must be zmtrace's
/// recorder: a wrong file would be preloaded for nothing, or not at all, and the program would
/// run untraced while `run` reported success.
fn find_library() -> Result<PathBuf, Failure> {
    if let Some(p) = std::env::var_os("ZMTRACE_LIB") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(Failure::setup(format!(
                "ZMTRACE_LIB names {}, which is not a file",
                p.display()
            )));
        }
        check_library(&p, "ZMTRACE_LIB names")?;
        return Ok(p.canonicalize().unwrap_or(p));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Failure::setup(format!("cannot find zmtrace's own path: {e}")))?;
    let beside = exe.with_file_name("libzmtrace.so");
    let installed = exe
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join("lib/zmtrace/libzmtrace.so"));
    let found = std::iter::once(beside.clone())
        .chain(installed.clone())
        .find(|p| p.is_file());
    match found {
        Some(lib) => check_library(&lib, "the recorder library").map(|()| lib),
        None => Err(Failure::setup(format!(
            "cannot find the recorder library: looked for {}{} (build it with `cargo build`, \
             install with scripts/install.sh, or set ZMTRACE_LIB)",
            beside.display(),
            installed.map_or(String::new(), |p| format!(" and {}", p.display()))
        ))),
    }
}

/// The file is an x86-64 shared library that exports the recorder's entry point.
fn check_library(path: &Path, what: &str) -> Result<(), Failure> {
    use object::{Object, ObjectKind, ObjectSymbol};
    let not_it = |why: &str| {
        Failure::setup(format!(
            "{what} {}, which is not zmtrace's recorder library ({why})",
            path.display()
        ))
    };
    let data = std::fs::read(path).map_err(|e| not_it(&e.to_string()))?;
    let file = object::File::parse(&*data).map_err(|_| not_it("not an ELF file"))?;
    if file.kind() != ObjectKind::Dynamic || file.architecture() != object::Architecture::X86_64 {
        return Err(not_it("not an x86-64 shared library"));
    }
    if !file
        .dynamic_symbols()
        .any(|s| s.name() == Ok("zmtrace_leak_check"))
    {
        return Err(not_it("it does not export zmtrace_leak_check"));
    }
    Ok(())
}

// ---- signals and the terminal ----------------------------------------------------------------

static CHILD_PGID: AtomicU32 = AtomicU32::new(0);
static SIGNALS_SEEN: AtomicI32 = AtomicI32::new(0);

/// Signals sent to zmtrace go on to the program's process group. Ctrl-C (SIGINT, through
/// `ctrlc`): first SIGINT, then SIGTERM, then SIGKILL if the program still does not stop.
/// SIGTERM and SIGHUP are passed on as they are.
fn install_forwarding() {
    let _ = ctrlc::set_handler(|| {
        let sig = match SIGNALS_SEEN.fetch_add(1, Ordering::SeqCst) {
            0 => libc::SIGINT,
            1 => libc::SIGTERM,
            _ => libc::SIGKILL,
        };
        forward(sig);
    });
    extern "C" fn pass_on(sig: libc::c_int) {
        forward(sig);
    }
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only calls kill(2), which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = pass_on as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn forward(sig: libc::c_int) {
    let pgid = CHILD_PGID.load(Ordering::SeqCst) as i32;
    if pgid > 0 {
        // SAFETY: kill(2) on the child's process group.
        unsafe { libc::kill(-pgid, sig) };
    }
}

/// While the program runs it owns the terminal, so Ctrl-C typed there reaches it directly.
struct Terminal {
    ours: Option<libc::pid_t>,
}

impl Terminal {
    fn hand_to(pgid: u32) -> Terminal {
        // SAFETY: terminal job-control calls on stdin; failures just leave things as they are.
        unsafe {
            if libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() {
                let ours = libc::getpgrp();
                let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                let ok = libc::tcsetpgrp(0, pgid as libc::pid_t) == 0;
                libc::signal(libc::SIGTTOU, old);
                if ok {
                    return Terminal { ours: Some(ours) };
                }
            }
        }
        Terminal { ours: None }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(pg) = self.ours {
            // SAFETY: as above; SIGTTOU is ignored because we are in the background now.
            unsafe {
                let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(0, pg);
                libc::signal(libc::SIGTTOU, old);
            }
        }
    }
}

fn wait(pid: u32) -> std::process::ExitStatus {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if rc == pid as libc::pid_t {
            return std::process::ExitStatus::from_raw(status);
        }
        if rc < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return std::process::ExitStatus::from_raw(1 << 8);
        }
    }
}

// ---- the report ----------------------------------------------------------------------------

/// The files of `dir` named as dumps (`zmtrace.*.zmt`), whatever is in them.
pub(crate) fn dump_files(dir: &Path) -> std::collections::HashSet<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("zmtrace.") && n.ends_with(".zmt"))
        })
        .collect()
}

/// The dumps of the run `session` in `dir`, the first process first (`early::look` keeps the
/// same order as the dumps appear, without looking at a file twice).
pub fn session_dumps(dir: &Path, session: &str) -> Vec<PathBuf> {
    let mut found: Vec<(u64, PathBuf)> = dump_files(dir)
        .into_iter()
        .filter_map(|p| {
            let proc = Dump::peek_process(&p)?;
            (proc.session == session).then_some((proc.start_unix_ns, p))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

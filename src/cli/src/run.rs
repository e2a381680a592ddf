//! `zmtrace run`: start a program with the recorder preloaded, pass Ctrl-C/SIGTERM on to it,
//! wait, and say where the dumps are.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use zmtrace_format::{Dump, Origin};

use crate::Failure;
use zmtrace_analyze::words::{human_bytes, plural, thousands};

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
    pub gate: Option<crate::gate::LeakLevel>,
    /// glibc's and libstdc++'s freeres at exit, before the leak check (`--no-freeres`: off).
    pub freeres: bool,
    /// memcheck's heuristics for the leak check (`--leak-check-heuristics`), its syntax.
    pub heuristics: String,
    pub suppressions: zmtrace_analyze::suppressions::Suppressions,
    /// `--no-argv`: the dumps keep the program's path, not its arguments.
    pub no_argv: bool,
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

/// Runs the program; returns the exit code zmtrace should end with (the program's own, or the
/// gate's when it exited 0 and leaked).
pub fn run(opts: &RunOptions) -> Result<i32, Failure> {
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
    let child = cmd
        .spawn()
        .map_err(|e| Failure::cannot_run(format!("cannot start {}: {e}", program.display())))?;
    let pid = child.id();
    CHILD_PGID.store(pid, Ordering::SeqCst);
    let terminal = Terminal::hand_to(pid);
    install_forwarding();

    let status = wait(pid);
    drop(terminal);
    drop(child);

    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    };
    report(&out_dir, &session, pid, &status, &opts.suppressions);
    if let Some(level) = opts.gate {
        let dumps = session_dumps(&out_dir, &session);
        if crate::gate::check(&dumps, level, &opts.suppressions) && code == 0 {
            return Ok(crate::gate::LEAK_EXIT);
        }
    }
    Ok(code)
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
        Failure::usage(format!(
            "cannot write to output directory {}: {e}",
            dir.display()
        ))
    };
    if dir.exists() && !dir.is_dir() {
        return Err(Failure::usage(format!(
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
            return Err(Failure::usage(format!(
                "ZMTRACE_LIB names {}, which is not a file",
                p.display()
            )));
        }
        check_library(&p, "ZMTRACE_LIB names")?;
        return Ok(p.canonicalize().unwrap_or(p));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Failure::usage(format!("cannot find zmtrace's own path: {e}")))?;
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
        None => Err(Failure::usage(format!(
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
        Failure::usage(format!(
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

/// The dumps this run left, the first process first.
pub fn session_dumps(dir: &Path, session: &str) -> Vec<PathBuf> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("zmtrace.") && n.ends_with(".zmt"))
        })
        .filter_map(|p| {
            let proc = Dump::peek_process(&p)?;
            (proc.session == session).then_some((proc.start_unix_ns, p))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

fn report(
    dir: &Path,
    session: &str,
    pid: u32,
    status: &std::process::ExitStatus,
    supp: &zmtrace_analyze::suppressions::Suppressions,
) {
    let dumps = session_dumps(dir, session);
    let mut err = std::io::stderr().lock();
    if dumps.is_empty() {
        let _ = writeln!(
            err,
            "zmtrace: no dump was written in {} (did the program run at all?)",
            dir.display()
        );
        return;
    }
    for path in &dumps {
        let dump = match Dump::open(path) {
            Ok(d) => d,
            Err(e) => {
                let _ = writeln!(err, "zmtrace: {e}");
                continue;
            }
        };
        let proc = dump.process.as_ref();
        let what = match proc.map(|p| (p.origin, p.pid)) {
            Some((Origin::Start, p)) if p == pid => "",
            Some((Origin::Fork, _)) => " (forked child)",
            Some((Origin::Exec, _)) => " (after exec)",
            _ => " (child process)",
        };
        let mut s = zmtrace_analyze::analyze(&dump, false, &mut |_, _| {});
        if s.check.is_some() {
            // The same classes as `zmtrace leaks` shows: accepted leaks left out.
            let mut sym = zmtrace_analyze::Symbolizer::new(&dump);
            zmtrace_analyze::suppressions::apply(&mut s, &mut sym, supp);
        }
        let _ = writeln!(err, "zmtrace: dump {}{what}", path.display());
        if let Some(t) = s.sample_interval {
            let _ = writeln!(
                err,
                "zmtrace:   sampled recording (every {} on average): figures estimated{}",
                human_bytes(t),
                if s.all_blocks && s.check.is_some() {
                    ", leak classes exact"
                } else {
                    ", no leak classes"
                }
            );
        }
        let _ = writeln!(
            err,
            "zmtrace:   allocations {} ({}), frees {}, reallocs {}",
            thousands(s.allocations),
            human_bytes(s.bytes_allocated),
            thousands(s.frees),
            thousands(s.reallocs)
        );
        let peak = if s.aggregated {
            "aggregated, no timeline".to_string()
        } else {
            format!(
                "peak heap {} at {:.3} s",
                human_bytes(s.peak_bytes),
                s.peak_ns as f64 / 1e9
            )
        };
        let _ = writeln!(
            err,
            "zmtrace:   {peak}; not freed at exit: {}, {}",
            plural(s.leaked_blocks, "block"),
            human_bytes(s.leaked_bytes)
        );
        if s.check.is_some() {
            let k = zmtrace_analyze::leakcheck::Kinds::from(&s.kinds);
            let _ = writeln!(
                err,
                "zmtrace:   leak check: definitely lost {}, indirectly lost {}, possibly lost {}, \
                 still reachable {}{}",
                human_bytes(k.definite.bytes),
                human_bytes(k.indirect.bytes),
                human_bytes(k.possible.bytes),
                human_bytes(k.reachable.bytes),
                if s.suppressed.blocks > 0 {
                    format!(" ({} suppressed)", human_bytes(s.suppressed.bytes))
                } else {
                    String::new()
                }
            );
        }
        if !dump.is_complete() && dump.exec.is_none() {
            let line = match (dump.end, status.code(), proc) {
                // We saw the program exit: it was not killed, whatever the dump cannot tell.
                (None, Some(code), Some(p)) if p.pid == pid => format!(
                    "the dump has no end although the program exited (status {code}): recording \
                     stopped early (the recorder's message above says why), or the process left \
                     by a way the recorder does not see (the C library's own _exit, as in \
                     daemon(3)'s parent); events after its last flush are missing"
                ),
                _ => match dump.ending() {
                    e if e.starts_with("did not") => format!("the process {e}"),
                    e => e,
                },
            };
            let _ = writeln!(err, "zmtrace:   {line}");
        }
        for w in &dump.warnings {
            let _ = writeln!(err, "zmtrace:   warning: {w}");
        }
    }
    if let Some(sig) = status.signal() {
        let _ = writeln!(
            err,
            "zmtrace: the program was killed by {}",
            zmtrace_format::signal_name(sig)
        );
    }
}

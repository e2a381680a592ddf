//! The `zmtrace` command. Each subcommand parses its options, calls one function, and `main`
//! turns the outcome into an exit code.
//!
//! Exit codes: the traced program's own status for `run` (128+N if a signal N killed it);
//! 0 for a successful analysis; 2 for bad input (a file that is not a dump, bad options, a bad
//! suppression file); 23 for `run --fail-on-leak` when the program exited 0 but leaked beyond
//! the suppressions (LeakSanitizer's code); 125 when zmtrace cannot set up (unwritable output,
//! missing library); 126 when the program cannot be traced (statically linked, not executable);
//! 127 when it does not exist.

mod analyze;
mod early;
mod export;
mod info;
mod run;
mod scrape;
mod serve;
mod view;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "zmtrace",
    version,
    about = "Trace every allocation of a native program; analyze the dump offline."
)]
struct Opt {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run PROGRAM with every allocation recorded; leaves one dump per process.
    Run {
        /// Directory for the dumps (created if missing).
        #[arg(short = 'o', long = "out", default_value = ".")]
        out: PathBuf,
        /// For long-running servers: keep per-site counters and the live set only, no event
        /// stream. Reports, leaks, churn and flamegraphs work; the timeline and the peak do not.
        #[arg(long)]
        aggregate: bool,
        /// Sampled recording: record a block with probability 1 - (1 - 1/BYTES)^size (Poisson
        /// sampling over allocated bytes, a mean of one sampled byte every BYTES; 1 = every
        /// block). Per-site figures become estimates; no leak classes without --all-blocks.
        /// BYTES may end in K or M (KiB, MiB); without a value, 512K.
        #[arg(long, value_name = "BYTES", num_args = 0..=1, default_missing_value = "512K")]
        sample: Option<String>,
        /// With --sample: keep every block's address and size (no stack) for the leak check, so
        /// the totals per leak class stay exact and only their split per site is estimated.
        #[arg(long = "all-blocks", requires = "sample")]
        all_blocks: bool,
        /// After the program ends, exit with 23 if it leaked: `lost` (definitely or indirectly
        /// lost, the default), `possible` (or possibly lost) or `all` (any block not freed), beyond
        /// the suppressions. A program that failed keeps its own status.
        #[arg(
            long = "fail-on-leak",
            value_name = "LEVEL",
            num_args = 0..=1,
            // `--fail-on-leak possible -- prog` names the level, as a user reads it (with
            // `require_equals` it took `possible` for the program); the value stops at `--`
            // and at the next option.
            default_missing_value = "lost"
        )]
        fail_on_leak: Option<String>,
        /// Leave the program's arguments out of the dumps (they may hold passwords or tokens):
        /// the dumps keep the program's path and say how many arguments were left out.
        #[arg(long = "no-argv")]
        no_argv: bool,
        /// Do not run glibc's and libstdc++'s freeres at exit before the leak check (memcheck's
        /// --run-libc-freeres=no --run-cxx-freeres=no): their one-time blocks stay live.
        #[arg(long = "no-freeres")]
        no_freeres: bool,
        /// memcheck's heuristics for interior pointers, in its syntax: `all` (the default, as in
        /// memcheck), `none`, or some of stdstring,length64,newarray,multipleinheritance.
        #[arg(
            long = "leak-check-heuristics",
            value_name = "SET",
            default_value = "all"
        )]
        heuristics: String,
        /// While the program runs, serve its heap as Go's net/http/pprof does, for Parca,
        /// Pyroscope (Grafana Alloy) or `go tool pprof URL`: /debug/pprof/heap (in use now) and
        /// /debug/pprof/allocs (since the start). ADDR is HOST:PORT, or :PORT for 127.0.0.1.
        #[arg(long, value_name = "ADDR")]
        serve: Option<String>,
        /// The signal that has the recorder write a snapshot of the heap into the dump (`zmtrace
        /// export --at N` exports it): USR2 by default; USR1, a number, or none. If the program
        /// installs its own handler for it, the program keeps it and snapshots on it are off.
        #[arg(long = "snapshot-signal", value_name = "SIG", default_value = "USR2")]
        snapshot_signal: String,
        /// Send the snapshot signal this often (500ms, 10s, 2m).
        #[arg(long = "snapshot-every", value_name = "DURATION")]
        snapshot_every: Option<String>,
        /// Send the snapshot signal when the program's RSS crosses PERCENT of its memory limit
        /// (cgroup v2 memory.max, else the machine's memory; ZMTRACE_MEMORY_LIMIT=BYTES sets
        /// another), so that an OOM kill leaves the heap as of just before.
        #[arg(long = "snapshot-at-rss", value_name = "PERCENT")]
        snapshot_at_rss: Option<String>,
        #[command(flatten)]
        supp: Supp,
        /// The program to run and its arguments (after `--`).
        // Not `required`: without a program, `run` says so in one line, and names the word
        // `--fail-on-leak` took for its level when that was the program.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// Print a dump's header, event counts and modules; say whether it is complete.
    DumpInfo {
        dump: PathBuf,
        /// Also list every module.
        #[arg(long)]
        modules: bool,
    },
    /// Summary: counts, bytes, peak heap, leaks, temporaries, and the top sites for each.
    Report {
        dump: PathBuf,
        #[command(flatten)]
        supp: Supp,
        #[command(flatten)]
        common: Common,
    },
    /// The blocks not freed at exit, grouped by stack and class (definitely, indirectly,
    /// possibly lost, still reachable), lost first, largest first.
    Leaks {
        dump: PathBuf,
        /// Only groups of at least this many bytes.
        #[arg(long, default_value_t = 0)]
        min_bytes: u64,
        /// Only these classes: definite, indirect, possible, reachable (comma-separated, or
        /// repeated).
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
        #[command(flatten)]
        supp: Supp,
        #[command(flatten)]
        common: Common,
    },
    /// Realloc churn per call site: grows, shrinks, moves, bytes copied, chains, growth pattern.
    Churn {
        dump: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// An SVG flamegraph of one metric (or the collapsed stacks, with --folded).
    Flamegraph {
        dump: PathBuf,
        /// allocations, bytes, leaked, peak, temporary, reallocs, lost (definitely and
        /// indirectly lost bytes), or for the program's own mmap/mremap calls (never the heap's):
        /// mapped (bytes mapped in all) or mapped-at-exit.
        #[arg(long, default_value = "bytes", value_parser = parse_metric)]
        metric: zmtrace_report::flame::Metric,
        /// Write the collapsed stacks (for other tools) instead of an SVG.
        #[arg(long)]
        folded: bool,
        /// Output file (the SVG; for --folded, stdout when not given).
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
        /// Another allocator wrapper to see through (a `*` glob); may be repeated.
        #[arg(long = "wrapper")]
        wrappers: Vec<String>,
        #[command(flatten)]
        supp: Supp,
    },
    /// One self-contained HTML page: summary, memory over time, flamegraphs, leaks, churn.
    View {
        dump: PathBuf,
        /// Output file (default: the dump's name with .html, here; none with --serve alone).
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
        /// Another dump to compare with: what grew and what shrank per site.
        #[arg(long)]
        base: Option<PathBuf>,
        /// Also serve the page on 127.0.0.1 at a free port, until stopped.
        #[arg(long)]
        serve: bool,
        /// Another allocator wrapper to see through (a `*` glob); may be repeated.
        #[arg(long = "wrapper")]
        wrappers: Vec<String>,
        #[command(flatten)]
        supp: Supp,
    },
    /// Write a dump for other tools: a pprof profile (gzipped profile.proto: go tool pprof,
    /// Pyroscope, Parca), a speedscope file, or collapsed stacks.
    Export {
        dump: PathBuf,
        /// pprof, speedscope or folded.
        #[arg(long, default_value = "pprof")]
        format: String,
        /// Output file (required, but with `--at list`).
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
        /// The state at a snapshot taken while the program ran (its number, from 1; `list`
        /// prints them with their times): in use = live then.
        #[arg(long, value_name = "SNAPSHOT")]
        at: Option<String>,
        /// The sample type: alloc_objects, alloc_space, inuse_objects, inuse_space or lost_space
        /// (or the flamegraph's allocations, bytes, leaked, lost). folded writes this one;
        /// pprof and speedscope have them all and show this one first.
        #[arg(long, default_value = "inuse_space")]
        metric: String,
        /// Another allocator wrapper to see through (a `*` glob); may be repeated. pprof stacks
        /// start at the site, the first frame outside them.
        #[arg(long = "wrapper")]
        wrappers: Vec<String>,
        #[command(flatten)]
        supp: Supp,
    },
    /// Compare two dumps site by site: allocations, bytes, peak, leaked, lost, reallocs, temporary.
    Diff {
        base: PathBuf,
        new: PathBuf,
        /// Write a differential flamegraph (SVG, to -o) of --metric instead of the report.
        #[arg(long)]
        flamegraph: bool,
        /// The flamegraph's metric (see `flamegraph`).
        #[arg(long, default_value = "bytes", value_parser = parse_metric)]
        metric: zmtrace_report::flame::Metric,
        #[command(flatten)]
        supp: Supp,
        #[command(flatten)]
        common: Common,
    },
}

/// Suppressions of accepted leaks.
#[derive(clap::Args)]
struct Supp {
    /// A suppression file (format: the zmtrace-analyze crate's `suppressions` docs, or the
    /// README); may be repeated.
    #[arg(long = "suppressions", value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Do not hide glibc's own one-time allocations (stdio buffers, thread DTV, dlopen, locale).
    #[arg(long = "no-default-suppressions")]
    no_defaults: bool,
}

impl Supp {
    /// No suppressions at all (reports that do not show leaks).
    fn none() -> Supp {
        Supp {
            files: Vec::new(),
            no_defaults: true,
        }
    }

    fn load(&self) -> Result<zmtrace_analyze::suppressions::Suppressions, Failure> {
        use zmtrace_analyze::suppressions::Suppressions;
        let mut s = if self.no_defaults {
            Suppressions::default()
        } else {
            Suppressions::builtin()
        };
        for f in &self.files {
            s.extend(Suppressions::load(f).map_err(Failure::bad_input)?);
        }
        Ok(s)
    }
}

/// Options of the text and JSON reports.
#[derive(clap::Args)]
struct Common {
    /// Machine-readable output (schema in the zmtrace-report crate docs).
    #[arg(long)]
    json: bool,
    /// How many sites to show (0: all).
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Frames shown per stack in text output (0: all).
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Another allocator wrapper to see through when naming sites (a `*` glob); may be repeated.
    #[arg(long = "wrapper")]
    wrappers: Vec<String>,
    /// Write to this file instead of stdout.
    #[arg(short = 'o', long = "out")]
    out: Option<PathBuf>,
}

fn parse_metric(s: &str) -> Result<zmtrace_report::flame::Metric, String> {
    zmtrace_report::flame::Metric::parse(s).ok_or_else(|| {
        let names: Vec<&str> = zmtrace_report::flame::Metric::ALL
            .iter()
            .map(|m| m.name())
            .collect();
        format!("expected one of: {}", names.join(", "))
    })
}

fn analyze_options(
    dump: PathBuf,
    c: Common,
    supp: &Supp,
) -> Result<analyze::AnalyzeOptions, Failure> {
    let mut report = zmtrace_report::reports::Options {
        top: c.top,
        depth: c.depth,
        ..Default::default()
    };
    report.wrappers.extend(c.wrappers);
    Ok(analyze::AnalyzeOptions {
        dump,
        json: c.json,
        out: c.out,
        report,
        suppressions: supp.load()?,
    })
}

/// The exit status of a run that leaked (`run --fail-on-leak`; LeakSanitizer's).
const LEAK_EXIT: i32 = 23;

/// Why zmtrace itself failed: a one-line message and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: i32,
}

impl Failure {
    /// zmtrace cannot do its own part (write its output, find its library, listen on a port):
    /// 125, as `env` and `timeout` say when they fail themselves. Not for bad options or input
    /// (those are [`Failure::bad_input`], 2).
    pub fn setup(message: String) -> Failure {
        Failure { message, code: 125 }
    }
    /// Bad options, a file that is not a dump, a bad suppression file: 2.
    pub fn bad_input(message: String) -> Failure {
        Failure { message, code: 2 }
    }
    /// The dump is damaged (not just cut short): the output came from its intact records.
    pub fn damaged(message: String) -> Failure {
        Failure { message, code: 3 }
    }
    pub fn cannot_run(message: String) -> Failure {
        Failure { message, code: 126 }
    }
    pub fn not_found(message: String) -> Failure {
        Failure { message, code: 127 }
    }
}

fn main() {
    let opt = Opt::parse();
    let result = match opt.cmd {
        Cmd::Run {
            out,
            aggregate,
            sample,
            all_blocks,
            fail_on_leak,
            no_argv,
            no_freeres,
            heuristics,
            serve,
            snapshot_signal,
            snapshot_every,
            snapshot_at_rss,
            supp,
            command,
        } => (|| {
            let gate = match fail_on_leak.as_deref() {
                None => None,
                Some(level)
                    if command.is_empty()
                        && zmtrace_report::run::LeakLevel::parse(level).is_err() =>
                {
                    return Err(Failure::bad_input(format!(
                        "`{level}` is not a leak level (lost, possible or all): put the program \
                         after `--`, as in `zmtrace run --fail-on-leak -- {level}`"
                    )));
                }
                Some(level) => {
                    Some(zmtrace_report::run::LeakLevel::parse(level).map_err(Failure::bad_input)?)
                }
            };
            if command.is_empty() {
                return Err(Failure::bad_input(
                    "no program given: zmtrace run [OPTIONS] -- PROGRAM [ARGS...]".into(),
                ));
            }
            run::check_heuristics(&heuristics).map_err(Failure::bad_input)?;
            let sample = sample
                .as_deref()
                .map(run::parse_sample)
                .transpose()
                .map_err(Failure::bad_input)?;
            let serve = serve.as_deref().map(scrape::parse_addr).transpose()?;
            let snapshot_signal =
                run::parse_signal(&snapshot_signal).map_err(Failure::bad_input)?;
            let snapshot_every = snapshot_every
                .as_deref()
                .map(run::parse_duration)
                .transpose()
                .map_err(Failure::bad_input)?;
            let snapshot_at_rss = snapshot_at_rss
                .as_deref()
                .map(run::parse_percent)
                .transpose()
                .map_err(Failure::bad_input)?;
            if snapshot_signal == 0 && (snapshot_every.is_some() || snapshot_at_rss.is_some()) {
                return Err(Failure::bad_input(
                    "--snapshot-every and --snapshot-at-rss send the snapshot signal: not with \
                     --snapshot-signal none"
                        .into(),
                ));
            }
            let mut it = command.into_iter();
            let program = it.next().unwrap_or_default();
            let outcome = run::run(&run::RunOptions {
                out_dir: out,
                program,
                args: it.collect(),
                aggregate,
                sample,
                all_blocks,
                gate,
                freeres: !no_freeres,
                heuristics,
                suppressions: supp.load()?,
                no_argv,
                serve,
                snapshot_signal,
                snapshot_every,
                snapshot_at_rss,
            })?;
            // The gate fails a run only when the program itself succeeded: a failing program
            // keeps its own status.
            Ok(if outcome.leaked && outcome.status == 0 {
                LEAK_EXIT
            } else {
                outcome.status
            })
        })(),
        Cmd::DumpInfo { dump, modules } => info::dump_info(&dump, modules).map(|()| 0),
        Cmd::Report { dump, supp, common } => analyze_options(dump, common, &supp)
            .and_then(|o| analyze::run(analyze::What::Report, &o))
            .map(|()| 0),
        Cmd::Leaks {
            dump,
            min_bytes,
            kinds,
            supp,
            common,
        } => zmtrace_analyze::leakcheck::parse_kinds(&kinds)
            .map_err(Failure::bad_input)
            .and_then(|kinds| {
                let o = analyze_options(dump, common, &supp)?;
                analyze::run(analyze::What::Leaks { min_bytes, kinds }, &o)
            })
            .map(|()| 0),
        Cmd::Churn { dump, common } => analyze_options(dump, common, &Supp::none())
            .and_then(|o| analyze::run(analyze::What::Churn, &o))
            .map(|()| 0),
        Cmd::Flamegraph {
            dump,
            metric,
            folded,
            out,
            wrappers,
            supp,
        } => analyze_options(
            dump,
            Common {
                json: false,
                top: 0,
                depth: 0,
                wrappers,
                out,
            },
            &supp,
        )
        .and_then(|o| analyze::run(analyze::What::Flamegraph { metric, folded }, &o))
        .map(|()| 0),
        Cmd::View {
            dump,
            out,
            base,
            serve,
            wrappers,
            supp,
        } => {
            let mut report = zmtrace_report::reports::Options::default();
            report.wrappers.extend(wrappers);
            supp.load().and_then(|suppressions| {
                view::run(&view::ViewOptions {
                    dump,
                    base,
                    out,
                    serve,
                    report,
                    suppressions,
                })
                .map(|()| 0)
            })
        }
        Cmd::Export {
            dump,
            format,
            out,
            metric,
            at,
            wrappers,
            supp,
        } => (|| {
            export::run(&export::ExportOptions {
                dump,
                format: export::parse_format(&format)?,
                out,
                at,
                metric: export::parse_sample_type(&metric)?,
                wrappers,
                suppressions: supp.load()?,
            })
        })()
        .map(|()| 0),
        Cmd::Diff {
            base,
            new,
            flamegraph,
            metric,
            supp,
            common,
        } => analyze_options(base, common, &supp)
            .and_then(|o| analyze::diff(&o, &new, flamegraph.then_some(metric)))
            .map(|()| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(f) => {
            eprintln!("zmtrace: error: {}", f.message);
            std::process::exit(f.code);
        }
    }
}

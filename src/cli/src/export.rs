//! `zmtrace export`: a dump as a pprof profile, a speedscope file or collapsed stacks, for
//! other tools. The formats are the report crate's ([`zmtrace_report::export`]); this only opens
//! the dump, replays it, and writes the file.

use std::io::Write;
use std::path::{Path, PathBuf};

use zmtrace_analyze::session::{self, Session};
use zmtrace_analyze::suppressions::Suppressions;
use zmtrace_format::Dump;
use zmtrace_report::export::{self, Profile, SampleType};

use crate::Failure;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Pprof,
    Speedscope,
    Folded,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, Failure> {
        match s {
            "pprof" => Ok(Format::Pprof),
            "speedscope" => Ok(Format::Speedscope),
            "folded" => Ok(Format::Folded),
            _ => Err(Failure::bad_input(format!(
                "unknown export format {s:?}: expected pprof, speedscope or folded"
            ))),
        }
    }
}

pub fn parse_sample_type(s: &str) -> Result<SampleType, Failure> {
    SampleType::parse(s).ok_or_else(|| {
        Failure::bad_input(format!(
            "unknown metric {s:?}: expected alloc_objects (or allocations), alloc_space (or \
             bytes), inuse_objects, inuse_space (or leaked) or lost_space (or lost)"
        ))
    })
}

pub struct ExportOptions {
    pub dump: PathBuf,
    pub format: Format,
    pub out: Option<PathBuf>,
    /// `--at`: a snapshot's number (from 1), or `list`.
    pub at: Option<String>,
    pub metric: SampleType,
    pub wrappers: Vec<String>,
    pub suppressions: Suppressions,
}

pub fn run(o: &ExportOptions) -> Result<(), Failure> {
    let dump = session::open(&o.dump).map_err(Failure::bad_input)?;
    if o.at.as_deref() == Some("list") {
        print!("{}", snapshot_list(&dump));
        return Ok(());
    }
    let Some(out) = &o.out else {
        return Err(Failure::bad_input(
            "export needs -o FILE (or --at list)".into(),
        ));
    };
    let at = match o.at.as_deref() {
        None => None,
        Some(n) => Some(pick_snapshot(&dump, &o.dump, n)?),
    };
    let Session {
        analysis: a,
        mut sym,
        ..
    } = Session::at(
        &dump,
        &session::Options {
            peak_sites: false,
            suppressions: o.suppressions.clone(),
        },
        &mut |_, _| {},
        at,
    );
    let profile = Profile::from_analysis(&a);
    if o.metric == SampleType::LostSpace && !profile.lost {
        return Err(Failure::bad_input(format!(
            "{}: no leak check at exit in this dump, so no lost_space (inuse_space counts every \
             block not freed)",
            o.dump.display()
        )));
    }
    let bytes = match o.format {
        Format::Pprof => {
            let mut wrappers = zmtrace_report::reports::Options::default().wrappers;
            wrappers.extend(o.wrappers.iter().cloned());
            let mut p = export::pprof::build(&dump, &profile, &mut sym, &wrappers, o.metric);
            if let Some(s) = at {
                export::pprof::set_inuse_comment(
                    &mut p,
                    &format!(
                        "inuse_*: live at snapshot {} ({:.3} s)",
                        o.at.as_deref().unwrap_or(""),
                        s.ts_ns as f64 / 1e9
                    ),
                );
            }
            let mut v = Vec::new();
            export::pprof::gzip(&p, &mut v)
                .map_err(|e| Failure::setup(format!("cannot compress the profile: {e}")))?;
            v
        }
        Format::Speedscope => {
            let f = export::speedscope::build(&dump, &profile, &mut sym, o.metric);
            serde_json::to_vec(&f).map_err(|e| Failure::setup(e.to_string()))?
        }
        Format::Folded => {
            export::folded::text(&export::folded::folded(&profile, &mut sym, o.metric)).into_bytes()
        }
    };
    for w in sym
        .warnings
        .iter()
        .chain(&dump.warnings)
        .chain(dump.late_warnings().iter())
    {
        eprintln!("zmtrace: warning: {w}");
    }
    write_file(out, &bytes)
}

/// `--at list`: one line per snapshot, its number, time and event number.
pub fn snapshot_list(dump: &Dump) -> String {
    let mut s = String::new();
    if dump.snapshots.is_empty() {
        s.push_str("no snapshots in this dump\n");
    }
    for (i, snap) in dump.snapshots.iter().enumerate() {
        s.push_str(&format!(
            "{:>4}  {:>10.3} s  event {}{}\n",
            i + 1,
            snap.ts_ns as f64 / 1e9,
            snap.seq,
            if snap.aggregate.is_some() {
                " (aggregated: counters and live set)"
            } else {
                ""
            }
        ));
    }
    s
}

fn pick_snapshot<'d>(
    dump: &'d Dump,
    path: &Path,
    n: &str,
) -> Result<&'d zmtrace_format::Snapshot, Failure> {
    let count = dump.snapshots.len();
    n.parse::<usize>()
        .ok()
        .filter(|&i| i >= 1)
        .and_then(|i| dump.snapshots.get(i - 1))
        .ok_or_else(|| {
            Failure::bad_input(format!(
                "--at {n:?}: {} has {count} snapshot{} (numbered from 1; --at list shows them)",
                path.display(),
                if count == 1 { "" } else { "s" }
            ))
        })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let fail = |e: std::io::Error| Failure::setup(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::File::create(path).map_err(fail)?;
    f.write_all(bytes).and_then(|()| f.flush()).map_err(fail)
}

//! `zmtrace export`: a dump as a pprof profile, a speedscope file or collapsed stacks, for
//! other tools. The formats are the report crate's ([`zmtrace_report::export`]); this only opens
//! the dump, replays it, and writes the file.

use std::io::Write;
use std::path::{Path, PathBuf};

use zmtrace_analyze::session::{self, Session};
use zmtrace_analyze::suppressions::Suppressions;
use zmtrace_format::Dump;
use zmtrace_report::export::{self, Format, Profile, SampleType};

use crate::Failure;

/// `--format`.
pub fn parse_format(s: &str) -> Result<Format, Failure> {
    Format::parse(s).map_err(Failure::bad_input)
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
        print!("{}", zmtrace_report::info::snapshot_list(&dump));
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
            timeline: None,
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
    let mut wrappers = zmtrace_report::Options::default().wrappers;
    wrappers.extend(o.wrappers.iter().cloned());
    let comment = at.map(|s| {
        format!(
            "inuse_*: live at snapshot {} ({:.3} s)",
            o.at.as_deref().unwrap_or(""),
            s.ts_ns as f64 / 1e9
        )
    });
    let bytes = export::render(
        &dump,
        &profile,
        &mut sym,
        o.format,
        &wrappers,
        o.metric,
        comment.as_deref(),
    )
    .map_err(Failure::setup)?;
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

//! `zmtrace export`: a dump as a pprof profile, a speedscope file or collapsed stacks, for
//! other tools. The formats are the analyzer's ([`zmtrace_analyze::export`]); this only opens
//! the dump, replays it, and writes the file.

use std::io::Write;
use std::path::{Path, PathBuf};

use zmtrace_analyze::export::{self, Profile, SampleType};
use zmtrace_analyze::suppressions::{self, Suppressions};
use zmtrace_analyze::{analyze, Symbolizer};
use zmtrace_format::Dump;

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
    pub out: PathBuf,
    pub metric: SampleType,
    pub wrappers: Vec<String>,
    pub suppressions: Suppressions,
}

pub fn run(o: &ExportOptions) -> Result<(), Failure> {
    let dump = Dump::open(&o.dump).map_err(|e| Failure::bad_input(e.to_string()))?;
    let mut a = analyze(&dump, false, &mut |_, _| {});
    let mut sym = Symbolizer::new(&dump);
    suppressions::apply(&mut a, &mut sym, &o.suppressions);
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
            let mut wrappers = zmtrace_analyze::reports::Options::default().wrappers;
            wrappers.extend(o.wrappers.iter().cloned());
            let mut v = Vec::new();
            export::pprof::write(&dump, &profile, &mut sym, &wrappers, o.metric, &mut v)
                .map_err(|e| Failure::usage(format!("cannot compress the profile: {e}")))?;
            v
        }
        Format::Speedscope => {
            let f = export::speedscope::build(&dump, &profile, &mut sym, o.metric);
            serde_json::to_vec(&f).map_err(|e| Failure::usage(e.to_string()))?
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
    write_file(&o.out, &bytes)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let fail = |e: std::io::Error| Failure::usage(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::File::create(path).map_err(fail)?;
    f.write_all(bytes).and_then(|()| f.flush()).map_err(fail)
}

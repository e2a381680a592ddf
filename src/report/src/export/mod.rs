//! Exports for other tools: pprof's `profile.proto` ([`pprof`]: `go tool pprof`, Pyroscope,
//! Parca), speedscope's JSON ([`speedscope`]) and collapsed stacks ([`folded`]).
//!
//! Every format is written from one [`Profile`]: per stack, the weights of the sample types Go's
//! heap profiles have, which `go tool pprof`, Pyroscope and Parca know by name:
//!
//! - `alloc_objects`, `alloc_space`: allocations made at the stack and their requested bytes, as
//!   `report`'s `allocations` and `bytes` count them (a realloc's new size is in `alloc_space`,
//!   the realloc itself is not an object);
//! - `inuse_objects`, `inuse_space`: the blocks live at exit (in an aggregated dump, at the end of
//!   the recording), as `report`'s `leaked` and `leaks` count them: suppressed blocks are left out;
//! - `lost_space`, only where the dump has a leak check: bytes definitely and indirectly lost
//!   (the flamegraph's `lost`).
//!
//! The weights come from the [`Analysis`] of a full dump or an aggregated one
//! ([`Profile::from_analysis`]). For a sampled recording (`zmtrace run --sample`) the analysis's
//! figures are already scaled to estimates, and its interval is the sampling period
//! ([`Profile::period`]): the writers take nothing else from the analysis.

pub mod folded;
pub mod pprof;
pub mod speedscope;

use zmtrace_format::{Dump, LeakKind};

use zmtrace_analyze::analysis::Analysis;
use zmtrace_analyze::symbols::Symbolizer;

/// The file formats of `zmtrace export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// gzipped `profile.proto`.
    Pprof,
    Speedscope,
    Folded,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "pprof" => Ok(Format::Pprof),
            "speedscope" => Ok(Format::Speedscope),
            "folded" => Ok(Format::Folded),
            _ => Err(format!(
                "unknown export format {s:?}: expected pprof, speedscope or folded"
            )),
        }
    }
}

/// The bytes of `zmtrace export`'s file: `profile` in `format` (`metric`: the sample type shown
/// first, or the one folded), sites named past `wrappers`. `inuse_comment` says, in a pprof
/// profile, what its inuse figures are (the blocks live at a snapshot). The error is one line.
pub fn render<'d>(
    dump: &'d Dump,
    profile: &Profile,
    sym: &mut Symbolizer<'d>,
    format: Format,
    wrappers: &[String],
    metric: SampleType,
    inuse_comment: Option<&str>,
) -> Result<Vec<u8>, String> {
    Ok(match format {
        Format::Pprof => {
            let mut p = pprof::build(dump, profile, sym, wrappers, metric);
            if let Some(c) = inuse_comment {
                pprof::set_inuse_comment(&mut p, c);
            }
            let mut v = Vec::new();
            pprof::gzip(&p, &mut v).map_err(|e| format!("cannot compress the profile: {e}"))?;
            v
        }
        Format::Speedscope => {
            let f = speedscope::build(dump, profile, sym, metric);
            serde_json::to_vec(&f).map_err(|e| e.to_string())?
        }
        Format::Folded => folded::text(&folded::folded(profile, sym, metric)).into_bytes(),
    })
}

/// One sample type of an export, in pprof's (Go heap profile) naming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleType {
    AllocObjects,
    AllocSpace,
    InuseObjects,
    InuseSpace,
    LostSpace,
}

impl SampleType {
    pub const ALL: [SampleType; 5] = [
        SampleType::AllocObjects,
        SampleType::AllocSpace,
        SampleType::InuseObjects,
        SampleType::InuseSpace,
        SampleType::LostSpace,
    ];

    /// pprof's name.
    pub fn name(self) -> &'static str {
        match self {
            SampleType::AllocObjects => "alloc_objects",
            SampleType::AllocSpace => "alloc_space",
            SampleType::InuseObjects => "inuse_objects",
            SampleType::InuseSpace => "inuse_space",
            SampleType::LostSpace => "lost_space",
        }
    }

    /// pprof's unit.
    pub fn unit(self) -> &'static str {
        match self {
            SampleType::AllocObjects | SampleType::InuseObjects => "count",
            _ => "bytes",
        }
    }

    /// The same measure among `zmtrace flamegraph`'s metrics, where it has one.
    pub fn metric(self) -> Option<crate::flame::Metric> {
        use crate::flame::Metric;
        match self {
            SampleType::AllocObjects => Some(Metric::Allocations),
            SampleType::AllocSpace => Some(Metric::Bytes),
            SampleType::InuseObjects => None,
            SampleType::InuseSpace => Some(Metric::Leaked),
            SampleType::LostSpace => Some(Metric::Lost),
        }
    }

    /// A pprof name, or the name of the flamegraph metric that measures the same.
    pub fn parse(s: &str) -> Option<SampleType> {
        SampleType::ALL
            .into_iter()
            .find(|t| t.name() == s || t.metric().is_some_and(|m| m.name() == s))
    }

    /// What it measures, in words.
    pub fn describe(self) -> &'static str {
        match self {
            SampleType::AllocObjects => "allocations made",
            SampleType::AllocSpace => "bytes allocated",
            SampleType::InuseObjects => "blocks live at exit",
            SampleType::InuseSpace => "bytes live at exit",
            SampleType::LostSpace => "bytes definitely and indirectly lost at exit",
        }
    }
}

/// The weights of one stack, per [`SampleType`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Weights {
    pub alloc_objects: u64,
    pub alloc_space: u64,
    pub inuse_objects: u64,
    pub inuse_space: u64,
    pub lost_space: u64,
}

impl Weights {
    pub fn get(&self, t: SampleType) -> u64 {
        match t {
            SampleType::AllocObjects => self.alloc_objects,
            SampleType::AllocSpace => self.alloc_space,
            SampleType::InuseObjects => self.inuse_objects,
            SampleType::InuseSpace => self.inuse_space,
            SampleType::LostSpace => self.lost_space,
        }
    }
}

/// What an export holds: per stack id, its weights.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// By stack id, ascending; stacks with nothing to show are left out.
    pub stacks: Vec<(u32, Weights)>,
    /// The dump had a leak check at exit: `lost_space` is meaningful (and exported).
    pub lost: bool,
    /// Bytes per sample of the recording: 1 when every allocation was recorded (a full or an
    /// aggregated dump). A sampled recording sets its rate here, with weights already scaled.
    pub period: u64,
    /// From an aggregated dump: "in use" is at the end of the recording, not a replay's exit.
    pub aggregated: bool,
    /// How long the recording ran, where known (0 for an aggregated dump).
    pub duration_ns: u64,
}

impl Profile {
    /// The weights of every stack of a full or an aggregated dump's analysis (with suppressions
    /// already applied, as for `report`).
    pub fn from_analysis(a: &Analysis) -> Profile {
        let mut stacks: Vec<(u32, Weights)> = a
            .sites
            .iter()
            .map(|(&id, s)| {
                (
                    id,
                    Weights {
                        alloc_objects: s.allocations,
                        alloc_space: s.bytes,
                        inuse_objects: s.leaked_blocks,
                        inuse_space: s.leaked_bytes,
                        lost_space: s.kinds[LeakKind::Definite as usize].bytes
                            + s.kinds[LeakKind::Indirect as usize].bytes,
                    },
                )
            })
            .filter(|(_, w)| *w != Weights::default())
            .collect();
        stacks.sort_unstable_by_key(|s| s.0);
        Profile {
            stacks,
            lost: a.check.is_some(),
            // A sampled recording's weights are already scaled to estimates (see `Analysis`).
            period: a.sample_interval.unwrap_or(1),
            aggregated: a.aggregated,
            duration_ns: a.duration_ns,
        }
    }

    /// The sample types this profile has: all but `lost_space` without a leak check.
    pub fn sample_types(&self) -> Vec<SampleType> {
        SampleType::ALL
            .into_iter()
            .filter(|&t| t != SampleType::LostSpace || self.lost)
            .collect()
    }

    /// The values of one sample type per stack (zeros included).
    pub fn values(&self, t: SampleType) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.stacks.iter().map(move |(id, w)| (*id, w.get(t)))
    }
}

//! One dump, opened for analysis: replayed once, its stacks symbolized, the suppressions applied.
//! Every subcommand that reads a dump (`report`, `leaks`, `churn`, `flamegraph`, `diff`, `view`,
//! `export`, and `run`'s summary and leak gate) starts here, so they agree on what a dump says.
//!
//! # Suppressions are an input
//!
//! The one rule: the suppressions given in [`Options::suppressions`] are always applied, with or
//! without a leak check in the dump; a caller that wants none passes
//! [`Suppressions::default()`]. They only take blocks out of the leaked figures (per site, per
//! class, and into [`Analysis::suppressed`]); [`Analysis::leaked_blocks`] and
//! [`Analysis::leaked_bytes`] stay every block not freed, as `dump-info` and `run` print them.
//!
//! # Why the dump is opened by the caller
//!
//! The [`Symbolizer`] borrows the [`Dump`] (its modules and stacks), so a value owning both would
//! borrow from itself. The caller opens the dump ([`open`] gives the one-line error every
//! subcommand prints) and the session borrows it for as long as it lives.

use std::path::Path;

use zmtrace_format::Dump;

use crate::analysis::Analysis;
use crate::suppressions::{self, Suppressions};
use crate::symbols::Symbolizer;

/// What to compute.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Fill in each site's bytes live at the peak ([`crate::analysis::SiteStats::peak_bytes`]):
    /// `report`, the peak flamegraph, `diff` and `view` need them.
    pub peak_sites: bool,
    /// The page's timeline in this many time buckets (`zmtrace view`; see
    /// [`crate::analysis::Want::timeline`]): recorded by the same replay.
    pub timeline: Option<usize>,
    /// Accepted leaks, taken out of the leaked figures (see the module docs).
    pub suppressions: Suppressions,
}

/// A dump, its replay and its symbolizer.
pub struct Session<'d> {
    pub dump: &'d Dump,
    /// With the suppressions applied.
    pub analysis: Analysis,
    pub sym: Symbolizer<'d>,
}

/// Opens the dump at `path`; the error is one line naming the file.
pub fn open(path: &Path) -> Result<Dump, String> {
    Dump::open(path).map_err(|e| e.to_string())
}

impl<'d> Session<'d> {
    /// Replays `dump` and applies the suppressions.
    pub fn new(dump: &'d Dump, opts: &Options) -> Session<'d> {
        Session::with_progress(dump, opts, &mut |_, _| {})
    }

    /// As [`Session::new`], `progress` called now and then with (records read, records in all).
    pub fn with_progress(
        dump: &'d Dump,
        opts: &Options,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Session<'d> {
        Session::at(dump, opts, progress, None)
    }

    /// As [`Session::with_progress`], as of snapshot `at` (`zmtrace export --at`): see
    /// [`crate::analysis::analyze_at`].
    pub fn at(
        dump: &'d Dump,
        opts: &Options,
        progress: &mut dyn FnMut(usize, usize),
        at: Option<&zmtrace_format::Snapshot>,
    ) -> Session<'d> {
        let want = crate::analysis::Want {
            peak_sites: opts.peak_sites,
            timeline: opts.timeline,
        };
        let analysis = crate::analysis::analyze_with(dump, &want, progress, at);
        Session::of(dump, analysis, opts)
    }

    /// The session of `dump` whose replay is done already (`zmtrace run` follows its dumps while
    /// the program runs: [`crate::follow::Follow::finish`]); `opts`' suppressions are applied.
    pub fn of(dump: &'d Dump, mut analysis: Analysis, opts: &Options) -> Session<'d> {
        let mut sym = Symbolizer::new(dump);
        suppressions::apply(&mut analysis, &mut sym, &opts.suppressions);
        Session {
            dump,
            analysis,
            sym,
        }
    }
}

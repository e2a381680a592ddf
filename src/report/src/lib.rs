//! The zmtrace reports: what [`zmtrace_analyze`] computed from a dump, presented. Every text and
//! JSON zmtrace prints about a dump is built here, once per kind of line, so that `report`,
//! `leaks`, `run`'s summary and the leak gate say the same thing the same way.
//!
//! Each subcommand makes one call here: [`report`], [`leaks`], [`churn`], [`diff`] (a
//! [`Session`] in, the text or the JSON out), [`run`]'s summary and gate, [`info::text`],
//! [`flame`], [`export`] and [`view::build`].
//!
//! - [`parts`]: what every report is made of (options, the header, a site and its stack).
//! - [`reports`]: `report` and `churn`, as data (JSON) and text; [`leaks`]: `leaks`, and the
//!   leak lines the others reuse (classes, groups, the leak check).
//! - [`mapped`]: the report's section on the program's own mappings.
//! - [`diff`]: two dumps compared site by site (`zmtrace diff`, and the page's rows).
//! - [`info`]: `zmtrace dump-info`'s text: what is in a dump, and whether it is whole.
//! - [`run`]: the summary `zmtrace run` prints for each dump of the run, and its leak gate.
//! - [`flame`]: collapsed stacks and SVG flamegraphs per metric.
//! - [`export`]: pprof (`profile.proto`), speedscope JSON and collapsed stacks for other tools.
//! - [`view`]: the pre-aggregated data of `zmtrace view`'s page (sites, tables, diff; the
//!   timeline is recorded by the analysis's replay, [`zmtrace_analyze::timeline`], and added up
//!   per site here).
//!
//! # JSON schema (version 1)
//!
//! Every report object starts with the header fields: `dump`, `program`, `pid`, `command`
//! (argv), `complete` (false when the process did not end normally or data was lost), `ending`
//! (one line), `warnings` (lines). A *stack* is a list of frames, innermost first, each
//! `{function, file, line, module, address, inlined}` (null where unknown); a *site* adds `site`,
//! the name of its first frame outside allocator wrappers, next to its `stack`.
//!
//! - `report`: `allocations`, `frees`, `reallocs`, `failed`, `bytes_allocated`, `peak_bytes`,
//!   `peak_time_ns`, `leaked_blocks`, `leaked_bytes`, `temporary`, `threads`, `events`,
//!   `duration_ns` (`peak_bytes`, `peak_time_ns`, `events` and `duration_ns` are null for an
//!   aggregated dump, which has no timeline; it has `calls`, the calls it counted, instead),
//!   `aggregated`, `check`, `kinds`, `suppressed` (as in `leaks`), and `top`:
//!   `{allocations, bytes, peak, leaked, temporary, reallocs}`, each a list of sites with a `value`;
//!   and `mapped`, the program's own mappings, in none of the heap figures: `maps`, `unmaps`,
//!   `remaps` (calls), `bytes_mapped`, `bytes_unmapped`, `peak_bytes`, `peak_time_ns`,
//!   `at_exit_bytes`, `at_exit_ranges`, `at_exit_anonymous_bytes`, `at_exit_file_bytes`,
//!   `at_exit_shared_bytes`, and `top`: `{bytes, at_exit}` (see [`mapped`]).
//! - `leaks`: `leaked_blocks`, `leaked_bytes` (every block not freed at exit), `groups`, `check`
//!   (the leak check at exit: `{trigger, scan_ns, threads_stopped, threads_unstopped,
//!   root_bytes, unscanned_blocks, unscanned_bytes, unreadable_blocks, unreadable_bytes}`, or null without one), `kinds` (`{definite,
//!   indirect, possible, reachable}`, each `{blocks, bytes}`, suppressed blocks left out; null
//!   without a check), `suppressed` (`{blocks, bytes, by: [{name, blocks, bytes}]}`), `sites`
//!   (each `kind` (one of the four, or null without a check), `blocks`, `bytes`, `via_realloc`,
//!   `site`, `stack`), lost first, then largest first.
//! - `diff`: `base` and `new` (headers), `sites` (each `site`, `stack`, and `allocations`,
//!   `bytes`, `peak`, `leaked_blocks`, `leaked_bytes`, `lost_bytes`, `reallocs`, `temporary`,
//!   each `{base, new, delta}`: [`diff::METRICS`]), largest change first; `totals` the same
//!   fields over all sites; `changed` and `unchanged`, the sites in each. `zmtrace view --base`
//!   shows the same rows.
//! - `churn`: `reallocs`, `bytes_copied`, `sites` (each `reallocs`, `grew`, `shrank`, `moved`,
//!   `in_place`, `bytes_copied`, `longest_chain`, `pattern` (`{kind: none | fixed_step |
//!   geometric | irregular, step, share, factor}`), `hint` (or null), `site`, `stack`), by bytes
//!   copied.
//! - `run` (the data of `zmtrace run`'s summary, [`run::RunSummary`]; the CLI prints its text):
//!   `out_dir`, `killed_by` (or null), `dumps`, each `{dump, error, summary}` where `summary` (null
//!   when `error` says why the dump cannot be read) has `process` (`start`, `fork`, `exec`,
//!   `child`), `sample_interval`, `classes_exact`, `allocations`, `bytes_allocated`, `frees`,
//!   `reallocs`, `aggregated`, `peak_bytes`, `peak_time_ns` (null when aggregated),
//!   `leaked_blocks`, `leaked_bytes`, `kinds` (as in `leaks`), `suppressed_bytes`,
//!   `suppressed_blocks`, `ending` (null for a complete dump) and `warnings`.

pub mod diff;
pub mod export;
pub mod flame;
pub mod info;
pub mod leaks;
pub mod mapped;
pub mod parts;
pub mod reports;
pub mod run;
pub mod view;

pub use zmtrace_analyze::words;

use serde::Serialize;
use zmtrace_analyze::Session;
use zmtrace_format::LeakKind;

pub use parts::Options;

/// How a report is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// For people.
    Text,
    /// The schema above, pretty-printed, one object and a newline.
    Json,
}

/// `v` as `--json` prints it.
pub fn json(v: &impl Serialize) -> String {
    let mut s =
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// `zmtrace report` (the session made with the peak's sites).
pub fn report(s: &mut Session, opts: &Options, format: Format) -> String {
    let r = reports::report(s.dump, &s.analysis, &mut s.sym, opts);
    match format {
        Format::Text => reports::report_text(&r, opts),
        Format::Json => json(&r),
    }
}

/// `zmtrace leaks`: the groups of at least `min_bytes`, of the classes `kinds` (all when empty).
pub fn leaks(
    s: &mut Session,
    opts: &Options,
    min_bytes: u64,
    kinds: &[LeakKind],
    format: Format,
) -> String {
    let l = leaks::leaks(s.dump, &s.analysis, &mut s.sym, opts, min_bytes, kinds);
    match format {
        Format::Text => leaks::leaks_text(&l, opts),
        Format::Json => json(&l),
    }
}

/// `zmtrace churn`.
pub fn churn(s: &mut Session, opts: &Options, format: Format) -> String {
    let c = reports::churn(s.dump, &s.analysis, &mut s.sym, opts);
    match format {
        Format::Text => reports::churn_text(&c, opts),
        Format::Json => json(&c),
    }
}

/// `zmtrace diff BASE NEW` (both sessions made with the peak's sites).
pub fn diff(base: &mut Session, new: &mut Session, opts: &Options, format: Format) -> String {
    let d = diff::diff(
        diff::Side {
            dump: base.dump,
            analysis: &base.analysis,
            sym: &mut base.sym,
        },
        diff::Side {
            dump: new.dump,
            analysis: &new.analysis,
            sym: &mut new.sym,
        },
        opts,
    );
    match format {
        Format::Text => diff::diff_text(&d, opts),
        Format::Json => json(&d),
    }
}

//! The zmtrace analyzer: reads a dump (any size, damaged or cut short), replays its events in
//! order, symbolizes the stacks offline, and builds the reports.
//!
//! - [`symbols`]: addresses to functions, files and lines (DWARF with inlining, else ELF symbol
//!   tables, else module+offset).
//! - [`analysis`]: one streaming replay that computes every number the reports need.
//! - [`follow`]: a dump still being written, replayed a piece at a time as it grows (`run --serve`).
//! - [`session`]: a dump replayed, symbolized and with its suppressions applied: where every
//!   subcommand starts.
//! - [`leakcheck`]: the leak check made in the process at exit, which classes the blocks left.
//! - [`suppressions`]: stack patterns that hide accepted leaks, and glibc's built-in set.
//! - [`reports`]: `report`, `leaks` ([`leaks`]) and `churn`, as data (JSON) and text.
//! - [`mapped`]: the program's own `mmap`/`munmap`/`mremap` calls, a metric of their own.
//! - [`diff`]: two dumps compared site by site.
//! - [`info`]: `zmtrace dump-info`'s text: what is in a dump, and whether it is whole.
//! - [`flame`]: collapsed stacks and SVG flamegraphs per metric.
//! - [`export`]: pprof (`profile.proto`), speedscope JSON and collapsed stacks for other tools.
//! - [`view`]: the pre-aggregated data of `zmtrace view`'s page (time buckets, sites, diff).
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

pub mod analysis;
pub mod diff;
pub mod export;
pub mod flame;
pub mod follow;
pub mod info;
pub mod leakcheck;
pub mod leaks;
mod livemap;
pub mod mapped;
pub mod reports;
pub mod session;
pub mod suppressions;
pub mod symbols;
pub mod view;
pub mod words;

pub use analysis::{analyze, Analysis};
pub use session::Session;
pub use symbols::Symbolizer;

//! The zmtrace analyzer: reads a dump (any size, damaged or cut short), replays its events in
//! order, symbolizes the stacks offline, and builds the reports.
//!
//! - [`symbols`]: addresses to functions, files and lines (DWARF with inlining, else ELF symbol
//!   tables, else module+offset).
//! - [`analysis`]: one streaming replay that computes every number the reports need.
//! - [`reports`]: `report`, `leaks` and `churn`, as data (JSON) and text.
//! - [`flame`]: collapsed stacks and SVG flamegraphs per metric.
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
//!   `duration_ns`, and `top`: `{allocations, bytes, peak, leaked, temporary, reallocs}`, each a
//!   list of sites with a `value`.
//! - `leaks`: `leaked_blocks`, `leaked_bytes`, `groups`, `sites` (each `blocks`, `bytes`,
//!   `via_realloc`, `site`, `stack`), largest first.
//! - `churn`: `reallocs`, `bytes_copied`, `sites` (each `reallocs`, `grew`, `shrank`, `moved`,
//!   `in_place`, `bytes_copied`, `longest_chain`, `pattern` (`{kind: none | fixed_step |
//!   geometric | irregular, step, share, factor}`), `hint` (or null), `site`, `stack`), by bytes
//!   copied.

pub mod analysis;
pub mod flame;
pub mod reports;
pub mod symbols;
pub mod view;

pub use analysis::{analyze, Analysis};
pub use symbols::Symbolizer;

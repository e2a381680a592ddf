//! The zmtrace analyzer: reads a dump (any size, damaged or cut short), replays its events in
//! order, symbolizes the stacks offline, and computes every number the reports show. It prints
//! nothing and formats nothing: the reports, their text and JSON, flamegraphs, exports and the
//! page's data are the report crate's (`zmtrace-report`), which depends on this one, never the
//! other way round.
//!
//! - [`symbols`]: addresses to functions, files and lines (DWARF with inlining, else ELF symbol
//!   tables, else module+offset).
//! - [`analysis`]: one streaming replay that computes every number the reports need.
//! - [`follow`]: a dump still being written, replayed a piece at a time as it grows (`run --serve`).
//! - [`session`]: a dump replayed, symbolized and with its suppressions applied: where every
//!   subcommand starts.
//! - [`sites`]: which stacks are one site, and where a site starts (past allocator wrappers).
//! - [`leakcheck`]: the leak check made in the process at exit, which classes the blocks left.
//! - [`suppressions`]: stack patterns that hide accepted leaks, and glibc's built-in set.
//! - [`mapped`]: the program's own `mmap`/`munmap`/`mremap` calls, a metric of their own.
//! - [`timeline`]: the time-bucketed counters of `zmtrace view`'s page, recorded by the same
//!   replay as an observer of it.

pub mod analysis;
pub mod follow;
pub mod leakcheck;
mod livemap;
pub mod mapped;
pub mod session;
pub mod sites;
pub mod suppressions;
pub mod symbols;
pub mod timeline;
pub mod words;

pub use analysis::{analyze, Analysis};
pub use session::Session;
pub use symbols::{FrameCache, Symbolizer};

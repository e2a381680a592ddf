//! The words and numbers of every text zmtrace prints: defined once in the format crate (whose
//! own warnings use them too), re-exported here for the reports and the CLI.

pub use zmtrace_format::words::*;

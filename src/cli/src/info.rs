//! `zmtrace dump-info`: what is in a dump, and whether it is whole (the text is the report crate's,
//! [`zmtrace_report::info`]).

use std::io::Write;
use std::path::Path;

use crate::Failure;

pub fn dump_info(path: &Path, list_modules: bool) -> Result<(), Failure> {
    let d = zmtrace_analyze::session::open(path).map_err(Failure::bad_input)?;
    let text = zmtrace_report::info::text(&d, list_modules);
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    crate::analyze::damaged(&d)
}

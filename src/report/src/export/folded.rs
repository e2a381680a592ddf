//! Collapsed stacks (`main;f;g 123`) of one sample type: the very lines `zmtrace flamegraph
//! --folded` writes for the same measure (both go through [`crate::flame::collapse`]).

use super::{Profile, SampleType};
use crate::flame;
use zmtrace_analyze::symbols::Symbolizer;

/// One line per distinct stack, outermost frame first, sorted; stacks weighing 0 are left out.
pub fn folded(p: &Profile, sym: &mut Symbolizer, t: SampleType) -> Vec<String> {
    flame::collapse(sym, p.values(t))
}

/// The lines as a file's text (newline-terminated, empty for no stacks).
pub fn text(lines: &[String]) -> String {
    let mut s = lines.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

//! Which stacks are one site, and where a site starts: the rules every report, the suppressions
//! and the exports share. Computed here, on the symbolized frames, so that `zmtrace diff`, the
//! page and the reports cannot disagree about what "the same site" means.

use crate::symbols::{Frame, Symbolizer};

/// Frames that are allocator wrappers rather than the code that wanted the memory: a site is
/// named after the first frame outside them. Globs with `*`.
pub const DEFAULT_WRAPPERS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "free",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
    "__libc_*",
    "zmalloc*",
    "zcalloc*",
    "zrealloc*",
    "zfree*",
    "ztrymalloc*",
    "ztrycalloc*",
    "ztryrealloc*",
    "zstrdup",
    "operator new*",
    "operator delete*",
    "xmalloc",
    "xcalloc",
    "xrealloc",
    "g_malloc*",
    "g_realloc*",
    // Rust: the allocation shims and the standard library's collections.
    "__rust_*",
    "__rustc::*",
    "__rdl_*",
    "alloc::*",
    "<alloc::*",
    "<* as alloc::*",
    "core::*",
    "<core::*",
    "<* as core::*",
    "hashbrown::*",
    "<hashbrown::*",
];

/// Matches `*` globs (the only wildcard).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// How many frames a stack starts with that are wrappers by name (a glob of `wrappers`), not
/// only by being in the C library: the run that text reports fold into one line. The C
/// library's own frames (`strdup`, `fopen`'s buffer) say what the program asked for, and stay.
pub fn named_wrapper_frames(frames: &[Frame], wrappers: &[String]) -> usize {
    frames
        .iter()
        .take_while(|f| wrapper_by_name(f, wrappers))
        .count()
}

fn wrapper_by_name(f: &Frame, wrappers: &[String]) -> bool {
    f.function
        .as_deref()
        .is_some_and(|n| wrappers.iter().any(|w| glob_match(w, n)))
}

fn is_wrapper(f: &Frame, wrappers: &[String]) -> bool {
    let in_libc = f.module.as_deref().is_some_and(|m| {
        let name = m.rsplit('/').next().unwrap_or(m);
        name.starts_with("libc.so") || name.starts_with("ld-linux")
    });
    in_libc || wrapper_by_name(f, wrappers)
}

/// Where a stack's site is: the index of its first frame outside the wrappers (0 when every
/// frame is one).
pub fn site_start(frames: &[Frame], wrappers: &[String]) -> usize {
    frames
        .iter()
        .position(|f| !is_wrapper(f, wrappers))
        .unwrap_or(0)
}

// Defined with the symbolizer, which groups stacks by it (`Symbolizer::site_group`).
pub use crate::symbols::{frame_key, FrameKey};

/// What makes two stacks one site (see [`merged_sites`]). A frame without name or line is keyed
/// by its offset in its module, not its address in the process, so the key also matches a site
/// across two runs of the same program.
pub fn site_key(frames: &[Frame]) -> Vec<FrameKey> {
    frames.iter().map(frame_key).collect()
}

/// Per-stack numbers (`sites`: the replay's per-site totals, or the mappings'), merged where
/// stacks symbolize the same (the same functions, files and lines: e.g. one source line compiled
/// into several calls) with `merge`, each with the smallest stack id as its representative.
/// Generic so that this module depends on the symbols only, not on what is counted per site.
pub fn merged<T: Clone, S: std::hash::BuildHasher>(
    sites: &std::collections::HashMap<u32, T, S>,
    sym: &mut Symbolizer,
    merge: impl Fn(&mut T, &T),
) -> Vec<(u32, T)> {
    let mut ids: Vec<u32> = sites.keys().copied().collect();
    ids.sort_unstable();
    // By `Symbolizer::site_group`, which is `site_key` without building a stack's frames.
    let mut by_key: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    let mut out: Vec<(u32, T)> = Vec::new();
    for id in ids {
        let key = sym.site_group(id);
        match by_key.get(&key) {
            Some(&i) => merge(&mut out[i].1, &sites[&id]),
            None => {
                by_key.insert(key, out.len());
                out.push((id, sites[&id].clone()));
            }
        }
    }
    out
}

/// The replay's per-site totals, merged as [`merged`] says.
pub fn merged_sites(
    a: &crate::Analysis,
    sym: &mut Symbolizer,
) -> Vec<(u32, crate::analysis::SiteStats)> {
    merged(&a.sites, sym, |s, o| s.merge(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_shell_star() {
        assert!(glob_match("zmalloc*", "zmalloc_usable"));
        assert!(glob_match("zmalloc*", "zmalloc"));
        assert!(!glob_match("zmalloc*", "my_zmalloc"));
        assert!(glob_match("operator new*", "operator new(unsigned long)"));
        assert!(glob_match("*alloc*", "ztrymalloc_usable"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXcYYb"));
        assert!(glob_match("free", "free"));
        assert!(!glob_match("free", "freed"));
    }
}

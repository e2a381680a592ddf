//! Suppressions: stack patterns that hide known, accepted leaks from the leak reports and the CI
//! gate, as valgrind's suppression files and LeakSanitizer's `leak:` lines do.
//!
//! # File format
//!
//! ```text
//! # A comment. Blank lines are ignored.
//! suppression my cache, filled once and kept
//!     fun:cache_init*
//!
//! suppression anything the plugin loader keeps
//!     mod:libplugin.so*
//!     ...
//!     fun:load_plugins
//! ```
//!
//! `suppression NAME` starts one; the lines after it are its frame patterns, matched against a
//! block's stack from its innermost frame (the function that called the allocator) outwards, one
//! frame each, as valgrind does:
//!
//! - `fun:GLOB`: the frame's function (demangled; inlined frames count as frames);
//! - `mod:GLOB`: the frame's module, by file name (`libc.so.*`), or by path if the glob has a `/`;
//! - `...`: any number of frames, none included.
//!
//! A glob's only wildcard is `*`. The frames after the last pattern do not matter. A block whose
//! stack matches any suppression is left out of every leak class and counted as suppressed, by
//! suppression name.
//!
//! [`Suppressions::builtin`] is a small set for glibc's own one-time allocations, which it keeps
//! until the process ends (valgrind hides them by calling `__libc_freeres` at exit; zmtrace does not
//! change what the program does): stdio buffers, a thread's DTV and static TLS, the loader's
//! `dlopen` bookkeeping, locale data.

use crate::analysis::Analysis;
use crate::sites::glob_match;
use crate::symbols::{Frame, Symbolizer};

/// The built-in set (used unless `--no-default-suppressions`).
pub const BUILTIN: &str = "\
# glibc's one-time allocations, kept until the process ends.

suppression glibc: stdio buffer
    fun:_IO_file_doallocate

suppression glibc: thread DTV and static TLS
    mod:ld-linux*.so*
    ...
    fun:_dl_allocate_tls*

suppression glibc: dynamic TLS of a loaded module
    mod:ld-linux*.so*
    ...
    fun:__tls_get_addr

suppression glibc: dlopen bookkeeping
    mod:ld-linux*.so*
    ...
    fun:dlopen*

suppression glibc: locale data (setlocale)
    mod:libc.so*
    ...
    fun:setlocale

suppression glibc: locale data (newlocale)
    mod:libc.so*
    ...
    fun:newlocale
";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Function(String),
    Module(String),
    AnyFrames,
}

impl Pattern {
    fn matches(&self, f: &Frame) -> bool {
        match self {
            Pattern::Function(g) => f.function.as_deref().is_some_and(|n| glob_match(g, n)),
            Pattern::Module(g) => f.module.as_deref().is_some_and(|m| {
                if g.contains('/') {
                    glob_match(g, m)
                } else {
                    glob_match(g, m.rsplit('/').next().unwrap_or(m))
                }
            }),
            Pattern::AnyFrames => true,
        }
    }
}

/// One suppression: a name and its frame patterns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppression {
    pub name: String,
    patterns: Vec<Pattern>,
}

impl Suppression {
    /// True when `frames` (innermost first) start with frames the patterns match.
    pub fn matches(&self, frames: &[Frame]) -> bool {
        fn at(p: &[Pattern], f: &[Frame]) -> bool {
            match p.split_first() {
                None => true,
                Some((Pattern::AnyFrames, rest)) => (0..=f.len()).any(|k| at(rest, &f[k..])),
                Some((pat, rest)) => {
                    f.first().is_some_and(|fr| pat.matches(fr)) && at(rest, &f[1..])
                }
            }
        }
        at(&self.patterns, frames)
    }
}

/// A list of suppressions, the first match wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Suppressions {
    pub list: Vec<Suppression>,
}

impl Suppressions {
    /// The built-in set ([`BUILTIN`]).
    pub fn builtin() -> Suppressions {
        Suppressions::parse(BUILTIN, "built-in suppressions").expect("the built-in set parses")
    }

    /// Reads a suppression file.
    pub fn load(path: &std::path::Path) -> Result<Suppressions, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read suppressions {}: {e}", path.display()))?;
        Suppressions::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a suppression file; `origin` names it in errors, which say
    /// `ORIGIN:LINE: what is wrong`.
    pub fn parse(text: &str, origin: &str) -> Result<Suppressions, String> {
        let mut list: Vec<(usize, Suppression)> = Vec::new();
        let empty = |list: &[(usize, Suppression)]| -> Result<(), String> {
            match list.last() {
                Some((line, s)) if s.patterns.is_empty() => Err(format!(
                    "{origin}:{line}: suppression `{}` has no frame patterns",
                    s.name
                )),
                _ => Ok(()),
            }
        };
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix("suppression") {
                if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
                    return Err(unexpected(origin, n, line));
                }
                empty(&list)?;
                let name = rest.trim();
                if name.is_empty() {
                    return Err(format!("{origin}:{n}: `suppression` needs a name"));
                }
                list.push((
                    n,
                    Suppression {
                        name: name.to_string(),
                        patterns: Vec::new(),
                    },
                ));
                continue;
            }
            let pattern = if line == "..." {
                Pattern::AnyFrames
            } else if let Some(g) = line.strip_prefix("fun:") {
                Pattern::Function(glob(origin, n, "fun:", g)?)
            } else if let Some(g) = line.strip_prefix("mod:") {
                Pattern::Module(glob(origin, n, "mod:", g)?)
            } else {
                return Err(unexpected(origin, n, line));
            };
            match list.last_mut() {
                Some((_, s)) => s.patterns.push(pattern),
                None => {
                    return Err(format!(
                        "{origin}:{n}: a frame pattern before any `suppression NAME` line"
                    ))
                }
            }
        }
        empty(&list)?;
        Ok(Suppressions {
            list: list.into_iter().map(|(_, s)| s).collect(),
        })
    }

    /// The first suppression matching a stack.
    pub fn matching(&self, frames: &[Frame]) -> Option<&Suppression> {
        self.list.iter().find(|s| s.matches(frames))
    }

    pub fn extend(&mut self, other: Suppressions) {
        self.list.extend(other.list);
    }
}

fn unexpected(origin: &str, n: usize, line: &str) -> String {
    format!(
        "{origin}:{n}: expected `suppression NAME`, `fun:GLOB`, `mod:GLOB` or `...`, found `{line}`"
    )
}

fn glob(origin: &str, n: usize, what: &str, g: &str) -> Result<String, String> {
    let g = g.trim();
    if g.is_empty() {
        Err(format!("{origin}:{n}: empty pattern after `{what}`"))
    } else {
        Ok(g.to_string())
    }
}

// The figures of what was taken out are the leak check's types (the replay holds them too).
pub use crate::leakcheck::{Suppressed, SuppressedBy};

/// Takes the blocks live at the end whose stacks match a suppression out of `a`: their sites no
/// longer count them as leaked (nor in any class), and [`Analysis::kinds`] loses them too. What
/// was taken is in [`Analysis::suppressed`].
pub fn apply(a: &mut Analysis, sym: &mut Symbolizer, s: &Suppressions) {
    let mut ids: Vec<u32> = a
        .sites
        .iter()
        .filter(|(_, st)| st.leaked_blocks > 0)
        .map(|(&id, _)| id)
        .collect();
    ids.sort_unstable();
    let mut by: Vec<(usize, SuppressedBy)> = Vec::new();
    for id in ids {
        let frames = sym.stack(id);
        let Some(i) = s.list.iter().position(|sup| sup.matches(&frames)) else {
            continue;
        };
        let Some(site) = a.sites.get_mut(&id) else {
            continue;
        };
        for (total, k) in a.kinds.iter_mut().zip(&site.kinds) {
            total.blocks -= k.blocks;
            total.bytes -= k.bytes;
        }
        let entry = match by.iter_mut().find(|(j, _)| *j == i) {
            Some((_, e)) => e,
            None => {
                by.push((
                    i,
                    SuppressedBy {
                        name: s.list[i].name.clone(),
                        blocks: 0,
                        bytes: 0,
                    },
                ));
                &mut by.last_mut().expect("just pushed").1
            }
        };
        entry.blocks += site.leaked_blocks;
        entry.bytes += site.leaked_bytes;
        a.suppressed.blocks += site.leaked_blocks;
        a.suppressed.bytes += site.leaked_bytes;
        site.leaked_blocks = 0;
        site.leaked_bytes = 0;
        site.leaked_via_realloc = 0;
        site.kinds = Default::default();
        site.kinds_via_realloc = Default::default();
    }
    by.sort_by_key(|(i, _)| *i);
    a.suppressed.by.extend(by.into_iter().map(|(_, b)| b));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: Option<&str>, module: &str) -> Frame {
        Frame {
            function: function.map(str::to_string),
            file: None,
            line: None,
            module: Some(module.to_string()),
            address: "0x1".into(),
            inlined: false,
        }
    }

    #[test]
    fn the_builtin_set_parses() {
        let b = Suppressions::builtin();
        assert_eq!(b.list.len(), 6);
        assert_eq!(b.list[0].name, "glibc: stdio buffer");
    }

    #[test]
    fn patterns_match_from_the_innermost_frame_with_gaps_only_where_asked() {
        let s = Suppressions::parse(
            "# c\nsuppression a\n  mod:libc.so*\n  ...\n  fun:setlocale\n\nsuppression b\n fun:f*\n fun:g\n",
            "t",
        )
        .unwrap();
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let stack = [
            frame(None, libc),
            frame(Some("__strdup"), libc),
            frame(Some("setlocale"), libc),
            frame(Some("main"), "/bin/x"),
        ];
        assert_eq!(s.matching(&stack).map(|s| s.name.as_str()), Some("a"));
        // `fun:f*` must be the innermost frame, and `fun:g` the very next one.
        let fg = [frame(Some("foo"), "/bin/x"), frame(Some("g"), "/bin/x")];
        assert_eq!(s.matching(&fg).map(|s| s.name.as_str()), Some("b"));
        let f_x_g = [
            frame(Some("foo"), "/bin/x"),
            frame(Some("x"), "/bin/x"),
            frame(Some("g"), "/bin/x"),
        ];
        assert!(s.matching(&f_x_g).is_none());
        assert!(s.matching(&stack[3..]).is_none());
        // A module glob with a slash matches the whole path.
        let p = Suppressions::parse("suppression p\nmod:/usr/lib/*/libc.so.6\n", "t").unwrap();
        assert!(p.matching(&stack).is_some());
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let err = |t: &str| Suppressions::parse(t, "s.supp").unwrap_err();
        assert_eq!(
            err("suppression a\n  fun:x\n  frame:y\n"),
            "s.supp:3: expected `suppression NAME`, `fun:GLOB`, `mod:GLOB` or `...`, found `frame:y`"
        );
        assert_eq!(
            err("\nfun:x\n"),
            "s.supp:2: a frame pattern before any `suppression NAME` line"
        );
        assert_eq!(
            err("suppression a\nsuppression b\nfun:x\n"),
            "s.supp:1: suppression `a` has no frame patterns"
        );
        assert_eq!(
            err("suppression a\nfun:x\nsuppression b\n"),
            "s.supp:3: suppression `b` has no frame patterns"
        );
        assert_eq!(err("suppression\n"), "s.supp:1: `suppression` needs a name");
        assert_eq!(
            err("suppression a\nmod:  \n"),
            "s.supp:2: empty pattern after `mod:`"
        );
        assert_eq!(Suppressions::parse("", "e").unwrap().list.len(), 0);
    }
}

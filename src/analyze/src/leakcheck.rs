//! The leak check the recorder made inside the process as it ended (a `Reach` record), as the
//! reports use it: every block live at the end gets memcheck's class, *definitely lost*,
//! *indirectly lost*, *possibly lost* or *still reachable*.
//!
//! A dump without one (a process killed, one that `exec`ed or `abort`ed, a dump of an older
//! zmtrace) is analyzed as before: every block live at exit is listed, with no class.

use serde::Serialize;
use zmtrace_format::{Dump, KindTotal, LeakKind, Reach};

/// What the suppressions ([`crate::suppressions`]) took out of the leaked figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Suppressed {
    pub blocks: u64,
    pub bytes: u64,
    /// Per suppression that matched something, in the order of the list.
    pub by: Vec<SuppressedBy>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SuppressedBy {
    pub name: String,
    pub blocks: u64,
    pub bytes: u64,
}

/// The last leak check made as the process ended, if any.
pub fn exit_check(dump: &Dump) -> Option<&Reach> {
    dump.reach.iter().rev().find(|r| r.trigger.at_end())
}

/// How the leak check at the end went.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Check {
    /// `exit` or `_exit`.
    pub trigger: &'static str,
    /// How long it took in the process, threads stopped and resumed included.
    pub scan_ns: u64,
    pub threads_stopped: u32,
    /// Threads that could not be stopped: their stacks were scanned as they were.
    pub threads_unstopped: u32,
    pub root_bytes: u64,
    /// Blocks live at the end that the check did not see (allocated after it, by a thread
    /// still running): counted as still reachable.
    pub unscanned_blocks: u64,
    pub unscanned_bytes: u64,
    /// Blocks the check could not read whole (a page without read access inside them): what
    /// only they point to may be reported lost.
    pub unreadable_blocks: u64,
    pub unreadable_bytes: u64,
}

impl Check {
    pub fn new(r: &Reach) -> Check {
        Check {
            trigger: match r.trigger {
                zmtrace_format::ReachTrigger::UnderscoreExit => "_exit",
                _ => "exit",
            },
            scan_ns: r.scan_ns,
            threads_stopped: r.threads_stopped,
            threads_unstopped: r.threads_unstopped,
            root_bytes: r.root_bytes,
            unscanned_blocks: 0,
            unscanned_bytes: 0,
            unreadable_blocks: r.unreadable_blocks,
            unreadable_bytes: r.unreadable_bytes,
        }
    }

    /// The class of the block at `addr` that is live at the end.
    pub fn kind_of(&mut self, r: &Reach, addr: u64, size: u64) -> LeakKind {
        r.kind_of(addr).unwrap_or_else(|| {
            self.unscanned_blocks += 1;
            self.unscanned_bytes += size;
            LeakKind::Reachable
        })
    }

    /// The warning lines of blocks that escaped the check, or that it could not read whole.
    /// `cut`: the dump was cut short, so blocks the replay still holds live may be ones whose
    /// frees are in the missing part, not blocks a running thread allocated after the check.
    pub fn warnings(&self, cut: bool) -> Vec<String> {
        use crate::words::{human_bytes, plural};
        let mut w = Vec::new();
        if self.unscanned_blocks > 0 {
            let what = format!(
                "{} ({})",
                plural(self.unscanned_blocks, "block"),
                human_bytes(self.unscanned_bytes)
            );
            w.push(if cut {
                format!(
                    "{what} live at the end of what was read were not seen by the leak check: \
                     the dump is cut short, so their frees are likely in the missing part; \
                     counted as still reachable"
                )
            } else {
                format!(
                    "{what} were allocated after the leak check by a thread still running: \
                     counted as still reachable"
                )
            });
        }
        if self.unreadable_blocks > 0 {
            w.push(format!(
                "{} ({}) could not be read whole by the leak check (a page without read access \
                 inside them): blocks that only they point to may be reported lost",
                plural(self.unreadable_blocks, "block"),
                human_bytes(self.unreadable_bytes)
            ));
        }
        w
    }
}

/// Blocks and bytes of one class, for JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Total {
    pub blocks: u64,
    pub bytes: u64,
}

impl From<KindTotal> for Total {
    fn from(t: KindTotal) -> Total {
        Total {
            blocks: t.blocks,
            bytes: t.bytes,
        }
    }
}

/// The four classes, for JSON: `{definite, indirect, possible, reachable}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Kinds {
    pub definite: Total,
    pub indirect: Total,
    pub possible: Total,
    pub reachable: Total,
}

impl From<&[KindTotal; 4]> for Kinds {
    fn from(k: &[KindTotal; 4]) -> Kinds {
        Kinds {
            definite: k[LeakKind::Definite as usize].into(),
            indirect: k[LeakKind::Indirect as usize].into(),
            possible: k[LeakKind::Possible as usize].into(),
            reachable: k[LeakKind::Reachable as usize].into(),
        }
    }
}

/// Parses `--kind` values: names separated by commas (`definite,indirect`), repeatable.
pub fn parse_kinds(values: &[String]) -> Result<Vec<LeakKind>, String> {
    let mut out = Vec::new();
    for v in values {
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let k = LeakKind::parse(name).ok_or_else(|| {
                format!(
                    "unknown leak kind `{name}`: expected definite, indirect, possible or reachable"
                )
            })?;
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_comma_separated_and_repeated() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_kinds(&v(&["possible,definite", "definite"])).unwrap(),
            [LeakKind::Definite, LeakKind::Possible]
        );
        assert_eq!(
            parse_kinds(&v(&["lost"])).unwrap_err(),
            "unknown leak kind `lost`: expected definite, indirect, possible or reachable"
        );
    }
}

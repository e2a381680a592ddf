//! `zmtrace dump-info`: what is in a dump, and whether it is whole: its header, events by kind,
//! the replay's summary, the recorder's counters, the leak checks (before suppressions, and
//! after the built-in ones, as `run` and `leaks` report them) and the modules. Here rather than
//! in the CLI so that its text is tested as the reports are (`tests/expected.rs`).

use std::fmt::Write;

use zmtrace_format::Dump;

use crate::words::{human_bytes, plural, thousands};
use zmtrace_analyze::suppressions::Suppressions;

/// The text of `zmtrace dump-info` (`list_modules`: `--modules`).
pub fn text(d: &Dump, list_modules: bool) -> String {
    let mut o = String::new();
    let _ = print(&mut o, d, list_modules);
    if !d.snapshots.is_empty() {
        let _ = writeln!(
            o,
            "snapshots: {} (zmtrace export --at N)",
            d.snapshots.len()
        );
        o.push_str(&snapshot_list(d));
    }
    o
}

/// `zmtrace export --at list` (and the end of `dump-info`): one line per snapshot, its number,
/// time and event number.
pub fn snapshot_list(dump: &Dump) -> String {
    let mut s = String::new();
    if dump.snapshots.is_empty() {
        s.push_str("no snapshots in this dump\n");
    }
    for (i, snap) in dump.snapshots.iter().enumerate() {
        s.push_str(&format!(
            "{:>4}  {:>10.3} s  event {}{}\n",
            i + 1,
            snap.ts_ns as f64 / 1e9,
            snap.seq,
            if snap.aggregate.is_some() {
                " (aggregated: counters and live set)"
            } else {
                ""
            }
        ));
    }
    s
}

fn print(o: &mut impl Write, d: &Dump, list_modules: bool) -> std::fmt::Result {
    writeln!(o, "dump:      {}", d.path.display())?;
    writeln!(
        o,
        "format:    version {}, {} bytes, {} records",
        d.version, d.file_len, d.records
    )?;
    if let Some(p) = &d.process {
        writeln!(
            o,
            "process:   pid {} (parent {}), {:?}",
            p.pid, p.ppid, p.origin
        )?;
        if p.origin == zmtrace_format::Origin::Fork {
            writeln!(
                o,
                "           forked from pid {} at event {}",
                p.parent_pid, p.fork_seq
            )?;
        }
        writeln!(o, "program:   {}", p.exe)?;
        writeln!(o, "command:   {}", p.command().join(" "))?;
    }
    writeln!(o, "ending:    {}", crate::parts::ending(d))?;
    // The built-in suppressions, as `run` and `leaks` apply them: they change only the classes
    // (shown next to the recorder's own below), none of the summary's figures. The same replay
    // counts the events by kind (a pass of their own decoded every event twice).
    let session = zmtrace_analyze::Session::new(
        d,
        &zmtrace_analyze::session::Options {
            peak_sites: false,
            timeline: None,
            suppressions: Suppressions::builtin(),
        },
    );
    let by_kind = session.analysis.by_kind.named();
    let total: u64 = by_kind.values().sum();
    writeln!(o, "events:    {total}")?;
    for (k, n) in &by_kind {
        writeln!(o, "  {k:<26} {n}")?;
    }
    let s = &session.analysis;
    if let Some(t) = s.sample_interval {
        writeln!(
            o,
            "sampled:   one sampled byte every {t} B on average{}; the summary is estimated",
            if s.all_blocks {
                ", every block kept for the leak check (--all-blocks)"
            } else {
                ""
            }
        )?;
    }
    writeln!(
        o,
        "summary:   {} ({}), {}, {}, {} failed",
        plural(s.allocations, "allocation"),
        human_bytes(s.bytes_allocated),
        plural(s.frees, "free"),
        plural(s.reallocs, "realloc"),
        thousands(s.failed)
    )?;
    let peak = if s.aggregated {
        "aggregated (no events: no timeline, no peak)".to_string()
    } else {
        format!(
            "peak {} at {:.3} s",
            human_bytes(s.peak_bytes),
            s.peak_ns as f64 / 1e9
        )
    };
    writeln!(
        o,
        "           {peak}; not freed: {}, {}",
        plural(s.leaked_blocks, "block"),
        human_bytes(s.leaked_bytes)
    )?;
    if s.aggregated {
        writeln!(
            o,
            "aggregate: {} counted, {} live at the end{}",
            plural(s.events, "call"),
            plural(d.live_at_end.iter().map(|l| l.blocks).sum::<u64>(), "block"),
            if d.aggregate.is_none() {
                " (no counters: the process ended before writing them)"
            } else {
                ""
            }
        )?;
    }
    if !d.inherited.is_empty() {
        writeln!(
            o,
            "inherited: {} live at the fork",
            plural(d.inherited.len() as u64, "block")
        )?;
    }
    writeln!(o, "threads:   {}", thousands(s.threads))?;
    writeln!(o, "stacks:    {}", d.stacks.len())?;
    if let Some(e) = &d.end {
        writeln!(
            o,
            "recorder:  {} events written, {} dropped, {} untracked frees, {} free(NULL), {} truncated stacks",
            e.events, e.dropped, e.untracked_frees, e.free_null, e.truncated_stacks
        )?;
        if e.compared_stacks > 0 {
            writeln!(
                o,
                "unwinding: {} stacks compared with the reference unwinder, {} differ",
                e.compared_stacks, e.mismatched_stacks
            )?;
        }
        if e.events != total {
            writeln!(
                o,
                "warning:   the recorder wrote {} events but {total} were read",
                e.events
            )?;
        }
    }
    // The recorder's classes are before suppressions; `run`, `report` and `leaks` hide the
    // built-in ones (glibc's one-time blocks), so what they would say is shown next to them.
    let reported = s.check.is_some().then_some(s.kinds);
    let exit_seq = zmtrace_analyze::leakcheck::exit_check(d).map(|r| r.seq);
    for r in &d.reach {
        writeln!(
            o,
            "leak check: {} (event {}), {:.1} ms; {}, {} not; {} of roots",
            r.trigger.describe(),
            r.seq,
            r.scan_ns as f64 / 1e6,
            plural(u64::from(r.threads_stopped), "thread") + " stopped",
            r.threads_unstopped,
            human_bytes(r.root_bytes)
        )?;
        let after = reported.filter(|_| Some(r.seq) == exit_seq);
        writeln!(
            o,
            "  before suppressions{}:",
            if after.is_some() {
                " (in brackets: after the default ones, as `run` and `leaks` report)"
            } else {
                ""
            }
        )?;
        for k in zmtrace_format::LeakKind::ALL {
            let t = r.totals[k as usize];
            let mut line = format!(
                "    {:<24} {}, {}",
                k.describe(),
                plural(t.blocks, "block"),
                human_bytes(t.bytes)
            );
            if let Some(after) = after {
                let a = after[k as usize];
                if (a.blocks, a.bytes) != (t.blocks, t.bytes) {
                    line += &format!(
                        "  [{}; {} suppressed]",
                        human_bytes(a.bytes),
                        human_bytes(t.bytes.saturating_sub(a.bytes))
                    );
                }
            }
            writeln!(o, "{line}")?;
        }
    }
    if s.inconsistent > 0 {
        writeln!(
            o,
            "warning:   {} events free an address that was not live",
            s.inconsistent
        )?;
    }
    writeln!(o, "modules:   {}", d.modules.len())?;
    if list_modules {
        for m in &d.modules {
            let id: String = m.build_id.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(
                o,
                "  {:#014x} {} {}",
                m.base,
                m.path,
                if id.is_empty() { "-" } else { &id }
            )?;
        }
    }
    for w in &d.warnings {
        writeln!(o, "warning:   {w}")?;
    }
    if d.bytes_lost > 0 {
        writeln!(
            o,
            "lost:      {} could not be read",
            human_bytes(d.bytes_lost)
        )?;
    }
    Ok(())
}

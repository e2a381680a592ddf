//! `samples/forker.c` under `zmtrace run`: forks while another thread allocates; every child
//! writes its own dump, ended by exit() or _exit(). The numbers are documented in the sample.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::common::*;

const CHILDREN: u64 = 6;

fn forker() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| run_traced(&sample("forker"), &[]))
}

/// The parent's dump and the children's, by child index (from the child's marker block).
fn dumps() -> (&'static Run, &'static Dump, BTreeMap<u64, &'static Dump>) {
    let run = forker();
    assert_eq!(
        run.code,
        Some(0),
        "forker must exit 0 (its children ended as expected)\n{}",
        run.describe()
    );
    assert_eq!(
        run.dumps.len() as u64,
        1 + CHILDREN,
        "one dump per process\n{}",
        run.describe()
    );
    let parents: Vec<&Dump> = run
        .dumps
        .iter()
        .filter(|d| process(d).origin == Origin::Start)
        .collect();
    assert_eq!(parents.len(), 1, "one parent dump\n{}", run.describe());
    let parent = parents[0];
    let sym = Symbolizer::new();
    let mut children = BTreeMap::new();
    for d in run.dumps.iter().filter(|d| !std::ptr::eq(*d, parent)) {
        let r = replay(d, &sym, &has_function_prefix("zs_child"));
        let markers: Vec<u64> = r
            .events()
            .filter_map(|e| match e.op {
                Op::Alloc("malloc", n) if (1000..1000 + CHILDREN).contains(&n) => Some(n - 1000),
                _ => None,
            })
            .collect();
        assert_eq!(
            markers.len(),
            1,
            "{}: the child's marker malloc(1000 + i) is missing\n{}\n{}",
            d.path.display(),
            list_events(&r),
            run.describe()
        );
        assert!(
            children.insert(markers[0], d).is_none(),
            "two dumps for child {}\n{}",
            markers[0],
            run.describe()
        );
    }
    (run, parent, children)
}

#[test]
fn fork_writes_one_dump_per_child_without_deadlock() {
    let (run, parent, children) = dumps();
    let ppid = process(parent).pid;
    for d in &run.dumps {
        let name = d.path.file_name().unwrap().to_str().unwrap();
        assert!(
            run.stderr.contains(name),
            "zmtrace run does not print the dump path {name} on stderr:\n{}",
            run.stderr
        );
    }
    for (i, d) in &children {
        let p = process(d);
        assert_eq!(
            (p.origin, p.ppid, p.parent_pid),
            (Origin::Fork, ppid, ppid),
            "child {i}: (origin, ppid, parent_pid)\n{}",
            run.describe()
        );
        assert_ne!(p.pid, ppid);
        let name = d.path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(&format!("zmtrace.forker.{}.", p.pid)),
            "child dump {name} is not named zmtrace.forker.<pid>.zmt (pid {})",
            p.pid
        );
    }
}

#[test]
fn fork_child_counts_and_endings_are_exact() {
    let (run, _, children) = dumps();
    let sym = Symbolizer::new();
    for (&i, d) in &children {
        let r = replay(d, &sym, &has_function_prefix("zs_child"));
        assert_complete(run, d, &r);
        let expected = Counts::new()
            .alloc("malloc", 4, 1000 + i + 3 * 32)
            .alloc("calloc", 1, 32)
            .frees(2)
            .leaked(3, 1000 + i + 64);
        assert_eq!(
            r.counts,
            expected,
            "child {i} ({})\n{}\n{}",
            d.path.display(),
            list_events(&r),
            run.describe()
        );
        let end = d.end.unwrap();
        if i % 2 == 0 {
            assert_eq!(end.reason, EndReason::Exit, "child {i} called exit(0)");
        } else {
            assert_eq!(
                (end.reason, end.status),
                (EndReason::UnderscoreExit, 3),
                "child {i} called _exit(3)"
            );
        }
    }
}

#[test]
fn fork_child_inherits_the_parents_blocks_and_frees_one() {
    let (run, parent, children) = dumps();
    let sym = Symbolizer::new();
    // Where the parent's two zs_parent_keep blocks are.
    let pr = replay(parent, &sym, &has_function_prefix("zs_parent_keep"));
    let mut kept: Vec<(u64, u64)> = pr
        .events()
        .filter_map(|e| match e.event.kind {
            EventKind::Alloc { addr, size, .. } => Some((size, addr)),
            _ => None,
        })
        .collect();
    kept.sort();
    assert_eq!(
        kept.iter().map(|k| k.0).collect::<Vec<_>>(),
        [512, 768],
        "zs_parent_keep blocks in the parent\n{}",
        list_events(&pr)
    );
    for (i, d) in &children {
        let mut inherited: Vec<(u64, u64)> = d
            .inherited
            .iter()
            .filter(|b| has_function_prefix("zs_parent_keep")(&sym.stack(d, b.stack)))
            .map(|b| (b.size, b.addr))
            .collect();
        inherited.sort();
        assert_eq!(
            inherited,
            kept,
            "child {i}: inherited zs_parent_keep blocks (size, addr); all inherited: {:?}\n{}",
            d.inherited,
            run.describe()
        );
        let r = replay(d, &sym, &has_function_prefix("zs_parent_keep"));
        let frees: Vec<u64> = r
            .events()
            .filter_map(|e| match e.event.kind {
                EventKind::Free { addr, .. } => Some(addr),
                _ => None,
            })
            .collect();
        assert_eq!(
            frees,
            [kept[0].1],
            "child {i} frees the inherited 512-byte block once\n{}",
            list_events(&r)
        );
        assert_eq!(
            (r.counts.leaked_blocks, r.counts.leaked_bytes),
            (1, 768),
            "child {i}: the inherited 768-byte block stays live"
        );
    }
}

#[test]
fn fork_parent_counts_are_exact() {
    let (run, parent, _) = dumps();
    let sym = Symbolizer::new();
    let r = replay(parent, &sym, &has_function_prefix("zs_parent"));
    assert_complete(run, parent, &r);
    assert_eq!(parent.end.unwrap().reason, EndReason::Exit);
    assert_eq!(
        r.counts,
        Counts::new().alloc("malloc", 2, 512 + 768).frees(2),
        "parent's zs_parent_* events\n{}\n{}",
        list_events(&r),
        run.describe()
    );
    let churn = replay(parent, &sym, &has_function_prefix("zs_churn"));
    let mallocs = churn.counts.allocs.get("malloc").map_or(0, |c| c.0);
    assert!(mallocs > 0, "no zs_churn events\n{}", run.describe());
    assert_eq!(
        (
            churn.counts.allocs.len(),
            churn.counts.frees,
            churn.counts.leaked_blocks
        ),
        (1, mallocs, 0),
        "zs_churn mallocs and frees every block: (kinds, frees, leaked) with {mallocs} mallocs \
         {:?}\n{}",
        churn.counts,
        run.describe()
    );
    // Nothing the children did shows up in the parent.
    let r = replay(parent, &sym, &has_function_prefix("zs_child"));
    assert!(r.events.is_empty(), "{}", list_events(&r));
}

/// Timestamps count from each process's own start: a child starts after what its parent did
/// before forking, and everything a child did happens before the parent, having waited for all
/// children, frees its blocks in zs_parent_release.
#[test]
fn fork_timestamps_respect_causality() {
    let (run, parent, children) = dumps();
    for d in &run.dumps {
        assert_times_within_run(run, d);
    }
    let sym = Symbolizer::new();
    let keep = replay(parent, &sym, &has_function_prefix("zs_parent_keep"));
    let kept_at = keep
        .events()
        .filter(|e| matches!(e.event.kind, EventKind::Alloc { .. }))
        .map(|e| unix_ns(parent, &e.event))
        .max()
        .expect("zs_parent_keep allocations");
    let released_at = keep
        .events()
        .filter(|e| matches!(e.event.kind, EventKind::Free { .. }))
        .map(|e| unix_ns(parent, &e.event))
        .min()
        .expect("zs_parent_release frees");
    let parent_start = process(parent).start_unix_ns;
    let ms = |t: u64| (t as f64 - parent_start as f64) / 1e6;
    for (i, d) in &children {
        let start = process(d).start_unix_ns;
        assert!(
            kept_at <= start,
            "child {i} starts at {:.3} ms after the parent's start, before the parent allocated \
             its zs_parent_keep blocks ({:.3} ms), which it did 100 ms before the first fork",
            ms(start),
            ms(kept_at)
        );
        let r = replay(d, &sym, &has_function_prefix("zs_child"));
        for e in r.events() {
            let at = unix_ns(d, &e.event);
            assert!(
                at <= released_at,
                "child {i} (started at {:.3} ms) has an event at {:.3} ms (ts {:.3} ms), after \
                 the parent's zs_parent_release at {:.3} ms, which waited for the child to end",
                ms(start),
                ms(at),
                e.event.ts_ns as f64 / 1e6,
                ms(released_at)
            );
        }
    }
}

/// vfork children share the parent's memory, recorder included: one that calls `_exit` must not
/// end the parent's dump, and one that calls `execv` must not flush or end it.
#[test]
fn vfork_children_leave_the_parents_dump_alone() {
    let run = run_traced(&sample("vforker"), &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let parents: Vec<&Dump> = run
        .dumps
        .iter()
        .filter(|d| {
            process(d)
                .argv
                .first()
                .is_some_and(|a| a.ends_with("vforker"))
        })
        .collect();
    assert_eq!(parents.len(), 1, "{}", run.describe());
    let dump = parents[0];
    let sym = Symbolizer::new();
    let r = replay(dump, &sym, &is_sample);
    assert_complete(&run, dump, &r);
    let end = dump.end.unwrap();
    assert_eq!(end.reason, EndReason::Exit, "{}", run.describe());
    assert!(
        dump.exec.is_none(),
        "the vfork child's exec is not the parent's"
    );
    assert_eq!(
        r.counts,
        Counts::new()
            .alloc("malloc", 5, 11 + 22 + 33 + 44 + 55)
            .frees(1)
            .leaked(4, 11 + 33 + 44 + 55),
        "{}",
        list_events(&r)
    );
}

/// `samples/forkdl.c`: a fork while another thread is inside `dl_iterate_phdr`, whose lock glibc
/// does not reset in the child. The child's leak check at `_exit` must not need the loader: the
/// child ends at once, and its check still sees the program's globals.
#[test]
fn a_child_forked_while_the_loader_is_busy_ends_with_its_leak_check() {
    let run = run_traced(&sample("forkdl"), &[]);
    assert_eq!(
        run.code,
        Some(0),
        "exit 3: the child hung at _exit\n{}",
        run.describe()
    );
    let child = run
        .dumps
        .iter()
        .find(|d| process(d).origin == Origin::Fork)
        .expect("the child's dump");
    assert_eq!(child.end.unwrap().reason, EndReason::UnderscoreExit);
    let out = run_zmtrace(&[
        "leaks",
        child.path.to_str().unwrap(),
        "--json",
        "--top",
        "0",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let l: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(l["check"]["trigger"], "_exit", "{l:#}");
    let kept: Vec<(&str, u64)> = l["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["site"] == "zs_child_block")
        .map(|s| (s["kind"].as_str().unwrap(), s["bytes"].as_u64().unwrap()))
        .collect();
    assert_eq!(kept, [("reachable", 64)], "{l:#}");
}

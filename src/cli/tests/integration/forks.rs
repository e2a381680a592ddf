//! `samples/forkloop.c` under `zmtrace run`: a process forks 150 times while two of its threads
//! allocate and free without pause, so many forks happen while a thread is inside the allocator
//! and the recorder. No child may deadlock (the sample kills a child that does not end within
//! 10 s and fails; the harness kills the whole run after its timeout), and every process writes
//! one complete dump. The numbers are documented in the sample.

use std::collections::BTreeMap;

use crate::common::*;

const FORKS: u64 = 150;

#[test]
fn forking_a_multithreaded_process_150_times_never_deadlocks() {
    let started = std::time::Instant::now();
    let run = run_traced(&sample("forkloop"), &[&FORKS.to_string()]);
    let traced = started.elapsed();
    assert_eq!(
        run.code,
        Some(0),
        "forkloop must exit 0 (3: a child deadlocked, 4: a child did not exit 0)\n{}",
        run.describe()
    );
    assert_eq!(
        run.stdout.trim(),
        format!("forkloop: {FORKS} children ok"),
        "{}",
        run.describe()
    );
    assert_eq!(
        run.dumps.len() as u64,
        FORKS + 1,
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
    let ppid = process(parent).pid;
    let sym = Symbolizer::new();

    // The parent: complete, ended by exit, and its two spinning threads freed every block they
    // allocated (nothing of theirs lost around the forks).
    let (spin, events) = replay_counts(parent, &sym, &has_function_prefix("zs_spin"));
    assert_complete_counted(&run, parent, &spin, events);
    assert_eq!(parent.end.unwrap().reason, EndReason::Exit);
    let mallocs = spin.counts.allocs.get("malloc").map_or(0, |c| c.0);
    assert!(
        mallocs >= 2000,
        "zs_spin allocated {mallocs} blocks\n{}",
        run.describe()
    );
    assert_eq!(
        (
            spin.counts.allocs.len(),
            spin.counts.frees,
            spin.counts.leaked_blocks,
            spin.tids.len()
        ),
        (1, mallocs, 0, 2),
        "zs_spin: (allocation kinds, frees, leaked blocks, threads) with {mallocs} mallocs: every \
         block freed, on two threads\n{}",
        run.describe()
    );
    let in_parent = replay_counts(parent, &sym, &has_function_prefix("zs_child")).0;
    assert_eq!(
        in_parent.counts,
        Counts::new(),
        "the children's events are not the parent's"
    );

    // Every child: its own complete dump, with exactly its events, ended as it chose.
    let mut children: BTreeMap<u64, &Dump> = BTreeMap::new();
    for d in run.dumps.iter().filter(|d| !std::ptr::eq(*d, parent)) {
        let p = process(d);
        assert_eq!(
            (p.origin, p.ppid, p.parent_pid),
            (Origin::Fork, ppid, ppid),
            "{}: (origin, ppid, parent_pid)\n{}",
            d.path.display(),
            run.describe()
        );
        let r = replay(d, &sym, &has_function_prefix("zs_child"));
        assert_complete(&run, d, &r);
        let markers: Vec<u64> = r
            .events()
            .filter_map(|e| match e.op {
                Op::Alloc("malloc", n) if (1000..1000 + FORKS).contains(&n) => Some(n - 1000),
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
        let i = markers[0];
        assert_eq!(
            r.counts,
            Counts::new()
                .alloc("malloc", 2, 1064 + i)
                .alloc("calloc", 1, 32)
                .frees(1)
                .leaked(2, 1032 + i),
            "child {i} ({})\n{}",
            d.path.display(),
            list_events(&r)
        );
        let end = d.end.unwrap();
        let expected = if i.is_multiple_of(2) {
            EndReason::Exit
        } else {
            EndReason::UnderscoreExit
        };
        assert_eq!(
            end.reason,
            expected,
            "child {i} ended by {}",
            if i.is_multiple_of(2) {
                "exit(0)"
            } else {
                "_exit(0)"
            }
        );
        if expected == EndReason::UnderscoreExit {
            assert_eq!(end.status, 0, "child {i}: _exit status");
        }
        assert!(
            children.insert(i, d).is_none(),
            "two dumps for child {i}\n{}",
            run.describe()
        );
    }
    assert_eq!(
        children.keys().copied().collect::<Vec<_>>(),
        (0..FORKS).collect::<Vec<_>>(),
        "one dump per child index"
    );
    eprintln!(
        "forkloop: traced run {:.1} s, checked at {:.1} s; parent {events} events, zs_spin \
         {mallocs} mallocs",
        traced.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

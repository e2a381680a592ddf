//! `samples/execer.c` under `zmtrace run`: a process that execs itself writes one dump per image.
//! The numbers are documented in the sample.

use std::sync::OnceLock;

use crate::common::*;

fn execer() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| run_traced(&sample("execer"), &[]))
}

/// (stage 1's dump, stage 2's dump)
fn stages() -> (&'static Run, &'static Dump, &'static Dump) {
    let run = execer();
    assert_eq!(
        run.code,
        Some(7),
        "zmtrace run exits with the program's status: stage 2 exits 7\n{}",
        run.describe()
    );
    assert_eq!(run.dumps.len(), 2, "one dump per image\n{}", run.describe());
    let find = |o: Origin| {
        let v: Vec<&Dump> = run
            .dumps
            .iter()
            .filter(|d| process(d).origin == o)
            .collect();
        assert_eq!(v.len(), 1, "one dump of origin {o:?}\n{}", run.describe());
        v[0]
    };
    (run, find(Origin::Start), find(Origin::Exec))
}

#[test]
fn exec_ends_the_first_dump_and_starts_a_second() {
    let (run, first, second) = stages();
    let (p1, p2) = (process(first), process(second));
    assert_eq!(p1.pid, p2.pid, "exec keeps the pid\n{}", run.describe());
    let prog = run.program.to_str().unwrap();
    assert_eq!(p1.argv, [prog], "{}", run.describe());
    assert_eq!(p2.argv, [prog, "stage2"], "{}", run.describe());
    assert_eq!(
        first.end.map(|e| e.reason),
        Some(EndReason::Exec),
        "{}",
        run.describe()
    );
    assert!(
        first.exec.is_some(),
        "stage 1's dump does not record the exec\n{}",
        run.describe()
    );
    assert_eq!(
        second.end.map(|e| e.reason),
        Some(EndReason::Exit),
        "{}",
        run.describe()
    );
    assert!(
        second.inherited.is_empty(),
        "an exec'ed image inherits no blocks: {:?}",
        second.inherited
    );
    for d in [first, second] {
        let name = d.path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(&format!("zmtrace.execer.{}.", p1.pid)),
            "dump {name} is not named zmtrace.execer.<pid>[.N].zmt"
        );
        assert!(
            run.stderr.contains(name),
            "zmtrace run does not print the dump path {name} on stderr:\n{}",
            run.stderr
        );
    }
}

#[test]
fn exec_stage_counts_are_exact() {
    let (run, first, second) = stages();
    let sym = Symbolizer::new();

    let r1 = replay(first, &sym, &has_function_prefix("zs_stage"));
    assert_complete(run, first, &r1);
    assert_eq!(
        r1.counts,
        Counts::new()
            .alloc("malloc", 2, 111 + 222)
            .alloc("calloc", 1, 300)
            .frees(1)
            .leaked(2, 411),
        "stage 1\n{}\n{}",
        list_events(&r1),
        run.describe()
    );
    assert!(
        r1.events()
            .all(|e| e.functions.iter().any(|f| f == "zs_stage1_alloc")),
        "stage 1 dump holds stage 2 events\n{}",
        list_events(&r1)
    );

    let r2 = replay(second, &sym, &has_function_prefix("zs_stage"));
    assert_complete(run, second, &r2);
    assert_eq!(
        r2.counts,
        Counts::new()
            .alloc("malloc", 3, 333 + 444 + 555)
            .alloc("calloc", 1, 128)
            .frees(1)
            .leaked(3, 1016),
        "stage 2\n{}\n{}",
        list_events(&r2),
        run.describe()
    );
    assert!(
        r2.events()
            .all(|e| e.functions.iter().any(|f| f == "zs_stage2_alloc")),
        "stage 2 dump holds stage 1 events\n{}",
        list_events(&r2)
    );
}

#[test]
fn exec_timestamps_respect_causality() {
    let (run, first, second) = stages();
    assert_times_within_run(run, first);
    assert_times_within_run(run, second);
    let exec_image_start = process(second).start_unix_ns;
    for e in first.events() {
        assert!(
            unix_ns(first, &e) <= exec_image_start,
            "stage 1 event seq {} at {} ns (Unix) is after stage 2 started at {exec_image_start}",
            e.seq,
            unix_ns(first, &e)
        );
    }
}

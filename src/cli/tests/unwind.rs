//! The fast unwinder (framehop over the in-memory unwind tables) against the reference, the
//! `backtrace` crate: with `ZMTRACE_UNWIND=compare` the recorder captures every stack both ways
//! and counts the captures where they differ.

mod common;

use common::*;

fn assert_fast_equals_reference(name: &str, args: &[&str]) {
    let run = run_traced_env(&sample(name), args, &[("ZMTRACE_UNWIND", "compare")]);
    assert!(!run.dumps.is_empty(), "{}", run.describe());
    for dump in &run.dumps {
        let end = dump.end.unwrap_or_else(|| {
            panic!(
                "{} has no End record\n{}",
                dump.path.display(),
                run.describe()
            )
        });
        // Every allocation, failed allocation and realloc captured a stack.
        let captures = dump
            .events()
            .filter(|e| {
                !matches!(
                    e.kind,
                    zmtrace_format::EventKind::Free { .. }
                        | zmtrace_format::EventKind::ReallocOut { .. }
                )
            })
            .count() as u64;
        assert_eq!(
            end.compared_stacks,
            captures,
            "{}: every captured stack is compared",
            dump.path.display()
        );
        assert!(end.compared_stacks > 0);
        assert_eq!(
            end.mismatched_stacks,
            0,
            "{}: {} of {} stacks differ between framehop and backtrace",
            dump.path.display(),
            end.mismatched_stacks,
            end.compared_stacks
        );
        assert_eq!(end.truncated_stacks, 0, "{}", dump.path.display());
    }
}

#[test]
fn fast_unwinder_equals_backtrace_on_leaky_with_threads() {
    assert_fast_equals_reference("leaky", &[]);
}

#[test]
fn fast_unwinder_equals_backtrace_in_forked_children() {
    assert_fast_equals_reference("forker", &[]);
}

#[test]
fn backtrace_mode_records_the_same_stack_for_the_deepest_allocation() {
    let sym = Symbolizer::new();
    let names = |env: &[(&str, &str)]| {
        let run = run_traced_env(&sample("leaky"), &[], env);
        let dump = run.only_dump();
        let mut stacks: Vec<Vec<String>> = dump
            .stacks
            .keys()
            .map(|&id| sym.stack(dump, id))
            .filter(|names| names.first().is_some_and(|n| n == "zs_alloc_deep"))
            .collect();
        stacks.sort();
        stacks
    };
    let fast = names(&[]);
    let reference = names(&[("ZMTRACE_UNWIND", "backtrace")]);
    assert!(!fast.is_empty());
    assert_eq!(fast, reference);
}

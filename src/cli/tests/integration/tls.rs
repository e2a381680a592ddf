//! The preload library's hot path reaches its thread-local state without `__tls_get_addr`: its
//! per-thread words are one initial-exec TLS block (`src/recorder/src/tls.rs`). A `thread_local!`
//! of a `cdylib` is general-dynamic, one `__tls_get_addr` call per access: four per `malloc`
//! before, about 65 of the 142 instructions an untraced `malloc`+`free` pair costs.

use std::collections::BTreeSet;
use std::process::Command;

use crate::common::*;

fn tool(name: &str, args: &[&str], lib: &std::path::Path) -> String {
    let out = Command::new(name)
        .args(args)
        .arg(lib)
        .output()
        .unwrap_or_else(|e| panic!("{name} (binutils) is needed by this test: {e}"));
    assert!(out.status.success(), "{name} {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn no_allocator_hook_or_recorder_path_calls_tls_get_addr() {
    ensure_preload_built();
    let lib = zmtrace_bin().with_file_name("libzmtrace.so");
    let asm = tool("objdump", &["-d", "--no-show-raw-insn", "-C"], &lib);
    let mut function = String::new();
    let mut callers = BTreeSet::new();
    for line in asm.lines() {
        if let (Some(a), true) = (line.find('<'), line.ends_with(">:")) {
            function = line[a + 1..line.len() - 2].to_owned();
        } else if line.contains("call") && line.contains("<__tls_get_addr") {
            callers.insert(function.clone());
        }
    }
    // std's own thread-locals (panics, thread names), dashmap's slow lock path and the writer
    // thread's side of the recorder may keep theirs: none is on an allocation's path.
    let on_the_hot_path: Vec<_> = callers
        .iter()
        .filter(|f| {
            !f.starts_with("std::")
                && !f.starts_with("dashmap::")
                && !f.starts_with("zmtrace_recorder::output::")
        })
        .collect();
    assert!(
        on_the_hot_path.is_empty(),
        "these functions call __tls_get_addr: {on_the_hot_path:?}"
    );
    // The hooks are there and were looked at.
    for hook in ["malloc", "free", "calloc", "realloc"] {
        assert!(
            asm.contains(&format!("<{hook}>:")),
            "no {hook} in the library's code"
        );
    }
    // Initial-exec TLS marks the library so (a late `dlopen` of it takes static TLS).
    let dynamic = tool("readelf", &["-dW"], &lib);
    assert!(
        dynamic
            .lines()
            .any(|l| l.contains("(FLAGS)") && l.contains("STATIC_TLS")),
        "libzmtrace.so is not flagged STATIC_TLS:\n{dynamic}"
    );
}

#[test]
fn a_late_dlopen_of_the_library_loads_and_its_hooks_work_on_new_threads() {
    // Not LD_PRELOAD: the program dlopens libzmtrace.so after start-up and calls its malloc and
    // free, from its main thread and from a thread made afterwards, so the initial-exec block
    // comes from glibc's static TLS surplus (glibc 2.36 has room for it; were it full, the loader
    // would refuse the dlopen with its own error, which the sample prints).
    ensure_preload_built();
    let lib = zmtrace_bin().with_file_name("libzmtrace.so");
    let dir = fresh_dir("dlopen-lib");
    let out = std::process::Command::new(sample("dlopen_lib"))
        .arg(&lib)
        .env_remove("LD_PRELOAD")
        .env("ZMTRACE_OUT", &dir)
        .output()
        .expect("run dlopen_lib");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "loaded, 2000 calls");
}

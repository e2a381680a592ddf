//! Modules by time: `samples/dlplug.c` loads two builds of a plugin in turn, each for a few
//! milliseconds (well within the writer's 100 ms period), usually at the same address, and each
//! leaks from functions of its own names, in its constructor (inside `dlopen`) and in a call.
//! Before modules were recorded as they were loaded and resolved by time, the plugins were not in
//! the dump at all (loaded and unloaded between two flushes) and their frames printed as raw
//! addresses; and a symbolizer keeping the last module per address range named build A's leaks
//! after build B's functions.

use std::collections::BTreeMap;

use crate::common::*;
use zmtrace_format::EventKind;

/// Builds the two plugins and runs the sample: `cycles` loads, A and B in turn, `calls` leaks in
/// each.
fn dlplug(cycles: u64, calls: u64) -> (Run, [String; 2]) {
    let src = workspace_root().join("samples/dlplug.c");
    let dir = scratch_dir().join("samples");
    let plugins = [1, 2].map(|v| {
        let so = dir.join(format!("dlplug-plugin{v}.so"));
        compile_c(
            &src,
            &so,
            &[
                "-O2",
                "-g",
                "-fomit-frame-pointer",
                "-fPIC",
                "-shared",
                "-fvisibility=hidden",
                &format!("-DZS_PLUGIN={v}"),
            ],
        );
        so.to_string_lossy().into_owned()
    });
    let run = run_traced(
        &sample("dlplug"),
        &[
            &plugins[0],
            &plugins[1],
            &cycles.to_string(),
            &calls.to_string(),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    (run, plugins)
}

/// `zmtrace leaks --json`: per site name, (blocks, bytes), and the sites' stacks.
fn leak_sites(run: &Run) -> (BTreeMap<String, (u64, u64)>, Vec<serde_json::Value>) {
    let path = &run.only_dump().path;
    let f = run_zmtrace(&["leaks", "--json", path.to_str().unwrap()]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    let v: serde_json::Value = serde_json::from_str(&f.stdout).unwrap();
    let mut sites = BTreeMap::new();
    let mut stacks = Vec::new();
    for s in v["sites"].as_array().unwrap() {
        let e = sites
            .entry(s["site"].as_str().unwrap().to_owned())
            .or_insert((0, 0));
        e.0 += s["blocks"].as_u64().unwrap();
        e.1 += s["bytes"].as_u64().unwrap();
        stacks.push(s["stack"].clone());
    }
    (sites, stacks)
}

/// Two builds loaded in turn at the same address: each one's leaks carry its own function
/// names and exactly its bytes, in `zmtrace leaks` and in `zmtrace report`.
#[test]
fn two_libraries_loaded_in_turn_at_one_address_keep_their_own_names() {
    let (cycles, calls) = (4u64, 3u64);
    let (run, _) = dlplug(cycles, calls);
    let same: u64 = run
        .stdout
        .split_whitespace()
        .skip_while(|w| *w != "same_address")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", run.describe()));
    // What makes the test: a build loaded where the other one had been.
    assert!(
        same > 0,
        "the loader never reused an address\n{}",
        run.describe()
    );
    let (sites, _) = leak_sites(&run);
    let loads = cycles / 2;
    let expected: BTreeMap<String, (u64, u64)> = [
        ("zs_plugA_init", (loads, loads * 1000)),
        ("zs_plugA_leak", (loads * calls, loads * calls * 100)),
        ("zs_plugB_init", (loads, loads * 2000)),
        ("zs_plugB_leak", (loads * calls, loads * calls * 300)),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect();
    assert_eq!(sites, expected, "{}", run.describe());
    // The report names both builds' sites too, each with its own count of allocations.
    let path = &run.only_dump().path;
    let f = run_zmtrace(&["report", "--json", path.to_str().unwrap()]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    let v: serde_json::Value = serde_json::from_str(&f.stdout).unwrap();
    let text = v.to_string();
    for name in [
        "zs_plugA_leak",
        "zs_plugB_leak",
        "zs_plugA_init",
        "zs_plugB_init",
    ] {
        assert!(text.contains(name), "the report does not name {name}");
    }
}

/// A library loaded, allocating in its constructor (inside `dlopen`) and in a call, and
/// unloaded within milliseconds: it is in the dump with when it was mapped, and every frame in
/// it is symbolized.
#[test]
fn a_library_loaded_and_unloaded_at_once_is_symbolized() {
    let (run, plugins) = dlplug(2, 2);
    let dump = run.only_dump();
    // Recorded: each build once, from before its first event to after its last.
    for (i, p) in plugins.iter().enumerate() {
        let m: Vec<_> = dump.modules.iter().filter(|m| &m.path == p).collect();
        assert_eq!(m.len(), 1, "{p} recorded {} times", m.len());
        let gone: Vec<_> = dump
            .modules_gone
            .iter()
            .filter(|g| g.base == m[0].base && g.seq > m[0].seq)
            .collect();
        assert!(!gone.is_empty(), "{p}: no unload recorded");
        let (from, to) = (m[0].seq, gone[0].seq);
        // Its events: the constructor's and the calls' mallocs (1 + 2), all inside its era.
        let inside = dump
            .events()
            .filter(|e| matches!(e.kind, EventKind::Alloc { .. }))
            .filter(|e| from <= e.seq && e.seq < to)
            .filter(|e| {
                let stack = &dump.stacks[&e.kind.stack().unwrap()];
                stack
                    .iter()
                    .any(|&a| m[0].segments.iter().any(|&(s, e)| s < a && a <= e))
            })
            .count();
        assert_eq!(inside, 3, "build {}: events in its era", i + 1);
    }
    let (sites, stacks) = leak_sites(&run);
    assert_eq!(
        sites.values().map(|v| v.1).sum::<u64>(),
        1000 + 2 * 100 + 2000 + 2 * 300,
        "{sites:?}"
    );
    // No raw address in a plugin: every frame of its module has a function, file and line.
    let mut plugin_frames = 0;
    for stack in &stacks {
        for f in stack.as_array().unwrap() {
            let module = f["module"].as_str().unwrap_or("");
            if plugins.iter().any(|p| p == module) {
                plugin_frames += 1;
                assert!(
                    f["function"].as_str().is_some_and(|n| n.starts_with("zs_"))
                        && f["line"].as_u64().is_some(),
                    "an unsymbolized plugin frame: {f}"
                );
            }
            assert!(
                !f["module"].is_null(),
                "a frame in no module (a raw address): {f}"
            );
        }
    }
    // zs_plugX_init in each constructor's stack, zs_plugX_leak and zs_plug_run in each call's.
    assert_eq!(plugin_frames, 2 * (1 + 2), "{stacks:?}");
}

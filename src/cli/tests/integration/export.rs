//! `zmtrace export`: pprof profiles read by a real pprof (`go tool pprof`, Debian's golang-go),
//! speedscope files and collapsed stacks, checked against `zmtrace report --json`, `zmtrace
//! leaks --json`, `zmtrace flamegraph --folded` and the totals `samples/profile.c` documents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::*;

/// The sample types of a pprof export, in order.
const TYPES: [&str; 5] = [
    "alloc_objects",
    "alloc_space",
    "inuse_objects",
    "inuse_space",
    "lost_space",
];

/// What `samples/profile.c` documents, per function: alloc_objects, alloc_space, inuse_objects,
/// inuse_space, lost_space.
const KNOWN: [(&str, [u64; 5]); 7] = [
    ("zs_keep", [5, 5000, 3, 3000, 0]),
    ("zs_temp", [10, 1280, 0, 0, 0]),
    ("zs_grow", [1, 112, 1, 64, 0]),
    ("zs_zeroed", [1, 300, 1, 300, 0]),
    ("zs_lose", [4, 1024, 4, 1024, 1024]),
    ("zs_lose_tree", [1, 64, 1, 64, 64]),
    ("zs_lose_child", [2, 64, 2, 64, 64]),
];

/// The sample's documented figures of sample type `t` (index into [`TYPES`]), zeros left out.
fn known(t: usize) -> BTreeMap<String, u64> {
    KNOWN
        .iter()
        .filter(|(_, v)| v[t] > 0)
        .map(|(f, v)| (f.to_string(), v[t]))
        .collect()
}

fn profile_sample() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| run_traced(&sample("profile"), &[]))
}

fn profile_aggregated() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| run_traced_opts(&sample("profile"), &[], &["--aggregate"], &[]))
}

fn dump_of(run: &Run) -> &Dump {
    assert_eq!(
        run.code,
        Some(0),
        "the sample must exit 0\n{}",
        run.describe()
    );
    run.only_dump()
}

/// `zmtrace export DUMP ARGS -o FILE` into a fresh directory; the file.
fn export(dump: &Dump, args: &[&str], name: &str) -> PathBuf {
    let out = fresh_dir("export").join(name);
    let mut argv = vec!["export", dump.path.to_str().unwrap()];
    argv.extend(args);
    argv.extend(["-o", out.to_str().unwrap()]);
    zmtrace_ok(&argv);
    out
}

fn sum_by(rows: impl Iterator<Item = (String, u64)>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (k, v) in rows {
        if v > 0 {
            *out.entry(k).or_default() += v;
        }
    }
    out
}

/// A site as pprof names it: an address no symbol covers (`report`'s `libfoo.so+0x1234`) is
/// left for pprof to symbolize, which shows every such address of a module as `[libfoo.so]`.
fn as_pprof_names(sites: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    sum_by(sites.into_iter().map(|(k, v)| {
        let unnamed = k
            .rsplit_once("+0x")
            .filter(|(m, off)| {
                !m.contains(' ') && !off.is_empty() && off.chars().all(|c| c.is_ascii_hexdigit())
            })
            .map(|(m, _)| format!("[{m}]"));
        (unnamed.unwrap_or(k), v)
    }))
}

/// Per function (site), what `report --json` and `leaks --json` say for each sample type.
fn reported(dump: &Dump) -> [BTreeMap<String, u64>; 5] {
    let path = dump.path.to_str().unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&zmtrace_ok(&["report", path, "--json", "--top", "0"])).unwrap();
    let leaks: serde_json::Value =
        serde_json::from_str(&zmtrace_ok(&["leaks", path, "--json", "--top", "0"])).unwrap();
    let top = |list: &str| {
        sum_by(
            report["top"][list]
                .as_array()
                .unwrap_or_else(|| panic!("report --json has no top.{list}"))
                .iter()
                .map(|s| {
                    (
                        s["site"].as_str().unwrap().to_string(),
                        s["value"].as_u64().unwrap(),
                    )
                }),
        )
    };
    let leak_sites = |field: &str, lost_only: bool| {
        sum_by(
            leaks["sites"]
                .as_array()
                .expect("leaks --json has sites")
                .iter()
                .filter(|s| {
                    !lost_only || matches!(s["kind"].as_str(), Some("definite" | "indirect"))
                })
                .map(|s| {
                    (
                        s["site"].as_str().unwrap().to_string(),
                        s[field].as_u64().unwrap(),
                    )
                }),
        )
    };
    [
        top("allocations"),
        top("bytes"),
        leak_sites("blocks", false),
        top("leaked"),
        leak_sites("bytes", true),
    ]
    .map(as_pprof_names)
}

/// The sample's own functions only.
fn own(m: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    m.iter()
        .filter(|(k, _)| k.starts_with("zs_"))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// For each sample type: `go tool pprof -top` per function equals `report`/`leaks` per site, and
/// on the sample's functions, the figures the sample documents.
fn assert_pprof_matches_reports(dump: &Dump, pprof: &Path, extra: &[&str]) {
    for (t, flat) in assert_pprof_is_report(dump, pprof, extra)
        .iter()
        .enumerate()
    {
        assert_eq!(
            own(flat),
            known(t),
            "{}: go tool pprof -top vs samples/profile.c",
            TYPES[t]
        );
    }
}

/// For each sample type: `go tool pprof -top` per function equals `report`/`leaks` per site;
/// returns pprof's figures.
fn assert_pprof_is_report(dump: &Dump, pprof: &Path, extra: &[&str]) -> Vec<BTreeMap<String, u64>> {
    let reported = reported(dump);
    let mut out = Vec::new();
    for (t, name) in TYPES.iter().enumerate() {
        let flat = pprof_flat(pprof, name, extra);
        assert_eq!(
            flat, reported[t],
            "{name}: go tool pprof -top per function vs report/leaks --json per site"
        );
        out.push(flat);
    }
    out
}

#[test]
fn pprof_stacks_start_at_the_site_past_allocator_wrappers() {
    // leaky: strdup's malloc is in libc; cxx: operator new is libstdc++'s, and zs_fill is
    // inlined. pprof's functions are report's sites, through every kind of allocation call.
    for name in ["leaky", "cxx"] {
        let run = run_traced(&sample(name), &[]);
        let dump = dump_of(&run);
        let pb = export(dump, &[], &format!("{name}.pb.gz"));
        let flat = assert_pprof_is_report(dump, &pb, &[]);
        let names: Vec<&String> = flat[0].keys().collect();
        assert!(
            names
                .iter()
                .all(|n| !n.contains("operator new") && !n.contains("strdup")),
            "{name}: a wrapper is a function of its own: {names:?}"
        );
        if name == "leaky" {
            // samples/leaky.c: 4 blocks, 4396 bytes not freed, from these two functions.
            let inuse = own(&flat[3]);
            let want: BTreeMap<String, u64> = [
                ("zs_leak_page".to_string(), 4096),
                ("zs_leak_small".to_string(), 300),
            ]
            .into();
            assert_eq!(inuse, want);
            assert_eq!(own(&flat[2]).values().sum::<u64>(), 4);
        }
    }
}

#[test]
fn pprof_top_of_each_sample_type_matches_report_and_the_known_totals() {
    let dump = dump_of(profile_sample());
    let pb = export(dump, &["--format", "pprof"], "profile.pb.gz");
    let gz = std::fs::read(&pb).unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "a pprof export is gzipped");
    assert_pprof_matches_reports(dump, &pb, &[]);
    // inuse_space is what pprof shows without -sample_index, as for a Go heap profile.
    let top = go_pprof(&["-top", "-unit=B"], &pb);
    assert!(top.contains("Type: inuse_space"), "{top}");
    assert!(top.contains("of 4516B total"), "{top}");
    // --metric picks another.
    let pb = export(dump, &["--metric", "alloc_space"], "alloc.pb.gz");
    let top = go_pprof(&["-top", "-unit=B"], &pb);
    assert!(top.contains("Type: alloc_space"), "{top}");
    assert!(top.contains("of 7844B total"), "{top}");
}

#[test]
fn pprof_profile_has_build_ids_files_lines_and_a_space_period() {
    let dump = dump_of(profile_sample());
    let pb = export(dump, &[], "profile.pb.gz");
    let raw = go_pprof(&["-raw"], &pb);
    assert!(raw.contains("PeriodType: space bytes"), "{raw}");
    assert!(raw.contains("Period: 1\n"), "{raw}");
    let header = "alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes[dflt] lost_space/bytes";
    assert!(raw.contains(header), "sample types:\n{raw}");
    // The program's mapping: its path, its build-id (as the recorder read it), symbolized.
    let exe = dump.modules[0].path.clone();
    assert!(exe.ends_with("/profile"), "first module {exe}");
    let hex: String = dump.modules[0]
        .build_id
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex.len(), 40, "the sample has a GNU build-id");
    let mapping = raw
        .lines()
        .skip_while(|l| *l != "Mappings")
        .find(|l| l.contains(&exe))
        .unwrap_or_else(|| panic!("no mapping of {exe}:\n{raw}"));
    assert!(
        mapping.contains(&hex) && mapping.contains("[FN][FL][LN]"),
        "{mapping}"
    );
    // `ID: START/LIMIT/OFFSET PATH …`: the range is a PT_LOAD segment of the program, and the
    // offset that segment's offset in the file.
    let range = mapping.split_whitespace().nth(1).unwrap();
    let nums: Vec<u64> = range
        .split('/')
        .map(|n| u64::from_str_radix(n.trim_start_matches("0x"), 16).unwrap())
        .collect();
    let module = &dump.modules[0];
    assert!(
        module.segments.contains(&(nums[0], nums[1])),
        "{mapping} is not a segment of {:x?}",
        module.segments
    );
    let data = std::fs::read(&exe).unwrap();
    let elf = object::File::parse(&*data).unwrap();
    use object::{Object, ObjectSegment};
    let seg = elf
        .segments()
        .find(|s| s.address() == nums[0] - module.base)
        .unwrap_or_else(|| panic!("no PT_LOAD at {:#x} in {exe}", nums[0] - module.base));
    assert_eq!(nums[2], seg.file_range().0, "file offset of {mapping}");
    // Locations carry function, file and line: zs_lose's malloc is on the line that says so.
    let src = std::fs::read_to_string(workspace_root().join("samples/profile.c")).unwrap();
    let line = src
        .lines()
        .position(|l| l.contains("char *p = malloc(256);"))
        .unwrap()
        + 1;
    let want = format!(
        "zs_lose {}:{line} ",
        workspace_root().join("samples/profile.c").display()
    );
    assert!(
        raw.lines().any(|l| l.contains(" M=") && l.contains(&want)),
        "no location {want:?}:\n{raw}"
    );
    // pprof symbolizing again from the files (addr2line through the mappings) finds the same
    // functions and figures: the mappings' ranges and offsets are right.
    assert_pprof_matches_reports(dump, &pb, &["-symbolize=force"]);
}

#[test]
fn pprof_symbolizes_what_zmtrace_could_not_through_the_mappings() {
    // The program is moved away before the export: zmtrace has only module+offset for its
    // frames, so their locations carry no lines; back in place, pprof symbolizes them.
    let dir = fresh_dir("export-moved");
    let exe = dir.join("profile");
    copy_executable(&sample("profile"), &exe);
    let run = run_traced(&exe, &[]);
    let dump = dump_of(&run);
    let away = dir.join("profile.away");
    std::fs::rename(&exe, &away).unwrap();
    let pb = export(dump, &[], "moved.pb.gz");
    let raw = go_pprof(&["-raw", "-symbolize=none"], &pb);
    assert!(
        !raw.contains("zs_lose"),
        "zmtrace named frames it had no file for:\n{raw}"
    );
    std::fs::rename(&away, &exe).unwrap();
    let flat = pprof_flat(&pb, "inuse_space", &[]);
    // Without its file zmtrace could not see wrappers either: the stacks start at the same
    // (first) frame, the sample's function.
    assert_eq!(own(&flat), known(3), "pprof's own symbolization:\n{flat:?}");
}

#[test]
fn pprof_of_an_aggregated_dump_reads_and_matches_its_report() {
    let run = profile_aggregated();
    let dump = dump_of(run);
    assert!(dump.is_aggregated(), "{}", run.describe());
    let pb = export(dump, &["--format", "pprof"], "aggregated.pb.gz");
    assert_pprof_matches_reports(dump, &pb, &[]);
    let raw = go_pprof(&["-raw"], &pb);
    assert!(
        raw.contains("inuse_*: live at the end of the recording (aggregated dump)"),
        "{raw}"
    );
}

/// Per leaf frame (the innermost frame of each stack), the weights of a speedscope profile.
fn speedscope_leaves(file: &serde_json::Value, p: &serde_json::Value) -> BTreeMap<String, u64> {
    let frames = file["shared"]["frames"].as_array().unwrap();
    sum_by(
        p["samples"]
            .as_array()
            .unwrap()
            .iter()
            .zip(p["weights"].as_array().unwrap())
            .map(|(s, w)| {
                let leaf = s.as_array().unwrap().last().unwrap().as_u64().unwrap() as usize;
                (
                    frames[leaf]["name"].as_str().unwrap().to_string(),
                    w.as_u64().unwrap(),
                )
            }),
    )
}

#[test]
fn speedscope_file_has_the_schema_shape_and_the_known_totals() {
    let dump = dump_of(profile_sample());
    let out = export(
        dump,
        &["--format", "speedscope", "--metric", "lost"],
        "profile.speedscope.json",
    );
    let f: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(
        f["$schema"], "https://www.speedscope.app/file-format-schema.json",
        "{f}"
    );
    let frames = f["shared"]["frames"].as_array().expect("shared.frames");
    assert!(!frames.is_empty());
    for fr in frames {
        assert!(fr["name"].is_string(), "frame without a name: {fr}");
        assert!(fr["file"].is_null() || fr["file"].is_string(), "{fr}");
    }
    let profiles = f["profiles"].as_array().expect("profiles");
    let names: Vec<&str> = profiles
        .iter()
        .map(|p| p["name"].as_str().unwrap().split(':').next().unwrap())
        .collect();
    assert_eq!(names, TYPES, "one profile per sample type");
    // --metric lost: lost_space is shown first.
    assert_eq!(f["activeProfileIndex"], 4);
    for (t, p) in profiles.iter().enumerate() {
        assert_eq!(p["type"], "sampled");
        let unit = if TYPES[t].ends_with("objects") {
            "none"
        } else {
            "bytes"
        };
        assert_eq!(p["unit"], unit, "{}", TYPES[t]);
        let samples = p["samples"].as_array().unwrap();
        let weights = p["weights"].as_array().unwrap();
        assert_eq!(samples.len(), weights.len());
        for s in samples {
            let s = s.as_array().unwrap();
            assert!(!s.is_empty());
            assert!(s
                .iter()
                .all(|i| (i.as_u64().unwrap() as usize) < frames.len()));
            // Outermost first: every stack starts where the process does, libc's start code
            // named "(below main)" as in the flamegraphs and memcheck.
            let root = &frames[s[0].as_u64().unwrap() as usize]["name"];
            assert_eq!(root, "(below main)", "{}", TYPES[t]);
            let next = &frames[s[1].as_u64().unwrap() as usize]["name"];
            assert_eq!(next, "main", "{}", TYPES[t]);
        }
        let total: u64 = weights.iter().map(|w| w.as_u64().unwrap()).sum();
        assert_eq!(p["startValue"], 0);
        assert_eq!(p["endValue"], total, "{}", TYPES[t]);
        assert_eq!(
            own(&speedscope_leaves(&f, p)),
            known(t),
            "{}: speedscope per leaf function vs samples/profile.c",
            TYPES[t]
        );
    }
}

#[test]
fn folded_export_is_the_flamegraphs_collapsed_stacks() {
    let dump = dump_of(profile_sample());
    let path = dump.path.to_str().unwrap();
    for (export_metric, flame_metric) in [
        ("alloc_objects", "allocations"),
        ("alloc_space", "bytes"),
        ("inuse_space", "leaked"),
        ("lost_space", "lost"),
        // The flamegraph's names work too.
        ("bytes", "bytes"),
    ] {
        let out = export(
            dump,
            &["--format", "folded", "--metric", export_metric],
            "profile.folded",
        );
        let folded = std::fs::read_to_string(&out).unwrap();
        let flame = zmtrace_ok(&["flamegraph", path, "--folded", "--metric", flame_metric]);
        assert!(!folded.is_empty());
        assert_eq!(
            folded, flame,
            "export --metric {export_metric} vs flamegraph --metric {flame_metric}"
        );
    }
    // inuse_objects, which the flamegraph has not: per leaf function, the sample's figures.
    let out = export(
        dump,
        &["--format", "folded", "--metric", "inuse_objects"],
        "profile.folded",
    );
    let folded = std::fs::read_to_string(&out).unwrap();
    let leaves = sum_by(folded.lines().map(|l| {
        let (stack, n) = l.rsplit_once(' ').unwrap();
        (
            stack.rsplit(';').next().unwrap().to_string(),
            n.parse().unwrap(),
        )
    }));
    assert_eq!(own(&leaves), known(2), "{folded}");
}

fn assert_one_line_error(f: &Finished, code: i32, what: &str) {
    assert_eq!(
        f.code,
        Some(code),
        "{what}: exit code\n{}{}",
        f.stdout,
        f.stderr
    );
    let err = f.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{what}: one line:\n{err}");
    assert!(err.starts_with("zmtrace: error: "), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
}

#[test]
fn export_bad_input_is_a_one_line_error() {
    let dir = fresh_dir("export-errors");
    let not_a_dump = dir.join("not-a-dump.zmt");
    std::fs::write(&not_a_dump, "hello, I am not a dump\n").unwrap();
    let out = dir.join("out.pb.gz");
    let o = out.to_str().unwrap();
    let f = run_zmtrace(&["export", not_a_dump.to_str().unwrap(), "-o", o]);
    assert_one_line_error(&f, 2, "not a dump");
    assert!(!out.exists(), "nothing written for bad input");

    let dump = dump_of(profile_sample());
    let path = dump.path.to_str().unwrap();
    let f = run_zmtrace(&["export", path, "--format", "perfetto", "-o", o]);
    assert_one_line_error(&f, 2, "unknown format");
    assert!(
        f.stderr.contains("pprof, speedscope or folded"),
        "{}",
        f.stderr
    );
    let f = run_zmtrace(&[
        "export", path, "--format", "folded", "--metric", "peak", "-o", o,
    ]);
    assert_one_line_error(&f, 2, "unknown metric");

    // A process killed by SIGKILL had no leak check: no lost_space to export.
    let killed = run_traced(&sample("crasher"), &["kill"]);
    let killed = killed.only_dump();
    let f = run_zmtrace(&[
        "export",
        killed.path.to_str().unwrap(),
        "--metric",
        "lost",
        "-o",
        o,
    ]);
    assert_one_line_error(&f, 2, "lost_space without a leak check");
    assert!(f.stderr.contains("no leak check"), "{}", f.stderr);
    // The rest of it exports, and says what "in use" means there.
    let pb = export(killed, &[], "killed.pb.gz");
    let raw = go_pprof(&["-raw"], &pb);
    assert!(!raw.contains("lost_space"), "{raw}");
    assert!(
        raw.contains("inuse_*: live where the dump ends (the process did not end normally)"),
        "{raw}"
    );

    // An output zmtrace cannot write: 125, as for every other subcommand's output.
    let unwritable = dir.join("no-such-dir").join("out.pb.gz");
    let f = run_zmtrace(&["export", path, "-o", unwritable.to_str().unwrap()]);
    assert_one_line_error(&f, 125, "unwritable output");
    assert!(f.stderr.contains("cannot write"), "{}", f.stderr);
}

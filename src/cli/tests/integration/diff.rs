//! `zmtrace diff`: two runs of `samples/diffable.c` with different arguments, compared site by
//! site; every delta equals what the sample documents.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::common::*;
use serde_json::Value;

fn dumps() -> &'static (PathBuf, PathBuf) {
    static RUNS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    RUNS.get_or_init(|| {
        let program = sample("diffable");
        let mut paths = Vec::new();
        for n in ["10", "25"] {
            let run = run_traced(&program, &[n]);
            assert_eq!(run.code, Some(0), "{}", run.describe());
            paths.push(run.only_dump().path.clone());
        }
        (paths[0].clone(), paths[1].clone())
    })
}

/// The fields of a diff entry: name -> (base, new, delta).
fn fields(v: &Value) -> BTreeMap<&'static str, (u64, u64, i64)> {
    [
        "allocations",
        "bytes",
        "peak",
        "leaked_blocks",
        "leaked_bytes",
        "lost_bytes",
        "reallocs",
    ]
    .into_iter()
    .map(|f| {
        let d = &v[f];
        (
            f,
            (
                d["base"].as_u64().unwrap(),
                d["new"].as_u64().unwrap(),
                d["delta"].as_i64().unwrap(),
            ),
        )
    })
    .collect()
}

fn row(pairs: [(u64, u64); 7]) -> BTreeMap<&'static str, (u64, u64, i64)> {
    let names = [
        "allocations",
        "bytes",
        "peak",
        "leaked_blocks",
        "leaked_bytes",
        "lost_bytes",
        "reallocs",
    ];
    names
        .into_iter()
        .zip(pairs)
        .map(|(n, (b, v))| (n, (b, v, v as i64 - b as i64)))
        .collect()
}

/// 8 * (2 + 3 + ... + (n + 1)): the bytes of diffable's reallocs.
fn grown(n: u64) -> u64 {
    8 * (2..=n + 1).sum::<u64>()
}

#[test]
fn diff_gives_exact_deltas_per_site() {
    let (base, new) = dumps();
    let f = run_zmtrace(&[
        "diff",
        base.to_str().unwrap(),
        new.to_str().unwrap(),
        "--json",
        "--top",
        "0",
    ]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    let d: Value = serde_json::from_str(&f.stdout).unwrap();
    let mut sites: BTreeMap<String, BTreeMap<&str, (u64, u64, i64)>> = BTreeMap::new();
    for s in d["sites"].as_array().unwrap() {
        let name = s["site"].as_str().unwrap().to_string();
        assert!(
            sites.insert(name.clone(), fields(s)).is_none(),
            "site {name} changed twice:\n{d:#}"
        );
    }
    let want: BTreeMap<String, _> = [
        (
            "zs_scaled",
            row([
                (10, 25),
                (640, 1600),
                (640, 1600),
                (0, 0),
                (0, 0),
                (0, 0),
                (0, 0),
            ]),
        ),
        (
            // The realloc's own site: its reallocs and their bytes.
            "zs_grow",
            row([
                (0, 0),
                (grown(10), grown(25)),
                (0, 0),
                (0, 0),
                (0, 0),
                (0, 0),
                (10, 25),
            ]),
        ),
        (
            "zs_leak_n",
            row([
                (10, 25),
                (160, 400),
                (0, 0),
                (10, 25),
                (160, 400),
                (160, 400),
                (0, 0),
            ]),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(sites, want, "{d:#}");
    // zs_same, zs_fixed and zs_grow's malloc did the same in both runs.
    assert_eq!(d["unchanged"], 3, "{d:#}");
    let t = fields(&d["totals"]);
    assert_eq!(t["allocations"].2, 30);
    assert_eq!(t["peak"], (320 + 640, 320 + 1600, 960));
    assert_eq!(t["lost_bytes"], (160, 400, 240));
    assert_eq!(t["reallocs"], (10, 25, 15));
    // Largest change first.
    assert_eq!(d["sites"][0]["site"], "zs_grow");
}

#[test]
fn diff_text_and_differential_flamegraph() {
    let (base, new) = dumps();
    let (b, n) = (base.to_str().unwrap(), new.to_str().unwrap());
    let f = run_zmtrace(&["diff", b, n]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    assert!(
        f.stdout.contains("3 sites changed, 3 unchanged")
            && f.stdout.contains("#2 zs_scaled")
            && f.stdout.contains("640 B -> 1.6 KiB"),
        "{}",
        f.stdout
    );
    let svg = fresh_dir("diff-svg").join("diff.svg");
    let f = run_zmtrace(&[
        "diff",
        b,
        n,
        "--flamegraph",
        "--metric",
        "allocations",
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    let text = std::fs::read_to_string(&svg).unwrap();
    // Frames are as wide as in the new run; the change is relative to the whole profile.
    for title in [
        "<title>zs_scaled (25 allocations,",
        "<title>zs_leak_n (25 allocations,",
        "<title>zs_fixed (10 allocations,",
    ] {
        assert!(text.contains(title), "no `{title}` in {}", svg.display());
    }
    assert!(text.contains("<title>zs_fixed (10 allocations, 15.15%; 0.00%)</title>"));
    let f = run_zmtrace(&["diff", b, n, "--flamegraph"]);
    assert_eq!(f.code, Some(2), "{}", f.stderr);
}

#[test]
fn diff_of_a_missing_dump_is_one_line() {
    let (base, _) = dumps();
    let missing = fresh_dir("diff-missing").join("nope.zmt");
    let f = run_zmtrace(&["diff", base.to_str().unwrap(), missing.to_str().unwrap()]);
    assert_eq!(f.code, Some(2), "{}", f.stderr);
    assert_eq!(f.stderr.trim().lines().count(), 1, "{}", f.stderr);
    assert!(f.stderr.contains(missing.to_str().unwrap()), "{}", f.stderr);
}

/// The diff embedded in `zmtrace view --base`'s page.
fn page_diff(base: &str, new: &str) -> Value {
    let page = fresh_dir("diff-page").join("page.html");
    let f = run_zmtrace(&["view", new, "--base", base, "-o", page.to_str().unwrap()]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    let html = std::fs::read_to_string(&page).unwrap();
    let open = r#"<script id="zmtrace-data" type="application/json">"#;
    let start = html.find(open).expect("the page's data") + open.len();
    let end = start + html[start..].find("</script>").unwrap();
    let data: Value = serde_json::from_str(&html[start..end]).unwrap();
    data["diff"].clone()
}

/// Regression (issue 15): the page had its own diff, with six metrics and its own rule of what
/// changed, so `zmtrace diff A B` and `zmtrace view --base A B` could name different sites.
/// Both now come from one engine: the same sites, metrics and numbers.
#[test]
fn the_page_and_diff_name_the_same_changed_sites_with_the_same_numbers() {
    let (base, new) = dumps();
    let (b, n) = (base.to_str().unwrap(), new.to_str().unwrap());
    let f = run_zmtrace(&["diff", b, n, "--json", "--top", "0"]);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    let cli: Value = serde_json::from_str(&f.stdout).unwrap();
    let page = page_diff(b, n);
    let metrics: Vec<&str> = page["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(
        metrics,
        [
            "allocations",
            "bytes",
            "peak",
            "leaked_blocks",
            "leaked_bytes",
            "lost_bytes",
            "reallocs",
            "temporary"
        ]
    );
    // site -> metric -> (base, new)
    type Values = BTreeMap<String, BTreeMap<String, (u64, u64)>>;
    let mut from_cli = Values::new();
    for s in cli["sites"].as_array().unwrap() {
        let v = metrics
            .iter()
            .map(|&m| {
                let d = &s[m];
                let pair = (d["base"].as_u64().unwrap(), d["new"].as_u64().unwrap());
                (m.to_string(), pair)
            })
            .collect();
        from_cli.insert(s["site"].as_str().unwrap().to_string(), v);
    }
    let mut from_page = Values::new();
    for r in page["rows"].as_array().unwrap() {
        let v = metrics
            .iter()
            .enumerate()
            .map(|(i, &m)| {
                let pair = (
                    r["base"][i].as_u64().unwrap(),
                    r["current"][i].as_u64().unwrap(),
                );
                (m.to_string(), pair)
            })
            .collect();
        from_page.insert(r["name"].as_str().unwrap().to_string(), v);
    }
    assert_eq!(
        from_cli.keys().collect::<Vec<_>>(),
        ["zs_grow", "zs_leak_n", "zs_scaled"]
    );
    assert_eq!(from_page, from_cli, "page:\n{page:#}\ndiff:\n{cli:#}");
    assert_eq!(page["sites_differing"], cli["changed"]);
    assert_eq!(cli["changed"], 3);
    assert_eq!(from_cli["zs_leak_n"]["lost_bytes"], (160, 400));
}

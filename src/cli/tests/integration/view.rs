//! `zmtrace view`, end to end: the page of a sample's dump, driven in headless Chromium (see
//! `cdp/`), shows the same numbers as `zmtrace report --json`, opens a leak's stack, follows a
//! time range, compares two runs, and logs no error. Screenshots are kept in
//! `target/view-artifacts/`.

use crate::cdp;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::cdp::Browser;
use crate::common::*;
use serde_json::Value;

fn leaky_dump() -> &'static Path {
    static RUN: OnceLock<Run> = OnceLock::new();
    let run = RUN.get_or_init(|| run_traced(&sample("leaky"), &[]));
    assert_eq!(run.code, Some(0), "{}", run.describe());
    &run.only_dump().path
}

fn churn_dump() -> &'static Path {
    static RUN: OnceLock<Run> = OnceLock::new();
    let run = RUN.get_or_init(|| run_traced(&sample("churn"), &[]));
    assert_eq!(run.code, Some(0), "{}", run.describe());
    &run.only_dump().path
}

/// Where the pages and screenshots stay after the tests, for CI to keep.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("view-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn report_json(dump: &Path) -> Value {
    serde_json::from_str(&zmtrace_ok(&["report", dump.to_str().unwrap(), "--json"])).unwrap()
}

fn view(dump: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec!["view", dump.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    zmtrace_ok(&args);
}

fn url(path: &Path) -> String {
    format!("file://{}", path.canonicalize().unwrap().display())
}

/// "1,234" -> 1234.
fn number(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not text: {v}"));
    s.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// The line of `samples/<file>` that holds `text`.
fn line_of(file: &str, text: &str) -> usize {
    let src = std::fs::read_to_string(workspace_root().join("samples").join(file)).unwrap();
    src.lines()
        .position(|l| l.contains(text))
        .unwrap_or_else(|| panic!("{file} has no line with {text:?}"))
        + 1
}

#[test]
fn the_page_shows_the_report_opens_leaks_and_follows_a_time_range() {
    let dump = leaky_dump();
    let report = report_json(dump);
    let dir = artifacts();
    let html = dir.join("leaky.html");
    view(dump, &html, &[]);

    let mut browser = Browser::launch(&fresh_dir("chromium"), 1280, 900);
    let mut page = browser.page();
    page.navigate(&url(&html));

    // Every number of the report is on the page, exactly.
    let shown = page.eval(
        "Object.fromEntries([...document.querySelectorAll('#summary tr[data-field]')]\
         .map(tr => [tr.dataset.field, tr.querySelector('td.exact').textContent]))",
    );
    let mut compared = 0;
    for (field, v) in report.as_object().unwrap() {
        let Some(n) = v.as_u64() else { continue };
        if field == "pid" {
            continue; // in the title
        }
        assert_eq!(number(&shown[field]), n, "summary field {field}: {shown}");
        compared += 1;
    }
    assert_eq!(compared, 13, "the report's numbers: {report}");

    // The largest leak is zs_leak_page's page; a click on its row opens its stack.
    let first = page.eval("document.querySelector('#leaks tbody tr td.site').textContent");
    assert_eq!(first, "zs_leak_page");
    assert_eq!(
        page.eval("document.getElementById('leaks-detail').hidden"),
        true
    );
    page.click_on("#leaks tbody tr:first-child td.site");
    let detail = page.eval("document.getElementById('leaks-detail').innerText");
    let detail = detail.as_str().unwrap();
    let line = line_of("leaky.c", "g_leaks[3] = malloc(4096);");
    for want in [
        "zs_leak_page".to_string(),
        format!("leaky.c:{line}"),
        "zs_finish".to_string(),
        "4,096 bytes in 1 block ".to_string(),
    ] {
        assert!(
            detail.contains(&want),
            "no {want:?} in the stack shown:\n{detail}"
        );
    }
    // In the CLI's order: lost first (none here), then largest first.
    let bytes = |page: &mut cdp::Page| -> Vec<u64> {
        let v = page.eval(
            "[...document.querySelectorAll('#leaks tbody tr')].map(tr => tr.cells[2].textContent.split(' ')[0])",
        );
        v.as_array().unwrap().iter().map(number).collect()
    };
    let descending = bytes(&mut page);
    assert!(
        descending.len() >= 2 && descending.windows(2).all(|w| w[0] >= w[1]),
        "{descending:?}"
    );
    // A click on the bytes header sorts by bytes, largest first; a second turns it round.
    page.click_on("#leaks thead th[data-key=bytes]");
    assert_eq!(bytes(&mut page), descending);
    page.click_on("#leaks thead th[data-key=bytes]");
    let mut ascending = bytes(&mut page);
    ascending.reverse();
    assert_eq!(ascending, descending);
    // The filter keeps the matching rows.
    page.type_into("#leaks-filter", "small");
    let rows = page
        .eval("[...document.querySelectorAll('#leaks tbody td.site')].map(td => td.textContent)");
    assert_eq!(rows, serde_json::json!(["zs_leak_small"]));

    // Searching the flamegraph of leaked bytes for the sample's leaking functions finds their
    // 4,096 + 3 x 100 bytes.
    page.click_on("#flame-metrics button[data-metric=leaked]");
    page.type_into("#flame-search", "zs_leak_");
    let matched = page.eval("document.getElementById('flame-match').dataset.value");
    assert_eq!(matched, "4396");
    page.eval(
        "const s = document.getElementById('flame-search'); s.value = ''; \
         s.dispatchEvent(new Event('input'))",
    );
    assert_eq!(
        page.eval("document.getElementById('flame-match').textContent"),
        ""
    );

    // The flamegraph of allocations counts every allocation of the run.
    page.click_on("#flame-metrics button[data-metric=allocations]");
    let total = |page: &mut cdp::Page| {
        page.eval("Number(document.getElementById('flame-total').dataset.value)")
            .as_u64()
            .unwrap()
    };
    let whole = total(&mut page);
    assert_eq!(whole, report["allocations"].as_u64().unwrap());

    // Dragging across the second half of the chart selects that time: the flamegraph then counts
    // the allocations made in it, as the dump's own events say. (The sample pauses 5 ms between
    // its first allocations and its threads': times are of 1 ms resolution, and a run over in
    // 3 ms had all of them in the first half one time in five.)
    let (left, top, width, height) = page.rect("#chart");
    let plot_left = left + 74.0; // the chart's left margin (axis labels)
    let plot_width = width - 74.0 - 12.0;
    page.drag(
        plot_left + plot_width * 0.5,
        plot_left + plot_width - 1.0,
        top + height / 2.0,
    );
    let info = page.eval("Object.assign({}, document.getElementById('range-info').dataset)");
    assert_eq!(info["selected"], "yes", "{info}");
    let start: u64 = info["startNs"].as_str().unwrap().parse().unwrap();
    let end: u64 = info["endNs"].as_str().unwrap().parse().unwrap();
    let events = zmtrace_format::Dump::open(dump).unwrap().all_events();
    let in_range = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Alloc { .. }))
        .filter(|e| (start..end).contains(&e.ts_ns))
        .count() as u64;
    let selected = total(&mut page);
    assert_eq!(selected, in_range, "allocations in {start}..{end} ns");
    assert!(
        selected > 0 && selected < whole,
        "the range {start}..{end} ns holds {selected} of the {whole} allocations"
    );
    let flame_note = page.eval("document.getElementById('flame-range').textContent");
    assert_eq!(flame_note, " in the selected range");

    // A click on a frame zooms on it and shows its stack. The frame: the first point of the
    // second row, from the middle outwards, where the hover tip shows a box is drawn (a fixed
    // point can fall between the boxes of a range's flamegraph: one full run in four).
    let (fl, ft, fw, _) = page.rect("#flame");
    let y = ft + 18.0 * 1.5;
    let x = [0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8, 0.1, 0.9]
        .iter()
        .map(|f| fl + fw * f)
        .find(|&x| {
            page.call(
                "Input.dispatchMouseEvent",
                serde_json::json!({ "type": "mouseMoved", "x": x, "y": y }),
            );
            page.eval("document.getElementById('flame-tip').hidden") == false
        })
        .expect("a frame drawn in the flamegraph's second row");
    page.click(x, y);
    let detail = page.eval("document.getElementById('flame-detail').innerText");
    assert!(detail.as_str().unwrap().contains("allocations"), "{detail}");

    page.screenshot(&dir.join("leaky.png"));
    let png = std::fs::read(dir.join("leaky.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a screenshot"
    );
    assert_eq!(page.errors(), Vec::<String>::new(), "errors on the page");
}

#[test]
fn the_diff_shows_what_grew_and_what_shrank() {
    let (leaky, churn) = (leaky_dump(), churn_dump());
    let (now, base) = (report_json(leaky), report_json(churn));
    let dir = artifacts();
    let html = dir.join("diff.html");
    view(leaky, &html, &["--base", churn.to_str().unwrap()]);

    let mut browser = Browser::launch(&fresh_dir("chromium"), 1280, 900);
    let mut page = browser.page();
    page.navigate(&url(&html));
    assert_eq!(
        page.eval("document.getElementById('diff-section').hidden"),
        false
    );
    let change = page.eval(
        "document.querySelector('#diff-summary tr[data-field=leaked_bytes] td:last-child').textContent",
    );
    let delta = now["leaked_bytes"].as_i64().unwrap() - base["leaked_bytes"].as_i64().unwrap();
    let shown = change
        .as_str()
        .unwrap()
        .replace(['+', ','], "")
        .replace('−', "-");
    assert_eq!(shown.parse::<i64>().unwrap(), delta, "{change}");

    page.click_on("#diff-metrics button[data-metric=leaked_bytes]");
    let rows = page.eval(
        "Object.fromEntries([...document.querySelectorAll('#diff tbody tr')].map(tr => \
         [tr.cells[0].textContent, [...tr.cells].slice(2, 5).map(td => td.textContent)]))",
    );
    // leaky leaks a page from zs_leak_page, churn 16,016 bytes from zs_grow_fixed; in bytes,
    // which the headers say (issue 16: no units), also as KiB.
    assert_eq!(
        rows["zs_leak_page"],
        serde_json::json!(["0", "4,096 (4.0 KiB)", "+4,096 (4.0 KiB)"])
    );
    assert_eq!(
        rows["zs_grow_fixed"],
        serde_json::json!(["16,016 (15.6 KiB)", "0", "−16,016 (15.6 KiB)"])
    );
    let heads = |page: &mut cdp::Page| {
        page.eval("[...document.querySelectorAll('#diff thead th')].slice(2, 5).map(th => th.textContent)")
    };
    assert_eq!(
        heads(&mut page),
        serde_json::json!(["base (bytes)", "this run (bytes)", "change (bytes)"])
    );
    page.click_on("#diff-metrics button[data-metric=allocations]");
    assert_eq!(
        heads(&mut page),
        serde_json::json!([
            "base (allocations)",
            "this run (allocations)",
            "change (allocations)"
        ])
    );
    page.click_on("#diff tbody tr:first-child");
    assert_eq!(
        page.eval("document.getElementById('diff-detail').hidden"),
        false
    );
    page.screenshot(&dir.join("diff.png"));
    assert_eq!(page.errors(), Vec::<String>::new(), "errors on the page");
}

/// In a narrow window the churn table's site names wrap, if at all, where a reader would break
/// them, never inside a word (issue 16: `overflow-wrap: anywhere` squeezed the column); the
/// chart's y axis has round ticks (issue 16: 769.0 / 512.7 / 256.3 KiB).
#[test]
fn site_names_wrap_between_words_and_the_axis_ticks_are_round() {
    let dump = churn_dump();
    let html = artifacts().join("churn-narrow.html");
    view(dump, &html, &[]);
    let mut browser = Browser::launch(&fresh_dir("chromium"), 520, 900);
    let mut page = browser.page();
    page.navigate(&url(&html));
    // For each site cell: its text, and where a line starts (by the characters' boxes).
    let breaks = page.eval(
        "[...document.querySelectorAll('#churn td.site')].map(td => {\
           const text = td.textContent, r = document.createRange(), starts = [];\
           let last = null, i = 0;\
           for (const node of [...td.childNodes].filter(n => n.nodeType === 3)) {\
             for (let k = 0; k < node.length; k++, i++) {\
               r.setStart(node, k); r.setEnd(node, k + 1);\
               const top = Math.round(r.getBoundingClientRect().top);\
               if (last !== null && top > last + 2) starts.push(i);\
               last = top;\
             }\
           }\
           return [text, starts, td.getBoundingClientRect().width];\
         })",
    );
    let rows = breaks.as_array().unwrap();
    assert!(rows.len() >= 3, "{breaks}");
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for row in rows {
        let text: Vec<char> = row[0].as_str().unwrap().chars().collect();
        for at in row[1].as_array().unwrap() {
            let at = at.as_u64().unwrap() as usize;
            assert!(
                !(word(text[at - 1]) && word(text[at])),
                "{:?} wraps inside a word, before {at} (cell {} px wide)",
                row[0],
                row[2]
            );
        }
    }
    // The y axis: 0, then equal round steps (1, 2 or 5 times a power of ten) in one unit.
    let ticks = page.eval("JSON.parse(document.getElementById('chart').dataset.yTicks)");
    let ticks: Vec<&str> = ticks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(ticks.len() >= 2 && ticks[0] == "0 B", "{ticks:?}");
    let unit = ticks[1].split(' ').nth(1).unwrap();
    let values: Vec<f64> = ticks[1..]
        .iter()
        .map(|t| {
            let (v, u) = t.split_once(' ').unwrap();
            assert_eq!(u, unit, "{ticks:?}");
            v.parse().unwrap()
        })
        .collect();
    let step = values[0];
    let mantissa = step / 10f64.powf(step.log10().floor());
    assert!(
        [1.0, 2.0, 5.0].iter().any(|m| (m - mantissa).abs() < 1e-9),
        "step {step}: {ticks:?}"
    );
    for (i, v) in values.iter().enumerate() {
        assert!((v - step * (i + 1) as f64).abs() < 1e-9, "{ticks:?}");
    }
    assert_eq!(page.errors(), Vec::<String>::new(), "errors on the page");
}

/// Box labels of a flamegraph SVG as drawn: (the box's name, from its tooltip; its label).
fn svg_labels(svg: &str) -> Vec<(String, String)> {
    let unescape = |s: &str| {
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
    };
    svg.split("<g><title>")
        .skip(1)
        .filter_map(|g| {
            let (title, rest) = g.split_once("</title>")?;
            let text = rest.split_once("<text ")?.1.split_once('>')?.1;
            let label = text.split_once("</text>")?.0;
            let name = title.rsplit_once(" (").map_or(title, |(n, _)| n);
            Some((unescape(name), unescape(label)))
        })
        .collect()
}

/// Labels shortened as a reader would: never only the end of a name, never a parameter list
/// without the name it belongs to.
fn assert_reader_labels(labels: &[(String, String)], what: &str) {
    for (name, label) in labels.iter().filter(|(_, l)| !l.is_empty()) {
        assert!(!label.starts_with(".."), "{what}: {label:?} for {name:?}");
        if label != name && !name.starts_with('(') {
            assert!(!label.contains('('), "{what}: {label:?} for {name:?}");
        }
    }
}

/// Long C++ names in a flamegraph SVG lose their parameters first, then their template
/// arguments, and are cut at the end (issue 16: inferno's script cut them from the left, so a
/// box showed only its parameter list), in the SVG as written and once its script ran.
#[test]
fn flamegraph_labels_drop_the_parameters_first() {
    let run = run_traced(&sample("stlchurn"), &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let svg = artifacts().join("stlchurn-allocations.svg");
    zmtrace_ok(&[
        "flamegraph",
        run.only_dump().path.to_str().unwrap(),
        "--metric",
        "allocations",
        "-o",
        svg.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&svg).unwrap();
    let written = svg_labels(&text);
    assert!(written.len() > 20, "{written:?}");
    assert_reader_labels(&written, "as written");
    // std::map<int, std::string>::operator[](int&&) in a box of 1/6 of the width.
    assert!(
        written
            .iter()
            .any(|(n, l)| n.starts_with("std::map<int, ") && l == "std::map<…>::operator[]"),
        "{written:?}"
    );

    let mut browser = Browser::launch(&fresh_dir("chromium"), 1200, 800);
    let mut page = browser.page();
    page.navigate(&url(&svg));
    page.eval("new Promise(r => setTimeout(r, 200))");
    let shown = page.eval(
        "[...document.querySelectorAll('#frames > g')].map(g => \
           [g.querySelector('title').textContent.replace(/ \\([^(]*\\)$/, ''), \
            g.querySelector('text').textContent])",
    );
    let shown: Vec<(String, String)> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
        .collect();
    assert_eq!(shown.len(), written.len());
    assert!(
        shown.iter().filter(|(_, l)| !l.is_empty()).count() > 10,
        "{shown:?}"
    );
    assert_reader_labels(&shown, "after the script");
    assert!(
        shown
            .iter()
            .any(|(n, l)| n.contains("_M_emplace_hint_unique") && l.starts_with("std::")),
        "{shown:?}"
    );
    assert_eq!(page.errors(), Vec::<String>::new(), "errors in the SVG");
}

/// A dump with no events: the page says there is no timeline and shows the rest.
#[test]
fn a_dump_without_events_shows_no_chart() {
    use zmtrace_format::{write, End, EndReason, Process};
    let dir = fresh_dir("no-events");
    let mut bytes = write::file_header().to_vec();
    write::process(
        &mut bytes,
        &Process {
            pid: 4242,
            ppid: 1,
            start_unix_ns: 1,
            session: "s".into(),
            exe: "/bin/quiet".into(),
            argv: vec!["quiet".into()],
            ..Default::default()
        },
    );
    write::end(
        &mut bytes,
        &End {
            reason: EndReason::Exit,
            status: 0,
            events: 0,
            dropped: 0,
            untracked_frees: 0,
            free_null: 0,
            truncated_stacks: 0,
            compared_stacks: 0,
            mismatched_stacks: 0,
        },
    );
    let dump = dir.join("quiet.zmt");
    std::fs::write(&dump, bytes).unwrap();
    let html = artifacts().join("no-events.html");
    view(&dump, &html, &[]);

    let mut browser = Browser::launch(&fresh_dir("chromium"), 1280, 900);
    let mut page = browser.page();
    page.navigate(&url(&html));
    let shown = page.eval(
        "[document.getElementById('timeline-missing').hidden, \
          document.getElementById('timeline-missing').textContent, \
          document.getElementById('timeline-body').hidden, \
          document.getElementById('flame-total').textContent, \
          document.getElementById('title').textContent]",
    );
    assert_eq!(
        shown,
        serde_json::json!([
            false,
            "this dump has no events, so no timeline",
            true,
            "0",
            "quiet (pid 4242)"
        ])
    );
    assert_eq!(page.errors(), Vec::<String>::new(), "errors on the page");
}

/// An aggregated recording (`zmtrace run --aggregate`): no chart, and everything else from the
/// counters: the report's numbers, the leak table, the flamegraphs.
#[test]
fn an_aggregated_dump_shows_everything_but_the_timeline() {
    let run = run_traced_opts(&sample("leaky"), &[], &["--aggregate"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let dump = &run.only_dump().path;
    let report = report_json(dump);
    let html = artifacts().join("aggregated.html");
    view(dump, &html, &[]);

    let mut browser = Browser::launch(&fresh_dir("chromium"), 1280, 900);
    let mut page = browser.page();
    page.navigate(&url(&html));
    let missing = page.eval(
        "[document.getElementById('timeline-missing').hidden, \
          document.getElementById('timeline-missing').textContent, \
          document.getElementById('timeline-body').hidden]",
    );
    assert_eq!(missing[0], false);
    assert!(
        missing[1].as_str().unwrap().contains("--aggregate"),
        "{missing}"
    );
    assert_eq!(missing[2], true);
    let shown = page.eval(
        "Object.fromEntries([...document.querySelectorAll('#summary tr[data-field]')]\
         .map(tr => [tr.dataset.field, tr.querySelector('td.exact').textContent]))",
    );
    for field in [
        "allocations",
        "frees",
        "reallocs",
        "leaked_bytes",
        "temporary",
    ] {
        assert_eq!(
            number(&shown[field]),
            report[field].as_u64().unwrap(),
            "summary field {field}: {shown}"
        );
    }
    // What only a timeline measures is unknown, not 0 (issue 16: peak 0 B at 0 ns, run time
    // 0 ns, events 12); the calls the dump counted are shown instead of events.
    for field in ["peak_bytes", "peak_time_ns", "duration_ns", "events"] {
        assert_eq!(shown[field], "n/a", "summary field {field}: {shown}");
    }
    assert_eq!(number(&shown["calls"]), report["calls"].as_u64().unwrap());
    // No "live at peak" flamegraph: `zmtrace flamegraph --metric peak` refuses this dump.
    let metrics = page
        .eval("[...document.querySelectorAll('#flame-metrics button')].map(b => b.dataset.metric)");
    assert_eq!(
        metrics,
        serde_json::json!([
            "allocations",
            "bytes",
            "leaked",
            "temporary",
            "reallocs",
            "lost"
        ])
    );
    let first = page.eval("document.querySelector('#leaks tbody tr td.site').textContent");
    assert_eq!(first, "zs_leak_page");
    page.click_on("#flame-metrics button[data-metric=allocations]");
    let total = page
        .eval("Number(document.getElementById('flame-total').dataset.value)")
        .as_u64()
        .unwrap();
    assert_eq!(total, report["allocations"].as_u64().unwrap());
    page.click_on("#flame-metrics button[data-metric=leaked]");
    page.type_into("#flame-search", "zs_leak_");
    let matched = page.eval("document.getElementById('flame-match').dataset.value");
    assert_eq!(matched, "4396");
    page.screenshot(&artifacts().join("aggregated.png"));
    assert_eq!(page.errors(), Vec::<String>::new(), "errors on the page");
}

/// The leak check's classes on the page: the leak table lists what `zmtrace leaks` lists (the
/// suppressed glibc blocks left out, each row with its class), and the flamegraph of lost bytes
/// totals the definitely and indirectly lost bytes.
#[test]
fn the_page_shows_the_leak_classes_as_leaks_does() {
    let run = run_traced(&sample("reach"), &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let dump = &run.only_dump().path;
    let leaks: Value = serde_json::from_str(&zmtrace_ok(&[
        "leaks",
        dump.to_str().unwrap(),
        "--json",
        "--top",
        "0",
    ]))
    .unwrap();
    let html = artifacts().join("reach.html");
    view(dump, &html, &[]);

    let mut browser = Browser::launch(&fresh_dir("chromium"), 1280, 900);
    let mut page = browser.page();
    page.navigate(&url(&html));
    let names = |k: &str| match k {
        "definite" => "definitely lost",
        "indirect" => "indirectly lost",
        "possible" => "possibly lost",
        _ => "still reachable",
    };
    let want: Vec<(String, String, u64)> = leaks["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["site"].as_str().unwrap().to_string(),
                names(s["kind"].as_str().unwrap()).to_string(),
                s["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    let shown = page.eval(
        "[...document.querySelectorAll('#leaks tbody tr')].map(tr => [tr.cells[0].textContent, \
          tr.cells[tr.cells.length - 1].textContent, tr.cells[2].textContent.split(' ')[0]])",
    );
    let got: Vec<(String, String, u64)> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                r[1].as_str().unwrap().to_string(),
                number(&r[2]),
            )
        })
        .collect();
    // In the CLI's order, lost first (issue 16: still reachable rows came first, by bytes).
    assert_eq!(
        got, want,
        "the leak table against `zmtrace leaks`, in its order"
    );
    assert_eq!(got[0].1, "definitely lost", "{got:?}");
    assert_eq!(got.last().unwrap().1, "still reachable", "{got:?}");
    assert!(
        got.iter()
            .any(|r| r.1 == "still reachable" && r.2 > got[0].2),
        "a still reachable row larger than the first lost one: {got:?}"
    );
    assert!(
        got.iter().all(|(site, _, _)| site.starts_with("zs_")),
        "{got:?}"
    );

    page.click_on("#flame-metrics button[data-metric=lost]");
    let total = page
        .eval("Number(document.getElementById('flame-total').dataset.value)")
        .as_u64()
        .unwrap();
    let lost = leaks["kinds"]["definite"]["bytes"].as_u64().unwrap()
        + leaks["kinds"]["indirect"]["bytes"].as_u64().unwrap();
    assert_eq!(total, lost);
    assert_eq!(lost, 453 + 232, "samples/reach.c's lost bytes");
    assert_eq!(page.errors(), Vec::<String>::new(), "errors on the page");

    // samples/clean.c frees everything: what glibc keeps (without freeres at exit) is
    // suppressed, here as in `leaks`.
    let run = run_traced_opts(&sample("clean"), &[], &["--no-freeres"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let dump = &run.only_dump().path;
    let raw: Value = serde_json::from_str(&zmtrace_ok(&[
        "leaks",
        dump.to_str().unwrap(),
        "--json",
        "--no-default-suppressions",
    ]))
    .unwrap();
    assert!(!raw["sites"].as_array().unwrap().is_empty(), "{raw:#}");
    let html = artifacts().join("clean.html");
    view(dump, &html, &[]);
    page.navigate(&url(&html));
    let rows = page.eval("document.querySelectorAll('#leaks tbody tr td.site').length");
    assert_eq!(rows, 0, "no leak rows for a clean program");
    page.click_on("#flame-metrics button[data-metric=leaked]");
    let total = page.eval("Number(document.getElementById('flame-total').dataset.value)");
    assert_eq!(total, 0);
    assert_eq!(page.errors(), Vec::<String>::new(), "errors on the page");
}

#[test]
fn serve_answers_with_the_same_page() {
    let dump = leaky_dump();
    let file = fresh_dir("serve").join("page.html");
    view(dump, &file, &[]);
    let mut child = Command::new(zmtrace_bin())
        .args(["view", dump.to_str().unwrap(), "--serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let get = |path: &str| -> String {
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("no URL in {line:?}"));
        assert!(addr.starts_with("127.0.0.1:"), "{line}");
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let page = get("/");
    let missing = get("/nothing");
    let _ = child.kill();
    let _ = child.wait();
    let (head, body) = page.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/html"), "{head}");
    assert_eq!(body, std::fs::read_to_string(&file).unwrap());
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

fn assert_one_line_error(f: &Finished, code: i32, mentions: &str) {
    assert_eq!(f.code, Some(code), "stderr:\n{}", f.stderr);
    assert_eq!(f.stderr.trim().lines().count(), 1, "{}", f.stderr);
    assert!(f.stderr.contains(mentions), "{}", f.stderr);
}

#[test]
fn bad_input_and_unwritable_output_fail_with_one_line() {
    let dir = fresh_dir("view-errors");
    let not_a_dump = dir.join("notes.zmt");
    std::fs::write(&not_a_dump, "not a dump").unwrap();
    let out = dir.join("out.html");
    let o = out.to_str().unwrap();
    let f = run_zmtrace(&["view", not_a_dump.to_str().unwrap(), "-o", o]);
    assert_one_line_error(&f, 2, "not a zmtrace dump");
    assert!(!out.exists(), "no page for a bad dump");

    let d = leaky_dump().to_str().unwrap();
    let f = run_zmtrace(&["view", d, "--base", not_a_dump.to_str().unwrap(), "-o", o]);
    assert_one_line_error(&f, 2, "not a zmtrace dump");
    let missing = dir.join("missing.zmt");
    let f = run_zmtrace(&["view", missing.to_str().unwrap(), "-o", o]);
    assert_one_line_error(&f, 2, "missing.zmt");

    // Root ignores permission bits: the unwritable paths are beneath a regular file.
    let under_file = not_a_dump.join("out.html");
    let f = run_zmtrace(&["view", d, "-o", under_file.to_str().unwrap()]);
    assert_one_line_error(&f, 125, "cannot write");
    let f = run_zmtrace(&["view", d, "-o", dir.to_str().unwrap()]);
    assert_one_line_error(&f, 125, "cannot write");
}

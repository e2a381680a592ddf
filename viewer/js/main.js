// The page: reads the data the CLI put in, fills the sections, and keeps them on the selected
// time range.

const data = JSON.parse($("zmtrace-data").textContent);
if (data.format !== 1) throw new Error(`this page reads data format 1, not ${data.format}`);
const report = data.report;
const C = Object.fromEntries(data.counters.map((name, i) => [name, i]));

const METRICS = [
  { name: "allocations", title: "allocations", unit: "allocations" },
  { name: "bytes", title: "bytes allocated", unit: "bytes" },
  { name: "leaked", title: "leaked", unit: "bytes" },
  { name: "peak", title: "live at peak", unit: "bytes" },
  { name: "temporary", title: "temporary", unit: "temporary allocations" },
  { name: "reallocs", title: "reallocs", unit: "reallocs" },
  { name: "lost", title: "lost", unit: "bytes" },
];

// The selected range of time buckets, [first, last], or null for the whole run.
let range = null;
let metric = "bytes";

// The counter for every site, over the selected range (or the whole run).
function siteValues(counter) {
  const k = C[counter];
  if (!range) return data.sites.map((s) => s.totals[k]);
  const out = new Array(data.sites.length).fill(0);
  const per = data.timeline.counters[k];
  for (let b = range[0]; b <= range[1]; b++) {
    const flat = per[b];
    for (let i = 0; i < flat.length; i += 2) out[flat[i]] += flat[i + 1];
  }
  return out;
}

const sum = (a) => a.reduce((x, y) => x + y, 0);

// ---- header and summary -------------------------------------------------------------------

function header() {
  const program = basename(report.program);
  $("title").textContent = `${program} (pid ${report.pid})`;
  document.title = `zmtrace: ${program} (pid ${report.pid})`;
  $("subtitle").replaceChildren(
    el("div", {}, report.command.join(" ")),
    el("div", {}, `${report.dump} — ${report.ending}`));
  $("warnings").replaceChildren(...report.warnings.map((w) => el("li", {}, w)));
}

// [report field, label, kind, counter that restricts it to a range]
const SUMMARY = [
  ["allocations", "allocations", "count", "allocations"],
  ["frees", "frees", "count"],
  ["reallocs", "reallocs", "count", "reallocs"],
  ["failed", "failed allocations", "count"],
  ["bytes_allocated", "bytes allocated (reallocs included)", "bytes", "bytes"],
  ["peak_bytes", "peak heap", "bytes"],
  ["peak_time_ns", "peak at", "ns"],
  ["leaked_blocks", "blocks not freed at exit", "count", "leaked_blocks"],
  ["leaked_bytes", "bytes not freed at exit", "bytes", "leaked"],
  ["temporary", "temporary allocations", "count", "temporary"],
  ["threads", "threads", "count"],
  ["events", "events", "count"],
  ["calls", "calls counted", "count"],
  ["duration_ns", "run time", "ns"],
];

function human(kind, v) {
  if (kind === "bytes") return v >= 1024 ? fmtBytes(v) : "";
  if (kind === "ns") return fmtTime(v);
  return "";
}

function summary() {
  // An aggregated dump has no timeline: what only a timeline measures is null in the report,
  // shown as unknown rather than as 0. `calls` is the aggregated dump's own (null otherwise).
  const shown = SUMMARY.filter(([field]) => field !== "calls" || report.calls !== null);
  const rows = shown.map(([field, label, kind, counter]) => {
    const v = report[field];
    if (v === null || v === undefined) {
      return el("tr", { "data-field": field },
        el("th", {}, label),
        el("td", { class: "num exact" }, "n/a"),
        el("td", { class: "unit" }, ""),
        el("td", { class: "human" }, "aggregated dump: no timeline"),
        el("td", { class: "in-range" }, ""));
    }
    let inRange = "";
    if (range && counter) {
      const r = sum(siteValues(counter));
      inRange = `${fmtInt(r)}${kind === "bytes" ? " B" : ""} in the selected range`;
    }
    return el("tr", { "data-field": field },
      el("th", {}, label),
      el("td", { class: "num exact" }, fmtInt(v)),
      el("td", { class: "unit" }, kind === "bytes" ? "B" : kind === "ns" ? "ns" : ""),
      el("td", { class: "human" }, human(kind, v)),
      el("td", { class: "in-range" }, inRange));
  });
  $("summary").replaceChildren(el("tbody", {}, rows));
}

// ---- timeline ------------------------------------------------------------------------------

let chart = null;

function timeline() {
  if (!data.timeline) {
    $("timeline-missing").textContent = data.no_timeline || "this dump has no timeline";
    $("timeline-missing").hidden = false;
    $("timeline-body").hidden = true;
    return;
  }
  chart = new Chart(data, (r) => { range = r; update(); });
  $("range-clear").addEventListener("click", () => chart.setRange(null));
  chart.draw();
}

function rangeInfo() {
  const info = $("range-info");
  if (!data.timeline) return;
  const t = data.timeline, n = t.heap.length;
  const [b0, b1] = range || [0, n - 1];
  const start = t.start_ns + b0 * t.bucket_ns, end = t.start_ns + (b1 + 1) * t.bucket_ns;
  info.dataset.startNs = start;
  info.dataset.endNs = end;
  info.dataset.selected = range ? "yes" : "no";
  info.textContent = range
    ? `Selected: ${fmtTime(start)} – ${fmtTime(end)} since the start (buckets ${b0}–${b1} of ${n}, ${fmtTime(t.bucket_ns)} each).`
    : `Whole run: ${fmtTime(start)} – ${fmtTime(end)} since the start, in ${n} buckets of ${fmtTime(t.bucket_ns)}.`;
}

// ---- flamegraph ----------------------------------------------------------------------------

let flame = null;

function flameSection() {
  flame = new Flame(data, (node) => {
    const frames = [];
    for (let n = node; n && n.parent; n = n.parent) frames.push(n.frame);
    const total = flame.root.value;
    showDetail($("flame-detail"), node.parent ? node.name : "all",
      `${flame.unitText(node.value)} — ${fmtPct(node.value, total)} of ${flame.unitText(total)}` +
      (node.self ? `; allocated here directly: ${flame.unitText(node.self)}` : "") +
      (range ? " (selected range)" : ""),
      frames.length ? stackList(data, frames) : el("p", {}, "the root: every stack"));
  });
  // No peak without a timeline (the CLI refuses `flamegraph --metric peak` on such a dump too).
  const offered = METRICS.filter((m) => m.name !== "peak" || report.peak_bytes !== null);
  $("flame-metrics").replaceChildren(...offered.map((m) =>
    el("button", { type: "button", "data-metric": m.name, onclick: () => { metric = m.name; drawFlame(); } }, m.title)));
  $("flame-search").addEventListener("input", () => searchFlame());
  $("flame-reset").addEventListener("click", () => flame.resetZoom());
}

function searchFlame() {
  const matched = flame.setSearch($("flame-search").value);
  $("flame-match").dataset.value = matched === null ? "" : matched;
  $("flame-match").textContent = matched === null ? "" : `— matched: ${flame.unitText(matched)} (${fmtPct(matched, flame.root.value)})`;
}

function drawFlame() {
  const m = METRICS.find((x) => x.name === metric);
  for (const b of $("flame-metrics").children) b.classList.toggle("on", b.dataset.metric === metric);
  flame.unit = m.unit;
  flame.rangeText = !!range;
  const total = flame.setValues(siteValues(metric));
  $("flame-total").textContent = fmtInt(total);
  $("flame-total").dataset.value = total;
  $("flame-unit").textContent = m.unit;
  $("flame-range").textContent = range ? " in the selected range" : "";
  searchFlame();
}

// ---- leaks and churn -----------------------------------------------------------------------

const siteCol = { key: "name", title: "site", cls: () => "site", fmt: siteBreaks };
const whereCol = { key: "where", title: "where", cls: () => "where", help: "the file and line of the frame the site is named after" };
const countCol = (key, title, help) => ({ key, title, num: true, fmt: fmtInt, help });
const bytesCol = (key, title, help) => ({ key, title, num: true, fmt: (v) => (v >= 1024 ? `${fmtInt(v)} (${fmtBytes(v)})` : fmtInt(v)), help });

function stackDetail(box, row, numbers) {
  const site = data.sites[row.site];
  showDetail(box, site.name, numbers, stackList(data, site.stack));
}

let leaksTable = null, churnTable = null;
const KIND_NAMES = { definite: "definitely lost", indirect: "indirectly lost", possible: "possibly lost", reachable: "still reachable" };

function leakRows() {
  const blocks = range ? siteValues("leaked_blocks") : null;
  const bytes = range ? siteValues("leaked") : null;
  // The buckets count per site, not per class: in a range, a site's classes make one row.
  const seen = new Set();
  const multi = new Set(data.leaks.filter((l, i) => data.leaks.findIndex((m) => m.site === l.site) !== i).map((l) => l.site));
  return data.leaks.filter((l) => !range || !seen.has(l.site) && seen.add(l.site)).map((l, i) => ({
    id: i,
    // The CLI's order (`zmtrace leaks`): lost first, then largest first.
    rank: i,
    site: l.site,
    kind: range && multi.has(l.site) ? "all classes" : KIND_NAMES[l.kind] || "",
    name: data.sites[l.site].name,
    where: siteWhere(data, data.sites[l.site].stack, data.sites[l.site].name),
    bytes: range ? bytes[l.site] : l.bytes,
    blocks: range ? blocks[l.site] : l.blocks,
    via_realloc: l.via_realloc,
  })).filter((r) => r.blocks > 0);
}

function patternText(p) {
  switch (p.kind) {
    case "none": return "no growth";
    case "fixed_step": return `fixed step of ${fmtInt(p.step)} bytes (${(p.share * 100).toFixed(0)}% of grows)`;
    case "geometric": return `geometric, ×${p.factor.toFixed(2)} per grow`;
    default: return "irregular";
  }
}

function churnRows() {
  const keys = ["reallocs", "grew", "shrank", "moved", "in_place", "bytes_copied"];
  const inRange = range ? Object.fromEntries(keys.map((k) => [k, siteValues(k)])) : null;
  return data.churn.map((c, i) => {
    const site = data.sites[c.site];
    const r = { id: i, site: c.site, name: site.name, where: siteWhere(data, site.stack, site.name), longest_chain: c.longest_chain, pattern: patternText(c.pattern), hint: c.hint || "" };
    for (const k of keys) r[k] = range ? inRange[k][c.site] : c[k];
    return r;
  }).filter((r) => r.reallocs > 0);
}

function tables() {
  leaksTable = new Table(data, "leaks", [
    siteCol,
    whereCol,
    bytesCol("bytes", "bytes"),
    countCol("blocks", "blocks"),
    countCol("via_realloc", "grown by realloc", "blocks whose stack is their last realloc's (whole run)"),
    { key: "kind", title: "class", help: "what the leak check at exit found (memcheck's classes); empty without a check" },
  ], "rank", (r) => stackDetail($("leaks-detail"), r,
    `${fmtInt(r.bytes)} bytes in ${plural(r.blocks, "block")} not freed at exit` +
    (r.kind ? ` (${r.kind})` : "") +
    (r.via_realloc ? `; ${fmtInt(r.via_realloc)} grown by realloc (the stack is their last realloc's)` : "") +
    (range ? " — allocated in the selected range" : "")));
  churnTable = new Table(data, "churn", [
    siteCol,
    whereCol,
    countCol("reallocs", "reallocs"),
    countCol("grew", "grew"),
    countCol("shrank", "shrank"),
    countCol("moved", "moved"),
    countCol("in_place", "in place"),
    bytesCol("bytes_copied", "bytes copied", "by moving reallocs: the smaller of the old and new size"),
    countCol("longest_chain", "longest chain", "the most reallocs one block went through (whole run)"),
    { key: "pattern", title: "growth", help: "whole run" },
    { key: "hint", title: "hint" },
  ], "bytes_copied", (r) => stackDetail($("churn-detail"), r,
    `${fmtInt(r.reallocs)} reallocs (grew ${fmtInt(r.grew)}, shrank ${fmtInt(r.shrank)}; moved ${fmtInt(r.moved)}, in place ${fmtInt(r.in_place)}), ${fmtInt(r.bytes_copied)} bytes copied; ${r.pattern}` +
    (range ? " — in the selected range" : "")));
}

function tableNotes() {
  const r = range ? " Counting only the selected range: rows with nothing in it are hidden." : "";
  $("leaks-note").textContent = (data.leak_groups > data.leaks.length
    ? `the largest ${data.leaks.length} of ${fmtInt(data.leak_groups)} leak groups are listed.`
    : `${fmtInt(data.leak_groups)} leak groups.`) + r;
  $("churn-note").textContent = (data.churn_sites > data.churn.length
    ? `the ${data.churn.length} sites (of ${fmtInt(data.churn_sites)}) that copied most are listed.`
    : `${fmtInt(data.churn_sites)} sites reallocated.`) + r;
}

// ---- diff ----------------------------------------------------------------------------------

let diffMetric = "bytes";
let diffTable = null;

function diffSection() {
  const d = data.diff;
  if (!d) return;
  $("diff-section").hidden = false;
  const b = d.base;
  $("diff-base").textContent = `this run against ${basename(b.program)} (pid ${b.pid}), ${b.dump}`;
  const fields = [["allocations", "allocations"], ["bytes_allocated", "bytes allocated"], ["peak_bytes", "peak heap"],
    ["leaked_bytes", "bytes not freed at exit"], ["temporary", "temporary allocations"], ["reallocs", "reallocs"],
    ["events", "events"], ["duration_ns", "run time (ns)"]];
  $("diff-summary").replaceChildren(
    el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", { class: "num" }, "base"), el("th", { class: "num" }, "this run"), el("th", { class: "num" }, "change"))),
    el("tbody", {}, fields.map(([f, label]) => {
      // null: an aggregated dump has no peak, events or run time.
      const known = report[f] !== null && b[f] !== null;
      const delta = known ? report[f] - b[f] : 0;
      const show = (v) => (v === null ? "n/a" : fmtInt(v));
      return el("tr", { "data-field": f }, el("th", {}, label), el("td", { class: "num" }, show(b[f])),
        el("td", { class: "num" }, show(report[f])),
        el("td", { class: `num ${delta > 0 ? "grew" : delta < 0 ? "shrank" : ""}` }, known ? signed(delta) : "n/a"));
    })));
  $("diff-metrics").replaceChildren(...d.metrics.map((m) =>
    el("button", { type: "button", "data-metric": m, onclick: () => { diffMetric = m; diffRows(); } }, m)));
  // The numbers are in the selected metric's unit: the headers say which; bytes also read as
  // KiB/MiB from 1 KiB on, as in the other tables.
  const inUnit = (v) => (diffUnit() === "bytes" && Math.abs(v) >= 1024 ? ` (${fmtBytes(Math.abs(v))})` : "");
  const signedCol = { key: "change", title: "change", num: true, fmt: (v) => signed(v) + inUnit(v), cls: (r) => (r.change > 0 ? "grew" : r.change < 0 ? "shrank" : "") };
  diffTable = new Table(data, "diff", [
    siteCol,
    whereCol,
    { key: "base", title: "base", num: true, fmt: (v) => fmtInt(v) + inUnit(v) },
    { key: "current", title: "this run", num: true, fmt: (v) => fmtInt(v) + inUnit(v) },
    signedCol,
    { key: "pct", title: "change %", num: true, fmt: (v) => (v === Infinity ? "new" : v === -100 ? "gone" : `${v > 0 ? "+" : ""}${v.toFixed(0)}%`) },
  ], "size", (r) => {
    const row = d.rows[r.id];
    const lines = d.metrics.map((m, i) => `${m} ${fmtInt(row.base[i])} → ${fmtInt(row.current[i])}`).join("; ");
    showDetail($("diff-detail"), row.name, lines, stackList(data, row.stack));
  });
  $("diff-note").textContent = d.sites_differing > d.rows.length
    ? `the sites that changed most are listed (${d.rows.length} of ${fmtInt(d.sites_differing)} that differ).`
    : `${fmtInt(d.sites_differing)} sites differ.`;
  diffRows();
}

function signed(v) {
  return v > 0 ? `+${fmtInt(v)}` : v < 0 ? `−${fmtInt(-v)}` : "0";
}

// What the diff table's numbers count (the data says, per metric: `zmtrace diff`'s metrics).
function diffUnit() {
  return data.diff.units[data.diff.metrics.indexOf(diffMetric)];
}

function diffRows() {
  const d = data.diff;
  const k = d.metrics.indexOf(diffMetric);
  for (const b of $("diff-metrics").children) b.classList.toggle("on", b.dataset.metric === diffMetric);
  const unit = diffUnit();
  for (const c of diffTable.columns) {
    const title = { base: "base", current: "this run", change: "change" }[c.key];
    if (title) c.title = `${title} (${unit})`;
  }
  diffTable.setRows(d.rows.map((row, i) => {
    const base = row.base[k], current = row.current[k], change = current - base;
    return { id: i, name: row.name, where: siteWhere(data, row.stack, row.name), base, current, change, size: Math.abs(change), pct: base ? (100 * change) / base : Infinity };
  }).filter((r) => r.change !== 0));
}

// ---- notes ---------------------------------------------------------------------------------

function notes() {
  const items = [];
  const shown = data.sites.length - data.folded.length;
  if (data.folded.length) {
    items.push(`Folded: ${fmtInt(data.sites_in_dump)} sites in the dump; the ${fmtInt(shown)} largest (per metric, and every table row) are shown by name, the other ${fmtInt(data.sites_in_dump - shown)} are folded under their callers, into ${plural(data.folded.length, "entry|entries")} named "(N smaller sites)".`);
  } else {
    items.push(`All ${fmtInt(data.sites_in_dump)} sites of the dump are shown.`);
  }
  if (data.timeline) {
    const t = data.timeline;
    items.push(`The run is cut into ${t.heap.length} buckets of ${fmtTime(t.bucket_ns)}. A block counts in the bucket of its allocation (or its last realloc), its leaked and peak bytes too; the chart shows each bucket's highest heap, with the ${t.series.length} sites that held most at the peak.`);
  }
  items.push("A site is the stack of an allocation, named after its first frame outside the allocator wrappers; stacks that symbolize the same are one site.");
  if (data.diff) items.push("Diff: sites are matched between the runs by their symbolized stacks (function, file and line of every frame).");
  $("notes").replaceChildren(...items.map((t) => el("li", {}, t)));
}

// ---- keeping it together -------------------------------------------------------------------

function update() {
  summary();
  rangeInfo();
  drawFlame();
  leaksTable.setRows(leakRows());
  churnTable.setRows(churnRows());
  tableNotes();
}

header();
timeline();
flameSection();
tables();
mappedSection();
diffSection();
notes();
update();

let resizeTimer = 0;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => { if (chart) chart.draw(); flame.draw(); }, 100);
});

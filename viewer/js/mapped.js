// The program's own mappings (mmap, munmap, mremap): a section of their own, from
// `report.mapped` (the same numbers as `zmtrace report`), never mixed into the heap's figures.
// Hidden when the program mapped nothing.

// [report.mapped field, label, kind]
const MAPPED_SUMMARY = [
  ["maps", "mmap calls", "count"],
  ["remaps", "mremap calls", "count"],
  ["unmaps", "munmap calls", "count"],
  ["bytes_mapped", "bytes mapped in all (mremap growth included)", "bytes"],
  ["bytes_unmapped", "bytes unmapped", "bytes"],
  ["peak_bytes", "peak mapped", "bytes"],
  ["peak_time_ns", "peak at", "ns"],
  ["at_exit_bytes", "mapped at exit", "bytes"],
  ["at_exit_ranges", "ranges mapped at exit", "count"],
  ["at_exit_anonymous_bytes", "of it anonymous", "bytes"],
  ["at_exit_file_bytes", "of it file-backed", "bytes"],
  ["at_exit_shared_bytes", "of it shared", "bytes"],
];

function mappedSection() {
  const m = report.mapped;
  if (!m || m.maps + m.remaps + m.unmaps === 0) return;
  $("mapped-section").hidden = false;
  const fmtB = (v) => (v >= 1024 ? ` (${fmtBytes(v)})` : "");
  $("mapped-summary").replaceChildren(el("tbody", {}, MAPPED_SUMMARY.map(([field, label, kind]) =>
    el("tr", { "data-field": field },
      el("th", {}, label),
      el("td", { class: "num exact" }, fmtInt(m[field])),
      el("td", { class: "unit" }, kind === "bytes" ? "B" : kind === "ns" ? "ns" : ""),
      el("td", { class: "human" }, kind === "ns" ? fmtTime(m[field]) : kind === "bytes" ? fmtB(m[field]).trim() : "")))));
  // One row per site, from the two top lists (by bytes mapped, by bytes mapped at exit).
  const rows = new Map();
  for (const [list, key] of [[m.top.bytes, "bytes"], [m.top.at_exit, "at_exit"]]) {
    for (const t of list) {
      const f = t.stack[0] || {};
      const id = t.stack.map((x) => x.address).join(" ");
      if (!rows.has(id)) rows.set(id, { site: t.site, where: f.file ? `${basename(f.file)}:${f.line ?? "?"}` : "", bytes: 0, at_exit: 0 });
      rows.get(id)[key] = t.value;
    }
  }
  const sorted = [...rows.values()].sort((a, b) => b.at_exit - a.at_exit || b.bytes - a.bytes);
  $("mapped-sites").replaceChildren(
    el("thead", {}, el("tr", {}, el("th", {}, "site"), el("th", {}, "where"), el("th", { class: "num" }, "bytes mapped"), el("th", { class: "num" }, "mapped at exit"))),
    el("tbody", {}, sorted.map((r) => el("tr", { "data-site": r.site },
      el("td", { class: "site" }, r.site),
      el("td", { class: "where" }, r.where),
      el("td", { class: "num" }, fmtInt(r.bytes) + fmtB(r.bytes)),
      el("td", { class: "num" }, fmtInt(r.at_exit) + fmtB(r.at_exit))))));
}

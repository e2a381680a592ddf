// Helpers shared by the parts of the page: building elements, formatting numbers, stacks.

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

// Exact integers with thousands separators: 1234567 -> "1,234,567".
function fmtInt(n) {
  return Math.round(n).toLocaleString("en-US");
}

// Bytes for people, as the CLI prints them: 1023 B, 1.5 KiB, 12.3 MiB.
function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n, u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return u === 0 ? `${Math.round(n)} B` : `${v.toFixed(1)} ${units[u]}`;
}

// A duration in ns, with a unit that suits it.
function fmtTime(ns) {
  const a = Math.abs(ns);
  if (a >= 1e9) return `${(ns / 1e9).toFixed(a >= 1e10 ? 1 : 3)} s`;
  if (a >= 1e6) return `${(ns / 1e6).toFixed(a >= 1e7 ? 1 : 2)} ms`;
  if (a >= 1e3) return `${(ns / 1e3).toFixed(1)} µs`;
  return `${Math.round(ns)} ns`;
}

// "1 block", "2 blocks"; an irregular plural spelled out: plural(2, "entry|entries"). As the
// CLI's words::plural.
function plural(n, word) {
  const [one, many] = word.includes("|") ? word.split("|") : [word, `${word}s`];
  return `${fmtInt(n)} ${n === 1 ? one : many}`;
}

// A site's name with places to break a line where a reader would (after `::`, `(`, `<` and
// `,`), never inside a word: the text, with <wbr> elements between its parts.
function siteBreaks(name) {
  const out = [];
  for (const part of String(name).split(/(?<=::|[(<,])/)) {
    if (out.length) out.push(el("wbr", {}));
    out.push(part);
  }
  return out;
}

function fmtPct(part, whole) {
  if (!whole) return "0%";
  const p = (100 * part) / whole;
  return p >= 10 || p === 0 ? `${p.toFixed(0)}%` : `${p.toFixed(1)}%`;
}

function basename(path) {
  const i = path.lastIndexOf("/");
  return i < 0 ? path : path.slice(i + 1);
}

// A small stable hash of a string, for colours.
function hash(s) {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 16777619);
  }
  return h >>> 0;
}

// The frames of a stack (indices into data.frames, innermost first), one line each with file:line.
function stackList(data, stack) {
  return el("ol", { class: "stack" }, stack.map((i) => {
    const f = data.frames[i];
    const loc = f.file ? (f.line ? `${f.file}:${f.line}` : f.file) : null;
    const mod = f.module !== null && f.module !== undefined ? basename(data.modules[f.module]) : null;
    return el("li", {},
      el("span", { class: "fn" }, f.label),
      f.inlined ? el("span", { class: "inl" }, "(inlined)") : null,
      loc ? el("span", { class: "loc" }, loc) : null,
      !loc && mod ? el("span", { class: "mod" }, mod) : null);
  }));
}

// Where a site is: file:line of the frame it is named after (several sites of one function
// differ there).
function siteWhere(data, stack, name) {
  for (const i of stack) {
    const f = data.frames[i];
    if (f.label === name) return f.file ? `${basename(f.file)}${f.line ? `:${f.line}` : ""}` : "";
  }
  return "";
}

// Fills a detail box: a title, a line of numbers, and a stack.
function showDetail(box, title, numbers, stackEl) {
  box.replaceChildren(el("h3", {}, title), el("p", { class: "numbers" }, numbers), stackEl);
  box.hidden = false;
}

// Sizes a canvas to its box and the screen's pixel ratio; returns its 2D context in CSS pixels.
function fitCanvas(canvas, cssHeight) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.parentElement.clientWidth;
  canvas.style.height = `${cssHeight}px`;
  canvas.width = Math.max(1, Math.round(width * ratio));
  canvas.height = Math.max(1, Math.round(cssHeight * ratio));
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return { ctx, width, height: cssHeight };
}

function placeTip(tip, box, x, y, text) {
  tip.textContent = text;
  tip.hidden = false;
  const bw = box.clientWidth;
  const tw = tip.offsetWidth;
  tip.style.left = `${Math.max(0, Math.min(x + 12, bw - tw))}px`;
  tip.style.top = `${y + 14}px`;
}

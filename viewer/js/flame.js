// The flamegraph, drawn on a canvas from per-site values: the callers at the top, the allocating
// frames below them (an icicle). Frames merge by name at each depth, as in `zmtrace flamegraph`.
// Click a frame to zoom on it and see its stack; search colours the matching frames.

const ROW = 18;

class Flame {
  constructor(data, onPick) {
    this.data = data;
    this.onPick = onPick;
    this.canvas = $("flame");
    this.box = $("flame-box");
    this.tip = $("flame-tip");
    this.root = null;
    this.zoom = null;
    this.search = "";
    this.rects = [];
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => { this.tip.hidden = true; });
    this.canvas.addEventListener("click", (e) => this.click(e));
  }

  // values[i]: the metric for data.sites[i].
  setValues(values) {
    const root = { name: "all", frame: -1, value: 0, self: 0, depth: 0, parent: null, children: new Map() };
    let depth = 0;
    values.forEach((v, i) => {
      if (!(v > 0)) return;
      const stack = this.data.sites[i].stack;
      let node = root;
      root.value += v;
      for (let k = stack.length - 1; k >= 0; k--) {
        const f = stack[k];
        const name = this.data.frames[f].label;
        let child = node.children.get(name);
        if (!child) {
          child = { name, frame: f, value: 0, self: 0, depth: node.depth + 1, parent: node, children: new Map() };
          node.children.set(name, child);
        }
        child.value += v;
        node = child;
      }
      node.self += v;
      depth = Math.max(depth, node.depth);
    });
    // Widest first; x is each node's offset from the root's left edge, in the metric's units.
    const place = (node, x) => {
      node.x = x;
      node.kids = [...node.children.values()].sort((a, b) => b.value - a.value || (a.name < b.name ? -1 : 1));
      let cx = x;
      for (const c of node.kids) { place(c, cx); cx += c.value; }
    };
    place(root, 0);
    this.root = root;
    this.depth = depth;
    // Stay zoomed on the same frames when the values change, if they are still there.
    this.zoom = this.zoom ? this.find(this.path(this.zoom)) : null;
    this.draw();
    return root.value;
  }

  path(node) {
    const names = [];
    for (let n = node; n && n.parent; n = n.parent) names.unshift(n.name);
    return names;
  }

  find(names) {
    let n = this.root;
    for (const name of names) {
      n = n.children.get(name);
      if (!n) return null;
    }
    return n === this.root ? null : n;
  }

  matches(node) {
    return this.search !== "" && node.name.toLowerCase().includes(this.search);
  }

  // The total of the matching frames, each counted once (not again under a matching caller).
  setSearch(text) {
    this.search = text.trim().toLowerCase();
    this.draw();
    if (!this.search) return null;
    let total = 0;
    const walk = (n) => {
      if (n !== this.root && this.matches(n)) { total += n.value; return; }
      n.kids.forEach(walk);
    };
    walk(this.root);
    return total;
  }

  color(node) {
    if (this.matches(node)) return "rgb(220, 0, 220)";
    if (node === this.root) return "rgb(200, 205, 215)";
    if (node.name.startsWith("(") && node.name.endsWith(" smaller sites)")) return "rgb(190, 190, 190)";
    const h = hash(node.name);
    return `rgb(${205 + (h % 50)}, ${60 + ((h >>> 8) % 170)}, ${(h >>> 16) % 55})`;
  }

  draw() {
    const rows = (this.depth || 0) + 1;
    const { ctx, width } = fitCanvas(this.canvas, Math.max(rows * ROW, ROW * 3));
    this.width = width;
    this.rects = [];
    if (!this.root || this.root.value === 0) {
      ctx.fillStyle = "#667085";
      ctx.font = "13px system-ui, sans-serif";
      ctx.textBaseline = "middle";
      ctx.fillText("nothing to show for this metric" + (this.rangeText ? " in the selected range" : ""), 8, ROW);
      return;
    }
    const z = this.zoom || this.root;
    const scale = width / z.value;
    ctx.font = "12px ui-monospace, 'DejaVu Sans Mono', monospace";
    ctx.textBaseline = "middle";
    const charW = ctx.measureText("m").width;
    const box = (n, x, w) => {
      const y = n.depth * ROW;
      ctx.fillStyle = this.color(n);
      ctx.fillRect(x, y, Math.max(w - 0.5, 0.5), ROW - 1);
      this.rects.push({ n, x, y, w });
      const fit = Math.floor((w - 6) / charW);
      if (fit >= 3) {
        const label = n === this.root ? `all (${this.unitText(n.value)})` : n.name;
        ctx.fillStyle = this.matches(n) ? "#fff" : "#1d2230";
        ctx.fillText(label.length > fit ? label.slice(0, fit - 1) + "…" : label, x + 3, y + ROW / 2);
      }
    };
    // The zoomed frame's callers span the whole width.
    for (let n = z; n; n = n.parent) box(n, 0, width);
    const walk = (n) => {
      for (const c of n.kids) {
        const w = c.value * scale;
        if (w < 0.3) continue;
        box(c, (c.x - z.x) * scale, w);
        walk(c);
      }
    };
    walk(z);
  }

  unitText(v) {
    return this.unit === "bytes" ? `${fmtInt(v)} bytes` : `${fmtInt(v)} ${this.unit || ""}`;
  }

  at(e) {
    const r = this.canvas.getBoundingClientRect();
    const x = e.clientX - r.left, y = e.clientY - r.top;
    for (let i = this.rects.length - 1; i >= 0; i--) {
      const b = this.rects[i];
      if (x >= b.x && x < b.x + b.w && y >= b.y && y < b.y + ROW) return { node: b.n, x, y };
    }
    return null;
  }

  hover(e) {
    const hit = this.at(e);
    if (!hit) { this.tip.hidden = true; return; }
    const n = hit.node;
    placeTip(this.tip, this.box, hit.x, hit.y, `${n.name}\n${this.unitText(n.value)} (${fmtPct(n.value, this.root.value)})`);
  }

  click(e) {
    const hit = this.at(e);
    if (!hit) return;
    const n = hit.node;
    this.zoom = n === this.root || n === this.zoom ? (n === this.zoom && n.parent !== this.root ? n.parent : null) : n;
    this.draw();
    this.onPick(n);
  }

  resetZoom() {
    this.zoom = null;
    this.draw();
  }
}

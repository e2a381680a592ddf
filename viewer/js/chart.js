// The memory-over-time chart: the heap's highest point per time bucket, the top sites stacked
// under it, the peak marked; a drag selects a range of buckets.

const SERIES_COLORS = ["#2456c7", "#e07b00", "#12a150", "#c2185b", "#7c4dff", "#00838f", "#8d6e63", "#afb42b"];
const OTHER_COLOR = "#c9ced8";

class Chart {
  constructor(data, onRange) {
    this.data = data;
    this.t = data.timeline;
    this.onRange = onRange;
    this.canvas = $("chart");
    this.box = $("chart-box");
    this.tip = $("chart-tip");
    this.range = null;
    this.drag = null;
    this.margin = { left: 74, right: 12, top: 12, bottom: 24 };
    this.canvas.addEventListener("mousedown", (e) => this.down(e));
    window.addEventListener("mousemove", (e) => this.move(e));
    window.addEventListener("mouseup", (e) => this.up(e));
    this.canvas.addEventListener("mouseleave", () => { this.tip.hidden = true; });
    this.legend();
  }

  get buckets() { return this.t.heap.length; }

  legend() {
    const items = this.t.series.map((s, i) => {
      const site = this.data.sites[s.site];
      return el("span", {}, el("span", { class: "swatch", style: `background:${SERIES_COLORS[i % SERIES_COLORS.length]}` }),
        site.name, el("span", { class: "where" }, siteWhere(this.data, site.stack, site.name)));
    });
    items.push(el("span", {}, el("span", { class: "swatch", style: `background:${OTHER_COLOR}` }), "everything else"));
    $("legend").replaceChildren(...items);
  }

  // Bucket under a page x coordinate.
  bucketAt(clientX) {
    const r = this.canvas.getBoundingClientRect();
    const w = r.width - this.margin.left - this.margin.right;
    const x = clientX - r.left - this.margin.left;
    return Math.max(0, Math.min(this.buckets - 1, Math.floor((x / w) * this.buckets)));
  }

  down(e) {
    if (e.button !== 0) return;
    e.preventDefault();
    const b = this.bucketAt(e.clientX);
    this.drag = { x: e.clientX, from: b, to: b };
  }

  move(e) {
    const r = this.canvas.getBoundingClientRect();
    const inside = e.clientX >= r.left && e.clientX <= r.right && e.clientY >= r.top && e.clientY <= r.bottom;
    if (this.drag) {
      this.drag.to = this.bucketAt(e.clientX);
      this.draw();
    }
    if (inside) this.hover(e, r);
  }

  up(e) {
    if (!this.drag) return;
    const d = this.drag;
    this.drag = null;
    // A click (no real drag) goes back to the whole run.
    if (Math.abs(e.clientX - d.x) < 3) this.setRange(null);
    else this.setRange([Math.min(d.from, d.to), Math.max(d.from, d.to)]);
  }

  setRange(range) {
    if (range && range[0] === 0 && range[1] === this.buckets - 1) range = null;
    this.range = range;
    this.draw();
    this.onRange(range);
  }

  // Nanoseconds since the process started where bucket b begins.
  bucketStart(b) { return this.t.start_ns + b * this.t.bucket_ns; }

  hover(e, r) {
    const b = this.bucketAt(e.clientX);
    const lines = [`${fmtTime(this.bucketStart(b))} – ${fmtTime(this.bucketStart(b + 1))}`,
      `heap (highest): ${fmtBytes(this.t.heap[b])}`];
    this.t.series.forEach((s) => {
      if (s.live[b] > 0) lines.push(`${this.data.sites[s.site].name}: ${fmtBytes(s.live[b])}`);
    });
    placeTip(this.tip, this.box, e.clientX - r.left, e.clientY - r.top, lines.join("\n"));
  }

  draw() {
    const { ctx, width, height } = fitCanvas(this.canvas, 240);
    const m = this.margin;
    const w = width - m.left - m.right, h = height - m.top - m.bottom;
    const n = this.buckets;
    // Round ticks (0, 200, 400, 600, 800 KiB), the axis up to the first one above the heap.
    const ticks = yTicks(Math.max(1, ...this.t.heap));
    const max = ticks[ticks.length - 1].value;
    this.canvas.dataset.yTicks = JSON.stringify(ticks.map((t) => t.label));
    const y = (v) => m.top + h - (v / max) * h;
    const x = (b) => m.left + (b / n) * w;
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    // Grid and y axis.
    ctx.strokeStyle = "#eceef2";
    ctx.fillStyle = "#667085";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const { value: v, label } of ticks) {
      ctx.beginPath();
      ctx.moveTo(m.left, Math.round(y(v)) + 0.5);
      ctx.lineTo(m.left + w, Math.round(y(v)) + 0.5);
      ctx.stroke();
      ctx.fillText(label, m.left - 6, y(v));
    }
    // x axis: time since the process started.
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let i = 0; i <= 6; i++) {
      const b = (n * i) / 6;
      ctx.fillText(fmtTime(this.bucketStart(b)), Math.min(Math.max(x(b), m.left + 20), m.left + w - 20), m.top + h + 6);
    }
    // Stacked: each series, then everything else up to the heap's top.
    for (let b = 0; b < n; b++) {
      let base = 0;
      // Whole pixels, or neighbouring buckets leave hairline gaps between them.
      const x0 = Math.round(x(b)), bw = Math.max(1, Math.round(x(b + 1)) - x0);
      this.t.series.forEach((s, i) => {
        const v = s.live[b];
        if (v > 0) {
          ctx.fillStyle = SERIES_COLORS[i % SERIES_COLORS.length];
          ctx.fillRect(x0, y(base + v), bw, y(base) - y(base + v));
        }
        base += v;
      });
      const top = this.t.heap[b];
      if (top > base) {
        ctx.fillStyle = OTHER_COLOR;
        ctx.fillRect(x0, y(top), bw, y(base) - y(top));
      }
    }
    // The heap's outline.
    ctx.strokeStyle = "#1d2230";
    ctx.lineWidth = 1.2;
    ctx.beginPath();
    for (let b = 0; b < n; b++) {
      const yy = y(this.t.heap[b]);
      if (b === 0) ctx.moveTo(x(0), yy); else ctx.lineTo(x(b), yy);
      ctx.lineTo(x(b + 1), yy);
    }
    ctx.stroke();
    ctx.lineWidth = 1;
    // The peak.
    const r = this.data.report;
    const pb = Math.min(n - 1, Math.max(0, Math.floor((r.peak_time_ns - this.t.start_ns) / this.t.bucket_ns)));
    const px = x(pb + 0.5);
    ctx.strokeStyle = "#b42318";
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.moveTo(px, m.top);
    ctx.lineTo(px, m.top + h);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#b42318";
    ctx.textBaseline = "top";
    const label = `peak ${fmtBytes(r.peak_bytes)} at ${fmtTime(r.peak_time_ns)}`;
    ctx.textAlign = px > m.left + w * 0.7 ? "right" : "left";
    ctx.fillText(label, px + (ctx.textAlign === "right" ? -5 : 5), m.top + 2);
    // The selection (or the one being dragged).
    const sel = this.drag ? [Math.min(this.drag.from, this.drag.to), Math.max(this.drag.from, this.drag.to)] : this.range;
    if (sel) {
      ctx.fillStyle = "rgba(36, 86, 199, 0.15)";
      ctx.fillRect(x(sel[0]), m.top, x(sel[1] + 1) - x(sel[0]), h);
      ctx.strokeStyle = "rgba(36, 86, 199, 0.8)";
      ctx.strokeRect(x(sel[0]) + 0.5, m.top + 0.5, x(sel[1] + 1) - x(sel[0]) - 1, h - 1);
    }
  }
}

// Ticks for an axis of bytes up to `max`: a round step (1, 2 or 5 times a power of ten, in B,
// KiB, MiB or GiB: the largest unit the axis holds at least 2 of) that gives at most 5
// intervals, from 0 to the first tick at or above `max`. Each is {value, label}, the label with
// the decimals the step needs ("200 KiB", "2.5 MiB" never: steps are 1, 2, 5).
function yTicks(max) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let u = 0;
  while (u < units.length - 1 && max >= 2 * 1024 ** (u + 1)) u++;
  const unit = 1024 ** u, m = max / unit;
  // Whole bytes at least.
  const pow = u === 0 ? Math.max(1, 10 ** Math.floor(Math.log10(m / 5))) : 10 ** Math.floor(Math.log10(m / 5));
  const step = [1, 2, 5, 10].map((k) => k * pow).find((s) => m / s <= 5 || (u === 0 && s >= m)) * unit;
  const digits = Math.max(0, -Math.floor(Math.log10(step / unit) + 1e-9));
  const n = Math.max(1, Math.ceil(max / step - 1e-9));
  const ticks = [];
  for (let i = 0; i <= n; i++) {
    const v = i * step;
    ticks.push({ value: v, label: i === 0 ? "0 B" : `${(v / unit).toFixed(digits)} ${units[u]}` });
  }
  return ticks;
}

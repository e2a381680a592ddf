// Sortable, filterable tables whose rows open their stack.

class Table {
  // columns: [{key, title, num, fmt, cls, help}]; rows: objects with those keys, a `name` (what
  // the filter matches) and an `id` (which row stays picked when the rows are replaced). The
  // first order is by `sortKey`, largest first, unless it is `rank`: a row's place in the
  // order the CLI prints, which is not a column and goes smallest first.
  constructor(data, id, columns, sortKey, onPick) {
    this.data = data;
    this.table = $(id);
    this.filterBox = $(`${id}-filter`);
    this.columns = columns;
    this.sortKey = sortKey;
    this.asc = sortKey === "rank";
    this.onPick = onPick;
    this.rows = [];
    this.picked = null;
    this.filterBox.addEventListener("input", () => this.render());
  }

  setRows(rows) {
    this.rows = rows;
    this.render();
  }

  sortBy(key) {
    if (this.sortKey === key) this.asc = !this.asc;
    else { this.sortKey = key; this.asc = this.columns.find((c) => c.key === key).num ? false : true; }
    this.render();
  }

  render() {
    const needle = this.filterBox.value.trim().toLowerCase();
    const rows = this.rows.filter((r) => !needle || r.name.toLowerCase().includes(needle));
    const k = this.sortKey, dir = this.asc ? 1 : -1;
    rows.sort((a, b) => {
      const x = a[k], y = b[k];
      if (typeof x === "number" && typeof y === "number") return dir * (x - y) || (a.name < b.name ? -1 : 1);
      return dir * String(x).localeCompare(String(y));
    });
    const head = el("tr", {}, this.columns.map((c) =>
      el("th", {
        class: [c.num ? "num" : "", c.key === k ? "sorted" : "", c.key === k && this.asc ? "asc" : ""].join(" ").trim(),
        "data-key": c.key,
        title: c.help,
        onclick: () => this.sortBy(c.key),
      }, c.title)));
    const body = rows.map((r) => {
      const tr = el("tr", { class: r.id === this.picked ? "picked" : null, onclick: () => this.pick(r, tr) },
        this.columns.map((c) => {
          const v = r[c.key];
          const cls = [c.num ? "num" : "", c.cls ? c.cls(r) : ""].join(" ").trim();
          return el("td", { class: cls || null }, c.fmt ? c.fmt(v, r) : v);
        }));
      return tr;
    });
    if (body.length === 0) {
      body.push(el("tr", {}, el("td", { class: "empty", colspan: this.columns.length },
        this.rows.length === 0 ? "nothing here" : "no row matches the filter")));
    }
    this.table.replaceChildren(el("thead", {}, head), el("tbody", {}, body));
  }

  pick(row, tr) {
    this.picked = row.id;
    for (const t of this.table.querySelectorAll("tr.picked")) t.classList.remove("picked");
    tr.classList.add("picked");
    this.onPick(row);
  }
}

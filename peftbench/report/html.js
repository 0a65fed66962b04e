// The results page's behaviour: filters, a sortable table, the frontier and bar plots (Plotly), the published rows.
// Reads PAGE (the page's data, inlined by peftbench/report/html.py); no network.
"use strict";

const AXES = {
  trainable_params: "trainable parameters",
  peak_memory_gb: "peak memory (GB)",
  train_time_s: "training time (s)",
};
const state = { model: null, protocol: null, mode: null, axis: "trainable_params", sort: null, descending: true };

function unique(values) { return [...new Set(values)]; }
function esc(text) {  // names, labels and sources go into markup as text
  return String(text).replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function percent(value) { return value === null || value === undefined ? "–" : (100 * value).toFixed(1); }
// A cell's 95% interval, or nothing where it has none.
function interval(row) {
  return row.shown.low === undefined ? "" : `<span class="ci">[${row.shown.low}, ${row.shown.high}]</span> `;
}
function selected(row) {
  return row.model === state.model && row.protocol === state.protocol && row.mode === state.mode;
}

function fillFilter(id, values, key) {
  const select = document.getElementById(id);
  select.innerHTML = "";
  for (const value of values) {
    const option = document.createElement("option");
    option.value = option.textContent = value;
    select.appendChild(option);
  }
  state[key] = values[0];
  select.parentElement.hidden = values.length < 2;  // a filter only where the page holds several
  select.addEventListener("change", () => { state[key] = select.value; render(); });
}

function cells() { return PAGE.rows.filter(selected); }

function methodsAndBenchmarks(rows) {
  const benchmarks = unique(rows.map(r => r.benchmark).filter(b => b !== "avg"));
  return { methods: unique(rows.map(r => r.method)), benchmarks: [...benchmarks, "avg"] };
}

function cost(method) {
  return PAGE.costs.find(c => c.model === state.model && c.protocol === state.protocol && c.method === method) || {};
}

function renderTable() {
  const rows = cells();
  const { methods, benchmarks } = methodsAndBenchmarks(rows);
  const lookup = new Map(rows.map(r => [r.method + "\u0000" + r.benchmark, r]));
  const table = document.getElementById("accuracy");
  const head = ["method", ...benchmarks, ...Object.keys(AXES)];
  let order = methods.slice();
  if (state.sort !== null) {
    const value = m => {
      if (state.sort === "method") return m;
      if (state.sort in AXES) return cost(m)[state.sort] ?? -Infinity;
      return (lookup.get(m + "\u0000" + state.sort) || {}).accuracy ?? -Infinity;
    };
    order.sort((a, b) => (value(a) < value(b) ? -1 : value(a) > value(b) ? 1 : 0) * (state.descending ? -1 : 1));
  }
  let html = "<thead><tr>" + head.map(h =>
    `<th data-key="${esc(h)}" class="sortable">${esc(h in AXES ? AXES[h] : h)}${state.sort === h ? (state.descending ? " ▼" : " ▲") : ""}</th>`
  ).join("") + "</tr></thead><tbody>";
  for (const method of order) {
    html += `<tr data-method="${esc(method)}"><th>${esc(method)}</th>`;
    for (const benchmark of benchmarks) {
      const row = lookup.get(method + "\u0000" + benchmark);
      if (!row) { html += "<td>–</td>"; continue; }
      const marked = row.p_holm !== null && row.p_holm < 0.05 ? " significant" : "";
      const p = row.p_holm === null ? "" : `<span class="p">p<sub>Holm</sub> ${row.p_holm.toPrecision(2)}</span>`;
      const seeds = row.seeds.length > 1 ? `<span class="p">${row.seeds.length} seeds ± ${percent(row.std)}</span>` : "";
      html += `<td class="cell${marked}" data-benchmark="${esc(benchmark)}" data-accuracy="${row.accuracy}" ` +
        `title="n = ${row.n ?? "–"}">${row.shown.accuracy} ${interval(row)}` +
        `<span class="n">n ${row.n ?? "–"}</span>${p}${seeds}</td>`;
    }
    const c = cost(method);
    html += Object.keys(AXES).map(k => `<td>${c[k] === undefined || c[k] === null ? "–" : c[k].toLocaleString()}</td>`).join("");
    html += "</tr>";
  }
  table.innerHTML = html + "</tbody>";
  for (const th of table.querySelectorAll("th.sortable")) {
    th.addEventListener("click", () => {
      state.descending = state.sort === th.dataset.key ? !state.descending : th.dataset.key !== "method";
      state.sort = th.dataset.key;
      renderTable();
    });
  }
}

function frontier(points) {
  // Methods no other method beats on both measures: lower cost and higher accuracy.
  const sorted = points.slice().sort((a, b) => a.x - b.x || b.y - a.y);
  const front = [];
  for (const point of sorted) if (!front.length || point.y > front[front.length - 1].y) front.push(point);
  return front;
}

function renderFrontier() {
  const averages = cells().filter(r => r.benchmark === "avg");
  const points = averages.map(r => ({ method: r.method, x: cost(r.method)[state.axis], y: r.accuracy, row: r }))
    .filter(p => p.x !== undefined && p.x !== null);
  const front = frontier(points);
  const traces = [{
    type: "scatter", mode: "markers+text", name: "methods",
    x: points.map(p => p.x), y: points.map(p => 100 * p.y), text: points.map(p => p.method), textposition: "top center",
    error_y: { type: "data", symmetric: false, array: points.map(p => 100 * (p.row.high - p.y)),
               arrayminus: points.map(p => 100 * (p.y - p.row.low)) },
    customdata: points.map(p => p.method),
  }, {
    type: "scatter", mode: "lines", name: "frontier", line: { dash: "dot" },
    x: front.map(p => p.x), y: front.map(p => 100 * p.y), hoverinfo: "skip",
  }];
  const layout = {
    margin: { t: 20 }, height: 420, showlegend: false,
    xaxis: { title: { text: AXES[state.axis] }, type: state.axis === "trainable_params" ? "log" : "linear" },
    yaxis: { title: { text: "average accuracy (%)" } },
  };
  Plotly.react("frontier", traces, layout, { displaylogo: false });
  document.getElementById("frontier-note").textContent = points.length < averages.length
    ? `${averages.length - points.length} method(s) without a training run (zero-shot) are not on this plot.` : "";
}

function renderBars() {
  const rows = cells();
  const { methods, benchmarks } = methodsAndBenchmarks(rows);
  const traces = methods.map(method => {
    const mine = benchmarks.map(b => rows.find(r => r.method === method && r.benchmark === b));
    return {
      type: "bar", name: method, x: benchmarks, y: mine.map(r => r ? 100 * r.accuracy : null),
      error_y: { type: "data", symmetric: false, array: mine.map(r => r ? 100 * (r.high - r.accuracy) : 0),
                 arrayminus: mine.map(r => r ? 100 * (r.accuracy - r.low) : 0) },
    };
  });
  const seeds = rows.filter(r => r.seeds.length > 1);
  if (seeds.length) {
    traces.push({ type: "scatter", mode: "markers", name: "seeds", marker: { color: "black", size: 5 },
      x: seeds.flatMap(r => r.seeds.map(() => r.benchmark)), y: seeds.flatMap(r => r.seeds.map(s => 100 * s)),
      text: seeds.flatMap(r => r.seeds.map(() => r.method)) });
  }
  Plotly.react("bars", traces, { barmode: "group", margin: { t: 20 }, height: 420,
    yaxis: { title: { text: "accuracy (%)" } } }, { displaylogo: false });
}

function renderPublished() {
  const rows = PAGE.published.filter(selected);
  const section = document.getElementById("published-section");
  section.hidden = rows.length === 0;
  let html = "<thead><tr><th>method</th><th>published row</th><th>benchmark</th><th>published</th><th>ours [95%]</th>" +
    "<th>ours − published</th><th>published inside our interval</th></tr></thead><tbody>";
  for (const r of rows) {
    html += `<tr class="published-row"><td>${esc(r.method)}</td><td title="${esc(r.source)}">${esc(r.label)}</td>` +
      `<td>${esc(r.benchmark)}</td>` +
      `<td>${r.published.toFixed(2)}</td><td>${r.shown.ours} ${interval(r)}</td>` +
      `<td>${(100 * r.ours - r.published).toFixed(1)}</td><td>${r.inside ? "yes" : "no"}</td></tr>`;
  }
  document.getElementById("published").innerHTML = html + "</tbody>";
}

function render() { renderTable(); renderFrontier(); renderBars(); renderPublished(); }

document.addEventListener("DOMContentLoaded", () => {
  fillFilter("model", unique(PAGE.rows.map(r => r.model)), "model");
  fillFilter("protocol", unique(PAGE.rows.map(r => r.protocol)), "protocol");
  fillFilter("mode", unique(PAGE.rows.map(r => r.mode)), "mode");
  const axis = document.getElementById("axis");
  for (const [key, label] of Object.entries(AXES)) axis.add(new Option(label, key));
  axis.addEventListener("change", () => { state.axis = axis.value; renderFrontier(); });
  render();
});

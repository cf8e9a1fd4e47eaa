// Metric charts on uPlot: one chart per metric, one line per run, hover values in the legend,
// drag to zoom (double-click resets), EMA smoothing, log scale, and min/max downsampling so a
// 100k-step history draws a few thousand points without losing spikes.
import uPlot from "/vendor/uplot/uPlot.esm.js";
import { fmtNumber, h } from "./dom.js";

// Axis labels short enough to fit: 2e-5, 0.0035, 12.5, 1.2e+6.
function tick(v) {
  if (v === 0 || v === null) return v === 0 ? "0" : "";
  const a = Math.abs(v);
  return a < 1e-3 || a >= 1e5 ? v.toExponential(1).replace(".0e", "e") : String(Number(v.toPrecision(4)));
}
// A tick's label, with more digits when the short labels would repeat (a range much narrower than its values).
export function tickLabels(ticks) {
  const labels = ticks.map(tick);
  if (ticks.length < 2 || new Set(labels).size === labels.length) return labels;
  const spacing = Math.abs(ticks[1] - ticks[0]);
  const decimals = Math.min(12, Math.max(0, 1 - Math.floor(Math.log10(spacing))));
  return ticks.map((v) => (v === null ? "" : String(Number(v.toFixed(decimals)))));
}
// Room for the longest label (about 7 px a character at the axis font), so long ones are not cut.
function axisWidth(u, values) {
  const longest = Math.max(0, ...(values || []).map((v) => String(v).length));
  return Math.max(48, 7 * longest + 20);
}
const STEP_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 25000, 50000, 100000, 200000, 500000, 1e6];
export const COLORS = ["#2f6fde", "#e8710a", "#1e8e3e", "#a142f4", "#d93025", "#12a4af", "#f9ab00", "#5f6368"];

// Exponential moving average with TensorBoard's debiasing, so the first points are not pulled to 0.
export function smooth(ys, weight) {
  if (!weight) return ys;
  let last = 0, n = 0;
  return ys.map((y) => {
    if (y === null || !Number.isFinite(y)) return y;
    last = last * weight + (1 - weight) * y;
    n += 1;
    return last / (1 - weight ** n);
  });
}

// Keep each bucket's min and max (in x order): the shape and every spike survive.
export function downsample(xs, ys, maxPoints) {
  if (xs.length <= maxPoints) return [xs, ys];
  const buckets = Math.max(1, Math.floor(maxPoints / 2));
  const size = xs.length / buckets;
  const ox = [], oy = [];
  for (let b = 0; b < buckets; b++) {
    const lo = Math.floor(b * size), hi = Math.min(xs.length, Math.floor((b + 1) * size));
    let iMin = -1, iMax = -1;
    for (let i = lo; i < hi; i++) {
      const y = ys[i];
      if (y === null || !Number.isFinite(y)) continue;
      if (iMin < 0 || y < ys[iMin]) iMin = i;
      if (iMax < 0 || y > ys[iMax]) iMax = i;
    }
    if (iMin < 0) continue;
    for (const i of iMin === iMax ? [iMin] : [Math.min(iMin, iMax), Math.max(iMin, iMax)]) { ox.push(xs[i]); oy.push(ys[i]); }
  }
  return [ox, oy];
}

// runs: [{label, points: [{step, value}]}] -> uPlot's aligned data [xs, ys1, ys2, ...]
export function alignedData(runs, { smoothing = 0, log = false, maxPoints = 2000 } = {}) {
  const perRun = runs.map(({ points }) => {
    const xs = points.map((p, i) => p.step ?? i);
    let ys = smooth(points.map((p) => p.value), smoothing);
    if (log) ys = ys.map((y) => (y > 0 ? y : null));
    return downsample(xs, ys, maxPoints);
  });
  if (perRun.length === 1) return [perRun[0][0], perRun[0][1]];
  const steps = [...new Set(perRun.flatMap(([xs]) => xs))].sort((a, b) => a - b);
  const index = new Map(steps.map((s, i) => [s, i]));
  return [steps, ...perRun.map(([xs, ys]) => {
    const out = new Array(steps.length).fill(null);
    xs.forEach((x, i) => { out[index.get(x)] = ys[i]; });
    return out;
  })];
}

// The y range of a chart. A flat series (every value equal) is centred in a band of 10% of its value
// around it (±1 around 0), where uPlot would draw it on 0-100 (at 0) or 0-2x (elsewhere); otherwise
// uPlot's own padded range.
export function yRange(min, max, log = false) {
  if (min === null || max === null || !Number.isFinite(min) || !Number.isFinite(max)) return log ? [0.1, 10] : [0, 1];
  if (min === max) {
    if (log) return [min / 2, min * 2];
    const pad = Math.abs(min) * 0.1 || 1;
    return [min - pad, min + pad];
  }
  return log ? uPlot.rangeLog(min, max, 10, true) : uPlot.rangeNum(min, max, 0.1, true);
}

export class MetricChart {
  constructor(container, key) {
    this.key = key;
    this.box = h("figure", { class: "chart", dataset: { metric: key } }, h("figcaption", { text: key }));
    this.plotBox = h("div", { class: "plot" });
    this.box.append(this.plotBox);
    container.append(this.box);
    this.plot = null;
    this.signature = "";
    this.resize = new ResizeObserver(() => this.plot && this.plot.setSize(this.size()));
    this.resize.observe(this.plotBox);
  }

  size() { return { width: Math.max(240, this.plotBox.clientWidth), height: 200 }; }

  update(runs, { smoothing = 0, log = false } = {}) {
    const maxPoints = Math.max(400, this.plotBox.clientWidth * 2);
    const data = alignedData(runs, { smoothing, log, maxPoints });
    const signature = JSON.stringify([runs.map((r) => r.label), log]);
    if (this.plot && signature === this.signature) { this.plot.setData(data); return; }
    this.signature = signature;
    if (this.plot) this.plot.destroy();
    this.plot = new uPlot({
      ...this.size(),
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: false }, y: { distr: log ? 3 : 1, range: (u, min, max) => yRange(min, max, log) } },
      axes: [{ label: "step", incrs: STEP_INCRS }, { values: (u, ticks) => tickLabels(ticks), size: axisWidth }],
      legend: { live: true },
      // the drawn y range, readable by tests and tools: data-y-range="min,max"
      hooks: { setScale: [(u, key) => { if (key === "y") this.box.dataset.yRange = `${u.scales.y.min},${u.scales.y.max}`; }] },
      series: [
        { label: "step" },
        ...runs.map((r, i) => ({ label: r.label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
          value: (u, v) => (v === null || v === undefined ? "–" : fmtNumber(v)) })),
      ],
    }, data, this.plotBox);
  }

  destroy() { this.resize.disconnect(); if (this.plot) this.plot.destroy(); this.box.remove(); }
}

// The toolbar shared by a page's charts: which metrics, smoothing, log scale.
export function chartControls(onChange) {
  const state = { smoothing: 0, log: false };
  const slider = h("input", { type: "range", min: "0", max: "0.99", step: "0.01", value: "0", id: "smoothing",
    "aria-label": "smoothing" });
  const shown = h("output", { for: "smoothing", text: "0" });
  slider.addEventListener("input", () => { state.smoothing = Number(slider.value); shown.textContent = slider.value; onChange(); });
  const log = h("input", { type: "checkbox", id: "log-scale" });
  log.addEventListener("change", () => { state.log = log.checked; onChange(); });
  const bar = h("div", { class: "toolbar" },
    h("label", { for: "smoothing" }, "Smoothing "), slider, shown,
    h("label", {}, log, " log scale"),
    h("span", { class: "muted", text: "drag to zoom, double-click to reset" }));
  return { bar, state };
}

// Default metrics to show first: the ones people look at, then the rest in order.
const FIRST = ["train/loss", "rollout/reward_mean", "policy/kl", "rollout/completion_length_mean", "eval/loss"];
export function defaultMetrics(keys, count = 4) {
  const ordered = [...FIRST.filter((k) => keys.includes(k)), ...keys.filter((k) => !FIRST.includes(k))];
  return ordered.slice(0, count);
}

// Toolbar + metric picker + one chart per picked metric. `update({metric: [{label, points}]})`.
export class ChartPanel {
  constructor(container) {
    this.data = {};
    this.keys = [];
    this.selected = null;
    this.charts = new Map();
    const { bar, state } = chartControls(() => this.redraw());
    this.controls = state;
    this.picker = h("fieldset", { class: "metric-picker" });
    this.grid = h("div", { class: "charts" });
    this.empty = h("p", { class: "muted", text: "No metrics yet." });
    container.append(h("details", { class: "picker", open: false }, h("summary", { text: "Metrics shown" }), this.picker),
      bar, this.empty, this.grid);
  }

  update(byMetric) {
    this.data = byMetric;
    const keys = Object.keys(byMetric).sort();
    if (keys.join("\n") !== this.keys.join("\n")) {
      this.keys = keys;
      if (this.selected === null && keys.length) this.selected = new Set(defaultMetrics(keys));
      this.renderPicker();
    }
    this.redraw();
  }

  renderPicker() {
    const selected = this.selected || new Set();
    this.picker.replaceChildren(h("legend", { text: "Metrics" }), ...this.keys.map((key) => {
      const box = h("input", { type: "checkbox", value: key, checked: selected.has(key) });
      box.addEventListener("change", () => {
        if (box.checked) selected.add(key); else selected.delete(key);
        this.selected = selected;
        this.redraw();
      });
      return h("label", { class: "check" }, box, ` ${key}`);
    }));
  }

  redraw() {
    const selected = [...(this.selected || [])].filter((k) => this.data[k]);
    this.empty.hidden = this.keys.length > 0;
    for (const [key, chart] of this.charts) if (!selected.includes(key)) { chart.destroy(); this.charts.delete(key); }
    for (const key of defaultMetrics(this.keys, this.keys.length).filter((k) => selected.includes(k))) {
      if (!this.charts.has(key)) this.charts.set(key, new MetricChart(this.grid, key));
      this.charts.get(key).update(this.data[key], this.controls);
    }
  }

  destroy() { for (const chart of this.charts.values()) chart.destroy(); this.charts.clear(); }
}

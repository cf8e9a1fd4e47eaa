// papertrain dashboard: token once (localStorage), a job list that refreshes itself, and for the selected
// job its events (cursor-paged with ?after=) and one metric as an inline SVG line. No framework.
"use strict";

const TOKEN_KEY = "papertrain.token";
const REFRESH_MS = 3000;
// The built-in dataset whose rows fit each algorithm family (for the example spec in the form).
const DATASET_FOR = { sft: "chat", dpo: "preferences", cpo: "preferences", reward: "preferences",
  kto: "unpaired", bco: "unpaired" };
function exampleSpec(algorithm, withAlgorithm) {
  const spec = withAlgorithm ? { algorithm } : {};
  return { ...spec, model: "tiny:llama", dataset: { builtin: DATASET_FOR[algorithm] || "arithmetic", num_rows: 64 },
    config: { max_steps: 10 } };
}
const state = { presets: {}, jobId: null, after: 0, metricKey: null, timer: null, busy: false, again: false };
const $ = (id) => document.getElementById(id);

function token() { return localStorage.getItem(TOKEN_KEY); }

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${token()}`, ...(options.headers || {}) };
  if (options.body && typeof options.body !== "string") {
    headers["Content-Type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.body) };
  }
  const res = await fetch(path, { ...options, headers });
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (res.status === 401) { showLogin("That token was not accepted: " + (body?.error?.message || "")); }
  if (!res.ok) {
    const e = body?.error || {};
    throw new Error(`${e.code || res.status}: ${e.message || res.statusText}` + (e.param ? ` [${e.param}]` : ""));
  }
  return body;
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function showLogin(message) {
  $("app").hidden = true; $("forget").hidden = true; $("login").hidden = false;
  if (message) $("login-form").querySelector(".hint").textContent = message;
  clearInterval(state.timer);
}

function showApp() {
  $("login").hidden = true; $("app").hidden = false; $("forget").hidden = false;
  refresh();
  loadPresets();
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
}

// One refresh at a time (the event cursor must not be read twice); a request made meanwhile runs after it.
async function refresh() {
  if (state.busy) { state.again = true; return; }
  state.busy = true;
  try {
    do {
      state.again = false;
      await loadJobs();
      if (state.jobId) await loadJob();
    } while (state.again);
  } finally { state.busy = false; }
}

function progress(job) {
  if (job.total_steps) return `${job.last_step ?? 0} / ${job.total_steps}`;
  return job.last_step != null ? `step ${job.last_step}` : "";
}

async function loadJobs() {
  try {
    const status = $("status-filter").value;
    const page = await api(`/v1/jobs?limit=100${status ? `&status=${status}` : ""}`);
    const tbody = $("jobs").querySelector("tbody");
    tbody.replaceChildren(...page.jobs.map((job) => {
      const row = el("tr");
      row.dataset.id = job.id;
      if (job.id === state.jobId) row.classList.add("selected");
      row.append(el("td", job.name ? `${job.name} (${job.id})` : job.id), el("td", job.algorithm),
        el("td", job.status, `status status-${job.status}`), el("td", progress(job)),
        el("td", new Date(job.created_at).toLocaleString()));
      row.onclick = () => selectJob(job.id);
      return row;
    }));
    $("jobs-error").textContent = "";
  } catch (err) { $("jobs-error").textContent = err.message; }
}

function selectJob(id) {
  state.jobId = id; state.after = 0; state.metricKey = null;
  $("events").replaceChildren();
  $("job-pane").hidden = false;
  refresh();
}

async function loadJob() {
  const id = state.jobId;
  try {
    const job = await api(`/v1/jobs/${id}`);
    $("job-title").textContent = job.name ? `${job.name} (${job.id})` : job.id;
    $("job-status").textContent = job.status;
    $("job-status").className = `status status-${job.status}`;
    $("cancel").hidden = !["queued", "running", "validating"].includes(job.status);
    $("retry").hidden = !["failed", "cancelled"].includes(job.status);
    $("job-error").textContent = job.error ? `${job.error.code || "error"}: ${job.error.message || ""}` : "";
    await loadEvents(id);
    await loadMetrics(id);
  } catch (err) { $("job-error").textContent = err.message; }
}

function describe(ev) {
  const d = ev.data || {};
  switch (ev.kind) {
    case "status": return `${d.from ?? "new"} -> ${d.to}${d.reason ? ` (${d.reason})` : ""}`;
    case "log": return `[${d.level || "info"}] ${d.message || ""}`;
    case "progress": return `step ${ev.step}/${d.total_steps ?? "?"}`;
    case "metrics": return Object.entries(d.metrics || {}).map(([k, v]) => `${k}=${Number(v).toPrecision(4)}`).join("  ");
    case "checkpoint": return `checkpoint ${d.path}`;
    case "samples": return (d.samples || []).map((x) =>
      `\n  ${JSON.stringify(x.prompt)} -> ${JSON.stringify(x.completion)}${x.reward != null ? `  [reward ${x.reward}]` : ""}`).join("");
    case "error": return d.message || JSON.stringify(d);
    default: return JSON.stringify(d);
  }
}

async function loadEvents(id) {
  let more = true;
  while (more && id === state.jobId) {
    const page = await api(`/v1/jobs/${id}/events?after=${state.after}&limit=500`);
    if (id !== state.jobId) return;
    const list = $("events");
    for (const ev of page.events) {
      const item = el("li");
      item.append(el("span", ev.kind, "kind"), el("span", `${ev.step != null ? `@${ev.step} ` : ""}${describe(ev)}`));
      list.append(item);
    }
    if (page.events.length) list.scrollTop = list.scrollHeight;
    state.after = page.next_cursor;
    more = page.has_more;
  }
}

async function loadMetrics(id) {
  const { metrics } = await api(`/v1/jobs/${id}/metrics`);
  const keys = Object.keys(metrics).sort();
  const select = $("metric-key");
  if (select.options.length !== keys.length || [...select.options].some((o, i) => o.value !== keys[i])) {
    select.replaceChildren(...keys.map((k) => { const o = el("option", k); o.value = k; return o; }));
  }
  if (!state.metricKey || !keys.includes(state.metricKey)) {
    state.metricKey = keys.includes("train/loss") ? "train/loss" : keys[0] || null;
  }
  select.value = state.metricKey || "";
  drawChart(state.metricKey ? metrics[state.metricKey] : []);
}

function drawChart(points) {
  const svg = $("chart");
  const ns = "http://www.w3.org/2000/svg";
  const W = 600, H = 220, pad = 36;
  svg.replaceChildren();
  const text = (x, y, s, anchor = "start") => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("text-anchor", anchor); t.textContent = s;
    svg.append(t);
  };
  if (!points || !points.length) { text(W / 2, H / 2, "no metrics yet", "middle"); return; }
  const xs = points.map((p, i) => p.step ?? i), ys = points.map((p) => p.value);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad + ((x - x0) / ((x1 - x0) || 1)) * (W - 2 * pad);
  const sy = (y) => H - pad + -((y - y0) / ((y1 - y0) || 1)) * (H - 2 * pad);
  const axis = document.createElementNS(ns, "path");
  axis.setAttribute("d", `M${pad},${pad / 2}V${H - pad}H${W - pad / 2}`);
  axis.setAttribute("class", "axis");
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", xs.map((x, i) => `${sx(x).toFixed(1)},${sy(ys[i]).toFixed(1)}`).join(" "));
  line.setAttribute("class", "line");
  svg.append(axis, line);
  if (points.length === 1) {
    const dot = document.createElementNS(ns, "circle");
    dot.setAttribute("cx", sx(x0)); dot.setAttribute("cy", sy(y0)); dot.setAttribute("r", 3);
    dot.setAttribute("class", "dot");
    svg.append(dot);
  }
  text(4, sy(y1) + 4, y1.toPrecision(4));
  if (y1 !== y0) text(4, sy(y0), y0.toPrecision(4));
  text(sx(x0), H - pad + 14, `step ${x0}`);
  if (x1 !== x0) text(sx(x1), H - pad + 14, `step ${x1}`, "end");
}

async function loadPresets() {
  try {
    const { presets } = await api("/v1/presets");
    state.presets = Object.fromEntries(presets.map((p) => [p.id, p]));
    const select = $("preset");
    select.replaceChildren(select.options[0], ...presets.filter((p) => p.runnable).map((p) => {
      const o = el("option", `${p.id} - ${p.title} (${p.algorithm})`); o.value = p.id; return o;
    }));
  } catch (err) { $("submit-error").textContent = err.message; }
}

async function submitJob(event) {
  event.preventDefault();
  $("submit-error").textContent = "";
  try {
    const spec = JSON.parse($("spec").value);
    if ($("preset").value) { spec.preset = $("preset").value; delete spec.algorithm; }
    const job = await api("/v1/jobs", { method: "POST", body: spec });
    $("new-job").hidden = true;
    selectJob(job.id);
  } catch (err) { $("submit-error").textContent = err.message; }
}

async function act(action) {
  try { await api(`/v1/jobs/${state.jobId}/${action}`, { method: "POST" }); refresh(); }
  catch (err) { $("job-error").textContent = err.message; }
}

$("login-form").onsubmit = (e) => {
  e.preventDefault();
  localStorage.setItem(TOKEN_KEY, $("token").value.trim());
  showApp();
};
$("forget").onclick = () => { localStorage.removeItem(TOKEN_KEY); showLogin(); };
$("status-filter").onchange = loadJobs;
$("new-job-toggle").onclick = () => { $("new-job").hidden = !$("new-job").hidden; };
$("new-job").onsubmit = submitJob;
$("metric-key").onchange = () => { state.metricKey = $("metric-key").value; refresh(); };
$("cancel").onclick = () => act("cancel");
$("retry").onclick = () => act("retry");
$("preset").onchange = () => {
  const preset = state.presets[$("preset").value];
  $("spec").value = JSON.stringify(exampleSpec(preset ? preset.algorithm : "sft", !preset), null, 2);
};
$("spec").value = JSON.stringify(exampleSpec("sft", true), null, 2);

if (token()) showApp(); else showLogin();

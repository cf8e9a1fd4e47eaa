// Small DOM helpers: build elements without innerHTML (text is always text), format values and times.
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

export function fmtNumber(v) {
  if (v === null || v === undefined) return "";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3).replace(/\.?0+e/, "e") : String(Number(v.toPrecision(5)));
}

export function fmtValue(v) {
  if (v === null || v === undefined) return "null";
  if (typeof v === "object") return JSON.stringify(v);
  return typeof v === "number" ? fmtNumber(v) : String(v);
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  const s = Math.max(0, Math.round(seconds));
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  if (hh) return `${hh}h ${String(mm).padStart(2, "0")}m`;
  if (mm) return `${mm}m ${String(ss).padStart(2, "0")}s`;
  return `${ss}s`;
}

export function fmtTime(iso) { return iso ? new Date(iso).toLocaleString() : ""; }

// The server writes UTC timestamps without a zone suffix; read them as UTC.
export function parseTime(iso) {
  if (!iso) return null;
  return new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`);
}

export function jobDuration(job, now = Date.now()) {
  const start = parseTime(job.started_at);
  if (!start) return null;
  const end = parseTime(job.finished_at);
  return ((end ? end.getTime() : now) - start.getTime()) / 1000;
}

export const ACTIVE = new Set(["queued", "validating", "running", "cancelling"]);

export function statusBadge(status) { return h("span", { class: `badge status-${status}`, text: status }); }

export function jobLabel(job) { return job.name ? `${job.name}` : job.id; }

// {a: {b: 1}} -> {"a.b": 1}; arrays stay whole values.
export function flatten(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
    else out[key] = v;
  }
  return out;
}

export function errorBox(err) {
  const message = err && err.text ? err.text : String(err && err.message ? err.message : err);
  return h("p", { class: "error", role: "alert", text: message });
}

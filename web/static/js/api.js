// The API client: the token (localStorage), JSON requests, and typed errors that keep the server's
// `param` (the field path the form points at) and `details` (every problem found).
const TOKEN_KEY = "papertrain.token";

export const auth = {
  get token() { return localStorage.getItem(TOKEN_KEY); },
  set(token) { localStorage.setItem(TOKEN_KEY, token); },
  clear() { localStorage.removeItem(TOKEN_KEY); },
};

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || String(status);
    this.param = e.param || null;
    this.remediation = e.remediation || null;
    this.details = e.details || (e.param ? [{ param: e.param, message: e.message }] : []);
  }
  get text() { return `${this.code}: ${this.message}${this.remediation ? ` (${this.remediation})` : ""}`; }
}

const listeners = { unauthorized: [] };
export function onUnauthorized(fn) { listeners.unauthorized.push(fn); }

export async function api(path, { method = "GET", body, form, signal } = {}) {
  const headers = { Authorization: `Bearer ${auth.token}` };
  let payload;
  if (form) payload = form;
  else if (body !== undefined) { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
  const res = await fetch(path, { method, headers, body: payload, signal });
  const json = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (!res.ok) {
    const err = new ApiError(res.status, json);
    if (res.status === 401) listeners.unauthorized.forEach((fn) => fn(err));
    throw err;
  }
  return json;
}

// Answers that do not change while the page lives (presets, algorithms, schemas); emptied at logout.
const cache = new Map();
export function cached(path) {
  if (!cache.has(path)) cache.set(path, api(path).catch((err) => { cache.delete(path); throw err; }));
  return cache.get(path);
}
export function clearCache() { cache.clear(); }

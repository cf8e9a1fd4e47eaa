// The dashboard shell: sign in/out, who is signed in, and a hash router that renders one view at a time.
// Every view gets a fresh container and returns a cleanup (timers, observers); signing out runs it and
// empties the page and every cache, so nothing of the previous user stays on screen.
import { api, auth, clearCache, onUnauthorized } from "./api.js";
import { $, $$ } from "./dom.js";

const VIEWS = {
  runs: () => import("./views/runs.js"),
  run: () => import("./views/run.js"),
  presets: () => import("./views/presets.js"),
  launch: () => import("./views/launch.js"),
  compare: () => import("./views/compare.js"),
};

let cleanup = null;
let renderSeq = 0;

function parseHash() {
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/").filter(Boolean);
  const params = Object.fromEntries(new URLSearchParams(query));
  if (parts[0] === "runs" && parts[1]) return { name: "run", params: { ...params, id: decodeURIComponent(parts[1]) } };
  return { name: VIEWS[parts[0]] ? parts[0] : "runs", params };
}

function teardown() {
  if (cleanup) { try { cleanup(); } catch (err) { console.warn(err); } }
  cleanup = null;
}

async function route() {
  if (!auth.token) return showLogin();
  const seq = ++renderSeq;
  const { name, params } = parseHash();
  teardown();
  const view = $("#view");
  view.replaceChildren();
  $$("#nav a[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === (name === "run" ? "runs" : name)));
  const module = await VIEWS[name]();
  if (seq !== renderSeq) return;
  const root = document.createElement("div");
  root.className = `view view-${name}`;
  view.append(root);
  cleanup = (await module.render(root, params)) || null;
  if (seq !== renderSeq) teardown();
}

function showLogin(message = "") {
  renderSeq++;
  teardown();
  clearCache();
  $("#view").replaceChildren();
  $("#whoami").textContent = "";
  $("#nav").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  $("#token").value = "";
  $("#token").focus();
}

async function showApp() {
  const me = await api("/v1/me");
  $("#login").hidden = true;
  $("#login-error").textContent = "";
  $("#nav").hidden = false;
  $("#logout").hidden = false;
  $("#whoami").textContent = `signed in as ${me.name}`;
  await route();
}

onUnauthorized((err) => { auth.clear(); showLogin(`That token was not accepted: ${err.message}`); });

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("#login-error").textContent = "";
  auth.set($("#token").value.trim());
  try { await showApp(); } catch (err) { if (err.status !== 401) $("#login-error").textContent = err.message; }
});

$("#logout").addEventListener("click", () => { auth.clear(); history.replaceState(null, "", "#/runs"); showLogin(); });
window.addEventListener("hashchange", () => { if (auth.token) route(); });

if (auth.token) showApp().catch((err) => { if (err.status !== 401) showLogin(err.message); });
else showLogin();

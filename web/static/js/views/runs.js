// Runs list: filters (status, algorithm, preset, text), sortable columns, pages, live status and
// duration; tick runs to compare them.
import { api, cached } from "../api.js";
import { ACTIVE, errorBox, fmtDuration, fmtTime, h, jobDuration, statusBadge } from "../dom.js";

const STATUSES = ["queued", "validating", "running", "cancelling", "succeeded", "failed", "cancelled"];
const COLUMNS = [
  ["name", "Run"], ["status", "Status"], ["algorithm", "Algorithm"], ["preset", "Preset"],
  ["last_step", "Progress"], [null, "Duration"], ["created_at", "Created"],
];
const PAGE = 25;
const REFRESH_MS = 3000;

function progress(job) {
  const step = job.last_step ?? 0;
  if (!job.total_steps) return h("span", { text: job.last_step != null ? `step ${step}` : "" });
  return h("span", { class: "progress" },
    h("progress", { max: String(job.total_steps), value: String(step), "aria-label": "progress" }),
    ` ${step}/${job.total_steps}`);
}

export async function render(root, params) {
  const state = { status: params.status || "", algorithm: params.algorithm || "", preset: params.preset || "",
    q: params.q || "", sort: params.sort || "-created_at", offset: 0, picked: new Set() };
  const select = (id, label, options) => h("label", {}, `${label} `,
    h("select", { id, "aria-label": label }, h("option", { value: "", text: "all" }),
      ...options.map(([v, t]) => h("option", { value: v, text: t }))));
  const [{ algorithms }, { presets }] = await Promise.all([cached("/v1/algorithms"), cached("/v1/presets")]);
  const filters = h("form", { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() },
    select("f-status", "Status", STATUSES.map((s) => [s, s])),
    select("f-algorithm", "Algorithm", algorithms.map((a) => [a.id, a.id])),
    select("f-preset", "Preset", presets.map((p) => [p.id, p.id])),
    h("label", {}, "Search ", h("input", { id: "f-q", type: "search", placeholder: "name or id", value: state.q })));
  const compareBtn = h("button", { type: "button", id: "compare-picked", disabled: true, text: "Compare selected" });
  const head = h("div", { class: "bar" }, h("h1", { text: "Runs" }),
    h("a", { class: "button", href: "#/presets", text: "Launch from a preset" }), compareBtn);
  const tbody = h("tbody");
  const headRow = h("tr", {}, h("th", { scope: "col" }, h("span", { class: "sr-only", text: "select" })));
  const table = h("table", { class: "runs", id: "runs-table" }, h("thead", {}, headRow), tbody);
  const pager = h("div", { class: "pager" });
  const errors = h("div");
  root.append(head, filters, errors, h("div", { class: "table-wrap" }, table), pager);

  for (const [id, key] of [["f-status", "status"], ["f-algorithm", "algorithm"], ["f-preset", "preset"]]) {
    const input = root.querySelector(`#${id}`);
    input.value = state[key];
    input.addEventListener("change", () => { state[key] = input.value; state.offset = 0; load(); });
  }
  let debounce;
  root.querySelector("#f-q").addEventListener("input", (e) => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { state.q = e.target.value; state.offset = 0; load(); }, 250);
  });
  compareBtn.addEventListener("click", () => { location.hash = `#/compare?ids=${[...state.picked].join(",")}`; });

  function renderHead() {
    headRow.replaceChildren(headRow.firstChild, ...COLUMNS.map(([key, label]) => {
      if (!key) return h("th", { scope: "col", text: label });
      const active = state.sort.replace(/^-/, "") === key;
      const desc = state.sort.startsWith("-");
      const button = h("button", { type: "button", class: "sort", text: `${label}${active ? (desc ? " ▼" : " ▲") : ""}`,
        onclick: () => { state.sort = active && !desc ? `-${key}` : key; state.offset = 0; load(); } });
      return h("th", { scope: "col", "aria-sort": active ? (desc ? "descending" : "ascending") : "none" }, button);
    }));
  }

  function row(job) {
    const box = h("input", { type: "checkbox", "aria-label": `select ${job.id}`, checked: state.picked.has(job.id) });
    box.addEventListener("change", () => {
      if (box.checked) state.picked.add(job.id); else state.picked.delete(job.id);
      compareBtn.disabled = state.picked.size < 2;
    });
    return h("tr", { dataset: { id: job.id, status: job.status } },
      h("td", {}, box),
      h("td", {}, h("a", { href: `#/runs/${job.id}`, text: job.name || job.id }),
        job.name ? h("div", { class: "muted small", text: job.id }) : null),
      h("td", {}, statusBadge(job.status)),
      h("td", { text: job.algorithm }),
      h("td", { text: job.preset_id || "" }),
      h("td", {}, progress(job)),
      h("td", { text: fmtDuration(jobDuration(job)) }),
      h("td", { text: fmtTime(job.created_at) }));
  }

  let timer = null;
  let seq = 0;
  async function load() {
    const mine = ++seq;
    clearTimeout(timer);
    const query = new URLSearchParams({ limit: String(PAGE), offset: String(state.offset), sort: state.sort });
    for (const key of ["status", "algorithm", "preset", "q"]) if (state[key]) query.set(key, state[key]);
    try {
      const page = await api(`/v1/jobs?${query}`);
      if (mine !== seq) return;
      errors.replaceChildren();
      renderHead();
      tbody.replaceChildren(...page.jobs.map(row));
      const filtered = ["status", "algorithm", "preset", "q"].some((key) => state[key]);
      if (!page.jobs.length) {
        tbody.append(h("tr", {}, h("td", { colspan: "8", class: "muted empty" }, filtered ? "No runs match these filters."
          : h("span", {}, "No runs yet: launch one from a ", h("a", { href: "#/presets", text: "paper preset" }),
            " or the ", h("a", { href: "#/launch", text: "form" }), ", or POST /v1/jobs."))));
      }
      const first = page.total ? state.offset + 1 : 0;
      pager.replaceChildren(
        h("button", { type: "button", text: "Previous", disabled: state.offset === 0,
          onclick: () => { state.offset = Math.max(0, state.offset - PAGE); load(); } }),
        h("span", { class: "muted", text: page.total ? `${first}–${state.offset + page.jobs.length} of ${page.total}` : "0 runs" }),
        h("button", { type: "button", text: "Next", disabled: state.offset + page.jobs.length >= page.total,
          onclick: () => { state.offset += PAGE; load(); } }));
      // Refresh while anything shown can still change.
      if (page.jobs.some((j) => ACTIVE.has(j.status)) || !page.jobs.length) timer = setTimeout(load, REFRESH_MS);
    } catch (err) {
      if (mine !== seq) return;
      errors.replaceChildren(errorBox(err));
      timer = setTimeout(load, REFRESH_MS * 2);
    }
  }
  renderHead();
  await load();
  return () => { seq++; clearTimeout(timer); clearTimeout(debounce); };
}

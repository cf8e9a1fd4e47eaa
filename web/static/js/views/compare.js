// Compare runs: pick two or more, overlay their curves (one line per run on each metric) and diff their
// resolved specs (only the keys that differ, or every key).
import { api } from "../api.js";
import { ChartPanel, COLORS } from "../chart.js";
import { errorBox, flatten, fmtValue, h, statusBadge } from "../dom.js";

async function picker(root, chosen) {
  const { jobs } = await api("/v1/jobs?limit=100");
  const picked = new Set(chosen);
  const go = h("button", { type: "button", id: "compare-go", class: "primary", text: "Compare", disabled: picked.size < 2 });
  const list = h("ul", { class: "pick-list" }, ...jobs.map((j) => {
    const box = h("input", { type: "checkbox", value: j.id, checked: picked.has(j.id), "aria-label": `compare ${j.id}` });
    box.addEventListener("change", () => { if (box.checked) picked.add(j.id); else picked.delete(j.id); go.disabled = picked.size < 2; });
    return h("li", {}, h("label", { class: "check" }, box, j.name ? ` ${j.name} ` : " ", h("span", { class: "muted", text: `${j.id} · ${j.algorithm}` }), " ", statusBadge(j.status)));
  }));
  go.addEventListener("click", () => { location.hash = `#/compare?ids=${[...picked].join(",")}`; });
  root.append(h("h1", { text: "Compare runs" }), h("p", { class: "muted", text: "Pick two or more runs." }),
    jobs.length ? list : h("p", { class: "muted", text: "No runs yet." }), go);
}

export async function render(root, params) {
  const ids = (params.ids || "").split(",").filter(Boolean);
  if (ids.length < 2) { await picker(root, ids); return; }
  let jobs, metrics;
  try {
    jobs = await Promise.all(ids.map((id) => api(`/v1/jobs/${id}`)));
    metrics = await Promise.all(ids.map((id) => api(`/v1/jobs/${id}/metrics`).then((m) => m.metrics)));
  } catch (err) { root.append(h("h1", { text: "Compare runs" }), errorBox(err)); return; }
  const labels = jobs.map((j) => (j.name ? `${j.name} (${j.id.slice(-6)})` : j.id));
  root.append(h("div", { class: "bar" }, h("h1", { text: `Compare ${jobs.length} runs` }), h("span", { class: "spacer" }),
    h("a", { class: "button", href: `#/compare?pick=1&ids=${ids.join(",")}`, text: "Change runs", id: "change-runs",
      onclick: (e) => { e.preventDefault(); root.replaceChildren(); picker(root, ids); } })),
  h("ul", { class: "legend" }, ...jobs.map((j, i) => h("li", {}, h("span", { class: "swatch", dataset: { color: String(i % COLORS.length) } }),
    h("a", { href: `#/runs/${j.id}`, text: labels[i] }), " ", statusBadge(j.status), h("span", { class: "muted", text: ` ${j.algorithm}${j.preset_id ? ` · ${j.preset_id}` : ""}` })))));

  const charts = h("section", { class: "card" }, h("h2", { text: "Curves" }));
  root.append(charts);
  const panel = new ChartPanel(charts);
  const keys = [...new Set(metrics.flatMap((m) => Object.keys(m)))].sort();
  panel.update(Object.fromEntries(keys.map((k) => [k, metrics.map((m, i) => ({ label: labels[i], points: m[k] || [] }))])));

  // Spec diff: one row per key, one column per run.
  const flat = jobs.map((j) => flatten(j.spec_resolved));
  const allKeys = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort();
  // A key one algorithm does not have is shown as absent (—), not as null, and differs from any value.
  const shown = (f, k) => (k in f ? JSON.stringify(f[k]) : "absent");
  const differs = (k) => new Set(flat.map((f) => shown(f, k))).size > 1;
  const showAll = h("input", { type: "checkbox", id: "diff-all" });
  const tbody = h("tbody");
  const fill = () => tbody.replaceChildren(...allKeys.filter((k) => showAll.checked || differs(k)).map((k) =>
    h("tr", { class: differs(k) ? "differs" : "" }, h("th", { scope: "row", text: k }),
      ...flat.map((f) => h("td", {}, k in f ? h("code", { text: fmtValue(f[k]) })
        : h("span", { class: "muted absent", title: "not a setting of this run's algorithm", text: "—" }))))));
  showAll.addEventListener("change", fill);
  fill();
  root.append(h("section", { class: "card" }, h("div", { class: "bar" }, h("h2", { text: "Spec differences" }),
    h("label", {}, showAll, " show equal keys too")),
  h("div", { class: "table-wrap tall" }, h("table", { class: "kv", id: "spec-diff" },
    h("thead", {}, h("tr", {}, h("th", { text: "Key" }), ...labels.map((l) => h("th", { text: l })))), tbody))));
  return () => panel.destroy();
}

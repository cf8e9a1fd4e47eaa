// The preset gallery: one card per paper preset with its paper, algorithm, the values it fixes, notes,
// and whether the platform's live workers can run it (and if not, why). "Launch" opens the form.
import { cached } from "../api.js";
import { errorBox, fmtValue, h } from "../dom.js";

// huggingface.co/papers/2402.03300 and arxiv.org/abs/2402.03300 name the same paper.
function arxivUrl(url) {
  const m = /(\d{4}\.\d{4,5})(v\d+)?$/.exec(url || "");
  return m ? `https://arxiv.org/abs/${m[1]}` : url;
}

function card(p) {
  const fixed = Object.entries({ ...p.config, ...Object.fromEntries(Object.entries(p.job || {}).map(([k, v]) => [k, v])) });
  const reason = p.runnable_reason || `algorithm ${p.algorithm} cannot be trained by this platform's workers yet`;
  const change = p.runnable_change;
  return h("article", { class: "card preset", id: `preset-${p.id}`, dataset: { preset: p.id, runnable: String(p.runnable) } },
    h("header", {},
      h("h2", { text: p.title }),
      h("div", { class: "meta" },
        h("span", { class: "badge algo", text: p.algorithm }),
        h("code", { text: `${p.id} v${p.version}` }),
        p.section ? h("span", { class: "muted", text: p.section }) : null)),
    h("a", { href: arxivUrl(p.paper_url), target: "_blank", rel: "noopener noreferrer", text: `arXiv ${arxivUrl(p.paper_url).split("/").pop()}` }),
    h("details", { class: "fixed" }, h("summary", { text: `Fixes ${fixed.length} value${fixed.length === 1 ? "" : "s"}` }),
      h("dl", { class: "kv-list" }, ...fixed.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, h("code", { text: fmtValue(v) }))]))),
    p.notes ? h("p", { class: "notes", text: p.notes }) : null,
    p.runnable ? null : h("div", { class: "not-runnable" },
      h("p", { class: "warn", text: `Does not run here as shipped: ${reason}` }),
      change ? h("p", { class: "small" }, "Smallest change that runs: ", h("code", { text: JSON.stringify(change) })) : null),
    h("footer", {},
      p.runnable ? h("span", { class: "ok", text: "✓ Runs on the live workers" }) : h("span"),
      h("span", { class: "buttons" },
        !p.runnable && change ? h("a", { class: "button", href: `#/launch?preset=${encodeURIComponent(p.id)}&apply=1`,
          text: "Launch with the change", "aria-label": `Launch ${p.id} with the change` }) : null,
        h("a", { class: "button primary", href: `#/launch?preset=${encodeURIComponent(p.id)}`, text: "Launch",
          "aria-label": `Launch ${p.id}` }))));
}

export async function render(root, params) {
  let presets;
  try { ({ presets } = await cached("/v1/presets")); } catch (err) { root.append(errorBox(err)); return; }
  const search = h("input", { type: "search", id: "preset-search", placeholder: "title, id, algorithm", "aria-label": "search presets" });
  const onlyRunnable = h("input", { type: "checkbox", id: "only-runnable" });
  const grid = h("div", { class: "gallery", id: "gallery" });
  root.append(h("div", { class: "bar" }, h("h1", { text: "Paper presets" }),
    h("span", { class: "muted", text: `${presets.length} presets; each fixes the values its paper gives, you bring the model and data.` })),
  h("div", { class: "filters" }, h("label", {}, "Search ", search), h("label", {}, onlyRunnable, " runnable only")), grid);
  const show = () => {
    const q = search.value.trim().toLowerCase();
    grid.replaceChildren(...presets
      .filter((p) => !onlyRunnable.checked || p.runnable)
      .filter((p) => !q || `${p.id} ${p.title} ${p.algorithm} ${p.section || ""}`.toLowerCase().includes(q))
      .map(card));
  };
  search.addEventListener("input", show);
  onlyRunnable.addEventListener("change", show);
  show();
  if (params.focus) {
    const target = root.querySelector(`#preset-${CSS.escape(params.focus)}`);
    if (target) { target.classList.add("focus"); target.scrollIntoView({ block: "center" }); }
  }
}

// One run: header (status timeline, duration, ETA, what it trains), charts, RL samples per step,
// checkpoints, events with a level filter, every resolved hyperparameter; cancel / retry / clone.
// Live: polls while the run can still change.
import { api, ApiError, auth, cached } from "../api.js";
import { ChartPanel } from "../chart.js";
import {
  ACTIVE, errorBox, flatten, fmtDuration, fmtTime, fmtValue, h, jobDuration, parseTime, statusBadge,
} from "../dom.js";

const REFRESH_MS = 2000; // polling period where the event stream is unavailable
const EVENT_KINDS = "status,log,checkpoint,error,done";

function datasetText(ds) {
  if (!ds) return "";
  const source = ds.builtin ? `built-in ${ds.builtin}` : ds.file_id ? `file ${ds.file_id}` : ds.path || ds.hf_id || "";
  return `${source}${ds.num_rows ? ` (${ds.num_rows} rows)` : ""}`;
}

function eta(job) {
  const elapsed = jobDuration(job);
  if (job.status !== "running" || !job.total_steps || !job.last_step || !elapsed) return null;
  return (elapsed / job.last_step) * (job.total_steps - job.last_step);
}

function describe(ev) {
  const d = ev.data || {};
  switch (ev.kind) {
    case "status": return `${d.from ?? "new"} → ${d.to}${d.reason ? ` (${d.reason})` : ""}`;
    case "log": return d.message || "";
    case "checkpoint": return `checkpoint saved: ${d.path}`;
    case "error": return d.message || JSON.stringify(d);
    case "done": return "training finished";
    default: return JSON.stringify(d);
  }
}

function levelOf(ev) {
  if (ev.kind === "error") return "error";
  if (ev.kind === "log") return (ev.data && ev.data.level) || "info";
  return "info";
}

export async function render(root, params) {
  const id = params.id;
  // Which algorithms log samples: the server says each one's family (offline runs log none).
  const { algorithms } = await cached("/v1/algorithms").catch(() => ({ algorithms: [] }));
  const familyOf = Object.fromEntries(algorithms.map((a) => [a.id, a.family]));
  const state = { job: null, events: [], eventsAfter: 0, samples: new Map(), samplesAfter: 0, sampleStep: null,
    followSamples: true, level: "", stopped: false, timer: null, streaming: false, noStream: false, abort: null };

  const header = h("section", { class: "card run-header" });
  const actionsError = h("div");
  const charts = h("section", { class: "card" }, h("h2", { text: "Charts" }));
  const samples = h("section", { class: "card", id: "samples" }, h("h2", { text: "Samples" }));
  const samplesBody = h("div");
  samples.append(samplesBody);
  const checkpoints = h("section", { class: "card", id: "checkpoints" }, h("h2", { text: "Checkpoints" }));
  const checkpointsBody = h("div");
  checkpoints.append(checkpointsBody);
  const levelSelect = h("select", { id: "event-level", "aria-label": "event level" },
    ...[["", "all levels"], ["info", "info and above"], ["warning", "warnings and errors"], ["error", "errors"]]
      .map(([v, t]) => h("option", { value: v, text: t })));
  const eventList = h("ol", { class: "events", id: "events" });
  const events = h("section", { class: "card", id: "events-card" },
    h("div", { class: "bar" }, h("h2", { text: "Events" }), levelSelect), eventList);
  const params_ = h("section", { class: "card", id: "hyperparameters" }, h("h2", { text: "Resolved spec" }));
  root.append(header, actionsError, charts, samples, h("div", { class: "two-col" }, events, checkpoints), params_);

  const panel = new ChartPanel(charts);
  levelSelect.addEventListener("change", () => { state.level = levelSelect.value; renderEvents(); });

  async function act(action) {
    if (action === "cancel" && !window.confirm(`Cancel run ${state.job.name || id}? A running job stops at its next step.`)) return;
    actionsError.replaceChildren();
    try { state.job = await api(`/v1/jobs/${id}/${action}`, { method: "POST" }); clearTimeout(state.timer); state.timer = null; schedule(0); }
    catch (err) { actionsError.replaceChildren(errorBox(err)); }
  }

  function renderHeader(job, statusEvents) {
    const duration = jobDuration(job);
    const left = eta(job);
    const spec = job.spec_resolved || {};
    const timeline = h("ol", { class: "timeline", "aria-label": "status timeline" },
      ...statusEvents.map((ev) => h("li", { class: `status-${ev.data.to}` },
        h("span", { class: "badge-dot" }), h("strong", { text: ev.data.to }), " ",
        h("time", { datetime: ev.created_at, text: parseTime(ev.created_at).toLocaleTimeString() }))));
    const fact = (label, value, wide = false) => (value === null || value === undefined || value === "" ? null :
      h("div", { class: wide ? "wide" : null }, h("dt", { text: label }), h("dd", {}, value)));
    header.replaceChildren(...[
      h("div", { class: "bar" },
        h("h1", { id: "run-title", text: job.name || job.id }), statusBadge(job.status),
        h("span", { class: "spacer" }),
        ACTIVE.has(job.status) && job.status !== "cancelling"
          ? h("button", { type: "button", id: "cancel", class: "danger", text: "Cancel", onclick: () => act("cancel") }) : null,
        ["failed", "cancelled"].includes(job.status)
          ? h("button", { type: "button", id: "retry", text: "Retry", onclick: () => act("retry") }) : null,
        h("a", { class: "button", id: "clone", href: `#/launch?clone=${job.id}`, text: "Clone to form" })),
      timeline,
      job.error ? h("div", { class: "job-error", role: "alert" },
        h("p", { class: "error", text: `${job.error.code || "error"}: ${job.error.message || ""}` }),
        job.error.remediation ? h("p", { class: "remediation", text: `What to do: ${job.error.remediation}` }) : null) : null,
      h("dl", { class: "facts" },
        fact("Run id", job.id),
        fact("Algorithm", job.algorithm),
        fact("Preset", job.preset_id ? h("a", { href: `#/presets?focus=${job.preset_id}`, text: `${job.preset_id} v${job.preset_version}` }) : "none"),
        fact("Model", spec.model),
        fact("Dataset", datasetText(spec.dataset)),
        fact("Progress", job.total_steps ? `step ${job.last_step ?? 0} of ${job.total_steps}` : job.last_step != null ? `step ${job.last_step}` : "not started"),
        fact("Duration", fmtDuration(duration)),
        fact("ETA", left !== null ? fmtDuration(left) : null),
        fact("Attempt", `${job.attempt} of ${job.max_attempts}`),
        fact("Created", fmtTime(job.created_at)),
        fact("Queue", job.queue),
        fact("MLflow run", job.mlflow_run_url
          ? h("a", { id: "mlflow-link", href: job.mlflow_run_url, target: "_blank", rel: "noopener", text: job.mlflow_run_id })
          : job.mlflow_run_id, true))].filter(Boolean));  // wide: a 32-character id on one line
  }

  function renderEvents() {
    const rank = { debug: 0, info: 1, warning: 2, error: 3 };
    const min = rank[state.level] ?? -1;
    const shown = state.events.filter((ev) => (rank[levelOf(ev)] ?? 1) >= min);
    eventList.replaceChildren(...shown.map((ev) => h("li", { class: `level-${levelOf(ev)}` },
      h("time", { datetime: ev.created_at, text: parseTime(ev.created_at).toLocaleTimeString() }),
      h("span", { class: "kind", text: ev.kind === "log" ? levelOf(ev) : ev.kind }),
      h("span", { class: "muted step", text: ev.step != null ? `@${ev.step}` : "" }),  // kept empty: columns align
      h("span", { class: "msg", text: describe(ev) }))));
    if (!shown.length) eventList.append(h("li", { class: "muted", text: "No events at this level." }));
  }

  function renderSamples() {
    const steps = [...state.samples.keys()].sort((a, b) => a - b);
    if (!steps.length) {
      samples.hidden = state.job && (familyOf[state.job.algorithm] ?? "offline") === "offline";
      samplesBody.replaceChildren(h("p", { class: "muted", text: "No samples yet: online runs log generated completions as they train." }));
      return;
    }
    samples.hidden = false;
    if (state.followSamples || !steps.includes(state.sampleStep)) state.sampleStep = steps[steps.length - 1];
    const i = steps.indexOf(state.sampleStep);
    const go = (j) => { state.sampleStep = steps[j]; state.followSamples = j === steps.length - 1; renderSamples(); };
    const pick = h("select", { id: "sample-step", "aria-label": "sample step" },
      ...steps.map((s) => h("option", { value: String(s), text: `step ${s}`, selected: s === state.sampleStep })));
    pick.addEventListener("change", () => go(steps.indexOf(Number(pick.value))));
    const rows = state.samples.get(state.sampleStep) || [];
    samplesBody.replaceChildren(
      h("div", { class: "bar" },
        h("button", { type: "button", id: "sample-prev", text: "◀ Previous", disabled: i <= 0, onclick: () => go(i - 1) }),
        pick,
        h("button", { type: "button", id: "sample-next", text: "Next ▶", disabled: i >= steps.length - 1, onclick: () => go(i + 1) }),
        h("span", { class: "muted", text: `${steps.length} logged steps` })),
      h("div", { class: "table-wrap" }, h("table", { class: "samples", id: "samples-table" },
        h("thead", {}, h("tr", {}, ...["#", "Prompt", "Completion", "Reward", "Length"].map((t, n) => h("th", { scope: "col", class: n >= 3 ? "num" : undefined, text: t })))),
        h("tbody", {}, ...rows.map((s, n) => h("tr", {},
          h("td", { text: String(n + 1) }),
          h("td", {}, ...promptImages(s), h("pre", { text: typeof s.prompt === "string" ? s.prompt : JSON.stringify(s.prompt) })),
          h("td", {}, h("pre", { text: s.completion ?? "" })),
          h("td", { class: "num", text: s.reward === null || s.reward === undefined ? "–" : fmtValue(s.reward) }),
          h("td", { class: "num", text: String(s.completion_length ?? (s.completion || "").length) })))))));
  }

  // Thumbnails of an image prompt (inline PNG data URIs in the sample); nothing for text prompts.
  function promptImages(s) {
    const uris = Array.isArray(s.images) ? s.images.filter((u) => typeof u === "string" && u.startsWith("data:image/png;base64,")) : [];
    if (!uris.length) return [];
    return [h("div", { class: "sample-images" },
      ...uris.map((u, k) => h("img", { src: u, class: "thumb", alt: `prompt image ${k + 1}`, width: "64", height: "64" })))];
  }

  function renderCheckpoints(list, job) {
    const rows = list.checkpoints.map((c) => ({ step: c.step, saved: fmtTime(c.created_at), path: c.path,
      url: c.step != null ? `/v1/jobs/${job.id}/checkpoints/${c.step}/download` : null, file: `${job.id}-step-${c.step}.zip` }));
    if (job.status === "succeeded" && job.output_dir) {  // the final model: what from_pretrained loads
      rows.push({ step: "final", saved: fmtTime(job.finished_at), path: `${job.output_dir}/final`,
        url: `/v1/jobs/${job.id}/model/download`, file: `${job.id}-final.zip` });
    }
    if (!rows.length) { checkpointsBody.replaceChildren(h("p", { class: "muted", text: "No checkpoints yet." })); return; }
    checkpointsBody.replaceChildren(h("div", { class: "table-wrap" }, h("table", { class: "checkpoints" },
      h("thead", {}, h("tr", {}, ...["Step", "Saved", "Path", ""].map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", {}, ...rows.map((r) => h("tr", {},
        h("td", { text: r.step ?? "" }), h("td", { text: r.saved }),
        h("td", {}, h("code", { text: r.path })),
        h("td", {}, r.url ? h("button", { type: "button", class: "download", "data-step": String(r.step),
          text: "Download", onclick: () => download(r.url, r.file) }) : null)))))));
  }

  // The API wants the bearer token, which a plain link cannot send: fetch, then save the blob.
  async function download(path, file) {
    try {
      const res = await fetch(path, { headers: { Authorization: `Bearer ${auth.token}` } });
      if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
      const url = URL.createObjectURL(await res.blob());
      const a = h("a", { href: url, download: file });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) { actionsError.replaceChildren(errorBox(err)); }
  }

  async function renderParams(job) {
    let preset = {};
    if (job.preset_id) {
      try { preset = flatten({ config: (await cached(`/v1/presets/${job.preset_id}`)).config }); } catch { preset = {}; }
    }
    const mine = flatten(job.spec_submitted || {});
    const rows = Object.entries(flatten(job.spec_resolved || {})).map(([key, value]) => {
      const source = key in mine ? "set" : key in preset ? "preset" : "default";
      return h("tr", { class: `source-${source}` }, h("th", { scope: "row", text: key }),
        h("td", {}, h("code", { text: fmtValue(value) })), h("td", { class: "muted", text: source }));
    });
    const filter = h("input", { type: "search", placeholder: "filter keys", "aria-label": "filter hyperparameters" });
    const tbody = h("tbody", {}, ...rows);
    filter.addEventListener("input", () => {
      for (const tr of tbody.children) tr.hidden = !tr.firstChild.textContent.includes(filter.value.trim());
    });
    params_.replaceChildren(h("div", { class: "bar" }, h("h2", { text: "Resolved spec" }), filter),
      h("div", { class: "table-wrap tall" }, h("table", { class: "kv", id: "spec-table" },
        h("thead", {}, h("tr", {}, h("th", { text: "Key" }), h("th", { text: "Value" }), h("th", { text: "Source" }))), tbody)));
  }

  async function pullEvents(kind, afterKey, onEvent) {
    let more = true;
    while (more && !state.stopped) {
      const page = await api(`/v1/jobs/${id}/events?kind=${kind}&after=${state[afterKey]}&limit=1000`);
      page.events.forEach(onEvent);
      state[afterKey] = page.next_cursor;
      more = page.has_more;
    }
  }

  async function refresh(first) {
    const job = await api(`/v1/jobs/${id}`);
    const before = state.events.length;
    await pullEvents(EVENT_KINDS, "eventsAfter", (ev) => state.events.push(ev));
    let newSamples = false;
    await pullEvents("samples", "samplesAfter", (ev) => {
      state.samples.set(ev.step, [...(state.samples.get(ev.step) || []), ...((ev.data && ev.data.samples) || [])]);
      newSamples = true;
    });
    const [{ metrics }, cps] = await Promise.all([api(`/v1/jobs/${id}/metrics`), api(`/v1/jobs/${id}/checkpoints`)]);
    if (state.stopped) return job;
    state.job = job;
    renderHeader(job, state.events.filter((e) => e.kind === "status"));
    if (first || state.events.length !== before) renderEvents();
    if (first || newSamples) renderSamples();
    renderCheckpoints(cps, job);
    panel.update(Object.fromEntries(Object.entries(metrics).map(([k, points]) => [k, [{ label: job.name || job.id, points }]])));
    if (first) await renderParams(job);
    return job;
  }

  // Live updates: the job's server-sent event stream says when something happened; each burst of events
  // triggers one refresh (at most one per second). Where the stream is unavailable, poll.
  async function follow() {
    state.streaming = true;
    state.abort = new AbortController();
    try {
      const after = Math.max(state.eventsAfter, state.samplesAfter);
      const res = await fetch(`/v1/jobs/${id}/events/stream?after=${after}&heartbeat_s=10`,
        { headers: { Authorization: `Bearer ${auth.token}` }, signal: state.abort.signal });
      if (!res.ok || !res.body) throw new ApiError(res.status, null);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        const frames = buffer.split("\n\n");
        buffer = frames.pop();
        if (frames.some((f) => /^event:/m.test(f))) schedule(1000);
      }
    } catch (err) {
      if (state.stopped) return;
      state.noStream = true;
    } finally {
      state.streaming = false;
    }
    if (!state.stopped) schedule(0);
  }

  function schedule(ms) {
    if (state.timer) return;
    state.timer = setTimeout(async () => {
      state.timer = null;
      try {
        const job = await refresh(false);
        actionsError.replaceChildren();
        if (ACTIVE.has(job.status) && !state.streaming) {
          if (state.noStream) schedule(REFRESH_MS); else follow();
        }
      } catch (err) {
        if (!state.stopped) { actionsError.replaceChildren(errorBox(err)); schedule(REFRESH_MS * 2); }
      }
    }, ms);
  }

  try {
    const job = await refresh(true);
    if (ACTIVE.has(job.status)) follow();
  } catch (err) {
    root.replaceChildren(h("h1", { text: `Run ${id}` }), errorBox(err));
  }
  return () => {
    state.stopped = true;
    clearTimeout(state.timer);
    if (state.abort) state.abort.abort();
    panel.destroy();
  };
}

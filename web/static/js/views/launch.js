// The launch form, generated from the job spec's JSON schema for the chosen algorithm: model, dataset
// (built-in / uploaded file / path), rewards, hardware, LoRA and config fields grouped with their
// defaults. "Check" asks the server for a dry run (resolved spec, diff against the preset, errors next
// to their inputs); "Launch" submits. A raw JSON mode edits the request body directly.
import { api, ApiError, cached } from "../api.js";
import { errorBox, fmtValue, h } from "../dom.js";
import { clearErrors, deref, schemaField, showErrors } from "../form-fields.js";

const MODELS = ["bundled:smollm2-135m-instruct", "tiny:llama"];
const GROUPS = [
  ["Optimization", /learning_rate|^lr_|warmup|weight_decay|adam|optim|max_grad_norm|gradient_accumulation|batch_size|epochs|max_steps|^seed|steps_per_generation|num_iterations/],
  ["Generation", /generation|completion|prompt_length|temperature|top_p|top_k|min_p|repetition|vllm|max_length|max_new_tokens|teacher|lmbda|seq_kd/],
  ["Objective", /loss|beta|epsilon|delta|tau|gamma|alpha|kl|importance|clip|scale_rewards|advantage|entropy|reward|label|mask|rpo|divergence|ref_|sapo|vespo|dynamic|group|desirable|undesirable|margin|center|aggregation|weight/],
  ["Precision & memory", /bf16|fp16|tf32|packing|padding|checkpointing|dtype|cast_|dropout/],
  ["Logging & checkpoints", /logging|save|eval|log_|report|print|output_dir/],
  ["Other", /.*/],
];

function groupOf(key) { return GROUPS.find(([, re]) => re.test(key))[0]; }

export async function render(root, params) {
  const [{ presets }, { algorithms }] = await Promise.all([cached("/v1/presets"), cached("/v1/algorithms")]);
  const presetById = Object.fromEntries(presets.map((p) => [p.id, p]));
  let initial = { config: {} };
  if (params.clone) {
    try {
      const job = await api(`/v1/jobs/${params.clone}`);
      initial = structuredClone(job.spec_submitted);
      initial.name = job.name ? `${job.name} (copy)` : undefined;
    } catch (err) { root.append(errorBox(err)); }
  } else if (params.preset) {
    // "apply": start from the smallest change the server checked makes this preset run here
    const change = (params.apply && presetById[params.preset]?.runnable_change) || {};
    initial = { ...structuredClone(change), preset: params.preset, config: { ...(change.config || {}) } };
  }
  else if (params.algorithm) initial = { algorithm: params.algorithm, config: {} };

  const formErrors = h("div", { id: "form-errors" });
  const review = h("section", { class: "card review", id: "review", hidden: true });
  const form = h("form", { id: "launch-form", class: "launch", novalidate: true });
  const raw = h("textarea", { id: "raw-json", rows: "24", spellcheck: "false", "aria-label": "request body (JSON)" });
  const rawBox = h("div", { class: "raw", hidden: true, dataset: { param: "" } }, raw, h("span", { class: "field-error" }));
  const modeBtn = h("button", { type: "button", id: "raw-toggle", text: "Edit as JSON" });
  const checkBtn = h("button", { type: "button", id: "check", text: "Check (dry run)" });
  const launchBtn = h("button", { type: "submit", form: "launch-form", id: "launch", class: "primary", text: "Launch" });
  root.append(h("div", { class: "bar" }, h("h1", { text: "Launch a run" }), h("span", { class: "spacer" }), modeBtn),
    h("div", { class: "launch-layout" },
      h("div", { class: "launch-main" }, form, rawBox),
      h("aside", { class: "launch-side" },
        h("div", { class: "bar actions" }, checkBtn, launchBtn),
        formErrors,
        h("p", { class: "muted", id: "review-hint", text: "Check asks the server for a dry run: the resolved spec, its difference from the preset and any warnings appear here; errors appear next to their fields." }),
        review)));

  let readBody = () => ({});
  let rawMode = false;

  async function build(body) {
    clearErrors(form);
    formErrors.replaceChildren();
    review.hidden = true;
    const preset = body.preset ? presetById[body.preset] : null;
    const algorithm = preset ? preset.algorithm : body.algorithm || algorithms.find((a) => a.runnable).id;
    const schema = await cached(`/v1/algorithms/${algorithm}/schema`);
    const props = schema.properties;
    const presetJob = (preset && preset.job) || {};
    const field = (param, prop, base, value) => schemaField(param, prop, schema, { base, value });

    // Start from: a preset or a bare algorithm.
    const presetSelect = h("select", { id: "f-preset" }, h("option", { value: "", text: "(none: choose the algorithm)" }),
      ...presets.map((p) => h("option", { value: p.id, text: `${p.id} — ${p.algorithm}${p.runnable ? "" : " (not runnable here)"}` })));
    presetSelect.value = preset ? preset.id : "";
    const overrideBox = h("input", { type: "checkbox", id: "f-override", checked: Boolean(body.override_preset_objective) });
    const algoSelect = h("select", { id: "f-algorithm", disabled: Boolean(preset) },
      ...algorithms.map((a) => h("option", { value: a.id, text: `${a.id}${a.runnable ? "" : " (not runnable here)"}` })));
    algoSelect.value = algorithm;
    const rebuild = () => build({ ...readBody(), preset: presetSelect.value || undefined,
      algorithm: presetSelect.value ? undefined : algoSelect.value, config: {} });
    presetSelect.addEventListener("change", rebuild);
    algoSelect.addEventListener("change", rebuild);
    const start = h("fieldset", {}, h("legend", { text: "Start from" }),
      h("div", { class: "field", dataset: { param: "preset" } }, h("label", { for: "f-preset", text: "Paper preset" }), presetSelect,
        h("span", { class: "help", text: preset ? `${preset.title}. ${preset.notes || ""}` : "Optional: a preset fixes the values its paper gives." }),
        h("span", { class: "field-error" })),
      h("div", { class: "field", dataset: { param: "algorithm" } }, h("label", { for: "f-algorithm", text: "Algorithm" }), algoSelect,
        h("span", { class: "field-error" })),
      h("div", { class: "field", dataset: { param: "override_preset_objective" }, hidden: !preset },
        h("label", { class: "check" }, overrideBox, " change values that define the preset's objective"),
        h("span", { class: "help", text: "Batch sizes, steps, lengths and the learning rate are yours to scale; a loss setting the preset fixes changes only with this ticked, and the run records which." }),
        h("span", { class: "field-error" })));

    // What to train.
    const nameField = field("name", props.name, null, body.name ?? null);
    const modelField = field("model", props.model, body.model || MODELS[0], body.model || MODELS[0]);
    modelField.querySelector("input").setAttribute("list", "model-list");
    modelField.append(h("datalist", { id: "model-list" }, ...MODELS.map((m) => h("option", { value: m }))));
    const basics = h("fieldset", {}, h("legend", { text: "Model" }), h("div", { class: "grid" }, nameField, modelField));

    // Dataset: built-in (the ones that fit this algorithm, as the server says), an uploaded file, or a path.
    const ds = body.dataset || {};
    const fits = algorithms.find((a) => a.id === algorithm)?.builtin_datasets || [];
    const sourceOf = ds.file_id ? "file" : ds.path ? "path" : "builtin";
    const radios = ["builtin", "file", "path"].map((v) => h("label", { class: "check" },
      h("input", { type: "radio", name: "ds-source", value: v, checked: v === sourceOf }),
      ` ${{ builtin: "built-in", file: "uploaded file", path: "path on the worker" }[v]}`));
    const builtinSel = h("select", { id: "f-dataset-builtin" }, ...fits.map((n) => h("option", { value: n, text: n })));
    if (ds.builtin) builtinSel.value = ds.builtin;
    const rowsInput = h("input", { id: "f-dataset-num_rows", type: "text", inputmode: "numeric", value: ds.num_rows ?? "", placeholder: "all" });
    const fileSel = h("select", { id: "f-dataset-file_id" });
    const fileInput = h("input", { id: "f-upload", type: "file", accept: ".jsonl,.json,.ndjson" });  // what the server takes
    const uploadStatus = h("span", { class: "muted", role: "status" });
    const pathInput = h("input", { id: "f-dataset-path", type: "text", value: ds.path || "", placeholder: "/data/train.jsonl" });
    async function loadFiles(selected) {
      const { files } = await api("/v1/files");
      fileSel.replaceChildren(h("option", { value: "", text: files.length ? "(choose)" : "(no uploads yet)" }),
        ...files.map((f) => h("option", { value: f.id, text: `${f.filename} (${f.rows} rows, ${f.format})` })));
      if (selected) fileSel.value = selected;
    }
    fileInput.addEventListener("change", async () => {
      if (!fileInput.files.length) return;
      const data = new FormData();
      data.append("file", fileInput.files[0]);
      uploadStatus.textContent = "uploading…";
      try {
        const out = await api("/v1/files", { method: "POST", form: data });
        uploadStatus.textContent = `uploaded ${out.filename}: ${out.rows} rows`;
        await loadFiles(out.id);
        radios[1].querySelector("input").checked = true;
        showSource();
      } catch (err) {  // the refusal names the line and the fix: show both, next to the upload
        uploadStatus.textContent = "";
        fileInput.value = "";  // choosing the fixed file again fires another change
        radios[1].querySelector("input").checked = true;
        showSource();
        const fix = err.remediation ? ` (${err.remediation})` : "";
        showErrors(form, [{ param: "dataset.file_id", message: `${err.message}${fix}` }], formErrors);
      }
    });
    const part = (param, label, control, extra) => h("div", { class: "field", dataset: { param } },
      h("label", { for: control.id, text: label }), control, extra || null, h("span", { class: "field-error" }));
    const parts = {
      builtin: part("dataset.builtin", "Built-in set", builtinSel,
        h("span", { class: "help", text: `Sets that fit ${algorithm}: ${fits.join(", ") || "none"}` })),
      file: part("dataset.file_id", "Uploaded file", fileSel, h("span", { class: "upload" }, h("label", { for: "f-upload", text: "Upload JSONL " }), fileInput, uploadStatus)),
      path: part("dataset.path", "Path", pathInput),
    };
    const showSource = () => {
      const v = radios.map((r) => r.querySelector("input")).find((r) => r.checked).value;
      for (const [k, node] of Object.entries(parts)) node.hidden = k !== v;
    };
    radios.forEach((r) => r.querySelector("input").addEventListener("change", showSource));
    await loadFiles(ds.file_id);
    showSource();
    const dataset = h("fieldset", { dataset: { param: "dataset" } }, h("legend", { text: "Dataset" }),
      h("div", { class: "radios", role: "radiogroup", "aria-label": "dataset source" }, ...radios),
      parts.builtin, parts.file, parts.path, part("dataset.num_rows", "Rows", rowsInput), h("span", { class: "field-error" }));
    const readDataset = () => {
      const v = radios.map((r) => r.querySelector("input")).find((r) => r.checked).value;
      const out = v === "builtin" ? { builtin: builtinSel.value } : v === "file" ? { file_id: fileSel.value } : { path: pathInput.value };
      const n = rowsInput.value.trim();
      if (n) out.num_rows = Number.isFinite(Number(n)) ? Number(n) : n;
      return out;
    };

    // Rewards (online algorithms only).
    let readRewards = () => undefined;
    const sections = [start, basics, dataset];
    if (props.reward_funcs) {
      const names = deref(schema.$defs.RewardFuncSpec.properties.name, schema).enum;
      const baseRewards = presetJob.reward_funcs || [{ name: "accuracy" }];
      const current = body.reward_funcs || baseRewards;
      const boxes = names.map((n) => h("label", { class: "check" },
        h("input", { type: "checkbox", value: n, checked: current.some((r) => r.name === n) }), ` ${n}`));
      sections.push(h("fieldset", { dataset: { param: "reward_funcs" } },
        h("legend", { text: "Reward functions" }), h("div", { class: "checks" }, ...boxes),
        h("span", { class: "help", text: "Options of a reward (e.g. max_completion_len) go in the JSON mode." }),
        h("span", { class: "field-error" })));
      readRewards = () => {
        const picked = boxes.map((b) => b.querySelector("input")).filter((b) => b.checked).map((b) => b.value);
        const merged = picked.map((n) => current.find((r) => r.name === n) || baseRewards.find((r) => r.name === n) || { name: n });
        return JSON.stringify(merged) === JSON.stringify(baseRewards) && !body.reward_funcs ? undefined : merged;
      };
    }

    // Hardware and LoRA: generic fields from their schemas.
    const sub = (key, defName, values, presetValues) => {
      const props_ = schema.$defs[defName].properties;
      return Object.entries(props_).filter(([k]) => k !== "peft_type").map(([k, p]) => {
        const base = presetValues && k in presetValues ? presetValues[k] : p.default;
        return schemaField(`${key}.${k}`, p, schema,
          { base, value: values ? values[k] : undefined, fixedByPreset: Boolean(presetValues && k in presetValues) });
      });
    };
    const hwFields = sub("hardware", "HardwareSpec", body.hardware, presetJob.hardware);
    sections.push(h("fieldset", { dataset: { param: "hardware" } }, h("legend", { text: "Hardware" }), h("div", { class: "grid" }, ...hwFields)));
    const loraOn = h("input", { type: "checkbox", id: "f-lora", checked: Boolean(body.peft_config ?? presetJob.peft_config) });
    const loraFields = sub("peft_config", "LoraSpec", body.peft_config, presetJob.peft_config);
    const loraGrid = h("div", { class: "grid", hidden: !loraOn.checked }, ...loraFields);
    loraOn.addEventListener("change", () => { loraGrid.hidden = !loraOn.checked; });
    sections.push(h("fieldset", { dataset: { param: "peft_config" } }, h("legend", { text: "LoRA" }),
      h("label", { class: "check" }, loraOn, " train a LoRA adapter (peft LoraConfig)"), loraGrid, h("span", { class: "field-error" })));

    // Config, grouped.
    const cfgDef = deref(props.config, schema);
    const presetCfg = (preset && preset.config) || {};
    const cfgFields = Object.entries(cfgDef.properties).map(([k, p]) => schemaField(`config.${k}`, p, schema,
      { base: k in presetCfg ? presetCfg[k] : p.default, value: (body.config || {})[k], fixedByPreset: k in presetCfg }));
    const grouped = new Map(GROUPS.map(([g]) => [g, []]));
    cfgFields.forEach((f) => grouped.get(groupOf(f.param.slice(7))).push(f));
    sections.push(h("fieldset", { dataset: { param: "config" } }, h("legend", { text: `${algorithm} config` }),
      h("span", { class: "field-error" }),
      ...[...grouped].filter(([, fs]) => fs.length).map(([g, fs], i) => h("details", { open: i < 2 || fs.some((f) => f.classList.contains("fixed")) },
        h("summary", { text: `${g} (${fs.length})` }), h("div", { class: "grid" }, ...fs)))));

    form.replaceChildren(...sections);

    readBody = () => {
      const out = preset ? { preset: preset.id } : { algorithm };
      if (preset && overrideBox.checked) out.override_preset_objective = true;
      const name = nameField.read();
      if (name) out.name = name;
      out.model = modelField.read();
      out.dataset = readDataset();
      const rewards = readRewards();
      if (rewards) out.reward_funcs = rewards;
      const hw = Object.fromEntries(hwFields.filter((f) => f.changed()).map((f) => [f.param.split(".")[1], f.read()]));
      if (Object.keys(hw).length) out.hardware = hw;
      if (loraOn.checked) out.peft_config = Object.fromEntries(loraFields.filter((f) => f.changed()).map((f) => [f.param.split(".")[1], f.read()]));
      else if (presetJob.peft_config) out.peft_config = null;
      out.config = Object.fromEntries(cfgFields.filter((f) => f.changed()).map((f) => [f.param.slice(7), f.read()]));
      return out;
    };
  }

  const currentBody = () => {
    if (!rawMode) return readBody();
    try { return JSON.parse(raw.value); } catch (err) { throw new ApiError(422, { error: { code: "invalid_json", message: `the JSON does not parse: ${err.message}`, param: "" } }); }
  };

  function reportError(err) {
    if (err instanceof ApiError && err.details.length) showErrors(rawMode ? rawBox.parentNode : form, err.details, formErrors);
    else formErrors.replaceChildren(errorBox(err));
    if (err instanceof ApiError && err.remediation) formErrors.append(h("p", { class: "muted", text: err.remediation }));
  }

  function diffTable(body, result) {
    const preset = body.preset ? presetById[body.preset] : null;
    const rows = [];
    if (result && result.preset_diff) {
      rows.push(...result.preset_diff.map((d) => [d.param, d.preset_fixed === false ? null : d.preset_value, d.value, d.objective]));
    } else if (preset) {
      for (const [k, v] of Object.entries(body.config || {})) if (k in preset.config && JSON.stringify(preset.config[k]) !== JSON.stringify(v)) rows.push([`config.${k}`, preset.config[k], v]);
    }
    if (!preset) return h("p", { class: "muted", text: "No preset: nothing to compare against." });
    if (!rows.length) return h("p", { class: "muted", text: `Every value ${preset.id} fixes is kept.` });
    return h("table", { class: "diff", id: "preset-diff" },
      h("thead", {}, h("tr", {}, h("th", { text: "Key" }), h("th", { text: `Preset ${preset.id}` }), h("th", { text: "This run" }))),
      h("tbody", {}, ...rows.map(([k, a, b, objective]) => h("tr", {}, h("th", { scope: "row" }, k, objective ? h("span", { class: "tag", text: "objective" }) : null),
        h("td", {}, a === null || a === undefined ? h("span", { class: "muted", text: "not fixed" }) : h("code", { class: "old", text: fmtValue(a) })),
        h("td", {}, h("code", { class: "new", text: fmtValue(b) }))))));
  }

  async function check() {
    clearErrors(form);
    formErrors.replaceChildren();
    let body;
    try { body = currentBody(); } catch (err) { reportError(err); return null; }
    let result = null;
    try {
      result = await api("/v1/jobs:validate", { method: "POST", body });
    } catch (err) {
      if (!(err instanceof ApiError) || ![404, 405].includes(err.status)) { reportError(err); review.hidden = true; return null; }
    }
    const warnings = (result && result.warnings) || [];
    review.hidden = false;
    review.replaceChildren(h("h2", { text: result ? "Dry run: the spec the run will get" : "Request preview" }),
      ...warnings.map((w) => h("p", { class: "warn", text: `${w.param ? `${w.param}: ` : ""}${w.message}` })),
      result && result.estimate ? h("p", { id: "estimate", text: sizeText(result.estimate) }) : null,
      h("h3", { text: "Difference from the preset" }), diffTable(body, result),
      h("details", { open: true }, h("summary", { text: result ? "Resolved spec" : "Request body" }),
        h("pre", { class: "json", id: "resolved-spec", text: JSON.stringify(result ? result.spec : body, null, 2) })));
    return body;
  }

  async function launch(event) {
    event.preventDefault();
    clearErrors(form);
    formErrors.replaceChildren();
    launchBtn.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", body: currentBody() });
      location.hash = `#/runs/${job.id}`;
    } catch (err) { reportError(err); } finally { launchBtn.disabled = false; }
  }

  form.addEventListener("submit", launch);
  launchBtn.addEventListener("click", (e) => { if (rawMode) launch(e); });
  checkBtn.addEventListener("click", check);
  modeBtn.addEventListener("click", async () => {
    if (!rawMode) {
      raw.value = JSON.stringify(readBody(), null, 2);
      rawMode = true;
    } else {
      let parsed;
      try { parsed = JSON.parse(raw.value); } catch (err) { reportError(new ApiError(422, { error: { code: "invalid_json", message: `the JSON does not parse: ${err.message}`, param: "" } })); return; }
      rawMode = false;
      await build(parsed);
    }
    form.hidden = rawMode;
    rawBox.hidden = !rawMode;
    modeBtn.textContent = rawMode ? "Back to the form" : "Edit as JSON";
  });

  await build(initial);
}

// The run's size from the dry run's estimate, e.g. "Size: 125 steps of 8 sequences, at most 1,024,000 tokens".
function sizeText(est) {
  const steps = est.steps != null ? `${est.steps.toLocaleString("en-US")} step${est.steps === 1 ? "" : "s"}`
    : "an unknown number of steps";
  const tokens = est.max_tokens ? `, at most ${est.max_tokens.toLocaleString("en-US")} tokens` : "";
  return `Size: ${steps} of ${est.sequences_per_step} sequences${tokens} (${est.basis})`;
}

// Inputs generated from a JSON schema property: the right control for its type, its description and
// default, a "fixed by the preset" mark, and `data-param` (the dotted field path the server's errors
// name), so an error lands next to its input.
import { fmtValue, h } from "./dom.js";

export function deref(schema, root) {
  if (schema && schema.$ref) return root.$defs[schema.$ref.split("/").pop()];
  if (schema && schema.allOf && schema.allOf.length === 1) return deref(schema.allOf[0], root);
  return schema || {};
}

// {type: integer|number|boolean|string|enum|json, nullable, options}
export function kindOf(prop, root) {
  const s = deref(prop, root);
  const variants = s.anyOf ? s.anyOf.map((v) => deref(v, root)) : [s];
  const nullable = variants.some((v) => v.type === "null");
  const real = variants.filter((v) => v.type !== "null");
  if (real.length === 1) {
    const v = real[0];
    if (v.enum) return { type: "enum", nullable, options: v.enum };
    if (v.const !== undefined) return { type: "enum", nullable, options: [v.const] };
    // a nullable boolean has three states (unset, true, false): a select, not a checkbox
    if (v.type === "boolean" && nullable) return { type: "enum", nullable, options: [true, false] };
    if (["integer", "number", "boolean", "string"].includes(v.type)) return { type: v.type, nullable };
  }
  return { type: "json", nullable };
}

const same = (a, b) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);

export function fieldId(param) { return `f-${param.replace(/[^a-zA-Z0-9_-]/g, "-")}`; }

// A labelled input for `param`; `base` is what the server would use if the field is left alone
// (the preset's value, else the schema default), `value` what the form starts with.
export function schemaField(param, prop, root, { base, value, fixedByPreset = false }) {
  const kind = kindOf(prop, root);
  const id = fieldId(param);
  const name = param.split(".").pop();
  const start = value === undefined ? base : value;
  let input;
  if (kind.type === "boolean") {
    input = h("input", { id, type: "checkbox", checked: Boolean(start) });
  } else if (kind.type === "enum") {
    input = h("select", { id },
      ...(kind.nullable ? [h("option", { value: "__null__", text: "(none)" })] : []),
      ...kind.options.map((o) => h("option", { value: JSON.stringify(o), text: String(o) })));
    input.value = start === null || start === undefined ? "__null__" : JSON.stringify(start);
  } else {
    const text = start === null || start === undefined ? "" : kind.type === "json" ? JSON.stringify(start) : String(start);
    input = h("input", { id, type: "text", value: text, spellcheck: "false", autocomplete: "off",
      inputmode: kind.type === "integer" ? "numeric" : kind.type === "number" ? "decimal" : undefined,
      placeholder: kind.nullable ? "(none)" : undefined });
  }
  const desc = deref(prop, root).description || prop.description;
  const hasDefault = "default" in prop || "default" in deref(prop, root);
  const help = h("span", { class: "help" }, desc ? `${desc} ` : "",
    hasDefault ? h("span", { class: "muted", text: `(default ${fmtValue(prop.default ?? deref(prop, root).default)})` }) : "(required)");
  const error = h("span", { class: "field-error", role: "alert" });
  const wrap = h("div", { class: `field${fixedByPreset ? " fixed" : ""}`, dataset: { param } },
    h("label", { for: id }, name, fixedByPreset ? h("span", { class: "tag", text: "preset" }) : null),
    input, help, error);
  input.setAttribute("aria-describedby", `${id}-err`);
  error.id = `${id}-err`;

  // The value as JSON (what would be sent). Text that does not parse is sent as typed: the server's
  // error then names this field.
  wrap.read = () => {
    if (kind.type === "boolean") return input.checked;
    if (kind.type === "enum") return input.value === "__null__" ? null : JSON.parse(input.value);
    const text = input.value.trim();
    if (text === "") return kind.nullable ? null : base;
    if (kind.type === "integer" || kind.type === "number") return Number.isFinite(Number(text)) ? Number(text) : text;
    if (kind.type === "json") { try { return JSON.parse(text); } catch { return text; } }
    return input.value;
  };
  wrap.changed = () => !same(wrap.read(), base);
  wrap.param = param;
  return wrap;
}

// Put the server's errors next to their inputs: exact path first, then the nearest enclosing field.
export function showErrors(form, details, fallback) {
  clearErrors(form);
  const unplaced = [];
  let first = null;
  for (const { param, message } of details) {
    let target = null;
    for (let p = param || ""; p && !target; p = p.includes(".") ? p.slice(0, p.lastIndexOf(".")) : "") {
      target = form.querySelector(`[data-param="${CSS.escape(p)}"]`);
    }
    if (!target) { unplaced.push(param ? `${param}: ${message}` : message); continue; }
    target.classList.add("invalid");
    const slot = target.querySelector(":scope > .field-error") || target.querySelector(".field-error");
    if (slot) slot.textContent = message;
    const input = target.querySelector("input, select, textarea");
    if (input) input.setAttribute("aria-invalid", "true");
    if (!first) first = input || target;
  }
  fallback.replaceChildren(...unplaced.map((m) => h("p", { class: "error", role: "alert", text: m })));
  if (first && first.focus) first.focus();
}

export function clearErrors(form) {
  for (const node of form.querySelectorAll(".invalid")) node.classList.remove("invalid");
  for (const node of form.querySelectorAll(".field-error")) node.textContent = "";
  for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

"""Whole training runs through `python -m engine.train` on the speed workloads, per model and precision mode.

Workloads: GRPO with 4 prompts x 4 completions of up to 32 tokens, one generation per optimizer step, with
beta 0.04 (`grpo`) and beta 0 (`grpo_beta0`); SFT with batches of 8 chat rows (`sft`); DPO with batches of
4 pairs (`dpo`). Precision modes: every `config.precision` this machine runs (float32, bf16-autocast,
bf16-pure; fp16-autocast only with CUDA).

For each run: seconds per optimizer step (the median over the steps after the first), loss tokens per
second (SFT: targets; DPO: chosen + rejected targets; GRPO: completion tokens), completions per second
(GRPO), the share of the step spent generating (`time/generation`), the decoder token positions of the
log-prob forwards per step (GRPO, `train/decoder_tokens`), the run's peak RSS (the child's rusage) and the
median seconds of each phase (`time/*`).

`--quick` runs fewer steps (for `make bench`); without it the step counts are those of docs/benchmarks.md.
Run: python -m bench.speed_runs [--quick] [--models tiny:llama,bundled:smollm2-135m-instruct]
                                [--runs grpo,grpo_beta0,sft,dpo] [--precisions float32,bf16-pure]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from engine.process import die_with_parent

MODELS = ("tiny:llama", "bundled:smollm2-135m-instruct")
GRPO = {
    "algorithm": "grpo",
    "dataset": {"builtin": "arithmetic", "num_rows": 200},
    "reward_funcs": [{"name": "accuracy"}],
    "config": {
        "per_device_train_batch_size": 16,
        "num_generations": 4,
        "max_completion_length": 32,
        "learning_rate": 1e-5,
        "beta": 0.04,
        "save_steps": 1000,
    },
}
SPECS = {
    "grpo": GRPO,
    "grpo_beta0": {**GRPO, "config": {**GRPO["config"], "beta": 0.0}},
    "sft": {
        "algorithm": "sft",
        "dataset": {"builtin": "chat", "num_rows": 256},
        "config": {"per_device_train_batch_size": 8, "learning_rate": 1e-5, "save_steps": 1000},
    },
    "dpo": {
        "algorithm": "dpo",
        "dataset": {"builtin": "preferences", "num_rows": 256},
        "config": {"per_device_train_batch_size": 4, "learning_rate": 1e-6, "save_steps": 1000},
    },
}
STEPS = {"full": {"grpo": 6, "sft": 12, "dpo": 12}, "quick": {"grpo": 3, "sft": 4, "dpo": 4}}


def available_precisions() -> list[str]:
    """The precision modes this machine trains in: fp16 with loss scaling needs CUDA."""
    import torch

    modes = ["float32", "bf16-autocast", "bf16-pure"]
    return [*modes, "fp16-autocast"] if torch.cuda.is_available() else modes


def job(name: str, model: str, precision: str, steps: int) -> dict:
    spec = {**SPECS[name], "model": model}
    spec["config"] = {**spec["config"], "max_steps": steps, "precision": precision}
    if precision == "fp16-autocast":
        spec["hardware"] = {"accelerator": "gpu", "gpus": 1}
    return spec


def run(name: str, model: str, precision: str, quick: bool = False) -> dict:
    steps = STEPS["quick" if quick else "full"][name.split("_")[0]]
    spec = job(name, model, precision, steps)
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        out_path = Path(tmp) / "events.jsonl"
        with out_path.open("w") as out, open(os.devnull, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "engine.train", "--spec", str(spec_path), "--out", tmp],
                stdout=out,
                stderr=err,
                preexec_fn=die_with_parent,  # a stopped benchmark leaves no run behind
            )
            _, status, usage = os.wait4(proc.pid, 0)
        events = [json.loads(line) for line in out_path.read_text().splitlines() if line.startswith("{")]
    row: dict = {"run": name, "model": model, "precision": precision}
    if os.waitstatus_to_exitcode(status) != 0:
        errors = [e.get("message") for e in events if e["type"] == "error"]
        return {**row, "error": errors[-1] if errors else f"exit {status}"}
    metrics = [e["metrics"] for e in events if e["type"] == "metrics"]
    progress = [e["ts"] for e in events if e["type"] == "progress"]
    step_s = [b - a for a, b in zip(progress, progress[1:], strict=False)]  # the first step is left out
    s_step = statistics.median(step_s) if step_s else float("nan")
    later = metrics[1:] or metrics

    def median(key: str) -> float:
        return statistics.median(m.get(key, 0.0) for m in later)

    completions = SPECS[name]["config"]["per_device_train_batch_size"]
    if name.startswith("grpo"):
        tokens = completions * median("rollout/completion_length_mean")
    else:
        tokens = median("train/num_tokens")
    row.update(
        steps=len(progress),
        s_per_step=round(s_step, 3),
        tokens_per_s=round(tokens / s_step, 1) if tokens else None,
        peak_rss_mb=round(usage.ru_maxrss / 1024),
    )
    if name.startswith("grpo"):
        row.update(
            completions_per_s=round(completions / s_step, 2),
            generation_share=round(median("time/generation") / s_step, 2),
            decoder_tokens=round(median("train/decoder_tokens")),
        )
    row["phases_s"] = {k[5:]: round(median(k), 3) for k in later[0] if k.startswith("time/")}
    return row


COLUMNS = ("run", "model", "precision", "s_per_step", "tokens_per_s", "completions_per_s", "generation_share")


def table(rows: list[dict]) -> list[str]:
    """The rows as a Markdown table (the format of docs/benchmarks.md)."""
    head = [*COLUMNS, "peak_rss_mb", "phases_s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        if "error" in r:
            cells = [str(r[c]) for c in COLUMNS[:3]] + [f"error: {r['error']}"] + [""] * (len(head) - 4)
        else:
            phases = ", ".join(f"{k} {v}" for k, v in r["phases_s"].items())
            cells = [("" if r.get(c) is None else str(r[c])) for c in (*COLUMNS, "peak_rss_mb")] + [phases]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser()
    p.add_argument("--models", "--model", default=",".join(MODELS))
    p.add_argument("--runs", default="grpo,grpo_beta0,sft,dpo")
    p.add_argument("--precisions", default=None, help="default: every mode this machine runs")
    p.add_argument("--quick", action="store_true", help="fewer steps per run")
    args = p.parse_args(argv)
    precisions = args.precisions.split(",") if args.precisions else available_precisions()
    rows = []
    for model in args.models.split(","):
        for name in args.runs.split(","):
            for precision in precisions:
                rows.append(run(name, model, precision, args.quick))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # progress while the rest runs
    return rows


if __name__ == "__main__":
    print("\n".join(table(main())))

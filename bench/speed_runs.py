"""Whole training runs through `python -m engine.train` on the speed workloads, per model and precision.

Workloads: GRPO with 4 prompts x 4 completions of up to 32 tokens, one generation per optimizer step, with
beta 0.04 and with beta 0 (`grpo_beta0`); SFT with batches of 8 chat rows; DPO with batches of 4 pairs.
Precisions: `fp32`, and `bf16` (bf16 autocast over float32 weights). For each run: seconds per optimizer
step (the median over the steps after the first), tokens/s, completions/s (GRPO), the share of the step
spent generating (from `time/generation`) and the run's peak RSS (from the child's rusage).
Run: python -m bench.speed_runs [--model bundled:smollm2-135m-instruct] [--runs grpo,sft] [--precisions fp32]
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

GRPO = {
    "algorithm": "grpo",
    "dataset": {"builtin": "arithmetic", "num_rows": 200},
    "reward_funcs": [{"name": "accuracy"}],
    "config": {
        "max_steps": 6,
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
        "config": {
            "max_steps": 12,
            "per_device_train_batch_size": 8,
            "learning_rate": 1e-5,
            "save_steps": 1000,
        },
    },
    "dpo": {
        "algorithm": "dpo",
        "dataset": {"builtin": "preferences", "num_rows": 256},
        "config": {
            "max_steps": 12,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-6,
            "save_steps": 1000,
        },
    },
}
PRECISIONS = {"fp32": {"bf16": False}, "bf16": {"bf16": True}}


def run(name: str, model: str, precision: str) -> dict:
    spec = {**SPECS[name], "model": model}
    spec["config"] = {**spec["config"], **PRECISIONS[precision]}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        out_path = Path(tmp) / "events.jsonl"
        with out_path.open("w") as out, open(os.devnull, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "engine.train", "--spec", str(spec_path), "--out", tmp],
                stdout=out,
                stderr=err,
            )
            _, status, usage = os.wait4(proc.pid, 0)
        events = [json.loads(line) for line in out_path.read_text().splitlines() if line.startswith("{")]
    row = {"run": name, "model": model, "precision": precision}
    if os.waitstatus_to_exitcode(status) != 0:
        errors = [e.get("message") for e in events if e["type"] == "error"]
        return {**row, "error": errors[-1:] or f"exit {status}"}
    metrics = [e["metrics"] for e in events if e["type"] == "metrics"]
    progress = [e["ts"] for e in events if e["type"] == "progress"]
    step_s = [b - a for a, b in zip(progress, progress[1:], strict=False)]  # the first step is left out
    s_step = statistics.median(step_s) if step_s else float("nan")
    later = metrics[1:] or metrics
    tokens = statistics.median(m.get("train/num_tokens", 0.0) for m in later)
    row.update(
        steps=len(progress),
        s_per_step=round(s_step, 3),
        tokens_per_s=round(tokens / s_step, 1) if tokens else None,
        peak_rss_mb=round(usage.ru_maxrss / 1024),
    )
    if name.startswith("grpo"):
        completions = SPECS[name]["config"]["per_device_train_batch_size"]
        generation = statistics.median(m.get("time/generation", 0.0) for m in later)
        row.update(
            completions_per_s=round(completions / s_step, 2), generation_share=round(generation / s_step, 2)
        )
    phases = {
        k[5:]: round(statistics.median(m.get(k, 0.0) for m in later), 3)
        for k in later[0]
        if k.startswith("time/")
    }
    row["phases_s"] = phases
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny:llama")
    p.add_argument("--runs", default="grpo,grpo_beta0,sft,dpo")
    p.add_argument("--precisions", default="fp32,bf16")
    args = p.parse_args(argv)
    return [
        run(name, args.model, precision)
        for name in args.runs.split(",")
        for precision in args.precisions.split(",")
    ]


if __name__ == "__main__":
    for row in main():
        print(row)

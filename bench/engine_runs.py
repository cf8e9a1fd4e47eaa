"""Whole training runs through `python -m engine.train`: wall time, optimizer steps/s and tokens/s for SFT,
DPO and GRPO on the tiny model (or another model with --model). Run: python -m bench.engine_runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPECS = {
    "sft": {
        "algorithm": "sft",
        "dataset": {"builtin": "chat", "num_rows": 256},
        "config": {
            "max_steps": 20,
            "per_device_train_batch_size": 16,
            "learning_rate": 1e-3,
            "save_steps": 1000,
        },
    },
    "dpo": {
        "algorithm": "dpo",
        "dataset": {"builtin": "preferences", "num_rows": 256},
        "config": {
            "max_steps": 20,
            "per_device_train_batch_size": 8,
            "learning_rate": 1e-4,
            "save_steps": 1000,
        },
    },
    "grpo": {
        "algorithm": "grpo",
        "dataset": {"builtin": "arithmetic", "num_rows": 256},
        "config": {
            "max_steps": 10,
            "per_device_train_batch_size": 16,
            "num_generations": 4,
            "max_completion_length": 8,
            "learning_rate": 1e-4,
            "beta": 0.0,
            "save_steps": 1000,
        },
    },
}


def run(name: str, model: str) -> dict:
    spec = {**SPECS[name], "model": model}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "engine.train", "--spec", str(spec_path), "--out", tmp],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0:
        return {"run": name, "error": out.stderr.strip().splitlines()[-1:]}
    metrics = [e for e in events if e["type"] == "metrics"]
    progress = [e for e in events if e["type"] == "progress"]
    steps = progress[-1]["step"] if progress else 0
    train_time = progress[-1]["ts"] - progress[0]["ts"] if len(progress) > 1 else float("nan")
    tokens = sum(m["metrics"].get("train/num_tokens", 0.0) for m in metrics)
    return {
        "run": name,
        "model": model,
        "steps": steps,
        "wall_s": round(wall, 1),
        "s_per_step": round(train_time / max(1, steps - 1), 3),
        "tokens_per_s": round(tokens / wall) if tokens else None,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny:llama")
    p.add_argument("--runs", default="sft,dpo,grpo")
    args = p.parse_args(argv)
    return [run(name, args.model) for name in args.runs.split(",")]


if __name__ == "__main__":
    for row in main():
        print(row)

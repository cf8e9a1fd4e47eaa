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


def run(name: str, model: str, processes: int = 1, zero: int | None = None, bf16: bool = False) -> dict:
    """One run; with several processes each gets 1/processes of the batch (the same global batch)."""
    from worker.runner import engine_command

    spec = {**SPECS[name], "model": model}
    config = dict(spec["config"])
    config["per_device_train_batch_size"] = max(1, config["per_device_train_batch_size"] // processes)
    spec["config"] = config
    if processes > 1 or zero is not None:
        dist: dict = {"num_processes": processes}
        if zero is not None:
            dist.update(distributed_type="DEEPSPEED", deepspeed_config={"zero_stage": zero})
        if bf16:
            dist["mixed_precision"] = "bf16"
        spec["distributed"] = dist
    if bf16:  # a GPU run
        spec["hardware"] = {"accelerator": "gpu", "gpus": processes}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        start = time.perf_counter()
        out = subprocess.run(
            engine_command(sys.executable, spec_path, Path(tmp), resume=False, processes=processes),
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
        "processes": processes,
        "steps": steps,
        "wall_s": round(wall, 1),
        "s_per_step": round(train_time / max(1, steps - 1), 3),
        "tokens_per_s": round(tokens / wall) if tokens else None,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny:llama")
    p.add_argument("--runs", default="sft,dpo,grpo")
    p.add_argument("--processes", default="1", help="comma-separated process counts, e.g. 1,2")
    p.add_argument("--zero", type=int, default=None, help="DeepSpeed ZeRO stage (default: no DeepSpeed)")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision on GPUs")
    args = p.parse_args(argv)
    counts = [int(n) for n in args.processes.split(",")]
    return [run(name, args.model, n, args.zero, args.bf16) for name in args.runs.split(",") for n in counts]


if __name__ == "__main__":
    for row in main():
        print(row)

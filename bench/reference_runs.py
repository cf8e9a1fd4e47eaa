"""The speed workloads of `bench.speed_runs` on the reference trainers (TRL's SFTTrainer, DPOTrainer and
GRPOTrainer), side by side with papertrain: the same model, rows, batch sizes, lengths, learning rates,
beta and precision, one process per run, the two trainers interleaved so that load on the machine hits both.

Needs TRL (`pip install -e '.[bench]'`); without it the module says so and exits. Prints a Markdown table
of seconds per optimizer step (median after the first step), completions per second (GRPO), peak RSS, and
the speed-up of papertrain over the reference (reference s/step / papertrain s/step).
Run: python -m bench.reference_runs [--quick] [--models tiny:llama] [--runs grpo,sft] [--precisions float32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import speed_runs
from engine.process import die_with_parent


def _model_folder(model_ref: str, folder: str) -> str:
    """A folder the reference trainers load the policy (and build their reference model) from."""
    from engine.models import build_tiny_model, build_tiny_tokenizer, resolve_model_path

    if not model_ref.startswith("tiny:"):
        return resolve_model_path(model_ref)
    build_tiny_model(model_ref).save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    return folder


def _accuracy(completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    from engine.rewards.parsing import is_correct

    return [float(bool(is_correct(c, a))) for c, a in zip(completions, answer, strict=True)]


class _StepTimes:
    """A TrainerCallback that records the wall time at the end of every optimizer step."""

    def __new__(cls) -> Any:
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def __init__(self) -> None:
                self.times: list[float] = []

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                self.times.append(time.perf_counter())

        return Callback()


def child(name: str, model_ref: str, precision: str, steps: int, out: str) -> None:
    """One reference run in this process; writes the step end times to `out` (JSON)."""
    import trl
    from datasets import Dataset

    from engine.data.builtin import builtin_rows

    spec = speed_runs.SPECS[name]
    cfg, data = spec["config"], spec["dataset"]
    from engine.models import load_tokenizer

    model = _model_folder(model_ref, tempfile.mkdtemp())
    tok = load_tokenizer(model_ref)
    rows = builtin_rows(data["builtin"], data["num_rows"])
    common = {
        "output_dir": tempfile.mkdtemp(),
        "max_steps": steps,
        "per_device_train_batch_size": cfg["per_device_train_batch_size"],
        "learning_rate": cfg["learning_rate"],
        "bf16": precision != "float32",
        "use_cpu": precision != "fp16-autocast",
        "fp16": precision == "fp16-autocast",
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "seed": 42,
        "model_init_kwargs": {"dtype": "bfloat16" if precision == "bf16-pure" else "float32"},
    }
    timer = _StepTimes()
    dataset = Dataset.from_list(rows)
    if spec["algorithm"] == "sft":
        trainer: Any = trl.SFTTrainer(
            model=model, args=trl.SFTConfig(**common), train_dataset=dataset, processing_class=tok
        )
    elif spec["algorithm"] == "dpo":
        trainer = trl.DPOTrainer(
            model=model, args=trl.DPOConfig(**common), train_dataset=dataset, processing_class=tok
        )
    else:
        args = trl.GRPOConfig(
            **common,
            num_generations=cfg["num_generations"],
            max_completion_length=cfg["max_completion_length"],
            beta=cfg["beta"],
        )
        trainer = trl.GRPOTrainer(
            model=model, reward_funcs=_accuracy, args=args, train_dataset=dataset, processing_class=tok
        )
    trainer.add_callback(timer)
    trainer.train()
    Path(out).write_text(json.dumps(timer.times))


def run(name: str, model: str, precision: str, quick: bool = False) -> dict:
    steps = speed_runs.STEPS["quick" if quick else "full"][name.split("_")[0]]
    row: dict = {"run": name, "model": model, "precision": precision, "trainer": "reference"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        argv = ["--child", name, model, precision, str(steps), str(out)]
        with open(Path(tmp) / "log", "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.reference_runs", *argv],
                stdout=log,
                stderr=log,
                preexec_fn=die_with_parent,  # a stopped benchmark leaves no run behind
            )
            _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            tail = (Path(tmp) / "log").read_text().strip().splitlines()[-1:]
            return {**row, "error": tail[0] if tail else f"exit {status}"}
        times = json.loads(out.read_text())
    step_s = [b - a for a, b in zip(times, times[1:], strict=False)]
    s_step = statistics.median(step_s) if step_s else float("nan")
    row.update(steps=len(times), s_per_step=round(s_step, 3), peak_rss_mb=round(usage.ru_maxrss / 1024))
    if name.startswith("grpo"):
        row["completions_per_s"] = round(
            speed_runs.SPECS[name]["config"]["per_device_train_batch_size"] / s_step, 2
        )
    return row


def table(pairs: list[tuple[dict, dict]]) -> list[str]:
    head = ["run", "model", "precision", "papertrain s/step", "reference s/step", "speed-up",
            "papertrain peak RSS MB", "reference peak RSS MB"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for ours, ref in pairs:
        bad = ours.get("error") or ref.get("error")
        ratio = "" if bad else f"{ref['s_per_step'] / ours['s_per_step']:.2f}x"
        cells = [ours["run"], ours["model"], ours["precision"], str(ours.get("s_per_step", ours.get("error"))),
                 str(ref.get("s_per_step", ref.get("error"))), ratio, str(ours.get("peak_rss_mb", "")),
                 str(ref.get("peak_rss_mb", ""))]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> list[tuple[dict, dict]]:
    p = argparse.ArgumentParser()
    p.add_argument("--models", "--model", default=",".join(speed_runs.MODELS))
    p.add_argument("--runs", default="grpo,grpo_beta0,sft,dpo")
    p.add_argument("--precisions", default="float32,bf16-pure")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    pairs = []
    for model in args.models.split(","):
        for name in args.runs.split(","):
            for precision in args.precisions.split(","):
                ours = speed_runs.run(name, model, precision, args.quick)
                ref = run(name, model, precision, args.quick)
                pairs.append((ours, ref))
                print(json.dumps([ours, ref]), file=sys.stderr, flush=True)
    return pairs


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, model, precision, steps, out = sys.argv[2:7]
        child(name, model, precision, int(steps), out)
    else:
        try:
            import trl  # noqa: F401
        except ImportError:
            sys.exit("bench.reference_runs needs TRL: pip install -e '.[bench]'")
        print("\n".join(table(main())))

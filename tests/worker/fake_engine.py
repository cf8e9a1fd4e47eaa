"""A stand-in for `python -m engine.train` that speaks the engine's event stream (tests only).

Invoked exactly like the engine: `fake_engine.py -m engine.train --spec SPEC --out DIR [--resume]`, or with
torchrun's arguments in front (one process stands for all of them).
The job's `name` picks the behaviour: `fake:ok` (default), `fake:crash`, `fake:hang` (runs until
SIGTERM, then exits 143), `fake:stubborn` (ignores SIGTERM, needs SIGKILL), `fake:slow` (ok, but
one second per step; stops between steps on SIGTERM). Losses are `2.0 / step` so tests can compute
what they expect.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

STEPS = 3
CHECKPOINT_STEP = 2


def emit(type_: str, **fields) -> None:
    sys.stdout.write(json.dumps({"type": type_, "ts": time.time(), **fields}) + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-m", dest="module", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true")
    args, _ = parser.parse_known_args()  # also under torchrun's arguments (`-m torch.distributed.run ...`)
    spec = json.loads(Path(args.spec).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "argv.json").write_text(json.dumps(sys.argv[1:]))
    (out / "pid").write_text(str(os.getpid()))
    mode = (spec.get("name") or "fake:ok").removeprefix("fake:")

    stopping = {"flag": False}
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stopping.update(flag=True))

    print("fake engine starting", file=sys.stderr, flush=True)
    emit("log", level="info", message=f"fake engine mode={mode} resume={args.resume}")
    if mode == "crash":
        emit("progress", step=1, total_steps=STEPS, epoch=0.3)
        for i in range(60):
            print(f"stderr line {i}", file=sys.stderr, flush=True)
        print("RuntimeError: boom", file=sys.stderr, flush=True)
        emit(
            "error",
            message="RuntimeError: boom",
            traceback="Traceback (most recent call last):\nRuntimeError: boom",
        )
        return 3
    if mode in ("hang", "stubborn"):
        step = 0
        while True:
            if stopping["flag"]:
                emit("log", level="warning", message="stopping on SIGTERM")
                return 143
            step += 1
            emit("progress", step=step, total_steps=10**6, epoch=0.0)
            time.sleep(0.2)

    start = 1
    if args.resume:
        ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if ckpts:
            start = int(ckpts[-1].name.split("-")[1]) + 1
            emit("log", level="info", message=f"resumed from {ckpts[-1]}")
    for step in range(start, STEPS + 1):
        if mode == "slow":
            time.sleep(1.0)
        if stopping["flag"]:
            emit("log", level="warning", message=f"stopping on SIGTERM before step {step}")
            return 143
        emit("progress", step=step, total_steps=STEPS, epoch=step / STEPS)
        emit(
            "metrics",
            step=step,
            metrics={"train/loss": 2.0 / step, "train/learning_rate": 1e-3, "train/nan": None},
        )
        if step == CHECKPOINT_STEP:
            ckpt = out / f"checkpoint-{step}"
            ckpt.mkdir(exist_ok=True)
            (ckpt / "weights.txt").write_text(f"step {step}\n")
            emit("checkpoint", step=step, path=str(ckpt))
    emit("samples", step=STEPS, samples=[{"prompt": "What is 7+5?", "completion": "12", "reward": 1.0}])
    final = out / "final"
    final.mkdir(exist_ok=True)
    (final / "weights.txt").write_text("final\n")
    emit("done", step=STEPS, final_path=str(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())

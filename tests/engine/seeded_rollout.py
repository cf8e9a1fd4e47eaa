"""`python tests/engine/seeded_rollout.py --spec S --out D`: `engine.train` with each completion sampled
under a seed derived from its prompt's row and its index in the group, so a generation does not depend on
which process samples it or beside which other completions. Tests run it with and without torchrun to compare 1 and 2
processes on the same global batch of an online algorithm. Each rank also appends the advantages of its rows
(one JSON list per generation) to DIR/advantages-<rank>.jsonl."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from engine import distributed, train  # noqa: E402
from engine.algorithms import grpo  # noqa: E402
from engine.rollout.buffer import Sampled  # noqa: E402

_sample = grpo.GRPOTrainer._sample


def _seeded(self: grpo.GRPOTrainer, slots: list[tuple[int, int, int]]) -> Sampled:
    state = torch.get_rng_state()
    parts = []
    for row, j, number in slots:
        torch.manual_seed(10_000 + 1_000 * row + j)
        parts.append(_sample(self, [(row, j, number)]))
    torch.set_rng_state(state)
    return Sampled.concat(parts, self.pad_id)


_score = grpo.GRPOTrainer._score


def _recorded(self: grpo.GRPOTrainer, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
    rollout = _score(self, *args, **kwargs)
    path = self.ctx.out_dir / f"advantages-{distributed.current().rank}.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(rollout.advantages.tolist()) + "\n")
    return rollout


grpo.GRPOTrainer._sample = _seeded
grpo.GRPOTrainer._score = _recorded

if __name__ == "__main__":
    train.exit_process(train.main())

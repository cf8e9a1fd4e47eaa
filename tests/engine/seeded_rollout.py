"""`python tests/engine/seeded_rollout.py --spec S --out D`: `engine.train` with each prompt's completions
sampled under a seed derived from the prompt's row, so a generation does not depend on which process
samples it or beside which other prompts. Tests run it with and without torchrun to compare 1 and 2
processes on the same global batch of an online algorithm."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from engine import train  # noqa: E402
from engine.algorithms import grpo  # noqa: E402
from engine.rollout.buffer import Sampled  # noqa: E402

_sample = grpo.GRPOTrainer._sample


def _seeded(self: grpo.GRPOTrainer, prompt_rows: list[int]) -> Sampled:
    state = torch.get_rng_state()
    parts = []
    for row in prompt_rows:
        torch.manual_seed(10_000 + row)
        parts.append(_sample(self, [row]))
    torch.set_rng_state(state)
    return Sampled.concat(parts, self.pad_id)


grpo.GRPOTrainer._sample = _seeded

if __name__ == "__main__":
    sys.exit(train.main())

"""Training loops, one module per algorithm family, each exposing `train(spec, ctx) -> Path` (DIR/final).

    from engine.algorithms import get_algorithm
    final_dir = get_algorithm("sft").train(spec, ctx)

Modules are imported on demand, so loading one loop never imports another's dependencies.
"""

from __future__ import annotations

import importlib
from types import ModuleType

ALGORITHM_MODULES = {
    "sft": "engine.algorithms.sft",
    "dpo": "engine.algorithms.dpo",
    "kto": "engine.algorithms.kto",
    "bco": "engine.algorithms.bco",
    "cpo": "engine.algorithms.cpo",
    "reward": "engine.algorithms.reward",
    "grpo": "engine.algorithms.grpo",
    "gfpo": "engine.algorithms.grpo",
    "papo": "engine.algorithms.papo",
    "rloo": "engine.algorithms.rloo",
    "gkd": "engine.algorithms.distill",
    "gold": "engine.algorithms.distill",
    "minillm": "engine.algorithms.minillm",
}


def get_algorithm(name: str) -> ModuleType:
    """The loop module for `name` (it has a `train(spec, ctx)` function)."""
    if name not in ALGORITHM_MODULES:
        raise ValueError(
            f"algorithm {name!r} has no training loop in this engine yet; runnable: {sorted(ALGORITHM_MODULES)}"
        )
    return importlib.import_module(ALGORITHM_MODULES[name])

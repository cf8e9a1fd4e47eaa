"""Training loops, one module per algorithm family, each exposing `train(spec, ctx) -> Path` (DIR/final).

    from engine.algorithms import get_algorithm
    final_dir = get_algorithm("sft").train(spec, ctx)

Modules are imported on demand, so loading one loop never imports another's dependencies.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from engine.spec.job import JOB_CLASSES

# algorithm -> the module of its loop, as each job class names it
ALGORITHM_MODULES = {
    name: f"engine.algorithms.{cls.loop}" for name, cls in JOB_CLASSES.items() if cls.loop is not None
}


def get_algorithm(name: str) -> ModuleType:
    """The loop module for `name` (it has a `train(spec, ctx)` function)."""
    if name not in ALGORITHM_MODULES:
        raise ValueError(
            f"algorithm {name!r} has no training loop in this engine yet; runnable: {sorted(ALGORITHM_MODULES)}"
        )
    return importlib.import_module(ALGORITHM_MODULES[name])

"""Rollout backends behind one interface (`RolloutBackend.generate`): `hf` (transformers) and `vllm` (GPU).

    from engine.rollout import SamplingParams, make_backend
    backend = make_backend("hf", model=policy)
    out = backend.generate(prompt_ids, num_generations=4, params=SamplingParams(32, (eos,), pad))

The vLLM backend is imported only when asked for, so this package imports without vLLM installed.
"""

from __future__ import annotations

from typing import Any

from engine.rollout.base import RolloutBackend, RolloutOutput, SamplingParams, completion_mask_and_truncation
from engine.rollout.hf import HFRollout

BACKENDS = ("hf", "vllm")


def make_backend(name: str, **kwargs: Any) -> RolloutBackend:
    """`hf`: `HFRollout(model=..., device=...)`; `vllm`: `VLLMRollout(model_path=..., ...)`."""
    if name == "hf":
        return HFRollout(**kwargs)
    if name == "vllm":
        from engine.rollout.vllm import VLLMRollout

        return VLLMRollout(**kwargs)
    raise KeyError(f"unknown rollout backend {name!r}; known: {list(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "HFRollout",
    "RolloutBackend",
    "RolloutOutput",
    "SamplingParams",
    "completion_mask_and_truncation",
    "make_backend",
]

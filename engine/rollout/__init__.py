"""Rollout backends behind one interface (`RolloutBackend.generate`): `hf` (transformers), `vllm` (in-process,
GPU) and `vllm-server` (a vLLM engine in its own process, CPU or GPU, over HTTP).

    from engine.rollout import SamplingParams, make_backend
    backend = make_backend("hf", model=policy)
    out = backend.generate(prompt_ids, num_generations=4, params=SamplingParams(32, (eos,), pad))

The vLLM backend is imported only when asked for, so this package imports without vLLM installed.
"""

from __future__ import annotations

from typing import Any

from engine.rollout.base import RolloutBackend, RolloutOutput, SamplingParams, completion_mask_and_truncation
from engine.rollout.hf import HFRollout

BACKENDS = ("hf", "vllm", "vllm-server")


def make_backend(name: str, **kwargs: Any) -> RolloutBackend:
    """`hf`: `HFRollout(model=..., device=...)`; `vllm`: `VLLMRollout(model_path=..., ...)` (in-process, GPU);
    `vllm-server`: `VLLMServerRollout(model_dir=..., opts=ServerOptions(...), ...)` (a vLLM server process)."""
    if name == "hf":
        return HFRollout(**kwargs)
    if name == "vllm":
        from engine.rollout.vllm import VLLMRollout

        return VLLMRollout(**kwargs)
    if name == "vllm-server":
        from engine.rollout.vllm_server import VLLMServerRollout

        return VLLMServerRollout(**kwargs)
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

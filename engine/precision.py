"""What each precision mode (`engine.spec.precision`) means in torch: the dtype the forward computes in, the
dtype trained weights (and so their gradients and optimizer states) are held in, whether the forward runs
under autocast and whether the loss is scaled.

    compute_dtype("bf16-pure") -> torch.bfloat16    weight_dtype("bf16-autocast") -> torch.float32
"""

from __future__ import annotations

import torch

_COMPUTE = {
    "float32": torch.float32,
    "bf16-autocast": torch.bfloat16,
    "bf16-pure": torch.bfloat16,
    "fp16-autocast": torch.float16,
}
PURE = frozenset({"float32", "bf16-pure"})  # weights already in the compute dtype: no autocast


def _known(mode: str) -> str:
    if mode not in _COMPUTE:
        raise ValueError(f"unknown precision {mode!r}; known: {sorted(_COMPUTE)}")
    return mode


def compute_dtype(mode: str) -> torch.dtype:
    """The dtype of the forward; also the dtype frozen models (references, teachers, LoRA bases) are held in."""
    return _COMPUTE[_known(mode)]


def weight_dtype(mode: str) -> torch.dtype:
    """The dtype of trained weights, their gradients and the optimizer's state."""
    return _COMPUTE[mode] if _known(mode) in PURE else torch.float32


def uses_autocast(mode: str) -> bool:
    return _known(mode) not in PURE


def describe(mode: str) -> str:
    """One line for the job's log."""
    weights, compute = weight_dtype(mode), compute_dtype(mode)
    text = f"precision={mode} (weights, gradients and optimizer states in {str(weights)[6:]}"
    text += f", forward in {str(compute)[6:]}" + (" under autocast" if uses_autocast(mode) else "")
    return text + (", dynamic loss scaling)" if compute == torch.float16 else ")")

"""Helpers shared by the client tests (a module of its own: `conftest` names clash across test folders)."""

from __future__ import annotations


def tiny_sft(steps: int = 3, **config: object) -> dict:
    """A tiny:llama SFT job that trains in seconds on the CPU."""
    return {
        "algorithm": "sft",
        "model": "tiny:llama",
        "dataset": {"builtin": "chat", "num_rows": 16},
        "config": {"max_steps": steps, "per_device_train_batch_size": 4, "save_steps": steps, **config},
    }

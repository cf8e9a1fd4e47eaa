"""What this worker's machine can run, as the worker announces it in the live-worker registry (`core.workers`).

Lives in the worker, not in core: finding CUDA devices imports torch, which the api never loads.
"""

from __future__ import annotations

import importlib.util
from typing import Any


def detect_capabilities() -> dict[str, Any]:
    """What this machine offers: CUDA devices, and whether deepspeed / vllm are importable."""
    gpus = 0
    if importlib.util.find_spec("torch") is not None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {
        "gpus": gpus,
        "deepspeed": importlib.util.find_spec("deepspeed") is not None,
        "vllm": importlib.util.find_spec("vllm") is not None,
    }

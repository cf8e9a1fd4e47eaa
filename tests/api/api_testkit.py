"""Constants shared by the API tests (a module of its own: `conftest` names clash across test folders)."""

from __future__ import annotations

from typing import Any

SFT_SPEC: dict[str, Any] = {
    "algorithm": "sft",
    "model": "tiny:llama",
    "dataset": {"builtin": "chat", "num_rows": 16},
    "config": {"max_steps": 3},
}

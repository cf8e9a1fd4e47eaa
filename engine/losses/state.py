"""Explicit state objects for the losses that keep running statistics (BCO's reward mean).

The loss functions stay pure: the loop owns the state, passes it in, and saves it with checkpoints
(`state_dict` / `load_state_dict`). Values stay tensors (no host sync).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class RunningMean:
    """Running mean with the parallel (Chan) update: n <- n + n_x, mu <- mu + (mean(x) - mu) * n_x / n.

    Starts at mu = 0 with n = 1e-24 (so the first update replaces mu by the batch mean), as TRL's
    `RunningMoments`.
    """

    mean: Tensor = field(default_factory=lambda: torch.tensor(0.0, dtype=torch.float64))
    count: Tensor = field(default_factory=lambda: torch.tensor(1e-24, dtype=torch.float64))

    def update(self, values: Tensor, count: float | None = None) -> Tensor:
        """Fold in `values` (detached). `count` = how many samples they stand for (default: numel).

        Returns the new mean, in the dtype and on the device of `values`.
        """
        values = values.detach()
        n_x = torch.as_tensor(float(values.numel()) if count is None else float(count), dtype=torch.float64)
        batch_mean = values.to(torch.float64).mean().to(self.mean.device)
        total = self.count + n_x.to(self.mean.device)
        self.mean = self.mean + (batch_mean - self.mean) * n_x.to(self.mean.device) / total
        self.count = total
        return self.mean.to(device=values.device, dtype=values.dtype)

    def value(self, like: Tensor) -> Tensor:
        """The current mean in the dtype and on the device of `like`."""
        return self.mean.to(device=like.device, dtype=like.dtype)

    def state_dict(self) -> dict[str, Tensor]:
        return {"mean": self.mean.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.mean = torch.as_tensor(state["mean"], dtype=torch.float64).clone()
        self.count = torch.as_tensor(state["count"], dtype=torch.float64).clone()

"""BEMA: bias-corrected exponential moving average of weights (arXiv 2508.00180).

    bema = BEMA(model.named_parameters() trainable subset as a dict, update_freq=400)
    ...after each optimizer step t (1-based): bema.step(t, current_params)
    averaged = bema.weights            # same keys / order as given; copy into an eval model to use

Operates on a list or dict of tensors; it never touches a model or trainer. Copies live on `device`.
Not here: saving (the loop saves `state_dict()` or the averaged weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

Params = Mapping[str, Tensor] | Iterable[Tensor]


def _as_dict(params: Params) -> dict[str, Tensor]:
    if isinstance(params, Mapping):
        return dict(params)
    return {str(i): p for i, p in enumerate(params)}


class BEMA:
    """Bias-corrected EMA with TRL `BEMACallback` semantics and defaults.

    At step t (absolute optimizer step): t < update_after: nothing; t == update_after: theta0 and EMA
    are reset to the current weights; t > update_after and (t - update_after) % update_freq == 0:
        beta_t = max((lag + multiplier t)^-ema_power, min_ema_multiplier), alpha_t = (lag + multiplier t)^-bias_power
        EMA <- (1 - beta_t) EMA + beta_t theta_t;   BEMA = EMA + alpha_t (theta_t - theta0).
    theta0 and EMA start as the weights passed at construction. t is absolute (not t - update_after),
    as in the seed era.
    """

    def __init__(
        self,
        params: Params,
        update_freq: int = 400,
        ema_power: float = 0.5,
        bias_power: float = 0.2,
        lag: int = 10,
        update_after: int = 0,
        multiplier: float = 1.0,
        min_ema_multiplier: float = 0.0,
        device: str | torch.device = "cpu",
    ) -> None:
        if update_freq < 1:
            raise ValueError(f"update_freq must be >= 1, got {update_freq}")
        self.update_freq = update_freq
        self.ema_power = ema_power
        self.bias_power = bias_power
        self.lag = lag
        self.update_after = update_after
        self.multiplier = multiplier
        self.min_ema_multiplier = min_ema_multiplier
        self.device = torch.device(device)
        self._snapshot(_as_dict(params))

    def _copy(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: p.detach().to(self.device, copy=True) for k, p in params.items()}

    def _snapshot(self, params: dict[str, Tensor]) -> None:
        self.theta0 = self._copy(params)
        self.ema = self._copy(params)
        self.weights = self._copy(params)

    def should_update(self, step: int) -> bool:
        return step > self.update_after and (step - self.update_after) % self.update_freq == 0

    def coefficients(self, step: int) -> tuple[float, float]:
        """(beta_t, alpha_t) for absolute step t."""
        base = self.lag + self.multiplier * step
        beta = max(base ** (-self.ema_power), self.min_ema_multiplier)
        alpha = base ** (-self.bias_power)
        return beta, alpha

    @torch.no_grad()
    def step(self, step: int, params: Params) -> bool:
        """Feed the weights after optimizer step `step`; True when an averaging update ran."""
        if step < self.update_after:
            return False
        current = _as_dict(params)
        if current.keys() != self.ema.keys():
            raise ValueError("BEMA.step got different parameter names than at construction")
        if step == self.update_after:
            # restart the average here; the averaged weights change at the next update
            self.theta0 = self._copy(current)
            self.ema = self._copy(current)
            return False
        if not self.should_update(step):
            return False
        beta, alpha = self.coefficients(step)
        for k, p in current.items():
            theta = p.detach().to(self.device)
            self.ema[k].mul_(1 - beta).add_(theta, alpha=beta)
            self.weights[k] = self.ema[k] + alpha * (theta - self.theta0[k])
        return True

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        return {"theta0": self.theta0, "ema": self.ema, "weights": self.weights}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Tensor]]) -> None:
        self.theta0 = self._copy(dict(state["theta0"]))
        self.ema = self._copy(dict(state["ema"]))
        self.weights = self._copy(dict(state["weights"]))

"""One registry per loss family, keyed by the exact public name users type (`loss_type`).

    @register("dpo", "sigmoid")
    def sigmoid(...): ...
    get_loss("dpo", "sigmoid")        # the function; an unknown name raises and lists the known ones

Duplicates are rejected at import time. The registry holds functions only; it does not import
the modules that fill it (``engine.losses.__init__`` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from torch import Tensor

FAMILIES = ("policy", "dpo", "kto", "bco", "cpo", "reward", "sft", "distill")

F = TypeVar("F", bound="Callable[..., LossOutput]")

_REGISTRIES: dict[str, dict[str, Callable[..., LossOutput]]] = {family: {} for family in FAMILIES}


@dataclass(frozen=True)
class LossOutput:
    """What every loss returns: a scalar loss (with grad) and detached 0-d metric tensors.

    Metric keys are `namespace/name`. Unless a function says otherwise a metric is this call's
    contribution to the optimizer-step value (normalised by the same global count as the loss), so
    the training loop sums them over micro-batches and ranks, exactly like the loss.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class UnknownLossError(KeyError):
    """A name that no registry entry matches; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


def register(family: str, *names: str) -> Callable[[F], F]:
    """Decorator: register a function under one or more public names of `family`."""
    if family not in _REGISTRIES:
        raise ValueError(f"unknown loss family {family!r}; known: {list(FAMILIES)}")
    if not names:
        raise ValueError("register() needs at least one name")

    def decorate(fn: F) -> F:
        table = _REGISTRIES[family]
        for name in names:
            if name in table:
                raise ValueError(
                    f"duplicate {family} loss {name!r}: already registered by {table[name].__qualname__}"
                )
            table[name] = fn
        return fn

    return decorate


def get_loss(family: str, name: str) -> Callable[..., LossOutput]:
    """The function registered as `name` in `family`; raises `UnknownLossError` listing the known names."""
    if family not in _REGISTRIES:
        raise UnknownLossError(f"unknown loss family {family!r}; known: {list(FAMILIES)}")
    table = _REGISTRIES[family]
    try:
        return table[name]
    except KeyError:
        raise UnknownLossError(f"unknown {family} loss_type {name!r}; known: {sorted(table)}") from None


def registry_names(family: str) -> list[str]:
    """Sorted public names registered in `family`."""
    if family not in _REGISTRIES:
        raise UnknownLossError(f"unknown loss family {family!r}; known: {list(FAMILIES)}")
    return sorted(_REGISTRIES[family])

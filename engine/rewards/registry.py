"""The reward-function registry: spec name -> factory, and `build_reward_funcs` for a job's `reward_funcs`.

Every reward is a callable with a `name` attribute and the call contract

    reward(prompts, completions, completion_ids, **columns) -> list[float | None]

`prompts` are the per-sample prompts (strings or chat messages), `completions` the decoded completions
(strings), `completion_ids` the generated token ids without padding, and `columns` every other dataset
column as a per-sample list. `None` means "not applicable to this sample". Only the built-in rewards
registered here exist: nothing user-supplied is imported or executed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Rewards = list[float | None]


class RewardFunc(Protocol):
    name: str

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        **columns: Any,
    ) -> Rewards: ...


@dataclass(frozen=True)
class RewardContext:
    """What a factory may need besides its own spec: the job's generation budget and the device."""

    max_completion_length: int = 256
    device: Any = "cpu"


Factory = Callable[[Any, RewardContext], RewardFunc]
_FACTORIES: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Register a factory `(RewardFuncSpec, RewardContext) -> RewardFunc` under the spec's `name`."""

    def deco(factory: Factory) -> Factory:
        if name in _FACTORIES:
            raise ValueError(f"reward {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return deco


def known_rewards() -> list[str]:
    return sorted(_FACTORIES)


def build_reward(spec: Any, ctx: RewardContext | None = None) -> RewardFunc:
    """One reward function from a `RewardFuncSpec` (or anything with the same attributes)."""
    factory = _FACTORIES.get(spec.name)
    if factory is None:
        raise KeyError(f"unknown reward {spec.name!r}; known: {known_rewards()}")
    return factory(spec, ctx or RewardContext())


def build_reward_funcs(specs: Sequence[Any], ctx: RewardContext | None = None) -> list[RewardFunc]:
    """All rewards of a job, in order; repeated names get a `_2`, `_3` ... suffix so metric keys stay unique."""
    funcs, seen = [], {}
    for spec in specs:
        func = build_reward(spec, ctx)
        seen[func.name] = seen.get(func.name, 0) + 1
        if seen[func.name] > 1:
            func.name = f"{func.name}_{seen[func.name]}"
        funcs.append(func)
    return funcs


class NamedReward:
    """Wraps a plain function `(prompts, completions, completion_ids, columns) -> Rewards` with a name."""

    def __init__(self, name: str, fn: Callable[..., Rewards]) -> None:
        self.name = name
        self._fn = fn

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]],
        **columns: Any,
    ) -> Rewards:
        out = self._fn(prompts, completions, completion_ids, columns)
        if len(out) != len(completions):
            raise RuntimeError(
                f"reward {self.name!r} returned {len(out)} values for {len(completions)} completions"
            )
        return out

    def __repr__(self) -> str:
        return f"NamedReward({self.name!r})"

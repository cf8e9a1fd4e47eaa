"""Paper presets: one YAML file per paper-index entry, with the exact values the entry gives.

A preset supplies `algorithm`, `config` and optionally job-level fields (`reward_funcs`, `peft_config`,
`distributed`, `hardware`); a request supplies the rest (model, dataset) and may override any config value.
Torch-free: loaded by the api and the engine alike.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from engine.spec import ALGORITHMS

PRESET_DIR = Path(__file__).parent


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    version: int = Field(ge=1)
    title: str
    paper_url: str
    section: str
    algorithm: str
    config: dict[str, Any]
    job: dict[str, Any] = Field(default_factory=dict)
    notes: str = ""


class UnknownPreset(KeyError):
    def __init__(self, preset_id: str, known: list[str]) -> None:
        super().__init__(preset_id)
        self.preset_id = preset_id
        self.known = known

    def __str__(self) -> str:
        return f"unknown preset {self.preset_id!r}; known: {', '.join(self.known)}"


@lru_cache(maxsize=1)
def load_presets() -> dict[str, Preset]:
    presets: dict[str, Preset] = {}
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        preset = Preset.model_validate(yaml.safe_load(path.read_text()))
        if preset.id != path.stem:
            raise ValueError(f"{path.name}: id {preset.id!r} must match the file name")
        if preset.algorithm not in ALGORITHMS:
            raise ValueError(f"{path.name}: unknown algorithm {preset.algorithm!r}")
        presets[preset.id] = preset
    return presets


def get_preset(preset_id: str) -> Preset:
    presets = load_presets()
    if preset_id not in presets:
        raise UnknownPreset(preset_id, sorted(presets))
    return presets[preset_id]


def apply_preset(preset: Preset, request: dict[str, Any]) -> dict[str, Any]:
    """Merge a request over a preset into a raw job spec (validate it with `engine.spec.parse_job_spec`).

    `request["config"]` overrides the preset's config key by key; other request keys override the preset's
    job-level fields. A request naming a different `algorithm` is an error (a preset fixes the objective).
    """
    request = dict(request)
    request.pop("preset", None)
    request.pop(OVERRIDE_FLAG, None)
    algorithm = request.pop("algorithm", preset.algorithm)
    if algorithm != preset.algorithm:
        raise ValueError(
            f"preset {preset.id!r} is a {preset.algorithm!r} preset; drop 'algorithm' or use a matching preset"
        )
    spec: dict[str, Any] = copy.deepcopy(preset.job)
    config = copy.deepcopy(preset.config)
    overrides = request.pop("config", None) or {}
    if not isinstance(overrides, dict):
        raise ValueError("config must be an object of overrides")
    config.update(overrides)
    spec.update(request)
    spec["algorithm"] = preset.algorithm
    spec["config"] = config
    return spec


OVERRIDE_FLAG = "override_preset_objective"
# Keys that size a run to the hardware and budget; every other key a preset sets is part of its objective.
_SCALE_SUFFIXES = ("_batch_size", "_steps", "_length", "_len", "_epochs")
_SCALE_KEYS = {
    "num_generations",
    "num_generations_eval",
    "learning_rate",
    "seed",
    "precision",
    "bf16",
    "fp16",
    "gradient_checkpointing",
    "use_vllm",
    "optim",
    "peft_config",
    "hardware",
    "distributed",
}


def is_objective_key(param: str) -> bool:
    """Whether a preset's `param` (`config.loss_type`, `reward_funcs`) defines what it trains, as opposed
    to how big or fast the run is (batch sizes, steps, lengths, learning rate, precision, hardware)."""
    name = param.removeprefix("config.")
    if name in _SCALE_KEYS or name.endswith(_SCALE_SUFFIXES):
        return False
    return not name.startswith(("vllm_", "logging_", "save_", "eval_", "dataloader_"))


def objective_overrides(preset: Preset, request: dict[str, Any]) -> list[str]:
    """The preset objective keys `request` changes (from `preset_diff`): these need the request to say
    `"override_preset_objective": true` or list them there; the job records them."""
    return [
        d["param"] for d in preset_diff(preset, request) if d["preset_fixed"] and is_objective_key(d["param"])
    ]


def unconfirmed_overrides(preset: Preset, request: dict[str, Any]) -> list[str]:
    """Objective overrides the request did not confirm with `override_preset_objective`."""
    confirmed = request.get(OVERRIDE_FLAG, False)
    overrides = objective_overrides(preset, request)
    if confirmed is True:
        return []
    named = {str(p) for p in confirmed} if isinstance(confirmed, list) else set()
    return [p for p in overrides if p not in named and p.removeprefix("config.") not in named]


def preset_diff(preset: Preset, request: dict[str, Any]) -> list[dict[str, Any]]:
    """What a request changes relative to its preset: `[{param, preset_value, value}]`, sorted by param.

    Every `config` key the request sets to another value than the preset's (`preset_value` None where the
    preset leaves the key at its default), and every job-level key the preset fixes (`reward_funcs`,
    `peft_config`, ...) that the request replaces. Keys the preset does not fix at job level (model,
    dataset) are the request's own and are not listed.
    """
    diff = []
    overrides = request.get("config") or {}
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            if key not in preset.config or preset.config[key] != value:
                param = f"config.{key}"
                fixed = key in preset.config
                diff.append(
                    {
                        "param": param,
                        "preset_value": preset.config.get(key),
                        "value": value,
                        "preset_fixed": fixed,
                        "objective": fixed and is_objective_key(param),
                    }
                )
    for key, value in preset.job.items():
        if key in request and request[key] != value:
            diff.append(
                {
                    "param": key,
                    "preset_value": value,
                    "value": request[key],
                    "preset_fixed": True,
                    "objective": is_objective_key(key),
                }
            )
    return sorted(diff, key=lambda d: d["param"])

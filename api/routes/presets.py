"""`/v1/presets`: the paper presets (exact values from the paper index) a job can start from."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.errors import ApiError, ErrorBody
from api.schemas import PresetList, PresetOut
from api.services.capabilities import live_capabilities
from engine.presets.runnable import WorkerCapabilities, preset_status

router = APIRouter(prefix="/v1/presets", tags=["presets"], responses={401: {"model": ErrorBody}})


def _out(preset: Any, caps: WorkerCapabilities) -> PresetOut:
    fields = preset.model_dump() if hasattr(preset, "model_dump") else dict(vars(preset))
    status = preset_status(preset, caps)
    return PresetOut(
        **fields,
        runnable=status.runnable,
        runnable_param=status.param,
        runnable_reason=status.reason,
        runnable_change=status.change,
    )


@router.get("", response_model=PresetList, operation_id="list_presets")
def list_presets(_user: PrincipalDep, session: SessionDep, settings: SettingsDep) -> Any:
    from engine.presets import load_presets

    caps = live_capabilities(session, settings)
    return {"presets": [_out(p, caps) for p in load_presets().values()]}


@router.get(
    "/{preset_id}", response_model=PresetOut, operation_id="get_preset", responses={404: {"model": ErrorBody}}
)
def get_preset(_user: PrincipalDep, session: SessionDep, settings: SettingsDep, preset_id: str) -> Any:
    from engine.presets import load_presets

    presets = load_presets()
    if preset_id not in presets:
        raise ApiError(
            404,
            "preset_not_found",
            f"no preset {preset_id!r}; known: {', '.join(sorted(presets))}",
            param="preset_id",
        )
    return _out(presets[preset_id], live_capabilities(session, settings))

"""What a job can be made of: the algorithms with the JSON schema of their job spec, and the built-in
datasets with the algorithms each one feeds. The dashboard builds its launch form from these answers."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, get_args

from fastapi import APIRouter

from api.deps import PrincipalDep
from api.errors import ApiError, ErrorBody
from api.schemas import AlgorithmList, BuiltinDatasetList
from engine.spec import ALGORITHMS, RUNNABLE_ALGORITHMS, JobSpec
from engine.spec.field_docs import describe
from engine.spec.job import BUILTIN_DATASET_ALGORITHMS, family_of

router = APIRouter(prefix="/v1", tags=["catalog"], responses={401: {"model": ErrorBody}})


@lru_cache(maxsize=1)
def _job_classes() -> dict[str, Any]:
    union = get_args(JobSpec)[0]
    return {get_args(cls.model_fields["algorithm"].annotation)[0]: cls for cls in get_args(union)}


def _datasets_for(algorithm: str) -> list[str]:
    return sorted(name for name, algos in BUILTIN_DATASET_ALGORITHMS.items() if algorithm in algos)


@router.get("/algorithms", response_model=AlgorithmList, operation_id="list_algorithms")
def list_algorithms(_user: PrincipalDep) -> Any:
    """Every algorithm a spec may name, whether this engine trains it, and the built-in sets that fit it."""
    return {
        "algorithms": [
            {
                "id": a,
                "runnable": a in RUNNABLE_ALGORITHMS,
                "builtin_datasets": _datasets_for(a),
                "family": family_of(a),
            }
            for a in ALGORITHMS
        ]
    }


@router.get(
    "/algorithms/{algorithm}/schema",
    operation_id="get_algorithm_schema",
    responses={404: {"model": ErrorBody}},
)
def get_algorithm_schema(_user: PrincipalDep, algorithm: str) -> dict[str, Any]:
    """The JSON schema of a job spec for `algorithm` (fields, types, defaults, descriptions)."""
    classes = _job_classes()
    if algorithm not in classes:
        raise ApiError(
            404,
            "unknown_algorithm",
            f"no algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}",
            param="algorithm",
        )
    schema: dict[str, Any] = classes[algorithm].model_json_schema()
    describe(schema.get("$defs", {}))
    describe({classes[algorithm].__name__: schema})
    return schema


@router.get("/datasets/builtin", response_model=BuiltinDatasetList, operation_id="list_builtin_datasets")
def list_builtin_datasets(_user: PrincipalDep) -> Any:
    """The generated data sets every worker has, each with the algorithms whose row format it has."""
    return {
        "datasets": [
            {"name": name, "algorithms": sorted(algos)}
            for name, algos in sorted(BUILTIN_DATASET_ALGORITHMS.items())
        ]
    }

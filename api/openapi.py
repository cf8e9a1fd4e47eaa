"""The OpenAPI document with the job request described for real.

Job requests are read as plain dicts (so validation errors keep one format, `param` = the dotted field
path), which FastAPI would publish as a free-form object. `install_openapi(app)` replaces that request body
with `JobRequest` (the discriminated union on `algorithm` with every config field's type, default, bounds
and description, or a preset request) and adds the job spec models to `components.schemas`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from api.schemas import JobRequest
from engine.spec import JobSpec
from engine.spec.field_docs import describe

REF = "#/components/schemas/{model}"
JOB_BODY_OPERATIONS = {"create_job", "validate_job"}  # operations whose body is a job request


def job_schemas() -> dict[str, Any]:
    """`components.schemas` entries: JobRequest, JobSpec and every model they reference."""
    request = TypeAdapter(JobRequest).json_schema(ref_template=REF)
    spec = TypeAdapter(JobSpec).json_schema(ref_template=REF)
    defs = describe({**request.pop("$defs", {}), **spec.pop("$defs", {})})
    request["description"] = "a full job spec (JobSpec), or a preset id with overrides (PresetJobRequest)"
    spec["description"] = "a job spec: one model per algorithm, chosen by `algorithm`"
    return {**defs, "JobSpec": spec, "JobRequest": request}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(job_schemas())
        error = {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}}
        for path in doc["paths"].values():
            for op in path.values():
                if op.get("operationId") in JOB_BODY_OPERATIONS:
                    content = op["requestBody"]["content"]["application/json"]
                    content["schema"] = {"$ref": REF.format(model="JobRequest")}
                for status, response in op.get("responses", {}).items():
                    if status == "422":  # FastAPI's default validation body is never sent: ours is
                        response["content"] = error
                        response["description"] = "invalid request; `error.param` names the field"
                op["responses"]["default"] = {
                    "description": "any other error (503 database unavailable, 500 unexpected)",
                    "content": error,
                }
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]

"""The OpenAPI document describes the job request for real and every error body."""

from __future__ import annotations

import jsonschema_rs
import pytest
from api_testkit import SFT_SPEC

from engine.spec import ALGORITHMS


@pytest.fixture
def doc(app) -> dict:
    return app.openapi()


def _validator(doc: dict, name: str) -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    )


def test_job_bodies_are_the_typed_job_request(doc) -> None:
    for path in ("/v1/jobs", "/v1/jobs:validate"):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": "#/components/schemas/JobRequest"}
    spec = doc["components"]["schemas"]["JobSpec"]
    assert spec["discriminator"]["propertyName"] == "algorithm"
    assert set(spec["discriminator"]["mapping"]) == set(ALGORITHMS)


def test_config_fields_carry_type_default_bounds(doc) -> None:
    grpo = doc["components"]["schemas"]["GRPOConfig"]["properties"]
    assert (
        grpo["beta"]["type"] == "number" and grpo["beta"]["default"] == 0.0 and grpo["beta"]["minimum"] == 0
    )
    assert grpo["loss_type"]["enum"][:2] == ["grpo", "bnpo"]
    assert doc["components"]["schemas"]["SFTConfig"]["properties"]["max_steps"]["minimum"] == -1


def test_examples_and_real_requests_validate_against_the_schema(doc) -> None:
    request = _validator(doc, "JobRequest")
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    for example in body["examples"].values():
        request.validate(example["value"])
    request.validate(SFT_SPEC)
    assert not request.is_valid({**SFT_SPEC, "algorithm": "nope"})
    assert not request.is_valid({**SFT_SPEC, "config": {"max_steps": -2}})
    assert not request.is_valid({**SFT_SPEC, "typo": 1})
    assert not request.is_valid({"preset": "dapo", "dataset": {"builtin": "arithmetic"}})  # no model


def test_every_error_response_is_the_typed_error_body(doc) -> None:
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "default" in op["responses"], (path, method)
            for status, response in op["responses"].items():
                if status == "default" or int(status) >= 400:
                    assert response["content"]["application/json"]["schema"] == ref, (path, method, status)
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_the_422_body_matches_the_documented_error(client, alice, doc) -> None:
    res = client.post("/v1/jobs", json={**SFT_SPEC, "config": {"max_steps": -2}}, headers=alice)
    assert res.status_code == 422
    _validator(doc, "ErrorBody").validate(res.json())
    assert res.json()["error"]["param"] == "config.max_steps"


def test_every_job_spec_field_is_described(doc) -> None:
    """Field descriptions come from the models or from engine.spec.field_docs; a new field needs one."""
    schemas = doc["components"]["schemas"]
    names = {"JobRequest", "JobSpec", "PresetJobRequest"}
    refs = [schemas["JobRequest"]]
    while refs:  # every model reachable from the job request
        node = refs.pop()
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] not in names:
                names.add(ref.rsplit("/", 1)[1])
                refs.append(schemas[ref.rsplit("/", 1)[1]])
            refs.extend(node.values())
        elif isinstance(node, list):
            refs.extend(node)
    assert {"GRPOConfig", "SFTConfig", "DatasetSpec", "LoraSpec", "RewardFuncSpec"} <= names
    missing = [
        f"{name}.{field}"
        for name in sorted(names)
        for field, prop in (schemas[name].get("properties") or {}).items()
        if not prop.get("description")
    ]
    assert missing == []
    grpo = schemas["GRPOConfig"]["properties"]
    assert (
        "KL" in grpo["beta"]["description"]
        and "temperature" in schemas["DPOConfig"]["properties"]["beta"]["description"]
    )

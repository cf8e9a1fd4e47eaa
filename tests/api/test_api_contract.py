"""Contract test: schemathesis generates requests from the OpenAPI document (valid and invalid ones) for every
operation and checks that the API never answers with a server error and that every answer conforms to the
document (status code, content type, headers, body schema). Bounded and derandomized for CI."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.slow

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 20  # per operation and mode


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_openapi_document(app, alice, mode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 15
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
        )
        def check(case) -> None:
            case.call_and_validate(headers=alice, checks=CHECKS, timeout=120)  # a loaded CI machine is slow

        try:
            check()
        except Unsatisfiable:  # nothing in this operation can be made invalid (no parameters, no body)
            assert mode is GenerationMode.NEGATIVE, operation.label

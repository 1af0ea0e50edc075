"""Every operation of the OpenAPI document, fuzzed with schema-valid and schema-invalid requests:
no server errors, and every response (status, content type, headers, body) as documented.

Bounded to keep CI fast: a fixed number of examples per operation and mode, derandomized so a run
is reproducible, with a real admin key (admin may call every route) against the API under test.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.factories import TenantKeys, make_tenant

EXAMPLES_PER_OPERATION_AND_MODE = 10
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


class Fuzz:
    """Runs the cases and keeps the score, without stopping at the first failure."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        self.base_url = base_url
        self.headers = headers
        self.cases = 0
        self.failures: list[str] = []
        self.statuses: dict[int, int] = {}

    def run(self, operation: Any, mode: GenerationMode) -> None:
        @settings(
            max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def exercise(case: Any) -> None:
            self.cases += 1
            where = f"{operation.label} [{mode.value}]"
            try:
                response = case.call(base_url=self.base_url, headers=self.headers, timeout=30)
            except Exception as exc:  # a dropped connection is a server failure too
                self.failures.append(f"{where}: {type(exc).__name__}: {exc}")
                return
            self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
            try:
                case.validate_response(response, checks=CHECKS, headers=self.headers)
            except (Exception, BaseExceptionGroup) as exc:
                self.failures.append(f"{where} -> {response.status_code}: {exc}"[:3000])

        try:
            exercise()
        except Unsatisfiable:
            # Nothing to get wrong: an operation without parameters or body has no invalid form.
            assert mode is GenerationMode.NEGATIVE, operation.label


def test_openapi_operations_answer_as_documented(api_url: str, migrated: str):
    keys: TenantKeys = make_tenant(migrated, "fuzzed")
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    fuzz = Fuzz(api_url, keys.headers("admin"))
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz.run(operation, mode)

    print(
        f"\nschemathesis: {len(operations)} operations, {fuzz.cases} test cases, "
        f"{len(fuzz.failures)} failures; statuses {dict(sorted(fuzz.statuses.items()))}"
    )
    assert len(operations) >= 10
    assert fuzz.failures == [], "\n\n".join(fuzz.failures[:10])

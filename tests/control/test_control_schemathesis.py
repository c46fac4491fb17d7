"""schemathesis against the served ``/openapi.json``: every operation, authenticated as a
user who owns a workspace, with bounded, derandomized examples (valid and invalid
ones): no 5xx, and every answer's status, content type and body match the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
from controltool import Harness
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.timeout(600)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: Examples per operation and generation mode (bounded: the suite's time is shared).
EXAMPLES = 12


@pytest.fixture(scope="module")
def control(shared_control: Harness) -> Harness:
    return shared_control


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_every_operation_holds_to_the_schema(
    control: Harness, mode: GenerationMode
) -> None:
    alice = control.user(f"fuzz-{mode.value}")
    control.workspace(alice, "w")
    alice.snapshot("w", "s1")
    headers = {"authorization": f"Bearer {alice._token}"}
    schema = schemathesis.openapi.from_url(control.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    failures = []
    for op in operations:

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=control.url, headers=headers, checks=CHECKS)

        try:
            run()
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE  # nothing to get wrong (no inputs)
        except Exception as e:  # collect every operation's failure, then report them all
            failures.append(f"{op.label}: {str(e)[:600]}")
    assert not failures, "\n\n".join(failures)


DOC = Path(__file__).resolve().parents[2] / "docs" / "control-api.json"


def test_openapi_is_committed(control: Harness) -> None:
    """docs/control-api.json is what the server describes (regenerate it with
    ``curl -s API/openapi.json | python3 -m json.tool --sort-keys``)."""
    import httpx

    served = httpx.get(control.url + "/openapi.json", timeout=30).json()
    assert json.loads(DOC.read_text()) == served, "regenerate docs/control-api.json"

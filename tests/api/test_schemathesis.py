"""A bounded schemathesis run against /openapi.json on a real server: for every operation,
generated requests (valid and invalid) never get a 5xx, and every response matches the
documented status codes, content type and schema."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from tessera.api.app import create_app
from tessera.runtime import Runtime
from tests.api.conftest import DEMO_CONFIG
from tests.processes import app_in_thread

pytestmark = pytest.mark.slow
MAX_EXAMPLES = int(os.environ.get("TESSERA_SCHEMATHESIS_EXAMPLES", "15"))
INGEST = ("/v1/events", "/v1/batch", "/v1/track", "/v1/identify", "/v1/page", "/v1/screen",
          "/v1/group", "/v1/alias", "/v1/import")
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    os.environ.setdefault("TESSERA_SQLITE_SYNCHRONOUS", "OFF")
    data: Path = tmp_path_factory.mktemp("schemathesis") / "data"
    with app_in_thread(create_app(Runtime(DEMO_CONFIG, data))) as url:
        yield url


def test_no_server_error_and_no_undocumented_response(server: str) -> None:
    schema = schemathesis.openapi.from_url(server + "/openapi.json")
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        error = _run(operation, server)
        if error:
            failures[operation.label] = error
    assert operations > 20
    assert failures == {}, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def _run(operation: schemathesis.APIOperation, server: str) -> str | None:
    """Generated requests for one operation; the failures schemathesis found, if any."""
    key = "wk_web_123" if operation.path in INGEST else "ak_admin_123"

    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=server, headers={"Authorization": f"Bearer {key}"},
                               checks=CHECKS)

    try:
        run()
    except (Exception, BaseExceptionGroup) as exc:  # every operation runs; all are reported
        return str(exc)[:3000]
    return None

"""Schemathesis against /openapi.json of a running server, every endpoint: no 5xx, and every
response (status, content type, headers, body) conforms to the documented schema.

Bounded in time: a fixed number of generated requests per operation (well under a minute).
"""

from __future__ import annotations

import traceback
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from tests.serve import builders
from tests.support.system import require_module

EXAMPLES_PER_OPERATION = 12
TOKEN = "schemathesis-admin-token"


def _fuzz(operation, base_url: str, checks: list, calls: dict[str, int]) -> None:
    """Run EXAMPLES_PER_OPERATION generated requests against one operation."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,  # tests write nothing outside temp folders
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same requests every run
    )
    def exercise(case) -> None:
        calls[operation.label] += 1
        response = case.call(base_url=base_url, timeout=30)
        case.validate_response(response, checks=checks)

    exercise()


def test_every_endpoint_conforms_to_the_openapi_document(tapeserve_server, tmp_path: Path) -> None:
    schemathesis = require_module("schemathesis")
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    repo = tmp_path / "repo"
    builders.write_model(repo, "m", builders.add_mul(), config={"max_batch_size": 8})
    builders.write_model(repo, "ident", builders.identity("INT32", ("N", 3)))
    srv = tapeserve_server(
        repo,
        workers=1,
        threads=4,
        extra_args=[
            "--model-control-mode",
            "explicit",
            "--max-body-size",
            "1000000",
            "--no-load-probe",
        ],
        env={"TAPESERVE_ADMIN_TOKEN": TOKEN},
    )
    schema = schemathesis.openapi.from_url(srv.url + "/openapi.json")
    failures: dict[str, str] = {}
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        calls[operation.label] = 0
        try:
            _fuzz(operation, srv.url, checks, calls)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # schemathesis reports failures as a BaseExceptionGroup
            failures[operation.label] = "".join(traceback.format_exception_only(exc))[-2000:]
    print(f"schemathesis: {len(calls)} operations, {sum(calls.values())} requests, "
          f"{len(failures)} failing")  # fmt: skip
    assert len(calls) >= 25, sorted(calls)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert "Traceback" not in srv.log()

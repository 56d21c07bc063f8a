"""Property-based fuzzing of every documented endpoint with schemathesis.

The OpenAPI schema the example project serves (``/api/schema/``) drives the
cases: valid and schema-violating bodies, query strings and ids, sent to Django's
WSGI app in-process as a signed-in user (token authentication). Every response
must be a non-5xx, documented status with a documented body and content type, and
every error must be in the spec's shape. Examples are derandomized, so CI sees the
same cases on every run; ``KERNIA_FUZZ_EXAMPLES`` / ``KERNIA_FUZZ_SEED`` widen or
vary the search locally.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from example_project.wsgi import application
from tests.fuzz.fuzz_support import error_shape, no_server_error

MAX_EXAMPLES = int(os.environ.get("KERNIA_FUZZ_EXAMPLES", "30"))

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)

CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    error_shape,
]

pytestmark = pytest.mark.django_db


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize="KERNIA_FUZZ_SEED" not in os.environ,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_endpoint_survives_fuzzing(case, fuzz_world):
    case.call_and_validate(headers=fuzz_world.headers, checks=CHECKS)

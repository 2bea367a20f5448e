"""A schema-driven fuzz of the explorer's HTTP API (schemathesis over its OpenAPI schema): whatever the
request, the server answers — never a 5xx."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402


from advlens.explore import create_app  # noqa: E402

# the app loads its model at the first request, in the test (after digits_model made sure it is trained)
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(model="small_vgg_digits", images="digits"))


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_makes_the_server_fail(case, digits_model):
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        assert set(response.json()) == {"error"} and "\n" not in response.json()["error"]

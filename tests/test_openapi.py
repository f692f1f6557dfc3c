"""/openapi.json states what the service really answers (the hardening issue): no 422
(API.md "Errors": 400 invalid_request), the error body, 401/403 on every route that needs a
token, 413 and a request body on every route that reads one (also those read by hand)."""

from __future__ import annotations

import httpx
from conftest import Server

# API.md "Caller authentication": the open four; the API's own description and viewer.
OPEN = {"/healthz", "/readyz", "/metrics", "/.well-known/authzen-configuration",
        "/openapi.json", "/docs", "/docs/oauth2-redirect", "/playground"}
# The POSTs that take no body.
BODYLESS = {("POST", "/v1/policy/reload"), ("POST", "/v1/policy/candidates/{version}/promote")}


def test_openapi_states_the_real_statuses_and_bodies(server: Server) -> None:
    response = httpx.get(server.url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    assert "422" not in response.text
    document = response.json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    operations = [(method.upper(), path, operation)
                  for path, methods in document["paths"].items()
                  for method, operation in methods.items()]
    assert len(operations) > 30
    for method, path, operation in operations:
        responses = operation["responses"]
        assert "400" in responses, f"{method} {path}"
        error = responses["400"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/Error"}
        if path not in OPEN:
            assert {"401", "403"} <= set(responses), f"{method} {path}"
        if method in ("POST", "PUT") and (method, path) not in BODYLESS:
            body = operation.get("requestBody")
            assert body and "application/json" in body["content"], f"{method} {path}"
            assert "413" in responses, f"{method} {path}"
    evaluation = document["paths"]["/access/v1/evaluation"]["post"]
    assert evaluation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Evaluation"}
    assert "subject" in document["components"]["schemas"]["Evaluation"]["properties"]

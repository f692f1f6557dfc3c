"""/openapi.json states what the service really answers (the hardening issue): no 422
(API.md "Errors": 400 invalid_request), the error body, 401/403 on every route that needs a
token, 413 and a request body on every route that reads one (also those read by hand).
In-process: the app (tests/support/asgi.py)."""

from __future__ import annotations

from tests.support.asgi import InProcess

# API.md "Caller authentication": the open four; the API's own description and viewer.
OPEN = {"/healthz", "/readyz", "/metrics", "/.well-known/authzen-configuration",
        "/openapi.json", "/docs", "/docs/oauth2-redirect", "/playground"}
# The POSTs that take no body.
BODYLESS = {("POST", "/v1/policy/reload"), ("POST", "/v1/policy/candidates/{version}/promote")}


def test_openapi_states_the_real_statuses_and_bodies(server: InProcess) -> None:
    response = server.get("/openapi.json")
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


def test_openapi_states_the_503s_and_the_body_of_a_hold_release(server: InProcess) -> None:
    """No 503 was listed anywhere, though /readyz, decisions, searches, reads of the log
    and writes to the store answer it; the JSON body of a hold's release was missing."""
    from pdp.http.openapi import UNAVAILABLE

    document = server.get("/openapi.json").json()
    paths = document["paths"]
    ready = paths["/readyz"]["get"]["responses"]["503"]
    assert ready["content"]["application/json"]["schema"]["properties"]["status"] == {
        "const": "not_ready"}
    for method, path in [("post", "/access/v1/evaluation"), ("post", "/access/v1/evaluations"),
                         ("post", "/v1/explain"), ("post", "/access/v1/search/resource"),
                         ("post", "/access/v1/search/subject"),
                         ("post", "/access/v1/search/action")]:
        description = paths[path][method]["responses"]["503"]["description"]
        assert "unavailable" in description and "audit_unavailable" in description, path
    for method, path in [("get", "/v1/audit/decisions"), ("get", "/v1/audit/verify"),
                         ("get", "/v1/audit/clients/{client}/report"),
                         ("get", "/v1/monitoring/samples"), ("post", "/v1/audit/holds"),
                         ("get", "/v1/audit/holds"), ("delete", "/v1/audit/holds/{hold_id}"),
                         ("get", "/v1/policy/candidates/{version}/examples")]:
        response = paths[path][method]["responses"]["503"]
        assert response["description"].startswith("audit_unavailable"), path
        assert response["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}
    for method, path in [("put", "/v1/{collection}/{fact_id}"), ("post", "/v1/facts:batch"),
                         ("post", "/v1/grant-applications"),
                         ("post", "/v1/grants/{grant_id}/{step}"), ("get", "/v1/events")]:
        assert paths[path][method]["responses"]["503"]["description"].startswith(
            "unavailable"), path
    # What answers from memory alone lists no 503.
    for method, path in [("get", "/healthz"), ("get", "/v1/grants"), ("get", "/v1/policy")]:
        assert "503" not in paths[path][method]["responses"], path
    # Every line of the table names an operation of the document.
    for method, path in UNAVAILABLE:
        assert method.lower() in paths.get(path, {}), f"{method} {path}"

    release = paths["/v1/audit/holds/{hold_id}"]["delete"]
    assert release["requestBody"]["required"] is False  # the reason may be in the query
    assert release["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/HoldRelease"}
    assert "reason" in document["components"]["schemas"]["HoldRelease"]["properties"]
    assert "413" in release["responses"]


def test_every_table_of_the_document_names_a_real_operation(server: InProcess) -> None:
    """`POST /v1/grants:import` was in the tables, with no such route (now it has one)."""
    from pdp.http.openapi import BODIES, CONFLICTS, OPTIONAL_BODIES

    document = server.get("/openapi.json").json()
    paths = document["paths"]
    for method, path in [*BODIES, *CONFLICTS, *OPTIONAL_BODIES]:
        assert method.lower() in paths.get(path, {}), f"{method} {path}"
    # the register of rights: its body (with the approval record), admin only, 409
    register = paths["/v1/grants:import"]["post"]
    assert register["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GrantRegister"}
    assert "admin" in register["responses"]["403"]["description"]
    assert {"400", "409", "413"} <= set(register["responses"])
    item = document["components"]["schemas"]["RegisteredGrant"]
    assert {"id", "user", "purposes", "status", "recertify_by", "approval"} <= set(
        item["required"])
    approval = document["components"]["schemas"]["ApprovalRecord"]
    assert set(approval["required"]) == {"approved_by", "approved_at", "decision_ref",
                                         "activated_at"}
    # a right is not among the bodies a facts PUT takes (409 use_workflow)
    put = paths["/v1/{collection}/{fact_id}"]["put"]["requestBody"]["content"]
    assert {"$ref": "#/components/schemas/Grant"} not in put["application/json"]["schema"][
        "oneOf"]
    assert "use_workflow" in paths["/v1/{collection}/{fact_id}"]["put"]["responses"]["409"][
        "description"]

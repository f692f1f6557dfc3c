"""The API's own description (`/openapi.json`), made to say what the service really does.

FastAPI describes every route with parameters as answering 422 "Validation Error", which
this service never does (API.md "Errors": 400 invalid_request), and knows nothing of the
bodies the routes read by hand (pdp.http.wire.read_json), nor of the access table. Here the
generated document is corrected: no 422; 400 everywhere (any request can be malformed);
401 and 403 wherever a token is needed (pdp.http.access.ACCESS), with the roles; 404 where a
path names something; 408 and 413 where a body is read; 409 where a step can conflict;
503 where the route needs what may be down (the facts being current, the decision log,
the store); and each body's schema, from the models the routes validate it with.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

from pdp.engine.authzen import (
    ActionSearch,
    Evaluation,
    EvaluationsEnvelope,
    ResourceSearch,
    SubjectSearch,
)
from pdp.http.access import ACCESS, Open, Rule
from pdp.http.audit import HoldRelease, HoldRequest
from pdp.http.monitoring import CaseReport, Comment, Resolution
from pdp.http.policy import Upload
from pdp.model.facts import MODELS
from pdp.model.vocab import FactKind
from pdp.rights.lifecycle import STEP_BODIES, AgreementAct, Application, GrantRegister

REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    field: str | None = None
    message: str


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] | None = None


class Error(BaseModel):
    """Every error body (API.md "Errors")."""

    error: ErrorInfo


class FactItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: FactKind
    id: str
    data: dict[str, Any]


class FactsBatch(BaseModel):
    """POST /v1/facts:batch: all or nothing."""

    model_config = ConfigDict(extra="forbid")
    facts: list[FactItem]


# The bodies the routes read by hand: (method, path as in the document) -> the models it
# may be (one of them).
BODIES: dict[tuple[str, str], tuple[type[BaseModel], ...]] = {
    ("POST", "/access/v1/evaluation"): (Evaluation,),
    ("POST", "/access/v1/evaluations"): (EvaluationsEnvelope,),
    ("POST", "/v1/explain"): (Evaluation,),
    ("POST", "/access/v1/search/resource"): (ResourceSearch,),
    ("POST", "/access/v1/search/subject"): (SubjectSearch,),
    ("POST", "/access/v1/search/action"): (ActionSearch,),
    # a right is never written here (409 use_workflow): the other kinds
    ("PUT", "/v1/{collection}/{fact_id}"): tuple(
        dict.fromkeys(model for kind, model in MODELS.items() if kind != "grant")),
    ("POST", "/v1/facts:batch"): (FactsBatch,),
    ("POST", "/v1/grant-applications"): (Application,),
    ("POST", "/v1/grants:import"): (GrantRegister,),
    ("POST", "/v1/grants/{grant_id}/{step}"): tuple(STEP_BODIES.values()),
    ("POST", "/v1/agreements/{code}/{act}"): (AgreementAct,),
    ("POST", "/v1/audit/holds"): (HoldRequest,),
    ("DELETE", "/v1/audit/holds/{hold_id}"): (HoldRelease,),
    ("POST", "/v1/monitoring/cases"): (CaseReport,),
    ("POST", "/v1/monitoring/cases/{case_id}/comments"): (Comment,),
    ("POST", "/v1/monitoring/cases/{case_id}/resolve"): (Resolution,),
    ("POST", "/v1/policy/test"): (Upload,),
    ("POST", "/v1/policy/candidates"): (Upload,),
}
# Bodies a route reads only if one is sent (a hold's release reason may be in the query).
OPTIONAL_BODIES = {("DELETE", "/v1/audit/holds/{hold_id}")}
# Routes whose request can meet a conflicting state: a workflow step, a write a workflow
# owns (use_workflow), a policy that may not go live.
CONFLICTS = {
    ("PUT", "/v1/{collection}/{fact_id}"),
    ("DELETE", "/v1/{collection}/{fact_id}"),
    ("POST", "/v1/facts:batch"),
    ("POST", "/v1/grant-applications"),
    ("POST", "/v1/grants:import"),
    ("POST", "/v1/grants/{grant_id}/{step}"),
    ("POST", "/v1/agreements/{code}/{act}"),
    ("POST", "/v1/monitoring/cases/{case_id}/comments"),
    ("POST", "/v1/monitoring/cases/{case_id}/resolve"),
    ("POST", "/v1/policy/reload"),
    ("POST", "/v1/policy/candidates"),
    ("POST", "/v1/policy/candidates/{version}/promote"),
}
STATUSES = {
    "400": "invalid_request: malformed JSON, a duplicate key, a missing or wrong field, a "
           "body not sent as application/json, a bad X-Request-ID or path",
    "401": "unauthorized: no bearer token, or an unknown one (WWW-Authenticate: Bearer)",
    "403": "forbidden: the token lacks the role",
    "404": "not_found",
    "408": "request_timeout: the body did not arrive in time (the connection is closed)",
    "409": "a conflict: the step is not allowed in this state, or the change must go "
           "through its workflow (use_workflow), or the register of rights before the "
           "service is closed (register_closed), or the policy may not go live",
    "413": "payload_too_large: the body is over the limit",
}
# Routes that can answer 503, and why (each with Retry-After).
_DECISION = ("unavailable: the facts cannot be confirmed current, or are not yet as new "
             "as context.min_facts_version; or audit_unavailable: the decision log cannot "
             "be written (nothing is answered that is not recorded)")
_LOG = "audit_unavailable: the decision log is off, or cannot be read or written"
_STORE = "unavailable: the fact store does not answer"
_SANDBOX = "unavailable: as many candidate policies are being run as may be at once"
UNAVAILABLE: dict[tuple[str, str], str] = {
    ("GET", "/readyz"): "not ready: the policies or facts are not loaded, or the store or "
                        "the decision log does not answer (the body names the problems)",
    **{("POST", path): _DECISION for path in (
        "/access/v1/evaluation", "/access/v1/evaluations", "/v1/explain",
        "/access/v1/search/resource", "/access/v1/search/subject",
        "/access/v1/search/action")},
    ("GET", "/v1/audit/decisions"): _LOG,
    ("GET", "/v1/audit/verify"): _LOG,
    ("GET", "/v1/audit/clients/{client}/report"): _LOG,
    ("GET", "/v1/monitoring/samples"): _LOG,
    ("POST", "/v1/audit/holds"): _LOG,
    ("GET", "/v1/audit/holds"): _LOG,
    ("DELETE", "/v1/audit/holds/{hold_id}"): _LOG,
    ("GET", "/v1/policy/candidates/{version}/examples"): _LOG,
    ("PUT", "/v1/{collection}/{fact_id}"): _STORE,
    ("GET", "/v1/{collection}/{fact_id}"): _STORE,
    ("DELETE", "/v1/{collection}/{fact_id}"): _STORE,
    ("POST", "/v1/facts:batch"): _STORE,
    ("POST", "/v1/grant-applications"): _STORE,
    ("POST", "/v1/grants:import"): _STORE,
    ("POST", "/v1/grants/{grant_id}/{step}"): _STORE,
    ("POST", "/v1/agreements/{code}/{act}"): _STORE,
    ("GET", "/v1/grants/{grant_id}/history"): _STORE,
    ("GET", "/v1/events"): _STORE,
    ("GET", "/v1/monitoring/cases"): _STORE,
    ("POST", "/v1/monitoring/cases"): _STORE,
    ("POST", "/v1/monitoring/cases/{case_id}/comments"): _STORE,
    ("POST", "/v1/monitoring/cases/{case_id}/resolve"): _STORE,
    ("POST", "/v1/policy/reload"): _STORE,
    ("POST", "/v1/policy/candidates/{version}/promote"): _STORE,
    ("POST", "/v1/policy/test"): _SANDBOX,
    ("POST", "/v1/policy/candidates"): _SANDBOX,
}
NOT_READY = {"type": "object", "required": ["status", "problems"], "properties": {
    "status": {"const": "not_ready"},
    "problems": {"type": "array", "items": {"type": "string"}}}}


def _document_path(path: str) -> str:
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def _roles(rule: Rule) -> str:
    if callable(rule):
        return "depends on the path (see API.md \"Caller authentication\")"
    return " or ".join(rule)


def refine(document: dict[str, Any],
           table: Mapping[tuple[str, str], Rule] = ACCESS) -> dict[str, Any]:
    """`document` (FastAPI's) corrected as the module docstring says; changed in place."""
    rules = {(method, _document_path(path)): rule for (method, path), rule in table.items()}
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    models: set[type[BaseModel]] = {Error, *(m for ms in BODIES.values() for m in ms)}
    _, definitions = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)], ref_template=REF)
    schemas.update(definitions.get("$defs", {}))
    components.setdefault("securitySchemes", {})["bearer"] = {"type": "http",
                                                              "scheme": "bearer"}
    error = {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}

    def respond(operation: dict[str, Any], status: str, description: str) -> None:
        operation["responses"].setdefault(status, {"description": description,
                                                   "content": error})

    for path, operations in document.get("paths", {}).items():
        for method_name, operation in operations.items():
            method = method_name.upper()
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            respond(operation, "400", STATUSES["400"])
            rule = rules.get((method, path), ["admin"])
            if not isinstance(rule, Open):
                operation["security"] = [{"bearer": []}]
                respond(operation, "401", STATUSES["401"])
                respond(operation, "403", f"{STATUSES['403']}: {_roles(rule)}")
            if "{" in path:
                respond(operation, "404", STATUSES["404"])
            if (method, path) in CONFLICTS:
                respond(operation, "409", STATUSES["409"])
            why = UNAVAILABLE.get((method, path))
            if why is not None and path == "/readyz":  # its body says what is wrong
                responses.setdefault("503", {"description": why, "content": {
                    "application/json": {"schema": NOT_READY}}})
            elif why is not None:
                respond(operation, "503", why)
            bodies = BODIES.get((method, path))
            if bodies is not None:
                respond(operation, "408", STATUSES["408"])
                respond(operation, "413", STATUSES["413"])
                refs = [{"$ref": REF.format(model=m.__name__)} for m in bodies]
                schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
                operation.setdefault("requestBody", {
                    "required": (method, path) not in OPTIONAL_BODIES,
                    "content": {"application/json": {"schema": schema}}})
    return document


def describe(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json (built once, at the first ask)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = refine(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

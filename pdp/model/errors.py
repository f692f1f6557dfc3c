"""The domain's refusals: a stable code (API.md "Errors"), a message, and details.

A refusal says *what* is wrong, never how a protocol answers it: the HTTP layer alone
turns a code into a status (`pdp.http.errors.STATUS`), the CLI into an exit code.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

INVALID_REQUEST = "invalid_request"
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
NOT_FOUND = "not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"
PAYLOAD_TOO_LARGE = "payload_too_large"
UNAVAILABLE = "unavailable"
AUDIT_UNAVAILABLE = "audit_unavailable"
INTERNAL = "internal_error"
# The rights procedure (pdp.rights.lifecycle)
GRANT_REFUSED = "grant_refused"
INVALID_TRANSITION = "invalid_transition"
CONFLICT = "conflict"
ID_TAKEN = "id_taken"
USE_WORKFLOW = "use_workflow"
REGISTER_CLOSED = "register_closed"
POLICY_ERROR = "policy_error"
# Policies (pdp.engine.policy_manager, pdp.engine.shadow)
POLICY_REJECTED = "policy_rejected"


class Refused(Exception):
    """A request refused, with its stable `code`; `retry_after`: seconds after which the
    same request may succeed (a busy or unreachable part), else None."""

    def __init__(self, code: str, message: str,
                 details: list[dict[str, Any]] | None = None, *,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


def error_body(code: str, message: str,
               details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def _field(loc: tuple[int | str, ...], prefix: str) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path or "body"


def validation_details(error: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    return [
        {"field": _field(tuple(e["loc"]), prefix), "message": e["msg"]}
        for e in error.errors(include_url=False)
    ]


def invalid(error: ValidationError, prefix: str = "") -> Refused:
    """invalid_request whose message names the first bad field."""
    details = validation_details(error, prefix)
    first = details[0]
    return Refused(INVALID_REQUEST, f"{first['field']}: {first['message']}", details)


def bad_request(message: str, field: str | None = None) -> Refused:
    details = [{"field": field, "message": message}] if field else None
    return Refused(INVALID_REQUEST, f"{field}: {message}" if field else message, details)

"""Stable error codes and the one error body shape of API.md "Errors"."""

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


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}

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


def invalid(error: ValidationError, prefix: str = "") -> ApiError:
    """A 400 invalid_request whose message names the first bad field."""
    details = validation_details(error, prefix)
    first = details[0]
    return ApiError(400, INVALID_REQUEST, f"{first['field']}: {first['message']}", details)


def bad_request(message: str, field: str | None = None) -> ApiError:
    details = [{"field": field, "message": message}] if field else None
    return ApiError(400, INVALID_REQUEST, f"{field}: {message}" if field else message, details)

"""The one mapping from what went wrong to an HTTP answer: a refusal's code to its status
(`STATUS`), and every exception a route may raise to the error body of API.md "Errors".

The domain raises `Refused` (pdp.model.errors) with a stable code and never a status;
`ApiError` is a refusal whose status only HTTP decides (a route-specific answer, such as
`policy_rejected` being 400 on `/v1/policy/test`, or the 408 of a body that never came).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from pdp.http.wire import JSONResponse
from pdp.model import errors as e
from pdp.store.protocols import StoreUnavailable

log = logging.getLogger(__name__)

# code -> status. A code not here is a fault of ours: 500.
STATUS: dict[str, int] = {
    e.INVALID_REQUEST: 400,
    e.GRANT_REFUSED: 400,
    e.UNAUTHORIZED: 401,
    e.FORBIDDEN: 403,
    e.NOT_FOUND: 404,
    e.METHOD_NOT_ALLOWED: 405,
    e.INVALID_TRANSITION: 409,
    e.CONFLICT: 409,
    e.ID_TAKEN: 409,
    e.USE_WORKFLOW: 409,
    e.REGISTER_CLOSED: 409,
    e.POLICY_REJECTED: 409,
    e.PAYLOAD_TOO_LARGE: 413,
    e.POLICY_ERROR: 500,
    e.INTERNAL: 500,
    e.UNAVAILABLE: 503,
    e.AUDIT_UNAVAILABLE: 503,
}


class ApiError(e.Refused):
    """A refusal with a status of its own (see the module's docstring)."""

    def __init__(self, status: int, code: str, message: str,
                 details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(code, message, details)
        self.status = status
        self.headers = headers or {}


def status_of(error: e.Refused) -> int:
    return error.status if isinstance(error, ApiError) else STATUS.get(error.code, 500)


def refusal_response(error: e.Refused) -> JSONResponse:
    """The answer to a refusal: its status, its body, and the headers its kind calls for
    (Retry-After when the refusal says when to try again, WWW-Authenticate on 401)."""
    status = status_of(error)
    headers = dict(error.headers) if isinstance(error, ApiError) else {}
    if error.retry_after is not None:  # a part busy or unreachable for now (not one that is off)
        headers.setdefault("Retry-After", str(error.retry_after))
    if status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(error.body(), status_code=status, headers=headers)


async def _refused(_request: Request, error: Exception) -> Response:
    assert isinstance(error, e.Refused)
    return refusal_response(error)


async def _validation(_request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    details = [{"field": ".".join(str(p) for p in item["loc"]), "message": item["msg"]}
               for item in error.errors()]
    return JSONResponse(e.error_body(e.INVALID_REQUEST, "invalid request", details), 400)


async def _routing(_request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    code = {404: e.NOT_FOUND, 405: e.METHOD_NOT_ALLOWED}.get(error.status_code,
                                                            e.INVALID_REQUEST)
    return JSONResponse(e.error_body(code, str(error.detail)), error.status_code,
                        headers=getattr(error, "headers", None))


async def _store_down(_request: Request, error: Exception) -> Response:
    log.warning("store unavailable: %s", error)
    return refusal_response(e.Refused(e.UNAVAILABLE, "the fact store is unavailable",
                                      retry_after=1))


async def _unexpected(_request: Request, error: Exception) -> Response:
    log.exception("unexpected error", exc_info=error)
    return JSONResponse(e.error_body(e.INTERNAL, "internal error"), 500)


def install(app: FastAPI) -> None:
    """The exception -> answer table of the app."""
    app.add_exception_handler(e.Refused, _refused)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _routing)
    app.add_exception_handler(StoreUnavailable, _store_down)
    app.add_exception_handler(Exception, _unexpected)

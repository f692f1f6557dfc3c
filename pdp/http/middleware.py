"""The ASGI middleware outside the access gate: the request id echoed and every request
timed for the metrics, by its route's path."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdp.http.access import valid_request_id
from pdp.service.runtime import Runtime


class RequestIdMiddleware:
    """Echo X-Request-ID on every response and time requests for the metrics."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Echoed only when it is one valid header (pdp.http.access refuses the request otherwise).
        given = [value for name, value in scope["headers"] if name == b"x-request-id"]
        request_id = given[0] if len(given) == 1 and valid_request_id(given[0]) else None
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if request_id is not None:
                    message["headers"] = [*message.get("headers", []),
                                          (b"x-request-id", request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.runtime.metrics.http_seconds.labels(path, scope["method"], str(status)).observe(
                time.perf_counter() - started)

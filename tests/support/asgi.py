"""The app in-process: `create_app(build_runtime(settings, KEYS))` on a SQLite file of its
own, its lifespan running (the store poll, the policy watch, webhooks) on an event loop in
a thread, and clients that are ordinary `httpx.Client`s whose transport calls the app.

For the tests whose subject is the HTTP contract: the client builds the same request (the
same headers, Content-Type, body bytes) as it would for a real server; only the socket and
uvicorn are left out (so uvicorn's own limits, pdp/http/serving.py, are tested against real
processes, tests/support/servers.py)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI

from pdp.http.app import create_app
from pdp.service.runtime import Runtime, build_runtime
from pdp.service.settings import Settings, public_url_for
from tests.support.servers import KEYS, POLL_INTERVAL_SECONDS, free_port


class PortalTransport(httpx.BaseTransport):
    """A sync transport onto the app: each request runs on the portal's event loop (where
    the lifespan's tasks run), through httpx's own ASGI transport. The response's body is
    passed on as it came (still encoded), so the client decodes it as it would a socket's."""

    def __init__(self, app: FastAPI, portal: BlockingPortal) -> None:
        self._asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False,
                                         client=("127.0.0.1", 40000))
        self._portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # the body as bytes: a stream both sync and async

        async def call() -> httpx.Response:
            answer = await self._asgi.handle_async_request(request)
            body = b"".join([part async for part in answer.stream])
            return httpx.Response(answer.status_code, headers=answer.headers,
                                  stream=httpx.ByteStream(body), extensions=answer.extensions)

        return self._portal.call(call)


@dataclass
class InProcess:
    """What tests used of a served process (`url`, `client(token)`), and the runtime."""

    url: str
    runtime: Runtime
    transport: PortalTransport
    store_file: Path  # the SQLite store (as for a served process)
    stack: ExitStack = field(repr=False)  # what stop_app ends

    def client(self, token: str | None = "t-admin", **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30,
                            transport=self.transport, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """One GET without a token (health, metrics, discovery, the OpenAPI document)."""
        with self.client(None) as client:
            return client.get(path, **kwargs)


def settings_for(tmp: Path, env: Mapping[str, str | None] | None = None) -> Settings:
    """The settings `pdp serve` would read, started by tests/support/servers.py with `env`:
    the same environment (the process's own, the test server's, then `env`; None: unset),
    read by Settings itself, and the public URL made as `pdp serve` makes it."""
    environment = {
        "PDP_DATABASE_URL": f"sqlite:///{tmp / 'facts.sqlite3'}",
        "PDP_DATA_DIR": str(tmp),
        "PDP_API_KEYS": json.dumps(KEYS),
        "PDP_POLL_INTERVAL_SECONDS": POLL_INTERVAL_SECONDS,
        # the register of rights before the service is open for rights approved before now
        "PDP_REGISTER_BEFORE": datetime.now(UTC).isoformat(),
        **(env or {}),
    }
    with _ENVIRONMENT, mock.patch.dict(os.environ):
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
    if not settings.public_url:
        port = free_port()  # an address nothing listens on: only the transport reaches the app
        settings = settings.model_copy(update={"public_url": public_url_for("127.0.0.1", port)})
    return settings


# One reader of a patched environment at a time (xdist runs processes, not threads; this is
# for apps started from fixtures of one process).
_ENVIRONMENT = threading.Lock()


def start_app(tmp: Path, *, env: Mapping[str, str | None] | None = None) -> InProcess:
    """The app on a store under `tmp` (as `start_server` would serve it with `env`), its
    lifespan started on an event loop of its own; `stop_app` ends it."""
    settings = settings_for(tmp, env)
    runtime = build_runtime(settings, dict(settings.api_keys or {}))
    app = create_app(runtime)
    with ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal())
        stack.enter_context(portal.wrap_async_context_manager(app.router.lifespan_context(app)))
        running = InProcess(str(settings.public_url), runtime, PortalTransport(app, portal),
                            tmp / "facts.sqlite3", stack.pop_all())
    return running


def stop_app(app: InProcess) -> None:
    """The lifespan's end (its tasks cancelled, the runtime closed), then the loop's."""
    app.stack.close()


@contextmanager
def in_process(tmp: Path, *, env: Mapping[str, str | None] | None = None
               ) -> Iterator[InProcess]:
    """`start_app` ... `stop_app`."""
    running = start_app(tmp, env=env)
    try:
        yield running
    finally:
        stop_app(running)

"""The HTTP service (FastAPI): the one thin layer that owns limits, roles and status codes.

`create_app` only wires: the runtime the routes take (pdp.http.deps), the middleware (the
request id and timing outside, the access gate inside), the one refusal->status table
(pdp.http.errors), the routers of each resource in their order, and the lifespan that runs
the service's background loops (pdp.service.background). The routes live in their
resource's module. Decisions run on the event loop (a memoised decision is microseconds);
store I/O runs in the thread pool. Every error body is API.md's
`{"error": {"code", "message", "details"}}`.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI

from pdp.http import audit, decisions, errors, facts, meta, monitoring, policy, rights, search
from pdp.http.access import AccessGate
from pdp.http.middleware import RequestIdMiddleware
from pdp.http.openapi import describe
from pdp.http.wire import JSONResponse
from pdp.service import background
from pdp.service.runtime import Runtime


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """While the app serves, the service's loops run; after, the runtime is closed (and a
    worker's metrics files marked as a dead process's)."""
    runtime: Runtime = app.state.runtime
    tune_gc()
    try:
        async with background.running(runtime):
            yield
    finally:
        runtime.close()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def create_app(runtime: Runtime) -> FastAPI:
    # The discovery document names the configured public URL, never the request's Host
    # header (pdp.http.meta): without one the service does not start.
    if not runtime.settings.public_url:
        raise ValueError("create_app: settings.public_url is not set (PDP_PUBLIC_URL)")
    app = FastAPI(title="pdp", version="1", lifespan=lifespan,
                  default_response_class=JSONResponse, docs_url="/docs", redoc_url=None)
    app.state.runtime = runtime  # what the routes take as RuntimeDep (pdp.http.deps)
    # The access table, in front of every route (pdp.http.access); the request id outside it.
    app.add_middleware(AccessGate, auth=runtime.auth,
                       body_timeout_seconds=runtime.settings.body_timeout_seconds)
    app.add_middleware(RequestIdMiddleware, runtime=runtime)
    errors.install(app)

    app.include_router(meta.router)
    app.include_router(decisions.router)
    app.include_router(search.router)
    app.include_router(rights.router)
    app.include_router(audit.router)
    app.include_router(monitoring.router)
    app.include_router(policy.router)
    # Last: `/v1/{collection}/{fact_id:path}` matches any two-segment path under /v1/, so
    # every more specific route (/v1/grants/..., /v1/audit/..., /v1/policy/...) must come
    # first, as the first route that matches wins (pdp.http.access.ACCESS keeps this order).
    app.include_router(facts.router)

    describe(app)  # /openapi.json as the service answers (pdp.http.openapi)
    return app


def tune_gc() -> None:
    """A long-lived service with a large, stable heap (the facts) and many short-lived
    objects per request: move what start-up made out of the collector's way and collect
    the young generation less often. Measured: without this, the cyclic collector's
    passes over the pending decision records cost more than logging them."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def app_from_env() -> FastAPI:
    """The app built from the environment alone: for `pdp serve --workers N` and for any
    ASGI server, e.g. `uvicorn --factory pdp.http.app:app_from_env` or gunicorn's uvicorn worker."""
    from pdp.service.runtime import build_runtime
    from pdp.service.settings import Settings

    settings = Settings()
    if not settings.api_keys:
        raise SystemExit("pdp: PDP_API_KEYS is not set")
    if not settings.public_url:
        raise SystemExit("pdp: PDP_PUBLIC_URL is not set: the URL clients reach the service "
                         "at, e.g. https://pdp.example.fi (pdp serve sets it from --host/--port)")
    return create_app(build_runtime(settings, settings.api_keys))

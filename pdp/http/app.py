"""The HTTP service (FastAPI): the one thin layer that owns limits, roles and status codes.

Decisions run on the event loop (a memoised decision is microseconds); store I/O runs in
the thread pool. Every error body is API.md's `{"error": {"code", "message", "details"}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdp.audit.log import AuditUnavailable
from pdp.engine.authzen import (
    ActionSearch,
    ResourceSearch,
    SubjectSearch,
)
from pdp.engine.facts_service import parse_batch, parse_id
from pdp.http import decisions, errors, search
from pdp.http.access import (
    KIND_ROLES,
    READ_ROLES,
    WRITE_ROLES,
    AccessGate,
    valid_request_id,
)
from pdp.http.audit import audit_router
from pdp.http.monitoring import monitoring_router
from pdp.http.openapi import describe
from pdp.http.policy import policy_router, watch_policy
from pdp.http.rights import lifecycle_router
from pdp.http.wire import JSONResponse, read_json
from pdp.model.callers import MUNICIPALITY_ADMIN, Caller, forbidden
from pdp.model.errors import (
    NOT_FOUND,
    Refused,
    bad_request,
    invalid,
)
from pdp.model.facts import (
    COLLECTIONS,
    Grant,
    dump_fact,
    parse_fact,
)
from pdp.model.vocab import FACT_KINDS
from pdp.rights.egress import AllowList
from pdp.rights.lifecycle import (
    GRANT_STATES,
    refuse_grant_items,
    refuse_grant_write,
)
from pdp.rights.webhooks import WebhookDispatcher
from pdp.service.runtime import Runtime
from pdp.store.protocols import Change, NotFound, StoreUnavailable

log = logging.getLogger(__name__)

SearchModel = ResourceSearch | SubjectSearch | ActionSearch
Shape = TypeVar("Shape", bound=BaseModel)
STATE_COUNT_SECONDS = 30  # how long a count of rights by state may be reused by /metrics


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


def create_app(runtime: Runtime) -> FastAPI:
    settings = runtime.settings
    facts = runtime.facts
    audit = runtime.audit
    lifecycle = runtime.lifecycle
    metrics = runtime.metrics
    auth = runtime.auth

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tune_gc()
        tasks = [asyncio.create_task(_poll_store())]
        if settings.policy_watch_seconds > 0:
            tasks.append(asyncio.create_task(
                watch_policy(runtime, settings.policy_watch_seconds)))
        if settings.webhooks:
            dispatcher = WebhookDispatcher(
                facts.store, settings.webhooks, poll_seconds=settings.poll_interval_seconds,
                allow=AllowList.parse(settings.webhook_allow_hosts))
            tasks.append(asyncio.create_task(dispatcher.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            runtime.close()
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    async def _poll_store() -> None:
        """Confirm the facts are current (catching up on writes that no bus message
        brought) and share a snapshot now and then."""
        last_snapshot = time.monotonic()
        while True:
            await asyncio.sleep(settings.poll_interval_seconds)
            try:
                await run_in_threadpool(facts.confirm)
                metrics.facts_version.set(facts.index.version)
                if time.monotonic() - last_snapshot >= settings.snapshot_interval_seconds:
                    last_snapshot = time.monotonic()
                    await run_in_threadpool(facts.save_snapshot)
            except Exception:  # keep polling whatever happens
                log.exception("confirming the facts failed")

    app = FastAPI(title="pdp", version="1", lifespan=lifespan,
                  default_response_class=JSONResponse, docs_url="/docs", redoc_url=None)
    app.state.runtime = runtime  # what the routes take as RuntimeDep (pdp.http.deps)
    # The access table, in front of every route (pdp.http.access); the request id outside it.
    app.add_middleware(AccessGate, auth=auth,
                       body_timeout_seconds=settings.body_timeout_seconds)
    app.add_middleware(RequestIdMiddleware, runtime=runtime)

    errors.install(app)

    # -- health ------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        problems = []
        if not facts.loaded:
            problems.append("facts not loaded")
        try:
            await run_in_threadpool(facts.store.ping)
        except StoreUnavailable as error:
            problems.append(f"store: {error}")
        if audit is not None:
            try:
                await run_in_threadpool(audit.ping)
            except AuditUnavailable as error:
                problems.append(f"decision log: {error}")
        body = {"status": "ready" if not problems else "not_ready", "problems": problems,
                "policy_version": runtime.policy.version, "facts_version": facts.index.version,
                "facts_fresh": facts.fresh(),
                "bus": None if facts.bus is None else
                ("connected" if facts.bus.connected else "disconnected")}
        return JSONResponse(body, status_code=503 if problems else 200)

    counted: list[tuple[int, int]] = [(-1, -1)]  # (facts_version, time slot) last counted

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        metrics.facts_version.set(facts.index.version)
        metrics.facts_fresh.set(1 if facts.fresh() else 0)
        metrics.facts_confirmed_age.set(facts.confirmed_age())
        if audit is not None:
            with contextlib.suppress(AuditUnavailable):
                metrics.audit_pending.set(await run_in_threadpool(audit.pending_records))
        # Counting rights asks the policy for the state of each: at most every
        # STATE_COUNT_SECONDS (or after a write), not at every scrape.
        if (facts.index.version, int(time.monotonic() // STATE_COUNT_SECONDS)) != counted[0]:
            counted[0] = (facts.index.version, int(time.monotonic() // STATE_COUNT_SECONDS))
            states: dict[str, int] = dict.fromkeys(GRANT_STATES, 0)
            for row in await run_in_threadpool(lifecycle.listing):
                states[row["state"]] = states.get(row["state"], 0) + 1
            for state, count in states.items():
                metrics.grants.labels(state).set(count)
            metrics.cases_open.set(await run_in_threadpool(runtime.cases.count_open))
        return Response(metrics.expose(), media_type=CONTENT_TYPE_LATEST)

    # The configured public URL (PDP_PUBLIC_URL, or what `pdp serve` derived from its
    # address), never the request's Host header: a forged Host must not put another
    # server's URLs in the document a PEP trusts.
    if not settings.public_url:
        raise ValueError("create_app: settings.public_url is not set (PDP_PUBLIC_URL)")
    public_base = settings.public_url

    @app.get("/.well-known/authzen-configuration")
    async def authzen_configuration() -> dict[str, str]:
        base = public_base
        return {
            "policy_decision_point": base,
            "access_evaluation_endpoint": f"{base}/access/v1/evaluation",
            "access_evaluations_endpoint": f"{base}/access/v1/evaluations",
            "search_subject_endpoint": f"{base}/access/v1/search/subject",
            "search_resource_endpoint": f"{base}/access/v1/search/resource",
            "search_action_endpoint": f"{base}/access/v1/search/action",
        }

    # -- decisions, explain and search ---------------------------------------------------

    app.include_router(decisions.router)
    app.include_router(search.router)

    # -- the life of a right (before the generic facts routes, which would match) -------

    app.include_router(lifecycle_router(runtime))
    app.include_router(audit_router(runtime))
    app.include_router(monitoring_router(runtime))
    app.include_router(policy_router(runtime))

    # -- facts -------------------------------------------------------------------------

    def fact_scope(caller: Caller, kind: str, roles: Sequence[str],
                   municipality: str | None, fact_id: str) -> None:
        """A municipality admin acts only on its own municipality's users and grants:
        another's are not found (`municipality` None: the fact does not exist yet)."""
        if municipality is not None and not caller.acts_for(municipality, roles):
            raise Refused(NOT_FOUND, f"no {kind} {fact_id!r}")

    def scoped_writer(caller: Caller, kind: str) -> bool:
        """Writes `kind` only as a municipality admin, for its own municipality."""
        return not caller.has_any([r for r in WRITE_ROLES[kind] if r != MUNICIPALITY_ADMIN])

    def municipality_of(kind: str, fact_id: str) -> str | None:
        index = facts.index
        if kind == "user":
            user = index.users.get(fact_id)
            return user.municipality if user else None
        if kind == "grant":
            grant = index.grants.get(fact_id)
            owner = index.users.get(grant.user) if grant else None
            return owner.municipality if owner else None
        return None

    def authorized_kind(request: Request, collection: str,
                        roles: dict[str, list[str]]) -> tuple[str, Caller]:
        """The kind a facts URL names: 401 before 404 before 403."""
        caller = auth.authenticate(request.headers.get("authorization"))
        kind = COLLECTIONS.get(collection)
        if kind is None:
            raise Refused(NOT_FOUND, f"no such collection: {collection}")
        if not caller.has_any(roles[kind]):
            raise forbidden(roles[kind])
        return kind, caller

    def check_id(kind: str, fact_id: str, field: str = "id") -> None:
        try:
            parse_id(kind, fact_id)
        except ValidationError:
            what = ("a three-digit municipality code" if kind == "agreement" else
                    "1-128 letters, digits, '-', '_' or '.'")
            raise bad_request(f"must be {what}", field=field) from None

    def fact_body(kind: str, fact_id: str, data: dict[str, Any], version: int) -> dict[str, Any]:
        return {"id": fact_id, **data, "facts_version": version}

    @app.put("/v1/{collection}/{fact_id:path}")
    async def put_fact(collection: str, fact_id: str, request: Request) -> dict[str, Any]:
        kind, caller = authorized_kind(request, collection, WRITE_ROLES)
        check_id(kind, fact_id)
        if kind == "grant":  # never written here: 409 before the body is validated
            try:
                raw: Any = await read_json(request, settings.max_body_bytes)
            except Refused:
                raw = None
            raise refuse_grant_write(lifecycle, fact_id, raw)
        body = await read_json(request, settings.max_body_bytes)
        try:
            fact = parse_fact(kind, body)
        except ValidationError as error:
            raise invalid(error) from None
        data = dump_fact(fact)
        if kind == "user" and scoped_writer(caller, kind):
            # A municipality admin: the body first, then the id, which answers alike for a
            # user of another municipality and a deleted one's (409 id_taken), so that no
            # write tells which ids exist elsewhere (pdp.rights.lifecycle.Lifecycle.write_user).
            if not caller.acts_for(data["municipality"], WRITE_ROLES[kind]):
                raise forbidden([f"{MUNICIPALITY_ADMIN}:{data['municipality']}"])
            version = await run_in_threadpool(
                lifecycle.write_user, fact_id, data, caller.name,
                partial(caller.acts_for, roles=WRITE_ROLES[kind]))
        else:
            version = await run_in_threadpool(lifecycle.write_facts,
                                              [Change(kind, fact_id, data)], caller.name)
        metrics.fact_writes.labels(kind).inc()
        return fact_body(kind, fact_id, data, version)

    @app.get("/v1/{collection}/{fact_id:path}")
    async def get_fact(collection: str, fact_id: str, request: Request) -> dict[str, Any]:
        kind, caller = authorized_kind(request, collection, READ_ROLES)
        unscoped = [r for r in READ_ROLES[kind] if r != MUNICIPALITY_ADMIN]
        if kind in ("user", "grant") and not caller.has_any(unscoped):
            # a municipality admin: only facts known to be its own
            fact_scope(caller, kind, READ_ROLES[kind],
                       municipality_of(kind, fact_id) or "", fact_id)
        stored = await run_in_threadpool(facts.get, kind, fact_id)
        if stored is None:
            raise Refused(NOT_FOUND, f"no {kind} {fact_id!r}")
        body = fact_body(kind, fact_id, stored.data, stored.version)
        if kind == "grant":
            body["state"] = lifecycle.state(fact_id, Grant.model_validate(stored.data),
                                            lifecycle.clock())
        return body

    @app.delete("/v1/{collection}/{fact_id:path}")
    async def delete_fact(collection: str, fact_id: str, request: Request) -> dict[str, Any]:
        kind, caller = authorized_kind(request, collection, WRITE_ROLES)
        try:
            if kind == "user" and scoped_writer(caller, kind):
                # another municipality's user is not found, as an unknown one is
                version = await run_in_threadpool(
                    lifecycle.write_user, fact_id, None, caller.name,
                    partial(caller.acts_for, roles=WRITE_ROLES[kind]))
            else:
                version = await run_in_threadpool(lifecycle.write_facts,
                                                  [Change(kind, fact_id, None)], caller.name)
        except NotFound:
            raise Refused(NOT_FOUND, f"no {kind} {fact_id!r}") from None
        metrics.fact_writes.labels(kind).inc()
        return {"id": fact_id, "deleted": True, "facts_version": version}

    @app.post("/v1/facts:batch")
    async def facts_batch(request: Request) -> dict[str, Any]:
        caller = auth.require(request.headers.get("authorization"),
                              sorted(set(KIND_ROLES.values())))
        body = await read_json(request, settings.max_batch_body_bytes)
        raw = body.get("facts") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(raw, list):
            raise bad_request("must be a list of facts", field="facts")
        if len(raw) > settings.max_facts_batch:
            raise bad_request(f"{len(raw)} facts; at most {settings.max_facts_batch}",
                              field="facts")
        kinds = {str(i.get("kind")) for i in raw if isinstance(i, dict)} & set(FACT_KINDS)
        missing = sorted({KIND_ROLES[k] for k in kinds if not caller.has_any([KIND_ROLES[k]])})
        if missing:
            raise forbidden(missing[:1])
        refuse_grant_items(lifecycle, raw)
        changes = parse_batch(raw)
        if not changes:
            return {"facts_version": facts.index.version, "count": 0}
        version = await run_in_threadpool(lifecycle.write_facts, changes, caller.name)
        for change in changes:
            metrics.fact_writes.labels(change.kind).inc()
        return {"facts_version": version, "count": len(changes)}

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


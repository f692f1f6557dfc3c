"""The three AuthZEN search routes: which resources, subjects or actions the policy
allows, a page at a time, answered from the same memoised policy as evaluations and
recorded in the decision log like them (pdp.http.decisions)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from pdp.audit.log import AuditRecord, new_record_id
from pdp.engine.authzen import ActionSearch, ResourceSearch, SubjectSearch
from pdp.engine.search import (
    BadToken,
    Page,
    decode_token,
    encode_token,
    query_fingerprint,
    search_actions,
    search_resources,
    search_subjects,
)
from pdp.http.decisions import ensure_facts, pep_request, recorded
from pdp.http.deps import CallerDep, RuntimeDep
from pdp.model.callers import Caller
from pdp.model.clock import to_micros
from pdp.model.errors import bad_request
from pdp.service.runtime import Runtime

SearchModel = ResourceSearch | SubjectSearch | ActionSearch

router = APIRouter()


def searcher(query: SearchModel) -> tuple[Callable[..., Page], str | None, str | None,
                                         str | None]:
    """The search a query asks for, and the (user, client, action) it names."""
    if isinstance(query, ResourceSearch):
        return (partial(search_resources, user=query.subject.id, action=query.action.name),
                query.subject.id, None, query.action.name)
    if isinstance(query, SubjectSearch):
        return (partial(search_subjects, client=query.resource.id, action=query.action.name),
                None, query.resource.id, query.action.name)
    return (partial(search_actions, user=query.subject.id, client=query.resource.id),
            query.subject.id, query.resource.id, None)


def search_record(runtime: Runtime, kind: str, query: SearchModel, page: Page, limit: int,
                  next_token: str, caller: Caller, request_id: str | None,
                  now: datetime) -> AuditRecord:
    """The decision log's record of one page: who asked what, and what it was shown."""
    _, user, client, action = searcher(query)
    index = runtime.facts.index
    user_fact = index.users.get(user) if user else None
    client_fact = index.clients.get(client) if client else None
    return AuditRecord(
        "search", new_record_id(), to_micros(now), user_id=user,
        user_municipality=user_fact.municipality if user_fact else None,
        client_id=client,
        client_municipality=client_fact.home_municipality if client_fact else None,
        category=query.resource.properties.category, action=action,
        purpose=query.context.purpose,
        decision=bool(page.ids), policy_version=runtime.policy.version,
        facts_version=index.version, request_id=request_id,
        caller=caller.name,
        details=orjson.dumps({"kind": kind, "results": page.ids,
                              "token": query.page.token, "limit": limit,
                              "next_token": next_token}).decode())


async def search(runtime: Runtime, caller: Caller, request: Request, kind: str,
                 model: type[SearchModel]) -> dict[str, Any]:
    """One page of an AuthZEN search: validated, answered from the same memoised
    policy as evaluations (in a worker thread: a cold page may take a while), and
    recorded in the decision log before it is returned."""
    settings, metrics = runtime.settings, runtime.metrics
    query = await pep_request(runtime, request, model)
    question = query.model_dump(mode="json", exclude={"page"})
    fingerprint = query_fingerprint(kind, question)
    after = None
    if query.page.token:
        try:
            after = decode_token(query.page.token, fingerprint)
        except BadToken as error:
            raise bad_request(str(error), field="page.token") from None
    limit = query.page.limit or settings.search_default_limit
    await ensure_facts(runtime, query.context.min_facts_version)
    now = runtime.decider.clock()
    started = time.perf_counter()
    run = searcher(query)[0]
    page = await run_in_threadpool(lambda: run(
        runtime.decider, category=query.resource.properties.category,
        purpose=query.context.purpose or "", after=after, limit=limit,
        budget=settings.search_page_budget_seconds, now=now,
        owner=query.resource.properties.owner or ""))
    results = ([{"name": i} for i in page.ids] if kind == "action" else
               [{"type": "user" if kind == "subject" else "client_record", "id": i}
                for i in page.ids])
    metrics.search_seconds.labels(kind).observe(time.perf_counter() - started)
    metrics.searches.labels(kind).inc()
    metrics.search_candidates.labels(kind).inc(page.examined)
    next_token = encode_token(fingerprint, page.after) if page.after is not None else ""
    record = search_record(runtime, kind, query, page, limit, next_token, caller,
                           request.headers.get("x-request-id"), now)
    await recorded(runtime, [record])
    return {"results": results,
            "page": {"next_token": next_token, "count": len(results)},
            "context": {"search_id": record.record_id,
                        "policy_version": record.policy_version,
                        "facts_version": record.facts_version}}


@router.post("/access/v1/search/resource")
async def search_resource(request: Request, runtime: RuntimeDep, caller: CallerDep
                          ) -> dict[str, Any]:
    return await search(runtime, caller, request, "resource", ResourceSearch)


@router.post("/access/v1/search/subject")
async def search_subject(request: Request, runtime: RuntimeDep, caller: CallerDep
                         ) -> dict[str, Any]:
    return await search(runtime, caller, request, "subject", SubjectSearch)


@router.post("/access/v1/search/action")
async def search_action(request: Request, runtime: RuntimeDep, caller: CallerDep
                        ) -> dict[str, Any]:
    return await search(runtime, caller, request, "action", ActionSearch)

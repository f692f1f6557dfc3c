"""The three AuthZEN search routes: which resources, subjects or actions the policy
allows, a page at a time, answered from the same memoised policy as evaluations and
recorded in the decision log like them (pdp.http.decisions)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from pdp.engine.authzen import ActionSearch, ResourceSearch, SubjectSearch
from pdp.engine.decider import Asker
from pdp.engine.search import BadToken, SearchQuery, decode_token, query_fingerprint
from pdp.engine.search import search as engine_search
from pdp.http.decisions import ensure_facts, pep_request, recorded
from pdp.http.deps import CallerDep, RuntimeDep
from pdp.model.callers import Caller
from pdp.model.errors import bad_request
from pdp.service.runtime import Runtime

SearchModel = ResourceSearch | SubjectSearch | ActionSearch

router = APIRouter()


def asked(kind: str, query: SearchModel, fingerprint: str, after: str | None, limit: int,
          budget: float) -> SearchQuery:
    """The engine's question from the wire's."""
    user = client = action = None
    if isinstance(query, ResourceSearch):
        user, action = query.subject.id, query.action.name
    elif isinstance(query, SubjectSearch):
        client, action = query.resource.id, query.action.name
    else:
        user, client = query.subject.id, query.resource.id
    return SearchQuery(kind, query.resource.properties.category, query.context.purpose,
                       query.resource.properties.owner or "", limit, budget, fingerprint,
                       user=user, client=client, action=action, token=query.page.token,
                       after=after)


async def search(runtime: Runtime, caller: Caller, request: Request, kind: str,
                 model: type[SearchModel]) -> dict[str, Any]:
    """One page of an AuthZEN search: validated, answered by the engine from the same
    memoised policy as evaluations (in a worker thread: a cold page may take a while),
    and recorded in the decision log before it is returned."""
    settings = runtime.settings
    query = await pep_request(runtime, request, model)
    fingerprint = query_fingerprint(kind, query.model_dump(mode="json", exclude={"page"}))
    after = None
    if query.page.token:
        try:
            after = decode_token(query.page.token, fingerprint)
        except BadToken as error:
            raise bad_request(str(error), field="page.token") from None
    limit = query.page.limit or settings.search_default_limit
    await ensure_facts(runtime, query.context.min_facts_version)
    searched = await run_in_threadpool(
        engine_search, runtime.decider,
        asked(kind, query, fingerprint, after, limit, settings.search_page_budget_seconds),
        runtime.decider.clock(), Asker(caller.name, request.headers.get("x-request-id")))
    await recorded(runtime, [searched.record])
    ids = searched.page.ids
    results = ([{"name": i} for i in ids] if kind == "action" else
               [{"type": "user" if kind == "subject" else "client_record", "id": i}
                for i in ids])
    return {"results": results,
            "page": {"next_token": searched.next_token, "count": len(results)},
            "context": {"search_id": searched.record.record_id,
                        "policy_version": searched.record.policy_version,
                        "facts_version": searched.record.facts_version}}


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

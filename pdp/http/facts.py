"""The facts API: one fact written, read or deleted by its collection and id, and a batch
of facts written all or nothing.

`/v1/{collection}/{fact_id:path}` matches any path under /v1/ with two segments or more:
this router is included after every other (pdp.http.app). The access gate has checked
the roles for the collection's kind (and answered 404 for an unknown collection); what
stays here is the scope rule (pdp.http.access.Reach: a municipality admin acts only on
its own municipality's users and rights) and a batch's need for the role of each kind.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from pdp.engine.facts_service import parse_batch, parse_id
from pdp.http.access import KIND_ROLES, ReachDep, owner
from pdp.http.deps import CallerDep, RuntimeDep
from pdp.http.wire import read_json
from pdp.model.callers import MUNICIPALITY_ADMIN, forbidden
from pdp.model.errors import NOT_FOUND, Refused, bad_request, invalid
from pdp.model.facts import COLLECTIONS, Grant, dump_fact, parse_fact
from pdp.model.vocab import FACT_KINDS
from pdp.rights.lifecycle import refuse_grant_items, refuse_grant_write
from pdp.store.protocols import Change, NotFound

router = APIRouter()


def kind_of(collection: str) -> str:
    """The kind a facts URL names (the gate has answered 404 for any other already)."""
    kind = COLLECTIONS.get(collection)
    if kind is None:
        raise Refused(NOT_FOUND, f"no such collection: {collection}")
    return kind


def check_id(kind: str, fact_id: str, field: str = "id") -> None:
    try:
        parse_id(kind, fact_id)
    except ValidationError:
        what = ("a three-digit municipality code" if kind == "agreement" else
                "1-128 letters, digits, '-', '_' or '.'")
        raise bad_request(f"must be {what}", field=field) from None


def fact_body(fact_id: str, data: dict[str, Any], version: int) -> dict[str, Any]:
    return {"id": fact_id, **data, "facts_version": version}


@router.put("/v1/{collection}/{fact_id:path}")
async def put_fact(collection: str, fact_id: str, request: Request, runtime: RuntimeDep,
                   caller: CallerDep, reach: ReachDep) -> dict[str, Any]:
    kind, lifecycle = kind_of(collection), runtime.lifecycle
    check_id(kind, fact_id)
    limit = runtime.settings.max_body_bytes
    if kind == "grant":  # never written here: 409 before the body is validated
        try:
            raw: Any = await read_json(request, limit)
        except Refused:
            raw = None
        raise refuse_grant_write(lifecycle, fact_id, raw)
    try:
        data = dump_fact(parse_fact(kind, await read_json(request, limit)))
    except ValidationError as error:
        raise invalid(error) from None
    if kind == "user" and not reach.everywhere:
        # A municipality admin: the body first, then the id, which answers alike for a
        # user of another municipality and a deleted one's (409 id_taken), so that no
        # write tells which ids exist elsewhere (pdp.rights.lifecycle.Lifecycle.write_user).
        if not reach.covers(data["municipality"]):
            raise forbidden([f"{MUNICIPALITY_ADMIN}:{data['municipality']}"])
        version = await run_in_threadpool(lifecycle.write_user, fact_id, data, caller.name,
                                          reach.covers)
    else:
        version = await run_in_threadpool(lifecycle.write_facts,
                                          [Change(kind, fact_id, data)], caller.name)
    runtime.metrics.fact_writes.labels(kind).inc()
    return fact_body(fact_id, data, version)


@router.get("/v1/{collection}/{fact_id:path}")
async def get_fact(collection: str, fact_id: str, runtime: RuntimeDep,
                   reach: ReachDep) -> dict[str, Any]:
    kind, lifecycle = kind_of(collection), runtime.lifecycle
    # a municipality admin: only facts known to be its own; another's are not found
    if kind in ("user", "grant") and not reach.covers(owner(runtime.facts.index, kind,
                                                            fact_id)):
        raise Refused(NOT_FOUND, f"no {kind} {fact_id!r}")
    stored = await run_in_threadpool(runtime.facts.get, kind, fact_id)
    if stored is None:
        raise Refused(NOT_FOUND, f"no {kind} {fact_id!r}")
    body = fact_body(fact_id, stored.data, stored.version)
    if kind == "grant":
        body["state"] = lifecycle.state(fact_id, Grant.model_validate(stored.data),
                                        lifecycle.clock())
    return body


@router.delete("/v1/{collection}/{fact_id:path}")
async def delete_fact(collection: str, fact_id: str, runtime: RuntimeDep, caller: CallerDep,
                      reach: ReachDep) -> dict[str, Any]:
    kind, lifecycle = kind_of(collection), runtime.lifecycle
    try:
        if kind == "user" and not reach.everywhere:
            # another municipality's user is not found, as an unknown one is
            version = await run_in_threadpool(lifecycle.write_user, fact_id, None,
                                              caller.name, reach.covers)
        else:
            version = await run_in_threadpool(lifecycle.write_facts,
                                              [Change(kind, fact_id, None)], caller.name)
    except NotFound:
        raise Refused(NOT_FOUND, f"no {kind} {fact_id!r}") from None
    runtime.metrics.fact_writes.labels(kind).inc()
    return {"id": fact_id, "deleted": True, "facts_version": version}


def batch_items(raw: Any, limit: int) -> list[Any]:
    """The items of a batch body: a list of at most `limit` (400 otherwise)."""
    items = raw.get("facts") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or not isinstance(items, list):
        raise bad_request("must be a list of facts", field="facts")
    if len(items) > limit:
        raise bad_request(f"{len(items)} facts; at most {limit}", field="facts")
    return items


@router.post("/v1/facts:batch")
async def facts_batch(request: Request, runtime: RuntimeDep, caller: CallerDep
                      ) -> dict[str, Any]:
    settings, lifecycle = runtime.settings, runtime.lifecycle
    raw = batch_items(await read_json(request, settings.max_batch_body_bytes),
                      settings.max_facts_batch)
    # scope: the gate let in a keeper of any kind; the batch needs the role of each it holds
    kinds = {str(i.get("kind")) for i in raw if isinstance(i, dict)} & set(FACT_KINDS)
    missing = sorted({KIND_ROLES[k] for k in kinds if not caller.has_any([KIND_ROLES[k]])})
    if missing:
        raise forbidden(missing[:1])
    refuse_grant_items(lifecycle, raw)
    changes = parse_batch(raw)
    if not changes:
        return {"facts_version": runtime.facts.index.version, "count": 0}
    version = await run_in_threadpool(lifecycle.write_facts, changes, caller.name)
    for change in changes:
        runtime.metrics.fact_writes.labels(change.kind).inc()
    return {"facts_version": version, "count": len(changes)}

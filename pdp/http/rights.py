"""HTTP routes of the life of a right: applications, workflow steps, agreements, listings,
history and the event outbox. The rules are in pdp.rights.lifecycle and the policy; who may
call each route is the access table's (pdp.http.access), and so is the scope rule (a
municipality admin acts for its own municipality only: `Reach`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from pdp.http.access import ReachDep, owner
from pdp.http.deps import CallerDep, RuntimeDep
from pdp.http.wire import parse_body, read_json
from pdp.model.callers import MUNICIPALITY_ADMIN, forbidden
from pdp.model.errors import NOT_FOUND, Refused, bad_request
from pdp.rights.events import event_json
from pdp.rights.lifecycle import (
    STEP_BODIES,
    AgreementAct,
    Application,
    GrantRegister,
    Step,
)

router = APIRouter()

Municipality = Annotated[str | None, Query(pattern=r"^[0-9]{3}$")]


def grant_state(grant_id: str, body: dict[str, Any], version: int, state: str
                ) -> dict[str, Any]:
    """A right as the routes answer it: its id, its fact, its state and the version."""
    return {"id": grant_id, **body, "state": state, "facts_version": version}


@router.post("/v1/grant-applications", status_code=201)
async def apply_for(request: Request, runtime: RuntimeDep, caller: CallerDep,
                    reach: ReachDep) -> dict[str, Any]:
    application = parse_body(Application,
                             await read_json(request, runtime.settings.max_body_bytes))
    municipality = owner(runtime.facts.index, "user", application.user)
    # A municipality admin sees only its own users; for the authority an unknown user is
    # refused by the limits (user_unknown).
    if not (reach.covers(municipality) if municipality else reach.everywhere):
        raise Refused(NOT_FOUND, f"no user {application.user!r}")
    grant_id, grant, version = await run_in_threadpool(
        runtime.lifecycle.apply_for, application, caller.name)
    return grant_state(grant_id, grant.model_dump(mode="json"), version, "applied")


@router.post("/v1/grants:import")
async def import_register(request: Request, runtime: RuntimeDep,
                          caller: CallerDep) -> dict[str, Any]:
    settings = runtime.settings
    body = await read_json(request, settings.max_batch_body_bytes)
    raw = body.get("grants") if isinstance(body, dict) else None
    if isinstance(raw, list) and len(raw) > settings.max_facts_batch:
        raise bad_request(f"{len(raw)} rights; at most {settings.max_facts_batch}",
                          field="grants")
    register = parse_body(GrantRegister, body)
    version = await run_in_threadpool(runtime.lifecycle.import_register, register,
                                      caller.name)
    return {"imported": len(register.grants), "facts_version": version}


@router.post("/v1/grants/{grant_id}/{step}")
async def take_step(grant_id: str, step: str, request: Request, runtime: RuntimeDep,
                    caller: CallerDep, reach: ReachDep) -> dict[str, Any]:
    # (an unknown step is the access table's 404)
    index, lifecycle = runtime.facts.index, runtime.lifecycle
    if grant_id not in index.grants or not reach.covers(owner(index, "grant", grant_id)):
        raise Refused(NOT_FOUND, f"no grant {grant_id!r}")  # or not this caller's to see
    body = parse_body(STEP_BODIES[step],
                      await read_json(request, runtime.settings.max_body_bytes))
    grant, version = await run_in_threadpool(
        lifecycle.step, grant_id, cast(Step, step), body, caller.name)
    return grant_state(grant_id, grant.model_dump(mode="json"), version,
                       lifecycle.state(grant_id, grant, lifecycle.clock()))


@router.get("/v1/grants")
async def list_grants(
    runtime: RuntimeDep,
    reach: ReachDep,
    municipality: Municipality = None,
    state: Annotated[str | None, Query(max_length=32)] = None,
    user: Annotated[str | None, Query(max_length=128)] = None,
    due_within_days: Annotated[int | None, Query(ge=0, le=3650)] = None,
) -> dict[str, Any]:
    scope = reach.listing(municipality)
    due = timedelta(days=due_within_days) if due_within_days is not None else None
    rows = await run_in_threadpool(lambda: runtime.lifecycle.listing(
        municipality=scope, state=state, user=user, due_within=due))
    return {"grants": rows}


@router.get("/v1/grants/{grant_id}/history")
async def history(grant_id: str, runtime: RuntimeDep, reach: ReachDep) -> dict[str, Any]:
    events = await run_in_threadpool(runtime.facts.store.events_of, "grant", grant_id)
    # A municipality admin sees its own municipality's events only: never another's, even
    # of an id that was once another municipality's (ids are not reused now, but a store
    # written before may hold such a history).
    events = [e for e in events if reach.covers(e.event.municipality)]
    municipality = owner(runtime.facts.index, "grant", grant_id)
    if not events or (municipality is not None and not reach.covers(municipality)):
        raise Refused(NOT_FOUND, f"no history of grant {grant_id!r}")
    return {"grant": grant_id, "history": [event_json(e) for e in events]}


@router.post("/v1/agreements/{code}/{act}")
async def agreement_act(code: str, act: str, request: Request, runtime: RuntimeDep,
                        caller: CallerDep, reach: ReachDep) -> dict[str, Any]:
    # (an unknown act is the access table's 404)
    if not reach.covers(code):
        # a municipality admin gives notice on its own municipality's agreement only
        raise forbidden([f"{MUNICIPALITY_ADMIN}:{code}", *reach.roles[:1]])
    body = parse_body(AgreementAct, await read_json(request, runtime.settings.max_body_bytes))
    lifecycle = runtime.lifecycle
    if act == "notice":
        agreement, version = await run_in_threadpool(
            lifecycle.notice, code, body, caller.name,
            "area" if reach.everywhere else "municipality")
    else:
        agreement, version = await run_in_threadpool(
            lifecycle.rescind, code, body, caller.name)
    return {"id": code, **agreement.model_dump(mode="json"), "facts_version": version}


@router.get("/v1/events")
async def events(
    runtime: RuntimeDep,
    reach: ReachDep,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    municipality: Municipality = None,
) -> dict[str, Any]:
    found = await run_in_threadpool(runtime.facts.store.events_after, after, limit,
                                    reach.listing(municipality))
    return {"events": [event_json(e) for e in found],
            "next_after": found[-1].id if found else after}

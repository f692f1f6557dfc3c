"""HTTP routes of the life of a right: applications, workflow steps, agreements, listings,
history and the event outbox. The rules are in pdp.rights.lifecycle and the policy; here are the
roles, the scoping to one municipality and the status codes."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from pdp.http.wire import parse_body, read_json
from pdp.model.callers import MUNICIPALITY_ADMIN, Caller, forbidden
from pdp.model.errors import NOT_FOUND, Refused, bad_request
from pdp.rights.events import event_json
from pdp.rights.lifecycle import (
    STEP_BODIES,
    AgreementAct,
    Application,
    GrantRegister,
    Step,
)
from pdp.service.runtime import Runtime

# Who may take each step. A municipality admin acts for its own municipality only.
STEP_ROLES: dict[str, list[str]] = {
    "apply": ["grant_admin", MUNICIPALITY_ADMIN],
    "approve": ["grant_admin"],
    "activate": ["keha"],
    "suspend": ["grant_admin"],
    "restore": ["grant_admin"],
    "revoke": ["grant_admin", "keha", MUNICIPALITY_ADMIN],
    "recertify": ["grant_admin", MUNICIPALITY_ADMIN],
}
READERS = ["grant_admin", "keha", "auditor", MUNICIPALITY_ADMIN]
# Either party may give notice (§ 9): the authority, or the municipality for its own
# agreement; only the area rescinds (§ 10).
AGREEMENT_ROLES: dict[str, list[str]] = {
    "notice": ["grant_admin", MUNICIPALITY_ADMIN],
    "rescind": ["grant_admin"],
}
# The register of rights granted before the service is imported by the admin alone.
IMPORTERS = ["admin"]


def lifecycle_router(runtime: Runtime) -> APIRouter:
    router = APIRouter()
    auth = runtime.auth
    lifecycle = runtime.lifecycle
    index = runtime.facts.index
    store = runtime.facts.store
    limit_bytes = runtime.settings.max_body_bytes

    def caller_for(request: Request, roles: list[str]) -> Caller:
        return auth.require(request.headers.get("authorization"), roles)

    def municipality_of_grant(grant_id: str) -> str | None:
        grant = index.grants.get(grant_id)
        owner = index.users.get(grant.user) if grant else None
        return owner.municipality if owner else None

    def own_grant(caller: Caller, grant_id: str, roles: list[str]) -> None:
        """404 for a right that does not exist or that this caller may not see."""
        municipality = municipality_of_grant(grant_id)
        if grant_id not in index.grants or not caller.acts_for(municipality or "", roles):
            raise Refused(NOT_FOUND, f"no grant {grant_id!r}")

    @router.post("/v1/grant-applications", status_code=201)
    async def apply_for(request: Request) -> dict[str, Any]:
        caller = caller_for(request, STEP_ROLES["apply"])
        application = parse_body(Application, await read_json(request, limit_bytes))
        user = index.users.get(application.user)
        # A municipality admin sees only its own users; for the authority an unknown user
        # is refused by the limits (400 user_unknown).
        visible = (caller.acts_for(user.municipality, STEP_ROLES["apply"]) if user
                   else caller.has_any(["grant_admin"]))
        if not visible:
            raise Refused(NOT_FOUND, f"no user {application.user!r}")
        grant_id, grant, version = await run_in_threadpool(
            lifecycle.apply_for, application, caller.name)
        return {"id": grant_id, **grant.model_dump(mode="json"), "state": "applied",
                "facts_version": version}

    @router.post("/v1/grants:import")
    async def import_register(request: Request) -> dict[str, Any]:
        caller = caller_for(request, IMPORTERS)
        body = await read_json(request, runtime.settings.max_batch_body_bytes)
        raw = body.get("grants") if isinstance(body, dict) else None
        if isinstance(raw, list) and len(raw) > runtime.settings.max_facts_batch:
            raise bad_request(f"{len(raw)} rights; at most {runtime.settings.max_facts_batch}",
                              field="grants")
        register = parse_body(GrantRegister, body)
        version = await run_in_threadpool(lifecycle.import_register, register, caller.name)
        return {"imported": len(register.grants), "facts_version": version}

    @router.post("/v1/grants/{grant_id}/{step}")
    async def take_step(grant_id: str, step: str, request: Request) -> dict[str, Any]:
        if step not in STEP_BODIES:
            raise Refused(NOT_FOUND, f"no such step: {step}")
        caller = caller_for(request, STEP_ROLES[step])
        own_grant(caller, grant_id, STEP_ROLES[step])
        body = parse_body(STEP_BODIES[step], await read_json(request, limit_bytes))
        grant, version = await run_in_threadpool(
            lifecycle.step, grant_id, cast(Step, step), body, caller.name)
        return {"id": grant_id, **grant.model_dump(mode="json"),
                "state": lifecycle.state(grant_id, grant, lifecycle.clock()),
                "facts_version": version}

    @router.get("/v1/grants")
    async def list_grants(
        request: Request,
        municipality: Annotated[str | None, Query(pattern=r"^[0-9]{3}$")] = None,
        state: Annotated[str | None, Query(max_length=32)] = None,
        user: Annotated[str | None, Query(max_length=128)] = None,
        due_within_days: Annotated[int | None, Query(ge=0, le=3650)] = None,
    ) -> dict[str, Any]:
        municipality = caller_for(request, READERS).listing_scope(municipality, READERS)
        due = timedelta(days=due_within_days) if due_within_days is not None else None
        rows = await run_in_threadpool(lambda: lifecycle.listing(
            municipality=municipality, state=state, user=user, due_within=due))
        return {"grants": rows}

    @router.get("/v1/grants/{grant_id}/history")
    async def history(grant_id: str, request: Request) -> dict[str, Any]:
        caller = caller_for(request, READERS)
        events = await run_in_threadpool(store.events_of, "grant", grant_id)
        # A municipality admin sees its own municipality's events only: never another's,
        # even of an id that was once another municipality's (ids are not reused now,
        # but a store written before may hold such a history).
        events = [e for e in events if caller.acts_for(e.event.municipality, READERS)]
        municipality = municipality_of_grant(grant_id)
        if not events or (municipality is not None
                          and not caller.acts_for(municipality, READERS)):
            raise Refused(NOT_FOUND, f"no history of grant {grant_id!r}")
        return {"grant": grant_id, "history": [event_json(e) for e in events]}

    @router.post("/v1/agreements/{code}/{act}")
    async def agreement_act(code: str, act: str, request: Request) -> dict[str, Any]:
        if act not in ("notice", "rescind"):
            raise Refused(NOT_FOUND, f"no such step: {act}")
        roles = AGREEMENT_ROLES[act]
        caller = caller_for(request, roles)
        if not caller.acts_for(code, roles):
            # a municipality admin gives notice on its own municipality's agreement only
            raise forbidden([f"{MUNICIPALITY_ADMIN}:{code}", *roles[:1]])
        body = parse_body(AgreementAct, await read_json(request, limit_bytes))
        if act == "notice":
            by_area = caller.has_any(["grant_admin"])
            agreement, version = await run_in_threadpool(
                lifecycle.notice, code, body, caller.name,
                "area" if by_area else "municipality")
        else:
            agreement, version = await run_in_threadpool(
                lifecycle.rescind, code, body, caller.name)
        return {"id": code, **agreement.model_dump(mode="json"), "facts_version": version}

    @router.get("/v1/events")
    async def events(
        request: Request,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        municipality: Annotated[str | None, Query(pattern=r"^[0-9]{3}$")] = None,
    ) -> dict[str, Any]:
        municipality = caller_for(request, READERS).listing_scope(municipality, READERS)
        found = await run_in_threadpool(store.events_after, after, limit, municipality)
        return {"events": [event_json(e) for e in found],
                "next_after": found[-1].id if found else after}

    return router

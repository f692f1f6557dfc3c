"""HTTP routes of supervision (agreement § 7): misuse cases — list them, open one by hand,
comment on one, resolve one.

Both parties supervise: the area (the authority, `grant_admin`, and its auditors) sees and
opens cases about any user, a municipality (`municipality_admin:<code>`) about its own
staff only. A case about a municipality's staff is resolved by the authority alone; the
municipality and the auditor add what they know as comments. (The auditor reads the
logs and answers data subjects; deciding a case and suspending rights is the authority's.)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, StringConstraints
from starlette.concurrency import run_in_threadpool

from pdp.http.wire import parse_body, read_json
from pdp.model.callers import MUNICIPALITY_ADMIN, Caller
from pdp.model.clock import to_micros
from pdp.model.errors import INVALID_TRANSITION, NOT_FOUND, Refused
from pdp.model.facts import REAL_TEXT, Id
from pdp.rights.lifecycle import Suspension, WorkflowError
from pdp.rights.monitoring import CaseNotOpen
from pdp.service.runtime import Runtime

READERS = ["auditor", "grant_admin", MUNICIPALITY_ADMIN]
RESOLVERS = ["grant_admin"]  # the authority's: a municipality comments, never closes
COMMENTERS = ["grant_admin", "auditor", MUNICIPALITY_ADMIN]
OPENERS = ["grant_admin", "auditor", MUNICIPALITY_ADMIN]

Note = Annotated[str, StringConstraints(min_length=3, max_length=2000), REAL_TEXT]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=4000), REAL_TEXT]


class Resolution(BaseModel):
    """POST /v1/monitoring/cases/{id}/resolve: the authority's finding."""

    model_config = ConfigDict(extra="forbid")
    outcome: Literal["justified", "misuse"]
    note: Note


class CaseReport(BaseModel):
    """POST /v1/monitoring/cases: a case opened by hand by a party that suspects misuse.
    `observed`: what was seen (the observation the contact people are told of);
    `justification`: why it is suspected misuse."""

    model_config = ConfigDict(extra="forbid")
    user: Id
    client: Id | None = None
    observed: LongText
    justification: LongText


class Comment(BaseModel):
    """POST /v1/monitoring/cases/{id}/comments: what one knows of the case."""

    model_config = ConfigDict(extra="forbid")
    text: LongText


def _not_open(case_id: str) -> Refused:
    return Refused(INVALID_TRANSITION, f"case {case_id!r} is not open")


def monitoring_router(runtime: Runtime) -> APIRouter:
    router = APIRouter()
    auth = runtime.auth
    cases = runtime.cases
    lifecycle = runtime.lifecycle
    index = runtime.facts.index
    limit_bytes = runtime.settings.max_body_bytes

    def now_us() -> int:
        return to_micros(datetime.now(UTC))

    @router.get("/v1/monitoring/cases")
    async def list_cases(
        request: Request,
        status: Annotated[str | None, Query(pattern="^(open|resolved)$")] = None,
        municipality: Annotated[str | None, Query(pattern=r"^[0-9]{3}$")] = None,
        rule: Annotated[str | None, Query(max_length=64)] = None,
        user: Annotated[str | None, Query(max_length=128)] = None,
    ) -> dict[str, Any]:
        municipality = auth.require(request.headers.get("authorization"),
                                    READERS).listing_scope(municipality, READERS)
        found = await run_in_threadpool(lambda: cases.list(
            status=status, municipality=municipality, rule=rule, user=user))
        return {"cases": found}

    # carries: C-18, C-19, C-20
    @router.post("/v1/monitoring/cases", status_code=201)
    async def open_case(request: Request) -> dict[str, Any]:
        caller = auth.require(request.headers.get("authorization"), OPENERS)
        body = parse_body(CaseReport, await read_json(request, limit_bytes))
        user = index.users.get(body.user)
        # A municipality opens cases about its own users only; another's is not there.
        if user is None or not caller.acts_for(user.municipality, OPENERS):
            raise Refused(NOT_FOUND, f"no user {body.user!r}")
        return await run_in_threadpool(lambda: cases.open_by_hand(
            user=body.user, municipality=user.municipality, client=body.client,
            observed=body.observed, justification=body.justification, by=caller.name,
            now_us=now_us()))

    async def case_for(caller: Caller, case_id: str, roles: list[str]) -> dict[str, Any]:
        """The case, if the caller acts for its municipality in one of `roles`; 404 for
        another municipality's case as for an unknown one."""
        case: dict[str, Any] | None = await run_in_threadpool(cases.get, case_id)
        if case is None or not caller.acts_for(case["municipality"], roles):
            raise Refused(NOT_FOUND, f"no case {case_id!r}")
        return case

    # carries: C-18, C-19
    @router.post("/v1/monitoring/cases/{case_id}/comments", status_code=201)
    async def comment(case_id: str, request: Request) -> dict[str, Any]:
        caller = auth.require(request.headers.get("authorization"), COMMENTERS)
        body = parse_body(Comment, await read_json(request, limit_bytes))
        await case_for(caller, case_id, COMMENTERS)
        try:
            added = await run_in_threadpool(cases.comment, case_id, body.text, caller.name,
                                            now_us())
        except CaseNotOpen:
            raise _not_open(case_id) from None
        if added is None:
            raise Refused(NOT_FOUND, f"no case {case_id!r}")
        return added

    # carries: C-19
    @router.post("/v1/monitoring/cases/{case_id}/resolve")
    async def resolve(case_id: str, request: Request) -> dict[str, Any]:
        caller = auth.require(request.headers.get("authorization"), RESOLVERS)
        body = parse_body(Resolution, await read_json(request, limit_bytes))
        case = await case_for(caller, case_id, RESOLVERS)
        try:
            resolved = await run_in_threadpool(
                cases.resolve, case_id, body.outcome, body.note, caller.name, now_us())
        except CaseNotOpen:
            raise _not_open(case_id) from None
        if resolved is None:
            raise Refused(NOT_FOUND, f"no case {case_id!r}")
        suspended: list[str] = []
        if body.outcome == "misuse" and runtime.monitoring.suspend_rights_on_misuse:
            for row in await run_in_threadpool(lambda: lifecycle.listing(user=case["user"])):
                if row["state"] in ("active", "recertification_due"):
                    try:
                        await run_in_threadpool(
                            lifecycle.step, row["id"], "suspend",
                            Suspension(reason=f"misuse found in {case_id}"), caller.name)
                        suspended.append(row["id"])
                    except WorkflowError:
                        pass  # changed meanwhile: it is no longer active
        return {**resolved, "suspended_grants": suspended}

    return router

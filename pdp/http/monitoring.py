"""HTTP routes of supervision (agreement § 7): misuse cases — list them, open one by hand,
comment on one, resolve one.

Both parties supervise: the area (the authority, `grant_admin`, and its auditors) sees and
opens cases about any user, a municipality (`municipality_admin:<code>`) about its own
staff only. A case about a municipality's staff is resolved by the authority alone; the
municipality and the auditor add what they know as comments. (The auditor reads the
logs and answers data subjects; deciding a case and suspending rights is the authority's.)
Who may call each route is the access table's (pdp.http.access); which cases a caller sees,
its `Reach`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, StringConstraints
from starlette.concurrency import run_in_threadpool

from pdp.http.access import Reach, ReachDep, owner
from pdp.http.deps import CallerDep, RuntimeDep
from pdp.http.wire import parse_body, read_json
from pdp.model.clock import to_micros
from pdp.model.errors import INVALID_TRANSITION, NOT_FOUND, Refused
from pdp.model.facts import REAL_TEXT, Id
from pdp.rights.monitoring import CaseNotOpen, resolve_case
from pdp.service.runtime import Runtime

router = APIRouter()

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


def now_us() -> int:
    return to_micros(datetime.now(UTC))


@router.get("/v1/monitoring/cases")
async def list_cases(
    runtime: RuntimeDep,
    reach: ReachDep,
    status: Annotated[str | None, Query(pattern="^(open|resolved)$")] = None,
    municipality: Annotated[str | None, Query(pattern=r"^[0-9]{3}$")] = None,
    rule: Annotated[str | None, Query(max_length=64)] = None,
    user: Annotated[str | None, Query(max_length=128)] = None,
) -> dict[str, Any]:
    scope = reach.listing(municipality)
    found = await run_in_threadpool(lambda: runtime.cases.list(
        status=status, municipality=scope, rule=rule, user=user))
    return {"cases": found}


# carries: C-18, C-19, C-20
@router.post("/v1/monitoring/cases", status_code=201)
async def open_case(request: Request, runtime: RuntimeDep, caller: CallerDep,
                    reach: ReachDep) -> dict[str, Any]:
    body = parse_body(CaseReport, await read_json(request, runtime.settings.max_body_bytes))
    municipality = owner(runtime.facts.index, "user", body.user)
    # A municipality opens cases about its own users only; another's is not there.
    if municipality is None or not reach.covers(municipality):
        raise Refused(NOT_FOUND, f"no user {body.user!r}")
    return await run_in_threadpool(lambda: runtime.cases.open_by_hand(
        user=body.user, municipality=municipality, client=body.client,
        observed=body.observed, justification=body.justification, by=caller.name,
        now_us=now_us()))


async def case_for(runtime: Runtime, reach: Reach, case_id: str) -> dict[str, Any]:
    """The case, if the caller acts for its municipality; 404 for another municipality's
    case as for an unknown one."""
    case: dict[str, Any] | None = await run_in_threadpool(runtime.cases.get, case_id)
    if case is None or not reach.covers(case["municipality"]):
        raise Refused(NOT_FOUND, f"no case {case_id!r}")
    return case


# carries: C-18, C-19
@router.post("/v1/monitoring/cases/{case_id}/comments", status_code=201)
async def comment(case_id: str, request: Request, runtime: RuntimeDep, caller: CallerDep,
                  reach: ReachDep) -> dict[str, Any]:
    body = parse_body(Comment, await read_json(request, runtime.settings.max_body_bytes))
    await case_for(runtime, reach, case_id)
    try:
        added = await run_in_threadpool(runtime.cases.comment, case_id, body.text,
                                        caller.name, now_us())
    except CaseNotOpen:
        raise _not_open(case_id) from None
    if added is None:
        raise Refused(NOT_FOUND, f"no case {case_id!r}")
    return added


# carries: C-19
@router.post("/v1/monitoring/cases/{case_id}/resolve")
async def resolve(case_id: str, request: Request, runtime: RuntimeDep, caller: CallerDep,
                  reach: ReachDep) -> dict[str, Any]:
    body = parse_body(Resolution, await read_json(request, runtime.settings.max_body_bytes))
    await case_for(runtime, reach, case_id)
    try:
        resolved = await run_in_threadpool(lambda: resolve_case(
            runtime.cases, runtime.lifecycle, case_id, body.outcome, body.note, caller.name,
            now_us(), suspend_on_misuse=runtime.monitoring.suspend_rights_on_misuse))
    except CaseNotOpen:
        raise _not_open(case_id) from None
    if resolved is None:
        raise Refused(NOT_FOUND, f"no case {case_id!r}")
    return resolved

"""HTTP routes of supervision: misuse cases — list them and resolve them (agreement § 7)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, StringConstraints
from starlette.concurrency import run_in_threadpool

from pdp.auth import MUNICIPALITY_ADMIN
from pdp.clock import to_micros
from pdp.errors import NOT_FOUND, ApiError
from pdp.http import parse_body, read_json
from pdp.lifecycle import Suspension, WorkflowError
from pdp.runtime import Runtime

READERS = ["auditor", "grant_admin", MUNICIPALITY_ADMIN]
RESOLVERS = ["grant_admin", MUNICIPALITY_ADMIN]


class Resolution(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: Literal["justified", "misuse"]
    note: Annotated[str, StringConstraints(min_length=3, max_length=2000)]


def monitoring_router(runtime: Runtime) -> APIRouter:
    router = APIRouter()
    auth = runtime.auth
    cases = runtime.cases
    lifecycle = runtime.lifecycle

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

    @router.post("/v1/monitoring/cases/{case_id}/resolve")
    async def resolve(case_id: str, request: Request) -> dict[str, Any]:
        caller = auth.require(request.headers.get("authorization"), RESOLVERS)
        body = parse_body(Resolution, await read_json(request, runtime.settings.max_body_bytes))
        case = await run_in_threadpool(cases.get, case_id)
        if case is None or not caller.acts_for(case["municipality"], RESOLVERS):
            raise ApiError(404, NOT_FOUND, f"no case {case_id!r}")
        resolved = await run_in_threadpool(
            cases.resolve, case_id, body.outcome, body.note, caller.name,
            to_micros(datetime.now(UTC)))
        if resolved is None:
            raise ApiError(409, "invalid_transition", f"case {case_id!r} is not open")
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

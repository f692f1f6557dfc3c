"""HTTP routes of the decision log (auditor role): queries, verification, the data-subject
report, samples for supervisors and legal holds. Every read of the log is itself recorded
in the log, with the reader, the question and the justification, before the answer is
returned. Who may call each route is the access table's (pdp.http.access)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from pdp.audit.log import (
    AuditLog,
    AuditUnavailable,
    Verification,
    hold_json,
    read_record,
)
from pdp.http.access import ReachDep
from pdp.http.deps import CallerDep, RuntimeDep
from pdp.http.wire import parse_body, read_json
from pdp.model.callers import Caller
from pdp.model.clock import from_micros, to_micros
from pdp.model.errors import AUDIT_UNAVAILABLE, NOT_FOUND, Refused, bad_request
from pdp.model.facts import REAL_TEXT, Id, MunicipalityCode, is_real_text
from pdp.rights.report import subject_accesses
from pdp.service.runtime import Runtime

router = APIRouter()

Justification = Annotated[str, Query(min_length=3, max_length=1000), REAL_TEXT]


class HoldRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(min_length=3, max_length=1000), REAL_TEXT]
    client: Id | None = None
    user: Id | None = None
    municipality: MunicipalityCode | None = None
    from_: AwareDatetime | None = Field(default=None, alias="from")
    until: AwareDatetime | None = None


class HoldRelease(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(min_length=3, max_length=1000), REAL_TEXT]


def _cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def _after(token: str | None) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind != "seq" or not value.isdigit():
            raise ValueError(token)
        return int(value)
    except ValueError:
        raise bad_request("not a cursor this service gave", field="cursor") from None


def _time(value: datetime | None, field: str) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise bad_request("must be RFC 3339 with an offset", field=field)
    return to_micros(value)


def record_json(row: dict[str, Any]) -> dict[str, Any]:
    """A log record as the auditor sees it."""
    body = {k: v for k, v in row.items() if k not in ("at_us", "details")}
    body["at"] = from_micros(row["at_us"]).isoformat()
    if row.get("details"):
        body["details"] = orjson.loads(row["details"])
    return body


def log_of(runtime: Runtime) -> AuditLog:
    if runtime.audit is None:
        raise Refused(AUDIT_UNAVAILABLE, "the decision log is off")
    return runtime.audit


async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn` in a worker thread; the log being unavailable is a refusal."""
    try:
        return await run_in_threadpool(lambda: fn(*args, **kwargs))
    except AuditUnavailable as error:
        raise Refused(AUDIT_UNAVAILABLE, str(error), retry_after=1) from None


async def read_recorded(runtime: Runtime, caller: Caller, request: Request, what: str,
                        question: dict[str, Any], justification: str | None,
                        answered: int) -> None:
    """Record this read of the log before its answer goes out."""
    record = read_record(caller.name, request.headers.get("x-request-id"), what,
                         question, justification, answered)
    await call(log_of(runtime).write, [record])


def _period(from_: datetime | None, until: datetime | None) -> dict[str, str | None]:
    return {"from": from_.isoformat() if from_ else None,
            "until": until.isoformat() if until else None}


@router.get("/v1/audit/decisions")
async def decisions(
    request: Request,
    runtime: RuntimeDep,
    caller: CallerDep,
    justification: Justification,
    user: Annotated[str | None, Query(max_length=128)] = None,
    client: Annotated[str | None, Query(max_length=128)] = None,
    municipality: Annotated[str | None, Query(pattern=r"^[0-9]{3}$")] = None,
    decision: bool | None = None,
    reason: Annotated[str | None, Query(max_length=64)] = None,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    until: datetime | None = None,
    record_type: Annotated[
        str, Query(pattern="^(decision|search|audit_read|all)$")] = "decision",
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    question = {"user": user, "client": client, "municipality": municipality,
                "decision": decision, "reason": reason, **_period(from_, until),
                "record_type": record_type, "cursor": cursor, "limit": limit}
    rows = await call(log_of(runtime).query, user=user, client=client,
                      municipality=municipality, decision=decision, reason=reason,
                      from_us=_time(from_, "from"), until_us=_time(until, "until"),
                      record_type=None if record_type == "all" else record_type,
                      after_seq=_after(cursor), limit=limit)
    await read_recorded(runtime, caller, request, "decisions", question, justification,
                        len(rows))
    next_token = _cursor(rows[-1]["seq"]) if len(rows) == limit else ""
    return {"records": [record_json(r) for r in rows], "page": {"next_token": next_token}}


@router.get("/v1/audit/verify")
async def verify(request: Request, runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    result: Verification = await call(log_of(runtime).verify)
    body = result.as_dict()
    # The answer matters most when the log is broken, and a broken log may refuse the
    # record of this read: the check is answered either way, and says so.
    try:
        await read_recorded(runtime, caller, request, "verify", {}, None, result.checked)
        body["read_recorded"] = True
    except Refused:
        body["read_recorded"] = False
    return body


@router.get("/v1/audit/clients/{client}/report")
async def report(
    client: str, request: Request, runtime: RuntimeDep, caller: CallerDep,
    justification: Justification, include_users: bool = False,
) -> dict[str, Any]:
    rows = await call(log_of(runtime).client_accesses, client)
    await read_recorded(runtime, caller, request, "client_report",
                        {"client": client, "include_users": include_users},
                        justification, len(rows))
    return {"client": client,
            "accesses": subject_accesses(runtime.facts.index, rows, include_users),
            "employee_identities": include_users}


@router.get("/v1/monitoring/samples")
async def samples(
    request: Request, runtime: RuntimeDep, caller: CallerDep, reach: ReachDep,
    justification: Justification,
    municipality: Annotated[str, Query(pattern=r"^[0-9]{3}$")],
    n: Annotated[int, Query(ge=1, le=500)] = 10,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """Random allowed accesses of a municipality in a period, for a supervisor to ask the
    users for their justifications (periodic checks, agreement § 7)."""
    if not reach.covers(municipality):
        raise Refused(NOT_FOUND, "no such municipality")
    rows = await call(log_of(runtime).sample, municipality, n, _time(from_, "from"),
                      _time(until, "until"))
    await read_recorded(runtime, caller, request, "sample",
                        {"municipality": municipality, "n": n, **_period(from_, until)},
                        justification, len(rows))
    return {"municipality": municipality, "samples": [record_json(r) for r in rows]}


@router.post("/v1/audit/holds", status_code=201)
async def add_hold(request: Request, runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    hold = parse_body(HoldRequest, await read_json(request, runtime.settings.max_body_bytes))
    if not (hold.client or hold.user or hold.municipality or hold.from_ or hold.until):
        raise bad_request("name a client, user, municipality or time range to hold",
                          field="client")
    stored = await call(log_of(runtime).add_hold, reason=hold.reason, created_by=caller.name,
                        now_us=to_micros(datetime.now(UTC)), client=hold.client,
                        user=hold.user, municipality=hold.municipality,
                        from_us=_time(hold.from_, "from"),
                        until_us=_time(hold.until, "until"), events=runtime.facts.store)
    return hold_json(stored)


@router.get("/v1/audit/holds")
async def list_holds(runtime: RuntimeDep) -> dict[str, Any]:
    return {"holds": [hold_json(h) for h in await call(log_of(runtime).holds)]}


@router.delete("/v1/audit/holds/{hold_id}")
async def release_hold(
    hold_id: str, request: Request, runtime: RuntimeDep, caller: CallerDep,
    reason: Annotated[str | None, Query(max_length=1000)] = None,
) -> dict[str, Any]:
    """Release a legal hold: with a reason (`?reason=` or a JSON body `{"reason": ...}`),
    recorded with who released it, and an event (the holds placed and released are
    events of the store)."""
    has_body = (request.headers.get("content-length") not in (None, "0")
                or "transfer-encoding" in request.headers)
    if reason is None and has_body:
        reason = parse_body(HoldRelease,
                            await read_json(request, runtime.settings.max_body_bytes)).reason
    if reason is None or len(reason.strip()) < 3 or not is_real_text(reason):
        raise bad_request("releasing a legal hold needs a reason (at least 3 characters of "
                          "real text, not blank or invisible marks)", field="reason")
    released = await call(log_of(runtime).release_hold, hold_id,
                          now_us=to_micros(datetime.now(UTC)), by=caller.name,
                          reason=reason, events=runtime.facts.store)
    if released is None:
        raise Refused(NOT_FOUND, f"no active hold {hold_id!r}")
    return {**hold_json(released), "released": True}

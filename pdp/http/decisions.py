"""The AuthZEN decision routes (evaluation, evaluations) and explain, and what they share
with the search routes (pdp.http.search): facts confirmed current, the body read and
validated, the decision log written before anything is answered.

The access gate (pdp.http.access) has already authenticated the caller and checked its
roles (a PEP; explain: the EXPLAINERS); the routes take it from `CallerDep`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from pdp.audit.log import AuditRecord, AuditUnavailable, new_record_id
from pdp.engine.authzen import Evaluation, EvaluationsEnvelope, merge_item
from pdp.engine.core import Decision
from pdp.engine.explain import explain
from pdp.engine.facts_service import FactsBehind
from pdp.http.deps import CallerDep, RuntimeDep
from pdp.http.wire import JSONResponse, read_json
from pdp.model.callers import Caller
from pdp.model.clock import to_micros
from pdp.model.errors import (
    AUDIT_UNAVAILABLE,
    INVALID_REQUEST,
    UNAVAILABLE,
    Refused,
    bad_request,
    invalid,
    validation_details,
)
from pdp.model.facts import ID_RULE
from pdp.service.runtime import Runtime

Shape = TypeVar("Shape", bound=BaseModel)
# An item of a batch: a valid evaluation, or (the raw item, its error answer).
Item = Evaluation | tuple[Any, dict[str, Any]]

router = APIRouter()


async def ensure_facts(runtime: Runtime, min_version: int | None) -> None:
    """Decide only from facts confirmed within the staleness bound, and at least as
    new as `min_version`; otherwise 503 — never a stale allow."""
    facts = runtime.facts
    if not facts.fresh() and not (await run_in_threadpool(facts.confirm)
                                  and facts.fresh()):
        raise Refused(UNAVAILABLE, "facts cannot be confirmed current")
    if min_version is None or facts.index.version >= min_version:
        return
    try:
        await run_in_threadpool(facts.ensure_version, min_version,
                                runtime.settings.min_facts_wait_seconds)
    except FactsBehind as error:
        raise Refused(UNAVAILABLE, str(error)) from None


def decide(runtime: Runtime, evaluation: Evaluation, caller: Caller, request_id: str | None,
           now: datetime, made: Decision | None = None
           ) -> tuple[dict[str, Any], AuditRecord]:
    """The answer and record of one evaluation; `made`: its memoised decision if the
    caller has it already (Decider.memoised), else it is decided here."""
    asked = evaluation.to_request()
    if made is None:
        made = runtime.decider.decide(asked, now)
    shadow = runtime.candidates.current
    if shadow is not None:
        shadow.offer(asked, now, made)
    runtime.metrics.decision_counter(made.decision, made.reason,
                                     evaluation.context.purpose).inc()
    record = decision_record(runtime, evaluation, made, caller, request_id, now)
    return {
        "decision": made.decision,
        "context": {
            "reason": made.reason,
            "decision_id": record.record_id,
            "policy_version": made.policy_version,
            "facts_version": made.facts_version,
        },
    }, record


def decision_record(runtime: Runtime, evaluation: Evaluation, made: Decision, caller: Caller,
                    request_id: str | None, now: datetime) -> AuditRecord:
    index = runtime.facts.index
    user = index.users.get(evaluation.subject.id)
    client = index.clients.get(evaluation.resource.id)
    return AuditRecord(
        "decision", new_record_id(), to_micros(now),
        user_id=evaluation.subject.id,
        user_municipality=user.municipality if user else None,
        grant_id=made.grant,
        client_id=evaluation.resource.id,
        client_municipality=client.home_municipality if client else None,
        category=evaluation.resource.properties.category,
        action=evaluation.action.name,
        purpose=evaluation.context.purpose,
        decision=made.decision, reason=made.reason,
        policy_version=made.policy_version, facts_version=made.facts_version,
        request_id=request_id, caller=caller.name)


def invalid_record(runtime: Runtime, raw: Any, caller: Caller, request_id: str | None,
                   now: datetime) -> AuditRecord:
    """A batch item too malformed to decide: still a deny, so still recorded (with
    its ids only where they obey the id rule: the log keeps no control characters
    or direction marks)."""
    def member(key: str) -> str | None:
        value = raw.get(key) if isinstance(raw, dict) else None
        found = value.get("id") if isinstance(value, dict) else None
        return found if isinstance(found, str) and ID_RULE.fullmatch(found) else None

    return AuditRecord("decision", new_record_id(), to_micros(now),
                       user_id=member("subject"), client_id=member("resource"),
                       decision=False, reason=INVALID_REQUEST,
                       policy_version=runtime.policy.version,
                       facts_version=runtime.facts.index.version, request_id=request_id,
                       caller=caller.name)


async def recorded(runtime: Runtime, records: list[AuditRecord]) -> None:
    """Return only once the records are durable; 503 if they cannot be written."""
    audit = runtime.audit
    if audit is None or not records:
        return
    try:
        await asyncio.wrap_future(audit.append(records))
    except AuditUnavailable as error:
        runtime.metrics.audit_failures.inc()
        raise Refused(AUDIT_UNAVAILABLE, f"the decision log is unavailable: {error}") from None


async def pep_request(runtime: Runtime, request: Request, model: type[Shape]) -> Shape:
    """The request body, validated (400 otherwise); the gate has let the caller in."""
    body = await read_json(request, runtime.settings.max_body_bytes)
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise invalid(error) from None


def batch_items(runtime: Runtime, envelope: EvaluationsEnvelope) -> list[Item]:
    """Each item of a batch merged with the envelope's defaults and validated; one that
    is not valid is answered (and recorded) as a deny with its error, not the batch."""
    limit = runtime.settings.max_decision_batch
    if len(envelope.evaluations) > limit:
        raise bad_request(f"{len(envelope.evaluations)} items; at most {limit}",
                          field="evaluations")
    items: list[Item] = []
    for index, raw in enumerate(envelope.evaluations):
        try:
            if not isinstance(raw, dict):
                Evaluation.model_validate(raw)  # raises: names what the item should be
            items.append(Evaluation.model_validate(merge_item(envelope, raw)))
        except ValidationError as error:
            details = validation_details(error, f"evaluations[{index}]")
            items.append((raw, {"decision": False, "context": {"error": {
                "code": INVALID_REQUEST,
                "message": f"{details[0]['field']}: {details[0]['message']}",
                "details": details}}}))
    return items


def decide_batch(runtime: Runtime, items: list[Item], quick: list[Decision | None],
                 semantic: str, caller: Caller, request_id: str | None, now: datetime
                 ) -> tuple[list[dict[str, Any]], list[AuditRecord]]:
    """The answers and records of a batch, in order, up to where `semantic` stops it."""
    results: list[dict[str, Any]] = []
    records: list[AuditRecord] = []
    for item, made in zip(items, quick, strict=True):
        if isinstance(item, Evaluation):
            result, record = decide(runtime, item, caller, request_id, now, made)
        else:
            record = invalid_record(runtime, item[0], caller, request_id, now)
            result = {"decision": False, "context": {"decision_id": record.record_id,
                                                     **item[1]["context"]}}
        results.append(result)
        records.append(record)
        if semantic == "deny_on_first_deny" and not result["decision"]:
            break
        if semantic == "permit_on_first_permit" and result["decision"]:
            break
    return results, records


# The two hot endpoints answer a JSONResponse themselves: a dict would first go
# through FastAPI's jsonable_encoder (a tenth of a warm request's time).
@router.post("/access/v1/evaluation", response_class=JSONResponse)
async def evaluation(request: Request, runtime: RuntimeDep, caller: CallerDep) -> JSONResponse:
    item = await pep_request(runtime, request, Evaluation)
    await ensure_facts(runtime, item.context.min_facts_version)
    now = runtime.decider.clock()
    request_id = request.headers.get("x-request-id")
    # A memoised answer takes microseconds: on the event loop. A policy query takes
    # milliseconds: in a worker thread, so that the loop keeps serving meanwhile.
    made = runtime.decider.memoised(item.to_request(), now)
    if made is not None:
        result, record = decide(runtime, item, caller, request_id, now, made)
    else:
        result, record = await run_in_threadpool(decide, runtime, item, caller, request_id,
                                                 now)
    await recorded(runtime, [record])
    return JSONResponse(result)


@router.post("/access/v1/evaluations", response_class=JSONResponse)
async def evaluations(request: Request, runtime: RuntimeDep, caller: CallerDep
                      ) -> JSONResponse:
    request_id = request.headers.get("x-request-id")
    envelope = await pep_request(runtime, request, EvaluationsEnvelope)
    items = batch_items(runtime, envelope)
    versions = [i.context.min_facts_version for i in items if isinstance(i, Evaluation)]
    await ensure_facts(runtime, max((v for v in versions if v is not None), default=None))
    semantic = envelope.options.evaluations_semantic
    now = runtime.decider.clock()
    # The memoised answers, looked up once; a batch with none missing is decided on
    # the event loop, one that needs policy queries in a worker thread.
    quick = [runtime.decider.memoised(item.to_request(), now)
             if isinstance(item, Evaluation) else None for item in items]
    args = (runtime, items, quick, semantic, caller, request_id, now)
    if all(made is not None for item, made in zip(items, quick, strict=True)
           if isinstance(item, Evaluation)):
        results, records = decide_batch(*args)
    else:
        results, records = await run_in_threadpool(decide_batch, *args)
    await recorded(runtime, records)
    return JSONResponse({"evaluations": results})


@router.post("/v1/explain", response_class=JSONResponse)
async def explain_route(request: Request, runtime: RuntimeDep, caller: CallerDep
                        ) -> JSONResponse:
    """Every rule with passed or failed and the facts it read (pdp.engine.explain); the
    explanation shows personal data, so it is recorded like a decision."""
    item = await pep_request(runtime, request, Evaluation)
    await ensure_facts(runtime, item.context.min_facts_version)
    now = runtime.decider.clock()
    explained = await run_in_threadpool(explain, runtime.policy, runtime.facts.index,
                                        item.to_request(), now)
    record = decision_record(runtime, item, Decision(
        explained["decision"], explained["reason"], explained["policy_version"],
        explained["facts_version"], explained["grant"]), caller,
        request.headers.get("x-request-id"), now)._replace(record_type="explain")
    await recorded(runtime, [record])
    return JSONResponse({**explained, "explain_id": record.record_id})

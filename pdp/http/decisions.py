"""The AuthZEN decision routes (evaluation, evaluations) and explain, and what they share
with the search routes (pdp.http.search): facts confirmed current, the body read and
validated, the decision log written before anything is answered.

The access gate (pdp.http.access) has already authenticated the caller and checked its
roles (a PEP; explain: the EXPLAINERS); the routes take it from `CallerDep`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from pdp.audit.log import AuditUnavailable
from pdp.engine.authzen import Evaluation, EvaluationsEnvelope, merge_item
from pdp.engine.core import Decision, DecisionRequest
from pdp.engine.decider import Asker, Checked, Unreadable
from pdp.engine.explain import explain
from pdp.engine.facts_service import FactsBehind
from pdp.engine.records import AuditRecord, DecisionLog
from pdp.http.deps import CallerDep, RuntimeDep
from pdp.http.wire import JSONResponse, read_json
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
        raise Refused(UNAVAILABLE, "facts cannot be confirmed current", retry_after=1)
    if min_version is None or facts.index.version >= min_version:
        return
    try:
        await run_in_threadpool(facts.ensure_version, min_version,
                                runtime.settings.min_facts_wait_seconds)
    except FactsBehind as error:
        raise Refused(UNAVAILABLE, str(error), retry_after=1) from None


def answer(made: Decision, record: AuditRecord) -> dict[str, Any]:
    """One decision on the wire (API.md)."""
    return {"decision": made.decision,
            "context": {"reason": made.reason, "decision_id": record.record_id,
                        "policy_version": made.policy_version,
                        "facts_version": made.facts_version}}


def unreadable(raw: Any) -> Unreadable:
    """A batch item too malformed to decide, with its ids only where they obey the id
    rule (the log keeps no control characters or direction marks)."""
    def member(key: str) -> str | None:
        value = raw.get(key) if isinstance(raw, dict) else None
        found = value.get("id") if isinstance(value, dict) else None
        return found if isinstance(found, str) and ID_RULE.fullmatch(found) else None

    return Unreadable(member("subject"), member("resource"))


async def decided(runtime: Runtime, items: Sequence[DecisionRequest | Unreadable],
                  now: datetime, asker: Asker, stop: str | None = None) -> Checked:
    """The one decision entry (Decider.check), read from one view of the facts: a
    request whose answers are all memoised takes microseconds, so it is decided on the
    event loop; one that needs a policy query (milliseconds) is read and decided in a
    worker thread, and the loop keeps serving meanwhile."""
    decider = runtime.decider
    prepared = decider.prepare_memoised(items, now)
    if prepared is not None:
        return decider.finish(prepared, asker, stop)
    return await run_in_threadpool(decider.check, items, now, asker, stop)


async def recorded(runtime: Runtime, records: list[AuditRecord]) -> None:
    """Return only once the records are durable; 503 if they cannot be written."""
    audit: DecisionLog | None = runtime.audit
    if audit is None or not records:
        return
    try:
        await asyncio.wrap_future(audit.append(records))
    except AuditUnavailable as error:
        runtime.metrics.audit_failures.inc()
        raise Refused(AUDIT_UNAVAILABLE, f"the decision log is unavailable: {error}",
                      retry_after=1) from None


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


# The two hot endpoints answer a JSONResponse themselves: a dict would first go
# through FastAPI's jsonable_encoder (a tenth of a warm request's time).
@router.post("/access/v1/evaluation", response_class=JSONResponse)
async def evaluation(request: Request, runtime: RuntimeDep, caller: CallerDep) -> JSONResponse:
    item = await pep_request(runtime, request, Evaluation)
    await ensure_facts(runtime, item.context.min_facts_version)
    checked = await decided(runtime, [item.to_request()], runtime.decider.clock(),
                            Asker(caller.name, request.headers.get("x-request-id")))
    await recorded(runtime, checked.records)
    return JSONResponse(answer(checked.decisions[0], checked.records[0]))


@router.post("/access/v1/evaluations", response_class=JSONResponse)
async def evaluations(request: Request, runtime: RuntimeDep, caller: CallerDep
                      ) -> JSONResponse:
    envelope = await pep_request(runtime, request, EvaluationsEnvelope)
    items = batch_items(runtime, envelope)
    versions = [i.context.min_facts_version for i in items if isinstance(i, Evaluation)]
    await ensure_facts(runtime, max((v for v in versions if v is not None), default=None))
    checked = await decided(
        runtime, [i.to_request() if isinstance(i, Evaluation) else unreadable(i[0])
                  for i in items],
        runtime.decider.clock(), Asker(caller.name, request.headers.get("x-request-id")),
        envelope.options.evaluations_semantic)
    await recorded(runtime, checked.records)
    # A batch stopped early (its semantic) has fewer decisions than items.
    return JSONResponse({"evaluations": [
        answer(made, record) if isinstance(item, Evaluation) else
        {"decision": False, "context": {"decision_id": record.record_id,
                                        **item[1]["context"]}}
        for item, made, record in zip(items, checked.decisions, checked.records,
                                      strict=False)]})


@router.post("/v1/explain", response_class=JSONResponse)
async def explain_route(request: Request, runtime: RuntimeDep, caller: CallerDep
                        ) -> JSONResponse:
    """Every rule with passed or failed and the facts it read (pdp.engine.explain); the
    explanation shows personal data, so it is recorded like a decision."""
    item = await pep_request(runtime, request, Evaluation)
    await ensure_facts(runtime, item.context.min_facts_version)
    asker = Asker(caller.name, request.headers.get("x-request-id"), "explain")
    explained, record = await run_in_threadpool(explain, runtime.decider, item.to_request(),
                                                runtime.decider.clock(), asker)
    await recorded(runtime, [record])
    return JSONResponse({**explained, "explain_id": record.record_id})

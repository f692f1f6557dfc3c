"""HTTP routes of the policy authors' workflow: what is live and reloading it without a
restart, gated by the policy test suites (pdp.engine.policy_manager: putting a policy in
force is its domain call); a candidate in shadow (pdp.engine.shadow); the playground page
and the calls it makes. Watching the policy files is a loop of the service
(pdp.service.policy_watch). Who may call each route is the access table's (pdp.http.access)."""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from pdp.audit.log import AuditUnavailable, read_record
from pdp.engine.policy_manager import PolicyRejected
from pdp.http.deps import CallerDep, RuntimeDep
from pdp.http.errors import ApiError
from pdp.http.wire import parse_body, read_json
from pdp.model.errors import AUDIT_UNAVAILABLE, NOT_FOUND, POLICY_REJECTED, Refused, bad_request
from pdp.model.facts import is_real_text
from pdp.model.vocab import ACTIONS, CATEGORIES, SERVICES
from pdp.service.runtime import Runtime

log = logging.getLogger(__name__)
router = APIRouter()

PLAYGROUND = (resources.files("pdp.http") / "static" / "playground.html").read_text(
    encoding="utf-8")
CHOICES = 1000  # users and clients offered to pick from (any id may be typed)


def real_justification(value: str | None) -> str:
    """A justification given in the query: 3 to 1000 characters of real text (the one rule
    of pdp.model.facts.is_real_text, as for every justification), else 400."""
    text = value or ""
    if not 3 <= len(text.strip()) <= len(text) <= 1000 or not is_real_text(text):
        raise bad_request("a justification of 3 to 1000 characters of real text (not blank "
                          "or invisible marks) is required", field="justification")
    return text


class Upload(BaseModel):
    """A candidate policy: the text of every *.polar file, by file name."""

    model_config = ConfigDict(extra="forbid")
    files: dict[str, str] = Field(min_length=1, max_length=50)


async def put_in_force(runtime: Runtime, by: str) -> dict[str, Any]:
    """Put the policy directory in force here and on every replica (the domain call,
    PolicyManager.put_in_force, in a worker thread); policy_rejected, and nothing
    changes, if it may not go live."""
    return await run_in_threadpool(runtime.policies.put_in_force, by, runtime.facts)


@router.get("/v1/policy")
async def policy(runtime: RuntimeDep) -> dict[str, Any]:
    return runtime.policies.state.describe()


@router.post("/v1/policy/reload")
async def reload(runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    return await put_in_force(runtime, caller.name)


# -- the playground ----------------------------------------------------------------------


@router.get("/playground", include_in_schema=False)
async def playground() -> HTMLResponse:
    # The page holds no data: every call it makes carries the token typed into it.
    return HTMLResponse(PLAYGROUND)


@router.get("/v1/playground/choices")
async def choices(runtime: RuntimeDep) -> dict[str, Any]:
    with runtime.facts.index.reading() as view:
        users = [{"id": user_id, "municipality": user.municipality}
                 for user_id, user in sorted(view.users.items())[:CHOICES]]
        clients = [{"id": client_id, "home": client.home_municipality}
                   for client_id, client in sorted(view.clients.items())[:CHOICES]]
    return {"users": users, "clients": clients, "categories": list(CATEGORIES),
            "actions": list(ACTIONS), "purposes": ["", *SERVICES]}


@router.get("/v1/policy/files")
async def live_files(runtime: RuntimeDep) -> dict[str, Any]:
    policy = runtime.policies.state.policy
    return {"version": policy.version, "files": dict(policy.sources)}


@router.post("/v1/policy/test")
async def test_files(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """Run the live policy's suites on the files given; nothing changes."""
    body = parse_body(Upload, await read_json(request, runtime.settings.max_body_bytes))
    try:
        version, report = await run_in_threadpool(runtime.candidates.test, body.files)
    except PolicyRejected as error:
        if error.unsafe:  # outside the safe subset: nothing of it ran (400 here, not 409)
            raise ApiError(400, POLICY_REJECTED, error.message, error.details) from None
        return {"ok": False, "message": error.message, "details": error.details}
    return {"ok": True, "version": version,
            "message": f"{report.passed} of {report.total} cases pass", "details": []}


# -- a candidate in shadow ---------------------------------------------------------------


@router.post("/v1/policy/candidates", status_code=201)
async def upload(request: Request, runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    body = parse_body(Upload, await read_json(request, runtime.settings.max_body_bytes))
    try:
        shadow = await run_in_threadpool(runtime.candidates.upload, body.files, caller.name)
    except PolicyRejected as error:
        raise Refused(POLICY_REJECTED, error.message, error.details) from None
    log.info("candidate policy %s in shadow, by %s", shadow.version, caller.name)
    return shadow.describe()


@router.get("/v1/policy/candidates")
async def candidate(runtime: RuntimeDep) -> dict[str, Any]:
    shadow = runtime.candidates.current
    return {"candidate": None if shadow is None else shadow.describe()}


@router.get("/v1/policy/candidates/{version}/examples")
async def examples(version: str, request: Request, runtime: RuntimeDep,
                   caller: CallerDep) -> dict[str, Any]:
    """Where the candidate decided otherwise: who asked about whose record. Personal data,
    so read like the decision log: with a justification, and recorded."""
    justification = real_justification(request.query_params.get("justification"))
    shadow = runtime.candidates.current
    if shadow is None or shadow.version != version:
        raise Refused(NOT_FOUND, f"no candidate {version!r} in shadow")
    found = shadow.described_examples()
    if runtime.audit is None:
        raise Refused(AUDIT_UNAVAILABLE, "the decision log is off")
    record = read_record(caller.name, request.headers.get("x-request-id"),
                         "shadow_examples", {"version": version}, justification, len(found))
    try:
        await run_in_threadpool(runtime.audit.write, [record])
    except AuditUnavailable as error:
        raise Refused(AUDIT_UNAVAILABLE, str(error), retry_after=1) from None
    return {"version": version, "examples": found}


@router.post("/v1/policy/candidates/{version}/promote")
async def promote(version: str, runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    shadow = runtime.candidates.take(version)
    await run_in_threadpool(runtime.candidates.write_files, shadow)
    return await put_in_force(runtime, caller.name)


@router.delete("/v1/policy/candidates/{version}")
async def discard(version: str, runtime: RuntimeDep) -> dict[str, Any]:
    return {"discarded": runtime.candidates.take(version).version}

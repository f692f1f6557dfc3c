"""HTTP routes of the policy authors' workflow: what is live and reloading it without a
restart, gated by the policy test suites (pdp.engine.policy_manager); watching the policy files;
a candidate in shadow (pdp.engine.shadow); the playground page and the calls it makes."""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from pdp.audit.log import AuditUnavailable, read_record
from pdp.engine.policy_engine import policy_files, policy_version
from pdp.engine.policy_manager import PolicyRejected
from pdp.engine.shadow import CandidateError
from pdp.http.errors import ApiError
from pdp.http.wire import parse_body, read_json
from pdp.model.errors import AUDIT_UNAVAILABLE, NOT_FOUND, POLICY_REJECTED, Refused, bad_request
from pdp.model.facts import is_real_text
from pdp.model.vocab import ACTIONS, CATEGORIES, SERVICES
from pdp.service.runtime import Runtime

log = logging.getLogger(__name__)

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


READERS = ["policy_admin", "auditor"]
RELOADERS = ["policy_admin"]


async def put_in_force(runtime: Runtime, actor: str) -> dict[str, Any]:
    """Vet the policy directory and put it in force here and on every replica
    (pdp.engine.policy_manager.PolicyManager.put_in_force); 409 policy_rejected (and
    nothing changes) if it may not go live."""
    return await run_in_threadpool(runtime.policies.put_in_force, actor, runtime.facts)


async def watch_policy(runtime: Runtime, every: float) -> None:
    """PDP_POLICY_WATCH_SECONDS: when the policy files change on disk, put them in force
    as a reload would (vetted by the suites; a refused version is logged once and the
    old one keeps serving)."""
    directory = runtime.policies.policy_dir
    refused = ""
    while True:
        await asyncio.sleep(every)
        try:
            on_disk = await run_in_threadpool(
                lambda: policy_version(policy_files(directory)))
            if on_disk in (runtime.policies.state.policy.version, refused):
                continue
            try:
                await put_in_force(runtime, "policy watch")
            except Refused as error:
                refused = on_disk
                log.error("policy files changed (%s) but are refused: %s", on_disk,
                          error.message)
            except Exception:  # refused all the same, and said once, not every tick
                refused = on_disk
                log.exception("policy files changed (%s) but could not be put in force",
                              on_disk)
        except Exception:  # keep watching whatever happens
            log.exception("watching the policy files failed")


def policy_router(runtime: Runtime) -> APIRouter:
    router = APIRouter()
    auth = runtime.auth
    policies = runtime.policies
    candidates = runtime.candidates

    @router.get("/v1/policy")
    async def policy(request: Request) -> dict[str, Any]:
        auth.require(request.headers.get("authorization"), READERS)
        return policies.state.describe()

    @router.post("/v1/policy/reload")
    async def reload(request: Request) -> dict[str, Any]:
        caller = auth.require(request.headers.get("authorization"), RELOADERS)
        return await put_in_force(runtime, caller.name)

    # -- the playground ------------------------------------------------------------------

    @router.get("/playground", include_in_schema=False)
    async def playground() -> HTMLResponse:
        # The page holds no data: every call it makes carries the token typed into it.
        return HTMLResponse(PLAYGROUND)

    @router.get("/v1/playground/choices")
    async def choices(request: Request) -> dict[str, Any]:
        auth.require(request.headers.get("authorization"), RELOADERS)
        index = runtime.facts.index
        with index.lock:
            users = [{"id": user_id, "municipality": user.municipality}
                     for user_id, user in sorted(index.users.items())[:CHOICES]]
            clients = [{"id": client_id, "home": client.home_municipality}
                       for client_id, client in sorted(index.clients.items())[:CHOICES]]
        return {"users": users, "clients": clients, "categories": list(CATEGORIES),
                "actions": list(ACTIONS), "purposes": ["", *SERVICES]}

    @router.get("/v1/policy/files")
    async def live_files(request: Request) -> dict[str, Any]:
        auth.require(request.headers.get("authorization"), RELOADERS)
        policy = policies.state.policy
        return {"version": policy.version, "files": dict(policy.sources)}

    @router.post("/v1/policy/test")
    async def test_files(request: Request) -> dict[str, Any]:
        """Run the live policy's suites on the files given; nothing changes."""
        auth.require(request.headers.get("authorization"), RELOADERS)
        body = parse_body(Upload, await read_json(request, runtime.settings.max_body_bytes))
        try:
            version, report = await run_in_threadpool(candidates.test, body.files)
        except CandidateError:
            raise
        except PolicyRejected as error:
            if error.unsafe:  # outside the safe subset: nothing of it ran
                raise ApiError(400, POLICY_REJECTED, error.message, error.details) from None
            return {"ok": False, "message": error.message, "details": error.details}
        return {"ok": True, "version": version,
                "message": f"{report.passed} of {report.total} cases pass", "details": []}

    # -- a candidate in shadow -----------------------------------------------------------

    @router.post("/v1/policy/candidates", status_code=201)
    async def upload(request: Request) -> dict[str, Any]:
        caller = auth.require(request.headers.get("authorization"), RELOADERS)
        body = parse_body(Upload, await read_json(request, runtime.settings.max_body_bytes))
        try:
            shadow = await run_in_threadpool(candidates.upload, body.files, caller.name)
        except CandidateError:
            raise
        except PolicyRejected as error:
            raise Refused(POLICY_REJECTED, error.message, error.details) from None
        log.info("candidate policy %s in shadow, by %s", shadow.version, caller.name)
        return shadow.describe()

    @router.get("/v1/policy/candidates")
    async def candidate(request: Request) -> dict[str, Any]:
        auth.require(request.headers.get("authorization"), READERS)
        shadow = candidates.current
        return {"candidate": None if shadow is None else shadow.describe()}

    @router.get("/v1/policy/candidates/{version}/examples")
    async def examples(version: str, request: Request) -> dict[str, Any]:
        """Where the candidate decided otherwise: who asked about whose record. Personal
        data, so read like the decision log: with a justification, and recorded."""
        caller = auth.require(request.headers.get("authorization"), READERS)
        justification = real_justification(request.query_params.get("justification"))
        shadow = candidates.current
        if shadow is None or shadow.version != version:
            raise Refused(NOT_FOUND, f"no candidate {version!r} in shadow")
        found = shadow.described_examples()
        if runtime.audit is None:
            raise Refused(AUDIT_UNAVAILABLE, "the decision log is off")
        record = read_record(caller.name, request.headers.get("x-request-id"),
                             "shadow_examples", {"version": version}, justification,
                             len(found))
        try:
            await run_in_threadpool(runtime.audit.write, [record])
        except AuditUnavailable as error:
            raise Refused(AUDIT_UNAVAILABLE, str(error)) from None
        return {"version": version, "examples": found}

    @router.post("/v1/policy/candidates/{version}/promote")
    async def promote(version: str, request: Request) -> dict[str, Any]:
        caller = auth.require(request.headers.get("authorization"), RELOADERS)
        try:
            shadow = candidates.take(version)
        except CandidateError:
            raise
        await run_in_threadpool(candidates.write_files, shadow)
        return await put_in_force(runtime, caller.name)

    @router.delete("/v1/policy/candidates/{version}")
    async def discard(version: str, request: Request) -> dict[str, Any]:
        auth.require(request.headers.get("authorization"), RELOADERS)
        try:
            shadow = candidates.take(version)
        except CandidateError:
            raise
        return {"discarded": shadow.version}

    return router

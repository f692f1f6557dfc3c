"""HTTP routes of the policy authors' workflow: what is live, and reloading it without a
restart, gated by the policy test suites (pdp.policy_manager)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from pdp.bus import BusUnavailable
from pdp.errors import ApiError
from pdp.policy_manager import PolicyRejected
from pdp.runtime import Runtime
from pdp.store import Event

log = logging.getLogger(__name__)

POLICY_REJECTED = "policy_rejected"
READERS = ["policy_admin", "auditor"]
RELOADERS = ["policy_admin"]


def policy_router(runtime: Runtime) -> APIRouter:
    router = APIRouter()
    auth = runtime.auth
    policies = runtime.policies

    @router.get("/v1/policy")
    async def policy(request: Request) -> dict[str, Any]:
        auth.require(request.headers.get("authorization"), READERS)
        return policies.state.describe()

    @router.post("/v1/policy/reload")
    async def reload(request: Request) -> dict[str, Any]:
        caller = auth.require(request.headers.get("authorization"), RELOADERS)
        before = policies.state.policy.version

        def record(version: str, files: list[str]) -> None:
            # Who put which policy in force is part of the history (written before the
            # swap: if it cannot be written, the policy does not change).
            runtime.facts.write([], [Event("policy.activated", "policy", version, "",
                                           caller.name, None,
                                           {"version": version, "previous": before,
                                            "files": files})])

        try:
            state, changed = await run_in_threadpool(policies.reload, record)
        except PolicyRejected as error:
            log.warning("policy reload by %s refused: %s", caller.name, error.message)
            raise ApiError(409, POLICY_REJECTED, error.message, error.details) from None
        notified = None
        if changed:
            log.info("policy %s in force (was %s), by %s", state.policy.version, before,
                     caller.name)
            bus = runtime.facts.bus
            if bus is not None:
                try:
                    bus.publish_policy(state.policy.version)
                    notified = True
                except BusUnavailable as error:
                    log.warning("policy %s not announced to the other replicas: %s",
                                state.policy.version, error)
                    notified = False
        return {**state.describe(), "changed": changed, "replicas_notified": notified}

    return router

"""PDP_POLICY_WATCH_SECONDS: the policy files watched on disk. When they change, they are put
in force as a reload would put them (pdp.engine.policy_manager.PolicyManager.put_in_force:
vetted by the suites, recorded, announced to the other replicas); a refused version is
logged once, not at every look, and the old one keeps serving.

A loop of the service, not of HTTP: the app's lifespan starts it (`watch_policy`) and
cancels it on the way out.
"""

from __future__ import annotations

import asyncio
import logging

from pdp.engine.policy_engine import policy_files, policy_version
from pdp.model.errors import Refused
from pdp.service.runtime import Runtime

log = logging.getLogger(__name__)
BY = "policy watch"  # who put a watched policy in force, as its event says


async def watch_policy(runtime: Runtime, every: float) -> None:
    """Look at the policy files every `every` seconds, until cancelled."""
    refused = ""
    while True:
        await asyncio.sleep(every)
        try:
            refused = await asyncio.to_thread(look, runtime, refused)
        except Exception:  # keep watching whatever happens
            log.exception("watching the policy files failed")


def look(runtime: Runtime, refused: str) -> str:
    """One look: put the files on disk in force if they are new and not the version last
    refused. Returns the version last refused (blocking: the loop runs it in a thread)."""
    policies = runtime.policies
    on_disk = policy_version(policy_files(policies.policy_dir))
    if on_disk in (policies.state.policy.version, refused):
        return refused
    try:
        policies.put_in_force(BY, runtime.facts)
    except Refused as error:
        log.error("policy files changed (%s) but are refused: %s", on_disk, error.message)
        return on_disk
    except Exception:  # refused all the same, and said once, not every tick
        log.exception("policy files changed (%s) but could not be put in force", on_disk)
        return on_disk
    return refused

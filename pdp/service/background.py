"""The work a service process does besides answering requests: confirming the facts and
sharing snapshots, warming decisions, watching the policy files, delivering webhooks.

Service work, not HTTP: the app's lifespan (pdp.http.app) only enters `running(runtime)`,
which starts these loops and, on the way out, cancels them and waits for them to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from pdp.rights.egress import AllowList
from pdp.rights.webhooks import WebhookDispatcher
from pdp.service.policy_watch import watch_policy
from pdp.service.runtime import Runtime

log = logging.getLogger(__name__)


async def poll_store(runtime: Runtime) -> None:
    """Confirm the facts are current (catching up on writes that no bus message
    brought) and share a snapshot now and then, until cancelled."""
    settings, facts = runtime.settings, runtime.facts
    last_snapshot = time.monotonic()
    while True:
        await asyncio.sleep(settings.poll_interval_seconds)
        try:
            await asyncio.to_thread(facts.confirm)
            runtime.metrics.facts_version.set(facts.index.version)
            if time.monotonic() - last_snapshot >= settings.snapshot_interval_seconds:
                last_snapshot = time.monotonic()
                await asyncio.to_thread(facts.save_snapshot)
        except Exception:  # keep polling whatever happens
            log.exception("confirming the facts failed")


async def warm_decisions(runtime: Runtime, every: float = 1.0) -> None:
    """Decisions ready before they are asked (pdp.engine.warming): a pass over every
    user's likely requests at start (serving meanwhile), then, every `every` seconds,
    over what changed — a new policy version, the users a write touched."""
    warmer = runtime.warmer
    assert warmer is not None
    started = time.monotonic()
    try:
        try:
            if await asyncio.to_thread(warmer.full, "start"):
                log.info("decisions warmed in %.1f s", time.monotonic() - started)
        except Exception:  # serving goes on unwarmed
            log.exception("warming the decisions failed")
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(warmer.follow)
            except Exception:
                log.exception("warming the decisions failed")
    finally:  # cancelled: the pass in its thread ends at its next batch
        warmer.stop()


def loops(runtime: Runtime) -> list[Coroutine[Any, Any, None]]:
    """The loops this process runs while it serves, as its settings ask."""
    settings = runtime.settings
    found = [poll_store(runtime)]
    if runtime.warmer is not None:
        found.append(warm_decisions(runtime))
    if settings.policy_watch_seconds > 0:
        found.append(watch_policy(runtime, settings.policy_watch_seconds))
    if settings.webhooks:
        dispatcher = WebhookDispatcher(
            runtime.facts.store, settings.webhooks, poll_seconds=settings.poll_interval_seconds,
            allow=AllowList.parse(settings.webhook_allow_hosts))
        found.append(dispatcher.run())
    return found


@contextlib.asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[None]:
    """The loops running for as long as the block runs; cancelled and awaited after it."""
    tasks = [asyncio.create_task(loop) for loop in loops(runtime)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

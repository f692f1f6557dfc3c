"""Pushing the event outbox to webhooks: in order, signed, at least once, nothing lost.

Each webhook has a cursor in the store (`webhook:<name>`): the id of the last event it
acknowledged with a 2xx. Events after it are sent one by one, in id order; a failure is
retried with backoff (up to `max_backoff` seconds apart) until it succeeds, so a receiver
that is down for a while receives everything afterwards. The cursor only moves after an
acknowledgement, so a restart re-sends at most the event in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import orjson
from starlette.concurrency import run_in_threadpool

from pdp.events import event_json, signature
from pdp.settings import Webhook
from pdp.store import FactStore, StoredEvent

log = logging.getLogger(__name__)


class WebhookDispatcher:
    def __init__(self, store: FactStore, webhooks: list[Webhook], *, poll_seconds: float = 0.5,
                 first_backoff: float = 0.2, max_backoff: float = 30.0,
                 timeout: float = 5.0) -> None:
        self.store = store
        self.webhooks = webhooks
        self.poll_seconds = poll_seconds
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.timeout = timeout

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            await asyncio.gather(*(self._serve(client, hook) for hook in self.webhooks))

    async def _serve(self, client: httpx.AsyncClient, hook: Webhook) -> None:
        name = f"webhook:{hook.name}"
        while True:
            try:
                cursor = await run_in_threadpool(self.store.cursor, name)
                events = await run_in_threadpool(self.store.events_after, cursor, 100,
                                                 hook.municipality)
            except Exception:  # the store is down: try again later
                log.warning("webhook %s: cannot read the outbox", hook.name, exc_info=True)
                events = []
            for stored in events:
                await self._deliver(client, hook, stored)
                await run_in_threadpool(self.store.set_cursor, name, stored.id)
            if not events:
                await asyncio.sleep(self.poll_seconds)

    async def _deliver(self, client: httpx.AsyncClient, hook: Webhook,
                       stored: StoredEvent) -> None:
        body = orjson.dumps(event_json(stored))
        backoff = self.first_backoff
        while True:
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-PDP-Event-Id": str(stored.id),
                "X-PDP-Timestamp": timestamp,
                "X-PDP-Signature": signature(hook.secret, timestamp, body),
            }
            try:
                response = await client.post(hook.url, content=body, headers=headers)
                if 200 <= response.status_code < 300:
                    return
                log.warning("webhook %s: event %d answered %d", hook.name, stored.id,
                            response.status_code)
            except httpx.HTTPError as error:
                log.warning("webhook %s: event %d: %s", hook.name, stored.id, error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

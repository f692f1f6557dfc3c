"""Pushing the event outbox to webhooks: in order, signed, at least once, nothing lost.

Each webhook has a cursor in the store (`webhook:<name>`): the id of the last event it
acknowledged with a 2xx. Events after it are sent one by one, in id order; a failure is
retried with backoff (up to `max_backoff` seconds apart) until it succeeds, so a receiver
that is down for a while receives everything afterwards. The cursor only moves after an
acknowledgement, so a restart re-sends at most the event in flight.

Each attempt is signed afresh (Standard Webhooks, pdp.rights.events) and goes only where the
service may send (pdp.rights.egress): the receiver's name is resolved at that moment, every
address it resolves to must be public or allowed, and the request is made to the very
address that was checked (with the name in `Host` and in TLS), never following a
redirect. A refused address is retried like a failed delivery: the event waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from pdp.rights.egress import (
    AllowList,
    EgressRefused,
    Resolver,
    checked_addresses,
    system_resolver,
    url_host,
)
from pdp.rights.events import event_json, secret_key, webhook_headers
from pdp.store.protocols import FactStore, StoredEvent

log = logging.getLogger(__name__)



class Webhook(BaseModel):
    """A receiver of the event outbox: every event (or one municipality's), in order,
    signed by Standard Webhooks (pdp.rights.events) with `secret` — and with each of
    `previous_secrets` too while receivers move to the new one (rotation)."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")
    url: str = Field(pattern=r"^https?://", max_length=2000)
    secret: str  # whsec_<base64 of 24-64 random bytes>
    previous_secrets: list[str] = Field(default_factory=list, max_length=5)
    municipality: str | None = Field(default=None, pattern=r"^[0-9]{3}$")

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        secret_key(value)
        return value

    @field_validator("previous_secrets")
    @classmethod
    def _previous(cls, value: list[str]) -> list[str]:
        for secret in value:
            secret_key(secret)
        return value

    @property
    def secrets(self) -> list[str]:
        """Every secret a delivery is signed with, the current one first."""
        return [self.secret, *self.previous_secrets]


class WebhookDispatcher:
    def __init__(self, store: FactStore, webhooks: list[Webhook], *, poll_seconds: float = 0.5,
                 first_backoff: float = 0.2, max_backoff: float = 30.0,
                 timeout: float = 5.0, allow: AllowList | None = None,
                 resolve: Resolver = system_resolver) -> None:
        self.store = store
        self.webhooks = webhooks
        self.poll_seconds = poll_seconds
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.allow = allow or AllowList()
        self.resolve = resolve

    async def run(self) -> None:
        await asyncio.gather(*(self._serve(hook) for hook in self.webhooks))

    async def _serve(self, hook: Webhook) -> None:
        name = f"webhook:{hook.name}"
        # A client of its own per receiver: its connections are to that receiver's
        # checked address, with that receiver's name in TLS.
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
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
            try:
                await self._attempt(client, hook, stored, body)
                return
            except EgressRefused as error:
                log.warning("webhook %s: event %d not sent: %s", hook.name, stored.id, error)
            except _Refused as error:
                log.warning("webhook %s: event %d answered %d", hook.name, stored.id,
                            error.status)
            except httpx.HTTPError as error:
                log.warning("webhook %s: event %d: %s", hook.name, stored.id, error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _attempt(self, client: httpx.AsyncClient, hook: Webhook, stored: StoredEvent,
                       body: bytes) -> None:
        host, port = url_host(hook.url)
        address = (await checked_addresses(host, port, self.allow, self.resolve))[0]
        parts = urlsplit(hook.url)
        literal = f"[{address}]" if address.version == 6 else str(address)
        pinned = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/",
                             parts.query, ""))
        headers = {
            "Content-Type": "application/json",
            "Host": parts.netloc.rpartition("@")[2],
            **webhook_headers(hook.secrets, str(stored.id), int(time.time()), body),
        }
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        response = await client.post(pinned, content=body, headers=headers,
                                     extensions=extensions)
        if not 200 <= response.status_code < 300:
            raise _Refused(response.status_code)


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status

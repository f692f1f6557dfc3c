"""The event outbox on the wire: the JSON form of an event and its webhook signature.

Webhook requests follow Standard Webhooks (https://www.standardwebhooks.com/): the event
is the JSON body, and the headers are

- `webhook-id`: the event's id (the same on every retry of that event),
- `webhook-timestamp`: Unix seconds when this attempt was signed,
- `webhook-signature`: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one for
  each secret in use, separated by spaces (while a secret is being rotated, receivers
  with the old or the new one both verify).

A secret is `whsec_` and the base64 of 24 to 64 random bytes; the HMAC key is those
bytes. A receiver verifies with `verify` (or any Standard Webhooks library): it refuses a
signature that matches no secret and a timestamp more than `TOLERANCE_SECONDS` from its
clock, and drops an id it has already processed (delivery is at least once, in event-id
order), so a recorded request cannot be replayed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pdp.store.protocols import StoredEvent

SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 5 * 60


def event_json(stored: StoredEvent) -> dict[str, Any]:
    event = stored.event
    return {
        "id": stored.id,
        "at": stored.at.isoformat(),
        "facts_version": stored.facts_version,
        "type": event.type,
        "subject": {"kind": event.subject_kind, "id": event.subject_id},
        "municipality": event.municipality or None,
        "actor": event.actor,
        "reason": event.reason,
        "data": event.data,
    }


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; ValueError for anything else."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret is whsec_ and the base64 of 24-64 random bytes")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ and base64 (it is not base64)") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"a webhook secret must hold 24-64 bytes, not {len(key)}")
    return key


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with one secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_headers(secrets: Sequence[str], msg_id: str, timestamp: int,
                    body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one delivery attempt, signed with every secret."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, msg_id, timestamp, body)
                                      for s in secrets),
    }


def verify(secret: str, headers: Mapping[str, str], body: bytes, *,
           now: float | None = None, tolerance: int = TOLERANCE_SECONDS) -> bool:
    """A receiver's check: one of the signatures is this secret's, and the timestamp is
    within `tolerance` seconds of now. (Dropping an id seen before is the receiver's.)"""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        return False
    expected = signature(secret, msg_id, int(stamp), body)
    return any(hmac.compare_digest(expected, presented)
               for presented in lowered.get("webhook-signature", "").split())

"""The event outbox on the wire: the JSON form of an event and its webhook signature.

A webhook request carries the event as its JSON body and the headers
`X-PDP-Event-Id`, `X-PDP-Timestamp` (Unix seconds) and
`X-PDP-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the secret>`.
A receiver checks the signature with `verify` and may drop an id it has seen (delivery
is at least once, in event-id order).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from pdp.store import StoredEvent


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


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, presented: str) -> bool:
    return hmac.compare_digest(signature(secret, timestamp, body), presented)

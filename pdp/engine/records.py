"""The record of a decision, as the decision log keeps it, and the log it goes to.

The record is the engine's: the one decision entry (`pdp.engine.decider.Decider.check`)
builds it from the same snapshot of the facts it decided over, so a decision and its
record never disagree about who the user's municipality was. The log that makes it
durable (`pdp.audit.log.AuditLog`) is a layer above; it implements `DecisionLog`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from concurrent.futures import Future
from typing import NamedTuple, Protocol


class AuditRecord(NamedTuple):
    """One entry: a decision (record_type "decision"), an explanation ("explain"), a
    search ("search") or a read of the log ("audit_read").

    A tuple, in the column order of the log: it is written on every decision's path."""

    record_type: str
    record_id: str
    at_us: int
    user_id: str | None = None
    user_municipality: str | None = None
    grant_id: str | None = None
    client_id: str | None = None
    client_municipality: str | None = None
    category: str | None = None
    action: str | None = None
    purpose: str | None = None
    decision: bool | None = None
    reason: str | None = None
    policy_version: str | None = None
    facts_version: int | None = None
    request_id: str | None = None
    caller: str | None = None
    details: str | None = None  # JSON text: for reads, what was asked and why


RECORD_FIELDS: tuple[str, ...] = AuditRecord._fields


class DecisionLog(Protocol):
    """Where records become durable: `append` completes its future (with the last
    sequence number written) only once they are, and fails it if they cannot be."""

    def append(self, records: Sequence[AuditRecord]) -> Future[int]: ...


_ids = random.SystemRandom(), random.Random()
_ids[1].seed(_ids[0].getrandbits(256))


def new_record_id() -> str:
    """A unique decision or read id: 128 random bits from a generator seeded once from
    the OS (ids identify records; they are not secrets, and urandom per id is slow)."""
    return f"{_ids[1].getrandbits(128):032x}"

"""The fact store interface: durable facts, a version that grows with every write, a change log.

The embedded default is SQLite (`pdp.store.sql.SqlFactStore`); PostgreSQL implements the
same interface through the same SQLAlchemy Core code. Every write is one transaction:
all of its changes land under one new `facts_version`, or none does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Change:
    """One fact to put (data is the validated JSON form) or delete (data is None).

    `expected_version`, when set, makes the write conditional: 0 means the fact must not
    exist, n > 0 that its current version must be n; otherwise `Conflict` is raised and
    nothing of the write is stored (optimistic concurrency for workflow steps)."""

    kind: str
    id: str
    data: dict[str, Any] | None
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to a right, an agreement or a user: history and outbox.

    Written in the same transaction as the fact changes it describes."""

    type: str  # e.g. "grant.approved", "agreement.rescinded"
    subject_kind: str  # "grant", "agreement", "user", ...
    subject_id: str
    municipality: str  # the municipality concerned, "" if none
    actor: str  # who (the caller's name)
    reason: str | None  # why: a reason code and/or a person's justification
    data: dict[str, Any]  # what: at least the fact as it is after the change


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int  # grows in commit order: the outbox cursor
    at: datetime  # commit time (UTC)
    facts_version: int  # the write that carried it
    event: Event


@dataclass(frozen=True, slots=True)
class StoredFact:
    kind: str
    id: str
    data: dict[str, Any]
    version: int  # the facts_version of the write that last changed it


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """A committed change, as read back from the change log."""

    version: int
    kind: str
    id: str
    data: dict[str, Any] | None  # None: deleted


class StoreUnavailable(Exception):
    """The store cannot be reached or failed; nothing was written."""


class Conflict(Exception):
    """A conditional change found the fact at another version; nothing was written."""

    def __init__(self, kind: str, id: str) -> None:
        super().__init__(f"{kind} {id!r} changed meanwhile")
        self.kind = kind
        self.id = id


class IdTaken(Exception):
    """A write would give a right (grant) or a user an id that is or once was another's:
    the ids of rights and users are never used again, so that no history joins two rights
    and no new user inherits a deleted user's rights. Nothing was written."""

    def __init__(self, kind: str, id: str) -> None:
        super().__init__(f"{kind} id {id!r} is taken")
        self.kind = kind
        self.id = id


class NotFound(Exception):
    """A delete named a fact that does not exist; nothing was written."""

    def __init__(self, kind: str, id: str) -> None:
        super().__init__(f"{kind} {id!r} does not exist")
        self.kind = kind
        self.id = id


class FactStore(Protocol):
    def apply(self, changes: Sequence[Change], events: Sequence[Event] = (),
              within: Callable[[Any], None] | None = None) -> int:
        """Commit all changes and events atomically under one new facts_version; return it.

        `within`, when given, is called with the store's connection inside the same
        transaction, so that a change of the store's other tables (a legal hold released)
        and the event that records it commit together or not at all; whatever it raises
        rolls everything back and is raised.

        A delete of a fact that does not exist raises NotFound, a failed condition
        Conflict, a grant or user written under the id of a deleted grant or user IdTaken
        (the ids of rights and users are never reused); then nothing is written.
        `changes` may be empty if `events` is not.
        """

    def get(self, kind: str, id: str) -> StoredFact | None: ...

    def all_facts(self) -> Iterator[StoredFact]:
        """Every current fact (for loading the in-memory view)."""

    def version(self) -> int:
        """The newest committed facts_version (0 for an empty store)."""

    def changes_since(self, version: int) -> list[ChangeRecord]:
        """Committed changes with a version greater than `version`, oldest first."""

    def events_after(self, after: int, limit: int,
                     municipality: str | None = None) -> list[StoredEvent]:
        """Events with id > after, oldest first, at most `limit`; only those of
        `municipality` when given."""

    def events_of(self, subject_kind: str, subject_id: str) -> list[StoredEvent]:
        """Every event about one subject, oldest first (its history)."""

    def cursor(self, name: str) -> int:
        """A named consumer's position in the event log (0 if never set)."""

    def set_cursor(self, name: str, value: int) -> None: ...

    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    def close(self) -> None: ...


class BusUnavailable(Exception):
    """The bus (Redis) cannot be reached."""


class Bus(Protocol):
    """What the engine asks of the bus between replicas (pdp.store.bus.RedisBus): tell
    the others of a write or a policy put in force, and share a snapshot of the facts.
    Every call is best effort: BusUnavailable when the bus cannot be reached."""

    connected: bool

    def publish(self, version: int, changes: Sequence[Change]) -> None: ...

    def publish_policy(self, version: str) -> None: ...

    def save_snapshot(self, version: int, facts: Sequence[StoredFact]) -> None: ...

    def load_snapshot(self) -> tuple[int, list[StoredFact]] | None: ...

    def close(self) -> None: ...

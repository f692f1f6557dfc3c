"""The fact store interface: durable facts, a version that grows with every write, a change log.

The embedded default is SQLite (`pdp.sqlstore.SqlFactStore`); PostgreSQL implements the
same interface through the same SQLAlchemy Core code. Every write is one transaction:
all of its changes land under one new `facts_version`, or none does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Change:
    """One fact to put (data is the validated JSON form) or delete (data is None)."""

    kind: str
    id: str
    data: dict[str, Any] | None


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


class NotFound(Exception):
    """A delete named a fact that does not exist; nothing was written."""

    def __init__(self, kind: str, id: str) -> None:
        super().__init__(f"{kind} {id!r} does not exist")
        self.kind = kind
        self.id = id


class FactStore(Protocol):
    def apply(self, changes: Sequence[Change]) -> int:
        """Commit all changes atomically under one new facts_version and return it.

        A delete of a fact that does not exist raises NotFound and nothing is written.
        """

    def get(self, kind: str, id: str) -> StoredFact | None: ...

    def all_facts(self) -> Iterator[StoredFact]:
        """Every current fact (for loading the in-memory view)."""

    def version(self) -> int:
        """The newest committed facts_version (0 for an empty store)."""

    def changes_since(self, version: int) -> list[ChangeRecord]:
        """Committed changes with a version greater than `version`, oldest first."""

    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    def close(self) -> None: ...

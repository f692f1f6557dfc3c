"""The facts held in memory, as plain values, indexed the way decisions read them.

The index is filled from the store's change log only (`apply`), so it is always the
store's state at some `version`. Each fact group a decision reads carries a stamp (the
version of the last change to it); a memoised decision is valid while its stamps are.

Clients and relationships are nearly all of the facts (a million of them in a large
area), so the index keeps them as small slotted rows (`ClientRow`, `RelationshipRow`:
times as integer microseconds, repeated strings interned) made straight from the
stored JSON, which was validated when it was written; anything unexpected in it is
refused with the facts model's own error. The few areas, agreements, users and grants
stay pydantic models.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pdp.model.clock import END_OF_TIME, from_micros, to_micros
from pdp.model.facts import (
    Agreement,
    Area,
    Fact,
    Grant,
    User,
    dump_fact,
    parse_fact,
)
from pdp.model.vocab import SERVICES
from pdp.store.protocols import ChangeRecord, StoredFact

_intern = sys.intern
_CLIENT_KEYS = frozenset({"home_municipality", "protection_order", "area_client"})
_RELATIONSHIP_KEYS = frozenset({"client", "municipality", "service", "starts_at", "ends_at",
                                "assigned_users"})


# The rows are never changed once made (a new value is a new row), but not frozen:
# a frozen dataclass costs five times as much to make, and a start makes a million.
@dataclass(slots=True)
class ClientRow:
    """A client as the index keeps it."""

    home_municipality: str
    protection_order: bool
    area_client: bool  # the employment authority's job-seeker client now (rule 4)
    version: int  # of its last write


@dataclass(slots=True)
class RelationshipRow:
    """A client relationship as the index keeps it."""

    client: str
    municipality: str
    service: str
    starts_at: int  # microseconds since the epoch
    ends_at: int  # END_OF_TIME when open-ended
    assigned_users: tuple[str, ...]
    version: int  # of its last write


def _micros(text: Any) -> int:
    if not isinstance(text, str):
        raise TypeError("not a timestamp")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("timestamp without an offset")
    return to_micros(moment)


def client_row(data: Any, version: int) -> ClientRow:
    """A stored client as a row; raises the facts model's error if it is not valid."""
    try:
        if not data.keys() <= _CLIENT_KEYS:
            raise ValueError("unknown field")
        home, protected = data["home_municipality"], data.get("protection_order", False)
        area_client = data["area_client"]
        if not (type(home) is str and len(home) == 3 and home.isdigit()
                and type(protected) is bool and type(area_client) is bool):
            raise ValueError("bad value")
        return ClientRow(_intern(home), protected, area_client, version)
    except (TypeError, ValueError, KeyError, AttributeError):
        parse_fact("client", data)  # raises with the model's message
        raise


def relationship_row(data: Any, version: int) -> RelationshipRow:
    """A stored relationship as a row; raises the facts model's error if it is not valid."""
    try:
        if not data.keys() <= _RELATIONSHIP_KEYS:
            raise ValueError("unknown field")
        client, municipality, service = data["client"], data["municipality"], data["service"]
        assigned = data.get("assigned_users") or ()
        if (type(client) is not str or not client or type(municipality) is not str
                or len(municipality) != 3 or not municipality.isdigit()
                or service not in SERVICES or type(assigned) not in (list, tuple)):
            raise ValueError("bad value")
        for user in assigned:
            if type(user) is not str or not user:
                raise ValueError("bad assigned user")
        starts, ends = _micros(data["starts_at"]), data.get("ends_at")
        ends = END_OF_TIME if ends is None else _micros(ends)
        if ends <= starts:
            raise ValueError("ends before it starts")
        return RelationshipRow(_intern(client), _intern(municipality), _intern(service),
                               starts, ends, tuple(map(_intern, assigned)), version)
    except (TypeError, ValueError, KeyError, AttributeError):
        parse_fact("relationship", data)
        raise


def _iso(micros: int) -> str:
    return from_micros(micros).isoformat().replace("+00:00", "Z")


def client_data(row: ClientRow) -> dict[str, Any]:
    """A client row as the facts API and the store write it."""
    return {"home_municipality": row.home_municipality,
            "protection_order": row.protection_order, "area_client": row.area_client}


def relationship_data(row: RelationshipRow) -> dict[str, Any]:
    """A relationship row as the facts API and the store write it."""
    return {"client": row.client, "municipality": row.municipality, "service": row.service,
            "starts_at": _iso(row.starts_at),
            "ends_at": None if row.ends_at == END_OF_TIME else _iso(row.ends_at),
            "assigned_users": list(row.assigned_users)}


class FactView(Protocol):
    """The reads a decision makes, over one consistent state of the facts.

    Get one from `FactIndex.reading()`: inside that `with` block every read is of one
    version (the decider and search open such a block and decide over the view; what
    the block holds, and when a writer waits, is this module's alone). A reader that
    makes single reads and checks them later (the rights procedure, whose plans carry
    the versions they read; the misuse detector) may hold the index as a FactView
    outside a block: each read is atomic. Read-only by type: the mappings are the
    index's own, never copies."""

    @property
    def version(self) -> int: ...
    @property
    def areas(self) -> Mapping[str, Area]: ...
    @property
    def agreements(self) -> Mapping[str, Agreement]: ...
    @property
    def users(self) -> Mapping[str, User]: ...
    @property
    def grants(self) -> Mapping[str, Grant]: ...
    @property
    def clients(self) -> Mapping[str, ClientRow]: ...
    @property
    def relationships(self) -> Mapping[str, RelationshipRow]: ...
    @property
    def grants_by_user(self) -> Mapping[str, Mapping[str, Grant]]: ...
    @property
    def relationships_by_client(self) -> Mapping[str, Mapping[str, RelationshipRow]]: ...
    @property
    def open_relationships(self) -> Mapping[tuple[str, str], Mapping[str, int]]: ...
    @property
    def assigned_relationships(self) -> Mapping[str, Mapping[str, int]]: ...
    @property
    def users_by_municipality(self) -> Mapping[str, set[str]]: ...

    def stamp(self, group: str, key: str) -> int: ...
    def fact_version(self, kind: str, id: str) -> int: ...
    def stored_facts(self) -> Iterator[StoredFact]: ...


class _Reading:
    """`with index.reading() as view:` — the view of one consistent state, held only
    while records are built from it (never while the policy runs: a write must not
    wait behind a cold query). One per index, so taking a view allocates nothing."""

    __slots__ = ("_acquire", "_index", "_release")

    def __init__(self, index: FactIndex) -> None:
        self._index = index
        self._acquire, self._release = index.lock.acquire, index.lock.release

    def __enter__(self) -> FactView:
        self._acquire()
        return self._index

    def __exit__(self, *exc: object) -> None:
        self._release()


@dataclass(slots=True)
class FactIndex:
    version: int = 0
    areas: dict[str, Area] = field(default_factory=dict)
    agreements: dict[str, Agreement] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    clients: dict[str, ClientRow] = field(default_factory=dict)
    relationships: dict[str, RelationshipRow] = field(default_factory=dict)
    grants_by_user: dict[str, dict[str, Grant]] = field(default_factory=dict)
    relationships_by_client: dict[str, dict[str, RelationshipRow]] = field(
        default_factory=dict)
    # For search (candidates, see pdp.engine.search): (municipality, service) -> {client: number
    # of its relationships there naming no user}; user -> {client: number of the
    # relationships naming the user}; municipality -> its users.
    open_relationships: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    assigned_relationships: dict[str, dict[str, int]] = field(default_factory=dict)
    users_by_municipality: dict[str, set[str]] = field(default_factory=dict)
    # Stamps: the version of the last change to a group, by group and key. Groups:
    # "user" (the user and their grants), "client" (the client and its relationships),
    # "agreement" (by municipality code), "area".
    stamps: dict[str, dict[str, int]] = field(default_factory=lambda: {
        "user": {}, "client": {}, "agreement": {}, "area": {}})
    # The version of each fact's last write, by kind and id (clients and relationships
    # carry theirs in their rows).
    versions: dict[str, dict[str, int]] = field(default_factory=lambda: {
        "area": {}, "agreement": {}, "user": {}, "grant": {}})
    # Writers (`load`, `apply`, `advance`) hold it; readers take it through `reading()`.
    lock: threading.RLock = field(default_factory=threading.RLock)
    _reading: _Reading | None = None

    def reading(self) -> _Reading:
        """A consistent view of the facts for the span of a `with` block: O(1), no copy
        (writers wait until the block ends, so keep it to building records)."""
        reading = self._reading
        if reading is None:
            reading = self._reading = _Reading(self)
        return reading

    def fact_version(self, kind: str, id: str) -> int:
        """The version of the fact's last write; 0 if it does not exist."""
        if kind in ("client", "relationship"):
            row = (self.clients if kind == "client" else self.relationships).get(id)
            return 0 if row is None else row.version
        return self.versions.get(kind, {}).get(id, 0)

    def stored_facts(self) -> Iterator[StoredFact]:
        """Every fact with its version, as the store would give it (hold `lock`)."""
        tables: list[tuple[str, Mapping[str, Fact]]] = [
            ("area", self.areas), ("agreement", self.agreements), ("user", self.users),
            ("grant", self.grants)]
        for kind, table in tables:
            for fact_id, fact in table.items():
                yield StoredFact(kind, fact_id, dump_fact(fact), self.fact_version(kind, fact_id))
        for client_id, client in self.clients.items():
            yield StoredFact("client", client_id, client_data(client), client.version)
        for relationship_id, rel in self.relationships.items():
            yield StoredFact("relationship", relationship_id, relationship_data(rel),
                             rel.version)

    def stamp(self, group: str, key: str) -> int:
        return self.stamps[group].get(key, 0)

    def load(self, facts: Iterable[StoredFact], version: int) -> None:
        """Replace the whole content with a store snapshot taken at `version`."""
        collecting = gc.isenabled()
        gc.disable()  # a million new objects, none of them garbage: no passes meanwhile
        try:
            with self.lock:
                self._clear()
                for stored in facts:
                    self._put(stored.kind, stored.id, stored.data, stored.version)
                self.version = version
        finally:
            if collecting:
                gc.enable()

    def apply(self, changes: Sequence[ChangeRecord]) -> None:
        """Apply committed changes, oldest first; changes already applied are skipped."""
        with self.lock:
            for change in changes:
                if change.version <= self.version:
                    continue
                self._remove(change.kind, change.id, change.version)
                if change.data is not None:
                    self._put(change.kind, change.id, change.data, change.version)
            if changes:
                self.version = max(self.version, changes[-1].version)

    def advance(self, version: int) -> None:
        with self.lock:
            self.version = max(self.version, version)

    # -- internals -------------------------------------------------------------------

    def _clear(self) -> None:
        tables: list[dict[Any, Any]] = [
            self.areas, self.agreements, self.users, self.grants, self.clients,
            self.relationships, self.grants_by_user, self.relationships_by_client,
            self.open_relationships, self.assigned_relationships, self.users_by_municipality,
            *self.stamps.values(), *self.versions.values()]
        for table in tables:
            table.clear()
        self.version = 0

    def _relationship_lists(self, relationship: RelationshipRow) -> list[dict[str, int]]:
        """The search indexes a relationship counts in."""
        assigned = relationship.assigned_users
        if not assigned:
            return [self.open_relationships.setdefault(
                (relationship.municipality, relationship.service), {})]
        if len(assigned) == 1:
            return [self.assigned_relationships.setdefault(assigned[0], {})]
        return [self.assigned_relationships.setdefault(user, {}) for user in set(assigned)]

    def _touch(self, group: str, key: str, version: int) -> None:
        stamps = self.stamps[group]
        stamps[key] = max(version, stamps.get(key, 0))

    def _put(self, kind: str, id: str, data: Any, version: int) -> None:
        """Put one stored fact (its JSON data) in every index. (The two bulk kinds are
        written out in full: a cold start puts a million of them.)"""
        if kind == "relationship":
            rel = relationship_row(data, version)
            if id in self.relationships:  # a new value: drop the old one from every index
                self._remove(kind, id, version)
            id = _intern(id)
            client = rel.client
            self.relationships[id] = rel
            of_client = self.relationships_by_client.get(client)
            if of_client is None:
                of_client = self.relationships_by_client[client] = {}
            of_client[id] = rel
            for counts in self._relationship_lists(rel):
                counts[client] = counts.get(client, 0) + 1
            stamps = self.stamps["client"]
            if stamps.get(client, 0) < version:
                stamps[client] = version
            return
        if kind == "client":
            row = client_row(data, version)
            if id in self.clients:
                self._remove(kind, id, version)
            id = _intern(id)
            self.clients[id] = row
            stamps = self.stamps["client"]
            if stamps.get(id, 0) < version:
                stamps[id] = version
            return
        if self.fact_version(kind, id):  # a new value: drop the old one from every index
            self._remove(kind, id, version)
        fact = parse_fact(kind, data)
        self.versions[kind][id] = version
        if isinstance(fact, Area):
            self.areas[id] = fact
            self._touch("area", id, version)
        elif isinstance(fact, Agreement):
            self.agreements[id] = fact
            self._touch("agreement", id, version)
        elif isinstance(fact, User):
            self.users[id] = fact
            self.users_by_municipality.setdefault(fact.municipality, set()).add(id)
            self._touch("user", id, version)
        elif isinstance(fact, Grant):
            self.grants[id] = fact
            self.grants_by_user.setdefault(fact.user, {})[id] = fact
            self._touch("user", fact.user, version)
        else:  # pragma: no cover - MODELS and this list are the same six kinds
            raise TypeError(f"unknown fact {kind}")

    def _remove(self, kind: str, id: str, version: int) -> None:
        self.versions.get(kind, {}).pop(id, None)
        if kind == "area":
            self.areas.pop(id, None)
            self._touch("area", id, version)
        elif kind == "agreement":
            self.agreements.pop(id, None)
            self._touch("agreement", id, version)
        elif kind == "user":
            user = self.users.pop(id, None)
            if user is not None:
                self.users_by_municipality.get(user.municipality, set()).discard(id)
            self._touch("user", id, version)
        elif kind == "grant":
            grant = self.grants.pop(id, None)
            if grant is not None:
                self.grants_by_user.get(grant.user, {}).pop(id, None)
                self._touch("user", grant.user, version)
        elif kind == "client":
            self.clients.pop(id, None)
            self._touch("client", id, version)
        elif kind == "relationship":
            relationship = self.relationships.pop(id, None)
            if relationship is not None:
                self.relationships_by_client.get(relationship.client, {}).pop(id, None)
                for clients in self._relationship_lists(relationship):
                    left = clients.get(relationship.client, 0) - 1
                    if left > 0:
                        clients[relationship.client] = left
                    else:
                        clients.pop(relationship.client, None)
                self._touch("client", relationship.client, version)

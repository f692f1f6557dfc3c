"""The facts held in memory, as plain values, indexed the way decisions read them.

The index is filled from the store's change log only (`apply`), so it is always the
store's state at some `version`. Each fact group a decision reads carries a stamp (the
version of the last change to it); a memoised decision is valid while its stamps are.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pdp.facts import (
    Agreement,
    Area,
    Client,
    Fact,
    Grant,
    Relationship,
    User,
    dump_fact,
    parse_fact,
)
from pdp.store import ChangeRecord, StoredFact


@dataclass(slots=True)
class FactIndex:
    version: int = 0
    areas: dict[str, Area] = field(default_factory=dict)
    agreements: dict[str, Agreement] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    clients: dict[str, Client] = field(default_factory=dict)
    relationships: dict[str, Relationship] = field(default_factory=dict)
    grants_by_user: dict[str, dict[str, Grant]] = field(default_factory=dict)
    relationships_by_client: dict[str, dict[str, Relationship]] = field(default_factory=dict)
    # For search (candidates, see pdp.search): (municipality, service) -> {client: number
    # of its relationships there naming no user}; user -> {client: number of the
    # relationships naming the user}; municipality -> its users.
    open_relationships: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    assigned_relationships: dict[str, dict[str, int]] = field(default_factory=dict)
    users_by_municipality: dict[str, set[str]] = field(default_factory=dict)
    # Stamps: the version of the last change to a group. Keys: ("user", id) covers the
    # user and their grants; ("client", id) the client and its relationships;
    # ("agreement", code); ("area", id).
    stamps: dict[tuple[str, str], int] = field(default_factory=dict)
    # The version of each fact's last write: ("grant", id) -> version.
    versions: dict[tuple[str, str], int] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def fact_version(self, kind: str, id: str) -> int:
        """The version of the fact's last write; 0 if it does not exist."""
        return self.versions.get((kind, id), 0)

    def stored_facts(self) -> Iterator[StoredFact]:
        """Every fact with its version, as the store would give it (hold `lock`)."""
        tables: list[tuple[str, Mapping[str, Fact]]] = [
            ("area", self.areas), ("agreement", self.agreements), ("user", self.users),
            ("grant", self.grants), ("client", self.clients),
            ("relationship", self.relationships)]
        for kind, table in tables:
            for fact_id, fact in table.items():
                yield StoredFact(kind, fact_id, dump_fact(fact), self.fact_version(kind, fact_id))

    def stamp(self, group: str, key: str) -> int:
        return self.stamps.get((group, key), 0)

    def load(self, facts: Iterable[StoredFact], version: int) -> None:
        """Replace the whole content with a store snapshot taken at `version`."""
        with self.lock:
            self._clear()
            for stored in facts:
                self._put(stored.kind, stored.id, parse_fact(stored.kind, stored.data),
                          stored.version)
            self.version = version

    def apply(self, changes: Sequence[ChangeRecord]) -> None:
        """Apply committed changes, oldest first; changes already applied are skipped."""
        with self.lock:
            for change in changes:
                if change.version <= self.version:
                    continue
                self._remove(change.kind, change.id, change.version)
                if change.data is not None:
                    self._put(change.kind, change.id, parse_fact(change.kind, change.data),
                              change.version)
            if changes:
                self.version = max(self.version, changes[-1].version)

    def advance(self, version: int) -> None:
        with self.lock:
            self.version = max(self.version, version)

    # -- internals -------------------------------------------------------------------

    def _clear(self) -> None:
        for table in (self.areas, self.agreements, self.users, self.grants, self.clients,
                      self.relationships, self.grants_by_user, self.relationships_by_client,
                      self.open_relationships, self.assigned_relationships,
                      self.users_by_municipality,
                      self.stamps, self.versions):
            table.clear()
        self.version = 0

    def _relationship_lists(self, relationship: Relationship) -> list[dict[str, int]]:
        """The search indexes a relationship counts in."""
        if not relationship.assigned_users:
            return [self.open_relationships.setdefault(
                (relationship.municipality, relationship.service), {})]
        return [self.assigned_relationships.setdefault(user, {})
                for user in set(relationship.assigned_users)]

    def _touch(self, group: str, key: str, version: int) -> None:
        self.stamps[(group, key)] = max(version, self.stamps.get((group, key), 0))

    def _put(self, kind: str, id: str, fact: Fact, version: int) -> None:
        if (kind, id) in self.versions:  # a new value: drop the old one from every index
            self._remove(kind, id, version)
        self.versions[(kind, id)] = version
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
        elif isinstance(fact, Client):
            self.clients[id] = fact
            self._touch("client", id, version)
        elif isinstance(fact, Relationship):
            self.relationships[id] = fact
            self.relationships_by_client.setdefault(fact.client, {})[id] = fact
            for clients in self._relationship_lists(fact):
                clients[fact.client] = clients.get(fact.client, 0) + 1
            self._touch("client", fact.client, version)
        else:  # pragma: no cover - MODELS and this list are the same six kinds
            raise TypeError(f"unknown fact {kind}")

    def _remove(self, kind: str, id: str, version: int) -> None:
        self.versions.pop((kind, id), None)
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

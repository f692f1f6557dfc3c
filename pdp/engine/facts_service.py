"""Facts between the store, the in-memory index and the other replicas.

Every write commits to the store first and then brings the index up to the store's
change log, so the very next decision of this process sees it; then it is published on
the bus (Redis, when configured) so that every other replica applies it at once. A
replica that missed bus messages catches up from the store's change log; without a bus,
a short timer does the same.

Freshness: the index is *confirmed* when this process has read the store's change log
and holds every committed change. Decisions are made only while the last confirmation is
younger than the staleness bound; past it (the store unreachable) the caller refuses (`unavailable`)
rather than risk a stale allow. Redis cannot confirm: a write made while a replica was
cut off from it, or before it restarted empty, is known to the store alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from pdp.engine.factindex import FactIndex
from pdp.model.errors import INVALID_REQUEST, Refused, validation_details
from pdp.model.facts import Id, MunicipalityCode, dump_fact, parse_fact
from pdp.model.vocab import FACT_KINDS
from pdp.store.protocols import (
    Bus,
    BusUnavailable,
    Change,
    ChangeRecord,
    Event,
    FactStore,
    StoredFact,
    StoreUnavailable,
)

log = logging.getLogger(__name__)


class FactsBehind(Exception):
    """The facts asked for (min_facts_version) are not available in time."""


class FactService:
    def __init__(self, store: FactStore, bus: Bus | None = None, *,
                 staleness_bound: float = 1.0) -> None:
        self.store = store
        self.bus = bus
        self.index = FactIndex()
        self.staleness_bound = staleness_bound
        self._catch_up_lock = threading.Lock()
        self._confirmed_at = float("-inf")  # time.monotonic() of the last confirmation
        self._snapshot_version = -1
        self.loaded = False

    # -- loading ------------------------------------------------------------------------

    def load(self) -> None:
        """Fill the index: from the bus's snapshot when there is a usable one, else from
        the store; then the store's newer changes on top."""
        started = time.monotonic()
        with self._catch_up_lock:
            store_version = self.store.version()
            snapshot = self._usable_snapshot(store_version)
            facts: Iterable[StoredFact]
            if snapshot is not None:
                version, facts = snapshot
                log.info("facts from the shared snapshot at version %d", version)
            else:
                version, facts = store_version, self.store.all_facts()
            self.index.load(facts, version)
            self.index.apply(self.store.changes_since(version))
            self.loaded = True
        self._confirmed_at = started
        if snapshot is None:
            self.save_snapshot()

    def _usable_snapshot(self, store_version: int) -> tuple[int, list[StoredFact]] | None:
        if self.bus is None:
            return None
        try:
            snapshot = self.bus.load_snapshot()
        except BusUnavailable:
            return None
        if snapshot is None or snapshot[0] > store_version:  # none, or of another store
            return None
        return snapshot

    def save_snapshot(self) -> None:
        """Share a consistent snapshot of the index (when it changed since the last)."""
        if self.bus is None or self.index.version == self._snapshot_version:
            return
        with self.index.reading() as view:
            version = view.version
            facts = list(view.stored_facts())
        try:
            self.bus.save_snapshot(version, facts)
            self._snapshot_version = version
        except BusUnavailable:
            pass

    # -- staying current ------------------------------------------------------------------

    def catch_up(self) -> int:
        """Apply every committed change the index has not seen; return the index version."""
        with self._catch_up_lock:
            # The version first: every write up to it has committed, so the changes read
            # next hold all of them. A write of events only (a misuse case) changes no
            # fact but does advance the version: the index advances to it as well.
            current = self.store.version()
            changes = self.store.changes_since(self.index.version)
            self.index.apply(changes)
            self.index.advance(current)
            return self.index.version

    def on_bus_changes(self, version: int, changes: list[ChangeRecord]) -> None:
        """A write published by a replica: apply it if it is the next version, catch up
        from the store if versions were missed."""
        if version <= self.index.version:
            return
        if version == self.index.version + 1:
            with self._catch_up_lock:
                if version == self.index.version + 1:
                    self.index.apply(changes)
                    return
        try:
            self.catch_up()
        except StoreUnavailable:
            log.warning("missed bus messages and the store is unavailable")

    def on_bus_connect(self) -> None:
        """(Re)connected to the bus: messages may have been missed meanwhile."""
        try:
            self.catch_up()
        except StoreUnavailable:
            log.warning("bus connected but the store is unavailable")

    def confirm(self) -> bool:
        """Check that the index holds every committed change; True if it does now."""
        started = time.monotonic()
        try:
            self.catch_up()
        except StoreUnavailable:
            return False
        self._confirmed_at = max(self._confirmed_at, started)
        return True

    def confirmed_age(self) -> float:
        """Seconds since the facts were last confirmed against the store."""
        return max(0.0, time.monotonic() - self._confirmed_at) if self.loaded else float("inf")

    def fresh(self) -> bool:
        """Whether decisions may be made: confirmed within the staleness bound."""
        return time.monotonic() - self._confirmed_at <= self.staleness_bound

    # -- writing and reading --------------------------------------------------------------

    def write(self, changes: Sequence[Change], events: Sequence[Event] = ()) -> int:
        """Commit atomically; return the new facts_version, already visible to decisions
        here and published to the other replicas."""
        version = self.store.apply(changes, events)
        self.catch_up()
        if self.bus is not None and changes:
            try:
                self.bus.publish(version, changes)
            except BusUnavailable as error:
                log.warning("write %d not published (replicas catch up from the store): %s",
                            version, error)
        return version

    def get(self, kind: str, id: str) -> StoredFact | None:
        return self.store.get(kind, id)

    def ensure_version(self, version: int, timeout: float) -> None:
        """Return once the index holds facts at least as new as `version`: wait briefly
        for the bus to bring them, then read the store until `timeout`."""
        started = time.monotonic()
        if self.bus is not None:
            brief = started + min(0.05, timeout)
            while self.index.version < version and time.monotonic() < brief:
                time.sleep(0.002)
        while self.index.version < version and self.catch_up() < version:
            if time.monotonic() - started >= timeout:
                raise FactsBehind(f"facts_version {version} is not available yet")
            time.sleep(0.02)

    def close(self) -> None:
        if self.bus is not None:
            self.bus.close()
        self.store.close()


_ID: TypeAdapter[str] = TypeAdapter(Id)
_MUNICIPALITY_CODE: TypeAdapter[str] = TypeAdapter(MunicipalityCode)


def parse_id(kind: str, fact_id: str) -> str:
    """A fact id, checked (an agreement's id is its municipality's code)."""
    return (_MUNICIPALITY_CODE if kind == "agreement" else _ID).validate_python(fact_id)


def parse_batch(raw: list[Any]) -> list[Change]:
    """Validate every item of a facts batch: `invalid_request` naming the first bad one."""
    changes: list[Change] = []
    details: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        where = f"facts[{index}]"
        if not isinstance(item, dict):
            details.append({"field": where, "message": "must be an object"})
            continue
        unknown = sorted(set(item) - {"kind", "id", "data"})
        kind, fact_id = item.get("kind"), item.get("id")
        if unknown:
            details.append({"field": f"{where}.{unknown[0]}", "message": "unknown field"})
            continue
        if kind not in FACT_KINDS:
            details.append({"field": f"{where}.kind",
                            "message": f"must be one of {', '.join(FACT_KINDS)}"})
            continue
        if not isinstance(fact_id, str):
            details.append({"field": f"{where}.id", "message": "must be a string"})
            continue
        try:
            parse_id(kind, fact_id)
        except ValidationError:
            details.append({"field": f"{where}.id", "message": "not a valid id"})
            continue
        try:
            fact = parse_fact(kind, item.get("data"))
        except ValidationError as error:
            details.extend(validation_details(error, f"{where}.data"))
            continue
        changes.append(Change(kind, fact_id, dump_fact(fact)))
    if details:
        first = details[0]
        raise Refused(INVALID_REQUEST, f"{first['field']}: {first['message']}", details)
    return changes

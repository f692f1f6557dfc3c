"""Facts between the store and the in-memory index: writes, reads, catch-up.

Every write commits to the store first and then brings the index up to the store's
change log, so the very next decision sees it. Writes made by other processes on the
same store are picked up by `catch_up`, which the service also runs on a short timer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from pdp.factindex import FactIndex
from pdp.store import Change, Event, FactStore, StoredFact


class FactsBehind(Exception):
    """The facts asked for (min_facts_version) are not available in time."""


class FactService:
    def __init__(self, store: FactStore) -> None:
        self.store = store
        self.index = FactIndex()
        self._catch_up_lock = threading.Lock()
        self.loaded = False

    def load(self) -> None:
        """Fill the index from the store (at start-up)."""
        with self._catch_up_lock:
            version = self.store.version()
            self.index.load(self.store.all_facts(), version)
            # Changes committed while the snapshot was read are applied on top.
            self.index.apply(self.store.changes_since(version))
            self.loaded = True

    def catch_up(self) -> int:
        """Apply every committed change the index has not seen; return the index version."""
        with self._catch_up_lock:
            changes = self.store.changes_since(self.index.version)
            self.index.apply(changes)
            return self.index.version

    def write(self, changes: Sequence[Change], events: Sequence[Event] = ()) -> int:
        """Commit atomically; return the new facts_version, already visible to decisions."""
        version = self.store.apply(changes, events)
        self.catch_up()
        return version

    def get(self, kind: str, id: str) -> StoredFact | None:
        return self.store.get(kind, id)

    def ensure_version(self, version: int, timeout: float) -> None:
        """Return once the index holds facts at least as new as `version`."""
        if self.index.version >= version:
            return
        deadline = time.monotonic() + timeout
        while True:
            if self.catch_up() >= version:
                return
            if time.monotonic() >= deadline:
                raise FactsBehind(f"facts_version {version} is not available yet")
            time.sleep(0.02)

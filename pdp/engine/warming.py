"""Decisions ready before they are asked: the requests the next hours will likely bring,
one per look, for the decider to ask the policy about off the request path.

The service knows every relationship: a user may ask about the clients of the open
relationships of their municipality for each of their tasks, and about those assigned to
them. Asking about each such user x client would be millions of records; but the policy's
answers are kept by record shape (pdp.engine.decider), and most of those records share a
handful of shapes. So the requests are chosen by *look*: a user's look is what of them a
record shows (municipality, status, tasks, whether they are a client, their rights with
their times seen from now); a client's, for a municipality and purpose, its home, flags
and the relationships of that municipality for that purpose as rule 8 sees them. One
request per user look x purpose x client look, with the user's municipality as the
record's owner (what a PEP writing its own records names), and one naming no owner
per user look x purpose x protection order (reads; rules 9-11 read only those of it).

This is a guess of what will be asked, never a decision: a request that was not warmed
is decided as always, and a warmed answer is used only when the request's own record has
that shape (the decider checks, as for any request).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Protocol

from pdp.engine.factindex import FactIndex, FactView
from pdp.engine.metrics import Metrics
from pdp.engine.policy_engine import Evaluator
from pdp.model.clock import to_micros, utcnow

Key = tuple[str, str, str, str]  # user, client, purpose, the record's owner named
_Look = tuple[object, ...]


def _user_look(view: FactView, user_id: str, now_us: int) -> _Look | None:
    user = view.users.get(user_id)
    if user is None or user.status != "active":
        return None  # decided by rule 1 before any client: nothing worth warming
    grants = view.grants_by_user.get(user_id, {})
    return (user.municipality, tuple(sorted(user.tasks)), user.client_id is not None,
            tuple(sorted(
                (g.status, tuple(g.purposes), tuple(g.scopes), tuple(g.actions),
                 to_micros(g.valid_from) <= now_us, now_us < to_micros(g.valid_until),
                 now_us < to_micros(g.recertify_by))
                for g in grants.values())))


def _client_look(view: FactView, client_id: str, municipality: str, purpose: str,
                 user_id: str, now_us: int) -> _Look:
    client = view.clients.get(client_id)
    if client is None:
        return ("unknown",)
    relationships = view.relationships_by_client.get(client_id, {})
    return (client.home_municipality, client.protection_order, client.area_client,
            tuple(sorted(
                (r.starts_at <= now_us, now_us < r.ends_at,
                 "none" if not r.assigned_users
                 else "me" if user_id in r.assigned_users else "others")
                for r in relationships.values()
                if r.municipality == municipality and r.service == purpose)))


class Likely:
    """The likely requests of a pass, users batch by batch (each batch read from a view
    of its own, so that writers never wait for a whole pass); remembers the looks done."""

    def __init__(self, open_relationships: bool = True) -> None:
        # whether to take the clients of open relationships too (else only those of
        # relationships naming the user: a caseload, asked about most)
        self.open_relationships = open_relationships
        self._seen: set[tuple[object, ...]] = set()
        self._open: dict[tuple[str, str], list[tuple[_Look, str]]] = {}

    def requests(self, view: FactView, now_us: int, users: Iterable[str]) -> list[Key]:
        keys: list[Key] = []
        for user_id in users:
            look = _user_look(view, user_id, now_us)
            if look is None:
                continue
            municipality = view.users[user_id].municipality
            assigned = view.assigned_relationships.get(user_id, {})
            for purpose in sorted(set(view.users[user_id].tasks)):
                candidates = (list(self._open_clients(view, municipality, purpose, now_us))
                              if self.open_relationships else [])
                candidates += [(_client_look(view, client, municipality, purpose, user_id,
                                             now_us), client) for client in assigned]
                keys += self._new(user_id, municipality, purpose, look, candidates)
        return keys

    def _open_clients(self, view: FactView, municipality: str, purpose: str,
                      now_us: int) -> list[tuple[_Look, str]]:
        """One client per look among those of the municipality's open relationships for
        the purpose (relationships naming nobody: any of its users may ask)."""
        pair = (municipality, purpose)
        if pair not in self._open:
            found: dict[_Look, str] = {}
            for client in view.open_relationships.get(pair, {}):
                found.setdefault(_client_look(view, client, municipality, purpose, "",
                                              now_us), client)
            self._open[pair] = list(found.items())
        return self._open[pair]

    def _new(self, user_id: str, municipality: str, purpose: str, look: _Look,
             candidates: list[tuple[_Look, str]]) -> list[Key]:
        keys: list[Key] = []
        for client_look, client in candidates:
            marker = (look, purpose, client_look)
            if marker not in self._seen:
                self._seen.add(marker)
                keys.append((user_id, client, purpose, municipality))
                if (look, purpose, client_look[1], "") not in self._seen:
                    # reads naming no owner: rules 9-11 see the owner and the
                    # protection order only
                    self._seen.add((look, purpose, client_look[1], ""))
                    keys.append((user_id, client, purpose, ""))
        return keys


class Warmer:
    """Passes over the likely requests, for a decider: the whole world (at start, for a
    new policy version, after an agreement or area changed) or the users a write
    touched. Blocking: the service runs it in a thread. Each batch's work is followed by
    a pause, so that a pass uses at most `share` of one CPU."""

    def __init__(self, decider: Warmable, index: FactIndex, share: float = 0.5,
                 metrics: Metrics | None = None, clock: Callable[[], datetime] = utcnow,
                 batch: int = 8) -> None:
        self.decider = decider
        self.index = index
        self.share = share
        self.metrics = metrics
        self.clock = clock
        self.batch = batch
        self.warmed_version: str | None = None  # the policy version last warmed whole
        self._stopped = threading.Event()
        self.facts_seen = 0  # the facts version that pass (or a later follow) began at

    def stop(self) -> None:
        """End any pass at its next batch, and every later one at once (the process is
        shutting down: a pass must not outlive the facts it reads)."""
        self._stopped.set()

    def full(self, why: str, policy: Evaluator | None = None,
             deadline: float | None = None) -> bool:
        """Warm every user's likely requests (for `policy`, if given, else the live one;
        until `deadline` on time.monotonic, if given). True when it finished."""
        live = policy is None
        version = (self.decider.policy if live else policy).version  # type: ignore[union-attr]
        with self.index.reading() as view:
            users = sorted(view.users)
            facts_version = view.version
        finished = self._users(users, policy, deadline, version if live else None)
        if finished and live:
            self.warmed_version = version
            self.facts_seen = max(self.facts_seen, facts_version)
        if self.metrics:
            self.metrics.warm_passes.labels(why, "finished" if finished else "cut").inc()
        return finished

    def follow(self) -> None:
        """Warm what changed since the last pass: everything for a new policy version
        or a changed agreement or area, else the users whose facts (or whose clients')
        changed."""
        if self.decider.policy.version != self.warmed_version:
            self.full("policy")
            return
        with self.index.reading():
            version = self.index.version
            if version <= self.facts_seen:
                return
            changed = {group: [key for key, at in stamps.items() if at > self.facts_seen]
                       for group, stamps in self.index.stamps.items()}
            users = set(changed["user"])
            for client in changed["client"]:
                for relationship in self.index.relationships_by_client.get(client, {}).values():
                    users.update(relationship.assigned_users)
        if changed["agreement"] or changed["area"]:
            self.full("facts")
            return
        if self.warm_users(sorted(users)):
            self.facts_seen = version

    def warm_users(self, users: list[str], why: str = "facts") -> bool:
        """Warm these users' likely requests for the live policy. True when it
        finished (not cut short by another version going live)."""
        finished = self._users(users, None, None, self.decider.policy.version)
        if self.metrics:
            self.metrics.warm_passes.labels(why, "finished" if finished else "cut").inc()
        return finished

    def _users(self, users: list[str], policy: Evaluator | None, deadline: float | None,
               live_version: str | None) -> bool:
        """Caseloads first (the clients of relationships naming each user), then the
        clients of open relationships too."""
        return all(self._pass(Likely(open_relationships), users, policy, deadline,
                              live_version) for open_relationships in (False, True))

    def _pass(self, likely: Likely, users: list[str], policy: Evaluator | None,
              deadline: float | None, live_version: str | None) -> bool:
        for start in range(0, len(users), self.batch):
            if self._stopped.is_set():
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
            if live_version is not None and self.decider.policy.version != live_version:
                return False  # another version went live: its own pass follows
            began = time.perf_counter()
            now = self.clock()
            with self.index.reading() as view:
                keys = likely.requests(view, to_micros(now),
                                       users[start:start + self.batch])
            if keys:
                self.decider.warm(keys, now, policy)
            pause = (time.perf_counter() - began) * (1 / self.share - 1)
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            self._stopped.wait(pause)
        return True


class Warmable(Protocol):
    """What the warmer drives (pdp.engine.decider.Decider)."""

    @property
    def policy(self) -> Evaluator: ...

    def warm(self, keys: Sequence[Key], now: datetime, policy: Evaluator | None = None
             ) -> int: ...

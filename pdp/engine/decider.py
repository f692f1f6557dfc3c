"""Decisions with memoisation: the service-side wrapper of the pure core.

A decision table (all categories and actions of a user x client x purpose, for the
record's owner the request names) is kept and reused while (1) the policy version is
the same, (2) the stamps of every fact group it read — user and grants, agreement,
area, client and relationships — are unchanged, and (3) now is still inside the time
span in which its answer holds. A write that touches any of those is therefore seen by
the very next decision.

Below that, the policy's answers are kept by record shape (`record_shape`: the record
up to renaming ids and moving timestamps without crossing now) and policy version: a new user x
client x purpose whose record has the shape of one asked before — the next client of
a caseload, a client after an unrelated change — needs no policy query.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from pdp.engine.core import (
    Decision,
    DecisionRequest,
    DecisionTable,
    Outcomes,
    evaluate_outcomes,
    table_for,
)
from pdp.engine.factindex import FactIndex
from pdp.engine.metrics import Metrics
from pdp.engine.policy_engine import Evaluator
from pdp.engine.policy_input import Record, policy_record, record_shape
from pdp.model.clock import to_micros, utcnow

Stamps = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class _Memo:
    policy_version: str
    stamps: Stamps
    table: DecisionTable


P = TypeVar("P", bound=Evaluator)


class Decider(Generic[P]):
    def __init__(self, policy: P, facts: FactIndex, *, cache_size: int = 100_000,
                 clock: Callable[[], datetime] = utcnow, metrics: Metrics | None = None) -> None:
        self.policy = policy
        self.facts = facts
        self.clock = clock
        self.metrics = metrics
        self.cache_size = cache_size
        # Keyed by user, client, purpose and the record's owner the request names: an
        # answer to a write depends on the owner (rule 11), so one owner's is never
        # another's.
        self._memo: dict[tuple[str, str, str, str], _Memo] = {}
        # Policy answers by record shape (pdp.engine.policy_input.record_shape): a record of a
        # shape seen before needs no policy query.
        self._shapes: dict[bytes, tuple[str, Outcomes]] = {}
        self.shape_hits = 0
        self.hits = 0
        self.misses = 0

    def swap_policy(self, policy: P) -> None:
        """Use a new compiled policy from the next decision on (atomic)."""
        self.policy = policy

    def _stamps(self, user: str, client: str) -> Stamps:
        facts = self.facts
        user_fact = facts.users.get(user)
        municipality = user_fact.municipality if user_fact else ""
        agreement = facts.agreements.get(municipality)
        area = agreement.area if agreement else ""
        return (facts.stamp("user", user), facts.stamp("agreement", municipality),
                facts.stamp("area", area), facts.stamp("client", client))

    def _hit(self, policy: Evaluator, key: tuple[str, str, str, str], stamps: Stamps,
             now_us: int) -> DecisionTable | None:
        """The memoised table, if it is still the answer (hold `facts.lock`)."""
        memo = self._memo.get(key)
        if (memo is not None and memo.policy_version == policy.version
                and memo.stamps == stamps
                and memo.table.valid_from <= now_us < memo.table.valid_until):
            self.hits += 1
            if self.metrics:
                self.metrics.cache_hits.inc()
            return memo.table.at_version(self.facts.version)
        return None

    def memoised(self, request: DecisionRequest, now: datetime | None = None
                 ) -> Decision | None:
        """The decision if it is memoised (microseconds, no policy query), else None: the
        service decides such requests on its event loop and the others in a thread."""
        started = time.perf_counter()
        now_us = to_micros(now or self.clock())
        with self.facts.lock:
            table = self._hit(self.policy, (request.user, request.client, request.purpose,
                                            request.owner),
                              self._stamps(request.user, request.client), now_us)
        if table is None:
            return None
        made = table.pick(request.category, request.action)
        if self.metrics:
            self.metrics.decision_seconds.observe(time.perf_counter() - started)
        return made

    def table(self, user: str, client: str, purpose: str,
              now: datetime | None = None, owner: str = "") -> DecisionTable:
        """Every category x action of user x client x purpose, for a record that the
        request says `owner` produced ("" when it names none)."""
        now_us = to_micros(now or self.clock())
        policy = self.policy
        key = (user, client, purpose, owner)
        with self.facts.lock:
            version = self.facts.version
            stamps = self._stamps(user, client)
            hit = self._hit(policy, key, stamps, now_us)
            if hit is not None:
                return hit
            record = policy_record(self.facts, user, client, purpose, now_us, owner)
        self.misses += 1
        if self.metrics:
            self.metrics.cache_misses.inc()
        table = table_for(policy, record, self._outcomes(policy, record), version)
        if table.valid_from < table.valid_until:
            if len(self._memo) >= self.cache_size:
                # Searches decide in worker threads too: another thread may change the
                # dict between iter and next; then this one evicts nothing this time.
                with contextlib.suppress(RuntimeError, StopIteration):
                    self._memo.pop(next(iter(self._memo)), None)
            self._memo[key] = _Memo(policy.version, stamps, table)
        return table

    def _outcomes(self, policy: Evaluator, record: Record) -> Outcomes | None:
        """The outcomes of a record: the policy's answer for its shape (asked once per
        shape and policy version), with the grant ids renamed back."""
        key, shape, back = record_shape(record)
        shaped = self._shapes.get(key)
        if shaped is not None and shaped[0] == policy.version:
            self.shape_hits += 1
            if self.metrics:
                self.metrics.shape_hits.inc()
            outcomes: Outcomes | None = shaped[1]
        else:
            if self.metrics:
                self.metrics.shape_misses.inc()
                self.metrics.policy_queries.inc()
            outcomes = evaluate_outcomes(policy, shape)
            if outcomes is None:
                return None
            if len(self._shapes) >= self.cache_size:
                with contextlib.suppress(RuntimeError, StopIteration):
                    self._shapes.pop(next(iter(self._shapes)), None)
            self._shapes[key] = (policy.version, outcomes)
        assert outcomes is not None
        return {key: (reason, back.get(grant, grant))
                for key, (reason, grant) in outcomes.items()}

    def decide(self, request: DecisionRequest, now: datetime | None = None) -> Decision:
        started = time.perf_counter()
        table = self.table(request.user, request.client, request.purpose, now, request.owner)
        made = table.pick(request.category, request.action)
        if self.metrics:
            self.metrics.decision_seconds.observe(time.perf_counter() - started)
        return made

    def clear(self, *, shapes: bool = True) -> None:
        """Forget the memoised tables (and, unless told otherwise, the answers by shape)."""
        self._memo.clear()
        if shapes:
            self._shapes.clear()

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

`check` is the one decision entry: the service's evaluation routes, explain, the CLI and
the policy suites (and so the reload gate and the candidates' vetting) decide through
it; a search asks the same memo (`table`) about each candidate. It reads the facts
once, from one view (`FactIndex.reading()`), held only while the memo is looked up and
the policy records and audit records are built — never while the policy runs — and
then decides, feeds the shadow, counts and builds the records the log keeps. `prepare`
and `finish` are its two halves, for a caller that decides memo hits on its event loop
and the rest in a worker thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, NamedTuple, Protocol, TypeVar, overload

from pdp.engine.core import (
    Decision,
    DecisionRequest,
    DecisionTable,
    Outcomes,
    evaluate_outcomes,
    gate_outcomes,
    table_for,
    table_outcomes,
)
from pdp.engine.factindex import FactIndex, FactView
from pdp.engine.metrics import Metrics
from pdp.engine.policy_engine import Evaluator
from pdp.engine.policy_input import Record, narrowed, policy_record, record_shape
from pdp.engine.policy_vet import StagePlan
from pdp.engine.records import AuditRecord, new_record_id
from pdp.model.clock import to_micros, utcnow
from pdp.model.errors import INVALID_REQUEST

Stamps = tuple[int, int, int, int]
# Likely requests whose records a warming builds from one view of the facts (`warm`).
WARM_VIEW_KEYS = 16


@dataclass(frozen=True, slots=True)
class _Memo:
    policy_version: str
    stamps: Stamps
    table: DecisionTable


P = TypeVar("P", bound=Evaluator)
Key = tuple[str, str, str, str]  # user, client, purpose, the record's owner named


class Asker(NamedTuple):
    """Who asks, as the decision log records it. `record_type` "explain" records an
    explanation: it is not a decision a PEP enforces, so it is neither counted nor
    offered to the shadow."""

    caller: str | None = None
    request_id: str | None = None
    record_type: str = "decision"


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A batch item too malformed to decide: still a deny, so still recorded (its ids
    only where they obey the id rule; the caller checks that)."""

    user: str | None = None
    client: str | None = None


Item = DecisionRequest | Unreadable


class Observer(Protocol):
    """A candidate policy that sees every decision made (pdp.engine.shadow.Shadow)."""

    def offer(self, request: DecisionRequest, now: datetime, made: Decision) -> None: ...


class Observers(Protocol):
    """Where the candidate being shadowed is, if any (pdp.engine.shadow.Candidates)."""

    @property
    def current(self) -> Observer | None: ...


class _Read(NamedTuple):
    """One item as read from the view: its memoised table (a hit), or the policy record
    to ask about (a miss), and what its audit record says of the user and the client."""

    item: Item
    key: Key
    table: DecisionTable | None
    record: Record | None
    stamps: Stamps
    user_municipality: str | None
    client_municipality: str | None


class Prepared(NamedTuple):
    """Items read from one view of the facts, to be decided by `Decider.finish`. (The
    small types of the entry are tuples: they are made on every request's path.)"""

    items: list[_Read]
    policy: Evaluator
    facts_version: int
    now: datetime
    at_us: int


class Checked(NamedTuple):
    """The decisions made, in order (a batch that stops early has fewer than it asked;
    an unreadable item's is a deny `invalid_request`), and their audit records."""

    decisions: list[Decision]
    records: list[AuditRecord]


class Decider(Generic[P]):
    def __init__(self, policy: P, facts: FactIndex, *, cache_size: int = 100_000,
                 clock: Callable[[], datetime] = utcnow, metrics: Metrics | None = None,
                 shapes: dict[bytes, Outcomes] | None = None,
                 threads: int = 2) -> None:
        self.policy = policy
        # How many `check`s and warmings may work at once. They are CPU-bound Python
        # (the interpreter runs one thread at a time): more would not decide faster, but
        # would keep the threads that hold a database lock (the decision log's writer and
        # indexer) waiting for the interpreter, until the database said "locked".
        self._working = threading.BoundedSemaphore(threads)
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
        # Deciders of one policy over other worlds (the suites' cases) may share them.
        self._shapes: dict[bytes, Outcomes] = {} if shapes is None else shapes
        self.shape_hits = 0
        self.queries = 0  # policy queries asked (a staged decision may ask two)
        self.warm_queries = 0  # ... and asked ahead of requests (`warm`)
        self.hits = 0
        self.misses = 0
        # The candidate policies shadowing this one (the service sets it).
        self.shadow: Observers | None = None

    def swap_policy(self, policy: P) -> None:
        """Use a new compiled policy from the next decision on (atomic)."""
        self.policy = policy

    def _stamps(self, user: str, client: str, facts: FactView) -> Stamps:
        user_fact = facts.users.get(user)
        municipality = user_fact.municipality if user_fact else ""
        agreement = facts.agreements.get(municipality)
        area = agreement.area if agreement else ""
        return (facts.stamp("user", user), facts.stamp("agreement", municipality),
                facts.stamp("area", area), facts.stamp("client", client))

    def _hit(self, policy: Evaluator, key: Key, stamps: Stamps, now_us: int,
             version: int, count: bool = True) -> DecisionTable | None:
        """The memoised table, if it is still the answer (inside `facts.reading()`);
        `count`: count the hit (else the caller counts it)."""
        memo = self._memo.get(key)
        if (memo is not None and memo.policy_version == policy.version
                and memo.stamps == stamps
                and memo.table.valid_from <= now_us < memo.table.valid_until):
            if count:
                self.hits += 1
                if self.metrics:
                    self.metrics.cache_hits.inc()
            return memo.table.at_version(version)
        return None

    def memoised(self, request: DecisionRequest, now: datetime | None = None
                 ) -> Decision | None:
        """The decision if it is memoised (no policy query), else None: a probe of the
        memo, `prepare_memoised` for one request without its audit record."""
        prepared = self.prepare_memoised([request], now or self.clock())
        table = None if prepared is None else prepared.items[0].table
        return None if table is None else table.pick(request.category, request.action)

    def table(self, user: str, client: str, purpose: str,
              now: datetime | None = None, owner: str = "") -> DecisionTable:
        """Every category x action of user x client x purpose, for a record that the
        request says `owner` produced ("" when it names none)."""
        now_us = to_micros(now or self.clock())
        policy = self.policy
        key = (user, client, purpose, owner)
        with self.facts.reading() as view:
            version = view.version
            stamps = self._stamps(user, client, view)
            hit = self._hit(policy, key, stamps, now_us, version)
            if hit is not None:
                return hit
            record = policy_record(view, user, client, purpose, now_us, owner)
        with self._working:  # as `check`: searches decide in worker threads too
            return self._evaluate(policy, key, stamps, record, version)

    def _evaluate(self, policy: Evaluator, key: Key, stamps: Stamps, record: Record,
                  version: int) -> DecisionTable:
        """Ask (the shape cache, else) the policy about a record, outside any view, and
        memoise the table while its answer holds."""
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
        """The outcomes of a record: the policy's answers for its shape (asked once per
        shape and policy version), with the grant ids renamed back. A policy with a
        stage plan (policy_vet.stage_plan) is asked in its two stages, each about the
        record narrowed to the fields it reads and kept by that smaller record's shape:
        rules 9-11 are then asked once per user's rights, purpose and the few client
        facts they read, not once per client."""
        outcomes, asked = self._answers(policy, record)
        if not asked:
            self.shape_hits += 1
            if self.metrics:
                self.metrics.shape_hits.inc()
        elif self.metrics:
            self.metrics.shape_misses.inc()
        return outcomes

    def _answers(self, policy: Evaluator, record: Record, counted: bool = True
                 ) -> tuple[Outcomes | None, bool]:
        """The outcomes of a record by shape, stage by stage (see `_outcomes`), and
        whether the policy was asked; `counted`: a request's (else a warming's) queries."""
        plan: StagePlan | None = getattr(policy, "plan", None)
        if plan is None:
            return self._by_shape(policy, b"d", record, evaluate_outcomes, counted)
        outcomes, asked = self._by_shape(policy, b"g", narrowed(record, plan.gate_fields),
                                         gate_outcomes, counted)
        if outcomes is not None and not outcomes:  # no rule of 1-8 fails
            outcomes, asked_too = self._by_shape(
                policy, b"t", narrowed(record, plan.table_fields), table_outcomes, counted)
            asked = asked or asked_too
        return outcomes, asked

    def _by_shape(self, policy: Evaluator, stage: bytes, record: Record,
                  ask: Callable[[Evaluator, Record], Outcomes | None],
                  counted: bool = True) -> tuple[Outcomes | None, bool]:
        """`ask` about a record's shape, or its answer kept from before, renamed back;
        and whether the policy was asked.
        Kept by policy version too: a version being warmed before it goes live leaves
        the live one's answers in place."""
        shape_key, shape, back = record_shape(record)
        key = b"%s %s %s" % (policy.version.encode(), stage, shape_key)
        kept = self._shapes.get(key)
        asked = kept is None
        if kept is not None:
            outcomes = kept
        else:
            if counted:
                self.queries += 1
                if self.metrics:
                    self.metrics.policy_queries.inc()
            else:
                self.warm_queries += 1
                if self.metrics:
                    self.metrics.warm_queries.inc()
            found = ask(policy, shape)
            if found is None:
                return None, True
            outcomes = found
            if len(self._shapes) >= self.cache_size:
                with contextlib.suppress(RuntimeError, StopIteration):
                    self._shapes.pop(next(iter(self._shapes)), None)
            self._shapes[key] = outcomes
        if not back:
            return outcomes, asked
        return {pair: (reason, back.get(grant, grant))
                for pair, (reason, grant) in outcomes.items()}, asked

    def warm(self, keys: Sequence[Key], now: datetime, policy: Evaluator | None = None
             ) -> int:
        """Work out the policy's answers for these likely requests ahead of any request
        (pdp.engine.warming): their records are built from one view and asked about
        by shape, stage by stage, as a request's would be — nothing is memoised by key,
        nothing counted as a request's, no audit record. `policy`: a version about to go
        live (its answers are kept beside the live one's). Returns the queries asked."""
        policy = self.policy if policy is None else policy
        now_us = to_micros(now)
        asked = self.warm_queries
        for start in range(0, len(keys), WARM_VIEW_KEYS):
            # A few records per view: requests on the event loop and writes take the
            # index's lock too, and must not wait for a whole batch's records.
            with self.facts.reading() as view:
                records = [policy_record(view, user, client, purpose, now_us, owner)
                           for user, client, purpose, owner in keys[start:start + WARM_VIEW_KEYS]]
            for record in records:
                with self._working:  # a request's share of the interpreter, record by record
                    self._answers(policy, record, counted=False)
        if self.metrics:
            self.metrics.warm_requests.inc(len(keys))
        return self.warm_queries - asked

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

    # -- the one decision entry -----------------------------------------------------------

    def check(self, items: Sequence[Item], now: datetime, asker: Asker,
              stop: str | None = None) -> Checked:
        """Decide the items at `now` and build their audit records: the one way in.

        `stop`: "deny_on_first_deny" or "permit_on_first_permit" stops a batch at the
        first such decision (the items after it are neither decided nor recorded)."""
        with self._working:
            return self.finish(self.prepare(items, now), asker, stop)

    def prepare(self, items: Sequence[Item], now: datetime, view: FactView | None = None,
                policy: Evaluator | None = None) -> Prepared:
        """Read the items from one view of the facts: the memo, and for the misses the
        policy records; the user's and client's municipalities for the audit records.
        `view`: one the caller holds already (explain reads its trace from the same);
        `policy`: the policy to decide by, if the caller took it already."""
        policy = self.policy if policy is None else policy
        now_us = to_micros(now)
        if view is not None:
            version = view.version
            return Prepared([self._read(view, policy, item, now_us, version)
                             for item in items], policy, version, now, now_us)
        with self.facts.reading() as view:
            version = view.version
            return Prepared([self._read(view, policy, item, now_us, version)
                             for item in items], policy, version, now, now_us)

    def prepare_memoised(self, items: Sequence[Item], now: datetime) -> Prepared | None:
        """`prepare` when every item is memoised (microseconds: the service does this on
        its event loop); else None, having built no policy record: such a request is
        decided by `check` in a worker thread, where its records are built from one view
        of its own (building records for a batch of misses is milliseconds of work under
        the index's read side, which neither the loop nor writers should wait for)."""
        policy = self.policy
        now_us = to_micros(now)
        reads: list[_Read] = []
        with self.facts.reading() as view:
            version = view.version
            for item in items:
                read = self._read(view, policy, item, now_us, version, memo_only=True)
                if read is None:
                    return None
                reads.append(read)
        hits = sum(1 for read in reads if not isinstance(read.item, Unreadable))
        self.hits += hits
        if self.metrics and hits:
            self.metrics.cache_hits.inc(hits)
        return Prepared(reads, policy, version, now, now_us)

    @overload
    def _read(self, view: FactView, policy: Evaluator, item: Item, now_us: int,
              version: int) -> _Read: ...

    @overload
    def _read(self, view: FactView, policy: Evaluator, item: Item, now_us: int,
              version: int, memo_only: bool) -> _Read | None: ...

    def _read(self, view: FactView, policy: Evaluator, item: Item, now_us: int,
              version: int, memo_only: bool = False) -> _Read | None:
        """One item read from the view: its memoised table, else its policy record
        (`memo_only`: None instead of building the record)."""
        if isinstance(item, Unreadable):
            return _Read(item, ("", "", "", ""), None, None, (0, 0, 0, 0), None, None)
        user_id, client_id = item.user, item.client
        key = (user_id, client_id, item.purpose, item.owner)
        user = view.users.get(user_id)
        client = view.clients.get(client_id)
        municipality = user.municipality if user else ""
        agreement = view.agreements.get(municipality)
        stamps = (view.stamp("user", user_id), view.stamp("agreement", municipality),
                  view.stamp("area", agreement.area if agreement else ""),
                  view.stamp("client", client_id))  # as _stamps, the user read once
        table = self._hit(policy, key, stamps, now_us, version, count=not memo_only)
        if table is None and memo_only:
            return None
        record = None if table is not None else policy_record(
            view, user_id, client_id, item.purpose, now_us, item.owner)
        return _Read(item, key, table, record, stamps, user.municipality if user else None,
                     client.home_municipality if client else None)

    def finish(self, prepared: Prepared, asker: Asker, stop: str | None = None) -> Checked:
        """Decide what `prepare` read (the misses ask the policy, outside any view), feed
        the shadow, count, and build the audit records."""
        decisions: list[Decision] = []
        records: list[AuditRecord] = []
        made_here: dict[Key, DecisionTable] = {}  # a batch asks about a key once
        enforced = asker.record_type == "decision"
        metrics = self.metrics
        for read in prepared.items:
            started = time.perf_counter() if metrics else 0.0
            item = read.item
            if isinstance(item, Unreadable):
                made = Decision(False, INVALID_REQUEST, prepared.policy.version,
                                prepared.facts_version)
                records.append(_unreadable_record(item, made, prepared.at_us, asker))
            else:
                table = read.table if read.table is not None else self._table(
                    prepared, read, made_here)
                made = table.pick(item.category, item.action)
                if enforced and (metrics or self.shadow is not None):
                    self._observe(item, prepared.now, made, started)
                records.append(_decision_record(read, item, made, prepared.at_us, asker))
            decisions.append(made)
            if ((stop == "deny_on_first_deny" and not made.decision)
                    or (stop == "permit_on_first_permit" and made.decision)):
                break
        return Checked(decisions, records)

    def _table(self, prepared: Prepared, read: _Read,
               made_here: dict[Key, DecisionTable]) -> DecisionTable:
        """The table of an item the memo did not have when it was read."""
        table = made_here.get(read.key)
        if table is not None:  # asked before in this batch: as the memo would answer
            self.hits += 1
            if self.metrics:
                self.metrics.cache_hits.inc()
            return table
        assert read.record is not None
        table = made_here[read.key] = self._evaluate(prepared.policy, read.key, read.stamps,
                                                     read.record, prepared.facts_version)
        return table

    def _observe(self, request: DecisionRequest, now: datetime, made: Decision,
                 started: float) -> None:
        """The shadow hook and the metrics of one enforced decision."""
        shadow = self.shadow.current if self.shadow is not None else None
        if shadow is not None:
            shadow.offer(request, now, made)
        if self.metrics:
            self.metrics.decision_counter(made.decision, made.reason, request.purpose).inc()
            self.metrics.decision_seconds.observe(time.perf_counter() - started)


def _decision_record(read: _Read, request: DecisionRequest, made: Decision, at_us: int,
                     asker: Asker) -> AuditRecord:
    """The record of one decision, from the same view it was decided over."""
    return AuditRecord(
        asker.record_type, new_record_id(), at_us,
        user_id=request.user, user_municipality=read.user_municipality,
        grant_id=made.grant,
        client_id=request.client, client_municipality=read.client_municipality,
        category=request.category, action=request.action,
        purpose=request.purpose if request.purpose or request.purpose_stated else None,
        decision=made.decision, reason=made.reason,
        policy_version=made.policy_version, facts_version=made.facts_version,
        request_id=asker.request_id, caller=asker.caller)


def _unreadable_record(item: Unreadable, made: Decision, at_us: int,
                       asker: Asker) -> AuditRecord:
    return AuditRecord(asker.record_type, new_record_id(), at_us, user_id=item.user,
                       client_id=item.client, decision=False, reason=made.reason,
                       policy_version=made.policy_version, facts_version=made.facts_version,
                       request_id=asker.request_id, caller=asker.caller)

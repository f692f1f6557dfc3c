"""Misuse detection on the stream of decisions, and the cases of supervision (agreement § 7).

The anomaly rules are data (`policies/monitoring.yaml`). The detector counts the decisions
of the decision log's record chain in the chain's order, each exactly once, whichever
replica moved them there and whichever replica answered them: its windows (per rule and
user) and how far it has counted (the cursor `monitor`) live in the store, and one step
of counting is one write transaction that holds the cursor's lock (PostgreSQL: the row;
SQLite: the database's write lock). So every replica counts into the same windows, the
same browsing spread over two replicas is the same browsing, and a restart in the middle
of a window goes on counting where it was. (The store, not Redis: the embedded default
has no Redis and its windows must survive a restart too; and in the store a step's
windows, cases and cursor are written together, so a crash never counts a decision twice
or not at all.)

A hit opens a case for the user and rule (or adds to the open one). A case is announced
by an event in the outbox (`case.opened`), so the contact people of the area and of the
municipality hear of it at once through their webhooks: the step writes the case, and the
case is announced right after it, by whichever replica looks first (an unannounced case
is announced at the next look, so a crash in between loses no announcement).

Either party may also open a case by hand (§ 7): the area (`grant_admin`, `auditor`) about
any user, a municipality about its own users; it is announced as an automatic case is.
A case about a municipality's staff is resolved by the authority; the municipality (and
the auditor) may comment on it: add what it knows. Each comment is recorded with who
and when and is an event (`case.commented`). A finding of misuse suspends the user's
rights that are in use, if the rules say so (`suspend_rights_on_misuse`: `resolve_case`).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import orjson
import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.engine import Connection, Engine

from pdp.audit.log import RECORD_HEAD, AuditRecord, head_table, records_table
from pdp.engine.factindex import FactView
from pdp.model.clock import END_OF_TIME, from_micros, to_micros, utcnow
from pdp.rights.lifecycle import Lifecycle, Suspension, WorkflowError
from pdp.store.protocols import Event, FactStore, StoreUnavailable
from pdp.store.sql import cursors, write_transaction

log = logging.getLogger(__name__)

MANUAL = "manual"  # the rule of a case opened by hand
MONITOR_CURSOR = "monitor"  # the last seq of the record chain the detector has counted

metadata = sa.MetaData()
cases_table = sa.Table(
    "monitoring_cases", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("rule", sa.String(64), nullable=False),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("municipality", sa.String(3), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("hits", sa.BigInteger(), nullable=False),
    sa.Column("opened_us", sa.BigInteger(), nullable=False),
    sa.Column("updated_us", sa.BigInteger(), nullable=False),
    sa.Column("last_record", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16)),
    sa.Column("note", sa.Text()),
    sa.Column("resolved_by", sa.String(200)),
    sa.Column("resolved_us", sa.BigInteger()),
    sa.Column("client_id", sa.String(128)),
    sa.Column("observed", sa.Text()),
    sa.Column("justification", sa.Text()),
    sa.Column("opened_by", sa.String(200)),
    sa.Column("announced_us", sa.BigInteger()),
)
comments_table = sa.Table(
    "monitoring_case_comments", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("case_id", sa.String(64), nullable=False),
    sa.Column("author", sa.String(200), nullable=False),
    sa.Column("at_us", sa.BigInteger(), nullable=False),
    sa.Column("text", sa.Text(), nullable=False),
)
windows_table = sa.Table(
    "monitoring_windows", metadata,
    sa.Column("rule", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("entries", sa.Text(), nullable=False),  # JSON [[key, at_us], ...]
    sa.Column("expires_us", sa.BigInteger(), nullable=False),
)


class Hours(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: int = Field(alias="from", ge=0, le=23)
    until: int = Field(ge=0, le=24)

    def contains(self, hour: int) -> bool:
        if self.from_ <= self.until:
            return self.from_ <= hour < self.until
        return hour >= self.from_ or hour < self.until


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str
    reasons: list[str] | None = None
    protection_order: bool = False
    had_a_right: bool = False
    local_hours: Hours | None = None
    distinct_clients: bool = False
    threshold: int = Field(ge=1)
    window_minutes: int = Field(ge=1)


class MonitoringConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timezone: str = "Europe/Helsinki"
    suspend_rights_on_misuse: bool = True
    rules: dict[str, Rule]

    @field_validator("rules")
    @classmethod
    def _names(cls, rules: dict[str, Rule]) -> dict[str, Rule]:
        for name in rules:
            if name == MANUAL:
                raise ValueError(f"{MANUAL!r} is the rule of the cases opened by hand")
            if not 1 <= len(name) <= 64:
                raise ValueError(f"a rule's name is 1-64 characters: {name[:70]!r}")
        return rules


def load_config(path: Path) -> MonitoringConfig:
    return MonitoringConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


@dataclass(frozen=True, slots=True)
class Hit:
    rule: str
    user: str
    municipality: str
    record_id: str
    at_us: int


class _Window:
    """The matching decisions of one user within a rule's window: key -> time, where the
    key is the client for a rule that counts distinct clients (its latest time), else the
    record. At most `threshold` entries: a hit clears the window."""

    __slots__ = ("entries", "oldest")

    def __init__(self, entries: dict[str, int] | None = None) -> None:
        self.entries: dict[str, int] = entries if entries is not None else {}
        self.oldest = min(self.entries.values(), default=END_OF_TIME)

    def add(self, key: str, at_us: int, horizon_us: int) -> int:
        if self.oldest <= horizon_us:  # some have left the window
            self.entries = {k: t for k, t in self.entries.items() if t > horizon_us}
            self.oldest = min(self.entries.values(), default=END_OF_TIME)
        if at_us > self.entries.get(key, -1):
            self.entries[key] = at_us
            self.oldest = min(self.oldest, at_us)
        return len(self.entries)

    def clear(self) -> None:
        self.entries = {}
        self.oldest = END_OF_TIME

    def latest(self) -> int:
        return max(self.entries.values(), default=0)

    def dumps(self) -> str:
        return orjson.dumps(list(self.entries.items())).decode()

    @classmethod
    def loads(cls, text: str) -> _Window:
        return cls({str(key): int(at) for key, at in orjson.loads(text)})


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A rule as plain values, read once per decision."""

    name: str
    reasons: frozenset[str] | None
    protection_order: bool
    had_a_right: bool
    hours: frozenset[int] | None
    distinct_clients: bool
    threshold: int
    window_us: int


class Detector:
    """The anomaly rules over decision records: which rules a record matches, and the
    sliding windows (per rule and user) that count the matches. The windows are the
    caller's (the store's, see Monitor), or this detector's own in memory (`observe`)."""

    def __init__(self, config: MonitoringConfig, facts: FactView) -> None:
        self.config = config
        self.facts = facts
        self.zone = ZoneInfo(config.timezone)
        self._rules = tuple(
            _Compiled(name, frozenset(rule.reasons) if rule.reasons is not None else None,
                      rule.protection_order, rule.had_a_right,
                      frozenset(h for h in range(24) if rule.local_hours.contains(h))
                      if rule.local_hours is not None else None,
                      rule.distinct_clients, rule.threshold, rule.window_minutes * 60_000_000)
            for name, rule in config.rules.items())
        self.rules = {rule.name: rule for rule in self._rules}
        # The rules that may match a decision with a given reason (the rest match none).
        self._by_reason: dict[str | None, tuple[_Compiled, ...]] = {}
        for reason in {r for rule in self._rules for r in rule.reasons or ()}:
            self._by_reason[reason] = tuple(
                rule for rule in self._rules
                if rule.reasons is None or reason in rule.reasons)
        self._any_reason = tuple(rule for rule in self._rules if rule.reasons is None)
        self._windows: dict[tuple[str, str], _Window] = {}
        self._hours: tuple[int, int] = (-1, 0)  # (minute since the epoch, its local hour)
        self._lock = threading.Lock()

    def _hour(self, at_us: int) -> int:
        """The local hour of a time, computed once per minute (zones shift by minutes)."""
        minute = at_us // 60_000_000
        if self._hours[0] != minute:
            self._hours = (minute, from_micros(at_us).astimezone(self.zone).hour)
        return self._hours[1]

    def _matches(self, rule: _Compiled, record: AuditRecord) -> bool:
        """Whether a rule picked by the record's reason matches it."""
        if rule.protection_order:
            client = self.facts.clients.get(record.client_id or "")
            if client is None or not client.protection_order:
                return False
        if rule.had_a_right and not self.facts.grants_by_user.get(record.user_id or ""):
            return False
        return rule.hours is None or self._hour(record.at_us) in rule.hours

    def matched(self, records: Iterable[AuditRecord]) -> list[tuple[_Compiled, AuditRecord]]:
        """(rule, record) for every rule each decision record matches, in order."""
        found = []
        for record in records:
            if record.record_type != "decision" or not record.user_id:
                continue
            for rule in self._by_reason.get(record.reason, self._any_reason):
                if self._matches(rule, record):
                    found.append((rule, record))
        return found

    @staticmethod
    def count(matched: Iterable[tuple[_Compiled, AuditRecord]],
              windows: MutableMapping[tuple[str, str], _Window]) -> list[Hit]:
        """Add the matches to their windows (created as needed); the hits, in order."""
        hits = []
        for rule, record in matched:
            user = record.user_id or ""
            window = windows.get((rule.name, user))
            if window is None:
                window = windows[(rule.name, user)] = _Window()
            key = (record.client_id or "") if rule.distinct_clients else record.record_id
            if window.add(key, record.at_us, record.at_us - rule.window_us) >= rule.threshold:
                hits.append(Hit(rule.name, user, record.user_municipality or "",
                                record.record_id, record.at_us))
                window.clear()  # the next hit needs a new run of matches
        return hits

    def observe(self, records: list[AuditRecord]) -> list[Hit]:
        """Count records in this detector's own windows (in memory)."""
        with self._lock:
            return self.count(self.matched(records), self._windows)


def _when(us: int | None) -> str | None:
    return from_micros(us).isoformat() if us is not None else None


def comment_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "by": row["author"], "at": _when(row["at_us"]),
            "text": row["text"]}


def case_json(row: Mapping[str, Any], comments: list[dict[str, Any]] | None = None
              ) -> dict[str, Any]:
    return {"id": row["id"], "rule": row["rule"], "user": row["user_id"],
            "municipality": row["municipality"], "client": row.get("client_id"),
            "status": row["status"], "hits": row["hits"],
            "opened_at": _when(row["opened_us"]),
            "opened_by": row.get("opened_by") or "monitoring",
            "observed": row.get("observed"), "justification": row.get("justification"),
            "updated_at": _when(row["updated_us"]),
            "last_record": row["last_record"] or None, "outcome": row["outcome"],
            "note": row["note"], "resolved_by": row["resolved_by"],
            "resolved_at": _when(row["resolved_us"]), "comments": comments or []}


class CaseNotOpen(Exception):
    """The case is resolved: it takes no more comments and no second resolution."""


class _Announced(Exception):
    """Another replica announced the case meanwhile."""


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


@contextmanager
def _available_db() -> Iterator[None]:
    """Database failures as StoreUnavailable (refused `unavailable`: try again)."""
    try:
        yield
    except (sa.exc.DBAPIError, sa.exc.TimeoutError) as error:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise StoreUnavailable(text) from error


class Cases:
    """Cases and their comments in the store, and their events in the outbox."""

    def __init__(self, engine: Engine, store: FactStore,
                 on_open: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.store = store
        self.on_open = on_open

    # -- the detector's cases -----------------------------------------------------------

    def record_hit(self, hit: Hit, description: str, count: int = 1) -> str:
        """Open a case for the hit's rule and user, or add the hits to the open one, and
        announce it; the case's id."""
        with _available_db(), write_transaction(self.engine) as conn:
            (case_id,) = self.add_hits(conn, [hit] * count).values()
        self.announce(lambda _rule: description)
        return case_id

    def add_hits(self, conn: Connection, hits: list[Hit]) -> dict[tuple[str, str], str]:
        """In the detector's transaction: add the hits to the open case of their rule and
        user, or open one (announced by `announce`, after the transaction); the cases."""
        t = cases_table
        ids: dict[tuple[str, str], str] = {}
        grouped: dict[tuple[str, str], tuple[Hit, Hit, int]] = {}
        for hit in hits:
            first, _, count = grouped.get((hit.rule, hit.user), (hit, hit, 0))
            grouped[(hit.rule, hit.user)] = (first, hit, count + 1)
        for (rule, user), (first, last, count) in grouped.items():
            found = conn.execute(sa.select(t.c.id).where(
                t.c.rule == rule, t.c.user_id == user, t.c.status == "open")
                .order_by(t.c.opened_us).limit(1).with_for_update()).scalar_one_or_none()
            if found is not None:
                conn.execute(t.update().where(t.c.id == found).values(
                    hits=t.c.hits + count, updated_us=last.at_us, last_record=last.record_id))
                ids[(rule, user)] = str(found)
                continue
            ids[(rule, user)] = _new_id("case")
            conn.execute(t.insert().values(
                id=ids[(rule, user)], rule=rule, user_id=user, municipality=first.municipality,
                status="open", hits=count, opened_us=first.at_us, updated_us=last.at_us,
                last_record=last.record_id))
        return ids

    def announce(self, describe: Callable[[str], str]) -> int:
        """Write the `case.opened` event of every case not yet announced (each once, in one
        transaction with its mark); how many this call announced."""
        t = cases_table
        with _available_db(), self.engine.connect() as conn:
            waiting = [str(r.id) for r in conn.execute(
                sa.select(t.c.id).where(t.c.announced_us.is_(None))
                .order_by(t.c.opened_us, t.c.id))]
        announced = 0
        for case_id in waiting:
            case = self.get(case_id)
            if case is None:
                continue
            now_us = to_micros(utcnow())

            def mark(conn: Connection, case_id: str = case_id, now_us: int = now_us) -> None:
                done = conn.execute(t.update().where(t.c.id == case_id,
                                                     t.c.announced_us.is_(None))
                                    .values(announced_us=now_us))
                if not done.rowcount:
                    raise _Announced(case_id)

            try:
                self.store.apply([], [Event("case.opened", "case", case_id, case["municipality"],
                                            "monitoring", describe(case["rule"]),
                                            {"case": case})], within=mark)
            except _Announced:
                continue
            announced += 1
            if self.on_open is not None:
                self.on_open(case["rule"])
        return announced

    # -- people's cases -----------------------------------------------------------------

    # carries: C-18, C-19, C-20
    def open_by_hand(self, *, user: str, municipality: str, client: str | None,
                     observed: str, justification: str, by: str, now_us: int,
                     ) -> dict[str, Any]:
        """A case opened by a person who suspects misuse (§ 7: either party), written in
        one transaction with its `case.opened` event: told to the contact people of the
        area and of the user's municipality exactly as a detected case is."""
        row: dict[str, Any] = {
            "id": _new_id("case"), "rule": MANUAL, "user_id": user,
            "municipality": municipality, "status": "open", "hits": 0, "opened_us": now_us,
            "updated_us": now_us, "last_record": "", "outcome": None, "note": None,
            "resolved_by": None, "resolved_us": None, "client_id": client,
            "observed": observed, "justification": justification, "opened_by": by,
            "announced_us": now_us}
        case = case_json(row)

        def insert(conn: Connection) -> None:
            conn.execute(cases_table.insert().values(**row))

        self.store.apply([], [Event("case.opened", "case", row["id"], municipality, by,
                                    justification, {"case": case})], within=insert)
        if self.on_open is not None:
            self.on_open(MANUAL)
        return case

    # carries: C-18, C-19
    def comment(self, case_id: str, text: str, by: str, now_us: int
                ) -> dict[str, Any] | None:
        """Add what one knows to an open case: recorded with who and when, in one
        transaction with its `case.commented` event. None if there is no such case;
        CaseNotOpen if it is resolved."""
        case = self.get(case_id)
        if case is None:
            return None
        if case["status"] != "open":
            raise CaseNotOpen(case_id)
        row = {"id": _new_id("comment"), "case_id": case_id, "author": by, "at_us": now_us,
               "text": text}
        comment = comment_json(row)
        after = {**case, "comments": [*case["comments"], comment]}
        t = cases_table

        def insert(conn: Connection) -> None:
            still = conn.execute(sa.select(t.c.id).where(t.c.id == case_id,
                                                         t.c.status == "open")
                                 .with_for_update()).first()
            if still is None:
                raise CaseNotOpen(case_id)
            conn.execute(comments_table.insert().values(**row))

        self.store.apply([], [Event("case.commented", "case", case_id, case["municipality"],
                                    by, text, {"case": after, "comment": comment})],
                         within=insert)
        return {"case": case_id, **comment}

    # carries: C-19
    def resolve(self, case_id: str, outcome: Literal["justified", "misuse"], note: str,
                by: str, now_us: int) -> dict[str, Any] | None:
        """Close an open case (the authority's), in one transaction with its
        `case.resolved` event; None if there is no such case, CaseNotOpen if it is
        resolved already."""
        case = self.get(case_id)
        if case is None:
            return None
        if case["status"] != "open":
            raise CaseNotOpen(case_id)
        t = cases_table
        resolved = {**case, "status": "resolved", "outcome": outcome, "note": note,
                    "resolved_by": by, "resolved_at": _when(now_us)}

        def close(conn: Connection) -> None:
            done = conn.execute(t.update().where(t.c.id == case_id, t.c.status == "open")
                                .values(status="resolved", outcome=outcome, note=note,
                                        resolved_by=by, resolved_us=now_us))
            if not done.rowcount:
                raise CaseNotOpen(case_id)

        self.store.apply([], [Event("case.resolved", "case", case_id, case["municipality"],
                                    by, f"{outcome}: {note}", {"case": resolved})],
                         within=close)
        return resolved

    # -- reading ------------------------------------------------------------------------

    def _comments(self, conn: Connection, cases: sa.Select[Any]) -> dict[str, list[
            dict[str, Any]]]:
        c = comments_table
        found: dict[str, list[dict[str, Any]]] = {}
        for row in conn.execute(sa.select(c).where(c.c.case_id.in_(cases))
                                .order_by(c.c.at_us, c.c.id)):
            found.setdefault(str(row.case_id), []).append(comment_json(dict(row._mapping)))
        return found

    def get(self, case_id: str) -> dict[str, Any] | None:
        t = cases_table
        with _available_db(), self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == case_id)).first()
            if row is None:
                return None
            comments = self._comments(conn, sa.select(t.c.id).where(t.c.id == case_id))
        return case_json(dict(row._mapping), comments.get(case_id))

    def list(self, *, status: str | None = None, municipality: str | None = None,
             rule: str | None = None, user: str | None = None) -> list[dict[str, Any]]:
        t = cases_table
        conditions = [column == value for value, column in (
            (status, t.c.status), (municipality, t.c.municipality), (rule, t.c.rule),
            (user, t.c.user_id)) if value is not None]
        with _available_db(), self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(*conditions)
                                .order_by(t.c.opened_us, t.c.id)).all()
            comments = self._comments(conn, sa.select(t.c.id).where(*conditions))
        return [case_json(dict(r._mapping), comments.get(str(r.id))) for r in rows]

    def count_open(self) -> int:
        with _available_db(), self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(cases_table)
                                    .where(cases_table.c.status == "open")).scalar_one())


# carries: C-19
def resolve_case(cases: Cases, lifecycle: Lifecycle, case_id: str,
                 outcome: Literal["justified", "misuse"], note: str, by: str, now_us: int,
                 *, suspend_on_misuse: bool) -> dict[str, Any] | None:
    """Resolve a case (`Cases.resolve`: None if there is none, CaseNotOpen if it is
    resolved already) and, on a finding of misuse when `suspend_on_misuse`, suspend the
    user's rights that are in use (active or due for recertification) through their
    workflow, by the same actor: the case as resolved, with `suspended_grants`."""
    resolved = cases.resolve(case_id, outcome, note, by, now_us)
    if resolved is None:
        return None
    suspended: list[str] = []
    if outcome == "misuse" and suspend_on_misuse:
        for row in lifecycle.listing(user=resolved["user"]):
            if row["state"] in ("active", "recertification_due"):
                try:
                    lifecycle.step(row["id"], "suspend",
                                   Suspension(reason=f"misuse found in {case_id}"), by)
                    suspended.append(row["id"])
                except WorkflowError:
                    pass  # changed meanwhile: it is no longer active
    return {**resolved, "suspended_grants": suspended}


class Monitor:
    """The detector fed by the decision log, with its windows in the store.

    A thread of its own counts: it wakes when this process moved records into the record
    chain (it is a move listener) and every `poll_seconds` (records another process
    moved), and counts what the cursor `monitor` has not, `chunk` records per step."""

    def __init__(self, config: MonitoringConfig, facts: FactView, cases: Cases, *,
                 poll_seconds: float = 1.0, chunk: int = 2000, start: bool = True) -> None:
        self.config = config
        self.detector = Detector(config, facts)
        self.cases = cases
        self.engine = cases.engine
        self.poll_seconds = poll_seconds
        self.chunk = chunk
        self._wake = threading.Event()
        self._swept = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="pdp-monitor", daemon=True)
        if start:
            self._thread.start()

    def __call__(self, records: list[AuditRecord]) -> None:
        self._wake.set()  # records moved: count them (they are read back in chain order)

    def describe(self, rule: str) -> str:
        found = self.config.rules.get(rule)
        return found.description if found is not None else rule

    def _run(self) -> None:
        while True:
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            try:
                while self.step():
                    pass
                self.cases.announce(self.describe)
                if time.monotonic() - self._swept > 600:
                    self.sweep()
                    self._swept = time.monotonic()
            except Exception as error:  # the store is down: the cursor waits
                log.warning("misuse detection: %s", str(error).splitlines()[0]
                            if str(error) else type(error).__name__)
                time.sleep(self.poll_seconds)

    # carries: C-18, C-19, C-20
    def step(self) -> int:
        """Count the next records after the cursor, in one transaction with the windows,
        the cases and the cursor; how many records it passed (0: nothing new)."""
        with self.engine.connect() as conn:  # a look without the write lock
            cursor = conn.execute(sa.select(cursors.c.value).where(
                cursors.c.name == MONITOR_CURSOR)).scalar_one_or_none()
            head = conn.execute(sa.select(head_table.c.seq).where(
                head_table.c.id == RECORD_HEAD)).scalar_one_or_none()
        if head is None or (cursor is not None and int(head) <= int(cursor)):
            return 0
        r = records_table
        with write_transaction(self.engine) as conn:
            cursor = conn.execute(sa.select(cursors.c.value).where(
                cursors.c.name == MONITOR_CURSOR).with_for_update()).scalar_one_or_none()
            head = int(conn.execute(sa.select(head_table.c.seq).where(
                head_table.c.id == RECORD_HEAD)).scalar_one())
            if cursor is None:  # a store without the cursor: start at the head
                log.warning("misuse detection starts at record %d (no cursor)", head)
                conn.execute(cursors.insert().values(name=MONITOR_CURSOR, value=head))
                return 0
            after = int(cursor)
            if head <= after:
                return 0
            upto = min(head, after + self.chunk)
            records = [
                AuditRecord("decision", row.record_id, int(row.at_us), user_id=row.user_id,
                            user_municipality=row.user_municipality,
                            client_id=row.client_id, reason=row.reason)
                for row in conn.execute(
                    sa.select(r.c.record_id, r.c.at_us, r.c.user_id, r.c.user_municipality,
                              r.c.client_id, r.c.reason)
                    .where(r.c.seq > after, r.c.seq <= upto, r.c.record_type == "decision",
                           r.c.user_id.is_not(None))
                    .order_by(r.c.seq))]
            matched = self.detector.matched(records)
            if matched:
                keys = {(rule.name, record.user_id or "") for rule, record in matched}
                windows = self._load(conn, keys)
                known = set(windows)
                hits = self.detector.count(matched, windows)
                self._save(conn, windows, known)
                self.cases.add_hits(conn, hits)
            conn.execute(cursors.update().where(cursors.c.name == MONITOR_CURSOR)
                         .values(value=upto))
        return upto - after

    def _load(self, conn: Connection, keys: set[tuple[str, str]]
              ) -> dict[tuple[str, str], _Window]:
        w = windows_table
        users = sorted({user for _, user in keys})
        windows: dict[tuple[str, str], _Window] = {}
        for start in range(0, len(users), 500):
            for row in conn.execute(sa.select(w.c.rule, w.c.user_id, w.c.entries).where(
                    w.c.user_id.in_(users[start:start + 500]))):
                key = (str(row.rule), str(row.user_id))
                if key in keys:
                    windows[key] = _Window.loads(row.entries)
        return windows

    def _save(self, conn: Connection, windows: dict[tuple[str, str], _Window],
              known: set[tuple[str, str]]) -> None:
        w = windows_table
        updates: list[dict[str, Any]] = []
        inserts: list[dict[str, Any]] = []
        deletes: list[dict[str, Any]] = []
        for (rule, user), window in windows.items():
            if not window.entries:
                if (rule, user) in known:
                    deletes.append({"k_rule": rule, "k_user": user})
                continue
            values = {"k_rule": rule, "k_user": user, "k_entries": window.dumps(),
                      "k_expires": window.latest() + self.detector.rules[rule].window_us}
            (updates if (rule, user) in known else inserts).append(values)
        same = sa.and_(w.c.rule == sa.bindparam("k_rule"), w.c.user_id == sa.bindparam("k_user"))
        if deletes:
            conn.execute(w.delete().where(same), deletes)
        if updates:
            conn.execute(w.update().where(same).values(
                entries=sa.bindparam("k_entries"), expires_us=sa.bindparam("k_expires")),
                updates)
        if inserts:
            conn.execute(w.insert().values(
                rule=sa.bindparam("k_rule"), user_id=sa.bindparam("k_user"),
                entries=sa.bindparam("k_entries"), expires_us=sa.bindparam("k_expires")),
                inserts)

    def sweep(self, now_us: int | None = None) -> int:
        """Forget the windows that no decision can fall into any more (an hour's margin
        for records that reach the chain late)."""
        limit = (to_micros(utcnow()) if now_us is None else now_us) - 3_600_000_000
        with write_transaction(self.engine) as conn:
            return int(conn.execute(windows_table.delete().where(
                windows_table.c.expires_us < limit)).rowcount)

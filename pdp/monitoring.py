"""Misuse detection on the stream of decisions, and the cases it opens (agreement § 7).

The anomaly rules are data (`policies/monitoring.yaml`). The detector sees every decision
once it moves from its durable segment into the decision log's record chain (when the
log has been idle for a moment, or under sustained load once enough records wait), keeps
per-user sliding windows in memory, and on a hit opens a case for the user and rule (or
adds to the open one). A new case is an event in the outbox, so the contact people of the
area and of the municipality hear of it at once through their webhooks. Windows are per
process: with several replicas, each counts the decisions that it moved.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine

from pdp.audit import AuditRecord
from pdp.clock import from_micros
from pdp.factindex import FactIndex
from pdp.sqlstore import write_transaction
from pdp.store import Event, FactStore

log = logging.getLogger(__name__)

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
    """Matching decisions of one user within a rule's window, with the distinct clients
    among them kept up to date (constant time per decision)."""

    __slots__ = ("clients", "entries")

    def __init__(self) -> None:
        self.entries: deque[tuple[int, str]] = deque()
        self.clients: Counter[str] = Counter()

    def add(self, at_us: int, client: str, horizon_us: int) -> int:
        self.entries.append((at_us, client))
        self.clients[client] += 1
        while self.entries and self.entries[0][0] <= horizon_us:
            _, old = self.entries.popleft()
            self.clients[old] -= 1
            if not self.clients[old]:
                del self.clients[old]
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()
        self.clients.clear()


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
    """Sliding windows per rule and user over decision records."""

    def __init__(self, config: MonitoringConfig, facts: FactIndex) -> None:
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
        # The rules that may match a decision with a given reason (the rest match none).
        self._by_reason: dict[str | None, tuple[_Compiled, ...]] = {}
        any_reason = tuple(rule for rule in self._rules if rule.reasons is None)
        for reason in {r for rule in self._rules for r in rule.reasons or ()}:
            self._by_reason[reason] = tuple(
                rule for rule in self._rules
                if rule.reasons is None or reason in rule.reasons)
        self._any_reason = any_reason
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

    def observe(self, records: list[AuditRecord]) -> list[Hit]:
        hits = []
        windows = self._windows
        with self._lock:
            for record in records:
                user = record.user_id
                if record.record_type != "decision" or not user:
                    continue
                for rule in self._by_reason.get(record.reason, self._any_reason):
                    if not self._matches(rule, record):
                        continue
                    window = windows.get((rule.name, user))
                    if window is None:
                        window = windows[(rule.name, user)] = _Window()
                    count = window.add(record.at_us, record.client_id or "",
                                       record.at_us - rule.window_us)
                    if (len(window.clients) if rule.distinct_clients else count) >= rule.threshold:
                        hits.append(Hit(rule.name, user, record.user_municipality or "",
                                        record.record_id, record.at_us))
                        window.clear()  # the next hit needs a new run of matches
        return hits


class Cases:
    """Cases in the store, and their events in the outbox."""

    def __init__(self, engine: Engine, store: FactStore,
                 on_open: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.store = store
        self.on_open = on_open

    def record_hit(self, hit: Hit, description: str, count: int = 1) -> str:
        """Open a case for the hit's rule and user, or add the hits to the open one."""
        t = cases_table
        with write_transaction(self.engine) as conn:
            row = conn.execute(sa.select(t.c.id, t.c.hits).where(
                t.c.rule == hit.rule, t.c.user_id == hit.user, t.c.status == "open")).first()
            if row is not None:
                conn.execute(t.update().where(t.c.id == row.id).values(
                    hits=row.hits + count, updated_us=hit.at_us, last_record=hit.record_id))
                return str(row.id)
            case_id = f"case-{secrets.token_hex(8)}"
            conn.execute(t.insert().values(
                id=case_id, rule=hit.rule, user_id=hit.user, municipality=hit.municipality,
                status="open", hits=count, opened_us=hit.at_us, updated_us=hit.at_us,
                last_record=hit.record_id))
        case = self.get(case_id)
        self.store.apply([], [Event("case.opened", "case", case_id, hit.municipality,
                                    "monitoring", description, {"case": case})])
        if self.on_open is not None:
            self.on_open(hit.rule)
        return case_id

    def get(self, case_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(cases_table).where(cases_table.c.id == case_id)).first()
        return case_json(dict(row._mapping)) if row is not None else None

    def list(self, *, status: str | None = None, municipality: str | None = None,
             rule: str | None = None, user: str | None = None) -> list[dict[str, Any]]:
        t = cases_table
        query = sa.select(t).order_by(t.c.opened_us, t.c.id)
        for value, column in ((status, t.c.status), (municipality, t.c.municipality),
                              (rule, t.c.rule), (user, t.c.user_id)):
            if value is not None:
                query = query.where(column == value)
        with self.engine.connect() as conn:
            return [case_json(dict(r._mapping)) for r in conn.execute(query)]

    def count_open(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(cases_table)
                                    .where(cases_table.c.status == "open")).scalar_one())

    def resolve(self, case_id: str, outcome: Literal["justified", "misuse"], note: str,
                by: str, now_us: int) -> dict[str, Any] | None:
        """Close an open case; None if there is no open case with that id."""
        t = cases_table
        with write_transaction(self.engine) as conn:
            done = conn.execute(t.update().where(t.c.id == case_id, t.c.status == "open")
                                .values(status="resolved", outcome=outcome, note=note,
                                        resolved_by=by, resolved_us=now_us))
        if not done.rowcount:
            return None
        case = self.get(case_id)
        assert case is not None
        self.store.apply([], [Event("case.resolved", "case", case_id, case["municipality"],
                                    by, f"{outcome}: {note}", {"case": case})])
        return case


def case_json(row: dict[str, Any]) -> dict[str, Any]:
    def when(us: int | None) -> str | None:
        return from_micros(us).isoformat() if us is not None else None

    return {"id": row["id"], "rule": row["rule"], "user": row["user_id"],
            "municipality": row["municipality"], "status": row["status"], "hits": row["hits"],
            "opened_at": when(row["opened_us"]), "updated_at": when(row["updated_us"]),
            "last_record": row["last_record"], "outcome": row["outcome"], "note": row["note"],
            "resolved_by": row["resolved_by"], "resolved_at": when(row["resolved_us"])}


class Monitor:
    """The detector fed by the decision log, and the cases it opens.

    It runs in a thread of its own, so that the decision log's indexer hands it each
    batch it moved into the record chain and goes on. A new case is written at once;
    further hits on an open case are added up in memory and written at most every
    `flush_seconds` (at night, every decision can be an "unusual hours" hit)."""

    def __init__(self, config: MonitoringConfig, facts: FactIndex, cases: Cases,
                 flush_seconds: float = 5.0) -> None:
        self.config = config
        self.detector = Detector(config, facts)
        self.cases = cases
        self.flush_seconds = flush_seconds
        self._queue: queue.SimpleQueue[list[AuditRecord]] = queue.SimpleQueue()
        self._written: dict[tuple[str, str], float] = {}  # last write of an open case
        self._pending: dict[tuple[str, str], tuple[Hit, int]] = {}
        self._thread = threading.Thread(target=self._run, name="pdp-monitor", daemon=True)
        self._thread.start()

    def __call__(self, records: list[AuditRecord]) -> None:
        self._queue.put(records)

    def _run(self) -> None:
        while True:
            try:
                records = self._queue.get(timeout=self.flush_seconds)
            except queue.Empty:
                records = []
            try:
                for hit in self.detector.observe(records):
                    key = (hit.rule, hit.user)
                    _, count = self._pending.get(key, (hit, 0))
                    self._pending[key] = (hit, count + 1)
                self._flush()
            except Exception:
                log.exception("misuse detection failed")

    def _flush(self) -> None:
        now = time.monotonic()
        for key, (hit, count) in list(self._pending.items()):
            last = self._written.get(key)
            if last is not None and now - last < self.flush_seconds:
                continue  # an open case written a moment ago: add up for now
            try:
                self.cases.record_hit(hit, self.config.rules[hit.rule].description, count)
            except Exception:
                log.exception("could not record the %s case of %s", hit.rule, hit.user)
                continue
            del self._pending[key]
            self._written[key] = now

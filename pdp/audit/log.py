"""The decision log: every decision and every read of the log, durable, hash-chained.

Writing: records are queued and committed by one writer thread in batches (group
commit); `append` returns a future that completes only when the record is durable, and
the HTTP layer answers only then — so no decision a caller received can be lost. If the
log cannot be written, the future fails and the caller refuses with `audit_unavailable`.

Each group commit is one *segment*: one row holding the batch's records (JSON), chained to
the segment before it by `hash = sha256(prev_hash | id | body)`. That is all the hot path
writes, a few microseconds per record. An indexer moves segments into `audit_records`,
one row per record with its own hash chain and the indexes that audit queries use, when
the writer has been idle for `index_delay` seconds or more than `max_pending` records wait
(so a burst of decisions is not slowed by the index, and sustained load is). Every read
of the log first moves what is pending, so a query sees every durable record. Misuse
detection is fed by the move, so it too runs off the burst, each record seen once.

Tamper evidence: record n carries `hash = sha256(prev_hash | canonical(record n))`, its
`prev_hash` is record n-1's hash, and the head (last seq and hash) is kept apart. A
changed, deleted, inserted or reordered record breaks a hash, a link, the sequence or
the head, and `verify` names the first bad record. Pruning (retention) removes old
records except those under a legal hold and notes each removed range, so the chain stays
verifiable after it; it never removes a record younger than the retention period (a
cutoff after its limit is refused, naming the limit).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import PoolProxiedConnection

# The record is the engine's (it is built where the decision is made); re-exported here.
from pdp.engine.records import RECORD_FIELDS as RECORD_FIELDS
from pdp.engine.records import AuditRecord as AuditRecord
from pdp.engine.records import new_record_id as new_record_id
from pdp.model.clock import from_micros, to_micros, utcnow
from pdp.model.facts import is_real_text
from pdp.store.protocols import Event, FactStore, StoreUnavailable
from pdp.store.sql import write_transaction

log = logging.getLogger(__name__)

GENESIS = "0" * 64

metadata = sa.MetaData()

records_table = sa.Table(
    "audit_records", metadata,
    sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("record_type", sa.String(16), nullable=False),
    sa.Column("record_id", sa.String(64), nullable=False),
    sa.Column("at_us", sa.BigInteger(), nullable=False),
    sa.Column("user_id", sa.String(128)),
    sa.Column("user_municipality", sa.String(3)),
    sa.Column("grant_id", sa.String(128)),
    sa.Column("client_id", sa.String(128)),
    sa.Column("client_municipality", sa.String(3)),
    sa.Column("category", sa.String(64)),
    sa.Column("action", sa.String(16)),
    sa.Column("purpose", sa.String(128)),
    sa.Column("decision", sa.Boolean()),
    sa.Column("reason", sa.String(64)),
    sa.Column("policy_version", sa.String(64)),
    sa.Column("facts_version", sa.BigInteger()),
    sa.Column("request_id", sa.String(200)),
    sa.Column("caller", sa.String(200)),
    sa.Column("details", sa.Text()),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
segments_table = sa.Table(
    "audit_segments", metadata,
    sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("records", sa.Integer(), nullable=False),
    sa.Column("body", sa.LargeBinary(), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
head_table = sa.Table(
    "audit_head", metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
prunes_table = sa.Table(
    "audit_prunes", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("from_seq", sa.BigInteger(), nullable=False),
    sa.Column("to_seq", sa.BigInteger(), nullable=False),
    sa.Column("removed", sa.BigInteger(), nullable=False),
    sa.Column("cutoff_us", sa.BigInteger(), nullable=False),
    sa.Column("at_us", sa.BigInteger(), nullable=False),
)
holds_table = sa.Table(
    "audit_holds", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("client_id", sa.String(128)),
    sa.Column("user_id", sa.String(128)),
    sa.Column("municipality", sa.String(3)),
    sa.Column("from_us", sa.BigInteger()),
    sa.Column("until_us", sa.BigInteger()),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_us", sa.BigInteger(), nullable=False),
    sa.Column("released_us", sa.BigInteger()),
    sa.Column("released_by", sa.String(200)),
    sa.Column("release_reason", sa.Text()),
)


# Rows of audit_head: the record chain, the last segment written, the last segment moved.
RECORD_HEAD, SEGMENT_HEAD, MOVED_HEAD = 1, 2, 3
# The readiness probe's segment id: never a real one (those count up from 1), and never
# committed (inserted and deleted in one transaction).
PROBE_SEGMENT = -1
PROBE_SECONDS = 0.5  # how long a probe's answer is reused


class AuditUnavailable(Exception):
    """The decision log cannot be written or read."""


class AuditTampered(Exception):
    """A pending segment does not match its chain: it is left where it is, for verify."""


DAY_US = 86_400_000_000


def retention_limit(now_us: int, retention_days: int) -> int:
    """The time before which a record may be pruned: `retention_days` before now."""
    if retention_days < 1:
        raise ValueError(f"the retention period is at least one day, not {retention_days}")
    return now_us - retention_days * DAY_US


class RetentionRefused(ValueError):
    """A prune that would remove records younger than the retention period."""

    def __init__(self, cutoff_us: int, limit_us: int, retention_days: int) -> None:
        self.cutoff_us, self.limit_us, self.retention_days = cutoff_us, limit_us, retention_days
        super().__init__(
            f"records younger than the retention period of {retention_days} days "
            f"(PDP_AUDIT_RETENTION_DAYS) are never pruned: the limit is "
            f"{from_micros(limit_us).isoformat()}, and {from_micros(cutoff_us).isoformat()} "
            f"is after it; records under a legal hold are never pruned either")




def record_hash(prev_hash: str, seq: int, values: Sequence[Any]) -> str:
    """sha256 of the previous hash, the seq and the record's values in RECORD_FIELDS order
    (a JSON array: exact for the str, int, bool and null values a record holds)."""
    canonical = orjson.dumps([seq, *values])
    return hashlib.sha256(prev_hash.encode() + b"|" + canonical).hexdigest()


def segment_hash(prev_hash: str, segment_id: int, body: bytes) -> str:
    """sha256 of the previous segment's hash, the segment's id and its body."""
    digest = hashlib.sha256(f"{prev_hash}|{segment_id}|".encode())
    digest.update(body)  # without the GIL for a large body
    return digest.hexdigest()


def segment_body(records: Sequence[AuditRecord]) -> bytes:
    """The records of a segment: a JSON array of arrays in RECORD_FIELDS order."""
    return orjson.dumps(records, default=tuple)


def segment_records(body: bytes) -> list[AuditRecord]:
    return [AuditRecord(*values) for values in orjson.loads(body)]


_INSERT_COLUMNS = ("seq", *RECORD_FIELDS, "prev_hash", "hash")
_ROWS_PER_INSERT = 400  # 22 columns: 8 800 parameters, well under SQLite's limit


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    checked: int
    head_seq: int
    first_bad_seq: int | None = None
    first_bad_record: str | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Pending:
    records: list[AuditRecord]
    future: Future[int] = field(default_factory=Future)


class AuditLog:
    def __init__(self, engine: Engine, *, max_batch: int = 2000, index_delay: float = 0.2,
                 max_pending: int = 200_000, index_chunk: int = 5000) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.index_delay = index_delay
        self.max_pending = max_pending
        self.index_chunk = index_chunk
        # About how many records wait in segments (this process's count: it triggers the
        # indexer; `pending_records` asks the database).
        self.pending = 0
        self._last_write = 0.0
        self._moving = threading.Lock()
        self._counting = threading.Lock()  # `pending` is written by two threads
        self._index_wake = threading.Event()
        self._indexer: threading.Thread | None = None
        self._closing = False
        self._connection: PoolProxiedConnection | None = None  # the writer's
        self._postgres = engine.dialect.name == "postgresql"
        # Called in the writer thread with each batch once it is durable (metrics); a
        # listener's failure is logged and does not lose the batch.
        self.listeners: list[Callable[[list[AuditRecord]], None]] = []
        # Called with the records of every segment moved into the record chain, by this
        # process, whichever process wrote them (misuse detection): each record once.
        self.move_listeners: list[Callable[[list[AuditRecord]], None]] = []
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._probe_lock = threading.Lock()
        self._probed: tuple[float, str | None] = (-PROBE_SECONDS, None)  # (when, problem)

    # -- writing ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._writer, name="pdp-audit",
                                            daemon=True)
            self._thread.start()
            self._indexer = threading.Thread(target=self._index_loop, name="pdp-audit-index",
                                             daemon=True)
            self._indexer.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None
        if self._connection is not None:
            with suppress(Exception):
                self._connection.close()
            self._connection = None
        if self._indexer is not None:
            self._closing = True
            self._index_wake.set()
            self._indexer.join(timeout=30)
            self._indexer = None
        try:
            self.drain()
        except (AuditUnavailable, AuditTampered) as error:
            log.warning("decision log segments left pending at stop: %s", error)

    def append(self, records: Sequence[AuditRecord]) -> Future[int]:
        """Queue records; the future gives the last seq once they are durable."""
        pending = _Pending(list(records))
        if not pending.records:
            pending.future.set_result(0)
            return pending.future
        if self._thread is None:
            self.start()
        self._queue.put(pending)
        return pending.future

    def write(self, records: Sequence[AuditRecord]) -> int:
        """Append and wait until durable (for the CLI and reads of the log)."""
        return self.append(records).result(timeout=30)

    def _writer(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            size = len(first.records)
            while size < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
                size += len(more.records)
            committed = [r for p in batch for r in p.records]
            with self._counting:  # before the commit: the indexer may move it at once
                self.pending += len(committed)
            try:
                last = self._commit(committed)
            except Exception as error:  # every waiter learns it failed; nothing is lost
                with self._counting:
                    self.pending -= len(committed)
                log.warning("decision log write failed: %s", error)
                failure = AuditUnavailable(_first_line(error))
                for pending in batch:
                    pending.future.set_exception(failure)
                continue
            for pending in batch:
                pending.future.set_result(last)
            self._last_write = time.monotonic()
            if self.pending >= self.max_pending:
                self._index_wake.set()
            for listener in self.listeners:
                try:
                    listener(committed)
                except Exception:
                    log.exception("decision log listener failed")

    def _commit(self, records: list[AuditRecord]) -> int:
        """One segment on the writer's own connection; a failed one is dropped, and the
        next commit connects afresh."""
        if self._connection is None:
            self._connection = self.engine.raw_connection()
        try:
            return commit_segment(self._connection, records, self._postgres)
        except Exception:
            with suppress(Exception):
                self._connection.invalidate()
            self._connection = None
            raise

    # -- indexing ---------------------------------------------------------------------

    def _index_loop(self) -> None:
        while not self._closing:
            self._index_wake.wait(timeout=max(self.index_delay, 0.01))
            self._index_wake.clear()
            while not self._closing and (
                    self.pending >= self.max_pending
                    or time.monotonic() - self._last_write >= self.index_delay):
                try:
                    if not self.move(self.index_chunk):
                        break
                except AuditTampered as error:
                    log.error("decision log: %s; run pdp audit verify", error)
                    self._sleep(10)
                    break
                except Exception as error:
                    log.warning("decision log indexing failed: %s", _first_line(error))
                    self._sleep(1)
                    break

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._closing and time.monotonic() < deadline:
            time.sleep(0.05)

    def move(self, max_records: int) -> int:
        """Move pending segments (of any process) into audit_records; return how many
        records moved."""
        with self._moving:
            try:
                moved = move_segments(self.engine, max_records)
            except sa.exc.DBAPIError as error:
                raise AuditUnavailable(_first_line(error)) from error
        with self._counting:
            self.pending = max(0, self.pending - len(moved))
        if moved:
            for listener in self.move_listeners:
                try:
                    listener(moved)
                except Exception:
                    log.exception("decision log listener failed")
        return len(moved)

    def pending_records(self) -> int:
        """Records that wait in segments, of every process."""
        with self._reading(drain=False) as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(
                sa.func.sum(segments_table.c.records), 0))).scalar_one())

    def drain(self) -> None:
        """Move every pending segment, so that a read sees every durable record."""
        while self.move(self.index_chunk):
            pass

    # -- reading ----------------------------------------------------------------------

    def query(self, *, user: str | None = None, client: str | None = None,
              municipality: str | None = None, decision: bool | None = None,
              reason: str | None = None, from_us: int | None = None,
              until_us: int | None = None, record_type: str | None = "decision",
              after_seq: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Records matching every given filter, oldest first, after `after_seq`."""
        t = records_table
        query = sa.select(t).where(t.c.seq > after_seq).order_by(t.c.seq).limit(limit)
        conditions = [
            (user, t.c.user_id == user), (client, t.c.client_id == client),
            (decision, t.c.decision == decision), (reason, t.c.reason == reason),
            (from_us, t.c.at_us >= (from_us or 0)), (until_us, t.c.at_us < (until_us or 0)),
            (record_type, t.c.record_type == record_type),
        ]
        for value, condition in conditions:
            if value is not None:
                query = query.where(condition)
        if municipality is not None:
            query = query.where(sa.or_(t.c.user_municipality == municipality,
                                       t.c.client_municipality == municipality))
        with self._reading() as conn:
            return [_plain(row) for row in conn.execute(query)]

    def sample(self, municipality: str, n: int, from_us: int | None = None,
               until_us: int | None = None) -> list[dict[str, Any]]:
        """N allowed accesses by the municipality's users, drawn at random."""
        t = records_table
        query = (sa.select(t).where(t.c.record_type == "decision", t.c.decision.is_(True),
                                    t.c.user_municipality == municipality)
                 .order_by(sa.func.random()).limit(n))
        if from_us is not None:
            query = query.where(t.c.at_us >= from_us)
        if until_us is not None:
            query = query.where(t.c.at_us < until_us)
        with self._reading() as conn:
            rows = [_plain(row) for row in conn.execute(query)]
        return sorted(rows, key=lambda row: int(row["seq"]))

    def client_accesses(self, client: str) -> list[dict[str, Any]]:
        """Allowed decisions on one client's data, oldest first (for the report)."""
        t = records_table
        query = (sa.select(t.c.at_us, t.c.user_id, t.c.user_municipality, t.c.purpose,
                           t.c.category, t.c.action)
                 .where(t.c.record_type == "decision", t.c.client_id == client,
                        t.c.decision.is_(True))
                 .order_by(t.c.seq))
        with self._reading() as conn:
            return [_plain(row) for row in conn.execute(query)]

    def head(self) -> tuple[int, str]:
        with self._reading() as conn:
            return _head(conn, RECORD_HEAD)

    def verify(self, chunk: int = 5000) -> Verification:
        """Walk the whole chain in constant memory; name the first bad record."""
        t = records_table
        with suppress(AuditTampered):
            self.drain()  # what is intact moves; a bad segment stays, for the walk below
        with self._reading(drain=False) as conn:
            head_seq, head_hash = _head(conn, RECORD_HEAD)
            prunes = sorted(tuple(row) for row in conn.execute(
                sa.select(prunes_table.c.from_seq, prunes_table.c.to_seq,
                          prunes_table.c.removed)))
            # Each prune notes the exact runs of seqs it removed: merged, they must hold
            # no record, and every gap between records must lie inside them.
            spans: list[list[int]] = []
            for from_seq, to_seq, _removed in prunes:
                if spans and from_seq <= spans[-1][1] + 1:
                    spans[-1][1] = max(spans[-1][1], to_seq)
                else:
                    spans.append([from_seq, to_seq])
            for from_seq, to_seq in spans:
                inside = conn.execute(sa.select(t.c.seq, t.c.record_id).where(
                    t.c.seq >= from_seq, t.c.seq <= to_seq).order_by(t.c.seq).limit(1)).first()
                if inside is not None:
                    return Verification(False, 0, head_seq, int(inside.seq), inside.record_id,
                                        f"it lies in the range {from_seq}-{to_seq} that "
                                        "was pruned")

            def pruned(low: int, high: int) -> bool:
                """Whether every seq in [low, high] was removed by a prune."""
                return any(a <= low and high <= b for a, b in spans)

            checked = 0
            last_seq, last_hash = 0, GENESIS
            for row in _in_order(conn, t, t.c.seq, 0, chunk):
                values = [row._mapping[k] for k in RECORD_FIELDS]
                seq = int(row.seq)
                bad = None
                if record_hash(row.prev_hash, seq, values) != row.hash:
                    bad = "its content does not match its hash"
                elif seq > head_seq:
                    bad = "it lies after the head of the log"
                elif seq == last_seq + 1 and row.prev_hash != last_hash:
                    bad = "it does not follow the record before it"
                elif seq > last_seq + 1 and not pruned(last_seq + 1, seq - 1):
                    bad = f"records {last_seq + 1}-{seq - 1} before it are missing"
                if bad:
                    return Verification(False, checked, head_seq, seq, row.record_id, bad)
                checked += 1
                last_seq, last_hash = seq, row.hash
            if last_seq < head_seq and not pruned(last_seq + 1, head_seq):
                return Verification(False, checked, head_seq, last_seq + 1, None,
                                    f"records {last_seq + 1}-{head_seq} at the end are missing")
            if last_seq == head_seq and head_seq and last_hash != head_hash:
                return Verification(False, checked, head_seq, last_seq, None,
                                    "the last record does not match the head")
            return _verify_segments(conn, checked, head_seq, chunk)

    # -- retention and legal holds -------------------------------------------------------

    def add_hold(self, *, reason: str, created_by: str, now_us: int, client: str | None = None,
                 user: str | None = None, municipality: str | None = None,
                 from_us: int | None = None, until_us: int | None = None,
                 events: FactStore | None = None) -> dict[str, Any]:
        """A legal hold; with `events`, placed in one transaction with its event
        (`audit_hold.placed`) in the event log."""
        if not is_real_text(reason):
            raise ValueError("a legal hold needs a reason")
        hold: dict[str, Any] = {
            "id": f"hold-{secrets.token_hex(8)}", "client_id": client, "user_id": user,
            "municipality": municipality, "from_us": from_us, "until_us": until_us,
            "reason": reason, "created_by": created_by, "created_us": now_us,
            "released_us": None, "released_by": None, "release_reason": None}
        if events is None:
            with self._writing() as conn:
                conn.execute(holds_table.insert(), [hold])
            return hold
        event = Event("audit_hold.placed", "audit_hold", hold["id"], municipality or "",
                      created_by, reason, {"hold": hold_json(hold)})

        def place(conn: Connection) -> None:
            conn.execute(holds_table.insert(), [hold])

        self._with_event(events, event, place)
        return hold

    def release_hold(self, hold_id: str, *, now_us: int, by: str, reason: str,
                     events: FactStore) -> dict[str, Any] | None:
        """Release an active hold, noting who and why, in one transaction with its event
        (`audit_hold.released`) in the event log; None if no active hold has that id."""
        if not is_real_text(reason):
            raise ValueError("releasing a legal hold needs a reason")
        t = holds_table
        with self._reading(drain=False) as conn:
            row = conn.execute(sa.select(t).where(t.c.id == hold_id,
                                                  t.c.released_us.is_(None))).first()
        if row is None:
            return None
        released = {**_plain(row), "released_us": now_us, "released_by": by,
                    "release_reason": reason}

        def mark(conn: Connection) -> None:
            done = conn.execute(t.update().where(t.c.id == hold_id, t.c.released_us.is_(None))
                                .values(released_us=now_us, released_by=by,
                                        release_reason=reason))
            if not done.rowcount:
                raise _HoldGone(hold_id)  # released meanwhile: no event either

        event = Event("audit_hold.released", "audit_hold", hold_id,
                      released["municipality"] or "", by, reason, {"hold": hold_json(released)})
        try:
            self._with_event(events, event, mark)
        except _HoldGone:
            return None
        return released

    @staticmethod
    def _with_event(events: FactStore, event: Event, within: Callable[[Connection], None],
                    ) -> None:
        try:
            events.apply([], [event], within=within)
        except StoreUnavailable as error:
            raise AuditUnavailable(str(error)) from error

    def holds(self) -> list[dict[str, Any]]:
        with self._reading() as conn:
            return [_plain(r) for r in conn.execute(
                sa.select(holds_table).order_by(holds_table.c.created_us))]

    def prune(self, cutoff_us: int, now_us: int, *, retention_days: int) -> int:
        """Remove records older than `cutoff_us` that no active hold covers; note each run
        of removed seqs, so that verify can tell a pruned gap from a deleted record.

        Retention is kept: a cutoff after the retention limit (`retention_days` before
        now: now_us, or the clock if that is earlier) is refused with RetentionRefused
        naming the limit, and nothing is removed."""
        limit = retention_limit(min(now_us, to_micros(utcnow())), retention_days)
        if cutoff_us > limit:
            raise RetentionRefused(cutoff_us, limit, retention_days)
        t, h = records_table, holds_table
        held = sa.exists().where(
            h.c.released_us.is_(None),
            sa.or_(h.c.client_id.is_(None), h.c.client_id == t.c.client_id),
            sa.or_(h.c.user_id.is_(None), h.c.user_id == t.c.user_id),
            sa.or_(h.c.municipality.is_(None), h.c.municipality == t.c.user_municipality,
                   h.c.municipality == t.c.client_municipality),
            sa.or_(h.c.from_us.is_(None), t.c.at_us >= h.c.from_us),
            sa.or_(h.c.until_us.is_(None), t.c.at_us < h.c.until_us),
        )
        doomed = sa.and_(t.c.at_us < cutoff_us, sa.not_(held))
        removed = 0
        with self._reading():
            pass  # moves what is pending first
        with self._writing() as conn:
            runs: list[tuple[int, int]] = []
            for (seq,) in conn.execute(sa.select(t.c.seq).where(doomed).order_by(t.c.seq)):
                if runs and seq == runs[-1][1] + 1:
                    runs[-1] = (runs[-1][0], seq)
                else:
                    runs.append((seq, seq))
            for low, high in runs:
                conn.execute(t.delete().where(t.c.seq >= low, t.c.seq <= high))
                removed += high - low + 1
            if runs:
                conn.execute(prunes_table.insert(), [
                    {"from_seq": low, "to_seq": high, "removed": high - low + 1,
                     "cutoff_us": cutoff_us, "at_us": now_us} for low, high in runs])
        return removed

    # -- export -----------------------------------------------------------------------

    def export(self, *, from_us: int | None = None, until_us: int | None = None,
               fmt: str = "jsonl", chunk: int = 1000) -> Iterator[str]:
        """The records of a time range as JSONL or CSV lines, read in chunks."""
        after = 0
        if fmt == "csv":
            yield _csv_line(["seq", *RECORD_FIELDS, "prev_hash", "hash"])
        while True:
            rows = self.query(from_us=from_us, until_us=until_us, record_type=None,
                              after_seq=after, limit=chunk)
            if not rows:
                return
            for row in rows:
                if fmt == "csv":
                    yield _csv_line([row["seq"], *(row[k] for k in RECORD_FIELDS),
                                     row["prev_hash"], row["hash"]])
                else:
                    yield orjson.dumps(row).decode() + "\n"
            after = rows[-1]["seq"]

    # -- plumbing ---------------------------------------------------------------------

    @contextmanager
    def _reading(self, drain: bool = True) -> Iterator[Connection]:
        if drain:
            try:
                self.drain()
            except AuditTampered as error:
                raise AuditUnavailable(f"{error}; run pdp audit verify") from error
        try:
            with self.engine.connect() as conn:
                yield conn
        except sa.exc.DBAPIError as error:
            raise AuditUnavailable(_first_line(error)) from error

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        try:
            with write_transaction(self.engine) as conn:
                yield conn
        except sa.exc.DBAPIError as error:
            raise AuditUnavailable(_first_line(error)) from error

    def ping(self) -> None:
        """Raise AuditUnavailable unless the log can be written now (readiness).

        A read answering is not enough: a database that is read-only, lost a table or
        has a full disk answers reads while every decision is refused (`audit_unavailable`).
        So the probe writes as a commit does — it takes the segment head (the write lock),
        inserts a segment row and deletes it again, and commits: nothing is left behind.
        The answer is reused for PROBE_SECONDS, so that a busy /readyz costs at most a
        couple of tiny writes a second."""
        with self._probe_lock:
            at, problem = self._probed
            if time.monotonic() - at >= PROBE_SECONDS:
                problem = self._probe()
                self._probed = (time.monotonic(), problem)
        if problem is not None:
            raise AuditUnavailable(problem)

    def _probe(self) -> str | None:
        s = segments_table
        try:
            with write_transaction(self.engine) as conn:
                _head(conn, SEGMENT_HEAD, lock=True)
                conn.execute(s.insert().values(id=PROBE_SEGMENT, records=0, body=b"",
                                               prev_hash=GENESIS, hash=GENESIS))
                conn.execute(s.delete().where(s.c.id == PROBE_SEGMENT))
        except Exception as error:  # whatever stops a write stops the decisions
            log.warning("decision log cannot be written: %s", _first_line(error))
            return f"cannot be written: {_first_line(error)}"
        return None


class _HoldGone(Exception):
    """The hold was released by someone else meanwhile."""


def hold_json(hold: dict[str, Any]) -> dict[str, Any]:
    """A legal hold as the auditor (and the event log) sees it."""
    def when(us: int | None) -> str | None:
        return from_micros(us).isoformat() if us is not None else None

    return {"id": hold["id"], "client": hold["client_id"], "user": hold["user_id"],
            "municipality": hold["municipality"], "from": when(hold["from_us"]),
            "until": when(hold["until_us"]), "reason": hold["reason"],
            "created_by": hold["created_by"], "created_at": when(hold["created_us"]),
            "released_at": when(hold["released_us"]),
            "released_by": hold.get("released_by"),
            "release_reason": hold.get("release_reason")}


def _plain(row: Any) -> dict[str, Any]:
    """A row as a dict with plain str keys (orjson refuses str subclasses)."""
    return {str(key): value for key, value in row._mapping.items()}


def _head(conn: Connection, row: int, lock: bool = False) -> tuple[int, str]:
    query = sa.select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == row)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    seq, digest = conn.execute(query).one()
    return int(seq), str(digest)


def _set_head(conn: Connection, row: int, seq: int, digest: str) -> None:
    conn.execute(head_table.update().where(head_table.c.id == row)
                 .values(seq=seq, hash=digest))


def commit_segment(dbapi: Any, records: Sequence[AuditRecord], postgres: bool) -> int:
    """Write records as one chained segment in one transaction; return its id.

    This is the decision log's hot path: one row, whatever the number of records, written
    on a DBAPI connection the writer keeps (SQLAlchemy's checkout, ping and statement
    machinery would cost more than the write)."""
    body = segment_body(records)
    mark = "%s" if postgres else "?"  # psycopg's and sqlite3's paramstyles
    cursor = dbapi.cursor()
    try:
        if not postgres:
            cursor.execute("BEGIN IMMEDIATE")
        cursor.execute(f"SELECT seq, hash FROM audit_head WHERE id = {SEGMENT_HEAD}"
                       + (" FOR UPDATE" if postgres else ""))
        segment_id, prev = cursor.fetchone()
        segment_id += 1
        digest = segment_hash(prev, segment_id, body)
        cursor.execute("INSERT INTO audit_segments (id, records, body, prev_hash, hash) "
                       f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark})",
                       (segment_id, len(records), body, prev, digest))
        cursor.execute(f"UPDATE audit_head SET seq = {mark}, hash = {mark} "
                       f"WHERE id = {SEGMENT_HEAD}", (segment_id, digest))
        dbapi.commit()
    except BaseException:
        with suppress(Exception):
            dbapi.rollback()
        raise
    finally:
        cursor.close()
    return int(segment_id)


def move_segments(engine: Engine, max_records: int) -> list[AuditRecord]:
    """Move the oldest pending segments, about `max_records` records, into the record
    chain in one transaction; return the records moved. The first segment that
    does not match its chain stops the move (AuditTampered if it is the oldest): it stays
    where it is, for verify to name.

    The work in Python (reading, checking and parsing the segments, hashing the chain) is
    done before the write lock is taken, so that the lock is held only for the writes:
    a process busy deciding may keep this thread waiting for the interpreter, and the
    decision log's writer must not wait for the lock that long (SQLite's busy timeout).
    The write then checks that both heads are still where they were read (another
    process may have moved them meanwhile): if not, it moves nothing this time."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":  # one snapshot for all the reads (SQLite:
            conn.execution_options(isolation_level="REPEATABLE READ")  # its BEGIN has one)
        moved_id, moved_hash = _head(conn, MOVED_HEAD)
        seq, prev = _head(conn, RECORD_HEAD)
        s = segments_table
        records: list[AuditRecord] = []
        last, last_hash = moved_id, moved_hash
        for row in conn.execute(sa.select(s).where(s.c.id > moved_id).order_by(s.c.id)
                                .limit(max(1, max_records))):
            problem = _segment_problem(row, last, last_hash)
            if problem and last == moved_id:
                raise AuditTampered(f"pending segment {row.id}: {problem}")
            if problem:
                break  # move the intact ones before it; the next round names it
            records.extend(segment_records(row.body))
            last, last_hash = int(row.id), str(row.hash)
            if len(records) >= max_records:
                break
        conn.rollback()
    if last == moved_id:
        return []
    rows, head = _chained_rows(seq, prev, records)
    with write_transaction(engine) as conn:
        if (_head(conn, MOVED_HEAD, lock=True) != (moved_id, moved_hash)
                or _head(conn, RECORD_HEAD, lock=True) != (seq, prev)):
            return []  # moved by another process meanwhile: read again next round
        _insert_records(conn, rows)
        _set_head(conn, RECORD_HEAD, *head)
        conn.execute(s.delete().where(s.c.id <= last))
        _set_head(conn, MOVED_HEAD, last, last_hash)
    return records


def _body(value: Any) -> bytes:
    """A segment's body as bytes, whatever a tampering left in the column."""
    return value if isinstance(value, bytes) else str(value).encode()


def _segment_problem(row: Any, last_id: int, last_hash: str) -> str | None:
    if segment_hash(str(row.prev_hash), int(row.id), _body(row.body)) != row.hash:
        return "its content does not match its hash"
    if int(row.id) != last_id + 1:
        return f"segments {last_id + 1}-{int(row.id) - 1} before it are missing"
    if row.prev_hash != last_hash:
        return "it does not follow the segment before it"
    return None


def _verify_segments(conn: Connection, checked: int, head_seq: int,
                     chunk: int) -> Verification:
    """The pending segments after the record chain: each intact and linked, up to the
    head of the segments."""
    s = segments_table
    written_id, written_hash = _head(conn, SEGMENT_HEAD)
    last_id, last_hash = _head(conn, MOVED_HEAD)
    for row in _in_order(conn, s, s.c.id, last_id, chunk):
        problem = _segment_problem(row, last_id, last_hash)
        if problem is None and int(row.id) > written_id:
            problem = "it lies after the head of the segments"
        if problem:
            return Verification(False, checked, head_seq, None,
                                _first_record_id(_body(row.body)),
                                f"pending segment {row.id}: {problem}")
        checked += int(row.records)
        last_id, last_hash = int(row.id), str(row.hash)
    if last_id != written_id or last_hash != written_hash:
        return Verification(False, checked, head_seq, None, None,
                            f"pending segments {last_id + 1}-{written_id} at the end are missing"
                            if last_id < written_id else
                            "the last pending segment does not match the head of the segments")
    return Verification(True, checked, head_seq)


def _in_order(conn: Connection, table: sa.Table, key: sa.Column[Any], after: int,
              chunk: int) -> Iterator[Any]:
    """The rows of a table after `after` in key order, read `chunk` at a time."""
    while True:
        rows = conn.execute(sa.select(table).where(key > after).order_by(key)
                            .limit(chunk)).all()
        if not rows:
            return
        yield from rows
        after = int(rows[-1]._mapping[key.name])


def _first_record_id(body: bytes) -> str | None:
    try:
        first = orjson.loads(body)[0]
        return str(first[RECORD_FIELDS.index("record_id")])
    except (orjson.JSONDecodeError, IndexError, TypeError, KeyError):
        return None


def _chained_rows(seq: int, prev: str, records: Sequence[AuditRecord]
                  ) -> tuple[list[tuple[Any, ...]], tuple[int, str]]:
    """The rows of records chained after the head (seq, prev), and the new head."""
    rows = []
    for record in records:
        seq += 1
        digest = record_hash(prev, seq, record)
        rows.append((seq, *record, prev, digest))
        prev = digest
    return rows, (seq, prev)


def _insert_records(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """One multi-row INSERT per chunk of rows, through the driver."""
    postgres = conn.dialect.name == "postgresql"
    mark = "%s" if postgres else "?"  # psycopg's and sqlite3's paramstyles
    one = "(" + ", ".join([mark] * len(_INSERT_COLUMNS)) + ")"
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start:start + _ROWS_PER_INSERT]
        conn.exec_driver_sql(
            f"INSERT INTO audit_records ({', '.join(_INSERT_COLUMNS)}) VALUES "
            + ", ".join([one] * len(chunk)),
            tuple(chain.from_iterable(chunk)))


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


# What a spreadsheet takes for the start of a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet shows as text, never runs: a string starting like a formula
    gets a single quote before it (a purpose, a request id or a key name is the caller's
    text). Numbers and booleans are the service's own and stay as they are."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _csv_line(values: Sequence[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([csv_cell(v) for v in values])
    return buffer.getvalue()


def read_record(caller: str, request_id: str | None, what: str, question: dict[str, Any],
                justification: str | None, answered: int) -> AuditRecord:
    """The record of one read of the log (or of other personal data the service keeps,
    such as a shadow's examples): who read what, asking what, why, and how much came."""
    return AuditRecord(
        "audit_read", new_record_id(), to_micros(utcnow()), request_id=request_id,
        caller=caller, client_id=question.get("client"), user_id=question.get("user"),
        details=orjson.dumps({"read": what, "question": question,
                              "justification": justification,
                              "answered": answered}).decode())

"""The SQL fact store: `FactStore` on SQLAlchemy Core, for SQLite (embedded) and PostgreSQL.

The SQL is portable; the only backend-specific code is the SQLite connection setup
(WAL, synchronous=FULL, foreign keys, busy timeout, and `BEGIN IMMEDIATE` for writes so
that concurrent writers queue instead of failing), an advisory lock that serialises
concurrent migrations on PostgreSQL, and the dialect's `INSERT ... ON CONFLICT` (same
syntax on both) for the cursor upsert, which runs outside the facts_version lock.

Every `apply()` starts by incrementing the single `facts_version` row. That takes the
write lock (SQLite: the database lock from `BEGIN IMMEDIATE`; PostgreSQL: the row
lock), so writes are serialised and commit in version order, and the upsert below can
be a plain "update, insert if nothing was updated" without racing another writer. The
same lock makes conditional changes (`Change.expected_version`) exact: the fact's version
is read after it, so no other writer can change the fact in between. Events are inserted
after it too, so their autoincrement ids grow in commit order (the outbox relies on it).
The id of a right (kind `grant`) or a user (kind `user`) is noted in `taken_ids` when
first written and is never written again once the fact is deleted (`IdTaken`): no right
inherits another's history, and no new user inherits a deleted user's rights (a right's
municipality is its user's).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event, exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url

from pdp.store.protocols import (
    Change,
    ChangeRecord,
    Conflict,
    Event,
    IdTaken,
    NotFound,
    StoredEvent,
    StoredFact,
    StoreUnavailable,
)

__all__ = [
    "SqlFactStore",
    "create_store_engine",
    "metadata",
    "open_store",
    "upgrade",
    "write_transaction",
]

KIND_LENGTH = 16
ID_LENGTH = 128
EVENT_TYPE_LENGTH = 64
MUNICIPALITY_LENGTH = 3
ACTOR_LENGTH = 200
CURSOR_NAME_LENGTH = 200
FACTS_VERSION = "facts_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Connection execution option: begin this connection's transactions as writes.
_WRITE_OPTION = "pdp_write"
# Arbitrary constant key for the PostgreSQL advisory lock held while migrating.
_MIGRATION_LOCK_KEY = 7_340_210_884_512


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware timestamp, stored in UTC and read back as an aware UTC datetime.

    SQLite keeps no offset (SQLAlchemy stores the naive text), PostgreSQL returns the
    session's time zone; both come back as UTC."""

    impl = sa.DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("UtcDateTime needs a timezone-aware datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = sa.MetaData()

facts = sa.Table(
    "facts",
    metadata,
    sa.Column("kind", sa.String(KIND_LENGTH), primary_key=True),
    sa.Column("id", sa.String(ID_LENGTH), primary_key=True),
    sa.Column("data", sa.Text(), nullable=False),
    sa.Column("version", sa.BigInteger(), nullable=False),
)

fact_changes = sa.Table(
    "fact_changes",
    metadata,
    sa.Column("version", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(KIND_LENGTH), nullable=False),
    sa.Column("id", sa.String(ID_LENGTH), nullable=False),
    sa.Column("data", sa.Text(), nullable=True),  # NULL: deleted
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
)

fact_meta = sa.Table(
    "fact_meta",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger(), nullable=False),
)

events_table = sa.Table(
    "events",
    metadata,
    # BIGSERIAL on PostgreSQL; INTEGER PRIMARY KEY AUTOINCREMENT (never reused) on SQLite.
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("facts_version", sa.BigInteger(), nullable=False),
    sa.Column("type", sa.String(EVENT_TYPE_LENGTH), nullable=False),
    sa.Column("subject_kind", sa.String(KIND_LENGTH), nullable=False),
    sa.Column("subject_id", sa.String(ID_LENGTH), nullable=False),
    sa.Column("municipality", sa.String(MUNICIPALITY_LENGTH), nullable=False, server_default=""),
    sa.Column("actor", sa.String(ACTOR_LENGTH), nullable=False),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("data", sa.Text(), nullable=False),
    sa.Index("ix_events_subject", "subject_kind", "subject_id", "id"),
    sa.Index("ix_events_municipality", "municipality", "id"),
    sqlite_autoincrement=True,
)

cursors = sa.Table(
    "cursors",
    metadata,
    sa.Column("name", sa.String(CURSOR_NAME_LENGTH), primary_key=True),
    sa.Column("value", sa.BigInteger(), nullable=False),
)


# Kinds whose ids are never used again once taken: a deleted right's id stays taken, so
# that no right ever inherits another's history (events are kept by subject id), and a
# deleted user's, so that no new user (of another municipality, say) inherits its rights.
NEVER_REUSED = frozenset({"grant", "user"})
# Ids looked up in one statement (well under SQLite's limit of bound parameters).
_ID_CHUNK = 500

taken_ids = sa.Table(
    "taken_ids",
    metadata,
    sa.Column("kind", sa.String(KIND_LENGTH), primary_key=True),
    sa.Column("id", sa.String(ID_LENGTH), primary_key=True),
    sa.Column("first_version", sa.BigInteger(), nullable=False),
)


# Secrets the deployment makes for itself (e.g. the key fingerprint key when
# PDP_FINGERPRINT_KEY is not set): made once by whichever process comes first.
service_secrets = sa.Table(
    "service_secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(128), nullable=False),
)


def _is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _ensure_sqlite_parent(url: URL) -> None:
    """Create the directory of a SQLite database file if it is missing."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _setup_sqlite(engine: Engine) -> None:
    """Pragmas on every new connection, and SQLAlchemy (not sqlite3) emitting BEGIN."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop the sqlite3 module from issuing BEGIN itself; the "begin" hook does it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout = 5000")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writes take the write lock up front (waiting up to busy_timeout for it), so
        # two writers queue rather than one failing on lock upgrade. Reads stay
        # deferred: under WAL they neither block nor wait for a writer.
        if conn.get_execution_options().get(_WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def create_store_engine(url: str | URL) -> Engine:
    """An engine for the fact store: thread-safe pool, SQLite pragmas and write locking.

    Nothing connects yet. For a SQLite file the parent directory is created.
    """
    u = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if _is_sqlite(u):
        _ensure_sqlite_parent(u)
    elif u.get_backend_name() == "postgresql" and "connect_timeout" not in u.query:
        kwargs["connect_args"] = {"connect_timeout": 5}
    engine = sa.create_engine(u, **kwargs)
    if _is_sqlite(u):
        _setup_sqlite(engine)
    return engine


@contextmanager
def _available() -> Iterator[None]:
    """Turn database failures into StoreUnavailable."""
    try:
        yield
    except (exc.DBAPIError, exc.TimeoutError) as e:
        raise StoreUnavailable(str(e).splitlines()[0] if str(e) else type(e).__name__) from e


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction (SQLite: BEGIN IMMEDIATE): committed on success, else rolled back."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE_OPTION: True})
        with conn.begin():
            yield conn


def _alembic_config(engine: Engine, connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates '%', which may appear in URL-encoded passwords.
    url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
    cfg.set_main_option("sqlalchemy.url", url)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the bundled Alembic migrations up to `revision` in one write transaction."""
    with _available(), write_transaction(engine) as conn:
        if engine.dialect.name == "postgresql":
            # Two processes starting at once must not both create the tables.
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
        command.upgrade(_alembic_config(engine, conn), revision)


def _encode(data: dict[str, Any]) -> str:
    return orjson.dumps(data).decode()


def _decode(text: str) -> dict[str, Any]:
    return cast(dict[str, Any], orjson.loads(text))


def _check_length(what: str, value: str, low: int, high: int) -> None:
    """Refuse what the columns would not hold, the same on every backend."""
    if not low <= len(value) <= high:
        raise ValueError(f"{what} must be {low}..{high} characters: {value!r}")


def _stored_event(row: sa.Row[Any]) -> StoredEvent:
    return StoredEvent(
        id=int(row.id),
        at=row.at,
        facts_version=int(row.facts_version),
        event=Event(
            type=row.type,
            subject_kind=row.subject_kind,
            subject_id=row.subject_id,
            municipality=row.municipality,
            actor=row.actor,
            reason=row.reason,
            data=_decode(row.data),
        ),
    )


def _upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert or replace facts (kind, id, data, version), one statement for all rows."""
    if not rows:
        return
    insert = (sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert)(facts)
    conn.execute(insert.on_conflict_do_update(
        index_elements=[facts.c.kind, facts.c.id],
        set_={"data": insert.excluded.data, "version": insert.excluded.version}), rows)


def _take_id(conn: Connection, kind: str, fact_id: str, version: int, live: bool) -> None:
    """Note that `fact_id` is taken for good; IdTaken if a fact of `kind` that is gone had
    it (a live fact is being changed, which is no new use of its id)."""
    key = (taken_ids.c.kind == kind) & (taken_ids.c.id == fact_id)
    if conn.execute(sa.select(taken_ids.c.first_version).where(key)).first() is not None:
        if not live:
            raise IdTaken(kind, fact_id)
        return
    conn.execute(sa.insert(taken_ids).values(kind=kind, id=fact_id, first_version=version))



def _encoded_changes(changes: Sequence[Change]) -> list[tuple[Change, str | None]]:
    """The changes checked for size and their data encoded, before the transaction."""
    encoded: list[tuple[Change, str | None]] = []
    for change in changes:
        _check_length("kind", change.kind, 1, KIND_LENGTH)
        _check_length("id", change.id, 1, ID_LENGTH)
        if change.expected_version is not None and change.expected_version < 0:
            raise ValueError(f"expected_version must be >= 0: {change.expected_version}")
        encoded.append((change, None if change.data is None else _encode(change.data)))
    return encoded


def _event_rows(events: Sequence[Event]) -> list[dict[str, Any]]:
    """The events checked for size, as rows (their time and version come in the write)."""
    rows: list[dict[str, Any]] = []
    for e in events:
        _check_length("event type", e.type, 1, EVENT_TYPE_LENGTH)
        _check_length("event subject_kind", e.subject_kind, 1, KIND_LENGTH)
        _check_length("event subject_id", e.subject_id, 1, ID_LENGTH)
        _check_length("event municipality", e.municipality, 0, MUNICIPALITY_LENGTH)
        _check_length("event actor", e.actor, 0, ACTOR_LENGTH)
        rows.append({"type": e.type, "subject_kind": e.subject_kind,
                     "subject_id": e.subject_id, "municipality": e.municipality,
                     "actor": e.actor, "reason": e.reason, "data": _encode(e.data)})
    return rows


def _write_changes(conn: Connection, encoded: Sequence[tuple[Change, str | None]],
                   version: int, now: datetime) -> list[dict[str, Any]]:
    """Write the changes as `version`; returns their change-log rows. Plain writes go in
    runs, one statement each (an upsert per row of the run); a delete or a conditional
    write first flushes the run before it, in order."""
    log: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []
    for seq, (change, data) in enumerate(encoded):
        row = {"kind": change.kind, "id": change.id, "data": data, "version": version}
        never_reused = change.kind in NEVER_REUSED and data is not None
        if data is not None and change.expected_version is None:
            run.append(row)
        else:
            _write_run(conn, run, version)
            run = []
            key = (facts.c.kind == change.kind) & (facts.c.id == change.id)
            current = conn.execute(sa.select(facts.c.version).where(key)).scalar()
            if change.expected_version is not None and (
                    0 if current is None else int(current)) != change.expected_version:
                raise Conflict(change.kind, change.id)
            if never_reused:
                _take_id(conn, change.kind, change.id, version, live=current is not None)
            if data is None:
                if conn.execute(sa.delete(facts).where(key)).rowcount == 0:
                    raise NotFound(change.kind, change.id)
            else:
                _upsert(conn, [row])
        log.append({"version": version, "seq": seq, "kind": change.kind, "id": change.id,
                    "data": data, "changed_at": now})
    _write_run(conn, run, version)
    return log


def _write_run(conn: Connection, rows: list[dict[str, Any]], version: int) -> None:
    """Upsert a run of plain writes (no deletes among them). The ids of kinds never reused
    are taken first, as `_take_id` takes one, in a few statements for the whole run:
    IdTaken for the first row whose id a fact of its kind that is gone had."""
    gone: set[tuple[str, str]] = set()
    new: list[dict[str, Any]] = []
    for kind in sorted(NEVER_REUSED):
        ids = list(dict.fromkeys(row["id"] for row in rows if row["kind"] == kind))
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start:start + _ID_CHUNK]
            live = set(conn.execute(sa.select(facts.c.id).where(
                facts.c.kind == kind, facts.c.id.in_(chunk))).scalars())
            taken = set(conn.execute(sa.select(taken_ids.c.id).where(
                taken_ids.c.kind == kind, taken_ids.c.id.in_(chunk))).scalars())
            gone |= {(kind, i) for i in chunk if i in taken and i not in live}
            new += [{"kind": kind, "id": i, "first_version": version}
                    for i in chunk if i not in taken]
    for row in rows:
        if (row["kind"], row["id"]) in gone:
            raise IdTaken(row["kind"], row["id"])
    if new:
        conn.execute(sa.insert(taken_ids), new)
    _upsert(conn, rows)


class SqlFactStore:
    """`FactStore` on a SQL database named by a SQLAlchemy URL.

    Use `open_store()` to also bring the schema up to date; the constructor does not
    connect. Safe to share between threads.
    """

    def __init__(self, url: str | URL) -> None:
        self.engine = create_store_engine(url)

    @property
    def url(self) -> URL:
        return self.engine.url

    def migrate(self) -> None:
        """Bring the schema to the newest revision (a no-op when it is already there)."""
        upgrade(self.engine)

    def apply(self, changes: Sequence[Change], events: Sequence[Event] = (),
              within: Callable[[Connection], None] | None = None) -> int:
        if not changes and not events:
            raise ValueError("apply: no changes and no events")
        encoded = _encoded_changes(changes)
        event_rows = _event_rows(events)
        with _available(), write_transaction(self.engine) as conn:
            version = conn.execute(
                sa.update(fact_meta)
                .where(fact_meta.c.name == FACTS_VERSION)
                .values(value=fact_meta.c.value + 1)
                .returning(fact_meta.c.value)
            ).scalar_one()
            # Taken under the write lock: commit times follow versions and event ids.
            now = datetime.now(UTC)
            log = _write_changes(conn, encoded, version, now)
            if within is not None:
                within(conn)
            if log:
                conn.execute(sa.insert(fact_changes), log)
            if event_rows:
                conn.execute(
                    sa.insert(events_table),
                    [{**row, "at": now, "facts_version": version} for row in event_rows],
                )
        return int(version)

    def get(self, kind: str, id: str) -> StoredFact | None:
        query = sa.select(facts.c.data, facts.c.version).where(
            facts.c.kind == kind, facts.c.id == id
        )
        with _available(), self.engine.connect() as conn:
            row = conn.execute(query).one_or_none()
        if row is None:
            return None
        return StoredFact(kind=kind, id=id, data=_decode(row.data), version=int(row.version))

    def all_facts(self) -> Iterator[StoredFact]:
        # Streamed in chunks, a million facts never sit in memory twice; plain SQL and
        # tuples, as this is the one read of every row (at start).
        with _available(), self.engine.connect() as conn:
            result = conn.execution_options(yield_per=5000).exec_driver_sql(
                "SELECT kind, id, data, version FROM facts ORDER BY kind, id")
            for kind, fact_id, data, version in result:
                yield StoredFact(kind, fact_id, orjson.loads(data), int(version))

    def version(self) -> int:
        query = sa.select(fact_meta.c.value).where(fact_meta.c.name == FACTS_VERSION)
        with _available(), self.engine.connect() as conn:
            value = conn.execute(query).scalar_one_or_none()
        if value is None:
            raise StoreUnavailable("the fact store has no facts_version (not migrated?)")
        return int(value)

    def changes_since(self, version: int) -> list[ChangeRecord]:
        c = fact_changes.c
        query = (
            sa.select(c.version, c.kind, c.id, c.data)
            .where(c.version > version)
            .order_by(c.version, c.seq)
        )
        with _available(), self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            ChangeRecord(
                version=int(r.version),
                kind=r.kind,
                id=r.id,
                data=None if r.data is None else _decode(r.data),
            )
            for r in rows
        ]

    def events_after(
        self, after: int, limit: int, municipality: str | None = None
    ) -> list[StoredEvent]:
        if limit < 0:
            raise ValueError(f"limit must be >= 0: {limit}")
        if limit == 0:
            return []
        query = sa.select(events_table).where(events_table.c.id > after)
        if municipality is not None:
            query = query.where(events_table.c.municipality == municipality)
        query = query.order_by(events_table.c.id).limit(limit)
        with _available(), self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_stored_event(r) for r in rows]

    def events_of(self, subject_kind: str, subject_id: str) -> list[StoredEvent]:
        c = events_table.c
        query = (
            sa.select(events_table)
            .where(c.subject_kind == subject_kind, c.subject_id == subject_id)
            .order_by(c.id)
        )
        with _available(), self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_stored_event(r) for r in rows]

    def cursor(self, name: str) -> int:
        query = sa.select(cursors.c.value).where(cursors.c.name == name)
        with _available(), self.engine.connect() as conn:
            value = conn.execute(query).scalar_one_or_none()
        return 0 if value is None else int(value)

    def set_cursor(self, name: str, value: int) -> None:
        """Move the cursor `name` to `value`, never backwards (an older value is ignored)."""
        _check_length("cursor name", name, 1, CURSOR_NAME_LENGTH)
        if value < 0:
            raise ValueError(f"cursor value must be >= 0: {value}")
        dialect = self.engine.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = insert(cursors).values(name=name, value=value)
        statement = statement.on_conflict_do_update(
            index_elements=[cursors.c.name],
            set_={"value": statement.excluded.value},
            where=cursors.c.value < statement.excluded.value,
        )
        with _available(), write_transaction(self.engine) as conn:
            conn.execute(statement)

    def deployment_secret(self, name: str) -> bytes:
        """A random secret of this deployment (32 bytes), made at its first use and kept
        in the store, so every replica and every restart gets the same one."""
        _check_length("secret name", name, 1, 64)
        dialect = self.engine.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = insert(service_secrets).values(
            name=name, value=secrets.token_hex(32)).on_conflict_do_nothing(
            index_elements=[service_secrets.c.name])
        query = sa.select(service_secrets.c.value).where(service_secrets.c.name == name)
        with _available(), write_transaction(self.engine) as conn:
            conn.execute(statement)
            return bytes.fromhex(conn.execute(query).scalar_one())

    def ping(self) -> None:
        with _available(), self.engine.connect() as conn:
            conn.execute(sa.select(1)).scalar_one()

    def close(self) -> None:
        self.engine.dispose()


def open_store(url: str | URL) -> SqlFactStore:
    """Open the store at `url` and run the bundled migrations to head.

    Raises StoreUnavailable when the database cannot be reached.
    """
    store = SqlFactStore(url)
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store

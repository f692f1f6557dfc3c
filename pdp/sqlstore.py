"""The SQL fact store: `FactStore` on SQLAlchemy Core, for SQLite (embedded) and PostgreSQL.

The SQL is portable; the only backend-specific code is the SQLite connection setup
(WAL, synchronous=FULL, foreign keys, busy timeout, and `BEGIN IMMEDIATE` for writes so
that concurrent writers queue instead of failing) and an advisory lock that serialises
concurrent migrations on PostgreSQL.

Every `apply()` starts by incrementing the single `facts_version` row. That takes the
write lock (SQLite: the database lock from `BEGIN IMMEDIATE`; PostgreSQL: the row
lock), so writes are serialised and commit in version order, and the upsert below can
be a plain "update, insert if nothing was updated" without racing another writer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Connection, Engine, make_url

from pdp.store import Change, ChangeRecord, NotFound, StoredFact, StoreUnavailable

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
FACTS_VERSION = "facts_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Connection execution option: begin this connection's transactions as writes.
_WRITE_OPTION = "pdp_write"
# Arbitrary constant key for the PostgreSQL advisory lock held while migrating.
_MIGRATION_LOCK_KEY = 7_340_210_884_512

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

    def apply(self, changes: Sequence[Change]) -> int:
        if not changes:
            raise ValueError("apply: no changes")
        encoded: list[tuple[Change, str | None]] = []
        for change in changes:
            if not 0 < len(change.kind) <= KIND_LENGTH:
                raise ValueError(f"kind must be 1..{KIND_LENGTH} characters: {change.kind!r}")
            if not 0 < len(change.id) <= ID_LENGTH:
                raise ValueError(f"id must be 1..{ID_LENGTH} characters: {change.id!r}")
            encoded.append((change, None if change.data is None else _encode(change.data)))

        now = datetime.now(UTC)
        with _available(), write_transaction(self.engine) as conn:
            version = conn.execute(
                sa.update(fact_meta)
                .where(fact_meta.c.name == FACTS_VERSION)
                .values(value=fact_meta.c.value + 1)
                .returning(fact_meta.c.value)
            ).scalar_one()
            log: list[dict[str, Any]] = []
            for seq, (change, data) in enumerate(encoded):
                key = (facts.c.kind == change.kind) & (facts.c.id == change.id)
                if data is None:
                    if conn.execute(sa.delete(facts).where(key)).rowcount == 0:
                        raise NotFound(change.kind, change.id)
                else:
                    updated = conn.execute(
                        sa.update(facts).where(key).values(data=data, version=version)
                    ).rowcount
                    if updated == 0:
                        conn.execute(
                            sa.insert(facts).values(
                                kind=change.kind, id=change.id, data=data, version=version
                            )
                        )
                log.append(
                    {
                        "version": version,
                        "seq": seq,
                        "kind": change.kind,
                        "id": change.id,
                        "data": data,
                        "changed_at": now,
                    }
                )
            conn.execute(sa.insert(fact_changes), log)
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
        query = sa.select(facts.c.kind, facts.c.id, facts.c.data, facts.c.version).order_by(
            facts.c.kind, facts.c.id
        )
        with _available(), self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return iter(
            [
                StoredFact(kind=r.kind, id=r.id, data=_decode(r.data), version=int(r.version))
                for r in rows
            ]
        )

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

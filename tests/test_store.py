"""Conformance tests for the fact store, run against every SQL backend.

SQLite runs on a file under tmp_path. PostgreSQL runs against the local server at
127.0.0.1:5432 (trust auth, user postgres): a fresh database per test session, its
tables dropped before each test so that every test migrates an empty database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from psycopg import sql

from pdp.model.facts import parse_fact
from pdp.store.protocols import (
    Change,
    ChangeRecord,
    Conflict,
    Event,
    FactStore,
    IdTaken,
    NotFound,
    StoredEvent,
    StoredFact,
    StoreUnavailable,
)
from pdp.store.sql import (
    SqlFactStore,
    _alembic_config,
    open_store,
    upgrade,
    write_transaction,
)
from tests.support.pg import PG_ADMIN_DB, PG_HOST, PG_PORT, fresh_database, pg_connect

PG_TABLES = ("events", "cursors", "fact_changes", "facts", "fact_meta", "audit_records",
             "audit_head", "audit_prunes", "audit_holds", "monitoring_cases", "audit_segments",
             "taken_ids", "service_secrets", "monitoring_case_comments",
             "monitoring_windows", "alembic_version")
HEAD = "0012"  # the newest migration

Opener = Callable[[str], SqlFactStore]


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this session; its name."""
    with fresh_database("pdp_test") as name:
        yield name


def _pg_url(dbname: str, port: int = PG_PORT) -> str:
    return f"postgresql+psycopg://postgres@{PG_HOST}:{port}/{dbname}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pdp.db'}"
    name: str = request.getfixturevalue("pg_database")
    with pg_connect(name) as conn:
        for table in PG_TABLES:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    return _pg_url(name)


@pytest.fixture
def opener() -> Iterator[Opener]:
    """open_store(), closing every store it opened when the test ends."""
    opened: list[SqlFactStore] = []

    def _open(url: str) -> SqlFactStore:
        store = open_store(url)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


@pytest.fixture
def store(store_url: str, opener: Opener) -> SqlFactStore:
    return opener(store_url)


def put(kind: str, id: str, **data: Any) -> Change:
    return Change(kind=kind, id=id, data=data)


def delete(kind: str, id: str) -> Change:
    return Change(kind=kind, id=id, data=None)


def ev(type: str, subject_id: str, municipality: str = "749", subject_kind: str = "user",
       actor: str = "tester", reason: str | None = None, **data: Any) -> Event:
    return Event(type=type, subject_kind=subject_kind, subject_id=subject_id,
                 municipality=municipality, actor=actor, reason=reason, data=data)


def snapshot(
    store: FactStore,
) -> tuple[int, list[StoredFact], list[ChangeRecord], list[StoredEvent]]:
    return (
        store.version(),
        list(store.all_facts()),
        store.changes_since(0),
        store.events_after(0, 1_000_000),
    )


def test_satisfies_the_protocol(store: SqlFactStore) -> None:
    fact_store: FactStore = store
    assert fact_store is store


def test_fresh_store_is_empty(store: SqlFactStore) -> None:
    assert store.version() == 0
    assert list(store.all_facts()) == []
    assert store.changes_since(0) == []
    assert store.get("user", "u1") is None


def test_each_apply_adds_one_to_the_version(store: SqlFactStore) -> None:
    assert store.apply([put("user", "u1", n=1)]) == 1
    assert store.version() == 1
    assert store.apply([put("user", "u2", n=2), put("user", "u3", n=3)]) == 2
    assert store.apply([put("user", "u1", n=4)]) == 3
    assert store.apply([delete("user", "u2")]) == 4
    assert store.version() == 4


def test_reads_return_what_was_written(store: SqlFactStore) -> None:
    area = {
        "name": "Pirkanmaa \u2013 ÄÖÅ",
        "responsible_municipality": "837",
        "municipalities": [{"code": "837", "name": "Tampere"}, {"code": "211", "name": "K"}],
    }
    client = {"home_municipality": "837", "protection_order": True, "note": None, "x": 1.5}
    v = store.apply([Change("area", "a-1", area), Change("client", "c.1", client)])

    assert store.get("area", "a-1") == StoredFact("area", "a-1", area, v)
    assert store.get("client", "c.1") == StoredFact("client", "c.1", client, v)
    assert store.get("client", "a-1") is None  # the kind is part of the key
    assert store.get("area", "missing") is None
    assert sorted(store.all_facts(), key=lambda f: (f.kind, f.id)) == [
        StoredFact("area", "a-1", area, v),
        StoredFact("client", "c.1", client, v),
    ]
    assert store.changes_since(0) == [
        ChangeRecord(v, "area", "a-1", area),
        ChangeRecord(v, "client", "c.1", client),
    ]


def test_same_id_in_different_kinds(store: SqlFactStore) -> None:
    store.apply([put("user", "x", who="user"), put("client", "x", who="client")])
    assert store.get("user", "x") == StoredFact("user", "x", {"who": "user"}, 1)
    assert store.get("client", "x") == StoredFact("client", "x", {"who": "client"}, 1)
    store.apply([delete("user", "x")])
    assert store.get("user", "x") is None
    assert store.get("client", "x") is not None


def test_put_is_an_upsert(store: SqlFactStore) -> None:
    v1 = store.apply([put("grant", "g1", status="applied", extra=True)])
    v2 = store.apply([put("grant", "g1", status="active")])
    assert v2 == v1 + 1
    assert store.get("grant", "g1") == StoredFact("grant", "g1", {"status": "active"}, v2)
    assert [f.id for f in store.all_facts()] == ["g1"]
    assert store.changes_since(v1) == [ChangeRecord(v2, "grant", "g1", {"status": "active"})]


def test_unchanged_facts_keep_their_version(store: SqlFactStore) -> None:
    v1 = store.apply([put("user", "u1", n=1), put("user", "u2", n=2)])
    v2 = store.apply([put("user", "u2", n=3)])
    assert store.get("user", "u1") == StoredFact("user", "u1", {"n": 1}, v1)
    assert store.get("user", "u2") == StoredFact("user", "u2", {"n": 3}, v2)


def test_delete(store: SqlFactStore) -> None:
    v1 = store.apply([put("user", "u1", n=1), put("user", "u2", n=2)])
    v2 = store.apply([delete("user", "u1")])
    assert store.get("user", "u1") is None
    assert [f.id for f in store.all_facts()] == ["u2"]
    assert store.changes_since(v1) == [ChangeRecord(v2, "user", "u1", None)]
    assert store.changes_since(0) == [
        ChangeRecord(v1, "user", "u1", {"n": 1}),
        ChangeRecord(v1, "user", "u2", {"n": 2}),
        ChangeRecord(v2, "user", "u1", None),
    ]


def test_a_deleted_fact_can_be_put_again(store: SqlFactStore) -> None:
    # (not a user nor a grant: their ids are never reused, see below)
    store.apply([put("client", "c1", n=1)])
    store.apply([delete("client", "c1")])
    v3 = store.apply([put("client", "c1", n=3)])
    assert store.get("client", "c1") == StoredFact("client", "c1", {"n": 3}, v3)


def test_changes_in_a_batch_apply_in_order(store: SqlFactStore) -> None:
    v = store.apply(
        [
            put("client", "c1", n=1),
            put("client", "c1", n=2),
            delete("client", "c1"),
            put("client", "c1", n=3),
            put("client", "c2", n=4),
            delete("client", "c2"),
        ]
    )
    assert store.get("client", "c1") == StoredFact("client", "c1", {"n": 3}, v)
    assert store.get("client", "c2") is None
    assert store.changes_since(0) == [
        ChangeRecord(v, "client", "c1", {"n": 1}),
        ChangeRecord(v, "client", "c1", {"n": 2}),
        ChangeRecord(v, "client", "c1", None),
        ChangeRecord(v, "client", "c1", {"n": 3}),
        ChangeRecord(v, "client", "c2", {"n": 4}),
        ChangeRecord(v, "client", "c2", None),
    ]


def test_changes_since_is_exclusive_and_ordered(store: SqlFactStore) -> None:
    for i in range(1, 6):
        store.apply([put("user", f"u{i}", n=i), put("client", f"c{i}", n=i)])
    changes = store.changes_since(3)
    assert [(c.version, c.kind, c.id) for c in changes] == [
        (4, "user", "u4"),
        (4, "client", "c4"),
        (5, "user", "u5"),
        (5, "client", "c5"),
    ]
    assert store.changes_since(5) == []
    assert store.changes_since(99) == []
    assert len(store.changes_since(-1)) == 10


def test_a_batch_with_a_missing_delete_writes_nothing(store: SqlFactStore) -> None:
    store.apply([put("user", "u1", n=1), put("user", "u2", n=2)])
    before = snapshot(store)

    with pytest.raises(NotFound) as raised:
        store.apply(
            [
                put("user", "u1", n=100),  # an update
                put("user", "u3", n=3),  # an insert
                delete("user", "u2"),  # a good delete
                delete("user", "ghost"),  # the bad one
            ]
        )
    assert (raised.value.kind, raised.value.id) == ("user", "ghost")
    assert snapshot(store) == before

    # The failed batch used up no version.
    assert store.apply([put("user", "u3", n=3)]) == before[0] + 1


def test_a_delete_of_a_missing_fact_alone(store: SqlFactStore) -> None:
    with pytest.raises(NotFound):
        store.apply([delete("agreement", "nope")])
    assert snapshot(store) == (0, [], [], [])


def test_deleting_twice_in_one_batch_fails(store: SqlFactStore) -> None:
    store.apply([put("user", "u1", n=1)])
    before = snapshot(store)
    with pytest.raises(NotFound):
        store.apply([delete("user", "u1"), delete("user", "u1")])
    assert snapshot(store) == before


def test_an_empty_batch_is_refused(store: SqlFactStore) -> None:
    with pytest.raises(ValueError):
        store.apply([])
    assert store.version() == 0


@pytest.mark.parametrize(
    "change",
    [put("k" * 17, "u1", n=1), put("user", "u" * 129, n=1), put("", "u1"), put("user", "")],
)
def test_oversized_keys_are_refused_the_same_everywhere(
    store: SqlFactStore, change: Change
) -> None:
    with pytest.raises(ValueError):
        store.apply([put("user", "ok", n=1), change])
    assert store.version() == 0


def test_longest_keys_fit(store: SqlFactStore) -> None:
    kind, id = "k" * 16, "i" * 128
    v = store.apply([put(kind, id, n=1)])
    assert store.get(kind, id) == StoredFact(kind, id, {"n": 1}, v)


def test_two_stores_on_one_url_see_each_others_writes(store_url: str, opener: Opener) -> None:
    a = opener(store_url)
    b = opener(store_url)
    va = a.apply([put("user", "u1", by="a")])
    assert b.version() == va
    assert b.get("user", "u1") == StoredFact("user", "u1", {"by": "a"}, va)
    vb = b.apply([put("user", "u1", by="b"), put("user", "u2", by="b")])
    assert vb == va + 1
    assert a.get("user", "u1") == StoredFact("user", "u1", {"by": "b"}, vb)
    assert [c.version for c in a.changes_since(va)] == [vb, vb]
    b.apply([delete("user", "u2")])
    assert a.get("user", "u2") is None
    assert a.version() == vb + 1


def test_migrations_are_idempotent(store_url: str, opener: Opener) -> None:
    first = opener(store_url)
    v = first.apply([put("user", "u1", n=1)])
    second = opener(store_url)
    second.migrate()
    assert second.version() == v
    assert second.get("user", "u1") == StoredFact("user", "u1", {"n": 1}, v)
    with second.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [
            HEAD
        ]
        assert set(sa.inspect(conn).get_table_names()) >= {
            "facts", "fact_changes", "fact_meta", "events", "cursors"
        }


def test_a_deployment_secret_is_made_once_and_shared(store_url: str, opener: Opener) -> None:
    first, second = opener(store_url), opener(store_url)
    made = first.deployment_secret("fingerprint_key")
    assert len(made) == 32
    assert second.deployment_secret("fingerprint_key") == made
    assert first.deployment_secret("another") not in (made, b"")


def test_ping(store: SqlFactStore) -> None:
    store.ping()


def test_concurrent_writers_get_distinct_consecutive_versions(
    store_url: str, opener: Opener
) -> None:
    stores = [opener(store_url), opener(store_url)]
    threads_per_store, applies_per_thread = 3, 15
    results: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(store: SqlFactStore, worker: int) -> None:
        try:
            for i in range(applies_per_thread):
                v = store.apply(
                    [put("user", f"w{worker}-{i}", i=i), put("user", "shared", worker=worker)]
                )
                with lock:
                    results.append(v)
        except BaseException as e:
            with lock:
                errors.append(e)

    threads = [
        threading.Thread(target=work, args=(s, n * threads_per_store + t))
        for n, s in enumerate(stores)
        for t in range(threads_per_store)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    total = len(stores) * threads_per_store * applies_per_thread
    assert sorted(results) == list(range(1, total + 1))
    assert stores[0].version() == total
    changes = stores[1].changes_since(0)
    assert len(changes) == 2 * total
    assert [c.version for c in changes] == sorted(c.version for c in changes)
    shared = stores[0].get("user", "shared")
    assert shared is not None and shared.version == total
    assert len(list(stores[0].all_facts())) == total + 1


# --- events ----------------------------------------------------------------------------


def test_events_are_written_with_their_facts(store: SqlFactStore) -> None:
    v1 = store.apply(
        [put("grant", "g1", status="applied")],
        [ev("grant.applied", "g1", subject_kind="grant", reason="R1", status="applied"),
         ev("user.touched", "u1", municipality="", n=1)],
    )
    v2 = store.apply(
        [put("grant", "g1", status="active")],
        [ev("grant.approved", "g1", subject_kind="grant", actor="boss", status="active")],
    )
    stored = store.events_after(0, 100)
    assert [e.facts_version for e in stored] == [v1, v1, v2]
    ids = [e.id for e in stored]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [e.event for e in stored] == [
        ev("grant.applied", "g1", subject_kind="grant", reason="R1", status="applied"),
        ev("user.touched", "u1", municipality="", n=1),
        ev("grant.approved", "g1", subject_kind="grant", actor="boss", status="active"),
    ]
    # One write, one commit time.
    assert stored[0].at == stored[1].at <= stored[2].at


def test_an_apply_with_only_events_bumps_the_version(store: SqlFactStore) -> None:
    v1 = store.apply([put("user", "u1", n=1)])
    v2 = store.apply([], [ev("user.viewed", "u1")])
    assert v2 == v1 + 1 == store.version()
    assert store.changes_since(v1) == []
    assert store.get("user", "u1") == StoredFact("user", "u1", {"n": 1}, v1)
    [stored] = store.events_after(0, 10)
    assert (stored.facts_version, stored.event) == (v2, ev("user.viewed", "u1"))


def test_an_apply_with_nothing_is_refused(store: SqlFactStore) -> None:
    with pytest.raises(ValueError):
        store.apply([], [])
    assert store.version() == 0


@pytest.mark.parametrize(
    "bad",
    [
        ev("t" * 65, "u1"),
        ev("", "u1"),
        ev("x", "u" * 129),
        ev("x", "u1", subject_kind="k" * 17),
        ev("x", "u1", municipality="1234"),
        ev("x", "u1", actor="a" * 201),
    ],
)
def test_oversized_event_fields_are_refused(store: SqlFactStore, bad: Event) -> None:
    with pytest.raises(ValueError):
        store.apply([put("user", "u1", n=1)], [ev("ok", "u1"), bad])
    assert snapshot(store) == (0, [], [], [])


def test_events_after_pages_and_filters(store: SqlFactStore) -> None:
    store.apply([], [ev("a", "u1", municipality="749"), ev("b", "u2", municipality="297")])
    store.apply([], [ev("c", "u3", municipality="749")])
    store.apply([], [ev("d", "u4", municipality=""), ev("e", "u5", municipality="749")])
    every = store.events_after(0, 100)
    assert [e.event.type for e in every] == ["a", "b", "c", "d", "e"]
    ids = [e.id for e in every]

    first = store.events_after(0, 2)
    assert first == every[:2]
    second = store.events_after(first[-1].id, 2)
    assert second == every[2:4]
    assert store.events_after(second[-1].id, 2) == every[4:]
    assert store.events_after(ids[-1], 2) == []
    assert store.events_after(ids[1], 100) == every[2:]  # exclusive
    assert store.events_after(0, 0) == []

    local = store.events_after(0, 100, municipality="749")
    assert [e.event.type for e in local] == ["a", "c", "e"]
    assert store.events_after(local[0].id, 1, municipality="749") == [local[1]]
    assert [e.event.type for e in store.events_after(0, 100, municipality="")] == ["d"]
    assert store.events_after(0, 100, municipality="091") == []


def test_events_of_is_one_subjects_history(store: SqlFactStore) -> None:
    g = "grant"
    store.apply([put(g, "g1", s=1)], [ev("grant.applied", "g1", subject_kind=g)])
    store.apply([put(g, "g2", s=1)], [ev("grant.applied", "g2", subject_kind=g)])
    store.apply([], [ev("user.x", "g1")])  # same id, another kind
    store.apply([put(g, "g1", s=2)], [ev("grant.approved", "g1", subject_kind=g)])
    store.apply([delete(g, "g1")], [ev("grant.removed", "g1", subject_kind=g)])

    history = store.events_of(g, "g1")
    assert [(e.event.type, e.facts_version) for e in history] == [
        ("grant.applied", 1), ("grant.approved", 4), ("grant.removed", 5)
    ]
    assert [e.id for e in history] == sorted(e.id for e in history)
    assert [e.event.type for e in store.events_of(g, "g2")] == ["grant.applied"]
    assert [e.event.type for e in store.events_of("user", "g1")] == ["user.x"]
    assert store.events_of(g, "nope") == []


def test_a_failed_batch_writes_neither_facts_nor_events(store: SqlFactStore) -> None:
    store.apply([put("grant", "g1", s=1)], [ev("grant.applied", "g1", subject_kind="grant")])
    before = snapshot(store)

    with pytest.raises(NotFound):
        store.apply(
            [put("grant", "g1", s=2), put("grant", "g2", s=1), delete("grant", "ghost")],
            [ev("grant.approved", "g1", subject_kind="grant")],
        )
    assert snapshot(store) == before

    with pytest.raises(Conflict) as raised:
        store.apply(
            [put("grant", "g2", s=1), Change("grant", "g1", {"s": 2}, expected_version=99)],
            [ev("grant.approved", "g1", subject_kind="grant")],
        )
    assert (raised.value.kind, raised.value.id) == ("grant", "g1")
    assert snapshot(store) == before

    # Neither failure used up a version.
    assert store.apply([], [ev("x", "g1")]) == before[0] + 1


# --- conditional writes ------------------------------------------------------------------


def test_conditional_writes(store: SqlFactStore) -> None:
    v1 = store.apply([Change("grant", "g1", {"s": 1}, expected_version=0)])  # new: ok
    with pytest.raises(Conflict):  # exists now
        store.apply([Change("grant", "g1", {"s": 9}, expected_version=0)])
    v2 = store.apply([Change("grant", "g1", {"s": 2}, expected_version=v1)])  # current: ok
    assert store.get("grant", "g1") == StoredFact("grant", "g1", {"s": 2}, v2)
    with pytest.raises(Conflict):  # stale
        store.apply([Change("grant", "g1", {"s": 9}, expected_version=v1)])
    with pytest.raises(Conflict):  # from the future
        store.apply([Change("grant", "g1", {"s": 9}, expected_version=v2 + 1)])
    with pytest.raises(Conflict):  # a missing fact is at "version 0"
        store.apply([Change("grant", "g2", {"s": 9}, expected_version=v1)])
    assert store.get("grant", "g1") == StoredFact("grant", "g1", {"s": 2}, v2)
    assert store.version() == v2

    with pytest.raises(Conflict):  # a stale delete
        store.apply([Change("grant", "g1", None, expected_version=v1)])
    v3 = store.apply([Change("grant", "g1", None, expected_version=v2)])
    assert store.get("grant", "g1") is None
    v4 = store.apply([Change("client", "c9", {"s": 3}, expected_version=0)])
    store.apply([Change("client", "c9", None, expected_version=v4)])
    v5 = store.apply([Change("client", "c9", {"s": 4}, expected_version=0)])  # gone: new again
    assert (v3, v4, v5) == (v2 + 1, v2 + 2, v2 + 4)
    # Unconditional changes in the same batch still apply as before.
    v6 = store.apply([put("user", "u1", n=1),
                      Change("client", "c9", {"s": 5}, expected_version=v5)])
    assert store.get("client", "c9") == StoredFact("client", "c9", {"s": 5}, v6)


def test_the_id_of_a_deleted_grant_is_never_used_again(store: SqlFactStore) -> None:
    v1 = store.apply([put("grant", "g1", s=1), put("grant", "g2", s=1)])
    v2 = store.apply([put("grant", "g1", s=2)])  # a live right changes: no new use
    store.apply([delete("grant", "g1")])
    before = snapshot(store)
    for changes in ([Change("grant", "g1", {"s": 3}, expected_version=0)],
                    [put("grant", "g1", s=3)],
                    [put("user", "u1", n=1), put("grant", "g1", s=3)],
                    [delete("grant", "g2"), put("grant", "g2", s=9)]):
        with pytest.raises(IdTaken) as raised:
            store.apply(changes, [ev("grant.applied", "g1", subject_kind="grant")])
        assert (raised.value.kind, raised.value.id) == ("grant", changes[-1].id)
        assert snapshot(store) == before  # nothing written, no version used
    assert store.get("grant", "g2") == StoredFact("grant", "g2", {"s": 1}, v1)
    assert v2 == v1 + 1
    # other kinds come back as before
    store.apply([put("client", "c1", n=1)])
    store.apply([delete("client", "c1")])
    store.apply([put("client", "c1", n=2)])


def test_the_id_of_a_deleted_user_is_never_used_again(store: SqlFactStore) -> None:
    """A new user under a deleted user's id would take over its rights (a right's
    municipality is its user's): another municipality would see them."""
    many = [put("user", f"u{n}", n=n) for n in range(1200)]  # more than one lookup's worth
    v1 = store.apply(many)
    v2 = store.apply([put("user", "u1", n=2), put("user", "u1", n=3)])  # live: no new use
    store.apply([delete("user", "u1"), delete("user", "u1100")])
    before = snapshot(store)
    for changes, taken in (([Change("user", "u1", {"n": 4}, expected_version=0)], "u1"),
                           ([put("user", "u1", n=4)], "u1"),
                           ([put("user", "new", n=1), put("client", "u1100", n=1),
                             put("user", "u1100", n=4)], "u1100"),
                           ([*many[2:1099], put("user", "u1100", n=4),
                             put("user", "u1", n=4)], "u1100"),
                           ([delete("user", "u2"), put("user", "u2", n=9)], "u2")):
        with pytest.raises(IdTaken) as raised:
            store.apply(changes, [ev("user.written", "u1")])
        assert (raised.value.kind, raised.value.id) == ("user", taken)
        assert snapshot(store) == before  # nothing written, no version used
    assert store.get("user", "u2") == StoredFact("user", "u2", {"n": 2}, v1)
    assert store.get("user", "new") is None
    assert v2 == v1 + 1
    # a new id, twice in one batch, and a live one; a new id, once deleted, is taken too
    v3 = store.apply([put("user", "new", n=1), put("user", "new", n=2), put("user", "u2", n=3)])
    assert store.get("user", "new") == StoredFact("user", "new", {"n": 2}, v3)
    store.apply([delete("user", "new")])
    with pytest.raises(IdTaken):
        store.apply([put("user", "new", n=3)])


def test_within_commits_with_the_events_or_not_at_all(store: SqlFactStore) -> None:
    """apply(within=...): a change of another table and its event in one transaction."""
    v1 = store.apply([], [ev("x.placed", "x1")], within=lambda conn: conn.execute(
        sa.text("INSERT INTO cursors (name, value) VALUES ('within', 1)")))
    assert store.cursor("within") == 1 and store.version() == v1
    before = snapshot(store)

    def fails(conn: Any) -> None:
        conn.execute(sa.text("UPDATE cursors SET value = 2 WHERE name = 'within'"))
        raise LookupError("changed meanwhile")

    with pytest.raises(LookupError):
        store.apply([put("user", "u1", n=1)], [ev("x.released", "x1")], within=fails)
    assert snapshot(store) == before and store.cursor("within") == 1


def test_a_negative_expected_version_is_refused(store: SqlFactStore) -> None:
    with pytest.raises(ValueError):
        store.apply([Change("grant", "g1", {"s": 1}, expected_version=-1)])
    assert store.version() == 0


def test_concurrent_conditional_writers_one_wins(store_url: str, opener: Opener) -> None:
    stores = [opener(store_url), opener(store_url)]
    base = stores[0].apply([put("grant", "g1", by="none")])
    workers = 8
    barrier = threading.Barrier(workers)
    won: list[int] = []
    conflicts: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(store: SqlFactStore, worker: int) -> None:
        try:
            barrier.wait(10)
            try:
                v = store.apply(
                    [Change("grant", "g1", {"by": worker}, expected_version=base)],
                    [ev("grant.approved", "g1", subject_kind="grant", by=worker)],
                )
            except Conflict:
                with lock:
                    conflicts.append(worker)
            else:
                with lock:
                    won.append(worker)
                    assert v == base + 1
        except BaseException as e:
            with lock:
                errors.append(e)

    threads = [
        threading.Thread(target=work, args=(stores[n % 2], n)) for n in range(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(won) == 1 and len(conflicts) == workers - 1
    assert stores[1].version() == base + 1
    assert stores[1].get("grant", "g1") == StoredFact("grant", "g1", {"by": won[0]}, base + 1)
    [event] = stores[1].events_of("grant", "g1")
    assert (event.facts_version, event.event.data) == (base + 1, {"by": won[0]})


def test_concurrent_writers_events_are_in_commit_order(store_url: str, opener: Opener) -> None:
    stores = [opener(store_url), opener(store_url)]
    threads_per_store, applies_per_thread = 3, 10
    errors: list[BaseException] = []

    def work(store: SqlFactStore, worker: int) -> None:
        try:
            for i in range(applies_per_thread):
                store.apply([put("user", f"w{worker}")],
                            [ev("a", f"w{worker}", i=i), ev("b", f"w{worker}", i=i)])
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=work, args=(s, n * threads_per_store + t))
        for n, s in enumerate(stores)
        for t in range(threads_per_store)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    total = len(stores) * threads_per_store * applies_per_thread
    stored = stores[0].events_after(0, 10 * total)
    assert len(stored) == 2 * total
    # In id order, the versions (= commit order) never go down, and times neither.
    assert [e.facts_version for e in stored] == sorted(e.facts_version for e in stored)
    assert sorted({e.facts_version for e in stored}) == list(range(1, total + 1))
    assert [e.at for e in stored] == sorted(e.at for e in stored)


# --- event times -------------------------------------------------------------------------


def test_event_times_are_aware_utc(store: SqlFactStore) -> None:
    before = datetime.now(UTC)
    store.apply([], [ev("x", "u1")])
    after = datetime.now(UTC)
    [stored] = store.events_after(0, 10)
    assert stored.at.tzinfo is not None
    assert stored.at.utcoffset() == timedelta(0)
    assert before <= stored.at <= after
    assert store.events_of("user", "u1")[0].at == stored.at


def test_postgresql_event_times_are_utc_in_any_session_time_zone(
    pg_database: str, opener: Opener
) -> None:
    with pg_connect(pg_database) as conn:
        for table in PG_TABLES:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    helsinki = opener(_pg_url(pg_database) + "?options=-c%20timezone%3DEurope/Helsinki")
    with helsinki.engine.connect() as conn:
        assert conn.execute(sa.text("SHOW timezone")).scalar() == "Europe/Helsinki"
    before = datetime.now(UTC)
    helsinki.apply([], [ev("x", "u1")])
    [seen_there] = helsinki.events_after(0, 10)
    [seen_here] = opener(_pg_url(pg_database)).events_after(0, 10)
    assert seen_there.at.utcoffset() == timedelta(0) == seen_here.at.utcoffset()
    assert seen_there.at == seen_here.at
    assert before <= seen_there.at <= datetime.now(UTC)


# --- cursors -----------------------------------------------------------------------------


def test_cursors(store_url: str, opener: Opener) -> None:
    store = opener(store_url)
    assert store.cursor("mailer") == 0
    store.set_cursor("mailer", 5)
    assert store.cursor("mailer") == 5
    store.set_cursor("mailer", 3)  # never backwards
    assert store.cursor("mailer") == 5
    store.set_cursor("mailer", 5)
    assert store.cursor("mailer") == 5
    store.set_cursor("mailer", 9)
    assert store.cursor("mailer") == 9
    assert store.cursor("auditor") == 0  # independent
    store.set_cursor("auditor", 1)
    assert (store.cursor("mailer"), store.cursor("auditor")) == (9, 1)
    store.set_cursor("c" * 200, 2)  # the longest name fits
    assert store.cursor("c" * 200) == 2
    assert store.version() == 0  # cursors are not facts

    store.close()
    reopened = opener(store_url)
    assert (reopened.cursor("mailer"), reopened.cursor("auditor")) == (9, 1)


@pytest.mark.parametrize("name, value", [("", 1), ("c" * 201, 1), ("ok", -1)])
def test_bad_cursors_are_refused(store: SqlFactStore, name: str, value: int) -> None:
    with pytest.raises(ValueError):
        store.set_cursor(name, value)


def test_concurrent_cursor_updates_keep_the_maximum(store_url: str, opener: Opener) -> None:
    stores = [opener(store_url), opener(store_url)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def work(store: SqlFactStore, worker: int) -> None:
        try:
            barrier.wait(10)
            for value in range(worker, 60, 6):
                store.set_cursor("shared", value)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(stores[n % 2], n)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert stores[0].cursor("shared") == 59


# --- migrations --------------------------------------------------------------------------


def test_migrating_from_0001_keeps_the_data(store_url: str, opener: Opener) -> None:
    old = SqlFactStore(store_url)
    try:
        upgrade(old.engine, "0001")
        v1 = old.apply([put("client", "c1", n=1)])
        v2 = old.apply([put("client", "c1", n=2)])
        # A grant put at v1 and deleted at v2, as the store of 0001 wrote them (today's
        # store writes a grant's id in taken_ids too, which 0001 does not have).
        with write_transaction(old.engine) as conn:
            conn.execute(sa.text(
                "INSERT INTO fact_changes (version, seq, kind, id, data, changed_at) "
                "VALUES (:v1, 1, 'grant', 'g1', :data, :at), (:v2, 1, 'grant', 'g1', NULL, :at)"),
                {"v1": v1, "v2": v2, "data": '{"s":1}', "at": datetime.now(UTC)})
        with old.engine.connect() as conn:
            assert "events" not in sa.inspect(conn).get_table_names()
        before = (old.version(), list(old.all_facts()), old.changes_since(0))
    finally:
        old.close()

    store = opener(store_url)  # migrates to head
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == HEAD
        inspector = sa.inspect(conn)
        assert {"events", "cursors"} <= set(inspector.get_table_names())
        assert {i["name"] for i in inspector.get_indexes("events")} >= {
            "ix_events_subject", "ix_events_municipality"
        }
    assert (store.version(), list(store.all_facts()), store.changes_since(0)) == before
    assert store.get("client", "c1") == StoredFact("client", "c1", {"n": 2}, v2)
    assert [c.version for c in store.changes_since(0)] == [v1, v1, v2, v2]
    assert store.events_after(0, 10) == [] and store.cursor("x") == 0

    v3 = store.apply([Change("client", "c1", {"n": 3}, expected_version=v2)],
                     [ev("e", "c1", subject_kind="client")])
    assert v3 == v2 + 1
    assert [e.facts_version for e in store.events_of("client", "c1")] == [v3]
    # the grant deleted before the ids of rights were kept: its id is taken all the same
    with pytest.raises(IdTaken):
        store.apply([put("grant", "g1", s=2)])


def test_migrating_from_0008_takes_every_user_id_seen(store_url: str, opener: Opener) -> None:
    """0009: the ids of users written before they were kept are taken all the same: from
    the change log (a deleted user's), the facts and the events."""
    old = SqlFactStore(store_url)
    try:
        upgrade(old.engine, "0008")
        v1 = old.apply([put("user", "gone", n=1), put("user", "live", n=1),
                        put("grant", "g1", user="gone")])
        v2 = old.apply([delete("user", "gone")], [ev("user.deleted", "gone")])
        v3 = old.apply([], [ev("user.deleted", "only-an-event")])
        with write_transaction(old.engine) as conn:  # as the store before 0009 wrote them
            conn.execute(sa.text("DELETE FROM taken_ids WHERE kind = 'user'"))
        before = (old.version(), list(old.all_facts()), old.changes_since(0))
    finally:
        old.close()

    store = opener(store_url)  # migrates to head
    assert (store.version(), list(store.all_facts()), store.changes_since(0)) == before
    with store.engine.connect() as conn:
        taken = conn.execute(sa.text(
            "SELECT kind, id, first_version FROM taken_ids ORDER BY kind, id")).all()
    assert [tuple(row) for row in taken] == [
        ("grant", "g1", v1), ("user", "gone", v1), ("user", "live", v1),
        ("user", "only-an-event", v3)]
    for user in ("gone", "only-an-event"):
        with pytest.raises(IdTaken):
            store.apply([put("user", user, n=2)])
    v4 = store.apply([put("user", "live", n=2), put("user", "fresh", n=1)])
    assert v4 == v3 + 1 and v2 == v1 + 1


# carries: C-3, C-7, C-9
def test_migrating_from_0010_gives_rights_purposes_and_clients_area_client(
        store_url: str, opener: Opener) -> None:
    """0011: a right stored without purposes gets its user's tasks of that day (no right
    gains a purpose); a live right whose user has no tasks, or is gone, could serve none
    and is revoked (an event says so); a client without area_client is no area client
    until the facts say it is (fail closed). One new facts_version, in the change log."""
    grant = {"scopes": ["name_contact"], "actions": ["read"],
             "valid_from": "2026-01-01T00:00:00+02:00",
             "valid_until": "2027-01-01T00:00:00+02:00", "status": "active",
             "legal_basis": "380/2023"}
    old = SqlFactStore(store_url)
    try:
        upgrade(old.engine, "0010")
        v1 = old.apply([
            put("user", "u-coach", municipality="749", display_name="C", status="active",
                tasks=["guidance", "coaching"]),
            put("user", "u-none", municipality="749", display_name="N", status="active",
                tasks=[]),
            put("grant", "g-coach", user="u-coach", **grant),
            put("grant", "g-none", user="u-none", **grant),
            put("grant", "g-gone", user="u-gone", **{**grant, "status": "suspended"}),
            put("grant", "g-old", user="u-gone", **{**grant, "status": "expired"}),
            put("grant", "g-new", user="u-coach", purposes=["guidance"], **grant),
            put("client", "c-1", home_municipality="749", protection_order=False),
            put("client", "c-2", home_municipality="749", area_client=True),
            put("agreement", "749", area="kuopio", status="in_force",
                signed_at="2025-01-01T00:00:00+02:00"),
            put("client", "odd", n=1)],
            # the live rights came through the procedure (0012 suspends any that did not)
            [ev("grant.applied", g, subject_kind="grant") for g in ("g-coach", "g-new")])
    finally:
        old.close()

    store = opener(store_url)  # migrates to head
    v2 = store.version()
    assert v2 == v1 + 1

    def data(kind: str, fact_id: str) -> dict[str, Any]:
        found = store.get(kind, fact_id)
        assert found is not None
        return found.data

    assert data("grant", "g-coach") == {**grant, "user": "u-coach",
                                        "purposes": ["guidance", "coaching"]}
    assert data("grant", "g-new")["purposes"] == ["guidance"]  # untouched
    for revoked in ("g-none", "g-gone"):
        assert data("grant", revoked)["status"] == "revoked"
        assert data("grant", revoked)["purposes"] == ["coaching", "guidance", "training"]
    assert data("grant", "g-old")["status"] == "expired"
    assert data("client", "c-1") == {"home_municipality": "749", "protection_order": False,
                                     "area_client": False}
    assert data("client", "c-2")["area_client"] is True
    assert data("client", "odd") == {"n": 1}
    assert "assignment_required" not in data("agreement", "749")
    touched = {(c.kind, c.id) for c in store.changes_since(v1)}
    assert touched == {("grant", "g-coach"), ("grant", "g-none"), ("grant", "g-gone"),
                       ("grant", "g-old"), ("client", "c-1")}
    assert {s.id: s.version for s in store.all_facts()}["g-coach"] == v2
    events = [(e.event.type, e.event.subject_id, e.event.municipality, e.facts_version)
              for e in store.events_after(0, 100) if e.facts_version == v2]
    assert events == [("grant.revoked", "g-gone", "", v2), ("grant.revoked", "g-none", "749", v2)]
    for stored in store.all_facts():  # every right and client reads as the model now
        if stored.id != "odd" and stored.kind in ("grant", "client", "agreement"):
            parse_fact(stored.kind, stored.data)
    with write_transaction(store.engine) as conn:
        command.downgrade(_alembic_config(store.engine, conn), "0010")
    assert "purposes" not in data("grant", "g-new")
    assert "area_client" not in data("client", "c-2")
    assert store.version() == v2 + 1


# carries: C-5, C-11
def test_migrating_from_0011_suspends_rights_written_around_the_procedure(
        store_url: str, opener: Opener) -> None:
    """0012: a live right with no grant.applied and no grant.imported event was written as
    a fact (the old back door): it is suspended, with a grant.suspended event, in one new
    facts_version in the change log. Rights that came through the procedure, and rights
    that count for nothing already, are untouched; the downgrade leaves the suspension."""
    grant = {"user": "u1", "purposes": ["guidance"], "scopes": ["name_contact"],
             "actions": ["read"], "valid_from": "2026-01-01T00:00:00+02:00",
             "valid_until": "2036-01-01T00:00:00+02:00", "status": "active",
             "recertify_by": None, "legal_basis": "380/2023"}
    old = SqlFactStore(store_url)
    try:
        upgrade(old.engine, "0011")
        old.apply([put("user", "u1", municipality="749", display_name="U", status="active",
                       tasks=["guidance"])])
        old.apply([put("grant", "g-fact", **grant),
                   put("grant", "g-old", **{**grant, "status": "expired"}),
                   put("grant", "g-held", **{**grant, "status": "suspended"})])
        old.apply([put("grant", "g-applied", **{**grant, "status": "applied"})],
                  [ev("grant.applied", "g-applied", subject_kind="grant")])
        old.apply([put("grant", "g-imported", **grant)],
                  [ev("grant.imported", "g-imported", subject_kind="grant")])
        v1 = old.version()
        before = {s.id: s for s in old.all_facts()}
        events_before = len(old.events_after(0, 100))
    finally:
        old.close()

    store = opener(store_url)  # migrates to head
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    v2 = store.version()
    assert v2 == v1 + 1
    suspended = store.get("grant", "g-fact")
    assert suspended is not None
    assert suspended.data == {**grant, "status": "suspended"} and suspended.version == v2
    for untouched in ("g-old", "g-held", "g-applied", "g-imported"):
        assert store.get("grant", untouched) == before[untouched]
    assert [(c.kind, c.id, c.data) for c in store.changes_since(v1)] == [
        ("grant", "g-fact", {**grant, "status": "suspended"})]
    new_events = store.events_after(0, 100)[events_before:]
    assert [(e.event.type, e.event.subject_kind, e.event.subject_id, e.event.municipality,
             e.event.actor, e.facts_version) for e in new_events] == [
        ("grant.suspended", "grant", "g-fact", "749", "migration 0012", v2)]
    reason = new_events[0].event.reason or ""
    assert "around the procedure" in reason and "approval record" in reason
    assert new_events[0].event.data == {"grant": {**grant, "status": "suspended"},
                                         "from": "active"}
    parse_fact("grant", suspended.data)
    with write_transaction(store.engine) as conn:
        command.downgrade(_alembic_config(store.engine, conn), "0011")
    assert store.get("grant", "g-fact") == suspended  # the suspension stays


# --- unavailability --------------------------------------------------------------------

UNREACHABLE_PG = _pg_url("nowhere", port=1)


def test_open_store_on_an_unreachable_postgresql() -> None:
    with pytest.raises(StoreUnavailable) as raised:
        open_store(UNREACHABLE_PG)
    assert isinstance(raised.value.__cause__, sa.exc.DBAPIError)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.ping(),
        lambda s: s.version(),
        lambda s: s.get("user", "u1"),
        lambda s: list(s.all_facts()),
        lambda s: s.changes_since(0),
        lambda s: s.apply([put("user", "u1", n=1)]),
        lambda s: s.apply([], [ev("user.created", "u1")]),
        lambda s: s.events_after(0, 10),
        lambda s: s.events_of("user", "u1"),
        lambda s: s.cursor("c"),
        lambda s: s.set_cursor("c", 1),
    ],
    ids=["ping", "version", "get", "all_facts", "changes_since", "apply", "apply_events",
         "events_after", "events_of", "cursor", "set_cursor"],
)
def test_every_call_on_an_unreachable_postgresql_raises_unavailable(
    call: Callable[[SqlFactStore], object],
) -> None:
    store = SqlFactStore(UNREACHABLE_PG)  # does not connect yet
    try:
        with pytest.raises(StoreUnavailable) as raised:
            call(store)
        assert isinstance(raised.value.__cause__, sa.exc.DBAPIError)
    finally:
        store.close()


def test_postgresql_going_away_after_open_raises_unavailable(
    pg_database: str, opener: Opener
) -> None:
    store = opener(_pg_url(pg_database))
    store.ping()
    with pg_connect(PG_ADMIN_DB) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (pg_database,),
        )
    # The pool notices the dead connections (pre-ping) and reconnects.
    store.ping()


# --- SQLite specifics ----------------------------------------------------------------


def test_sqlite_connection_settings(tmp_path: Path, opener: Opener) -> None:
    store = opener(f"sqlite:///{tmp_path / 'pdp.db'}")
    with store.engine.connect() as conn:

        def pragma(name: str) -> object:
            return conn.exec_driver_sql(f"PRAGMA {name}").scalar()

        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 2  # FULL
        assert pragma("foreign_keys") == 1
        assert pragma("busy_timeout") == 5000


def test_sqlite_creates_the_parent_directory(tmp_path: Path, opener: Opener) -> None:
    path = tmp_path / "new" / "nested" / "pdp.db"
    store = opener(f"sqlite:///{path}")
    assert store.apply([put("user", "u1", n=1)]) == 1
    assert path.is_file()


def test_sqlite_writer_waits_for_another_writer(tmp_path: Path, opener: Opener) -> None:
    url = f"sqlite:///{tmp_path / 'pdp.db'}"
    a, b = opener(url), opener(url)
    holding = threading.Event()
    release = threading.Event()

    def hold_write_lock() -> None:
        with write_transaction(a.engine):
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_write_lock)
    holder.start()
    try:
        assert holding.wait(10)
        threading.Timer(0.5, release.set).start()
        started = time.monotonic()
        assert b.apply([put("user", "u1", n=1)]) == 1  # waits, does not fail
        assert time.monotonic() - started >= 0.4
    finally:
        release.set()
        holder.join()


def test_sqlite_reads_do_not_wait_for_a_writer(tmp_path: Path, opener: Opener) -> None:
    url = f"sqlite:///{tmp_path / 'pdp.db'}"
    a, b = opener(url), opener(url)
    a.apply([put("user", "u1", n=1)])
    with a.engine.connect() as conn:
        conn.execution_options(pdp_write=True)
        transaction = conn.begin()
        try:
            conn.execute(sa.text("UPDATE fact_meta SET value = value + 100"))
            started = time.monotonic()
            assert b.version() == 1  # the uncommitted write is invisible, and no wait
            assert b.get("user", "u1") is not None
            assert time.monotonic() - started < 1
        finally:
            transaction.rollback()
    assert b.version() == 1

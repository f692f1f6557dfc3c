"""Misuse detection that survives: the anomaly rules' windows are shared by every replica
and kept over a restart (they live in the store, with the detector's place in the log).

Real servers: `pdp serve` processes on the embedded SQLite default (killed with SIGKILL
and started again in the middle of a window), and two replicas on one fresh PostgreSQL
database (as tests/test_scaleout.py runs them, without Redis: the windows need none)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.pg import PG_HOST, PG_PORT, fresh_database, pg_connect
from tests.support.servers import Server, start_server, stop_server
from tests.support.world import World, decide

THRESHOLD = 4  # distinct clients
RULES = f"""
timezone: Europe/Helsinki
rules:
  bulk_browsing: {{description: Many distinct clients in a short time.,
                  distinct_clients: true, threshold: {THRESHOLD}, window_minutes: 10}}
"""


def rules_file(directory: Path) -> str:
    path = directory / "monitoring.yaml"
    path.write_text(RULES)
    return str(path)


def browse(pep: httpx.Client, world: World, n: int, min_facts_version: int | None = None
           ) -> None:
    """One decision on the n-th of the world user's clients (a distinct client each)."""
    body = world.request()
    body["resource"]["id"] = f"{world.client}-browsed-{n}"
    if min_facts_version is not None:
        body["context"]["min_facts_version"] = min_facts_version
    decide(pep, body)


def bulk_cases(client: httpx.Client, user: str) -> list[dict[str, Any]]:
    response = client.get("/v1/monitoring/cases", params={"user": user,
                                                          "rule": "bulk_browsing"})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["cases"]
    return found


def wait_for(what: str, check: Any, seconds: float = 15) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def the_case(case: dict[str, Any]) -> dict[str, Any]:
    """What a case says, without its ids and times."""
    return {k: case[k] for k in ("rule", "municipality", "status", "hits", "opened_by",
                                 "comments")}


# -- a restart in the middle of a window (the embedded default: SQLite, no Redis) --------


def sqlite_rows(db: Path, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


def counted(db: Path, user: str) -> int:
    """How many distinct clients the user's bulk-browsing window in the store holds."""
    rows = sqlite_rows(db, "SELECT entries FROM monitoring_windows "
                           "WHERE rule = 'bulk_browsing' AND user_id = ?", (user,))
    return len(json.loads(rows[0][0])) if rows else 0


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], list[Server]]]:
    env = {"PDP_MONITORING_RULES": rules_file(tmp_path)}
    servers: list[Server] = []
    yield tmp_path, env, servers
    for server in servers:
        stop_server(server)


# carries: C-18, C-19
def test_a_restart_in_the_middle_of_a_window_keeps_counting(
        embedded: tuple[Path, dict[str, str], list[Server]]) -> None:
    """Before, the windows were in the memory of one process: a restart forgot the
    browsing so far, and browsing split by a restart never opened a case."""
    tmp, env, servers = embedded
    first = start_server(tmp, env=env)
    servers.append(first)
    with first.client("t-admin") as admin, first.client("t-pep") as pep:
        world = World(admin).build()
        for n in range(THRESHOLD - 1):
            browse(pep, world, n)
        db = tmp / "facts.sqlite3"
        wait_for("the detector to count the browsing",
                 lambda: counted(db, world.user) == THRESHOLD - 1)
        assert bulk_cases(admin, world.user) == []
    first.process.kill()  # SIGKILL: nothing of the process's memory is kept
    first.process.wait(10)

    second = start_server(tmp, env=env)
    servers.append(second)
    with second.client("t-admin") as admin, second.client("t-pep") as pep:
        assert counted(db, world.user) == THRESHOLD - 1
        browse(pep, world, THRESHOLD - 1)  # the last distinct client, after the restart
        (case,) = wait_for("the bulk-browsing case",
                           lambda: bulk_cases(admin, world.user))
        assert the_case(case) == {"rule": "bulk_browsing", "municipality": "749",
                                  "status": "open", "hits": 1, "opened_by": "monitoring",
                                  "comments": []}
        assert counted(db, world.user) == 0  # a hit starts a new run

        def announced() -> list[str]:
            # the detector commits the case, then announces it in a transaction of its own
            # (Cases.announce): the event follows the case, it is not in its transaction
            events = admin.get("/v1/events", params={"limit": 1000}).json()["events"]
            return [e["type"] for e in events if e["subject"]["id"] == case["id"]]

        assert wait_for("the case's announcement", announced) == ["case.opened"]


# -- two replicas on one PostgreSQL --------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[Server]]]:
    with fresh_database("pdp_monitor") as name:
        url = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
        env = {"PDP_DATABASE_URL": url,
               "PDP_MONITORING_RULES": rules_file(tmp_path_factory.mktemp("rules"))}
        servers: list[Server] = []
        try:
            for replica in ("a", "b"):
                servers.append(start_server(tmp_path_factory.mktemp(replica), env=env))
            yield name, servers
        finally:
            for server in servers:
                stop_server(server)


def facts_version(server: Server) -> int:
    """The facts version a replica holds (after writes through it: every one of them)."""
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith("pdp_facts_version "):
            return int(float(line.split()[1]))
    raise AssertionError("no pdp_facts_version")


def settle(database: str) -> None:
    """Wait until the detector has counted every record of the log."""
    def done() -> bool:
        with pg_connect(database) as conn:
            head = conn.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()
            cursor = conn.execute(
                "SELECT value FROM cursors WHERE name = 'monitor'").fetchone()
            pending = conn.execute("SELECT count(*) FROM audit_segments").fetchone()
        return bool(head and cursor and pending and pending[0] == 0 and cursor[0] == head[0])
    wait_for("the detector to count every record", done)


# carries: C-18, C-19, C-20
def test_browsing_spread_over_two_replicas_is_the_same_browsing(
        replicas: tuple[str, list[Server]]) -> None:
    """Before, each replica counted only the decisions it moved into the log: the same
    browsing spread over two replicas was two halves, each under the threshold."""
    database, (a, b) = replicas
    with a.client("t-admin") as admin, a.client("t-pep") as a_pep, \
            b.client("t-pep") as b_pep, b.client("t-admin") as b_admin:
        spread, alone = World(admin).build(), World(admin).build()
        version = facts_version(a)

        # The same browsing: on one replica, and spread over both (each replica
        # answering and moving its own decisions into the log).
        for n in range(THRESHOLD):
            browse(a_pep, alone, n, version)
        for n in range(THRESHOLD):
            browse((a_pep, b_pep)[n % 2], spread, n, version)
            settle(database)
        (on_one,) = wait_for("the case of browsing on one replica",
                             lambda: bulk_cases(admin, alone.user))
        (on_two,) = wait_for("the case of browsing over two replicas",
                             lambda: bulk_cases(admin, spread.user))
        assert the_case(on_two) == the_case(on_one) == {
            "rule": "bulk_browsing", "municipality": "749", "status": "open", "hits": 1,
            "opened_by": "monitoring", "comments": []}
        # Both replicas see the one case; it was announced once.
        assert bulk_cases(b_admin, spread.user) == [on_two]
        events = admin.get("/v1/events", params={"limit": 1000}).json()["events"]
        assert [e["type"] for e in events if e["subject"]["id"] == on_two["id"]] == [
            "case.opened"]

        # One more distinct client (through B) is a new run, not a second case.
        browse(b_pep, spread, THRESHOLD, version)
        settle(database)
        time.sleep(0.5)
        assert [c["hits"] for c in bulk_cases(admin, spread.user)] == [1]

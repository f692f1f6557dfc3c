"""Scale-out: replicas on one PostgreSQL and one Redis agree within the staleness bound,
whatever happens to Redis or to the database (issue: several replicas).

Everything is real: a fresh database on the shared PostgreSQL at 127.0.0.1:5432 (started
with pg_ctlcluster when it is down), redis-server processes started here on free ports
(killed and restarted empty), `pdp serve` subprocesses, and for the database-down tests a
PostgreSQL cluster of their own on a free port, stopped and started at will.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import httpx
import pytest

from tests.support.pg import (
    PG_HOST,
    PG_PORT,
    fresh_database,
)
from tests.support.replicas import (
    OwnPostgres,
    RedisServer,
    Replicas,
    readyz,
    wait_bus,
    wait_for,
)
from tests.support.servers import Server, start_server, stop_server
from tests.support.world import World, decide

BOUND = 1.0  # PDP_STALENESS_BOUND_SECONDS: the default
SNAPSHOT_LOG = "facts from the shared snapshot"



# -- infrastructure -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_pg_database() -> Iterator[str]:
    """A fresh database on the shared PostgreSQL for this module; its name."""
    with fresh_database("pdp_scale") as name:
        yield name


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def replicas(shared_pg_database: str, redis_server: RedisServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    group = Replicas(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{shared_pg_database}",
                     redis_server, tmp_path_factory)
    try:
        group.start("a")
        group.start("b")
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def scale(replicas: Replicas) -> Replicas:
    """A and B with Redis up and both on the bus (an earlier test may have killed it)."""
    if not replicas.redis.running:
        replicas.redis.start()
    wait_bus([replicas.a, replicas.b], "connected")
    return replicas


@pytest.fixture
def a_admin(scale: Replicas) -> Iterator[httpx.Client]:
    with scale.a.client("t-admin") as client:
        yield client


@pytest.fixture
def b_admin(scale: Replicas) -> Iterator[httpx.Client]:
    with scale.b.client("t-admin") as client:
        yield client


@pytest.fixture
def a_pep(scale: Replicas) -> Iterator[httpx.Client]:
    with scale.a.client("t-pep") as client:
        yield client


@pytest.fixture
def b_pep(scale: Replicas) -> Iterator[httpx.Client]:
    with scale.b.client("t-pep") as client:
        yield client


@pytest.fixture
def world(a_admin: httpx.Client, a_pep: httpx.Client, b_pep: httpx.Client) -> World:
    """A world written through A, allowed by both replicas."""
    built = World(a_admin).build()
    assert decide(a_pep, built.request())["decision"] is True
    seen_within(b_pep, built, True)
    return built


@pytest.fixture(scope="module")
def own_pg() -> Iterator[OwnPostgres]:
    cluster = OwnPostgres()
    try:
        cluster.init()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("own-redis"))
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
def launched() -> Iterator[list[Server]]:
    """Servers a test starts on its own: stopped when it ends, however it ends."""
    servers: list[Server] = []
    yield servers
    for server in servers:
        stop_server(server)


# -- helpers ------------------------------------------------------------------------------


# The step of the procedure that puts a right in each state, and a body it takes.
GRANT_STEPS: dict[str, tuple[str, dict[str, str]]] = {
    "suspended": ("suspend", {"reason": "suspected misuse"}),
    "active": ("restore", {"justification": "cleared"}),
    "revoked": ("revoke", {"reason": "task_ended"}),
}


def set_grant(admin: httpx.Client, world: World, status: str) -> int:
    """The world's right put in `status` by its step (rights are not facts-API writes);
    if it is in `status` already, nothing is written. Returns a facts_version at which
    the right is in `status`."""
    current = admin.get(f"/v1/grants/{world.grant}")
    assert current.status_code == 200, current.text
    if current.json()["state"] == status:
        return int(current.json()["facts_version"])
    step, body = GRANT_STEPS[status]
    response = admin.post(f"/v1/grants/{world.grant}/{step}", json=body)
    assert response.status_code == 200, response.text
    return int(response.json()["facts_version"])


def seen_within(pep: httpx.Client, world: World, allowed: bool, limit: float = 3.0) -> float:
    """Seconds from now until `pep`'s replica decides `allowed` for the world's request
    (the time of the answer that shows it); fail after `limit`."""
    started = time.monotonic()
    while True:
        result = decide(pep, world.request())
        elapsed = time.monotonic() - started
        if result["decision"] is allowed:
            if not allowed:
                assert result["context"]["reason"] == "no_active_grant", result
            return elapsed
        if elapsed > limit:
            pytest.fail(f"{pep.base_url} still decides {not allowed} {elapsed:.2f} s after "
                        f"the write was acknowledged: {result}")
        time.sleep(0.002)


def flip(writer: httpx.Client, reader: httpx.Client, world: World, times: int) -> list[float]:
    """Suspend and re-activate the world's grant through `writer`, alternately; after each
    acknowledged write, the seconds until `reader` decides accordingly."""
    latencies = []
    for i in range(times):
        status = "suspended" if i % 2 == 0 else "active"
        set_grant(writer, world, status)
        latencies.append(seen_within(reader, world, status == "active"))
    return latencies


class Load:
    """Decisions on `world` sent to every server continuously from a thread; every
    outcome is recorded (they must all be 200 allow: nothing changes `world`)."""

    def __init__(self, servers: list[Server], world: World) -> None:
        self.servers = servers
        self.world = world
        self.outcomes: list[tuple[str, int, Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        clients = [(server.url, server.client("t-pep"))
                   for server in self.servers]
        try:
            while not self._stop.is_set():
                for url, client in clients:
                    try:
                        response = client.post("/access/v1/evaluation",
                                               json=self.world.request())
                        decision = (response.json().get("decision")
                                    if response.status_code == 200 else response.text)
                        self.outcomes.append((url, response.status_code, decision))
                    except httpx.HTTPError as error:
                        self.errors.append(f"{url}: {error!r}")
                time.sleep(0.01)
        finally:
            for _, client in clients:
                client.close()

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(15)

    def check(self) -> None:
        assert not self.errors, self.errors[:5]
        bad = [o for o in self.outcomes if o[1:] != (200, True)]
        assert not bad, bad[:5]
        for server in self.servers:
            assert sum(o[0] == server.url for o in self.outcomes) >= 20, server.url


def gauge(server: Server, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{server.url} exports no {name}")


def settle(servers: list[Server]) -> None:
    """Until no server's decision log has records waiting (so misuse detection has seen
    them) and every server answers from the same facts_version."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if all(gauge(s, "pdp_audit_pending_records") == 0 for s in servers):
            time.sleep(0.3)  # a case being written as the log empties
            versions = {gauge(s, "pdp_facts_version") for s in servers}
            if len(versions) == 1 and all(
                    gauge(s, "pdp_audit_pending_records") == 0 for s in servers):
                return
        time.sleep(0.05)
    raise AssertionError("the servers did not settle: " + ", ".join(
        f"{s.url}: pending {gauge(s, 'pdp_audit_pending_records')}, "
        f"facts_version {gauge(s, 'pdp_facts_version')}" for s in servers))


def same_answers(servers: list[Server], worlds: list[World]) -> None:
    """Every server decides every request of `worlds` alike, at the same facts_version."""
    requests = [w.request(category=category, action=action, purpose=purpose)
                for w in worlds
                for category in ("service_needs_plans", "name_contact", "health_work_capacity")
                for action in ("read", "write")
                for purpose in ("coaching", "training")]
    # A first pass may open misuse cases (at night every decision is an "unusual hours"
    # hit), and a new case is an outbox event that advances facts_version: let those
    # land on every server before the pass that is compared.
    for server in servers:
        with server.client("t-pep") as pep:
            for body in requests:
                decide(pep, body)
    settle(servers)
    answers = []
    for server in servers:
        with server.client("t-pep") as pep:
            answers.append([(r["decision"], r["context"]["reason"],
                             r["context"]["facts_version"])
                            for r in (decide(pep, body) for body in requests)])
    for server, answer in zip(servers[1:], answers[1:], strict=True):
        assert answer == answers[0], f"{server.url} decides otherwise than {servers[0].url}"
    assert any(d for d, _, _ in answers[0]) and not all(d for d, _, _ in answers[0])


def snapshot_version(redis_server: RedisServer) -> int | None:
    blob = redis_server.get("pdp:snapshot")
    return None if blob is None else int(json.loads(blob)["v"])


# -- a right revoked through one replica is denied by the other ------------------------


def test_a_revocation_through_a_is_denied_by_b_within_the_bound(
        a_admin: httpx.Client, b_pep: httpx.Client, world: World) -> None:
    latencies = flip(a_admin, b_pep, world, 20)
    assert max(latencies) < BOUND, latencies
    # The bus brings it at once: far sooner than B's store poll would.
    assert statistics.median(latencies) < 0.1, latencies


def test_a_revocation_through_b_is_denied_by_a_within_the_bound(
        b_admin: httpx.Client, a_pep: httpx.Client, world: World) -> None:
    latencies = flip(b_admin, a_pep, world, 20)
    assert max(latencies) < BOUND, latencies
    assert statistics.median(latencies) < 0.1, latencies


def test_min_facts_version_holds_across_replicas(
        a_admin: httpx.Client, b_admin: httpx.Client, a_pep: httpx.Client,
        b_pep: httpx.Client, world: World) -> None:
    pairs = [(a_admin, b_pep), (b_admin, a_pep)]
    for i in range(40):
        writer, reader = pairs[(i // 2) % 2]
        status = "suspended" if i % 2 == 0 else "active"
        version = set_grant(writer, world, status)
        result = decide(reader, world.request(min_facts_version=version))
        assert result["context"]["facts_version"] >= version, (i, result)
        assert result["decision"] is (status == "active"), (i, result)
    # Batches too: the largest min_facts_version of the items holds for all.
    version = set_grant(a_admin, world, "suspended")
    response = b_pep.post("/access/v1/evaluations", json={"evaluations": [
        world.request(), world.request(min_facts_version=version)]})
    assert response.status_code == 200, response.text
    results = response.json()["evaluations"]
    assert [r["decision"] for r in results] == [False, False], results
    assert all(r["context"]["facts_version"] >= version for r in results), results
    set_grant(a_admin, world, "active")


# -- Redis killed mid-run, then restarted empty ------------------------------------------


def test_redis_killed_then_restarted_empty(
        scale: Replicas, a_admin: httpx.Client, b_admin: httpx.Client,
        a_pep: httpx.Client, b_pep: httpx.Client, world: World) -> None:
    a, b, redis_server = scale.a, scale.b, scale.redis
    steady = World(a_admin).build()
    seen_within(b_pep, steady, True)
    with Load([a, b], steady) as load:
        time.sleep(0.3)
        redis_server.kill()
        wait_bus([a, b], "disconnected", 3)
        for server in (a, b):
            code, body = readyz(server)
            assert code == 200 and body["bus"] == "disconnected", body
            assert body["facts_fresh"] is True, body

        # Without the bus, the store poll brings every write within the bound.
        latencies = flip(a_admin, b_pep, world, 10) + flip(b_admin, a_pep, world, 10)
        assert max(latencies) < BOUND, latencies
        # The consistency token holds without the bus too (read from the store).
        for i in range(10):
            status = "suspended" if i % 2 == 0 else "active"
            version = set_grant(a_admin, world, status)
            result = decide(b_pep, world.request(min_facts_version=version))
            assert result["context"]["facts_version"] >= version, result
            assert result["decision"] is (status == "active"), result
        for server in (a, b):
            code, body = readyz(server)
            assert code == 200 and body["bus"] == "disconnected", body

        # Back, empty: the replicas reconnect by themselves.
        redis_server.start()
        assert redis_server.get("pdp:version") is None
        assert redis_server.get("pdp:snapshot") is None
        wait_bus([a, b], "connected", 5)
        latencies = flip(a_admin, b_pep, world, 10) + flip(b_admin, a_pep, world, 10)
        assert max(latencies) < BOUND, latencies
        assert statistics.median(latencies) < 0.1, latencies  # the bus again
        set_grant(a_admin, world, "active")
        time.sleep(0.3)
    load.check()


# -- cold replicas: from the shared snapshot, or from the store ---------------------------


def test_a_cold_replica_loads_from_the_shared_snapshot_or_the_store(
        scale: Replicas, a_admin: httpx.Client, a_pep: httpx.Client,
        world: World, launched: list[Server]) -> None:
    a, redis_server = scale.a, scale.redis
    revoked = World(a_admin).build()
    set_grant(a_admin, revoked, "revoked")

    # Redis empty: from the store; and the replica shares a snapshot at once.
    redis_server.kill()
    redis_server.start()
    e = scale.start("e")
    launched.append(e)
    assert SNAPSHOT_LOG not in e.log.read_text()
    same_answers([a, e], [world, revoked])
    with e.client("t-pep") as pep:
        answered = decide(pep, world.request())["context"]["facts_version"]
    # The snapshot E shared when it started (misuse cases opened since then may have
    # advanced the version without changing a fact).
    shared = snapshot_version(redis_server)
    assert shared is not None and shared <= answered

    # A snapshot older than the store: the snapshot and the newer changes from the store.
    set_grant(a_admin, world, "suspended")
    set_grant(a_admin, world, "active")
    revoked.put("users", revoked.user, {"municipality": revoked.municipality,
                                        "display_name": "Uusi Nimi", "tasks": ["coaching"],
                                        "status": "active"})
    c = scale.start("c")
    launched.append(c)
    assert f"{SNAPSHOT_LOG} at version {shared}" in c.log.read_text()
    same_answers([a, c], [world, revoked])
    with c.client("t-pep") as pep:
        assert decide(pep, world.request())["context"]["facts_version"] > shared

    # Redis down: from the store.
    redis_server.kill()
    d = scale.start("d")
    launched.append(d)
    assert SNAPSHOT_LOG not in d.log.read_text()
    same_answers([a, d], [world, revoked])
    redis_server.start()
    wait_bus([a, scale.b, c, d, e], "connected")
    seen_within(a_pep, world, True)


# -- kill -9 loses nothing acknowledged ---------------------------------------------------


def test_kill_9_of_a_replica_loses_nothing_acknowledged(
        scale: Replicas, a_admin: httpx.Client, b_pep: httpx.Client,
        b_admin: httpx.Client, world: World, launched: list[Server]) -> None:
    victim = scale.start("victim")
    launched.append(victim)
    numbers = itertools.count()
    acknowledged: dict[int, int] = {}
    unexpected: list[str] = []
    lock = threading.Lock()
    prefix = f"{world.p}-k"

    def batch(i: int) -> dict[str, Any]:
        return {"facts": [
            {"kind": "client", "id": f"{prefix}-c{i}",
             "data": {"home_municipality": world.municipality, "area_client": True}},
            {"kind": "relationship", "id": f"{prefix}-r{i}",
             "data": {"client": f"{prefix}-c{i}", "municipality": world.municipality,
                      "service": "coaching", "starts_at": "2025-06-01T00:00:00+03:00"}}]}

    def write() -> None:
        with victim.client("t-admin") as client:
            while True:
                i = next(numbers)
                try:
                    response = client.post("/v1/facts:batch", json=batch(i))
                except httpx.HTTPError:
                    return  # the replica is gone
                if response.status_code != 200:
                    unexpected.append(f"{i}: {response.status_code} {response.text}")
                    return
                with lock:
                    acknowledged[i] = int(response.json()["facts_version"])

    writers = [threading.Thread(target=write, daemon=True) for _ in range(4)]
    for writer in writers:
        writer.start()
    wait_for("40 acknowledged writes", lambda: len(acknowledged) >= 40, 10)
    time.sleep(0.2)
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait(10)
    for writer in writers:
        writer.join(15)
        assert not writer.is_alive()
    assert not unexpected, unexpected
    with lock:
        acked = dict(acknowledged)
    assert len(set(acked.values())) == len(acked)
    newest = max(acked.values())

    def check(admin: httpx.Client, pep: httpx.Client) -> None:
        for i, version in acked.items():
            client = admin.get(f"/v1/clients/{prefix}-c{i}")
            assert client.status_code == 200, (i, client.text)
            body = client.json()
            assert (body["id"], body["home_municipality"], body["facts_version"]) == (
                f"{prefix}-c{i}", world.municipality, version), body
            relationship = admin.get(f"/v1/relationships/{prefix}-r{i}")
            assert relationship.status_code == 200, (i, relationship.text)
            body = relationship.json()
            assert (body["client"], body["municipality"], body["service"],
                    body["facts_version"]) == (f"{prefix}-c{i}", world.municipality,
                                               "coaching", version), body
        ids = sorted(acked)
        for start in range(0, len(ids), 500):
            items = []
            for i in ids[start:start + 500]:
                item = world.request()
                item["resource"]["id"] = f"{prefix}-c{i}"
                item["context"]["min_facts_version"] = newest
                items.append(item)
            response = pep.post("/access/v1/evaluations", json={"evaluations": items})
            assert response.status_code == 200, response.text
            results = response.json()["evaluations"]
            assert len(results) == len(items)
            denied = [(i, r) for i, r in zip(ids[start:start + 500], results, strict=True)
                      if r["decision"] is not True]
            assert not denied, denied[:5]

    check(b_admin, b_pep)
    # A replica started afresh on the database alone (no Redis) has them too.
    fresh = scale.start("after-kill", env={"PDP_REDIS_URL": ""})
    launched.append(fresh)
    with fresh.client("t-admin") as admin, fresh.client("t-pep") as pep:
        check(admin, pep)
    # And the replicas still agree on writes after it.
    assert max(flip(a_admin, b_pep, world, 4)) < BOUND


# -- the database down --------------------------------------------------------------------


# The decision log lives in the database and a decision is returned only once recorded,
# so with the database down no decision can be returned at all. The facts' staleness
# bound with the database down is therefore tested with the log off (PDP_AUDIT_LOG=false),
# and the default with the log on.
NO_DECISION_LOG = {"PDP_AUDIT_LOG": "false"}


def test_database_down_with_the_decision_log_no_decision_is_returned(
        own_pg: OwnPostgres, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory,
        launched: list[Server]) -> None:
    if not own_pg.running:
        own_pg.start()
    server = start_server(tmp_path_factory.mktemp("dbdown-log"), env={
        "PDP_DATABASE_URL": own_pg.url, "PDP_REDIS_URL": own_redis.url,
        "PDP_POLL_INTERVAL_SECONDS": "0.25"})
    launched.append(server)
    try:
        with server.client("t-admin") as admin, server.client("t-pep") as pep:
            world = World(admin).build()
            assert decide(pep, world.request())["decision"] is True
            wait_bus([server], "connected")

            own_pg.stop()
            wait_for("/readyz 503 with the database down",
                     lambda: readyz(server)[0] == 503, 3)
            stopped = time.monotonic()
            outcomes = []
            while time.monotonic() - stopped < 2 * BOUND:
                response = pep.post("/access/v1/evaluation", json=world.request())
                outcomes.append((response.status_code, response.headers.get("retry-after"),
                                 response.json()))
            assert len(outcomes) >= 5
            for status, retry_after, body in outcomes:
                assert status == 503, body
                assert retry_after is not None and int(retry_after) >= 1, body
                assert body["error"]["code"] in ("audit_unavailable", "unavailable"), body

            own_pg.start()
            wait_for("decisions again", lambda: pep.post(
                "/access/v1/evaluation", json=world.request()).status_code == 200, 10)
            wait_for("/readyz 200 again", lambda: readyz(server)[0] == 200, 10)
            assert decide(pep, world.request())["decision"] is True
    finally:
        if not own_pg.running:
            own_pg.start()


def test_database_down_decisions_follow_the_bound(
        own_pg: OwnPostgres, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory,
        launched: list[Server]) -> None:
    if not own_pg.running:
        own_pg.start()
    server = start_server(tmp_path_factory.mktemp("dbdown"), env={
        "PDP_DATABASE_URL": own_pg.url, "PDP_REDIS_URL": own_redis.url,
        "PDP_POLL_INTERVAL_SECONDS": "0.25", **NO_DECISION_LOG})
    launched.append(server)
    try:
        with server.client("t-admin") as admin, server.client("t-pep") as pep:
            world = World(admin).build()
            assert decide(pep, world.request())["decision"] is True
            wait_bus([server], "connected")
            own_pg.stop()
            stopped = time.monotonic()
            # Nothing can confirm the facts now: decisions go on at most until the bound
            # has passed since the last confirmation (<= one poll before the stop), then 503.
            outcomes: list[tuple[float, int, str | None, Any]] = []
            while time.monotonic() - stopped < BOUND + 1.5:
                sent = time.monotonic() - stopped
                response = pep.post("/access/v1/evaluation", json=world.request())
                outcomes.append((sent, response.status_code,
                                 response.headers.get("retry-after"), response.json()))
            late = [o for o in outcomes if o[1] != 503 and o[0] > BOUND + 0.05]
            assert not late, f"answered past the bound with the store down: {late[:3]}"
            refused = [o for o in outcomes if o[1] == 503]
            assert len(refused) >= 5, outcomes[-3:]
            for _, _, retry_after, body in refused:
                assert retry_after is not None and int(retry_after) >= 1
                assert body["error"]["code"] == "unavailable", body
            assert all(o[1] in (200, 503) for o in outcomes), outcomes
            assert all(o[3]["decision"] is True for o in outcomes if o[1] == 200)
            status, body = readyz(server)
            assert status == 503 and body["status"] == "not_ready", body
            assert any(p.startswith("store") for p in body["problems"]), body

            # The database back: decisions and readiness come back by themselves.
            own_pg.start()
            back = time.monotonic()
            wait_for("decisions again", lambda: pep.post(
                "/access/v1/evaluation", json=world.request()).status_code == 200, 10)
            wait_for("/readyz 200 again", lambda: readyz(server)[0] == 200, 10)
            assert time.monotonic() - back < 10
            assert decide(pep, world.request())["decision"] is True
            version = set_grant(admin, world, "suspended")
            result = decide(pep, world.request())
            assert result["decision"] is False and result["context"]["facts_version"] >= version
    finally:
        if not own_pg.running:
            own_pg.start()


def test_database_down_after_a_write_redis_never_heard_of(
        own_pg: OwnPostgres, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory,
        launched: list[Server]) -> None:
    """Redis is down when a right is revoked (the write reaches only the database), the
    database goes down, Redis comes back empty. A replica that has not read the store since
    the revocation cannot know of it: past the bound it must answer 503, never allow —
    Redis's (empty) version proves nothing about what the database committed."""
    if not own_pg.running:
        own_pg.start()
    env = {"PDP_DATABASE_URL": own_pg.url, "PDP_REDIS_URL": own_redis.url, **NO_DECISION_LOG}
    writer = start_server(tmp_path_factory.mktemp("writer"), env=env)
    launched.append(writer)
    # The reader's poll is slow (allowed: up to 10 s) so that it cannot by chance read
    # the store between the revocation and the database going down; the bound is 1 s.
    reader = start_server(tmp_path_factory.mktemp("reader"),
                          env={**env, "PDP_POLL_INTERVAL_SECONDS": "10"})
    launched.append(reader)
    try:
        with writer.client("t-admin") as admin, reader.client("t-pep") as pep:
            world = World(admin).build()
            seen_within(pep, world, True)
            wait_bus([writer, reader], "connected")

            own_redis.kill()
            set_grant(admin, world, "revoked")
            own_pg.stop()
            revoked = time.monotonic()
            own_redis.start()
            wait_bus([reader], "connected")
            time.sleep(max(0.0, revoked + BOUND + 0.1 - time.monotonic()))

            # Past the bound, for a while: 503 every time, never the revoked right.
            outcomes: list[tuple[float, int, str | None, Any]] = []
            while time.monotonic() - revoked < 2.5 * BOUND:
                response = pep.post("/access/v1/evaluation", json=world.request())
                outcomes.append((time.monotonic() - revoked, response.status_code,
                                 response.headers.get("retry-after"), response.json()))
                time.sleep(0.05)
            stale = [o for o in outcomes if o[1] == 200 and o[3]["decision"] is True]
            assert not stale, (
                f"{len(stale)} of {len(outcomes)} decisions allowed the right revoked "
                f"{stale[0][0]:.1f}-{stale[-1][0]:.1f} s before, with the database down: "
                f"{stale[0][3]}")
            for _, status, retry_after, body in outcomes:
                assert status == 503 and body["error"]["code"] == "unavailable", body
                assert retry_after is not None
    finally:
        if not own_pg.running:
            own_pg.start()


# -- pdp serve --workers 2 ----------------------------------------------------------------


def test_workers_share_writes_within_the_bound(
        scale: Replicas, launched: list[Server]) -> None:
    server = scale.start("workers", args=("--workers", "2"))
    launched.append(server)
    wait_for("two workers started", lambda: server.log.read_text().count(
        "Application startup complete") >= 2, 20)
    assert all(readyz(server)[0] == 200 for _ in range(10))
    fresh_connections = httpx.Limits(max_keepalive_connections=0)
    with server.client("t-admin") as admin, \
            server.client("t-pep", limits=fresh_connections) as pep:
        world = World(admin).build()
        wait_for("every worker allows", lambda: all(
            decide(pep, world.request())["decision"] for _ in range(20)), 5)
        for i in range(4):
            status = "suspended" if i % 2 == 0 else "active"
            version = set_grant(admin, world, status)
            acked = time.monotonic()
            answers: list[tuple[float, float, dict[str, Any]]] = []
            while time.monotonic() - acked < BOUND + 0.2:
                sent = time.monotonic() - acked
                result = decide(pep, world.request())
                answers.append((sent, time.monotonic() - acked, result))
            stale = [(s, r) for s, _, r in answers if r["decision"] is not (status == "active")]
            assert not [x for x in stale if x[0] >= BOUND], stale[-3:]
            assert max((e for _, e, r in answers if r["decision"] is not (status == "active")),
                       default=0.0) < BOUND, stale[-3:]
            assert len(answers) >= 50
            assert all(r["context"]["facts_version"] >= version
                       for s, _, r in answers if s >= BOUND)
    code, body = readyz(server)
    assert code == 200, body
    assert body["bus"] == "connected", body

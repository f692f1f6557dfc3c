"""Revocation propagation between two replicas: a write through A, a deny from B.

Creates a fresh PostgreSQL database (127.0.0.1:5432, user postgres), starts its own
redis-server on a free loopback port, starts two `pdp serve` replicas A and B on that
store, loads the demo world through A, then per round (after a random pause, so that
rounds do not start in step with B's store poll): suspends grant g-1001 through A
(t0: just before the PUT is sent), polls B's decision for u-1001 / c-749-001 /
service_needs_plans / coaching until it is a deny (t1), and restores the grant (waiting
until B allows again). t1 - t0 includes A's write (commit, publish) and B's answer.

By default it runs twice: with Redis (the bus) and without (B learns of the write from
its store poll, every PDP_POLL_INTERVAL_SECONDS). Everything it started is stopped and
the database dropped at the end, also on error or Ctrl-C.

--failure-drill instead stops Redis, makes the database unreachable (ALLOW_CONNECTIONS
false on the benchmark's own database, its sessions ended), then both, and brings them
back, reporting what B answers at each step and the propagation time meanwhile.

Run: .venv/bin/python benchmarks/propagation.py [--rounds 200] [--no-redis | --redis-only]
     .venv/bin/python benchmarks/propagation.py --failure-drill --rounds 20
Prints p50/p90/p99/max of t1 - t0 in ms per mode and their ratio (target: p99 < 100 ms
with Redis). Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psycopg
from psycopg import sql

from pdp.service.demo import demo_facts, demo_register, demo_register_before

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
ADMIN_TOKEN = "bench-admin"
KEYS = {ADMIN_TOKEN: {"name": "benchmark", "roles": ["admin"]}}
REQUEST = {"subject": {"type": "user", "id": "u-1001"}, "action": {"name": "read"},
           "resource": {"type": "client_record", "id": "c-749-001",
                        "properties": {"category": "service_needs_plans"}},
           "context": {"purpose": "coaching"}}
GRANT = "g-1001"


# -- infrastructure shared with http_load.py ------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_connect(dbname: str) -> psycopg.Connection[Any]:
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname,
                           autocommit=True, connect_timeout=3)


@contextlib.contextmanager
def pg_database(prefix: str = "pdp_bench") -> Iterator[str]:
    """A fresh PostgreSQL database; its URL. Dropped (WITH FORCE) on exit."""
    name = f"{prefix}_{secrets.token_hex(5)}"
    with _pg_connect("postgres") as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with _pg_connect("postgres") as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))


def pg_connections(url: str) -> int:
    """Open connections to the database of `url` (pg_stat_activity)."""
    dbname = url.rsplit("/", 1)[1]
    with _pg_connect("postgres") as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                           (dbname,)).fetchone()
    return int(row[0]) if row else 0


def pg_table_size(url: str, table: str) -> tuple[int, int]:
    """Rows and bytes (pg_total_relation_size: with indexes and TOAST) of a table."""
    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname,
                         autocommit=True, connect_timeout=3) as conn:
        row = conn.execute(sql.SQL("SELECT count(*), pg_total_relation_size({}) FROM {}")
                           .format(sql.Literal(table), sql.Identifier(table))).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class RedisProcess:
    """A private redis-server on a free loopback port, no persistence; restartable on
    the same port (for the failure drill)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (scripts/services installs it)")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.workdir / f"redis-{self.port}.log").open("ab") as out:
            self.process = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.workdir)],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[RedisProcess]:
    """A started RedisProcess, stopped on exit."""
    redis = RedisProcess(workdir)
    try:
        redis.start()
        yield redis
    finally:
        redis.stop()


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=10,
                                   headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


@contextlib.contextmanager
def pdp_server(name: str, workdir: Path, env: dict[str, str],
               args: tuple[str, ...] = ()) -> Iterator[Server]:
    """`pdp serve` on a free loopback port with the admin key; stopped on exit."""
    port = free_port()
    log = workdir / f"{name}-{port}.log"
    environment = {**os.environ, "PDP_API_KEYS": json.dumps(KEYS),
                   "PDP_REGISTER_BEFORE": demo_register_before().isoformat(), **env}
    if "PDP_REDIS_URL" not in env:
        environment.pop("PDP_REDIS_URL", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pdp", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning", *args],
            cwd=workdir, env=environment, stdout=out, stderr=subprocess.STDOUT)
    server = Server(name, f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server {name} exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if server.client.get("/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {name} did not become ready: "
                                   f"{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield server
    finally:
        server.client.close()
        stop_process(process)


def load_facts(server: Server, facts: list[dict[str, Any]], chunk: int = 5000) -> int:
    """POST /v1/facts:batch in chunks; the last facts_version."""
    version = 0
    for start in range(0, len(facts), chunk):
        response = server.client.post("/v1/facts:batch", json={"facts": facts[start:start + chunk]},
                                      timeout=120)
        response.raise_for_status()
        version = int(response.json()["facts_version"])
    return version


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of `values` (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil
    return ordered[int(rank) - 1]


def raise_on_sigterm() -> None:
    """Turn the first SIGTERM into KeyboardInterrupt so that cleanup in `finally` runs;
    ignore further ones (e.g. `timeout` signals the whole process group) meanwhile."""
    def handler(_signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def parse_env(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, str]:
    extra = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("PDP_"):
            parser.error(f"--env {pair!r}: expected PDP_NAME=VALUE")
        extra[key] = value
    return extra


def describe(extra: dict[str, str]) -> str:
    """The code and settings measured: commit, and the PDP_* settings that matter here."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    env = {**os.environ, **extra}
    shown = {name: env.get(name, "default") for name in (
        "PDP_POLL_INTERVAL_SECONDS", "PDP_STALENESS_BOUND_SECONDS", "PDP_AUDIT_LOG")}
    shown |= {k: v for k, v in extra.items() if k not in shown}
    load = Path("/proc/loadavg").read_text().split()[0]
    return (f"commit {commit or '?'}; load average {load}; "
            + " ".join(f"{k}={v}" for k, v in shown.items()))


# -- the benchmark --------------------------------------------------------------------------

def decision(server: Server) -> bool:
    response = server.client.post("/access/v1/evaluation", json=REQUEST)
    response.raise_for_status()
    return bool(response.json()["decision"])


def wait_for(server: Server, want: bool, timeout: float, pause: float) -> float:
    """Poll `server` until its decision is `want`; the perf_counter() when it was."""
    deadline = time.perf_counter() + timeout
    while True:
        if decision(server) is want:
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{server.name} did not answer {want} within {timeout} s")
        if pause:
            time.sleep(pause)


def load_demo(server: Server) -> int:
    """The demo world: its facts through POST /v1/facts:batch, its rights as the register
    of rights before the service (POST /v1/grants:import); the last facts_version."""
    load_facts(server, demo_facts())
    response = server.client.post("/v1/grants:import", json=demo_register(), timeout=120)
    response.raise_for_status()
    return int(response.json()["facts_version"])


@dataclass
class Pair:
    """Replicas A and B on one store, with the demo world loaded; grant g-1001 is
    suspended and restored through A by its workflow steps."""

    a: Server
    b: Server

    def suspend(self) -> httpx.Response:
        return self.a.client.post(f"/v1/grants/{GRANT}/suspend",
                                  json={"reason": "benchmark round"})

    def restore(self) -> httpx.Response:
        return self.a.client.post(f"/v1/grants/{GRANT}/restore",
                                  json={"justification": "benchmark round"})


@contextlib.contextmanager
def replicas(db_url: str, redis_url: str | None, workdir: Path, timeout: float,
             extra: dict[str, str] | None = None) -> Iterator[Pair]:
    env = {**(extra or {}), "PDP_DATABASE_URL": db_url}
    if redis_url:
        env["PDP_REDIS_URL"] = redis_url
    with pdp_server("A", workdir, env) as a, pdp_server("B", workdir, env) as b:
        load_demo(a)
        wait_for(b, True, timeout, 0.01)
        yield Pair(a, b)


def rounds(pair: Pair, count: int, timeout: float, pause: float, jitter: float,
           seed: int = 749) -> dict[str, Any]:
    """`count` revocations through A, each timed until B denies, then restored."""
    b = pair.b
    latencies: list[float] = []
    writes: list[float] = []
    rng = random.Random(seed)
    for _ in range(count):
        # B's store poll runs on its own timer: start each round at a random phase of it,
        # not right after the poll that saw the last restore.
        time.sleep(rng.uniform(0, jitter))
        t0 = time.perf_counter()
        pair.suspend().raise_for_status()
        written = time.perf_counter()
        t1 = wait_for(b, False, timeout, pause)
        latencies.append((t1 - t0) * 1000)
        writes.append((written - t0) * 1000)
        pair.restore().raise_for_status()
        wait_for(b, True, timeout, pause)
    return {"rounds": count, **{f"p{p}": percentile(latencies, p) for p in (50, 90, 99)},
            "max": max(latencies), "write_p50": percentile(writes, 50),
            "write_p99": percentile(writes, 99)}


def run_mode(redis: bool, count: int, workdir: Path, timeout: float, pause: float,
             jitter: float, extra: dict[str, str], external: str | None) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        db_url = stack.enter_context(pg_database())
        redis_url = None
        if redis:
            redis_url = external or stack.enter_context(redis_server(workdir)).url
        pair = stack.enter_context(replicas(db_url, redis_url, workdir, timeout, extra))
        rounds(pair, 3, timeout, pause, 0)  # warm: connections, caches
        result = rounds(pair, count, timeout, pause, jitter)
        result["pg_connections"] = pg_connections(db_url)
    return {"mode": "redis" if redis else "store poll", **result}


# -- the failure drill ----------------------------------------------------------------------

def probe(server: Server) -> tuple[int, str]:
    """One decision from `server`: (status, "allow" / "deny" / the Retry-After header)."""
    try:
        response = server.client.post("/access/v1/evaluation", json=REQUEST, timeout=5)
    except httpx.HTTPError as error:
        return 0, type(error).__name__
    if response.status_code == 200:
        return 200, "allow" if response.json()["decision"] else "deny"
    code = response.json().get("error", {}).get("code")
    return response.status_code, f"{code}, Retry-After: {response.headers.get('retry-after')}"


def watch(server: Server, seconds: float) -> dict[str, Any]:
    """Probe every 10 ms for `seconds`: per outcome, how many and when it was first seen
    (seconds from the start)."""
    began = time.perf_counter()
    seen: dict[str, dict[str, Any]] = {}
    while (elapsed := time.perf_counter() - began) < seconds:
        status, what = probe(server)
        entry = seen.setdefault(f"{status} {what}", {"count": 0, "first_s": round(elapsed, 3)})
        entry["count"] += 1
        time.sleep(0.01)
    return seen


def until(check: Any, timeout: float) -> float:
    """Seconds until check() is true (polled every 10 ms); raises after `timeout`."""
    began = time.perf_counter()
    while not check():
        if time.perf_counter() - began > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)
    return round(time.perf_counter() - began, 3)


def ready(server: Server) -> dict[str, Any]:
    response = server.client.get("/readyz")
    return {"http_status": response.status_code, **response.json()}


def set_database_reachable(db_url: str, reachable: bool) -> None:
    """Simulate PostgreSQL failing (for this database only): refuse new connections and
    end the open ones; or allow them again."""
    dbname = db_url.rsplit("/", 1)[1]
    with _pg_connect("postgres") as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(dbname), sql.SQL("true" if reachable else "false")))
        if not reachable:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))


def drill(workdir: Path, count: int, timeout: float, pause: float, jitter: float,
          extra: dict[str, str]) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = []

    def step(name: str, value: Any) -> None:
        steps.append((name, value))
        print(f"{name}: {json.dumps(value)}", flush=True)

    with contextlib.ExitStack() as stack:
        db_url = stack.enter_context(pg_database())
        redis = stack.enter_context(redis_server(workdir))
        pair = stack.enter_context(replicas(db_url, redis.url, workdir, timeout, extra))
        stack.callback(set_database_reachable, db_url, True)
        b = pair.b
        rounds(pair, 3, timeout, pause, 0)
        step("1 all up: propagation ms", rounds(pair, count, timeout, pause, jitter))

        redis.stop()
        step("2 Redis stopped: B's decisions for 3 s", watch(b, 3.0))
        step("2 Redis stopped: B /readyz", ready(b))
        step("2 Redis stopped: propagation ms", rounds(pair, count, timeout, pause, jitter))

        redis.start()  # empty: no version key, no snapshot
        step("3 Redis back: seconds until B's bus is connected",
             until(lambda: ready(b).get("bus") == "connected", 30))
        step("3 Redis back: propagation ms", rounds(pair, count, timeout, pause, jitter))

        set_database_reachable(db_url, False)
        step("4 PostgreSQL unreachable, Redis up: B's decisions for 5 s", watch(b, 5.0))
        write = pair.suspend()
        step("4 PostgreSQL unreachable: a write through A",
             {"status": write.status_code, "retry_after": write.headers.get("retry-after"),
              "body": write.json()})
        step("4 PostgreSQL unreachable: B /readyz", ready(b))

        redis.stop()
        step("5 PostgreSQL and Redis down: B's decisions for 3 s", watch(b, 3.0))

        set_database_reachable(db_url, True)
        redis.start()
        step("6 both back: seconds until B decides again",
             until(lambda: probe(b)[0] == 200, 30))
        step("6 both back: seconds until B is ready with the bus connected",
             until(lambda: (r := ready(b))["bus"] == "connected" and r["http_status"] == 200,
                   30))
        step("6 both back: propagation ms", rounds(pair, count, timeout, pause, jitter))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200, help="revocations per mode")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--no-redis", action="store_true",
                       help="only the store-poll mode (no redis-server is started)")
    modes.add_argument("--redis-only", action="store_true", help="only the Redis mode")
    modes.add_argument("--failure-drill", action="store_true",
                       help="instead: stop Redis, make the database unreachable, both, and "
                            "bring them back; report what B answers meanwhile "
                            "(--rounds per propagation step; 20 is enough)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds B may take to answer the expected decision")
    parser.add_argument("--pause-ms", type=float, default=1.0,
                        help="pause between two polls of B")
    parser.add_argument("--jitter-ms", type=float, default=300.0,
                        help="random pause (0..this) before each revocation, so that rounds "
                             "do not start in step with B's store poll")
    parser.add_argument("--redis-url", help="use this Redis (e.g. a cluster node) instead of "
                                            "starting one; a unique PDP_REDIS_PREFIX is used")
    parser.add_argument("--env", action="append", default=[], metavar="PDP_X=VALUE",
                        help="extra environment for the replicas (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    extra = parse_env(parser, args.env)
    if args.redis_url:
        if args.failure_drill or args.no_redis:
            parser.error("--redis-url is for the propagation rounds with Redis")
        extra.setdefault("PDP_REDIS_PREFIX", f"pdp-bench-{secrets.token_hex(4)}")
    raise_on_sigterm()
    print(describe(extra), file=sys.stderr)
    pause, jitter = args.pause_ms / 1000, args.jitter_ms / 1000
    workdir = Path(tempfile.mkdtemp(prefix="pdp-propagation-"))
    try:
        if args.failure_drill:
            steps = drill(workdir, args.rounds, args.timeout, pause, jitter, extra)
            if args.json:
                args.json.write_text(json.dumps(steps, indent=2))
            return
        plan = [False] if args.no_redis else [True] if args.redis_only else [True, False]
        results = []
        for redis in plan:
            print(f"{'with Redis' if redis else 'store poll only'}: {args.rounds} rounds …",
                  file=sys.stderr, flush=True)
            results.append(run_mode(redis, args.rounds, workdir, args.timeout, pause, jitter,
                                    extra, args.redis_url))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'mode':12} {'rounds':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}"
          f"   {'write p50':>9} {'write p99':>9}   (ms from PUT sent to deny on B)")
    for r in results:
        print(f"{r['mode']:12} {r['rounds']:6d} {r['p50']:8.1f} {r['p90']:8.1f} {r['p99']:8.1f}"
              f" {r['max']:8.1f}   {r['write_p50']:9.1f} {r['write_p99']:9.1f}")
    if len(results) == 2:
        fast, slow = results
        print(f"store poll / redis: p50 {slow['p50'] / fast['p50']:.1f}x, "
              f"p99 {slow['p99'] / fast['p99']:.1f}x")
    for r in results:
        if r["mode"] == "redis":
            print(f"target p99 < 100 ms with Redis: {'met' if r['p99'] < 100 else 'NOT met'}"
                  f" ({r['p99']:.1f} ms)")
    print("PostgreSQL connections open at the end (2 replicas): "
          + ", ".join(f"{r['mode']} {r['pg_connections']}" for r in results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Replicas for tests: redis-server processes of the test's own (killed and started again
empty), a PostgreSQL cluster of the test's own (stopped dead and started again), and
`pdp serve` replicas on one database and one Redis; waiting for what /readyz says."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support.pg import PG_HOST, pg_connect, pg_running
from tests.support.servers import Server, free_port, start_server, stop_server

# Replicas A and B poll the store this often: slower than the bus (so that a propagation
# faster than the poll is the bus's), well inside the bound (so that the poll alone,
# without Redis, still brings every write within it).
POLL = 0.5


class RedisServer:
    """A redis-server of the test's own on a fixed free port: kill it, start it again
    (empty: no persistence)."""

    def __init__(self, directory: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.exe = exe
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2,
                           socket_connect_timeout=2)

    def start(self) -> None:
        assert not self.running
        self.starts += 1
        log = self.directory / f"redis-{self.port}-{self.starts}.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.directory)],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited: {log.read_text()}")
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"redis-server did not answer on {self.port}: {log.read_text()}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def get(self, key: str) -> bytes | None:
        with self.client() as client:
            value = client.get(key)
        assert value is None or isinstance(value, bytes)
        return value


class OwnPostgres:
    """A PostgreSQL cluster of the test's own (initdb, trust auth) on a free port, so that
    it can be stopped dead and started again without disturbing anyone else."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                       key=lambda p: int(p.parent.parent.name)
                       if p.parent.parent.name.isdigit() else 0)
        if not found:
            pytest.fail("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.bin = found[-1].parent
        # Not under pytest's tmp (mode 0700, root's): the postgres user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="pdp-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.sockets.mkdir()
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            for path in (self.root, self.sockets):
                shutil.chown(path, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{PG_HOST}:{self.port}/pdp"

    def _run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, timeout=60, check=False)

    def init(self) -> None:
        done = self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres",
                         "-E", "UTF8", "--no-sync")
        if done.returncode != 0:
            pytest.fail(f"initdb failed: {done.stdout!r} {done.stderr!r}")
        self.start()
        with pg_connect("postgres", self.port) as conn:
            conn.execute("CREATE DATABASE pdp")

    def start(self) -> None:
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"),
                         "-w", "-t", "30", "-o",
                         f"-p {self.port} -k {self.sockets} -c listen_addresses={PG_HOST} "
                         "-c fsync=off", "start")
        if done.returncode != 0 or not pg_running("postgres", self.port):
            log = self.root / "postgres.log"
            pytest.fail(f"pg_ctl start failed: {done.stdout!r} {done.stderr!r} "
                        f"{log.read_text() if log.exists() else ''}")

    def stop(self) -> None:
        done = self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        if done.returncode != 0:
            pytest.fail(f"pg_ctl stop failed: {done.stdout!r} {done.stderr!r}")

    @property
    def running(self) -> bool:
        return pg_running("postgres", self.port)

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Replicas:
    """Servers on the module's database and Redis; all stopped when the module ends."""

    database_url: str
    redis: RedisServer
    tmp: pytest.TempPathFactory
    servers: list[Server] = field(default_factory=list)

    def start(self, name: str, *, env: dict[str, str] | None = None,
              args: tuple[str, ...] = ()) -> Server:
        server = start_server(self.tmp.mktemp(name), env={
            "PDP_DATABASE_URL": self.database_url,
            "PDP_REDIS_URL": self.redis.url,
            "PDP_POLL_INTERVAL_SECONDS": str(POLL),
            # Snapshots only when a replica starts and finds none (not periodically during
            # the module), so that which replica loads from which snapshot is known.
            "PDP_SNAPSHOT_INTERVAL_SECONDS": "600",
            **(env or {})}, args=args)
        self.servers.append(server)
        return server

    @property
    def a(self) -> Server:
        return self.servers[0]

    @property
    def b(self) -> Server:
        return self.servers[1]

    def stop(self, server: Server) -> None:
        stop_server(server)

    def stop_all(self) -> None:
        for server in self.servers:
            stop_server(server)


def readyz(server: Server) -> tuple[int, dict[str, Any]]:
    response = httpx.get(server.url + "/readyz", timeout=10)
    body: dict[str, Any] = response.json()
    return response.status_code, body


def wait_for(what: str, check: Callable[[], bool], seconds: float) -> float:
    """Seconds until `check()` holds; fail after `seconds`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            pytest.fail(f"not within {seconds} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def bus_state(server: Server) -> Callable[[], str]:
    return lambda: str(readyz(server)[1]["bus"])


def in_state(current: Callable[[], str], state: str) -> Callable[[], bool]:
    return lambda: current() == state


def wait_bus(servers: list[Server], state: str, seconds: float = 5.0) -> float:
    """Seconds until every server's /readyz shows the bus in `state`."""
    started = time.monotonic()
    for server in servers:
        wait_for(f"{server.url} bus {state}", in_state(bus_state(server), state), seconds)
    return time.monotonic() - started

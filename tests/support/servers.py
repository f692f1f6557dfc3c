"""Real `pdp serve` processes on free ports, each with its own store: for the tests whose
point is a process boundary (kill -9, restart, --workers, replicas, uvicorn's limits, the
CLI, the browser, the README's examples)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]

# One token per role, and the admin.
KEYS: dict[str, list[str]] = {
    "t-pep": ["pep"],
    "t-facts": ["facts_writer"],
    "t-grants": ["grant_admin"],
    "t-auditor": ["auditor"],
    "t-policy": ["policy_admin"],
    "t-admin": ["admin"],
    "t-both": ["facts_writer", "grant_admin"],
}

# How often a test server polls its store: often, so that tests wait little.
POLL_INTERVAL_SECONDS = "0.2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def store_file(self) -> Path:
        """The SQLite store the process was started on (unless PDP_DATABASE_URL said else)."""
        return self.log.parent / "facts.sqlite3"

    def client(self, token: str | None = "t-admin", **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """One GET without a token (health, metrics, discovery, the OpenAPI document)."""
        with self.client(None) as client:
            return client.get(path, **kwargs)


def start_server(tmp: Path, *, env: Mapping[str, str | None] | None = None,
                 args: tuple[str, ...] = ()) -> Server:
    """`pdp serve` on a free port; `env` adds to the environment (None: unset)."""
    port = free_port()
    log = tmp / f"server-{port}.log"
    environment = {
        **os.environ,
        "PDP_DATABASE_URL": f"sqlite:///{tmp / 'facts.sqlite3'}",
        "PDP_API_KEYS": json.dumps(KEYS),
        "PDP_POLL_INTERVAL_SECONDS": POLL_INTERVAL_SECONDS,
        # the register of rights before the service is open for rights approved before now
        "PDP_REGISTER_BEFORE": datetime.now(UTC).isoformat(),
        **(env or {}),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pdp", "serve", "--port", str(port), *args],
            cwd=tmp, env={k: v for k, v in environment.items() if v is not None},
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return Server(url, process, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"server did not become ready: {log.read_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()

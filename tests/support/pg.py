"""The shared PostgreSQL of the test machine (127.0.0.1:5432, trust auth): connect, start
it if it is down, and make a fresh database for a test module or session."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_ADMIN_DB = "test"


def pg_connect(dbname: str, port: int = PG_PORT) -> psycopg.Connection[Any]:
    return psycopg.connect(host=PG_HOST, port=port, user="postgres", dbname=dbname,
                           autocommit=True, connect_timeout=3)


def pg_running(dbname: str = PG_ADMIN_DB, port: int = PG_PORT) -> bool:
    try:
        with pg_connect(dbname, port):
            return True
    except psycopg.OperationalError:
        return False


def ensure_pg() -> None:
    """Start the machine's cluster if it does not answer; fail (never skip) if it can't."""
    if pg_running():
        return
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions:
        pytest.fail("PostgreSQL is not installed (no /etc/postgresql): .ci/run installs it")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main",
                    "start"], check=False, capture_output=True, timeout=60)
    deadline = time.monotonic() + 30
    while not pg_running():
        if time.monotonic() > deadline:
            pytest.fail(f"PostgreSQL did not come up on {PG_HOST}:{PG_PORT}")
        time.sleep(0.5)


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new database on the shared cluster, dropped afterwards; its name."""
    ensure_pg()
    name = f"{prefix}_{secrets.token_hex(6)}"
    with pg_connect(PG_ADMIN_DB) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with pg_connect(PG_ADMIN_DB) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))

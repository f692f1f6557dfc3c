"""Metrics stay correct with several worker processes: a scrape counts every worker.
Real processes: `pdp serve --workers`."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.support.servers import start_server, stop_server
from tests.support.world import World


def total(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


def test_decisions_of_every_worker_are_counted(tmp_path: Path) -> None:
    server = start_server(tmp_path, args=("--workers", "2"))
    try:
        with server.client("t-admin") as admin:
            world = World(admin).build()
        time.sleep(0.6)  # the other worker picks the writes up from the store
        sent = 60
        for _ in range(sent):
            # A new connection each time, so that both workers answer.
            with server.client("t-pep") as pep:
                response = pep.post("/access/v1/evaluation", json=world.request())
                assert response.status_code == 200, response.text
        scrapes = [httpx.get(server.url + "/metrics", timeout=10).text for _ in range(6)]
        for text in scrapes:
            assert total(text, "pdp_decisions_total{") == sent
            assert total(text, "pdp_audit_records_total{") >= sent
            assert 'pdp_policy_info{version="sha256:' in text
            assert "pdp_decision_duration_seconds_count" in text
    finally:
        stop_server(server)

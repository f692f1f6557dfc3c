"""Webhooks: a receiver that is down for a while gets every event afterwards, in order,
signed; one that fails answers gets them again until it acknowledges."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from pdp.events import verify
from tests.conftest import Server, World, free_port, start_server, stop_server

SECRET = "a-webhook-secret-of-some-length"


class Receiver:
    """A real HTTP server that records signed deliveries; `failing` answers 500."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.failing = 0  # answer 500 to this many more requests
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.failing > 0:
                    receiver.failing -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                if not verify(SECRET, self.headers["X-PDP-Timestamp"], body,
                              self.headers["X-PDP-Signature"]):
                    receiver.bad_signatures += 1
                event = json.loads(body)
                assert str(event["id"]) == self.headers["X-PDP-Event-Id"]
                receiver.received.append(event)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ids(self) -> list[int]:
        """Distinct event ids in the order first received (delivery is at least once)."""
        seen: list[int] = []
        for event in self.received:
            if event["id"] not in seen:
                seen.append(event["id"])
        return seen


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver(free_port())
    yield running
    running.stop()


@pytest.fixture
def hooked(tmp_path: Path, receiver: Receiver) -> Iterator[Server]:
    hooks = [{"name": "keha", "url": f"http://127.0.0.1:{receiver.port}/hook",
              "secret": SECRET}]
    server = start_server(tmp_path, env={"PDP_WEBHOOKS": json.dumps(hooks)})
    yield server
    stop_server(server)


def outbox(client: httpx.Client) -> list[int]:
    events = client.get("/v1/events", params={"limit": 1000}).json()["events"]
    return [event["id"] for event in events]


def wait_for(condition: Any, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def make_changes(admin: httpx.Client) -> None:
    """Five events: agreement, user and grant written, the grant suspended and restored."""
    world = World(admin).build()
    now = datetime.now(UTC)
    world.put("grants", world.grant, world.grant_data(
        valid_from=(now - timedelta(days=1)).isoformat(),
        valid_until=(now + timedelta(days=300)).isoformat()))
    for step, body in (("suspend", {"reason": "suspected misuse"}),
                       ("restore", {"justification": "cleared"})):
        response = admin.post(f"/v1/grants/{world.grant}/{step}", json=body)
        assert response.status_code == 200, response.text


def test_receiver_down_for_a_while_gets_everything_in_order(
        hooked: Server, receiver: Receiver) -> None:
    with hooked.client("t-admin") as admin:
        make_changes(admin)
        time.sleep(1.5)  # the dispatcher retries against a closed port meanwhile
        assert receiver.received == []
        receiver.start()
        make_changes(admin)
        expected = outbox(admin)
        assert len(expected) == 12
        wait_for(lambda: receiver.ids() == expected)
    assert receiver.bad_signatures == 0
    assert [e["id"] for e in receiver.received] == sorted(e["id"] for e in receiver.received)
    types = [e["type"] for e in receiver.received]
    assert "grant.suspended" in types and "grant.restored" in types


def test_failed_answers_are_retried_until_acknowledged(
        hooked: Server, receiver: Receiver) -> None:
    receiver.failing = 3
    receiver.start()
    with hooked.client("t-admin") as admin:
        make_changes(admin)
        expected = outbox(admin)
        wait_for(lambda: receiver.ids() == expected)
    assert receiver.failing == 0
    assert receiver.bad_signatures == 0


def test_signature_detects_a_changed_body() -> None:
    from pdp.events import signature

    body = b'{"id": 1}'
    signed = signature(SECRET, "1700000000", body)
    assert verify(SECRET, "1700000000", body, signed)
    assert not verify(SECRET, "1700000000", b'{"id": 2}', signed)
    assert not verify(SECRET, "1700000001", body, signed)
    assert not verify("another-secret-of-length", "1700000000", body, signed)

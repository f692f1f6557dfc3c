"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that checks every
delivery as the Standard Webhooks spec says (written from the spec, not with
pdp.rights.events), and the secrets the tests configure."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def whsec(raw: bytes) -> str:
    return "whsec_" + base64.b64encode(raw).decode()


SECRET = whsec(b"a webhook secret, 32 bytes long!")
NEW_SECRET = whsec(b"the next webhook secret: 32 bytes")
# Test receivers listen on 127.0.0.1: a loopback address, refused unless allowed.
ALLOW_LOOPBACK = json.dumps(["127.0.0.1/32"])
TOLERANCE = 5 * 60


def spec_verify(secret: str, headers: Any, body: bytes, now: float) -> str | None:
    """A receiver's check written from the Standard Webhooks spec alone (not with
    pdp.rights.events): None if the request is authentic and fresh, else why not."""
    msg_id, stamp = headers.get("webhook-id"), headers.get("webhook-timestamp")
    if not msg_id or not stamp or not stamp.isdigit():
        return "missing webhook-id or webhook-timestamp"
    if abs(now - int(stamp)) > TOLERANCE:
        return "timestamp outside the tolerance"
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body,
                                         hashlib.sha256).digest()).decode()
    for presented in headers.get("webhook-signature", "").split(" "):
        version, _, value = presented.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return None
    return "no signature matches"


class Receiver:
    """A real HTTP server that records deliveries, verified per the spec with every one
    of `secrets`; `failing` answers 500. Like a careful receiver it drops an id it has
    processed (a replay or an at-least-once repeat)."""

    def __init__(self, port: int, secrets: tuple[str, ...] = (SECRET,)) -> None:
        self.port = port
        self.secrets = secrets
        self.received: list[dict[str, Any]] = []
        self.hosts: list[str] = []
        self.bad_signatures = 0
        self.problems: list[str] = []
        self.seen: set[str] = set()
        self.repeats = 0
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
                problems = [p for p in (spec_verify(secret, self.headers, body, time.time())
                                        for secret in receiver.secrets) if p]
                if problems:
                    receiver.bad_signatures += 1
                    receiver.problems += problems
                event = json.loads(body)
                assert str(event["id"]) == self.headers["webhook-id"]
                receiver.hosts.append(self.headers["Host"])
                if self.headers["webhook-id"] in receiver.seen:
                    receiver.repeats += 1
                else:
                    receiver.seen.add(self.headers["webhook-id"])
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

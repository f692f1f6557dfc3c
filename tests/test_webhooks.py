"""Webhooks: a receiver that is down for a while gets every event afterwards, in order,
signed by Standard Webhooks; one that fails answers gets them again until it
acknowledges; deliveries go only to public or allowed addresses, checked when configured
and again, on what the name resolves to, at every delivery. Real `pdp serve` processes
delivering to a real receiver (tests/support/webhooks.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from pdp.rights.egress import AllowList, EgressRefused, checked_addresses, refusal
from pdp.rights.events import signature, verify, webhook_headers
from pdp.rights.webhooks import Webhook, WebhookDispatcher
from pdp.service.settings import Settings
from pdp.store.protocols import Event
from pdp.store.sql import open_store
from tests.support.servers import Server, free_port, start_server, stop_server
from tests.support.webhooks import (
    ALLOW_LOOPBACK,
    NEW_SECRET,
    SECRET,
    Receiver,
    spec_verify,
    whsec,
)
from tests.support.world import World


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    # the receiver checks the signature of the old secret and of the new: a rotation
    running = Receiver(free_port(), secrets=(SECRET, NEW_SECRET))
    yield running
    running.stop()


@pytest.fixture
def hooked(tmp_path: Path, receiver: Receiver) -> Iterator[Server]:
    hooks = [{"name": "keha", "url": f"http://127.0.0.1:{receiver.port}/hook",
              "secret": NEW_SECRET, "previous_secrets": [SECRET]}]
    server = start_server(tmp_path, env={"PDP_WEBHOOKS": json.dumps(hooks),
                                         "PDP_WEBHOOK_ALLOW_HOSTS": ALLOW_LOOPBACK})
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
    """Five events: agreement and user written, the grant imported (the register),
    suspended and restored."""
    world = World(admin, grant=False).build()
    now = datetime.now(UTC)
    world.import_grant(world.grant, world.grant_data(
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
        assert len(expected) == 10
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


def test_signature_is_standard_webhooks_and_verification_has_a_tolerance() -> None:
    body = b'{"id": 1}'
    now = 1_700_000_000
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = "v1," + base64.b64encode(
        hmac.new(key, b"1.1700000000." + body, hashlib.sha256).digest()).decode()
    assert signature(SECRET, "1", now, body) == expected
    headers = webhook_headers([NEW_SECRET, SECRET], "1", now, body)
    assert headers["webhook-id"] == "1" and headers["webhook-timestamp"] == str(now)
    assert headers["webhook-signature"].split(" ") == [
        signature(NEW_SECRET, "1", now, body), expected]
    for secret in (SECRET, NEW_SECRET):  # either side of a rotation verifies
        assert verify(secret, headers, body, now=now)
        assert spec_verify(secret, headers, body, now) is None
        assert verify(secret, headers, body, now=now + 299)
        assert not verify(secret, headers, body, now=now + 301)  # too old: a replay
        assert not verify(secret, headers, body, now=now - 301)
    assert not verify(SECRET, headers, b'{"id": 2}', now=now)
    assert not verify(SECRET, {**headers, "webhook-id": "2"}, body, now=now)
    assert not verify(whsec(b"x" * 32), headers, body, now=now)


@pytest.mark.parametrize("secret", [
    "a-webhook-secret-of-some-length",  # no whsec_ prefix
    "whsec_not base64!", whsec(b"too short"), whsec(b"x" * 65)])
def test_a_secret_must_be_whsec_and_24_to_64_bytes(secret: str) -> None:
    with pytest.raises(ValueError):
        Webhook(name="keha", url="https://hooks.example.org/pdp", secret=secret)
    with pytest.raises(ValueError):
        Webhook(name="keha", url="https://hooks.example.org/pdp", secret=SECRET,
                previous_secrets=[secret])


REFUSED_URLS = [
    "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
    "http://169.254.1.1/", "http://[fe80::1]/", "http://127.0.0.1:9/hook",
    "http://127.1/", "http://2130706433/", "http://0x7f.1/", "http://localhost:9/",
    "http://a.localhost/", "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/",
    "http://[::]/", "http://10.1.2.3/", "http://172.16.0.1/", "http://192.168.1.1/",
    "http://100.64.0.1/", "http://[fd12::1]/", "http://224.0.0.1/",
    "https://user:pw@hooks.example.org/",
    # the metadata address and other non-public IPv4 inside IPv6 forms; the IPv4
    # addresses Python 3.11 counts as global though IANA does not
    "http://[2002:a9fe:a9fe::]/", "http://[2002:a9fe:a9fe:1::1]/", "http://[2002:7f00:1::]/",
    "http://[2002:c0a8:101::]/", "http://[64:ff9b::a9fe:a9fe]/", "http://[64:ff9b::a00:1]/",
    "http://[64:ff9b:1::808:808]/", "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a00:1]/", "http://[2001::1]/", "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
    "http://192.0.0.192/", "http://192.0.0.8/", "http://192.88.99.1/", "http://[3fff::1]/"]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_a_webhook_to_an_internal_address_is_refused_when_configured(url: str) -> None:
    hook = {"name": "evil", "url": url, "secret": SECRET}
    with pytest.raises(ValueError) as raised:
        Settings(webhooks=[hook])
    assert "PDP_WEBHOOKS evil" in str(raised.value)


# Globally routable, and so is any IPv4 address they hold.
PUBLIC_ADDRESSES = ["8.8.8.8", "2606:4700::1111", "2002:808:808::1", "64:ff9b::808:808",
                    "::ffff:8.8.8.8"]
# The metadata address and the rest that counted as public before the review.
EMBEDDED = {"2002:a9fe:a9fe::": "a cloud metadata address",
            "64:ff9b::a9fe:a9fe": "a cloud metadata address",
            "2002:c000:c0::": "a cloud metadata address",
            "192.0.0.192": "a cloud metadata address",
            "2002:a00:1::": "a private address", "2002:7f00:1::": "a loopback address",
            "2001::1": "a Teredo address", "192.88.99.1": "not a public address"}


def test_an_address_is_public_only_with_every_ipv4_it_holds() -> None:
    import ipaddress

    for text in PUBLIC_ADDRESSES:
        assert refusal(ipaddress.ip_address(text)) is None, text
    for text, why in EMBEDDED.items():
        found = refusal(ipaddress.ip_address(text))
        assert found is not None and found.startswith(why), (text, found)


def test_a_name_resolving_to_an_embedded_metadata_address_is_refused_at_delivery() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["8.8.8.8", "2002:a9fe:a9fe::"]

    with pytest.raises(EgressRefused, match="metadata"):
        asyncio.run(checked_addresses("hooks.example.org", 443, AllowList(), resolve))
    # Allowing the IPv4 network does not allow the IPv6 forms that hold it.
    with pytest.raises(EgressRefused, match="metadata"):
        asyncio.run(checked_addresses("hooks.example.org", 443,
                                      AllowList.parse(["169.254.0.0/16"]), resolve))


def test_an_allowed_network_or_host_may_be_a_webhook() -> None:
    hooks = [{"name": "local", "url": "http://127.0.0.1:9/hook", "secret": SECRET},
             {"name": "lan", "url": "http://10.20.0.7/hook", "secret": SECRET},
             {"name": "named", "url": "http://hooks.internal/x", "secret": SECRET},
             {"name": "public", "url": "https://hooks.example.org/pdp", "secret": SECRET}]
    settings = Settings(webhooks=hooks, webhook_allow_hosts=[
        "127.0.0.1/32", "10.20.0.0/16", "hooks.internal"])
    assert [h.name for h in settings.webhooks] == ["local", "lan", "named", "public"]
    with pytest.raises(ValueError):
        Settings(webhook_allow_hosts=["not a host!"])


def test_pdp_serve_refuses_a_metadata_webhook(tmp_path: Path) -> None:
    hooks = [{"name": "evil", "url": "http://169.254.169.254/latest/meta-data/",
              "secret": SECRET}]
    done = subprocess.run([sys.executable, "-m", "pdp", "serve", "--demo", "--port", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PDP_WEBHOOKS": json.dumps(hooks)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "a cloud metadata address" in done.stderr


def _dispatch(tmp: Path, url: str, allow: list[str], addresses: list[str],
              seconds: float) -> list[str]:
    """Run a dispatcher for `seconds` over a real store holding two events, with a
    resolver that answers `addresses` for every name; return the names it was asked."""
    store = open_store(f"sqlite:///{tmp / 'outbox.sqlite3'}")
    if not store.events_after(0, 1):
        store.apply([], [Event("user.written", "user", f"u{n}", "749", "test", None, {})
                         for n in range(2)])
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return addresses

    dispatcher = WebhookDispatcher(
        store, [Webhook(name="keha", url=url, secret=SECRET)], poll_seconds=0.1,
        first_backoff=0.1, max_backoff=0.2, allow=AllowList.parse(allow), resolve=resolve)

    async def run() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(dispatcher.run(), seconds)

    try:
        asyncio.run(run())
    finally:
        store.close()
    return asked


def test_the_resolved_address_is_checked_at_every_delivery(tmp_path: Path) -> None:
    """A name passes when configured; what it resolves to at delivery is checked then
    (DNS rebinding: public when looked at, internal a moment later), and the request
    goes to the very address that was checked, with the name in Host."""
    receiver = Receiver(free_port())
    receiver.start()
    try:
        url = f"http://hooks.example.org:{receiver.port}/hook"
        Settings(webhooks=[{"name": "keha", "url": url, "secret": SECRET}])  # passes
        for addresses, allow in ((["127.0.0.1"], []),
                                 (["127.0.0.1", "::1"], ["127.0.0.1/32"])):
            asked = _dispatch(tmp_path, url, allow, addresses, 1.0)
            assert len(asked) >= 2 and set(asked) == {"hooks.example.org"}  # every time
            assert receiver.received == []
        _dispatch(tmp_path, url, ["127.0.0.1/32"], ["127.0.0.1"], 1.5)
    finally:
        receiver.stop()
    assert receiver.ids() == [1, 2]
    assert set(receiver.hosts) == {f"hooks.example.org:{receiver.port}"}
    assert receiver.bad_signatures == 0, receiver.problems


def test_a_redirect_is_not_followed(tmp_path: Path) -> None:
    """A receiver (or whoever took its name) answering 307 to a metadata address gets the
    event again later; the redirect is never followed."""
    hits: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits.append(self.path)
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{port}/followed")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _dispatch(tmp_path, f"http://127.0.0.1:{port}/hook", ["127.0.0.1/32"], [], 1.0)
    finally:
        server.shutdown()
        server.server_close()
    assert hits and set(hits) == {"/hook"}

"""Misuse detection: each anomaly rule from decisions to a case and a delivered
notification; cases resolved both ways; metrics after known traffic."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import KEYS, Server, World, decide, start_server, stop_server
from tests.test_webhooks import SECRET, Receiver

RULES = """
timezone: Europe/Helsinki
suspend_rights_on_misuse: true
rules:
  own_record: {description: own record, reasons: [own_record], threshold: 1,
               window_minutes: 60}
  no_relationship: {description: no relationship, reasons: [no_active_relationship],
                    threshold: 2, window_minutes: 60}
  other_municipality: {description: other municipality,
                       reasons: [client_not_own_municipality, client_outside_area],
                       threshold: 2, window_minutes: 60}
  after_right_ended: {description: after the right ended, reasons: [no_active_grant],
                      had_a_right: true, threshold: 2, window_minutes: 60}
  protection_order: {description: protection order, protection_order: true, threshold: 1,
                     window_minutes: 60}
  bulk_browsing: {description: bulk, distinct_clients: true, threshold: 3,
                  window_minutes: 10}
  unusual_hours: {description: unusual hours, local_hours: {from: %d, until: %d},
                  threshold: 1, window_minutes: 60}
"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    from tests.conftest import free_port

    running = Receiver(free_port())
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("monitored")
    # "Unusual hours": the hour that is now in Helsinki, so the rule can be driven now.
    from zoneinfo import ZoneInfo

    hour = datetime.now(ZoneInfo("Europe/Helsinki")).hour
    rules = tmp / "monitoring.yaml"
    rules.write_text(RULES % (hour, (hour + 1) % 24 or 24))
    hooks = [{"name": "contacts", "url": f"http://127.0.0.1:{receiver.port}/hook",
              "secret": SECRET}]
    keys = {**KEYS, "t-m749": ["municipality_admin:749"], "t-m844": ["municipality_admin:844"]}
    server = start_server(tmp, env={"PDP_MONITORING_RULES": str(rules),
                                    "PDP_WEBHOOKS": json.dumps(hooks),
                                    "PDP_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1/32"]',
                                    "PDP_API_KEYS": json.dumps(keys)})
    yield server
    stop_server(server)


@pytest.fixture
def admin(monitored: Server) -> Iterator[httpx.Client]:
    with monitored.client("t-admin") as client:
        yield client


@pytest.fixture
def pep(monitored: Server) -> Iterator[httpx.Client]:
    with monitored.client("t-pep") as client:
        yield client


def cases_of(admin: httpx.Client, user: str, rule: str) -> list[dict[str, Any]]:
    response = admin.get("/v1/monitoring/cases", params={"user": user, "rule": rule})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["cases"]
    return found


def wait_case(admin: httpx.Client, user: str, rule: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = cases_of(admin, user, rule)
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no {rule} case for {user}")


def notified(receiver: Receiver, case_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for event in receiver.received:
            if event["type"] == "case.opened" and event["subject"]["id"] == case_id:
                return event
        time.sleep(0.05)
    raise AssertionError(f"no case.opened notification for {case_id}")


def check_case(admin: httpx.Client, receiver: Receiver, world: World, rule: str) -> dict[str, Any]:
    case = wait_case(admin, world.user, rule)
    assert case["status"] == "open" and case["municipality"] == world.municipality
    event = notified(receiver, case["id"])
    assert event["municipality"] == world.municipality
    assert event["data"]["case"]["rule"] == rule
    assert receiver.bad_signatures == 0
    return case


def test_own_record(admin: httpx.Client, pep: httpx.Client, receiver: Receiver) -> None:
    world = World(admin).build()
    world.put("users", world.user, {"municipality": "749", "display_name": "X",
                                    "tasks": ["coaching"], "status": "active",
                                    "client_id": world.client})
    assert decide(pep, world.request())["context"]["reason"] == "own_record"
    check_case(admin, receiver, world, "own_record")


def test_repeated_no_relationship(admin: httpx.Client, pep: httpx.Client,
                                  receiver: Receiver) -> None:
    world = World(admin).build()
    assert admin.delete(f"/v1/relationships/{world.relationship}").status_code == 200
    assert decide(pep, world.request())["context"]["reason"] == "no_active_relationship"
    time.sleep(0.3)
    assert cases_of(admin, world.user, "no_relationship") == []  # below the threshold
    decide(pep, world.request())
    check_case(admin, receiver, world, "no_relationship")


def test_repeated_other_municipality(admin: httpx.Client, pep: httpx.Client,
                                     receiver: Receiver) -> None:
    world = World(admin).build()
    world.put("clients", world.client, {"home_municipality": "297"})
    assert decide(pep, world.request())["context"]["reason"] == "client_not_own_municipality"
    world.put("clients", world.client, {"home_municipality": "167"})
    assert decide(pep, world.request())["context"]["reason"] == "client_outside_area"
    check_case(admin, receiver, world, "other_municipality")


def test_attempts_after_the_right_ended(admin: httpx.Client, pep: httpx.Client,
                                        receiver: Receiver) -> None:
    world = World(admin).build()
    world.put("grants", world.grant, world.grant_data(status="revoked"))
    for _ in range(2):
        assert decide(pep, world.request())["context"]["reason"] == "no_active_grant"
    check_case(admin, receiver, world, "after_right_ended")


def test_protection_order(admin: httpx.Client, pep: httpx.Client, receiver: Receiver) -> None:
    world = World(admin).build()
    world.put("clients", world.client, {"home_municipality": "749", "protection_order": True})
    assert decide(pep, world.request())["decision"] is True  # plans: allowed, still watched
    check_case(admin, receiver, world, "protection_order")


def test_bulk_browsing(admin: httpx.Client, pep: httpx.Client, receiver: Receiver) -> None:
    world = World(admin).build()
    for n in range(3):
        body = world.request()
        body["resource"]["id"] = f"{world.client}-other-{n}"
        decide(pep, body)
    check_case(admin, receiver, world, "bulk_browsing")


def test_unusual_hours(admin: httpx.Client, pep: httpx.Client, receiver: Receiver) -> None:
    world = World(admin).build()
    decide(pep, world.request())
    check_case(admin, receiver, world, "unusual_hours")


def _grant_with_window(world: World) -> None:
    now = datetime.now(UTC)
    world.put("grants", world.grant, world.grant_data(
        valid_from=(now - timedelta(days=1)).isoformat(),
        valid_until=(now + timedelta(days=100)).isoformat()))


def test_resolved_as_justified_keeps_the_rights(admin: httpx.Client, pep: httpx.Client,
                                                monitored: Server) -> None:
    world = World(admin).build()
    _grant_with_window(world)
    decide(pep, world.request())
    case = wait_case(admin, world.user, "unusual_hours")
    with monitored.client("t-grants") as authority:
        done = authority.post(f"/v1/monitoring/cases/{case['id']}/resolve",
                              json={"outcome": "justified", "note": "evening shift"})
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "resolved" and done.json()["suspended_grants"] == []
        again = authority.post(f"/v1/monitoring/cases/{case['id']}/resolve",
                               json={"outcome": "misuse", "note": "second thoughts"})
        assert again.status_code == 409
    assert admin.get(f"/v1/grants/{world.grant}").json()["state"] == "active"


def test_resolved_as_misuse_suspends_the_rights(admin: httpx.Client, pep: httpx.Client,
                                                monitored: Server, receiver: Receiver) -> None:
    world = World(admin).build()
    _grant_with_window(world)
    decide(pep, world.request())
    case = wait_case(admin, world.user, "unusual_hours")
    with monitored.client("t-m844") as other:
        refused = other.post(f"/v1/monitoring/cases/{case['id']}/resolve",
                             json={"outcome": "misuse", "note": "not ours"})
        assert refused.status_code == 404
    with monitored.client("t-m749") as municipality:
        done = municipality.post(f"/v1/monitoring/cases/{case['id']}/resolve",
                                 json={"outcome": "misuse", "note": "browsed without cause"})
        assert done.status_code == 200, done.text
        assert done.json()["suspended_grants"] == [world.grant]
    assert admin.get(f"/v1/grants/{world.grant}").json()["state"] == "suspended"
    assert decide(pep, world.request())["context"]["reason"] == "no_active_grant"
    deadline = time.monotonic() + 10
    while not any(e["type"] == "case.resolved" and e["subject"]["id"] == case["id"]
                  for e in receiver.received):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_municipality_admin_sees_only_its_own(monitored: Server, admin: httpx.Client,
                                              pep: httpx.Client) -> None:
    world = World(admin).build()
    decide(pep, world.request())
    wait_case(admin, world.user, "unusual_hours")
    with monitored.client("t-m844") as other:
        assert other.get("/v1/monitoring/cases", params={"user": world.user}).json() == {
            "cases": []}
        assert other.get("/v1/monitoring/cases",
                         params={"municipality": "749"}).status_code == 404
    with monitored.client("t-m749") as own:
        found = own.get("/v1/monitoring/cases", params={"user": world.user}).json()["cases"]
        assert found and all(c["municipality"] == "749" for c in found)


def test_metrics_after_known_traffic(monitored: Server, admin: httpx.Client,
                                     pep: httpx.Client) -> None:
    def sample(text: str, name: str) -> float:
        for line in text.splitlines():
            metric, _, value = line.rpartition(" ")
            if metric == name:
                return float(value)
        return 0.0

    before = httpx.get(monitored.url + "/metrics").text
    world = World(admin).build()
    for _ in range(3):
        decide(pep, world.request(category="benefits"))
    wait_case(admin, world.user, "unusual_hours")
    after = httpx.get(monitored.url + "/metrics").text
    key = ('pdp_decisions_total{decision="false",purpose="coaching",'
           'reason="category_not_necessary"}')
    assert sample(after, key) - sample(before, key) == 3
    opened = 'pdp_monitoring_cases_opened_total{rule="unusual_hours"}'
    assert sample(after, opened) - sample(before, opened) == 1
    open_now = len(admin.get("/v1/monitoring/cases", params={"status": "open"}).json()["cases"])
    assert sample(after, "pdp_monitoring_cases_open") == open_now


def test_random_sample_of_allowed_accesses(monitored: Server, admin: httpx.Client,
                                           pep: httpx.Client) -> None:
    world = World(admin, municipality="844").build()
    allowed = {decide(pep, world.request())["context"]["decision_id"] for _ in range(6)}
    decide(pep, world.request(category="benefits"))  # a deny: never sampled
    with monitored.client("t-m844") as supervisor:
        missing = supervisor.get("/v1/monitoring/samples", params={"municipality": "844"})
        assert missing.status_code == 400  # a justification is required
        drawn = supervisor.get("/v1/monitoring/samples", params={
            "municipality": "844", "n": 4, "justification": "quarterly check"})
        assert drawn.status_code == 200, drawn.text
        samples = drawn.json()["samples"]
        assert len(samples) == 4
        assert all(s["decision"] is True and s["user_municipality"] == "844" for s in samples)
        assert {s["record_id"] for s in samples} <= allowed | {
            s["record_id"] for s in samples if s["user_id"] != world.user}
        everything = supervisor.get("/v1/monitoring/samples", params={
            "municipality": "844", "n": 500, "justification": "all of them"}).json()["samples"]
        assert allowed <= {s["record_id"] for s in everything}
        assert supervisor.get("/v1/monitoring/samples", params={
            "municipality": "749", "justification": "not ours"}).status_code == 404
    reads = admin.get("/v1/audit/decisions", params={
        "record_type": "audit_read", "justification": "check", "limit": 1000}).json()["records"]
    assert any(r["details"]["read"] == "sample"
               and r["details"]["justification"] == "quarterly check" for r in reads)


def test_bulk_window_counts_distinct_clients_and_forgets_old_ones() -> None:
    """Unit level: the window keeps distinct clients in constant time per decision."""
    from pdp.audit import AuditRecord
    from pdp.factindex import FactIndex
    from pdp.monitoring import Detector, MonitoringConfig

    config = MonitoringConfig.model_validate({"rules": {"bulk": {
        "description": "bulk", "distinct_clients": True, "threshold": 3,
        "window_minutes": 1}}})
    detector = Detector(config, FactIndex())
    minute = 60_000_000

    def seen(at: int, client: str) -> list[str]:
        record = AuditRecord("decision", f"r{at}", at, user_id="u", user_municipality="749",
                             client_id=client, decision=True, reason="allowed")
        return [hit.rule for hit in detector.observe([record])]

    assert seen(0, "a") == [] and seen(1, "a") == [] and seen(2, "b") == []
    assert seen(3, "b") == []  # still two distinct clients however often they are opened
    assert seen(minute + 3, "c") == []  # a and b (at 0-3) have left the window
    assert seen(minute + 4, "d") == []
    assert seen(minute + 5, "e") == ["bulk"]

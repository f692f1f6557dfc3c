"""Misuse detection: each anomaly rule from decisions to a case and a delivered
notification; cases resolved both ways; metrics after known traffic. In-process: the app
(tests/support/asgi.py), delivering to a real receiver (tests/support/webhooks.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.asgi import InProcess, start_app, stop_app
from tests.support.servers import KEYS
from tests.support.webhooks import SECRET, Receiver
from tests.support.world import World, decide

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
    from tests.support.servers import free_port

    running = Receiver(free_port())
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def receiver_749(receiver: Receiver) -> Iterator[Receiver]:
    """The webhook of Siilinjärvi's (749) contact people: its municipality's events only."""
    from tests.support.servers import free_port

    running = Receiver(free_port())
    running.start()
    yield running
    running.stop()


# Named keys: who resolved, commented or opened a case is recorded by name.
AUTHORITY, AUDITOR, SUPERVISOR_749 = "authority", "area-auditor", "supervisor-749"


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver,
              receiver_749: Receiver) -> Iterator[InProcess]:
    tmp = tmp_path_factory.mktemp("monitored")
    # "Unusual hours": the hour that is now in Helsinki, so the rule can be driven now.
    from zoneinfo import ZoneInfo

    hour = datetime.now(ZoneInfo("Europe/Helsinki")).hour
    rules = tmp / "monitoring.yaml"
    rules.write_text(RULES % (hour, (hour + 1) % 24 or 24))
    hooks = [{"name": "contacts", "url": f"http://127.0.0.1:{receiver.port}/hook",
              "secret": SECRET},
             {"name": "contacts-749", "url": f"http://127.0.0.1:{receiver_749.port}/hook",
              "secret": SECRET, "municipality": "749"}]
    keys = {**KEYS,
            "t-grants": {"name": AUTHORITY, "roles": ["grant_admin"]},
            "t-auditor": {"name": AUDITOR, "roles": ["auditor"]},
            "t-m749": {"name": SUPERVISOR_749, "roles": ["municipality_admin:749"]},
            "t-m844": ["municipality_admin:844"]}
    server = start_app(tmp, env={"PDP_MONITORING_RULES": str(rules),
                                    "PDP_WEBHOOKS": json.dumps(hooks),
                                    "PDP_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1/32"]',
                                    "PDP_API_KEYS": json.dumps(keys)})
    yield server
    stop_app(server)


@pytest.fixture
def admin(monitored: InProcess) -> Iterator[httpx.Client]:
    with monitored.client("t-admin") as client:
        yield client


@pytest.fixture
def pep(monitored: InProcess) -> Iterator[httpx.Client]:
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


def notified(receiver: Receiver, case_id: str, kind: str = "case.opened",
             count: int = 1) -> list[dict[str, Any]]:
    """The first `count` events of `kind` about the case that reached the receiver."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [event for event in list(receiver.received)
                 if event["type"] == kind and event["subject"]["id"] == case_id]
        if len(found) >= count:
            return found[:count]
        time.sleep(0.05)
    raise AssertionError(f"no {kind} notification for {case_id}")


def check_case(admin: httpx.Client, receiver: Receiver, world: World, rule: str,
               receiver_749: Receiver | None = None) -> dict[str, Any]:
    case = wait_case(admin, world.user, rule)
    assert case["status"] == "open" and case["municipality"] == world.municipality
    # Told to the contact people of both parties: the area's webhook (every event) and
    # the municipality's (its own events).
    for contacts in filter(None, (receiver, receiver_749)):
        (event,) = notified(contacts, case["id"])
        assert event["municipality"] == world.municipality
        assert event["data"]["case"]["rule"] == rule
        assert contacts.bad_signatures == 0
    return case


# carries: C-18, C-19, C-20
def test_own_record(admin: httpx.Client, pep: httpx.Client, receiver: Receiver,
                    receiver_749: Receiver) -> None:
    world = World(admin).build()
    world.put("users", world.user, {"municipality": "749", "display_name": "X",
                                    "tasks": ["coaching"], "status": "active",
                                    "client_id": world.client})
    assert decide(pep, world.request())["context"]["reason"] == "own_record"
    check_case(admin, receiver, world, "own_record", receiver_749)


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
    world.put("clients", world.client, {"home_municipality": "297", "area_client": True})
    assert decide(pep, world.request())["context"]["reason"] == "client_not_own_municipality"
    world.put("clients", world.client, {"home_municipality": "167", "area_client": True})
    assert decide(pep, world.request())["context"]["reason"] == "client_outside_area"
    check_case(admin, receiver, world, "other_municipality")


def test_attempts_after_the_right_ended(admin: httpx.Client, pep: httpx.Client,
                                        receiver: Receiver) -> None:
    world = World(admin).build()
    revoke(admin, world)
    for _ in range(2):
        assert decide(pep, world.request())["context"]["reason"] == "no_active_grant"
    check_case(admin, receiver, world, "after_right_ended")


def test_protection_order(admin: httpx.Client, pep: httpx.Client, receiver: Receiver) -> None:
    world = World(admin).build()
    world.put("clients", world.client, {"home_municipality": "749", "protection_order": True,
                                        "area_client": True})
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


def revoke(admin: httpx.Client, world: World) -> None:
    done = admin.post(f"/v1/grants/{world.grant}/revoke", json={"reason": "task_ended"})
    assert done.status_code == 200, done.text


def _grant_with_window(world: World) -> None:
    """The world's right active now (a right of the register is: nothing to do)."""
    if world.admin.get(f"/v1/grants/{world.grant}").json()["state"] == "active":
        return
    now = datetime.now(UTC)
    world.put("grants", world.grant, world.grant_data(
        valid_from=(now - timedelta(days=1)).isoformat(),
        valid_until=(now + timedelta(days=100)).isoformat()))


# carries: C-19
def test_resolved_as_justified_keeps_the_rights(admin: httpx.Client, pep: httpx.Client,
                                                monitored: InProcess) -> None:
    world = World(admin).build()
    _grant_with_window(world)
    decide(pep, world.request())
    case = wait_case(admin, world.user, "unusual_hours")
    with monitored.client("t-grants") as authority:
        done = authority.post(f"/v1/monitoring/cases/{case['id']}/resolve",
                              json={"outcome": "justified", "note": "evening shift"})
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "resolved" and done.json()["suspended_grants"] == []
        assert done.json()["resolved_by"] == AUTHORITY
        again = authority.post(f"/v1/monitoring/cases/{case['id']}/resolve",
                               json={"outcome": "misuse", "note": "second thoughts"})
        assert again.status_code == 409
        blank = authority.post(f"/v1/monitoring/cases/{case['id']}/resolve",
                               json={"outcome": "misuse", "note": "\u200b \u200b"})
        assert blank.status_code == 400, blank.text
    assert admin.get(f"/v1/grants/{world.grant}").json()["state"] == "active"


# carries: C-18, C-19
def test_resolved_as_misuse_suspends_the_rights(admin: httpx.Client, pep: httpx.Client,
                                                monitored: InProcess, receiver: Receiver,
                                                receiver_749: Receiver) -> None:
    """Before, the municipality resolved a case about its own user (as "justified" too):
    the authority's decision was the municipality's to take."""
    world = World(admin).build()
    _grant_with_window(world)
    decide(pep, world.request())
    case = wait_case(admin, world.user, "unusual_hours")
    path = f"/v1/monitoring/cases/{case['id']}/resolve"
    for token in ("t-m749", "t-m844", "t-auditor"):
        with monitored.client(token) as party:
            for outcome in ("justified", "misuse"):
                refused = party.post(path, json={"outcome": outcome, "note": "our view"})
                assert refused.status_code == 403, (token, refused.text)
    assert cases_of(admin, world.user, "unusual_hours")[0]["status"] == "open"
    with monitored.client("t-grants") as authority:
        done = authority.post(path, json={"outcome": "misuse", "note": "browsed without cause"})
        assert done.status_code == 200, done.text
        assert done.json()["suspended_grants"] == [world.grant]
    assert admin.get(f"/v1/grants/{world.grant}").json()["state"] == "suspended"
    assert decide(pep, world.request())["context"]["reason"] == "no_active_grant"
    for contacts in (receiver, receiver_749):
        (resolved,) = notified(contacts, case["id"], "case.resolved")
        assert resolved["actor"] == AUTHORITY
        assert resolved["data"]["case"]["outcome"] == "misuse"


# carries: C-18, C-19, C-20
def test_the_municipality_adds_what_it_knows_and_the_authority_resolves(
        admin: httpx.Client, pep: httpx.Client, monitored: InProcess, receiver: Receiver,
        receiver_749: Receiver) -> None:
    world = World(admin).build()
    decide(pep, world.request())
    case = wait_case(admin, world.user, "unusual_hours")
    path = f"/v1/monitoring/cases/{case['id']}"
    started = datetime.now(UTC) - timedelta(seconds=5)
    with monitored.client("t-m749") as municipality:
        said = "The evening visit was agreed with the client; see our calendar."
        added = municipality.post(f"{path}/comments", json={"text": said})
        assert added.status_code == 201, added.text
        comment = added.json()
        assert (comment["case"], comment["by"], comment["text"]) == (case["id"],
                                                                     SUPERVISOR_749, said)
        assert started <= datetime.fromisoformat(comment["at"]) <= datetime.now(UTC)
        for bad in ({}, {"text": ""}, {"text": " \u200b\t"}, {"text": 7},
                    {"text": "fine", "by": "someone else"}):
            refused = municipality.post(f"{path}/comments", json=bad)
            assert refused.status_code == 400, (bad, refused.text)
            assert refused.json()["error"]["code"] == "invalid_request"
        assert municipality.post(
            f"/v1/monitoring/cases/case-{'0' * 16}/comments",
            json={"text": "no such case"}).status_code == 404
    with monitored.client("t-m844") as other:  # not its staff: no such case for it
        refused = other.post(f"{path}/comments", json={"text": "we know nothing"})
        assert refused.status_code == 404, refused.text
    with monitored.client("t-pep") as pep_caller:
        assert pep_caller.post(f"{path}/comments", json={"text": "hi"}).status_code == 403
    with monitored.client("t-auditor") as auditor:
        noted = auditor.post(f"{path}/comments", json={"text": "Log shows 3 reads at 23:05."})
        assert noted.status_code == 201, noted.text
        assert noted.json()["by"] == AUDITOR

    # Recorded with who and when, in order, on the case; the case is still open.
    (listed,) = [c for c in cases_of(admin, world.user, "unusual_hours")
                 if c["id"] == case["id"]]
    assert listed["status"] == "open"
    assert [(c["by"], c["text"]) for c in listed["comments"]] == [
        (SUPERVISOR_749, said), (AUDITOR, "Log shows 3 reads at 23:05.")]
    assert listed["comments"][0] == {k: v for k, v in comment.items() if k != "case"}
    with monitored.client("t-m749") as municipality:
        own = municipality.get("/v1/monitoring/cases", params={"user": world.user}).json()
        assert [c["comments"] for c in own["cases"] if c["id"] == case["id"]] == [
            listed["comments"]]

    # Each comment is an event, told to both parties' contact people.
    for contacts in (receiver, receiver_749):
        events = notified(contacts, case["id"], "case.commented", count=2)
        assert [(e["actor"], e["reason"]) for e in events] == [
            (SUPERVISOR_749, said), (AUDITOR, "Log shows 3 reads at 23:05.")]
        assert events[0]["data"]["comment"]["text"] == said
        assert events[0]["municipality"] == "749"

    # The authority resolves; a resolved case takes no more comments.
    with monitored.client("t-grants") as authority:
        done = authority.post(f"{path}/resolve",
                              json={"outcome": "justified", "note": "agreed visit"})
        assert done.status_code == 200, done.text
        assert len(done.json()["comments"]) == 2
    with monitored.client("t-m749") as municipality:
        late = municipality.post(f"{path}/comments", json={"text": "one more thing"})
        assert late.status_code == 409, late.text


# carries: C-18, C-19, C-20
def test_either_party_opens_a_case_by_hand(admin: httpx.Client, monitored: InProcess,
                                           receiver: Receiver,
                                           receiver_749: Receiver) -> None:
    world, elsewhere = World(admin).build(), World(admin, municipality="844").build()
    report = {"user": world.user, "client": world.client,
              "observed": "Opened the records of a neighbour's family late at night.",
              "justification": "No client relationship that we know of."}
    with monitored.client("t-m749") as municipality:
        opened = municipality.post("/v1/monitoring/cases", json=report)
        assert opened.status_code == 201, opened.text
        own = opened.json()
        assert {k: own[k] for k in ("rule", "user", "municipality", "client", "status",
                                    "observed", "justification", "opened_by", "comments")} == {
            "rule": "manual", "user": world.user, "municipality": "749",
            "client": world.client, "status": "open", "observed": report["observed"],
            "justification": report["justification"], "opened_by": SUPERVISOR_749,
            "comments": []}
        # A municipality opens cases about its own users only: another's is not there.
        for user in (elsewhere.user, "no-such-user"):
            missing = municipality.post("/v1/monitoring/cases", json={**report, "user": user})
            assert missing.status_code == 404, missing.text
        without_client = {k: v for k, v in report.items() if k != "client"}
        assert municipality.post("/v1/monitoring/cases",
                                 json=without_client).status_code == 201
        for bad in ({**report, "justification": "  \u200b "}, {**report, "observed": ""},
                    {k: v for k, v in report.items() if k != "observed"},
                    {k: v for k, v in report.items() if k != "justification"},
                    {**report, "user": "bad id!"}, {**report, "status": "resolved"},
                    {**report, "justification": "x\x00y"}):
            refused = municipality.post("/v1/monitoring/cases", json=bad)
            assert refused.status_code == 400, (bad, refused.text)
    # The area opens them too, about any municipality's users.
    area_cases = {}
    for token, name in (("t-grants", AUTHORITY), ("t-auditor", AUDITOR)):
        with monitored.client(token) as area:
            done = area.post("/v1/monitoring/cases", json={**report, "user": elsewhere.user,
                                                           "client": elsewhere.client})
            assert done.status_code == 201, done.text
            assert (done.json()["municipality"], done.json()["opened_by"]) == ("844", name)
            area_cases[name] = done.json()["id"]
    with monitored.client("t-pep") as pep_caller:
        assert pep_caller.post("/v1/monitoring/cases", json=report).status_code == 403

    # Told to both parties' contact people at once, as a detected case is: the area's
    # webhook hears of every case, the municipality's of its own.
    (event,) = notified(receiver, own["id"])
    (event_749,) = notified(receiver_749, own["id"])
    for told in (event, event_749):
        assert (told["municipality"], told["actor"], told["reason"]) == (
            "749", SUPERVISOR_749, report["justification"])
        assert told["data"]["case"] == own
    for name, case_id in area_cases.items():
        (told,) = notified(receiver, case_id)
        assert (told["municipality"], told["actor"]) == ("844", name)
    time.sleep(0.3)
    assert not {e["subject"]["id"] for e in receiver_749.received} & set(area_cases.values())

    # Listed like any case: for the authority, and for the municipality its own only.
    assert [c["id"] for c in cases_of(admin, world.user, "manual")][:1] == [own["id"]]
    with monitored.client("t-m844") as other:
        seen = other.get("/v1/monitoring/cases", params={"rule": "manual"}).json()["cases"]
        assert {c["id"] for c in seen} == set(area_cases.values())


def test_municipality_admin_sees_only_its_own(monitored: InProcess, admin: httpx.Client,
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


def test_metrics_after_known_traffic(monitored: InProcess, admin: httpx.Client,
                                     pep: httpx.Client) -> None:
    def sample(text: str, name: str) -> float:
        for line in text.splitlines():
            metric, _, value = line.rpartition(" ")
            if metric == name:
                return float(value)
        return 0.0

    before = monitored.get("/metrics").text
    world = World(admin).build()
    for _ in range(3):
        decide(pep, world.request(category="benefits"))
    wait_case(admin, world.user, "unusual_hours")
    # the counter goes up just after the case is committed (Cases.on_open): a scrape right
    # after the case is seen may come between the two
    opened = 'pdp_monitoring_cases_opened_total{rule="unusual_hours"}'
    deadline = time.monotonic() + 5
    after = monitored.get("/metrics").text
    while sample(after, opened) == sample(before, opened) and time.monotonic() < deadline:
        time.sleep(0.05)
        after = monitored.get("/metrics").text
    key = ('pdp_decisions_total{decision="false",purpose="coaching",'
           'reason="category_not_necessary"}')
    assert sample(after, key) - sample(before, key) == 3
    assert sample(after, opened) - sample(before, opened) == 1
    open_now = len(admin.get("/v1/monitoring/cases", params={"status": "open"}).json()["cases"])
    assert sample(after, "pdp_monitoring_cases_open") == open_now


def test_random_sample_of_allowed_accesses(monitored: InProcess, admin: httpx.Client,
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
    from pdp.audit.log import AuditRecord
    from pdp.engine.factindex import FactIndex
    from pdp.rights.monitoring import Detector, MonitoringConfig

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

"""Rights that cannot be set around the agreement (API.md "Rights"; DOMAIN.md "Lifecycle
of a right", "Only the procedure changes a right").

A right is never written through the facts API (PUT, DELETE, a facts:batch item, `pdp
facts import`): 409 `use_workflow` naming the step. An agreement's status and end change
only by notice and rescission. The register of rights granted before the service comes
in once, through `POST /v1/grants:import`, each right with its approval record. A right
is for its purposes: tasks that widen give it no new one. Either party gives notice.

The module runs the app in-process of its own (tests/support/asgi.py; municipality-admin
tokens; agreements it changes); `pdp facts import` is a real process on its store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.asgi import InProcess, start_app, stop_app
from tests.support.servers import KEYS, ROOT
from tests.support.world import World, decide, register_item

PROCEDURE_KEYS: dict[str, list[str]] = {
    **KEYS,
    "t-keha": ["keha"],
    "t-m204": ["municipality_admin:204"],
    "t-m749": ["municipality_admin:749"],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    # Supervision's rule of unusual hours would open a case (a facts_version of its own)
    # whenever this module runs at night, Helsinki time: the tests here assert that a
    # refused step changes nothing, so the module runs without that one rule (supervision
    # is tested in tests/test_monitoring.py).
    directory = tmp_path_factory.mktemp("procedure")
    rules = yaml.safe_load((ROOT / "policies" / "monitoring.yaml").read_text())
    del rules["rules"]["unusual_hours"]
    (directory / "monitoring.yaml").write_text(yaml.safe_dump(rules))
    running = start_app(directory, env={
        "PDP_API_KEYS": json.dumps(PROCEDURE_KEYS),
        "PDP_MONITORING_RULES": str(directory / "monitoring.yaml")})
    yield running
    stop_app(running)


@pytest.fixture
def client(server: InProcess) -> Iterator[Any]:
    opened: dict[str | None, httpx.Client] = {}

    def get(token: str | None) -> httpx.Client:
        if token not in opened:
            opened[token] = server.client(token)
        return opened[token]

    yield get
    for one in opened.values():
        one.close()


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def add_months(moment: datetime, months: int) -> datetime:
    month0 = moment.month - 1 + months
    year, month = moment.year + month0 // 12, month0 % 12 + 1
    days = [31, 29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28,
            31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
    return moment.replace(year=year, month=month, day=min(moment.day, days))


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, response.text
    return error


def use_workflow(response: httpx.Response, step: str, field: str | None = None) -> None:
    """409 use_workflow naming `step` (and the field that tries it)."""
    error = assert_error(response, 409, "use_workflow")
    detail = error["details"][0]
    assert detail["step"] == step, error
    assert step == "none" or repr(step) in error["message"], error
    if field is not None:
        assert detail["field"] == field, error


def version(admin: httpx.Client) -> int:
    body = admin.get("/readyz").json()
    return int(body["facts_version"])


def history(admin: httpx.Client, grant_id: str) -> list[dict[str, Any]]:
    response = admin.get(f"/v1/grants/{grant_id}/history")
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["history"]
    return events


def outcome(pep: httpx.Client, world: World, **request: Any) -> tuple[bool, str]:
    result = decide(pep, world.request(**request))
    return result["decision"], result["context"]["reason"]


_n = iter(range(1, 1_000_000))


def new_id(world: World, name: str = "right") -> str:
    return f"{world.p}-{name}{next(_n)}"


# -- no back door to a right ------------------------------------------------------------


# carries: C-5, C-11
def test_a_right_is_never_written_through_the_facts_api(admin: httpx.Client,
                                                        pep: httpx.Client) -> None:
    """Before, PUT /v1/grants/{id} stored a ten-year active right with health data that
    nobody applied for or approved. Every facts write of a right is 409 use_workflow
    naming the step, and stores nothing; a right is still read there."""
    world = World(admin).build()
    before = admin.get(f"/v1/grants/{world.grant}").json()
    events = history(admin, world.grant)
    start = version(admin)

    now = utcnow()
    ten_years = world.grant_data(
        scopes=["name_contact", "health_work_capacity"], valid_from=iso(now),
        valid_until=iso(now + timedelta(days=3650)))
    fresh = new_id(world)
    use_workflow(admin.put(f"/v1/grants/{fresh}", json=ten_years), "apply", "id")
    assert_error(admin.get(f"/v1/grants/{fresh}"), 404, "not_found")

    own = world.grant
    stored = {k: v for k, v in before.items() if k not in ("id", "facts_version", "state")}
    tries = [
        ({"status": "revoked"}, "revoke", "status"),
        ({"status": "suspended"}, "suspend", "status"),
        ({"status": "applied"}, "apply", "status"),
        ({"recertify_by": iso(now + timedelta(days=3000))}, "recertify", "recertify_by"),
        ({"scopes": ["name_contact", "health_work_capacity"]}, "apply", "scopes"),
        ({"purposes": ["coaching", "guidance"]}, "apply", "purposes"),
        ({"actions": ["read"]}, "apply", "actions"),
        ({"valid_until": iso(now + timedelta(days=3650))}, "apply", "valid_until"),
        ({}, "apply", "id"),  # not even the same right again
    ]
    for change, step, field in tries:
        response = admin.put(f"/v1/grants/{own}", json={**stored, **change})
        use_workflow(response, step, field)
        endpoint = ("POST /v1/grant-applications" if step == "apply"
                    else f"POST /v1/grants/{own}/{step}")
        assert endpoint in response.json()["error"]["message"]
    use_workflow(admin.delete(f"/v1/grants/{own}"), "revoke", "id")
    assert_error(admin.delete(f"/v1/grants/{new_id(world, 'none')}"), 404, "not_found")

    # a batch: all or nothing, the client in it not stored either
    other_client = new_id(world, "c")
    batch = admin.post("/v1/facts:batch", json={"facts": [
        {"kind": "client", "id": other_client,
         "data": {"home_municipality": "749", "area_client": True}},
        {"kind": "grant", "id": own, "data": world.grant_data(status="revoked")}]})
    use_workflow(batch, "revoke", "status")
    assert_error(admin.get(f"/v1/clients/{other_client}"), 404, "not_found")
    batch = admin.post("/v1/facts:batch", json={"facts": [
        {"kind": "grant", "id": fresh, "data": ten_years}]})
    use_workflow(batch, "apply")

    assert version(admin) == start
    got = admin.get(f"/v1/grants/{own}")
    assert got.status_code == 200 and got.json() == before
    assert history(admin, own) == events
    assert outcome(pep, world) == (True, "allowed")


# carries: C-5, C-11
def test_a_grant_write_with_a_bad_body_is_use_workflow_not_invalid(
        admin: httpx.Client, client: Any) -> None:
    """API.md "Rights": any facts write of a right is 409 use_workflow, before its body is
    validated (a body without purposes, not an object, not JSON at all); authentication
    and the role still come first."""
    world = World(admin).build()
    start = version(admin)
    own = world.grant
    stored = {k: v for k, v in admin.get(f"/v1/grants/{own}").json().items()
              if k not in ("id", "facts_version", "state", "purposes")}
    fresh = new_id(world)
    use_workflow(admin.put(f"/v1/grants/{fresh}", json={"user": "x"}), "apply", "id")
    use_workflow(admin.put(f"/v1/grants/{fresh}", json=[1]), "apply", "id")
    use_workflow(admin.put(f"/v1/grants/{fresh}", content=b"{not json",
                           headers={"content-type": "application/json"}), "apply", "id")
    use_workflow(admin.put(f"/v1/grants/{own}", json=stored), "apply", "id")
    use_workflow(admin.put(f"/v1/grants/{own}", json={**stored, "status": "revoked"}),
                 "revoke", "status")
    use_workflow(admin.put(f"/v1/grants/{own}", json={"status": "suspended"}),
                 "suspend", "status")
    batch = admin.post("/v1/facts:batch", json={"facts": [
        {"kind": "client", "id": new_id(world, "c"), "data": {"nonsense": True}},
        {"kind": "grant", "id": fresh, "data": {"user": "x"}}]})
    use_workflow(batch, "apply", "id")
    batch = admin.post("/v1/facts:batch", json={"facts": [
        {"kind": "grant", "id": own, "data": {**stored, "status": "revoked"}}]})
    use_workflow(batch, "revoke", "status")
    # who may not write rights learns nothing more: 401, then 403, as before
    unauthenticated = client(None).put(f"/v1/grants/{fresh}", json={"user": "x"})
    assert_error(unauthenticated, 401, "unauthorized")
    assert_error(client("t-facts").put(f"/v1/grants/{fresh}", json={"user": "x"}),
                 403, "forbidden")
    assert_error(client("t-facts").post("/v1/facts:batch", json={"facts": [
        {"kind": "grant", "id": fresh, "data": {"user": "x"}}]}), 403, "forbidden")
    assert version(admin) == start


def test_pdp_facts_import_refuses_a_right_with_a_bad_body(tmp_path: Path) -> None:
    env = {**os.environ, "PDP_DATABASE_URL": f"sqlite:///{tmp_path / 'facts.sqlite3'}"}
    grant = {"kind": "grant", "id": "g-1", "data": {"user": "u-1", "status": "active"}}
    done = subprocess.run([sys.executable, "-m", "pdp", "facts", "import", "-"],
                          input=json.dumps(grant) + "\n", capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "use_workflow" in done.stderr and "'apply'" in done.stderr
    assert "nothing imported" in done.stderr and "Traceback" not in done.stderr


def test_pdp_facts_import_refuses_a_right(tmp_path: Path) -> None:
    env = {**os.environ, "PDP_DATABASE_URL": f"sqlite:///{tmp_path / 'facts.sqlite3'}"}
    user = {"kind": "user", "id": "u-1", "data": {
        "municipality": "749", "display_name": "U", "tasks": ["coaching"],
        "status": "active"}}
    grant = {"kind": "grant", "id": "g-1", "data": {
        "user": "u-1", "purposes": ["coaching"], "scopes": ["name_contact"],
        "actions": ["read"], "valid_from": "2025-01-01T00:00:00+02:00",
        "valid_until": "2035-01-01T00:00:00+02:00", "status": "active",
        "legal_basis": "380/2023 125 § 1 mom."}}
    lines = "\n".join(json.dumps(item) for item in (user, grant)) + "\n"
    done = subprocess.run([sys.executable, "-m", "pdp", "facts", "import", "-"], input=lines,
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "use_workflow" in done.stderr and "'apply'" in done.stderr
    assert "nothing imported" in done.stderr and "pdp grants import" in done.stderr
    assert "Traceback" not in done.stderr
    listed = subprocess.run([sys.executable, "-m", "pdp", "grants", "list"],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert listed.returncode == 0 and "g-1" not in listed.stdout


# carries: C-22, C-23
def test_an_agreements_status_and_end_change_only_by_notice_and_rescission(
        admin: httpx.Client, pep: httpx.Client) -> None:
    """Before, PUT /v1/agreements/{code} stored notice_given with an end in 2040."""
    world = World(admin, "915").build()
    signed = "2025-01-01T00:00:00+02:00"
    base = {"area": "kuopio", "signed_at": signed}
    start = version(admin)

    use_workflow(admin.put("/v1/agreements/915", json={
        **base, "status": "notice_given", "ends_at": "2040-01-01T00:00:00+02:00"}),
        "notice", "status")
    use_workflow(admin.put("/v1/agreements/915", json={**base, "status": "rescinded"}),
                 "rescind", "status")
    use_workflow(admin.put("/v1/agreements/915", json={**base, "status": "terminated"}),
                 "rescind", "status")
    use_workflow(admin.put("/v1/agreements/915", json={
        **base, "status": "in_force", "ends_at": "2040-01-01T00:00:00+02:00"}),
        "notice", "ends_at")
    batch = admin.post("/v1/facts:batch", json={"facts": [
        {"kind": "agreement", "id": "915", "data": {**base, "status": "rescinded"}}]})
    use_workflow(batch, "rescind")
    # a new agreement is created in force only
    admin.delete("/v1/agreements/997")
    use_workflow(admin.put("/v1/agreements/997", json={
        **base, "status": "notice_given", "ends_at": "2040-01-01T00:00:00+02:00"}), "notice")
    assert_error(admin.get("/v1/agreements/997"), 404, "not_found")
    assert version(admin) == start
    assert admin.get("/v1/agreements/915").json()["status"] == "in_force"
    assert outcome(pep, world) == (True, "allowed")

    # its other fields change
    changed = admin.put("/v1/agreements/915", json={**base, "status": "in_force",
                                                   "assignment_required": False,
                                                   "signed_at": "2025-02-01T00:00:00+02:00"})
    assert changed.status_code == 200, changed.text
    # under notice, too; its end stays the computed one
    notice = admin.post("/v1/agreements/915/notice", json={"reason": "withdraws"})
    assert notice.status_code == 200, notice.text
    ends_at = notice.json()["ends_at"]
    same = {**base, "status": "notice_given", "ends_at": ends_at}
    assert admin.put("/v1/agreements/915", json=same).status_code == 200
    use_workflow(admin.put("/v1/agreements/915", json={
        **same, "ends_at": "2040-01-01T00:00:00+02:00"}), "notice", "ends_at")
    use_workflow(admin.put("/v1/agreements/915", json={**base, "status": "in_force"}),
                 "none", "status")
    assert admin.get("/v1/agreements/915").json()["ends_at"] == ends_at
    assert datetime.fromisoformat(admin.get(f"/v1/grants/{world.grant}").json()[
        "valid_until"]) == datetime.fromisoformat(ends_at)
    assert outcome(pep, world) == (True, "allowed")

    # Nor around it by deleting: a delete would end the rights without the rescind step,
    # and a new agreement written in force after it would wipe the notice. An agreement
    # is not deleted: 409 use_workflow naming rescind, and nothing changes.
    events = history(admin, world.grant)
    at = version(admin)
    use_workflow(admin.delete("/v1/agreements/915"), "rescind", "id")
    assert version(admin) == at
    kept = admin.get("/v1/agreements/915").json()
    assert (kept["status"], kept["ends_at"]) == ("notice_given", ends_at)
    assert history(admin, world.grant) == events
    assert admin.get(f"/v1/grants/{world.grant}").json()["state"] == "active"
    assert outcome(pep, world) == (True, "allowed")
    # a delete of an agreement that does not exist is not found, as before
    assert_error(admin.delete("/v1/agreements/996"), 404, "not_found")


# -- the register of rights before the service -------------------------------------------


def register(world: World, *items: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {"grants": [register_item(grant_id, data) for grant_id, data in items]}


# carries: C-5, C-14
def test_the_register_comes_in_with_its_approval_records(admin: httpx.Client,
                                                         pep: httpx.Client,
                                                         client: Any) -> None:
    world = World(admin, grant=False).build()
    now = utcnow()
    active, suspended, expired = new_id(world), new_id(world), new_id(world)
    body = register(
        world, (active, world.grant_data()),
        (suspended, world.grant_data(status="suspended")),
        (expired, world.grant_data(status="expired",
                                   valid_from=iso(now - timedelta(days=400)),
                                   valid_until=iso(now - timedelta(days=35)))))
    for token in ("t-grants", "t-facts", "t-keha", "t-m749", "t-pep"):
        assert_error(client(token).post("/v1/grants:import", json=body), 403, "forbidden")
    response = admin.post("/v1/grants:import", json=body)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"imported", "facts_version"}
    assert response.json()["imported"] == 3
    assert response.json()["facts_version"] == version(admin)

    states = {g: admin.get(f"/v1/grants/{g}").json()["state"]
              for g in (active, suspended, expired)}
    assert states == {active: "active", suspended: "suspended", expired: "expired"}
    assert admin.get(f"/v1/grants/{active}").json()["purposes"] == ["coaching"]
    for grant_id, item in zip((active, suspended, expired), body["grants"], strict=True):
        events = history(admin, grant_id)
        assert [e["type"] for e in events] == ["grant.imported"]
        recorded = events[0]["data"]["approval"]
        assert {k: recorded[k] for k in ("approved_by", "decision_ref")} == {
            k: item["approval"][k] for k in ("approved_by", "decision_ref")}
        for name in ("approved_at", "activated_at"):
            assert datetime.fromisoformat(recorded[name]) == datetime.fromisoformat(
                item["approval"][name])
        assert events[0]["data"]["grant"]["status"] == item["status"]
        assert events[0]["reason"] == f"register: {item['approval']['decision_ref']}"
        assert events[0]["municipality"] == "749"
    assert outcome(pep, world) == (True, "allowed")


def test_the_register_is_all_or_nothing(admin: httpx.Client) -> None:
    world = World(admin, grant=False).build()
    start = version(admin)
    good, bad = new_id(world), new_id(world)

    def refused(body: dict[str, Any], status: int, code: str, field: str) -> None:
        error = assert_error(admin.post("/v1/grants:import", json=body), status, code)
        assert error["details"][0]["field"] == field, error
        assert error["message"].startswith(field), error
        for grant_id in (good, bad):
            assert_error(admin.get(f"/v1/grants/{grant_id}"), 404, "not_found")
        assert version(admin) == start

    # a right without its approval record, or a field of it
    for name in ("approved_by", "approved_at", "decision_ref", "activated_at"):
        body = register(world, (good, world.grant_data()), (bad, world.grant_data()))
        del body["grants"][1]["approval"][name]
        refused(body, 400, "invalid_request", f"grants[1].approval.{name}")
    body = register(world, (good, world.grant_data()), (bad, world.grant_data()))
    del body["grants"][1]["approval"]
    refused(body, 400, "invalid_request", "grants[1].approval")
    for name in ("purposes", "recertify_by", "legal_basis", "valid_until"):
        body = register(world, (good, world.grant_data()), (bad, world.grant_data()))
        del body["grants"][1][name]
        refused(body, 400, "invalid_request", f"grants[1].{name}")
    body = register(world, (good, world.grant_data()), (bad, world.grant_data()))
    body["grants"][1]["approval"]["decision_ref"] = " \u200b "
    refused(body, 400, "invalid_request", "grants[1].approval.decision_ref")
    body = register(world, (good, world.grant_data()), (bad, world.grant_data()))
    body["grants"][1]["approval"]["activated_at"] = iso(utcnow() + timedelta(days=1))
    refused(body, 400, "invalid_request", "grants[1].approval.activated_at")
    # what the procedure makes is not imported: applications and approvals
    refused(register(world, (good, world.grant_data()),
                     (bad, world.grant_data(status="approved"))),
            400, "invalid_request", "grants[1].status")
    # a right that counts must keep the limits of a right opened now
    now = utcnow()
    refused(register(world, (good, world.grant_data()), (bad, world.grant_data(
        valid_from=iso(now), valid_until=iso(now + timedelta(days=3650))))),
        400, "grant_refused", "grants[1]")
    refused(register(world, (good, world.grant_data()), (bad, world.grant_data(
        scopes=["name_contact", "benefits"]))), 400, "grant_refused", "grants[1]")
    refused(register(world, (good, world.grant_data()), (bad, world.grant_data(
        purposes=["guidance"]))), 400, "grant_refused", "grants[1]")
    refused(register(world, (good, world.grant_data()), (bad, world.grant_data(
        recertify_by=iso(now + timedelta(days=365))))),
        400, "invalid_request", "grants[1].recertify_by")
    refused(register(world, (good, world.grant_data()), (bad, world.grant_data(
        user=f"{world.p}-nobody"))), 400, "invalid_request", "grants[1].user")
    refused(register(world, (good, world.grant_data()), (good, world.grant_data())),
            400, "invalid_request", "grants[1].id")

    # an id already taken: 409, nothing of the register stored
    assert admin.post("/v1/grants:import",
                      json=register(world, (good, world.grant_data()))).status_code == 200
    start = version(admin)
    error = assert_error(admin.post("/v1/grants:import", json=register(
        world, (bad, world.grant_data()), (good, world.grant_data()))), 409, "id_taken")
    assert error["details"][0]["field"] == "grants[1].id"
    assert_error(admin.get(f"/v1/grants/{bad}"), 404, "not_found")
    assert version(admin) == start
    assert len(history(admin, good)) == 1
    # an application under a registered right's id is refused alike
    taken = admin.post("/v1/grant-applications", json={
        "id": good, "user": world.user, "purposes": ["coaching"],
        "scopes": ["name_contact"], "valid_from": iso(utcnow()),
        "valid_until": iso(utcnow() + timedelta(days=30)), "legal_basis": "x",
        "justification": "again"})
    assert_error(taken, 409, "id_taken")


def test_the_register_holds_only_rights_granted_before_its_cut_over(
        tmp_path: Path) -> None:
    """DOMAIN.md: the register is of rights granted before the service, imported once.
    Every approval and opening lies before PDP_REGISTER_BEFORE (400 naming the field);
    with no cut-over configured the register is closed (409 register_closed)."""
    now = utcnow()
    cut_over = now - timedelta(days=20)
    (tmp_path / "open").mkdir()
    (tmp_path / "closed").mkdir()
    running = start_app(tmp_path / "open", env={"PDP_REGISTER_BEFORE": iso(cut_over)})
    try:
        with running.client("t-admin") as admin:
            world = World(admin, grant=False).build()
            start = version(admin)
            for name in ("approved_at", "activated_at"):
                item = register_item(new_id(world), world.grant_data())
                item["approval"] = {**item["approval"],
                                    "approved_at": iso(now - timedelta(days=30)),
                                    "activated_at": iso(now - timedelta(days=25))}
                # a minute ago, or exactly at the cut-over: after the service began
                for late in (now - timedelta(minutes=1), cut_over):
                    item["approval"][name] = iso(late)
                    if name == "approved_at":
                        item["approval"]["activated_at"] = iso(late)
                    error = assert_error(admin.post("/v1/grants:import",
                                                    json={"grants": [item]}),
                                         400, "invalid_request")
                    assert error["details"][0]["field"] == f"grants[0].approval.{name}"
                    assert "PDP_REGISTER_BEFORE" in error["message"], error
                    assert_error(admin.get(f"/v1/grants/{item['id']}"), 404, "not_found")
            assert version(admin) == start
            item = register_item(new_id(world), world.grant_data())
            item["approval"] = {**item["approval"],
                                "approved_at": iso(cut_over - timedelta(days=3)),
                                "activated_at": iso(cut_over - timedelta(seconds=1))}
            done = admin.post("/v1/grants:import", json={"grants": [item]})
            assert done.status_code == 200, done.text
    finally:
        stop_app(running)

    closed = start_app(tmp_path / "closed", env={"PDP_REGISTER_BEFORE": None})
    try:
        with closed.client("t-admin") as admin:
            world = World(admin, grant=False).build()
            start = version(admin)
            item = register_item(new_id(world), world.grant_data())
            error = assert_error(admin.post("/v1/grants:import", json={"grants": [item]}),
                                 409, "register_closed")
            assert "PDP_REGISTER_BEFORE" in error["message"], error
            assert_error(admin.get(f"/v1/grants/{item['id']}"), 404, "not_found")
            assert version(admin) == start
    finally:
        stop_app(closed)


# -- a right is for its purposes ----------------------------------------------------------


def guidance_relationship(world: World) -> None:
    world.put("relationships", f"{world.p}-r-guidance", {
        "client": world.client, "municipality": world.municipality, "service": "guidance",
        "starts_at": "2025-06-01T00:00:00+03:00"})


def put_tasks(admin: httpx.Client, world: World, tasks: list[str]) -> None:
    response = admin.put(f"/v1/users/{world.user}", json={
        "municipality": world.municipality, "display_name": "Testi Käyttäjä",
        "tasks": tasks, "status": "active"})
    assert response.status_code == 200, response.text


# carries: C-3, C-7, C-16
def test_tasks_that_widen_give_a_right_no_new_purpose(admin: httpx.Client,
                                                      pep: httpx.Client) -> None:
    """The user's right is for coaching; the user now guides too. The right is not
    changed, and it does not serve guidance: that needs a new application."""
    world = World(admin).build()
    guidance_relationship(world)
    events = history(admin, world.grant)
    assert outcome(pep, world, purpose="guidance") == (False, "purpose_invalid")

    put_tasks(admin, world, ["coaching", "guidance"])

    got = admin.get(f"/v1/grants/{world.grant}").json()
    assert (got["purposes"], got["state"]) == (["coaching"], "active")
    assert history(admin, world.grant) == events
    assert outcome(pep, world, purpose="coaching") == (True, "allowed")
    assert outcome(pep, world, purpose="guidance") == (False, "purpose_invalid")


# carries: C-4, C-5, C-14
def test_an_application_names_its_purposes_and_approval_may_narrow_them(
        admin: httpx.Client, pep: httpx.Client, client: Any) -> None:
    world = World(admin, grant=False).build()
    put_tasks(admin, world, ["coaching", "guidance"])
    guidance_relationship(world)
    now = utcnow()
    applied = client("t-m749").post("/v1/grant-applications", json={
        "user": world.user, "purposes": ["coaching", "guidance"],
        "scopes": ["name_contact", "service_needs_plans"],
        "valid_from": iso(now - timedelta(hours=1)),
        "valid_until": iso(now + timedelta(days=60)), "legal_basis": "380/2023 125 §",
        "justification": "coaches and guides"})
    assert applied.status_code == 201, applied.text
    grant_id = applied.json()["id"]
    assert applied.json()["purposes"] == ["coaching", "guidance"]
    wider = client("t-grants").post(f"/v1/grants/{grant_id}/approve", json={
        "justification": "ok", "purposes": ["training"]})
    assert assert_error(wider, 400, "invalid_request")["details"][0]["field"] == "purposes"
    approved = client("t-grants").post(f"/v1/grants/{grant_id}/approve", json={
        "justification": "guidance only", "purposes": ["guidance"]})
    assert approved.status_code == 200, approved.text
    assert approved.json()["purposes"] == ["guidance"]
    opened = client("t-keha").post(f"/v1/grants/{grant_id}/activate", json={})
    assert opened.status_code == 200, opened.text
    assert outcome(pep, world, purpose="guidance") == (True, "allowed")
    assert outcome(pep, world, purpose="coaching") == (False, "purpose_invalid")


# -- either party gives notice -------------------------------------------------------------


# carries: C-22
def test_either_party_may_give_notice_on_its_own_agreement(admin: httpx.Client,
                                                           pep: httpx.Client,
                                                           client: Any) -> None:
    world = World(admin, "204").build()
    other = World(admin, "749").build()
    own = client("t-m204")
    # not on another's agreement, nor rescind its own
    assert_error(own.post("/v1/agreements/749/notice", json={"reason": "no"}), 403,
                 "forbidden")
    assert_error(client("t-m749").post("/v1/agreements/204/notice", json={"reason": "no"}),
                 403, "forbidden")
    assert_error(own.post("/v1/agreements/204/rescind", json={"reason": "no"}), 403,
                 "forbidden")
    assert admin.get("/v1/agreements/749").json()["status"] == "in_force"
    assert admin.get("/v1/agreements/204").json()["status"] == "in_force"
    # the end is computed, never given
    typed = own.post("/v1/agreements/204/notice", json={
        "reason": "we withdraw", "ends_at": "2040-01-01T00:00:00+02:00"})
    assert_error(typed, 400, "invalid_request")

    given = own.post("/v1/agreements/204/notice", json={"reason": "we withdraw"})
    assert given.status_code == 200, given.text
    now = utcnow()
    body = given.json()
    assert body["status"] == "notice_given"
    ends_at = datetime.fromisoformat(body["ends_at"])
    assert abs((ends_at - add_months(now, 3)).total_seconds()) < 60
    events = admin.get("/v1/events", params={"municipality": "204", "after": 0,
                                              "limit": 1000}).json()["events"]
    notice = [e for e in events if e["type"] == "agreement.notice_given"]
    assert len(notice) == 1 and notice[0]["data"]["party"] == "municipality"
    assert notice[0]["reason"] == "we withdraw"
    # its rights end with the notice; they count until then
    grant = admin.get(f"/v1/grants/{world.grant}").json()
    assert datetime.fromisoformat(grant["valid_until"]) == ends_at
    assert outcome(pep, world) == (True, "allowed")
    assert outcome(pep, other) == (True, "allowed")
    # notice once; rescission stays the area's
    assert_error(own.post("/v1/agreements/204/notice", json={"reason": "again"}), 409,
                 "invalid_transition")
    rescinded = client("t-grants").post("/v1/agreements/204/rescind", json={"reason": "x"})
    assert rescinded.status_code == 200, rescinded.text
    assert outcome(pep, world) == (False, "agreement_not_in_force")

"""Reloading the policy without a restart, gated by its test suites (issue 9, part 1):
against a real `pdp serve` whose PDP_POLICY_DIR is a copy of policies/ the test edits (and
replicas through Redis: real processes, tests/support/replicas.py)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.pg import PG_HOST, PG_PORT, fresh_database
from tests.support.replicas import RedisServer, Replicas, wait_bus
from tests.support.servers import Server, start_server, stop_server
from tests.support.world import World

POLICIES = Path(__file__).parent.parent / "policies"


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("policy") / "policies"
    shutil.copytree(POLICIES, copy)
    return copy


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, policy_dir: Path) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("reload"),
                          env={"PDP_POLICY_DIR": str(policy_dir)})
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def world(live: Server) -> World:
    with live.client("t-admin") as admin:
        return World(admin).build()


def decide(server: Server, world: World) -> dict[str, Any]:
    with server.client("t-pep") as pep:
        response = pep.post("/access/v1/evaluation", json=world.request())
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def reload(server: Server, token: str = "t-policy") -> httpx.Response:
    with server.client(token) as client:
        return client.post("/v1/policy/reload", timeout=120)


def live_policy(server: Server) -> dict[str, Any]:
    with server.client("t-auditor") as client:
        response = client.get("/v1/policy")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def refused(server: Server, policy_dir: Path, name: str, old: str, new: str
            ) -> dict[str, Any]:
    """Edit a policy file, ask for a reload, put the file back; the 409's error."""
    path = policy_dir / name
    before = path.read_text()
    assert old in before, f"{old!r} not in {name}"
    path.write_text(before.replace(old, new, 1))
    try:
        response = reload(server)
    finally:
        path.write_text(before)
    assert response.status_code == 409, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "policy_rejected"
    return error


def test_the_live_policy_is_described(live: Server, world: World) -> None:
    state = live_policy(live)
    assert state["version"] == decide(live, world)["context"]["policy_version"]
    assert {"rules.polar", "data.polar", "lifecycle.polar"} <= set(state["files"])
    assert state["loaded_at"]


def test_only_policy_admins_reload(live: Server) -> None:
    assert reload(live, "t-pep").status_code == 403
    assert reload(live, "t-auditor").status_code == 403
    assert reload(live, None).status_code == 401  # type: ignore[arg-type]


def test_a_policy_that_does_not_load_is_refused_and_the_old_one_serves(
        live: Server, world: World, policy_dir: Path) -> None:
    version = live_policy(live)["version"]
    error = refused(live, policy_dir, "rules.polar", "failing(r, \"user_inactive\") if",
                    "failing(r, \"user_inactive\") iff")
    detail = error["details"][0]
    assert detail["file"].endswith("rules.polar") and detail["line"] > 1
    made = decide(live, world)
    assert made["decision"] is True and made["context"]["policy_version"] == version
    assert live_policy(live)["version"] == version


def test_a_policy_that_fails_its_cases_is_refused_and_the_old_one_serves(
        live: Server, world: World, policy_dir: Path) -> None:
    version = live_policy(live)["version"]
    # Coaching no longer needs the service plan: an edit the suites must catch.
    error = refused(live, policy_dir, "data.polar",
                    'task_profile("coaching", "service_needs_plans");', "")
    assert "policy test cases fail" in error["message"]
    failing = error["details"]
    assert failing and all({"suite", "case", "file", "expected", "actual"} <= set(f)
                           for f in failing)
    assert any(f["actual"]["reason"] == "category_not_necessary" for f in failing)
    made = decide(live, world)
    assert made["decision"] is True and made["context"]["policy_version"] == version


def test_a_good_policy_goes_live_and_no_old_answer_is_served(
        live: Server, world: World, policy_dir: Path) -> None:
    old = live_policy(live)["version"]
    first = decide(live, world)  # memoised under the old version
    assert first["context"]["policy_version"] == old
    path = policy_dir / "data.polar"
    path.write_text(path.read_text() + "\n# A note from a policy author.\n")
    response = reload(live)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changed"] is True and body["version"] != old
    assert body["suites"]["failed"] == 0 and body["suites"]["passed"] == body["suites"]["total"]
    assert body["suites"]["total"] > 100
    made = decide(live, world)
    assert made["decision"] is True and made["context"]["policy_version"] == body["version"]
    assert live_policy(live)["version"] == body["version"]
    with live.client("t-admin") as admin:
        metrics = admin.get("/metrics").text
    assert f'pdp_policy_info{{version="{body["version"]}"}} 1.0' in metrics
    assert f'version="{old}"' not in metrics
    # The same files again: nothing changes.
    again = reload(live).json()
    assert again["changed"] is False and again["version"] == body["version"]
    # Who put which version in force is in the history.
    with live.client("t-auditor") as auditor:
        events = auditor.get("/v1/events", params={"limit": 1000}).json()["events"]
    activated = [e for e in events if e["type"] == "policy.activated"]
    assert [e["subject"] for e in activated] == [{"kind": "policy", "id": body["version"]}]
    assert activated[0]["data"]["previous"] == old and activated[0]["actor"]


def test_a_reload_puts_the_version_in_force_on_every_replica(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two replicas on one PostgreSQL and Redis, one policy directory: a reload sent to
    A is followed by B through the bus, and B decides with the new version."""
    shared = tmp_path_factory.mktemp("shared-policy") / "policies"
    shutil.copytree(POLICIES, shared)
    with fresh_database("pdp_policy") as name:
        bus = RedisServer(tmp_path_factory.mktemp("redis"))
        bus.start()
        group = Replicas(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}", bus,
                         tmp_path_factory)
        try:
            env = {"PDP_POLICY_DIR": str(shared)}
            a, b = group.start("a", env=env), group.start("b", env=env)
            wait_bus([a, b], "connected")
            with a.client("t-admin") as admin:
                world = World(admin).build()
            old = live_policy(b)["version"]
            path = shared / "data.polar"
            path.write_text(path.read_text() + "\n# Edited for both replicas.\n")
            response = reload(a)
            assert response.status_code == 200, response.text
            new = response.json()["version"]
            assert new != old and response.json()["replicas_notified"] is True
            deadline = time.monotonic() + 15
            while live_policy(b)["version"] != new and time.monotonic() < deadline:
                time.sleep(0.05)
            assert live_policy(b)["version"] == new
            assert decide(b, world)["context"]["policy_version"] == new
            assert decide(a, world)["context"]["policy_version"] == new
        finally:
            group.stop_all()
            bus.kill()


def candidate_files(policy_dir: Path, name: str = "", old: str = "", new: str = ""
                    ) -> dict[str, str]:
    files = {p.name: p.read_text() for p in policy_dir.glob("*.polar")}
    if name:
        assert old in files[name]
        files[name] = files[name].replace(old, new, 1)
    return files


def test_a_candidate_in_shadow_counts_where_it_would_decide_otherwise(
        live: Server, policy_dir: Path) -> None:
    with live.client("t-policy") as author:
        # A candidate that fails a case never gets into shadow.
        refused = author.post("/v1/policy/candidates", json={"files": candidate_files(
            policy_dir, "data.polar", 'task_profile("coaching", "service_needs_plans");',
            "")})
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "policy_rejected"
        assert author.post("/v1/policy/candidates",
                           json={"files": {"../x.polar": "f(1);"}}).status_code == 400
        # Health data hidden under a protection order too: the suites still pass.
        files = candidate_files(policy_dir, "data.polar", 'protected_by_order("name_contact");',
                                'protected_by_order("name_contact");\n'
                                'protected_by_order("health_work_capacity");')
        uploaded = author.post("/v1/policy/candidates", json={"files": files})
        assert uploaded.status_code == 201, uploaded.text
        candidate = uploaded.json()["version"]
        active = live_policy(live)["version"]
        assert candidate != active

        with live.client("t-admin") as admin:
            world = World(admin, grant=False).build()
            world.import_grant(world.grant, world.grant_data(
                scopes=["name_contact", "service_needs_plans", "health_work_capacity"]))
            world.put("clients", world.client, {"home_municipality": world.municipality,
                                                "protection_order": True,
                                                "area_client": True})
        with live.client("t-pep") as pep:
            health = pep.post("/access/v1/evaluation",
                              json=world.request("health_work_capacity")).json()
            contact = pep.post("/access/v1/evaluation",
                               json=world.request("name_contact")).json()
        assert health["decision"] is True  # the active policy allows it
        assert contact["context"]["reason"] == "protection_order"

        # The shadow decides off the hot path: wait until it has seen both.
        deadline = time.monotonic() + 10
        shadow = author.get("/v1/policy/candidates").json()["candidate"]
        while shadow["evaluated"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            shadow = author.get("/v1/policy/candidates").json()["candidate"]
        assert shadow["version"] == candidate and shadow["evaluated"] >= 2
        assert shadow["diverged"] == 1 and shadow["dropped"] == 0
        assert shadow["examples_held"] == 1 and "examples" not in shadow
        # The examples are personal data: no justification, no read; a read is recorded.
        where = f"/v1/policy/candidates/{candidate}/examples"
        for blank in ("", "   ", "\t\n"):
            refused = author.get(where, params={"justification": blank})
            assert refused.status_code == 400, refused.text
        assert author.get(where).status_code == 400
        with live.client("t-pep") as pep:
            assert pep.get(where, params={"justification": "x" * 5}).status_code == 403
        read = author.get(where, params={"justification": "why the candidate differs"})
        assert read.status_code == 200, read.text
        example = read.json()["examples"][0]
        with live.client("t-auditor") as auditor:
            reads = auditor.get("/v1/audit/decisions", params={
                "record_type": "audit_read", "justification": "checking shadow reads"}).json()
        shadow_reads = [r for r in reads["records"]
                        if r["details"]["read"] == "shadow_examples"]
        assert len(shadow_reads) == 1
        assert shadow_reads[0]["details"]["justification"] == "why the candidate differs"
        assert shadow_reads[0]["details"]["answered"] == 1
        assert shadow_reads[0]["caller"]
        assert example["category"] == "health_work_capacity" and example["user"] == world.user
        assert example["active"] == {"decision": True, "reason": "allowed",
                                     "policy_version": active}
        assert example["candidate"] == {"decision": False, "reason": "protection_order"}
        metrics = author.get("/metrics").text
        assert (f'pdp_policy_shadow_divergences_total{{active="{active}",'
                f'candidate="{candidate}"}} 1.0') in metrics

        # Discarded, it is gone; uploaded again and promoted, it is in force.
        assert author.delete(f"/v1/policy/candidates/{candidate}").json() == {
            "discarded": candidate}
        assert author.get("/v1/policy/candidates").json() == {"candidate": None}
        assert author.delete(f"/v1/policy/candidates/{candidate}").status_code == 404
        assert author.post("/v1/policy/candidates", json={"files": files}).status_code == 201
        promoted = author.post(f"/v1/policy/candidates/{candidate}/promote")
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["version"] == candidate and promoted.json()["changed"] is True
    assert 'protected_by_order("health_work_capacity")' in (policy_dir / "data.polar").read_text()
    with live.client("t-pep") as pep:
        after = pep.post("/access/v1/evaluation",
                         json=world.request("health_work_capacity")).json()
    assert after["context"]["reason"] == "protection_order"
    assert after["context"]["policy_version"] == candidate


def test_watched_policy_files_go_live_when_they_pass(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    watched = tmp_path_factory.mktemp("watched") / "policies"
    shutil.copytree(POLICIES, watched)
    server = start_server(tmp_path_factory.mktemp("watch"), env={
        "PDP_POLICY_DIR": str(watched), "PDP_POLICY_WATCH_SECONDS": "0.2"})
    try:
        old = live_policy(server)["version"]
        data = watched / "data.polar"
        data.write_text(data.read_text() + "\n# Watched.\n")
        deadline = time.monotonic() + 20
        while live_policy(server)["version"] == old and time.monotonic() < deadline:
            time.sleep(0.1)
        new = live_policy(server)
        assert new["version"] != old and new["suites"]["failed"] == 0
        # A broken edit is refused: the version in force stays.
        rules = watched / "rules.polar"
        rules.write_text(rules.read_text().replace("failing(r,", "failing(r;", 1))
        time.sleep(2)
        assert live_policy(server)["version"] == new["version"]
        assert "refused" in server.log.read_text()
    finally:
        stop_server(server)


# -- the decision cache's shape invariants (tests/test_shape_check.py has the unit cases) ---

def test_a_policy_that_breaks_the_shape_invariants_is_refused_and_the_old_one_serves(
        live: Server, world: World, policy_dir: Path) -> None:
    from tests.support.shape_breaks import BROKEN

    version = live_policy(live)["version"]
    for what, old, new, says in BROKEN:
        error = refused(live, policy_dir, "rules.polar", old, new)
        assert "shape invariants" in error["message"] and says in error["message"], what
        detail = error["details"][0]
        assert detail["file"].endswith("rules.polar") and detail["line"] > 1, what
        assert detail["column"] >= 1 and says in detail["construct"], what
    # What the text does not show, the property check finds.
    error = refused(live, policy_dir, "rules.polar",
                    "r.client_home in r.area_municipalities and",
                    'x = "092" and r.client_home != x and '
                    "r.client_home in r.area_municipalities and")
    assert "answers records of one shape differently" in error["message"]
    assert error["details"] and "became" in error["details"][0]["message"]
    made = decide(live, world)
    assert made["decision"] is True and made["context"]["policy_version"] == version
    assert live_policy(live)["version"] == version


def test_a_candidate_that_breaks_the_shape_invariants_is_refused(
        live: Server, policy_dir: Path) -> None:
    from tests.support.shape_breaks import BROKEN

    _, old, new, says = BROKEN[1]  # timestamp arithmetic
    files = candidate_files(policy_dir, "rules.polar", old, new)
    with live.client("t-policy") as author:
        uploaded = author.post("/v1/policy/candidates", json={"files": files}, timeout=120)
        assert uploaded.status_code == 409, uploaded.text
        error = uploaded.json()["error"]
        assert error["code"] == "policy_rejected" and says in error["message"]
        assert error["details"][0]["line"] > 1
        tested = author.post("/v1/policy/test", json={"files": files}, timeout=120)
        assert tested.status_code == 400, tested.text
        assert says in tested.json()["error"]["message"]
        # Hidden behind a variable: the sandboxed property check refuses it.
        reason = 'failing(r, "no_active_relationship")'
        hidden = candidate_files(
            policy_dir, "rules.polar", f"{reason} if not active_relationship(r);",
            f"{reason} if not active_relationship(r);\n{reason} if rel in r.relationships"
            " and rel.municipality != r.user_municipality;")
        uploaded = author.post("/v1/policy/candidates", json={"files": hidden}, timeout=120)
        assert uploaded.status_code == 409, uploaded.text
        assert "one shape differently" in uploaded.json()["error"]["message"]
        assert author.get("/v1/policy/candidates").json()["candidate"] is None

"""A write is seen by the very next decision, whatever is cached (issue: freshness).

In-process: the app (tests/support/asgi.py); a write by another process (`pdp facts
import`) reaches it through the store it polls."""

from __future__ import annotations

import httpx
import pytest

from tests.support.world import World, decide


@pytest.fixture
def warm(pep: httpx.Client, world: World) -> World:
    # Twice, so that the second answer comes from the decision cache.
    for _ in range(2):
        assert decide(pep, world.request())["decision"] is True
    return world


def test_revoked_grant_is_denied_next(pep: httpx.Client, admin: httpx.Client,
                                      warm: World) -> None:
    revoked = admin.post(f"/v1/grants/{warm.grant}/revoke", json={"reason": "task_ended"})
    assert revoked.status_code == 200, revoked.text
    assert decide(pep, warm.request())["context"]["reason"] == "no_active_grant"


def test_suspended_grant_is_denied_next(pep: httpx.Client, admin: httpx.Client,
                                        warm: World) -> None:
    suspended = admin.post(f"/v1/grants/{warm.grant}/suspend",
                           json={"reason": "suspected misuse"})
    assert suspended.status_code == 200, suspended.text
    assert decide(pep, warm.request())["context"]["reason"] == "no_active_grant"


def test_suspended_user_is_denied_next(pep: httpx.Client, warm: World) -> None:
    warm.put("users", warm.user, {"municipality": warm.municipality, "display_name": "X",
                                  "tasks": ["coaching"], "status": "suspended"})
    assert decide(pep, warm.request())["context"]["reason"] == "user_inactive"


def test_client_who_moved_is_denied_next(pep: httpx.Client, warm: World) -> None:
    warm.put("clients", warm.client, {"home_municipality": "297", "area_client": True})
    assert decide(pep, warm.request())["context"]["reason"] == "client_not_own_municipality"


def test_protection_order_is_seen_next(pep: httpx.Client, warm: World) -> None:
    assert decide(pep, warm.request(category="name_contact"))["decision"] is True
    warm.put("clients", warm.client, {"home_municipality": warm.municipality,
                                      "protection_order": True, "area_client": True})
    result = decide(pep, warm.request(category="name_contact"))
    assert result["context"]["reason"] == "protection_order"


def test_ended_relationship_is_denied_next(pep: httpx.Client, warm: World) -> None:
    warm.put("relationships", warm.relationship, {
        "client": warm.client, "municipality": warm.municipality, "service": "coaching",
        "starts_at": "2025-06-01T00:00:00+03:00", "ends_at": "2025-07-01T00:00:00+03:00"})
    assert decide(pep, warm.request())["context"]["reason"] == "no_active_relationship"


def test_rescinded_agreement_is_denied_next(pep: httpx.Client, admin: httpx.Client) -> None:
    # 178 is this test's own: a rescinded agreement is never put back in force.
    world = World(admin, municipality="178").build()
    assert decide(pep, world.request())["decision"] is True
    assert decide(pep, world.request())["decision"] is True
    rescinded = admin.post("/v1/agreements/178/rescind", json={"reason": "misuse"})
    assert rescinded.status_code == 200, rescinded.text
    assert decide(pep, world.request())["context"]["reason"] == "agreement_not_in_force"
    # Rescission revoked every right of the municipality, and no write puts the
    # agreement back in force or removes it.
    revoked = world.admin.get(f"/v1/grants/{world.grant}").json()
    assert revoked["status"] == "revoked"
    back = admin.put("/v1/agreements/178", json={"area": "kuopio", "status": "in_force",
                                                  "signed_at": "2025-01-01T00:00:00+02:00"})
    assert back.status_code == 409 and back.json()["error"]["code"] == "use_workflow"
    gone = admin.delete("/v1/agreements/178")
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "use_workflow"
    assert decide(pep, world.request())["context"]["reason"] == "agreement_not_in_force"


def test_area_membership_change_is_seen_next(pep: httpx.Client, admin: httpx.Client) -> None:
    world = World(admin, municipality="686").build()
    assert decide(pep, world.request())["decision"] is True
    world.put("agreements", "686", {"area": "joensuu", "status": "in_force",
                                    "signed_at": "2025-01-01T00:00:00+02:00"})
    assert decide(pep, world.request())["context"]["reason"] == "client_outside_area"
    world.put("agreements", "686", {"area": "kuopio", "status": "in_force",
                                    "signed_at": "2025-01-01T00:00:00+02:00"})


def test_new_grant_for_the_user_is_seen_next(pep: httpx.Client, warm: World) -> None:
    assert decide(pep, warm.request(category="education_work_history"))["decision"] is False
    warm.import_grant(warm.grant + "-extra", warm.grant_data(scopes=["education_work_history"]))
    assert decide(pep, warm.request(category="education_work_history"))["decision"] is True


def test_write_by_another_process_is_picked_up(pep: httpx.Client, warm: World,
                                               server: object) -> None:
    """A write committed to the same store by another process (here: the CLI importer)
    reaches the server within its poll interval, and then its decisions."""
    import json
    import os
    import subprocess
    import sys
    import time

    from tests.support.servers import ROOT

    line = json.dumps({"kind": "user", "id": warm.user, "data": {
        "municipality": warm.municipality, "display_name": "Testi Käyttäjä",
        "tasks": ["coaching"], "status": "suspended"}})
    env = {**os.environ, "PDP_DATABASE_URL": _database_url(server)}
    done = subprocess.run([sys.executable, "-m", "pdp", "facts", "import", "-"],
                          input=line.encode(), env=env, cwd=ROOT, capture_output=True)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 5
    while decide(pep, warm.request())["decision"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert decide(pep, warm.request())["context"]["reason"] == "user_inactive"


def _database_url(server: object) -> str:
    store_file = server.store_file  # type: ignore[attr-defined]
    return f"sqlite:///{store_file}"

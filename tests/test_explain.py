"""Explain (issue 9, part 2): every rule of DOMAIN.md's order with passed or failed and
the facts it read — over HTTP in-process (tests/support/asgi.py), and from `pdp explain`
against a real server."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.support.servers import Server
from tests.support.world import AREA, World

ORDER = ["unknown_subject", "user_inactive", "agreement_not_in_force", "no_active_grant",
         "unknown_resource", "client_outside_area", "client_not_own_municipality",
         "own_record", "purpose_invalid", "no_active_relationship", "category_not_necessary",
         "protection_order", "action_not_permitted"]


def explained(server: Server, body: dict[str, Any], token: str = "t-auditor") -> httpx.Response:
    with server.client(token) as client:
        return client.post("/v1/explain", json=body)


def test_an_allow_passes_every_rule(server: Server, world: World) -> None:
    response = explained(server, world.request("service_needs_plans", "write"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["decision"] is True and body["reason"] == "allowed"
    assert body["grant"] == world.grant and body["explain_id"]
    assert [r["check"] for r in body["rules"]] == ORDER
    assert [r["rule"] for r in body["rules"]] == [1, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert all(r["passed"] for r in body["rules"])
    rule2 = body["rules"][2]
    assert rule2["title"].startswith("Agreement in force")
    assert set(rule2["reads"]) == {"agreement_status", "now", "agreement_ends_at"}
    assert rule2["reads"]["agreement_status"] == "in_force"


def test_a_deny_lists_every_failing_rule_not_only_the_first(server: Server,
                                                           admin: httpx.Client) -> None:
    world = World(admin).build()
    world.put("users", world.user, {"municipality": world.municipality, "display_name": "T",
                                    "tasks": ["coaching"], "status": "suspended"})
    world.put("clients", world.client, {"home_municipality": world.municipality,
                                        "protection_order": True, "area_client": False})
    body = explained(server, world.request("name_contact", "write")).json()
    assert body["decision"] is False and body["reason"] == "user_inactive"
    failed = [r["check"] for r in body["rules"] if not r["passed"]]
    # suspended (1), no longer the authority's job-seeker client (4), contact data under
    # a protection order (10), and contact data may not be written (11).
    assert failed == ["user_inactive", "client_outside_area", "protection_order",
                      "action_not_permitted"]
    by_check = {r["check"]: r for r in body["rules"]}
    assert by_check["user_inactive"]["reads"] == {"user_status": "suspended"}
    assert by_check["client_outside_area"]["reads"] == {
        "client_home": world.municipality, "area_municipalities": [c for c, _ in AREA],
        "client_area_client": False}
    assert by_check["protection_order"]["reads"] == {"client_protection_order": True}


# carries: C-3, C-11
def test_the_purposes_of_the_rights_and_the_records_owner_are_read(server: Server,
                                                                   world: World) -> None:
    """Rule 7 reads the user's tasks and the rights (their purposes); rule 11 the
    record's owner the request names and the user's municipality."""
    body = explained(server, world.request("name_contact", purpose="training")).json()
    assert body["reason"] == "purpose_invalid"
    rule7 = {r["check"]: r for r in body["rules"]}["purpose_invalid"]
    assert rule7["passed"] is False
    assert rule7["reads"]["purpose"] == "training"
    assert rule7["reads"]["user_tasks"] == ["coaching"]
    assert [g["purposes"] for g in rule7["reads"]["grants"]] == [["coaching"]]
    body = explained(server, world.request("service_needs_plans", "write",
                                           owner="authority")).json()
    assert (body["decision"], body["reason"]) == (False, "action_not_permitted")
    assert [r["check"] for r in body["rules"] if not r["passed"]] == ["action_not_permitted"]
    rule11 = body["rules"][-1]
    assert rule11["rule"] == 11 and rule11["reads"]["record_owner"] == "authority"
    assert rule11["reads"]["user_municipality"] == world.municipality
    own = explained(server, world.request("service_needs_plans", "write")).json()
    assert own["decision"] is True


def test_only_policy_admins_and_auditors_explain(server: Server, world: World) -> None:
    assert explained(server, world.request(), "t-pep").status_code == 403
    assert explained(server, world.request(), "t-policy").status_code == 200
    assert explained(server, {"subject": {}}, "t-auditor").status_code == 400


@pytest.mark.process  # the CLI asks a served PDP
def test_pdp_explain_prints_every_rule(server: Server, world: World) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pdp", "explain", "--user", world.user, "--client",
         world.client, "--category", "benefits", "--purpose", "coaching", "--url", server.url,
         "--token", "t-auditor"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr  # denied
    lines = done.stdout.splitlines()
    assert len(lines) == len(ORDER) + 1
    assert lines[10].startswith("FAIL  9 category_not_necessary")
    assert lines[0].startswith("pass  1 unknown_subject") and "user_known=true" in lines[0]
    assert lines[-1].startswith("deny category_not_necessary (policy sha256:")

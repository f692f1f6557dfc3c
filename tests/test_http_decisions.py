"""Decisions over HTTP: the AuthZEN shapes, batches and their semantics, min_facts_version.

In-process (the app, tests/support/asgi.py), but for the discovery document, which is made
from `pdp serve`'s address or PDP_PUBLIC_URL: real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from pdp.service.settings import check_public_url, public_url_for
from tests.support.servers import start_server, stop_server
from tests.support.world import World, decide


def test_allow_carries_reason_id_and_versions(pep: httpx.Client, world: World) -> None:
    result = decide(pep, world.request())
    assert result["decision"] is True
    context = result["context"]
    assert context["reason"] == "allowed"
    assert context["policy_version"].startswith("sha256:")
    assert isinstance(context["facts_version"], int) and context["facts_version"] > 0
    other = decide(pep, world.request())
    assert other["context"]["decision_id"] != context["decision_id"]


def test_each_rule_is_reported_over_http(pep: httpx.Client, world: World) -> None:
    assert decide(pep, world.request(category="benefits"))["context"]["reason"] == (
        "category_not_necessary")
    assert decide(pep, world.request(purpose="guidance"))["context"]["reason"] == (
        "purpose_invalid")
    write_name = decide(pep, world.request(category="name_contact", action="write"))
    assert write_name["context"]["reason"] == "action_not_permitted"
    assert decide(pep, world.request(action="write"))["decision"] is True
    body = world.request()
    body["subject"]["id"] = "nobody-at-all"
    assert decide(pep, body)["context"]["reason"] == "unknown_subject"
    body = world.request()
    body["resource"]["id"] = "no-such-client"
    assert decide(pep, body)["context"]["reason"] == "unknown_resource"


def test_client_from_another_area_and_municipality(pep: httpx.Client, world: World) -> None:
    world.put("clients", world.client, {"home_municipality": "167", "area_client": True})
    assert decide(pep, world.request())["context"]["reason"] == "client_outside_area"
    world.put("clients", world.client, {"home_municipality": "297", "area_client": True})
    assert decide(pep, world.request())["context"]["reason"] == "client_not_own_municipality"


# carries: C-3, C-7
def test_a_right_is_for_the_purposes_it_was_approved_for(admin: httpx.Client,
                                                         pep: httpx.Client) -> None:
    """A right approved for training does not let its holder coach, though coaching is
    among the user's tasks and a coaching relationship is open; training it allows."""
    world = World(admin, grant=False).build()
    world.put("users", world.user, {"municipality": world.municipality, "display_name": "T",
                                    "tasks": ["coaching", "training"], "status": "active"})
    world.import_grant(world.grant, world.grant_data(purposes=["training"],
                                                     scopes=["name_contact"]))
    denied = decide(pep, world.request(category="name_contact"))
    assert (denied["decision"], denied["context"]["reason"]) == (False, "purpose_invalid")
    world.put("relationships", f"{world.p}-r2", {
        "client": world.client, "municipality": world.municipality, "service": "training",
        "starts_at": "2025-06-01T00:00:00+03:00"})
    allowed = decide(pep, world.request(category="name_contact", purpose="training"))
    assert allowed["decision"] is True
    # a second right, for coaching, makes coaching lawful too
    world.import_grant(f"{world.p}-g2", world.grant_data(purposes=["coaching"]))
    assert decide(pep, world.request(category="name_contact"))["decision"] is True


# carries: C-2, C-9
def test_a_resident_who_is_no_longer_an_area_client_is_outside_the_area(
        pep: httpx.Client, world: World) -> None:
    assert decide(pep, world.request())["decision"] is True
    world.put("clients", world.client, {"home_municipality": world.municipality,
                                        "area_client": False})
    result = decide(pep, world.request())
    assert (result["decision"], result["context"]["reason"]) == (False, "client_outside_area")
    world.put("clients", world.client, {"home_municipality": world.municipality,
                                        "area_client": True})
    assert decide(pep, world.request())["decision"] is True


# carries: C-9
def test_a_client_fact_must_say_whether_it_is_an_area_client(admin: httpx.Client,
                                                             world: World) -> None:
    for body in ({"home_municipality": "749"},
                 {"home_municipality": "749", "area_client": "yes"},
                 {"home_municipality": "749", "area_client": None}):
        response = admin.put(f"/v1/clients/{world.p}-c9", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_request"
        assert "area_client" in response.text
    assert admin.get(f"/v1/clients/{world.p}-c9").status_code == 404
    stored = admin.get(f"/v1/clients/{world.client}").json()
    assert stored["area_client"] is True


# carries: C-11
def test_a_write_names_the_records_owner(pep: httpx.Client, world: World) -> None:
    """Writing is limited to records the user's own municipality produced: a write to
    the authority's record, another municipality's or one that names no owner is
    action_not_permitted; reads do not look at the owner. The allow for the own
    municipality's record is memoised and must not answer for another owner."""
    own = decide(pep, world.request(action="write", owner=world.municipality))
    assert own["decision"] is True
    assert decide(pep, world.request(action="write", owner=world.municipality))["decision"]
    for owner in ("authority", "", "297", "167"):
        result = decide(pep, world.request(action="write", owner=owner))
        assert (result["decision"], result["context"]["reason"]) == (
            False, "action_not_permitted"), owner
        read = decide(pep, world.request(owner=owner))
        assert read["decision"] is True, owner
    # the other way round: first a deny for the authority's record, then the own one
    assert not decide(pep, world.request("services_assessments", "write",
                                         owner="authority"))["decision"]
    assert decide(pep, world.request("name_contact", "write"))["context"]["reason"] == (
        "action_not_permitted")  # not a writable category, whoever owns the record


# carries: C-11
def test_a_malformed_owner_is_400_and_an_item_error_in_a_batch(pep: httpx.Client,
                                                              world: World) -> None:
    for owner in ("74", "7490", "Authority", "kuopio", " 749", "749\n", 749, True, ""):
        body = world.request(action="write")
        body["resource"]["properties"]["owner"] = owner
        response = pep.post("/access/v1/evaluation", json=body)
        assert response.status_code == 400, (owner, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
        assert "owner" in response.text
    bad = world.request(action="write", owner="authority")
    bad["resource"]["properties"]["owner"] = "74"
    results = _batch(pep, {"evaluations": [world.request(action="write"), bad,
                                           world.request(action="write", owner="authority")]})
    assert [r["decision"] for r in results] == [True, False, False]
    assert results[1]["context"]["error"]["code"] == "invalid_request"
    assert results[2]["context"]["reason"] == "action_not_permitted"
    # batch defaults: an item's own resource replaces the default's, owner and all
    base = world.request(action="write")
    defaults = _batch(pep, {
        "subject": base["subject"], "action": base["action"], "context": base["context"],
        "resource": base["resource"],
        "evaluations": [{}, {"resource": {"properties": {"category": "service_needs_plans"}}}]})
    assert [r["context"]["reason"] for r in defaults] == ["allowed", "action_not_permitted"]


# carries: C-8
def test_an_agreement_that_requires_assignment_lets_no_team_in(admin: httpx.Client,
                                                               pep: httpx.Client) -> None:
    world = World(admin, "239").build()  # Keitele: no other test writes its agreement
    try:
        assert decide(pep, world.request())["decision"] is True  # names nobody: the team
        world.put("agreements", "239", {"area": "kuopio", "status": "in_force",
                                        "signed_at": "2025-01-01T00:00:00+02:00",
                                        "assignment_required": True})
        result = decide(pep, world.request())
        assert (result["decision"], result["context"]["reason"]) == (
            False, "no_active_relationship")
        world.put("relationships", world.relationship, {
            "client": world.client, "municipality": "239", "service": "coaching",
            "starts_at": "2025-06-01T00:00:00+03:00", "assigned_users": [world.user]})
        assert decide(pep, world.request())["decision"] is True
    finally:
        world.put("agreements", "239", {"area": "kuopio", "status": "in_force",
                                        "signed_at": "2025-01-01T00:00:00+02:00"})
    stored = admin.get("/v1/agreements/239").json()
    assert stored["assignment_required"] is False


def _batch(pep: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = pep.post("/access/v1/evaluations", json=body)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["evaluations"]
    return results


def test_batch_defaults_are_merged_and_items_win(pep: httpx.Client, world: World) -> None:
    base = world.request()
    results = _batch(pep, {
        "subject": base["subject"], "action": base["action"], "context": base["context"],
        "resource": {"type": "client_record", "id": world.client},
        "evaluations": [
            {"resource": {"properties": {"category": "service_needs_plans"}}},
            {"resource": {"properties": {"category": "benefits"}}},
            {"resource": {"properties": {"category": "name_contact"}},
             "action": {"name": "write"}},
            {"resource": {"properties": {"category": "name_contact"}},
             "context": {"purpose": "training"}},
        ]})
    assert [r["context"]["reason"] for r in results] == [
        "allowed", "category_not_necessary", "action_not_permitted", "purpose_invalid"]
    assert [r["decision"] for r in results] == [True, False, False, False]


def test_an_items_own_object_replaces_the_default_whole(pep: httpx.Client,
                                                        world: World) -> None:
    """AuthZEN 1.0, certification case c-3-2-7: an item's subject, action, resource or
    context replaces the default whole; only a missing type/id (subject, resource) or
    name (action) falls back. Merged one level deep, an item's context without a purpose
    kept the default's purpose and was allowed."""
    base = world.request()
    results = _batch(pep, {
        "subject": {**base["subject"], "properties": {"department": "youth"}},
        "action": base["action"], "resource": base["resource"],
        "context": base["context"],
        "evaluations": [
            {},  # every default
            {"context": {"x": 1}},  # no purpose of its own: the default's is not merged in
            {"context": {}},
            {"resource": {"properties": {"owner": world.municipality}}},  # no category
            {"resource": {"id": "no-such-client"}},  # type and properties? type only
            {"subject": {"id": world.user}, "action": {}},  # type and name fall back
            {"subject": {"type": "user"}},  # the id falls back
            {"action": {"name": "read", "properties": {"why": "x"}}},
        ]})
    reasons = [r["context"].get("reason") for r in results]
    assert reasons[:3] == ["allowed", "purpose_invalid", "purpose_invalid"]
    assert [r["decision"] for r in results[:3]] == [True, False, False]
    # properties replaced whole: without its category the item is invalid, alone
    assert results[3]["decision"] is False
    assert results[3]["context"]["error"]["code"] == "invalid_request"
    assert "properties" in results[3]["context"]["error"]["message"]
    # the type falls back, the properties do not: invalid too, not unknown_resource
    assert results[4]["context"]["error"]["code"] == "invalid_request"
    assert reasons[5:] == ["allowed", "allowed", "allowed"]


def test_batch_semantics(pep: httpx.Client, world: World) -> None:
    allow = world.request()
    deny = world.request(category="benefits")
    items = [allow, allow, deny, allow, deny]
    all_results = _batch(pep, {"evaluations": items})
    assert [r["decision"] for r in all_results] == [True, True, False, True, False]
    explicit = _batch(pep, {"evaluations": items,
                            "options": {"evaluations_semantic": "execute_all"}})
    assert [r["decision"] for r in explicit] == [True, True, False, True, False]
    first_deny = _batch(pep, {"evaluations": items,
                              "options": {"evaluations_semantic": "deny_on_first_deny"}})
    assert [r["decision"] for r in first_deny] == [True, True, False]
    first_permit = _batch(pep, {"evaluations": [deny, deny, allow, deny],
                                "options": {"evaluations_semantic": "permit_on_first_permit"}})
    assert [r["decision"] for r in first_permit] == [False, False, True]
    none_permit = _batch(pep, {"evaluations": [deny, deny],
                               "options": {"evaluations_semantic": "permit_on_first_permit"}})
    assert [r["decision"] for r in none_permit] == [False, False]


def test_unknown_semantic_is_invalid(pep: httpx.Client, world: World) -> None:
    response = pep.post("/access/v1/evaluations", json={
        "evaluations": [world.request()], "options": {"evaluations_semantic": "most"}})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_invalid_item_does_not_fail_the_batch(pep: httpx.Client, world: World) -> None:
    bad = world.request(category="not-a-category")
    results = _batch(pep, {"evaluations": [world.request(), bad, world.request()],
                           "options": {"evaluations_semantic": "deny_on_first_deny"}})
    assert len(results) == 2
    assert results[0]["decision"] is True
    assert results[1]["decision"] is False
    assert results[1]["context"]["error"]["code"] == "invalid_request"
    assert "category" in results[1]["context"]["error"]["message"]


def test_min_facts_version(pep: httpx.Client, admin: httpx.Client, world: World) -> None:
    written = admin.post(f"/v1/grants/{world.grant}/suspend",
                         json={"reason": "suspected misuse"})
    assert written.status_code == 200, written.text
    version = written.json()["facts_version"]
    result = decide(pep, world.request(min_facts_version=version))
    assert result["context"]["facts_version"] >= version
    assert result["context"]["reason"] == "no_active_grant"
    future = pep.post("/access/v1/evaluation",
                      json=world.request(min_facts_version=version + 10_000))
    assert future.status_code == 503
    assert future.json()["error"]["code"] == "unavailable"
    assert future.headers["retry-after"]


@pytest.mark.process  # the URL comes from `pdp serve`'s --host/--port
def test_well_known_configuration(server: Any) -> None:
    response = httpx.get(server.url + "/.well-known/authzen-configuration")
    assert response.status_code == 200
    body = response.json()
    assert body["policy_decision_point"] == server.url
    assert body["access_evaluation_endpoint"] == server.url + "/access/v1/evaluation"
    assert body["access_evaluations_endpoint"] == server.url + "/access/v1/evaluations"
    # PDP_PUBLIC_URL unset: made from `pdp serve`'s --host/--port, never from the request
    forged = httpx.get(server.url + "/.well-known/authzen-configuration",
                       headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example",
                                "X-Forwarded-Proto": "https"})
    assert forged.json() == body


def test_the_discovery_document_names_the_configured_public_url(tmp_path: Path) -> None:
    """It was made from the request's Host header: a forged Host put another server's
    URLs into the document a PEP trusts (and into any cache in front of it)."""
    server = start_server(tmp_path, env={"PDP_PUBLIC_URL": "https://pdp.example.fi/authz/"})
    try:
        for headers in ({}, {"Host": "evil.example"},
                        {"Host": "evil.example:8443", "X-Forwarded-Host": "evil.example"}):
            response = httpx.get(server.url + "/.well-known/authzen-configuration",
                                 headers=headers)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["policy_decision_point"] == "https://pdp.example.fi/authz"
            assert body["access_evaluation_endpoint"] == (
                "https://pdp.example.fi/authz/access/v1/evaluation")
            assert all(url.startswith("https://pdp.example.fi/authz")
                       for url in body.values()), body
            assert "evil" not in response.text
        assert "public URL https://pdp.example.fi/authz " in server.log.read_text()
    finally:
        stop_server(server)


@pytest.mark.parametrize("url", [
    "ftp://pdp.example.fi", "pdp.example.fi", "https://", "https:///authz",
    "https://pdp.example.fi/?next=evil", "https://pdp.example.fi/#x",
    "https://user:pw@pdp.example.fi", "https://pdp.example.fi:99999",
    "https://pdp.example.fi/a b", "javascript:alert(1)"])
def test_a_bad_public_url_stops_the_service_at_start(tmp_path: Path, url: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pdp", "serve", "--demo", "--port", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PDP_PUBLIC_URL": url})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "PDP_PUBLIC_URL" in done.stderr


def test_the_default_public_url_comes_from_the_configured_address() -> None:
    assert public_url_for("127.0.0.1", 8080) == "http://127.0.0.1:8080"
    assert public_url_for("0.0.0.0", 80) == "http://127.0.0.1:80"
    assert public_url_for("::", 8080) == "http://[::1]:8080"
    assert public_url_for("::1", 8080) == "http://[::1]:8080"
    assert public_url_for("pdp.internal", 9000) == "http://pdp.internal:9000"
    assert check_public_url("https://pdp.example.fi/") == "https://pdp.example.fi"


def test_health_and_metrics(server: Any, pep: httpx.Client, world: World) -> None:
    assert server.get("/healthz").status_code == 200
    ready = server.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    decide(pep, world.request(category="benefits"))
    decide(pep, world.request(category="benefits"))
    text = server.get("/metrics").text
    assert 'pdp_cache_requests_total{cache="decision",result="hit"}' in text
    assert 'pdp_cache_requests_total{cache="decision",result="miss"}' in text
    assert ('pdp_decisions_total{decision="false",purpose="coaching",'
            'reason="category_not_necessary"}') in text
    assert 'pdp_audit_records_total{type="decision"}' in text
    assert "pdp_facts_fresh 1.0" in text
    assert 'pdp_grants{state="active"}' in text
    assert "pdp_decision_duration_seconds_bucket" in text
    assert "pdp_facts_version" in text

"""Errors over HTTP (API.md "Errors"): 400 invalid_request (never 422 or 500) naming the
bad field, 404 not_found, 413 past the body limits, the batch limits, denials that are not
errors, and X-Request-ID on every response. In-process: the app (tests/support/asgi.py)."""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support.asgi import InProcess
from tests.support.world import World

MIB = 1024 * 1024
_ids = itertools.count(1)


def unique(prefix: str = "x") -> str:
    return f"err{next(_ids)}-{os.getpid()}-{prefix}"


def assert_invalid(response: httpx.Response, field: str | None = None) -> dict[str, Any]:
    """400 invalid_request in API.md's error shape; the message names `field`."""
    assert response.status_code == 400, f"{response.status_code} {response.text}"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == "invalid_request", body
    assert isinstance(error["message"], str) and error["message"], body
    assert set(error) <= {"code", "message", "details"}, body
    if "details" in error:
        assert isinstance(error["details"], list), body
    if field is not None:
        assert field in error["message"], f"{field!r} not named in {error['message']!r}"
    return body


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, f"{response.status_code} {response.text}"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body


def facts_version(client: httpx.Client) -> int:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    version: int = response.json()["facts_version"]
    return version


def assert_nothing_committed(admin: httpx.Client, version: int) -> None:
    """No write since `version` but misuse cases: the shared server may open one at any
    time from earlier tests' decisions, and a case is an event of its own that advances
    facts_version (so comparing versions alone would be flaky)."""
    now = facts_version(admin)
    cases: set[int] = set()
    after = 0
    while now > version:
        page = admin.get("/v1/events", params={"after": after, "limit": 1000}).json()
        if not page["events"]:
            break
        cases |= {e["facts_version"] for e in page["events"]
                  if e["facts_version"] > version and e["type"].startswith("case.")}
        after = page["next_after"]
    assert set(range(version + 1, now + 1)) <= cases, (version, now, sorted(cases))


def decision_request(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject": {"type": "user", "id": unique("u")},
        "action": {"name": "read"},
        "resource": {"type": "client_record", "id": unique("c"),
                     "properties": {"category": "service_needs_plans"}},
        "context": {"purpose": "coaching"},
    }
    body.update(changes)
    return body


def without(body: dict[str, Any], path: str) -> dict[str, Any]:
    body = copy.deepcopy(body)
    *parents, last = path.split(".")
    target = body
    for part in parents:
        target = target[part]
    del target[last]
    return body


def with_value(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    *parents, last = path.split(".")
    target = body
    for part in parents:
        target = target[part]
    target[last] = value
    return body


def client_fact(**changes: Any) -> dict[str, Any]:
    return {"home_municipality": "749", "protection_order": False, "area_client": True,
            **changes}


def user_fact(**changes: Any) -> dict[str, Any]:
    return {"municipality": "749", "display_name": "Testi", "tasks": ["coaching"],
            "status": "active", **changes}


def grant_fact(**changes: Any) -> dict[str, Any]:
    return {"user": unique("u"), "purposes": ["coaching"], "scopes": ["name_contact"],
            "actions": ["read"], "valid_from": "2025-01-01T00:00:00+02:00",
            "valid_until": "2099-01-01T00:00:00+02:00", "status": "active",
            "legal_basis": "380/2023 125 § 1 mom.", **changes}


def agreement_fact(**changes: Any) -> dict[str, Any]:
    return {"area": "kuopio", "status": "in_force",
            "signed_at": "2025-01-01T00:00:00+02:00", **changes}


def relationship_fact(**changes: Any) -> dict[str, Any]:
    return {"client": unique("c"), "municipality": "749", "service": "coaching",
            "starts_at": "2025-06-01T00:00:00+03:00", **changes}


def area_fact(**changes: Any) -> dict[str, Any]:
    return {"name": "Testialue", "responsible_municipality": "998",
            "municipalities": [{"code": "998", "name": "Testikunta"}], **changes}


# -- 400 on decisions ----------------------------------------------------------------------

DECISION_PATHS = ["/access/v1/evaluation", "/access/v1/evaluations"]


@pytest.mark.parametrize("path", DECISION_PATHS)
@pytest.mark.parametrize("content", [b'{"subject": ', b"{'subject': 1}", b"", b"not json",
                                     b'{"a": 1,}', b"\xff\xfe", b"[" * 5000 + b"]" * 5000,
                                     b'{"subject": {"id": 1e999999}}',
                                     b'{"context": {"min_facts_version": 1' + b"0" * 40 + b"}}"],
                         ids=["truncated", "single-quotes", "empty", "text", "trailing-comma",
                              "not-utf8", "deeply-nested", "huge-float", "huge-int"])
def test_malformed_json_is_400(pep: httpx.Client, path: str, content: bytes) -> None:
    response = pep.post(path, content=content, headers={"Content-Type": "application/json"})
    assert_invalid(response)


@pytest.mark.parametrize("path", DECISION_PATHS)
@pytest.mark.parametrize("body", [[], [{"subject": {}}], "evaluation", 42, None, True],
                         ids=["list", "list-of-object", "string", "number", "null", "bool"])
def test_body_that_is_not_an_object_is_400(pep: httpx.Client, path: str, body: Any) -> None:
    assert_invalid(pep.post(path, content=orjson.dumps(body),
                            headers={"Content-Type": "application/json"}))


@pytest.mark.parametrize("missing", ["subject", "action", "resource", "resource.properties",
                                     "resource.properties.category", "subject.id",
                                     "resource.id", "action.name"])
def test_missing_required_field_is_400_naming_it(pep: httpx.Client, missing: str) -> None:
    body = without(decision_request(), missing)
    assert_invalid(pep.post("/access/v1/evaluation", json=body), missing)


WRONG_VALUES = [
    ("subject.id", 1001),
    ("subject.id", None),
    ("subject.id", ""),
    ("subject", "u-1001"),
    ("resource.id", 42),
    ("resource.properties", ["service_needs_plans"]),
    ("context", "coaching"),
    ("context.purpose", 42),
    ("context.purpose", ["coaching"]),
    ("context.min_facts_version", "3"),
    ("context.min_facts_version", -1),
    ("context.min_facts_version", 1.5),
    ("context.min_facts_version", True),
    ("resource.properties.category", "secrets"),
    ("resource.properties.category", "Service_Needs_Plans"),
    ("resource.properties.category", 5),
    ("action.name", "delete"),
    ("action.name", "READ"),
    ("action.name", 1),
    ("action", "read"),
    ("subject.type", "group"),
    ("resource.type", "file"),
]


@pytest.mark.parametrize(("field", "value"), WRONG_VALUES,
                         ids=[f"{f}={v!r}" for f, v in WRONG_VALUES])
def test_wrong_type_or_unknown_value_is_400_naming_the_field(
        pep: httpx.Client, field: str, value: Any) -> None:
    body = with_value(decision_request(), field, value)
    assert_invalid(pep.post("/access/v1/evaluation", json=body), field)


def test_unknown_category_in_batch_defaults_is_an_item_error(pep: httpx.Client) -> None:
    body = {"resource": {"type": "client_record", "id": unique("c"),
                         "properties": {"category": "secrets"}},
            "evaluations": [{"subject": {"type": "user", "id": unique("u")},
                             "action": {"name": "read"}, "context": {"purpose": "coaching"}}]}
    response = pep.post("/access/v1/evaluations", json=body)
    assert response.status_code == 200, response.text
    [item] = response.json()["evaluations"]
    assert item["decision"] is False
    assert item["context"]["error"]["code"] == "invalid_request"
    assert "category" in item["context"]["error"]["message"]


@pytest.mark.parametrize("body", [{}, {"evaluations": "all"}, {"evaluations": {"a": 1}},
                                  {"evaluations": [], "options": {"evaluations_semantic": "x"}}],
                         ids=["no-evaluations", "string", "object", "unknown-semantic"])
def test_bad_batch_envelope_is_400(pep: httpx.Client, body: dict[str, Any]) -> None:
    field = "evaluations_semantic" if "options" in body else "evaluations"
    assert_invalid(pep.post("/access/v1/evaluations", json=body), field)


# -- denials that are not errors -----------------------------------------------------------

def test_missing_purpose_is_a_purpose_invalid_denial(admin: httpx.Client,
                                                     pep: httpx.Client) -> None:
    world = World(admin).build()
    response = pep.post("/access/v1/evaluation", json=world.request(purpose=None))
    assert response.status_code == 200, response.text
    assert response.json()["decision"] is False
    assert response.json()["context"]["reason"] == "purpose_invalid"


def test_missing_context_is_a_purpose_invalid_denial(admin: httpx.Client,
                                                     pep: httpx.Client) -> None:
    world = World(admin).build()
    response = pep.post("/access/v1/evaluation", json=without(world.request(), "context"))
    assert response.status_code == 200, response.text
    assert response.json()["context"]["reason"] == "purpose_invalid"


@pytest.mark.parametrize("purpose", ["shopping", "", "COACHING", "training"])
def test_unknown_or_foreign_purpose_is_a_purpose_invalid_denial(
        admin: httpx.Client, pep: httpx.Client, purpose: str) -> None:
    """`training` is a known purpose, but not among this user's tasks."""
    world = World(admin).build()
    response = pep.post("/access/v1/evaluation", json=world.request(purpose=purpose))
    assert response.status_code == 200, response.text
    assert response.json()["decision"] is False
    assert response.json()["context"]["reason"] == "purpose_invalid"


def test_the_world_is_allowed_as_built(admin: httpx.Client, pep: httpx.Client) -> None:
    """The control for the denials: the same request with a good purpose is allowed."""
    world = World(admin).build()
    response = pep.post("/access/v1/evaluation", json=world.request())
    assert response.status_code == 200, response.text
    assert response.json()["decision"] is True
    assert response.json()["context"]["reason"] == "allowed"


def test_unknown_user_is_an_unknown_subject_denial(admin: httpx.Client,
                                                   pep: httpx.Client) -> None:
    world = World(admin).build()
    body = with_value(world.request(), "subject.id", unique("nobody"))
    response = pep.post("/access/v1/evaluation", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["decision"] is False
    assert response.json()["context"]["reason"] == "unknown_subject"


def test_unknown_client_is_an_unknown_resource_denial(admin: httpx.Client,
                                                      pep: httpx.Client) -> None:
    world = World(admin).build()
    body = with_value(world.request(), "resource.id", unique("nobody"))
    response = pep.post("/access/v1/evaluation", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["decision"] is False
    assert response.json()["context"]["reason"] == "unknown_resource"


# -- 400 on facts --------------------------------------------------------------------------

BAD_FACTS: list[tuple[str, str, dict[str, Any], str]] = [
    # (collection, id, data, field the message names)
    ("users", "", user_fact(status="retired"), "status"),
    ("users", "", user_fact(municipality="74"), "municipality"),
    ("users", "", user_fact(municipality="7490"), "municipality"),
    ("users", "", user_fact(municipality=749), "municipality"),
    ("users", "", user_fact(tasks=["cooking"]), "tasks"),
    ("users", "", user_fact(client_id="a b"), "client_id"),
    ("users", "", {k: v for k, v in user_fact().items() if k != "status"}, "status"),
    ("agreements", "997", agreement_fact(status="signed"), "status"),
    ("agreements", "997", agreement_fact(status="notice_given"), "ends_at"),
    ("agreements", "997", agreement_fact(signed_at=None), "signed_at"),
    ("clients", "", client_fact(protection_order="yes"), "protection_order"),
    ("clients", "", client_fact(protection_order=1), "protection_order"),
    ("clients", "", client_fact(home_municipality="74"), "home_municipality"),
    ("clients", "", client_fact(home_municipality="7490"), "home_municipality"),
    ("clients", "", client_fact(colour="red"), "colour"),
    ("clients", "", {}, "home_municipality"),
    ("relationships", "", relationship_fact(service="cooking"), "service"),
    ("relationships", "", relationship_fact(service="Coaching"), "service"),
    ("relationships", "", relationship_fact(municipality="74"), "municipality"),
    ("relationships", "", relationship_fact(ends_at="2025-06-01T00:00:00+03:00"), "ends_at"),
    ("relationships", "", relationship_fact(assigned_users="u-1"), "assigned_users"),
    ("areas", "", area_fact(municipalities=[{"code": "74", "name": "X"}]), "code"),
    ("areas", "", area_fact(responsible_municipality="7490"), "responsible_municipality"),
    ("areas", "", area_fact(municipalities="998"), "municipalities"),
    ("areas", "", area_fact(extra=1), "extra"),
]


@pytest.mark.parametrize(("collection", "fact_id", "data", "field"), BAD_FACTS,
                         ids=[f"{c}-{f}-{i}" for i, (c, _, _, f) in enumerate(BAD_FACTS)])
def test_fact_breaking_the_schema_is_400_and_not_stored(
        admin: httpx.Client, collection: str, fact_id: str, data: dict[str, Any],
        field: str) -> None:
    if collection == "agreements":
        # An agreement id is a municipality code; no World uses this one.
        admin.delete(f"/v1/agreements/{fact_id}")
        version = facts_version(admin)
        assert_invalid(admin.put(f"/v1/agreements/{fact_id}", json=data), field)
        assert_error(admin.get(f"/v1/agreements/{fact_id}"), 404, "not_found")
        assert_nothing_committed(admin, version)
        return
    fact_id = unique(collection)
    assert_invalid(admin.put(f"/v1/{collection}/{fact_id}", json=data), field)
    assert_error(admin.get(f"/v1/{collection}/{fact_id}"), 404, "not_found")


# A right that breaks the schema is still a facts write of a right: 409 use_workflow, before
# its body is validated (API.md "Rights"); nothing stored.
BAD_GRANTS: list[tuple[dict[str, Any], str]] = [
    (grant_fact(status="granted"), "status"),
    (grant_fact(scopes=["everything"]), "scopes"),
    (grant_fact(scopes=["name_contact", "cooking"]), "scopes"),
    (grant_fact(scopes=[]), "scopes"),
    (grant_fact(actions=["delete"]), "actions"),
    ({k: v for k, v in grant_fact().items() if k != "valid_until"},
     "valid_until"),
    (grant_fact(valid_until=None), "valid_until"),
    (grant_fact(valid_until="2025-01-01T00:00:00+02:00"), "valid_until"),
    (grant_fact(valid_until="2024-12-31T22:00:00+00:00"), "valid_until"),
    (grant_fact(valid_until="2024-06-01T00:00:00+02:00"), "valid_until"),
    (grant_fact(valid_until="2099-01-01T00:00:00"), "valid_until"),
    (grant_fact(valid_from="yesterday"), "valid_from"),
]


@pytest.mark.parametrize(("data", "field"), BAD_GRANTS,
                         ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_GRANTS)])
def test_a_right_breaking_the_schema_is_use_workflow_and_not_stored(
        admin: httpx.Client, data: dict[str, Any], field: str) -> None:
    fact_id = unique("grants")
    version = facts_version(admin)
    assert_error(admin.put(f"/v1/grants/{fact_id}", json=data), 409, "use_workflow")
    assert_error(admin.get(f"/v1/grants/{fact_id}"), 404, "not_found")
    batch = admin.post("/v1/facts:batch", json={"facts": [
        {"kind": "client", "id": unique("c"), "data": client_fact()},
        {"kind": "grant", "id": fact_id, "data": data}]})
    assert_error(batch, 409, "use_workflow")
    assert_nothing_committed(admin, version)


@pytest.mark.parametrize("content", [b'{"home_municipality": ', b"", b"{,}", b"\xff"],
                         ids=["truncated", "empty", "comma", "not-utf8"])
def test_fact_with_malformed_json_is_400_and_not_stored(admin: httpx.Client,
                                                         content: bytes) -> None:
    fact_id = unique("c")
    response = admin.put(f"/v1/clients/{fact_id}", content=content,
                         headers={"Content-Type": "application/json"})
    assert_invalid(response)
    assert_error(admin.get(f"/v1/clients/{fact_id}"), 404, "not_found")


@pytest.mark.parametrize("body", [[], [client_fact()], "749", 1, None],
                         ids=["list", "list-of-fact", "string", "number", "null"])
def test_fact_that_is_not_an_object_is_400_and_not_stored(admin: httpx.Client,
                                                          body: Any) -> None:
    fact_id = unique("c")
    assert_invalid(admin.put(f"/v1/clients/{fact_id}", content=orjson.dumps(body),
                             headers={"Content-Type": "application/json"}))
    assert_error(admin.get(f"/v1/clients/{fact_id}"), 404, "not_found")


def test_valid_grant_window_is_accepted(admin: httpx.Client) -> None:
    """The control for the window errors: valid_until one second after valid_from passes
    the schema. (No right is written through the facts API: past the schema, a write is
    409 use_workflow, tests/test_rights_procedure.py.)"""
    fact_id = unique("g")
    data = grant_fact(valid_until="2025-01-01T00:00:01+02:00")
    assert_error(admin.put(f"/v1/grants/{fact_id}", json=data), 409, "use_workflow")
    assert_error(admin.get(f"/v1/grants/{fact_id}"), 404, "not_found")


BAD_PATH_IDS = {
    "129-chars": "a" * 129,
    "space": "a%20b",
    "slash": "a%2Fb",
    "colon": "a%3Ab",
    "percent": "a%25b",
    "plus": "a+b",
    "non-ascii": "%C3%A4iti",
}


@pytest.mark.parametrize("collection", ["users", "clients", "grants", "relationships", "areas"])
@pytest.mark.parametrize("raw_id", list(BAD_PATH_IDS.values()), ids=list(BAD_PATH_IDS))
def test_bad_id_in_path_is_400_and_not_stored(admin: httpx.Client, collection: str,
                                              raw_id: str) -> None:
    data = {"users": user_fact(), "clients": client_fact(), "grants": grant_fact(),
            "relationships": relationship_fact(), "areas": area_fact()}[collection]
    version = facts_version(admin)
    assert_invalid(admin.put(f"/v1/{collection}/{raw_id}", json=data), "id")
    assert admin.get(f"/v1/{collection}/{raw_id}").status_code == 404
    assert_nothing_committed(admin, version)


def test_id_of_128_chars_is_accepted(admin: httpx.Client) -> None:
    fact_id = (unique("c") + "-" + "a" * 128)[:128]
    response = admin.put(f"/v1/clients/{fact_id}", json=client_fact())
    assert response.status_code == 200, response.text
    assert admin.get(f"/v1/clients/{fact_id}").status_code == 200


@pytest.mark.parametrize("code", ["74", "7490", "abc", "74a", "%20749"])
def test_bad_municipality_code_as_agreement_id_is_400(admin: httpx.Client, code: str) -> None:
    version = facts_version(admin)
    assert_invalid(admin.put(f"/v1/agreements/{code}", json=agreement_fact()), "id")
    assert admin.get(f"/v1/agreements/{code}").status_code == 404
    assert_nothing_committed(admin, version)


# -- facts:batch ---------------------------------------------------------------------------

def good_items(n: int = 2) -> list[dict[str, Any]]:
    return [{"kind": "client", "id": unique("c"), "data": client_fact()} for _ in range(n)]


def assert_none_stored(admin: httpx.Client, items: list[dict[str, Any]]) -> None:
    collections = {"client": "clients", "user": "users", "grant": "grants",
                   "relationship": "relationships", "area": "areas"}
    for item in items:
        if isinstance(item, dict) and item.get("kind") in collections \
                and isinstance(item.get("id"), str):
            path = f"/v1/{collections[item['kind']]}/{item['id']}"
            assert_error(admin.get(path), 404, "not_found")


BAD_BATCH_ITEMS: list[tuple[dict[str, Any] | Any, str]] = [
    # (the bad item, what the message names besides facts[i])
    ({"kind": "client", "id": "x", "data": client_fact(protection_order="yes")},
     "protection_order"),
    ({"kind": "user", "id": "x", "data": user_fact(status="retired")}, "status"),
    ({"kind": "relationship", "id": "x", "data": relationship_fact(service="cooking")},
     "service"),
    ({"kind": "agreement", "id": "7490", "data": agreement_fact()}, "id"),
    ({"kind": "client", "id": "a b", "data": client_fact()}, "id"),
    ({"kind": "client", "id": "a" * 129, "data": client_fact()}, "id"),
    ({"kind": "client", "id": 42, "data": client_fact()}, "id"),
    ({"kind": "client", "data": client_fact()}, "id"),
    ({"kind": "client", "id": "x"}, "data"),
    ({"kind": "client", "id": "x", "data": client_fact(), "extra": 1}, "extra"),
    ({"kind": "widget", "id": "x", "data": {}}, "kind"),
    ({"kind": "clients", "id": "x", "data": client_fact()}, "kind"),
    ({"id": "x", "data": client_fact()}, "kind"),
    ("client", ""),
    (None, ""),
]


@pytest.mark.parametrize(("bad", "field"), BAD_BATCH_ITEMS,
                         ids=[f"{i}-{f or 'not-object'}"
                              for i, (_, f) in enumerate(BAD_BATCH_ITEMS)])
def test_facts_batch_with_one_bad_item_is_400_and_stores_nothing(
        admin: httpx.Client, bad: Any, field: str) -> None:
    if isinstance(bad, dict) and bad.get("id") == "x":
        bad = {**bad, "id": unique("bad")}
    items = good_items(2)
    users = [{"kind": "user", "id": unique("u"), "data": user_fact()}]
    batch = [items[0], users[0], bad, items[1]]
    version = facts_version(admin)
    response = admin.post("/v1/facts:batch", json={"facts": batch})
    assert_invalid(response, "facts[2]")
    assert field in response.json()["error"]["message"]
    assert_none_stored(admin, [*items, *users, bad] if isinstance(bad, dict) else items)
    assert_nothing_committed(admin, version)


def test_facts_batch_names_the_first_bad_item(admin: httpx.Client) -> None:
    items = good_items(3)
    bad = [{"kind": "client", "id": unique("c"), "data": client_fact(protection_order="no")},
           {"kind": "user", "id": unique("u"), "data": user_fact(status="x")}]
    batch = [items[0], bad[0], items[1], bad[1], items[2]]
    version = facts_version(admin)
    response = admin.post("/v1/facts:batch", json={"facts": batch})
    body = assert_invalid(response, "facts[1]")
    assert "facts[3]" not in body["error"]["message"]
    assert_none_stored(admin, items + bad)
    assert_nothing_committed(admin, version)


@pytest.mark.parametrize("body", [{}, {"facts": "all"}, {"facts": {"kind": "client"}},
                                  {"facts": None}, [], "facts"],
                         ids=["no-facts", "string", "object", "null", "list-body",
                              "string-body"])
def test_facts_batch_with_bad_envelope_is_400(admin: httpx.Client, body: Any) -> None:
    response = admin.post("/v1/facts:batch", content=orjson.dumps(body),
                          headers={"Content-Type": "application/json"})
    assert_invalid(response, "facts")


def test_facts_batch_with_malformed_json_is_400(admin: httpx.Client) -> None:
    response = admin.post("/v1/facts:batch", content=b'{"facts": [',
                          headers={"Content-Type": "application/json"})
    assert_invalid(response)


def test_good_facts_batch_is_stored(admin: httpx.Client) -> None:
    """The control for the refused batches."""
    items = good_items(3)
    response = admin.post("/v1/facts:batch", json={"facts": items})
    assert response.status_code == 200, response.text
    assert response.json()["count"] == 3
    for item in items:
        assert admin.get(f"/v1/clients/{item['id']}").status_code == 200


# -- 404 -----------------------------------------------------------------------------------

COLLECTIONS = ["areas", "agreements", "users", "grants", "clients", "relationships"]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("collection", COLLECTIONS)
def test_unknown_fact_is_404(admin: httpx.Client, collection: str, method: str) -> None:
    fact_id = "999" if collection == "agreements" else unique("none")
    if collection == "agreements":
        admin.delete("/v1/agreements/999")
    assert_error(admin.request(method, f"/v1/{collection}/{fact_id}"), 404, "not_found")


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
@pytest.mark.parametrize("collection", ["widgets", "user", "Users", "facts"])
def test_unknown_collection_is_404(admin: httpx.Client, collection: str, method: str) -> None:
    body = client_fact() if method == "PUT" else None
    response = admin.request(method, f"/v1/{collection}/{unique('x')}", json=body)
    assert_error(response, 404, "not_found")


def test_deleted_fact_is_404(admin: httpx.Client) -> None:
    fact_id = unique("c")
    assert admin.put(f"/v1/clients/{fact_id}", json=client_fact()).status_code == 200
    assert admin.delete(f"/v1/clients/{fact_id}").status_code == 200
    assert_error(admin.get(f"/v1/clients/{fact_id}"), 404, "not_found")
    assert_error(admin.delete(f"/v1/clients/{fact_id}"), 404, "not_found")


# -- 413 -----------------------------------------------------------------------------------

def padded_decision(size: int) -> bytes:
    """A valid decision request of exactly `size` bytes (an extra context member pads it)."""
    body = decision_request()
    body["context"]["padding"] = ""
    bare = len(orjson.dumps(body))
    body["context"]["padding"] = "x" * (size - bare)
    encoded = orjson.dumps(body)
    assert len(encoded) == size
    return encoded


def padded_batch(size: int) -> bytes:
    """A valid facts batch of exactly `size` bytes: a few clients, then JSON whitespace."""
    encoded = orjson.dumps({"facts": good_items(2)})
    assert len(encoded) <= size
    return encoded + b" " * (size - len(encoded))


def chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_decision_body_over_1_mib_is_413(pep: httpx.Client, chunked: bool) -> None:
    data = padded_decision(MIB + 1)
    content = chunks(data) if chunked else data
    response = pep.post("/access/v1/evaluation", content=content, headers=JSON)
    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_decision_body_of_exactly_1_mib_is_accepted(pep: httpx.Client, chunked: bool) -> None:
    data = padded_decision(MIB)
    content = chunks(data) if chunked else data
    response = pep.post("/access/v1/evaluation", content=content, headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["context"]["reason"] == "unknown_subject"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_decision_batch_body_over_1_mib_is_413(pep: httpx.Client, chunked: bool) -> None:
    item = decision_request()
    body = orjson.dumps({"evaluations": [item] * 500})
    data = body + b" " * (MIB + 1 - len(body))
    content = chunks(data) if chunked else data
    response = pep.post("/access/v1/evaluations", content=content, headers=JSON)
    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_fact_body_over_1_mib_is_413_and_not_stored(admin: httpx.Client, chunked: bool) -> None:
    fact_id = unique("c")
    body = orjson.dumps(client_fact())
    data = body + b" " * (MIB + 1 - len(body))
    content = chunks(data) if chunked else data
    response = admin.put(f"/v1/clients/{fact_id}", content=content, headers=JSON)
    assert_error(response, 413, "payload_too_large")
    assert_error(admin.get(f"/v1/clients/{fact_id}"), 404, "not_found")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_facts_batch_over_4_mib_is_413_and_stores_nothing(admin: httpx.Client,
                                                          chunked: bool) -> None:
    data = padded_batch(4 * MIB + 1)
    items = orjson.loads(data)["facts"]
    version = facts_version(admin)
    content = chunks(data) if chunked else data
    response = admin.post("/v1/facts:batch", content=content, headers=JSON)
    assert_error(response, 413, "payload_too_large")
    assert_none_stored(admin, items)
    assert_nothing_committed(admin, version)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_facts_batch_of_2_mib_is_not_413(admin: httpx.Client, chunked: bool) -> None:
    data = padded_batch(2 * MIB)
    items = orjson.loads(data)["facts"]
    content = chunks(data) if chunked else data
    response = admin.post("/v1/facts:batch", content=content, headers=JSON)
    assert response.status_code == 200, response.text
    for item in items:
        assert admin.get(f"/v1/clients/{item['id']}").status_code == 200


def test_facts_batch_of_2_mib_of_real_facts_is_accepted(admin: httpx.Client) -> None:
    name = "Testi " + "ä" * 400  # 806 bytes of UTF-8, within the 1000-character limit
    items = [{"kind": "user", "id": unique("u"), "data": user_fact(display_name=name)}
             for _ in range(2400)]
    data = orjson.dumps({"facts": items})
    assert 2 * MIB <= len(data) < 4 * MIB
    response = admin.post("/v1/facts:batch", content=data, headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["count"] == len(items)
    for item in (items[0], items[-1]):
        stored = admin.get(f"/v1/users/{item['id']}")
        assert stored.status_code == 200, stored.text
        assert stored.json()["display_name"] == name


# -- batch limits --------------------------------------------------------------------------

def decision_batch(world: World, n: int) -> dict[str, Any]:
    request = world.request()
    categories = ["service_needs_plans", "name_contact", "benefits"]
    return {"subject": request["subject"], "action": request["action"],
            "resource": request["resource"], "context": request["context"],
            "evaluations": [{"resource": {"properties": {"category": categories[i % 3]}}}
                            for i in range(n)]}


def test_decision_batch_of_1001_items_is_400(admin: httpx.Client, pep: httpx.Client) -> None:
    world = World(admin).build()
    assert_invalid(pep.post("/access/v1/evaluations", json=decision_batch(world, 1001)),
                   "evaluations")


def test_decision_batch_of_1000_items_is_200(admin: httpx.Client, pep: httpx.Client) -> None:
    world = World(admin).build()
    response = pep.post("/access/v1/evaluations", json=decision_batch(world, 1000))
    assert response.status_code == 200, response.text
    results = response.json()["evaluations"]
    assert len(results) == 1000
    assert [r["context"]["reason"] for r in results[:3]] == [
        "allowed", "allowed", "category_not_necessary"]
    assert all("error" not in r["context"] for r in results)


def test_facts_batch_of_5001_items_is_400_and_stores_nothing(admin: httpx.Client) -> None:
    items = good_items(5001)
    version = facts_version(admin)
    assert_invalid(admin.post("/v1/facts:batch", json={"facts": items}), "facts")
    assert_none_stored(admin, [items[0], items[2500], items[-1]])
    assert_nothing_committed(admin, version)


def test_facts_batch_of_5000_items_is_accepted(admin: httpx.Client) -> None:
    items = good_items(5000)
    response = admin.post("/v1/facts:batch", json={"facts": items})
    assert response.status_code == 200, response.text
    assert response.json()["count"] == 5000
    for item in (items[0], items[-1]):
        assert admin.get(f"/v1/clients/{item['id']}").status_code == 200


# -- invalid item in a decision batch ------------------------------------------------------

def test_invalid_batch_item_does_not_fail_the_batch(admin: httpx.Client,
                                                    pep: httpx.Client) -> None:
    world = World(admin).build()
    bad = with_value(world.request(), "resource.properties.category", "secrets")
    body = {"evaluations": [world.request(), bad, world.request("name_contact")]}
    response = pep.post("/access/v1/evaluations", json=body)
    assert response.status_code == 200, response.text
    first, middle, last = response.json()["evaluations"]
    assert middle["decision"] is False
    error = middle["context"]["error"]
    assert error["code"] == "invalid_request"
    assert "category" in error["message"]
    for result in (first, last):
        assert result["decision"] is True, result
        assert result["context"]["reason"] == "allowed"
        assert "error" not in result["context"]
        assert result["context"]["decision_id"]


@pytest.mark.parametrize(("field", "value"), [("subject.id", 7), ("action.name", "delete"),
                                              ("context.min_facts_version", "1")])
def test_batch_item_of_wrong_type_is_an_item_error(admin: httpx.Client, pep: httpx.Client,
                                                   field: str, value: Any) -> None:
    world = World(admin).build()
    body = {"evaluations": [world.request(), with_value(world.request(), field, value)]}
    response = pep.post("/access/v1/evaluations", json=body)
    assert response.status_code == 200, response.text
    first, second = response.json()["evaluations"]
    assert first["decision"] is True
    assert second["decision"] is False
    assert second["context"]["error"]["code"] == "invalid_request"
    assert field.rsplit(".", 1)[-1] in second["context"]["error"]["message"]


@pytest.mark.parametrize("bad", [42, "item", None, ["a"]], ids=["number", "string", "null",
                                                                  "list"])
def test_batch_item_that_is_not_an_object_is_an_item_error(admin: httpx.Client,
                                                           pep: httpx.Client, bad: Any) -> None:
    """API.md: "An invalid item does not fail the batch"."""
    world = World(admin).build()
    body = {"evaluations": [world.request(), bad, world.request()]}
    response = pep.post("/access/v1/evaluations", json=body)
    assert response.status_code == 200, response.text
    first, middle, last = response.json()["evaluations"]
    assert first["decision"] is True and last["decision"] is True
    assert middle["decision"] is False
    assert middle["context"]["error"]["code"] == "invalid_request"


# -- X-Request-ID --------------------------------------------------------------------------

REQUEST_ID_CASES: dict[str, tuple[str | None, str, str, bytes | None, int]] = {
    # name: (token, method, path, body, expected status)
    "200": ("t-pep", "POST", "/access/v1/evaluation", orjson.dumps(decision_request()), 200),
    "200-open": (None, "GET", "/healthz", None, 200),
    "400": ("t-pep", "POST", "/access/v1/evaluation", b"{", 400),
    "401": (None, "POST", "/access/v1/evaluation", orjson.dumps(decision_request()), 401),
    "403": ("t-auditor", "POST", "/access/v1/evaluation", orjson.dumps(decision_request()),
            403),
    "404": ("t-admin", "GET", "/v1/clients/no-such-client-for-request-id", None, 404),
    "404-route": ("t-admin", "GET", "/no/such/route", None, 404),
    "405": ("t-admin", "PATCH", "/v1/clients/some-client", b"{}", 405),
    "413": ("t-pep", "POST", "/access/v1/evaluation", b" " * (MIB + 1), 413),
}


@pytest.mark.parametrize("case", list(REQUEST_ID_CASES))
def test_request_id_is_echoed_on_every_response(server: InProcess, case: str) -> None:
    token, method, path, content, status = REQUEST_ID_CASES[case]
    request_id = f"req-{unique(case)}-Ab_9.:/"
    headers = {"X-Request-ID": request_id, "Content-Type": "application/json"}
    with server.client(token) as client:
        response = client.request(method, path, content=content, headers=headers)
        assert response.status_code == status, response.text
        assert response.headers.get_list("x-request-id") == [request_id]
        without_id = client.request(method, path, content=content,
                                    headers={"Content-Type": "application/json"})
        assert without_id.status_code == status, without_id.text
        assert "x-request-id" not in without_id.headers


# -- the one table from a refusal's code to its answer (pdp.http.errors) -----------------


def test_every_code_of_the_domain_has_its_status() -> None:
    """A code the table forgets would be answered 500: every stable code of
    pdp.model.errors has a status, and the 5xx ones are the faults and the unavailable."""
    from pdp.http.errors import STATUS
    from pdp.model import errors

    codes = {value for name, value in vars(errors).items()
             if name.isupper() and isinstance(value, str)}
    assert codes <= set(STATUS), sorted(codes - set(STATUS))
    assert {code for code, status in STATUS.items() if status >= 500} == {
        "internal_error", "policy_error", "unavailable", "audit_unavailable"}


def test_retry_after_only_when_the_refusal_says_when() -> None:
    """503 with Retry-After when a part is busy or unreachable for now (the candidate
    queue says 5 s); none when the decision log is off (retrying would not help)."""
    from pdp.engine.shadow import CandidateError
    from pdp.http.errors import refusal_response
    from pdp.model.errors import AUDIT_UNAVAILABLE, UNAUTHORIZED, UNAVAILABLE, Refused

    busy = refusal_response(CandidateError(UNAVAILABLE, "busy", retry_after=5))
    assert (busy.status_code, busy.headers.get("retry-after")) == (503, "5")
    off = refusal_response(Refused(AUDIT_UNAVAILABLE, "the decision log is off"))
    assert off.status_code == 503 and "retry-after" not in off.headers
    down = refusal_response(Refused(AUDIT_UNAVAILABLE, "disk full", retry_after=1))
    assert down.headers.get("retry-after") == "1"
    who = refusal_response(Refused(UNAUTHORIZED, "a bearer token is required"))
    assert (who.status_code, who.headers.get("www-authenticate")) == (401, "Bearer")
    assert orjson.loads(bytes(off.body)) == {
        "error": {"code": "audit_unavailable", "message": "the decision log is off"}}

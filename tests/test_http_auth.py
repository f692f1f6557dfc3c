"""Caller authentication and roles over HTTP (API.md "Caller authentication").

Every endpoint but the open four needs a bearer token: without one (or with an unknown one)
the answer is 401 with `WWW-Authenticate: Bearer`; a known token without the role gets 403.
In-process: the app (tests/support/asgi.py), started again on one store for the key names.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.support.asgi import InProcess, start_app, stop_app
from tests.support.servers import KEYS

_ids = itertools.count(1)


def unique(prefix: str) -> str:
    return f"auth{next(_ids)}-{os.getpid()}-{prefix}"


# Municipality codes that no other test's world uses: agreements written here cannot
# change anybody else's decisions. An agreement is never deleted (it ends only through
# rescission), so each test takes a code of its own.
_codes = (f"{n:03d}" for n in range(610, 700) if n != 686)
CODE = "998"  # the other facts' municipality

COLLECTION_KIND = {
    "areas": "area",
    "agreements": "agreement",
    "grants": "grant",
    "users": "user",
    "clients": "client",
    "relationships": "relationship",
}
FACTS_WRITER = {"clients", "relationships", "users"}
GRANT_ADMIN = {"areas", "agreements", "grants"}

# Which collections each token may use, and whether it may ask for decisions.
MAY_WRITE: dict[str, set[str]] = {
    "t-pep": set(),
    "t-facts": FACTS_WRITER,
    "t-grants": GRANT_ADMIN,
    "t-auditor": set(),
    "t-policy": set(),
    "t-admin": FACTS_WRITER | GRANT_ADMIN,
    "t-both": FACTS_WRITER | GRANT_ADMIN,
}
MAY_DECIDE = {"t-pep", "t-admin"}
assert set(MAY_WRITE) == set(KEYS)


def fact_id(collection: str) -> str:
    return next(_codes) if collection == "agreements" else unique(collection)


def valid_fact(collection: str) -> dict[str, Any]:
    """A valid fact of the collection, in the otherwise unused municipality CODE."""
    return {
        "areas": {"name": "Testialue", "responsible_municipality": CODE,
                  "municipalities": [{"code": CODE, "name": "Testikunta"}]},
        "agreements": {"area": unique("area"), "status": "in_force",
                       "signed_at": "2025-01-01T00:00:00+02:00"},
        "users": {"municipality": CODE, "display_name": "Testi", "tasks": ["coaching"],
                  "status": "active"},
        "grants": {"user": unique("user"), "purposes": ["coaching"],
                   "scopes": ["name_contact"], "actions": ["read"],
                   "valid_from": "2025-01-01T00:00:00+02:00",
                   "valid_until": "2099-01-01T00:00:00+02:00", "status": "active",
                   "legal_basis": "380/2023 125 § 1 mom."},
        "clients": {"home_municipality": CODE, "protection_order": False, "area_client": True},
        "relationships": {"client": unique("client"), "municipality": CODE,
                          "service": "coaching", "starts_at": "2025-06-01T00:00:00+03:00"},
    }[collection]


def decision_body() -> dict[str, Any]:
    return {"subject": {"type": "user", "id": unique("u")},
            "action": {"name": "read"},
            "resource": {"type": "client_record", "id": unique("c"),
                         "properties": {"category": "name_contact"}},
            "context": {"purpose": "coaching"}}


def evaluations_body() -> dict[str, Any]:
    return {"evaluations": [decision_body(), decision_body()]}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body


# -- 401: every protected endpoint -------------------------------------------------------

PROTECTED: list[tuple[str, str, Any]] = [  # (method, path, body)
    ("POST", "/access/v1/evaluation", decision_body()),
    ("POST", "/access/v1/evaluations", evaluations_body()),
    ("POST", "/v1/facts:batch",
     {"facts": [{"kind": "client", "id": unique("c"), "data": valid_fact("clients")}]}),
]
for _collection in COLLECTION_KIND:
    _path = f"/v1/{_collection}/{fact_id(_collection)}"
    PROTECTED += [("PUT", _path, valid_fact(_collection)), ("GET", _path, None),
                  ("DELETE", _path, None)]



def endpoint_id(method: str, path: str) -> str:
    parts = path.split("/")
    return f"{method} {parts[2] if parts[1] == 'v1' and len(parts) == 4 else parts[-1]}"


BAD_AUTHORIZATION: dict[str, dict[str, str]] = {
    "missing": {},
    "basic-scheme": {"Authorization": "Basic dC1hZG1pbjp4"},
    "token-scheme": {"Authorization": "Token t-admin"},
    "no-scheme": {"Authorization": "t-admin"},
    "bare-bearer": {"Authorization": "Bearer"},
    "unknown-token": {"Authorization": "Bearer t-nobody"},
    "token-prefix": {"Authorization": "Bearer t-admi"},
    "token-suffix": {"Authorization": "Bearer t-adminx"},
}


@pytest.mark.parametrize("authorization", list(BAD_AUTHORIZATION.values()),
                         ids=list(BAD_AUTHORIZATION))
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED,
                         ids=[endpoint_id(m, p) for m, p, _ in PROTECTED])
def test_protected_endpoint_refuses_without_a_valid_bearer_token(
        server: InProcess, method: str, path: str, body: Any,
        authorization: dict[str, str]) -> None:
    with server.client(None) as client:
        response = client.request(method, path, json=body, headers=authorization)
    assert_error(response, 401, "unauthorized")
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


@pytest.mark.parametrize("collection", list(COLLECTION_KIND))
def test_unauthenticated_put_stores_nothing(server: InProcess, admin: httpx.Client,
                                            collection: str) -> None:
    path = f"/v1/{collection}/{fact_id(collection)}"
    if collection == "agreements":
        admin.delete(path)
    with server.client("t-nobody") as client:
        assert client.put(path, json=valid_fact(collection)).status_code == 401
    assert admin.get(path).status_code == 404


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics",
                                  "/.well-known/authzen-configuration"])
@pytest.mark.parametrize("token", [None, "t-nobody"], ids=["no-token", "unknown-token"])
def test_open_endpoints_answer_without_a_token(server: InProcess, path: str,
                                               token: str | None) -> None:
    with server.client(token) as client:
        response = client.get(path)
    assert response.status_code == 200, response.text
    assert "www-authenticate" not in response.headers


def test_bearer_scheme_is_case_insensitive(server: InProcess) -> None:
    with server.client(None) as client:
        response = client.post("/access/v1/evaluation", json=decision_body(),
                               headers={"Authorization": "bearer t-pep"})
    assert response.status_code == 200, response.text


# -- 403: the role matrix ------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/access/v1/evaluation", "/access/v1/evaluations"])
@pytest.mark.parametrize("token", list(KEYS))
def test_decision_endpoints_need_pep_or_admin(server: InProcess, token: str, path: str) -> None:
    body = decision_body() if path.endswith("evaluation") else evaluations_body()
    with server.client(token) as client:
        response = client.post(path, json=body)
    if token in MAY_DECIDE:
        assert response.status_code == 200, response.text
        result = response.json()
        if path.endswith("evaluation"):
            assert result["decision"] is False
            assert result["context"]["reason"] == "unknown_subject"
        else:
            assert [r["context"]["reason"] for r in result["evaluations"]] == [
                "unknown_subject", "unknown_subject"]
    else:
        assert_error(response, 403, "forbidden")
        assert "www-authenticate" not in response.headers


@pytest.mark.parametrize("collection", list(COLLECTION_KIND))
@pytest.mark.parametrize("token", list(KEYS))
def test_fact_collections_follow_the_role_matrix(server: InProcess, admin: httpx.Client,
                                                 token: str, collection: str) -> None:
    path = f"/v1/{collection}/{fact_id(collection)}"
    data = valid_fact(collection)
    with server.client(token) as client:
        if collection == "grants":
            # The role first (403); then no right is written here at all: 409
            # use_workflow (tests/test_rights_procedure.py).
            put, deleted = client.put(path, json=data), client.delete(path)
            if collection in MAY_WRITE[token]:
                assert_error(put, 409, "use_workflow")
                assert_error(deleted, 404, "not_found")
                assert_error(client.get(path), 404, "not_found")
            else:
                assert_error(put, 403, "forbidden")
                assert_error(deleted, 403, "forbidden")
        elif collection in MAY_WRITE[token]:
            put = client.put(path, json=data)
            assert put.status_code == 200, put.text
            assert put.json()["id"] == path.rsplit("/", 1)[1]
            got = client.get(path)
            assert got.status_code == 200, got.text
            for key, value in data.items():
                assert got.json()[key] == value
            deleted = client.delete(path)
            if collection == "agreements":  # ended only by rescission, never deleted
                assert_error(deleted, 409, "use_workflow")
                assert client.get(path).status_code == 200
            else:
                assert deleted.status_code == 200, deleted.text
                assert client.get(path).status_code == 404
        else:
            # The fact exists (written by the admin): the refusals are about the role.
            stored = admin.put(path, json=data)
            assert stored.status_code == 200, stored.text
            changed = {**data, "protection_order": True} if collection == "clients" else data
            assert_error(client.put(path, json=changed), 403, "forbidden")
            assert_error(client.get(path), 403, "forbidden")
            assert_error(client.delete(path), 403, "forbidden")
            after = admin.get(path)
            assert after.status_code == 200, after.text
            assert after.json()["facts_version"] == stored.json()["facts_version"]
            if collection != "agreements":
                assert admin.delete(path).status_code == 200


def batch_item(collection: str) -> dict[str, Any]:
    return {"kind": COLLECTION_KIND[collection], "id": fact_id(collection),
            "data": valid_fact(collection)}


def stored_ids(admin: httpx.Client, items: list[dict[str, Any]]) -> list[str]:
    collections = {kind: collection for collection, kind in COLLECTION_KIND.items()}
    return [item["id"] for item in items
            if admin.get(f"/v1/{collections[item['kind']]}/{item['id']}").status_code == 200]


def delete_items(admin: httpx.Client, items: list[dict[str, Any]]) -> None:
    collections = {kind: collection for collection, kind in COLLECTION_KIND.items()}
    for item in items:
        admin.delete(f"/v1/{collections[item['kind']]}/{item['id']}")


@pytest.mark.parametrize("collection", list(COLLECTION_KIND))
@pytest.mark.parametrize("token", list(KEYS))
def test_facts_batch_of_one_kind_follows_the_role_matrix(
        server: InProcess, admin: httpx.Client, token: str, collection: str) -> None:
    items = [batch_item(collection)]
    if collection == "agreements":
        delete_items(admin, items)
    with server.client(token) as client:
        response = client.post("/v1/facts:batch", json={"facts": items})
    try:
        if collection in MAY_WRITE[token] and collection == "grants":
            assert_error(response, 409, "use_workflow")  # the role was checked first
            assert stored_ids(admin, items) == []
        elif collection in MAY_WRITE[token]:
            assert response.status_code == 200, response.text
            assert response.json()["count"] == 1
            assert stored_ids(admin, items) == [items[0]["id"]]
        else:
            assert_error(response, 403, "forbidden")
            assert stored_ids(admin, items) == []
    finally:
        delete_items(admin, items)


MIXED = [["clients", "grants"], ["users", "areas"], ["relationships", "agreements"],
         ["clients", "relationships", "users", "areas", "agreements", "grants"]]


@pytest.mark.parametrize("collections", MIXED, ids=["+".join(c) for c in MIXED])
@pytest.mark.parametrize("token", list(KEYS))
def test_facts_batch_needs_the_roles_of_every_kind_it_holds(
        server: InProcess, admin: httpx.Client, token: str, collections: list[str]) -> None:
    items = [batch_item(collection) for collection in collections]
    if "agreements" in collections:
        delete_items(admin, [i for i in items if i["kind"] == "agreement"])
    version = server_version(admin)
    with server.client(token) as client:
        response = client.post("/v1/facts:batch", json={"facts": items})
    try:
        if set(collections) <= MAY_WRITE[token] and "grants" in collections:
            assert_error(response, 409, "use_workflow")  # the roles were checked first
            assert stored_ids(admin, items) == []
            assert server_version(admin) == version
        elif set(collections) <= MAY_WRITE[token]:
            assert response.status_code == 200, response.text
            assert response.json()["count"] == len(items)
            assert sorted(stored_ids(admin, items)) == sorted(i["id"] for i in items)
        else:
            assert_error(response, 403, "forbidden")
            assert stored_ids(admin, items) == []
            assert server_version(admin) == version
    finally:
        delete_items(admin, items)


@pytest.mark.parametrize("token", ["t-pep", "t-auditor", "t-policy"])
def test_facts_batch_is_refused_to_roles_without_any_fact_role(server: InProcess,
                                                                token: str) -> None:
    """pep, auditor and policy_admin may not use the facts API at all, even to send an
    empty batch."""
    with server.client(token) as client:
        response = client.post("/v1/facts:batch", json={"facts": []})
    assert_error(response, 403, "forbidden")


def server_version(admin: httpx.Client) -> int:
    response = admin.get("/readyz")
    assert response.status_code == 200, response.text
    version: int = response.json()["facts_version"]
    return version


# -- the names of keys configured without one -------------------------------------------


def _actor_of_a_write(server: InProcess, token: str) -> str:
    """Who the event log says wrote a user with `token` (a key without a name)."""
    user = unique("named")
    with server.client(token) as client:
        written = client.put(f"/v1/users/{user}", json=valid_fact("users"))
        assert written.status_code == 200, written.text
    with server.client("t-grants") as reader:
        events = reader.get("/v1/events", params={"limit": 1000})
    assert events.status_code == 200, events.text
    (event,) = [e for e in events.json()["events"] if e["subject"]["id"] == user]
    name: str = event["actor"]
    return name


def test_a_key_without_a_name_is_named_by_a_keyed_fingerprint(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A key's default name was sha256(token)[:8]: anyone reading a history could test
    guessed tokens against it offline. Now it is an HMAC with a server secret:
    PDP_FINGERPRINT_KEY, or else a random key of the deployment kept in its store."""
    token = "t-facts"
    unsalted = hashlib.sha256(token.encode()).hexdigest()
    one, two = (tmp_path_factory.mktemp("fingerprint") for _ in range(2))
    names = []
    for tmp in (one, one, two):  # two starts on one store, then another store
        server = start_app(tmp)
        try:
            names.append(_actor_of_a_write(server, token))
        finally:
            stop_app(server)
    assert names[0].startswith("key-") and names[0][4:] not in unsalted
    assert names[0] == names[1]  # the same deployment names a key alike after a restart
    assert names[2] != names[0]  # another deployment (another secret) otherwise

    key = "a-server-secret-of-some-length"
    tmp = tmp_path_factory.mktemp("fingerprint-configured")
    server = start_app(tmp, env={"PDP_FINGERPRINT_KEY": key})
    try:
        expected = hmac.new(key.encode(), token.encode(), hashlib.sha256).hexdigest()[:16]
        assert _actor_of_a_write(server, token) == f"key-{expected}"
    finally:
        stop_app(server)

    weak = subprocess.run([sys.executable, "-m", "pdp", "serve", "--port", "1"],
                          cwd=tmp, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PDP_API_KEYS": json.dumps(KEYS),
                               "PDP_FINGERPRINT_KEY": "too-short"})
    assert weak.returncode == 2, weak.stdout + weak.stderr
    assert "fingerprint_key" in weak.stderr and "too-short" not in weak.stderr


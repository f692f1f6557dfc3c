"""Ids and purposes in decision bodies (the security review of the hardening issue: "No
control characters, NUL or bidi marks in any id, in the path or in a body").

`subject.id` and `resource.id` of evaluations, batch items, searches and explanations
obey the id rule of API.md exactly; a purpose is a short word. A single evaluation,
search or explanation that breaks them is 400 invalid_request; a batch item that does is
that item's `decision: false` with `context.error`; and the decision log never keeps
such an id or purpose. In-process: the app (tests/support/asgi.py) and its SQLite log.
"""

from __future__ import annotations

import copy
import itertools
import os
import sqlite3
from typing import Any

import httpx
import pytest

from pdp.model.facts import ID_RULE
from tests.support.asgi import InProcess
from tests.support.world import World

_ids = itertools.count(1)

BAD_IDS = {
    "nul": "u\x00x",
    "lf": "u-1\n",
    "rlo": "u-1\u202e",
    "zwsp": "u\u200b1",
    "lrm": "\u200eu-1",
    "space": " u-1",
    "non-ascii": "käyttäjä",
    "empty": "",
    "too-long": "u" * 129,
}
BAD_PURPOSES = {
    "nul": "coaching\x00",
    "lf": "coaching\n",
    "rlo": "coaching\u202e",
    "zwsp": "coach\u200bing",
    "nbsp": "coaching\u00a0",
    "line-separator": "coaching\u2028",
    "too-long": "c" * 65,
}


def request_id() -> str:
    return f"ids{next(_ids)}-{os.getpid()}"


def assert_400(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, f"{response.status_code} {response.text}"
    body: dict[str, Any] = response.json()
    assert body["error"]["code"] == "invalid_request", body
    return body


def with_value(body: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    place = changed
    for key in path[:-1]:
        place = place[key]
    place[path[-1]] = value
    return changed


def logged(server: InProcess, prefix: str) -> list[tuple[Any, ...]]:
    """(user_id, client_id, purpose) of the log's records of requests with this prefix
    (a read of the log first moves every durable record into audit_records)."""
    with server.client("t-auditor") as auditor:
        read = auditor.get("/v1/audit/decisions", params={"justification": "test",
                                                          "limit": 1})
        assert read.status_code == 200, read.text
    conn = sqlite3.connect(server.store_file, timeout=10)
    try:
        return conn.execute("SELECT user_id, client_id, purpose FROM audit_records "
                            "WHERE request_id LIKE ?", (prefix + "%",)).fetchall()
    finally:
        conn.close()


def assert_log_clean(rows: list[tuple[Any, ...]]) -> None:
    for user, client, purpose in rows:
        for value in (user, client):
            assert value is None or ID_RULE.fullmatch(value), rows
        assert purpose is None or (len(purpose) <= 64 and purpose.isprintable()), rows


ID_PATHS = [("subject", "id"), ("resource", "id")]


@pytest.mark.parametrize("bad", list(BAD_IDS.values()), ids=list(BAD_IDS))
def test_an_evaluation_or_explanation_with_a_bad_id_is_400_and_not_logged(
        server: InProcess, world: World, bad: str) -> None:
    prefix = request_id()
    with server.client("t-pep") as pep, server.client("t-auditor") as auditor:
        for path in ID_PATHS:
            body = with_value(world.request(), path, bad)
            assert_400(pep.post("/access/v1/evaluation", json=body,
                                headers={"X-Request-ID": prefix + "-e"}))
            assert_400(auditor.post("/v1/explain", json=body,
                                    headers={"X-Request-ID": prefix + "-x"}))
        good = pep.post("/access/v1/evaluation", json=world.request(),
                        headers={"X-Request-ID": prefix + "-ok"})
        assert good.status_code == 200 and good.json()["decision"] is True, good.text
    assert logged(server, prefix) == [(world.user, world.client, "coaching")]


@pytest.mark.parametrize("bad", list(BAD_PURPOSES.values()), ids=list(BAD_PURPOSES))
def test_a_purpose_that_is_no_short_word_is_400(server: InProcess, world: World,
                                                bad: str) -> None:
    prefix = request_id()
    with server.client("t-pep") as pep, server.client("t-auditor") as auditor:
        body = world.request(purpose=bad)
        assert_400(pep.post("/access/v1/evaluation", json=body,
                            headers={"X-Request-ID": prefix}))
        assert_400(auditor.post("/v1/explain", json=body, headers={"X-Request-ID": prefix}))
    assert logged(server, prefix) == []


def test_an_unknown_purpose_is_still_a_deny(pep: httpx.Client, world: World) -> None:
    for purpose in ("cooking", "c" * 64, "", "coaching guidance"):
        response = pep.post("/access/v1/evaluation", json=world.request(purpose=purpose))
        assert response.status_code == 200, response.text
        assert response.json()["decision"] is False
        assert response.json()["context"]["reason"] == "purpose_invalid", purpose


@pytest.mark.parametrize(("path", "bad"), [
    (("action", "name"), "read\n"), (("action", "name"), "READ"),
    (("action", "name"), "read\u200b"),
    (("resource", "properties", "category"), "service_needs_plans\n"),
    (("resource", "properties", "category"), "service_needs_plans\u202e"),
    (("resource", "properties", "category"), "Service_Needs_Plans")])
def test_actions_and_categories_are_closed_vocabularies(pep: httpx.Client, world: World,
                                                        path: tuple[str, ...],
                                                        bad: str) -> None:
    assert_400(pep.post("/access/v1/evaluation", json=with_value(world.request(), path, bad)))


def test_a_batch_item_with_a_bad_id_or_purpose_fails_alone_and_is_logged_without_it(
        server: InProcess, world: World) -> None:
    prefix = request_id()
    defaults = world.request()
    items: list[dict[str, Any]] = []
    for bad in BAD_IDS.values():
        items += [with_value(defaults, ("subject", "id"), bad),
                  with_value(defaults, ("resource", "id"), bad)]
    items += [{"context": {"purpose": bad}} for bad in BAD_PURPOSES.values()]
    with server.client("t-pep") as pep:
        response = pep.post("/access/v1/evaluations", headers={"X-Request-ID": prefix},
                            json={**defaults, "evaluations": [{}, *items, {}]})
        assert response.status_code == 200, response.text
        results = response.json()["evaluations"]
        assert len(results) == len(items) + 2
        assert results[0]["decision"] is True and results[-1]["decision"] is True
        for item, result in zip(items, results[1:-1], strict=True):
            assert result["decision"] is False, (item, result)
            assert result["context"]["error"]["code"] == "invalid_request", (item, result)
        # A default that breaks the rule fails every item that takes it, alone.
        bad_default = pep.post("/access/v1/evaluations", headers={"X-Request-ID": prefix}, json={
            **with_value(defaults, ("subject", "id"), "u\u202e"),
            "evaluations": [{}, {"subject": {"type": "user", "id": world.user}}]})
        assert bad_default.status_code == 200, bad_default.text
        first, second = bad_default.json()["evaluations"]
        assert first["decision"] is False and "error" in first["context"]
        assert second["decision"] is True, second
    rows = logged(server, prefix)
    assert len(rows) == len(items) + 4
    assert_log_clean(rows)
    # The invalid items are recorded, their valid ids kept and the bad ones left out.
    assert rows.count((None, world.client, None)) == len(BAD_IDS)
    assert rows.count((world.user, None, None)) == len(BAD_IDS)


def searches(world: World) -> dict[str, dict[str, Any]]:
    subject = {"type": "user", "id": world.user}
    action = {"name": "read"}
    resource = {"type": "client_record", "id": world.client,
                "properties": {"category": "service_needs_plans"}}
    context = {"purpose": "coaching"}
    return {
        "resource": {"subject": subject, "action": action, "context": context,
                     "resource": {"type": "client_record",
                                  "properties": {"category": "service_needs_plans"}}},
        "subject": {"subject": {"type": "user"}, "action": action, "resource": resource,
                    "context": context},
        "action": {"subject": subject, "resource": resource, "context": context},
    }


@pytest.mark.parametrize("kind", ["resource", "subject", "action"])
def test_a_search_with_a_bad_id_purpose_or_token_is_400_and_not_logged(
        server: InProcess, world: World, kind: str) -> None:
    prefix = request_id()
    body = searches(world)[kind]
    bad_bodies = [with_value(body, ("context", "purpose"), bad)
                  for bad in BAD_PURPOSES.values()]
    bad_bodies += [with_value(body, path, bad) for path in ID_PATHS
                   if "id" in body[path[0]] for bad in BAD_IDS.values()]
    bad_bodies += [{**body, "page": {"token": token}} for token in ("abc\x00", "abc\n", "a=b")]
    with server.client("t-pep") as pep:
        for bad_body in bad_bodies:
            assert_400(pep.post(f"/access/v1/search/{kind}", json=bad_body,
                                headers={"X-Request-ID": prefix}))
        good = pep.post(f"/access/v1/search/{kind}", json=body,
                        headers={"X-Request-ID": prefix + "-ok"})
        assert good.status_code == 200, good.text
        assert good.json()["results"], good.text
    rows = logged(server, prefix)
    assert len(rows) == 1
    assert_log_clean(rows)

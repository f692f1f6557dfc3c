"""AuthZEN search agrees with the rules: on random worlds, every search (walked page by
page) returns exactly what exhaustive evaluation allows; and over HTTP: the shapes,
paging while facts change, errors, and the searches in the decision log (in-process: the
app, tests/support/asgi.py)."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from pdp.engine.core import DecisionRequest
from pdp.engine.search import (
    BadToken,
    Page,
    decode_token,
    encode_token,
    search_actions,
    search_resources,
    search_subjects,
)
from pdp.model.vocab import ACTIONS, CATEGORIES
from tests.support.asgi import InProcess, start_app, stop_app
from tests.support.random_worlds import NOW, build, often, worlds
from tests.support.world import World


def walk(search: Any, limit: int, budget: float) -> list[str]:
    """Every page of a search; each page must continue strictly after the last."""
    ids: list[str] = []
    after: str | None = None
    for _ in range(100):
        page: Page = search(after=after, limit=limit, budget=budget)
        assert len(page.ids) <= limit
        assert page.ids == sorted(page.ids)
        if ids and page.ids:
            assert page.ids[0] > ids[-1]
        ids += page.ids
        if page.after is None:
            return ids
        assert after is None or page.after > after
        after = page.after
    raise AssertionError("the search did not end")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(), limit=st.integers(1, 3), budget=st.sampled_from([0.0, 10.0]),
       owner=often("749", "297", "167", "authority", ""))
def test_every_search_equals_exhaustive_evaluation(
        world: tuple[list[dict[str, Any]], list[str], list[str], str], limit: int,
        budget: float, owner: str) -> None:
    facts, users, clients, purpose = world
    decider = build(facts)
    askers = [*users, "unknown-user"]
    targets = [*clients, "unknown-client"]
    allowed = {(u, c, cat, act)
               for u in askers for c in targets for cat in CATEGORIES for act in ACTIONS
               if decider.decide(DecisionRequest(u, c, cat, act, purpose, owner),
                                 NOW).decision}
    target(float(len(allowed)))  # steer towards worlds that allow much
    common = {"purpose": purpose, "now": NOW, "owner": owner}
    for category in CATEGORIES:
        for action in ACTIONS:
            for user in askers:
                found = walk(partial(search_resources, decider, user=user,
                                     category=category, action=action, **common),
                             limit, budget)
                assert found == sorted(c for c in targets
                                       if (user, c, category, action) in allowed), user
            for client in targets:
                found = walk(partial(search_subjects, decider, client=client,
                                     category=category, action=action, **common),
                             limit, budget)
                assert found == sorted(u for u in askers
                                       if (u, client, category, action) in allowed), client
        for user in askers:
            for client in targets:
                found = walk(partial(search_actions, decider, user=user, client=client,
                                     category=category, **common),
                             limit, budget)
                assert found == sorted(a for a in ACTIONS
                                       if (user, client, category, a) in allowed)


def test_a_token_belongs_to_its_query() -> None:
    token = encode_token("abc", "c-1")
    assert decode_token(token, "abc") == "c-1"
    with pytest.raises(BadToken):
        decode_token(token, "other")
    with pytest.raises(BadToken):
        decode_token("not base64 !", "abc")
    with pytest.raises(BadToken):
        decode_token(encode_token("abc", "x")[:-3], "abc")


# -- over HTTP -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server of this module's own: a search lists every client that the rules allow,
    and other tests' worlds would be among them."""
    running = start_app(tmp_path_factory.mktemp("search"))
    yield running
    stop_app(running)


@pytest.fixture
def admin(own_server: InProcess) -> Any:
    with own_server.client("t-admin") as client:
        yield client


@pytest.fixture
def pep(own_server: InProcess) -> Any:
    with own_server.client("t-pep") as client:
        yield client


class Caseload:
    """A coach and `size` clients of the world's municipality with coaching
    relationships, ids in order (every fifth relationship names no user: any coach of
    the municipality may then see the client)."""

    def __init__(self, world: World, size: int) -> None:
        self.world = world
        self.clients = [f"{world.p}-c{n:03d}" for n in range(1, size + 1)]
        for n, client in enumerate(self.clients, start=1):
            self.add(client, n)

    def add(self, client: str, n: int) -> None:
        code = self.world.municipality
        self.world.put("clients", client, {"home_municipality": code, "area_client": True})
        self.world.put("relationships", f"{client}-r", {
            "client": client, "municipality": code, "service": "coaching",
            "starts_at": "2025-06-01T00:00:00+03:00",
            "assigned_users": [self.world.user] if n % 5 else []})

    def query(self, **page: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "subject": {"type": "user", "id": self.world.user}, "action": {"name": "read"},
            "resource": {"type": "client_record",
                         "properties": {"category": "service_needs_plans"}},
            "context": {"purpose": "coaching"}}
        if page:
            body["page"] = page
        return body


def search(pep: httpx.Client, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    response = pep.post(f"/access/v1/search/{kind}", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_resource_search_over_http_lists_the_allowed_clients(
        admin: httpx.Client, pep: httpx.Client) -> None:
    world = World(admin, "749").build()
    load = Caseload(world, 6)
    # Others of 749 that this coach may not see: another service, and a client whose
    # only relationship is with Kuopio.
    world.put("clients", f"{world.p}-x1", {"home_municipality": "749", "area_client": True})
    world.put("relationships", f"{world.p}-x1-r", {
        "client": f"{world.p}-x1", "municipality": "749", "service": "guidance",
        "starts_at": "2025-06-01T00:00:00+03:00"})
    world.put("clients", f"{world.p}-x2", {"home_municipality": "749", "area_client": True})
    world.put("relationships", f"{world.p}-x2-r", {
        "client": f"{world.p}-x2", "municipality": "420", "service": "coaching",
        "starts_at": "2025-06-01T00:00:00+03:00"})
    result = search(pep, "resource", load.query())
    ids = [r["id"] for r in result["results"]]
    # The world's own client, the caseload; not the two others.
    assert ids == sorted([world.client, *load.clients])
    assert {r["type"] for r in result["results"]} == {"client_record"}
    assert result["page"] == {"next_token": "", "count": len(ids)}
    assert result["context"]["search_id"]
    for client in [*ids, f"{world.p}-x1", f"{world.p}-x2"]:
        body = world.request()
        body["resource"]["id"] = client
        decided = pep.post("/access/v1/evaluation", json=body).json()
        assert decided["decision"] is (client in ids), (client, decided)


# carries: C-11
def test_a_write_search_lists_only_for_the_own_municipalitys_records(
        admin: httpx.Client, pep: httpx.Client) -> None:
    """A search for writers answers as evaluation does: with the record's owner it names,
    the user's own municipality, every client of the caseload; with none, the
    authority's or another municipality's, no one. A malformed owner is 400."""
    world = World(admin, "749").build()
    load = Caseload(world, 3)
    query = {**load.query(), "action": {"name": "write"}}

    def with_owner(owner: str | None) -> dict[str, Any]:
        properties: dict[str, Any] = {"category": "service_needs_plans"}
        if owner is not None:
            properties["owner"] = owner
        return {**query, "resource": {"type": "client_record", "properties": properties}}

    mine = [r["id"] for r in search(pep, "resource", with_owner("749"))["results"]]
    # (other worlds' clients of 749 whose relationships name nobody are the team's too)
    assert {world.client, *load.clients} <= set(mine)
    for owner in (None, "authority", "297"):
        assert search(pep, "resource", with_owner(owner))["results"] == [], owner
    response = pep.post("/access/v1/search/resource", json=with_owner("74"))
    assert response.status_code == 400, response.text


def test_subject_and_action_search_over_http(admin: httpx.Client, pep: httpx.Client) -> None:
    world = World(admin, "297").build()
    colleague = f"{world.p}-u2"
    world.put("users", colleague, {"municipality": "297", "display_name": "Kollega",
                                   "tasks": ["coaching"], "status": "active"})
    world.import_grant(f"{world.p}-g2", {**world.grant_data(), "user": colleague})
    idle = f"{world.p}-u3"  # no grant
    world.put("users", idle, {"municipality": "297", "display_name": "Idle",
                              "tasks": ["coaching"], "status": "active"})
    # a record of the user's own municipality: it may be written too (rule 11)
    body = world.request(category="service_needs_plans", owner=world.municipality)
    subjects = search(pep, "subject", {**body, "subject": {"type": "user"}})
    found = [r["id"] for r in subjects["results"]]
    assert world.user in found and colleague in found and idle not in found
    assert {r["type"] for r in subjects["results"]} == {"user"}
    actions = search(pep, "action", {k: v for k, v in body.items() if k != "action"})
    assert actions["results"] == [{"name": "read"}, {"name": "write"}]
    for owner in ("", "authority", "844"):  # no owner, or another's record: read only
        other = world.request(category="service_needs_plans", owner=owner)
        actions = search(pep, "action", {k: v for k, v in other.items() if k != "action"})
        assert actions["results"] == [{"name": "read"}], owner
    contact = search(pep, "action", {**{k: v for k, v in body.items() if k != "action"},
                                     "resource": {**body["resource"],
                                                  "properties": {"category": "benefits"}}})
    assert contact["results"] == []


def test_paging_walks_every_result_once_while_facts_change(
        admin: httpx.Client, pep: httpx.Client) -> None:
    """Pages continue after the last id; each is answered from the facts of its time:
    an id removed before its page is reached is not listed, one added ahead is."""
    world = World(admin, "844").build()
    load = Caseload(world, 9)
    expected = sorted([world.client, *load.clients])
    first = search(pep, "resource", load.query(limit=3))
    seen = [r["id"] for r in first["results"]]
    assert seen == expected[:3] and first["page"]["next_token"]
    # Between pages: end the relationship of a client not yet listed, add a new one
    # after the last listed, and change a client already listed (it must not repeat).
    gone, added = load.clients[6], f"{world.p}-c005a"
    assert gone > seen[-1] and added > seen[-1]
    assert admin.delete(f"/v1/relationships/{gone}-r").status_code == 200
    load.add(added, 1)
    world.put("clients", seen[0], {"home_municipality": world.municipality,
                                   "protection_order": False, "area_client": True})
    token = first["page"]["next_token"]
    for _ in range(10):
        page = search(pep, "resource", load.query(limit=3, token=token))
        seen += [r["id"] for r in page["results"]]
        token = page["page"]["next_token"]
        if not token:
            break
    assert token == ""
    assert len(seen) == len(set(seen))
    assert seen == sorted({*expected, added} - {gone})


def test_search_errors(admin: httpx.Client, pep: httpx.Client, own_server: InProcess) -> None:
    world = World(admin, "204").build()
    load = Caseload(world, 3)
    token = search(pep, "resource", load.query(limit=1))["page"]["next_token"]
    other = load.query(limit=1, token=token)
    other["context"]["purpose"] = "guidance"  # another query: its token is refused
    for body in (other, load.query(token="garbage"), load.query(limit=0),
                 {**load.query(), "resource": {"type": "client_record"}},
                 {**load.query(), "resource": {"type": "client_record",
                                               "properties": {"category": "nope"}}}):
        response = pep.post("/access/v1/search/resource", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
    assert pep.post("/access/v1/search/resource", content=b"{").status_code == 400
    with own_server.client(None) as anonymous:
        assert anonymous.post("/access/v1/search/resource",
                              json=load.query()).status_code == 401
    config = own_server.get("/.well-known/authzen-configuration").json()
    assert config["search_resource_endpoint"].endswith("/access/v1/search/resource")


def test_searches_are_recorded_in_the_decision_log(tmp_path: Any) -> None:
    keys = {"t-admin": ["admin"], "t-pep": {"roles": ["pep"], "name": "cis"},
            "t-auditor": ["auditor"]}
    server = start_app(tmp_path, env={"PDP_API_KEYS": json.dumps(keys)})
    try:
        with server.client("t-admin") as admin, server.client("t-pep") as pep, \
                server.client("t-auditor") as auditor:
            world = World(admin).build()
            load = Caseload(world, 2)
            result = search(pep, "resource", load.query(limit=2))
            response = auditor.get("/v1/audit/decisions", params={
                "justification": "test", "record_type": "search", "user": world.user})
            assert response.status_code == 200, response.text
            records = response.json()["records"]
            assert [r["record_id"] for r in records] == [result["context"]["search_id"]]
            record = records[0]
            assert record["record_type"] == "search" and record["caller"] == "cis"
            assert record["category"] == "service_needs_plans"
            assert record["purpose"] == "coaching" and record["decision"] is True
            assert record["details"]["kind"] == "resource"
            assert record["details"]["results"] == [r["id"] for r in result["results"]]
    finally:
        stop_app(server)

"""The life of a right over HTTP (DOMAIN.md "Lifecycle of a right").

applied -> approved (the authority) -> active (KEHA) -> expired at valid_until; suspended
(restorable) or revoked; re-certification due at recertify_by. Every step and every
refused step, the role each step needs, the limits a right must keep, a municipality
admin's isolation, the time rules at their edges, and what a user leaving, a change of
tasks, notice and rescission do to rights and to the very next decision.

The module runs the app in-process (tests/support/asgi.py) of its own: it needs KEHA and
municipality-admin tokens that tests/support/servers.KEYS does not have (test_http_auth
checks KEYS holds exactly its own tokens).
Each test builds its own world with unique ids; a test that changes an agreement uses a
municipality code of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.asgi import InProcess, start_app, stop_app
from tests.support.servers import KEYS
from tests.support.world import World, decide, register_item

LIFECYCLE_KEYS: dict[str, list[str]] = {
    **KEYS,
    "t-keha": ["keha"],
    "t-m749": ["municipality_admin:749"],
    "t-m844": ["municipality_admin:844"],
}

FINGERPRINT_KEY = "lifecycle-fingerprint-key-0123456789"

STEPS = ("approve", "activate", "suspend", "restore", "revoke", "recertify")

# The token that normally takes each step, and a body it accepts.
STEP_TOKEN = {"approve": "t-grants", "activate": "t-keha", "suspend": "t-grants",
              "restore": "t-grants", "revoke": "t-grants", "recertify": "t-grants"}
STEP_BODY: dict[str, dict[str, Any]] = {
    "approve": {"justification": "needed for coaching"},
    "activate": {"note": "opened in A-TMT"},
    "suspend": {"reason": "suspected misuse"},
    "restore": {"justification": "suspicion cleared"},
    "revoke": {"reason": "other", "justification": "no longer needed"},
    "recertify": {"justification": "still needed"},
}

# Which step each state allows, and the state it leads to (policies/lifecycle.polar).
ALLOWED: dict[str, dict[str, str]] = {
    "applied": {"approve": "approved", "revoke": "revoked"},
    "approved": {"activate": "active", "revoke": "revoked"},
    "active": {"suspend": "suspended", "recertify": "active", "revoke": "revoked"},
    "recertification_due": {"suspend": "suspended", "recertify": "active",
                            "revoke": "revoked"},
    "suspended": {"restore": "active", "revoke": "revoked"},
    "revoked": {},
    "expired": {},
}
REFUSED = [(state, step) for state, steps in ALLOWED.items() for step in STEPS
           if step not in steps]
WALKS = [(state, step) for state, steps in ALLOWED.items() for step in steps]

# Who may take each step (pdp/http/rights.py STEP_ROLES); the rest get 403.
MAY_TAKE: dict[str, set[str]] = {
    "approve": {"t-grants", "t-both", "t-admin"},
    "activate": {"t-keha", "t-admin"},
    "suspend": {"t-grants", "t-both", "t-admin"},
    "restore": {"t-grants", "t-both", "t-admin"},
    "revoke": {"t-grants", "t-both", "t-keha", "t-m749", "t-admin"},
    "recertify": {"t-grants", "t-both", "t-m749", "t-admin"},
}
# A token other than STEP_TOKEN that may take the step, to show it can.
OTHER_TAKER = {"approve": "t-both", "activate": "t-admin", "suspend": "t-both",
               "restore": "t-admin", "revoke": "t-keha", "recertify": "t-m749"}
# The state in which each step is allowed, so that 403 is not a 409 in disguise.
STATE_FOR_STEP = {"approve": "applied", "activate": "approved", "suspend": "active",
                  "restore": "suspended", "revoke": "active", "recertify": "active"}

_ids = itertools.count(1)


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    """This module's own `pdp serve` (default settings), with the extra tokens."""
    running = start_app(tmp_path_factory.mktemp("lifecycle"),
                           env={"PDP_API_KEYS": json.dumps(LIFECYCLE_KEYS),
                                "PDP_FINGERPRINT_KEY": FINGERPRINT_KEY})
    yield running
    stop_app(running)


class Api:
    """One HTTP client per token."""

    def __init__(self, server: InProcess) -> None:
        self.server = server
        self._clients: dict[str, httpx.Client] = {}

    def __call__(self, token: str) -> httpx.Client:
        if token not in self._clients:
            self._clients[token] = self.server.client(token)
        return self._clients[token]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


@pytest.fixture
def api(server: InProcess) -> Iterator[Api]:
    clients = Api(server)
    yield clients
    clients.close()


def actor(token: str) -> str:
    """Who the history says acted for a token configured without a name (pdp/model/callers.py):
    an HMAC of the token with this module's PDP_FINGERPRINT_KEY."""
    return "key-" + hmac.new(FINGERPRINT_KEY.encode(), token.encode(),
                             hashlib.sha256).hexdigest()[:16]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def add_months(moment: datetime, months: int) -> datetime:
    month0 = moment.month - 1 + months
    year, month = moment.year + month0 // 12, month0 % 12 + 1
    days = [31, 29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28,
            31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
    return moment.replace(year=year, month=month, day=min(moment.day, days))


def close_to(moment: datetime, expected: datetime, seconds: float = 60) -> bool:
    return abs((moment - expected).total_seconds()) <= seconds


def bare_world(admin: httpx.Client, municipality: str = "749", **user: Any) -> World:
    """A world whose user holds no right yet; `user` changes the user's fields."""
    world = World(admin, municipality, grant=False).build()
    if user:
        put_user(admin, world, **user)
    return world


def user_data(world: World, **changes: Any) -> dict[str, Any]:
    return {"municipality": world.municipality, "display_name": "Testi Käyttäjä",
            "tasks": ["coaching"], "status": "active", **changes}


def put_user(client: httpx.Client, world: World, **changes: Any) -> httpx.Response:
    response = client.put(f"/v1/users/{world.user}", json=user_data(world, **changes))
    assert response.status_code == 200, response.text
    return response


def new_id(world: World, name: str = "lc") -> str:
    return f"{world.p}-{name}{next(_ids)}"


def application(user: str, **changes: Any) -> dict[str, Any]:
    now = utcnow()
    return {"user": user, "purposes": ["coaching"],
            "scopes": ["name_contact", "service_needs_plans"],
            "actions": ["read"], "valid_from": iso(now - timedelta(hours=1)),
            "valid_until": iso(now + timedelta(days=30)),
            "legal_basis": "380/2023 125 § 1 mom.",
            "justification": "coaching of the municipality's own clients", **changes}


def apply(api: Api, world: World, grant_id: str | None = None, token: str = "t-grants",
          **changes: Any) -> dict[str, Any]:
    grant_id = grant_id or new_id(world)
    response = api(token).post("/v1/grant-applications",
                               json=application(world.user, id=grant_id, **changes))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["id"] == grant_id
    return body


def step(api: Api, grant_id: str, name: str, token: str | None = None,
         body: dict[str, Any] | None = None) -> httpx.Response:
    return api(token or STEP_TOKEN[name]).post(
        f"/v1/grants/{grant_id}/{name}", json=STEP_BODY[name] if body is None else body)


def take(api: Api, grant_id: str, name: str, token: str | None = None,
         body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = step(api, grant_id, name, token, body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def get_grant(api: Api, grant_id: str) -> dict[str, Any]:
    response = api("t-admin").get(f"/v1/grants/{grant_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def history(api: Api, grant_id: str) -> list[dict[str, Any]]:
    response = api("t-admin").get(f"/v1/grants/{grant_id}/history")
    assert response.status_code == 200, response.text
    assert response.json()["grant"] == grant_id
    events: list[dict[str, Any]] = response.json()["history"]
    return events


def listing(api: Api, token: str = "t-admin", **params: Any) -> list[dict[str, Any]]:
    response = api(token).get("/v1/grants", params=params)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["grants"]
    return rows


def listed_ids(api: Api, **params: Any) -> set[str]:
    return {row["id"] for row in listing(api, **params)}


def events_after(client: httpx.Client, after: int, limit: int = 1000,
                 **params: Any) -> list[dict[str, Any]]:
    """Every event of rights, agreements and users after the cursor, following next_after
    page by page (supervision's case.* events, e.g. decisions at unusual hours, left out)."""
    found: list[dict[str, Any]] = []
    while True:
        response = client.get("/v1/events", params={"after": after, "limit": limit, **params})
        assert response.status_code == 200, response.text
        body = response.json()
        if not body["events"]:
            assert body["next_after"] == after
            return found
        assert body["next_after"] == body["events"][-1]["id"]
        assert all(e["id"] > after for e in body["events"])
        found += [e for e in body["events"] if not e["type"].startswith("case.")]
        after = body["next_after"]


def cursor(api: Api) -> int:
    """The outbox cursor now: the id of the newest event."""
    events = events_after(api("t-admin"), 0)
    return events[-1]["id"] if events else 0


def outcome(pep: httpx.Client, world: World, **request: Any) -> tuple[bool, str]:
    result = decide(pep, world.request(**request))
    return result["decision"], result["context"]["reason"]


ALLOWED_NOW = (True, "allowed")
NO_GRANT = (False, "no_active_grant")


def right_in(api: Api, world: World, state: str, **changes: Any) -> str:
    """A right of the world's user in `state`, through the workflow where it can be."""
    grant_id = new_id(world)
    if state in ("expired", "recertification_due"):
        # rights that time moved on: taken in from the register of rights
        now = utcnow()
        data = world.grant_data(scopes=["name_contact", "service_needs_plans"], **changes)
        if state == "expired":
            data.update(valid_from=iso(now - timedelta(days=30)),
                        valid_until=iso(now - timedelta(days=1)), status="expired")
        else:
            data.update(recertify_by=iso(now - timedelta(hours=1)))
        world.import_grant(grant_id, data)
    else:
        apply(api, world, grant_id, **changes)
        path = {"applied": [], "approved": ["approve"], "active": ["approve", "activate"],
                "suspended": ["approve", "activate", "suspend"], "revoked": ["revoke"]}
        for name in path[state]:
            take(api, grant_id, name)
    assert get_grant(api, grant_id)["state"] == state
    return grant_id


def sleep_until(moment: datetime) -> None:
    pause = (moment - utcnow()).total_seconds()
    if pause > 0:
        time.sleep(pause)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, response.text
    return error


# -- the whole life of a right ----------------------------------------------------------


# carries: C-4, C-5, C-13, C-14
def test_happy_path_every_step_with_decisions_history_and_outbox(
        api: Api, admin: httpx.Client, pep: httpx.Client) -> None:
    world = bare_world(admin)
    before = cursor(api)
    grant_id = new_id(world)

    applied = apply(api, world, grant_id, token="t-m749")
    assert (applied["state"], applied["status"]) == ("applied", "applied")
    assert applied["justification"] == "coaching of the municipality's own clients"
    assert outcome(pep, world) == NO_GRANT

    approved = take(api, grant_id, "approve", "t-grants", {"justification": "coaching needs it"})
    assert (approved["state"], approved["status"]) == ("approved", "approved")
    assert outcome(pep, world) == NO_GRANT

    activated = take(api, grant_id, "activate", "t-keha", {"note": "opened in A-TMT"})
    assert (activated["state"], activated["status"]) == ("active", "active")
    assert close_to(at(activated["recertify_by"]), utcnow() + timedelta(days=90))
    assert outcome(pep, world) == ALLOWED_NOW

    suspended = take(api, grant_id, "suspend", "t-grants", {"reason": "odd access at night"})
    assert suspended["state"] == "suspended"
    assert outcome(pep, world) == NO_GRANT

    restored = take(api, grant_id, "restore", "t-grants", {"justification": "explained"})
    assert restored["state"] == "active"
    assert outcome(pep, world) == ALLOWED_NOW

    recertified = take(api, grant_id, "recertify", "t-m749", {"justification": "still coaching"})
    assert recertified["state"] == "active"
    assert close_to(at(recertified["recertify_by"]), utcnow() + timedelta(days=90))
    assert outcome(pep, world) == ALLOWED_NOW

    revoked = take(api, grant_id, "revoke", "t-grants",
                   {"reason": "task_ended", "justification": "moved to other work"})
    assert revoked["state"] == "revoked"
    assert outcome(pep, world) == NO_GRANT
    assert get_grant(api, grant_id)["state"] == "revoked"

    expected = [
        ("grant.applied", "t-m749", "coaching of the municipality's own clients", None),
        ("grant.approved", "t-grants", "coaching needs it", "applied"),
        ("grant.activated", "t-keha", "opened in A-TMT", "approved"),
        ("grant.suspended", "t-grants", "odd access at night", "active"),
        ("grant.restored", "t-grants", "explained", "suspended"),
        ("grant.recertified", "t-m749", "still coaching", "active"),
        ("grant.revoked", "t-grants", "task_ended: moved to other work", "active"),
    ]
    events = history(api, grant_id)
    assert [(e["type"], e["actor"], e["reason"], e["data"]["from"]) for e in events] == [
        (kind, actor(token), reason, previous) for kind, token, reason, previous in expected]
    assert [e["data"]["grant"]["status"] for e in events] == [
        "applied", "approved", "active", "suspended", "active", "active", "revoked"]
    assert all(e["subject"] == {"kind": "grant", "id": grant_id} for e in events)
    assert all(e["municipality"] == "749" for e in events)

    outbox = [e for e in events_after(api("t-admin"), before, limit=3)
              if e["subject"]["id"] == grant_id]
    assert [e["type"] for e in outbox] == [kind for kind, *_ in expected]
    assert [e["id"] for e in outbox] == [e["id"] for e in events]
    assert [e["id"] for e in outbox] == sorted(e["id"] for e in outbox)


@pytest.mark.parametrize(("state", "name"), WALKS, ids=[f"{s}-{n}" for s, n in WALKS])
def test_every_allowed_transition(api: Api, admin: httpx.Client, state: str,
                                  name: str) -> None:
    world = World(admin).build()
    grant_id = right_in(api, world, state)
    taken = take(api, grant_id, name)
    assert taken["state"] == ALLOWED[state][name]
    assert get_grant(api, grant_id)["state"] == ALLOWED[state][name]
    last = history(api, grant_id)[-1]
    assert last["data"]["from"] == state
    assert last["actor"] == actor(STEP_TOKEN[name])


@pytest.mark.parametrize(("state", "name"), REFUSED, ids=[f"{s}-{n}" for s, n in REFUSED])
def test_every_refused_transition_is_409_and_changes_nothing(
        api: Api, admin: httpx.Client, state: str, name: str) -> None:
    world = World(admin).build()
    grant_id = right_in(api, world, state)
    before, events = get_grant(api, grant_id), history(api, grant_id)

    error = assert_error(step(api, grant_id, name), 409, "invalid_transition")
    assert error["details"] == [{"state": state, "step": name}]

    assert get_grant(api, grant_id) == before
    assert history(api, grant_id) == events


def test_recertification_due_right_refuses_approve_activate_restore(
        api: Api, admin: httpx.Client, pep: httpx.Client) -> None:
    world = World(admin, grant=False).build()
    world.import_grant(world.grant, world.grant_data(recertify_by=iso(utcnow())))
    assert outcome(pep, world) == NO_GRANT
    for name in ("approve", "activate", "restore"):
        error = assert_error(step(api, world.grant, name), 409, "invalid_transition")
        assert error["details"] == [{"state": "recertification_due", "step": name}]
    assert get_grant(api, world.grant)["state"] == "recertification_due"


def test_unknown_step_and_unknown_right_are_404(api: Api, admin: httpx.Client) -> None:
    world = World(admin).build()
    assert_error(api("t-grants").post(f"/v1/grants/{world.grant}/reopen", json={}), 404,
                 "not_found")
    assert_error(step(api, f"{world.p}-nothing", "approve"), 404, "not_found")
    assert get_grant(api, world.grant)["state"] == "active"


# -- roles ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STEPS)
def test_each_step_needs_its_role(api: Api, admin: httpx.Client, name: str) -> None:
    world = World(admin).build()
    grant_id = right_in(api, world, STATE_FOR_STEP[name])
    before = get_grant(api, grant_id)
    for token in sorted(set(LIFECYCLE_KEYS) - MAY_TAKE[name]):
        if token == "t-m844":
            continue  # a municipality admin of another municipality: see the isolation test
        assert_error(step(api, grant_id, name, token), 403, "forbidden")
    assert get_grant(api, grant_id) == before

    taken = take(api, grant_id, name, OTHER_TAKER[name])
    assert taken["state"] == ALLOWED[STATE_FOR_STEP[name]][name]
    assert history(api, grant_id)[-1]["actor"] == actor(OTHER_TAKER[name])


def test_roles_to_apply_read_and_act_on_agreements(api: Api, admin: httpx.Client) -> None:
    world = bare_world(admin)
    for token in ("t-pep", "t-facts", "t-auditor", "t-policy", "t-keha"):
        response = api(token).post("/v1/grant-applications",
                                   json=application(world.user, id=new_id(world)))
        assert_error(response, 403, "forbidden")
    assert listing(api, user=world.user) == []
    for token in ("t-grants", "t-both", "t-admin", "t-m749"):
        assert apply(api, world, token=token)["state"] == "applied"

    for token in ("t-pep", "t-facts", "t-policy"):
        assert_error(api(token).get("/v1/grants", params={"user": world.user}), 403,
                     "forbidden")
        assert_error(api(token).get("/v1/events"), 403, "forbidden")
    for token in ("t-grants", "t-keha", "t-auditor", "t-admin", "t-m749"):
        assert len(listing(api, token, user=world.user)) == 4

    for token in ("t-pep", "t-facts", "t-keha", "t-auditor", "t-m749"):
        for act in ("notice", "rescind"):
            if (token, act) == ("t-m749", "notice"):
                continue  # 749's own notice: test_either_party_may_give_notice
            response = api(token).post(f"/v1/agreements/749/{act}", json={"reason": "no"})
            assert_error(response, 403, "forbidden")
    # a municipality admin gives notice on its own agreement only
    response = api("t-m844").post("/v1/agreements/749/notice", json={"reason": "no"})
    assert_error(response, 403, "forbidden")
    agreement = api("t-admin").get("/v1/agreements/749").json()
    assert agreement["status"] == "in_force"


# -- limits -----------------------------------------------------------------------------


def refusal(response: httpx.Response) -> tuple[str, str]:
    error = assert_error(response, 400, "grant_refused")
    return error["details"][0]["rule"], error["details"][0]["detail"]


def post_application(api: Api, world: World, grant_id: str, token: str = "t-grants",
                     **changes: Any) -> httpx.Response:
    return api(token).post("/v1/grant-applications",
                           json=application(world.user, id=grant_id, **changes))


def assert_not_stored(api: Api, grant_id: str) -> None:
    assert_error(api("t-admin").get(f"/v1/grants/{grant_id}"), 404, "not_found")
    assert_error(api("t-admin").get(f"/v1/grants/{grant_id}/history"), 404, "not_found")


def test_refused_for_an_unknown_user(api: Api, admin: httpx.Client) -> None:
    world = bare_world(admin)
    grant_id = new_id(world)
    response = api("t-grants").post("/v1/grant-applications",
                                    json=application(f"{world.p}-nobody", id=grant_id))
    assert refusal(response) == ("user_unknown", "")
    assert_not_stored(api, grant_id)


@pytest.mark.parametrize("status", ["suspended", "left"])
def test_refused_for_an_inactive_user(api: Api, admin: httpx.Client, status: str) -> None:
    world = bare_world(admin, status=status)
    grant_id = new_id(world)
    assert refusal(post_application(api, world, grant_id)) == ("user_inactive", status)
    assert_not_stored(api, grant_id)


def test_refused_when_the_agreement_is_not_in_force(api: Api, admin: httpx.Client) -> None:
    world = bare_world(admin, "915")
    rescinded = api("t-grants").post("/v1/agreements/915/rescind", json={"reason": "misuse"})
    assert rescinded.status_code == 200, rescinded.text
    grant_id = new_id(world)
    assert refusal(post_application(api, world, grant_id)) == (
        "agreement_not_in_force", "rescinded")
    assert_not_stored(api, grant_id)


def test_refused_when_the_period_has_ended(api: Api, admin: httpx.Client) -> None:
    world = bare_world(admin)
    now = utcnow()
    grant_id = new_id(world)
    response = post_application(api, world, grant_id,
                                valid_from=iso(now - timedelta(days=30)),
                                valid_until=iso(now - timedelta(seconds=1)))
    assert refusal(response) == ("period_ended", "")
    assert_not_stored(api, grant_id)


def test_period_of_twelve_months_at_both_edges(api: Api, admin: httpx.Client) -> None:
    world = bare_world(admin)
    now = utcnow().replace(microsecond=0)
    start = now.replace(day=min(now.day, 28)) - timedelta(hours=1)
    year_on = add_months(start, 12)
    for too_long in (year_on + timedelta(days=1), year_on + timedelta(seconds=1)):
        grant_id = new_id(world)
        response = post_application(api, world, grant_id, valid_from=iso(start),
                                    valid_until=iso(too_long))
        assert refusal(response) == ("period_too_long", "")
        assert_not_stored(api, grant_id)
    exactly = apply(api, world, valid_from=iso(start), valid_until=iso(year_on))
    assert exactly["state"] == "applied"
    assert at(exactly["valid_until"]) == year_on


@pytest.mark.parametrize("scope", ["benefits", "identity_code",
                                   "unemployment_security_statements"])
def test_refused_for_a_scope_never_needed(api: Api, admin: httpx.Client, scope: str) -> None:
    world = bare_world(admin)
    grant_id = new_id(world)
    response = post_application(api, world, grant_id, scopes=["name_contact", scope])
    assert refusal(response) == ("scope_never_needed", scope)
    assert_not_stored(api, grant_id)


@pytest.mark.parametrize("scope", ["health_work_capacity", "offers_referrals"])
def test_refused_for_a_scope_outside_the_users_tasks(api: Api, admin: httpx.Client,
                                                     scope: str) -> None:
    world = bare_world(admin, tasks=["guidance"])
    grant_id = new_id(world)
    response = post_application(api, world, grant_id, purposes=["guidance"],
                                scopes=["service_needs_plans", scope])
    assert refusal(response) == ("scope_outside_purposes", scope)
    assert_not_stored(api, grant_id)
    assert apply(api, world, purposes=["guidance"],
                 scopes=["service_needs_plans"])["state"] == "applied"


def test_refused_for_a_scope_outside_the_rights_own_purposes(
        api: Api, admin: httpx.Client) -> None:
    """A scope fits the right's purposes, not merely some task of the user: a right for
    training does not get health_work_capacity because the user also coaches."""
    world = bare_world(admin, tasks=["coaching", "training"])
    grant_id = new_id(world)
    response = post_application(api, world, grant_id, purposes=["training"],
                                scopes=["name_contact", "health_work_capacity"])
    assert response.status_code == 400, response.text
    assert "health_work_capacity" in response.json()["error"]["message"]
    assert refusal(response) == ("scope_outside_purposes", "health_work_capacity")
    assert_not_stored(api, grant_id)
    assert apply(api, world, purposes=["training", "coaching"],
                 scopes=["name_contact", "health_work_capacity"])["state"] == "applied"


# carries: C-3, C-7, C-15
def test_refused_for_a_purpose_outside_the_users_tasks(api: Api, admin: httpx.Client) -> None:
    """A right is for services that are the user's tasks: a guidance counsellor is not
    given a right for coaching, however its scopes read."""
    world = bare_world(admin, tasks=["guidance"])
    grant_id = new_id(world)
    response = post_application(api, world, grant_id, purposes=["guidance", "coaching"],
                                scopes=["service_needs_plans"])
    assert refusal(response) == ("purpose_outside_tasks", "coaching")
    assert_not_stored(api, grant_id)
    missing = application(world.user, id=grant_id)
    del missing["purposes"]
    error = assert_error(api("t-grants").post("/v1/grant-applications", json=missing), 400,
                         "invalid_request")
    assert error["details"][0]["field"] == "purposes"
    assert_not_stored(api, grant_id)


def test_limits_are_checked_again_at_approval_activation_and_restore(
        api: Api, admin: httpx.Client) -> None:
    world = bare_world(admin)
    grant_id = right_in(api, world, "applied")

    put_user(admin, world, status="suspended")
    assert refusal(step(api, grant_id, "approve")) == ("user_inactive", "suspended")
    assert get_grant(api, grant_id)["state"] == "applied"
    put_user(admin, world)
    take(api, grant_id, "approve")

    put_user(admin, world, status="suspended")
    assert refusal(step(api, grant_id, "activate")) == ("user_inactive", "suspended")
    assert get_grant(api, grant_id)["state"] == "approved"
    put_user(admin, world)
    take(api, grant_id, "activate")
    take(api, grant_id, "suspend")

    put_user(admin, world, status="suspended")
    assert refusal(step(api, grant_id, "restore")) == ("user_inactive", "suspended")
    assert get_grant(api, grant_id)["state"] == "suspended"
    put_user(admin, world)
    assert take(api, grant_id, "restore")["state"] == "active"
    assert [e["type"] for e in history(api, grant_id)] == [
        "grant.applied", "grant.approved", "grant.activated", "grant.suspended",
        "grant.restored"]


def test_approval_may_narrow_and_never_widen(api: Api, admin: httpx.Client,
                                             pep: httpx.Client) -> None:
    world = bare_world(admin)
    now = utcnow()
    start, end = now - timedelta(hours=1), now + timedelta(days=60)
    grant_id = new_id(world)
    apply(api, world, grant_id, scopes=["name_contact", "service_needs_plans"],
          actions=["read"], valid_from=iso(start), valid_until=iso(end))
    before = get_grant(api, grant_id)

    wider: list[tuple[dict[str, Any], str]] = [
        ({"purposes": ["coaching", "guidance"]}, "purposes"),
        ({"purposes": ["training"]}, "purposes"),
        ({"scopes": ["service_needs_plans", "offers_referrals"]}, "scopes"),
        ({"actions": ["read", "write"]}, "actions"),
        ({"valid_until": iso(end + timedelta(seconds=1))}, "valid_until"),
        ({"valid_from": iso(start - timedelta(seconds=1))}, "valid_from"),
        ({"valid_from": iso(now + timedelta(days=10)),
          "valid_until": iso(now + timedelta(days=10))}, "valid_until"),
    ]
    for change, field in wider:
        body = {"justification": "approved", **change}
        error = assert_error(step(api, grant_id, "approve", body=body), 400, "invalid_request")
        assert error["details"][0]["field"] == field, (change, error)
    assert get_grant(api, grant_id) == before

    narrowed = take(api, grant_id, "approve", body={
        "justification": "plans only, for a month", "scopes": ["service_needs_plans"],
        "valid_until": iso(now + timedelta(days=30))})
    assert narrowed["state"] == "approved"
    assert narrowed["scopes"] == ["service_needs_plans"]
    assert narrowed["actions"] == ["read"]
    assert at(narrowed["valid_from"]) == start
    assert at(narrowed["valid_until"]) == now + timedelta(days=30)
    assert history(api, grant_id)[-1]["data"]["grant"]["scopes"] == ["service_needs_plans"]

    take(api, grant_id, "activate")
    assert outcome(pep, world) == ALLOWED_NOW
    assert outcome(pep, world, category="name_contact") == (False, "category_not_necessary")
    assert outcome(pep, world, action="write") == (False, "action_not_permitted")


def test_missing_or_bad_reasons_are_invalid_requests(api: Api, admin: httpx.Client) -> None:
    world = bare_world(admin)
    grant_id = new_id(world)
    body = application(world.user, id=grant_id)
    del body["justification"]
    assert_error(api("t-grants").post("/v1/grant-applications", json=body), 400,
                 "invalid_request")
    assert_not_stored(api, grant_id)
    assert_error(post_application(api, world, grant_id, justification=""), 400,
                 "invalid_request")
    assert_not_stored(api, grant_id)

    applied = right_in(api, world, "applied")
    assert_error(step(api, applied, "approve", body={}), 400, "invalid_request")
    active = right_in(api, world, "active")
    assert_error(step(api, active, "suspend", body={}), 400, "invalid_request")
    assert_error(step(api, active, "recertify", body={}), 400, "invalid_request")
    assert_error(step(api, active, "revoke", body={}), 400, "invalid_request")
    assert_error(step(api, active, "revoke", body={"reason": "bored"}), 400, "invalid_request")
    suspended = right_in(api, world, "suspended")
    assert_error(step(api, suspended, "restore", body={}), 400, "invalid_request")
    assert get_grant(api, applied)["state"] == "applied"
    assert get_grant(api, active)["state"] == "active"
    assert get_grant(api, suspended)["state"] == "suspended"
    assert len(history(api, active)) == 3


# -- a municipality admin sees and touches its own municipality only --------------------


def test_municipality_admin_cannot_see_or_touch_another_municipality(
        api: Api, admin: httpx.Client) -> None:
    ours = World(admin, "749").build()
    theirs = World(admin, "844").build()
    start = cursor(api)
    other = api("t-m844")

    assert_error(other.get(f"/v1/users/{ours.user}"), 404, "not_found")
    assert_error(other.get(f"/v1/grants/{ours.grant}"), 404, "not_found")
    grant_id = new_id(ours)
    assert_error(other.post("/v1/grant-applications",
                            json=application(ours.user, id=grant_id)), 404, "not_found")
    assert_not_stored(api, grant_id)
    assert_error(other.post(f"/v1/grants/{ours.grant}/revoke",
                            json={"reason": "employment_ended"}), 404, "not_found")
    assert_error(other.post(f"/v1/grants/{ours.grant}/recertify",
                            json={"justification": "x"}), 404, "not_found")
    assert_error(other.get(f"/v1/grants/{ours.grant}/history"), 404, "not_found")
    assert_error(other.get("/v1/grants", params={"municipality": "749"}), 404, "not_found")
    assert other.get("/v1/grants", params={"user": ours.user}).json()["grants"] == []
    mine = other.get("/v1/grants").json()["grants"]
    assert {row["municipality"] for row in mine} == {"844"}
    assert theirs.grant in {row["id"] for row in mine}
    assert_error(other.put(f"/v1/users/{ours.user}", json=user_data(ours, status="left")),
                 403, "forbidden")
    assert_error(other.put(f"/v1/users/{ours.user}", json=user_data(theirs, status="left")),
                 409, "id_taken")
    assert_error(other.delete(f"/v1/users/{ours.user}"), 404, "not_found")
    assert other.get(f"/v1/users/{theirs.user}").status_code == 200
    assert get_grant(api, ours.grant)["state"] == "active"
    assert api("t-admin").get(f"/v1/users/{ours.user}").json()["status"] == "active"

    # the outbox: only its own municipality's events, never another's
    take(api, ours.grant, "suspend")
    take(api, theirs.grant, "suspend")
    seen = events_after(other, start)
    assert seen and {e["municipality"] for e in seen} == {"844"}
    assert theirs.grant in {e["subject"]["id"] for e in seen}
    assert events_after(other, start, municipality="844") == seen
    assert other.get("/v1/events", params={"after": start,
                                           "municipality": "749"}).status_code in (403, 404)


def test_ids_of_rights_are_never_reused_nor_their_history_shown(
        api: Api, admin: httpx.Client) -> None:
    """A right's id stays its own. Before, the authority deleted 844's right and 749
    applied under its id: 749's admin then read 844's history of that id. Now no right is
    deleted (409 use_workflow: it is revoked), and an id a right has is never given to
    another."""
    theirs = World(admin, "844").build()
    ours = bare_world(admin)
    taken = new_id(theirs, "their")
    apply(api, theirs, taken)
    take(api, taken, "approve")
    take(api, taken, "activate")
    deleted = admin.delete(f"/v1/grants/{taken}")
    assert_error(deleted, 409, "use_workflow")
    assert deleted.json()["error"]["details"][0]["step"] == "revoke"
    take(api, taken, "revoke")

    reused = post_application(api, ours, taken, token="t-m749")
    error = assert_error(reused, 409, "id_taken")
    assert taken not in error["message"] and "844" not in reused.text
    assert_error(api("t-m749").get(f"/v1/grants/{taken}"), 404, "not_found")
    assert_error(api("t-m749").get(f"/v1/grants/{taken}/history"), 404, "not_found")
    kept = history(api, taken)
    assert [e["type"] for e in kept] == ["grant.applied", "grant.approved",
                                         "grant.activated", "grant.revoked"]
    assert {e["municipality"] for e in kept} == {"844"}
    # nor by the authority, nor through the register, nor the facts API, nor a batch
    assert_error(post_application(api, ours, taken), 409, "id_taken")
    imported = admin.post("/v1/grants:import", json={"grants": [
        register_item(taken, ours.grant_data())]})
    assert_error(imported, 409, "id_taken")
    assert_error(admin.put(f"/v1/grants/{taken}", json=ours.grant_data()), 409,
                 "use_workflow")
    batch = admin.post("/v1/facts:batch", json={"facts": [
        {"kind": "grant", "id": taken, "data": ours.grant_data()}]})
    assert_error(batch, 409, "use_workflow")
    assert get_grant(api, taken)["user"] == theirs.user
    assert len(history(api, taken)) == 4

    # No existence oracle: another municipality's revoked right, its live one and one of
    # our own get one and the same answer; an application that fails for another reason
    # fails alike under a taken id and a free one.
    own_revoked = right_in(api, ours, "revoked")
    answers = [post_application(api, ours, grant_id, token="t-m749")
               for grant_id in (taken, theirs.grant, own_revoked)]
    assert {(a.status_code, a.text) for a in answers} == {(reused.status_code, reused.text)}
    free = new_id(ours, "free")
    for changes in ({"scopes": ["name_contact", "benefits"]},
                    {"valid_until": iso(utcnow() - timedelta(seconds=1))}):
        refused = [post_application(api, ours, grant_id, token="t-m749", **changes)
                   for grant_id in (free, taken, theirs.grant)]
        assert refused[0].status_code == 400, refused[0].text
        assert {(r.status_code, r.text) for r in refused} == {
            (refused[0].status_code, refused[0].text)}
    assert_not_stored(api, free)

    # a right without an id of its own gets a fresh one
    made = api("t-m749").post("/v1/grant-applications", json=application(ours.user))
    assert made.status_code == 201, made.text
    assert made.json()["id"] not in (taken, own_revoked)


def test_a_history_shows_a_municipality_only_its_own_events(
        api: Api, admin: httpx.Client, server: InProcess) -> None:
    """A store written before ids were kept may hold one id's events of two
    municipalities: a municipality admin sees only its own."""
    ours = World(admin, "749").build()
    db = sqlite3.connect(server.store_file, timeout=10,
                         isolation_level=None)
    try:
        db.execute("INSERT INTO events (at, facts_version, type, subject_kind, subject_id, "
                   "municipality, actor, reason, data) VALUES "
                   "('2025-01-01 00:00:00.000000', 1, 'grant.applied', 'grant', ?, '844', "
                   "'someone', 'their secret reason', '{}')", (ours.grant,))
    finally:
        db.close()
    seen = api("t-m749").get(f"/v1/grants/{ours.grant}/history")
    assert seen.status_code == 200, seen.text
    assert {e["municipality"] for e in seen.json()["history"]} == {"749"}
    assert "their secret reason" not in seen.text
    assert "their secret reason" in api("t-grants").get(
        f"/v1/grants/{ours.grant}/history").text
    assert_error(api("t-m844").get(f"/v1/grants/{ours.grant}/history"), 404, "not_found")


def same_answer(responses: list[httpx.Response], ids: tuple[str, ...]) -> set[tuple[int, str]]:
    """The (status, body) of each answer with the id it was asked about blotted out."""
    return {(r.status_code, r.text.replace(i, "ID")) for r, i in zip(responses, ids, strict=True)}


def test_ids_of_users_are_never_reused_nor_their_rights_shown(
        api: Api, admin: httpx.Client) -> None:
    """A deleted user's id stays taken. Before, the authority deleted 844's user (its
    right revoked) and 749's admin created a user under its id (200): 749 then listed and
    read 844's right, labelled "municipality": "749"."""
    theirs = World(admin, "844").build()
    ours = bare_world(admin)
    own = api("t-m749")
    assert admin.delete(f"/v1/users/{theirs.user}").status_code == 200
    assert get_grant(api, theirs.grant)["state"] == "revoked"

    reused = own.put(f"/v1/users/{theirs.user}", json=user_data(ours))
    error = assert_error(reused, 409, "id_taken")
    assert theirs.user not in reused.text and "844" not in reused.text
    assert error["details"] == [{"field": "id", "message": "taken"}]
    assert_error(admin.get(f"/v1/users/{theirs.user}"), 404, "not_found")
    assert own.get("/v1/grants", params={"user": theirs.user}).json()["grants"] == []
    assert_error(own.get(f"/v1/grants/{theirs.grant}"), 404, "not_found")
    # nor by the authority, in a PUT or a batch
    assert_error(api("t-facts").put(f"/v1/users/{theirs.user}", json=user_data(theirs)),
                 409, "id_taken")
    batch = api("t-facts").post("/v1/facts:batch", json={"facts": [
        {"kind": "user", "id": theirs.user, "data": user_data(ours)}]})
    assert_error(batch, 409, "id_taken")
    assert_error(admin.get(f"/v1/users/{theirs.user}"), 404, "not_found")
    assert own.get("/v1/grants", params={"user": theirs.user}).json()["grants"] == []

    # A deleted user whom a right names: nobody may become that user.
    orphan = new_id(ours, "orphan")
    assert own.put(f"/v1/users/{orphan}", json=user_data(ours)).status_code == 200
    ours.import_grant(new_id(ours, "g"), ours.grant_data(user=orphan))
    assert own.delete(f"/v1/users/{orphan}").status_code == 200
    assert_error(own.put(f"/v1/users/{orphan}", json=user_data(ours)), 409, "id_taken")
    assert_error(admin.put(f"/v1/users/{orphan}", json=user_data(ours)), 409, "id_taken")
    assert own.get("/v1/grants", params={"user": orphan}).json()["grants"] == []

    # No existence oracle: another municipality's live user, its deleted one, a right's
    # missing one and one of our own deleted get one and the same answer, ...
    live = World(admin, "844").build()
    mine = new_id(ours, "mine")
    assert own.put(f"/v1/users/{mine}", json=user_data(ours)).status_code == 200
    assert own.delete(f"/v1/users/{mine}").status_code == 200
    taken = (theirs.user, live.user, orphan, mine)
    answers = [own.put(f"/v1/users/{i}", json=user_data(ours)) for i in taken]
    assert {(a.status_code, a.text) for a in answers} == {(reused.status_code, reused.text)}
    assert admin.get(f"/v1/users/{live.user}").json()["municipality"] == "844"
    # ... a write that fails for another reason fails alike under a free id and a taken one
    free = new_id(ours, "free")
    for bad in (user_data(ours, status="retired"), user_data(ours, municipality="844"),
                {**user_data(ours), "extra": 1}, user_data(ours, tasks=["cooking"])):
        refused = [own.put(f"/v1/users/{i}", json=bad) for i in (free, *taken)]
        assert refused[0].status_code in (400, 403), refused[0].text
        assert len(same_answer(refused, (free, *taken))) == 1
    assert_error(admin.get(f"/v1/users/{free}"), 404, "not_found")
    # ... and reading or deleting another's user answers as for one that never was
    for method in ("GET", "DELETE"):
        ids = (free, live.user, theirs.user, mine)
        tried = [own.request(method, f"/v1/users/{i}") for i in ids]
        assert tried[0].status_code == 404, tried[0].text
        assert len(same_answer(tried, ids)) == 1
    assert admin.get(f"/v1/users/{live.user}").status_code == 200

    # a free id is 749's own, and stays so
    created = own.put(f"/v1/users/{free}", json=user_data(ours))
    assert created.status_code == 200, created.text
    changed = own.put(f"/v1/users/{free}", json=user_data(ours, display_name="Uusi"))
    assert changed.status_code == 200, changed.text
    assert api("t-facts").put(f"/v1/users/{live.user}",
                              json=user_data(live, display_name="Uusi")).status_code == 200


def test_municipality_admin_acts_for_its_own_municipality(api: Api,
                                                          admin: httpx.Client) -> None:
    ours = World(admin, "749").build()
    theirs = World(admin, "844").build()
    start = cursor(api)
    own = api("t-m749")

    assert own.get(f"/v1/users/{ours.user}").json()["municipality"] == "749"
    got = own.get(f"/v1/grants/{ours.grant}")
    assert got.status_code == 200 and got.json()["state"] == "active"
    applied = apply(api, ours, token="t-m749")
    revoked = own.post(f"/v1/grants/{ours.grant}/revoke", json={"reason": "task_ended"})
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["state"] == "revoked"
    events = own.get(f"/v1/grants/{ours.grant}/history").json()["history"]
    assert events[-1]["type"] == "grant.revoked"
    assert events[-1]["actor"] == actor("t-m749")
    rows = listing(api, "t-m749", municipality="749")
    assert {row["municipality"] for row in rows} == {"749"}
    assert {ours.grant, applied["id"]} <= {row["id"] for row in rows}
    assert listing(api, "t-m749") == rows
    seen = events_after(own, start)
    assert {e["municipality"] for e in seen} == {"749"}
    assert [e["type"] for e in seen if e["subject"]["id"] == ours.grant] == ["grant.revoked"]

    # reporting changes of its own users, and only of them
    changed = own.put(f"/v1/users/{ours.user}",
                      json=user_data(ours, display_name="Uusi Nimi"))
    assert changed.status_code == 200, changed.text
    assert admin.get(f"/v1/users/{ours.user}").json()["display_name"] == "Uusi Nimi"
    assert_error(own.put(f"/v1/users/{ours.user}", json=user_data(ours, municipality="844")),
                 403, "forbidden")
    assert admin.get(f"/v1/users/{ours.user}").json()["municipality"] == "749"
    assert_error(own.put(f"/v1/users/{theirs.user}", json=user_data(theirs)), 403,
                 "forbidden")
    assert_error(own.put(f"/v1/users/{theirs.user}", json=user_data(ours)), 409, "id_taken")
    assert admin.get(f"/v1/users/{theirs.user}").json()["municipality"] == "844"
    assert_error(own.get(f"/v1/users/{theirs.user}"), 404, "not_found")
    assert_error(own.get(f"/v1/grants/{theirs.grant}"), 404, "not_found")


# -- time moves rights on without anyone acting ----------------------------------------


def test_a_right_expires_at_valid_until(api: Api, admin: httpx.Client,
                                        pep: httpx.Client) -> None:
    world = World(admin, grant=False).build()
    edge = utcnow() + timedelta(seconds=2)
    world.import_grant(world.grant, world.grant_data(valid_until=iso(edge)))
    events = len(history(api, world.grant))

    assert outcome(pep, world) == ALLOWED_NOW
    assert get_grant(api, world.grant)["state"] == "active"
    assert world.grant in listed_ids(api, user=world.user, state="active")
    assert utcnow() < edge - timedelta(milliseconds=300), "too slow to test before the edge"

    sleep_until(edge + timedelta(milliseconds=200))
    assert outcome(pep, world) == NO_GRANT
    got = get_grant(api, world.grant)
    assert (got["state"], got["status"]) == ("expired", "active")
    assert world.grant in listed_ids(api, user=world.user, state="expired")
    assert world.grant not in listed_ids(api, user=world.user, state="active")
    assert len(history(api, world.grant)) == events
    for name in ("suspend", "recertify", "revoke"):
        assert_error(step(api, world.grant, name), 409, "invalid_transition")


def test_a_right_counts_from_valid_from(api: Api, admin: httpx.Client,
                                        pep: httpx.Client) -> None:
    world = World(admin, grant=False).build()
    edge = utcnow() + timedelta(seconds=2)
    world.import_grant(world.grant, world.grant_data(valid_from=iso(edge)))
    assert outcome(pep, world) == NO_GRANT
    assert utcnow() < edge - timedelta(milliseconds=300), "too slow to test before the edge"
    sleep_until(edge + timedelta(milliseconds=200))
    assert outcome(pep, world) == ALLOWED_NOW


def test_a_right_not_recertified_in_time_stops_counting_until_recertified(
        api: Api, admin: httpx.Client, pep: httpx.Client) -> None:
    world = World(admin, grant=False).build()
    edge = utcnow() + timedelta(seconds=2)
    world.import_grant(world.grant, world.grant_data(recertify_by=iso(edge)))
    events = len(history(api, world.grant))

    assert outcome(pep, world) == ALLOWED_NOW
    assert get_grant(api, world.grant)["state"] == "active"
    assert world.grant in listed_ids(api, user=world.user, state="active")
    assert utcnow() < edge - timedelta(milliseconds=300), "too slow to test before the edge"

    sleep_until(edge + timedelta(milliseconds=200))
    assert outcome(pep, world) == NO_GRANT
    got = get_grant(api, world.grant)
    assert (got["state"], got["status"]) == ("recertification_due", "active")
    assert world.grant in listed_ids(api, user=world.user, state="recertification_due")
    assert len(history(api, world.grant)) == events

    recertified = take(api, world.grant, "recertify", "t-m749")
    assert recertified["state"] == "active"
    assert close_to(at(recertified["recertify_by"]), utcnow() + timedelta(days=90))
    assert outcome(pep, world) == ALLOWED_NOW
    assert get_grant(api, world.grant)["state"] == "active"
    last = history(api, world.grant)[-1]
    assert (last["type"], last["data"]["from"]) == ("grant.recertified", "recertification_due")


def test_due_within_days_lists_rights_that_end_or_fall_due(api: Api,
                                                           admin: httpx.Client) -> None:
    world = World(admin, grant=False).build()
    now = utcnow()
    ending = world.grant
    world.import_grant(ending, world.grant_data(valid_until=iso(now + timedelta(days=10))))
    falling_due = new_id(world)
    world.import_grant(falling_due,
                       world.grant_data(recertify_by=iso(now + timedelta(days=10))))
    far = new_id(world)
    world.import_grant(far, world.grant_data(recertify_by=iso(now + timedelta(days=80))))
    revoked = new_id(world)
    world.import_grant(revoked, world.grant_data(
        status="revoked", valid_until=iso(now + timedelta(days=10))))
    expired = new_id(world)
    world.import_grant(expired, world.grant_data(valid_until=iso(now - timedelta(days=1)),
                                                 status="expired"))

    assert listed_ids(api, user=world.user, due_within_days=30) == {ending, falling_due}
    assert listed_ids(api, user=world.user, due_within_days=10) == {ending, falling_due}
    assert listed_ids(api, user=world.user, due_within_days=9) == set()
    assert listed_ids(api, user=world.user, due_within_days=5) == set()
    assert listed_ids(api, user=world.user, due_within_days=90) == {ending, falling_due, far}
    rows = {row["id"]: row for row in listing(api, user=world.user, due_within_days=30)}
    assert at(rows[ending]["due"]) == now + timedelta(days=10)
    assert at(rows[falling_due]["due"]) == now + timedelta(days=10)


# -- changes of a user ------------------------------------------------------------------


def test_a_user_leaving_is_denied_at_once_and_loses_every_right(
        api: Api, admin: httpx.Client, pep: httpx.Client) -> None:
    world = World(admin).build()
    live = {world.grant: "active"}
    for state in ("applied", "approved", "active", "suspended"):
        live[right_in(api, world, state)] = state
    revoked = right_in(api, world, "revoked")
    revoked_history = history(api, revoked)
    assert outcome(pep, world) == ALLOWED_NOW

    put_user(api("t-facts"), world, status="left")
    assert outcome(pep, world) == (False, "user_inactive")

    for grant_id, state in live.items():
        got = get_grant(api, grant_id)
        assert (got["state"], got["status"]) == ("revoked", "revoked"), grant_id
        last = history(api, grant_id)[-1]
        assert (last["type"], last["reason"], last["actor"], last["data"]["from"]) == (
            "grant.revoked", "employment_ended", actor("t-facts"), state)
    assert history(api, revoked) == revoked_history
    assert listed_ids(api, user=world.user, state="revoked") == {*live, revoked}

    put_user(admin, world)  # back again: no right comes back with the user
    assert outcome(pep, world) == NO_GRANT


# carries: C-16
def test_a_change_of_tasks_suspends_rights_that_no_longer_fit(
        api: Api, admin: httpx.Client, pep: httpx.Client) -> None:
    """Tasks that narrow suspend every right they no longer cover: one with a scope no
    remaining task needs, and one with a purpose that is no longer a task."""
    world = World(admin, grant=False).build()
    put_user(admin, world, tasks=["coaching", "guidance"])
    period = {"valid_from": iso(utcnow() - timedelta(days=1)),
              "valid_until": iso(utcnow() + timedelta(days=100))}
    coaching_only = new_id(world)
    world.import_grant(coaching_only, world.grant_data(
        purposes=["coaching"], scopes=["offers_referrals"], **period))
    health = new_id(world)  # a coaching scope, for coaching, which is no task any more
    world.import_grant(health, world.grant_data(
        purposes=["coaching"], scopes=["service_needs_plans", "health_work_capacity"],
        **period))
    both = new_id(world)  # its scopes fit guidance; one of its purposes is no task
    world.import_grant(both, world.grant_data(
        purposes=["coaching", "guidance"], scopes=["name_contact", "service_needs_plans"],
        **period))
    fits = world.grant  # guidance, with name_contact, service_needs_plans: fits guidance
    world.import_grant(fits, world.grant_data(
        purposes=["guidance"], scopes=["name_contact", "service_needs_plans"], **period))
    fits_events = history(api, fits)
    world.put("relationships", f"{world.p}-r2", {
        "client": world.client, "municipality": world.municipality, "service": "guidance",
        "starts_at": "2025-06-01T00:00:00+03:00"})
    assert outcome(pep, world, category="offers_referrals") == ALLOWED_NOW

    put_user(api("t-m749"), world, tasks=["guidance"])

    for grant_id in (coaching_only, health, both):
        got = get_grant(api, grant_id)
        assert (got["state"], got["status"]) == ("suspended", "suspended"), grant_id
        last = history(api, grant_id)[-1]
        assert (last["type"], last["reason"], last["actor"], last["data"]["from"]) == (
            "grant.suspended", "tasks_changed", actor("t-m749"), "active")
    assert get_grant(api, fits)["state"] == "active"
    assert history(api, fits) == fits_events
    assert outcome(pep, world, purpose="guidance") == ALLOWED_NOW
    assert outcome(pep, world, purpose="coaching")[0] is False
    # a suspended right that still does not fit cannot be restored
    assert refusal(step(api, coaching_only, "restore")) == ("purpose_outside_tasks", "coaching")
    assert refusal(step(api, both, "restore")) == ("purpose_outside_tasks", "coaching")
    assert refusal(step(api, health, "restore")) == ("purpose_outside_tasks", "coaching")


# -- agreements: rescission and notice -------------------------------------------------


# carries: C-23
def test_rescission_denies_at_once_and_revokes_every_right(
        api: Api, admin: httpx.Client, pep: httpx.Client) -> None:
    world = World(admin, "204").build()
    live = {world.grant: "active"}
    for state in ("applied", "approved", "active", "suspended"):
        live[right_in(api, world, state)] = state
    start = cursor(api)
    assert outcome(pep, world) == ALLOWED_NOW

    response = api("t-grants").post("/v1/agreements/204/rescind",
                                    json={"reason": "repeated misuse"})
    assert response.status_code == 200, response.text
    agreement = response.json()
    assert agreement["status"] == "rescinded"
    assert close_to(at(agreement["ends_at"]), utcnow())
    assert outcome(pep, world) == (False, "agreement_not_in_force")

    for grant_id, state in live.items():
        got = get_grant(api, grant_id)
        assert (got["state"], got["status"]) == ("revoked", "revoked"), grant_id
        last = history(api, grant_id)[-1]
        assert (last["type"], last["reason"], last["actor"], last["data"]["from"]) == (
            "grant.revoked", "agreement_ended", actor("t-grants"), state)
    assert listing(api, municipality="204", state="active") == []
    outbox = events_after(api("t-admin"), start, municipality="204")
    assert outbox[0]["type"] == "agreement.rescinded"
    assert outbox[0]["reason"] == "repeated misuse"
    assert {e["subject"]["id"] for e in outbox[1:]} == set(live)

    for act in ("rescind", "notice"):
        again = api("t-grants").post(f"/v1/agreements/204/{act}", json={"reason": "again"})
        assert_error(again, 409, "invalid_transition")
    assert refusal(post_application(api, world, new_id(world))) == (
        "agreement_not_in_force", "rescinded")
    assert_error(api("t-grants").post("/v1/agreements/204/rescind", json={}), 400,
                 "invalid_request")


# carries: C-22
def test_notice_caps_every_right_at_the_end_of_the_notice(
        api: Api, admin: httpx.Client, pep: httpx.Client) -> None:
    world = World(admin, "420").build()
    long_applied = right_in(api, world, "applied",
                            valid_until=iso(utcnow() + timedelta(days=300)))
    short = right_in(api, world, "active", valid_until=iso(utcnow() + timedelta(days=20)))
    short_before = get_grant(api, short)
    assert outcome(pep, world) == ALLOWED_NOW

    response = api("t-grants").post("/v1/agreements/420/notice",
                                    json={"reason": "the municipality withdraws"})
    assert response.status_code == 200, response.text
    agreement = response.json()
    assert agreement["status"] == "notice_given"
    ends_at = at(agreement["ends_at"])
    assert close_to(ends_at, add_months(utcnow(), 3))
    assert api("t-admin").get("/v1/agreements/420").json()["status"] == "notice_given"

    for grant_id in (world.grant, long_applied):
        got = get_grant(api, grant_id)
        assert at(got["valid_until"]) == ends_at, grant_id
        last = history(api, grant_id)[-1]
        assert (last["type"], last["reason"], last["actor"]) == (
            "grant.period_shortened", "agreement_ended", actor("t-grants"))
    assert get_grant(api, world.grant)["state"] == "active"
    assert get_grant(api, long_applied)["state"] == "applied"
    assert get_grant(api, short) == short_before
    assert outcome(pep, world) == ALLOWED_NOW

    again = api("t-grants").post("/v1/agreements/420/notice", json={"reason": "again"})
    assert_error(again, 409, "invalid_transition")

    # under notice the agreement may still be rescinded: everything ends at once
    rescinded = api("t-grants").post("/v1/agreements/420/rescind", json={"reason": "misuse"})
    assert rescinded.status_code == 200, rescinded.text
    assert outcome(pep, world) == (False, "agreement_not_in_force")
    for grant_id in (world.grant, long_applied, short):
        assert get_grant(api, grant_id)["state"] == "revoked"


def test_a_right_applied_under_notice_ends_with_the_agreement(
        api: Api, admin: httpx.Client) -> None:
    """Notice ends every right of the municipality when the notice ends: a right applied
    for while the notice runs may not outlast it (refused, or capped at ends_at)."""
    world = bare_world(admin, "239")
    response = api("t-grants").post("/v1/agreements/239/notice", json={"reason": "withdraws"})
    assert response.status_code == 200, response.text
    ends_at = at(response.json()["ends_at"])

    grant_id = new_id(world)
    response = post_application(api, world, grant_id,
                                valid_until=iso(ends_at + timedelta(days=30)))
    if response.status_code == 400:
        assert_error(response, 400, "grant_refused")
        assert_not_stored(api, grant_id)
    else:
        assert response.status_code == 201, response.text
        assert at(response.json()["valid_until"]) <= ends_at, (
            f"a right applied under notice runs to {response.json()['valid_until']}, "
            f"past the agreement's end {ends_at.isoformat()}")


@pytest.mark.parametrize("change", ["moved", "deleted"])
def test_a_user_who_moves_or_is_deleted_loses_every_right(
        api: Api, admin: httpx.Client, pep: httpx.Client, change: str) -> None:
    world = World(admin).build()
    active = right_in(api, world, "active")
    applied = right_in(api, world, "applied")
    assert outcome(pep, world) == ALLOWED_NOW
    if change == "moved":
        put_user(api("t-facts"), world, municipality="297")
    else:
        assert api("t-facts").delete(f"/v1/users/{world.user}").status_code == 200
    for grant_id in (world.grant, active, applied):
        got = get_grant(api, grant_id)
        assert got["state"] == "revoked", grant_id
        assert history(api, grant_id)[-1]["reason"] == "employment_ended"
    if change == "moved":
        put_user(admin, world)  # back in 749: no right comes back with the user
        assert outcome(pep, world) == NO_GRANT
    else:  # a deleted user's id is never used again (it would carry the old rights)
        assert_error(admin.put(f"/v1/users/{world.user}", json=user_data(world)), 409,
                     "id_taken")
        assert outcome(pep, world)[0] is False

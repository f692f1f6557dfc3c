"""One source of truth (issue 17): whatever the decision entry reuses — the memo, the
answers by record shape — must give exactly the decision, reason and grant that the plain
Polar query over the facts of that moment gives.

In-process, on random worlds (tests/support/random_worlds.py): one long-lived Decider
answers a random sequence of requests, interleaved with writes that change what a
memoised answer depended on (a right revoked, a relationship ended or assigned, a client's
protection order, a user suspended) and with time moving back and forth around the
windows of rights and relationships; every answer is compared with `core.decide`, which
asks the policy afresh with no memo and no shapes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdp.engine.core import DecisionRequest, decide, decide_all
from pdp.engine.decider import Asker
from pdp.model.vocab import ACTIONS, CATEGORIES, SERVICES
from pdp.store.protocols import ChangeRecord
from tests.support.random_worlds import NOW, at, build, policy, worlds

ASKER = Asker("test", None)


def writes(facts: list[dict[str, Any]], users: list[str], clients: list[str]
           ) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Writes that each change something a memoised answer may rest on."""
    found: list[tuple[str, str, dict[str, Any] | None]] = []
    for fact in facts:
        kind, data = fact["kind"], fact["data"]
        if kind == "grant":
            found.append(("grant", fact["id"], {**data, "status": "revoked"}))
            found.append(("grant", fact["id"], {**data, "status": "active"}))
        elif kind == "relationship":
            # ended yesterday (or, if it starts later, ending after it starts)
            ends = at(-1) if data["starts_at"] < at(-1) else at(60)
            found.append(("relationship", fact["id"], {**data, "ends_at": ends}))
            found.append(("relationship", fact["id"], {**data, "assigned_users": users[:1]}))
            found.append(("relationship", fact["id"], None))
        elif kind == "client":
            found.append(("client", fact["id"], {
                **data, "protection_order": not data["protection_order"]}))
        elif kind == "user":
            found.append(("user", fact["id"], {**data, "status": "suspended"}))
            found.append(("user", fact["id"], {**data, "tasks": []}))
    return found


def allowed_requests(decider: Any, users: list[str], clients: list[str], purpose: str
                     ) -> list[DecisionRequest]:
    """The requests of the world that the plain query allows now (owner: the user's own
    municipality for writes, none for reads)."""
    found = []
    for user in users:
        for client in clients:
            for owner in ("", "749", "297"):
                table = decide_all(policy(), decider.facts, user, client, purpose, NOW, owner)
                found += [DecisionRequest(user, client, category, action, purpose, owner)
                          for category in CATEGORIES for action in ACTIONS
                          if table.pick(category, action).decision]
    return found


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(), data=st.data())
def test_the_entry_answers_as_the_plain_query_through_writes_and_time(
        world: tuple[list[dict[str, Any]], list[str], list[str], str],
        data: st.DataObject) -> None:
    facts, users, clients, purpose = world
    decider = build(facts)
    index = decider.facts
    possible = writes(facts, users, clients)
    # A few requests asked again and again, so that answers are memoised and then asked
    # after the writes and moves of time that must undo them.
    # Allowed requests above all: a write can only take an allow away, and a memo that
    # outlived its facts shows as an allow the plain query no longer gives.
    any_request = st.builds(
        DecisionRequest,
        st.sampled_from([*users, "unknown-user"]),
        st.sampled_from([*clients, "unknown-client"]),
        st.sampled_from(CATEGORIES), st.sampled_from(ACTIONS),
        st.sampled_from([purpose, *SERVICES, ""]),
        st.sampled_from(["", "749", "297", "authority"]))
    allowed = allowed_requests(decider, users, clients, purpose)
    requests = data.draw(st.lists(
        st.sampled_from(allowed) | any_request if allowed else any_request,
        min_size=1, max_size=3), label="requests")
    version = index.version
    for _ in range(data.draw(st.integers(4, 16), label="steps")):
        if possible and data.draw(st.booleans(), label="write?"):
            kind, fact_id, body = data.draw(st.sampled_from(possible), label="write")
            if body is not None or index.fact_version(kind, fact_id):
                version += 1
                index.apply([ChangeRecord(version, kind, fact_id, body)])
            continue
        request = data.draw(st.sampled_from(requests), label="request")
        now = NOW + timedelta(days=data.draw(st.sampled_from([0, 0, 0, 2, 40, -200, 400]),
                                             label="day"))
        checked = decider.check([request], now, ASKER)
        plain = decide(policy(), index, request, now)
        made = checked.decisions[0]
        assert (made.decision, made.reason, made.grant, made.facts_version) == (
            plain.decision, plain.reason, plain.grant, plain.facts_version), request
        record = checked.records[0]
        assert (record.decision, record.reason) == (plain.decision, plain.reason)

"""Small random worlds of facts for the engine (hypothesis strategies), decided at a fixed
`NOW` by a Decider on the shipped policy: shared by tests/test_search.py and
tests/test_shapes.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from hypothesis import strategies as st

from pdp.engine.decider import Decider
from pdp.engine.factindex import FactIndex
from pdp.engine.facts_service import parse_batch
from pdp.engine.policy_engine import CompiledPolicy, load_policy
from pdp.model.vocab import CATEGORIES, SERVICES
from pdp.service.settings import DEFAULT_POLICY_DIR
from pdp.store.protocols import ChangeRecord

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
# 749 and 297 are in the area; 167 is not (a client of it is outside the area).
CODES = ["749", "297", "167"]


@cache
def policy() -> CompiledPolicy:
    return load_policy(DEFAULT_POLICY_DIR)


def at(days: int) -> str:
    return (NOW + timedelta(days=days)).isoformat()


def often(usual: Any, *others: Any) -> st.SearchStrategy[Any]:
    """`usual` six times as often as all the others together: most worlds allow
    something, and every rule still gets its denials."""
    return st.sampled_from([usual] * (6 * len(others)) + list(others))


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[str], list[str], str]:
    """Facts of a small random world, its user and client ids, and the purpose asked."""
    facts: list[dict[str, Any]] = [
        {"kind": "area", "id": "a", "data": {
            "name": "A", "responsible_municipality": "749",
            "municipalities": [{"code": "749", "name": "S"}, {"code": "297", "name": "K"}]}},
        {"kind": "area", "id": "b", "data": {
            "name": "B", "responsible_municipality": "167",
            "municipalities": [{"code": "167", "name": "J"}]}},
    ]
    for code in CODES:
        status = draw(often("in_force", "notice_given", "terminated", "rescinded", None))
        if status is not None:
            data: dict[str, Any] = {"area": "b" if code == "167" else "a", "status": status,
                                    "signed_at": at(-400),
                                    "assignment_required": draw(often(False, True))}
            if status == "notice_given":
                data["ends_at"] = at(draw(st.sampled_from([-1, 30])))
            facts.append({"kind": "agreement", "id": code, "data": data})
    # Most facts share one municipality and the purpose asked, so that most worlds allow
    # something; every value still comes up.
    purpose = draw(often("coaching", "guidance", "training", ""))
    home = draw(st.sampled_from(["749", "297"]))
    places = [code for code in CODES if code != home]
    n_users = draw(st.integers(1, 3))
    n_clients = draw(st.integers(1, 4))
    users = [f"u{i}" for i in range(n_users)]
    clients = [f"c{i}" for i in range(n_clients)]
    for client in clients:
        facts.append({"kind": "client", "id": client, "data": {
            "home_municipality": draw(often(home, *places)),
            "protection_order": draw(often(False, True)),
            "area_client": draw(often(True, False))}})
    for user in users:
        data = {"municipality": draw(often(home, *places)), "display_name": user,
                "tasks": draw(often(list(SERVICES), ["coaching"], [])),
                "status": draw(often("active", "suspended", "left"))}
        own = draw(often(None, *clients))
        if own is not None:
            data["client_id"] = own
        facts.append({"kind": "user", "id": user, "data": data})
        for g in range(draw(often(1, 0, 2))):
            start = draw(often(-300, -10, 5))
            facts.append({"kind": "grant", "id": f"{user}-g{g}", "data": {
                "user": user,
                "purposes": draw(often([purpose or "coaching"], list(SERVICES),
                                       *([x] for x in SERVICES if x != purpose))),
                "scopes": draw(st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=8,
                                        unique=True)),
                "actions": draw(often(["read", "write"], ["read"], ["write"])),
                "valid_from": at(start),
                "valid_until": at(start + draw(often(700, 3, 200))),
                "status": draw(often("active", "applied", "approved", "suspended", "revoked",
                                     "expired")),
                "legal_basis": "test"}})
    for r in range(draw(often(3, 0, 1, 7))):
        start = draw(often(-100, -1, 3))
        data = {"client": draw(st.sampled_from(clients)),
                "municipality": draw(often(home, *places)),
                "service": draw(often(purpose or "coaching",
                                      *(x for x in SERVICES if x != purpose))),
                "starts_at": at(start),
                "assigned_users": draw(often([], *([u] for u in users), ["nobody"]))}
        ends = draw(often(None, -2, 50))
        if ends is not None and ends > start:
            data["ends_at"] = at(ends)
        facts.append({"kind": "relationship", "id": f"r{r}", "data": data})
    return facts, users, clients, purpose


def build(facts: list[dict[str, Any]]) -> Decider:
    index = FactIndex()
    index.apply([ChangeRecord(n, c.kind, c.id, c.data)
                 for n, c in enumerate(parse_batch(facts), start=1)])
    return Decider(policy(), index, clock=lambda: NOW)

"""The benchmark workload: one seeded world and a request mix (issue 8).

One area of eleven municipalities (and one outside it), `clients` clients, `users`
users, about three relationships per client, a grant per user (most active, some not),
and a mix of requests of which about 70 % are allowed and 30 % denied, with every reason
of API.md among the denials, across categories and purposes. The same seed gives the
same world and the same mix.

    facts = world_facts(Sizes(), seed=1)          # the facts, as for POST /v1/facts:batch
    mix = request_mix(facts, n=20_000, seed=1)    # (user, client, category, action, purpose)

Labelling the mix asks the policy (through the decider); the requests are chosen so that
the allows and each reason's denials come out in the proportions asked for.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pdp.engine.core import DecisionRequest
from pdp.engine.decider import Decider
from pdp.engine.factindex import FactIndex
from pdp.engine.facts_service import parse_batch
from pdp.engine.policy_engine import CompiledPolicy
from pdp.model.vocab import ACTIONS, CATEGORIES, SERVICES
from pdp.store.protocols import ChangeRecord

AREA = [("297", "Kuopio"), ("749", "Siilinjärvi"), ("844", "Tuusniemi"), ("686", "Rautavaara"),
        ("204", "Kaavi"), ("420", "Leppävirta"), ("915", "Varkaus"), ("239", "Keitele"),
        ("921", "Vesanto"), ("595", "Pielavesi"), ("762", "Sonkajärvi")]
OUTSIDE = "167"  # Joensuu: its clients are outside the area
RESCINDED = "686"  # the one municipality whose agreement is rescinded
# What each service's work needs (policies/data.polar task_profile), for making grants.
PROFILE = {
    "coaching": ["name_contact", "client_relationship", "education_work_history",
                 "service_needs_plans", "offers_referrals", "services_assessments",
                 "health_work_capacity"],
    "guidance": ["name_contact", "client_relationship", "education_work_history",
                 "service_needs_plans", "services_assessments"],
    "training": ["name_contact", "education_work_history", "services_assessments"],
}


@dataclass(frozen=True)
class Sizes:
    clients: int = 100_000
    users: int = 2_000
    relationships_per_client: int = 3


@dataclass(frozen=True, slots=True)
class Request:
    user: str
    client: str
    category: str
    action: str
    purpose: str
    owner: str = ""  # the record's owner the request names (the user's municipality)

    def decision_request(self) -> DecisionRequest:
        return DecisionRequest(self.user, self.client, self.category, self.action,
                               self.purpose, self.owner)

    def authzen(self) -> dict[str, Any]:
        properties = {"category": self.category}
        if self.owner:
            properties["owner"] = self.owner
        return {"subject": {"type": "user", "id": self.user}, "action": {"name": self.action},
                "resource": {"type": "client_record", "id": self.client,
                             "properties": properties},
                "context": {"purpose": self.purpose}}


NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def at(days: float) -> str:
    return (NOW + timedelta(days=days)).isoformat()


def world_facts(sizes: Sizes, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    codes = [code for code, _ in AREA]
    facts: list[dict[str, Any]] = [
        {"kind": "area", "id": "kuopio", "data": {
            "name": "Kuopion työllisyysalue", "responsible_municipality": "297",
            "municipalities": [{"code": c, "name": n} for c, n in AREA]}},
        {"kind": "area", "id": "joensuu", "data": {
            "name": "Joensuu", "responsible_municipality": OUTSIDE,
            "municipalities": [{"code": OUTSIDE, "name": "Joensuu"}]}},
    ]
    for code in codes:
        status = "rescinded" if code == RESCINDED else "in_force"
        facts.append({"kind": "agreement", "id": code, "data": {
            "area": "kuopio", "status": status, "signed_at": at(-500)}})
    # Clients: Kuopio-heavy, 2 % outside the area, 1 % with a protection order.
    weights = [30, 10, 3, 2, 2, 8, 12, 2, 2, 4, 3]
    clients: list[tuple[str, str]] = []
    for n in range(sizes.clients):
        home = OUTSIDE if rng.random() < 0.02 else rng.choices(codes, weights)[0]
        client = f"c-{home}-{n:06d}"
        clients.append((client, home))
        facts.append({"kind": "client", "id": client, "data": {
            "home_municipality": home, "protection_order": rng.random() < 0.01,
            "area_client": True}})
    # Users: each municipality's staff; a few suspended or gone; some are clients too.
    users_of: dict[str, list[str]] = {code: [] for code in codes}
    for n in range(sizes.users):
        code = rng.choices(codes, weights)[0]
        user = f"u-{code}-{n:04d}"
        users_of[code].append(user)
        tasks = rng.sample(list(SERVICES), rng.choice([1, 1, 2, 3]))
        data: dict[str, Any] = {
            "municipality": code, "display_name": f"Käyttäjä {n}", "tasks": tasks,
            "status": rng.choices(["active", "suspended", "left"], [96, 2, 2])[0]}
        if rng.random() < 0.01:
            data["client_id"] = rng.choice(clients)[0]
        facts.append({"kind": "user", "id": user, "data": data})
        if rng.random() < 0.04:
            continue  # no grant at all
        scopes = sorted({c for task in tasks for c in PROFILE[task]})
        status = rng.choices(["active", "suspended", "revoked", "expired"], [90, 3, 3, 4])[0]
        start = rng.uniform(-300, -10)
        end = start + (rng.uniform(5, 200) if rng.random() < 0.03 else rng.uniform(320, 365))
        facts.append({"kind": "grant", "id": f"g-{user}", "data": {
            "user": user, "purposes": tasks, "scopes": scopes,
            "actions": rng.choice([["read"], ["read", "write"]]),
            "valid_from": at(start), "valid_until": at(end), "status": status,
            "legal_basis": "380/2023 125 § 1 mom."}})
    # Relationships: mostly with the client's home municipality, named for one or two of
    # its users (or none); a few ended or not yet started.
    n = 0
    for client, home in clients:
        for _ in range(sizes.relationships_per_client):
            code = home if home in users_of and rng.random() < 0.9 else rng.choice(codes)
            staff = users_of[code]
            assigned = rng.sample(staff, min(len(staff), rng.choice([0, 1, 1, 1, 2])))
            start = rng.uniform(-400, -1) if rng.random() < 0.95 else rng.uniform(1, 30)
            data = {"client": client, "municipality": code,
                    "service": rng.choice(SERVICES), "starts_at": at(start),
                    "assigned_users": assigned}
            if rng.random() < 0.1:
                data["ends_at"] = at(rng.uniform(-30, -1) if start < -30 else 60)
            facts.append({"kind": "relationship", "id": f"r-{n:07d}", "data": data})
            n += 1
    return facts


def fact_index(facts: Iterable[dict[str, Any]]) -> FactIndex:
    index = FactIndex()
    index.apply([ChangeRecord(1, c.kind, c.id, c.data) for c in parse_batch(list(facts))])
    return index


def request_mix(index: FactIndex, policy: CompiledPolicy, n: int, seed: int = 1,
                allow_share: float = 0.7, per_triple: int = 4) -> list[Request]:
    """`n` distinct requests, about `allow_share` of them allowed; the denials spread
    over every reason the world gives, round-robin (so rare ones are represented).

    Labelling asks the policy once per user x client x purpose drawn (it answers every
    category and action at once) and takes up to `per_triple` requests from each."""
    rng = random.Random(seed)
    decider = Decider(policy, index, clock=lambda: NOW, cache_size=10_000_000)
    users = sorted(index.users)
    relationships = sorted(index.relationships.items())
    clients = sorted(index.clients)
    want_allows = round(n * allow_share)
    want_denials = n - want_allows
    allows: list[Request] = []
    denials: dict[str, list[Request]] = {}
    for _ in range(n * 4):
        if len(allows) >= want_allows and sum(map(len, denials.values())) >= want_denials * 2:
            break
        if rng.random() < 0.7:  # a likely allow: a related client of a named user
            _, rel = rng.choice(relationships)
            user = rng.choice(rel.assigned_users) if rel.assigned_users else rng.choice(users)
            found = index.users.get(user)
            purpose = rng.choice(found.tasks if found and found.tasks else list(SERVICES))
            client = rel.client
        else:  # anything: denials of every kind
            user = rng.choice(users) if rng.random() < 0.97 else f"u-nobody-{rng.random()}"
            client = rng.choice(clients) if rng.random() < 0.97 else f"c-x-{rng.random()}"
            purpose = rng.choice([*SERVICES, ""])
        # Every request names the user's municipality as the record's owner (a PEP writing
        # its own records): the peers do not read owners.
        asker = index.users.get(user)
        owner = asker.municipality if asker else ""
        table = decider.table(user, client, purpose, NOW, owner)
        pairs = [(c, a) for c in CATEGORIES for a in ACTIONS]
        for category, action in rng.sample(pairs, per_triple):
            made = table.pick(category, action)
            request = Request(user, client, category, action, purpose, owner)
            if made.decision:
                if len(allows) < want_allows:
                    allows.append(request)
            else:
                denials.setdefault(made.reason, []).append(request)
    chosen: list[Request] = []
    pools = {reason: list(dict.fromkeys(found)) for reason, found in sorted(denials.items())}
    while len(chosen) < want_denials and any(pools.values()):
        for pool in pools.values():
            if pool and len(chosen) < want_denials:
                chosen.append(pool.pop())
    mix = list(dict.fromkeys(allows + chosen))
    rng.shuffle(mix)
    return mix


def describe(index: FactIndex, policy: CompiledPolicy, mix: list[Request]) -> Counter[str]:
    """The reasons of the mix, as the policy gives them."""
    decider = Decider(policy, index, clock=lambda: NOW, cache_size=10_000_000)
    return Counter(decider.decide(r.decision_request(), NOW).reason for r in mix)

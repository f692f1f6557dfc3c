"""Decisions ready before they are asked (issue 17, pdp.engine.warming): the service works
out the policy's answers for the likely requests — each user's caseload and the open
relationships of their municipality, one per look — off the request path, at start, after
writes and before a new policy version goes live.

Warming is a guess, never a decision: what it prepares is used only where a request's own
record has that shape, it counts nothing as a request's, and a write's effect is never
delayed by it (a revocation denies on the very next request)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from pdp.engine.core import DecisionRequest, decide
from pdp.engine.decider import Asker, Decider
from pdp.engine.factindex import FactIndex
from pdp.engine.facts_service import parse_batch
from pdp.engine.metrics import Metrics
from pdp.engine.policy_engine import (
    CompiledPolicy,
    compile_sources,
    load_policy,
    read_policy,
)
from pdp.engine.warming import Likely, Warmer
from pdp.model.clock import to_micros
from pdp.service.demo import demo_facts, demo_grant_facts
from pdp.store.protocols import ChangeRecord
from tests.support.asgi import in_process
from tests.support.world import World
from tests.support.world import decide as decide_http

POLICIES = Path(__file__).parent.parent / "policies"
ASKER = Asker("test", None)
NOW = datetime.now(UTC)


def world() -> FactIndex:
    index = FactIndex()
    index.apply([ChangeRecord(1, c.kind, c.id, c.data)
                 for c in parse_batch(demo_facts(NOW) + demo_grant_facts(NOW))])
    return index


def likely_triples(index: FactIndex) -> list[tuple[str, str, str, str]]:
    """Every request an active user of the world could be expected to make: each of
    their purposes for each client of their caseload and of their municipality's open
    relationships, naming their municipality as the owner and naming none. (A user who
    is not active is denied by rule 1: not warmed, a query of a fraction of a
    millisecond when asked.)"""
    found: list[tuple[str, str, str, str]] = []
    with index.reading() as view:
        for user_id, user in sorted(view.users.items()):
            if user.status != "active":
                continue
            for purpose in user.tasks:
                clients = {*view.open_relationships.get((user.municipality, purpose), {}),
                           *view.assigned_relationships.get(user_id, {})}
                for client in sorted(clients):
                    found += [(user_id, client, purpose, user.municipality),
                              (user_id, client, purpose, "")]
    return found


def requests_of(triples: list[tuple[str, str, str, str]]) -> list[DecisionRequest]:
    return [DecisionRequest(user, client, category, action, purpose, owner)
            for user, client, purpose, owner in triples
            for category in ("name_contact", "service_needs_plans", "benefits")
            for action in ("read", "write")]


def test_after_a_pass_every_likely_request_is_decided_without_a_policy_query() -> None:
    index = world()
    policy = load_policy(POLICIES)
    decider = Decider(policy, index, clock=lambda: NOW)
    assert Warmer(decider, index, share=1.0, clock=lambda: NOW).full("start")
    assert decider.warm_queries > 0 and decider.queries == 0
    triples = likely_triples(index)
    assert len(triples) > 20
    requests = requests_of(triples)
    checked = decider.check(requests, NOW, ASKER)
    assert decider.queries == 0  # every one answered from the warmed answers ...
    assert decider.misses == len(triples)  # ... though none was memoised by key
    # ... and each is what the plain query says.
    for request, made in zip(requests, checked.decisions, strict=True):
        assert made == decide(policy, index, request, NOW), request
    assert any(made.decision for made in checked.decisions)


def test_one_request_per_look_not_one_per_client() -> None:
    index = world()
    with index.reading() as view:
        keys = Likely().requests(view, to_micros(NOW), sorted(view.users))
        caseloads = Likely(open_relationships=False).requests(view, to_micros(NOW),
                                                              sorted(view.users))
        inactive = [u for u, user in view.users.items() if user.status != "active"]
    assert len(keys) < len(likely_triples(index))
    assert {k[:3] for k in caseloads} <= {k[:3] for k in keys}
    assert len(caseloads) < len(keys)
    assert len(set(keys)) == len(keys)
    assert inactive and not {key[0] for key in keys} & set(inactive)


def test_warming_counts_nothing_as_a_request() -> None:
    index = world()
    metrics = Metrics(CollectorRegistry())
    decider = Decider(load_policy(POLICIES), index, clock=lambda: NOW, metrics=metrics)
    Warmer(decider, index, share=1.0, metrics=metrics, clock=lambda: NOW).full("start")
    registry = metrics.registry

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert value("pdp_warm_passes_total", why="start", result="finished") == 1
    assert value("pdp_warm_policy_queries_total") == decider.warm_queries > 0
    assert value("pdp_warm_requests_total") >= decider.warm_queries
    assert value("pdp_policy_queries_total") == 0
    for cache in ("decision", "shape"):
        for result in ("hit", "miss"):
            assert value("pdp_cache_requests_total", cache=cache, result=result) == 0
    assert value("pdp_decision_duration_seconds_count") == 0
    assert decider.hits == decider.misses == decider.shape_hits == 0


def warmed() -> tuple[FactIndex, CompiledPolicy, Decider[CompiledPolicy], Warmer]:
    """The demo world, and a decider over it after a whole pass."""
    index = world()
    policy = load_policy(POLICIES)
    decider = Decider(policy, index, clock=lambda: NOW)
    warmer = Warmer(decider, index, share=1.0, clock=lambda: NOW)
    assert warmer.full("start")
    return index, policy, decider, warmer


def test_a_revocation_denies_on_the_very_next_request_after_warming() -> None:
    index, policy, decider, warmer = warmed()
    allowed = next(r for r in requests_of(likely_triples(index))
                   if decide(policy, index, r, NOW).decision)
    made = decider.check([allowed], NOW, ASKER).decisions[0]
    assert made.decision
    grant = made.grant
    assert grant is not None
    data = index.grants[grant]
    revoked = {**data.model_dump(mode="json"), "status": "revoked"}
    index.apply([ChangeRecord(index.version + 1, c.kind, c.id, c.data)
                 for c in parse_batch([{"kind": "grant", "id": grant, "data": revoked}])])
    after = decider.check([allowed], NOW, ASKER).decisions[0]
    assert not after.decision
    assert after == decide(policy, index, allowed, NOW)
    # ... and the next pass warms the user's new look, for their other clients too.
    queries = decider.queries
    warmer.follow()
    requests = requests_of([t for t in likely_triples(index) if t[0] == allowed.user])
    assert len({r.client for r in requests}) > 1
    checked = decider.check(requests, NOW, ASKER)
    assert decider.queries == queries
    for request, made in zip(requests, checked.decisions, strict=True):
        assert made == decide(policy, index, request, NOW)


def test_after_a_write_the_users_it_touched_are_warmed_again() -> None:
    index, policy, decider, warmer = warmed()
    user = next(u for u, found in sorted(index.users.items())
                if found.status == "active" and len(found.tasks) > 1)
    data = index.users[user].model_dump(mode="json")
    # A new look: one task fewer (rule 7 reads the tasks: records of new shapes).
    changed = {**data, "tasks": data["tasks"][:1]}
    index.apply([ChangeRecord(index.version + 1, c.kind, c.id, c.data)
                 for c in parse_batch([{"kind": "user", "id": user, "data": changed}])])
    asked = decider.warm_queries
    warmer.follow()
    assert decider.warm_queries > asked  # the new look was asked about
    triples = [t for t in likely_triples(index) if t[0] == user]
    assert triples
    requests = requests_of(triples)
    checked = decider.check(requests, NOW, ASKER)
    assert decider.queries == 0
    for request, made in zip(requests, checked.decisions, strict=True):
        assert made == decide(policy, index, request, NOW)
    # Nothing changed since: following again asks nothing.
    asked = decider.warm_queries
    warmer.follow()
    assert decider.warm_queries == asked


def test_a_new_version_is_warmed_beside_the_live_one_before_it_goes_live() -> None:
    index = world()
    live = load_policy(POLICIES)
    files = read_policy(POLICIES)
    files["data.polar"] = files["data.polar"].replace(
        'task_profile("training", "services_assessments");',
        'task_profile("training", "services_assessments");\n'
        'task_profile("training", "offers_referrals");', 1)
    new = compile_sources(files)
    assert new.version != live.version
    decider = Decider(live, index, clock=lambda: NOW)
    warmer = Warmer(decider, index, share=1.0, clock=lambda: NOW)
    warmer.full("start")
    assert warmer.full("policy", policy=new)
    requests = requests_of(likely_triples(index))
    decider.check(requests, NOW, ASKER)
    assert decider.queries == 0  # the live version's answers were kept
    decider.swap_policy(new)
    decider.clear(shapes=False)  # the memo by key: a new version is asked by shape
    checked = decider.check(requests, NOW, ASKER)
    assert decider.queries == 0  # the new version's were ready
    for request, made in zip(requests, checked.decisions, strict=True):
        assert made == decide(new, index, request, NOW)


def test_a_pass_past_its_deadline_stops_and_says_so() -> None:
    index = world()
    metrics = Metrics(CollectorRegistry())
    decider = Decider(load_policy(POLICIES), index, clock=lambda: NOW, metrics=metrics)
    warmer = Warmer(decider, index, share=1.0, metrics=metrics, clock=lambda: NOW)
    assert not warmer.full("policy", deadline=0.0)
    assert decider.warm_queries == 0
    assert metrics.registry.get_sample_value(
        "pdp_warm_passes_total", {"why": "policy", "result": "cut"}) == 1
    assert warmer.warmed_version is None


def test_a_served_process_warms_what_writes_bring_before_it_is_asked(tmp_path: Path) -> None:
    """The service's loop (pdp.service.background): a world written after start is
    warmed from the writes, and its first decision then asks the policy nothing."""
    with in_process(tmp_path) as app:
        with app.client("t-admin") as admin:
            built = World(admin).build()
        runtime = app.runtime
        runtime.facts.catch_up()
        warmer = runtime.warmer
        assert warmer is not None
        target = runtime.facts.index.version
        deadline = time.monotonic() + 60
        while warmer.facts_seen < target and time.monotonic() < deadline:
            time.sleep(0.05)
        assert warmer.facts_seen >= target, "the writes were not warmed within a minute"
        queries = runtime.decider.queries
        with app.client("t-pep") as pep:
            for action in ("read", "write"):
                answer = decide_http(pep, built.request(action=action))
                assert answer["decision"] is True, answer
        assert runtime.decider.queries == queries
        assert runtime.decider.misses >= 2  # decided for the first time, not memoised


def test_warming_can_be_turned_off(tmp_path: Path) -> None:
    with in_process(tmp_path, env={"PDP_WARM": "false"}) as app:
        assert app.runtime.warmer is None
        with app.client("t-admin") as admin:
            built = World(admin).build()
        app.runtime.facts.catch_up()
        with app.client("t-pep") as pep:
            assert decide_http(pep, built.request())["decision"] is True
        assert app.runtime.decider.queries >= 1


def test_a_stopped_warmer_ends_its_pass_and_starts_no_other() -> None:
    index = world()
    decider = Decider(load_policy(POLICIES), index, clock=lambda: NOW)
    warmer = Warmer(decider, index, share=1.0, clock=lambda: NOW, batch=1)
    warmer.stop()
    assert not warmer.full("start")
    warmer.follow()
    assert decider.warm_queries == 0 and warmer.warmed_version is None

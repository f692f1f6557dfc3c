"""The decision cache: reused only while policy, facts and time allow (unit level)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pdp.engine.core import POLICY_ERROR, DecisionRequest, check_policy, decide
from pdp.engine.decider import Decider
from pdp.engine.policy_engine import PolicyError, load_policy
from pdp.service.settings import DEFAULT_POLICY_DIR
from pdp.store.protocols import ChangeRecord
from tests.support.small_world import GRANT_END, REL_START, T0, world

REQUEST = DecisionRequest("u1", "c1", "name_contact", "read", "coaching")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def policy() -> Any:
    loaded = load_policy(DEFAULT_POLICY_DIR)
    check_policy(loaded)
    return loaded


def test_second_decision_is_a_cache_hit(policy: Any) -> None:
    decider = Decider(policy, world(), clock=Clock(T0))
    assert decider.decide(REQUEST).decision is True
    assert decider.decide(REQUEST).decision is True
    # another category of the same user x client x purpose: the same policy query
    assert decider.decide(DecisionRequest("u1", "c1", "benefits", "read", "coaching")).reason \
        == "category_not_necessary"
    assert (decider.misses, decider.hits) == (1, 2)


def test_prepare_memoised_builds_no_record_and_counts_only_what_it_serves(
        policy: Any) -> None:
    """The service prepares a request on its event loop only when every item is
    memoised; a miss anywhere gives None, having counted nothing and built no record
    (the request is then read and decided in a worker thread)."""
    decider = Decider(policy, world(), clock=Clock(T0))
    other = DecisionRequest("u1", "c1", "name_contact", "read", "guidance")
    assert decider.prepare_memoised([REQUEST], T0) is None
    assert (decider.hits, decider.misses) == (0, 0)
    decider.decide(REQUEST)
    assert decider.prepare_memoised([REQUEST, other], T0) is None  # `other` misses
    assert decider.hits == 0
    prepared = decider.prepare_memoised([REQUEST, REQUEST], T0)
    assert prepared is not None and decider.hits == 2
    assert all(read.record is None and read.table is not None for read in prepared.items)


def test_memoised_answers_only_what_needs_no_policy_query(policy: Any) -> None:
    clock = Clock(GRANT_END - timedelta(seconds=1))
    facts = world()
    decider = Decider(policy, facts, clock=clock)
    assert decider.memoised(REQUEST) is None
    decider.decide(REQUEST)
    hit = decider.memoised(REQUEST)
    assert hit is not None and hit.decision is True and hit.grant == "g1"
    # another category and action of the same user x client x purpose: the same table
    other = decider.memoised(DecisionRequest("u1", "c1", "benefits", "write", "coaching"))
    assert other is not None and other.reason == "category_not_necessary"
    assert decider.memoised(DecisionRequest("u1", "c1", "name_contact", "read",
                                            "guidance")) is None  # another purpose
    clock.now = GRANT_END  # past the span the answer holds for
    assert decider.memoised(REQUEST) is None
    clock.now = GRANT_END - timedelta(seconds=1)
    facts.apply([ChangeRecord(20, "client", "c1", {"home_municipality": "749",
                                                   "protection_order": True,
                                                   "area_client": True})])
    assert decider.memoised(REQUEST) is None  # its facts changed
    misses = decider.misses
    assert decider.decide(REQUEST).reason == "protection_order"
    assert decider.misses == misses + 1
    assert decider.memoised(REQUEST) == decider.decide(REQUEST)


def test_cached_allow_ends_at_the_grant_end(policy: Any) -> None:
    clock = Clock(GRANT_END - timedelta(microseconds=1))
    decider = Decider(policy, world(), clock=clock)
    assert decider.decide(REQUEST).decision is True
    clock.now = GRANT_END
    assert decider.decide(REQUEST).reason == "no_active_grant"
    assert decider.misses == 2


def test_cached_deny_ends_when_a_relationship_starts(policy: Any) -> None:
    facts = world()
    facts.apply([ChangeRecord(10, "relationship", "r1", {
        "client": "c1", "municipality": "749", "service": "coaching",
        "starts_at": REL_START.isoformat()})])
    clock = Clock(T0)
    decider = Decider(policy, facts, clock=clock)
    assert decider.decide(REQUEST).reason == "no_active_relationship"
    clock.now = REL_START - timedelta(microseconds=1)
    assert decider.decide(REQUEST).reason == "no_active_relationship"
    assert decider.hits == 1
    clock.now = REL_START
    assert decider.decide(REQUEST).decision is True


def test_each_fact_group_invalidates(policy: Any) -> None:
    facts = world()
    decider = Decider(policy, facts, clock=Clock(T0))
    changes: list[tuple[str, str, dict[str, Any] | None, str]] = [
        ("grant", "g1", None, "no_active_grant"),
        ("grant", "g1", {"user": "u1", "purposes": ["coaching"], "scopes": ["name_contact"],
                         "valid_from": "2026-01-01T00:00:00+00:00",
                         "valid_until": GRANT_END.isoformat(), "status": "active",
                         "legal_basis": "x"}, "allowed"),
        ("client", "c1", {"home_municipality": "749", "protection_order": True,
                          "area_client": True},
         "protection_order"),
        ("client", "c1", {"home_municipality": "749", "area_client": True}, "allowed"),
        ("client", "c1", {"home_municipality": "749", "area_client": False},
         "client_outside_area"),
        ("client", "c1", {"home_municipality": "749", "area_client": True}, "allowed"),
        ("grant", "g1", {"user": "u1", "purposes": ["training"], "scopes": ["name_contact"],
                         "valid_from": "2026-01-01T00:00:00+00:00",
                         "valid_until": GRANT_END.isoformat(), "status": "active",
                         "legal_basis": "x"}, "purpose_invalid"),
        ("grant", "g1", {"user": "u1", "purposes": ["coaching"], "scopes": ["name_contact"],
                         "valid_from": "2026-01-01T00:00:00+00:00",
                         "valid_until": GRANT_END.isoformat(), "status": "active",
                         "legal_basis": "x"}, "allowed"),
        ("agreement", "749", {"area": "kuopio", "status": "in_force",
                              "signed_at": "2025-01-01T00:00:00+00:00",
                              "assignment_required": True}, "no_active_relationship"),
        ("agreement", "749", {"area": "kuopio", "status": "in_force",
                              "signed_at": "2025-01-01T00:00:00+00:00"}, "allowed"),
        ("agreement", "749", {"area": "kuopio", "status": "terminated",
                              "signed_at": "2025-01-01T00:00:00+00:00"},
         "agreement_not_in_force"),
        ("agreement", "749", {"area": "kuopio", "status": "in_force",
                              "signed_at": "2025-01-01T00:00:00+00:00"}, "allowed"),
        ("area", "kuopio", {"name": "K", "responsible_municipality": "297",
                            "municipalities": [{"code": "297", "name": "Kuopio"}]},
         "client_outside_area"),
        ("relationship", "r1", None, "client_outside_area"),
        ("area", "kuopio", {"name": "K", "responsible_municipality": "297",
                            "municipalities": [{"code": "749", "name": "S"}]},
         "no_active_relationship"),
        ("user", "u1", None, "unknown_subject"),
    ]
    assert decider.decide(REQUEST).decision is True
    for version, (kind, fact_id, data, reason) in enumerate(changes, start=100):
        facts.apply([ChangeRecord(version, kind, fact_id, data)])
        assert decider.decide(REQUEST).reason == reason, (kind, data)
        assert decider.decide(REQUEST).reason == reason  # and the cached answer agrees


# carries: C-11
def test_a_write_answer_for_one_owner_is_never_served_for_another(policy: Any) -> None:
    """The decision table of a user x client x purpose holds every action: its writes
    depend on the record's owner the request names (rule 11), so the owner is part of
    what a memoised table is kept under, and an allow for one owner is never another's."""
    facts = world()
    facts.apply([ChangeRecord(30, "grant", "g1", {
        "user": "u1", "purposes": ["coaching"], "scopes": ["service_needs_plans"],
        "actions": ["read", "write"], "valid_from": "2026-01-01T00:00:00+00:00",
        "valid_until": GRANT_END.isoformat(), "status": "active", "legal_basis": "x"})])
    decider = Decider(policy, facts, clock=Clock(T0))

    def write(owner: str) -> DecisionRequest:
        return DecisionRequest("u1", "c1", "service_needs_plans", "write", "coaching", owner)

    own = decider.decide(write("749"))
    assert own.decision is True and own.grant == "g1"
    hit = decider.memoised(write("749"))
    assert hit is not None and hit.decision is True
    for other in ("authority", "", "297", "167"):
        assert decider.memoised(write(other)) is None, other  # not the own owner's table
        made = decider.decide(write(other))
        assert (made.decision, made.reason) == (False, "action_not_permitted"), other
        again = decider.memoised(write(other))
        assert again is not None and again.decision is False, other
    # and the other way round: a deny for a foreign owner first, then the own owner
    fresh = Decider(policy, facts, clock=Clock(T0))
    assert fresh.decide(write("authority")).reason == "action_not_permitted"
    assert fresh.memoised(write("749")) is None
    assert fresh.decide(write("749")).decision is True
    # reads ignore the owner
    read = DecisionRequest("u1", "c1", "service_needs_plans", "read", "coaching", "authority")
    assert fresh.decide(read).decision is True


def test_new_policy_version_is_not_served_from_cache(policy: Any, tmp_path: Path) -> None:
    decider = Decider(policy, world(), clock=Clock(T0))
    assert decider.decide(REQUEST).decision is True
    for source in DEFAULT_POLICY_DIR.glob("*.polar"):
        text = source.read_text()
        if source.name == "data.polar":
            text = text.replace('task_profile("coaching", "name_contact");', "")
        (tmp_path / source.name).write_text(text)
    stricter = load_policy(tmp_path)
    assert stricter.version != policy.version
    decider.swap_policy(stricter)
    decision = decider.decide(REQUEST)
    assert decision.reason == "category_not_necessary"
    assert decision.policy_version == stricter.version


def test_a_policy_that_fails_denies(tmp_path: Path) -> None:
    (tmp_path / "broken.polar").write_text(
        'decision(r, c, a, "allowed", "g") if category(c) and action(a) and r.user_id.status;\n'
        'category("name_contact"); action("read");\n')
    broken = load_policy(tmp_path)
    decision = decide(broken, world(), REQUEST, T0)
    assert decision.decision is False
    assert decision.reason == POLICY_ERROR
    with pytest.raises(PolicyError):
        check_policy(broken)


def test_a_policy_that_allows_without_grant_fails_closed(tmp_path: Path) -> None:
    (tmp_path / "lax.polar").write_text(
        'decision(_r, "name_contact", "read", "allowed", "");\n')
    decision = decide(load_policy(tmp_path), world(), REQUEST, T0)
    assert (decision.decision, decision.reason) == (False, POLICY_ERROR)


def test_never_needed_wins_over_an_edited_profile(tmp_path: Path) -> None:
    """A policy author who adds a never-needed category to a profile still gets a deny."""
    for source in DEFAULT_POLICY_DIR.glob("*.polar"):
        (tmp_path / source.name).write_text(source.read_text())
    with (tmp_path / "data.polar").open("a") as data:
        data.write('\ntask_profile("coaching", "benefits");\n')
    edited = load_policy(tmp_path)
    facts = world()
    facts.apply([ChangeRecord(50, "grant", "g1", {
        "user": "u1", "purposes": ["coaching"], "scopes": ["name_contact", "benefits"],
        "valid_from": "2026-01-01T00:00:00+00:00", "valid_until": GRANT_END.isoformat(),
        "status": "active", "legal_basis": "x"})])
    benefits = DecisionRequest("u1", "c1", "benefits", "read", "coaching")
    assert decide(edited, facts, benefits, T0).reason == "category_not_necessary"
    assert decide(edited, facts, REQUEST, T0).decision is True


def test_at_most_threads_decisions_work_at_once() -> None:
    """`check` in worker threads is CPU-bound Python: the decider lets at most `threads`
    of them (and of its warming batches) work at once, so that threads holding a
    database lock are not starved of the interpreter."""
    import threading
    import time as clock

    from pdp.engine.decider import Asker
    from pdp.engine.policy_engine import load_policy

    policy = load_policy(Path(__file__).parent.parent / "policies")
    inside, most = 0, 0
    guard = threading.Lock()

    class Slow:
        """The policy, counting how many ask it at once (each ask takes a while)."""

        version = policy.version
        plan = None

        def evaluate(self, record: Any) -> Any:
            nonlocal inside, most
            with guard:
                inside += 1
                most = max(most, inside)
            clock.sleep(0.05)
            with guard:
                inside -= 1
            return policy.evaluate(record)

    for threads in (1, 2):
        inside, most = 0, 0
        decider = Decider(Slow(), world(), threads=threads)
        # Four shapes (an unknown user, each purpose and none): four policy queries.
        requests = [DecisionRequest(f"u-{n}", "c-749-001", "name_contact", "read", purpose)
                    for n, purpose in enumerate(("coaching", "guidance", "training", ""))]
        workers = [threading.Thread(target=decider.check,
                                    args=([request], T0, Asker("t", None)))
                   for request in requests]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert most == threads

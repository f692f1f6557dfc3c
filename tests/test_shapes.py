"""The decider asks the policy once per record shape (ids renamed, timestamps
reduced to before, at or after now).
These tests check that a shape's answer is the record's answer, on random records, and
that records of one shape share a policy query."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdp.engine.core import DecisionRequest, evaluate_outcomes
from pdp.engine.policy_input import policy_record, record_shape
from pdp.model.clock import to_micros
from pdp.model.vocab import SERVICES
from tests.support.random_worlds import NOW, build, policy, worlds


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(), shift=st.sampled_from([0, -200, 1, 40, 400]), pick=st.data())
def test_a_shape_gets_the_answer_of_its_record(
        world: tuple[list[dict[str, Any]], list[str], list[str], str], shift: int,
        pick: st.DataObject) -> None:
    facts, users, clients, _ = world
    decider = build(facts)
    user = pick.draw(st.sampled_from([*users, "unknown-user"]))
    client = pick.draw(st.sampled_from([*clients, "unknown-client"]))
    purpose = pick.draw(st.sampled_from([*SERVICES, "", "other"]))
    owner = pick.draw(st.sampled_from(["749", "297", "167", "authority", ""]))
    now = to_micros(NOW + timedelta(days=shift))
    record = policy_record(decider.facts, user, client, purpose, now, owner)
    _, shape, back = record_shape(record)
    direct = evaluate_outcomes(policy(), record)
    shaped = evaluate_outcomes(policy(), shape)
    assert direct is not None and shaped is not None
    assert {k: (reason, back.get(grant, grant)) for k, (reason, grant) in shaped.items()
            } == direct


def test_records_of_one_shape_share_one_policy_query() -> None:
    """A caseload: clients alike but for their ids and start dates (all before now)
    need one policy query between them."""
    facts: list[dict[str, Any]] = [
        {"kind": "area", "id": "a", "data": {
            "name": "A", "responsible_municipality": "749",
            "municipalities": [{"code": "749", "name": "S"}]}},
        {"kind": "agreement", "id": "749", "data": {
            "area": "a", "status": "in_force", "signed_at": "2025-01-01T00:00:00+00:00"}},
        {"kind": "user", "id": "u", "data": {"municipality": "749", "display_name": "U",
                                             "tasks": ["coaching"], "status": "active"}},
        {"kind": "grant", "id": "g", "data": {
            "user": "u", "purposes": ["coaching"], "scopes": ["service_needs_plans"],
            "actions": ["read"],
            "valid_from": "2025-01-01T00:00:00+00:00",
            "valid_until": "2027-01-01T00:00:00+00:00", "status": "active",
            "legal_basis": "test"}},
    ]
    for n in range(20):
        # Some relationships began before the grant did, some after: the same shape.
        starts = f"2026-0{1 + n % 5}-01" if n % 2 else f"2024-0{1 + n % 5}-01"
        facts.append({"kind": "client", "id": f"c{n}", "data": {"home_municipality": "749",
                                                                "area_client": True}})
        facts.append({"kind": "relationship", "id": f"r{n}", "data": {
            "client": f"c{n}", "municipality": "749", "service": "coaching",
            "starts_at": f"{starts}T00:00:00+00:00", "assigned_users": ["u"]}})
    decider = build(facts)
    answers = [decider.decide(DecisionRequest("u", f"c{n}", "service_needs_plans", "read",
                                              "coaching"), NOW) for n in range(20)]
    assert all(a.decision and a.grant == "g" for a in answers)
    assert decider.misses == 20 and decider.shape_hits == 19
    # A client whose relationship starts after now is another shape, and denied.
    facts.append({"kind": "client", "id": "late", "data": {"home_municipality": "749",
                                                           "area_client": True}})
    facts.append({"kind": "relationship", "id": "r-late", "data": {
        "client": "late", "municipality": "749", "service": "coaching",
        "starts_at": "2026-12-01T00:00:00+00:00", "assigned_users": ["u"]}})
    decider = build(facts)
    late = decider.decide(DecisionRequest("u", "late", "service_needs_plans", "read",
                                          "coaching"), NOW)
    assert (late.decision, late.reason) == (False, "no_active_relationship")
    assert decider.shape_hits == 0

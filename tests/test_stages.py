"""A decision asked in two stages (issue 17): `failing` (rules 1-8) about a record of
only the fields those rules read, then `category_outcome` (rules 9-11) about a record of
only theirs, each answer kept by the shape of its smaller record.

One source of truth: the stages must give exactly what `decision` asked whole gives.
Checked here on random records for the shipped policy and for edited versions of it, in
the reload gate (pdp.engine.shape_check, in and out of the sandbox), and end to end
through writes and time by tests/test_same_as_plain_query.py."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdp.engine.core import DecisionRequest, decide, evaluate_outcomes, staged_outcomes
from pdp.engine.decider import Asker, Decider
from pdp.engine.factindex import FactIndex
from pdp.engine.facts_service import parse_batch
from pdp.engine.policy_engine import compile_sources, load_policy, read_policy
from pdp.engine.policy_manager import PolicyRejected, check_shapes
from pdp.engine.policy_sandbox import SandboxedPolicy
from pdp.engine.policy_vet import stage_plan
from pdp.engine.shape_check import STAGED, Maker, policy_constants, shape_mismatches
from pdp.service.demo import demo_facts, demo_grant_facts
from pdp.store.protocols import ChangeRecord

POLICIES = Path(__file__).parent.parent / "policies"
ASKER = Asker("test", None)


def edited(name: str, old: str, new: str) -> dict[str, str]:
    files = read_policy(POLICIES)
    assert old in files[name], old
    files[name] = files[name].replace(old, new, 1)
    return files


UNSTAGED = edited("rules.polar", """decision(r, category, action, reason, grant) if
    category_outcome(r, category, action, reason, grant);""",
                  """decision(r, category, action, reason, grant) if
    category(category) and
    category_decision(r, category, action, reason, grant);""")

# Versions of the policy as its authors might change it, each still asked in stages.
VERSIONS = {
    "shipped": read_policy(POLICIES),
    # a category rule that reads a field of the client the shipped ones do not
    "protected own record": edited(
        "rules.polar", "protected(r, category) if\n",
        "protected(r, _category) if r.user_client_id = r.client_id;\n"
        "protected(r, category) if\n"),
    # training may now read offers and referrals
    "edited profile": edited("data.polar", 'task_profile("training", "services_assessments");',
                             'task_profile("training", "services_assessments");\n'
                             'task_profile("training", "offers_referrals");'),
    # writes need an assignment as well: rules 9-11 read the relationships
    "writes need assignment": edited(
        "rules.polar", "own_municipality_record(r) if\n",
        "own_municipality_record(r) if\n    assigned(r) and\n"),
}
VERSIONS["writes need assignment"]["rules.polar"] += """
assigned(r) if
    relationship in r.relationships and
    relationship.municipality = r.user_municipality and
    relationship.service = r.purpose and
    r.user_id in relationship.assigned_users;
"""


def test_the_shipped_policy_is_asked_in_stages_each_with_only_what_it_reads() -> None:
    plan, why = stage_plan(read_policy(POLICIES))
    assert plan is not None, why
    # Rules 1-8 do not read what only rules 9-11 need, and the other way round.
    assert not {"record_owner", "client_protection_order", "scopes", "actions",
                "id"} & plan.gate_fields
    assert not {"client_id", "relationships", "user_id", "client_home",
                "area_municipalities", "user_tasks"} & plan.table_fields
    assert {"grants", "now", "purpose"} <= plan.gate_fields & plan.table_fields
    assert load_policy(POLICIES).plan == plan


@pytest.mark.parametrize(("files", "why"), [
    (UNSTAGED, "not written in the staged form"),
    (edited("rules.polar", "failing(r, \"unknown_resource\") if not r.client_known;",
            'failing(r, "unknown_resource") if not r.client_known;\n'
            'failing(r, "unknown_resource") if ["client_known", false] in r;'),
     "`in` over something other than a field"),
    (edited("rules.polar", "permitted_on(_r, \"read\", _category);",
            'permitted_on(_r, "read", _category);\npermitted_on(r, "write", _c) if '
            'r = {now: 0};'), "a dictionary written out"),
])
def test_a_policy_not_in_the_staged_form_or_that_could_see_its_record_whole_is_asked_whole(
        files: dict[str, str], why: str) -> None:
    plan, reason = stage_plan(files)
    assert plan is None and why in reason
    policy = compile_sources(files)
    assert policy.plan is None
    # ... and still decides, asked whole.
    index = _demo_index()
    decider = Decider(policy, index)
    made = decider.check([DecisionRequest("u-1001", "c-749-001", "service_needs_plans",
                                          "read", "coaching")], datetime.now(UTC), ASKER)
    assert made.decisions[0].decision and decider.queries == 1


@pytest.mark.parametrize("version", sorted(VERSIONS))
@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_the_stages_answer_as_decision_asked_whole(version: str, seed: int) -> None:
    files = VERSIONS[version]
    policy = _compiled(version)
    assert policy.plan is not None
    maker = Maker(random.Random(seed), *policy_constants(files))
    for _ in range(3):
        record = maker.record()
        assert staged_outcomes(policy, record) == evaluate_outcomes(policy, record)


def test_the_edited_versions_pass_the_reload_gates_check() -> None:
    for version in VERSIONS:
        assert shape_mismatches(_compiled(version)) == [], version


def test_the_gate_refuses_stages_that_answer_otherwise_than_the_whole() -> None:
    """A policy whose stages disagree with its `decision` (here a stand-in: the shipped
    policy with its second stage answering `category_not_necessary` everywhere) is
    refused by the reload gate's check, naming the stages."""
    policy = load_policy(POLICIES)

    class Disagreeing:
        version = policy.version
        sources = policy.sources
        plan = policy.plan

        def evaluate(self, record: Any) -> Any:
            return policy.evaluate(record)

        def gate(self, record: Any) -> Any:
            return policy.gate(record)

        def category_outcomes(self, record: Any) -> Any:
            return [o.__class__(o.category, o.action, "category_not_necessary", "")
                    for o in policy.category_outcomes(record)]

    found = shape_mismatches(Disagreeing())
    assert found and found[0].change == STAGED
    with pytest.raises(PolicyRejected) as caught:
        check_shapes(Disagreeing())
    assert str(caught.value).startswith("asked in two stages, the policy answers otherwise")


def test_a_candidate_in_its_sandbox_is_checked_in_stages_too() -> None:
    sandboxed = SandboxedPolicy(read_policy(POLICIES))
    try:
        maker = Maker(random.Random(7), *policy_constants(read_policy(POLICIES)))
        record = maker.record()
        planned, outcomes = sandboxed.staged(record)
        assert planned and outcomes == evaluate_outcomes(load_policy(POLICIES), record)
        assert shape_mismatches(sandboxed) == []
    finally:
        sandboxed.close()
    unstaged = SandboxedPolicy(UNSTAGED)
    try:
        assert unstaged.staged(Maker(random.Random(7), [], []).record()) == (False, None)
    finally:
        unstaged.close()


def test_rules_9_to_11_are_asked_once_for_a_users_rights_not_once_per_client() -> None:
    policy = load_policy(POLICIES)
    index = _demo_index()
    decider = Decider(policy, index)
    now = datetime.now(UTC)
    with index.reading() as view:
        clients = sorted(c for c, rels in view.relationships_by_client.items()
                         if any(r.municipality == "749" and r.service == "coaching"
                                and r.assigned_users in ((), ("u-1001",))
                                for r in rels.values())
                         and not view.clients[c].protection_order)
    assert len(clients) >= 2
    allowed = []
    for client in clients:
        checked = decider.check([DecisionRequest(client=client, user="u-1001",
                                                 category="service_needs_plans",
                                                 action="read", purpose="coaching")],
                                now, ASKER)
        allowed.append(checked.decisions[0].decision)
    assert sum(allowed) >= 2
    # One query of rules 9-11 in all (none of these clients has a protection order, the
    # one fact of a client they read); rules 1-8 at most once per client.
    assert decider.queries <= len(clients) + 1
    table_keys = [key for key in decider._shapes if key.split(b" ")[1] == b"t"]
    assert len(table_keys) == 1


_COMPILED: dict[str, Any] = {}


def _compiled(version: str) -> Any:
    if version not in _COMPILED:
        _COMPILED[version] = compile_sources(VERSIONS[version])
    return _COMPILED[version]


def _demo_index() -> FactIndex:
    now = datetime.now(UTC)
    index = FactIndex()
    index.apply([ChangeRecord(1, c.kind, c.id, c.data)
                 for c in parse_batch(demo_facts(now) + demo_grant_facts(now))])
    return index


def test_two_rights_compared_whole_are_seen_whole_in_each_stage() -> None:
    """A rule may compare two rights (or relationships) whole: a stage's record keeps
    them whole, so rights that differ only in what that stage's rules read by field
    (here the id and scopes, unread by rules 1-8) still differ there."""
    files = edited("rules.polar", 'failing(r, "no_active_grant") if not active_grant(r, _);',
                   'failing(r, "no_active_grant") if not active_grant(r, _);\n'
                   'failing(r, "no_active_grant") if\n'
                   '    g1 in r.grants and g2 in r.grants and not g1 = g2;')
    policy = compile_sources(files)
    assert policy.plan is not None
    index = _demo_index()
    grant = index.grants["g-1001"]
    twin = {**grant.model_dump(mode="json"), "scopes": ["name_contact"]}
    index.apply([ChangeRecord(index.version + 1, c.kind, c.id, c.data)
                 for c in parse_batch([{"kind": "grant", "id": "g-1001-b", "data": twin}])])
    request = DecisionRequest("u-1001", "c-749-001", "service_needs_plans", "read",
                              "coaching")
    now = datetime.now(UTC)
    plain = decide(policy, index, request, now)
    assert (plain.decision, plain.reason) == (False, "no_active_grant")
    assert Decider(policy, index).check([request], now, ASKER).decisions[0] == plain

"""A policy is vetted for the decision cache's shape invariants when it loads.

The static check (pdp.engine.policy_vet, by the kinds of pdp.model.policy_schema.KINDS)
refuses what the text shows; the property check (pdp.engine.shape_check) what it does
not. The HTTP reload gate and candidates are in tests/test_policy_reload.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pdp.engine.policy_engine import PolicyError, compile_sources, load_policy
from pdp.engine.policy_manager import PolicyManager, PolicyRejected, check_shapes
from pdp.engine.policy_vet import ShapeBroken, vet_sources, violations_in
from pdp.engine.shape_check import RECORDS, shape_mismatches
from tests.support.shape_breaks import BROKEN, OWN_RECORD

ROOT = Path(__file__).parent.parent
POLICIES = ROOT / "policies"


def sources(name: str = "", old: str = "", new: str = "") -> dict[str, str]:
    files = {path.name: path.read_text(encoding="utf-8") for path in POLICIES.glob("*.polar")}
    if name:
        assert old in files[name], old
        files[name] = files[name].replace(old, new, 1)
    return files


def refusal(files: dict[str, str]) -> str:
    with pytest.raises(ShapeBroken) as caught:
        vet_sources(files)
    return str(caught.value)


def test_the_shipped_policy_keeps_the_invariants() -> None:
    vet_sources(sources())
    policy = load_policy(POLICIES)
    asked: list[object] = []

    class Counting:
        """The policy, counting its queries."""

        version = policy.version

        def evaluate(self, record: Any) -> Any:
            asked.append(record)
            return policy.evaluate(record)

    assert shape_mismatches(Counting()) == []
    # Bounded by work, not time (it runs in every reload and every candidate's vetting):
    # a record and its shape-mate each, no search for a cause when nothing differs.
    assert 0 < len(asked) <= 2 * RECORDS


@pytest.mark.parametrize(("what", "old", "new", "says"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_rule_that_breaks_an_invariant_is_refused_where_it_stands(
        what: str, old: str, new: str, says: str) -> None:
    files = sources("rules.polar", old, new)
    line = 1 + files["rules.polar"].split(new, 1)[0].count("\n")
    message = refusal(files)
    assert message.startswith(f"rules.polar:{line}:"), message
    assert says in message
    with pytest.raises(PolicyError) as caught:
        compile_sources(files)
    error = caught.value
    assert error.line == line and error.column and error.construct
    assert "shape invariants" in error.message


@pytest.mark.parametrize(("old", "new", "says"), [
    ("r.now < r.agreement_ends_at;", "r.now < 1767225600000000;",
     "the time `.now` compared with a constant number"),
    ("r.record_owner != \"\" and", 'r.record_owner != "authority" and',
     'the municipality code `.record_owner` compared with the constant "authority"'),
    (OWN_RECORD, 'failing(r, "own_record") if r.user_client_id < r.client_id;',
     "compared with `.client_id` by `<`"),
    ("r.client_home in r.area_municipalities and", '"091" in r.area_municipalities and',
     'the constant "091" looked for in `.area_municipalities`'),
    ("relationship in r.relationships and",
     "r.relationships != [] and relationship in r.relationships and",
     "the list of relationships `.relationships` compared with []"),
    ("relationship.starts_at <= r.now and", "relationship.starts_at = r.now and",
     "compared with `.now` by `=`"),
    (OWN_RECORD, 'failing(r, "own_record") if vip(r.client_id);\nvip("c-1");',
     'the id `.client_id` given to `vip`, which has a rule for the constant "c-1"'),
])
def test_more_misuses_the_text_shows(old: str, new: str, says: str) -> None:
    assert says in refusal(sources("rules.polar", old, new))


def test_rules_a_decision_does_not_reach_are_not_held_to_them() -> None:
    # lifecycle.polar compares a right's end with the agreement's (a change, not a
    # decision record); the same text reached from `decision` is refused.
    text = "change_rule(c, right, \"x\", \"y\") if c.ends_at < right.valid_until;\n"
    assert violations_in("a.polar", text) == []
    vet_sources({**sources(), "a.polar": text})
    reached = sources("rules.polar", OWN_RECORD,
                      'failing(r, "own_record") if g in r.grants and late(g, r);\n'
                      "late(g, r) if r.agreement_ends_at < g.valid_until;")
    assert "compared with `.valid_until`" in refusal(reached)


@pytest.mark.parametrize(("old", "new"), [
    # A constant reaches the comparison through a variable: the text cannot tell (the
    # records hold the strings the policy compares with a variable).
    (OWN_RECORD, 'failing(r, "own_record") if x = "c1" and r.client_id = x;'),
    (OWN_RECORD, OWN_RECORD + '\nfailing(r, "own_record") if x = "c-999" and r.client_id = x;'),
    ("grant.valid_from <= r.now and", "t = grant.valid_from and t + 86400000000 <= r.now and"),
    # A relationship of another municipality read.
    ('failing(r, "no_active_relationship") if not active_relationship(r);',
     'failing(r, "no_active_relationship") if not active_relationship(r);\n'
     'failing(r, "no_active_relationship") if rel in r.relationships and '
     "rel.municipality != r.user_municipality;"),
])
def test_the_property_check_finds_what_the_text_hides(old: str, new: str) -> None:
    policy = compile_sources(sources("rules.polar", old, new))
    found = shape_mismatches(policy)
    assert found, new
    with pytest.raises(PolicyRejected) as caught:
        check_shapes(policy)
    assert "answers records of one shape differently" in caught.value.message
    assert caught.value.details and all("message" in d for d in caught.value.details)


def test_a_reload_refuses_it_and_the_live_version_stays(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    live = load_policy(directory)
    swapped = []
    manager = PolicyManager.started(directory, live, swapped.append)
    for _, old, new, says in BROKEN:
        path = directory / "rules.polar"
        before = path.read_text()
        path.write_text(before.replace(old, new, 1))
        with pytest.raises(PolicyRejected) as caught:
            manager.reload()
        path.write_text(before)
        assert says in caught.value.message and caught.value.unsafe
        assert caught.value.details[0]["file"].endswith("rules.polar")
    assert swapped == [] and manager.state.policy is live


def test_pdp_policy_check_refuses_it(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    path = directory / "rules.polar"
    path.write_text(path.read_text().replace(BROKEN[0][1], BROKEN[0][2], 1))
    done = subprocess.run([sys.executable, "-m", "pdp", "policy", "check", str(directory)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert done.returncode != 0
    assert "rules.polar:" in done.stderr + done.stdout
    assert BROKEN[0][3] in done.stderr + done.stdout


def test_every_mate_the_check_makes_is_of_its_records_shape() -> None:
    """Else the property check would compare records the cache keeps apart (and skip
    them silently): it would prove nothing."""
    import random

    from pdp.engine.policy_input import record_shape
    from pdp.engine.shape_check import CHANGES, Maker, all_changes, policy_constants

    maker = Maker(random.Random(7), *policy_constants(sources()))
    for number in range(300):
        record = maker.record()
        shape = record_shape(record)[0]
        mates = [change(record, random.Random(number))[1] for change in CHANGES]
        mates.append(all_changes(record, number)[1])
        assert all(record_shape(mate)[0] == shape for mate in mates)
        assert any(mate != record for mate in mates)

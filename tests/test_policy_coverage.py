"""`pdp policy test --coverage`: every clause a decision can reach must be noticed by the
suites when it is switched off, or be marked exempt (issue 9, part 4)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from pdp.engine.policy_coverage import clauses, exemptions, reachable, switched_off
from pdp.engine.policy_engine import load_policy

ROOT = Path(__file__).parent.parent
SOURCE = '''# a comment; with a semicolon
f(x) if g(x) and x != ";" and cut;   # trailing; comment
g("a;b");
# coverage-exempt: a reason
g(2);
g(3);

g(4);
h(_y) if forall(z in [1], g(z));
'''


def test_clauses_are_found_around_strings_and_comments() -> None:
    found = clauses("t.polar", SOURCE)
    assert [(c.name, c.line) for c in found] == [
        ("f", 2), ("g", 3), ("g", 5), ("g", 6), ("g", 8), ("h", 9)]
    assert found[0].text(SOURCE) == 'f(x) if g(x) and x != ";" and cut'
    assert reachable(found, {"t.polar": SOURCE}, root="f") == {"f", "g"}
    # The marked clause and the next of its rule line by line; not the one after a gap.
    assert set(exemptions("t.polar", SOURCE, found)) == {("t.polar", 5), ("t.polar", 6)}


def test_a_switched_off_clause_keeps_the_policy_loadable(tmp_path: Path) -> None:
    for path in (ROOT / "policies").glob("*.polar"):
        shutil.copy(path, tmp_path / path.name)
    rules = (ROOT / "policies" / "rules.polar").read_text()
    for clause in clauses("rules.polar", rules):
        (tmp_path / "rules.polar").write_text(switched_off(clause, rules))
        load_policy(tmp_path)  # raises if the switched-off text is not valid Polar
    fact = next(c for c in clauses("rules.polar", rules) if c.name == "permitted_on")
    assert switched_off(fact, rules)[fact.start:].startswith(
        'permitted_on(_r, "read", _category) if false;')


def run(policy_dir: Path, suites: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pdp", "policy", "test", "--coverage",
                           "--policy-dir", str(policy_dir), str(suites)],
                          capture_output=True, text=True, timeout=600)


def test_the_shipped_suites_exercise_every_clause() -> None:
    done = run(ROOT / "policies", ROOT / "policies" / "tests")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ", 0 not exercised and not exempt" in done.stdout
    assert "exempt: data.polar" in done.stdout and "never_needed" in done.stdout
    assert "NOT EXERCISED" not in done.stdout


def test_coverage_fails_when_a_rule_loses_its_cases(tmp_path: Path) -> None:
    suites = tmp_path / "tests"
    suites.mkdir()
    shutil.copy(ROOT / "policies" / "tests" / "01_user.yaml", suites)  # rule 1 only
    done = run(ROOT / "policies", suites)
    assert done.returncode == 1, done.stdout + done.stderr
    assert 'NOT EXERCISED: rules.polar' in done.stdout
    assert 'failing(r, "own_record")' in done.stdout
    assert 'failing(r, "user_inactive")' not in done.stdout  # rule 1 has its cases

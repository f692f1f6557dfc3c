"""The policy's test suites (policies/tests/*.yaml), one pytest test per case, and tests
of the suite runner itself (pdp.engine.policy_tests)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from pdp.engine.core import check_policy
from pdp.engine.policy_engine import CompiledPolicy, load_policy
from pdp.engine.policy_tests import (
    Case,
    Suite,
    SuiteError,
    SuiteLoader,
    format_report,
    load_suites,
    run_case,
    run_suites,
)
from pdp.model.vocab import REASONS, SERVICES

ROOT = Path(__file__).resolve().parent.parent
POLICY_DIR = ROOT / "policies"
SUITES_DIR = POLICY_DIR / "tests"

SUITES = load_suites(SUITES_DIR)
CASES = [(suite, case) for suite in SUITES for case in suite.cases]


def _case_id(suite: Suite, case: Case) -> str:
    return f"{suite.file.relative_to(SUITES_DIR).as_posix()}::{case.name}"


@pytest.fixture(scope="module")
def policy() -> CompiledPolicy:
    compiled = load_policy(POLICY_DIR)
    check_policy(compiled)
    return compiled


@pytest.mark.parametrize(("suite", "case"), CASES, ids=[_case_id(s, c) for s, c in CASES])
def test_case(policy: CompiledPolicy, suite: Suite, case: Case) -> None:
    result = run_case(policy, suite, case)
    assert result.passed, (
        f"{_case_id(suite, case)}: expected decision={result.expected_decision} "
        f"reason={result.expected_reason}, got decision={result.actual_decision} "
        f"reason={result.actual_reason}"
    )


# -- coverage of the shipped suites ---------------------------------------------------


def test_every_reason_is_covered() -> None:
    covered = {case.expect_reason for _, case in CASES}
    assert sorted(set(REASONS) - covered) == []


def test_every_purpose_has_an_allowed_case() -> None:
    allowed = {case.request.purpose for _, case in CASES if case.expect_decision}
    assert sorted(set(SERVICES) - allowed) == []


def test_every_purpose_has_a_denied_task_profile_boundary() -> None:
    boundary = {case.request.purpose for _, case in CASES
                if case.expect_reason == "category_not_necessary"}
    assert sorted(set(SERVICES) - boundary) == []


def test_both_actions_are_allowed_somewhere() -> None:
    actions = {case.request.action for _, case in CASES if case.expect_decision}
    assert actions == {"read", "write"}


def test_case_ids_are_unique() -> None:
    ids = [_case_id(s, c) for s, c in CASES]
    assert len(ids) == len(set(ids))


def test_shipped_suites_pass_as_a_report(policy: CompiledPolicy) -> None:
    report = run_suites(policy, SUITES)
    text = format_report(report)
    assert report.failed == 0, text
    assert report.passed == len(CASES)
    assert text.splitlines()[-1] == f"{len(CASES)} passed, 0 failed"


# -- the runner -----------------------------------------------------------------------

_SMALL_SUITE = """\
name: small
facts:
  areas:
    kuopio:
      name: Kuopion työllisyysalue
      responsible_municipality: "297"
      municipalities: [{code: "297", name: Kuopio}, {code: "749", name: Siilinjärvi}]
  agreements:
    "749": {area: kuopio, status: in_force, signed_at: "2025-01-15T10:00:00+02:00"}
  users:
    u-1: {municipality: "749", display_name: Testi Käyttäjä, tasks: [coaching], status: active}
  grants:
    g-1: {user: u-1, purposes: [coaching], scopes: [name_contact],
          valid_from: "2026-01-01T00:00:00+02:00",
          valid_until: "2027-01-01T00:00:00+02:00", status: active, legal_basis: "380/2023"}
  clients:
    c-1: {home_municipality: "749", area_client: true}
  relationships:
    r-1: {client: c-1, municipality: "749", service: coaching,
          starts_at: "2026-02-01T08:00:00+02:00"}
cases:
  - name: allowed
    now: "2026-06-01T09:00:00+03:00"
    request: {user: u-1, client: c-1, category: name_contact, purpose: coaching}
    expect: {decision: true, reason: allowed}
"""


def _write(directory: Path, text: str, name: str = "suite.yaml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def _load_error(directory: Path) -> SuiteError:
    with pytest.raises(SuiteError) as info:
        load_suites(directory)
    return info.value


def test_small_suite_loads_and_passes(tmp_path: Path, policy: CompiledPolicy) -> None:
    _write(tmp_path, _SMALL_SUITE)
    report = run_suites(policy, load_suites(tmp_path))
    assert (report.passed, report.failed) == (1, 0)
    assert format_report(report).splitlines() == ["PASS small :: allowed", "1 passed, 0 failed"]


@pytest.mark.parametrize(("old", "new", "key"), [
    ("name: small\n", "name: small\nauthor: x\n", "author"),
    ("    request: {user: u-1,", "    requets: {user: u-1,", "requets"),
    ("purpose: coaching}", "purpose: coaching, resource: x}", "resource"),
    ("expect: {decision: true,", "expect: {why: x, decision: true,", "why"),
    ("  clients:\n", "  customers: {}\n  clients:\n", "customers"),
    ("area_client: true}", "area_client: true, vip: true}", "vip"),
])
def test_unknown_key_is_rejected(tmp_path: Path, old: str, new: str, key: str) -> None:
    assert old in _SMALL_SUITE
    path = _write(tmp_path, _SMALL_SUITE.replace(old, new, 1))
    error = _load_error(tmp_path)
    assert error.file == path
    assert str(path) in str(error)
    assert key in error.message


@pytest.mark.parametrize(("old", "new", "fragment"), [
    ("reason: allowed}", "reason: permitted}", "unknown reason"),
    ("decision: true, reason: allowed", "decision: true, reason: no_active_grant",
     "does not fit"),
    ("decision: true, reason: allowed", "decision: false, reason: allowed", "does not fit"),
    ('now: "2026-06-01T09:00:00+03:00"', 'now: "2026-06-01T09:00:00"', "offset"),
    ('now: "2026-06-01T09:00:00+03:00"', "now: 2026-06-01", "RFC 3339"),
    ("category: name_contact, purpose", "category: nme_contact, purpose", "category"),
    ("purpose: coaching}\n    expect", 'purpose: coaching, owner: "74"}\n    expect', "owner"),
    ("purpose: coaching}\n    expect", "purpose: coaching, owner: 749}\n    expect", "owner"),
    ("    request:", "    facts: {grants: {g-1: {user: u-1}}}\n    request:", "'allowed'"),
    ("    request:", "    facts: {grants: {g-9: null}}\n    request:", "g-9"),
    ('valid_until: "2027-01-01T00:00:00+02:00"', 'valid_until: "2025-01-01T00:00:00+02:00"',
     "facts.grants.g-1: valid_until: must be after valid_from"),
    ('"749": {area', '749: {area', "agreements"),
    ("  grants:\n", "  users: {}\n  grants:\n", "duplicate key 'users'"),
    ("    request: {user: u-1,", "    expect: {decision: true, reason: allowed}\n"
     "    request: {user: u-1,", "duplicate key 'expect'"),
])
def test_invalid_suite_is_rejected(tmp_path: Path, old: str, new: str, fragment: str) -> None:
    assert old in _SMALL_SUITE
    path = _write(tmp_path, _SMALL_SUITE.replace(old, new, 1))
    error = _load_error(tmp_path)
    assert error.file == path
    assert fragment in error.message, error.message


def test_case_names_must_be_unique(tmp_path: Path) -> None:
    case = _SMALL_SUITE[_SMALL_SUITE.index("  - name: allowed"):]
    _write(tmp_path, _SMALL_SUITE + case)
    assert "used twice" in _load_error(tmp_path).message


def test_empty_directory_is_an_error(tmp_path: Path) -> None:
    assert "no *.yaml" in _load_error(tmp_path).message


def test_suites_are_read_recursively(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    _write(tmp_path / "a" / "b", _SMALL_SUITE, "deep.yaml")
    _write(tmp_path, "not a suite", "notes.txt")
    suites = load_suites(tmp_path)
    assert [s.file.name for s in suites] == ["deep.yaml"]


# carries: C-11
def test_a_case_names_the_records_owner(tmp_path: Path, policy: CompiledPolicy) -> None:
    writes = """\
  - name: a write to the own municipality's record
    now: "2026-06-01T09:00:00+03:00"
    facts: {grants: {g-1: &writer {user: u-1, purposes: [coaching],
                                   scopes: [service_needs_plans], actions: [read, write],
                                   valid_from: "2026-01-01T00:00:00+02:00",
                                   valid_until: "2027-01-01T00:00:00+02:00", status: active,
                                   legal_basis: "380/2023"}}}
    request: {user: u-1, client: c-1, category: service_needs_plans, action: write,
              purpose: coaching, owner: "749"}
    expect: {decision: true, reason: allowed}
  - name: a write to the authority's record
    now: "2026-06-01T09:00:00+03:00"
    facts: {grants: {g-1: *writer}}
    request: {user: u-1, client: c-1, category: service_needs_plans, action: write,
              purpose: coaching, owner: authority}
    expect: {decision: false, reason: action_not_permitted}
"""
    _write(tmp_path, _SMALL_SUITE + writes)
    suites = load_suites(tmp_path)
    assert [c.request.owner for c in suites[0].cases] == ["", "749", "authority"]
    report = run_suites(policy, suites)
    assert (report.passed, report.failed) == (3, 0), format_report(report)


def test_override_and_delete_facts_per_case(tmp_path: Path, policy: CompiledPolicy) -> None:
    extra = """\
  - name: grant removed for this case only
    now: "2026-06-01T09:00:00+03:00"
    facts: {grants: {g-1: null}}
    request: {user: u-1, client: c-1, category: name_contact, purpose: coaching}
    expect: {decision: false, reason: no_active_grant}
  - name: client replaced for this case only
    now: "2026-06-01T09:00:00+03:00"
    facts: {clients: {c-1: {home_municipality: "749", protection_order: true,
                            area_client: true}}}
    request: {user: u-1, client: c-1, category: name_contact, purpose: coaching}
    expect: {decision: false, reason: protection_order}
  - name: base world again
    now: "2026-06-01T09:00:00+03:00"
    request: {user: u-1, client: c-1, category: name_contact, purpose: coaching}
    expect: {decision: true, reason: allowed}
"""
    _write(tmp_path, _SMALL_SUITE + extra)
    report = run_suites(policy, load_suites(tmp_path))
    assert (report.passed, report.failed) == (4, 0), format_report(report)


def _flip(expect: dict[str, Any]) -> None:
    if expect["decision"]:
        expect.update(decision=False, reason="no_active_grant")
    else:
        expect.update(decision=True, reason="allowed")


def test_wrong_expectation_fails_the_run(tmp_path: Path, policy: CompiledPolicy) -> None:
    source = SUITES_DIR / "03_grant.yaml"
    data = yaml.load(source.read_text(encoding="utf-8"), Loader=SuiteLoader)
    flipped = data["cases"][1]
    _flip(flipped["expect"])
    _write(tmp_path, yaml.safe_dump(data, allow_unicode=True, sort_keys=False), source.name)
    report = run_suites(policy, load_suites(tmp_path))
    assert report.failed == 1
    assert report.passed == len(data["cases"]) - 1
    [failure] = [r for r in report.results if not r.passed]
    assert failure.case == flipped["name"]
    assert failure.file == tmp_path / source.name
    text = format_report(report)
    assert f"FAIL {data['name']} :: {flipped['name']}" in text
    assert text.splitlines()[-1] == f"{report.passed} passed, 1 failed"


def test_unchanged_copy_passes(tmp_path: Path, policy: CompiledPolicy) -> None:
    shutil.copy(SUITES_DIR / "windows.yaml", tmp_path / "windows.yaml")
    report = run_suites(policy, load_suites(tmp_path))
    assert report.failed == 0
    assert report.passed > 0

"""The dependency audit's verdict on pip-audit reports (scripts/audit_deps.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("audit_deps", ROOT / "scripts/audit_deps.py")
assert _spec and _spec.loader
audit_deps = importlib.util.module_from_spec(_spec)
sys.modules["audit_deps"] = audit_deps
_spec.loader.exec_module(audit_deps)


def _report() -> dict[str, object]:
    return {"dependencies": [
        {"name": "fixed-pkg", "version": "1.0",
         "vulns": [{"id": "PYSEC-1", "aliases": ["CVE-1"], "fix_versions": ["1.1"]}]},
        {"name": "nofix-pkg", "version": "2.0",
         "vulns": [{"id": "GHSA-2", "aliases": [], "fix_versions": []}]},
        {"name": "clean-pkg", "version": "3.0", "vulns": []},
        {"name": "gone-pkg", "skip_reason": "Dependency not found on PyPI"},
    ], "fixes": []}


def test_a_vulnerability_with_a_fix_fails_one_without_warns() -> None:
    failures, warnings, unaudited = audit_deps.judge(_report(), set())
    assert failures == ["fixed-pkg==1.0: PYSEC-1 (fixed in 1.1)"]
    assert warnings == ["nofix-pkg==2.0: GHSA-2 (fixed in no release yet)"]
    assert unaudited == ["gone-pkg"]


def test_a_judged_id_or_alias_is_ignored(tmp_path: Path) -> None:
    ignore_file = tmp_path / "ignore.txt"
    ignore_file.write_text("# judged\nCVE-1  # not reachable from pdp\n", encoding="utf-8")
    ignore = audit_deps.ignored_ids(ignore_file)
    assert ignore == {"CVE-1"}
    failures, _, _ = audit_deps.judge(_report(), ignore)
    assert failures == []


def test_every_locked_requirement_is_pinned_with_hashes() -> None:
    lines = (ROOT / "requirements.lock").read_text(encoding="utf-8").split("\n")
    entries = [i for i, e in enumerate(lines) if e and not e.startswith((" ", "#"))]
    assert entries, "the lock names no package"
    for i in entries:
        assert "==" in lines[i], lines[i]
        assert lines[i + 1].strip().startswith("--hash=sha256:"), lines[i]
    names = {lines[i].split("==", 1)[0] for i in entries}
    for needed in ("oso", "fastapi", "pytest", "pip", "setuptools", "uv", "pip-audit"):
        assert needed in names, needed


def test_a_package_pinned_at_its_newest_release_is_checked_from_the_project_json() -> None:
    report = {"dependencies": [
        {"name": "newest_pkg", "skip_reason": "Dependency not found on PyPI"},
        {"name": "older-pkg", "skip_reason": "Dependency not found on PyPI"},
        {"name": "gone-pkg", "skip_reason": "Dependency not found on PyPI"},
    ]}
    pins = audit_deps.locked_pins(
        "newest-pkg==2.0 \\\n    --hash=sha256:aa\nolder-pkg==1.0 ; python_version < '3.12' \\\n"
        "    --hash=sha256:bb\ngone-pkg==3.0 \\\n")
    assert pins == {"newest-pkg": "2.0", "older-pkg": "1.0", "gone-pkg": "3.0"}
    projects: dict[str, dict[str, object] | None] = {
        "newest_pkg": {"info": {"version": "2.0"}, "vulnerabilities": [
            {"id": "GHSA-x", "aliases": ["CVE-9"], "fixed_in": ["2.0.1"]},
            {"id": "GHSA-w", "aliases": [], "fixed_in": ["2.1"], "withdrawn": "2026-01-01"}]},
        "older-pkg": {"info": {"version": "1.5"}, "vulnerabilities": []},
        "gone-pkg": None,
    }
    audit_deps.fill_from_newest(report, pins, projects.__getitem__)
    failures, _, unaudited = audit_deps.judge(report, set())
    assert failures == ["newest_pkg==2.0: GHSA-x (fixed in 2.0.1)"]  # withdrawn one dropped
    assert sorted(unaudited) == ["gone-pkg", "older-pkg"]  # not the newest: still unknown

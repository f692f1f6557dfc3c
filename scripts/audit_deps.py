"""The dependency audit of `make test`: pip-audit against requirements.lock.

Fails (exit 1) on a known vulnerability that has a fixed release: that is an upgrade to
make (`scripts/lock --upgrade-package NAME`). A known vulnerability without a fix is
reported and does not fail the build (there is nothing to upgrade to); list it with its
reason in scripts/audit-ignore.txt once it has been judged.

pip-audit asks PyPI's per-release JSON. Where that is not served (a registry mirror has
only the per-project JSON), a package whose pinned version is the project's newest release
is checked against the per-project JSON's `vulnerabilities`, which are those of the newest
release — right after `make lock` that is most of the lock. Packages neither could be
asked about are counted and named. They fail the audit only with PDP_AUDIT_REQUIRE_ALL=1,
which a build with the internet should set: a machine that cannot ask cannot tell, and
says so, rather than inventing a verdict.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ignored_ids(path: Path) -> set[str]:
    """Vulnerability ids judged and accepted: one per line, `ID  # why`."""
    if not path.exists():
        return set()
    ids = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        word = line.split("#", 1)[0].strip()
        if word:
            ids.add(word)
    return ids


def judge(report: dict[str, object], ignore: set[str]) -> tuple[list[str], list[str], list[str]]:
    """(failures, warnings, unaudited) from pip-audit's JSON report."""
    failures: list[str] = []
    warnings: list[str] = []
    unaudited: list[str] = []
    deps = report.get("dependencies", [])
    assert isinstance(deps, list)
    for dep in deps:
        name = f"{dep.get('name')}=={dep.get('version', '?')}"
        if dep.get("skip_reason"):
            unaudited.append(str(dep.get("name")))
            continue
        for vuln in dep.get("vulns", []):
            ids = {vuln.get("id", "")} | set(vuln.get("aliases", []))
            if ids & ignore:
                continue
            fixes = vuln.get("fix_versions") or []
            line = f"{name}: {vuln.get('id')} (fixed in {', '.join(fixes) or 'no release yet'})"
            (failures if fixes else warnings).append(line)
    return failures, warnings, unaudited


_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)")
PROJECT_JSON = "https://pypi.org/pypi/{name}/json"


def locked_pins(lock: str) -> dict[str, str]:
    """name -> version of every pin in the lock (the first, where markers pin twice)."""
    pins: dict[str, str] = {}
    for line in lock.splitlines():
        match = _PIN.match(line)
        if match:
            pins.setdefault(_normal(match.group(1)), match.group(2))
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_json(name: str) -> dict[str, object] | None:
    """PyPI's per-project JSON, or None if it cannot be had."""
    try:
        with urllib.request.urlopen(PROJECT_JSON.format(name=name), timeout=30) as answer:
            data = json.loads(answer.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def fill_from_newest(report: dict[str, object], pins: dict[str, str],
                     fetch: Callable[[str], dict[str, object] | None] = project_json) -> None:
    """For each unaudited package pinned at its project's newest release, take the
    vulnerabilities PyPI lists for that release (in pip-audit's shape)."""
    deps = report.get("dependencies", [])
    assert isinstance(deps, list)
    unaudited = [dep for dep in deps if dep.get("skip_reason")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda dep: fetch(str(dep.get("name"))), unaudited))
    for dep, data in zip(unaudited, answers, strict=True):
        version = pins.get(_normal(str(dep.get("name"))))
        info = data.get("info") if data else None
        vulns = data.get("vulnerabilities") if data else None
        if (not isinstance(info, dict) or info.get("version") != version
                or not isinstance(vulns, list)):
            continue
        dep.pop("skip_reason", None)
        dep["version"] = version
        dep["vulns"] = [{"id": v.get("id", ""), "aliases": v.get("aliases") or [],
                         "fix_versions": v.get("fixed_in") or []}
                        for v in vulns if isinstance(v, dict) and not v.get("withdrawn")]


def main() -> int:
    venv_bin = Path(sys.executable).parent
    proc = subprocess.run(
        [str(venv_bin / "pip-audit"), "-r", str(ROOT / "requirements.lock"),
         "--require-hashes", "--disable-pip", "--progress-spinner", "off", "-f", "json"],
        capture_output=True, text=True, timeout=600, check=False)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        sys.stderr.write(proc.stderr)
        print("audit: pip-audit gave no report", file=sys.stderr)
        return 1
    fill_from_newest(report, locked_pins((ROOT / "requirements.lock").read_text("utf-8")))
    failures, warnings, unaudited = judge(report, ignored_ids(ROOT / "scripts/audit-ignore.txt"))
    for line in warnings:
        print(f"audit: known vulnerability, no fix released: {line}")
    for line in failures:
        print(f"audit: FAIL known vulnerability with a fix: {line}")
    total = len(report.get("dependencies", []))  # type: ignore[arg-type]
    if unaudited:
        print(f"audit: {len(unaudited)} of {total} locked packages could not be checked "
              f"(the vulnerability service did not answer for them): "
              f"{', '.join(sorted(unaudited)[:8])}{' …' if len(unaudited) > 8 else ''}")
    if failures:
        return 1
    if unaudited and os.environ.get("PDP_AUDIT_REQUIRE_ALL") == "1":
        print("audit: FAIL PDP_AUDIT_REQUIRE_ALL=1 and not every package was checked")
        return 1
    print(f"audit: {total - len(unaudited)} of {total} locked packages checked, "
          f"{len(failures)} fixable vulnerabilities")
    return 0


if __name__ == "__main__":
    sys.exit(main())

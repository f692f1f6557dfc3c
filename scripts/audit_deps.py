"""The dependency audit of `make test`: pip-audit against requirements.lock.

Fails (exit 1) on a known vulnerability that has a fixed release: that is an upgrade to
make (`scripts/lock --upgrade-package NAME`). A known vulnerability without a fix is
reported and does not fail the build (there is nothing to upgrade to); list it with its
reason in scripts/audit-ignore.txt once it has been judged.

Packages the vulnerability service could not be asked about (no network, or a registry
mirror without PyPI's per-release JSON) are counted and named. They fail the audit only
with PDP_AUDIT_REQUIRE_ALL=1, which a build with the internet should set: a machine that
cannot reach the service cannot tell, and says so, rather than inventing a verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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

"""The compliance matrix: which policy rules, service steps and tests carry each clause of
the agreement (DOMAIN.md, "Clauses of the agreement"), generated from tags in the code.

A tag is a comment line `# carries: C-2, C-6` right above what carries the clauses:
- in `policies/*.polar`, the rule whose head follows (a *rule*);
- in `pdp/*.py`, the function or class that follows (a *step* of the service);
- in `tests/*.py`, the test function that follows, and in `policies/tests/*.yaml`, the
  case (`- name: …`) or suite (`name: …`) that follows (a *test*).

`python scripts/compliance.py` writes docs/compliance.md; `--check` (in `make test`)
fails when that file is not what the tags give, when a tag names a clause DOMAIN.md does
not have, or when a clause of kind "software" has no rule or step, or no test.
The clauses come from DOMAIN.md (../shared/brief/DOMAIN.md, or PDP_DOMAIN_MD). Its
table is kept in docs/clauses.md too, so that a checkout without the brief beside it can
still check; where the brief is there, the copy must be the same (`make compliance`
refreshes it).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOMAIN_MD = Path(os.environ.get("PDP_DOMAIN_MD", ROOT.parent / "shared/brief/DOMAIN.md"))
OUTPUT = ROOT / "docs/compliance.md"
CLAUSES_COPY = ROOT / "docs/clauses.md"

TAG = re.compile(r"^\s*#\s*carries:\s*(.+?)\s*$")
CLAUSE_ID = re.compile(r"C-\d+\Z")
ROW = re.compile(r"^\|\s*(C-\d+)\s*\|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|\s*$")
POLAR_RULE = re.compile(r"^([a-z_][A-Za-z0-9_]*)\(")
PY_DEF = re.compile(r"^\s*(?:async\s+def|def|class)\s+([A-Za-z_][A-Za-z0-9_]*)")
YAML_CASE = re.compile(r"^\s*-\s+name:\s*(.+?)\s*$")
YAML_SUITE = re.compile(r"^name:\s*(.+?)\s*$")


@dataclass(frozen=True, slots=True)
class Clause:
    id: str
    section: str
    text: str
    kind: str


@dataclass
class Carriers:
    rules: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    tests: list[str] = field(default_factory=list)


class TagError(Exception):
    pass


def read_clauses(domain: Path) -> list[Clause]:
    """The rows of DOMAIN.md's clause table."""
    clauses = [Clause(*match.groups()) for line in domain.read_text("utf-8").splitlines()
               if (match := ROW.match(line))]
    if not clauses:
        raise TagError(f"{domain}: no clause table (| C-1 | § | clause | kind |)")
    return clauses


def render_copy(clauses: list[Clause]) -> str:
    """docs/clauses.md: DOMAIN.md's clause table, as read."""
    rows = [f"| {c.id} | {c.section} | {c.text} | {c.kind} |" for c in clauses]
    return "\n".join([
        "# Clauses of the agreement (a copy)", "",
        "DOMAIN.md's table, copied by `scripts/compliance.py` for checkouts without the",
        "brief beside them; do not edit by hand.", "",
        "| id | § | clause | kind |", "| --- | --- | --- | --- |", *rows]) + "\n"


def _target(lines: list[str], start: int, pattern: re.Pattern[str]) -> tuple[int, str] | None:
    """The first line from `start` that `pattern` matches, skipping blanks, comments and
    decorators: (line number, name)."""
    for number in range(start, len(lines)):
        line = lines[number]
        match = pattern.match(line)
        if match:
            return number + 1, match.group(1).strip().strip("'\"")
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "@")):
            return None
    return None


def tags_in(path: Path, relative: str) -> list[tuple[list[str], str, str]]:
    """(clause ids, kind of carrier, where) for every tag of one file."""
    if path.suffix == ".polar":
        patterns, kind = [POLAR_RULE], "rules"
    elif path.suffix in (".yaml", ".yml"):
        patterns, kind = [YAML_CASE, YAML_SUITE], "tests"
    else:
        patterns, kind = [PY_DEF], "tests" if relative.startswith("tests/") else "steps"
    lines = path.read_text("utf-8").splitlines()
    found = []
    for number, line in enumerate(lines):
        match = TAG.match(line)
        if not match:
            continue
        ids = [part.strip() for part in match.group(1).split(",")]
        bad = [i for i in ids if not CLAUSE_ID.match(i)]
        if bad:
            raise TagError(f"{relative}:{number + 1}: not a clause id: {', '.join(bad)}")
        target = next((t for p in patterns if (t := _target(lines, number + 1, p))), None)
        if target is None:
            raise TagError(f"{relative}:{number + 1}: a `carries:` tag with nothing "
                           f"under it to carry the clauses")
        line_number, name = target
        if relative.startswith("tests/") and kind == "tests":
            where = f"`{relative}::{name}`"
        elif kind == "tests":
            where = f"`{relative}`: {name}"
        elif path.suffix == ".polar":
            # The rule's head names it (several clauses share a name); no line numbers,
            # so that an edit elsewhere in the file leaves the matrix as it is.
            head = lines[line_number - 1].split(" if", 1)[0].rstrip(" ;")
            where = f"`{relative}` `{head[:100]}`"
        else:
            where = f"`{relative}` {name}"
        found.append((ids, kind, where))
    return found


def tagged_files(root: Path) -> list[Path]:
    files = [*sorted((root / "policies").glob("*.polar")),
             *sorted((root / "policies/tests").glob("*.yaml")),
             *sorted((root / "pdp").rglob("*.py")),
             *sorted((root / "tests").glob("*.py"))]
    return [f for f in files if "migrations" not in f.parts]


def collect(root: Path, clauses: list[Clause]) -> dict[str, Carriers]:
    known = {c.id for c in clauses}
    carriers = {c.id: Carriers() for c in clauses}
    for path in tagged_files(root):
        relative = path.relative_to(root).as_posix()
        for ids, kind, where in tags_in(path, relative):
            for clause_id in ids:
                if clause_id not in known:
                    raise TagError(f"{where}: {clause_id} is not a clause of DOMAIN.md")
                getattr(carriers[clause_id], kind).append(where)
    return carriers


def render(clauses: list[Clause], carriers: dict[str, Carriers]) -> str:
    out = ["# Compliance matrix",
           "",
           "Generated by `scripts/compliance.py` from the `# carries: C-n` tags in the policy,",
           "the service and the tests; do not edit by hand (`make compliance` writes it,",
           "`make test` checks it). The clauses and their kinds are DOMAIN.md's",
           "(\"Clauses of the agreement\"): *software* — a rule or step carries it and a test",
           "shows it; *support* — the service records or reports, people decide; *—* — not a",
           "software matter.",
           ""]
    for clause in clauses:
        found = carriers[clause.id]
        out.append(f"## {clause.id} (§ {clause.section}) — {clause.kind}")
        out.append("")
        out.append(clause.text)
        out.append("")
        for title, items in (("Rules", found.rules), ("Steps", found.steps),
                             ("Tests", found.tests)):
            if items:
                out.append(f"- {title}: " + "; ".join(items))
        if not (found.rules or found.steps or found.tests):
            out.append("- (nothing in the service carries it)")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def problems(clauses: list[Clause], carriers: dict[str, Carriers]) -> list[str]:
    found = []
    for clause in clauses:
        if clause.kind != "software":
            continue
        carried = carriers[clause.id]
        if not (carried.rules or carried.steps):
            found.append(f"{clause.id} ({clause.text}): no rule or step carries it")
        if not carried.tests:
            found.append(f"{clause.id} ({clause.text}): no test shows it")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true",
                        help="fail if docs/compliance.md is stale or a clause is uncarried")
    args = parser.parse_args(argv)
    failed = False
    try:
        if DOMAIN_MD.exists():
            clauses = read_clauses(DOMAIN_MD)
            copy = render_copy(clauses)
            if not args.check:
                CLAUSES_COPY.write_text(copy, encoding="utf-8")
            elif not CLAUSES_COPY.exists() or CLAUSES_COPY.read_text("utf-8") != copy:
                print("compliance: docs/clauses.md is not DOMAIN.md's clause table: run "
                      "make compliance", file=sys.stderr)
                failed = True
        else:
            print(f"compliance: {DOMAIN_MD} is not here; using docs/clauses.md")
            clauses = read_clauses(CLAUSES_COPY)
        carriers = collect(ROOT, clauses)
    except (OSError, TagError) as error:
        print(f"compliance: {error}", file=sys.stderr)
        return 1
    text = render(clauses, carriers)
    missing = problems(clauses, carriers)
    if not args.check:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"compliance: wrote {OUTPUT.relative_to(ROOT)}")
    for line in missing:
        print(f"compliance: {line}", file=sys.stderr)
        failed = True
    if args.check and (not OUTPUT.exists() or OUTPUT.read_text("utf-8") != text):
        print("compliance: docs/compliance.md is out of date: run make compliance",
              file=sys.stderr)
        failed = True
    if args.check and not failed:
        carried = sum(1 for c in clauses if c.kind == "software")
        print(f"compliance: {carried} software clauses carried and tested; "
              f"docs/compliance.md is up to date")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Which rules of the policy the test suites exercise (`pdp policy test --coverage`).

A clause (a branch) counts as exercised when the suites notice it is gone: the policy
is loaded again with that one clause switched off (its body made `false and (...)`, a
fact given `if false`) and at least one case must then fail. A rule (all clauses of one
name) is exercised when one of its clauses is. Only the rules a decision can reach from
`decision/5` are counted (the grant workflow's rules are tested elsewhere). Every
counted clause must be exercised — each clause of `failing` is one of DOMAIN.md's rules.
A clause no case can tell apart by design (defence in depth, a fast path) is exempted by
a comment right above it, `# coverage-exempt: <why>`, which also covers the clauses of
the same rule that follow it line by line; exemptions are reported.

Each case is decided by the service's decision entry (`Decider.check`), the answers by
record shape shared between the cases of one policy, so a switched-off clause costs a
policy query per distinct shape until the first case fails.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pdp.engine.core import Outcomes
from pdp.engine.decider import Asker, Decider
from pdp.engine.factindex import FactIndex
from pdp.engine.policy_engine import DECISION_RULE, Evaluator, PolicyError, load_policy
from pdp.engine.policy_input import policy_record, record_shape
from pdp.engine.policy_tests import Case, Suite
from pdp.model.clock import to_micros

CALL = re.compile(r"\b([a-z_][A-Za-z0-9_]*)\s*\(")
_EXEMPT = re.compile(r"#\s*coverage-exempt:\s*(\S.*)$")
_NOT_RULES = frozenset({"forall", "print"})


@dataclass(frozen=True, slots=True)
class Clause:
    file: str  # the policy file's name
    line: int
    start: int  # offsets of the clause's text in its file, the `;` excluded
    end: int
    name: str
    head_end: int  # offset just after the head's closing parenthesis

    def text(self, source: str) -> str:
        return source[self.start:self.end]


def _skip(source: str, i: int) -> int:
    """The offset of the next character that is neither blank nor in a comment."""
    while i < len(source):
        if source[i].isspace():
            i += 1
        elif source[i] == "#":
            while i < len(source) and source[i] != "\n":
                i += 1
        else:
            return i
    return i


def clauses(file: str, source: str) -> list[Clause]:
    """The top-level clauses of a Polar source, in order."""
    found: list[Clause] = []
    i = _skip(source, 0)
    while i < len(source):
        start, depth, head_end, j = i, 0, -1, i
        while j < len(source):
            char = source[j]
            if char == '"':
                j += 1
                while j < len(source) and source[j] != '"':
                    j += 2 if source[j] == "\\" else 1
            elif char == "#":
                while j < len(source) and source[j] != "\n":
                    j += 1
                continue
            elif char in "([{":
                depth += 1
            elif char in ")]}":
                depth -= 1
                if depth == 0 and head_end < 0 and char == ")":
                    head_end = j + 1
            elif char == ";" and depth == 0:
                break
            j += 1
        match = CALL.match(source, start)
        if match is None or head_end < 0:
            raise ValueError(f"{file}:{source.count(chr(10), 0, start) + 1}: not a clause")
        found.append(Clause(file, source.count("\n", 0, start) + 1, start, j, match.group(1),
                            head_end))
        i = _skip(source, j + 1)
    return found


def switched_off(clause: Clause, source: str) -> str:
    """The source with this one clause never succeeding (same rule, same variables)."""
    rest = source[clause.head_end:clause.end]
    body = re.match(r"\s*if\b", rest)
    if body is None:  # a fact
        mutant = source[clause.start:clause.end] + " if false"
    else:
        mutant = (source[clause.start:clause.head_end] + " if false and ("
                  + rest[body.end():] + ")")
    return source[:clause.start] + mutant + source[clause.end:]


def reachable(all_clauses: Iterable[Clause], sources: dict[str, str],
              root: str = DECISION_RULE) -> set[str]:
    calls: dict[str, set[str]] = {}
    for clause in all_clauses:
        body = clause.text(sources[clause.file])[clause.head_end - clause.start:]
        calls.setdefault(clause.name, set()).update(
            name for name in CALL.findall(body) if name not in _NOT_RULES)
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(calls.get(name, ()))
    return seen & set(calls)


def _asked(suites: Iterable[Suite]) -> list[tuple[Case, FactIndex]]:
    """Every case with its world (built once for all the policies asked), the cases of
    one record shape together: a switched-off clause that one of them notices is then
    noticed after asking the policy about one shape, not about every shape before it."""
    by_shape: dict[bytes, list[tuple[Case, FactIndex]]] = {}
    for suite in suites:
        for case in suite.cases:
            index, request = case.fact_index(), case.request
            with index.reading() as view:
                record = policy_record(view, request.user, request.client, request.purpose,
                                       to_micros(case.now), request.owner)
            by_shape.setdefault(record_shape(record)[0], []).append((case, index))
    return [asked for cases in by_shape.values() for asked in cases]


def _noticed(policy: Evaluator, asked: list[tuple[Case, FactIndex]]) -> bool:
    """Whether some case fails under `policy`."""
    shapes: dict[bytes, Outcomes] = {}
    for case, index in asked:
        made = Decider(policy, index, shapes=shapes).check(
            [case.request], case.now, Asker()).decisions[0]
        if made.reason != case.expect_reason:
            return True
    return False


@dataclass(frozen=True, slots=True)
class Coverage:
    clauses: tuple[tuple[Clause, bool], ...]  # every counted clause, exercised or not
    texts: dict[str, str]  # the sources, by file name
    exempt: dict[tuple[str, int], str]  # (file, line) of a clause -> why it is exempt

    def rules(self) -> dict[str, bool]:
        """Rule name -> exercised (some clause of it is)."""
        found: dict[str, bool] = {}
        for clause, exercised in self.clauses:
            found[clause.name] = found.get(clause.name, False) or exercised
        return found

    def missing(self) -> list[Clause]:
        """The clauses no case exercises and that are not exempt."""
        return [clause for clause, exercised in self.clauses
                if not exercised and (clause.file, clause.line) not in self.exempt]

    @property
    def ok(self) -> bool:
        return not self.missing()


def exemptions(file: str, source: str, found: list[Clause]) -> dict[tuple[str, int], str]:
    """The clauses under a `# coverage-exempt:` comment, and the clauses of the same
    rule that follow them line by line."""
    lines = source.splitlines()
    exempt: dict[tuple[str, int], str] = {}
    previous: Clause | None = None
    for clause in found:
        why = None
        number = clause.line - 2  # the line above, 0-based
        while number >= 0 and lines[number].lstrip().startswith("#"):
            match = _EXEMPT.search(lines[number])
            if match:
                why = match.group(1).strip()
            number -= 1
        if (why is None and previous is not None and previous.name == clause.name
                and (file, previous.line) in exempt
                and source.count("\n", 0, previous.end) + 1 == clause.line - 1):
            why = exempt[(file, previous.line)]
        if why is not None:
            exempt[(file, clause.line)] = why
        previous = clause
    return exempt


def measure(policy_dir: Path, suites: list[Suite]) -> Coverage:
    """Switch off each counted clause in turn and see whether the suites notice."""
    files = sorted(p for p in Path(policy_dir).glob("*.polar") if p.is_file())
    sources = {path.name: path.read_text(encoding="utf-8") for path in files}
    every = [c for name, text in sources.items() for c in clauses(name, text)]
    counted = reachable(every, sources)
    asked = _asked(suites)
    if _noticed(load_policy(policy_dir), asked):
        raise PolicyError("the suites fail on the policy itself: run pdp policy test")
    results: list[tuple[Clause, bool]] = []
    with tempfile.TemporaryDirectory(prefix="pdp-coverage-") as work:
        scratch = Path(work)
        for path in files:
            shutil.copy(path, scratch / path.name)
        for clause in every:
            if clause.name not in counted:
                continue
            (scratch / clause.file).write_text(switched_off(clause, sources[clause.file]),
                                               encoding="utf-8")
            try:
                noticed = _noticed(load_policy(scratch), asked)
            except PolicyError:
                noticed = True  # a policy that no longer loads fails every case
            finally:
                (scratch / clause.file).write_text(sources[clause.file], encoding="utf-8")
            results.append((clause, noticed))
    exempt: dict[tuple[str, int], str] = {}
    for name, text in sources.items():
        exempt.update(exemptions(name, text, [c for c in every if c.file == name]))
    return Coverage(tuple(results), sources, exempt)


def format_coverage(coverage: Coverage) -> str:
    lines = []
    for clause, exercised in coverage.clauses:
        if exercised:
            continue
        first = clause.text(coverage.texts[clause.file]).splitlines()[0].strip()
        why = coverage.exempt.get((clause.file, clause.line))
        if why is None:
            lines.append(f"NOT EXERCISED: {clause.file}:{clause.line}: {first}")
        else:
            lines.append(f"exempt: {clause.file}:{clause.line}: {first} ({why})")
    rules = coverage.rules()
    done = sum(1 for _, exercised in coverage.clauses if exercised)
    lines.append(f"coverage: {sum(rules.values())} of {len(rules)} rules, {done} of "
                 f"{len(coverage.clauses)} clauses exercised by the suites, "
                 f"{len(coverage.missing())} not exercised and not exempt")
    return "\n".join(lines)

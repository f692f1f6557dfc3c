"""Policy tests as data: YAML suites of cases, each a world of facts, a moment, a request
and the decision expected (in the manner of Cerbos test suites).

A suite file (``*.yaml`` anywhere under the suites directory)::

    name: rule 3 — active personal grant
    description: optional text
    facts:                      # the base world, by kind in plural and then by id
      areas: {kuopio: {...}}    # areas, agreements, users, grants, clients, relationships
      ...
    cases:
      - name: grant that ended is not counted
        description: optional text
        now: "2026-06-01T09:00:00+03:00"     # RFC 3339 with an offset
        facts: {grants: {g-1: {...}}}        # optional: whole facts replaced (or added) by
                                             # id; null deletes the fact for this case
        request: {user: u-1, client: c-1, category: name_contact,
                  action: read, purpose: coaching,   # action: read by default;
                  owner: "749"}                      # purpose, owner (who produced
                                                     # the record: a municipality code
                                                     # or authority) omitted: none stated
        expect: {decision: false, reason: no_active_grant}

Unknown keys are refused at every level, and so are duplicate keys; facts are validated
as the facts API validates them (`pdp.model.facts.parse_fact`). Times are kept as text by the
YAML reader and parsed here, so ``now`` must be a quoted or plain RFC 3339 string.

Each case is decided on its own fact index, built from the case's world through the same
change-log path the service uses (`FactIndex.apply`), by the service's own decision entry
(`pdp.engine.decider.Decider.check`: memo and record shapes included), so a suite that
passes — and the reload gate that runs the suites — vouches for the path that serves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from pdp.engine.authzen import Owner
from pdp.engine.core import DecisionRequest
from pdp.engine.decider import Asker, Checked, Decider
from pdp.engine.factindex import FactIndex
from pdp.engine.policy_engine import Evaluator
from pdp.model.facts import COLLECTIONS, Fact, dump_fact, parse_fact
from pdp.model.vocab import REASONS, Action, Category
from pdp.store.protocols import ChangeRecord

__all__ = [
    "Case",
    "CaseResult",
    "Report",
    "Suite",
    "SuiteError",
    "SuiteLoader",
    "check_case",
    "format_report",
    "load_suite",
    "load_suites",
    "run_case",
    "run_suites",
]

SUITE_GLOB = "*.yaml"

# RFC 3339 date-time with a required offset; fractions down to the microsecond, the
# resolution at which the policy compares times.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})$"
)

FactId = Annotated[str, StringConstraints(min_length=1, max_length=128,
                                          pattern=r"^[A-Za-z0-9_.\-]+$")]
MunicipalityCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{3}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=300)]
Text = Annotated[str, StringConstraints(max_length=5000)]
RequestId = Annotated[str, StringConstraints(min_length=1, max_length=128)]

# Keys the facts API tolerates in a body (echoed from a GET) but that are no part of a
# fact; a suite states facts only, so they are refused here.
_NOT_FACT_KEYS = ("id", "kind", "facts_version")


class SuiteError(Exception):
    """A suite file could not be read or is invalid; names the file."""

    def __init__(self, file: Path | str, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file = Path(file)
        self.message = message


# -- YAML ----------------------------------------------------------------------------

_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class SuiteLoader(yaml.SafeLoader):
    """Safe YAML for suites: times stay text (validated here, not by the YAML reader),
    and a key given twice in one mapping is an error, not a silent overwrite."""

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        if not getattr(node, "_pdp_checked", False):
            seen: dict[tuple[str, str], yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key_node.value!r}", key_node.start_mark)
                seen[key] = key_node
            node._pdp_checked = True  # type: ignore[attr-defined]
        super().flatten_mapping(node)


SuiteLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


# -- the file format -----------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


FactData = dict[str, Any]


class _BaseFacts(_Model):
    areas: dict[FactId, FactData] = Field(default_factory=dict)
    agreements: dict[MunicipalityCode, FactData] = Field(default_factory=dict)
    users: dict[FactId, FactData] = Field(default_factory=dict)
    grants: dict[FactId, FactData] = Field(default_factory=dict)
    clients: dict[FactId, FactData] = Field(default_factory=dict)
    relationships: dict[FactId, FactData] = Field(default_factory=dict)


class _OverrideFacts(_Model):
    areas: dict[FactId, FactData | None] = Field(default_factory=dict)
    agreements: dict[MunicipalityCode, FactData | None] = Field(default_factory=dict)
    users: dict[FactId, FactData | None] = Field(default_factory=dict)
    grants: dict[FactId, FactData | None] = Field(default_factory=dict)
    clients: dict[FactId, FactData | None] = Field(default_factory=dict)
    relationships: dict[FactId, FactData | None] = Field(default_factory=dict)


class _Request(_Model):
    user: RequestId
    client: RequestId
    category: Category
    action: Action = "read"
    purpose: str | None = None  # None: the request states no purpose
    owner: Owner | None = None  # None: the request names no owner of the record


class _Expect(_Model):
    decision: StrictBool
    reason: str

    @field_validator("reason")
    @classmethod
    def _known_reason(cls, reason: str) -> str:
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}; one of: {', '.join(REASONS)}")
        return reason

    @model_validator(mode="after")
    def _consistent(self) -> _Expect:
        if self.decision != (self.reason == "allowed"):
            raise ValueError(f"decision {str(self.decision).lower()} does not fit reason "
                             f"{self.reason!r} (only 'allowed' allows)")
        return self


class _Case(_Model):
    name: Name
    description: Text = ""
    now: AwareDatetime
    facts: _OverrideFacts = Field(default_factory=_OverrideFacts)
    request: _Request
    expect: _Expect

    @field_validator("now", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        if not isinstance(value, str) or not _RFC3339.fullmatch(value):
            raise ValueError("must be an RFC 3339 date-time with an offset, "
                             "e.g. \"2026-06-01T09:00:00+03:00\"")
        return value


class _Suite(_Model):
    name: Name
    description: Text = ""
    facts: _BaseFacts = Field(default_factory=_BaseFacts)
    cases: list[_Case] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_case_names(self) -> _Suite:
        seen: set[str] = set()
        for case in self.cases:
            if case.name in seen:
                raise ValueError(f"case name {case.name!r} is used twice")
            seen.add(case.name)
        return self


# -- loaded suites -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """One case, ready to run: its whole world of facts (base with its overrides)."""

    name: str
    description: str
    now: datetime
    facts: Mapping[str, Mapping[str, Fact]]  # kind (singular) -> id -> fact
    request: DecisionRequest
    expect_decision: bool
    expect_reason: str

    def changes(self) -> list[ChangeRecord]:
        """The case's world as a change log, one version per fact."""
        records: list[ChangeRecord] = []
        for kind, facts in self.facts.items():
            for fact_id, fact in facts.items():
                records.append(ChangeRecord(len(records) + 1, kind, fact_id, dump_fact(fact)))
        return records

    def fact_index(self) -> FactIndex:
        index = FactIndex()
        index.apply(self.changes())
        return index


@dataclass(frozen=True, slots=True)
class Suite:
    name: str
    description: str
    file: Path
    cases: tuple[Case, ...]


_MAX_ERRORS = 5  # errors listed per file; the rest are counted


def _where(loc: tuple[int | str, ...], raw: Any) -> str:
    """'cases[2] (case name).request.purpose' for a pydantic error location."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and 0 <= item < len(node):
                node = node[item]
                if isinstance(node, dict) and isinstance(node.get("name"), str):
                    label += f" ({node['name']!r})"
            else:
                node = None
            if parts:
                parts[-1] += label
            else:
                parts.append(label)
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts)


def _describe(error: ValidationError, raw: Any, prefix: str = "") -> str:
    """Pydantic's errors as '<where>: <what>', joined; `prefix` names the enclosing part."""
    lines = []
    for item in error.errors(include_url=False):
        where = ".".join(part for part in (prefix, _where(tuple(item["loc"]), raw)) if part)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = f"unknown key {str(item['loc'][-1])!r}"
        elif item["type"] == "missing":
            message = f"missing key {str(item['loc'][-1])!r}"
        lines.append(f"{where or '(top level)'}: {message}")
    if len(lines) > _MAX_ERRORS:
        lines[_MAX_ERRORS:] = [f"and {len(lines) - _MAX_ERRORS} more"]
    return "; ".join(lines)


def _parse(file: Path, where: str, plural: str, fact_id: str, data: FactData) -> Fact:
    kind = COLLECTIONS[plural]
    for key in _NOT_FACT_KEYS:
        if key in data:
            raise SuiteError(file, f"{where}facts.{plural}.{fact_id}: unknown key {key!r} "
                                   "(the id is the key of the fact; give the fact's fields only)")
    try:
        return parse_fact(kind, data)
    except ValidationError as error:
        raise SuiteError(file, _describe(error, data, f"{where}facts.{plural}.{fact_id}")
                         ) from error


def load_suite(file: Path) -> Suite:
    """Read and validate one suite file; raise SuiteError naming the file."""
    try:
        with file.open(encoding="utf-8") as stream:  # marks in YAML errors name the file
            raw = yaml.load(stream, Loader=SuiteLoader)  # a SafeLoader subclass
    except (OSError, UnicodeDecodeError) as error:
        raise SuiteError(file, f"cannot read: {error}") from error
    except yaml.YAMLError as error:
        raise SuiteError(file, f"not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise SuiteError(file, "a suite is a mapping with keys name, description, facts, cases")
    try:
        model = _Suite.model_validate(raw)
    except ValidationError as error:
        raise SuiteError(file, _describe(error, raw)) from error

    base: dict[str, dict[str, Fact]] = {}
    for plural in COLLECTIONS:
        entries: dict[str, FactData] = getattr(model.facts, plural)
        base[plural] = {fact_id: _parse(file, "", plural, fact_id, data)
                        for fact_id, data in entries.items()}

    cases: list[Case] = []
    for number, case in enumerate(model.cases):
        where = f"cases[{number}] ({case.name!r}): "
        world: dict[str, Mapping[str, Fact]] = {}
        for plural in COLLECTIONS:
            facts = dict(base[plural])
            overrides: dict[str, FactData | None] = getattr(case.facts, plural)
            for fact_id, data in overrides.items():
                if data is None:
                    if fact_id not in facts:
                        raise SuiteError(file, f"{where}facts.{plural}.{fact_id}: deletes a "
                                               "fact that is not in the suite's facts")
                    del facts[fact_id]
                else:
                    facts[fact_id] = _parse(file, where, plural, fact_id, data)
            world[COLLECTIONS[plural]] = facts
        request = DecisionRequest(
            user=case.request.user,
            client=case.request.client,
            category=case.request.category,
            action=case.request.action,
            purpose=case.request.purpose or "",
            owner=case.request.owner or "",
        )
        cases.append(Case(case.name, case.description, case.now, world, request,
                          case.expect.decision, case.expect.reason))
    return Suite(model.name, model.description, file, tuple(cases))


def load_suites(directory: Path) -> list[Suite]:
    """Every suite under `directory` (recursively), in path order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SuiteError(directory, "not a directory")
    files = sorted(p for p in directory.rglob(SUITE_GLOB) if p.is_file())
    if not files:
        raise SuiteError(directory, f"no {SUITE_GLOB} suite files")
    return [load_suite(file) for file in files]


# -- running -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseResult:
    suite: str
    case: str
    file: Path
    passed: bool
    expected_decision: bool
    expected_reason: str
    actual_decision: bool
    actual_reason: str
    grant: str | None = None  # the grant an allow used


@dataclass(frozen=True, slots=True)
class Report:
    results: tuple[CaseResult, ...]
    policy_version: str

    @property
    def passed(self) -> int:
        return sum(1 for result in self.results if result.passed)

    @property
    def failed(self) -> int:
        return sum(1 for result in self.results if not result.passed)

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def ok(self) -> bool:
        return self.failed == 0


def check_case(policy: Evaluator, case: Case, asker: Asker | None = None) -> Checked:
    """The case decided as the service decides, on a decider of its own world."""
    return Decider(policy, case.fact_index()).check([case.request], case.now,
                                                     asker or Asker())


def run_case(policy: Evaluator, suite: Suite, case: Case) -> CaseResult:
    decision = check_case(policy, case).decisions[0]
    passed = (decision.decision == case.expect_decision
              and decision.reason == case.expect_reason)
    return CaseResult(suite.name, case.name, suite.file, passed, case.expect_decision,
                      case.expect_reason, decision.decision, decision.reason, decision.grant)


def run_suites(policy: Evaluator, suites: Iterable[Suite]) -> Report:
    results = [run_case(policy, suite, case) for suite in suites for case in suite.cases]
    return Report(tuple(results), policy.version)


def _outcome(decision: bool, reason: str) -> str:
    return f"{'allow' if decision else 'deny'} ({reason})"


def format_report(report: Report) -> str:
    """One line per case, then the summary line `N passed, M failed` alone at the end."""
    lines = []
    for result in report.results:
        line = f"{'PASS' if result.passed else 'FAIL'} {result.suite} :: {result.case}"
        if not result.passed:
            line += (f" — expected {_outcome(result.expected_decision, result.expected_reason)}"
                     f", got {_outcome(result.actual_decision, result.actual_reason)}"
                     f" [{result.file}]")
        lines.append(line)
    lines.append(f"{report.passed} passed, {report.failed} failed")
    return "\n".join(lines)

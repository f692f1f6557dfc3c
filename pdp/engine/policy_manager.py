"""The active policy of one process, and replacing it without a restart, gated by tests.

`PolicyManager.reload()` loads the policy directory into a fresh engine, checks that it
answers every category and action, runs the policy test suites (`<policy dir>/tests`)
against it and the property check of the decision cache's shape invariants
(pdp.engine.shape_check), and only when all pass swaps it in (one reference assignment:
decisions in flight finish on the engine they started with). Otherwise it raises
`PolicyRejected` with the syntax error's file and line or the failing cases, and the
current version keeps serving. Memoised answers carry their policy version, so none of
the old version is served after a swap (pdp.engine.decider).

`PolicyManager.put_in_force(by, facts)` is the domain's one way to activate: reload, record
who did it in the history (before the swap) and announce it to the other replicas; it
raises `Refused(POLICY_REJECTED)` when the policy may not go live. The HTTP routes and the
policy watch are thin wrappers around it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdp.engine.core import check_policy
from pdp.engine.policy_engine import CompiledPolicy, Evaluator, PolicyError, load_policy
from pdp.engine.policy_tests import Report, SuiteError, load_suites, run_suites
from pdp.engine.shape_check import STAGED, shape_mismatches
from pdp.model.clock import utcnow
from pdp.model.errors import POLICY_REJECTED, Refused
from pdp.store.protocols import BusUnavailable, Event

if TYPE_CHECKING:
    from pdp.engine.facts_service import FactService

log = logging.getLogger(__name__)


class PolicyRejected(Exception):
    """A policy that may not go live; `details` say why (API.md error details)."""

    def __init__(self, message: str, details: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def unsafe(self) -> bool:
        """Refused for a construct outside the safe subset of Polar (nothing of it ran)."""
        return any("construct" in detail for detail in self.details)


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What is live: the engine, when it went live and what its suites said."""

    policy: CompiledPolicy
    loaded_at: datetime
    report: Report | None  # None: went live without running the suites (at start)

    def describe(self) -> dict[str, Any]:
        report = self.report
        return {
            "version": self.policy.version,
            "loaded_at": self.loaded_at.isoformat(),
            "files": [path.name for path in self.policy.files],
            "suites": None if report is None else {
                "passed": report.passed, "failed": report.failed, "total": report.total},
        }


def _report_details(report: Report) -> list[dict[str, Any]]:
    return [{"suite": r.suite, "case": r.case, "file": str(r.file),
             "expected": {"decision": r.expected_decision, "reason": r.expected_reason},
             "actual": {"decision": r.actual_decision, "reason": r.actual_reason}}
            for r in report.results if not r.passed]


def refused_load(error: PolicyError) -> PolicyRejected:
    """The refusal of a policy that does not load (or is outside the safe subset)."""
    detail: dict[str, Any] = {"message": error.message}
    if error.file is not None:
        detail.update(file=error.file, line=error.line, column=error.column)
    if error.construct is not None:
        detail.update(construct=error.construct)
    return PolicyRejected(f"the policy does not load: {error}", [detail])


def vet(policy_dir: Path, suites_dir: Path | None = None) -> tuple[CompiledPolicy, Report]:
    """Load, check and test a policy directory; PolicyRejected unless all is well."""
    try:
        policy = load_policy(policy_dir)
    except PolicyError as error:
        raise refused_load(error) from None
    return policy, vet_policy(policy, suites_dir or policy_dir / "tests")


def vet_policy(policy: Evaluator, suites_dir: Path, failure: Callable[[], str] = str
               ) -> Report:
    """Check that a loaded policy answers everything and passes every case of the suites
    in `suites_dir`; PolicyRejected unless all is well. `failure()` says why queries
    failed, when the policy can tell (a sandboxed candidate out of time)."""
    try:
        check_policy(policy)
    except PolicyError as error:
        raise refused_load(error) from None
    try:
        suites = load_suites(suites_dir)
    except SuiteError as error:
        raise PolicyRejected(f"the policy's test suites do not load: {error}",
                             [{"message": str(error)}]) from None
    report = run_suites(policy, suites)
    if report.total == 0:
        raise PolicyRejected("the policy has no test cases", [])
    if not report.ok:
        why = failure()
        raise PolicyRejected(f"{report.failed} of {report.total} policy test cases fail"
                             + (f" ({why})" if why else ""), _report_details(report))
    check_shapes(policy)
    return report


def check_shapes(policy: Evaluator) -> None:
    """PolicyRejected if the policy answers two records of one shape differently (the
    property check of pdp.engine.shape_check): the decision cache would serve one
    record the answer of another; or if, asked in two stages, it answers a record
    otherwise than asked whole."""
    mismatches = shape_mismatches(policy)
    if mismatches and mismatches[0].change == STAGED:
        raise PolicyRejected(
            "asked in two stages, the policy answers otherwise than `decision` asked "
            "whole, so the service would decide otherwise than its rules: "
            + mismatches[0].describe()["message"], [m.describe() for m in mismatches])
    if mismatches:
        raise PolicyRejected(
            "the policy answers records of one shape differently, so the decision cache "
            "would serve one the answer of another (it must keep the invariants in the "
            "header of policies/rules.polar): " + mismatches[0].describe()["message"],
            [m.describe() for m in mismatches])


@dataclass
class PolicyManager:
    """Owns the live policy of a process; `swap` is how every other part learns of it."""

    policy_dir: Path
    swap: Callable[[CompiledPolicy], None]
    state: PolicyState
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def started(cls, policy_dir: Path, policy: CompiledPolicy,
                swap: Callable[[CompiledPolicy], None]) -> PolicyManager:
        return cls(policy_dir, swap, PolicyState(policy, utcnow(), None))

    def reload(self, before_swap: Callable[[str, list[str]], None] | None = None
               ) -> tuple[PolicyState, bool]:
        """Vet the policy directory and make it live; (the live state, whether it
        changed). Raises PolicyRejected and changes nothing if it may not go live.
        `before_swap(version, files)` runs just before a new version goes live (to record
        it); if it raises, nothing changes."""
        with self._lock:  # one reload at a time
            policy, report = vet(self.policy_dir)
            changed = policy.version != self.state.policy.version
            if changed:
                if before_swap is not None:
                    before_swap(policy.version, [path.name for path in policy.files])
                self.swap(policy)
                self.state = PolicyState(policy, utcnow(), report)
            else:
                self.state = PolicyState(self.state.policy, self.state.loaded_at, report)
            return self.state, changed

    def put_in_force(self, by: str, facts: FactService) -> dict[str, Any]:
        """Vet the policy directory and put it in force here and, through the bus, on
        every replica; `by` is who asked (recorded as the `policy.activated` event's
        actor). Refused(POLICY_REJECTED), and nothing changes, if it may not go live.
        Blocking: an async caller runs it in a thread."""
        before = self.state.policy.version

        def record(version: str, files: list[str]) -> None:
            # Who put which policy in force is part of the history (written before the
            # swap: if it cannot be written, the policy does not change).
            facts.write([], [Event("policy.activated", "policy", version, "", by, None,
                                   {"version": version, "previous": before,
                                    "files": files})])

        try:
            state, changed = self.reload(record)
        except PolicyRejected as error:
            log.warning("policy reload by %s refused: %s", by, error.message)
            raise Refused(POLICY_REJECTED, error.message, error.details) from None
        notified = None
        if changed:
            log.info("policy %s in force (was %s), by %s", state.policy.version, before, by)
            if facts.bus is not None:
                try:
                    facts.bus.publish_policy(state.policy.version)
                    notified = True
                except BusUnavailable as error:
                    log.warning("policy %s not announced to the other replicas: %s",
                                state.policy.version, error)
                    notified = False
        return {**state.describe(), "changed": changed, "replicas_notified": notified}

    def follow(self, version: str) -> None:
        """Another replica put `version` in force: reload this replica's policy
        directory (vetted the same way) unless it is in force here already."""
        if version == self.state.policy.version:
            return
        try:
            state, _ = self.reload()
        except PolicyRejected as error:
            log.error("policy %s is in force elsewhere, but here it is refused: %s",
                      version, error.message)
            return
        if state.policy.version != version:
            log.error("policy %s is in force elsewhere, but this replica's files are "
                      "version %s", version, state.policy.version)
        else:
            log.info("policy %s in force (following another replica)", version)

"""A candidate policy in shadow: live decisions are also decided with it, off the hot path,
and where it would decide otherwise is counted and kept as examples (issue 9, part 3).

`Candidates` holds at most one candidate. `upload` vets it like a reload (it must load
and pass every case of the live policy's suites) and starts its `Shadow`; the hot path
only calls `Shadow.offer` — a sampled, non-blocking put into a bounded queue (a full
queue drops and counts) — and a worker thread decides the request with the candidate's
own memoised decider and compares decision and reason. `promote` writes the candidate's
files into the policy directory for a reload to put them in force; `discard` drops it.
"""

from __future__ import annotations

import contextlib
import queue
import random
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pdp.engine.core import Decision, DecisionRequest
from pdp.engine.decider import Decider
from pdp.engine.factindex import FactIndex
from pdp.engine.metrics import Metrics
from pdp.engine.policy_engine import PolicyError
from pdp.engine.policy_manager import refused_load, vet_policy
from pdp.engine.policy_sandbox import SandboxedPolicy, SandboxLimits
from pdp.engine.policy_tests import Report
from pdp.model.clock import utcnow
from pdp.model.errors import INVALID_REQUEST, NOT_FOUND, UNAVAILABLE, Refused

MAX_CANDIDATE_RUNS = 2
FILE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}\.polar$")
MAX_FILE_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class Divergence:
    request: DecisionRequest
    at: datetime
    active: Decision
    candidate: Decision

    def describe(self) -> dict[str, Any]:
        r = self.request
        return {"user": r.user, "client": r.client, "category": r.category,
                "action": r.action, "purpose": r.purpose, "at": self.at.isoformat(),
                "active": {"decision": self.active.decision, "reason": self.active.reason,
                           "policy_version": self.active.policy_version},
                "candidate": {"decision": self.candidate.decision,
                              "reason": self.candidate.reason}}


@dataclass
class Shadow:
    """One candidate evaluated beside the active policy."""

    policy: SandboxedPolicy
    files: dict[str, str]
    facts: FactIndex
    metrics: Metrics
    sample_rate: float = 1.0
    queue_size: int = 10_000
    keep_examples: int = 20
    uploaded_at: datetime = field(default_factory=utcnow)
    uploaded_by: str = ""
    queued: int = 0
    evaluated: int = 0
    diverged: int = 0
    dropped: int = 0
    examples: deque[Divergence] = field(init=False)
    _queue: queue.Queue[tuple[DecisionRequest, datetime, Decision] | None] = field(init=False)
    _decider: Decider[SandboxedPolicy] = field(init=False)
    _thread: threading.Thread = field(init=False)
    _stopped: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.examples = deque(maxlen=self.keep_examples)
        self._queue = queue.Queue(maxsize=self.queue_size)
        self._decider = Decider(self.policy, self.facts)
        self._thread = threading.Thread(target=self._work, name="pdp-shadow", daemon=True)
        self._thread.start()

    @property
    def version(self) -> str:
        return self.policy.version

    def offer(self, request: DecisionRequest, now: datetime, made: Decision) -> None:
        """On the hot path: never blocks, never raises."""
        if self._stopped or (self.sample_rate < 1.0 and random.random() >= self.sample_rate):
            return
        try:
            self._queue.put_nowait((request, now, made))
            self.queued += 1
        except queue.Full:
            self.dropped += 1
            self.metrics.shadow_dropped.inc()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stopped:
                self.policy.close()
                return
            request, now, made = item
            theirs = self._decider.decide(request, now)
            self.evaluated += 1
            self.metrics.shadow_evaluations.inc()
            if (theirs.decision, theirs.reason) != (made.decision, made.reason):
                self.diverged += 1
                self.metrics.shadow_divergences.labels(made.policy_version,
                                                       self.version).inc()
                self.examples.append(Divergence(request, now, made, theirs))

    def stop(self) -> None:
        """Stop evaluating (what is still queued is dropped); never blocks."""
        self._stopped = True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wakes the worker if it waits on an empty queue

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "files": sorted(self.files),
                "uploaded_at": self.uploaded_at.isoformat(), "uploaded_by": self.uploaded_by,
                "sample_rate": self.sample_rate, "evaluated": self.evaluated,
                "diverged": self.diverged, "dropped": self.dropped,
                # The examples are personal data (who, whose record): read them with
                # `examples()`, justified and recorded (GET .../{version}/examples).
                "examples_held": len(self.examples)}

    def described_examples(self) -> list[dict[str, Any]]:
        return [d.describe() for d in list(self.examples)]


class CandidateError(Refused):
    """A candidate refused before it ran: bad files, too many at once, or no such one."""


def _bad_files(message: str) -> CandidateError:
    return CandidateError(INVALID_REQUEST, f"files: {message}",
                          [{"field": "files", "message": message}])


@dataclass
class Candidates:
    """At most one candidate in shadow, for one process."""

    policy_dir: Path
    facts: FactIndex
    metrics: Metrics
    sample_rate: float = 1.0
    queue_size: int = 10_000
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    budget_seconds: float = 60.0
    current: Shadow | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Suite runs of candidates at once (each a sandbox process); more wait their turn.
    _runs: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(MAX_CANDIDATE_RUNS))

    def vet(self, files: dict[str, str]) -> tuple[SandboxedPolicy, Report]:
        """Load the files as a policy in a sandbox process and run the live policy's
        suites on it, all within the candidate time budget. Raises CandidateError
        (invalid_request) for bad names or sizes and PolicyRejected when it does not load
        (or is outside the safe subset of Polar) or fails a case. The caller closes the policy."""
        if not files:
            raise _bad_files("at least one *.polar file")
        for name, text in files.items():
            if not FILE_NAME.fullmatch(name):
                raise _bad_files(f"{name!r} is not a *.polar file name")
            if len(text.encode()) > MAX_FILE_BYTES:
                raise _bad_files(f"{name} is larger than {MAX_FILE_BYTES} bytes")
        if not self._runs.acquire(timeout=self.budget_seconds):
            raise CandidateError(UNAVAILABLE, f"{MAX_CANDIDATE_RUNS} candidates are being "
                                 "tested; try again later", retry_after=5)
        try:
            try:
                policy = SandboxedPolicy(files, self.limits)
            except PolicyError as error:
                raise refused_load(error) from None
            try:
                with policy.budget(self.budget_seconds):
                    report = vet_policy(policy, self.policy_dir / "tests",
                                        lambda: policy.failure)
            except BaseException:
                policy.close()
                raise
            return policy, report
        finally:
            self._runs.release()

    def test(self, files: dict[str, str]) -> tuple[str, Report]:
        """`vet` and nothing more: (version, report); the sandbox is stopped after."""
        policy, report = self.vet(files)
        policy.close()
        return policy.version, report

    def upload(self, files: dict[str, str], by: str) -> Shadow:
        """Vet the files (`vet`) and put them in shadow, in place of any candidate
        before."""
        policy, _ = self.vet(files)
        shadow = Shadow(policy, dict(files), self.facts, self.metrics, self.sample_rate,
                        self.queue_size, uploaded_by=by)
        with self._lock:
            old, self.current = self.current, shadow
        if old is not None:
            old.stop()
        return shadow

    def take(self, version: str) -> Shadow:
        """Remove the candidate `version` from shadow; CandidateError (not_found) if it is not
        the one in shadow."""
        with self._lock:
            if self.current is None or self.current.version != version:
                raise CandidateError(NOT_FOUND, f"no candidate {version!r} in shadow")
            shadow, self.current = self.current, None
        shadow.stop()
        return shadow

    def write_files(self, shadow: Shadow) -> None:
        """Make the candidate's files the policy directory's *.polar files."""
        for path in self.policy_dir.glob("*.polar"):
            if path.name not in shadow.files:
                path.unlink()
        for name, text in shadow.files.items():
            (self.policy_dir / name).write_text(text, encoding="utf-8")


"""The decision core: facts + request + time -> decision and reason. No HTTP, no storage.

`decide_all` asks the policy once for a user x client x purpose and returns the outcome
of every category and action, with the span of time in which that answer holds;
`decide` picks one request's outcome out of it. Both fail closed: a policy that errs or
gives no answer yields a deny with reason `policy_error`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pdp.engine.factindex import FactIndex
from pdp.engine.policy_engine import Evaluator, Outcome, PolicyError
from pdp.engine.policy_input import Record, narrowed, policy_record, time_window
from pdp.model.clock import to_micros
from pdp.model.vocab import ACTIONS, CATEGORIES, REASONS

# The reason of a deny that the policy did not give because it failed (an extension of
# API.md's reasons; never an allow).
POLICY_ERROR = "policy_error"


Outcomes = dict[tuple[str, str], tuple[str, str]]


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    user: str
    client: str
    category: str
    action: str
    purpose: str  # "" when the request states none
    # Who produced the record, as the request names it (resource.properties.owner): a
    # municipality code or "authority"; "" when it names none. Writes need it (rule 11).
    owner: str = ""
    # Whether the request stated a purpose, even "" (the decision log keeps what was
    # stated: "" stated is not the same record as none); not part of what is asked.
    purpose_stated: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Decision:
    decision: bool
    reason: str
    policy_version: str
    facts_version: int
    grant: str | None = None


@dataclass(frozen=True, slots=True)
class DecisionTable:
    """Every category x action outcome for one user x client x purpose, valid for
    `now` in [valid_from, valid_until) as long as the facts it read are unchanged."""

    outcomes: Outcomes  # (category, action) -> (reason, grant)
    policy_version: str
    facts_version: int
    valid_from: int
    valid_until: int

    def at_version(self, facts_version: int) -> DecisionTable:
        """The same answer, reported as based on facts at `facts_version` (the facts it
        read are unchanged up to that version)."""
        if facts_version == self.facts_version:
            return self
        return DecisionTable(self.outcomes, self.policy_version, facts_version,
                             self.valid_from, self.valid_until)

    def pick(self, category: str, action: str) -> Decision:
        reason, grant = self.outcomes.get((category, action), (POLICY_ERROR, ""))
        allowed = reason == "allowed"
        return Decision(allowed, reason, self.policy_version, self.facts_version,
                        grant if allowed else None)


def _table(outcomes: list[Outcome]) -> dict[tuple[str, str], tuple[str, str]]:
    """Keep the first outcome per category x action (an unbound category or action
    stands for every one); anything unexpected fails closed."""
    table: dict[tuple[str, str], tuple[str, str]] = {}
    for outcome in outcomes:
        if outcome.reason not in REASONS or (outcome.reason == "allowed") != bool(outcome.grant):
            answer = (POLICY_ERROR, "")
        else:
            answer = (outcome.reason, outcome.grant)
        categories = CATEGORIES if outcome.category is None else (outcome.category,)
        actions = ACTIONS if outcome.action is None else (outcome.action,)
        for key in ((c, a) for c in categories for a in actions):
            table.setdefault(key, answer)
    return table


def evaluate_outcomes(policy: Evaluator, record: Record) -> Outcomes | None:
    """Every category x action outcome of one record; None if the policy failed."""
    try:
        return _table(policy.evaluate(record))
    except PolicyError:
        return None


def gate_outcomes(policy: Evaluator, record: Record) -> Outcomes | None:
    """The first stage of a staged decision (policy_vet.StagePlan) about a record
    narrowed to its fields: the failing rule's outcome for every category and action,
    {} when none fails, None if the policy failed."""
    try:
        failing = policy.gate(record)  # type: ignore[attr-defined]
    except PolicyError:
        return None
    return {} if failing is None else _table([failing])


def table_outcomes(policy: Evaluator, record: Record) -> Outcomes | None:
    """The second stage, about a record narrowed to its fields: every category x action
    outcome of rules 9-11; None if the policy failed."""
    try:
        return _table(policy.category_outcomes(record))  # type: ignore[attr-defined]
    except PolicyError:
        return None


def staged_outcomes(policy: Evaluator, record: Record) -> Outcomes | None:
    """`evaluate_outcomes` asked in the two stages of a staged decision, each about the
    record narrowed to the fields its rules read, without any memo: what the decider
    does (keeping each stage's answers by shape), to be compared with the plain query
    (pdp.engine.shape_check in the reload gate; the property tests)."""
    plan = policy.plan  # type: ignore[attr-defined]
    gate = gate_outcomes(policy, narrowed(record, plan.gate_fields))
    if gate is None or gate:
        return gate
    return table_outcomes(policy, narrowed(record, plan.table_fields))


def table_for(policy: Evaluator, record: Record, outcomes: Outcomes | None,
              facts_version: int) -> DecisionTable:
    """The decision table of a record from its outcomes, valid while now stays in the
    record's time window (a failed policy: an empty window, never reused)."""
    if outcomes is None:
        return DecisionTable({}, policy.version, facts_version, record["now"], record["now"])
    start, end = time_window(record)
    return DecisionTable(outcomes, policy.version, facts_version, start, end)


def evaluate_record(policy: Evaluator, record: Record, facts_version: int) -> DecisionTable:
    """Ask the policy about one shaped record (see pdp.engine.policy_input)."""
    return table_for(policy, record, evaluate_outcomes(policy, record), facts_version)


def decide_all(policy: Evaluator, facts: FactIndex, user: str, client: str,
               purpose: str, now: datetime, owner: str = "") -> DecisionTable:
    """One policy query for all categories and actions of a user x client x purpose (and
    the record's owner the request names)."""
    with facts.reading() as view:
        record = policy_record(view, user, client, purpose, to_micros(now), owner)
        facts_version = view.version
    return evaluate_record(policy, record, facts_version)


def decide(policy: Evaluator, facts: FactIndex, request: DecisionRequest,
           now: datetime) -> Decision:
    """The decision for one request at `now`: the pure core, without memo, shapes or a
    record (benchmarks measure it raw). The service, the CLI, explain, search and the
    suites decide through `pdp.engine.decider.Decider.check`, never through this."""
    table = decide_all(policy, facts, request.user, request.client, request.purpose, now,
                       request.owner)
    return table.pick(request.category, request.action)


def check_policy(policy: Evaluator) -> None:
    """Raise PolicyError unless the policy answers every category and action with a
    known reason (run once, on load, before a policy is put to use)."""
    empty = FactIndex()
    record = policy_record(empty, "", "", "", 0)
    table = _table(policy.evaluate(record))
    missing = [(c, a) for c in CATEGORIES for a in ACTIONS if (c, a) not in table]
    if missing:
        raise PolicyError(f"decision/5 gives no answer for {missing[0][0]}/{missing[0][1]}")
    bad = {reason for reason, _ in table.values() if reason == POLICY_ERROR}
    if bad:
        raise PolicyError("decision/5 answers with an unknown reason")

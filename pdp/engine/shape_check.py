"""The property check behind the static one: records of one shape get one answer.

The decision cache asks the policy once per record shape (pdp.engine.policy_input
`record_shape`): records alike up to renaming ids and codes, reordering the area's
municipalities and the relationships, other relationships and other assigned users, and
moving timestamps without moving any across now. pdp.engine.policy_vet refuses what the
text shows breaks that (a timestamp in a sum, an id compared with a constant); what it
cannot see — a constant reaching a comparison through a variable, a relationship of
another municipality read — shows here. A fixed seed makes random decision records and,
for each, shape-mates made by one change of that kind; a policy that answers a record and
its mate differently is refused before it goes live (the reload gate and a candidate's
vetting, pdp.engine.policy_manager.vet_policy). The records are synthetic: nothing of
the service's facts is read. Ids and codes are drawn partly from the policy's own string
constants, and now partly from its numbers, so a rule that singles one out is met.

A policy asked in two stages (pdp.engine.policy_vet.stage_plan) is also asked each random
record both ways: the stages, each about the record narrowed to the fields its rules read,
must give exactly the outcomes of `decision` asked whole, or the policy is refused the
same way.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pdp.engine.core import Outcomes, evaluate_outcomes, staged_outcomes
from pdp.engine.policy_engine import Evaluator
from pdp.engine.policy_input import Record, record_shape
from pdp.engine.policy_vet import compared_strings
from pdp.model.clock import END_OF_TIME, START_OF_TIME
from pdp.model.vocab import ACTIONS, CATEGORIES, REASONS, SERVICES

SEED = 16
RECORDS = 24  # random records, each asked about with a shape-mate: 48 policy queries
BASE_NOW = 1_767_225_600_000_000  # 2026-01-01, in microseconds
YEAR = 365 * 24 * 3600 * 1_000_000
_VOCABULARY = frozenset((*SERVICES, *CATEGORIES, *ACTIONS, *REASONS, "active", "suspended",
                         "revoked", "expired", "recertification_due", "applied",
                         "approved", "in_force", "notice_given", "terminated", "rescinded"))
_STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"')
_NUMBER = re.compile(r"(?<![\w.])-?\d{7,}(?![\w.])")


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A record and a mate of its shape that the policy answered differently."""

    change: str  # what made the mate: "renamed ids and codes", "moved timestamps", ...
    category: str
    action: str
    answer: str  # the record's (reason), and the mate's
    mate_answer: str

    def describe(self) -> dict[str, Any]:
        return {"message": f"{self.change}: {self.category}/{self.action} was "
                           f"{self.answer}, became {self.mate_answer}",
                "change": self.change, "category": self.category, "action": self.action,
                "expected": self.answer, "actual": self.mate_answer}


def policy_constants(sources: Mapping[str, str]) -> tuple[list[str], list[int]]:
    """The strings the decision's rules compare with a variable (pdp.engine.policy_vet
    `compared_strings`) and the large numbers of the policy text."""
    numbers: set[int] = set()
    for text in sources.values():
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        numbers.update(int(n) for n in _NUMBER.findall(_STRING.sub('""', code)))
    return sorted(compared_strings(sources)), sorted(numbers)


class Maker:
    """Random decision records (pdp.model.policy_schema.DECISION_RECORD) from one rng."""

    def __init__(self, rng: random.Random, strings: list[str], numbers: list[int]) -> None:
        self.rng = rng
        self.ids = ["u1", "u2", "c1", "c2"]
        self.codes = ["091", "049", "092"]
        # The strings the policy compares with a variable, but no word of the vocabulary:
        # if a rule singles one out as an id or a code, some record must hold it.
        self.odd = [s for s in strings if s not in _VOCABULARY][:50]
        self.odd_share = 0.4 if self.odd else 0.2
        self.odd = self.odd or ["authority"]
        self.numbers = numbers

    def pick(self, pool: list[str], blank: float = 0.0) -> str:
        if self.rng.random() < blank:
            return ""
        return self.rng.choice(self.odd if self.rng.random() < self.odd_share else pool)

    def some(self, pool: Iterable[str], most: int) -> list[str]:
        items = list(pool)
        return self.rng.sample(items, self.rng.randint(0, min(most, len(items))))

    def moment(self, now: int, past: float = 0.5) -> int:
        roll = self.rng.random()
        if roll < 0.02:
            return now
        if roll < 0.07:
            return END_OF_TIME if self.rng.random() > past else START_OF_TIME
        distance = int(10 ** self.rng.uniform(0, 15.5))  # 1 µs to ten years
        return now - distance if self.rng.random() < past else now + distance

    def now(self) -> int:
        if self.numbers and self.rng.random() < 0.3:
            return self.rng.choice(self.numbers) + self.rng.randint(-2 * YEAR, 2 * YEAR)
        return BASE_NOW + self.rng.randint(-YEAR, YEAR)

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability

    def record(self) -> Record:
        """Mostly a record that passes rules 1-8 (so the category rules are reached too),
        each condition failing now and then."""
        rng, now, chance = self.rng, self.now(), self.chance
        municipality = self.pick(self.codes, 0.02)
        purpose = rng.choice([*SERVICES * 6, "", "other"])
        return {
            "now": now, "user_known": chance(0.98),
            "user_id": "u1" if chance(0.65) else self.pick(self.ids),
            "user_status": "active" if chance(0.93) else rng.choice(["left", ""]),
            "user_municipality": municipality,
            "user_tasks": self.some(SERVICES, 2) + ([purpose] if chance(0.9) else []),
            "user_client_id": self.pick(self.ids, 0.7),
            "agreement_status": "in_force" if chance(0.85) else rng.choice(
                ["notice_given", "notice_given", "terminated", ""]),
            "agreement_ends_at": self.moment(now, 0.04),
            "agreement_assignment_required": chance(0.3),
            "area_municipalities": sorted(
                ({municipality} if chance(0.95) else set()) | set(self.some(self.codes, 2))
                - {""}),
            "grants": [self.grant(now, f"g{n}", purpose)
                       for n in range(rng.randint(1, 3) if chance(0.92) else 0)],
            "client_known": chance(0.97), "client_id": self.pick(self.ids),
            "client_home": municipality if chance(0.85) else self.pick(self.codes),
            "client_protection_order": chance(0.3), "client_area_client": chance(0.95),
            "relationships": [self.relationship(now, municipality, purpose)
                              for _ in range(rng.randint(1, 3) if chance(0.9) else 0)],
            "purpose": purpose,
            "record_owner": municipality if chance(0.6) else self.pick(
                ["authority", *self.codes], 0.3),
        }

    def grant(self, now: int, grant_id: str, purpose: str) -> Record:
        rng = self.rng
        return {"id": grant_id if self.chance(0.9) else self.pick(self.ids),
                "status": "active" if self.chance(0.9) else rng.choice(
                    ["suspended", "revoked", "expired", "recertification_due", "approved"]),
                "valid_from": self.moment(now, 0.9), "valid_until": self.moment(now, 0.1),
                "recertify_by": self.moment(now, 0.1),
                "purposes": self.some(SERVICES, 2) + ([purpose] if self.chance(0.85) else []),
                "scopes": self.some(CATEGORIES, 10), "actions": self.some(ACTIONS, 2)}

    def relationship(self, now: int, municipality: str, purpose: str) -> Record:
        return {"municipality": municipality if self.chance(0.85) else self.pick(self.codes),
                "service": purpose if self.chance(0.85) else self.rng.choice(SERVICES),
                "starts_at": self.moment(now, 0.9), "ends_at": self.moment(now, 0.1),
                "assigned_users": self.rng.choice(
                    [[], [], ["u1"], ["u2", "u1"], [self.pick(self.ids)]])}


# -- shape-mates: one kind of change each; `back` renames the mate's grant ids back --------

Mate = tuple[str, Record, dict[str, str]]


def _renamed(record: Record, rng: random.Random) -> Mate:
    fresh: dict[str, str] = {}

    def name(value: str) -> str:
        if not value:
            return value
        if value not in fresh:
            fresh[value] = f"r{rng.randrange(10**6)}-{len(fresh)}"
        return fresh[value]

    mate = {**record,
            **{key: name(record[key]) for key in (
                "user_id", "user_client_id", "client_id", "user_municipality",
                "client_home", "record_owner")},
            "area_municipalities": [name(m) for m in record["area_municipalities"]],
            "grants": [{**g, "id": name(g["id"])} for g in record["grants"]],
            "relationships": [{**rel, "municipality": name(rel["municipality"]),
                               "assigned_users": [name(u) for u in rel["assigned_users"]]}
                              for rel in record["relationships"]]}
    return "renamed ids and codes", mate, {new: old for old, new in fresh.items()}


def _moved(record: Record, rng: random.Random) -> Mate:
    now: int = record["now"]
    shift = rng.randint(-3 * YEAR, 3 * YEAR)

    def move(moment: int) -> int:
        if moment in (START_OF_TIME, END_OF_TIME) or moment == now:
            return moment if moment != now else now + shift
        distance = int(10 ** rng.uniform(0, 15.5))
        return now + shift + (distance if moment > now else -distance)

    mate = {**record, "now": now + shift,
            "agreement_ends_at": move(record["agreement_ends_at"]),
            "grants": [{**g, **{k: move(g[k]) for k in ("valid_from", "valid_until",
                                                        "recertify_by")}}
                       for g in record["grants"]],
            "relationships": [{**rel, "starts_at": move(rel["starts_at"]),
                               "ends_at": move(rel["ends_at"])}
                              for rel in record["relationships"]]}
    return "moved timestamps (none across now)", mate, {}


def _reordered(record: Record, rng: random.Random) -> Mate:
    def shuffled(items: list[Any]) -> list[Any]:
        return rng.sample(items, len(items))

    mate = {**record, "area_municipalities": shuffled(record["area_municipalities"]),
            "relationships": [{**rel, "assigned_users": shuffled(rel["assigned_users"])}
                              for rel in shuffled(record["relationships"])]}
    return "reordered the area's municipalities and the relationships", mate, {}


def _others_added(record: Record, rng: random.Random) -> Mate:
    """Relationships of another municipality or service, and more assigned users where
    someone other than the user is assigned already: none of it is read."""
    user, municipality = record["user_id"], record["user_municipality"]
    relationships = []
    for rel in record["relationships"]:
        assigned = list(rel["assigned_users"])
        if any(u != user for u in assigned):
            assigned.insert(rng.randint(0, len(assigned)), f"other-{rng.randrange(10**6)}")
        relationships.append({**rel, "assigned_users": assigned})
    other = rng.choice([f"m-{rng.randrange(10**6)}", "" if municipality else "x"])
    now = record["now"]
    relationships.append({"municipality": other, "service": record["purpose"] or "coaching",
                          "starts_at": now - YEAR, "ends_at": END_OF_TIME,
                          "assigned_users": [user]})
    if municipality:
        service = next((s for s in SERVICES if s != record["purpose"]), "coaching")
        relationships.append({"municipality": municipality, "service": service,
                              "starts_at": now - YEAR, "ends_at": END_OF_TIME,
                              "assigned_users": []})
    return ("added other relationships and other assigned users",
            {**record, "relationships": relationships}, {})


CHANGES: tuple[Callable[[Record, random.Random], Mate], ...] = (
    _renamed, _moved, _reordered, _others_added)


def all_changes(record: Record, seed: int) -> Mate:
    """Every change at once (one query tries them all; `shape_mismatches` tells them
    apart only when the answers differ)."""
    back: dict[str, str] = {}
    for number, change in enumerate(CHANGES):
        _, record, renamed = change(record, random.Random(seed + number))
        back.update(renamed)
    return "changed in every way at once", record, back


def _differences(policy: Evaluator, record: Record, answers: Outcomes | None, mate: Mate
                 ) -> list[Mismatch]:
    change, mate_record, back = mate
    if record_shape(record)[0] != record_shape(mate_record)[0]:
        return []  # a mate of another shape (the maker's mistake): proves nothing
    mates = evaluate_outcomes(policy, mate_record)
    if answers is None or mates is None:
        if (answers is None) == (mates is None):
            return []
        return [Mismatch(change, "*", "*", "an answer" if mates is None else "a failure",
                         "a failure" if mates is None else "an answer")]
    found = []
    for key in sorted(set(answers) | set(mates)):
        mine = answers.get(key, ("", ""))
        reason, grant = mates.get(key, ("", ""))
        theirs = (reason, back.get(grant, grant))
        if mine != theirs:
            found.append(Mismatch(change, key[0], key[1], "/".join(filter(None, mine)),
                                  "/".join(filter(None, theirs))))
    return found


def _staged(policy: Evaluator, record: Record) -> tuple[bool, Outcomes | None]:
    """Whether the policy is asked in two stages (it has a stage plan), and its outcomes
    asked that way; a candidate in its sandbox answers from its own process."""
    ask = getattr(policy, "staged", None)
    if ask is not None:
        planned, outcomes = ask(record)
        return bool(planned), outcomes
    if getattr(policy, "plan", None) is None:
        return False, None
    return True, staged_outcomes(policy, record)


def _stage_differences(policy: Evaluator, record: Record, answers: Outcomes | None
                       ) -> list[Mismatch] | None:
    """Where the two stages answer a record otherwise than the plain query; None when
    the policy is not asked in stages."""
    planned, staged = _staged(policy, record)
    if not planned:
        return None
    if answers is None or staged is None:
        if (answers is None) == (staged is None):
            return []
        return [Mismatch(STAGED, "*", "*", "a failure" if answers is None else "an answer",
                         "a failure" if staged is None else "an answer")]
    return [Mismatch(STAGED, c, a, "/".join(filter(None, answers.get((c, a), ("", "")))),
                     "/".join(filter(None, staged.get((c, a), ("", "")))))
            for c, a in sorted(set(answers) | set(staged))
            if answers.get((c, a)) != staged.get((c, a))]


# What a stage mismatch says was done to the record (the same record, asked in stages).
STAGED = "asked in two stages (each stage's record narrowed to the fields it reads)"


def shape_mismatches(policy: Evaluator, records: int = RECORDS, seed: int = SEED,
                     most: int = 5) -> list[Mismatch]:
    """Where `policy` answers records of one shape differently (at most `most` of them,
    the first record that shows any), or — a policy asked in two stages — where the
    stages answer a record otherwise than `decision` asked whole; [] when it keeps the
    invariants on every record tried. Deterministic for a seed and a policy text."""
    sources: Mapping[str, str] = getattr(policy, "sources", {}) or {}
    rng = random.Random(seed)
    maker = Maker(rng, *policy_constants(sources))
    staged = True  # until the policy says it is not asked in stages
    for _ in range(records):
        record = maker.record()
        answers = evaluate_outcomes(policy, record)
        mate_seed = rng.randrange(2**32)
        if staged:
            differences = _stage_differences(policy, record, answers)
            if differences:
                return differences[:most]
            staged = differences is not None
        if not _differences(policy, record, answers, all_changes(record, mate_seed)):
            continue
        for number, change in enumerate(CHANGES):  # which change shows it, on its own
            found = _differences(policy, record, answers,
                                 change(record, random.Random(mate_seed + number)))
            if found:
                return found[:most]
        return _differences(policy, record, answers, all_changes(record, mate_seed))[:most]
    return []

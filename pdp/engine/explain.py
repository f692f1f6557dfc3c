"""Explain one decision: every rule of DOMAIN.md's order, passed or failed, with the
facts it read — not only the first failure (`POST /v1/explain`, `pdp explain`).

The policy is asked about each rule on its own: rules 1-8 are the clauses of
`failing/2` (all of them, not the first), rules 9-11 the rules `necessary`, `protected`
and `empowered` for the category and action asked. Which rule is which, its number and
title, and which input fields it reads come from the policy source itself (the
`# N. Title` comments of rules.polar, the `r.field` references of a rule and of the
rules it calls), so an edited policy explains itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pdp.engine.core import DecisionRequest
from pdp.engine.decider import Asker, Decider
from pdp.engine.policy_coverage import CALL, Clause, clauses
from pdp.engine.policy_engine import CompiledPolicy, var
from pdp.engine.policy_input import Record, policy_record
from pdp.engine.records import AuditRecord
from pdp.model.clock import to_micros

_HEADING = re.compile(r"^#\s*(\d+)\.\s*(.*)$")
_FIELD = re.compile(r"\br\.([a-z_]+)")
_REASON = re.compile(r'^failing\(\s*_?r\s*,\s*"([a-z_]+)"')
# The rules asked per category and action (rules 9-11) and the reason each one gives.
CATEGORY_RULES = (("necessary", "category_not_necessary"), ("protected", "protection_order"),
                  ("empowered", "action_not_permitted"))


_INFOS: dict[str, list[RuleInfo]] = {}


@dataclass(frozen=True, slots=True)
class RuleInfo:
    number: int
    title: str
    check: str  # the reason it gives when it fails
    fields: tuple[str, ...]  # the input fields it reads


def rule_infos(policy: CompiledPolicy) -> list[RuleInfo]:
    """The rules of the policy in their order, from its source as loaded (worked out
    once per policy version)."""
    found = _INFOS.get(policy.version)
    if found is None:
        found = _INFOS[policy.version] = _rule_infos(dict(policy.sources))
    return found


def _rule_infos(sources: dict[str, str]) -> list[RuleInfo]:
    every = [c for name, text in sources.items() for c in clauses(name, text)]
    by_name: dict[str, list[Clause]] = {}
    for clause in every:
        by_name.setdefault(clause.name, []).append(clause)

    def body(clause: Clause) -> str:
        return sources[clause.file][clause.head_end:clause.end]

    def fields(bodies: list[str]) -> tuple[str, ...]:
        """The input fields read by these clause bodies and by the rules they call."""
        seen: dict[str, None] = {}
        todo, done = list(bodies), set()
        while todo:
            text = todo.pop(0)
            for field in _FIELD.findall(text):
                seen.setdefault(field)
            for name in CALL.findall(text):
                if name not in done and name in by_name:
                    done.add(name)
                    todo += [body(c) for c in by_name[name]]
        return tuple(seen)

    def heading(clause: Clause) -> tuple[int, str]:
        """The number of the `# N. Title` heading above the clause; the title: that
        heading's, or the comment right above the clause if it has its own."""
        lines = sources[clause.file][:clause.start].splitlines()
        own: list[str] = []
        at = len(lines) - 1
        while at >= 0 and lines[at].strip().startswith("#"):
            own.insert(0, lines[at].strip().lstrip("#").strip())
            at -= 1
        for number, line in enumerate(reversed(lines)):
            match = _HEADING.match(line.strip())
            if match:
                title = [match.group(2).strip()]
                for follow in lines[len(lines) - number:]:
                    text = follow.strip()
                    if not text.startswith("#  "):
                        break
                    title.append(text.lstrip("#").strip())
                own = [text for text in own if text.strip("-")]  # no separator lines
                if own and not any(_HEADING.match("# " + text) for text in own):
                    return int(match.group(1)), " ".join(own)
                return int(match.group(1)), " ".join(title)
        return 0, " ".join(own)

    infos: list[RuleInfo] = []
    for clause in by_name.get("failing", []):
        check = _REASON.match(clause.text(sources[clause.file]))
        if check is None:
            continue
        number, title = heading(clause)
        infos.append(RuleInfo(number, title, check.group(1), fields([body(clause)])))
    for name, reason in CATEGORY_RULES:
        found = by_name.get(name, [])
        if found:
            number, title = heading(found[0])
            infos.append(RuleInfo(number, title, reason, fields([body(c) for c in found])))
    return infos


def explain(decider: Decider[CompiledPolicy], request: DecisionRequest, now: datetime,
            asker: Asker | None = None) -> tuple[dict[str, Any], AuditRecord]:
    """The decision — the one decision entry's, memo and shapes included — and every
    rule with passed or failed and the facts it read, all from one view of the facts;
    and the record of the explanation (record type "explain": it shows personal data)."""
    policy = decider.policy
    with decider.facts.reading() as view:
        prepared = decider.prepare([request], now, view, policy)
        record = policy_record(view, request.user, request.client, request.purpose,
                               to_micros(now), request.owner)
    checked = decider.finish(prepared, asker or Asker(record_type="explain"))
    made = checked.decisions[0]
    return {"decision": made.decision, "reason": made.reason, "grant": made.grant,
            "policy_version": made.policy_version, "facts_version": made.facts_version,
            "rules": trace(policy, record, request)}, checked.records[0]


def trace(policy: CompiledPolicy, record: Record, request: DecisionRequest
          ) -> list[dict[str, Any]]:
    """Every rule of the policy, in order, with passed or failed and what it read (the
    policy is asked on the full record, outside any view of the facts)."""
    failing = {found["reason"] for found in policy.every("failing", record, var("reason"))}
    rules = []
    for info in rule_infos(policy):
        if info.check == "category_not_necessary":
            passed = policy.first("necessary", record, request.category, var("grant")) is not None
        elif info.check == "protection_order":
            passed = policy.first("protected", record, request.category) is None
        elif info.check == "action_not_permitted":
            passed = policy.first("empowered", record, request.category, request.action,
                                  var("grant")) is not None
        else:
            passed = info.check not in failing
        rules.append({"rule": info.number, "title": info.title, "check": info.check,
                      "passed": passed,
                      "reads": {field: record[field] for field in info.fields
                                if field in record}})
    return rules

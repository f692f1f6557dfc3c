"""Decision-core speed on the demo world: a policy query vs a memoised answer.

Run: .venv/bin/python benchmarks/bench_core.py [--seconds S]
Prints per-decision times and their ratio (speed is measured here, never asserted).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pdp.engine.core import DecisionRequest, check_policy, decide
from pdp.engine.decider import Asker, Decider
from pdp.engine.factindex import FactIndex
from pdp.engine.facts_service import parse_batch
from pdp.engine.policy_engine import CompiledPolicy, load_policy
from pdp.service.demo import demo_facts, demo_grant_facts
from pdp.service.settings import DEFAULT_POLICY_DIR
from pdp.store.protocols import ChangeRecord


def per_call(fn: Callable[[], object], seconds: float) -> float:
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            fn()
        calls += 10
    return (time.perf_counter() - started) / calls


def demo_world(now: datetime) -> tuple[FactIndex, CompiledPolicy]:
    """The demo world's facts in an index, and the shipped policy, checked."""
    index = FactIndex()
    index.apply([ChangeRecord(1, c.kind, c.id, c.data) for c in parse_batch(
        demo_facts(now) + demo_grant_facts(now))])
    policy = load_policy(DEFAULT_POLICY_DIR)
    check_policy(policy)
    return index, policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0)
    seconds = parser.parse_args().seconds
    now = datetime.now(UTC)
    index, policy = demo_world(now)
    allow = DecisionRequest("u-1001", "c-749-001", "service_needs_plans", "read", "coaching")
    early_deny = DecisionRequest("nobody", "c-749-001", "name_contact", "read", "coaching")
    decider = Decider(policy, index)
    decider.decide(allow)
    asker = Asker("bench", None)

    rows = [
        ("policy query, all categories (allow path)", per_call(
            lambda: decide(policy, index, allow, now), seconds)),
        ("policy query, all categories (unknown user)", per_call(
            lambda: decide(policy, index, early_deny, now), seconds)),
        ("a new user x client x purpose of a known shape", per_call(
            lambda: (decider.clear(shapes=False), decider.decide(allow)), seconds)),
        ("memoised decision (Decider hit)", per_call(lambda: decider.decide(allow), seconds)),
        # What the service runs for a single evaluation: the entry, its audit record
        # included (the memo tried on the loop, then finished there).
        ("memoised, through the entry (prepare + finish)", per_call(
            lambda: decider.finish(decider.prepare_memoised([allow], now) or
                                   decider.prepare([allow], now), asker), seconds)),
        ("memoised, through the entry (check)", per_call(
            lambda: decider.check([allow], now, asker), seconds)),
    ]
    base = rows[0][1]
    print(f"{'case':48} {'per decision':>14} {'vs policy query':>16}")
    for name, value in rows:
        print(f"{name:48} {value * 1e6:11.1f} µs {base / value:15.1f}x")


if __name__ == "__main__":
    main()

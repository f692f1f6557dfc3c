"""Where a cold decision's time goes: the parts of one policy question, measured apart.

For every user x client of the demo world (purpose coaching), with nothing memoised and no
shape seen: building the policy record from one view of the facts, working out its shape,
the whole `decision` query (every category and action), the `failing` rules alone (rules
1-8: the user, the client and the purpose), the two stages the service asks instead, each
about the record narrowed to the fields its rules read (rules 1-8; rules 9-11 where none
of them fails), and the `decision` query on the record of an unknown user (the base cost
of a query, which grows with the record the VM is given).

Run: .venv/bin/python benchmarks/profile_cold.py [--rounds N]
Speed is measured here, never asserted in tests (issue 17 starts from these numbers).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from bench_core import demo_world

from pdp.engine.policy_engine import var
from pdp.engine.policy_input import narrowed, policy_record, record_shape
from pdp.model.clock import to_micros


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=1)
    rounds = parser.parse_args().rounds
    now = datetime.now(UTC)
    index, policy = demo_world(now)
    now_us = to_micros(now)
    with index.reading() as view:
        pairs = [(u, c) for u in sorted(view.users) for c in sorted(view.clients)]
    parts: dict[str, list[float]] = {name: [] for name in (
        "record", "shape", "decision query", "  of which some allow", "  of which all deny",
        "failing rules alone", "stage 1 (1-8, narrowed)", "stage 2 (9-11, narrowed)",
        "unknown user query")}
    plan = policy.plan
    assert plan is not None, "the shipped policy is asked in stages"
    sizes: list[int] = []
    for _ in range(rounds):
        for user, client in pairs:
            with index.reading() as view:
                took, record = timed(lambda v=view, u=user, c=client: policy_record(
                    v, u, c, "coaching", now_us, ""))
            parts["record"].append(took)
            took, (_key, shape, _back) = timed(lambda r=record: record_shape(r))
            parts["shape"].append(took)
            sizes.append(len(orjson.dumps(shape)))
            took, outcomes = timed(lambda s=shape: policy.evaluate(s))
            parts["decision query"].append(took)
            allows = any(o.reason == "allowed" for o in outcomes)
            parts["  of which some allow" if allows else "  of which all deny"].append(took)
            parts["failing rules alone"].append(timed(
                lambda s=shape: policy.every("failing", dict(s), var("reason")))[0])
            # As the decider asks: each stage about the record narrowed to its fields.
            took, failing = timed(lambda s=shape: policy.gate(narrowed(s, plan.gate_fields)))
            parts["stage 1 (1-8, narrowed)"].append(took)
            if failing is None:
                parts["stage 2 (9-11, narrowed)"].append(timed(
                    lambda s=shape: policy.category_outcomes(
                        narrowed(s, plan.table_fields)))[0])
        with index.reading() as view:
            unknown = record_shape(policy_record(view, "nobody", pairs[0][1], "coaching",
                                                 now_us, ""))[1]
        parts["unknown user query"] += [timed(lambda u=unknown: policy.evaluate(u))[0]
                                        for _ in range(20)]
    print(f"{len(pairs)} user x client pairs x {rounds} round(s); shaped record "
          f"{statistics.median(sizes)} bytes of JSON (median)")
    print(f"{'part':24} {'median':>10} {'p90':>10} {'n':>6}")
    for name, values in parts.items():
        if not values:
            continue
        values.sort()
        p90 = values[int(len(values) * 0.9)]
        print(f"{name:24} {statistics.median(values) * 1e3:8.3f} ms {p90 * 1e3:8.3f} ms "
              f"{len(values):6}")


if __name__ == "__main__":
    main()

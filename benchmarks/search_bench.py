"""AuthZEN resource search over a municipality of 20 000 clients, in process.

The world: the demo area; municipality 749 with `--clients` clients, each with a
coaching relationship of 749 — most naming one of 20 other coaches, `--caseload` naming
the coach u-1001, `--open` naming no one (any coach of 749 may then see the client).
Measured, with the real policy and decider (speed is measured here, never asserted):

- the first page (limit 100) and the whole walk (every page), cold (a new decider:
  every candidate is a policy query) and warm (the memoised answers of a walk before);
- side by side, what a search without narrowing by facts would cost: asking about
  every client of the municipality (cold and warm, timed on a sample of `--sample`
  clients and extrapolated).

Run: .venv/bin/python benchmarks/search_bench.py [--clients 20000] [--caseload 200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pdp.engine.decider import Decider
from pdp.engine.factindex import FactIndex
from pdp.engine.facts_service import parse_batch
from pdp.engine.policy_engine import load_policy
from pdp.engine.search import Page, search_resources
from pdp.service.demo import demo_facts, demo_grant_facts
from pdp.service.settings import DEFAULT_POLICY_DIR
from pdp.store.protocols import ChangeRecord

USER, PURPOSE, CATEGORY = "u-1001", "coaching", "service_needs_plans"


def world(clients: int, caseload: int, unassigned: int, now: datetime) -> list[dict[str, Any]]:
    facts = demo_facts(now) + demo_grant_facts(now)
    start = (now - timedelta(days=30)).isoformat()
    for n in range(clients):
        client = f"c-749-b{n:05d}"
        facts.append({"kind": "client", "id": client, "data": {"home_municipality": "749",
                                                                  "area_client": True}})
        if n % (clients // caseload) == 0:
            assigned = [USER]
        elif n % (clients // max(unassigned, 1)) == 1 and unassigned:
            assigned = []
        else:
            assigned = [f"u-749-coach{n % 20}"]
        facts.append({"kind": "relationship", "id": f"r-{client}", "data": {
            "client": client, "municipality": "749", "service": PURPOSE,
            "starts_at": start, "assigned_users": assigned}})
    return facts


def walk(decider: Decider, now: datetime, limit: int = 100) -> tuple[list[str], float, float]:
    """All pages; (ids, seconds of the first page, seconds of the whole walk)."""
    ids: list[str] = []
    after: str | None = None
    started = time.perf_counter()
    first = 0.0
    while True:
        page: Page = search_resources(decider, user=USER, category=CATEGORY, action="read",
                                      purpose=PURPOSE, after=after, limit=limit,
                                      budget=3600, now=now)
        if not first:
            first = time.perf_counter() - started
        ids += page.ids
        if page.after is None:
            return ids, first, time.perf_counter() - started
        after = page.after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20_000)
    parser.add_argument("--caseload", type=int, default=200)
    parser.add_argument("--open", type=int, default=50, dest="unassigned")
    parser.add_argument("--sample", type=int, default=200,
                        help="clients asked cold in the no-narrowing comparison")
    args = parser.parse_args()
    now = datetime.now(UTC)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    print(f"commit {commit}, {os.cpu_count()} CPUs, {args.clients} clients in 749, "
          f"caseload {args.caseload} + {args.unassigned} naming no one")
    index = FactIndex()
    loaded = time.perf_counter()
    index.apply([ChangeRecord(1, c.kind, c.id, c.data)
                 for c in parse_batch(world(args.clients, args.caseload, args.unassigned,
                                            now))])
    print(f"facts loaded in {time.perf_counter() - loaded:.1f} s")
    policy = load_policy(DEFAULT_POLICY_DIR)

    cold = Decider(policy, index, cache_size=1_000_000)
    ids, cold_first, cold_all = walk(cold, now)
    _, warm_first, warm_all = walk(cold, now)
    examined = cold.misses

    everyone = sorted(c for c in index.clients if c.startswith("c-749-"))
    sample = everyone[::max(1, len(everyone) // args.sample)]
    fresh = Decider(policy, index)
    started = time.perf_counter()
    for client in sample:
        fresh.table(USER, client, PURPOSE, now).pick(CATEGORY, "read")
    naive_cold = (time.perf_counter() - started) / len(sample) * len(everyone)
    started = time.perf_counter()
    for client in sample:
        fresh.table(USER, client, PURPOSE, now).pick(CATEGORY, "read")
    naive_memo = (time.perf_counter() - started) / len(sample) * len(everyone)

    print(f"results {len(ids)} clients, candidates asked {examined} of {len(everyone)}")
    rows = [
        ("search, first page of 100, cold", cold_first),
        ("search, every page, cold", cold_all),
        ("search, first page of 100, warm", warm_first),
        ("search, every page, warm", warm_all),
        ("no narrowing: every client, cold (extrapolated)", naive_cold),
        ("no narrowing: every client, warm (extrapolated)", naive_memo),
    ]
    print(f"{'case':52} {'ms':>10} {'vs search (same warmth)':>24}")
    for name, seconds in rows:
        base = cold_all if "cold" in name else warm_all
        ratio = f"{seconds / base:.0f}x" if name.startswith("no narrowing") else ""
        print(f"{name:52} {seconds * 1e3:10.1f} {ratio:>24}")


if __name__ == "__main__":
    main()

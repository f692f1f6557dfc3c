"""Issue 8's benchmark, in-process part: the seeded workload, pdp's decider warm and
cold, and raw oso (the same policies, no caches), side by side in one run.

    .venv/bin/python benchmarks/run.py              # 100 000 clients, 2 000 users
    .venv/bin/python benchmarks/run.py --tiny       # a small world: CI runs this

Prints a table of p50/p99 per decision and the ratios, and writes `--json`. First it
checks that each peer gives the same decisions as pdp (raw oso and Cerbos on a sample,
Cedar on the whole mix). Speed is
measured here, never asserted. Peers: raw oso, cedarpy and the Cerbos PDP
(benchmarks/peers/). Still to come (see the README): HTTP figures with a real load
generator for pdp and Cerbos side by side, batches, the PNG plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

import http_peers
from peers import cedar, cerbos_peer
from workload import NOW, Request, Sizes, describe, fact_index, request_mix, world_facts

from pdp.clock import to_micros
from pdp.core import decide
from pdp.decider import Decider
from pdp.policy_engine import load_policy
from pdp.settings import DEFAULT_POLICY_DIR


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6

    return {"p50_us": at(0.50), "p99_us": at(0.99), "n": len(ordered)}


def timed(requests: list[Request], before: Callable[[], None] | None,
          call: Callable[[Request], object]) -> list[float]:
    samples = []
    for request in requests:
        if before is not None:
            before()
        started = time.perf_counter()
        call(request)
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a small world, for CI")
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--cold-sample", type=int, default=500,
                        help="requests timed without any memo (each a policy query)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=10.0, help="per wrk run")
    parser.add_argument("--no-http", dest="http", action="store_false",
                        help="skip the HTTP runs (wrk)")
    args = parser.parse_args()
    if args.tiny:
        args.clients, args.users, args.requests, args.cold_sample = 1_000, 40, 200, 20
        args.seconds = 1.0

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, commit {commit}, {os.cpu_count()} CPUs, "
          f"{platform.python_implementation()} {platform.python_version()}")
    started = time.perf_counter()
    facts = world_facts(Sizes(clients=args.clients, users=args.users), args.seed)
    index = fact_index(facts)
    print(f"world: {len(facts)} facts ({args.clients} clients, {args.users} users, "
          f"{len(index.relationships)} relationships) in {time.perf_counter() - started:.1f} s")
    policy = load_policy(DEFAULT_POLICY_DIR)
    started = time.perf_counter()
    mix = request_mix(index, policy, args.requests, args.seed)
    reasons = describe(index, policy, mix)
    allowed = reasons.get("allowed", 0)
    print(f"mix: {len(mix)} distinct requests, {allowed / len(mix):.0%} allowed, "
          f"{len(reasons) - 1} reasons of denial, in {time.perf_counter() - started:.1f} s")

    # The peers must agree before they are timed.
    decider = Decider(policy, index, clock=lambda: NOW, cache_size=10_000_000)
    sample = mix[:max(1, args.cold_sample)]
    for request in sample:
        ours = decider.decide(request.decision_request(), NOW)
        raw = decide(policy, index, request.decision_request(), NOW)
        if (ours.decision, ours.reason) != (raw.decision, raw.reason):
            raise SystemExit(f"raw oso and pdp disagree on {request}: {raw} vs {ours}")
    print(f"agreement: raw oso = pdp on {len(sample)} requests")
    now_us = to_micros(NOW)

    def cedar_allows(r: Request) -> bool:
        return cedar.allowed(index, r.user, r.client, r.category, r.action, r.purpose, now_us)

    for request in mix:
        ours = decider.decide(request.decision_request(), NOW)
        if cedar_allows(request) != ours.decision:
            raise SystemExit(f"Cedar and pdp disagree on {request}: pdp {ours}")
    print(f"agreement: cedarpy = pdp on all {len(mix)} requests")

    results: dict[str, dict[str, float]] = {}
    for request in mix:  # warm: every answer memoised
        decider.decide(request.decision_request(), NOW)
    results["pdp warm (memoised)"] = percentiles(timed(
        mix, None, lambda r: decider.decide(r.decision_request(), NOW)))
    results["pdp cold, answers by shape kept"] = percentiles(timed(
        mix, lambda: decider.clear(shapes=False),
        lambda r: decider.decide(r.decision_request(), NOW)))
    results["pdp cold, nothing memoised"] = percentiles(timed(
        sample, decider.clear, lambda r: decider.decide(r.decision_request(), NOW)))
    results["raw oso (same policies, no caches)"] = percentiles(timed(
        sample, None, lambda r: decide(policy, index, r.decision_request(), NOW)))

    results["cedarpy (in process, no caches)"] = percentiles(timed(mix, None, cedar_allows))

    with cerbos_peer.Cerbos(free_port()) as cerbos, httpx.Client(base_url=cerbos.url) as http:
        def cerbos_allows(r: Request) -> bool:
            body = cerbos_peer.check_body(index, r.user, [(r.client, r.category, r.action,
                                                            r.purpose)], now_us)
            response = http.post("/api/check/resources", json=body)
            response.raise_for_status()
            return cerbos_peer.allowed(response.json())[0]

        for request in sample:
            if cerbos_allows(request) != decider.decide(request.decision_request(),
                                                         NOW).decision:
                raise SystemExit(f"Cerbos and pdp disagree on {request}")
        print(f"agreement: Cerbos = pdp on {len(sample)} requests")
        results["Cerbos (HTTP round trip, one client)"] = percentiles(timed(
            sample, None, cerbos_allows))

    raw = results["raw oso (same policies, no caches)"]
    print(f"{'in process, per decision':40} {'p50 µs':>10} {'p99 µs':>10} {'n':>7} "
          f"{'p50 vs raw oso':>15}")
    for name, row in results.items():
        print(f"{name:40} {row['p50_us']:10.1f} {row['p99_us']:10.1f} {row['n']:7.0f} "
              f"{raw['p50_us'] / row['p50_us']:14.1f}x")
    http: dict[str, dict[str, float]] = {}
    if args.http:
        http = http_peers.compare(facts, index, mix, now_us, (free_port(), free_port()),
                                  connections=16, seconds=args.seconds,
                                  warm_set=min(1000, len(mix) // 4))
        print(f"{'HTTP single evaluations, wrk, 16 connections':46} {'req/s':>9} "
              f"{'p50 ms':>8} {'p99 ms':>8}")
        for name, row in http.items():
            print(f"{name:46} {row['requests_per_s']:9.0f} {row['p50_ms']:8.2f} "
                  f"{row['p99_ms']:8.2f}")
        for name, row in http.items():
            if "decisions_per_s" in row:
                print(f"{name:46} {row['decisions_per_s']:9.0f} decisions/s")
        for kind in ("cold", "warm"):
            ours = next(r for n, r in http.items()
                        if n.startswith("pdp") and kind in n and "batches" not in n)
            theirs = next(r for n, r in http.items()
                          if n.startswith("Cerbos") and kind in n and "batches" not in n)
            print(f"pdp / Cerbos, {kind}: requests/s "
                  f"{ours['requests_per_s'] / theirs['requests_per_s']:.2f}x, p99 "
                  f"{ours['p99_ms'] / theirs['p99_ms']:.2f}x (lower is better)")
        ours_b = next(r for n, r in http.items() if n.startswith("pdp, batches"))
        theirs_b = next(r for n, r in http.items() if n.startswith("Cerbos, batches"))
        print(f"pdp / Cerbos, batches: decisions/s "
              f"{ours_b['decisions_per_s'] / theirs_b['decisions_per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({
            "commit": commit, "cpus": os.cpu_count(), "clients": args.clients,
            "users": args.users, "requests": len(mix), "reasons": dict(reasons),
            "in_process": results, "http": http}, indent=2))


if __name__ == "__main__":
    main()

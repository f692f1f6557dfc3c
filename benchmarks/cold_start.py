"""Cold start of one replica with a million facts: time to ready and resident memory.

Writes the seeded workload world (benchmarks/workload.py) scaled to `--facts` facts as
JSONL, loads it into a fresh embedded store with `pdp facts import` (timed: the bulk
path a deployment would use), then starts `pdp serve` on that store and times it from
the spawn to the first 200 from /readyz (the facts are in memory then), and on to the end
of its warming pass (decisions worked out ahead of requests, in the background while it
serves). Reads the server's resident memory (VmRSS, and the peak VmHWM) from /proc when
it is ready, when it is warm and again after a few thousand decisions. Speed is measured
here, never asserted.

    .venv/bin/python benchmarks/cold_start.py                 # 1 000 000 facts
    .venv/bin/python benchmarks/cold_start.py --facts 20000   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).parent))

from http_peers import warm_passes
from propagation import ADMIN_TOKEN, KEYS, free_port, stop_process
from workload import Sizes, world_facts

from pdp.engine.facts_service import parse_batch
from pdp.store.sql import open_store

# The world's facts besides clients and their relationships: areas, agreements, users,
# grants (about this many for 2 000 users).
FIXED = 4_000
RELATIONSHIPS_PER_CLIENT = 3


def sizes_for(total: int, users: int = 2_000) -> Sizes:
    """World sizes that come to about `total` facts (each client brings three
    relationships)."""
    fixed = FIXED * users // 2_000
    clients = max(10, (total - fixed) // (1 + RELATIONSHIPS_PER_CLIENT))
    return Sizes(clients=clients, users=users, relationships_per_client=RELATIONSHIPS_PER_CLIENT)


def memory_of(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak, in MiB (Linux /proc)."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return {"rss_mib": found.get("VmRSS", 0.0), "peak_rss_mib": found.get("VmHWM", 0.0)}


def run(total: int, seed: int = 1, users: int = 2_000, decisions: int = 2_000,
        timeout: float = 1800) -> dict[str, Any]:
    """Build, import and start; the figures as a dict."""
    workdir = Path(tempfile.mkdtemp(prefix="pdp-cold-start-"))
    try:
        facts = world_facts(sizes_for(total, users), seed)
        source = workdir / "facts.jsonl"
        # The rights of the synthetic world (in every state) and its agreements (one
        # rescinded) are seeded into the store directly: the service changes a right or
        # an agreement's status only through their procedure.
        procedural = ("grant", "agreement")
        rights = [fact for fact in facts if fact["kind"] in procedural]
        with source.open("wb") as out:
            for fact in facts:
                if fact["kind"] not in procedural:
                    out.write(orjson.dumps(fact) + b"\n")
        clients = [f["id"] for f in facts if f["kind"] == "client"]
        users_ids = [f["id"] for f in facts if f["kind"] == "user"]
        count = len(facts)
        del facts
        env = {**os.environ, "PDP_DATABASE_URL": f"sqlite:///{workdir / 'store.db'}",
               "PDP_API_KEYS": json.dumps(KEYS)}
        env.pop("PDP_REDIS_URL", None)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pdp", "facts", "import", str(source)],
                       env=env, cwd=workdir, check=True, capture_output=True)
        store = open_store(env["PDP_DATABASE_URL"])
        store.apply(parse_batch(rights))
        store.close()
        del rights
        imported = time.perf_counter() - started
        return {"facts": count, "import_s": imported,
                **serve(workdir, env, clients, users_ids, decisions, timeout)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def serve(workdir: Path, env: dict[str, str], clients: list[str], users: list[str],
          decisions: int, timeout: float) -> dict[str, Any]:
    port = free_port()
    log = workdir / "serve.log"
    with log.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "pdp", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"], cwd=workdir, env=env, stdout=out,
            stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"pdp serve exited: {log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/readyz", timeout=2).status_code == 200:
                        break
                if time.perf_counter() - started > timeout:
                    raise RuntimeError(f"not ready after {timeout} s")
                time.sleep(0.05)
            ready = time.perf_counter() - started
            at_ready = memory_of(process.pid)
            # Serving already; then fully warm: the start's warming pass finished.
            while warm_passes(f"http://127.0.0.1:{port}") < 1:
                if process.poll() is not None:
                    raise RuntimeError(f"pdp serve exited: {log.read_text()[-2000:]}")
                if time.perf_counter() - started > timeout:
                    raise RuntimeError(f"not warm after {timeout} s")
                time.sleep(0.5)
            warm = time.perf_counter() - started
            at_warm = memory_of(process.pid)
            # Some work, so that the memory figure includes memoised decisions.
            for n in range(decisions):
                body = {"subject": {"type": "user", "id": users[n % len(users)]},
                        "action": {"name": "read"},
                        "resource": {"type": "client_record",
                                     "id": clients[(n * 7919) % len(clients)],
                                     "properties": {"category": "name_contact"}},
                        "context": {"purpose": "coaching"}}
                client.post("/access/v1/evaluation", json=body).raise_for_status()
            after = memory_of(process.pid)
    finally:
        stop_process(process)
    return {"ready_s": ready, "rss_at_ready_mib": at_ready["rss_mib"], "warm_s": warm,
            "rss_at_warm_mib": at_warm["rss_mib"],
            "rss_after_decisions_mib": after["rss_mib"], "peak_rss_mib": after["peak_rss_mib"],
            "decisions": decisions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.facts, args.seed)
    print(f"{result['facts']} facts: import {result['import_s']:.1f} s; pdp serve ready in "
          f"{result['ready_s']:.1f} s, resident {result['rss_at_ready_mib']:.0f} MiB; warm in "
          f"{result['warm_s']:.1f} s, {result['rss_at_warm_mib']:.0f} MiB "
          f"({result['rss_after_decisions_mib']:.0f} MiB after {result['decisions']} "
          f"decisions, peak {result['peak_rss_mib']:.0f} MiB)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

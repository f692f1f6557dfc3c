"""What the decision log costs: decision throughput with the log on vs off, side by side.

Starts three `pdp serve` processes on the demo world (embedded SQLite, or PostgreSQL with
--postgres): one with the decision log as configured by default, one that moves every
segment into the indexed record chain at once (PDP_AUDIT_INDEX_DELAY_SECONDS=0: the cost
under load that never pauses) and one with PDP_AUDIT_LOG=false. Drives each with the same
bounded load — concurrent clients sending single evaluations, then batches — in
alternating rounds, each round starting once every server has caught up with its log.
Prints decisions per second and the ratios to "log off".

Run: .venv/bin/python benchmarks/audit_cost.py [--clients 8] [--seconds 3] [--rounds 3]
Loopback only; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from pdp.service.demo import demo_facts, demo_register, demo_register_before

TOKEN = "bench-admin"
USERS = [("u-1001", "749", "coaching"), ("u-1002", "749", "guidance"),
         ("u-2001", "297", "coaching")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(workdir: Path, audit: bool, database_url: str | None,
          extra: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PDP_API_KEYS": json.dumps({TOKEN: ["admin"]}),
           "PDP_AUDIT_LOG": "true" if audit else "false",
           "PDP_REGISTER_BEFORE": demo_register_before().isoformat(), **(extra or {})}
    env["PDP_DATABASE_URL"] = database_url or f"sqlite:///{workdir / 'facts.sqlite3'}"
    process = subprocess.Popen([sys.executable, "-m", "pdp", "serve", "--port", str(port),
                                "--log-level", "warning"], cwd=workdir, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"server on {url} did not start")


def requests_for_world() -> list[dict[str, Any]]:
    bodies = []
    for user, code, purpose in USERS:
        for n in range(1, 9):
            for category in ("name_contact", "service_needs_plans"):
                bodies.append({
                    "subject": {"type": "user", "id": user}, "action": {"name": "read"},
                    "resource": {"type": "client_record", "id": f"c-{code}-{n:03d}",
                                 "properties": {"category": category}},
                    "context": {"purpose": purpose}})
    return bodies


def settle(url: str) -> None:
    """Wait until the server has moved its pending log segments into the indexed record
    chain, so that one server's catching up does not take CPU from the next round."""
    deadline = time.monotonic() + 120
    pending: list[str] = []
    while time.monotonic() < deadline:
        text = httpx.get(url + "/metrics", timeout=10).text
        pending = [line for line in text.splitlines()
                   if line.startswith("pdp_audit_pending_records ")]
        if not pending or float(pending[0].split()[1]) == 0:
            return
        time.sleep(0.1)
    raise SystemExit(f"{url}: the decision log did not catch up in 120 s: {pending}")


def drive(url: str, bodies: list[dict[str, Any]], clients: int, seconds: float,
          batch: int) -> float:
    """Decisions per second over `seconds` with `clients` concurrent clients."""
    counts = [0] * clients
    stop = time.monotonic() + seconds

    def client(number: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=10) as http:
            i = number
            while time.monotonic() < stop:
                if batch == 1:
                    response = http.post("/access/v1/evaluation", json=bodies[i % len(bodies)])
                    done = 1
                else:
                    items = [bodies[(i + k) % len(bodies)] for k in range(batch)]
                    response = http.post("/access/v1/evaluations",
                                         json={"evaluations": items})
                    done = batch
                if response.status_code != 200:
                    raise SystemExit(f"{url}: {response.status_code} {response.text[:200]}")
                counts[number] += done
                i += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=50, help="items per batch request")
    parser.add_argument("--postgres", metavar="URL", default=None,
                        help="postgresql://… database to use (both servers share it)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp, name) for name in ("on", "at-once", "off")]
        for folder in dirs:
            folder.mkdir()
        servers = {"log on": start(dirs[0], True, args.postgres),
                   "log on, indexed at once": start(
                       dirs[1], True, args.postgres, {"PDP_AUDIT_INDEX_DELAY_SECONDS": "0"}),
                   "log off": start(dirs[2], False, args.postgres)}
        try:
            for _, url in servers.values():
                with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                                  timeout=30) as http:
                    http.post("/v1/facts:batch", json={"facts": demo_facts()}).raise_for_status()
                    http.post("/v1/grants:import", json=demo_register()).raise_for_status()
            bodies = requests_for_world()
            results: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for workload, batch in (("single", 1), (f"batch of {args.batch}", args.batch)):
                    for name, (_, url) in servers.items():
                        for _, other in servers.values():
                            settle(other)
                        rate = drive(url, bodies, args.clients, args.seconds, batch)
                        results.setdefault((workload, name), []).append(rate)
        finally:
            for process, _ in servers.values():
                process.send_signal(signal.SIGTERM)
                process.wait(10)

    print(f"{args.clients} clients, {args.rounds} alternating rounds of {args.seconds:.0f} s, "
          f"{'PostgreSQL' if args.postgres else 'SQLite'}; decisions per second (best round)")
    print("log on: the default, segments move into the indexed record chain once the server "
          "has been idle for 0.2 s;\nindexed at once: PDP_AUDIT_INDEX_DELAY_SECONDS=0, what "
          "the log costs under load that never pauses")
    print(f"{'workload':<16} {'log on':>10} {'indexed at once':>16} {'log off':>10} "
          f"{'on / off':>9} {'at once / off':>14}")
    for workload in dict.fromkeys(w for w, _ in results):
        on = max(results[(workload, "log on")])
        now = max(results[(workload, "log on, indexed at once")])
        off = max(results[(workload, "log off")])
        print(f"{workload:<16} {on:>10.0f} {now:>16.0f} {off:>10.0f} {on / off:>8.0%} "
              f"{now / off:>13.0%}")


if __name__ == "__main__":
    main()

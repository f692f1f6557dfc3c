"""HTTP single evaluations, pdp and the Cerbos PDP side by side, driven by wrk (Debian's
package: a C load generator, not the bottleneck here) at `connections` connections.

pdp runs as `pdp serve` on a SQLite store holding the workload's facts, with the
decision log on (as it must be); Cerbos with `peers/cerbos/client_record.yaml`, the
bodies carrying the attributes it needs. Each body is sent once per run in the cold
runs (no request repeats) and repeatedly in the warm ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from peers import cerbos_peer
from workload import Request

from pdp.api import parse_batch
from pdp.factindex import FactIndex
from pdp.sqlstore import open_store

TOKEN = "bench-pep"
LUA = """
local bodies = {}
local position = 0
local count = 0
local threads = {}

function setup(thread)
  thread:set("number", #threads)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  count = tonumber(args[2])
  position = math.floor(number * #bodies / count)
end

function request()
  position = position % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json",
                                  ["Authorization"] = "Bearer @TOKEN@"}, bodies[position])
end
"""


def wrk(url: str, bodies: list[str], connections: int, seconds: float,
        workdir: Path) -> dict[str, float]:
    """Requests/s and latency percentiles of wrk POSTing the bodies round-robin."""
    threads = 2
    lines = workdir / f"bodies-{time.monotonic_ns()}.jsonl"
    lines.write_text("\n".join(bodies) + "\n")
    script = workdir / "post.lua"
    script.write_text(LUA.replace("@TOKEN@", TOKEN))
    done = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
         "-s", str(script), url, "--", str(lines), str(threads)],
        capture_output=True, text=True, check=True)
    out = done.stdout
    if "Non-2xx" in out:
        raise SystemExit(f"{url}: errors under load:\n{out}")

    def millis(label: str) -> float:
        found = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if found is None:
            raise SystemExit(f"wrk printed no {label} latency:\n{out}")
        value, unit = float(found.group(1)), found.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rate is not None, out
    return {"requests_per_s": float(rate.group(1)), "p50_ms": millis("50%"),
            "p99_ms": millis("99%")}


@contextmanager
def pdp_server(facts: list[dict[str, Any]], port: int) -> Iterator[str]:
    workdir = Path(tempfile.mkdtemp(prefix="pdp-bench-"))
    url = f"sqlite:///{workdir / 'facts.sqlite3'}"
    store = open_store(url)
    changes = parse_batch(facts)
    for start in range(0, len(changes), 50_000):
        store.apply(changes[start:start + 50_000])
    store.close()
    env = {**os.environ, "PDP_DATABASE_URL": url,
           "PDP_API_KEYS": json.dumps({TOKEN: ["pep"]})}
    process = subprocess.Popen([sys.executable, "-m", "pdp", "serve", "--port", str(port),
                                "--log-level", "warning"], cwd=workdir, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                raise SystemExit("pdp serve exited")
            time.sleep(0.2)
        else:
            raise SystemExit("pdp serve did not get ready")
        yield base
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def compare(facts: list[dict[str, Any]], index: FactIndex, mix: list[Request], now_us: int,
            ports: tuple[int, int], connections: int, seconds: float,
            warm_set: int) -> dict[str, dict[str, float]]:
    """pdp cold, pdp warm, Cerbos cold and warm: wrk figures, one after the other."""
    workdir = Path(tempfile.mkdtemp(prefix="wrk-"))
    ours = [json.dumps(r.authzen()) for r in mix]
    theirs = [json.dumps(cerbos_peer.check_body(index, r.user, [(r.client, r.category,
                                                                  r.action, r.purpose)],
                                                 now_us)) for r in mix]
    results: dict[str, dict[str, float]] = {}
    try:
        with pdp_server(facts, ports[0]) as base:
            url = base + "/access/v1/evaluation"
            results["pdp, cold (no request repeats)"] = wrk(url, ours, connections, seconds,
                                                            workdir)
            results["pdp, warm (requests repeat)"] = wrk(url, ours[:warm_set], connections,
                                                         seconds, workdir)
        with cerbos_peer.Cerbos(ports[1]) as cerbos:
            url = cerbos.url + "/api/check/resources"
            results["Cerbos, cold (no request repeats)"] = wrk(url, theirs, connections,
                                                               seconds, workdir)
            results["Cerbos, warm (requests repeat)"] = wrk(url, theirs[:warm_set],
                                                            connections, seconds, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results

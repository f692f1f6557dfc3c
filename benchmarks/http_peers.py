"""HTTP single evaluations, pdp and the Cerbos PDP side by side, driven by wrk (Debian's
package: a C load generator, not the bottleneck here) at `connections` connections.

pdp runs as `pdp serve --workers N` on a SQLite store holding the workload's facts,
with the decision log on (as it must be); between two runs the next waits until pdp has
worked off what the last left queued; Cerbos with `peers/cerbos/client_record.yaml`, the
bodies carrying the attributes it needs. Each body is sent once per run in the cold
runs (no request repeats) and repeatedly in the warm ones.
"""

from __future__ import annotations

import json
import os
import random
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

from pdp.engine.factindex import FactIndex
from pdp.engine.facts_service import parse_batch
from pdp.model.vocab import ACTIONS, CATEGORIES, SERVICES
from pdp.store.sql import open_store

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
    sent = re.search(r"(\d+) requests in", out)
    assert rate is not None and sent is not None, out
    return {"requests_per_s": float(rate.group(1)), "requests": float(sent.group(1)),
            "bodies": float(len(bodies)), "p50_ms": millis("50%"),
            "p75_ms": millis("75%"), "p90_ms": millis("90%"), "p99_ms": millis("99%")}


def per_decision(row: dict[str, float], batch: int) -> dict[str, float]:
    return {**row, "decisions_per_s": row["requests_per_s"] * batch}


def settle(url: str, body: str, headers: dict[str, str], timeout: float = 120) -> None:
    """Wait until the server has worked off what the last wrk run left queued: a request
    that needs no policy query answers within 50 ms twice running."""
    deadline = time.monotonic() + timeout
    quick = 0
    while quick < 2 and time.monotonic() < deadline:
        started = time.monotonic()
        httpx.post(url, content=body, headers=headers, timeout=timeout).raise_for_status()
        quick = quick + 1 if time.monotonic() - started < 0.05 else 0


def warm_passes(base: str) -> float:
    """How many whole warming passes of its start the server has finished (its
    pdp_warm_passes_total{why="start",result="finished"}, of all workers)."""
    text = httpx.get(base + "/metrics", timeout=10).text
    found = re.findall(r'^pdp_warm_passes_total\{(?=[^}]*result="finished")'
                       r'(?=[^}]*why="start")[^}]*\}\s+([\d.e+]+)$', text, re.MULTILINE)
    return sum(float(value) for value in found)


def wait_warm(base: str, workers: int = 1, timeout: float = 1800) -> float:
    """Wait until every worker has finished its start's warming pass; seconds waited."""
    started = time.monotonic()
    while warm_passes(base) < workers:
        if time.monotonic() - started > timeout:
            raise SystemExit(f"the server did not finish warming in {timeout} s")
        time.sleep(0.5)
    return time.monotonic() - started


def warm_up(url: str, bodies: list[str], headers: dict[str, str], passes: int = 6) -> None:
    """Send every body several times over a few connections, so that each worker
    process (the kernel spreads connections between them) has answered it."""
    # A new connection for every request (perhaps to another worker).
    with httpx.Client(headers={**headers, "Connection": "close"}, timeout=300) as client:
        for _ in range(passes):
            for body in bodies:
                client.post(url, content=body).raise_for_status()


def load_facts(url: str, facts: list[dict[str, Any]]) -> None:
    """Write the facts into the (fresh) store at `url`."""
    store = open_store(url)
    changes = parse_batch(facts)
    for start in range(0, len(changes), 50_000):
        store.apply(changes[start:start + 50_000])
    store.close()


@contextmanager
def pdp_server(facts: list[dict[str, Any]], port: int, workers: int = 1,
               database_url: str | None = None) -> Iterator[str]:
    """`pdp serve` on the facts (in a fresh SQLite file), or on `database_url`, a store
    that holds them already."""
    workdir = Path(tempfile.mkdtemp(prefix="pdp-bench-"))
    url = database_url or f"sqlite:///{workdir / 'facts.sqlite3'}"
    if database_url is None:
        load_facts(url, facts)
    env = {**os.environ, "PDP_DATABASE_URL": url,
           "PDP_API_KEYS": json.dumps({TOKEN: ["pep"]})}
    log = (workdir / "serve.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "pdp", "serve", "--port", str(port),
                                "--log-level", "warning", "--workers", str(workers)],
                               cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
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
    except BaseException:
        print("pdp serve's log, its end:\n"
              + (workdir / "serve.log").read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def batches(mix: list[Request], size: int) -> list[list[Request]]:
    """The mix's requests grouped by user into batches of `size` (a Cerbos request has
    one principal); each user's requests are repeated to fill a batch."""
    by_user: dict[str, list[Request]] = {}
    for request in mix:
        by_user.setdefault(request.user, []).append(request)
    return [(mine * (size // len(mine) + 1))[:size] for mine in by_user.values()]


def unseen_batches(index: FactIndex, mix: list[Request], size: int, count: int,
                   seed: int = 8) -> list[list[Request]]:
    """`count` batches of `size` requests, one user each (the users in id order, round
    robin), about clients of the user's municipality, none of them in the mix and none
    repeated: for the cold batch runs."""
    rng = random.Random(seed)
    seen = set(mix)
    clients_of: dict[str, list[str]] = {}
    for client_id, client in index.clients.items():
        clients_of.setdefault(client.home_municipality, []).append(client_id)
    every = sorted(index.clients)
    users = sorted(index.users)
    found: list[list[Request]] = []
    while len(found) < count:
        user = users[len(found) % len(users)]
        fact = index.users[user]
        pool = clients_of.get(fact.municipality) or every
        purposes = list(fact.tasks) or list(SERVICES)
        group: list[Request] = []
        while len(group) < size:
            request = Request(user, rng.choice(pool), rng.choice(CATEGORIES),
                              rng.choice(ACTIONS), rng.choice(purposes))
            if request not in seen:
                seen.add(request)
                group.append(request)
        found.append(group)
    return found


def compare(facts: list[dict[str, Any]], index: FactIndex, mix: list[Request], now_us: int,
            ports: tuple[int, int], connections: int, seconds: float,
            warm_set: int, batch: int = 100, workers: int = 1) -> dict[str, dict[str, float]]:
    """pdp and Cerbos, cold and warm single evaluations and batches of `batch`: wrk
    figures, one after the other (decisions/s = requests/s x batch for batches). Cold:
    no request is sent twice (singles: the mix, to a process just ready, warming in the
    background; batches: requests not in the mix); mix cycled: the whole mix over and
    over, once the start's warming pass has finished; warm: a small set sent over and
    over."""
    workdir = Path(tempfile.mkdtemp(prefix="wrk-"))
    ours = [json.dumps(r.authzen()) for r in mix]
    theirs = [json.dumps(cerbos_peer.check_body(index, r.user, [(r.client, r.category,
                                                                  r.action, r.purpose)],
                                                 now_us)) for r in mix]

    def bodies(groups: list[list[Request]]) -> tuple[list[str], list[str]]:
        return ([json.dumps({"evaluations": [r.authzen() for r in group]})
                 for group in groups],
                [json.dumps(cerbos_peer.check_body(
                    index, group[0].user,
                    [(r.client, r.category, r.action, r.purpose) for r in group], now_us))
                 for group in groups])

    # Warm: a set small enough to be sent many times over in a run, and sent once over
    # beforehand (untimed) so that every worker has it memoised.
    our_batches, their_batches = bodies(batches(mix, batch)[:max(2, warm_set // batch)])
    our_cold, their_cold = bodies(unseen_batches(
        index, mix, batch, max(20, round(seconds * 60))))
    results: dict[str, dict[str, float]] = {}
    try:
        with pdp_server(facts, ports[0], workers) as base:
            single = base + "/access/v1/evaluation"
            probe = ours[0]
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            ready = time.monotonic()
            settle(single, probe, headers)
            # A fresh process: its warming pass of the start runs meanwhile.
            results["pdp, cold (no request repeats)"] = wrk(single, ours, connections, seconds,
                                                            workdir)
            waited = wait_warm(base, workers)
            results["pdp, warming"] = {"warm_after_ready_s": time.monotonic() - ready,
                                       "waited_s": waited}
            settle(single, probe, headers)
            # The whole mix over and over: a working day's variety, warmed as it serves.
            results["pdp, mix cycled"] = wrk(single, ours, connections, seconds, workdir)
            settle(single, probe, headers)
            warm_up(single, ours[:warm_set], headers)
            settle(single, probe, headers)
            results["pdp, warm (requests repeat)"] = wrk(single, ours[:warm_set], connections,
                                                         seconds, workdir)
            settle(single, probe, headers)
            url = base + "/access/v1/evaluations"
            results[f"pdp, batches of {batch}, cold"] = per_decision(wrk(
                url, our_cold, connections, seconds, workdir), batch)
            settle(single, probe, headers)
            warm_up(url, our_batches, headers)
            settle(single, probe, headers)
            results[f"pdp, batches of {batch}, warm"] = per_decision(wrk(
                url, our_batches, connections, seconds, workdir), batch)
        with cerbos_peer.Cerbos(ports[1]) as cerbos:
            url = cerbos.url + "/api/check/resources"
            results["Cerbos, cold (no request repeats)"] = wrk(url, theirs, connections,
                                                               seconds, workdir)
            results["Cerbos, mix cycled"] = wrk(url, theirs, connections, seconds, workdir)
            results["Cerbos, warm (requests repeat)"] = wrk(url, theirs[:warm_set],
                                                            connections, seconds, workdir)
            results[f"Cerbos, batches of {batch}, cold"] = per_decision(wrk(
                url, their_cold, connections, seconds, workdir), batch)
            results[f"Cerbos, batches of {batch}, warm"] = per_decision(wrk(
                url, their_batches, connections, seconds, workdir), batch)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def scaling(facts: list[dict[str, Any]], mix: list[Request], port: int, database_url: str,
            connections: int, seconds: float, batch: int = 100,
            workers: tuple[int, ...] = (1, 2)) -> dict[str, dict[str, float]]:
    """pdp on PostgreSQL (which holds the facts and the decision log of every worker)
    with each number of workers: the mix cycled as singles and in batches, once every
    worker has warmed."""
    workdir = Path(tempfile.mkdtemp(prefix="wrk-"))
    ours = [json.dumps(r.authzen()) for r in mix]
    groups = [json.dumps({"evaluations": [r.authzen() for r in group]})
              for group in batches(mix, batch)]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    results: dict[str, dict[str, float]] = {}
    load_facts(database_url, facts)
    try:
        for count in workers:
            with pdp_server([], port, count, database_url) as base:
                single = base + "/access/v1/evaluation"
                waited = wait_warm(base, count)
                settle(single, ours[0], headers)
                row = wrk(single, ours, connections, seconds, workdir)
                results[f"PostgreSQL, {count} worker(s), mix cycled"] = {
                    **row, "warm_after_ready_s": waited}
                settle(single, ours[0], headers)
                results[f"PostgreSQL, {count} worker(s), batches of {batch}"] = per_decision(
                    wrk(base + "/access/v1/evaluations", groups, connections, seconds,
                        workdir), batch)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results

"""Decision throughput and latency of one server over HTTP, under a bounded load.

Starts `pdp serve` on a free loopback port (embedded SQLite by default; --postgres: a
fresh PostgreSQL database on 127.0.0.1:5432), loads the demo world, and runs, for
--seconds each after a one-second warm-up, N client threads (httpx, keep-alive):

- single: POST /access/v1/evaluation, one of a fixed set of 50 user x client x purpose
  triples of the demo world (each with its own category): after the warm-up every
  answer is a memoised one (cache hit), which is the steady state of a PEP;
- batch50: POST /access/v1/evaluations with those 50 items in one request.

Then the same against `pdp serve --workers 2`. The load generator (threads spread over
--client-procs processes) runs on the same machine, so the CPU used by the server and by
the client is reported next to the numbers (with --postgres also the local PostgreSQL's,
all its processes), and decisions per server CPU-second.

--memory instead measures the resident memory (RSS) of one server process: with the
demo world, after loading a synthetic world (--synthetic-clients clients and as many
relationships through POST /v1/facts:batch in chunks of 5000), and after --misses
decisions that each miss the decision cache (whose time it also reports); with --redis
also the size of the shared snapshot in Redis.

Run: .venv/bin/python benchmarks/http_load.py [--clients 8] [--seconds 5] [--postgres]
     .venv/bin/python benchmarks/http_load.py --memory [--postgres] [--redis] [--misses N]
Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import propagation as infra  # the shared benchmark infrastructure

from pdp.service.demo import demo_facts

CATEGORIES = ["name_contact", "service_needs_plans", "client_relationship",
              "education_work_history", "offers_referrals", "services_assessments",
              "health_work_capacity", "benefits"]
USERS = ["u-1001", "u-1002", "u-1003", "u-2001", "u-3001"]
CLIENTS = [f"c-{code}-{n:03d}" for code in ("749", "297") for n in range(1, 6)]
PURPOSES = ["coaching", "guidance", "training"]
TICKS = os.sysconf("SC_CLK_TCK")


def triples() -> list[dict[str, Any]]:
    """50 evaluations: 5 users x 10 clients, purposes and categories rotating."""
    items = []
    for i, (user, client) in enumerate((u, c) for u in USERS for c in CLIENTS):
        items.append({"subject": {"type": "user", "id": user}, "action": {"name": "read"},
                      "resource": {"type": "client_record", "id": client,
                                   "properties": {"category": CATEGORIES[i % len(CATEGORIES)]}},
                      "context": {"purpose": PURPOSES[i % len(PURPOSES)]}})
    return items


# -- the server's processes ----------------------------------------------------------------

def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    seconds = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            seconds[pid] = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return seconds


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_by_pid(pids).values())


def postmaster_pid() -> int | None:
    """The local PostgreSQL's postmaster (the parent of its checkpointer), if visible."""
    with contextlib.suppress(Exception), infra._pg_connect("postgres") as conn:
        row = conn.execute("SELECT pid FROM pg_stat_activity "
                           "WHERE backend_type = 'checkpointer'").fetchone()
        if row:
            stat = Path(f"/proc/{row[0]}/stat").read_text()
            return int(stat.rsplit(")", 1)[1].split()[1])
    return None


def rss_mb(pids: list[int]) -> dict[int, float]:
    sizes = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes[pid] = int(line.split()[1]) / 1024
    return sizes


@contextlib.contextmanager
def store_env(args: argparse.Namespace, workdir: Path) -> Iterator[dict[str, str]]:
    """The server's environment: a fresh store, and --env."""
    if args.postgres:
        with infra.pg_database() as url:
            yield {**args.extra, "PDP_DATABASE_URL": url}
    else:
        path = workdir / f"facts-{time.time_ns()}.sqlite3"
        yield {**args.extra, "PDP_DATABASE_URL": f"sqlite:///{path}"}


# -- load ----------------------------------------------------------------------------------

def run_load(url: str, path: str, bodies: list[bytes], clients: int,
             seconds: float) -> tuple[int, int, list[float]]:
    """`clients` threads posting `bodies` round-robin for `seconds`:
    (requests, errors, latencies in ms)."""
    headers = {"Authorization": f"Bearer {infra.ADMIN_TOKEN}",
               "Content-Type": "application/json"}
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def work(n: int) -> None:
        mine, i = latencies[n], n
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            client.post(path, content=bodies[0])  # connect before the clock starts
            start.wait()
            while time.perf_counter() < stop_at[0]:
                began = time.perf_counter()
                try:
                    ok = client.post(path, content=bodies[i % len(bodies)]).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    mine.append((time.perf_counter() - began) * 1000)
                else:
                    errors[n] += 1
                i += 1

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + 3600  # until the barrier releases
    start.wait(timeout=30)
    stop_at[0] = time.perf_counter() + seconds
    for thread in threads:
        thread.join(timeout=seconds + 30)
    merged = [x for part in latencies for x in part]
    return len(merged) + sum(errors), sum(errors), merged


def _child(send: Any, url: str, path: str, bodies: list[bytes], clients: int,
           seconds: float) -> None:
    began = time.perf_counter()
    result = run_load(url, path, bodies, clients, seconds)
    send.send((*result, time.perf_counter() - began))
    send.close()


def run_spread(url: str, path: str, bodies: list[bytes], clients: int, seconds: float,
               procs: int) -> tuple[float, int, list[float]]:
    """run_load over `procs` processes (so the client is not one GIL):
    (successful requests per second, errors, latencies in ms)."""
    if procs <= 1:
        began = time.perf_counter()
        requests, errors, latencies = run_load(url, path, bodies, clients, seconds)
        return (requests - errors) / (time.perf_counter() - began), errors, latencies
    context = multiprocessing.get_context("fork")
    share = [clients // procs + (1 if k < clients % procs else 0) for k in range(procs)]
    children = []
    for count in share:
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_child,
                                  args=(send, url, path, bodies, count, seconds))
        process.start()
        children.append((process, receive))
    rate, errors, latencies = 0.0, 0, []
    for process, receive in children:
        if not receive.poll(seconds + 60):
            raise RuntimeError("a load process did not report")
        requests, failed, times, wall = receive.recv()
        process.join(10)
        rate += (requests - failed) / wall
        errors += failed
        latencies += times
    return rate, errors, latencies


def measure(server: infra.Server, name: str, path: str, bodies: list[bytes], per_request: int,
            args: argparse.Namespace) -> dict[str, Any]:
    # warm-up: connections, and the caches of every worker
    run_spread(server.url, path, bodies, args.clients, 1.0, args.client_procs)
    pids = process_tree(server.process.pid)
    server_cpu = cpu_seconds(pids)
    postmaster = postmaster_pid() if args.postgres else None
    db_before = cpu_by_pid(process_tree(postmaster)) if postmaster else {}
    own = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    began = time.perf_counter()
    rate, errors, latencies = run_spread(server.url, path, bodies, args.clients, args.seconds,
                                         args.client_procs)
    wall = time.perf_counter() - began
    server_cpu = cpu_seconds(pids) - server_cpu
    db_after = cpu_by_pid(process_tree(postmaster)) if postmaster else {}
    db_cpu = sum(v - db_before.get(pid, 0.0) for pid, v in db_after.items())
    after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    client_cpu = sum((x.ru_utime - y.ru_utime) + (x.ru_stime - y.ru_stime)
                     for x, y in zip(after, own, strict=True))
    return {"workload": name, "requests": len(latencies) + errors, "errors": errors,
            "rps": rate, "dps": rate * per_request,
            "p50": infra.percentile(latencies, 50) if latencies else float("nan"),
            "p99": infra.percentile(latencies, 99) if latencies else float("nan"),
            "server_cpu": server_cpu / wall * 100, "client_cpu": client_cpu / wall * 100,
            "db_cpu": db_cpu / wall * 100 if postmaster else float("nan"),
            "dps_per_cpu": len(latencies) * per_request / server_cpu if server_cpu
            else float("nan")}


def throughput(args: argparse.Namespace, workdir: Path) -> None:
    items = triples()
    single = [orjson.dumps(item) for item in items]
    batch = [orjson.dumps({"evaluations": items})]
    store = "postgresql" if args.postgres else "sqlite"
    rows = []
    log_sizes: list[tuple[int, int]] = []
    for workers in args.workers:
        with store_env(args, workdir) as env, infra.pdp_server(
                f"w{workers}", workdir, env, ("--workers", str(workers))) as server:
            infra.load_demo(server)
            print(f"{store}, --workers {workers} …", file=sys.stderr, flush=True)
            for name, path, bodies, per in (
                    ("single", "/access/v1/evaluation", single, 1),
                    ("batch50", "/access/v1/evaluations", batch, len(items))):
                row = measure(server, name, path, bodies, per, args)
                row |= {"store": store, "workers": workers}
                if args.postgres:
                    row["pg_connections"] = infra.pg_connections(env["PDP_DATABASE_URL"])
                rows.append(row)
            if args.postgres and args.extra.get("PDP_AUDIT_LOG", "true") != "false":
                log_sizes.append(infra.pg_table_size(env["PDP_DATABASE_URL"], "audit_records"))
    print(f"{args.clients} clients ({args.client_procs} process(es)) x {args.seconds:g} s per "
          f"row, cache-hit workload ({len(items)} triples); CPU % of one core "
          f"({os.cpu_count()} cores)")
    header = (f"{'store':10} {'workers':>7} {'workload':8} {'req/s':>8} {'decisions/s':>11} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'server CPU':>10} "
              f"{'client CPU':>10} {'dec/CPU-s':>9}")
    if args.postgres:
        header += f" {'PG CPU':>6} {'pg conns':>8}"
    print(header)
    for r in rows:
        line = (f"{r['store']:10} {r['workers']:7d} {r['workload']:8} {r['rps']:8.0f} "
                f"{r['dps']:11.0f} {r['p50']:7.2f} {r['p99']:7.2f} {r['errors']:6d} "
                f"{r['server_cpu']:9.0f}% {r['client_cpu']:9.0f}% {r['dps_per_cpu']:9.0f}")
        if args.postgres:
            line += f" {r['db_cpu']:5.0f}% {r['pg_connections']:8d}"
        print(line)
    if log_sizes:
        records = sum(n for n, _ in log_sizes)
        size = sum(b for _, b in log_sizes)
        print(f"decision log in PostgreSQL: {records} records, {size / records:.0f} bytes per "
              f"record (pg_total_relation_size of audit_records, with its indexes)")


# -- memory --------------------------------------------------------------------------------

def synthetic(count: int) -> list[dict[str, Any]]:
    """`count` clients of 749/297/844 and one open coaching relationship each."""
    now = datetime.now(UTC)
    starts = (now - timedelta(days=20)).isoformat()
    codes = ("749", "297", "844")
    clients = [{"kind": "client", "id": f"c-syn-{n:06d}",
                "data": {"home_municipality": codes[n % 3], "protection_order": n % 97 == 0,
                         "area_client": True}}
               for n in range(count)]
    relationships = [{"kind": "relationship", "id": f"r-syn-{n:06d}",
                      "data": {"client": f"c-syn-{n:06d}", "municipality": codes[n % 3],
                               "service": "coaching", "starts_at": starts, "ends_at": None,
                               "assigned_users": []}}
                     for n in range(count)]
    return clients + relationships


def snapshot_size(redis_url: str, prefix: str, version: int, timeout: float = 30) -> int:
    """Bytes of the shared snapshot in Redis once it is at `version`."""
    import redis

    client = redis.Redis.from_url(redis_url)
    key = f"{prefix}:snapshot"
    deadline = time.monotonic() + timeout
    try:
        while True:
            raw = client.getrange(key, 0, 40)
            head = raw.encode() if isinstance(raw, str) else bytes(raw)
            if head.startswith(b'{"v":') and int(head[5:].split(b",")[0]) >= version:
                return int(client.strlen(key))
            if time.monotonic() > deadline:
                raise TimeoutError(f"no snapshot at version {version} in Redis")
            time.sleep(0.2)
    finally:
        client.close()


def memory(args: argparse.Namespace, workdir: Path) -> None:
    store = "postgresql" if args.postgres else "sqlite"
    rows: list[tuple[str, float]] = []
    with contextlib.ExitStack() as stack:
        env = stack.enter_context(store_env(args, workdir))
        if args.redis:
            env["PDP_REDIS_URL"] = stack.enter_context(infra.redis_server(workdir)).url
            env["PDP_SNAPSHOT_INTERVAL_SECONDS"] = "1"
        first = contextlib.ExitStack()
        stack.enter_context(first)
        began = time.perf_counter()
        server = first.enter_context(infra.pdp_server("memory", workdir, env))
        start_empty = time.perf_counter() - began
        pid = server.process.pid

        def rss() -> float:
            return sum(rss_mb([pid]).values())

        rows.append(("started, empty store", rss()))
        demo = demo_facts()
        infra.load_demo(server)
        bodies = [orjson.dumps(item) for item in triples()]
        run_load(server.url, "/access/v1/evaluation", bodies, 2, 1.0)
        rows.append((f"demo world ({len(demo)} facts), {len(bodies)} decisions cached",
                     rss()))
        facts = synthetic(args.synthetic_clients)
        began = time.perf_counter()
        version = infra.load_facts(server, facts, chunk=5000)
        load_seconds = time.perf_counter() - began
        snapshot = (snapshot_size(env["PDP_REDIS_URL"], env.get("PDP_REDIS_PREFIX", "pdp"),
                                  version) if args.redis else None)
        rows.append((f"+ {args.synthetic_clients} clients + {args.synthetic_clients} "
                     f"relationships (facts_version {version})", rss()))
        times = []
        for n in range(args.misses):  # u-1001 (749) and 749's clients: the allow path
            body = {"subject": {"type": "user", "id": "u-1001"}, "action": {"name": "read"},
                    "resource": {"type": "client_record",
                                 "id": f"c-syn-{3 * n % args.synthetic_clients:06d}",
                                 "properties": {"category": "service_needs_plans"}},
                    "context": {"purpose": ("coaching", "guidance", "training")[
                        3 * n // args.synthetic_clients % 3]}}
            began = time.perf_counter()
            response = server.client.post("/access/v1/evaluation", json=body)
            times.append((time.perf_counter() - began) * 1000)
            response.raise_for_status()
        rows.append((f"+ {args.misses} more decisions cached (cache misses)", rss()))
        first.close()  # stop it; start a new server on the same store (and Redis)
        began = time.perf_counter()
        with infra.pdp_server("restart", workdir, env):
            restart = time.perf_counter() - began
    print(f"RSS of one `pdp serve` process ({store} store"
          f"{', Redis' if args.redis else ''})")
    for what, mb in rows:
        print(f"  {what:60} {mb:7.1f} MB")
    per_fact = (rows[2][1] - rows[1][1]) * 1024 / len(facts)
    print(f"  loading {len(facts)} facts in chunks of 5000: {load_seconds:.1f} s; "
          f"{per_fact:.2f} KB RSS per fact")
    if args.misses:
        per_entry = (rows[3][1] - rows[2][1]) * 1024 / args.misses
        print(f"  {per_entry:.2f} KB RSS per cached decision table; cache-miss decision over "
              f"HTTP (sequential): p50 {infra.percentile(times, 50):.1f} ms, "
              f"p99 {infra.percentile(times, 99):.1f} ms")
    if snapshot is not None:
        print(f"  shared snapshot in Redis at facts_version {version}: "
              f"{snapshot / 1024 / 1024:.1f} MB")
    print(f"  start until /readyz 200: {start_empty:.1f} s with an empty store, "
          f"{restart:.1f} s with the {len(demo) + len(facts)} facts"
          f"{' (from the Redis snapshot)' if args.redis else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row")
    parser.add_argument("--client-procs", type=int, default=2,
                        help="spread the client threads over this many processes")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="`pdp serve --workers` values to measure")
    parser.add_argument("--postgres", action="store_true",
                        help="PostgreSQL (a fresh database) instead of the embedded SQLite")
    parser.add_argument("--memory", action="store_true", help="measure RSS instead")
    parser.add_argument("--synthetic-clients", type=int, default=20_000)
    parser.add_argument("--misses", type=int, default=1000,
                        help="--memory: cache-miss decisions to make and time")
    parser.add_argument("--redis", action="store_true",
                        help="--memory: with a private Redis, and report the shared "
                             "snapshot's size")
    parser.add_argument("--env", action="append", default=[], metavar="PDP_X=VALUE",
                        help="extra environment for the server (repeatable), e.g. "
                             "PDP_AUDIT_LOG=false to see what the decision log costs")
    args = parser.parse_args()
    if args.clients < 1 or args.seconds <= 0 or min(args.workers) < 1:
        parser.error("--clients, --seconds and --workers must be positive")
    args.extra = infra.parse_env(parser, args.env)
    infra.raise_on_sigterm()
    print(infra.describe(args.extra))
    with tempfile.TemporaryDirectory(prefix="pdp-http-load-") as tmp:
        if args.memory:
            memory(args, Path(tmp))
        else:
            throughput(args, Path(tmp))


if __name__ == "__main__":
    main()

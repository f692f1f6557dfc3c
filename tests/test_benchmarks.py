"""The benchmarks keep working: CI runs tiny versions of them (no timing is asserted).
The peers come from Debian (wrk, installed by scripts/services) and npm (Cerbos,
installed by benchmarks/peers/cerbos_peer.py on first use)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_workload_benchmark_runs_on_a_tiny_world(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    done = subprocess.run([sys.executable, "benchmarks/run.py", "--tiny", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "agreement: raw oso = pdp on 20 requests" in done.stdout
    assert "agreement: cedarpy = pdp on all" in done.stdout
    assert "agreement: Cerbos = pdp on 20 requests" in done.stdout
    result = json.loads(out.read_text())
    assert result["machine"]["cpus"] == os.cpu_count() and result["date"]
    timings = {
        "pdp warm (memoised)", "pdp never asked before, after a warming pass",
        "pdp cold, answers by shape kept", "pdp first of its shape (policy queries)",
        "raw oso (same policies, no caches)", "cedarpy (in process, no caches)",
        "Cerbos (HTTP round trip, one client)"}
    assert set(result["in_process"]) == {*timings, "warming pass"}
    for name in timings:
        row = result["in_process"][name]
        assert 0 < row["p50_us"] <= row["p99_us"]
    warming = result["in_process"]["warming pass"]
    assert warming["seconds"] > 0 and warming["queries"] > 0
    assert 0 <= warming["missed"] < warming["queries"]
    assert set(result["http"]) == {"pdp, warming"} | {
        f"{who}, {what}" for who in ("pdp", "Cerbos")
        for what in ("cold (no request repeats)", "mix cycled", "warm (requests repeat)",
                     "batches of 100, cold", "batches of 100, warm")}
    assert result["http"]["pdp, warming"]["warm_after_ready_s"] > 0
    for name, row in result["http"].items():
        if name != "pdp, warming":
            assert row["requests_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
            assert row["requests"] > 0 and row["bodies"] > 0
    for who in ("pdp", "Cerbos"):
        for kind in ("cold", "warm"):
            row = result["http"][f"{who}, batches of 100, {kind}"]
            assert row["decisions_per_s"] == row["requests_per_s"] * 100
    # pdp on PostgreSQL with one and two workers, each warmed.
    assert set(result["scaling"]) == {
        f"PostgreSQL, {n} worker(s), {what}" for n in (1, 2)
        for what in ("mix cycled", "batches of 100")}
    for row in result["scaling"].values():
        assert row["requests_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    # Search: a user with related clients, every page walked, cold and warm.
    search = result["search"]
    assert search["related_clients"] > 0 and 0 < search["results"] <= search["related_clients"]
    assert search["warm_all_pages_ms"] > 0 and search["cold_all_pages_ms"] > 0
    assert search["warmed_all_pages_ms"] > 0
    # Propagation through Redis and a cold start, measured.
    assert result["propagation"]["rounds"] == 3 and result["propagation"]["p99"] > 0
    cold = result["cold_start"]
    assert cold["facts"] > 4_000 and cold["ready_s"] > 0 and cold["rss_at_ready_mib"] > 0
    assert cold["warm_s"] >= cold["ready_s"] and cold["rss_at_warm_mib"] > 0
    # Ratios to every peer, and every target with a verdict.
    assert any("cedarpy" in what for what in result["ratios"])
    assert any("Cerbos" in what for what in result["ratios"])
    assert {t["met"] for t in result["targets"]} <= {True, False, None}
    # figures, not bounds (and a cold run whose bodies repeated: not a verdict)
    assert sum(t["met"] is None for t in result["targets"]) >= 3
    assert len(result["targets"]) == 17
    assert "targets:" in done.stdout and "ratios (pdp / peer):" in done.stdout
    # The plot of the latency distributions.
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The mix: about 70 % allowed, and denials of many reasons.
    reasons = result["reasons"]
    assert 0.6 <= reasons["allowed"] / result["requests"] <= 0.8
    assert len(reasons) >= 8, reasons

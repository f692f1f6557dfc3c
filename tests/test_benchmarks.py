"""The benchmarks keep working: CI runs tiny versions of them (no timing is asserted).
The peers come from Debian (wrk, installed by scripts/services) and npm (Cerbos,
installed by benchmarks/peers/cerbos_peer.py on first use)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_workload_benchmark_runs_on_a_tiny_world(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    done = subprocess.run([sys.executable, "benchmarks/run.py", "--tiny", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "agreement: raw oso = pdp on 20 requests" in done.stdout
    assert "agreement: cedarpy = pdp on all" in done.stdout
    assert "agreement: Cerbos = pdp on 20 requests" in done.stdout
    result = json.loads(out.read_text())
    assert set(result["in_process"]) == {
        "pdp warm (memoised)", "pdp cold, answers by shape kept",
        "pdp cold, nothing memoised", "raw oso (same policies, no caches)",
        "cedarpy (in process, no caches)", "Cerbos (HTTP round trip, one client)"}
    for row in result["in_process"].values():
        assert 0 < row["p50_us"] <= row["p99_us"]
    assert set(result["http"]) == {
        "pdp, cold (no request repeats)", "pdp, warm (requests repeat)",
        "pdp, batches of 100, warm", "Cerbos, cold (no request repeats)",
        "Cerbos, warm (requests repeat)", "Cerbos, batches of 100, warm"}
    for row in result["http"].values():
        assert row["requests_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    for name in ("pdp, batches of 100, warm", "Cerbos, batches of 100, warm"):
        row = result["http"][name]
        assert row["decisions_per_s"] == row["requests_per_s"] * 100
    assert "pdp / Cerbos, warm: requests/s" in done.stdout
    assert "pdp / Cerbos, batches: decisions/s" in done.stdout
    # The mix: about 70 % allowed, and denials of many reasons.
    reasons = result["reasons"]
    assert 0.6 <= reasons["allowed"] / result["requests"] <= 0.8
    assert len(reasons) >= 8, reasons

"""The Cerbos peer: the Cerbos PDP (binary from the npm package
`@cerbos/cerbos-linux-x64`) over HTTP on loopback, with `cerbos/client_record.yaml`.
The load generator supplies the attributes Cerbos needs, built here from the facts."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from pdp.engine.factindex import FactIndex
from pdp.engine.policy_input import policy_record

VERSION = "0.55.0"
HERE = Path(__file__).parent
TOOLS = HERE.parent / ".peers"  # npm installs here (ignored by git)


def binary() -> Path:
    """The cerbos binary, installed from npm on first use."""
    found = TOOLS / "node_modules/@cerbos/cerbos-linux-x64/cerbos-linux-x64"
    if not found.exists():
        TOOLS.mkdir(exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix",
                        str(TOOLS), f"@cerbos/cerbos-linux-x64@{VERSION}"], check=True)
    return found


class Cerbos:
    """A Cerbos server on a free loopback port, stopped by `stop` (or the with-block)."""

    def __init__(self, port: int) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="cerbos-"))
        policies = self.workdir / "policies"
        policies.mkdir()
        shutil.copy(HERE / "cerbos/client_record.yaml", policies / "client_record.yaml")
        config = self.workdir / "config.yaml"
        config.write_text(
            f'server:\n  httpListenAddr: "127.0.0.1:{port}"\n'
            f'  grpcListenAddr: "127.0.0.1:{port + 1}"\n'
            "  requestLimits:\n    maxActionsPerResource: 10\n"
            "    maxResourcesPerRequest: 100\n"
            f"storage:\n  driver: disk\n  disk:\n    directory: {policies}\n"
            "audit:\n  enabled: false\n")
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([str(binary()), "server", f"--config={config}",
                                         "--log-level=error"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        env={**os.environ, "CERBOS_NO_TELEMETRY": "1"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/_cerbos/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.process.terminate()
        _, err = self.process.communicate(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)
        raise SystemExit(f"cerbos did not start: {err.decode(errors='replace')[-2000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Cerbos:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def check_body(facts: FactIndex, user: str, items: list[tuple[str, str, str, str]],
               now: int) -> dict[str, Any]:
    """A CheckResources request: one principal, (client, category, action, purpose)s.
    The attributes are the facts as pdp's policy reads them (`policy_record`), split
    into the principal's and each resource's."""
    resources = []
    record: dict[str, Any] = {}
    for client, category, action, purpose in items:
        record = policy_record(facts, user, client, purpose, now)
        resources.append({"actions": [action], "resource": {
            "kind": "client_record", "id": client, "attr": {
                "now": now, "category": category, "purpose": purpose,
                "known": record["client_known"], "home": record["client_home"],
                "protection_order": record["client_protection_order"],
                "relationships": record["relationships"]}}})
    principal = {"id": user, "roles": ["user"], "attr": {
        "known": record["user_known"], "status": record["user_status"],
        "municipality": record["user_municipality"], "tasks": record["user_tasks"],
        "client_id": record["user_client_id"],
        "agreement_status": record["agreement_status"],
        "agreement_ends_at": record["agreement_ends_at"],
        "area_municipalities": record["area_municipalities"],
        "grants": record["grants"]}}
    return {"requestId": "bench", "principal": principal, "resources": resources}


def allowed(response: dict[str, Any]) -> list[bool]:
    return [next(iter(result["actions"].values())) == "EFFECT_ALLOW"
            for result in response["results"]]

"""The `pdp` command as a user runs it: a real process each time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pdp.service.demo import demo_facts, demo_register, demo_register_before
from tests.support.servers import ROOT, Server

pytestmark = pytest.mark.process  # the CLI asks a served PDP over a socket


def pdp(*args: str, env: dict[str, str] | None = None, input: str | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
    return subprocess.run([sys.executable, "-m", "pdp", *args], capture_output=True, text=True,
                          env={**environment, **(env or {})}, input=input, cwd=cwd, timeout=60)


@pytest.mark.parametrize("command", [(), ("serve",), ("check",), ("facts", "import"),
                                     ("policy", "test"), ("policy", "check")])
def test_help(command: tuple[str, ...]) -> None:
    done = pdp(*command, "--help")
    assert done.returncode == 0
    assert "Usage" in done.stdout
    assert len(done.stdout.strip().splitlines()) > 3


def test_policy_check_names_file_and_line(tmp_path: Path) -> None:
    assert pdp("policy", "check").returncode == 0
    for source in (ROOT / "policies").glob("*.polar"):
        shutil.copy(source, tmp_path / source.name)
    rules = tmp_path / "rules.polar"
    lines = rules.read_text().splitlines()
    target = next(i for i, line in enumerate(lines) if line.startswith('failing(r, "own_record")'))
    lines[target] = 'failing(r, "own_record") if r.user_client_id = ;'
    rules.write_text("\n".join(lines) + "\n")
    done = pdp("policy", "check", str(tmp_path))
    assert done.returncode == 1
    assert f"rules.polar:{target + 1}:" in done.stderr


def test_serve_refuses_without_keys(tmp_path: Path) -> None:
    done = pdp("serve", "--port", "1", cwd=tmp_path)
    assert done.returncode == 2
    assert "PDP_API_KEYS" in done.stderr


@pytest.mark.parametrize(("name", "value"), [
    ("PDP_NOTICE_MONTHS", "0"), ("PDP_NOTICE_MONTHS", "2"),
    ("PDP_REGISTER_BEFORE", "2025-01-01T00:00:00"),  # no offset
    ("PDP_REGISTER_BEFORE", "yesterday")])
def test_serve_refuses_a_bad_lifecycle_setting_at_start(tmp_path: Path, name: str,
                                                        value: str) -> None:
    """Notice runs at least the agreement's three months (§ 9); the register's cut-over
    is an RFC 3339 time with offset."""
    done = pdp("serve", "--port", "1", cwd=tmp_path, env={
        name: value, "PDP_API_KEYS": json.dumps({"t-admin": ["admin"]})})
    assert done.returncode == 2, done.stderr
    assert "invalid configuration" in done.stderr
    assert name.removeprefix("PDP_").lower() in done.stderr
    assert value not in done.stderr or name == "PDP_NOTICE_MONTHS"


def _jsonl(items: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(item) for item in items) + "\n"


def test_import_then_check_against_the_store(tmp_path: Path) -> None:
    env = {"PDP_DATABASE_URL": f"sqlite:///{tmp_path / 'facts.sqlite3'}",
           "PDP_REGISTER_BEFORE": demo_register_before().isoformat()}
    source = tmp_path / "facts.jsonl"
    source.write_text(_jsonl(demo_facts()))
    done = pdp("facts", "import", str(source), env=env)
    assert done.returncode == 0, done.stderr
    assert f"imported {len(demo_facts())} facts" in done.stdout
    register = tmp_path / "register.json"
    register.write_text(json.dumps(demo_register()))
    done = pdp("grants", "import", str(register), env=env)
    assert done.returncode == 0, done.stderr
    assert f"imported {len(demo_register()['grants'])} rights" in done.stdout

    allow = pdp("check", "--user", "u-1001", "--client", "c-749-001", "--category",
                "service_needs_plans", "--purpose", "coaching", env=env)
    assert allow.returncode == 0, allow.stderr
    assert allow.stdout.startswith("allow allowed")
    deny = pdp("check", "--user", "u-1001", "--client", "c-749-001", "--category",
               "benefits", "--purpose", "coaching", env=env)
    assert deny.returncode == 1
    assert deny.stdout.startswith("deny category_not_necessary")
    bad = pdp("check", "--user", "u-1001", "--client", "c-749-001", "--category",
              "no-such-category", "--purpose", "coaching", env=env)
    assert bad.returncode == 2
    # A write names the record's owner: the user's own municipality's record, or not.
    own = pdp("check", "--user", "u-1001", "--client", "c-749-001", "--category",
              "service_needs_plans", "--purpose", "coaching", "--action", "write",
              "--owner", "749", env=env)
    assert own.returncode == 0, own.stdout + own.stderr
    for owner in (("--owner", "authority"), ("--owner", "297"), ()):
        other = pdp("check", "--user", "u-1001", "--client", "c-749-001", "--category",
                    "service_needs_plans", "--purpose", "coaching", "--action", "write",
                    *owner, env=env)
        assert other.returncode == 1 and "action_not_permitted" in other.stdout, owner
    explained = pdp("explain", "--user", "u-1001", "--client", "c-749-001", "--category",
                    "service_needs_plans", "--purpose", "coaching", "--action", "write",
                    "--owner", "749", env=env)
    assert explained.returncode == 0 and "allow allowed" in explained.stdout


def test_import_is_all_or_nothing(tmp_path: Path) -> None:
    env = {"PDP_DATABASE_URL": f"sqlite:///{tmp_path / 'facts.sqlite3'}"}
    good = {"kind": "client", "id": "c-1", "data": {"home_municipality": "749",
                                                    "area_client": True}}
    bad = {"kind": "client", "id": "c-2", "data": {"home_municipality": "7490",
                                                   "area_client": True}}
    batch = {"facts": [{"kind": "client", "id": "c-3", "data": {"home_municipality": "297",
                                                                "area_client": True}}]}
    done = pdp("facts", "import", "-", env=env, input=_jsonl([good, batch, bad]))
    assert done.returncode == 2
    assert "facts[2]" in done.stderr and "nothing imported" in done.stderr
    check = pdp("check", "--user", "u", "--client", "c-1", "--category", "name_contact",
                "--purpose", "coaching", env=env)
    assert "facts_version 0" in check.stdout
    ok = pdp("facts", "import", "-", env=env, input=_jsonl([good, batch]))
    assert ok.returncode == 0 and "imported 2 facts, facts_version 1" in ok.stdout


def test_import_refuses_a_taken_user_id(tmp_path: Path) -> None:
    """A deleted user whom a right names: nobody may become that user (the right would be
    theirs); the import fails as a whole, with no traceback. A right of the register names
    a user who is there (else nothing is imported)."""
    from pdp.engine.facts_service import FactService
    from pdp.engine.policy_engine import load_policy
    from pdp.rights.lifecycle import Lifecycle
    from pdp.service.settings import DEFAULT_POLICY_DIR
    from pdp.store.protocols import Change
    from pdp.store.sql import open_store

    url = f"sqlite:///{tmp_path / 'facts.sqlite3'}"
    env = {"PDP_DATABASE_URL": url, "PDP_REGISTER_BEFORE": demo_register_before().isoformat()}
    user = {"kind": "user", "id": "u-gone", "data": {
        "municipality": "749", "display_name": "Uusi", "tasks": ["coaching"],
        "status": "active"}}
    agreement = {"kind": "agreement", "id": "749", "data": {
        "area": "kuopio", "status": "in_force", "signed_at": "2025-01-01T00:00:00+02:00"}}
    right = {**demo_register()["grants"][4], "id": "g-1", "user": "u-gone"}  # coaching
    stranger = {"grants": [{**right, "id": "g-2", "user": "u-nobody"}]}
    refused = pdp("grants", "import", "-", env=env, input=json.dumps(stranger))
    assert refused.returncode == 1 and "grants[0].user" in refused.stderr, refused.stderr
    assert pdp("facts", "import", "-", env=env, input=_jsonl([agreement, user])).returncode == 0
    imported = pdp("grants", "import", "-", env=env, input=json.dumps({"grants": [right]}))
    assert imported.returncode == 0, imported.stderr
    policy = load_policy(DEFAULT_POLICY_DIR)
    facts = FactService(open_store(url))
    facts.load()
    Lifecycle(lambda: policy, facts).write_facts([Change("user", "u-gone", None)], "Test")
    facts.store.close()

    client = {"kind": "client", "id": "c-1", "data": {"home_municipality": "749",
                                                      "area_client": True}}
    done = pdp("facts", "import", "-", env=env, input=_jsonl([client, user]))
    assert done.returncode == 1, done.stderr
    assert "id_taken" in done.stderr and "nothing imported" in done.stderr
    assert "Traceback" not in done.stderr
    check = pdp("check", "--user", "u", "--client", "c-1", "--category", "name_contact",
                "--purpose", "coaching", env=env)
    assert "facts_version 3" in check.stdout


def test_check_against_a_running_server(server: Server) -> None:
    env = {"PDP_TOKEN": "t-pep"}
    done = pdp("check", "--url", server.url, "--user", "nobody", "--client", "c",
               "--category", "name_contact", "--purpose", "coaching", env=env)
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("deny unknown_subject")
    unauthorized = pdp("check", "--url", server.url, "--user", "nobody", "--client", "c",
                       "--category", "name_contact", env={"PDP_TOKEN": "wrong"})
    assert unauthorized.returncode == 2
    assert "401" in unauthorized.stderr


def test_policy_test_passes_and_a_broken_case_fails(tmp_path: Path) -> None:
    done = pdp("policy", "test")
    assert done.returncode == 0, done.stdout[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.endswith(" 0 failed") and not last.startswith("0 passed")
    suite = (ROOT / "policies" / "tests" / "01_user.yaml").read_text()
    assert "expect: {decision: true, reason: allowed}" in suite
    broken = suite.replace("expect: {decision: true, reason: allowed}",
                           "expect: {decision: false, reason: user_inactive}", 1)
    (tmp_path / "broken.yaml").write_text(broken)
    failed = pdp("policy", "test", str(tmp_path))
    assert failed.returncode == 1
    assert "FAIL" in failed.stdout
    assert failed.stdout.strip().splitlines()[-1].endswith(" 1 failed")


def test_grants_list_due_and_history(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from pdp.engine.facts_service import FactService
    from pdp.engine.policy_engine import load_policy
    from pdp.rights.lifecycle import Lifecycle, Revocation
    from pdp.service.settings import DEFAULT_POLICY_DIR
    from pdp.store.sql import open_store

    url = f"sqlite:///{tmp_path / 'facts.sqlite3'}"
    now = datetime.now(UTC)
    env = {"PDP_DATABASE_URL": url,
           "PDP_REGISTER_BEFORE": demo_register_before(now).isoformat()}
    source = tmp_path / "facts.jsonl"
    source.write_text(_jsonl(demo_facts(now)))
    assert pdp("facts", "import", str(source), env=env).returncode == 0
    register = tmp_path / "register.json"
    register.write_text(json.dumps(demo_register(now)))
    assert pdp("grants", "import", str(register), env=env).returncode == 0
    policy = load_policy(DEFAULT_POLICY_DIR)
    facts = FactService(open_store(url))
    facts.load()
    Lifecycle(lambda: policy, facts).step("g-1002", "revoke",
                                          Revocation(reason="task_ended"), "Test Person")

    listed = pdp("grants", "list", "--municipality", "749", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[3] for line in listed.stdout.splitlines()[1:-1]}
    assert rows["g-1001"] == "active" and rows["g-1002"] == "revoked"
    assert "g-2001" not in rows  # Kuopio's
    expired = pdp("grants", "list", "--state", "expired", env=env)
    assert [line.split()[0] for line in expired.stdout.splitlines()[1:-1]] == ["g-2003"]
    # demo rights fall due for re-certification 60 days on: within 61 days, not 59
    assert "g-1001" in pdp("grants", "due", "--days", "61", env=env).stdout
    assert "g-1001" not in pdp("grants", "due", "--days", "59", env=env).stdout
    history = pdp("grants", "history", "g-1002", env=env)
    assert history.returncode == 0, history.stderr
    assert "grant.revoked" in history.stdout and "by Test Person — task_ended" in history.stdout
    assert pdp("grants", "history", "no-such-grant", env=env).returncode == 1

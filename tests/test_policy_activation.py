"""Putting a policy in force is a domain call (PolicyManager.put_in_force): the HTTP
reload and promote routes and the policy watch wrap it. Here without a server."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, cast

import pytest

from pdp.engine.facts_service import FactService
from pdp.engine.policy_engine import CompiledPolicy, load_policy
from pdp.engine.policy_manager import PolicyManager
from pdp.model.errors import POLICY_REJECTED, Refused
from pdp.store.protocols import BusUnavailable, Event

POLICIES = Path(__file__).parent.parent / "policies"


class Bus:
    def __init__(self, down: bool) -> None:
        self.down = down
        self.published: list[str] = []

    def publish_policy(self, version: str) -> None:
        if self.down:
            raise BusUnavailable("no redis")
        self.published.append(version)


class Facts:
    """What put_in_force uses of the facts service: the history and the bus."""

    def __init__(self, bus: Bus | None = None) -> None:
        self.bus = bus
        self.events: list[Event] = []

    def write(self, changes: list[Any], events: list[Event]) -> int:
        self.events += events
        return 1


def manager(tmp_path: Path) -> tuple[PolicyManager, list[CompiledPolicy]]:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    swapped: list[CompiledPolicy] = []
    return PolicyManager.started(directory, load_policy(directory), swapped.append), swapped


def test_put_in_force_records_swaps_and_announces(tmp_path: Path) -> None:
    policies, swapped = manager(tmp_path)
    before = policies.state.policy.version
    facts, bus = Facts(Bus(down=False)), Bus(down=False)
    facts.bus = bus
    same = policies.put_in_force("ann", cast(FactService, facts))
    assert same["changed"] is False and same["replicas_notified"] is None
    assert same["version"] == before and same["suites"]["failed"] == 0
    assert facts.events == [] and swapped == []
    path = policies.policy_dir / "data.polar"
    path.write_text(path.read_text() + "\n# a note\n")
    done = policies.put_in_force("ann", cast(FactService, facts))
    assert done["changed"] is True and done["replicas_notified"] is True
    version = done["version"]
    assert version != before and bus.published == [version]
    [event] = facts.events
    assert (event.type, event.actor) == ("policy.activated", "ann")
    assert event.data == {"version": version, "previous": before,
                          "files": ["data.polar", "lifecycle.polar", "rules.polar"]}
    assert [p.version for p in swapped] == [version]


def test_a_bus_that_is_down_is_said_and_the_policy_is_in_force(tmp_path: Path) -> None:
    policies, _ = manager(tmp_path)
    path = policies.policy_dir / "data.polar"
    path.write_text(path.read_text() + "\n# a note\n")
    done = policies.put_in_force("ann", cast(FactService, Facts(Bus(down=True))))
    assert done["changed"] is True and done["replicas_notified"] is False
    assert policies.state.policy.version == done["version"]


def test_a_refused_policy_is_a_domain_refusal_and_nothing_changes(tmp_path: Path) -> None:
    policies, swapped = manager(tmp_path)
    live = policies.state.policy
    path = policies.policy_dir / "rules.polar"
    path.write_text(path.read_text().replace("grant.valid_from <= r.now and",
                                             "grant.valid_from + 1 <= r.now and", 1))
    facts = Facts()
    with pytest.raises(Refused) as caught:
        policies.put_in_force("ann", cast(FactService, facts))
    assert caught.value.code == POLICY_REJECTED
    assert "arithmetic" in caught.value.message
    assert caught.value.details and caught.value.details[0]["file"].endswith("rules.polar")
    assert facts.events == [] and swapped == [] and policies.state.policy is live

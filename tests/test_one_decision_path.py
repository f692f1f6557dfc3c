"""One decision path (issue 16): the HTTP route, the policy suites' runner, `pdp check` and
explain all decide through `Decider.check`, so for the same request over the same world
they give the same answer and the same audit record — every field but the record's id
and time (and, for explain, its type "explain"; for the suites' runner, the facts
version: a suite's world is a change log of its own, numbered from 1).

The world is written through the API of the app in-process; the suites' runner gets it
as a case (the index's facts), `pdp check` reads it from the same store, as the command
line does. A batch that stops early records only what it decided, from the same entry;
the HTTP answer waits for the log; and the entry's view of the facts is not held while
the policy runs. In-process (tests/support/asgi.py) and the CLI through typer's runner."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from typer.testing import CliRunner

from pdp.cli import main as cli
from pdp.engine.authzen import Evaluation
from pdp.engine.decider import Asker, Checked, Decider
from pdp.engine.explain import explain
from pdp.engine.policy_tests import Case, Suite, check_case, run_suites
from pdp.engine.records import AuditRecord
from pdp.model.clock import from_micros
from pdp.model.facts import parse_fact
from tests.support.asgi import InProcess, in_process
from tests.support.world import World

# What a record says of who asked and when, and which record it is: not the decision's.
NOT_THE_DECISION = ("record_id", "at_us")


def same(record: AuditRecord, **ignore: Any) -> dict[str, Any]:
    """The record's fields that must agree between the paths."""
    return {k: v for k, v in record._asdict().items()
            if k not in NOT_THE_DECISION and k not in ignore}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[InProcess]:
    with in_process(tmp_path) as running:
        yield running


@pytest.fixture
def world(app: InProcess) -> World:
    """The world, with the index caught up with every write of it: the paths compared
    must see one version of the facts (a write is answered once it is committed; the
    index may take it in a moment later)."""
    with app.client("t-admin") as admin:
        built = World(admin).build()
    app.runtime.facts.catch_up()
    return built


class Kept:
    """The records the decision log was given, in order (the log still writes them)."""

    def __init__(self, app: InProcess) -> None:
        assert app.runtime.audit is not None
        self.log = app.runtime.audit
        self.records: list[AuditRecord] = []
        self._append = self.log.append

    def append(self, records: Sequence[AuditRecord]) -> Future[int]:
        self.records.extend(records)
        return self._append(records)


@pytest.fixture
def kept(app: InProcess, monkeypatch: pytest.MonkeyPatch) -> Kept:
    keeper = Kept(app)
    monkeypatch.setattr(keeper.log, "append", keeper.append)
    return keeper


def over_http(app: InProcess, kept: Kept, body: dict[str, Any]
              ) -> tuple[dict[str, Any], AuditRecord]:
    with app.client("t-pep") as pep:
        response = pep.post("/access/v1/evaluation", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    found = [r for r in kept.records if r.record_id == answer["context"]["decision_id"]]
    assert len(found) == 1, kept.records
    return answer, found[0]


def as_case(app: InProcess, body: dict[str, Any], now: datetime, answer: dict[str, Any]
            ) -> Case:
    """The world of the index as a suite case, expecting what HTTP answered."""
    facts: dict[str, dict[str, Any]] = {}
    with app.runtime.facts.index.reading() as view:
        for stored in view.stored_facts():
            facts.setdefault(stored.kind, {})[stored.id] = parse_fact(stored.kind, stored.data)
    return Case("same world", "", now, facts, Evaluation.model_validate(body).to_request(),
                answer["decision"], answer["context"]["reason"])


def by_cli(app: InProcess, body: dict[str, Any], caller: str | None
           ) -> tuple[str, AuditRecord]:
    """`pdp check` on the app's store; the record its decision entry built (not written:
    the command line keeps no decision log), asked as `caller` to compare it."""
    made: list[Checked] = []
    finish = Decider.finish

    def keep(self: Decider[Any], *args: Any, **kwargs: Any) -> Checked:
        checked = finish(self, *args, **kwargs)
        made.append(checked)
        return checked

    properties = body["resource"]["properties"]
    args = ["check", "--user", body["subject"]["id"], "--client", body["resource"]["id"],
            "--category", properties["category"], "--action", body["action"]["name"],
            "--purpose", body["context"].get("purpose", "")]
    if "owner" in properties:
        args += ["--owner", properties["owner"]]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Decider, "finish", keep)
        patch.setattr(cli, "CLI_CALLER", caller)
        patch.setenv("PDP_DATABASE_URL", f"sqlite:///{app.store_file}")
        result = CliRunner().invoke(cli.app, args)
    assert result.exit_code in (0, 1), result.output
    return result.output.splitlines()[0], made[-1].records[0]


def requests(world: World) -> list[dict[str, Any]]:
    """Allowed and denied, read and write, with and without an owner or a purpose."""
    return [world.request(), world.request("service_needs_plans", "write"),
            world.request("name_contact", "write", owner="authority"),
            world.request("benefits"), world.request(purpose="training"),
            world.request(purpose=None)]


class Asked(NamedTuple):
    """One request asked along every path, over one version of the facts."""

    answer: dict[str, Any]
    http: AuditRecord
    report_ok: bool
    suite: AuditRecord
    explained: dict[str, Any]
    explain: AuditRecord
    cli_line: str
    cli: AuditRecord


def every_path(app: InProcess, kept: Kept, body: dict[str, Any]) -> Asked:
    """The request asked over HTTP, by the suites' runner, explain and `pdp check`, all
    while the store stays at one version (asked again, up to three times, if something
    of the service's own — a misuse case, a right it suspends — wrote meanwhile)."""
    policy = app.runtime.policy
    for _ in range(3):
        version = app.runtime.facts.catch_up()
        answer, record = over_http(app, kept, body)
        now = from_micros(record.at_us)
        case = as_case(app, body, now, answer)
        report = run_suites(policy, [Suite("same world", "", Path("-"), (case,))])
        suite = check_case(policy, case, Asker(record.caller, record.request_id))
        explained, explain_record = explain(
            app.runtime.decider, Evaluation.model_validate(body).to_request(), now,
            Asker(record.caller, record.request_id, "explain"))
        line, cli_record = by_cli(app, body, record.caller)
        if app.runtime.facts.catch_up() == version:
            return Asked(answer, record, report.ok, suite.records[0], explained,
                         explain_record, line, cli_record)
    pytest.fail("the store kept changing under the test")


def test_http_suites_cli_and_explain_give_one_answer_and_one_record(
        app: InProcess, world: World, kept: Kept) -> None:
    for body in requests(world):
        asked = every_path(app, kept, body)
        answer, record = asked.answer, asked.http
        assert asked.report_ok, body
        assert same(asked.suite, facts_version=1) == same(record, facts_version=1), body
        assert (asked.explained["decision"], asked.explained["reason"],
                asked.explained["grant"]) == (answer["decision"],
                                              answer["context"]["reason"], record.grant_id)
        assert asked.explain.record_type == "explain"
        assert same(asked.explain, record_type=1) == same(record, record_type=1), body
        assert asked.cli_line == (f"{'allow' if answer['decision'] else 'deny'} "
                                  f"{answer['context']['reason']}")
        assert same(asked.cli) == same(record), body


def test_a_stopped_batch_records_what_the_entry_decided(
        app: InProcess, world: World, kept: Kept) -> None:
    items = [world.request(), world.request("benefits"), world.request()]
    with app.client("t-pep") as pep:
        response = pep.post("/access/v1/evaluations", json={
            "evaluations": items, "options": {"evaluations_semantic": "deny_on_first_deny"}})
    assert response.status_code == 200, response.text
    answers = response.json()["evaluations"]
    assert [a["decision"] for a in answers] == [True, False]
    assert [r.record_id for r in kept.records] == [a["context"]["decision_id"]
                                                   for a in answers]
    asker = Asker(kept.records[0].caller, kept.records[0].request_id)
    now = from_micros(kept.records[0].at_us)
    entry = app.runtime.decider.check(
        [Evaluation.model_validate(i).to_request() for i in items], now, asker,
        "deny_on_first_deny")
    assert [same(r) for r in entry.records] == [same(r) for r in kept.records]


def test_the_http_answer_waits_for_the_log(app: InProcess, world: World,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Durable first: if the log cannot take the record, no decision goes out."""
    from pdp.audit.log import AuditUnavailable

    def failing(records: Sequence[AuditRecord]) -> Future[int]:
        future: Future[int] = Future()
        future.set_exception(AuditUnavailable("down"))
        return future

    assert app.runtime.audit is not None
    monkeypatch.setattr(app.runtime.audit, "append", failing)
    with app.client("t-pep") as pep:
        response: httpx.Response = pep.post("/access/v1/evaluation", json=world.request())
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "audit_unavailable"


class Watched:
    """The policy, noting whether a writer could take the fact index while it ran."""

    def __init__(self, policy: Any, index: Any) -> None:
        self.policy, self.index = policy, index
        self.free: list[bool] = []

    @property
    def version(self) -> str:
        return str(self.policy.version)

    def evaluate(self, record: Any) -> Any:
        def writer() -> None:
            taken = self.index.lock.acquire(blocking=False)
            self.free.append(taken)
            if taken:
                self.index.lock.release()

        thread = threading.Thread(target=writer)
        thread.start()
        thread.join()
        return self.policy.evaluate(record)


def test_the_policy_runs_outside_the_view(app: InProcess, world: World) -> None:
    """The view is held while records are built, never while the policy runs: a cold
    query takes milliseconds, and writes must not wait behind it."""
    index = app.runtime.facts.index
    watched = Watched(app.runtime.policy, index)
    decider = Decider(watched, index)
    request = Evaluation.model_validate(world.request()).to_request()
    checked = decider.check([request], app.runtime.decider.clock(), Asker("x"))
    assert checked.decisions[0].decision is True
    assert watched.free == [True]

"""No code runs from a policy: the safe subset (pdp.engine.policy_vet), the guarded query
loop (pdp.engine.policy_engine) and the sandbox of candidates (pdp.engine.policy_sandbox),
each tested with the escapes an attacker with a policy_admin token would try, over every way in."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pdp.engine.policy_engine as engine
from pdp.engine.factindex import FactIndex
from pdp.engine.policy_engine import PolicyError, PolicyEscape, compile_sources, read_policy
from pdp.engine.policy_input import policy_record
from pdp.engine.policy_manager import PolicyRejected, vet_policy
from pdp.engine.policy_sandbox import SandboxedPolicy, SandboxLimits
from pdp.engine.policy_vet import violations_in
from pdp.model.clock import to_micros
from pdp.model.policy_schema import (
    DECISION_RECORD,
    FIELDS,
    GRANT,
    RELATIONSHIP,
    RIGHT,
    policy_input,
)
from pdp.service.settings import DEFAULT_POLICY_DIR
from tests.support.escapes import RCE
from tests.support.servers import Server, start_server, stop_server

# (policy text, a word of the construct the refusal must name)
ESCAPES: list[tuple[str, str]] = [
    (RCE.format(out="rce.txt"), "__class__"),
    # method calls on strings, lists, dicts and numbers
    ('f(r) if r.user_id.upper() = "X";', "method call"),
    ('f(r) if r.user_tasks.append("x");', "method call"),
    ('f(r) if r.grants.pop();', "method call"),
    ('f(r) if {a: 1}.keys() = [];', "method call"),
    ('f(r) if r.now.bit_length() > 1;', "method call"),
    ('f(r) if "abc".__class__ = r;', "__class__"),
    ('f(r) if r.purpose.join(["a"]) = "";', "method call"),
    # attributes that are not the input's fields
    ('f(r) if r.user_id.__doc__ = "";', "__doc__"),
    ('f(r) if r.password = "";', "password"),
    ('f(r) if r.user_id.real = 1;', "real"),
    # dynamic lookups and the operator forms
    ('f(r, x) if x = "__class__" and r.(x) = 1;', "dynamic"),
    ('f(r) if r.("__class__") = 1;', "dynamic"),
    ('f(r) if .(r, "__class__") = 1;', "operator form"),
    ('f(r) if r.in = 1;', "dynamic or keyword"),
    ('f(r) if r.user_id.(name)(1);', "dynamic"),
    # constructing host objects, classes, class checks
    ('f(x) if x = new String("a");', "new"),
    ('f(x) if x = new Datetime(2020, 1, 1);', "new"),
    ('f(x) if x = String;', "String"),
    ('f(x) if x = Dictionary and x.fromkeys = 1;', "Dictionary"),
    ('f(x) if x matches String;', "matches"),
    ('f(x) if x isa String;', "isa"),
    ('f(x: String);', "specializer"),
    ('f(x: {a: 1});', "specializer"),
    ('f(x) if x = foo{a: 1};', "instance pattern"),
    # things that run at load, or talk to the host
    ('?= f(1);', "inline query"),
    ('f(x) if print(x);', "print"),
    ('f(x) if debug();', "debug"),
    ('resource Repo { roles = ["a"]; }', "resource block"),
    ('actor User {}', "resource block"),
    ('type f(x: String);', "type"),
    ('f(x) if g(name: x);', "keyword argument"),
    # names that reach Python's internals
    ('f(__class__);', "__"),
    ('f(r) if __import__(r);', "__"),
    ('f(x) if x = {__class__: 1};', "__"),
    # comments and strings must not hide anything, nor make a comment end early
    ('f(r) if true; # harmless\u2028f(r) if r.user_id.__class__ = 1;', "U+2028"),
    ('f(r) if true; # harmless\x0bf(r) if r.user_id.__class__ = 1;', "U+000B"),
    ('f(r) if true; # harmless\x0cf(r) if r.user_id.__class__ = 1;', "U+000C"),
    ('f(r) if r.purpose = "#"; g(r) if r.user_id.__class__ = 1;', "__class__"),
    ('f(r) if r.purpose = "\\"" and r.user_id.__class__ = 1;', "__class__"),
    ('f(r) if r.user_id = "a\nb";', "string"),
    # look-alikes and invisible characters
    ('f(r) if r.user_\u0456d = "x";', "non-ASCII"),  # Cyrillic i
    ('f(r) if r.\u0455tatus = "x";', "non-ASCII"),
    ('f(r) if r.user_id = "x"; # \u202e ;1 = __ssalc__.di_resu.r fi )r(g', "U+202E"),
    ('f(r) if r.user_id = "\u2066x\u2069";', "U+2066"),
    ('f(r) if r.user\u200b_id = "x";', "U+200B"),
    ('f(r) if r.user_id = "x\x00";', "U+0000"),
    ('f(r)\u00a0if r.user_id = "x";', "U+00A0"),
    # terms that would exhaust the engine: built lists, deep chains and nesting
    ('dbl(n, l, o) if n > 0 and m = n - 1 and dbl(m, [l, l], o);', "constants only"),
    ('g(l, [l, l]);', "constants only"),
    ('f([a, *rest]) if a = rest;', "constants only"),
    ('f({x}) if x = 1;', "constant value"),
    ('f(x) if x = {a: y} and y = 1;', "constants only"),
    ('boom(_r) if _z = ' + ' + '.join(['1'] * 11000) + ';', "deeper than"),
    ('boom(_r) if _z = ' + ' * '.join(['1'] * 101) + ';', "deeper than"),
    ('boom(r) if r' + '.now' * 101 + ' = 1;', "deeper than"),
    ('boom(r) if _z = ' + '(' * 200 + '1' + ')' * 200 + ';', "nested deeper"),
    ('boom(r) if ' + 'g(' * 200 + 'r' + ')' * 200 + ';', "nested deeper"),
    ('boom(r) if r.now = ' + '[' * 300 + ']' * 300 + ';', "nested deeper"),
    ('boom(r) if ' + 'not ' * 300 + 'r.now = 1;', "nested deeper"),
    ('f(r) if r.user_id =\uff1d "x";', "non-ASCII"),
]


@pytest.mark.parametrize(("text", "construct"), ESCAPES, ids=range(len(ESCAPES)))
def test_every_escape_is_refused_with_its_line_and_construct(text: str, construct: str
                                                             ) -> None:
    found = violations_in("x.polar", "# a comment first\n" + text)
    assert found, f"not refused: {text!r}"
    assert found[0].file == "x.polar"
    assert found[0].line >= 2  # the line of the escape, not of the comment
    assert construct.lower() in found[0].construct.lower(), found[0].construct


def test_the_project_policies_and_ordinary_polar_pass() -> None:
    for path in sorted(DEFAULT_POLICY_DIR.glob("*.polar")):
        assert violations_in(path.name, path.read_text(encoding="utf-8")) == []
    ordinary = ('f(r, a, ["x", 1, [true]], {x: 1, y: "b"}) if not r.now < 1 and (a = 1 or '
                'forall(x in r.user_tasks, x in ["coaching", "-2"])) and z := 1 + 2 * 3 mod 2 '
                'and z != 0 and r.grants = [] and g(r.now - -1); # ok: r.__class__\n'
                'g(r) if r.purpose = "x.__class__() # not a comment"; h();\n')
    assert violations_in("ok.polar", ordinary) == []


def test_the_allow_list_is_the_inputs_fields_and_no_python_attribute() -> None:
    from tests.support.small_world import world

    record = policy_record(world(), "u1", "c1", "coaching", 0)
    assert tuple(record) == DECISION_RECORD
    assert record["grants"] and record["relationships"]
    for grant in record["grants"]:
        assert tuple(grant) == GRANT
    for relationship in record["relationships"]:
        assert tuple(relationship) == RELATIONSHIP
    # The lifecycle's inputs are checked where they are built (policy_input).
    with pytest.raises(ValueError):
        policy_input(RIGHT, {"state": "active", "scopes": [], "extra": 1})
    # No allowed field is an attribute of a value the policy can hold.
    for kind in (str, int, float, bool, list, dict, tuple, type(None)):
        assert not FIELDS & set(dir(kind)), kind


def test_an_escape_that_got_past_the_text_check_still_cannot_call_python(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Second guard: with the text check switched off, the query loop refuses the call."""
    monkeypatch.setattr(engine, "vet_sources", lambda sources: None)
    out = tmp_path / "rce.txt"
    policy = compile_sources({"x.polar": RCE.format(out=out)})
    record = policy_record(FactIndex(), "u", "c", "coaching", 0)
    with pytest.raises(PolicyEscape):
        policy.evaluate(record)
    with pytest.raises(PolicyEscape):
        policy.first("decision", record, engine.var("c"), engine.var("a"),
                     engine.var("reason"), engine.var("g"))
    assert not out.exists()


def test_an_inline_query_is_refused_even_past_the_text_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "vet_sources", lambda sources: None)
    with pytest.raises(PolicyError, match="inline query"):
        compile_sources({"x.polar": '?= 1 = 1;\nf(1);'})


def test_a_policy_file_outside_the_subset_is_refused_at_load_with_file_and_line(
        tmp_path: Path) -> None:
    for path in DEFAULT_POLICY_DIR.glob("*.polar"):
        shutil.copy(path, tmp_path)
    with (tmp_path / "rules.polar").open("a", encoding="utf-8") as rules:
        rules.write('\nfailing(r, "own_record") if r.user_id.upper() = "X";\n')
    lines = (tmp_path / "rules.polar").read_text(encoding="utf-8").count("\n")
    with pytest.raises(PolicyError) as refused:
        engine.load_policy(tmp_path)
    assert refused.value.file == str(tmp_path / "rules.polar")
    assert refused.value.line == lines
    assert refused.value.construct is not None and "upper" in refused.value.construct


# -- the sandbox ---------------------------------------------------------------------------


def _limits(pid: int) -> dict[str, str]:
    rows = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {row[:26].strip(): row[26:47].strip() for row in rows}


def test_a_candidate_runs_confined_without_the_services_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PDP_API_KEYS", '{"secret-token": ["admin"]}')
    monkeypatch.setenv("PDP_DATABASE_URL", "postgresql://secret@127.0.0.1/pdp")
    policy = SandboxedPolicy(read_policy(DEFAULT_POLICY_DIR),
                             SandboxLimits(cpu_seconds=77, memory_bytes=900 * 1024 * 1024))
    try:
        process = policy._process
        assert process is not None
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        assert b"PDP_" not in environ and b"secret" not in environ
        limits = _limits(process.pid)
        assert limits["Max cpu time"] == "77"
        assert limits["Max file size"] == "0"
        assert limits["Max address space"] == str(900 * 1024 * 1024)
        assert limits["Max core file size"] == "0"
        status = Path(f"/proc/{process.pid}/status").read_text()
        uid = next(line for line in status.splitlines() if line.startswith("Uid:"))
        if os.geteuid() == 0:
            assert uid.split()[1:] == ["65534"] * 4  # dropped to nobody
        cwd = os.readlink(f"/proc/{process.pid}/cwd")
        assert cwd.startswith("/tmp/") and "pdp-sandbox-" in cwd
        # It decides as the service's own engine decides.
        record = policy_record(FactIndex(), "u", "c", "coaching", to_micros(
            __import__("datetime").datetime(2026, 1, 1, tzinfo=__import__("datetime").UTC)))
        local = engine.load_policy(DEFAULT_POLICY_DIR)
        assert policy.evaluate(record) == local.evaluate(record)
        assert policy.version == local.version
    finally:
        policy.close()
    assert process.poll() is not None  # closing stops the process


# Ten billion ways to fail, in constant space: it runs until something stops it.
RUNAWAY = ("".join(f"digit({d});" for d in range(10)) + "\nspin() if " +
           " and ".join(f"digit(_d{i})" for i in range(10)) + " and 1 = 2;\n")


def _runaway_sources(*, for_known_users: bool = False) -> dict[str, str]:
    """The policy with a rule that never ends: for every record, or (for_known_users)
    only past the load check's empty record, so that the suites meet it case by case."""
    sources = read_policy(DEFAULT_POLICY_DIR)
    old = 'failing(r, "unknown_subject") if not r.user_known;'
    assert old in sources["rules.polar"]
    runaway = (old + '\nfailing(r, "user_inactive") if r.user_known and spin();\n'
               if for_known_users else 'failing(_r, "unknown_subject") if spin();\n')
    sources["rules.polar"] = sources["rules.polar"].replace(old, runaway + RUNAWAY)
    return sources


def test_a_runaway_candidate_is_refused_within_its_budget() -> None:
    policy = SandboxedPolicy(_runaway_sources(for_known_users=True),
                             SandboxLimits(query_ms=300))
    try:
        with policy.budget(2.0), pytest.raises(PolicyRejected) as refused:
            vet_policy(policy, DEFAULT_POLICY_DIR / "tests", lambda: policy.failure)
    finally:
        policy.close()
    # The remaining cases failed at once on the spent budget (not 30 s per query each).
    assert "used up its time budget" in refused.value.message


def test_a_sandbox_that_does_not_answer_in_time_is_killed_and_replaced() -> None:
    limits = SandboxLimits(query_ms=0)  # oso: no budget of its own; only the wall clock
    policy = SandboxedPolicy(_runaway_sources(), limits)
    first = policy._process
    assert first is not None
    record = policy_record(FactIndex(), "u", "c", "coaching", 0)
    try:
        with pytest.raises(PolicyError, match="no answer"):
            policy.evaluate(record)
        assert first.poll() is not None  # killed on the wall clock
        with pytest.raises(PolicyError):
            policy.evaluate(record)  # a fresh process, the same runaway
        assert policy._process is None or policy._process.pid != first.pid
    finally:
        policy.close()


# -- every way in, over HTTP ----------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, Path]]:
    work = tmp_path_factory.mktemp("vet")
    policy_dir = work / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, policy_dir)
    server = start_server(work, env={"PDP_POLICY_DIR": str(policy_dir),
                                     "PDP_CANDIDATE_BUDGET_SECONDS": "5",
                                     "PDP_SANDBOX_QUERY_MS": "300"})
    yield server, policy_dir, work
    stop_server(server)


def _escape_files(policy_dir: Path, out: Path) -> dict[str, str]:
    files = {p.name: p.read_text(encoding="utf-8") for p in policy_dir.glob("*.polar")}
    files["rules.polar"] += "\n" + RCE.format(out=out)
    return files


def _assert_refused(body: dict[str, Any], file: str) -> None:
    error = body["error"]
    assert error["code"] == "policy_rejected"
    detail = error["details"][0]
    assert detail["file"].endswith(file) and detail["line"] > 100
    assert "__class__" in detail["construct"]


def test_the_escape_is_refused_on_every_way_in(live: tuple[Server, Path, Path]) -> None:
    server, policy_dir, work = live
    out = work / "rce.txt"
    with server.client("t-policy") as author:
        # Testing a candidate (the playground's call): 400, nothing ran.
        tested = author.post("/v1/policy/test", json={"files": _escape_files(policy_dir, out)})
        assert tested.status_code == 400, tested.text
        _assert_refused(tested.json(), "rules.polar")
        # A candidate for shadow: 409, nothing in shadow.
        uploaded = author.post("/v1/policy/candidates",
                               json={"files": _escape_files(policy_dir, out)})
        assert uploaded.status_code == 409, uploaded.text
        _assert_refused(uploaded.json(), "rules.polar")
        assert author.get("/v1/policy/candidates").json() == {"candidate": None}
        # The same text in the policy directory: the reload is refused, the old one serves.
        before = author.get("/v1/policy").json()["version"]
        rules = policy_dir / "rules.polar"
        original = rules.read_text(encoding="utf-8")
        rules.write_text(original + "\n" + RCE.format(out=out), encoding="utf-8")
        try:
            reloaded = author.post("/v1/policy/reload", timeout=120)
        finally:
            rules.write_text(original, encoding="utf-8")
        assert reloaded.status_code == 409, reloaded.text
        _assert_refused(reloaded.json(), "rules.polar")
        assert author.get("/v1/policy").json()["version"] == before
    assert not out.exists()


def test_a_runaway_candidate_is_refused_over_http_within_seconds(
        live: tuple[Server, Path, Path]) -> None:
    server, policy_dir, _ = live
    files = {p.name: p.read_text(encoding="utf-8") for p in policy_dir.glob("*.polar")}
    files.update(_runaway_sources(for_known_users=True))
    with server.client("t-policy") as author:
        tested = author.post("/v1/policy/test", json={"files": files}, timeout=120)
        assert tested.status_code == 200, tested.text
        assert tested.json()["ok"] is False
        # refused on the service's budget (5 s here, 300 ms a query), not oso's 30 s each
        assert "used up its time budget" in tested.json()["message"]
        # The service itself still answers.
        assert author.get("/v1/policy").status_code == 200


def test_a_service_whose_policy_directory_holds_an_escape_does_not_start(
        tmp_path: Path) -> None:
    policy_dir = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, policy_dir)
    with (policy_dir / "rules.polar").open("a", encoding="utf-8") as rules:
        rules.write("\n" + RCE.format(out=tmp_path / "rce.txt"))
    with pytest.raises(RuntimeError) as failed:
        start_server(tmp_path, env={"PDP_POLICY_DIR": str(policy_dir)})
    assert "outside the safe subset" in str(failed.value)
    assert not (tmp_path / "rce.txt").exists()


def test_terms_just_within_the_limits_load_and_answer() -> None:
    """The limits leave oso far from where it fails (past ten thousand levels)."""
    source = ('f(x) if x = ' + ' + '.join(['1'] * 95) + ';\n'
              'g(r, y) if y = r' + '.now' * 94 + ';\n'
              'h(x) if x = ' + '(' * 31 + '1' + ')' * 31 + ';\n'
              'k(x) if x = ' + '[' * 30 + ']' * 30 + ';\n')
    assert violations_in("a.polar", source) == []
    policy = compile_sources({"a.polar": source})
    assert policy.first("f", engine.var("x")) == {"x": 95}
    assert policy.first("h", engine.var("x")) == {"x": 1}
    assert policy.first("k", engine.var("x")) is not None


def test_no_more_than_two_candidates_are_tested_at_once(tmp_path: Path) -> None:
    from pdp.engine.metrics import Metrics
    from pdp.engine.shadow import MAX_CANDIDATE_RUNS, CandidateError, Candidates

    candidates = Candidates(DEFAULT_POLICY_DIR, FactIndex(), Metrics(), budget_seconds=0.2)
    for _ in range(MAX_CANDIDATE_RUNS):  # as if that many were running
        assert candidates._runs.acquire(timeout=1)
    with pytest.raises(CandidateError) as busy:
        candidates.test(read_policy(DEFAULT_POLICY_DIR))
    assert busy.value.code == "unavailable" and busy.value.retry_after == 5
    candidates._runs.release()
    candidates.budget_seconds = 60
    version, report = candidates.test(read_policy(DEFAULT_POLICY_DIR))
    assert report.ok and version == engine.load_policy(DEFAULT_POLICY_DIR).version

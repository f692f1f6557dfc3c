"""The `pdp` command: serve, check, facts import, policy test, policy check."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError

from pdp.service.settings import Settings

app = typer.Typer(help="Authorization decision service (PDP) for municipal access to "
                       "employment-services client data.", no_args_is_help=True,
                  add_completion=False)
facts_app = typer.Typer(help="Load and inspect facts.", no_args_is_help=True)
policy_app = typer.Typer(help="Check and test the Polar policies.", no_args_is_help=True)
grants_app = typer.Typer(help="Rights: list them, what falls due, a right's history.",
                         no_args_is_help=True)
audit_app = typer.Typer(help="The decision log: verify, prune, export.", no_args_is_help=True)
app.add_typer(facts_app, name="facts")
app.add_typer(grants_app, name="grants")
app.add_typer(audit_app, name="audit")
app.add_typer(policy_app, name="policy")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        typer.echo(f"pdp: invalid configuration: {error}", err=True)
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"pdp: {message}", err=True)
    return typer.Exit(code)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    demo: Annotated[bool, typer.Option(
        "--demo", help="Load the demo data set and demo keys (a fresh SQLite file under "
                       "pdp-data/ unless PDP_DATABASE_URL is set).")] = False,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
    workers: Annotated[int, typer.Option(
        min=1, help="Worker processes; each keeps its own facts in memory, kept coherent "
                    "through the store and PDP_REDIS_URL.")] = 1,
) -> None:
    """Start the HTTP decision service."""
    import uvicorn

    from pdp.engine.policy_engine import PolicyError
    from pdp.http.app import create_app
    from pdp.http.serving import uvicorn_options
    from pdp.model.callers import DEMO_KEYS
    from pdp.service.runtime import build_runtime
    from pdp.store.protocols import StoreUnavailable

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: "
                                                        "%(message)s")
    settings = _settings()
    keys = settings.api_keys
    if demo:
        if not settings.database_url:
            demo_file = settings.data_dir / "demo.sqlite3"
            for path in demo_file.parent.glob("demo.sqlite3*"):
                path.unlink()
            settings = settings.model_copy(update={"database_url": f"sqlite:///{demo_file}"})
        if settings.register_before is None:
            from pdp.service.demo import demo_register_before

            # the demo world's rights were granted before its own cut-over
            settings = settings.model_copy(update={"register_before": demo_register_before()})
        if keys is None:
            keys = DEMO_KEYS
            typer.echo("pdp: demo keys (bearer tokens): " + ", ".join(
                f"{token} ({'/'.join(roles)})" for token, roles in DEMO_KEYS.items()))
    if not settings.public_url:
        from pdp.service.settings import public_url_for

        settings = settings.model_copy(update={"public_url": public_url_for(host, port)})
    typer.echo(f"pdp: public URL {settings.public_url} (PDP_PUBLIC_URL; the discovery "
               "document names it)")
    if not keys:
        raise _fail("PDP_API_KEYS is not set: give a JSON object of bearer token -> roles, "
                    'e.g. PDP_API_KEYS=\'{"secret-token": ["pep"]}\' (or use --demo)', 2)
    try:
        runtime = build_runtime(settings, keys)
    except PolicyError as error:
        raise _fail(f"policy: {error}") from None
    except StoreUnavailable as error:
        raise _fail(f"store: {error}") from None
    if demo:
        from pdp.service.demo import load_demo

        load_demo(runtime.lifecycle)
        typer.echo(f"pdp: demo data loaded, facts_version {runtime.facts.index.version}")
    if workers > 1:
        # Each worker builds its own runtime from the environment (pdp.http.app:app_from_env).
        runtime.close()
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Metrics of all workers add up through files in one directory (pdp.engine.metrics).
            import tempfile

            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pdp-metrics-")
        os.environ["PDP_DATABASE_URL"] = settings.store_url()
        os.environ["PDP_API_KEYS"] = orjson.dumps(keys).decode()
        os.environ["PDP_PUBLIC_URL"] = str(settings.public_url)
        uvicorn.run("pdp.http.app:app_from_env", factory=True, workers=workers, host=host,
                    port=port, log_level=log_level.lower(), access_log=False,
                    **uvicorn_options(settings))
        return
    uvicorn.run(create_app(runtime), host=host, port=port, log_level=log_level.lower(),
                access_log=False, **uvicorn_options(settings))


# The options of one request, shared by `check` and `explain`.
UserOption = Annotated[str, typer.Option("--user", help="Subject: the user id.")]
ClientOption = Annotated[str, typer.Option("--client", help="Resource: the client id.")]
CategoryOption = Annotated[str, typer.Option("--category", help="Data category code.")]
PurposeOption = Annotated[str, typer.Option("--purpose", help="coaching, guidance or training.")]
ActionOption = Annotated[str, typer.Option("--action", help="read or write.")]
OwnerOption = Annotated[str | None, typer.Option(
    "--owner", help="Who produced the record (a write names it): a municipality code or "
                    "'authority'.")]
UrlOption = Annotated[str | None, typer.Option(
    "--url", help="Ask a running server (e.g. http://127.0.0.1:8080) instead of the store.")]
TokenOption = Annotated[str | None, typer.Option(
    "--token", envvar="PDP_TOKEN", help="Bearer token for --url (or PDP_TOKEN).")]


@app.command()
def check(user: UserOption, client: ClientOption, category: CategoryOption,
          purpose: PurposeOption = "", action: ActionOption = "read", url: UrlOption = None,
          token: TokenOption = None, owner: OwnerOption = None) -> None:
    """Decide one request and print the decision and reason.

    Exit status: 0 allowed, 1 denied, 2 error."""
    body = _evaluation_body(user, client, category, purpose, action, owner)
    if url:
        result = _post(url, "/access/v1/evaluation", body, token)
        decision, context = result["decision"], result["context"]
    else:
        from pdp.engine.decider import Asker
        from pdp.model.clock import utcnow

        decider, evaluation = _local(body)
        made = decider.check([evaluation.to_request()], utcnow(), Asker(CLI_CALLER)
                             ).decisions[0]
        decision = made.decision
        context = {"reason": made.reason, "policy_version": made.policy_version,
                   "facts_version": made.facts_version}
    typer.echo(f"{'allow' if decision else 'deny'} {context['reason']}")
    typer.echo(f"policy_version {context['policy_version']} facts_version "
               f"{context['facts_version']}")
    raise typer.Exit(0 if decision else 1)


def _evaluation_body(user: str, client: str, category: str, purpose: str,
                     action: str, owner: str | None = None) -> dict[str, Any]:
    properties = {"category": category, **({"owner": owner} if owner is not None else {})}
    return {"subject": {"type": "user", "id": user}, "action": {"name": action},
            "resource": {"type": "client_record", "id": client, "properties": properties},
            "context": {"purpose": purpose} if purpose else {}}


def _post(url: str, path: str, body: dict[str, Any], token: str | None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.post(url.rstrip("/") + path, json=body, headers=headers, timeout=30)
    except httpx.HTTPError as error:
        raise _fail(f"{url}: {error}", 2) from None
    if response.status_code != 200:
        raise _fail(f"{response.status_code} {response.text}", 2)
    return response.json()


# Who asks, in the audit record a local `check` or `explain` builds (it is not written:
# the command line reads the store's facts, it is not the service's decision log).
CLI_CALLER = "cli"


def _local(body: dict[str, Any]) -> tuple[Any, Any]:
    """A decider of the configured policy over the facts of the configured store (the
    service's own decision entry), and the request."""
    from pdp.engine.authzen import Evaluation
    from pdp.engine.core import check_policy
    from pdp.engine.decider import Decider
    from pdp.engine.facts_service import FactService
    from pdp.engine.policy_engine import PolicyError, load_policy
    from pdp.store.sql import open_store

    settings = _settings()
    try:
        evaluation = Evaluation.model_validate(body)
    except ValidationError as error:
        raise _fail(f"invalid request: {error}", 2) from None
    try:
        policy = load_policy(settings.policy_dir)
        check_policy(policy)
    except PolicyError as error:
        raise _fail(f"policy: {error}", 2) from None
    facts = FactService(open_store(settings.store_url()))
    facts.load()
    return Decider(policy, facts.index), evaluation


@app.command()
def explain(user: UserOption, client: ClientOption, category: CategoryOption,
            purpose: PurposeOption = "", action: ActionOption = "read", url: UrlOption = None,
            token: TokenOption = None, owner: OwnerOption = None) -> None:
    """Explain one decision: every rule in order, passed or failed, and the facts it read.

    Exit status: 0 allowed, 1 denied, 2 error."""
    body = _evaluation_body(user, client, category, purpose, action, owner)
    if url:
        result = _post(url, "/v1/explain", body, token)
    else:
        from pdp.engine.decider import Asker
        from pdp.engine.explain import explain as explain_decision
        from pdp.model.clock import utcnow

        decider, evaluation = _local(body)
        result, _ = explain_decision(decider, evaluation.to_request(), utcnow(),
                                     Asker(CLI_CALLER, record_type="explain"))
    for rule in result["rules"]:
        reads = ", ".join(f"{k}={orjson.dumps(v).decode()}" for k, v in rule["reads"].items())
        typer.echo(f"{'pass' if rule['passed'] else 'FAIL'} {rule['rule']:>2} "
                   f"{rule['check']:<28} {reads}")
    typer.echo(f"{'allow' if result['decision'] else 'deny'} {result['reason']} "
               f"(policy {result['policy_version']}, facts_version {result['facts_version']})")
    raise typer.Exit(0 if result["decision"] else 1)


@facts_app.command("import")
def facts_import(
    file: Annotated[Path, typer.Argument(help="JSONL: one fact {kind, id, data} or one "
                                              "batch {facts: [...]} per line; '-' for stdin.")],
) -> None:
    """Load facts into the configured store, all or nothing (one transaction)."""
    from pdp.engine.facts_service import parse_batch
    from pdp.model.errors import Refused
    from pdp.rights.lifecycle import refuse_grant_items
    from pdp.store.protocols import Change

    items: list[Any] = []
    stream = sys.stdin.buffer if str(file) == "-" else file.open("rb")
    with stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                raise _fail(f"{file}:{number}: malformed JSON: {error}", 2) from None
            items.extend(value["facts"] if isinstance(value, dict) and "facts" in value
                         else [value])
    from pdp.rights.lifecycle import WorkflowError

    lifecycle = _lifecycle()
    try:
        refuse_grant_items(lifecycle, items)  # a right: use_workflow, whatever its body
        try:
            changes: list[Change] = parse_batch(items)
        except Refused as error:
            raise _fail(f"{file}: {error.message}; nothing imported", 2) from None
        if not changes:
            raise _fail(f"{file}: no facts", 2)
        version = lifecycle.write_facts(changes, "pdp facts import")
    except WorkflowError as error:  # a taken id (id_taken), a right (use_workflow): nothing
        hint = (" (the register of rights before the service: pdp grants import)"
                if error.code == "use_workflow" else "")
        raise _fail(f"{file}: {error.code}: {error.message}; nothing imported{hint}") from None
    finally:
        lifecycle.facts.store.close()
    typer.echo(f"imported {len(changes)} facts, facts_version {version}")


@policy_app.command("check")
def policy_check(
    directory: Annotated[Path | None, typer.Argument(
        help="Policy directory (default: PDP_POLICY_DIR or the project's policies/).")] = None,
) -> None:
    """Load the policies; on a syntax error print file:line:column and fail."""
    from pdp.engine.core import check_policy
    from pdp.engine.policy_engine import PolicyError, load_policy

    directory = directory or _settings().policy_dir
    try:
        policy = load_policy(directory)
        check_policy(policy)
    except PolicyError as error:
        raise _fail(str(error)) from None
    typer.echo(f"ok {policy.version} ({len(policy.files)} files)")


@policy_app.command("test")
def policy_test(
    directory: Annotated[Path | None, typer.Argument(
        help="Suites directory (default: <policy dir>/tests).")] = None,
    policy_dir: Annotated[Path | None, typer.Option(
        help="Policy directory (default: PDP_POLICY_DIR or the project's policies/).")] = None,
    coverage: Annotated[bool, typer.Option(
        "--coverage", help="Also tell which rules and clauses the cases exercise (each "
                           "clause switched off in turn must fail a case); fail if a rule "
                           "is never exercised.")] = False,
) -> None:
    """Run the YAML policy test suites; print each case and a summary."""
    from pdp.engine.core import check_policy
    from pdp.engine.policy_coverage import format_coverage, measure
    from pdp.engine.policy_engine import PolicyError, load_policy
    from pdp.engine.policy_tests import SuiteError, format_report, load_suites, run_suites

    policy_dir = policy_dir or _settings().policy_dir
    directory = directory or policy_dir / "tests"
    try:
        policy = load_policy(policy_dir)
        check_policy(policy)
        suites = load_suites(directory)
    except (PolicyError, SuiteError) as error:
        raise _fail(str(error)) from None
    report = run_suites(policy, suites)
    typer.echo(format_report(report))
    if report.failed or not report.passed:
        raise typer.Exit(1)
    if coverage:
        measured = measure(policy_dir, suites)
        typer.echo(format_coverage(measured))
        raise typer.Exit(0 if measured.ok else 1)


def _lifecycle() -> Any:
    from pdp.engine.facts_service import FactService
    from pdp.rights.lifecycle import Lifecycle
    from pdp.service.runtime import load_checked_policy
    from pdp.store.sql import open_store

    settings = _settings()
    policy = load_checked_policy(settings)
    facts = FactService(open_store(settings.store_url()))
    facts.load()
    return Lifecycle(lambda: policy, facts, max_grant_months=settings.max_grant_months,
                     recertification_days=settings.recertification_days,
                     notice_months=settings.notice_months,
                     register_before=settings.register_before)


def _print_grants(rows: list[dict[str, Any]]) -> None:
    typer.echo(f"{'grant':<24} {'user':<16} {'mun':<4} {'state':<20} {'valid_until':<26} due")
    for row in rows:
        typer.echo(f"{row['id']:<24} {row['user']:<16} {row['municipality']:<4} "
                   f"{row['state']:<20} {row['valid_until']:<26} {row['due'] or '-'}")
    typer.echo(f"{len(rows)} rights")


@grants_app.command("import")
def grants_import(
    file: Annotated[Path, typer.Argument(help="JSON: {\"grants\": [...]} as for POST "
                                              "/v1/grants:import; '-' for stdin.")],
) -> None:
    """Import the register of rights granted before the service, each with its approval
    record: all or nothing, each right an event grant.imported."""
    from pydantic import ValidationError

    from pdp.model.errors import invalid
    from pdp.rights.lifecycle import GrantRegister, WorkflowError

    stream = sys.stdin.buffer if str(file) == "-" else file.open("rb")
    with stream:
        raw = stream.read()
    try:
        register = GrantRegister.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as error:
        raise _fail(f"{file}: malformed JSON: {error}; nothing imported", 2) from None
    except ValidationError as error:
        raise _fail(f"{file}: {invalid(error).message}; nothing imported", 2) from None
    lifecycle = _lifecycle()
    try:
        version = lifecycle.import_register(register, "pdp grants import")
    except WorkflowError as error:
        raise _fail(f"{file}: {error.code}: {error.message}; nothing imported") from None
    finally:
        lifecycle.facts.store.close()
    typer.echo(f"imported {len(register.grants)} rights, facts_version {version}")


@grants_app.command("list")
def grants_list(
    municipality: Annotated[str | None, typer.Option(help="Municipality code.")] = None,
    state: Annotated[str | None, typer.Option(
        help="applied, approved, active, recertification_due, suspended, revoked, expired."
    )] = None,
    user: Annotated[str | None, typer.Option(help="User id.")] = None,
) -> None:
    """List rights with the state they are in now."""
    _print_grants(_lifecycle().listing(municipality=municipality, state=state, user=user))


@grants_app.command("due")
def grants_due(
    days: Annotated[int, typer.Option(help="Within this many days.")] = 30,
    municipality: Annotated[str | None, typer.Option(help="Municipality code.")] = None,
) -> None:
    """Rights that expire or fall due for re-certification within N days."""
    from datetime import timedelta

    _print_grants(_lifecycle().listing(municipality=municipality,
                                       due_within=timedelta(days=days)))


@grants_app.command("history")
def grants_history(grant: Annotated[str, typer.Argument(help="Grant id.")]) -> None:
    """Every change of one right: when, what, who and why."""
    from pdp.store.sql import open_store

    store = open_store(_settings().store_url())
    events = store.events_of("grant", grant)
    store.close()
    if not events:
        raise _fail(f"no history of grant {grant!r}")
    for stored in events:
        event = stored.event
        status = (event.data.get("grant") or {}).get("status", "-")
        typer.echo(f"{stored.at.isoformat()}  {event.type:<24} {status:<10} by {event.actor}"
                   + (f" — {event.reason}" if event.reason else ""))


def _audit_log() -> Any:
    from pdp.audit.log import AuditLog
    from pdp.store.sql import open_store

    store = open_store(_settings().store_url())
    return AuditLog(store.engine)


def _record_cli_read(log: Any, what: str, question: dict[str, Any], answered: int) -> None:
    """Reads of the log from the command line are recorded like those over HTTP."""
    from pdp.audit.log import AuditRecord, new_record_id
    from pdp.model.clock import to_micros, utcnow

    log.write([AuditRecord("audit_read", new_record_id(), to_micros(utcnow()),
                           caller=f"cli:{os.environ.get('USER', 'unknown')}",
                           details=orjson.dumps({"read": what, "question": question,
                                                 "answered": answered}).decode())])


def _moment(text: str | None, option: str) -> int | None:
    from datetime import datetime

    from pdp.model.clock import to_micros

    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _fail(f"{option}: not an RFC 3339 time: {text}", 2) from None
    if moment.tzinfo is None:
        raise _fail(f"{option}: give the offset, e.g. {text}+02:00", 2)
    return to_micros(moment)


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the hash chain of the whole log; name the first bad record. Exit 1 if bad."""
    from pdp.audit.log import AuditUnavailable

    log = _audit_log()
    result = log.verify()
    if result.ok:
        typer.echo(f"ok: {result.checked} records, head {result.head_seq}")
    else:
        where = result.first_bad_seq if result.first_bad_seq is not None else "pending"
        typer.echo(f"BAD: record {where} ({result.first_bad_record or '-'}): {result.problem}")
    try:  # a broken log may refuse to record this read; the answer stands
        _record_cli_read(log, "verify", {}, result.checked)
    except AuditUnavailable as error:
        typer.echo(f"pdp: this read could not be recorded: {error}", err=True)
    log.stop()
    raise typer.Exit(0 if result.ok else 1)


@audit_app.command("prune")
def audit_prune(
    before: Annotated[str | None, typer.Option(
        help="Remove records older than this RFC 3339 time (default: the retention, "
             "PDP_AUDIT_RETENTION_DAYS before now).")] = None,
) -> None:
    """Remove records past retention, except those under a legal hold. A --before inside
    the retention period is refused (exit 2), naming the limit."""
    from pdp.audit.log import RetentionRefused, retention_limit
    from pdp.model.clock import to_micros, utcnow

    settings = _settings()
    now = to_micros(utcnow())
    cutoff = _moment(before, "--before")
    if cutoff is None:
        cutoff = retention_limit(now, settings.audit_retention_days)
    log = _audit_log()
    try:
        removed = log.prune(cutoff, now, retention_days=settings.audit_retention_days)
    except RetentionRefused as error:
        raise _fail(f"--before: {error}", 2) from None
    finally:
        log.stop()
    typer.echo(f"pruned {removed} records")


@audit_app.command("export")
def audit_export(
    since: Annotated[str | None, typer.Option("--from", help="From (RFC 3339).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Until, exclusive.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    out: Annotated[Path | None, typer.Option(help="File (default: standard output).")] = None,
) -> None:
    """Stream the records of a time range as JSONL or CSV for a SIEM (constant memory)."""
    if fmt not in ("jsonl", "csv"):
        raise _fail("--format: jsonl or csv", 2)
    log = _audit_log()
    question = {"from": since, "until": until, "format": fmt}
    count = 0
    target = out.open("w", encoding="utf-8") if out else sys.stdout
    try:
        for line in log.export(from_us=_moment(since, "--from"),
                               until_us=_moment(until, "--until"), fmt=fmt):
            target.write(line)
            count += 1
    finally:
        if out:
            target.close()
    _record_cli_read(log, "export", question, count)
    log.stop()


@app.command()
def report(
    month: Annotated[str, typer.Option(help="Calendar month YYYY-MM (Europe/Helsinki).")],
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
) -> None:
    """Write the monthly HTML report: accesses, denials and cases per municipality."""
    from pdp.audit.log import AuditLog
    from pdp.rights.monitoring import Cases
    from pdp.rights.report import month_bounds, monthly_report
    from pdp.store.sql import open_store

    try:
        month_bounds(month)
    except ValueError:
        raise _fail(f"--month: give a month as YYYY-MM, not {month!r}", 2) from None
    store = open_store(_settings().store_url())
    try:
        names: dict[str, str] = {}
        for fact in store.all_facts():
            if fact.kind == "area":
                for municipality in fact.data.get("municipalities", []):
                    names[str(municipality["code"])] = str(municipality["name"])
        log = AuditLog(store.engine)
        page = monthly_report(log, Cases(store.engine, store).list(), month, names)
        out.write_text(page, encoding="utf-8")
        _record_cli_read(log, "report", {"month": month}, 0)
        log.stop()
    finally:
        store.close()
    typer.echo(str(out))


def main() -> None:
    app()



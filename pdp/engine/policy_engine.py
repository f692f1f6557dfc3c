"""The one adapter to the Polar engine (oso). No other module imports oso or polar.

Compile once, evaluate many: `load_policy(directory)` reads the `*.polar` files, checks
them and returns an immutable `CompiledPolicy`; a new policy version is a new object that
callers swap in whole. The policy version is a content hash of the policy files.

A policy is input too, so nothing of it runs unvetted (README "Security"):
- its text is read once and vetted against the safe subset (`pdp.engine.policy_vet`) before that
  same text is given to oso;
- every query runs through `_GuardedQuery`: the Polar VM never gets to call into Python
  (no attribute lookup on a host object, no method call, no constructor, no class check,
  no debugger) — the inputs are plain dictionaries, lists, strings and numbers that the
  VM reads by itself, so a legitimate policy never asks; one that asks fails the query,
  and the decision fails closed;
- inline queries (`?=`), which oso would run at load, are refused;
- each query has a time budget (`set_query_timeout`, oso's POLAR_TIMEOUT_MS).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import threading
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from polar import Polar, Variable
from polar.exceptions import OsoError as PolarError
from polar.ffi import PolarSource
from polar.predicate import Predicate
from polar.query import Query

from pdp.engine.policy_vet import (
    GATE_RULE,
    TABLE_RULE,
    ShapeBroken,
    StagePlan,
    UnsafePolicy,
    stage_plan,
    vet_sources,
)

log = logging.getLogger(__name__)

# The rule the service queries: decision(record, category, action, reason, grant).
DECISION_RULE = "decision"

_ALLOW_WARNING = re.compile(r"\[warning\] Your policy does not contain an allow rule.*?#allow\n?",
                            re.DOTALL)
_LOCATION = re.compile(r"at line (\d+), column (\d+)(?: of file (\S+?))?:?$", re.MULTILINE)


class PolicyError(Exception):
    """The policy could not be loaded or does not answer; names the file and line if known,
    and for a policy outside the safe subset the construct refused."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 column: int | None = None, construct: str | None = None) -> None:
        where = ""
        if file is not None:
            where = f"{file}:{line}:{column}: " if line is not None else f"{file}: "
        super().__init__(f"{where}{message}")
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.construct = construct


class PolicyEscape(PolicyError):
    """A query asked to call into the host: refused, the query fails (fail closed)."""


class Evaluator(Protocol):
    """What decides with a policy: this module's CompiledPolicy, or a candidate in
    pdp.engine.policy_sandbox's separate process."""

    @property
    def version(self) -> str: ...

    def evaluate(self, record: Mapping[str, Any]) -> list[Outcome]: ...


class _GuardedQuery(Query):
    """oso's query loop with every way into Python refused (see the module doc)."""

    def _refuse(self, what: str) -> None:
        raise PolicyEscape(f"the policy asked the host for {what}; refused")

    def handle_make_external(self, data: Any) -> None:
        self._refuse("a new object")

    def handle_external_call(self, data: Any) -> None:
        self._refuse(f"the attribute or method {str(data.get('attribute'))[:64]!r}")

    def handle_external_op(self, data: Any) -> None:
        self._refuse("an operation on a host object")

    def handle_external_isa(self, data: Any) -> None:
        self._refuse("a class check")

    def handle_external_isa_with_path(self, data: Any) -> None:
        self._refuse("a class check")

    def handle_external_is_subspecializer(self, data: Any) -> None:
        self._refuse("a class comparison")

    def handle_external_is_subclass(self, data: Any) -> None:
        self._refuse("a class comparison")

    def handle_next_external(self, data: Any) -> None:
        self._refuse("iteration over a host object")

    def handle_debug(self, data: Any) -> None:
        self._refuse("the debugger")


def set_query_timeout(milliseconds: int) -> None:
    """Every Polar query started from now on in this process gives up after this long
    (oso reads POLAR_TIMEOUT_MS when it starts a query; its own default is 30 s)."""
    os.environ["POLAR_TIMEOUT_MS"] = str(int(milliseconds))


def _query(polar: Polar, name: str, args: Sequence[Any]
           ) -> Generator[dict[str, Any], None, None]:
    """query_rule(name, *args) through the guarded loop; yields each result's bindings."""
    host = polar.host.copy()
    term = host.to_polar(Predicate(name, args))  # type: ignore[no-untyped-call]
    ffi_query = polar.ffi_polar.new_query_from_term(term)  # type: ignore[no-untyped-call]
    for result in _GuardedQuery(ffi_query, host=host).run():  # type: ignore[no-untyped-call]
        yield result["bindings"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One answer of the policy for one category and action; a category or action of
    None is one the policy left unbound: the answer holds for every one."""

    category: str | None
    action: str | None
    reason: str
    grant: str  # "" unless allowed


def _bound(value: Any) -> Any:
    """A binding, or None for a variable the policy left unbound."""
    return None if isinstance(value, Variable) else value


def policy_files(directory: Path) -> list[Path]:
    """The policy's source files: every *.polar directly in `directory`, sorted by name."""
    return sorted(p for p in directory.glob("*.polar") if p.is_file())


def policy_version(files: Sequence[Path]) -> str:
    """The version of the policy in these files: a hash of their names and texts."""
    return sources_version({path.name: path.read_bytes().decode("utf-8", "replace")
                            for path in files})


def _location(error: Exception, files: Sequence[Path]) -> tuple[str | None, int | None, int | None]:
    match = _LOCATION.search(str(error))
    if not match:
        return None, None, None
    file = match.group(3) or (str(files[0]) if len(files) == 1 else None)
    return file, int(match.group(1)), int(match.group(2))


class CompiledPolicy:
    """A loaded, checked policy. Immutable after construction; safe to share across threads."""

    def __init__(self, files: Sequence[Path], version: str, polar: Polar,
                 sources: Mapping[str, str] | None = None,
                 plan: StagePlan | None = None) -> None:
        self.files = tuple(files)
        self.version = version
        # The text of each file as loaded, by file name.
        self.sources: Mapping[str, str] = dict(sources or {})
        # How `decision` may be asked in two stages (policy_vet.stage_plan), if it may.
        self.plan = plan
        self._polar = polar
        self._lock = threading.Lock()

    def evaluate(self, record: Mapping[str, Any]) -> list[Outcome]:
        """Every category x action outcome for one user x client x purpose record."""
        try:
            with self._lock:
                results = _query(self._polar, DECISION_RULE, (
                    dict(record), Variable("category"), Variable("action"),
                    Variable("reason"), Variable("grant")))
                outcomes = [
                    Outcome(_bound(b["category"]), _bound(b["action"]), b["reason"],
                            b["grant"])
                    for b in results
                ]
        except PolarError as error:
            raise PolicyError(f"evaluation failed: {error}") from error
        return outcomes

    def gate(self, record: Mapping[str, Any]) -> Outcome | None:
        """The first stage of a staged decision: the first answer of `failing` (rules
        1-8) as the outcome of every category and action, or None when none fails."""
        found = self.first(GATE_RULE, dict(record), Variable("reason"))
        return None if found is None else Outcome(None, None, found["reason"], "")

    def category_outcomes(self, record: Mapping[str, Any]) -> list[Outcome]:
        """The second stage: every answer of `category_outcome` (rules 9-11)."""
        return [Outcome(_bound(b["category"]), _bound(b["action"]), b["reason"], b["grant"])
                for b in self.every(TABLE_RULE, dict(record), Variable("category"),
                                    Variable("action"), Variable("reason"),
                                    Variable("grant"))]

    def every(self, rule: str, *args: Any) -> list[dict[str, Any]]:
        """The bindings of every answer to rule(*args) (variables made by `var`)."""
        try:
            with self._lock:
                return list(_query(self._polar, rule, args))
        except PolarError as error:
            raise PolicyError(f"{rule} failed: {error}") from error

    def first(self, rule: str, *args: Any) -> dict[str, Any] | None:
        """The bindings of the first answer to rule(*args) (variables made by `var`), or
        None when the rule does not hold."""
        try:
            with self._lock:
                query = _query(self._polar, rule, args)
                try:
                    bindings = next(query, None)
                finally:
                    query.close()
        except PolarError as error:
            raise PolicyError(f"{rule} failed: {error}") from error
        return bindings


def var(name: str) -> Any:
    """A query variable, for `CompiledPolicy.first`."""
    return Variable(name)


def read_policy(directory: Path | str) -> dict[str, str]:
    """The text of each *.polar file of a policy directory, by file name."""
    directory = Path(directory)
    files = policy_files(directory)
    if not files:
        raise PolicyError("no *.polar files", file=str(directory))
    try:
        return {path.name: path.read_bytes().decode("utf-8") for path in files}
    except UnicodeDecodeError as error:
        raise PolicyError(f"not UTF-8 text: {error}", file=str(directory)) from None


def sources_version(sources: Mapping[str, str]) -> str:
    """The policy version of these texts (as `policy_version` of the same files)."""
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(sources[name].encode("utf-8"))
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()[:16]


def load_policy(directory: Path | str) -> CompiledPolicy:
    """Load and check the policy in `directory`; raise PolicyError naming file and line."""
    directory = Path(directory)
    return compile_sources(read_policy(directory), directory)


def compile_sources(sources: Mapping[str, str], directory: Path | str = ".") -> CompiledPolicy:
    """Vet the texts (file name -> text) against the safe subset, then load exactly them
    into a fresh engine; raise PolicyError naming file, line and what is wrong."""
    directory = Path(directory)
    ordered = sorted(sources.items())
    try:
        vet_sources(ordered)
    except UnsafePolicy as unsafe:
        first = unsafe.violations[0]
        what = ("breaks the shape invariants the decision cache relies on"
                if isinstance(unsafe, ShapeBroken) else "outside the safe subset of Polar")
        raise PolicyError(f"{what}: {first.construct}",
                          file=str(directory / first.file), line=first.line,
                          column=first.column, construct=first.construct) from None
    files = [directory / name for name, _ in ordered]
    polar = Polar()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            polar.ffi_polar.load([PolarSource(text, str(path))
                                  for path, (_, text) in zip(files, ordered, strict=True)])
        if polar.ffi_polar.next_inline_query() is not None:  # type: ignore[no-untyped-call]
            raise PolicyError("an inline query (?=) — refused, it would run at load")
    except PolarError as error:
        file, line, column = _location(error, files)
        first_line = str(error).split("\n", 1)[0]
        raise PolicyError(first_line, file=file, line=line, column=column) from error
    # oso warns about a missing `allow` rule: this policy's entry point is `decision`.
    warnings = _ALLOW_WARNING.sub("", printed.getvalue()).strip()
    if warnings:
        log.warning("policy: %s", warnings)
    plan, _ = stage_plan(dict(ordered))
    return CompiledPolicy(files, sources_version(sources), polar, dict(ordered), plan)

"""The one adapter to the Polar engine (oso). No other module imports oso or polar.

Compile once, evaluate many: `load_policy(directory)` reads the `*.polar` files, checks
them and returns an immutable `CompiledPolicy`; a new policy version is a new object that
callers swap in whole. The policy version is a content hash of the policy files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polar import Polar, Variable
from polar.exceptions import OsoError as PolarError

log = logging.getLogger(__name__)

# The rule the service queries: decision(record, category, action, reason, grant).
DECISION_RULE = "decision"

_ALLOW_WARNING = re.compile(r"\[warning\] Your policy does not contain an allow rule.*?#allow\n?",
                            re.DOTALL)
_LOCATION = re.compile(r"at line (\d+), column (\d+)(?: of file (\S+?))?:?$", re.MULTILINE)


class PolicyError(Exception):
    """The policy could not be loaded or does not answer; names the file and line if known."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 column: int | None = None) -> None:
        where = ""
        if file is not None:
            where = f"{file}:{line}:{column}: " if line is not None else f"{file}: "
        super().__init__(f"{where}{message}")
        self.message = message
        self.file = file
        self.line = line
        self.column = column


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
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()[:16]


def _location(error: Exception, files: Sequence[Path]) -> tuple[str | None, int | None, int | None]:
    match = _LOCATION.search(str(error))
    if not match:
        return None, None, None
    file = match.group(3) or (str(files[0]) if len(files) == 1 else None)
    return file, int(match.group(1)), int(match.group(2))


class CompiledPolicy:
    """A loaded, checked policy. Immutable after construction; safe to share across threads."""

    def __init__(self, files: Sequence[Path], version: str, polar: Polar,
                 sources: Mapping[str, str] | None = None) -> None:
        self.files = tuple(files)
        self.version = version
        # The text of each file as loaded, by file name.
        self.sources: Mapping[str, str] = dict(sources or {})
        self._polar = polar
        self._lock = threading.Lock()

    def evaluate(self, record: Mapping[str, Any]) -> list[Outcome]:
        """Every category x action outcome for one user x client x purpose record."""
        try:
            with self._lock:
                results = self._polar.query_rule(  # type: ignore[no-untyped-call]
                    DECISION_RULE, dict(record), Variable("category"), Variable("action"),
                    Variable("reason"), Variable("grant"),
                )
                outcomes = [
                    Outcome(_bound(b["category"]), _bound(b["action"]), b["reason"],
                            b["grant"])
                    for b in (result["bindings"] for result in results)
                ]
        except PolarError as error:
            raise PolicyError(f"evaluation failed: {error}") from error
        return outcomes

    def every(self, rule: str, *args: Any) -> list[dict[str, Any]]:
        """The bindings of every answer to rule(*args) (variables made by `var`)."""
        try:
            with self._lock:
                return [result["bindings"] for result in
                        self._polar.query_rule(rule, *args)]  # type: ignore[no-untyped-call]
        except PolarError as error:
            raise PolicyError(f"{rule} failed: {error}") from error

    def first(self, rule: str, *args: Any) -> dict[str, Any] | None:
        """The bindings of the first answer to rule(*args) (variables made by `var`), or
        None when the rule does not hold."""
        try:
            with self._lock:
                query = self._polar.query_rule(rule, *args)  # type: ignore[no-untyped-call]
                try:
                    result = next(query, None)
                finally:
                    query.close()
        except PolarError as error:
            raise PolicyError(f"{rule} failed: {error}") from error
        if result is None:
            return None
        bindings: dict[str, Any] = result["bindings"]
        return bindings


def var(name: str) -> Any:
    """A query variable, for `CompiledPolicy.first`."""
    return Variable(name)


def load_policy(directory: Path | str) -> CompiledPolicy:
    """Load and check the policy in `directory`; raise PolicyError naming file and line."""
    directory = Path(directory)
    files = policy_files(directory)
    if not files:
        raise PolicyError("no *.polar files", file=str(directory))
    polar = Polar()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            polar.load_files([str(p) for p in files])
    except PolarError as error:
        file, line, column = _location(error, files)
        first_line = str(error).split("\n", 1)[0]
        raise PolicyError(first_line, file=file, line=line, column=column) from error
    # oso warns about a missing `allow` rule: this policy's entry point is `decision`.
    warnings = _ALLOW_WARNING.sub("", printed.getvalue()).strip()
    if warnings:
        log.warning("policy: %s", warnings)
    sources = {path.name: path.read_text(encoding="utf-8") for path in files}
    return CompiledPolicy(files, policy_version(files), polar, sources)

"""Candidate policies decide in a separate process that cannot reach the service.

Defence in depth behind the safe subset (pdp.engine.policy_vet) and the guarded query loop
(pdp.engine.policy_engine): a policy that a `policy_admin` uploads — to test it
(`POST /v1/policy/test`, the playground) or to run it in shadow — is compiled and queried
only in a child process (`python -m pdp.engine.policy_sandbox`) that

- starts with an empty environment (no PDP_API_KEYS, no database URL, no secrets) in an
  empty temporary directory, and is handed the policy text and the records on a pipe;
- has limits of its own: CPU seconds and address space (RLIMIT_CPU, RLIMIT_AS), no file
  it may write (RLIMIT_FSIZE 0), no core dumps, and drops to `nobody` when started as root;
- answers each query within a wall-clock limit, or is killed (and started afresh for the
  next query); each Polar query in it also has oso's own time budget (POLAR_TIMEOUT_MS);
- gets an overall time budget per use (a suite run), after which every further query
  fails at once, so a runaway candidate is refused in seconds.

`SandboxedPolicy` is an `Evaluator` like CompiledPolicy: the decider, the suites and the
shadow use it unchanged (one decision path), only the Polar engine is elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from pdp.engine.core import Outcomes
from pdp.engine.policy_engine import Outcome, PolicyError

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """The limits of one sandbox process (settings PDP_SANDBOX_*)."""

    query_ms: int = 2_000  # oso's budget per Polar query, and with slack the wall clock
    cpu_seconds: int = 120  # CPU time of the process over its life (then it is replaced)
    memory_bytes: int = 1024 * 1024 * 1024
    start_seconds: float = 30.0  # to start and compile the policy

    @property
    def query_wall_seconds(self) -> float:
        return self.query_ms / 1000 * 2 + 1.0


class SandboxedPolicy:
    """A policy compiled and queried in a sandbox process (see the module doc)."""

    def __init__(self, sources: Mapping[str, str], limits: SandboxLimits | None = None,
                 directory: Path | str = ".") -> None:
        self.sources = dict(sources)
        self.limits = limits or SandboxLimits()
        self.directory = str(directory)
        self.files = tuple(Path(self.directory) / name for name in sorted(self.sources))
        self.failure = ""  # why the last query failed, if it did
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._deadline: float | None = None
        self._version = ""
        with self._lock:
            self._start()

    @property
    def version(self) -> str:
        return self._version

    # -- the process ------------------------------------------------------------------------

    def _start(self) -> None:
        self._workdir = tempfile.TemporaryDirectory(prefix="pdp-sandbox-")
        os.chmod(self._workdir.name, 0o711)
        # -I: no PYTHON* variables, no user site; the environment is this and no more.
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
               "POLAR_TIMEOUT_MS": str(self.limits.query_ms)}
        limits = orjson.dumps({"cpu": self.limits.cpu_seconds,
                               "memory": self.limits.memory_bytes}).decode()
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-m", "pdp.engine.policy_sandbox", limits],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=self._workdir.name, env=env, close_fds=True)
        answer = self._ask({"load": self.sources, "directory": self.directory},
                           self.limits.start_seconds)
        if "error" in answer:
            self._stop()
            error = answer["error"]
            raise PolicyError(str(error.get("message", "the policy does not load")),
                              file=error.get("file"), line=error.get("line"),
                              column=error.get("column"), construct=error.get("construct"))
        version = str(answer["version"])
        if self._version and version != self._version:
            self._stop()
            raise PolicyError("the sandbox compiled another version")
        self._version = version

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(OSError):
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self._workdir is not None:
            with contextlib.suppress(OSError):
                self._workdir.cleanup()
            self._workdir = None

    def _ask(self, message: Mapping[str, Any], seconds: float) -> dict[str, Any]:
        """Send one message and wait at most `seconds` for its answer; a process that
        does not answer in time, dies or answers nonsense is stopped: PolicyError."""
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise PolicyError("the sandbox is not running")
        try:
            process.stdin.write(orjson.dumps(message) + b"\n")
            process.stdin.flush()
            line = _read_line(process.stdout, seconds)
        except (OSError, TimeoutError) as error:
            self._stop()
            raise PolicyError(f"the sandbox gave no answer ({error or 'time limit'})") from None
        if not line:
            code = process.poll()
            self._stop()
            raise PolicyError(f"the sandbox ended (exit {code}): a limit was reached")
        try:
            answer = orjson.loads(line)
        except orjson.JSONDecodeError:
            self._stop()
            raise PolicyError("the sandbox answered nonsense") from None
        if not isinstance(answer, dict):
            self._stop()
            raise PolicyError("the sandbox answered nonsense")
        return answer

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._stop()

    # -- deciding ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def budget(self, seconds: float) -> Iterator[None]:
        """Within this block all queries together may take at most `seconds`; after
        that each fails at once."""
        self._deadline = time.monotonic() + seconds
        try:
            yield
        finally:
            self._deadline = None

    def evaluate(self, record: Mapping[str, Any]) -> list[Outcome]:
        with self._lock:
            wait = self.limits.query_wall_seconds
            if self._deadline is not None:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    self.failure = "the candidate used up its time budget"
                    raise PolicyError(self.failure)
                wait = min(wait, left)
            try:
                if self._process is None:
                    self._start()
                answer = self._ask({"evaluate": dict(record)}, wait)
            except PolicyError as error:
                self.failure = error.message
                raise
        if "error" in answer:
            self.failure = str(answer["error"].get("message", "the query failed"))
            raise PolicyError(self.failure)
        return [Outcome(o[0], o[1], str(o[2]), str(o[3])) for o in answer["outcomes"]]


    def staged(self, record: Mapping[str, Any]) -> tuple[bool, Outcomes | None]:
        """Whether the candidate would be asked in stages once live (it has a stage
        plan), and if so its outcomes asked that way (None: the policy failed), from
        the child (pdp.engine.core.staged_outcomes there)."""
        with self._lock:
            if self._process is None:
                self._start()
            answer = self._ask({"staged": dict(record)}, self.limits.query_wall_seconds)
        if "error" in answer:
            raise PolicyError(str(answer["error"].get("message", "the query failed")))
        listed = answer.get("staged")
        outcomes = None if listed is None else {
            (str(c), str(a)): (str(reason), str(grant)) for c, a, reason, grant in listed}
        return bool(answer.get("plan")), outcomes


def _read_line(stream: IO[bytes], seconds: float) -> bytes:
    """One line from the child, waiting at most `seconds` (TimeoutError)."""
    deadline = time.monotonic() + seconds
    chunks: list[bytes] = []
    size = 0
    fd = stream.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("time limit")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            raise TimeoutError("time limit")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)
        if size > MAX_MESSAGE_BYTES:
            raise OSError("answer too large")


# -- the child ------------------------------------------------------------------------------


def _confine(limits: Mapping[str, int]) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu"], limits["cpu"]))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory"], limits["memory"]))
    if os.geteuid() == 0:
        nobody = 65534
        os.setgroups([])
        os.setgid(nobody)
        os.setuid(nobody)
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def _child(argv: list[str]) -> int:
    # Everything the child needs is imported before it confines itself (it may not be
    # able to read the interpreter's files afterwards).
    from pdp.engine.core import _table, staged_outcomes  # noqa: F401 - and their imports
    from pdp.engine.policy_engine import CompiledPolicy, compile_sources

    limits = orjson.loads(argv[0])
    # Answers go on a descriptor of their own; anything else printed goes nowhere.
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    _confine(limits)
    stdin = sys.stdin.buffer
    policy: CompiledPolicy | None = None

    def answer(message: Mapping[str, Any]) -> None:
        stdout.write(orjson.dumps(message) + b"\n")
        stdout.flush()

    while True:
        line = stdin.readline(MAX_MESSAGE_BYTES)
        if not line:
            return 0
        try:
            message = orjson.loads(line)
            if "load" in message:
                policy = compile_sources(message["load"], message.get("directory", "."))
                answer({"version": policy.version})
            elif "staged" in message and policy is not None:
                staged = (None if policy.plan is None
                          else staged_outcomes(policy, message["staged"]))
                answer({"staged": None if staged is None else [
                    [c, a, reason, grant] for (c, a), (reason, grant) in staged.items()],
                    "plan": policy.plan is not None})
            elif "evaluate" in message and policy is not None:
                outcomes = policy.evaluate(message["evaluate"])
                answer({"outcomes": [[o.category, o.action, o.reason, o.grant]
                                     for o in outcomes]})
            else:
                answer({"error": {"message": "unknown message"}})
        except PolicyError as error:
            answer({"error": {"message": error.message, "file": error.file,
                              "line": error.line, "column": error.column,
                              "construct": error.construct}})
        except Exception as error:  # anything else: say so, stay up
            answer({"error": {"message": f"{type(error).__name__}: {error}"[:500]}})


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))

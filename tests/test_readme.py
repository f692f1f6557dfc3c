"""The README's curl examples, run as written against `pdp serve --demo`."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.servers import ROOT, Server, start_server, stop_server


def examples() -> list[tuple[str, str]]:
    """(shell command, expected answer) pairs from every README shell block with answers.

    `export` lines are kept and run before every later command of their block."""
    text = (ROOT / "README.md").read_text()
    pairs: list[tuple[str, str]] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        prelude: list[str] = []
        command: list[str] = []
        for line in block.splitlines():
            if line.startswith("# →"):
                pairs.append(("\n".join(prelude + command), line.removeprefix("# →").strip()))
                command = []
            elif line.startswith("export "):
                prelude.append(line)
            elif line.startswith("curl") or command:
                command.append(line)
    return pairs


def matches(expected: str, output: str) -> bool:
    """Every piece of `expected` between '…' elisions occurs in `output`, in order."""
    position = 0
    for piece in expected.split("…"):
        found = output.find(piece, position)
        if found < 0:
            return False
        position = found + len(piece)
    return True


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # The embedded default store and the demo keys: no PDP_DATABASE_URL, no PDP_API_KEYS.
    tmp = tmp_path_factory.mktemp("demo")
    # No PDP_REGISTER_BEFORE either: --demo sets the register's cut-over of its own.
    server = start_server(tmp, env={"PDP_DATABASE_URL": "", "PDP_API_KEYS": "",
                                    "PDP_REGISTER_BEFORE": None}, args=("--demo",))
    yield server
    stop_server(server)


def test_readme_has_examples() -> None:
    reasons = {re.search(r'"reason":"(\w+)"', expected).group(1)  # type: ignore[union-attr]
               for _, expected in examples() if '"reason":"' in expected}
    assert "allowed" in reasons
    assert len(reasons - {"allowed"}) >= 5
    answers = " ".join(expected for _, expected in examples())
    for step in ("grant_refused", "invalid_transition", '"status":"applied"',
                 '"status":"approved"', '"status":"active"', '"status":"revoked"',
                 "use_workflow", '"imported":1', '"status":"notice_given"'):
        assert step in answers  # the life of a right, from application to revocation


def test_readme_examples_answer_as_written(demo: Server) -> None:
    host = demo.url.removeprefix("http://")
    for command, expected in examples():
        done = subprocess.run(["bash", "-c", command.replace("localhost:8080", host)],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert matches(expected, done.stdout), f"{command}\nexpected {expected}\ngot {done.stdout}"

"""The README's curl examples, run as written against `pdp serve --demo`."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT, Server, start_server, stop_server


def examples() -> list[tuple[str, str]]:
    """(shell command, expected answer) pairs from the README's "Try it" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Try it", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    pairs: list[tuple[str, str]] = []
    command: list[str] = []
    for line in block.splitlines():
        if line.startswith("# →"):
            pairs.append(("\n".join(command), line.removeprefix("# →").strip()))
            command = []
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
    server = start_server(tmp, env={"PDP_DATABASE_URL": "", "PDP_API_KEYS": ""},
                          args=("--demo",))
    yield server
    stop_server(server)


def test_readme_has_examples() -> None:
    reasons = {re.search(r'"reason":"(\w+)"', expected).group(1)  # type: ignore[union-attr]
               for _, expected in examples() if '"reason":"' in expected}
    assert "allowed" in reasons
    assert len(reasons - {"allowed"}) >= 5


def test_readme_examples_answer_as_written(demo: Server) -> None:
    host = demo.url.removeprefix("http://")
    for command, expected in examples():
        done = subprocess.run(["bash", "-c", command.replace("localhost:8080", host)],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert matches(expected, done.stdout), f"{command}\nexpected {expected}\ngot {done.stdout}"

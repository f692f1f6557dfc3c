"""Fixtures only (the helpers they use are in tests/support/).

`server` is what a test module talks HTTP to: the app in-process (tests/support/asgi.py)
unless the module is marked `pytestmark = pytest.mark.process`, in which case it is a real
`pdp serve` process (tests/support/servers.py). Either is started once per session (per
xdist worker) and shared, as are the worlds written into it (ids never repeat)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.asgi import InProcess, in_process
from tests.support.servers import Server, start_server, stop_server
from tests.support.world import World


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "process: the module's `server` fixture is a real `pdp serve` process "
        "(the point of the test is a process boundary), not the app in-process")


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real `pdp serve` process, shared by the session."""
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    """The app in-process on a store of its own, shared by the session. Its search pages
    may take 5 s, not 0.25: the store fills with every module's worlds, and a test of what
    a search refuses must not fail because a loaded machine found no result in time
    (tests/test_search.py tests the page budget on an app of its own, with the default)."""
    with in_process(tmp_path_factory.mktemp("app"),
                    env={"PDP_SEARCH_PAGE_BUDGET_SECONDS": "5"}) as running:
        yield running


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Server | InProcess:
    """The module's kind of server: a real process under `pytest.mark.process`, else the
    app in-process."""
    if request.node.get_closest_marker("process") is not None:
        running: Server = request.getfixturevalue("served")
        return running
    app: InProcess = request.getfixturevalue("app")
    return app


@pytest.fixture
def admin(server: Server | InProcess) -> Iterator[httpx.Client]:
    with server.client("t-admin") as client:
        yield client


@pytest.fixture
def pep(server: Server | InProcess) -> Iterator[httpx.Client]:
    with server.client("t-pep") as client:
        yield client


@pytest.fixture
def world(admin: httpx.Client) -> World:
    return World(admin).build()

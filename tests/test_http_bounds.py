"""Bounded input and correct order (the hardening issue): in-process (the app,
tests/support/asgi.py) where the app bounds it; against real `pdp serve` processes where
uvicorn does (head size and count, slow heads and bodies, disconnects: the `bounded`
server and the tests marked `process`).

1. Authentication and the role check come before any validation, on every route of the app
   (walked from its route table, so a new route is covered by itself): 401, then 403,
   whatever the path, query string or body.
2. Headers are bounded: X-Request-ID, the size and number of headers, slow heads and bodies.
3. Ids obey the id rule exactly: no trailing newline, control character or direction mark.
4. Only `application/json` bodies are read; a JSON object with a duplicate key is refused.
6. A client that disconnects mid-body is no server error.

(5, real text, and the exact pattern checks: tests/test_input_text.py; 7, the OpenAPI
document: tests/test_openapi.py.)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from pdp.http.access import ACCESS, Open, compile_table, find_rule
from tests.support.servers import KEYS, Server, start_server, stop_server
from tests.support.world import World

_ids = itertools.count(1)
JSON = {"Content-Type": "application/json"}
ROLELESS = "t-none"  # a known token that holds no role


def unique(prefix: str = "x") -> str:
    return f"bnd{next(_ids)}-{os.getpid()}-{prefix}"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, f"{response.status_code} {response.text}"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own: a roleless token, short read timeouts, tighter head limits
    (set through the environment, as an operator would), and a log of its own."""
    server = start_server(tmp_path_factory.mktemp("bounded"), env={
        "PDP_API_KEYS": json.dumps({**KEYS, ROLELESS: []}),
        "PDP_HEADER_TIMEOUT_SECONDS": "1",
        "PDP_BODY_TIMEOUT_SECONDS": "1",
        "PDP_MAX_HEADER_BYTES": "8192",
        "PDP_MAX_HEADER_COUNT": "30",
    })
    yield server
    stop_server(server)


def raw_request(server: Server, data: bytes, *, read_timeout: float = 10) -> bytes:
    """Send `data` on a socket of its own and read what comes back until the server closes
    (or `read_timeout` passes)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)  # refused while still sending: what arrived is the answer
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received


def status_of(raw: bytes) -> int | None:
    found = re.match(rb"HTTP/1\.1 (\d{3}) ", raw)
    return int(found[1]) if found else None


def metrics_statuses(server: Server) -> set[str]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return set(re.findall(r'pdp_http_request_duration_seconds_count\{[^}]*status="(\d+)"',
                          text))


# -- 1. authentication and roles before any validation, on every route -----------------------

def app_routes(tmp: Path) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, from its route table (included routers
    walked into), as `pdp serve` builds it."""
    from pdp.http.app import create_app
    from pdp.service.runtime import build_runtime
    from pdp.service.settings import Settings

    settings = Settings(database_url=f"sqlite:///{tmp / 'routes.sqlite3'}", audit_log=False,
                        public_url="http://127.0.0.1:8080")
    runtime = build_runtime(settings, KEYS)
    try:
        app = create_app(runtime)
    finally:
        runtime.close()

    def walk(routes: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
        for route in routes:
            inner = getattr(route, "original_router", None)
            if inner is not None:  # an included router (FastAPI keeps it whole)
                context = getattr(route, "include_context", None)
                yield from walk(inner.routes, prefix + getattr(context, "prefix", ""))
            elif hasattr(route, "routes") and hasattr(route, "path"):  # a mount
                yield from walk(route.routes, prefix + route.path)
            else:
                for method in sorted(getattr(route, "methods", None) or ()):
                    if method != "HEAD":
                        yield method, prefix + route.path

    found = list(dict.fromkeys(walk(app.routes)))
    assert ("POST", "/access/v1/evaluation") in found and len(found) > 30, found
    return found


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    return app_routes(tmp_path_factory.mktemp("routes"))


# API.md "Caller authentication": the open four; and the API's own description, its
# viewer and the playground page (which holds no data: its calls carry a token).
OPEN = {"/healthz", "/readyz", "/metrics", "/.well-known/authzen-configuration",
        "/openapi.json", "/docs", "/docs/oauth2-redirect", "/playground"}
# Path parameters that name something real, so that a refusal is about the role.
PLAUSIBLE = {"collection": "clients", "step": "approve", "act": "notice", "code": "749"}
# Junk in the query string of every request: wrong types, out of range, blank.
JUNK_QUERY = ("?limit=abc&n=-5&after=-1&justification=%20&municipality=abc&from=yesterday"
              "&until=&decision=maybe&due_within_days=x&status=nope&record_type=%00")
JUNK_BODY = b'{"subject": {"id": 1, "id": 2}, "evaluations": ['


def concrete(path: str, junk: bool) -> str:
    def value(match: re.Match[str]) -> str:
        return "%0Ajunk%E2%80%AE" if junk else PLAUSIBLE.get(match[1], "x-1")
    return re.sub(r"\{(\w+)(?::\w+)?\}", value, path)


def test_every_route_of_the_app_has_a_line_in_the_access_table(
        routes: list[tuple[str, str]]) -> None:
    """The table is the one place that says who may call what: a new route without its line
    would be for admin only (fail closed) — and fails here."""
    paths = compile_table(ACCESS)
    for method, path in routes:
        entry, rule, _ = find_rule(paths, method, concrete(path, junk=False))
        assert rule is not None and entry is not None and entry.path == path, \
            f"{method} {path}: no line of its own in pdp.http.access.ACCESS"
        assert isinstance(rule, Open) == (path in OPEN), f"{method} {path}"


def test_every_line_of_the_access_table_names_a_route_of_the_app(
        routes: list[tuple[str, str]]) -> None:
    """`POST /v1/grants:import` had a line, and no route: a line may only name a route
    that exists (one added with its route, not before)."""
    assert [line for line in ACCESS if line not in set(routes)] == []


def test_no_token_is_401_on_every_route_whatever_the_request(
        bounded: Server, routes: list[tuple[str, str]]) -> None:
    refused = []
    with bounded.client(None) as client:
        for method, path in routes:
            if path in OPEN:
                continue
            for junk in (False, True):
                response = client.request(method, concrete(path, junk) + JUNK_QUERY,
                                          content=JUNK_BODY,
                                          headers={"Content-Type": "text/plain"})
                if response.status_code != 401 or not response.headers.get(
                        "www-authenticate", "").lower().startswith("bearer"):
                    refused.append(f"{method} {path} junk={junk}: {response.status_code} "
                                   f"{response.text[:200]}")
                else:
                    assert_error(response, 401, "unauthorized")
    assert not refused, "\n".join(refused)


def test_a_token_without_the_role_is_403_on_every_route_whatever_the_request(
        bounded: Server, routes: list[tuple[str, str]]) -> None:
    wrong = []
    for method, path in routes:
        if path in OPEN:
            continue
        # a real role that is not this route's, and a token with no role at all
        for token in ("t-auditor" if path.startswith("/access/") else "t-pep", ROLELESS):
            with bounded.client(token) as client:
                response = client.request(method, concrete(path, junk=False) + JUNK_QUERY,
                                          content=JUNK_BODY,
                                          headers={"Content-Type": "text/plain"})
            if response.status_code != 403:
                wrong.append(f"{method} {path} {token}: {response.status_code} "
                             f"{response.text[:200]}")
            else:
                assert_error(response, 403, "forbidden")
                assert "www-authenticate" not in response.headers
    assert not wrong, "\n".join(wrong)


def test_audit_query_without_token_or_role_is_401_or_403_not_400(bounded: Server) -> None:
    """The reported case: FastAPI validated the query before the handler's check."""
    path = "/v1/audit/decisions?limit=abc"
    with bounded.client(None) as anonymous:
        assert_error(anonymous.get(path), 401, "unauthorized")
    with bounded.client("t-pep") as pep:
        assert_error(pep.get(path), 403, "forbidden")
    with bounded.client("t-auditor") as auditor:
        assert_error(auditor.get(path), 400, "invalid_request")


def test_open_routes_answer_without_a_token(bounded: Server) -> None:
    with bounded.client(None) as client:
        for path in sorted(OPEN - {"/docs/oauth2-redirect"}):
            response = client.get(path)
            assert response.status_code == 200, f"{path}: {response.text[:200]}"


def test_unknown_path_or_method_is_401_without_a_token(bounded: Server) -> None:
    with bounded.client(None) as client:
        assert_error(client.get("/v1/no/such/route/here"), 401, "unauthorized")
        assert_error(client.patch("/v1/clients/x-1"), 401, "unauthorized")
    with bounded.client("t-admin") as admin:
        assert admin.get("/no/such/route").status_code == 404
        assert admin.patch("/v1/clients/x-1").status_code == 405


# -- 2. bounded headers, slow clients --------------------------------------------------------

@pytest.mark.process  # uvicorn's limit (pdp/http/serving.py)
def test_header_block_over_the_default_16_kib_is_431(server: Server) -> None:
    with server.client(None) as client:
        response = client.get("/healthz", headers={"X-Big": "a" * (17 * 1024)})
        assert_error(response, 431, "invalid_request")
        assert client.get("/healthz", headers={"X-Fits": "a" * (8 * 1024)}).status_code == 200


@pytest.mark.process  # uvicorn's limit, on a socket
def test_a_16_mib_header_is_refused_early_and_the_server_lives(server: Server) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (16 * 1024 * 1024)
    answer = raw_request(server, head + b"\r\n\r\n")
    assert answer == b"" or status_of(answer) == 431, answer[:200]
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200


@pytest.mark.process  # uvicorn's limit (pdp/http/serving.py)
def test_more_than_100_headers_is_431(server: Server) -> None:
    with server.client(None) as client:
        many = {f"X-H{i}": "1" for i in range(101)}
        assert_error(client.get("/healthz", headers=many), 431, "invalid_request")
        some = {f"X-H{i}": "1" for i in range(90)}  # and httpx's own few
        assert client.get("/healthz", headers=some).status_code == 200


def test_head_limits_come_from_the_settings(bounded: Server) -> None:
    """PDP_MAX_HEADER_BYTES=8192 and PDP_MAX_HEADER_COUNT=30, passed to uvicorn by `pdp
    serve`."""
    with bounded.client(None) as client:
        assert_error(client.get("/healthz", headers={"X-Big": "a" * 9000}), 431,
                     "invalid_request")
        assert_error(client.get("/healthz", headers={f"X-H{i}": "1" for i in range(31)}),
                     431, "invalid_request")
        assert client.get("/healthz", headers={"X-Big": "a" * 6000}).status_code == 200
    url = "/healthz?" + "q" * 9000
    assert_error(httpx.get(bounded.url + url, timeout=10), 431, "invalid_request")


BAD_REQUEST_IDS: dict[str, list[tuple[bytes, bytes]]] = {
    "129-chars": [(b"X-Request-ID", b"r" * 129)],
    "empty": [(b"X-Request-ID", b"")],
    "non-ascii": [(b"X-Request-ID", "req-ä".encode())],
    "del": [(b"X-Request-ID", b"req-\x7f")],
    "tab": [(b"X-Request-ID", b"req\t1")],
    "twice": [(b"X-Request-ID", b"req-1"), (b"X-Request-ID", b"req-2")],
}


@pytest.mark.parametrize("headers", list(BAD_REQUEST_IDS.values()), ids=list(BAD_REQUEST_IDS))
def test_bad_request_id_is_400_and_never_echoed(server: Server, world: World,
                                                headers: list[tuple[bytes, bytes]]) -> None:
    for token, method, path, body in [(None, "GET", "/healthz", None),
                                      ("t-pep", "POST", "/access/v1/evaluation",
                                       world.request())]:
        with server.client(token) as client:
            response = client.request(method, path, json=body, headers=headers)
        assert_error(response, 400, "invalid_request")
        assert "x-request-id" not in response.headers


def test_request_id_of_128_printable_chars_is_echoed(server: Server) -> None:
    request_id = ("r-" + "".join(chr(c) for c in range(0x21, 0x7f)) * 2)[:128]
    response = server.get("/healthz", headers={"X-Request-ID": request_id})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id


def test_a_head_that_does_not_arrive_in_time_is_408(bounded: Server) -> None:
    started = time.monotonic()
    answer = raw_request(bounded, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert status_of(answer) == 408, answer[:200]
    assert b'"request_timeout"' in answer
    assert time.monotonic() - started < 5


def test_a_silent_connection_is_closed(bounded: Server) -> None:
    started = time.monotonic()
    answer = raw_request(bounded, b"")
    assert answer == b"" or status_of(answer) == 408
    assert time.monotonic() - started < 5


def test_a_body_sent_too_slowly_is_cut_off_with_408_and_no_500(bounded: Server) -> None:
    host, port = bounded.url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /access/v1/evaluation HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer t-pep\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200\r\n\r\n{")
        answer = b""
        try:
            for _ in range(40):  # a byte every 0.2 s: 8 s for the whole body
                time.sleep(0.2)
                sock.sendall(b" ")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert answer == b"" or status_of(answer) == 408, answer[:300]
    assert time.monotonic() - started < 7
    assert "500" not in metrics_statuses(bounded)
    assert "Traceback" not in bounded.log.read_text()


def test_a_body_that_no_route_reads_cannot_hold_the_connection(bounded: Server) -> None:
    host, port = bounded.url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n{")
        closed = False
        try:
            for _ in range(60):
                time.sleep(0.25)
                sock.sendall(b" ")
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        if not closed:
            sock.settimeout(0.5)
            try:
                while sock.recv(65536):
                    pass
                closed = True
            except TimeoutError:
                closed = False
            except ConnectionResetError:
                closed = True
    assert closed, "the connection stayed open"
    assert time.monotonic() - started < 14


# -- 3. ids obey the id rule exactly ---------------------------------------------------------

SNEAKY_SUFFIXES = {
    "newline": "%0A",
    "cr": "%0D",
    "nul": "%00",
    "tab": "%09",
    "del": "%7F",
    "rlo": "%E2%80%AE",  # U+202E
    "lri": "%E2%81%A6",  # U+2066
    "rlm": "%E2%80%8F",  # U+200F
    "c1": "%C2%85",  # U+0085
}


@pytest.mark.parametrize("suffix", list(SNEAKY_SUFFIXES.values()), ids=list(SNEAKY_SUFFIXES))
def test_id_in_path_with_a_control_or_direction_mark_is_400_and_not_stored(
        admin: httpx.Client, suffix: str) -> None:
    """`PUT /v1/clients/c-749-001%0A` wrote c-749-001 (a `$` anchor matched before the
    trailing newline)."""
    fact_id = unique("c")
    for path in (f"/v1/clients/{fact_id}{suffix}", f"/v1/clients/{fact_id[:5]}{suffix}"
                 f"{fact_id[5:]}"):
        response = admin.put(path, json={"home_municipality": "749", "area_client": True})
        assert_error(response, 400, "invalid_request")
    assert_error(admin.get(f"/v1/clients/{fact_id}"), 404, "not_found")
    assert_error(admin.get(f"/v1/grants/{fact_id}{suffix}/history"), 400, "invalid_request")


@pytest.mark.parametrize("bad", ["x\n", "x\r", "x\x00", "x\u202e", "x\u2066y", "x\u200e",
                                 "x\t", " x", "x "])
def test_id_in_a_body_with_a_control_or_direction_mark_is_400(admin: httpx.Client,
                                                              bad: str) -> None:
    relationship = unique("r")
    response = admin.put(f"/v1/relationships/{relationship}", json={
        "client": bad, "municipality": "749", "service": "coaching",
        "starts_at": "2025-06-01T00:00:00+03:00"})
    assert_error(response, 400, "invalid_request")
    assert "client" in response.json()["error"]["message"]
    batch = admin.post("/v1/facts:batch", json={"facts": [
        {"kind": "client", "id": bad, "data": {"home_municipality": "749",
                                               "area_client": True}}]})
    assert_error(batch, 400, "invalid_request")
    assert_error(admin.get(f"/v1/relationships/{relationship}"), 404, "not_found")


@pytest.mark.parametrize("code", ["749%0A", "749%00", "%E2%80%AE749"])
def test_municipality_code_with_a_control_or_direction_mark_is_400(server: Server,
                                                                   code: str) -> None:
    with server.client("t-auditor") as auditor:
        response = auditor.get(f"/v1/audit/decisions?justification=review&municipality={code}")
    assert_error(response, 400, "invalid_request")
    with server.client("t-admin") as admin:
        assert_error(admin.put(f"/v1/agreements/{code}", json={
            "area": "kuopio", "status": "in_force",
            "signed_at": "2025-01-01T00:00:00+02:00"}), 400, "invalid_request")


# -- 4. only application/json, no duplicate keys ---------------------------------------------

NOT_JSON = {
    "text-plain": "text/plain",
    "form": "application/x-www-form-urlencoded",
    "multipart": "multipart/form-data; boundary=x",
    "xml": "application/xml",
    "json-latin1": "application/json; charset=latin-1",
    "json-suffix": "application/jsonx",
    "missing": None,
}


@pytest.mark.parametrize("content_type", list(NOT_JSON.values()), ids=list(NOT_JSON))
def test_body_not_sent_as_json_is_400(server: Server, world: World,
                                      content_type: str | None) -> None:
    fact_id = unique("c")
    with server.client("t-admin") as admin:
        for method, path, body in [
                ("POST", "/access/v1/evaluation", world.request()),
                ("POST", "/access/v1/evaluations", {"evaluations": [world.request()]}),
                ("PUT", f"/v1/clients/{fact_id}", {"home_municipality": "749",
                                                   "area_client": True}),
                ("POST", "/v1/facts:batch", {"facts": []})]:
            request = admin.build_request(method, path, content=orjson.dumps(body))
            request.headers.pop("Content-Type", None)  # httpx sets none for bytes
            if content_type is not None:
                request.headers["Content-Type"] = content_type
            response = admin.send(request)
            body_error = assert_error(response, 400, "invalid_request")
            assert "Content-Type" in body_error["error"]["message"]
        assert_error(admin.get(f"/v1/clients/{fact_id}"), 404, "not_found")


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=\"UTF-8\""])
def test_json_with_or_without_utf8_charset_is_read(pep: httpx.Client, world: World,
                                                   content_type: str) -> None:
    response = pep.post("/access/v1/evaluation", content=orjson.dumps(world.request()),
                        headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    assert response.json()["decision"] is True


def test_request_without_a_body_needs_no_content_type(server: Server) -> None:
    with server.client("t-policy") as policy:
        assert policy.get("/v1/policy").status_code == 200


DUPLICATES = {
    "top": b'{"subject": {"type": "user", "id": "u-1"}, "subject": {"type": "user", "id": "u-2"},'
           b' "action": {"name": "read"}, "resource": {"type": "client_record", "id": "c-1",'
           b' "properties": {"category": "name_contact"}}}',
    "nested": b'{"subject": {"type": "user", "id": "u-1", "id": "u-2"}, "action": {"name": '
              b'"read"}, "resource": {"type": "client_record", "id": "c-1", "properties": '
              b'{"category": "name_contact"}}}',
    "deep": b'{"subject": {"type": "user", "id": "u-1"}, "action": {"name": "read"}, '
            b'"resource": {"type": "client_record", "id": "c-1", "properties": {"category": '
            b'"name_contact", "category": "benefits"}}}',
    "escaped": b'{"subject": {"type": "user", "id": "u-1", "\\u0069d": "u-2"}, "action": '
               b'{"name": "read"}, "resource": {"type": "client_record", "id": "c-1", '
               b'"properties": {"category": "name_contact"}}}',
}


@pytest.mark.parametrize("body", list(DUPLICATES.values()), ids=list(DUPLICATES))
def test_duplicate_key_is_400(pep: httpx.Client, body: bytes) -> None:
    response = pep.post("/access/v1/evaluation", content=body, headers=JSON)
    assert "duplicate key" in assert_error(response, 400, "invalid_request")["error"]["message"]


@pytest.mark.parametrize("depth", [900, 1000, 1030, 5000])
def test_deeply_nested_json_is_400_not_500(pep: httpx.Client, depth: int) -> None:
    body = b'{"subject": ' + b"[" * depth + b"]" * depth + b"}"
    assert_error(pep.post("/access/v1/evaluation", content=body, headers=JSON), 400,
                 "invalid_request")


def test_duplicate_key_in_a_batch_item_is_400_and_stores_nothing(admin: httpx.Client) -> None:
    first, second = unique("c"), unique("c")
    body = (b'{"facts": [{"kind": "client", "id": "' + first.encode() + b'", "data": '
            b'{"home_municipality": "749", "area_client": true}}, {"kind": "client", "id": "'
            + second.encode() + b'", "id": "' + first.encode()
            + b'", "data": {"home_municipality": "749", "area_client": true}}]}')
    assert_error(admin.post("/v1/facts:batch", content=body, headers=JSON), 400,
                 "invalid_request")
    for fact_id in (first, second):
        assert_error(admin.get(f"/v1/clients/{fact_id}"), 404, "not_found")


def test_duplicate_key_in_a_fact_is_400_and_not_stored(admin: httpx.Client) -> None:
    fact_id = unique("c")
    body = (b'{"home_municipality": "749", "area_client": true, "protection_order": false, '
            b'"protection_order": true}')
    assert_error(admin.put(f"/v1/clients/{fact_id}", content=body, headers=JSON), 400,
                 "invalid_request")
    assert_error(admin.get(f"/v1/clients/{fact_id}"), 404, "not_found")


# -- 6. a client that disconnects mid-body ---------------------------------------------------

def test_client_disconnecting_mid_body_is_no_server_error(bounded: Server) -> None:
    head = (b"POST /access/v1/evaluation HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer t-pep\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000\r\n\r\n")
    host, port = bounded.url.removeprefix("http://").split(":")
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(head + b'{"subject": {"type": "user", ')
            time.sleep(0.2)  # the app is reading the body: then the client goes
    time.sleep(0.5)
    assert "500" not in metrics_statuses(bounded)
    log = bounded.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert httpx.get(bounded.url + "/healthz", timeout=5).status_code == 200

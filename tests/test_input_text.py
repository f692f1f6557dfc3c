"""Exact codes and real text (the hardening issue, "Bounded input and correct order"):
every pattern check is a full match (Python's `$` matches before a trailing newline), and
a justification or reason is real text, not blank, whitespace or invisible marks only.
In-process: the app (tests/support/asgi.py)."""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.asgi import InProcess
from tests.support.world import World

_ids = itertools.count(1)


def unique(prefix: str = "x") -> str:
    return f"txt{next(_ids)}-{os.getpid()}-{prefix}"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, f"{response.status_code} {response.text}"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    return body


def test_codes_and_patterns_are_checked_exactly() -> None:
    """Python's `re` lets `$` match before a trailing newline: every check is a fullmatch."""
    from pdp.model.callers import check_role
    from pdp.rights.report import month_bounds

    check_role("municipality_admin:749")
    for bad in ("municipality_admin:749\n", "municipality_admin:7490", "pep\n"):
        with pytest.raises(ValueError):
            check_role(bad)
    month_bounds("2026-01")
    with pytest.raises(ValueError):
        month_bounds("2026-01\n")


def test_policy_file_name_with_a_trailing_newline_is_400(server: InProcess) -> None:
    with server.client("t-policy") as policy:
        response = policy.post("/v1/policy/test", json={"files": {"x.polar\n": "# empty"}})
    assert_error(response, 400, "invalid_request")


BLANK = ["", "   ", "\t\n", "\u00a0\u3000", "\u200b\u200e", "\u202e"]


def application(user: str, justification: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"id": unique("g"), "user": user, "purposes": ["coaching"],
            "scopes": ["name_contact"], "actions": ["read"],
            "valid_from": (now - timedelta(hours=1)).isoformat(),
            "valid_until": (now + timedelta(days=30)).isoformat(),
            "legal_basis": "380/2023 125 § 1 mom.", "justification": justification}


@pytest.mark.parametrize("justification", BLANK, ids=[repr(b) for b in BLANK])
def test_blank_justification_of_a_grant_application_is_400(
        server: InProcess, world: World, justification: str) -> None:
    body = application(world.user, justification)
    with server.client("t-grants") as grants:
        response = grants.post("/v1/grant-applications", json=body)
        assert "justification" in assert_error(response, 400, "invalid_request")[
            "error"]["message"]
        assert_error(grants.get(f"/v1/grants/{body['id']}"), 404, "not_found")


def test_blank_justification_of_a_step_is_400(server: InProcess, world: World) -> None:
    body = application(world.user, "coaching of the municipality's own clients")
    with server.client("t-grants") as grants:
        assert grants.post("/v1/grant-applications", json=body).status_code == 201
        response = grants.post(f"/v1/grants/{body['id']}/approve",
                               json={"justification": " \n "})
        assert_error(response, 400, "invalid_request")
        assert grants.get(f"/v1/grants/{body['id']}").json()["state"] == "applied"
        approved = grants.post(f"/v1/grants/{body['id']}/approve",
                               json={"justification": "needed for coaching"})
        assert approved.status_code == 200, approved.text


@pytest.mark.parametrize("justification", ["%20%20%20", "%09%09%09", "%E2%80%8B%E2%80%8B%E2%80%8B"])
def test_blank_justification_of_an_audit_read_is_400(server: InProcess, justification: str) -> None:
    with server.client("t-auditor") as auditor:
        response = auditor.get(f"/v1/audit/decisions?justification={justification}")
        assert_error(response, 400, "invalid_request")
        assert auditor.get("/v1/audit/decisions?justification=review").status_code == 200


# -- one rule of real text for every justification and reason (the security review) -------

# Text that shows nothing, though it is no whitespace: format characters (zero-width,
# bidi), the braille blank, the Hangul fillers, combining marks with no base; and text
# with a control character other than tab and line breaks.
INVISIBLE = {
    "zero-width": "\u200b\u200b\u200b",
    "braille-blank": "\u2800\u2800\u2800",
    "hangul-fillers": "\u115f\u1160\u3164\uffa0",
    "combining-marks": "\u0301\u0302\u0303",
    "enclosing-mark": "\u20dd\u20dd\u20dd",
    "mixed": " \u200b\u2800\u3164\u0301\u200e ",
    "nul-inside": "court\x00case",
    "del-inside": "court case\x7f",
    "c1-inside": "court case\x85",
}
REAL = ["court case 12/2026", "line one\n\tline two", "a form's\r\nline break",
        "Siilinjärvi", "e\u0301",
        "\u05e9\u05dc\u05d5\u05dd", "调查", "x\u200by"]


def test_one_rule_of_real_text() -> None:
    from pdp.model.facts import is_real_text, real_text

    for text in [*BLANK, *INVISIBLE.values()]:
        assert not is_real_text(text), repr(text)
        with pytest.raises(ValueError):
            real_text(text)
    for text in REAL:
        assert is_real_text(text) and real_text(text) == text, repr(text)


@pytest.mark.parametrize("justification", list(INVISIBLE.values()), ids=list(INVISIBLE))
def test_invisible_justification_of_a_grant_application_or_step_is_400(
        server: InProcess, world: World, justification: str) -> None:
    body = application(world.user, justification)
    with server.client("t-grants") as grants:
        assert_error(grants.post("/v1/grant-applications", json=body), 400, "invalid_request")
        assert_error(grants.get(f"/v1/grants/{body['id']}"), 404, "not_found")
        body = application(world.user, "coaching of the municipality's own clients")
        assert grants.post("/v1/grant-applications", json=body).status_code == 201
        refused = grants.post(f"/v1/grants/{body['id']}/approve",
                              json={"justification": justification})
        assert_error(refused, 400, "invalid_request")
        assert grants.get(f"/v1/grants/{body['id']}").json()["state"] == "applied"


# Percent-encoded for a query string: no control characters here (the access gate refuses
# those in any query before a route reads it).
INVISIBLE_QUERY = {
    "zero-width": "%E2%80%8B%E2%80%8B%E2%80%8B",
    "braille-blank": "%E2%A0%80%E2%A0%80%E2%A0%80",
    "hangul-fillers": "%E1%85%9F%E1%85%A0%E3%85%A4%EF%BE%A0",
    "combining-marks": "%CC%81%CC%82%CC%83",
}


@pytest.mark.parametrize("justification", list(INVISIBLE_QUERY.values()),
                         ids=list(INVISIBLE_QUERY))
def test_invisible_justification_of_an_audit_read_or_shadow_examples_is_400(
        server: InProcess, justification: str) -> None:
    """`GET /v1/policy/candidates/{version}/examples?justification=` took three U+200B."""
    with server.client("t-auditor") as auditor:
        for path in ("/v1/audit/decisions", "/v1/audit/clients/c-1/report",
                     "/v1/policy/candidates/sha256:x/examples"):
            response = auditor.get(f"{path}?justification={justification}")
            assert_error(response, 400, "invalid_request")
            assert "justification" in response.text, path
        assert auditor.get("/v1/audit/decisions?justification=review").status_code == 200
        # With a real justification the examples route goes on: no such candidate.
        assert_error(auditor.get("/v1/policy/candidates/sha256:x/examples?justification="
                                 "review"), 404, "not_found")


def active_holds(auditor: httpx.Client) -> dict[str, dict[str, Any]]:
    response = auditor.get("/v1/audit/holds")
    assert response.status_code == 200, response.text
    return {h["id"]: h for h in response.json()["holds"] if h["released_at"] is None}


def test_a_legal_hold_is_placed_and_released_only_with_a_real_reason(
        server: InProcess, world: World) -> None:
    """A hold placed or released with a reason of three U+200B explained nothing."""
    with server.client("t-auditor") as auditor:
        before = active_holds(auditor)
        for reason in INVISIBLE.values():
            refused = auditor.post("/v1/audit/holds", json={"client": world.client,
                                                            "reason": reason})
            assert_error(refused, 400, "invalid_request")
            assert "reason" in refused.text, repr(reason)
        assert active_holds(auditor) == before
        placed = auditor.post("/v1/audit/holds", json={"client": world.client,
                                                       "reason": "court case 12/2026"})
        assert placed.status_code == 201, placed.text
        path = f"/v1/audit/holds/{placed.json()['id']}"
        for reason in INVISIBLE_QUERY.values():
            assert_error(auditor.delete(f"{path}?reason={reason}"), 400, "invalid_request")
        for reason in INVISIBLE.values():
            assert_error(auditor.request("DELETE", path, json={"reason": reason}), 400,
                         "invalid_request")
        assert placed.json()["id"] in active_holds(auditor)
        released = auditor.request("DELETE", path, json={"reason": "judgment final 3/2027"})
        assert released.status_code == 200, released.text
        assert active_holds(auditor) == before


def test_the_log_itself_refuses_a_hold_without_a_real_reason(tmp_path: Path) -> None:
    from pdp.audit.log import AuditLog
    from pdp.store.sql import open_store

    store = open_store(f"sqlite:///{tmp_path / 'holds.sqlite3'}")
    log = AuditLog(store.engine)
    try:
        with pytest.raises(ValueError):
            log.add_hold(reason="\u200b\u200b\u200b", created_by="t", now_us=1, client="c-1")
        hold = log.add_hold(reason="court case", created_by="t", now_us=1, client="c-1",
                            events=store)
        with pytest.raises(ValueError):
            log.release_hold(hold["id"], now_us=2, by="t", reason="\u2800\u2800\u2800",
                             events=store)
        assert [h["id"] for h in log.holds() if h["released_us"] is None] == [hold["id"]]
    finally:
        log.stop()
        store.close()

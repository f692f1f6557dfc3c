"""Exact codes and real text (the hardening issue, "Bounded input and correct order"):
every pattern check is a full match (Python's `$` matches before a trailing newline), and
a justification or reason is real text, not blank, whitespace or invisible marks only."""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import Server, World

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
    from pdp.auth import check_role
    from pdp.report import month_bounds

    check_role("municipality_admin:749")
    for bad in ("municipality_admin:749\n", "municipality_admin:7490", "pep\n"):
        with pytest.raises(ValueError):
            check_role(bad)
    month_bounds("2026-01")
    with pytest.raises(ValueError):
        month_bounds("2026-01\n")


def test_policy_file_name_with_a_trailing_newline_is_400(server: Server) -> None:
    with server.client("t-policy") as policy:
        response = policy.post("/v1/policy/test", json={"files": {"x.polar\n": "# empty"}})
    assert_error(response, 400, "invalid_request")


BLANK = ["", "   ", "\t\n", "\u00a0\u3000", "\u200b\u200e", "\u202e"]


def application(user: str, justification: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"id": unique("g"), "user": user, "scopes": ["name_contact"], "actions": ["read"],
            "valid_from": (now - timedelta(hours=1)).isoformat(),
            "valid_until": (now + timedelta(days=30)).isoformat(),
            "legal_basis": "380/2023 125 § 1 mom.", "justification": justification}


@pytest.mark.parametrize("justification", BLANK, ids=[repr(b) for b in BLANK])
def test_blank_justification_of_a_grant_application_is_400(
        server: Server, world: World, justification: str) -> None:
    body = application(world.user, justification)
    with server.client("t-grants") as grants:
        response = grants.post("/v1/grant-applications", json=body)
        assert "justification" in assert_error(response, 400, "invalid_request")[
            "error"]["message"]
        assert_error(grants.get(f"/v1/grants/{body['id']}"), 404, "not_found")


def test_blank_justification_of_a_step_is_400(server: Server, world: World) -> None:
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
def test_blank_justification_of_an_audit_read_is_400(server: Server, justification: str) -> None:
    with server.client("t-auditor") as auditor:
        response = auditor.get(f"/v1/audit/decisions?justification={justification}")
        assert_error(response, 400, "invalid_request")
        assert auditor.get("/v1/audit/decisions?justification=review").status_code == 200

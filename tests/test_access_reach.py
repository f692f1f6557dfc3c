"""The scope rule in one place (pdp.http.access.Reach): where a caller acts through the
roles the access table let it in by, and which municipality owns a fact (`owner`). A unit
test: no app, no store."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pdp.http.access import (
    ACCESS,
    AGREEMENT_ROLES,
    CASE_READERS,
    GRANT_READERS,
    STEP_ROLES,
    SUPERVISORS,
    Reach,
)
from pdp.model.callers import MUNICIPALITY_ADMIN, Caller
from pdp.model.errors import NOT_FOUND, Refused

HTTP = Path(__file__).resolve().parent.parent / "pdp" / "http"


def caller(*roles: str) -> Caller:
    return Caller("someone", frozenset(roles))


@pytest.mark.parametrize("roles", [GRANT_READERS, CASE_READERS, SUPERVISORS,
                                   STEP_ROLES["revoke"], AGREEMENT_ROLES["notice"]])
def test_an_unscoped_role_or_admin_acts_everywhere(roles: list[str]) -> None:
    for who in (caller("admin"), caller(roles[0])):
        reach = Reach.of(who, roles)
        assert reach.everywhere and reach.own is None
        assert reach.covers("749") and reach.covers(None)
        assert reach.listing(None) is None and reach.listing("091") == "091"


def test_a_municipality_admin_acts_for_its_own_municipality_only() -> None:
    reach = Reach.of(caller(f"{MUNICIPALITY_ADMIN}:749"), GRANT_READERS)
    assert not reach.everywhere and reach.own == frozenset({"749"})
    assert reach.covers("749")
    assert not reach.covers("091") and not reach.covers(None) and not reach.covers("")
    # a listing is its own municipality's, named or not; another's is not found
    assert reach.listing(None) == "749" and reach.listing("749") == "749"
    with pytest.raises(Refused) as refused:
        reach.listing("091")
    assert refused.value.code == NOT_FOUND


def test_a_municipality_admin_of_two_names_the_one_a_listing_is_for() -> None:
    reach = Reach.of(caller(f"{MUNICIPALITY_ADMIN}:749", f"{MUNICIPALITY_ADMIN}:091"),
                     CASE_READERS)
    assert reach.covers("749") and reach.covers("091")
    assert reach.listing("091") == "091"
    with pytest.raises(Refused):
        reach.listing(None)


def test_a_scoped_role_acts_nowhere_on_a_route_that_does_not_name_it() -> None:
    reach = Reach.of(caller(f"{MUNICIPALITY_ADMIN}:749", "keha"), STEP_ROLES["approve"])
    assert reach.own == frozenset() and not reach.covers("749")
    # ... while keha, unscoped, acts everywhere on a route that names it
    assert Reach.of(caller(f"{MUNICIPALITY_ADMIN}:749", "keha"),
                    STEP_ROLES["activate"]).everywhere


def test_the_route_modules_name_no_role_and_ask_no_role_again() -> None:
    """The access table is the only place that says who may call what: the resource
    modules neither hold role lists nor authenticate or check roles themselves."""
    roles = {"pep", "facts_writer", "grant_admin", "auditor", "policy_admin", "keha"}
    for name in ("rights", "audit", "monitoring", "policy"):
        tree = ast.parse((HTTP / f"{name}.py").read_text(encoding="utf-8"))
        strings = {node.value for node in ast.walk(tree)
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        assert not strings & roles, name
        calls = {node.func.attr for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
        assert not calls & {"require", "authenticate", "has_any"}, name
    assert ("GET", "/v1/grants") in ACCESS

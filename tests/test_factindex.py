"""The fact index keeps clients and relationships as compact rows made straight from the
stored JSON: they must read back as the facts model reads them, and refuse what the
model refuses."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from pdp.engine.factindex import FactIndex, client_row, relationship_row
from pdp.model.facts import dump_fact, parse_fact
from pdp.service.demo import demo_facts
from pdp.store.protocols import StoredFact

GOOD = {"client": "c-1", "municipality": "749", "service": "coaching",
        "starts_at": "2026-01-01T00:00:00+02:00", "assigned_users": ["u-1"]}


def test_facts_read_back_as_the_model_reads_them() -> None:
    facts = demo_facts()
    index = FactIndex()
    index.load([StoredFact(f["kind"], f["id"], dump_fact(parse_fact(f["kind"], f["data"])), n)
                for n, f in enumerate(facts, start=1)], 99)
    back = {(s.kind, s.id): (parse_fact(s.kind, s.data), s.version)
            for s in index.stored_facts()}
    expected = {(f["kind"], f["id"]): (parse_fact(f["kind"], f["data"]), n)
                for n, f in enumerate(facts, start=1)}
    assert back == expected
    again = FactIndex()
    again.load(list(index.stored_facts()), 99)
    assert again.relationships == index.relationships and again.clients == index.clients
    assert again.stamps == index.stamps


def test_a_row_keeps_times_as_microseconds() -> None:
    row = relationship_row({**GOOD, "ends_at": "2026-02-01T00:00:00Z"}, 7)
    assert (row.starts_at, row.ends_at, row.assigned_users, row.version) == (
        1767218400000000, 1769904000000000, ("u-1",), 7)


@pytest.mark.parametrize("bad", [
    {**GOOD, "colour": "red"},
    {**GOOD, "service": "fishing"},
    {**GOOD, "municipality": "74"},
    {**GOOD, "starts_at": "2026-01-01T00:00:00"},
    {**GOOD, "starts_at": "yesterday"},
    {**GOOD, "ends_at": "2025-01-01T00:00:00Z"},
    {**GOOD, "assigned_users": "u-1"},
    {k: v for k, v in GOOD.items() if k != "client"},
])
def test_a_relationship_the_model_refuses_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse_fact("relationship", bad)
    with pytest.raises(ValidationError):
        relationship_row(bad, 1)


@pytest.mark.parametrize("bad", [
    {"home_municipality": "749", "protection_order": "yes", "area_client": True},
    {"home_municipality": 749, "area_client": True},
    {"home_municipality": "749", "extra": 1, "area_client": True},
    {"home_municipality": "749"},  # area_client is required (rule 4)
    {"home_municipality": "749", "area_client": "yes"},
    {"home_municipality": "749", "area_client": 1},
    {},
])
def test_a_client_the_model_refuses_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse_fact("client", bad)
    with pytest.raises(ValidationError):
        client_row(bad, 1)


def test_a_client_row_keeps_area_client() -> None:
    row = client_row({"home_municipality": "749", "area_client": False}, 3)
    assert (row.home_municipality, row.protection_order, row.area_client) == (
        "749", False, False)


def test_a_broken_stored_fact_stops_the_load() -> None:
    index = FactIndex()
    with pytest.raises(ValidationError):
        index.load([StoredFact("relationship", "r-1", {**GOOD, "service": "x"}, 1)], 1)

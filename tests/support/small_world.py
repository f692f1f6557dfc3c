"""A small world of facts in a FactIndex, for the engine's unit tests (the decision cache,
the policy input): one user with one right, one client with one relationship."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pdp.engine.factindex import FactIndex
from pdp.store.protocols import ChangeRecord

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
GRANT_END = T0 + timedelta(days=10)
REL_START = T0 + timedelta(days=2)


def world() -> FactIndex:
    facts: list[tuple[str, str, dict[str, Any]]] = [
        ("area", "kuopio", {"name": "K", "responsible_municipality": "297",
                            "municipalities": [{"code": "297", "name": "Kuopio"},
                                               {"code": "749", "name": "Siilinjärvi"}]}),
        ("agreement", "749", {"area": "kuopio", "status": "in_force",
                              "signed_at": "2025-01-01T00:00:00+00:00"}),
        ("user", "u1", {"municipality": "749", "display_name": "A", "tasks": ["coaching"],
                        "status": "active"}),
        ("grant", "g1", {"user": "u1", "purposes": ["coaching"], "scopes": ["name_contact"],
                         "valid_from": "2026-01-01T00:00:00+00:00",
                         "valid_until": GRANT_END.isoformat(), "status": "active",
                         "legal_basis": "x"}),
        ("client", "c1", {"home_municipality": "749", "area_client": True}),
        ("relationship", "r1", {"client": "c1", "municipality": "749", "service": "coaching",
                                "starts_at": "2026-01-01T00:00:00+00:00"}),
    ]
    index = FactIndex()
    index.apply([ChangeRecord(v, k, i, d) for v, (k, i, d) in enumerate(facts, start=1)])
    return index

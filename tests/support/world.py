"""The test world, written through the API of whatever serves it (a real process or the
app in-process): the area, an agreement, a user with a right from the register, a client
with a relationship; and `decide`, one evaluation that must answer 200."""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

# Two worlds of one session never share ids (rights' ids are never reused, and a user of
# one world would hold the other's rights); the process id keeps xdist workers apart.
_worlds = itertools.count(1)

# The test area: Kuopio-like. 749 is shared by most tests; the others are for tests that
# change their municipality's agreement.
AREA = [("297", "Kuopio"), ("749", "Siilinjärvi"), ("844", "Tuusniemi"), ("686", "Rautavaara"),
        ("204", "Kaavi"), ("420", "Leppävirta"), ("915", "Varkaus"), ("239", "Keitele"),
        ("178", "Juva")]  # 178: rescinded for good by tests/test_freshness.py

NOW = "2026-01-01T00:00:00+02:00"


class World:
    """A small consistent world with unique ids, written through the facts API: one user
    with one grant (taken in as the register of rights before the service, POST
    /v1/grants:import: rights are not facts-API writes), one client with one coaching
    relationship, all in `municipality`. `grant=False`: the user holds no right.

    Worlds share the area and the agreements (municipality codes are few): a test that
    changes an agreement uses a municipality of its own (see AREA)."""

    def __init__(self, admin: httpx.Client, municipality: str = "749", *,
                 grant: bool = True) -> None:
        n = next(_worlds)
        self.with_grant = grant
        self.admin = admin
        self.municipality = municipality
        self.p = f"w{n}-{os.getpid()}"
        self.user = f"{self.p}-u1"
        self.client = f"{self.p}-c1"
        self.grant = f"{self.p}-g1"
        self.relationship = f"{self.p}-r1"

    def put(self, collection: str, fact_id: str, data: dict[str, Any]) -> dict[str, Any]:
        response = self.admin.put(f"/v1/{collection}/{fact_id}", json=data)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def build(self) -> World:
        self.put("areas", "kuopio", {
            "name": "Kuopion työllisyysalue", "responsible_municipality": "297",
            "municipalities": [{"code": code, "name": name} for code, name in AREA]})
        self.put("areas", "joensuu", {
            "name": "Joensuu", "responsible_municipality": "167",
            "municipalities": [{"code": "167", "name": "Joensuu"}]})
        self.put("agreements", self.municipality, {
            "area": "kuopio", "status": "in_force", "signed_at": "2025-01-01T00:00:00+02:00"})
        self.put("users", self.user, {
            "municipality": self.municipality, "display_name": "Testi Käyttäjä",
            "tasks": ["coaching"], "status": "active"})
        if self.with_grant:
            self.import_grant(self.grant, self.grant_data())
        self.put("clients", self.client, {"home_municipality": self.municipality,
                                          "area_client": True})
        self.put("relationships", self.relationship, {
            "client": self.client, "municipality": self.municipality, "service": "coaching",
            "starts_at": "2025-06-01T00:00:00+03:00"})
        return self

    def grant_data(self, **changes: Any) -> dict[str, Any]:
        """A right of the world's user, as the register of rights holds it: for coaching,
        from 30 days ago for 300 days, re-certification due in 80 days."""
        now = datetime.now(UTC)
        return {"user": self.user, "purposes": ["coaching"],
                "scopes": ["name_contact", "service_needs_plans"],
                "actions": ["read", "write"],
                "valid_from": (now - timedelta(days=30)).isoformat(),
                "valid_until": (now + timedelta(days=270)).isoformat(), "status": "active",
                "legal_basis": "380/2023 125 § 1 mom.",
                "recertify_by": (now + timedelta(days=80)).isoformat(), **changes}

    def import_grant(self, grant_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """Take in one right as the register of rights before the service
        (POST /v1/grants:import), with an approval record."""
        response = self.admin.post("/v1/grants:import",
                                   json={"grants": [register_item(grant_id, data)]})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def request(self, category: str = "service_needs_plans", action: str = "read",
                purpose: str | None = "coaching", *, owner: str | None = None,
                **context: Any) -> dict[str, Any]:
        """An evaluation request; a write names the world's municipality as the record's
        owner (resource.properties.owner) unless `owner` says otherwise ("": none)."""
        ctx: dict[str, Any] = dict(context)
        if purpose is not None:
            ctx["purpose"] = purpose
        properties = {"category": category}
        if owner is None and action == "write":
            owner = self.municipality
        if owner:
            properties["owner"] = owner
        return {"subject": {"type": "user", "id": self.user},
                "action": {"name": action},
                "resource": {"type": "client_record", "id": self.client,
                             "properties": properties},
                "context": ctx}


def register_item(grant_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """A right of the register (POST /v1/grants:import): `data` as World.grant_data gives
    it, with an approval record of a week ago."""
    approved = datetime.now(UTC) - timedelta(days=7)
    return {"id": grant_id, **data, "approval": {
        "approved_by": "Kuopion työllisyysalue", "approved_at": approved.isoformat(),
        "decision_ref": f"KUO/{grant_id}", "activated_at": approved.isoformat()}}


def decide(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/access/v1/evaluation", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result

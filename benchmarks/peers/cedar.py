"""The Cedar peer (cedarpy, in process): rules.cedar, with the request's context built
from the same facts the way a Cedar caller would (see the header of rules.cedar)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cedarpy

from pdp.engine.factindex import FactIndex
from pdp.engine.policy_input import policy_record
from pdp.model.clock import END_OF_TIME, START_OF_TIME

POLICIES = cedarpy.PolicySet.from_str((Path(__file__).parent / "rules.cedar").read_text())
NO_ENTITIES = cedarpy.Entities.from_json_str("[]")


def context(facts: FactIndex, user_id: str, client_id: str, category: str, action: str,
            purpose: str, now: int) -> dict[str, Any]:
    """The facts as pdp's policy reads them (`policy_record`), with what Cedar cannot
    compute itself worked out here (see the header of rules.cedar)."""
    record = policy_record(facts, user_id, client_id, purpose, now)
    grant = record["grants"][0] if record["grants"] else None
    running = {f"{rel['municipality']}|{rel['service']}|{named}"
               for rel in record["relationships"] if rel["starts_at"] <= now < rel["ends_at"]
               for named in rel["assigned_users"] or ["*"]}
    municipality = record["user_municipality"]
    return {
        **{key: record[key] for key in (
            "now", "purpose", "user_known", "user_status", "user_municipality", "user_tasks",
            "user_client_id", "agreement_status", "agreement_ends_at", "area_municipalities",
            "client_known", "client_id", "client_home", "client_protection_order")},
        "category": category, "action": action,
        "grant_status": grant["status"] if grant else "",
        "grant_valid_from": grant["valid_from"] if grant else END_OF_TIME,
        "grant_valid_until": grant["valid_until"] if grant else START_OF_TIME,
        "grant_recertify_by": grant["recertify_by"] if grant else START_OF_TIME,
        "grant_scopes": grant["scopes"] if grant else [],
        "grant_actions": grant["actions"] if grant else [],
        "running_relationships": sorted(running),
        "probe_user": f"{municipality}|{purpose}|{user_id}",
        "probe_anyone": f"{municipality}|{purpose}|*",
        "purpose_category": f"{purpose}:{category}",
    }


def request(facts: FactIndex, user: str, client: str, category: str, action: str,
            purpose: str, now: int) -> dict[str, Any]:
    return {"principal": {"type": "User", "id": user}, "action": {"type": "Action", "id": action},
            "resource": {"type": "ClientRecord", "id": client},
            "context": context(facts, user, client, category, action, purpose, now)}


def allowed(facts: FactIndex, user: str, client: str, category: str, action: str,
            purpose: str, now: int) -> bool:
    result = cedarpy.is_authorized(request(facts, user, client, category, action, purpose, now),
                                   POLICIES, NO_ENTITIES)
    return bool(result.allowed)

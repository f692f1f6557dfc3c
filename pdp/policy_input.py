"""Shape the facts of one user x client x purpose into the flat record the policy reads.

This is data shaping only: it looks facts up and converts them (times to integer
microseconds, absent values to "" / [] / END_OF_TIME). Every judgement — what is active,
in force, in the area, necessary — is the policy's. See the header of policies/rules.polar.
"""

from __future__ import annotations

from typing import Any

from pdp.clock import END_OF_TIME, START_OF_TIME, to_micros
from pdp.factindex import FactIndex
from pdp.facts import Grant

Record = dict[str, Any]


def policy_record(facts: FactIndex, user_id: str, client_id: str, purpose: str,
                  now: int) -> Record:
    """The policy input; the caller holds `facts.lock` if facts may change meanwhile."""
    user = facts.users.get(user_id)
    agreement = facts.agreements.get(user.municipality) if user else None
    area = facts.areas.get(agreement.area) if agreement else None
    client = facts.clients.get(client_id)
    grants = facts.grants_by_user.get(user_id, {}) if user else {}
    relationships = facts.relationships_by_client.get(client_id, {}) if client else {}
    return {
        "now": now,
        "user_known": user is not None,
        "user_id": user_id,
        "user_status": user.status if user else "",
        "user_municipality": user.municipality if user else "",
        "user_tasks": list(user.tasks) if user else [],
        "user_client_id": (user.client_id or "") if user else "",
        "agreement_status": agreement.status if agreement else "",
        "agreement_ends_at": to_micros(agreement.ends_at) if agreement else START_OF_TIME,
        "area_municipalities": [m.code for m in area.municipalities] if area else [],
        "grants": [grant_record(grant_id, grant) for grant_id, grant in grants.items()],
        "client_known": client is not None,
        "client_id": client_id,
        "client_home": client.home_municipality if client else "",
        "client_protection_order": client.protection_order if client else False,
        "relationships": [
            {
                "municipality": rel.municipality,
                "service": rel.service,
                "starts_at": to_micros(rel.starts_at),
                "ends_at": to_micros(rel.ends_at),
                "assigned_users": list(rel.assigned_users),
            }
            for rel in relationships.values()
        ],
        "purpose": purpose,
    }


def grant_record(grant_id: str, grant: Grant) -> Record:
    """One grant as the policy reads it (rules.polar, lifecycle.polar)."""
    return {
        "id": grant_id,
        "status": grant.status,
        "valid_from": to_micros(grant.valid_from),
        "valid_until": to_micros(grant.valid_until),
        "recertify_by": to_micros(grant.recertify_by),
        "scopes": list(grant.scopes),
        "actions": list(grant.actions),
    }


def time_window(record: Record) -> tuple[int, int]:
    """The span [from, until) around record["now"] in which no timestamp of the record
    falls, so in which every comparison of now with them — and the decision — holds."""
    now: int = record["now"]
    moments = [record["agreement_ends_at"]]
    for grant in record["grants"]:
        moments += (grant["valid_from"], grant["valid_until"], grant["recertify_by"])
    for rel in record["relationships"]:
        moments += (rel["starts_at"], rel["ends_at"])
    start = max((m for m in moments if m <= now), default=START_OF_TIME)
    end = min((m for m in moments if m > now), default=END_OF_TIME)
    return start, end

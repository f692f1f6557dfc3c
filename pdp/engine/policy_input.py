"""Shape the facts of one user x client x purpose into the flat record the policy reads.

This is data shaping only: it looks facts up and converts them (times to integer
microseconds, absent values to "" / [] / END_OF_TIME). Every judgement — what is active,
in force, in the area, necessary — is the policy's. See the header of policies/rules.polar.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from pdp.engine.factindex import FactView
from pdp.model.clock import END_OF_TIME, START_OF_TIME, to_micros
from pdp.model.facts import Grant

Record = dict[str, Any]

# In a record shape, every assigned user other than the user asking (record_shape).
OTHERS = "#others"


def policy_record(facts: FactView, user_id: str, client_id: str, purpose: str,
                  now: int, owner: str = "") -> Record:
    """The policy input, read from a view (`FactIndex.reading()`).
    `owner`: the owner the request names for the record (a municipality code or
    "authority"; "" when it names none)."""
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
        "agreement_assignment_required": (agreement.assignment_required if agreement
                                          else False),
        "area_municipalities": [m.code for m in area.municipalities] if area else [],
        "grants": [grant_record(grant_id, grant) for grant_id, grant in grants.items()],
        "client_known": client is not None,
        "client_id": client_id,
        "client_home": client.home_municipality if client else "",
        "client_protection_order": client.protection_order if client else False,
        "client_area_client": client.area_client if client else False,
        "relationships": [
            {
                "municipality": rel.municipality,
                "service": rel.service,
                "starts_at": rel.starts_at,
                "ends_at": rel.ends_at,
                "assigned_users": list(rel.assigned_users),
            }
            for rel in relationships.values()
        ],
        "purpose": purpose,
        "record_owner": owner,
    }


def grant_record(grant_id: str, grant: Grant) -> Record:
    """One grant as the policy reads it (rules.polar, lifecycle.polar)."""
    return {
        "id": grant_id,
        "status": grant.status,
        "valid_from": to_micros(grant.valid_from),
        "valid_until": to_micros(grant.valid_until),
        "recertify_by": to_micros(grant.recertify_by),
        "purposes": list(grant.purposes),
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


def record_shape(record: Record) -> tuple[bytes, Record, dict[str, str]]:
    """The record up to renaming: what a decision can depend on, and no more.

    Ids and municipality codes (the record's owner too: a code, "authority" or "") are
    renamed `#0`, `#1`, … in order of first appearance (so which are equal is kept, and
    "" stays ""), `now` becomes 0 and every other
    timestamp -1, 0 or 1 as it lies before, at or after now (so how each compares with
    now is kept), and the lists only tested for membership (the area's municipalities,
    the relationships) are sorted. Only the relationships of the user's municipality
    for the purpose asked are kept, once each, and of their assigned users only the user
    and, as OTHERS, whether there is anyone else. The rules compare ids and codes only
    for equality and membership, timestamps only with now, and read no other
    relationship (the invariants in the header of policies/rules.polar), so records of
    one shape get one answer; the decider asks the policy once per shape. Returns the
    shape as canonical JSON (a key), the shape itself (to ask the policy about) and the
    renaming back, token -> id, for the grant ids in the answer. A record `narrowed` to
    the fields of one stage of a staged decision is shaped the same way, field by field
    (its relationships, kept whole, are then left out by municipality or purpose only if
    the stage reads the user's municipality or the purpose)."""
    now: int = record.get("now", 0)

    def side(moment: int) -> int:
        return (moment > now) - (moment < now)

    names: dict[str, str] = {}
    user = record.get("user_id")

    def name(value: str) -> str:
        if not value:
            return value
        token = names.get(value)
        if token is None:
            token = names[value] = f"#{len(names)}"
        return token

    shape = dict(record)
    if "now" in record:
        shape["now"] = 0
    for field in _NAMED:
        if field in record:
            shape[field] = name(record[field])
    if "area_municipalities" in record:
        shape["area_municipalities"] = sorted(name(m) for m in record["area_municipalities"])
    if "agreement_ends_at" in record:
        shape["agreement_ends_at"] = side(record["agreement_ends_at"])
    if "grants" in record:
        shape["grants"] = [_shaped_item(grant, name, side, user)
                           for grant in record["grants"]]
    if "relationships" in record:
        municipality = record.get("user_municipality")
        purpose = record.get("purpose")
        shape["relationships"] = [orjson.loads(rel) for rel in sorted({
            orjson.dumps(_shaped_item(rel, name, side, user), option=orjson.OPT_SORT_KEYS)
            for rel in record["relationships"]
            if (municipality is None or rel["municipality"] == municipality)
            and (purpose is None or rel["service"] == purpose)})]
    return (orjson.dumps(shape, option=orjson.OPT_SORT_KEYS), shape,
            {token: value for value, token in names.items()})


# The ids and codes of the record renamed in a shape, in this order (record_shape).
_NAMED = ("user_id", "user_client_id", "client_id", "user_municipality", "client_home",
          "record_owner")


def _shaped_item(item: Record, name: Callable[[str], str], side: Callable[[int], int],
                 user: str | None) -> Record:
    """A grant or a relationship as record_shape has it: ids and codes renamed,
    timestamps -1/0/1 around now, of the assigned users only the user and OTHERS."""
    shaped = dict(item)
    for field in ("id", "municipality"):
        if field in item:
            shaped[field] = name(item[field])
    for field in ("valid_from", "valid_until", "recertify_by", "starts_at", "ends_at"):
        if field in item:
            shaped[field] = side(item[field])
    if "assigned_users" in item:
        shaped["assigned_users"] = sorted({name(u) if u == user else OTHERS
                                           for u in item["assigned_users"]})
    return shaped


def narrowed(record: Record, fields: frozenset[str]) -> Record:
    """The record with only these of its own fields: the input of one stage of a staged
    decision (policy_vet.StagePlan). Its grants and relationships are kept whole: a rule
    may compare two of them whole (`g1 = g2`), which fields alone would not show."""
    return {field: value for field, value in record.items() if field in fields}

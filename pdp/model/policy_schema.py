"""What a policy may read: the fields of every input the service gives the policy.

This is the one place the allow-list of `pdp.engine.policy_vet` comes from. A policy may look up
these fields (`r.user_id`, `grant.scopes`, `c.after_tasks`) and nothing else: no method,
no other attribute. Every builder of a policy input (pdp/engine/policy_input.py,
pdp/rights/lifecycle.py) gives exactly the fields listed here for its input
(tests/test_policy_vet.py checks it), so a field added to an input is added here first.
"""

from __future__ import annotations

from typing import Any

# decision(r, ...) in rules.polar: one user x client x purpose (pdp.engine.policy_input).
DECISION_RECORD = (
    "now", "user_known", "user_id", "user_status", "user_municipality", "user_tasks",
    "user_client_id", "agreement_status", "agreement_ends_at",
    "agreement_assignment_required", "area_municipalities", "grants", "client_known",
    "client_id", "client_home", "client_protection_order", "client_area_client",
    "relationships", "purpose", "record_owner",
)
# One item of r.grants (pdp.engine.policy_input.grant_record).
GRANT = ("id", "status", "valid_from", "valid_until", "recertify_by", "purposes", "scopes",
         "actions")
# One item of r.relationships.
RELATIONSHIP = ("municipality", "service", "starts_at", "ends_at", "assigned_users")
# grant_refusal(a, ...) in lifecycle.polar: a right applied for or changed (pdp.rights.lifecycle).
GRANT_REQUEST = (
    "now", "user_known", "user_status", "user_tasks", "agreement_status",
    "agreement_ends_at", "purposes", "scopes", "actions", "valid_from", "valid_until",
    "max_valid_until",
)
# change_effect(c, right, ...) in lifecycle.polar: a change of a user or of an agreement,
# and a live right it may touch (pdp.rights.lifecycle).
USER_CHANGE = (
    "kind", "before_known", "before_municipality", "before_tasks", "after_known",
    "after_status", "after_municipality", "after_tasks",
)
AGREEMENT_CHANGE = ("kind", "status", "ends_at")
RIGHT = ("state", "purposes", "scopes", "valid_until")

INPUTS: dict[str, tuple[str, ...]] = {
    "decision record": DECISION_RECORD, "grant": GRANT, "relationship": RELATIONSHIP,
    "grant request": GRANT_REQUEST, "user change": USER_CHANGE,
    "agreement change": AGREEMENT_CHANGE, "right": RIGHT,
}

# Every field a policy may look up.
FIELDS: frozenset[str] = frozenset(name for fields in INPUTS.values() for name in fields)

# The kind of each field of the decision record (and of its grants and relationships):
# what the decision cache lets a rule do with it (the invariants in the header of
# policies/rules.polar; pdp.engine.policy_input.record_shape renames and moves by kind).
# pdp.engine.policy_vet refuses, in the rules `decision` reaches, any use of a field its
# kind does not allow.
NOW = "now"              # compared (<, <=) with timestamps of the input only
TIMESTAMP = "timestamp"  # compared with now only: no constant, no other timestamp, no sums
ID = "id"                # equality and membership only; no constant other than ""
CODE = "code"            # a municipality code (or the record's owner): as an id
ID_LIST = "id-list"      # membership, or = []; its order and other members do not count
CODE_LIST = "code-list"  # as an id list
UNORDERED = "unordered list"  # relationships: membership only, never compared
ORDERED = "ordered list"      # grants: their order is part of the shape
FLAG = "flag"            # a boolean
ENUM = "enum"            # one of a fixed vocabulary: any comparison
ENUM_LIST = "enum list"  # a list of vocabulary words: any comparison
KINDS: dict[str, str] = {
    "now": NOW, "user_known": FLAG, "user_id": ID, "user_status": ENUM,
    "user_municipality": CODE, "user_tasks": ENUM_LIST, "user_client_id": ID,
    "agreement_status": ENUM, "agreement_ends_at": TIMESTAMP,
    "agreement_assignment_required": FLAG, "area_municipalities": CODE_LIST,
    "grants": ORDERED, "client_known": FLAG, "client_id": ID, "client_home": CODE,
    "client_protection_order": FLAG, "client_area_client": FLAG,
    "relationships": UNORDERED, "purpose": ENUM, "record_owner": CODE,
    # an item of r.grants
    "id": ID, "status": ENUM, "valid_from": TIMESTAMP, "valid_until": TIMESTAMP,
    "recertify_by": TIMESTAMP, "purposes": ENUM_LIST, "scopes": ENUM_LIST,
    "actions": ENUM_LIST,
    # an item of r.relationships
    "municipality": CODE, "service": ENUM, "starts_at": TIMESTAMP, "ends_at": TIMESTAMP,
    "assigned_users": ID_LIST,
}


def policy_input(fields: tuple[str, ...], record: dict[str, Any]) -> dict[str, Any]:
    """`record`, checked to hold exactly `fields` in order (for the inputs built off the
    hot path; the decision record is checked by tests/test_policy_vet.py instead)."""
    if tuple(record) != fields:
        raise ValueError(f"a policy input with fields {tuple(record)}, not {fields}")
    return record

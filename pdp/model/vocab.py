"""The closed vocabularies of the wire contract (API.md): categories, actions, states.

These are schema, used to refuse bad input (`invalid_request`). What the rules make of them
(task profiles, never-needed and writable categories) is policy data in `policies/`.
"""

from __future__ import annotations

from typing import Literal, get_args

Category = Literal[
    "identity_code",
    "name_contact",
    "client_relationship",
    "education_work_history",
    "service_needs_plans",
    "offers_referrals",
    "services_assessments",
    "health_work_capacity",
    "unemployment_security_statements",
    "benefits",
]
Action = Literal["read", "write"]
Service = Literal["coaching", "guidance", "training"]
AgreementStatus = Literal["in_force", "notice_given", "terminated", "rescinded"]
UserStatus = Literal["active", "suspended", "left"]
GrantStatus = Literal["applied", "approved", "active", "suspended", "revoked", "expired"]
FactKind = Literal["area", "agreement", "user", "grant", "client", "relationship"]

CATEGORIES: tuple[str, ...] = get_args(Category)
ACTIONS: tuple[str, ...] = get_args(Action)
SERVICES: tuple[str, ...] = get_args(Service)
FACT_KINDS: tuple[str, ...] = get_args(FactKind)

# Reasons in the order the rules are checked (API.md "Decisions").
REASONS: tuple[str, ...] = (
    "unknown_subject",
    "user_inactive",
    "agreement_not_in_force",
    "no_active_grant",
    "unknown_resource",
    "client_outside_area",
    "client_not_own_municipality",
    "own_record",
    "purpose_invalid",
    "no_active_relationship",
    "category_not_necessary",
    "protection_order",
    "action_not_permitted",
    "allowed",
)

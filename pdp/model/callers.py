"""Caller authentication: bearer tokens and their roles (API.md "Caller authentication").

Roles are API.md's, plus `keha` (opens and closes rights technically) and the scoped
`municipality_admin:<code>`, which acts only for municipality <code>. A key in
PDP_API_KEYS maps a token to a list of roles, or to {"name": ..., "roles": [...]}; the
name is who the history and the event log say acted (default: a fingerprint of the token,
an HMAC with a server secret: see `fingerprint`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pdp.model.errors import FORBIDDEN, UNAUTHORIZED, Refused

ROLES = ("pep", "facts_writer", "grant_admin", "auditor", "policy_admin", "admin", "keha")
MUNICIPALITY_ADMIN = "municipality_admin"
_SCOPED = re.compile(rf"^{MUNICIPALITY_ADMIN}:([0-9]{{3}})$")

# Demo tokens, used by `pdp serve --demo` when PDP_API_KEYS is not set. Printed at start.
DEMO_KEYS: dict[str, list[str]] = {
    "demo-pep": ["pep"],
    "demo-facts": ["facts_writer"],
    "demo-grants": ["grant_admin"],
    "demo-keha": ["keha"],
    "demo-siilinjarvi": ["municipality_admin:749"],
    "demo-auditor": ["auditor"],
    "demo-policy": ["policy_admin"],
    "demo-admin": ["admin"],
}


def check_role(role: str) -> None:
    """Raise ValueError unless `role` is a known role or a well-formed scoped one."""
    if role not in ROLES and not _SCOPED.fullmatch(role):
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}, "
                         f"{MUNICIPALITY_ADMIN}:<municipality code>")


def key_spec(value: Any) -> tuple[str | None, list[str]]:
    """(name, roles) of one PDP_API_KEYS value: a list of roles or {name, roles}."""
    if isinstance(value, list):
        return None, [str(role) for role in value]
    if isinstance(value, dict) and isinstance(value.get("roles"), list):
        name = value.get("name")
        return (str(name) if name else None), [str(role) for role in value["roles"]]
    raise ValueError("each key maps to a list of roles or to {\"name\": ..., \"roles\": [...]}")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who called, with its roles. Which routes a caller may call, and for which
    municipalities it acts there, is the HTTP layer's access table (pdp.http.access:
    ACCESS and Reach), not a method here."""

    name: str  # who acted, for history and logs; never the token itself
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def municipalities(self) -> frozenset[str]:
        """The municipalities this caller administers (municipality_admin:<code>)."""
        return frozenset(m.group(1) for r in self.roles if (m := _SCOPED.fullmatch(r)))

    def has_any(self, roles: Sequence[str]) -> bool:
        """Holds one of `roles` (MUNICIPALITY_ADMIN matches any scoped one); admin holds all."""
        if self.is_admin:
            return True
        return any(role in self.roles or (role == MUNICIPALITY_ADMIN and self.municipalities)
                   for role in roles)


class Authenticator:
    def __init__(self, keys: Mapping[str, Any], *, fingerprint_key: bytes) -> None:
        """`fingerprint_key`: the server secret that names a key configured without a name
        (PDP_FINGERPRINT_KEY, or the deployment's own random key kept in the store)."""
        if len(fingerprint_key) < 16:
            raise ValueError("the fingerprint key must have at least 16 bytes")
        self._keys: list[tuple[bytes, Caller]] = []
        for token, value in keys.items():
            name, roles = key_spec(value)
            known = token.encode()
            self._keys.append((known, Caller(name or fingerprint(known, fingerprint_key),
                                             frozenset(roles))))

    def authenticate(self, authorization: str | None) -> Caller:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("a bearer token is required")
        presented = token.strip().encode()
        for known, caller in self._keys:
            if hmac.compare_digest(known, presented):
                return caller
        raise _unauthorized("unknown token")


def forbidden(roles: Sequence[str]) -> Refused:
    return Refused(FORBIDDEN, f"this token lacks the role: {' or '.join(roles)}")


def fingerprint(token: bytes, key: bytes) -> str:
    """The name of a key configured without one, as histories and logs show it: keyed
    with a server secret (HMAC-SHA256), so that nobody who reads a history can test
    guessed tokens against it offline (an unsalted hash of a weak token could be)."""
    return "key-" + hmac.new(key, token, hashlib.sha256).hexdigest()[:16]


def _unauthorized(message: str) -> Refused:
    return Refused(UNAUTHORIZED, message)

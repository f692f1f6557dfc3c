"""Caller authentication: bearer tokens and their roles (API.md "Caller authentication")."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pdp.errors import FORBIDDEN, UNAUTHORIZED, ApiError

# Demo tokens, used by `pdp serve --demo` when PDP_API_KEYS is not set. Printed at start.
DEMO_KEYS: dict[str, list[str]] = {
    "demo-pep": ["pep"],
    "demo-facts": ["facts_writer"],
    "demo-grants": ["grant_admin"],
    "demo-auditor": ["auditor"],
    "demo-policy": ["policy_admin"],
    "demo-admin": ["admin"],
}


@dataclass(frozen=True, slots=True)
class Caller:
    name: str  # the token's name for logs: a short fingerprint, never the token itself
    roles: frozenset[str]

    def has_any(self, roles: Sequence[str]) -> bool:
        return "admin" in self.roles or any(role in self.roles for role in roles)


class Authenticator:
    def __init__(self, keys: Mapping[str, Sequence[str]]) -> None:
        self._keys = [(token.encode(), frozenset(roles)) for token, roles in keys.items()]

    def authenticate(self, authorization: str | None) -> Caller:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("a bearer token is required")
        presented = token.strip().encode()
        for known, roles in self._keys:
            if hmac.compare_digest(known, presented):
                return Caller(name=_fingerprint(known), roles=roles)
        raise _unauthorized("unknown token")

    def require(self, authorization: str | None, roles: Sequence[str]) -> Caller:
        caller = self.authenticate(authorization)
        if not caller.has_any(roles):
            raise ApiError(403, FORBIDDEN, f"this token lacks the role: {' or '.join(roles)}")
        return caller


def _fingerprint(token: bytes) -> str:
    return "key-" + hashlib.sha256(token).hexdigest()[:8]


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})

"""Fact models: the shapes of areas, agreements, users, grants, clients and relationships.

Every fact is validated here before anything is stored. Field names and values are
those of API.md "Facts"; unknown fields are refused.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)

from pdp.model.vocab import (
    Action,
    AgreementStatus,
    Category,
    FactKind,
    GrantStatus,
    Service,
    UserStatus,
)

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")]
# The id rule of API.md, for checks in Python: always with fullmatch (`$` in Python's re
# also matches before a trailing newline).
ID_RULE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


def valid_id(value: str) -> str:
    """`value`, if it obeys the id rule of API.md; ValueError otherwise."""
    if ID_RULE.fullmatch(value) is None:
        raise ValueError("must be 1-128 letters, digits, '-', '_' or '.'")
    return value


MunicipalityCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{3}$")]
Text = Annotated[str, StringConstraints(max_length=1000)]


# Letters that are drawn as nothing: the Hangul fillers and the braille blank.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Categories that show nothing by themselves: format characters (zero-width, bidi marks,
# soft hyphen, ...), combining marks without a base, separators, and what is no
# character to read at all (surrogates, private use, unassigned).
_BLANK_CATEGORIES = frozenset({"Cf", "Mn", "Me", "Zs", "Zl", "Zp", "Cs", "Co", "Cn"})


def is_real_text(value: str) -> bool:
    """Whether `value` holds something to read: no control character other than tab,
    newline and carriage return (a form sends \r\n), and, once whitespace, format
    characters (category Cf: zero-width and bidi marks), combining marks (Mn, Me), the
    Hangul fillers and the braille blank are set aside, at least one character left."""
    readable = False
    for ch in value:
        category = unicodedata.category(ch)
        if category == "Cc":
            if ch not in "\t\n\r":
                return False
        elif not readable and not (category in _BLANK_CATEGORIES or ch in _BLANK_LETTERS
                                   or ch.isspace()):
            readable = True
    return readable


def real_text(value: str) -> str:
    """`value`, if it is real text (is_real_text); ValueError otherwise. The one rule for
    every justification and reason a person gives."""
    if not is_real_text(value):
        raise ValueError("must be real text: not blank, whitespace or invisible marks "
                         "only, and no control characters but tab and line breaks")
    return value


# A person's reason or justification is real text (a blank one explains nothing):
# Annotated[str, ..., REAL_TEXT].
REAL_TEXT = AfterValidator(real_text)


class Fact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Municipality(Fact):
    code: MunicipalityCode
    name: Text


class Area(Fact):
    name: Text
    responsible_municipality: MunicipalityCode
    municipalities: list[Municipality] = Field(max_length=1000)

    @model_validator(mode="after")
    def _unique_codes(self) -> Area:
        codes = [m.code for m in self.municipalities]
        if len(codes) != len(set(codes)):
            raise ValueError("municipalities: each code may appear once")
        return self


class Agreement(Fact):
    area: Id
    status: AgreementStatus
    signed_at: AwareDatetime
    ends_at: AwareDatetime | None = None
    # Rule 8: when true, a relationship that names no assigned users lets nobody in.
    assignment_required: StrictBool = False

    @model_validator(mode="after")
    def _notice_has_end(self) -> Agreement:
        if self.status == "notice_given" and self.ends_at is None:
            raise ValueError("ends_at: an agreement under notice must state when it ends")
        if self.ends_at is not None and self.ends_at <= self.signed_at:
            raise ValueError("ends_at: must be after signed_at")
        return self


class User(Fact):
    municipality: MunicipalityCode
    display_name: Text
    tasks: list[Service] = Field(max_length=3)
    status: UserStatus
    client_id: Id | None = None


def read_only() -> list[Action]:
    return ["read"]


class Grant(Fact):
    user: Id
    # The services the right was approved for (rules 7 and 9): it serves no other, even
    # when the user's tasks include it. Required of every right; rights stored before
    # purposes existed got their user's tasks of that day (migration 0011).
    purposes: list[Service] = Field(min_length=1, max_length=3)
    scopes: list[Category] = Field(min_length=1, max_length=10)
    actions: list[Action] = Field(default_factory=read_only, min_length=1, max_length=2)
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    status: GrantStatus
    legal_basis: Text
    # Extensions kept by the grant workflow (both optional in the facts API):
    recertify_by: AwareDatetime | None = None  # an active right stops counting then
    justification: Text | None = None  # the municipality's reason for the application

    @model_validator(mode="after")
    def _window(self) -> Grant:
        if self.valid_until <= self.valid_from:
            raise ValueError("valid_until: must be after valid_from")
        return self


class Client(Fact):
    home_municipality: MunicipalityCode
    protection_order: StrictBool = False
    # Rule 4: the client is now the employment authority's job-seeker client (a common
    # client of the area and the municipality). Required; the authority's system keeps it.
    area_client: StrictBool


class Relationship(Fact):
    client: Id
    municipality: MunicipalityCode
    service: Service
    starts_at: AwareDatetime
    ends_at: AwareDatetime | None = None
    assigned_users: list[Id] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _window(self) -> Relationship:
        if self.ends_at is not None and self.ends_at <= self.starts_at:
            raise ValueError("ends_at: must be after starts_at")
        return self


MODELS: dict[str, type[Fact]] = {
    "area": Area,
    "agreement": Agreement,
    "user": User,
    "grant": Grant,
    "client": Client,
    "relationship": Relationship,
}

# URL collection names of the facts API, and the kind each holds.
COLLECTIONS: dict[str, str] = {
    "areas": "area",
    "agreements": "agreement",
    "users": "user",
    "grants": "grant",
    "clients": "client",
    "relationships": "relationship",
}

# Keys a client may send back from a GET body; they are not part of the fact.
_ECHO_KEYS = ("id", "kind", "facts_version")


def parse_fact(kind: FactKind | str, data: Any) -> Fact:
    """Validate one fact's data; raises pydantic.ValidationError or KeyError (unknown kind)."""
    model = MODELS[kind]
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in _ECHO_KEYS}
    return model.model_validate(data)


def dump_fact(fact: Fact) -> dict[str, Any]:
    """The JSON form of a fact, as stored and as returned."""
    return fact.model_dump(mode="json")

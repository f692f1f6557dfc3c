"""The AuthZEN request shapes (API.md "Decisions"), validated into core requests.

Bad shape, wrong types, an unknown category or action, an id that breaks the id rule of
API.md (a control character, a direction or zero-width mark, ...), a purpose that is no
short word (longer than 64 characters, or holding a control, format or other invisible
character), an owner of the record that is neither a three-digit municipality code nor
"authority": invalid (`invalid_request`, or an item error in a batch). A missing or
unknown purpose is not an error: the policy denies it (`purpose_invalid`); unknown users
and clients likewise, and a write that names no owner (`action_not_permitted`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from pdp.engine.core import DecisionRequest
from pdp.model.facts import valid_id
from pdp.model.vocab import Action, Category

# The ids of a decision obey the id rule of API.md (as fact ids do): checked with a
# precompiled fullmatch, after the length.
RequestId = Annotated[str, StringConstraints(min_length=1, max_length=128),
                      AfterValidator(valid_id),
                      Field(json_schema_extra={"pattern": r"^[A-Za-z0-9_.\-]+$"})]


def purpose_word(value: str) -> str:
    """A purpose is a short word: nothing unprintable (control, format and bidi marks,
    separators other than the space). An unknown word is the policy's to deny."""
    if not value.isprintable():
        raise ValueError("a purpose is a short word: no control, format or other "
                         "invisible characters")
    return value


Purpose = Annotated[str, StringConstraints(max_length=64), AfterValidator(purpose_word)]

# Who produced a record (resource.properties.owner; API.md "Writes name the record's
# owner"): the three-digit code of a municipality, or "authority" for the employment
# authority's own records. Writes need it (rule 11); reads do not look at it.
Owner = Annotated[str, StringConstraints(pattern=r"^(?:[0-9]{3}|authority)$")]


class _Open(BaseModel):
    """AuthZEN objects may carry more members than this service reads."""

    model_config = ConfigDict(extra="allow")


class Subject(_Open):
    type: Literal["user"]
    id: RequestId


class ActionModel(_Open):
    name: Action


class ResourceProperties(_Open):
    category: Category
    owner: Owner | None = None


class Resource(_Open):
    type: Literal["client_record"]
    id: RequestId
    properties: ResourceProperties


class Context(_Open):
    purpose: Purpose | None = None
    min_facts_version: Annotated[StrictInt, Field(ge=0)] | None = None


class Evaluation(_Open):
    subject: Subject
    action: ActionModel
    resource: Resource
    context: Context = Field(default_factory=Context)

    def to_request(self) -> DecisionRequest:
        return DecisionRequest(
            user=self.subject.id,
            client=self.resource.id,
            category=self.resource.properties.category,
            action=self.action.name,
            purpose=self.context.purpose or "",
            owner=self.resource.properties.owner or "",
            purpose_stated=self.context.purpose is not None,
        )


EvaluationsSemantic = Literal["execute_all", "deny_on_first_deny", "permit_on_first_permit"]


class EvaluationsOptions(_Open):
    evaluations_semantic: EvaluationsSemantic = "execute_all"


class EvaluationsEnvelope(_Open):
    """The batch envelope; items are merged with the defaults and validated one by one."""

    subject: dict[str, Any] | None = None
    action: dict[str, Any] | None = None
    resource: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    evaluations: list[Any]  # each item is validated on its own: a bad one fails alone
    options: EvaluationsOptions = Field(default_factory=EvaluationsOptions)


# The members of an item's own object that fall back to the default's when missing
# (AuthZEN 1.0: the required identifiers); nothing else is merged.
FALLBACK_FIELDS: dict[str, tuple[str, ...]] = {
    "subject": ("type", "id"),
    "action": ("name",),
    "resource": ("type", "id"),
    "context": (),
}


def merge_item(defaults: EvaluationsEnvelope, item: dict[str, Any]) -> dict[str, Any]:
    """One batch item with the request's defaults (API.md "Decisions", AuthZEN 1.0 and its
    certification case c-3-2-7): an item that has `subject`, `action`, `resource` or
    `context` uses its own value whole; only a missing `type`/`id` of subject or resource,
    or `name` of action, is taken from the default's. An item with
    `"context": {"x": 1}` has no purpose; an item's `resource.properties` replace the
    default's properties."""
    merged: dict[str, Any] = dict(item)
    for key, fallback in FALLBACK_FIELDS.items():
        default = getattr(defaults, key)
        if default is None:
            continue
        if key not in item:
            merged[key] = default
            continue
        own = item[key]
        if isinstance(own, dict):
            merged[key] = {**{name: default[name] for name in fallback
                              if name in default and name not in own}, **own}
    return merged


# -- search (AuthZEN search API; API.md "search") ----------------------------------------

class SubjectType(_Open):
    type: Literal["user"]


class ResourceOfType(_Open):
    """A resource named by type and category, without an id (resource search)."""

    type: Literal["client_record"]
    properties: ResourceProperties


class PageRequest(_Open):
    # A token this service gave: base64url, nothing else (it is kept in the decision log).
    token: Annotated[str, StringConstraints(max_length=2048,
                                            pattern=r"^[A-Za-z0-9_\-]*$")] | None = None
    limit: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None


class ResourceSearch(_Open):
    subject: Subject
    action: ActionModel
    resource: ResourceOfType
    context: Context = Field(default_factory=Context)
    page: PageRequest = Field(default_factory=PageRequest)


class SubjectSearch(_Open):
    subject: SubjectType
    action: ActionModel
    resource: Resource
    context: Context = Field(default_factory=Context)
    page: PageRequest = Field(default_factory=PageRequest)


class ActionSearch(_Open):
    subject: Subject
    resource: Resource
    context: Context = Field(default_factory=Context)
    page: PageRequest = Field(default_factory=PageRequest)

"""AuthZEN search — who may act on what — answered by the same policy as decisions.

A search never holds its own copy of the rules. It narrows the candidates by facts, then
asks the decider (the memoised policy, exactly what `evaluation` asks) about each one in
id order and keeps those it allows:

- resource search (user, category, action, purpose): the clients of the relationships
  that could be the user's active one — of the user's municipality for the purpose and
  naming no user, or naming the user. `no_active_relationship` denies any other client
  (an active relationship is of the user's municipality, for the purpose, and names
  the user or no one), so none is left out that an evaluation would allow;
- subject search (client, category, action, purpose): the users named by the client's
  relationships, and every user of the municipality of one that names no one (the same
  rule, from the client's side);
- action search (user, client, category, purpose): every action of the vocabulary.

The record's owner a search names (`resource.properties.owner`, "" when none) is asked
about as an evaluation would ask it: a write is allowed only on a record of the user's
own municipality, whatever the candidates.

The property test (tests/test_search.py) checks on random worlds that every search
equals exhaustive evaluation, so a change of the rules that broke the narrowing would
be caught there.

`search` is the entry the service calls: one page, counted, and the decision log's record
of it (who asked what, and what it was shown), built by the engine like a decision's.

Paging is by id: a page holds the allowed candidates after the token's id, at most
`limit`, examined for at most `budget` seconds (a page may then hold fewer, with a
token to go on). Each page is answered from the facts current when it is asked: walking
every page returns each id at most once, in order; an id allowed during the whole walk
is returned exactly once; one whose answer changes during the walk appears if it is
allowed when its page is asked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TypeVar

import orjson

from pdp.engine.decider import Asker, Decider
from pdp.engine.policy_engine import Evaluator
from pdp.engine.records import AuditRecord, new_record_id
from pdp.model.clock import to_micros
from pdp.model.vocab import ACTIONS

Kind = str  # "resource", "subject" or "action"
P = TypeVar("P", bound=Evaluator)


class BadToken(ValueError):
    """A page token that is not one of ours, or belongs to another query."""


@dataclass(frozen=True, slots=True)
class Page:
    ids: list[str]
    after: str | None  # the id to continue after; None when the listing is complete
    examined: int  # candidates asked about


def query_fingerprint(kind: Kind, query: object) -> str:
    """A short digest of the query a token belongs to (everything but the page)."""
    return hashlib.sha256(orjson.dumps([kind, query], option=orjson.OPT_SORT_KEYS)
                          ).hexdigest()[:16]


def encode_token(fingerprint: str, after: str) -> str:
    raw = orjson.dumps({"q": fingerprint, "a": after})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, fingerprint: str) -> str:
    """The id a token continues after; BadToken unless it was made for this query."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise BadToken("not a page token of this service") from None
    if not isinstance(data, dict) or not isinstance(data.get("a"), str):
        raise BadToken("not a page token of this service")
    if data.get("q") != fingerprint:
        raise BadToken("the token belongs to another query")
    return str(data["a"])


def resource_candidates(decider: Decider[P], user: str, purpose: str) -> list[str]:
    """The clients of the relationships that could be the user's active one: those of
    the user's municipality for the purpose that name no user, and those naming the
    user. In id order."""
    with decider.facts.reading() as facts:
        found = facts.users.get(user)
        if found is None:
            return []
        return sorted({*facts.open_relationships.get((found.municipality, purpose), ()),
                       *facts.assigned_relationships.get(user, ())})


def subject_candidates(decider: Decider[P], client: str) -> list[str]:
    """The users a relationship of the client could be the active one of: those it
    names, or every user of its municipality if it names none. In id order."""
    found: set[str] = set()
    with decider.facts.reading() as facts:
        for relationship in facts.relationships_by_client.get(client, {}).values():
            if relationship.assigned_users:
                found.update(relationship.assigned_users)
            else:
                found.update(facts.users_by_municipality.get(relationship.municipality, ()))
        return sorted(found)


def _walk(candidates: Iterable[str], allowed: Callable[[str], bool], after: str | None,
          limit: int, budget: float) -> Page:
    """The allowed candidates after `after`, at most `limit`, for at most `budget` s.

    It looks one allowed candidate ahead, so a complete listing ends with no token."""
    deadline = time.monotonic() + budget
    ids: list[str] = []
    examined = 0
    last: str | None = None
    for candidate in candidates:
        if after is not None and candidate <= after:
            continue
        examined += 1
        if allowed(candidate):
            if len(ids) == limit:
                return Page(ids, ids[-1], examined)  # one more exists: go on after the last
            ids.append(candidate)
        last = candidate
        if examined and time.monotonic() >= deadline and len(ids) < limit:
            return Page(ids, last, examined)  # out of time: go on after the last examined
    return Page(ids, None, examined)


def search_resources(decider: Decider[P], *, user: str, category: str, action: str,
                     purpose: str, after: str | None, limit: int, budget: float,
                     now: datetime, owner: str = "") -> Page:
    def allowed(client: str) -> bool:
        return decider.table(user, client, purpose, now, owner).pick(category,
                                                                     action).decision

    return _walk(resource_candidates(decider, user, purpose), allowed, after, limit, budget)


def search_subjects(decider: Decider[P], *, client: str, category: str, action: str,
                    purpose: str, after: str | None, limit: int, budget: float,
                    now: datetime, owner: str = "") -> Page:
    def allowed(user: str) -> bool:
        return decider.table(user, client, purpose, now, owner).pick(category,
                                                                     action).decision

    return _walk(subject_candidates(decider, client), allowed, after, limit, budget)


def search_actions(decider: Decider[P], *, user: str, client: str, category: str,
                   purpose: str, after: str | None, limit: int, budget: float,
                   now: datetime, owner: str = "") -> Page:
    table = decider.table(user, client, purpose, now, owner)
    return _walk(sorted(ACTIONS), lambda action: table.pick(category, action).decision,
                 after, limit, budget)


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """One page of a search as asked: `kind` says which of user, client and action it
    names (resource: user and action; subject: client and action; action: user and
    client). `purpose` as stated (None: none); `token` the page token it came with."""

    kind: Kind
    category: str
    purpose: str | None
    owner: str
    limit: int
    budget: float
    fingerprint: str
    user: str | None = None
    client: str | None = None
    action: str | None = None
    token: str | None = None
    after: str | None = None  # the token's id, decoded at the edge


@dataclass(frozen=True, slots=True)
class Searched:
    page: Page
    next_token: str  # "" when the listing is complete
    record: AuditRecord


def _runner(query: SearchQuery) -> Callable[..., Page]:
    if query.kind == "resource":
        return partial(search_resources, user=query.user or "", action=query.action or "")
    if query.kind == "subject":
        return partial(search_subjects, client=query.client or "", action=query.action or "")
    return partial(search_actions, user=query.user or "", client=query.client or "")


def search(decider: Decider[P], query: SearchQuery, now: datetime,
           asker: Asker) -> Searched:
    """One page, decided by the same memoised policy as evaluations, counted, and its
    record built from one view of the facts."""
    started = time.perf_counter()
    page = _runner(query)(decider, category=query.category, purpose=query.purpose or "",
                          after=query.after, limit=query.limit, budget=query.budget,
                          now=now, owner=query.owner)
    metrics = decider.metrics
    if metrics is not None:
        metrics.search_seconds.labels(query.kind).observe(time.perf_counter() - started)
        metrics.searches.labels(query.kind).inc()
        metrics.search_candidates.labels(query.kind).inc(page.examined)
    next_token = encode_token(query.fingerprint, page.after) if page.after is not None else ""
    return Searched(page, next_token, _record(decider, query, page, next_token, now, asker))


def _record(decider: Decider[P], query: SearchQuery, page: Page, next_token: str,
            now: datetime, asker: Asker) -> AuditRecord:
    """The decision log's record of one page: who asked what, and what it was shown."""
    with decider.facts.reading() as view:
        user = view.users.get(query.user) if query.user else None
        client = view.clients.get(query.client) if query.client else None
        version = view.version
    return AuditRecord(
        "search", new_record_id(), to_micros(now), user_id=query.user,
        user_municipality=user.municipality if user else None, client_id=query.client,
        client_municipality=client.home_municipality if client else None,
        category=query.category, action=query.action, purpose=query.purpose,
        decision=bool(page.ids), policy_version=decider.policy.version,
        facts_version=version, request_id=asker.request_id, caller=asker.caller,
        details=orjson.dumps({"kind": query.kind, "results": page.ids, "token": query.token,
                              "limit": query.limit, "next_token": next_token}).decode())

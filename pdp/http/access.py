"""Who may call what: the PDP's own API authorization, as one table (route -> roles), and
the gate that enforces it before anything of a request is parsed.

Like OPA's `authorizer`, the gate sits in front of every route: it matches the request
against the table's paths (compiled as the router compiles them, in the same order),
authenticates the caller (401) and checks the roles (403) before a query parameter, path
parameter or body is validated, so that an unauthenticated or unauthorised caller learns
nothing from validation errors. Only then does it check what every request must be
(API.md "Errors"): no control characters or bidi marks in the path or query, a
well-formed X-Request-ID, a body only as `application/json`, and a body that arrives
within the read timeout. A path that the table does not name is for `admin` only: adding
a route means adding its line here (tests/test_http_bounds.py walks every route of the
app and fails on one without its line, and on a line that names no route).

The table is the only place that names who may call what: the role lists below are its
own, and no route asks for a role again. What a route still checks is finer and stays in
terms of the table: the scope rule, "a municipality admin acts only for its own
municipality", is answered in one place, `Reach` (the municipalities a caller acts for
through the roles the table let it in by), which the gate puts next to the caller for
every route (`ReachDep`); `owner` says which municipality owns a user or a right. (A facts
batch needs the role of every kind it holds: `KIND_ROLES`.)
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import Depends, Request
from starlette.convertors import Convertor
from starlette.requests import ClientDisconnect
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdp.engine.factindex import FactView
from pdp.http.errors import ApiError, refusal_response
from pdp.model.callers import MUNICIPALITY_ADMIN, Authenticator, Caller, forbidden
from pdp.model.errors import INVALID_REQUEST, NOT_FOUND, Refused, bad_request
from pdp.model.facts import COLLECTIONS

log = logging.getLogger(__name__)

# Which role keeps which facts (API.md "Caller authentication").
KIND_ROLES: dict[str, str] = {
    "client": "facts_writer",
    "relationship": "facts_writer",
    "user": "facts_writer",
    "area": "grant_admin",
    "agreement": "grant_admin",
    "grant": "grant_admin",
}
# Who may write and read each kind through the facts API. A municipality admin reports
# changes of its own users and reads its own users and rights; KEHA reads the rights it
# opens and closes.
WRITE_ROLES: dict[str, list[str]] = {kind: [role] for kind, role in KIND_ROLES.items()}
WRITE_ROLES["user"] = ["facts_writer", MUNICIPALITY_ADMIN]
READ_ROLES: dict[str, list[str]] = {kind: [role] for kind, role in KIND_ROLES.items()}
READ_ROLES["user"] = ["facts_writer", MUNICIPALITY_ADMIN]
READ_ROLES["grant"] = ["grant_admin", "keha", MUNICIPALITY_ADMIN]
# Who may have a decision explained: the policy's authors and the auditors.
EXPLAINERS = ["policy_admin", "auditor"]
PEP = ["pep"]

# The life of a right: who may take each step. A municipality admin acts for its own
# municipality only (see Reach).
STEP_ROLES: dict[str, list[str]] = {
    "apply": ["grant_admin", MUNICIPALITY_ADMIN],
    "approve": ["grant_admin"],
    "activate": ["keha"],
    "suspend": ["grant_admin"],
    "restore": ["grant_admin"],
    "revoke": ["grant_admin", "keha", MUNICIPALITY_ADMIN],
    "recertify": ["grant_admin", MUNICIPALITY_ADMIN],
}
GRANT_READERS = ["grant_admin", "keha", "auditor", MUNICIPALITY_ADMIN]
# Either party may give notice (§ 9): the authority, or the municipality for its own
# agreement; only the area rescinds (§ 10).
AGREEMENT_ROLES: dict[str, list[str]] = {
    "notice": ["grant_admin", MUNICIPALITY_ADMIN],
    "rescind": ["grant_admin"],
}
# The register of rights granted before the service is imported by the admin alone.
IMPORTERS = ["admin"]
# The decision log is the auditors'; supervisors draw samples of a municipality's accesses.
AUDITORS = ["auditor"]
SUPERVISORS = ["auditor", "grant_admin", MUNICIPALITY_ADMIN]
# Misuse cases (agreement § 7): both parties read, open and comment; the authority alone
# resolves (a municipality comments, never closes).
CASE_READERS = ["auditor", "grant_admin", MUNICIPALITY_ADMIN]
OPENERS = ["grant_admin", "auditor", MUNICIPALITY_ADMIN]
COMMENTERS = ["grant_admin", "auditor", MUNICIPALITY_ADMIN]
RESOLVERS = ["grant_admin"]
# Policies: their authors reload and try them; auditors read what is live and in shadow.
POLICY_READERS = ["policy_admin", "auditor"]
RELOADERS = ["policy_admin"]


# -- scope: a municipality admin acts only for its own municipality -----------------------


@dataclass(frozen=True, slots=True)
class Reach:
    """The one answer to "may this caller act on what this municipality owns": where a
    caller acts through `roles` (the roles the table let it in by). `own` None: everywhere
    (an unscoped role among them, or admin); else only the municipalities it administers
    (`municipality_admin:<code>`, when MUNICIPALITY_ADMIN is among the roles)."""

    roles: tuple[str, ...]
    own: frozenset[str] | None

    @classmethod
    def of(cls, caller: Caller, roles: Sequence[str]) -> Reach:
        if caller.is_admin or any(role in caller.roles for role in roles
                                  if role != MUNICIPALITY_ADMIN):
            return cls(tuple(roles), None)
        scoped = caller.municipalities if MUNICIPALITY_ADMIN in roles else frozenset()
        return cls(tuple(roles), scoped)

    @property
    def everywhere(self) -> bool:
        """Acts for every municipality (not only as a municipality admin)."""
        return self.own is None

    def covers(self, municipality: str | None) -> bool:
        """May act on what `municipality` owns (None: owned by none known: only a caller
        who acts everywhere may)."""
        return self.own is None or municipality in self.own

    def listing(self, asked: str | None) -> str | None:
        """The municipality a listing is limited to: the one asked for (None: all) by a
        caller who acts everywhere; a municipality admin's own (the one it holds if it
        names none). Any other: 404, as if there were no such municipality."""
        if self.own is None:
            return asked
        own = sorted(self.own)
        if asked is None and len(own) == 1:
            asked = own[0]
        if asked is None or asked not in own:
            raise Refused(NOT_FOUND, "no such municipality")
        return asked


def owner(index: FactView, kind: str, fact_id: str) -> str | None:
    """Which municipality owns a fact: a user's own, a right's user's, an agreement's
    code (None: not known, or a kind that no municipality owns)."""
    if kind == "user":
        user = index.users.get(fact_id)
        return user.municipality if user else None
    if kind == "grant":
        grant = index.grants.get(fact_id)
        holder = index.users.get(grant.user) if grant else None
        return holder.municipality if holder else None
    if kind == "agreement":
        return fact_id
    return None


async def get_reach(request: Request) -> Reach:
    """The Reach the access gate put next to the caller of this route."""
    reach = request.scope.get("state", {}).get("reach")
    if not isinstance(reach, Reach):  # a route that needs one, opened by mistake
        raise RuntimeError(f"no reach for {request.method} {request.url.path}: the access "
                           "table opens a route that needs a caller")
    return reach


ReachDep = Annotated[Reach, Depends(get_reach)]


class Open(tuple[str, ...]):
    """The rule of an open route: no token needed."""


# A rule: the roles of a route (any one of them will do; `admin` holds all), PUBLIC, or a
# function of the path parameters that names the roles or raises 404 (an unknown fact
# collection, workflow step or agreement act).
PUBLIC = Open()
Rule = Sequence[str] | Callable[[Mapping[str, Any]], Sequence[str]]


def _facts(table: Mapping[str, Sequence[str]]) -> Callable[[Mapping[str, Any]], Sequence[str]]:
    def roles(params: Mapping[str, Any]) -> Sequence[str]:
        kind = COLLECTIONS.get(str(params.get("collection")))
        if kind is None:
            raise Refused(NOT_FOUND, f"no such collection: {params.get('collection')}")
        return table[kind]
    return roles


def _step(params: Mapping[str, Any]) -> Sequence[str]:
    step = str(params.get("step"))
    if step == "apply" or step not in STEP_ROLES:
        raise Refused(NOT_FOUND, f"no such step: {step}")
    return STEP_ROLES[step]


def _agreement_act(params: Mapping[str, Any]) -> Sequence[str]:
    act = str(params.get("act"))
    if act not in AGREEMENT_ROLES:
        raise Refused(NOT_FOUND, f"no such step: {act}")
    return AGREEMENT_ROLES[act]


# The table: (method, route path) -> rule. One line per route of the app, in the app's
# order where paths overlap: a request takes the rule of the first path and method that
# match it, as the router takes the first route.
ACCESS: dict[tuple[str, str], Rule] = {
    # open (API.md): health, metrics, discovery, the API's own description
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/.well-known/authzen-configuration"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/playground"): PUBLIC,  # the page holds no data; its calls carry a token
    # decisions and search
    ("POST", "/access/v1/evaluation"): PEP,
    ("POST", "/access/v1/evaluations"): PEP,
    ("POST", "/access/v1/search/resource"): PEP,
    ("POST", "/access/v1/search/subject"): PEP,
    ("POST", "/access/v1/search/action"): PEP,
    ("POST", "/v1/explain"): EXPLAINERS,
    # the life of a right
    ("POST", "/v1/grant-applications"): STEP_ROLES["apply"],
    ("POST", "/v1/grants:import"): IMPORTERS,
    ("POST", "/v1/grants/{grant_id}/{step}"): _step,
    ("GET", "/v1/grants"): GRANT_READERS,
    ("GET", "/v1/grants/{grant_id}/history"): GRANT_READERS,
    ("POST", "/v1/agreements/{code}/{act}"): _agreement_act,
    ("GET", "/v1/events"): GRANT_READERS,
    # the decision log
    ("GET", "/v1/audit/decisions"): AUDITORS,
    ("GET", "/v1/audit/verify"): AUDITORS,
    ("GET", "/v1/audit/clients/{client}/report"): AUDITORS,
    ("POST", "/v1/audit/holds"): AUDITORS,
    ("GET", "/v1/audit/holds"): AUDITORS,
    ("DELETE", "/v1/audit/holds/{hold_id}"): AUDITORS,
    # supervision
    ("GET", "/v1/monitoring/samples"): SUPERVISORS,
    ("GET", "/v1/monitoring/cases"): CASE_READERS,
    ("POST", "/v1/monitoring/cases"): OPENERS,
    ("POST", "/v1/monitoring/cases/{case_id}/comments"): COMMENTERS,
    ("POST", "/v1/monitoring/cases/{case_id}/resolve"): RESOLVERS,
    # policies
    ("GET", "/v1/policy"): POLICY_READERS,
    ("POST", "/v1/policy/reload"): RELOADERS,
    ("GET", "/v1/playground/choices"): RELOADERS,
    ("GET", "/v1/policy/files"): RELOADERS,
    ("POST", "/v1/policy/test"): RELOADERS,
    ("POST", "/v1/policy/candidates"): RELOADERS,
    ("GET", "/v1/policy/candidates"): POLICY_READERS,
    ("GET", "/v1/policy/candidates/{version}/examples"): POLICY_READERS,
    ("POST", "/v1/policy/candidates/{version}/promote"): RELOADERS,
    ("DELETE", "/v1/policy/candidates/{version}"): RELOADERS,
    # facts: the generic routes last, as in the app (the first path that matches wins)
    ("POST", "/v1/facts:batch"): sorted(set(KIND_ROLES.values())),
    ("PUT", "/v1/{collection}/{fact_id:path}"): _facts(WRITE_ROLES),
    ("GET", "/v1/{collection}/{fact_id:path}"): _facts(READ_ROLES),
    ("DELETE", "/v1/{collection}/{fact_id:path}"): _facts(WRITE_ROLES),
}
UNLISTED: Sequence[str] = ["admin"]  # a route the table forgets: fail closed

# Never in a path or a query: C0 and C1 controls (NUL, CR, LF, ...), DEL, bidi and other
# invisible direction marks, line and paragraph separators.
FORBIDDEN_CHARS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# X-Request-ID: 1 to 128 printable ASCII characters.
REQUEST_ID = re.compile(rb"[\x20-\x7e]{1,128}")
JSON_MEDIA_TYPE = "application/json"


def valid_request_id(value: bytes) -> bool:
    return REQUEST_ID.fullmatch(value) is not None


def media_type_error(content_type: str | None) -> str | None:
    """Why a request body of this Content-Type is not read (None: it is JSON)."""
    if content_type is None:
        return f"a request body must be sent as Content-Type: {JSON_MEDIA_TYPE}"
    media, _, parameters = content_type.partition(";")
    if media.strip().lower() != JSON_MEDIA_TYPE:
        return (f"Content-Type {media.strip()[:64]!r} is not read; send "
                f"{JSON_MEDIA_TYPE}")
    for parameter in filter(None, (p.strip() for p in parameters.split(";"))):
        name, _, value = parameter.partition("=")
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() != "utf-8":
            return f"Content-Type parameter {parameter[:64]!r}: only charset=utf-8 is read"
    return None


class BodyTimeout(ApiError):
    """The request body did not arrive within the read timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, "request_timeout",
                         f"the request body did not arrive within {seconds:g} seconds",
                         headers={"Connection": "close"})


@dataclass(frozen=True)
class TablePath:
    """A path of the table, compiled as the router compiles it."""

    path: str  # the template, e.g. "/v1/{collection}/{fact_id:path}"
    regex: re.Pattern[str]
    convertors: dict[str, Convertor[Any]]
    rules: dict[str, Rule]  # by method

    def params(self, path: str) -> dict[str, Any] | None:
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        return {key: self.convertors[key].convert(value)
                for key, value in found.groupdict().items()}


def compile_table(table: Mapping[tuple[str, str], Rule]) -> list[TablePath]:
    """The table's paths in its order (the first that matches a path wins, as in the app's
    router: specific routes come before the generic facts routes)."""
    paths: dict[str, TablePath] = {}
    for (method, path), rule in table.items():
        if path not in paths:
            regex, _, convertors = compile_path(path)
            paths[path] = TablePath(path, regex, convertors, {})
        paths[path].rules[method] = rule
    return list(paths.values())


def find_rule(paths: Sequence[TablePath], method: str, path: str
              ) -> tuple[TablePath | None, Rule | None, dict[str, Any]]:
    """(the table path, its rule, the path parameters) of the first path that matches with
    this method; else (the first path that matches, None, {}), the router's 405; else
    (None, None, {}) for a path the table does not know."""
    method = "GET" if method == "HEAD" else method
    other: TablePath | None = None
    for entry in paths:
        params = entry.params(path)
        if params is not None:
            rule = entry.rules.get(method)
            if rule is not None:
                return entry, rule, params
            other = other or entry
    return other, None, {}


class AccessGate:
    """ASGI middleware: the access table enforced in front of every route (see above)."""

    def __init__(self, app: ASGIApp, auth: Authenticator, body_timeout_seconds: float,
                 table: Mapping[tuple[str, str], Rule] = ACCESS) -> None:
        self.app = app
        self.auth = auth
        self.body_timeout = body_timeout_seconds
        self.paths = compile_table(table)

    def authorize(self, scope: Scope, headers: Mapping[bytes, list[bytes]]
                  ) -> tuple[Caller, Reach] | None:
        """401, 404 or 403 (a Refused), or the caller and where it acts on this route (None
        on an open route). A path the table does not know is for admin only (the router
        then answers 404); a method the table does not know for a path it knows, for any
        caller (the router answers 405)."""
        entry, rule, params = find_rule(self.paths, scope["method"], route_path(scope))
        if isinstance(rule, Open):
            return None
        authorization = headers.get(b"authorization")
        caller = self.auth.authenticate(
            authorization[0].decode("latin-1") if authorization else None)
        if entry is not None and rule is None:
            return caller, Reach.of(caller, UNLISTED)
        roles = UNLISTED if rule is None else rule(params) if callable(rule) else rule
        if not caller.has_any(roles):
            raise forbidden(roles)
        return caller, Reach.of(caller, roles)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, list[bytes]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, []).append(value)
        try:
            allowed = self.authorize(scope, headers)
            check_request(scope, headers)
        except Refused as error:
            entry, _, _ = find_rule(self.paths, scope["method"], route_path(scope))
            if entry is not None:
                scope["route"] = entry  # the metrics name a refusal by its route
            await _refuse(error, scope, receive, send)
            return
        if allowed is not None:
            state = scope.setdefault("state", {})
            state["caller"], state["reach"] = allowed
        if has_body(headers):
            receive = self.timed(receive)
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except ClientDisconnect:
            # The client went away mid-body: nothing to answer and nothing wrong here.
            # 499 (nginx's "client closed request") names it in the metrics.
            log.info("client disconnected before sending the whole body: %s %s",
                     scope["method"], scope["path"])
            if not started:
                await send({"type": "http.response.start", "status": 499, "headers": []})
                await send({"type": "http.response.body", "body": b""})

    def timed(self, receive: Receive) -> Receive:
        """`receive`, raising BodyTimeout once the body has taken longer than the limit."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        done = False

        async def timed_receive() -> Message:
            nonlocal done
            if done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.body_timeout) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        return timed_receive


def route_path(scope: Scope) -> str:
    """The path the router matches (without the root path of a mounted app)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def has_body(headers: Mapping[bytes, list[bytes]]) -> bool:
    length = headers.get(b"content-length")
    return b"transfer-encoding" in headers or (length is not None and length[0].strip() != b"0")


def check_request(scope: Scope, headers: Mapping[bytes, list[bytes]]) -> None:
    """What every request must be, whatever its route: 400 invalid_request otherwise."""
    request_ids = headers.get(b"x-request-id")
    if request_ids is not None and (len(request_ids) > 1
                                    or not valid_request_id(request_ids[0])):
        raise bad_request("X-Request-ID: one header of 1-128 printable ASCII characters")
    if FORBIDDEN_CHARS.search(scope["path"]):
        raise bad_request("the path holds a control character or a direction mark")
    query = scope.get("query_string", b"")
    if query and FORBIDDEN_CHARS.search(
            unquote(query.decode("latin-1").replace("+", " "), errors="replace")):
        raise bad_request("the query holds a control character or a direction mark")
    if has_body(headers):
        types = headers.get(b"content-type")
        if types is not None and len(types) > 1:
            raise bad_request("one Content-Type header, please")
        problem = media_type_error(types[0].decode("latin-1") if types else None)
        if problem:
            raise Refused(INVALID_REQUEST, problem)


async def _refuse(error: Refused, scope: Scope, receive: Receive, send: Send) -> None:
    await refusal_response(error)(scope, receive, send)

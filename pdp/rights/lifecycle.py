"""The life of an access right: the grant workflow, agreement notice and rescission, and
the rights a change of a user ends or suspends (DOMAIN.md "Lifecycle of a right").

Which step is allowed in which state, the state a right is in at a time, and the limits a
right must keep are the policy's (policies/lifecycle.polar); this module asks it, plans
the fact changes and the events (history and outbox) of a step, and commits them in one
conditional write, so two people acting on one right at once cannot both succeed.
"""

from __future__ import annotations

import calendar
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from pdp.engine.factindex import FactView
from pdp.engine.facts_service import FactService
from pdp.engine.policy_engine import CompiledPolicy, var
from pdp.engine.policy_input import grant_record
from pdp.model.clock import to_micros, utcnow
from pdp.model.errors import (
    CONFLICT,
    GRANT_REFUSED,
    ID_TAKEN,
    INVALID_REQUEST,
    INVALID_TRANSITION,
    NOT_FOUND,
    POLICY_ERROR,
    REGISTER_CLOSED,
    USE_WORKFLOW,
    Refused,
    validation_details,
)
from pdp.model.facts import (
    REAL_TEXT,
    Agreement,
    Grant,
    Id,
    Text,
    User,
    dump_fact,
    parse_fact,
    read_only,
)
from pdp.model.policy_schema import (
    AGREEMENT_CHANGE,
    GRANT_REQUEST,
    RIGHT,
    USER_CHANGE,
    policy_input,
)
from pdp.model.vocab import Action, Category, GrantStatus, Service
from pdp.store.protocols import Change, Conflict, Event, IdTaken

Reason = Annotated[str, StringConstraints(min_length=1, max_length=1000), REAL_TEXT]
RevokeReason = Literal["task_ended", "employment_ended", "misuse", "agreement_ended", "other"]
Step = Literal["approve", "activate", "suspend", "restore", "revoke", "recertify"]
TERMINAL_STATES = ("revoked", "expired")
GRANT_STATES = ("applied", "approved", "active", "recertification_due", "suspended",
                "revoked", "expired")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Application(_Body):
    """POST /v1/grant-applications: a municipality applies for a right for its user, for
    the services (purposes) it is needed for."""

    id: Id | None = None
    user: Id
    purposes: list[Service] = Field(min_length=1, max_length=3)
    scopes: list[Category] = Field(min_length=1, max_length=10)
    actions: list[Action] = Field(default_factory=read_only, min_length=1, max_length=2)
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    legal_basis: Text
    justification: Reason


class Approval(_Body):
    """The authority approves, and may narrow purposes, scopes, actions or period."""

    justification: Reason
    purposes: list[Service] | None = Field(default=None, min_length=1, max_length=3)
    scopes: list[Category] | None = Field(default=None, min_length=1, max_length=10)
    actions: list[Action] | None = Field(default=None, min_length=1, max_length=2)
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None


class Activation(_Body):
    note: Reason | None = None


class Suspension(_Body):
    reason: Reason


class Restoration(_Body):
    justification: Reason


class Revocation(_Body):
    reason: RevokeReason
    justification: Reason | None = None


class Recertification(_Body):
    justification: Reason


class AgreementAct(_Body):
    """POST /v1/agreements/{code}/notice and /rescind."""

    reason: Reason


class ApprovalRecord(_Body):
    """How a right granted before the service came to be: who approved it and when, the
    decision's reference, and when KEHA opened it. Every field is required."""

    approved_by: Reason
    approved_at: AwareDatetime
    decision_ref: Reason
    activated_at: AwareDatetime

    @model_validator(mode="after")
    def _order(self) -> ApprovalRecord:
        if self.activated_at < self.approved_at:
            raise ValueError("activated_at: a right is opened after it is approved")
        return self


class RegisteredGrant(_Body):
    """One right of the register of rights granted before the service (POST
    /v1/grants:import), with its approval record."""

    id: Id
    user: Id
    purposes: list[Service] = Field(min_length=1, max_length=3)
    scopes: list[Category] = Field(min_length=1, max_length=10)
    actions: list[Action] = Field(default_factory=read_only, min_length=1, max_length=2)
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    status: Literal["active", "suspended", "revoked", "expired"]
    legal_basis: Annotated[str, StringConstraints(min_length=1, max_length=1000), REAL_TEXT]
    recertify_by: AwareDatetime
    approval: ApprovalRecord

    @model_validator(mode="after")
    def _window(self) -> RegisteredGrant:
        if self.valid_until <= self.valid_from:
            raise ValueError("valid_until: must be after valid_from")
        return self


class GrantRegister(_Body):
    """POST /v1/grants:import: the register, all or nothing."""

    grants: list[RegisteredGrant] = Field(min_length=1)


STEP_BODIES: dict[str, type[_Body]] = {
    "approve": Approval,
    "activate": Activation,
    "suspend": Suspension,
    "restore": Restoration,
    "revoke": Revocation,
    "recertify": Recertification,
}


class WorkflowError(Refused):
    """A step of the procedure refused, with its stable code (pdp.model.errors)."""


@dataclass
class Plan:
    """What a step writes: fact changes and events, committed together."""

    changes: list[Change] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def add_months(moment: datetime, months: int) -> datetime:
    """The same day and time `months` later (the last day of a shorter month)."""
    month0 = moment.month - 1 + months
    year, month = moment.year + month0 // 12, month0 % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


class Lifecycle:
    def __init__(self, policy: Callable[[], CompiledPolicy], facts: FactService, *,
                 max_grant_months: int = 12, recertification_days: int = 90,
                 notice_months: int = 3, register_before: datetime | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._policy = policy
        self.facts = facts
        self.max_grant_months = max_grant_months
        self.recertification = timedelta(days=recertification_days)
        self.notice_months = notice_months
        # The cut-over of the register of rights before the service; None: closed.
        self.register_before = register_before
        self.clock = clock

    @property
    def view(self) -> FactView:
        """The facts as the procedure reads them: single reads of the live index, each
        atomic. No view is held across a plan's steps (writers would wait behind it): a
        plan carries the versions it read (`expected`), checked when it is committed."""
        return self.facts.index

    # -- questions to the policy -------------------------------------------------------

    def state(self, grant_id: str, grant: Grant, now: datetime) -> str:
        """The state of a right at `now`: its status, unless time moved it on."""
        answer = self._policy().first("grant_state", grant_record(grant_id, grant),
                                      to_micros(now), var("state"))
        return str(answer["state"]) if answer else grant.status

    def _next_state(self, state: str, step: str) -> str:
        answer = self._policy().first("transition", state, step, var("next"))
        if answer is None:
            raise WorkflowError(INVALID_TRANSITION,
                                f"a right that is {state} cannot be {_past(step)}",
                                [{"state": state, "step": step}])
        return str(answer["next"])

    def _check_limits(self, grant: Grant, now: datetime) -> None:
        index = self.view
        user = index.users.get(grant.user)
        agreement = index.agreements.get(user.municipality) if user else None
        record = policy_input(GRANT_REQUEST, {
            "now": to_micros(now),
            "user_known": user is not None,
            "user_status": user.status if user else "",
            "user_tasks": list(user.tasks) if user else [],
            "agreement_status": agreement.status if agreement else "",
            "agreement_ends_at": to_micros(agreement.ends_at) if agreement else 0,
            "purposes": list(grant.purposes),
            "scopes": list(grant.scopes),
            "actions": list(grant.actions),
            "valid_from": to_micros(grant.valid_from),
            "valid_until": to_micros(grant.valid_until),
            "max_valid_until": to_micros(add_months(grant.valid_from, self.max_grant_months)),
        })
        refusal = self._policy().first("grant_refusal", record, var("rule"), var("detail"))
        if refusal is not None:
            rule, detail = str(refusal["rule"]), str(refusal["detail"])
            raise WorkflowError(GRANT_REFUSED, _refusal_message(rule, detail, self),
                                [{"rule": rule, "detail": detail}])

    # -- steps -------------------------------------------------------------------------

    # carries: C-4, C-11
    def apply_for(self, application: Application, actor: str) -> tuple[str, Grant, int]:
        """A new right in state `applied`; returns its id, the right and facts_version.

        The id is the application's or one made here. An id that a right has or ever had
        (deleted, or another municipality's) is refused with one and the same answer
        (`id_taken`), and only once everything else about the application is right: an
        application that fails for another reason fails alike whether its id is free or
        not, so nobody learns from it which ids exist."""
        for _attempt in range(3):
            grant_id = application.id or f"g-{secrets.token_hex(8)}"
            try:
                version = self._commit(self._application_plan(application, grant_id, actor))
            except WorkflowError as error:
                if error.code == ID_TAKEN and application.id is None:
                    continue  # a made id that was taken: make another
                raise
            return grant_id, self._grant(grant_id), version
        raise _id_taken()

    def _application_plan(self, application: Application, grant_id: str,
                          actor: str) -> Callable[[datetime], Plan]:
        def plan(now: datetime) -> Plan:
            grant = Grant(user=application.user, purposes=application.purposes,
                          scopes=application.scopes,
                          actions=application.actions, valid_from=application.valid_from,
                          valid_until=application.valid_until, status="applied",
                          legal_basis=application.legal_basis,
                          justification=application.justification)
            self._check_limits(grant, now)
            if self.view.fact_version("grant", grant_id):
                raise _id_taken()  # a deleted right's id: the store refuses it (IdTaken)
            result = Plan()
            self._put_grant(result, grant_id, grant, "grant.applied", actor,
                            application.justification, expected=0, previous=None)
            return result

        return plan

    # carries: C-5, C-13, C-14
    def step(self, grant_id: str, step: Step, body: _Body, actor: str) -> tuple[Grant, int]:
        """approve (C-5; may narrow), activate (C-14: KEHA opens it), suspend, restore,
        revoke (C-13) or recertify one right."""

        def plan(now: datetime) -> Plan:
            grant = self._grant(grant_id)
            state = self.state(grant_id, grant, now)
            next_state = self._next_state(state, step)
            changed, why = self._stepped(grant, step, body, next_state, now)
            if step in ("approve", "activate", "restore"):
                self._check_limits(changed, now)
            result = Plan()
            self._put_grant(result, grant_id, changed, f"grant.{_past(step)}", actor, why,
                            expected=self.view.fact_version("grant", grant_id),
                            previous=state)
            return result

        version = self._commit(plan)
        return self._grant(grant_id), version

    def _stepped(self, grant: Grant, step: str, body: _Body, next_state: str,
                 now: datetime) -> tuple[Grant, str | None]:
        update: dict[str, Any] = {"status": next_state}
        why: str | None = None
        if isinstance(body, Approval):
            why = body.justification
            update.update(self._narrowed(grant, body))
        elif isinstance(body, Activation):
            why = body.note
            update["recertify_by"] = now + self.recertification
        elif isinstance(body, Suspension):
            why = body.reason
        elif isinstance(body, Restoration | Recertification):
            why = body.justification
            update["recertify_by"] = now + self.recertification
        elif isinstance(body, Revocation):
            why = body.reason + (f": {body.justification}" if body.justification else "")
        return grant.model_copy(update=update), why

    @staticmethod
    def _narrowed(grant: Grant, approval: Approval) -> dict[str, Any]:
        update: dict[str, Any] = {}
        if approval.purposes is not None:
            other = sorted(set(approval.purposes) - set(grant.purposes))
            if other:
                raise _not_narrower("purposes", f"{other[0]} was not applied for")
            update["purposes"] = approval.purposes
        if approval.scopes is not None:
            wider = sorted(set(approval.scopes) - set(grant.scopes))
            if wider:
                raise _not_narrower("scopes", f"{wider[0]} was not applied for")
            update["scopes"] = approval.scopes
        if approval.actions is not None:
            more = sorted(set(approval.actions) - set(grant.actions))
            if more:
                raise _not_narrower("actions", f"{more[0]} was not applied for")
            update["actions"] = approval.actions
        start = approval.valid_from or grant.valid_from
        end = approval.valid_until or grant.valid_until
        if start < grant.valid_from or end > grant.valid_until:
            raise _not_narrower("valid_from" if start < grant.valid_from else "valid_until",
                                "the period may only be shortened")
        if end <= start:
            raise _not_narrower("valid_until", "must be after valid_from")
        update.update(valid_from=start, valid_until=end)
        return update

    # -- agreements --------------------------------------------------------------------

    # carries: C-22
    def notice(self, code: str, act: AgreementAct, actor: str,
               party: Literal["area", "municipality"] = "area") -> tuple[Agreement, int]:
        """Notice, by either party (§ 9): the agreement ends `notice_months` from the day
        it is given — computed here, never given — and every right with it."""
        def plan(now: datetime) -> Plan:
            agreement = self._agreement(code)
            if agreement.status != "in_force":
                raise WorkflowError(INVALID_TRANSITION,
                                    f"an agreement that is {agreement.status} cannot be given "
                                    "notice", [{"state": agreement.status, "step": "notice"}])
            ended = agreement.model_copy(update={"status": "notice_given",
                                                 "ends_at": add_months(now, self.notice_months)})
            return self._agreement_plan(code, ended, actor, act.reason, now, "notice_given",
                                        party)

        version = self._commit(plan)
        return self._agreement(code), version

    # carries: C-23
    def rescind(self, code: str, act: AgreementAct, actor: str) -> tuple[Agreement, int]:
        """Rescission (§ 10): the agreement and every right of the municipality end now."""
        def plan(now: datetime) -> Plan:
            agreement = self._agreement(code)
            if agreement.status in ("terminated", "rescinded"):
                raise WorkflowError(INVALID_TRANSITION,
                                    f"an agreement that is {agreement.status} cannot be "
                                    "rescinded", [{"state": agreement.status, "step": "rescind"}])
            ended = agreement.model_copy(update={"status": "rescinded", "ends_at": now})
            return self._agreement_plan(code, ended, actor, act.reason, now, "rescinded")

        version = self._commit(plan)
        return self._agreement(code), version

    def _agreement_plan(self, code: str, agreement: Agreement, actor: str, why: str | None,
                        now: datetime, event: str, party: str = "area") -> Plan:
        result = Plan()
        result.changes.append(Change("agreement", code, dump_fact(agreement),
                                     self.view.fact_version("agreement", code)))
        result.events.append(Event(f"agreement.{event}", "agreement", code, code, actor, why,
                                   {"agreement": dump_fact(agreement), "party": party}))
        self._follow_agreement(result, code, agreement, actor, now)
        return result

    def _follow_agreement(self, result: Plan, code: str, agreement: Agreement, actor: str,
                          now: datetime) -> None:
        """Rights that an agreement's new state ends (the policy's change_effect)."""
        change = policy_input(AGREEMENT_CHANGE, {
            "kind": "agreement", "status": agreement.status,
            "ends_at": to_micros(agreement.ends_at)})
        for grant_id, grant in self._live_grants_of_municipality(code, now):
            self._apply_effect(result, change, grant_id, grant, actor, now,
                               agreement_end=agreement.ends_at)

    def _apply_effect(self, result: Plan, change: dict[str, Any], grant_id: str, grant: Grant,
                      actor: str, now: datetime, agreement_end: datetime | None = None) -> None:
        """Ask the policy what `change` does to one live right, and plan it."""
        state = self.state(grant_id, grant, now)
        right = policy_input(RIGHT, {"state": state, "purposes": list(grant.purposes),
                                     "scopes": list(grant.scopes),
                                     "valid_until": to_micros(grant.valid_until)})
        answer = self._policy().first("change_effect", change, right, var("effect"),
                                      var("reason"))
        if answer is None:
            return
        effect, reason = str(answer["effect"]), str(answer["reason"])
        if effect == "end_at_agreement" and agreement_end is not None:
            if agreement_end > grant.valid_from:
                self._put_grant(result, grant_id,
                                grant.model_copy(update={"valid_until": agreement_end}),
                                "grant.period_shortened", actor, reason, previous=state)
                return
            effect = "revoke"  # the agreement ends before the right would start
        status = {"revoke": "revoked", "suspend": "suspended"}.get(effect)
        if status is None:
            raise WorkflowError(POLICY_ERROR, f"unknown change effect {effect!r}")
        self._put_grant(result, grant_id, grant.model_copy(update={"status": status}),
                        f"grant.{status}", actor, reason, previous=state)

    # -- the register of rights granted before the service ------------------------------

    # carries: C-5, C-14
    def import_register(self, register: GrantRegister, actor: str) -> int:
        """The rights granted before the service, each with its approval record (who
        approved it and when, the decision, when KEHA opened it): all or nothing, each
        right an event `grant.imported`. The one way a right enters other than by
        application. An id that a right has or had is refused `id_taken`; a right that would
        count now (active) must keep the limits a right keeps when it is opened, and its
        re-certification may be due at most one period from now. Returns facts_version.

        The register holds only rights granted before the service: every approval and
        opening lies before the configured cut-over `register_before` (refused
        `invalid_request` naming the field); with no cut-over configured the register is
        closed (`register_closed`)."""
        if self.register_before is None:
            raise WorkflowError(
                REGISTER_CLOSED, "the register of rights granted before the service is "
                "closed (PDP_REGISTER_BEFORE is not set): a right is applied for, POST "
                "/v1/grant-applications", [{"field": "grants", "step": "apply",
                                            "message": "the register is closed"}])
        first: dict[str, int] = {}
        for n, item in enumerate(register.grants):
            if item.id in first:
                raise _invalid(f"grants[{n}].id", f"the id of grants[{first[item.id]}] too")
            first[item.id] = n

        def plan(now: datetime) -> Plan:
            result = Plan()
            for n, item in enumerate(register.grants):
                grant = self._registered(n, item, now)
                if self.view.fact_version("grant", item.id):
                    raise _register_id_taken(n)
                approval = item.approval
                self._put_grant(result, item.id, grant, "grant.imported", actor,
                                f"register: {approval.decision_ref}", previous=None,
                                expected=0, approval=approval.model_dump(mode="json"))
            return result

        return self._commit(plan, taken=lambda error: _register_id_taken(first.get(error.id)))

    def _registered(self, n: int, item: RegisteredGrant, now: datetime) -> Grant:
        """The right of register item `n`, checked against the facts as they are now."""
        where = f"grants[{n}]"
        if item.user not in self.view.users:
            raise _invalid(f"{where}.user", "no such user")
        for name in ("approved_at", "activated_at"):
            if getattr(item.approval, name) > now:
                raise _invalid(f"{where}.approval.{name}", "must not be in the future")
            if self.register_before is not None and (
                    getattr(item.approval, name) >= self.register_before):
                raise _invalid(f"{where}.approval.{name}",
                               f"must be before {self.register_before.isoformat()}, the "
                               "cut-over of the register (PDP_REGISTER_BEFORE): the register "
                               "holds only rights granted before the service")
        try:
            grant = Grant(user=item.user, purposes=item.purposes, scopes=item.scopes,
                          actions=item.actions, valid_from=item.valid_from,
                          valid_until=item.valid_until, status=item.status,
                          legal_basis=item.legal_basis, recertify_by=item.recertify_by)
        except ValidationError as error:
            details = validation_details(error, where)
            raise WorkflowError(INVALID_REQUEST,
                                f"{details[0]['field']}: {details[0]['message']}",
                                details) from None
        if item.status in ("active", "suspended") and (
                item.recertify_by > now + self.recertification):
            raise _invalid(f"{where}.recertify_by",
                           f"at most {self.recertification.days} days from now: a right is "
                           "re-certified at least that often")
        if item.status == "active":
            try:
                self._check_limits(grant, now)
            except WorkflowError as refused:
                raise WorkflowError(refused.code,
                                    f"{where}: {refused.message}",
                                    [{"field": where, **d} for d in refused.details or []]
                                    ) from None
        return grant

    # -- changes of facts that must end or change rights ---------------------------------

    def write_facts(self, changes: Sequence[Change], actor: str) -> int:
        """Facts-API writes (data None: delete) with what follows from them, in one commit.
        Raises store.NotFound for a delete of a fact that does not exist; a user written
        under a taken id is refused `id_taken` (see `write_user`). A right, or an agreement's
        status or end, is never written here: `use_workflow` naming the step."""
        return self._commit(lambda now: self._facts_plan(changes, actor, now))

    def write_user(self, user_id: str, data: dict[str, Any] | None, actor: str,
                   acts_for: Callable[[str], bool]) -> int:
        """A facts-API write (data None: delete) of one user by a caller who acts only for
        the municipalities `acts_for` admits (a municipality admin), with everything it
        carries, in one commit conditional on the user as planned (no write in between
        can make another municipality's user this caller's).

        The caller has checked everything else first (the body, its municipality). The id
        is checked last, and a user who is another municipality's gets the answer that any
        taken id gets, a deleted user's too (`id_taken`): so a write tells no
        municipality which ids another has. To delete, another's user is not found, as an
        unknown one is (store.NotFound)."""
        def plan(now: datetime) -> Plan:
            user = self.view.users.get(user_id)
            if user is not None and not acts_for(user.municipality):
                if data is None:
                    raise WorkflowError(NOT_FOUND, f"no user {user_id!r}")
                raise _id_taken("user")
            expected = self.view.fact_version("user", user_id)
            return self._facts_plan([Change("user", user_id, data, expected)], actor, now)

        return self._commit(plan)

    def _facts_plan(self, changes: Sequence[Change], actor: str, now: datetime) -> Plan:
        index = self.view
        for change in changes:
            if change.kind == "grant":
                self._refuse_grant_write(change, now)
            elif change.kind == "agreement":
                self._check_agreement_write(change, now)
            if (change.kind == "user" and change.data is not None
                    and change.id not in index.users and index.grants_by_user.get(change.id)):
                # rights that name a user who is not there (any more): a new user under
                # that id would take them over (the store refuses a deleted user's id)
                raise _id_taken("user")
        result = Plan(list(changes))
        written = {(c.kind, c.id) for c in changes}
        for change in changes:
            follow = self.follow_write(change.kind, change.id, change.data, actor, now)
            result.changes += [c for c in follow.changes if (c.kind, c.id) not in written]
            result.events += follow.events
        return result

    def follow_write(self, kind: str, fact_id: str, data: dict[str, Any] | None,
                     actor: str, now: datetime) -> Plan:
        """The events and the changes to rights that a facts-API write carries with it:
        a user who left loses every right, a user whose tasks changed has the rights that
        no longer fit suspended, an agreement that ends ends its rights."""
        result = Plan()
        index = self.view
        if kind == "user":
            municipality = (data or {}).get("municipality") or _municipality_of_user(
                index.users.get(fact_id))
            result.events.append(Event("user.written" if data else "user.deleted", "user",
                                       fact_id, municipality, actor, None, {"user": data}))
            self._follow_user(result, fact_id, parse_fact("user", data) if data else None,
                              actor, now)
        elif kind == "agreement":
            result.events.append(Event("agreement.written" if data else "agreement.deleted",
                                       "agreement", fact_id, fact_id, actor, None,
                                       {"agreement": data}))
            if data is not None:
                agreement = parse_fact("agreement", data)
                assert isinstance(agreement, Agreement)
                self._follow_agreement(result, fact_id, agreement, actor, now)
            elif (deleted := index.agreements.get(fact_id)) is not None:
                # No agreement: its rights end now, as if it were terminated (else a new
                # agreement written in force would wake them up again).
                ended = deleted.model_copy(update={"status": "terminated", "ends_at": now})
                self._follow_agreement(result, fact_id, ended, actor, now)
        return result

    # carries: C-5, C-11
    def _refuse_grant_write(self, change: Change, now: datetime) -> None:
        """No right is created, changed or deleted by a facts write (API.md "Rights"):
        refused `use_workflow` naming the step that would do what the write tries.
        Deleting a right that does not exist is left to the store (store.NotFound)."""
        current = self.view.grants.get(change.id)
        if current is None and change.data is None:
            return
        wanted = parse_fact("grant", change.data) if change.data is not None else None
        assert wanted is None or isinstance(wanted, Grant)
        step, field_name = _grant_write_step(
            current, wanted, self.state(change.id, current, now) if current else "")
        raise _use_workflow("a right", step, _step_endpoint(step, change.id), field_name)

    # carries: C-22, C-23
    def _check_agreement_write(self, change: Change, now: datetime) -> None:
        """An agreement is created in force, and a write may change its other fields; its
        status and end change only by notice and rescission (`use_workflow`), and it
        is never deleted: a delete would end its rights without the rescind step, and an
        agreement written in force after it would wipe a notice (`use_workflow` naming
        rescind). Deleting one that does not exist is left to the store (store.NotFound)."""
        current = self.view.agreements.get(change.id)
        code = change.id
        if change.data is None:
            if current is None:
                return
            raise _use_workflow("an agreement", "rescind",
                                f"POST /v1/agreements/{code}/rescind (to end it at once; "
                                f"notice: POST /v1/agreements/{code}/notice)")
        wanted = parse_fact("agreement", change.data)
        assert isinstance(wanted, Agreement)
        if current is None:
            if wanted.status == "in_force" and wanted.ends_at is None:
                return
        elif (wanted.status, wanted.ends_at) == (current.status, current.ends_at):
            return
        if wanted.status in ("rescinded", "terminated"):
            step = "rescind"
        elif wanted.status == "notice_given" or wanted.ends_at is not None:
            step = "notice"
        else:  # back in force: no step reopens an agreement
            raise WorkflowError(
                USE_WORKFLOW, "an agreement's status and end change only through "
                f"POST /v1/agreements/{code}/notice and /rescind, and no step undoes "
                "them: an agreement is not put back in force, nor deleted",
                [{"field": "status", "step": "none",
                  "message": "notice and rescission are not undone"}])
        raise _use_workflow("an agreement's status or end", step,
                            f"POST /v1/agreements/{code}/{step}",
                            field="status" if wanted.status != (
                                current.status if current else "in_force") else "ends_at")

    # carries: C-16
    def _follow_user(self, result: Plan, user_id: str, user: Any, actor: str,
                     now: datetime) -> None:
        """Rights that a change of the user ends or suspends (the policy's change_effect)."""
        assert user is None or isinstance(user, User)
        before = self.view.users.get(user_id)
        change = policy_input(USER_CHANGE, {
            "kind": "user",
            "before_known": before is not None,
            "before_municipality": before.municipality if before else "",
            "before_tasks": list(before.tasks) if before else [],
            "after_known": user is not None,
            "after_status": user.status if user else "",
            "after_municipality": user.municipality if user else "",
            "after_tasks": list(user.tasks) if user else [],
        })
        for grant_id, grant in self._live_grants(user_id, now):
            self._apply_effect(result, change, grant_id, grant, actor, now)

    # -- listings ----------------------------------------------------------------------

    def listing(self, *, municipality: str | None = None, state: str | None = None,
                user: str | None = None, due_within: timedelta | None = None,
                now: datetime | None = None) -> list[dict[str, Any]]:
        """Rights with their state now; `due_within`: those that expire or fall due for
        re-certification within that time (and are not over yet)."""
        now = now or self.clock()
        index = self.view
        rows = []
        with self.facts.index.reading() as view:
            grants = list(view.grants.items())
        for grant_id, grant in sorted(grants):
            owner = index.users.get(grant.user)
            code = owner.municipality if owner else ""
            if municipality is not None and code != municipality:
                continue
            if user is not None and grant.user != user:
                continue
            current = self.state(grant_id, grant, now)
            if state is not None and current != state:
                continue
            due = _due(grant, current)
            if due_within is not None and (due is None or due > now + due_within):
                continue
            rows.append({"id": grant_id, **dump_fact(grant), "state": current,
                         "municipality": code, "due": due.isoformat() if due else None})
        return rows

    # -- plumbing ----------------------------------------------------------------------

    def _commit(self, plan: Callable[[datetime], Plan],
                taken: Callable[[IdTaken], WorkflowError] | None = None) -> int:
        """Plan and write; on a conflicting concurrent write, plan again from the new facts.
        `taken`: the answer when the store refuses an id as taken (default: _id_taken)."""
        for _attempt in range(3):
            self.facts.catch_up()
            planned = plan(self.clock())
            try:
                return self.facts.write(planned.changes, planned.events)
            except Conflict:
                continue
            except IdTaken as error:
                raise (taken(error) if taken else _id_taken(error.kind)) from None
        raise WorkflowError(CONFLICT, "the right changed meanwhile; try again")

    def _grant(self, grant_id: str) -> Grant:
        grant = self.view.grants.get(grant_id)
        if grant is None:
            raise WorkflowError(NOT_FOUND, f"no grant {grant_id!r}")
        return grant

    def _agreement(self, code: str) -> Agreement:
        agreement = self.view.agreements.get(code)
        if agreement is None:
            raise WorkflowError(NOT_FOUND, f"no agreement {code!r}")
        return agreement

    def _live_grants(self, user_id: str, now: datetime) -> list[tuple[str, Grant]]:
        grants = self.view.grants_by_user.get(user_id, {})
        return [(g_id, g) for g_id, g in sorted(grants.items())
                if self.state(g_id, g, now) not in TERMINAL_STATES]

    def _live_grants_of_municipality(self, code: str, now: datetime) -> list[tuple[str, Grant]]:
        index = self.view
        users = sorted(u_id for u_id, u in index.users.items() if u.municipality == code)
        return [pair for u_id in users for pair in self._live_grants(u_id, now)]

    def _put_grant(self, result: Plan, grant_id: str, grant: Grant, event: str, actor: str,
                   why: str | None, *, previous: str | None,
                   expected: int | None = None,
                   approval: dict[str, Any] | None = None) -> None:
        if expected is None:
            expected = self.view.fact_version("grant", grant_id)
        data = dump_fact(grant)
        result.changes.append(Change("grant", grant_id, data, expected))
        municipality = _municipality_of_user(self.view.users.get(grant.user))
        recorded: dict[str, Any] = {"grant": data, "from": previous}
        if approval is not None:
            recorded["approval"] = approval
        result.events.append(Event(event, "grant", grant_id, municipality, actor, why,
                                   recorded))


def _municipality_of_user(user: User | None) -> str:
    return user.municipality if user else ""


def _due(grant: Grant, state: str) -> datetime | None:
    """When the right next needs someone: its end, or its re-certification."""
    if state in TERMINAL_STATES:
        return None
    moments = [grant.valid_until]
    if grant.recertify_by is not None:
        moments.append(grant.recertify_by)
    return min(moments)


def _past(step: str) -> str:
    return {"approve": "approved", "activate": "activated", "suspend": "suspended",
            "restore": "restored", "revoke": "revoked", "recertify": "recertified",
            "apply": "applied"}.get(step, step)


def _id_taken(kind: str = "grant") -> WorkflowError:
    """The one answer for an id that cannot be used, whoever had it and whether it still
    exists: it names neither."""
    if kind == "user":
        return WorkflowError(ID_TAKEN, "this id cannot be used: the ids of users are "
                             "never reused; give another",
                             [{"field": "id", "message": "taken"}])
    return WorkflowError(ID_TAKEN, "this id cannot be used: the ids of rights are "
                         "never reused; give another, or none to have one made",
                         [{"field": "id", "message": "taken"}])




def _grant_write_step(current: Grant | None, wanted: Grant | None,
                      state: str) -> tuple[str, str]:
    """The step that would do what a facts write of a right tries to do, and the field
    that names what it tries."""
    if current is None:
        return "apply", "id"
    if wanted is None:
        return "revoke", "id"
    if wanted.status != current.status:
        if wanted.status == "active":
            return {"approved": "activate", "suspended": "restore",
                    "recertification_due": "recertify"}.get(state, "apply"), "status"
        return {"applied": "apply", "approved": "approve", "suspended": "suspend"}.get(
            wanted.status, "revoke"), "status"
    if wanted.recertify_by != current.recertify_by:
        return "recertify", "recertify_by"
    # other purposes, scopes, actions or period: a new application
    changed = [name for name in ("user", "purposes", "scopes", "actions", "valid_from",
                                 "valid_until", "legal_basis", "justification")
               if getattr(wanted, name) != getattr(current, name)]
    return "apply", changed[0] if changed else "id"


def _step_endpoint(step: str, grant_id: str) -> str:
    if step == "apply":
        return ("POST /v1/grant-applications (a right granted before the service: "
                "POST /v1/grants:import)")
    return f"POST /v1/grants/{grant_id}/{step}"


def _use_workflow(what: str, step: str, endpoint: str, field: str = "id") -> WorkflowError:
    return WorkflowError(USE_WORKFLOW,
                         f"{what} is not written through the facts API: use the step "
                         f"{step!r}, {endpoint}",
                         [{"field": field, "step": step, "endpoint": endpoint,
                           "message": f"use the step {step!r}"}])


def _register_id_taken(n: int | None) -> WorkflowError:
    where = "grants" if n is None else f"grants[{n}].id"
    return WorkflowError(ID_TAKEN, f"{where}: this id cannot be used: the ids of rights "
                         "are never reused; nothing was imported",
                         [{"field": where, "message": "taken"}])


def _invalid(field_name: str, message: str) -> WorkflowError:
    return WorkflowError(INVALID_REQUEST, f"{field_name}: {message}",
                         [{"field": field_name, "message": message}])


def _not_narrower(field_name: str, message: str) -> WorkflowError:
    return WorkflowError(INVALID_REQUEST, f"{field_name}: {message}",
                         [{"field": field_name, "message": message}])


def _refusal_message(rule: str, detail: str, lifecycle: Lifecycle) -> str:
    texts = {
        "user_unknown": "the user does not exist",
        "user_inactive": f"the user is not active ({detail})",
        "agreement_not_in_force": "the municipality's agreement is not in force"
                                  + (f" ({detail})" if detail else ""),
        "period_ended": "the period has already ended",
        "period_too_long": f"a right may last at most {lifecycle.max_grant_months} months",
        "period_past_agreement": "the right would outlast the municipality's agreement",
        "scope_never_needed": f"{detail} is never needed for complementary services",
        "scope_outside_purposes": f"{detail} is not needed by any of the right's purposes",
        "purpose_outside_tasks": f"{detail} is not among the user's tasks",
    }
    return f"{rule}: {texts.get(rule, detail)}"


# carries: C-5, C-11
def refuse_grant_write(lifecycle: Lifecycle, grant_id: str, data: Any) -> WorkflowError:
    """The answer to a facts write (not a delete) of a right, given before its body is
    validated (API.md "Rights": any facts write of a right is refused `use_workflow`): the
    step is named from the body when it is a right, else from the status it names, else
    a new application."""
    current = lifecycle.view.grants.get(grant_id)
    if current is None:
        return _use_workflow("a right", "apply", _step_endpoint("apply", grant_id))
    wanted = current
    try:
        parsed = parse_fact("grant", data)
        assert isinstance(parsed, Grant)
        wanted = parsed
    except ValidationError:
        status = data.get("status") if isinstance(data, dict) else None
        if status in get_args(GrantStatus):
            wanted = current.model_copy(update={"status": status})
    step, field_name = _grant_write_step(
        current, wanted, lifecycle.state(grant_id, current, lifecycle.clock()))
    return _use_workflow("a right", step, _step_endpoint(step, grant_id), field_name)


def refuse_grant_items(lifecycle: Lifecycle, raw: list[Any]) -> None:
    """A facts batch (or `pdp facts import`) with an item of kind grant is refused
    `use_workflow` for the first, before any item is validated; nothing is stored."""
    for item in raw:
        if isinstance(item, dict) and item.get("kind") == "grant":
            raise refuse_grant_write(lifecycle, str(item.get("id")), item.get("data"))

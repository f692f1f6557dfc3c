# The life of a right (DOMAIN.md "Lifecycle of a right"; agreement §§ 4-5, 9-10).
#
# applied -> approved (the employment authority) -> active (KEHA opened it) -> expired at
# valid_until, or suspended (can be restored), or revoked. An active right not
# re-certified by its `recertify_by` stops counting until it is re-certified.

# The state a right is in at `now`: its recorded status, unless time has moved it on.
# (`recertify_by` is the largest integer for a right with no re-certification date.)
# Ask with the state unbound and compare after: the first matching rule decides (cut).
grant_state(grant, now, "expired") if
    not grant.status in ["revoked", "expired"] and
    grant.valid_until <= now and cut;
grant_state(grant, now, "recertification_due") if
    grant.status = "active" and
    grant.recertify_by <= now and cut;
grant_state(grant, _now, grant.status);

# The steps of the workflow: transition(state, step, next state).
transition("applied", "approve", "approved");
transition("approved", "activate", "active");
transition("active", "suspend", "suspended");
transition("recertification_due", "suspend", "suspended");
transition("suspended", "restore", "active");
transition("active", "recertify", "active");
transition("recertification_due", "recertify", "active");
transition(state, "revoke", "revoked") if
    state in ["applied", "approved", "active", "recertification_due", "suspended"];

# Steps after which the right must (still) lie within the limits below.
checked_step("apply");
checked_step("approve");
checked_step("activate");
checked_step("restore");

# Limits on a right (at application, approval, opening and restoring), in order:
# grant_refusal(a, rule, detail) gives the first limit the right breaks.
#
# The input `a` is a flat record (pdp/rights/lifecycle.py): now, user_known, user_status,
# user_tasks, agreement_status, agreement_ends_at, purposes (the services the right is
# for), scopes, actions, valid_from, valid_until, max_valid_until (valid_from plus the
# longest period allowed).
grant_refusal(a, rule, detail) if refused(a, rule, detail) and cut;

refused(a, "user_unknown", "") if not a.user_known;
refused(a, "user_inactive", a.user_status) if a.user_status != "active";
refused(a, "agreement_not_in_force", a.agreement_status) if not agreement_in_force(a);
refused(a, "period_ended", "") if a.valid_until <= a.now;
refused(a, "period_too_long", "") if a.max_valid_until < a.valid_until;
refused(a, "period_past_agreement", "") if a.agreement_ends_at < a.valid_until;
# A right is for services that are the user's tasks (DOMAIN.md rule 7).
# carries: C-7, C-15
refused(a, "purpose_outside_tasks", purpose) if
    purpose in a.purposes and
    not purpose in a.user_tasks;
refused(a, "scope_never_needed", scope) if scope in a.scopes and never_needed(scope);
# A scope must fit the right's own purposes: some purpose of the right needs it (the task
# profiles in data.polar), not merely some task of the user.
refused(a, "scope_outside_purposes", scope) if
    scope in a.scopes and
    not scope_fits_tasks(scope, a.purposes);

# A scope fits when some task (or purpose) in the list needs it (the task profiles in
# data.polar).
scope_fits_tasks(scope, tasks) if task in tasks and task_profile(task, scope);

# A right fits the user's tasks when every one of its scopes does (used when tasks change).
grant_fits_tasks(scopes, tasks) if forall(scope in scopes, scope_fits_tasks(scope, tasks));

# A right's purposes are covered when every one of them is among the tasks.
purposes_within_tasks(purposes, tasks) if forall(purpose in purposes, purpose in tasks);

# What a change of a user or of an agreement does to each live right (not revoked or
# expired) of that user or municipality: change_effect(change, right, effect, reason)
# gives the first that applies, or none. Effects: "revoke", "suspend", "end_at_agreement"
# (the right's end is brought forward to the agreement's end).
#
# The user change `c`: kind "user", before_known, before_municipality, before_tasks,
# after_known, after_status, after_municipality, after_tasks. The agreement change `c`:
# kind "agreement", status, ends_at (the largest integer when open-ended).
# The right: state (grant_state now), purposes, scopes, valid_until.
change_effect(c, right, effect, reason) if change_rule(c, right, effect, reason) and cut;

# A user who was deleted, left, or moved to another municipality's employ loses every right.
change_rule(c, _right, "revoke", "employment_ended") if c.kind = "user" and not c.after_known;
change_rule(c, _right, "revoke", "employment_ended") if
    c.kind = "user" and c.after_status = "left";
change_rule(c, _right, "revoke", "employment_ended") if
    c.kind = "user" and c.before_known and c.before_municipality != c.after_municipality;
# A change of tasks: a right that no longer fits them — a scope no task needs, or a
# purpose that is no longer a task — is suspended for re-approval. (Tasks that widen
# give no right a new purpose: the decision rules read the right's own purposes.)
# carries: C-16
change_rule(c, right, "suspend", "tasks_changed") if
    c.kind = "user" and c.before_known and
    not tasks_equal(c.before_tasks, c.after_tasks) and
    right.state in ["active", "recertification_due"] and
    not grant_fits_tasks(right.scopes, c.after_tasks);
# carries: C-16
change_rule(c, right, "suspend", "tasks_changed") if
    c.kind = "user" and c.before_known and
    not tasks_equal(c.before_tasks, c.after_tasks) and
    right.state in ["active", "recertification_due"] and
    not purposes_within_tasks(right.purposes, c.after_tasks);

# An agreement that no longer holds ends every right at once; one with an end (notice)
# ends them at its end.
change_rule(c, _right, "revoke", "agreement_ended") if
    c.kind = "agreement" and c.status in ["terminated", "rescinded"];
change_rule(c, right, "end_at_agreement", "agreement_ended") if
    c.kind = "agreement" and c.ends_at < right.valid_until;

tasks_equal(a, b) if forall(x in a, x in b) and forall(y in b, y in a);

# The rules of DOMAIN.md ("The rules"), in their order.
#
# A user may perform an action on one category of one client's record only if all rules
# hold; the reason given is the first failing rule's, or "allowed" when none fails.
#
# The service asks one question per user x client x purpose and gets the answer for every
# category and action at once (the categories and actions come from data.polar):
#
#     decision(r, category, action, reason, grant)
#
# `grant` is the id of the grant an allow used ("" for a deny). Rules 1-8 concern the user, the
# client and the purpose; rules 9-11 each category and action. When one of rules 1-8
# fails, the answer is one solution with `category` and `action` left unbound: that
# reason holds for every category and action (twenty solutions would cost twenty times
# the work in the Polar VM, which is slow per step: keep the rules lean).
#
# Written in this form, `decision` is asked in two stages (pdp/engine/policy_vet.py
# `stage_plan`): `failing` about a record of only the fields rules 1-8 read, and, when
# none fails, `category_outcome` about a record of only the fields rules 9-11 read; each
# answer is kept by the shape of its smaller record, so rules 9-11 are asked once per
# user's rights and purpose rather than once per client. The reload gate checks on
# random records that the stages answer exactly as `decision` asked whole does. Change
# the two clauses of `decision` and it is asked whole, as before.
#
# The input `r` is a flat record made by pdp/engine/policy_input.py from the facts:
#   now                        decision time, integer microseconds since the epoch
#   user_known, user_id, user_status, user_municipality, user_tasks, user_client_id
#   agreement_status, agreement_ends_at, agreement_assignment_required
#                              the agreement of the user's municipality
#   area_municipalities        codes of the municipalities of that agreement's area
#   grants                     the user's grants: id, status, valid_from, valid_until,
#                              recertify_by, purposes, scopes, actions
#   client_known, client_id, client_home, client_protection_order, client_area_client
#   relationships              the client's relationships: municipality, service,
#                              starts_at, ends_at, assigned_users
#   purpose                    the purpose the request states ("" when it states none)
#   record_owner               who produced the record, as the request names it: a
#                              municipality code, "authority", or "" when it names none
#
# Absent values are never nil: a missing end is the largest integer (open-ended), a
# missing string is "" and a missing list is []. Comparisons stay in the policy VM.
#
# Invariants the decision cache relies on (pdp/engine/decider.py, pdp/engine/policy_input.py):
# - `r.now` is only ever compared (<, <=) with timestamps from the input, so a decision
#   holds until the next of them after now;
# - timestamps are only compared with `r.now`, never with each other, computed with or
#   compared with constants; ids (user_id, client_id, user_client_id, grant ids,
#   assigned users) and municipality codes (user_municipality, client_home,
#   area_municipalities, a relationship's municipality, record_owner) only tested for
#   equality or membership, never with a constant other than "" (so record_owner is
#   never compared with "authority": an owner counts only by being the user's
#   municipality); the order of area_municipalities and of relationships never matters;
# - only the relationships with the user's municipality for the purpose asked are read,
#   and of their assigned users only whether there are any and whether the user is one.
# So two records alike up to renaming ids and codes, reordering those lists, other
# relationships and other assigned users, and moving timestamps without moving any
# across now get one answer, and the service asks the policy once per such shape.
# A policy that breaks these is refused when it loads (pdp/engine/policy_vet.py, by the
# kinds of pdp/model/policy_schema.py), and the reload gate checks them on random records
# (pdp/engine/shape_check.py; tests/test_shapes.py too); a rule that needs more (a
# duration, a constant id, another relationship) must change record_shape first.

decision(r, _category, _action, reason, "") if
    failing(r, reason) and cut;
decision(r, category, action, reason, grant) if
    category_outcome(r, category, action, reason, grant);

# Rules 9-11, for every category and action (when none of rules 1-8 fails).
category_outcome(r, category, action, reason, grant) if
    category(category) and
    category_decision(r, category, action, reason, grant);

# ---------------------------------------------------------------------------------------
# 1. Known, active user. Accounts are personal.
# carries: C-10
failing(r, "unknown_subject") if not r.user_known;
failing(r, "user_inactive") if r.user_status != "active";

# 2. Agreement in force: `in_force`, or `notice_given` until its end; never
#    `terminated` or `rescinded`.
# carries: C-22, C-23
failing(r, "agreement_not_in_force") if not agreement_in_force(r);

agreement_in_force(r) if
    agreement_status_in_force(r.agreement_status) and
    r.now < r.agreement_ends_at;

# 3. Active personal grant: approved by the authority, opened by KEHA (status active),
#    now inside its window [valid_from, valid_until), and re-certified in time
#    (grant_state in lifecycle.polar).
# carries: C-5, C-10, C-11, C-14
failing(r, "no_active_grant") if not active_grant(r, _);

active_grant(r, grant) if
    grant in r.grants and
    grant_active_now(r, grant);

# (Of a grant taken from r.grants.)
grant_active_now(r, grant) if
    grant.valid_from <= r.now and
    grant_state(grant, r.now, state) and state = "active";

# The record asked for must exist.
failing(r, "unknown_resource") if not r.client_known;

# 4. Client of the area: the client's home municipality belongs to the user's area, and
#    the client is now the employment authority's job-seeker client: a common client of
#    the area and the municipality (agreement §§ 2, 4; the authority's system keeps it).
# carries: C-2, C-6, C-9
failing(r, "client_outside_area") if not client_of_area(r);

client_of_area(r) if
    r.client_home in r.area_municipalities and
    r.client_area_client;

# 5. Own municipality: the municipality serves its own residents.
# carries: C-2
failing(r, "client_not_own_municipality") if r.client_home != r.user_municipality;

# 6. Not one's own record.
failing(r, "own_record") if r.user_client_id = r.client_id;

# 7. Purpose: one of the complementary services, among the user's tasks, and among the
#    purposes of an active grant of the user (a right is for the services it was
#    approved for: tasks that grew since give it no new purpose).
# carries: C-3, C-7
failing(r, "purpose_invalid") if not valid_purpose(r);

valid_purpose(r) if
    complementary_service(r.purpose) and
    r.purpose in r.user_tasks and
    purpose_grant(r, _);

# An active grant of the user approved for the purpose asked.
purpose_grant(r, grant) if
    grant in r.grants and
    r.purpose in grant.purposes and
    grant_active_now(r, grant);

# 8. Active client relationship with the user's municipality for that very service;
#    if it names assigned users, the user is one of them. An agreement may require
#    assignment: then a relationship that names nobody lets nobody in.
# carries: C-8
failing(r, "no_active_relationship") if not active_relationship(r);

active_relationship(r) if
    relationship in r.relationships and
    relationship.municipality = r.user_municipality and
    relationship.service = r.purpose and
    relationship.starts_at <= r.now and
    r.now < relationship.ends_at and
    assigned_to(r, relationship);

# A relationship naming nobody is the municipality's team's, unless the agreement of the
# user's municipality requires assignment.
assigned_to(r, relationship) if
    relationship.assigned_users = [] and
    not r.agreement_assignment_required;
assigned_to(r, relationship) if r.user_id in relationship.assigned_users;

# ---------------------------------------------------------------------------------------
# 9. Necessary data only: the category is in the task profile of the purpose and in the
#    scopes of an active grant that covers the purpose; never-needed categories never;
#    special categories (health) only where the grant names them — a grant's scopes are
#    always named one by one.
#    (The first grant that makes a category necessary is found once per category.)
# carries: C-7, C-12
category_decision(r, category, action, reason, grant) if
    necessary(r, category, necessary_grant) and cut and
    action(action) and
    permitted(r, category, necessary_grant, action, reason, grant);
category_decision(_r, _category, action, "category_not_necessary", "") if
    action(action);

necessary(r, category, grant) if
    task_profile(r.purpose, category) and
    not never_needed(category) and
    grant in r.grants and
    r.purpose in grant.purposes and
    category in grant.scopes and
    grant_active_now(r, grant);

# 10. Protection order (turvakielto): contact data is not shown.
permitted(r, category, _necessary_grant, _action, "protection_order", "") if
    protected(r, category) and cut;

protected(r, category) if
    r.client_protection_order and
    protected_by_order(category);

# 11. Powers: the action is among the grant's actions; writing only the user's own
#     service records: a writable category, in a record that the user's own
#     municipality produced (the request names its owner; a write that names none, the
#     authority or another organisation is denied). Reads do not look at the owner.
#     (Any grant that makes the category necessary may give the power.)
# carries: C-11
permitted(r, category, _necessary_grant, action, "action_not_permitted", "") if
    not permitted_on(r, action, category) and cut;
# coverage-exempt: a fast path, the next clause gives the same answer without it
permitted(_r, _category, necessary_grant, action, "allowed", necessary_grant.id) if
    action in necessary_grant.actions and cut;
permitted(r, category, _necessary_grant, action, "allowed", grant.id) if
    empowered(r, category, action, grant) and cut;
permitted(_r, _category, _necessary_grant, _action, "action_not_permitted", "");

empowered(r, category, action, grant) if
    permitted_on(r, action, category) and
    necessary(r, category, grant) and
    action in grant.actions;

permitted_on(_r, "read", _category);
permitted_on(r, "write", category) if
    writable(category) and
    own_municipality_record(r);

# The record the request names was produced by the user's own municipality.
own_municipality_record(r) if
    r.record_owner != "" and
    r.record_owner = r.user_municipality;

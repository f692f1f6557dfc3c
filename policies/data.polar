# Policy data: what each kind of work may need, and which categories are special.
# Policy authors edit this file; the rules in rules.polar read it.
# Category codes: DOMAIN.md "Data categories" (Act 380/2023 § 114(1)).

# The vocabulary the rules range over: the categories of § 114(1) and the actions.
category("identity_code");
category("name_contact");
category("client_relationship");
category("education_work_history");
category("service_needs_plans");
category("offers_referrals");
category("services_assessments");
category("health_work_capacity");
category("unemployment_security_statements");
category("benefits");

action("read");
action("write");

# Agreement states in which the agreement is in force (rule 2), until its end.
agreement_status_in_force("in_force");
agreement_status_in_force("notice_given");

# The complementary employment services a municipality offers (rule 7).
complementary_service("coaching");
complementary_service("guidance");
complementary_service("training");

# Task profiles (rule 9): the categories a purpose may need.
task_profile("coaching", "name_contact");
task_profile("coaching", "client_relationship");
task_profile("coaching", "education_work_history");
task_profile("coaching", "service_needs_plans");
task_profile("coaching", "offers_referrals");
task_profile("coaching", "services_assessments");
task_profile("coaching", "health_work_capacity");

task_profile("guidance", "name_contact");
task_profile("guidance", "client_relationship");
task_profile("guidance", "education_work_history");
task_profile("guidance", "service_needs_plans");
task_profile("guidance", "services_assessments");

task_profile("training", "name_contact");
task_profile("training", "education_work_history");
task_profile("training", "services_assessments");

# Statutory-authority data, never needed for complementary services (rule 9).
# coverage-exempt: defence in depth, no task profile names these categories (tests/test_decider.py edits a profile to check it)
never_needed("identity_code");
never_needed("unemployment_security_statements");
never_needed("benefits");

# Special-category data (GDPR Art. 9, health_work_capacity) is in coaching's profile, and
# like every category it needs the grant to name it in its scopes (rule 9).

# Categories hidden for a client with a protection order, turvakielto (rule 10).
protected_by_order("name_contact");

# The user's own service records: the only categories that may be written (rule 11).
writable("service_needs_plans");
writable("services_assessments");

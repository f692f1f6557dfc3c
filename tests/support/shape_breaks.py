"""Policy rules that break the decision cache's shape invariants, each with the words its
refusal must say: shared by tests/test_shape_check.py (the unit cases) and
tests/test_policy_reload.py (the reload gate over HTTP)."""

from __future__ import annotations

OWN_RECORD = 'failing(r, "own_record") if r.user_client_id = r.client_id;'

# (what, text in rules.polar, its replacement, words the refusal must say): rules that
# break an invariant in a way the text shows.
BROKEN: list[tuple[str, str, str, str]] = [
    ("a constant id", OWN_RECORD,
     'failing(r, "own_record") if r.client_id = "c-123";',
     'the id `.client_id` compared with the constant "c-123"'),
    ("timestamp arithmetic", "grant.valid_from <= r.now and",
     "grant.valid_from + 86400000000 <= r.now and",
     "the timestamp `.valid_from` in arithmetic (`+`)"),
    ("a timestamp compared with another", "relationship.starts_at <= r.now and",
     "relationship.starts_at <= relationship.ends_at and",
     "the timestamp `.starts_at` compared with `.ends_at`"),
    ("a constant municipality code", "r.client_home in r.area_municipalities and",
     'r.client_home = "091" and',
     'the municipality code `.client_home` compared with the constant "091"'),
]

"""The ids of users are never reused either: every user id the store has seen is taken.

A new user under a deleted user's id took over the deleted user's rights (a right's
municipality is its user's), so another municipality saw them. taken_ids (0006) has a
kind column; this fills in kind 'user' from the change log (deleted users too), the facts
and the events, as 0006 did for grants.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(sa.text(
        "INSERT INTO taken_ids (kind, id, first_version) "
        "SELECT 'user', c.id, MIN(c.version) FROM fact_changes c WHERE c.kind = 'user' "
        "AND NOT EXISTS (SELECT 1 FROM taken_ids t WHERE t.kind = 'user' AND t.id = c.id) "
        "GROUP BY c.id"))
    op.execute(sa.text(
        "INSERT INTO taken_ids (kind, id, first_version) "
        "SELECT 'user', f.id, f.version FROM facts f WHERE f.kind = 'user' AND NOT EXISTS "
        "(SELECT 1 FROM taken_ids t WHERE t.kind = 'user' AND t.id = f.id)"))
    op.execute(sa.text(
        "INSERT INTO taken_ids (kind, id, first_version) "
        "SELECT 'user', e.subject_id, MIN(e.facts_version) FROM events e "
        "WHERE e.subject_kind = 'user' AND NOT EXISTS "
        "(SELECT 1 FROM taken_ids t WHERE t.kind = 'user' AND t.id = e.subject_id) "
        "GROUP BY e.subject_id"))


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM taken_ids WHERE kind = 'user'"))

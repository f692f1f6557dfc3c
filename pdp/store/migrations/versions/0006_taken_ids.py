"""Ids of rights are never reused: every id a grant ever had stays taken.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "taken_ids",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("first_version", sa.BigInteger(), nullable=False),
    )
    # Every grant id the store has seen: in the change log (deleted ones too), among the
    # facts, and as the subject of an event (history).
    op.execute(sa.text(
        "INSERT INTO taken_ids (kind, id, first_version) "
        "SELECT 'grant', id, MIN(version) FROM fact_changes WHERE kind = 'grant' GROUP BY id"))
    op.execute(sa.text(
        "INSERT INTO taken_ids (kind, id, first_version) "
        "SELECT 'grant', f.id, f.version FROM facts f WHERE f.kind = 'grant' AND NOT EXISTS "
        "(SELECT 1 FROM taken_ids t WHERE t.kind = 'grant' AND t.id = f.id)"))
    op.execute(sa.text(
        "INSERT INTO taken_ids (kind, id, first_version) "
        "SELECT 'grant', e.subject_id, MIN(e.facts_version) FROM events e "
        "WHERE e.subject_kind = 'grant' AND NOT EXISTS "
        "(SELECT 1 FROM taken_ids t WHERE t.kind = 'grant' AND t.id = e.subject_id) "
        "GROUP BY e.subject_id"))


def downgrade() -> None:
    op.drop_table("taken_ids")

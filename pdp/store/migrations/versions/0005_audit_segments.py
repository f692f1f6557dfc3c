"""The decision log's write buffer: one durable, hash-chained segment per group commit.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_segments",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    # audit_head row 1 is the head of the record chain; row 2 the last segment written,
    # row 3 the last segment moved into audit_records.
    for row in (2, 3):
        op.execute(sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (:i, 0, :h)")
                   .bindparams(i=row, h="0" * 64))


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM audit_head WHERE id IN (2, 3)"))
    op.drop_table("audit_segments")

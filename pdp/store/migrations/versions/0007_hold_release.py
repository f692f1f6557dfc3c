"""Who released a legal hold, and why.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_holds") as batch:
        batch.add_column(sa.Column("released_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("release_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_holds") as batch:
        batch.drop_column("release_reason")
        batch.drop_column("released_by")

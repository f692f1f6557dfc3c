"""Supervision that survives: cases opened by hand, comments on cases, and the anomaly
rules' windows and progress in the store (shared by every replica, kept over restarts).

monitoring_cases gains the fields of a case opened by hand (client, what was observed,
the justification, who opened it) and `announced_us`: when its `case.opened` event was
written (the detector opens a case and announces it in two steps; an unannounced case
is announced by whichever replica looks next). Cases opened before were announced then.

monitoring_windows holds each rule's window per user; the cursor `monitor` (in cursors)
is the last record of the decision log the detector has counted. It starts at the
record chain's head: what was moved before was seen by the detector of the time.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("monitoring_cases") as batch:
        batch.add_column(sa.Column("client_id", sa.String(128), nullable=True))
        batch.add_column(sa.Column("observed", sa.Text(), nullable=True))
        batch.add_column(sa.Column("justification", sa.Text(), nullable=True))
        batch.add_column(sa.Column("opened_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("announced_us", sa.BigInteger(), nullable=True))
    op.execute(sa.text("UPDATE monitoring_cases SET announced_us = opened_us"))
    op.create_table(
        "monitoring_case_comments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
    )
    op.create_index("monitoring_case_comments_case", "monitoring_case_comments",
                    ["case_id", "at_us"])
    op.create_table(
        "monitoring_windows",
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("entries", sa.Text(), nullable=False),
        sa.Column("expires_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("rule", "user_id", name="pk_monitoring_windows"),
    )
    op.create_index("monitoring_windows_expiry", "monitoring_windows", ["expires_us"])
    op.execute(sa.text(
        "INSERT INTO cursors (name, value) SELECT 'monitor', "
        "COALESCE((SELECT seq FROM audit_head WHERE id = 1), 0) "
        "WHERE NOT EXISTS (SELECT 1 FROM cursors WHERE name = 'monitor')"))


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM cursors WHERE name = 'monitor'"))
    op.drop_index("monitoring_windows_expiry", table_name="monitoring_windows")
    op.drop_table("monitoring_windows")
    op.drop_index("monitoring_case_comments_case", table_name="monitoring_case_comments")
    op.drop_table("monitoring_case_comments")
    with op.batch_alter_table("monitoring_cases") as batch:
        batch.drop_column("announced_us")
        batch.drop_column("opened_by")
        batch.drop_column("justification")
        batch.drop_column("observed")
        batch.drop_column("client_id")

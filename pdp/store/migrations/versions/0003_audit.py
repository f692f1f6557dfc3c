"""The decision log: hash-chained records, its head, prunes and legal holds.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("record_type", sa.String(16), nullable=False),
        sa.Column("record_id", sa.String(64), nullable=False),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=True),
        sa.Column("user_municipality", sa.String(3), nullable=True),
        sa.Column("grant_id", sa.String(128), nullable=True),
        sa.Column("client_id", sa.String(128), nullable=True),
        sa.Column("client_municipality", sa.String(3), nullable=True),
        sa.Column("category", sa.String(64), nullable=True),
        sa.Column("action", sa.String(16), nullable=True),
        sa.Column("purpose", sa.String(128), nullable=True),
        sa.Column("decision", sa.Boolean(), nullable=True),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("policy_version", sa.String(64), nullable=True),
        sa.Column("facts_version", sa.BigInteger(), nullable=True),
        sa.Column("request_id", sa.String(200), nullable=True),
        sa.Column("caller", sa.String(200), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("audit_records_at", "audit_records", ["at_us"])
    op.create_index("audit_records_client", "audit_records", ["client_id", "seq"])
    op.create_index("audit_records_user", "audit_records", ["user_id", "seq"])
    op.create_index("audit_records_municipality", "audit_records",
                    ["user_municipality", "seq"])
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.execute(sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :h)").bindparams(
        h="0" * 64))
    op.create_table(
        "audit_prunes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True, autoincrement=True),
        sa.Column("from_seq", sa.BigInteger(), nullable=False),
        sa.Column("to_seq", sa.BigInteger(), nullable=False),
        sa.Column("removed", sa.BigInteger(), nullable=False),
        sa.Column("cutoff_us", sa.BigInteger(), nullable=False),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "audit_holds",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(128), nullable=True),
        sa.Column("user_id", sa.String(128), nullable=True),
        sa.Column("municipality", sa.String(3), nullable=True),
        sa.Column("from_us", sa.BigInteger(), nullable=True),
        sa.Column("until_us", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("released_us", sa.BigInteger(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("audit_holds")
    op.drop_table("audit_prunes")
    op.drop_table("audit_head")
    op.drop_index("audit_records_municipality", table_name="audit_records")
    op.drop_index("audit_records_user", table_name="audit_records")
    op.drop_index("audit_records_client", table_name="audit_records")
    op.drop_index("audit_records_at", table_name="audit_records")
    op.drop_table("audit_records")

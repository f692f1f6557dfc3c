"""Rights written around the procedure are suspended.

Before this release a right could be written straight into the facts (`PUT
/v1/grants/{id}`, a `facts:batch` item of kind grant, `pdp facts import`) in any status,
for any period and without re-certification or approval. Only the procedure changes a
right (DOMAIN.md "Lifecycle of a right"): a right that came in by it has a `grant.applied`
event (an application, pdp.rights.lifecycle) or a `grant.imported` one (the register of rights
granted before the service, with its approval record). Every other live right (applied,
approved or active) is suspended here, once, in one new facts_version with its change log
(so that every replica that follows the log sees it) and a `grant.suspended` event each:
it must be applied for again, or imported with its approval record; restoring it goes
through the limits like any restore. Rights that came through the procedure, and rights
already suspended, revoked or expired, are untouched; so is anything that is not a right
of the model (no status).

The downgrade leaves them suspended: nothing says which were meant to count.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = ("applied", "approved", "active")
PROCEDURE_EVENTS = ("grant.applied", "grant.imported")
ACTOR = "migration 0012"
SUSPENDED_WHY = ("the right was written around the procedure (a facts write, with no "
                 "application and no imported approval record): it must be applied for "
                 "again, or imported with its approval record; restoring it goes through "
                 "the limits")

facts = sa.table("facts", sa.column("kind", sa.String), sa.column("id", sa.String),
                 sa.column("data", sa.Text), sa.column("version", sa.BigInteger))
fact_changes = sa.table("fact_changes", sa.column("version", sa.BigInteger),
                        sa.column("seq", sa.Integer), sa.column("kind", sa.String),
                        sa.column("id", sa.String), sa.column("data", sa.Text),
                        sa.column("changed_at", sa.DateTime(timezone=True)))
fact_meta = sa.table("fact_meta", sa.column("name", sa.String),
                     sa.column("value", sa.BigInteger))
events = sa.table("events", sa.column("at", sa.DateTime(timezone=True)),
                  sa.column("facts_version", sa.BigInteger), sa.column("type", sa.String),
                  sa.column("subject_kind", sa.String), sa.column("subject_id", sa.String),
                  sa.column("municipality", sa.String), sa.column("actor", sa.String),
                  sa.column("reason", sa.Text), sa.column("data", sa.Text))


def _encode(data: dict[str, Any]) -> str:
    return orjson.dumps(data).decode()  # as the store writes a fact (pdp.store.sql)


def _rows(conn: sa.Connection, kind: str) -> list[tuple[str, dict[str, Any]]]:
    found = conn.execute(sa.select(facts.c.id, facts.c.data).where(facts.c.kind == kind)
                         .order_by(facts.c.id)).all()
    return [(row.id, orjson.loads(row.data)) for row in found]


def upgrade() -> None:
    conn = op.get_bind()
    procedure = set(conn.execute(
        sa.select(events.c.subject_id).where(events.c.subject_kind == "grant",
                                             events.c.type.in_(PROCEDURE_EVENTS))).scalars())
    users = dict(_rows(conn, "user"))
    suspended: list[tuple[str, str, dict[str, Any], str]] = []
    for grant_id, data in _rows(conn, "grant"):
        status = data.get("status")
        if status not in LIVE or grant_id in procedure:
            continue
        user = users.get(str(data.get("user")))
        municipality = str((user or {}).get("municipality") or "")
        suspended.append((grant_id, municipality, {**data, "status": "suspended"}, status))
    if not suspended:
        return
    version = conn.execute(sa.update(fact_meta).where(fact_meta.c.name == "facts_version")
                           .values(value=fact_meta.c.value + 1)
                           .returning(fact_meta.c.value)).scalar_one()
    now = datetime.now(UTC)
    for seq, (grant_id, municipality, data, previous) in enumerate(suspended):
        encoded = _encode(data)
        conn.execute(sa.update(facts).where(facts.c.kind == "grant", facts.c.id == grant_id)
                     .values(data=encoded, version=version))
        conn.execute(sa.insert(fact_changes).values(
            version=version, seq=seq, kind="grant", id=grant_id, data=encoded,
            changed_at=now))
        conn.execute(sa.insert(events).values(
            at=now, facts_version=version, type="grant.suspended", subject_kind="grant",
            subject_id=grant_id, municipality=municipality, actor=ACTOR,
            reason=SUSPENDED_WHY, data=_encode({"grant": data, "from": previous})))


def downgrade() -> None:
    """The suspensions stay."""

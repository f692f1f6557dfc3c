"""Rights carry the purposes they were approved for; clients carry area_client.

A right is for the services it was approved for (DOMAIN.md rules 7 and 9), and a client is
one of the area only while the employment authority's system says it is its job-seeker
client (rule 4). Both are now required fields, so the facts stored before them are given
them here, once, in one new facts_version (a change of every fact touched, in the change
log too, so that every replica that follows the log sees it):

- a right without `purposes` gets its user's tasks of this day: the services it could
  serve the day purposes became part of a right, so no right gains a purpose by the
  upgrade, and tasks that widen later give it none (rule 7 reads the right's own);
- a right whose user is gone or has no tasks could serve no purpose today: a live one
  (not revoked or expired) is revoked (the task or employment ended, DOMAIN.md
  "Lifecycle of a right"), with a `grant.revoked` event like any revocation; as a
  right's purposes may not be empty, such rights record every service, which counts for
  nothing in a right that never counts again;
- a client without `area_client` gets `false`: nothing stored says the authority counts
  it as its job-seeker client, so decisions about it deny `client_outside_area` until
  the facts writers send it again with the flag (fail closed);
- agreements need nothing: `assignment_required` defaults to false.

Only facts of the models before this are touched (a right has scopes, a client its home
municipality); anything else the store holds is left as it is.

The downgrade takes the fields out again (in a new facts_version too); the revocations
stay.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SERVICES = ("coaching", "guidance", "training")
TERMINAL = ("revoked", "expired")
ACTOR = "migration 0011"
REVOKED_WHY = ("the right names no purpose and its user had no tasks (or was gone) when "
               "rights began to carry their purposes: it could serve none")

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


def _write(conn: sa.Connection, changed: list[tuple[str, str, dict[str, Any]]],
           revoked: list[tuple[str, str, dict[str, Any]]]) -> None:
    """The changed facts, as one new facts_version with its change log (and events)."""
    if not changed:
        return
    version = conn.execute(sa.update(fact_meta).where(fact_meta.c.name == "facts_version")
                           .values(value=fact_meta.c.value + 1)
                           .returning(fact_meta.c.value)).scalar_one()
    now = datetime.now(UTC)
    for seq, (kind, fact_id, data) in enumerate(changed):
        encoded = _encode(data)
        conn.execute(sa.update(facts).where(facts.c.kind == kind, facts.c.id == fact_id)
                     .values(data=encoded, version=version))
        conn.execute(sa.insert(fact_changes).values(
            version=version, seq=seq, kind=kind, id=fact_id, data=encoded, changed_at=now))
    for grant_id, municipality, data in revoked:
        conn.execute(sa.insert(events).values(
            at=now, facts_version=version, type="grant.revoked", subject_kind="grant",
            subject_id=grant_id, municipality=municipality, actor=ACTOR, reason=REVOKED_WHY,
            data=_encode({"grant": data, "from": "migration"})))


def upgrade() -> None:
    conn = op.get_bind()
    users = dict(_rows(conn, "user"))
    changed: list[tuple[str, str, dict[str, Any]]] = []
    revoked: list[tuple[str, str, dict[str, Any]]] = []
    for grant_id, data in _rows(conn, "grant"):
        if "purposes" in data or "scopes" not in data:  # not a right of the old model
            continue
        user = users.get(str(data.get("user")))
        tasks = [t for t in (user or {}).get("tasks") or [] if t in SERVICES]
        if tasks:
            data = {**data, "purposes": list(dict.fromkeys(tasks))}
        else:
            data = {**data, "purposes": list(SERVICES)}
            if data.get("status") not in TERMINAL:
                data["status"] = "revoked"
                revoked.append((grant_id, str((user or {}).get("municipality") or ""), data))
        changed.append(("grant", grant_id, data))
    for client_id, data in _rows(conn, "client"):
        if "area_client" not in data and "home_municipality" in data:
            changed.append(("client", client_id, {**data, "area_client": False}))
    _write(conn, changed, revoked)


def downgrade() -> None:
    conn = op.get_bind()
    changed: list[tuple[str, str, dict[str, Any]]] = []
    for kind, field in (("grant", "purposes"), ("client", "area_client"),
                        ("agreement", "assignment_required")):
        for fact_id, data in _rows(conn, kind):
            if field in data:
                changed.append((kind, fact_id, {k: v for k, v in data.items() if k != field}))
    _write(conn, changed, [])

"""The demo world for `pdp serve --demo`: a Kuopio-like employment area, invented people.

Times are relative to the moment the demo starts, so the demo's allows and denies hold
whatever the date. Municipality codes are the official ones.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pdp.clock import utcnow

AREA = "kuopio"
MUNICIPALITIES = [
    ("297", "Kuopio"),
    ("749", "Siilinjärvi"),
    ("844", "Tuusniemi"),
    ("686", "Rautavaara"),
    ("476", "Maaninka"),
]
# A municipality of another area, for a client "from another area".
OTHER_AREA = ("joensuu", "Joensuun seudun työllisyysalue", [("167", "Joensuu")])

FIRST_NAMES = ["Aino", "Eero", "Helmi", "Ilmari", "Kerttu", "Lauri", "Mirja", "Onni",
               "Päivi", "Sulo", "Tyyne", "Veikko", "Elsa", "Toivo", "Hilja"]
LAST_NAMES = ["Esimerkki", "Testinen", "Kuvitteellinen", "Malli", "Demonen"]


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def demo_facts(now: datetime | None = None) -> list[dict[str, Any]]:
    """The demo data set as facts:batch items."""
    now = now or utcnow()
    day = timedelta(days=1)
    facts: list[dict[str, Any]] = []

    def add(kind: str, id: str, data: dict[str, Any]) -> None:
        facts.append({"kind": kind, "id": id, "data": data})

    add("area", AREA, {
        "name": "Kuopion työllisyysalue",
        "responsible_municipality": "297",
        "municipalities": [{"code": c, "name": n} for c, n in MUNICIPALITIES],
    })
    add("area", OTHER_AREA[0], {
        "name": OTHER_AREA[1],
        "responsible_municipality": OTHER_AREA[2][0][0],
        "municipalities": [{"code": c, "name": n} for c, n in OTHER_AREA[2]],
    })
    signed = _iso(now - 400 * day)
    add("agreement", "297", {"area": AREA, "status": "in_force", "signed_at": signed})
    add("agreement", "749", {"area": AREA, "status": "in_force", "signed_at": signed})
    add("agreement", "844", {"area": AREA, "status": "notice_given", "signed_at": signed,
                             "ends_at": _iso(now + 60 * day)})
    add("agreement", "686", {"area": AREA, "status": "rescinded", "signed_at": signed})
    add("agreement", "167", {"area": OTHER_AREA[0], "status": "in_force", "signed_at": signed})

    # Users: (id, municipality, tasks, status, client_id)
    users = [
        ("u-1001", "749", ["coaching", "guidance"], "active", None),
        ("u-1002", "749", ["guidance"], "active", None),
        ("u-1003", "749", ["training"], "active", None),
        ("u-1004", "749", ["coaching"], "suspended", None),
        ("u-1005", "749", ["coaching"], "active", "c-749-009"),
        ("u-2001", "297", ["coaching", "training"], "active", None),
        ("u-2002", "297", ["guidance"], "left", None),
        ("u-2003", "297", ["coaching"], "active", None),
        ("u-3001", "844", ["coaching"], "active", None),
        ("u-4001", "686", ["guidance"], "active", None),
        ("u-1006", "749", ["coaching"], "active", None),
    ]
    for i, (uid, code, tasks, status, client_id) in enumerate(users):
        add("user", uid, {
            "municipality": code,
            "display_name": f"{FIRST_NAMES[i % len(FIRST_NAMES)]} {LAST_NAMES[i % 5]}",
            "tasks": tasks, "status": status, "client_id": client_id,
        })

    coaching_scopes = ["name_contact", "client_relationship", "education_work_history",
                       "service_needs_plans", "offers_referrals", "services_assessments"]
    start, end = _iso(now - 30 * day), _iso(now + 150 * day)
    basis = "380/2023 125 § 1 mom."

    def grant(gid: str, user: str, scopes: list[str], status: str = "active",
              actions: list[str] | None = None, valid_from: str = start,
              valid_until: str = end) -> None:
        add("grant", gid, {"user": user, "scopes": scopes, "actions": actions or ["read"],
                           "valid_from": valid_from, "valid_until": valid_until,
                           "status": status, "legal_basis": basis})

    grant("g-1001", "u-1001", [*coaching_scopes, "health_work_capacity"],
          actions=["read", "write"])
    grant("g-1002", "u-1002", ["name_contact", "client_relationship", "service_needs_plans",
                               "services_assessments"])
    grant("g-1003", "u-1003", ["name_contact", "education_work_history",
                               "services_assessments"])
    grant("g-1004", "u-1004", coaching_scopes, status="suspended")
    grant("g-1005", "u-1005", coaching_scopes)
    grant("g-2001", "u-2001", coaching_scopes)
    grant("g-2002", "u-2002", ["name_contact"], status="revoked")
    grant("g-2003", "u-2003", coaching_scopes, status="expired",
          valid_from=_iso(now - 200 * day), valid_until=_iso(now - 10 * day))
    grant("g-3001", "u-3001", coaching_scopes)
    grant("g-4001", "u-4001", ["name_contact", "service_needs_plans"])
    grant("g-1006", "u-1006", coaching_scopes, status="approved")

    # Clients: ten per member municipality, one from another area.
    for code, _name in MUNICIPALITIES:
        for n in range(1, 11):
            cid = f"c-{code}-{n:03d}"
            add("client", cid, {"home_municipality": code,
                                "protection_order": code == "749" and n == 7})
    add("client", "c-167-001", {"home_municipality": "167", "protection_order": False})

    # Relationships: coaching for most, guidance and training for some, one ended.
    for code in ("749", "297", "844"):
        for n in range(1, 9):
            cid = f"c-{code}-{n:03d}"
            service = "coaching" if n <= 5 else ("guidance" if n <= 7 else "training")
            data: dict[str, Any] = {"client": cid, "municipality": code, "service": service,
                                    "starts_at": _iso(now - 20 * day), "ends_at": None,
                                    "assigned_users": []}
            if code == "749" and n == 5:
                data["ends_at"] = _iso(now - 2 * day)
            add("relationship", f"r-{code}-{n:03d}", data)
    add("relationship", "r-749-001-guidance", {
        "client": "c-749-001", "municipality": "749", "service": "guidance",
        "starts_at": _iso(now - 20 * day), "ends_at": None, "assigned_users": ["u-1002"]})
    return facts

"""The demo world for `pdp serve --demo`: a Kuopio-like employment area, invented people.

Times are relative to the moment the demo starts, so the demo's allows and denies hold
whatever the date. Municipality codes are the official ones.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pdp.model.clock import utcnow
from pdp.rights.lifecycle import AgreementAct, Application, Approval, GrantRegister, Lifecycle

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
    """The demo facts as facts:batch items: everything but the rights (demo_register),
    every agreement in force (the steps of DEMO_ACTS follow)."""
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
    # Every agreement is written in force; notice and rescission are steps (DEMO_ACTS).
    for code in ("297", "749", "844", "686"):
        add("agreement", code, {"area": AREA, "status": "in_force", "signed_at": signed})
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

    # Clients: ten per member municipality, one from another area.
    for code, _name in MUNICIPALITIES:
        for n in range(1, 11):
            cid = f"c-{code}-{n:03d}"
            add("client", cid, {"home_municipality": code,
                                "protection_order": code == "749" and n == 7,
                                "area_client": True})
    add("client", "c-167-001", {"home_municipality": "167", "protection_order": False,
                                "area_client": True})

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


def demo_register_before(now: datetime | None = None) -> datetime:
    """The cut-over of the demo's register (PDP_REGISTER_BEFORE for `pdp serve --demo`):
    the demo service went live 30 days ago; every right of demo_register was approved and
    opened before that."""
    return (now or utcnow()) - timedelta(days=30)


def demo_register(now: datetime | None = None) -> dict[str, Any]:
    """The demo rights, as the register of rights granted before the service
    (`POST /v1/grants:import`): each with its purposes and its approval record."""
    now = now or utcnow()
    day = timedelta(days=1)
    coaching_scopes = ["name_contact", "client_relationship", "education_work_history",
                       "service_needs_plans", "offers_referrals", "services_assessments"]
    start, end = now - 30 * day, now + 150 * day
    grants: list[dict[str, Any]] = []

    def grant(gid: str, user: str, purposes: list[str], scopes: list[str],
              status: str = "active", actions: list[str] | None = None,
              valid_from: datetime = start, valid_until: datetime = end) -> None:
        approved = valid_from - 7 * day
        grants.append({
            "id": gid, "user": user, "purposes": purposes, "scopes": scopes,
            "actions": actions or ["read"], "valid_from": _iso(valid_from),
            "valid_until": _iso(valid_until), "status": status,
            "legal_basis": "380/2023 125 § 1 mom.",
            "recertify_by": _iso(min(now + 60 * day, valid_until)),
            "approval": {"approved_by": "Kuopion työllisyysalue, palvelupäällikkö",
                         "approved_at": _iso(approved),
                         "decision_ref": f"KUO/{approved.year}/{gid}",
                         "activated_at": _iso(approved + 2 * day)}})

    grant("g-1001", "u-1001", ["coaching", "guidance"],
          [*coaching_scopes, "health_work_capacity"], actions=["read", "write"])
    grant("g-1002", "u-1002", ["guidance"], ["name_contact", "client_relationship",
                                             "service_needs_plans", "services_assessments"])
    grant("g-1003", "u-1003", ["training"], ["name_contact", "education_work_history",
                                             "services_assessments"])
    grant("g-1004", "u-1004", ["coaching"], coaching_scopes, status="suspended")
    grant("g-1005", "u-1005", ["coaching"], coaching_scopes)
    grant("g-2001", "u-2001", ["coaching"], coaching_scopes)
    grant("g-2002", "u-2002", ["guidance"], ["name_contact"], status="revoked")
    grant("g-2003", "u-2003", ["coaching"], coaching_scopes, status="expired",
          valid_from=now - 200 * day, valid_until=now - 10 * day)
    grant("g-3001", "u-3001", ["coaching"], coaching_scopes)
    grant("g-4001", "u-4001", ["guidance"], ["name_contact", "service_needs_plans"])
    return {"grants": grants}


# What happens to the agreements once the rights are in, through the steps of the
# procedure: Tuusniemi gives notice (its rights end with the notice), Rautavaara's
# agreement is rescinded (its rights are revoked at once).
DEMO_ACTS = [("844", "notice", "Tuusniemi withdraws from the arrangement"),
             ("686", "rescind", "Repeated misuse of client data")]


def demo_grant_facts(now: datetime | None = None) -> list[dict[str, Any]]:
    """The demo rights as fact items, for building a fact index in process (tests and
    benchmarks); the service takes them in only through `POST /v1/grants:import`."""
    return [{"kind": "grant", "id": g["id"],
             "data": {k: v for k, v in g.items() if k not in ("id", "approval")}}
            for g in demo_register(now)["grants"]]


def load_demo(lifecycle: Lifecycle, now: datetime | None = None) -> int:
    """Write the demo world as the service would be given it: the facts through the facts
    API's path, the rights as the register of rights before the service, and then the
    agreement steps. Returns the facts_version."""
    from pdp.engine.facts_service import parse_batch

    now = now or utcnow()
    lifecycle.write_facts(parse_batch(demo_facts(now)), "demo")
    version = lifecycle.import_register(GrantRegister.model_validate(demo_register(now)),
                                        "demo")
    for code, act, reason in DEMO_ACTS:
        step = lifecycle.notice if act == "notice" else lifecycle.rescind
        _agreement, version = step(code, AgreementAct(reason=reason), "demo")
    # u-1006 has a right that was approved but not opened yet (it counts for nothing).
    grant_id, _grant, version = lifecycle.apply_for(Application(
        id="g-1006", user="u-1006", purposes=["coaching"],
        scopes=["name_contact", "client_relationship", "education_work_history",
                "service_needs_plans", "offers_referrals", "services_assessments"],
        valid_from=now - timedelta(days=1), valid_until=now + timedelta(days=150),
        legal_basis="380/2023 125 § 1 mom.", justification="A new coach"), "demo")
    _grant, version = lifecycle.step(grant_id, "approve",
                                     Approval(justification="Tasks checked"), "demo")
    return version

"""The monthly report: one self-contained HTML page of a calendar month's accesses,
denials and monitoring cases, per municipality (of the user who asked).

The page needs no network: the CSS is inline and the bar charts are inline SVG drawn
here. The decision log is read in pages and only counts are kept, so memory does not
grow with the number of records.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from pdp.audit.log import AuditLog
from pdp.engine.factindex import FactView
from pdp.model.clock import from_micros, to_micros

ZONE = ZoneInfo("Europe/Helsinki")
UNKNOWN = "—"  # records without a user municipality
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def month_bounds(month: str) -> tuple[int, int]:
    """[from, until) in microseconds of the Europe/Helsinki calendar month YYYY-MM."""
    found = _MONTH.fullmatch(month)
    if found is None:
        raise ValueError(f"not a month (YYYY-MM): {month!r}")
    year, number = int(found[1]), int(found[2])
    start = datetime(year, number, 1, tzinfo=ZONE)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=ZONE)
    return to_micros(start), to_micros(end)


@dataclass
class _Tally:
    allowed: int = 0
    denied: int = 0
    purposes: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)


def _tally(log: AuditLog, from_us: int, until_us: int,
           page_size: int) -> dict[str, _Tally]:
    tallies: dict[str, _Tally] = {}
    after = 0
    while True:
        rows = log.query(from_us=from_us, until_us=until_us, record_type="decision",
                         after_seq=after, limit=page_size)
        if not rows:
            return tallies
        for row in rows:
            tally = tallies.setdefault(row["user_municipality"] or UNKNOWN, _Tally())
            if row["decision"]:
                tally.allowed += 1
                tally.purposes[row["purpose"] or UNKNOWN] += 1
                tally.categories[row["category"] or UNKNOWN] += 1
            else:
                tally.denied += 1
                tally.reasons[row["reason"] or UNKNOWN] += 1
        after = int(rows[-1]["seq"])


def _opened_us(case: dict[str, Any]) -> int | None:
    opened = case.get("opened_at")
    if not opened:
        return None
    moment = datetime.fromisoformat(str(opened))
    return to_micros(moment) if moment.tzinfo is not None else None


def _n(value: int) -> str:
    return f"{value:,}".replace(",", "\u202f")  # grouped with a narrow no-break space


def _local(case: dict[str, Any]) -> str:
    opened = datetime.fromisoformat(str(case["opened_at"])).astimezone(ZONE)
    return opened.strftime("%Y-%m-%d %H:%M")


def bar_chart(kind: str, municipality: str, title: str, counts: Counter[str]) -> str:
    """A horizontal bar chart as inline SVG: one `<rect>` per bar, largest first."""
    if not counts:
        return (f'<figure><figcaption>{escape(title)}</figcaption>'
                f'<p class="empty">None this month.</p></figure>')
    items = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    label_w, bar_w, count_w, row_h, bar_h, top = 180, 220, 60, 28, 18, 4
    width = label_w + bar_w + count_w
    height = top * 2 + row_h * len(items)
    most = max(counts.values())
    parts = [f'<figure><figcaption>{escape(title)}</figcaption>'
             f'<svg class="chart" data-chart="{escape(kind)}" '
             f'data-municipality="{escape(municipality)}" xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}">']
    for i, (label, count) in enumerate(items):
        y = top + i * row_h
        length = max(2.0, bar_w * count / most)
        shown = label if len(label) <= 26 else label[:25] + "…"
        parts.append(
            f'<text class="label" x="{label_w - 8}" y="{y + bar_h / 2}" text-anchor="end" '
            f'dominant-baseline="central">{escape(shown)}</text>'
            f'<rect class="bar {escape(kind)}" x="{label_w}" y="{y}" width="{length:.1f}" '
            f'height="{bar_h}" rx="3"><title>{escape(label)}: {count}</title></rect>'
            f'<text class="count" x="{label_w + length + 6:.1f}" y="{y + bar_h / 2}" '
            f'dominant-baseline="central">{_n(count)}</text>')
    parts.append("</svg></figure>")
    return "".join(parts)


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1d2530; background: #f5f7fa; margin: 0; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 0 0 12px; border-bottom: 2px solid #d8dee6; padding-bottom: 6px; }
.sub { color: #5b6675; margin: 0 0 20px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 0 0 24px; }
.card { background: #fff; border: 1px solid #d8dee6; border-radius: 8px; padding: 10px 16px;
        min-width: 130px; }
.card .value { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .name { color: #5b6675; font-size: 13px; }
section.summary { margin: 0 0 28px; }
section.municipality { background: #fff; border: 1px solid #d8dee6; border-radius: 8px;
                       padding: 16px 20px; margin: 0 0 20px; }
.charts { display: flex; flex-wrap: wrap; gap: 8px 32px; }
figure { margin: 8px 0; }
figcaption { font-weight: 600; margin: 0 0 4px; }
svg.chart text { font: 13px system-ui, sans-serif; fill: #1d2530; }
svg.chart text.count { fill: #5b6675; font-variant-numeric: tabular-nums; }
rect.bar.purpose { fill: #2f6fb3; }
rect.bar.category { fill: #3d9a7a; }
rect.bar.reason { fill: #c4553b; }
table { border-collapse: collapse; width: 100%; margin: 4px 0 0; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid #e4e8ee; }
th { background: #eef2f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.empty { color: #7a8594; font-style: italic; margin: 4px 0; }
h3 { font-size: 16px; margin: 16px 0 4px; }
"""


def _card(name: str, value: int, key: str) -> str:
    return (f'<div class="card" data-total="{escape(key)}"><div class="value">{_n(value)}'
            f'</div><div class="name">{escape(name)}</div></div>')


def _cases_table(cases: list[dict[str, Any]]) -> str:
    if not cases:
        return '<p class="empty">No cases opened this month.</p>'
    rows = "".join(
        f'<tr><td>{escape(str(c.get("rule") or ""))}</td>'
        f'<td>{escape(str(c.get("user") or ""))}</td>'
        f'<td>{escape(str(c.get("status") or ""))}</td>'
        f'<td>{escape(_local(c))}</td></tr>' for c in cases)
    return ('<table class="cases"><thead><tr><th>Rule</th><th>User</th><th>Status</th>'
            f'<th>Opened (Helsinki time)</th></tr></thead><tbody>{rows}</tbody></table>')


def monthly_report(log: AuditLog, cases: list[dict[str, Any]], month: str,
                   municipality_names: dict[str, str], *, page_size: int = 1000) -> str:
    """The report of the Europe/Helsinki calendar month `month` (YYYY-MM) as one HTML page.

    `cases` are monitoring cases (as `Cases.list` gives them); those opened in the month
    are shown under their municipality."""
    from_us, until_us = month_bounds(month)
    tallies = _tally(log, from_us, until_us, page_size)
    month_cases: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        opened = _opened_us(case)
        if opened is not None and from_us <= opened < until_us:
            month_cases.setdefault(str(case.get("municipality") or UNKNOWN), []).append(case)
    codes = sorted(set(tallies) | set(month_cases), key=lambda c: (c == UNKNOWN, c))

    def name(code: str) -> str:
        if code == UNKNOWN:
            return "Unknown municipality"
        known = municipality_names.get(code)
        return f"{known} ({code})" if known else code

    allowed = sum(t.allowed for t in tallies.values())
    denied = sum(t.denied for t in tallies.values())
    opened_total = sum(len(c) for c in month_cases.values())
    summary_rows = "".join(
        f'<tr data-municipality="{escape(code)}"><td>{escape(name(code))}</td>'
        f'<td class="num">{_n(tallies.get(code, _Tally()).allowed)}</td>'
        f'<td class="num">{_n(tallies.get(code, _Tally()).denied)}</td>'
        f'<td class="num">{_n(len(month_cases.get(code, [])))}</td></tr>' for code in codes)
    summary_table = (
        '<table class="summary"><thead><tr><th>Municipality</th><th class="num">Accesses</th>'
        '<th class="num">Denials</th><th class="num">Cases opened</th></tr></thead>'
        f'<tbody>{summary_rows}</tbody></table>' if codes
        else '<p class="empty">No decisions and no cases this month.</p>')

    sections = []
    for code in codes:
        tally = tallies.get(code, _Tally())
        sections.append(
            f'<section class="municipality" id="m-{escape(code)}" '
            f'data-municipality="{escape(code)}"><h2>{escape(name(code))}</h2>'
            f'<div class="cards">{_card("Accesses (allowed)", tally.allowed, "allowed")}'
            f'{_card("Denials", tally.denied, "denied")}</div>'
            '<div class="charts">'
            + bar_chart("purpose", code, "Accesses by purpose", tally.purposes)
            + bar_chart("category", code, "Accesses by data category", tally.categories)
            + bar_chart("reason", code, "Denials by reason", tally.reasons)
            + '</div><h3>Cases opened</h3>'
            + _cases_table(month_cases.get(code, [])) + '</section>')

    title = f"Access report {month}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{escape(title)}</title><style>{_CSS}</style></head><body><main>'
        f'<h1>{escape(title)}</h1><p class="sub">Calendar month {escape(month)} in '
        'Europe/Helsinki time. Accesses are allowed decisions, counted under the '
        "municipality of the user who asked.</p>"
        '<section class="summary"><div class="cards">'
        f'{_card("Decisions", allowed + denied, "decisions")}'
        f'{_card("Accesses (allowed)", allowed, "allowed")}'
        f'{_card("Denials", denied, "denied")}'
        f'{_card("Cases opened", opened_total, "cases")}'
        f'{_card("Municipalities", len(codes), "municipalities")}</div>'
        f'{summary_table}</section>'
        + "".join(sections) + "</main></body></html>\n")


def subject_accesses(index: FactView, rows: list[dict[str, Any]], include_users: bool
                     ) -> list[dict[str, Any]]:
    """The data subject's report (`GET /v1/audit/clients/{client}/report`): a client's
    accesses per day, organisation and purpose, with the categories and actions (and,
    when asked, the employees)."""
    groups: dict[tuple[str, str, str], dict[str, set[str]]] = defaultdict(
        lambda: defaultdict(set))
    for row in rows:
        day = from_micros(row["at_us"]).date().isoformat()
        key = (day, row["user_municipality"] or "", row["purpose"] or "")
        groups[key]["categories"].add(row["category"] or "")
        groups[key]["actions"].add(row["action"] or "")
        if include_users and row["user_id"]:
            groups[key]["users"].add(row["user_id"])
    out = []
    for (day, code, purpose), sets in sorted(groups.items()):
        entry: dict[str, Any] = {
            "date": day,
            "organisation": {"municipality": code, "name": municipality_name(index, code)},
            "purpose": purpose,
            "categories": sorted(sets["categories"]),
            "actions": sorted(sets["actions"]),
        }
        if include_users:
            entry["users"] = sorted(sets["users"])
        out.append(entry)
    return out


def municipality_name(index: FactView, code: str) -> str | None:
    for area in index.areas.values():
        for municipality in area.municipalities:
            if municipality.code == code:
                return municipality.name
    return None

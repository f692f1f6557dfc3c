"""`pdp report`: the monthly HTML report, checked as text and as rendered by Chromium."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pdp.audit.log import AuditLog, AuditRecord, new_record_id
from pdp.model.clock import to_micros
from pdp.rights.monitoring import Cases, Hit
from pdp.rights.report import month_bounds, monthly_report
from pdp.store.protocols import Change
from pdp.store.sql import open_store
from tests.support.servers import ROOT

CHROMIUM = Path("/usr/bin/chromium")


def us(text: str) -> int:
    return to_micros(datetime.fromisoformat(text))


def allowed(municipality: str, at: str, purpose: str, category: str) -> AuditRecord:
    return AuditRecord("decision", new_record_id(), us(at), user_id=f"u-{municipality}",
                       user_municipality=municipality, client_id="c-1",
                       client_municipality=municipality, category=category, action="read",
                       purpose=purpose, decision=True, reason="allowed")


def denied(municipality: str, at: str, reason: str) -> AuditRecord:
    return AuditRecord("decision", new_record_id(), us(at), user_id=f"u-{municipality}",
                       user_municipality=municipality, client_id="c-1",
                       client_municipality="297", category="benefits", action="read",
                       purpose="coaching", decision=False, reason=reason)


# March 2025 in Helsinki: 2025-03-01T00:00+02:00 until 2025-04-01T00:00+03:00 (DST on 30th).
RECORDS = [
    # 749: 4 accesses (coaching 3, guidance 1; service_needs_plans 2, name_contact 2)
    allowed("749", "2025-03-01T00:00:00+02:00", "coaching", "service_needs_plans"),
    allowed("749", "2025-03-01T00:30:00+02:00", "coaching", "service_needs_plans"),  # Feb UTC
    allowed("749", "2025-03-15T12:00:00+02:00", "coaching", "name_contact"),
    allowed("749", "2025-03-31T23:59:59+03:00", "guidance", "name_contact"),
    # 749: 3 denials (category_not_necessary 2, no_relationship 1)
    denied("749", "2025-03-10T09:00:00+02:00", "category_not_necessary"),
    denied("749", "2025-03-11T09:00:00+02:00", "category_not_necessary"),
    denied("749", "2025-03-30T09:00:00+03:00", "no_relationship"),
    # 297: 3 accesses (coaching, guidance, training), no denials
    allowed("297", "2025-03-05T08:00:00+02:00", "coaching", "service_needs_plans"),
    allowed("297", "2025-03-06T08:00:00+02:00", "guidance", "service_needs_plans"),
    allowed("297", "2025-03-07T08:00:00+02:00", "training", "<b>odd & category</b>"),
    # Outside the month: must not count.
    allowed("749", "2025-02-28T23:59:59+02:00", "training", "benefits"),
    allowed("749", "2025-04-01T00:00:00+03:00", "training", "benefits"),
    denied("749", "2025-04-02T10:00:00+03:00", "grant_expired"),
    allowed("844", "2025-05-01T10:00:00+03:00", "coaching", "benefits"),
    # A read of the log in the month: not a decision.
    AuditRecord("audit_read", new_record_id(), us("2025-03-20T10:00:00+02:00"), caller="x"),
]

CASES = [  # rule, user, municipality, opened
    ("after_hours", "u-<749>", "749", "2025-03-12T23:30:00+02:00"),
    ("denials", "u-749b", "749", "2025-02-27T10:00:00+02:00"),  # outside
    ("denials", "u-297", "297", "2025-03-20T10:00:00+02:00"),
]


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'facts.sqlite3'}"
    store = open_store(url)
    store.apply([Change("area", "kuopio", {
        "name": "Kuopion työllisyysalue", "responsible_municipality": "297",
        "municipalities": [{"code": "297", "name": "Kuopio"},
                           {"code": "749", "name": "Siilinjärvi"}]})])
    log = AuditLog(store.engine, max_batch=5)
    log.write(RECORDS)
    log.stop()
    cases = Cases(store.engine, store)
    for rule, user, municipality, opened in CASES:
        cases.record_hit(Hit(rule, user, municipality, new_record_id(), us(opened)), rule)
    store.close()
    return url


def run_report(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
    return subprocess.run([sys.executable, "-m", "pdp", "report", *args], capture_output=True,
                          text=True, env={**environment, "PDP_DATABASE_URL": url}, cwd=ROOT,
                          timeout=60)


class Page(HTMLParser):
    """Bars per chart, totals, municipality headings and case rows of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.bars: Counter[tuple[str, str]] = Counter()
        self.bar_titles: dict[tuple[str, str], list[str]] = {}
        self.totals: dict[tuple[str, str], str] = {}
        self.cases: dict[str, list[list[str]]] = {}
        self.headings: list[str] = []
        self._section = "summary"
        self._chart: tuple[str, str] | None = None
        self._capture: str | None = None
        self._total: str | None = None
        self._in_cases = False
        self._row: list[str] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if tag == "section" and "municipality" in classes:
            self._section = a["data-municipality"]
        elif tag == "svg" and "chart" in classes:
            self._chart = (a["data-municipality"], a["data-chart"])
        elif tag == "rect" and self._chart is not None:
            self.bars[self._chart] += 1
        elif tag == "title" and self._chart is not None:
            self._capture, self._text = "title", ""
        elif tag == "div" and "data-total" in a:
            self._total = a["data-total"]
        elif tag == "div" and "value" in classes and self._total is not None:
            self._capture, self._text = "total", ""
        elif tag == "h2":
            self._capture, self._text = "h2", ""
        elif tag == "table" and "cases" in classes:
            self._in_cases = True
        elif tag == "tr" and self._in_cases:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._capture, self._text = "td", ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._chart = None
        elif tag == "table":
            self._in_cases = False
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.cases.setdefault(self._section, []).append(self._row)
            self._row = None
        if self._capture is None:
            return
        text = self._text.strip()
        if self._capture == "title" and tag == "title" and self._chart is not None:
            self.bar_titles.setdefault(self._chart, []).append(text)
        elif self._capture == "total" and tag == "div" and self._total is not None:
            self.totals[(self._section, self._total)] = text
            self._total = None
        elif self._capture == "h2" and tag == "h2":
            self.headings.append(text)
        elif self._capture == "td" and tag == "td" and self._row is not None:
            self._row.append(text)
        else:
            return
        self._capture = None

    def handle_data(self, data: str) -> None:
        if self._capture is not None:
            self._text += data


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def check_page(page: Page) -> None:
    assert page.headings == ["Kuopio (297)", "Siilinjärvi (749)"]
    assert page.totals[("summary", "decisions")] == "10"
    assert page.totals[("summary", "allowed")] == "7"
    assert page.totals[("summary", "denied")] == "3"
    assert page.totals[("summary", "cases")] == "2"
    assert page.totals[("summary", "municipalities")] == "2"
    assert page.totals[("749", "allowed")] == "4"
    assert page.totals[("749", "denied")] == "3"
    assert page.totals[("297", "allowed")] == "3"
    assert page.totals[("297", "denied")] == "0"
    assert page.bars == {("749", "purpose"): 2, ("749", "category"): 2, ("749", "reason"): 2,
                         ("297", "purpose"): 3, ("297", "category"): 2}
    assert page.bar_titles[("749", "purpose")] == ["coaching: 3", "guidance: 1"]
    assert sorted(page.bar_titles[("749", "category")]) == ["name_contact: 2",
                                                            "service_needs_plans: 2"]
    assert page.bar_titles[("749", "reason")] == ["category_not_necessary: 2",
                                                  "no_relationship: 1"]
    assert page.bar_titles[("297", "purpose")] == ["coaching: 1", "guidance: 1", "training: 1"]
    assert page.bar_titles[("297", "category")] == ["service_needs_plans: 2",
                                                    "<b>odd & category</b>: 1"]
    assert page.cases == {"749": [["after_hours", "u-<749>", "open", "2025-03-12 23:30"]],
                          "297": [["denials", "u-297", "open", "2025-03-20 10:00"]]}


def test_month_bounds_follow_helsinki_time() -> None:
    assert month_bounds("2025-03") == (us("2025-03-01T00:00:00+02:00"),
                                       us("2025-04-01T00:00:00+03:00"))
    assert month_bounds("2025-12") == (us("2025-12-01T00:00:00+02:00"),
                                       us("2026-01-01T00:00:00+02:00"))
    for bad in ("2025-13", "2025-3", "march", "2025-03-01"):
        with pytest.raises(ValueError):
            month_bounds(bad)


def test_paging_does_not_change_the_counts(store_url: str) -> None:
    store = open_store(store_url)
    try:
        log, cases = AuditLog(store.engine), Cases(store.engine, store).list()
        names = {"297": "Kuopio", "749": "Siilinjärvi"}
        small = monthly_report(log, cases, "2025-03", names, page_size=2)
        assert small == monthly_report(log, cases, "2025-03", names)
        check_page(parse(small))
    finally:
        store.close()


def test_report_rejects_a_bad_month(store_url: str, tmp_path: Path) -> None:
    done = run_report(store_url, "--month", "2025-13", "--out", str(tmp_path / "r.html"))
    assert done.returncode == 2
    assert "YYYY-MM" in done.stderr
    assert not (tmp_path / "r.html").exists()


def test_report_counts_the_month(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    done = run_report(store_url, "--month", "2025-03", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    text = out.read_text(encoding="utf-8")
    check_page(parse(text))
    # Self-contained and escaped.
    assert not re.search(r"<(script|link|img)\b", text)
    assert "<b>odd" not in text and "&lt;b&gt;odd &amp; category&lt;/b&gt;" in text
    assert "u-&lt;749&gt;" in text
    assert "grant_expired" not in text and "benefits" not in text


def test_report_renders_in_chromium(store_url: str, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/services installs Debian's chromium "
                    "package (run it, or apt-get install chromium)")
    out = tmp_path / "report.html"
    done = run_report(store_url, "--month", "2025-03", "--out", str(out))
    assert done.returncode == 0, done.stderr
    png = tmp_path / "report.png"
    common = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1200,2000"]
    shot = subprocess.run([*common, f"--screenshot={png}", out.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0, shot.stderr
    assert png.exists() and png.stat().st_size > 10_000, shot.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dom = subprocess.run([*common, "--dump-dom", out.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr
    check_page(parse(dom.stdout))

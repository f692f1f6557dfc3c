"""The monitoring assets (Grafana dashboard, Prometheus alert rules) only use metrics the
service really exports (scraped from the app in-process, tests/support/asgi.py), the rules
pass `promtool check rules`, and the dashboard is sound."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import yaml

from tests.support.asgi import InProcess
from tests.support.servers import ROOT

DASHBOARD = ROOT / "monitoring" / "grafana" / "pdp-dashboard.json"
ALERTS = ROOT / "monitoring" / "prometheus" / "alerts.yml"

_METRIC = re.compile(r"(?<![A-Za-z0-9_:])pdp_[a-z0-9_]+")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
# Sample names a family shows, by its # TYPE. In the Prometheus text format a counter's
# # TYPE line already carries `_total`, an Info's `_info`, and `_created` has # TYPE lines of
# its own; OpenMetrics names the bare family, hence the counter and info suffixes.
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count", "_created"),
             "summary": ("", "_sum", "_count", "_created"),
             "counter": ("_total", "_created"), "info": ("_info",)}


def _sample_names(name: str, kind: str) -> set[str]:
    if kind == "counter" and name.endswith("_total"):
        return {name}
    if kind == "info" and name.endswith("_info"):
        return {name}
    return {name + suffix for suffix in _SUFFIXES.get(kind, ("",))}


def metric_names(expr: str) -> set[str]:
    """The pdp_* metric names an expression refers to (not inside string literals, so a
    label value such as job="pdp_x" is not taken for a metric)."""
    return set(_METRIC.findall(_STRING.sub('""', expr)))


def exported_names(exposition: str) -> set[str]:
    """Every series name the /metrics text can show: the # TYPE names (a histogram's as its
    `_bucket`/`_sum`/`_count` samples, since the bare name is no series) and the sample names
    actually present."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names |= _sample_names(name, kind)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def unknown_metrics(exprs: Iterable[str], exported: set[str]) -> dict[str, list[str]]:
    """Metric name -> the expressions that use it, for names the service does not export."""
    unknown: dict[str, list[str]] = {}
    for expr in exprs:
        for name in sorted(metric_names(expr) - exported):
            unknown.setdefault(name, []).append(expr)
    return unknown


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def dashboard_exprs() -> list[str]:
    data = dashboard()
    exprs = [target["expr"] for panel in walk_panels(data["panels"])
             for target in panel.get("targets", []) if target.get("expr")]
    for variable in data.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            exprs.append(query["query"] if isinstance(query, dict) else str(query))
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def exported(app: InProcess) -> set[str]:
    response = app.get("/metrics", timeout=30)
    assert response.status_code == 200, response.text
    names = exported_names(response.text)
    assert "pdp_decisions_total" in names
    return names


def test_dashboard_uses_only_exported_metrics(exported: set[str]) -> None:
    exprs = dashboard_exprs()
    assert exprs
    assert all(metric_names(expr) for expr in exprs), "an expression names no pdp metric"
    assert unknown_metrics(exprs, exported) == {}


def test_alert_rules_use_only_exported_metrics(exported: set[str]) -> None:
    exprs = alert_exprs()
    assert exprs
    assert unknown_metrics(exprs, exported) == {}


def test_a_wrong_metric_name_is_caught(exported: set[str]) -> None:
    exprs = ['sum(rate(pdp_decisions_total[5m]))',
             'rate(pdp_decision_total{decision="false"}[5m])',
             'histogram_quantile(0.99, rate(pdp_decision_duration_seconds_bucket[5m]))',
             'pdp_grants{state="pdp_not_a_metric"}']
    assert unknown_metrics(exprs, exported) == {
        "pdp_decision_total": ['rate(pdp_decision_total{decision="false"}[5m])']}


def test_exported_names_cover_the_sample_names() -> None:
    text = ("# TYPE pdp_decisions_total counter\n"
            "# TYPE pdp_decision_duration_seconds histogram\n"
            "# TYPE pdp_decisions_created gauge\n"
            "# TYPE pdp_policy_info gauge\n"
            "# TYPE pdp_grants gauge\n"
            'pdp_grants{state="active"} 3.0\n')
    names = exported_names(text)
    assert {"pdp_decisions_total", "pdp_decisions_created", "pdp_decision_duration_seconds_bucket",
            "pdp_decision_duration_seconds_sum", "pdp_decision_duration_seconds_count",
            "pdp_policy_info", "pdp_grants"} <= names
    assert not {"pdp_decisions", "pdp_decision_duration_seconds"} & names


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: scripts/services installs it (Debian package "
                    "`prometheus`); run scripts/services or apt-get install prometheus")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_are_complete() -> None:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len({rule["alert"] for rule in alerts}) == len(alerts)
    for rule in alerts:
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_dashboard_is_sound() -> None:
    data = dashboard()
    assert data["title"] and data["uid"]
    assert any(item["name"] == "DS_PROMETHEUS" for item in data["__inputs"])
    panels = list(walk_panels(data["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are not unique"
    assert any(panel.get("panels") for panel in panels if panel["type"] == "row")
    for panel in panels:
        assert panel.get("title"), panel
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), panel["title"]
        for target in panel["targets"]:
            assert target.get("expr"), panel["title"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]

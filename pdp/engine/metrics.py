"""Every Prometheus metric of the service, in one place. Names follow Prometheus
conventions; labels never carry user or client ids.

With several worker processes (`pdp serve --workers N`), PROMETHEUS_MULTIPROC_DIR is set
before the workers start: every worker writes its values there, and a scrape of any
worker adds up counters and histograms of all of them (gauges say how: the laggiest
worker's facts, the most recent count of rights, ...)."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from pdp.model.vocab import SERVICES

PURPOSE_LABELS = frozenset(SERVICES)

_LATENCY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """The service's metrics, registered in one registry (one per app)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "pdp_decisions", "Decisions made, by outcome, reason and purpose.",
            ["decision", "reason", "purpose"], registry=r)
        self._decision_children: dict[tuple[bool, str, str], Any] = {}
        self.decision_seconds = Histogram(
            "pdp_decision_duration_seconds", "Time to decide one request (cache included).",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.searches = Counter(
            "pdp_searches", "AuthZEN search pages answered, by kind (resource, subject, "
            "action).", ["kind"], registry=r)
        self.search_seconds = Histogram(
            "pdp_search_duration_seconds", "Time to answer one search page.", ["kind"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.search_candidates = Counter(
            "pdp_search_candidates", "Candidates a search asked the policy (or its memo) "
            "about, by kind.", ["kind"], registry=r)
        self.shadow_divergences = Counter(
            "pdp_policy_shadow_divergences", "Live decisions a candidate policy in shadow "
            "decided otherwise (decision or reason), by active and candidate version.",
            ["active", "candidate"], registry=r)
        self.shadow_evaluations = Counter(
            "pdp_policy_shadow_evaluations", "Live decisions also decided by a candidate "
            "policy in shadow.", registry=r)
        self.shadow_dropped = Counter(
            "pdp_policy_shadow_dropped", "Live decisions not shadowed: the shadow queue "
            "was full.", registry=r)
        self.policy_queries = Counter(
            "pdp_policy_queries", "Policy engine queries (decision-cache misses).", registry=r)
        self.cache_requests = Counter(
            "pdp_cache_requests", "Decision-cache lookups by result.", ["cache", "result"],
            registry=r)
        self.cache_hits = self.cache_requests.labels("decision", "hit")
        self.cache_misses = self.cache_requests.labels("decision", "miss")
        self.shape_hits = self.cache_requests.labels("shape", "hit")
        self.shape_misses = self.cache_requests.labels("shape", "miss")
        self.http_seconds = Histogram(
            "pdp_http_request_duration_seconds", "HTTP request latency by route and status.",
            ["route", "method", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.facts_version = Gauge(
            "pdp_facts_version", "The facts_version this process answers from (with several "
            "workers: the lowest).", registry=r, multiprocess_mode="livemin")
        self.fact_writes = Counter(
            "pdp_fact_writes", "Committed fact writes by kind.", ["kind"], registry=r)
        self.policy_info = Gauge("pdp_policy_info", "The policy in force (value 1).",
                                 ["version"], registry=r, multiprocess_mode="livemax")
        self.audit_failures = Counter(
            "pdp_audit_write_failures", "Requests refused because the decision log could not "
            "be written.", registry=r)
        self.audit_records = Counter(
            "pdp_audit_records", "Records made durable in the decision log, by type.",
            ["type"], registry=r)
        self.audit_last_write = Gauge(
            "pdp_audit_last_write_timestamp_seconds",
            "When the decision log last committed records (Unix time).", registry=r,
            multiprocess_mode="livemax")
        self.audit_pending = Gauge(
            "pdp_audit_pending_records", "Durable decision-log records not yet moved from "
            "their segments into the indexed record chain.", registry=r,
            multiprocess_mode="livemax")
        self.facts_fresh = Gauge(
            "pdp_facts_fresh", "1 while the facts are confirmed current within the staleness "
            "bound, else 0 (decisions then answer 503).", registry=r, multiprocess_mode="livemin")
        self.facts_confirmed_age = Gauge(
            "pdp_facts_confirmed_age_seconds",
            "Seconds since the facts were last confirmed against the store.", registry=r,
            multiprocess_mode="livemax")
        self.grants = Gauge(
            "pdp_grants", "Rights by the state they are in now.", ["state"], registry=r,
            multiprocess_mode="mostrecent")
        self.cases_opened = Counter(
            "pdp_monitoring_cases_opened", "Misuse cases opened, by anomaly rule.", ["rule"],
            registry=r)
        self.cases_open = Gauge(
            "pdp_monitoring_cases_open", "Misuse cases open now.", registry=r,
            multiprocess_mode="mostrecent")
        self._warming(r)

    def _warming(self, r: CollectorRegistry) -> None:
        """Decisions worked out ahead of requests (pdp.engine.warming); not counted in
        the decision or cache metrics, which count what requests asked."""
        self.warm_requests = Counter(
            "pdp_warm_requests", "Likely requests whose policy answers were worked out "
            "ahead of any request.", registry=r)
        self.warm_queries = Counter(
            "pdp_warm_policy_queries", "Policy engine queries asked ahead of requests.",
            registry=r)
        self.warm_passes = Counter(
            "pdp_warm_passes", "Passes over the likely requests, by why (start, policy, "
            "facts) and whether they finished or were cut short.", ["why", "result"],
            registry=r)

    def expose(self) -> bytes:
        """The text exposition: of all workers when they share a multiprocess directory."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)

    def decision_counter(self, decision: bool, reason: str, purpose: str | None) -> Any:
        """The labelled child of pdp_decisions_total, looked up once per label set.
        A purpose outside the services is counted as "other": labels stay few."""
        label = purpose if purpose in PURPOSE_LABELS else ("none" if not purpose else "other")
        key = (decision, reason, label)
        child = self._decision_children.get(key)
        if child is None:
            child = self.decisions.labels("true" if decision else "false", reason, label)
            self._decision_children[key] = child
        return child

"""Every Prometheus metric of the service, in one place. Names follow Prometheus
conventions; labels never carry user or client ids."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """The service's metrics, registered in one registry (one per app)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "pdp_decisions", "Decisions made, by outcome and reason.",
            ["decision", "reason"], registry=r)
        self._decision_children: dict[tuple[bool, str], Any] = {}
        self.decision_seconds = Histogram(
            "pdp_decision_duration_seconds", "Time to decide one request (cache included).",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.policy_queries = Counter(
            "pdp_policy_queries", "Policy engine queries (decision-cache misses).", registry=r)
        self.cache_requests = Counter(
            "pdp_cache_requests", "Decision-cache lookups by result.", ["cache", "result"],
            registry=r)
        self.cache_hits = self.cache_requests.labels("decision", "hit")
        self.cache_misses = self.cache_requests.labels("decision", "miss")
        self.http_seconds = Histogram(
            "pdp_http_request_duration_seconds", "HTTP request latency by route and status.",
            ["route", "method", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.facts_version = Gauge(
            "pdp_facts_version", "The facts_version this process answers from.", registry=r)
        self.fact_writes = Counter(
            "pdp_fact_writes", "Committed fact writes by kind.", ["kind"], registry=r)
        self.policy_info = Info("pdp_policy", "The policy in force.", registry=r)
        self.audit_failures = Counter(
            "pdp_audit_write_failures", "Requests refused because the decision log could not "
            "be written.", registry=r)

    def decision_counter(self, decision: bool, reason: str) -> Any:
        """The labelled child of pdp_decisions_total, looked up once per label pair."""
        key = (decision, reason)
        child = self._decision_children.get(key)
        if child is None:
            child = self.decisions.labels("true" if decision else "false", reason)
            self._decision_children[key] = child
        return child

"""The running parts of one service process, built once from validated settings."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pdp.audit.log import AuditLog, AuditRecord, AuditUnavailable
from pdp.engine.core import check_policy
from pdp.engine.decider import Decider
from pdp.engine.facts_service import FactService
from pdp.engine.metrics import Metrics
from pdp.engine.policy_engine import (
    CompiledPolicy,
    PolicyError,
    load_policy,
    set_query_timeout,
)
from pdp.engine.policy_manager import PolicyManager, PolicyRejected, check_shapes
from pdp.engine.policy_sandbox import SandboxLimits
from pdp.engine.shadow import Candidates
from pdp.engine.warming import Warmer
from pdp.model.callers import Authenticator
from pdp.rights.lifecycle import GRANT_STATES, Lifecycle
from pdp.rights.monitoring import Cases, Monitor, MonitoringConfig, load_config
from pdp.service.settings import Settings
from pdp.store.bus import RedisBus
from pdp.store.protocols import StoreUnavailable
from pdp.store.sql import open_store

log = logging.getLogger(__name__)
STATE_COUNT_SECONDS = 30  # how long a count of rights by state may be reused by /metrics


@dataclass
class Runtime:
    settings: Settings
    facts: FactService
    decider: Decider[CompiledPolicy]
    metrics: Metrics
    auth: Authenticator
    lifecycle: Lifecycle
    audit: AuditLog | None
    cases: Cases
    monitoring: MonitoringConfig
    policies: PolicyManager
    candidates: Candidates
    # Works out decisions ahead of requests (None: PDP_WARM=false); pdp.service.background
    # runs its passes.
    warmer: Warmer | None = None
    # (facts_version, time slot) when the rights were last counted by state (gauges())
    counted: tuple[int, int] = field(default=(-1, -1), repr=False)

    @property
    def policy(self) -> CompiledPolicy:
        return self.decider.policy

    def readiness(self) -> dict[str, Any]:
        """What /readyz answers: ready when the facts are loaded and the store and the
        decision log answer; else the problems, named (blocking: it pings them)."""
        facts = self.facts
        problems = []
        if not facts.loaded:
            problems.append("facts not loaded")
        try:
            facts.store.ping()
        except StoreUnavailable as error:
            problems.append(f"store: {error}")
        if self.audit is not None:
            try:
                self.audit.ping()
            except AuditUnavailable as error:
                problems.append(f"decision log: {error}")
        return {"status": "ready" if not problems else "not_ready", "problems": problems,
                "policy_version": self.policy.version, "facts_version": facts.index.version,
                "facts_fresh": facts.fresh(),
                "bus": None if facts.bus is None else
                ("connected" if facts.bus.connected else "disconnected")}

    def gauges(self) -> None:
        """Bring the gauges /metrics shows up to date (blocking: it may read the store).
        Counting rights asks the policy for the state of each: at most every
        STATE_COUNT_SECONDS (or after a write), not at every scrape."""
        facts, metrics = self.facts, self.metrics
        metrics.facts_version.set(facts.index.version)
        metrics.facts_fresh.set(1 if facts.fresh() else 0)
        metrics.facts_confirmed_age.set(facts.confirmed_age())
        if self.audit is not None:
            with contextlib.suppress(AuditUnavailable):
                metrics.audit_pending.set(self.audit.pending_records())
        slot = (facts.index.version, int(time.monotonic() // STATE_COUNT_SECONDS))
        if slot != self.counted:
            self.counted = slot
            states: dict[str, int] = dict.fromkeys(GRANT_STATES, 0)
            for row in self.lifecycle.listing():
                states[row["state"]] = states.get(row["state"], 0) + 1
            for state, count in states.items():
                metrics.grants.labels(state).set(count)
            metrics.cases_open.set(self.cases.count_open())

    def close(self) -> None:
        if self.audit is not None:
            self.audit.stop()
        self.facts.close()


def count_records(metrics: Metrics, records: list[AuditRecord]) -> None:
    for record_type, count in Counter(record.record_type for record in records).items():
        metrics.audit_records.labels(record_type).inc(count)
    metrics.audit_last_write.set_to_current_time()


def load_checked_policy(settings: Settings) -> CompiledPolicy:
    set_query_timeout(settings.policy_query_timeout_ms)
    policy = load_policy(settings.policy_dir)
    check_policy(policy)
    try:  # what the reload gate checks too: shapes, and the stages against the whole
        check_shapes(policy)
    except PolicyRejected as error:
        raise PolicyError(error.message) from None
    return policy


def build_runtime(settings: Settings, keys: dict[str, Any]) -> Runtime:
    policy = load_checked_policy(settings)
    store = open_store(settings.store_url())
    bus = RedisBus(settings.redis_url, settings.redis_prefix) if settings.redis_url else None
    facts = FactService(store, bus, staleness_bound=settings.staleness_bound_seconds)
    facts.load()
    metrics = Metrics()
    metrics.policy_info.labels(policy.version).set(1)
    metrics.facts_version.set(facts.index.version)
    decider = Decider(policy, facts.index, cache_size=settings.decision_cache_size,
                      metrics=metrics, threads=settings.decision_threads)

    warmer = (Warmer(decider, facts.index, settings.warm_cpu_share, metrics)
              if settings.warm else None)

    def swap(new: CompiledPolicy) -> None:
        if warmer is not None and settings.warm_swap_seconds > 0:
            # The new version's answers for the likely requests, before it goes live (in
            # the reloading thread; the live version serves meanwhile). A failure here
            # is logged: the version goes live all the same, unwarmed.
            try:
                if warmer.full("policy", policy=new,
                               deadline=time.monotonic() + settings.warm_swap_seconds):
                    warmer.warmed_version = new.version  # no second pass over it
            except Exception:
                log.exception("warming policy %s before it goes live failed", new.version)
        decider.swap_policy(new)
        metrics.policy_info.clear()
        metrics.policy_info.labels(new.version).set(1)

    policies = PolicyManager.started(settings.policy_dir, policy, swap)
    if bus is not None:
        # Another replica put a policy version in force: follow it, off the bus thread.
        def follow(version: str) -> None:
            threading.Thread(target=policies.follow, args=(version,), name="pdp-policy",
                             daemon=True).start()

        bus.listen(facts.on_bus_changes, facts.on_bus_connect, follow)
    lifecycle = Lifecycle(lambda: decider.policy, facts,
                          max_grant_months=settings.max_grant_months,
                          recertification_days=settings.recertification_days,
                          notice_months=settings.notice_months,
                          register_before=settings.register_before)
    log.info("policy %s, facts_version %d", policy.version, facts.index.version)
    monitoring = load_config(settings.monitoring_rules or settings.policy_dir / "monitoring.yaml")
    cases = Cases(store.engine, store, on_open=lambda rule: metrics.cases_opened.labels(rule).inc())
    audit = AuditLog(store.engine, index_delay=settings.audit_index_delay_seconds,
                     max_pending=settings.audit_max_pending_records) if settings.audit_log else None
    if audit is not None:
        audit.listeners.append(lambda records: count_records(metrics, records))
        audit.move_listeners.append(Monitor(monitoring, facts.index, cases))
        audit.start()
    candidates = Candidates(settings.policy_dir, facts.index, metrics,
                            settings.shadow_sample_rate, settings.shadow_queue_size,
                            SandboxLimits(settings.sandbox_query_ms, settings.sandbox_cpu_seconds,
                                          settings.sandbox_memory_mb * 1024 * 1024),
                            settings.candidate_budget_seconds)
    decider.shadow = candidates  # the decision entry offers each decision to the shadow
    # Keys without a name are named by an HMAC of the token with a server secret.
    fingerprint_key = (settings.fingerprint_key.get_secret_value().encode()
                       if settings.fingerprint_key is not None
                       else store.deployment_secret("fingerprint_key"))
    auth = Authenticator(keys, fingerprint_key=fingerprint_key)
    return Runtime(settings, facts, decider, metrics, auth, lifecycle, audit,
                   cases, monitoring, policies, candidates, warmer=warmer)

"""Prometheus metrics on their own port. Names and labels come from ``proxy.telemetry``.

No ``*_created`` series (they double the output and nobody graphs them), and every counter with a known,
bounded label set exists from the start with zeros, so a dashboard or an alert sees 0 rather than no data.
Label children used per request are cached: ``labels()`` takes a lock and builds a key on every call.
"""

from __future__ import annotations

import threading
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from proxy import telemetry as t
from proxy.decision.facts import Decision
from proxy.model import AccessMode

prometheus_client.disable_created_metrics()

_LATENCY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = Counter(t.METRIC_DECISIONS, "NSP decisions made, by outcome.", t.DECISION_LABELS,
                                 registry=r)
        self.would_deny = Counter(t.METRIC_WOULD_DENY, "Requests that Enforced mode would deny but the "
                                  "association's mode (Transition or Audit) let through or left to the resource.",
                                  t.WOULD_DENY_LABELS, registry=r)
        self.latency = Histogram(t.METRIC_DECISION_SECONDS, "Time spent in the decision engine.", ("direction",),
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.errors = Counter(t.METRIC_DECISION_ERRORS, "Decisions that failed and fell back to the safe outcome.",
                              ("direction",), registry=r)
        self.reloads = Counter(t.METRIC_RELOADS, "Configuration loads, by result (success, failure).",
                               ("result",), registry=r)
        self.generation = Gauge(t.METRIC_GENERATION, "Generation of the configuration in force.", registry=r)
        self.log_records = Counter(t.METRIC_LOG_RECORDS, "Access-log records written.", registry=r)
        self.log_errors = Counter(t.METRIC_LOG_ERRORS, "Access-log records that could not be written, by reason "
                                  "(write: the file or pipe refused them; build: the record itself failed).",
                                  ("reason",), registry=r)
        self.log_dropped = Counter(t.METRIC_LOG_DROPPED, "Access-log records dropped: the queue was full, or "
                                   "they were still queued when the shutdown flush timed out.", registry=r)
        self.log_refused = Counter(t.METRIC_LOG_REFUSED, "Enforced requests refused with 503 because the access "
                                   "log could not take their record (fail closed).", registry=r)
        self.log_queue = Gauge(t.METRIC_LOG_QUEUE, "Access-log records waiting to be written.", registry=r)
        self.connections_refused = Counter(t.METRIC_CONNECTIONS_REFUSED, "Client connections closed on arrival "
                                           "because their listener had settings.maxClientConnections open.",
                                           registry=r)
        self.timeouts = Counter(t.METRIC_TIMEOUTS, "Connections or requests ended by a settings.timeouts timer.",
                                ("kind",), registry=r)
        self.decision_seconds = {direction: self.latency.labels(direction) for direction in t.DIRECTIONS}
        for direction in t.DIRECTIONS:
            self.errors.labels(direction)
        for result in t.RELOAD_RESULTS:
            self.reloads.labels(result)
        for reason in t.LOG_ERROR_REASONS:
            self.log_errors.labels(reason)
        for kind in t.TIMEOUT_KINDS:
            self.timeouts.labels(kind)
        self._children: dict[tuple, tuple[Any, Any]] = {}
        self._server: Any = None
        self._lock = threading.Lock()

    def observe(self, decision: Decision) -> None:
        key = (decision.direction, decision.allowed, decision.category, decision.mode, decision.profile,
               decision.resource, decision.would_deny)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = self._label_children(decision)
        decided, would_deny = children
        decided.inc()
        if would_deny is not None:
            would_deny.inc()
        if decision.error:
            self.errors.labels(decision.direction.value).inc()

    def _label_children(self, decision: Decision) -> tuple[Any, Any]:
        if len(self._children) > 10_000:  # bounded: label sets come from the configuration, but reloads add up
            self._children.clear()
        direction = decision.direction.value
        mode = decision.mode.value if decision.mode else "None"
        profile = decision.profile or ""
        resource = decision.resource or ""
        decided = self.decisions.labels(direction, "allowed" if decision.allowed else "denied",
                                        decision.category.value, mode, profile, resource)
        would_deny = None
        if decision.would_deny and decision.mode not in (None, AccessMode.ENFORCED):
            would_deny = self.would_deny.labels(direction, mode, profile, resource)
        return decided, would_deny

    def serve(self, host: str, port: int, health: Any = None) -> None:
        """Serve /metrics (and /healthz from ``health``, see ``proxy.records.health``) on ``host:port``."""
        from proxy.records.health import start_server

        with self._lock:
            if self._server is None:
                self._server = start_server(host, port, self.registry, health)

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None

"""Prometheus metrics on their own port. Names and labels come from ``proxy.telemetry``."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from proxy import telemetry as t
from proxy.decision import Decision
from proxy.model import AccessMode

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
        self.log_errors = Counter(t.METRIC_LOG_ERRORS, "Access-log records that could not be written.", registry=r)
        self._server: Any = None
        self._lock = threading.Lock()

    def observe(self, decision: Decision) -> None:
        direction = decision.direction.value
        mode = decision.mode.value if decision.mode else "None"
        profile = decision.profile or ""
        resource = decision.resource or ""
        self.decisions.labels(direction, "allowed" if decision.allowed else "denied", decision.category.value, mode,
                              profile, resource).inc()
        if decision.would_deny and decision.mode not in (None, AccessMode.ENFORCED):
            self.would_deny.labels(direction, mode, profile, resource).inc()
        if decision.error:
            self.errors.labels(direction).inc()

    def serve(self, host: str, port: int) -> None:
        with self._lock:
            if self._server is None:
                self._server, _thread = start_http_server(port, addr=host, registry=self.registry)

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None

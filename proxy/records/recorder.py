"""From decisions to queued access-log lines: one record per decision, counted whichever way it goes.

``record`` builds, encodes and queues a record at once (denials, tunnels). An allowed HTTP request's record is
``defer``-red instead and ``complete``-d when the request's outcome is known (the upstream's status, or the
502/504 the proxy answered), so that it is still one record and it says what happened; pending records are
written at shutdown too. Nothing here blocks: the writer thread does the I/O (``proxy.records.logwriter``).

A perimeter's logging configuration (``enabledLogCategories``) filters here, after the decision is counted and
before the record is built: a category it does not enable is not written (``category_enabled``).

Counts: ``nsp_decisions_total`` moves when a record is submitted; each submitted record then ends up in exactly
one of ``nsp_access_log_records_total`` (written), ``nsp_access_log_errors_total`` (write or build failed) or
``nsp_access_log_dropped_total`` (queue full, or still queued when the shutdown flush timed out); an aggregated
line counts as the Count records it stands for.

Shape (``settings.accessLogFormat``): the NSPAccessLogs table's columns, or the diagnostic-settings JSON
(``proxy.records.logformats``). With ``settings.accessLogAggregation`` on, built records go through
``proxy.records.aggregation`` first and are formatted and queued when their window ends.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from proxy.decision.facts import Decision, InboundFacts, OutboundFacts
from proxy.model import AccessMode, Settings
from proxy.policy.compiled import Policy
from proxy.records.accesslog import build_record, encode_record, perimeter_id
from proxy.records.aggregation import Aggregator
from proxy.records.logformats import diagnostic_record
from proxy.records.logwriter import DEFAULT_FLUSH_TIMEOUT, DEFAULT_QUEUE_SIZE, AccessLogWriter
from proxy.telemetry import LOG_FORMAT_DIAGNOSTIC, PARAM_UPSTREAM_ERROR, PARAM_UPSTREAM_STATUS, Category

log = logging.getLogger("nsp-proxy")

ERROR_LOG_INTERVAL = 5.0  # seconds between two stderr lines about failing writes (each failure is counted)

Facts = InboundFacts | OutboundFacts


class Recorder:
    def __init__(self, metrics: Any, target: str, *, queue_size: int = DEFAULT_QUEUE_SIZE,
                 flush_timeout: float = DEFAULT_FLUSH_TIMEOUT):
        self.metrics = metrics
        self.queue_size, self.flush_timeout = queue_size, flush_timeout
        self.records_written = 0  # by every writer this recorder had (reloads and SIGHUP replace the writer)
        self._count_lock = threading.Lock()
        self._last_error_log: dict[str, float] = {}  # what was complained about -> when (each kind limited)
        self._said_recovered = False  # the last word on stderr about the writer's state was "writing again"
        self._pending: dict[Any, tuple[Decision, Facts, Policy, dict[str, Any]]] = {}
        self._diagnostic = False
        self._aggregator: Aggregator | None = None
        self.writer = self._open(target)
        metrics.log_queue.set_function(lambda: self.writer.depth())

    # -- recording --------------------------------------------------------------------------------------------

    def record(self, decision: Decision, facts: Facts, policy: Policy, details: dict[str, Any]) -> bool:
        """Queue the record now. True when it was taken by a healthy log (or its category is not enabled for
        its perimeter); False tells an Enforced gate to refuse what it was about to let through."""
        self.metrics.observe(decision)
        if not category_enabled(decision, policy):
            return True
        try:
            record = build_record(decision, facts, policy, **details)
            context = perimeter_id(policy, decision) if self._diagnostic else ""
            if self._aggregator is not None:
                self._aggregator.add(record, context)
                return self.writer.accepting()
            line = self._encode(record, context)
        except Exception:  # a record that cannot be built must not take the decision with it
            log.exception("access log: could not build the record")
            self.metrics.log_errors.labels("build").inc()
            return False
        return self._submit(line, 1)

    def _encode(self, record: dict[str, Any], context: str) -> bytes:
        return encode_record(diagnostic_record(record, context) if self._diagnostic else record)

    def _submit(self, line: bytes, weight: int) -> bool:
        healthy = self.writer.healthy
        if self.writer.submit(line, weight):
            return healthy
        self.metrics.log_dropped.inc(weight)
        self._complain("full", f"access log: queue full ({self.writer.capacity} records), {weight} record(s) "
                               "dropped; Enforced associations refuse requests with 503 while it is full")
        return False

    def _emit(self, record: dict[str, Any], context: str) -> None:
        """An aggregated record whose window ended (the aggregator's timer thread, or the loop)."""
        try:
            line = self._encode(record, context)
        except Exception:
            log.exception("access log: could not build the record")
            self.metrics.log_errors.labels("build").inc(record["Count"])
            return
        self._submit(line, record["Count"])

    def configure(self, settings: Settings) -> None:
        """Apply settings.accessLogFormat and settings.accessLogAggregation (at start and on reload: what is
        aggregated so far is written in the old shape first)."""
        window = settings.access_log_aggregation
        if self._aggregator is not None and self._aggregator.window != window:
            self._aggregator.close()
            self._aggregator = None
        self._diagnostic = settings.access_log_format == LOG_FORMAT_DIAGNOSTIC
        if window > 0 and self._aggregator is None:
            self._aggregator = Aggregator(window, self._emit, max_groups=self.queue_size)

    def accepting(self) -> bool:
        return self.writer.accepting()

    @staticmethod
    def fails_closed(decision: Decision) -> bool:
        """Enforced refuses what it cannot record; Transition and Audit serve and count."""
        return decision.mode is AccessMode.ENFORCED

    def refuse(self, decision: Decision, facts: Facts, policy: Policy, details: dict[str, Any],
               why: str, status: int | None = 503) -> None:
        """An Enforced request the log could not take: it is answered ``status`` (503; None for a DNS query,
        answered REFUSED); its record is still attempted (when it is written, the log has recovered)."""
        self.metrics.log_refused.inc()
        self.record(decision, facts, policy, _with_outcome(details, status, why))

    def admit(self, decision: Decision, facts: Facts, policy: Policy, details: dict[str, Any]) -> bool:
        """Record a connection's decision now; False when Enforced must refuse what it allowed because the log
        cannot take the record (then refused, counted, and the record says so, as ``refuse``)."""
        if decision.allowed and self.fails_closed(decision) and not self.accepting():
            self.refuse(decision, facts, policy, details, "access log unavailable", status=None)
            return False
        return self.record(decision, facts, policy, details) or not self.fails_closed(decision)

    def withholds(self, key: Any) -> bool:
        """Whether the answer to the deferred request ``key`` must be withheld: Enforced let it through while
        the log was writable, and now it cannot take its record. Counted as a refused request."""
        pending = self._pending.get(key)
        if pending is None or not self.fails_closed(pending[0]) or self.accepting():
            return False
        self.metrics.log_refused.inc()
        return True

    def defer(self, key: Any, decision: Decision, facts: Facts, policy: Policy, details: dict[str, Any]) -> None:
        self._pending[key] = (decision, facts, policy, details)

    def complete(self, key: Any, status: int | None = None, error: str | None = None) -> bool | None:
        """Write the deferred record of ``key`` with its outcome (None: there was none pending)."""
        pending = self._pending.pop(key, None)
        if pending is None:
            return None
        decision, facts, policy, details = pending
        return self.record(decision, facts, policy, _with_outcome(details, status, error))

    def pending(self) -> int:
        return len(self._pending)

    # -- the writer -------------------------------------------------------------------------------------------

    def _open(self, target: str) -> AccessLogWriter:
        return AccessLogWriter(target, queue_size=self.queue_size, on_written=self._written,
                               on_failed=self._failed, on_state=self._state)

    def replace(self, target: str) -> None:
        """Open ``target`` (OSError if it cannot be) and write there from now on; the old writer finishes its
        queue by itself."""
        writer = self._open(target)
        if self._aggregator is not None:
            self._aggregator.flush()  # what was aggregated so far belongs to the old file
        old, self.writer = self.writer, writer
        self.metrics.log_dropped.inc(old.close(timeout=0))

    def close(self, why: str = "proxy shut down before the request completed") -> None:
        """Write every pending record, then flush the queue (at most ``flush_timeout`` seconds)."""
        for key in list(self._pending):
            self.complete(key, None, why)
        if self._aggregator is not None:
            self._aggregator.close()
            self._aggregator = None  # a record after this goes to the closed writer: counted as dropped
        lost = self.writer.close(self.flush_timeout)
        if lost:
            self.metrics.log_dropped.inc(lost)
            log.error("access log: %d record(s) still queued after %.1fs (the reader of %s is not reading); "
                      "dropped", lost, self.flush_timeout, self.writer.target)

    def _written(self, count: int) -> None:  # writer thread
        with self._count_lock:
            self.records_written += count
        self.metrics.log_records.inc(count)

    def _failed(self, count: int, error: OSError) -> None:  # writer thread
        self.metrics.log_errors.labels("write").inc(count)
        self._complain("write", f"access log: cannot write to {self.writer.target}: {error.strerror or error}; "
                                f"{count} record(s) lost")

    def _state(self, healthy: bool, error: OSError | None) -> None:  # writer thread
        """Says when Enforced starts and stops failing closed because the log cannot be written."""
        if healthy:
            self._said_recovered = self._complain(
                "recovered", f"access log: writing to {self.writer.target} again; Enforced associations serve "
                             "requests again", logging.WARNING) or self._said_recovered
        else:
            if self._said_recovered:  # stderr must never end on "again" while writes fail
                self._last_error_log.pop("failing", None)
                self._said_recovered = False
            why = (error.strerror if error else None) or error
            self._complain("failing", f"access log: writes to {self.writer.target} fail ({why}): until one "
                                      "succeeds, Enforced associations refuse every request they would let "
                                      "through with 503 (fail closed); Transition and Audit serve and count "
                                      "the lost records")

    def _complain(self, kind: str, message: str, level: int = logging.ERROR) -> bool:
        """One stderr line per ``kind`` per ERROR_LOG_INTERVAL (each failure is counted all the same); True
        when this one was printed."""
        now = time.monotonic()
        if now - self._last_error_log.get(kind, -ERROR_LOG_INTERVAL) < ERROR_LOG_INTERVAL:
            return False
        self._last_error_log[kind] = now
        log.log(level, "%s (counted in the nsp_access_log_* metrics; repeats are not printed for %.0fs)",
                message, ERROR_LOG_INTERVAL)
        return True


def category_enabled(decision: Decision, policy: Policy) -> bool:
    """Whether the decision's category is written: a perimeter's ``loggingConfiguration.enabledLogCategories``
    chooses them, as in Azure (metrics count every decision all the same). nsp-proxy's own
    NspProxyRequestRefused and decisions of no perimeter are always written."""
    enabled = policy.log_categories.get((decision.perimeter or "").lower()) if policy.log_categories else None
    return enabled is None or decision.category is Category.PROXY_REQUEST_REFUSED or decision.category in enabled


def _with_outcome(details: dict[str, Any], status: int | None, error: str | None) -> dict[str, Any]:
    if status is None and not error:
        return details
    params = dict(details.get("destination_parameters") or {})
    if status is not None:
        params[PARAM_UPSTREAM_STATUS] = status
    if error:
        params[PARAM_UPSTREAM_ERROR] = error
    return {**details, "destination_parameters": params}

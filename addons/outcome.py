"""mitmproxy addon: each allowed HTTP request's one record says what happened to it, and every response the
proxy makes itself is well formed.

Gates call ``record_request`` where they used to call ``runtime.record`` (same arguments, plus the flow):
  - a denial (and a CONNECT) is recorded at once, as before;
  - an allowed request's record waits for the outcome: the upstream's response headers, the response the proxy
    made, or the error (connection refused: 502, timeout: 504, client gone); the record then carries
    DestinationParameters ``upstreamStatus``/``upstreamError``. ResultAction stays Approved: NSP approved it.
    A record still pending at shutdown is written by ``Runtime.close``;
  - in Enforced mode, a request whose record the access log cannot take (queue full, or the last write failed)
    is refused with 503 (fail closed) and counted in ``nsp_access_log_refused_requests_total``; one let through
    before the log started failing has its upstream's answer withheld (the connection is closed) when the
    log cannot take the record by the time that answer's headers arrive.

Responses: a HEAD request's response never has a body (a denial's body would corrupt the keep-alive connection:
the client reads it as the next response), and a response without ``Date`` gets one (RFC 9110 6.6.1).
"""

from __future__ import annotations

from typing import Any

from mitmproxy import connection, http

from addons import errorpages
from proxy.decision.denials import http_date
from proxy.decision.facts import Decision, InboundFacts, OutboundFacts
from proxy.runtime import Runtime

PENDING = "nsp_pending_record"  # flow.metadata key: the Recorder holding this flow's deferred record
TIMEOUT = "nsp_timeout"  # flow.metadata key set by addons.limits: which timer ended the request
WITHHELD = "access log unavailable: the upstream's answer was withheld (fail closed)"
_UNAVAILABLE = b"nsp-proxy: the access log cannot take this request's record; refused (fail closed)\n"


def record_request(runtime: Runtime, flow: http.HTTPFlow, decision: Decision, facts: InboundFacts | OutboundFacts,
                   **details: Any) -> bool:
    """``runtime.record`` for an HTTP request: deferred to the request's outcome when it is allowed. False
    when the request was refused because its record could not be taken (``flow.response`` is then set)."""
    recorder = runtime.recorder
    if decision.allowed and recorder.fails_closed(decision) and not recorder.accepting():
        recorder.refuse(decision, facts, decision.policy or runtime.policy, details, "access log unavailable")
        flow.response = http.Response.make(503, _UNAVAILABLE, {"content-type": "text/plain; charset=utf-8",
                                                               "retry-after": "1"})
        return False
    if not decision.allowed or flow.request.method == "CONNECT":
        return runtime.record(decision, facts, **details)
    recorder.defer(flow.id, decision, facts, decision.policy or runtime.policy, details)
    flow.metadata[PENDING] = recorder
    return True


class Outcome:
    """Completes deferred records and tidies the responses the proxy makes itself. Runs after the gates."""

    def __init__(self) -> None:
        self.open: dict[str, dict[str, http.HTTPFlow]] = {}  # client id -> its flows with a pending record

    def load(self, _loader: Any) -> None:
        errorpages.install()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if PENDING in flow.metadata:
            self.open.setdefault(flow.client_conn.id, {})[flow.id] = flow

    def client_disconnected(self, client: connection.Client) -> None:
        """A flow whose end no hook reported still gets its record when its client is gone."""
        for flow in self.open.pop(client.id, {}).values():
            _complete(flow, None, "client disconnected")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            return
        recorder = flow.metadata.get(PENDING)
        if recorder is not None and recorder.withholds(flow.id):
            # Enforced, and the log started failing while the upstream answered: its answer never reaches the
            # client (the connection is closed); the record says so and is attempted like a refused one's.
            self._complete(flow, None, WITHHELD)
            flow.kill()
            return
        self._complete(flow, flow.response.status_code, None)

    def response(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None:
            return
        self._complete(flow, response.status_code, None)  # a response set by an addon has no responseheaders
        if flow.request.method == "HEAD" and response.raw_content:
            response.raw_content = b""  # headers (Content-Length included) as for GET, no body
        if "date" not in response.headers:
            response.headers["date"] = http_date()

    def error(self, flow: http.HTTPFlow) -> None:
        status, reason = errorpages.outcome(flow.error.msg if flow.error else "", flow.metadata.get(TIMEOUT))
        if status == 504:
            errorpages.answer_with(504)  # the page mitmproxy sends next (a 502 by default) says 504
        if PENDING in flow.metadata:
            self._complete(flow, status, reason)

    def _complete(self, flow: http.HTTPFlow, status: int | None, error: str | None) -> None:
        flows = self.open.get(flow.client_conn.id)
        if flows is not None:
            flows.pop(flow.id, None)
        _complete(flow, status, error)


def _complete(flow: http.HTTPFlow, status: int | None, error: str | None) -> None:
    recorder = flow.metadata.pop(PENDING, None)
    if recorder is not None:
        recorder.complete(flow.id, status, error)

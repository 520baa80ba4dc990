"""mitmproxy addons: wire hygiene on every nsp-proxy listener, inbound and forward.

``WireGuard`` runs before the gates. At ``requestheaders`` (and ``http_connect``) it refuses, with one
``NspProxyRequestRefused`` record and no rule consulted, what mitmproxy refused itself but still showed to the
hooks (both Content-Length and Transfer-Encoding, a space before a colon, an invalid Content-Length) and what
mitmproxy would forward but must not (``proxy.decision.wire.check_head``: limits, obs-fold, PRI, two Authorization
headers). It then puts what is forwarded into one unambiguous form: origin-form targets on reverse listeners,
no ``Upgrade: h2c``, and HTTP/2 requests framed as HTTP/1.1 (Content-Length or chunked) so that a body can never
be read upstream as a request of its own. The gates then decide on exactly what will be sent.

``WireFinish`` runs after the gates: a request answered at ``requestheaders`` (denied or refused) never gets
``100 Continue`` and its body is never read (``addons.early``); an allowed one streams its body both ways.
"""

from __future__ import annotations

import logging

from mitmproxy import http
from mitmproxy.addonmanager import Loader
from mitmproxy.net.http.http1 import expected_http_body_size
from mitmproxy.net.http.validate import validate_headers
from mitmproxy.proxy.mode_specs import ReverseMode

from addons import early
from addons.failsafe import REFUSED, fail_closed_flow
from addons.inbound import NAMED_AUTHORITY, inbound_facts
from addons.lifecycle import NspLifecycle
from proxy.decision.clientip import canonical_ip
from proxy.decision.engine import attribute_outbound
from proxy.decision.facts import OutboundFacts
from proxy.decision.wire import (
    BAD_REQUEST,
    UPGRADE_COMPANIONS,
    Refusal,
    check_head,
    kept_connection,
    kept_upgrade,
    refusal_decision,
)
from proxy.model import Direction, Settings
from proxy.runtime import Runtime

log = logging.getLogger("nsp-proxy")


class WireGuard:
    def __init__(self, lifecycle: NspLifecycle):
        self.lifecycle = lifecycle

    def load(self, loader: Loader) -> None:
        early.install(self._head_limit)

    def _head_limit(self) -> int:
        runtime = self.lifecycle.runtime
        return runtime.policy.config.settings.max_header_bytes if runtime else Settings().max_header_bytes

    @fail_closed_flow
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        direction = self.lifecycle.gate_for(flow.client_conn)
        runtime = self.lifecycle.runtime
        if direction is None or runtime is None:
            return
        refusal = _refusal(flow, runtime)
        if refusal is not None:
            _refuse(flow, runtime, direction, refusal)
            return
        _strip_upgrade(flow.request)
        if direction is Direction.INBOUND and isinstance(flow.client_conn.proxy_mode, ReverseMode):
            _origin_form(flow)
        if flow.client_conn.alpn == b"h2":
            _as_http11(flow.request)

    @fail_closed_flow
    def http_connect(self, flow: http.HTTPFlow) -> None:
        direction = self.lifecycle.gate_for(flow.client_conn)
        runtime = self.lifecycle.runtime
        if direction is not None and runtime is not None and (refusal := _refusal(flow, runtime)) is not None:
            _refuse(flow, runtime, direction, refusal)

    def request(self, flow: http.HTTPFlow) -> None:
        """HTTP/2 request trailers cannot be sent to an HTTP/1 upstream (mitmproxy's handler crashes on them):
        they are dropped. Nothing in them was ever decided on."""
        if flow.request.trailers and flow.server_conn.alpn != b"h2" and self._ours(flow):
            log.info("nsp-proxy: dropped request trailers %s (HTTP/1 upstream)", list(flow.request.trailers))
            flow.request.trailers = None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and self._ours(flow):
            flow.response.stream = nonempty  # never hold a response body in memory

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and flow.response.trailers and flow.client_conn.alpn != b"h2" \
                and self._ours(flow):
            flow.response.trailers = None  # an HTTP/1 client cannot be sent HTTP/2 trailers

    def _ours(self, flow: http.HTTPFlow) -> bool:
        return self.lifecycle.gate_for(flow.client_conn) is not None


class WireFinish:
    """After the gates: what an answered request must not get, and how an allowed one travels."""

    def __init__(self, lifecycle: NspLifecycle):
        self.lifecycle = lifecycle

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.lifecycle.gate_for(flow.client_conn) is None:
            return
        if flow.response is not None:
            # Answered here (denied, refused, failed closed): the caller must not be told to send its body.
            flow.request.headers.pop("expect", None)
            return
        flow.request.stream = nonempty  # the body goes upstream as it arrives, never held whole in memory


def nonempty(data: bytes) -> list[bytes]:
    """A streamed body's pieces, without empty ones: mitmproxy writes an empty piece to a chunked HTTP/1 peer as
    ``0\r\n\r\n``, the end of the body, so an empty HTTP/2 DATA frame in the middle of a request would end
    it early and the rest would be read upstream as the next request."""
    return [data] if data else []


# -- refusing -------------------------------------------------------------------------------------------------


def _refusal(flow: http.HTTPFlow, runtime: Runtime) -> Refusal | None:
    if flow.error is not None:
        # mitmproxy refused the request itself (validate_inbound_headers) and shows it to this hook before
        # answering 400: nothing is forwarded, so it must not be logged as decided.
        return Refusal(BAD_REQUEST, f"mitmproxy refused it: {flow.error.msg.split('. Disable', 1)[0]}")
    request = flow.request
    try:
        expected_http_body_size(request)  # raises where mitmproxy answers 400 itself (the hook still runs)
        validate_headers(request)  # what mitmproxy checks unless validate_inbound_headers is turned off
    except ValueError as exc:
        return Refusal(BAD_REQUEST, f"invalid framing: {exc}")
    h2 = flow.client_conn.alpn == b"h2"  # how it came, not what its request line claims ("GET / HTTP/2.0")
    data = request.data
    if h2 or not data.authority:
        target = data.path
    elif request.method == "CONNECT":
        target = data.authority
    else:  # absolute form, counted as the caller sent it
        target = data.scheme + b"://" + data.authority + data.path
    return check_head(request.method, target, request.headers.fields, runtime.policy.config.settings,
                      http_version=request.http_version, h2_authority=data.authority if h2 else None)


def _refuse(flow: http.HTTPFlow, runtime: Runtime, direction: Direction, refusal: Refusal) -> None:
    """One NspProxyRequestRefused record, the refusal as the answer, and the gates told to stay out."""
    request = flow.request
    path = request.path.split("?", 1)[0]
    if direction is Direction.INBOUND:
        facts, details = inbound_facts(runtime, flow)
        resource = facts.resource
        operation = f"CONNECT {request.data.authority.decode('latin-1')}" if request.method == "CONNECT" \
            else f"{request.method} {path}"
    else:
        peer_ip, peer_port = flow.client_conn.peername[:2]
        source_ip = canonical_ip(peer_ip)
        resource = attribute_outbound(runtime.policy, flow.client_conn.proxy_mode.custom_listen_port or 0,
                                      source_ip)
        facts = OutboundFacts(resource=resource, source_ip=source_ip, source_port=peer_port,
                              destination_host=request.host or "", destination_port=request.port or 0,
                              protocol="HTTPS" if flow.client_conn.tls else "HTTP")
        operation = f"{request.method} {request.host}:{request.port}" if request.method == "CONNECT" \
            else f"{request.method} {request.scheme}://{request.host}:{request.port}{path}"
        details = {}
    runtime.record(refusal_decision(runtime.policy, resource, direction, refusal), facts, operation=operation,
                   **details)
    flow.metadata[REFUSED] = refusal.status
    text = f"nsp-proxy: request refused ({refusal.status}): {refusal.reason}\n"
    flow.response = http.Response.make(refusal.status, text.encode("utf-8", "replace"),
                                       {"content-type": "text/plain; charset=utf-8", "connection": "close"})


# -- one unambiguous form -------------------------------------------------------------------------------------


def _strip_upgrade(request: http.Request) -> None:
    """``Upgrade: h2c`` (any case, alone or in a list) and its ``HTTP2-Settings`` never go upstream: after a
    101 the connection would carry requests nobody decided."""
    upgrades = request.headers.get_all("upgrade")
    if not upgrades:
        return
    kept = [k for value in upgrades if (k := kept_upgrade(value))]
    removed = {"upgrade"} if not kept else set()
    if kept != upgrades:
        request.headers.set_all("upgrade", kept)
    for companion in UPGRADE_COMPANIONS:
        request.headers.pop(companion, None)
        removed.add(companion)
    connection = request.headers.get_all("connection")
    if connection:
        values = [k for value in connection if (k := kept_connection(value, removed))]
        request.headers.set_all("connection", values)


def _origin_form(flow: http.HTTPFlow) -> None:
    """A reverse listener forwards origin-form only (path and query) to its own upstream; the authority an
    absolute-form target named is kept for the record."""
    request = flow.request
    if request.is_http2 or request.is_http3 or not request.data.authority:
        return
    flow.metadata[NAMED_AUTHORITY] = request.data.authority.decode("latin-1")
    request.authority = ""


def _as_http11(request: http.Request) -> None:
    """An HTTP/2 request in the form mitmproxy sends to an HTTP/1 upstream, made here where it can be framed:
    a request without Content-Length is sent chunked (an empty body is ``0\\r\\n\\r\\n``), so its body is never
    read as the next request. An HTTP/2 upstream gets the same request back as HTTP/2 (mitmproxy drops the
    connection-specific headers then)."""
    if "host" not in request.headers and request.data.authority:
        request.headers.insert(0, "Host", request.data.authority.decode("latin-1"))
    request.authority = ""
    cookies = request.headers.get_all("cookie")
    if len(cookies) > 1:
        request.headers["cookie"] = "; ".join(cookies)
    request.http_version = "HTTP/1.1"
    if "content-length" not in request.headers:
        request.headers["transfer-encoding"] = "chunked"
    request.headers["connection"] = "close"  # one request per upstream connection, as mitmproxy does for h2

"""mitmproxy addon: the inbound gate in front of each associated resource (reverse-proxy listeners).

``requestheaders`` is the earliest hook that knows both the caller and its subscription header; a denial set
there is answered at once, without ever opening a connection to the upstream, and the request body is never
read (``addons.early``). ``addons.wire`` has already refused malformed requests and put the rest into the form
that is forwarded (origin-form target, HTTP/1.1 framing), so the decision is made on what will be sent.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import http
from mitmproxy.net.http import url
from mitmproxy.proxy.mode_specs import ReverseMode
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from addons.failsafe import fail_closed_flow
from addons.lifecycle import NspLifecycle
from addons.outcome import record_request
from proxy.decision.claims import subscription_from_bearer
from proxy.decision.clientip import canonical_ip, effective_client_ip
from proxy.decision.denials import inbound_denial
from proxy.decision.facts import InboundFacts
from proxy.model import Direction
from proxy.runtime import Runtime

NAMED_AUTHORITY = "nsp-proxy.named-authority"  # flow.metadata (set by addons.wire): an absolute-form authority


class InboundGate:
    def __init__(self, lifecycle: NspLifecycle):
        self.lifecycle = lifecycle

    @fail_closed_flow
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        runtime = self.lifecycle.runtime
        if runtime is None or flow.request.method == "CONNECT":
            return  # mitmproxy refuses CONNECT on a reverse listener itself: nothing reaches the resource
        if self.lifecycle.gate_for(flow.client_conn) is not Direction.INBOUND:
            return  # not an inbound listener: the outbound gate's business
        facts, details = inbound_facts(runtime, flow)
        compiled = runtime.policy.association(facts.resource)
        decision = runtime.decide_inbound(facts)
        request = flow.request
        path, query = request.path, ""
        if "?" in path:  # the query is parsed only when there is one
            path, query = path.split("?", 1)[0], request.query.get("api-version", "")
        record_request(
            runtime, flow, decision, facts,
            operation=f"{request.method} {path}",
            operation_version=request.headers.get("x-ms-version") or query,
            **details,
        )
        if decision.allowed and self.lifecycle.rewrites_host_header and isinstance(flow.client_conn.proxy_mode,
                                                                                   ReverseMode):
            mode = flow.client_conn.proxy_mode
            request.host_header = url.hostport(mode.scheme, *mode.address)  # as mitmproxy's reverse mode does
        if not decision.allowed:
            assoc = compiled.association if compiled else None
            denial = inbound_denial(
                assoc.service_kind if assoc else "", decision, facts.source_ip,
                assoc.resource_id if assoc else "", compiled.perimeter.location if compiled else "",
                accept=request.query.get("$format") or request.headers.get("accept", ""),
            )
            flow.response = http.Response.make(denial.status, denial.body, dict(denial.headers))

    def server_connect(self, data: ServerConnectionHookData) -> None:
        """Defence in depth: an inbound listener only ever dials its own upstream."""
        runtime = self.lifecycle.runtime
        mode = data.client.proxy_mode
        if runtime is None or self.lifecycle.gate_for(data.client) is not Direction.INBOUND:
            return
        claimed = (mode.custom_listen_port or 0) in runtime.policy.inbound_ports
        if not claimed or not isinstance(mode, ReverseMode) or data.server.address != mode.address:
            data.server.error = f"nsp-proxy: an inbound listener only dials its upstream, not {data.server.address}"


def inbound_facts(runtime: Runtime, flow: http.HTTPFlow) -> tuple[InboundFacts, dict[str, Any]]:
    """What is known about an inbound request at ``requestheaders``, and the record's parameters.

    Shared with ``addons.wire``, whose refusal records name the caller the same way."""
    policy = runtime.policy
    # None on a listener no association claims any more: the engine denies it (fail closed).
    resource = policy.inbound_ports.get(flow.client_conn.proxy_mode.custom_listen_port or 0) or ""
    compiled = policy.association(resource)
    request = flow.request
    peer_ip, peer_port = flow.client_conn.peername[:2]
    peer = canonical_ip(peer_ip)
    source_ip = effective_client_ip(peer, request.headers.get_all("x-forwarded-for"), runtime.trusted_proxies)
    settings = policy.config.settings
    trusted = compiled is not None and compiled.association.local.trust_subscription_header
    claimed = request.headers.get(settings.subscription_header)
    if claimed is None and settings.subscription_from_token:
        authorization = request.headers.get_all("authorization")  # two of them are refused by addons.wire
        claimed = subscription_from_bearer(authorization[0]) if len(authorization) == 1 else None
    facts = InboundFacts(
        resource=resource,
        source_ip=source_ip,
        source_port=peer_port if source_ip == peer else 0,
        subscription=claimed if trusted else None,
        protocol="HTTPS" if flow.client_conn.tls else "HTTP",
        destination_port=flow.client_conn.sockname[1],
        host=request.host_header or "",
    )
    details: dict[str, Any] = {"source_parameters": {
        "subscription": claimed if trusted else None,
        "ignoredSubscriptionHeader": claimed if claimed and not trusted else None,
        "socketPeer": peer if source_ip != peer else None,
    }}
    named = flow.metadata.get(NAMED_AUTHORITY)
    if named:
        details["destination_parameters"] = {"requestTargetAuthority": named}
    return facts, details

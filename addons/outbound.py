"""mitmproxy addon: the outbound gate on forward-proxy listeners (plain HTTP and CONNECT).

Hooks, each the earliest that knows its fact:
  http_connect     the CONNECT host: decide, resolve with dnspython, pin the address (or refuse with 403)
  requestheaders   a plain forward request's absolute-URI host and Host header (or a Host header inside a tunnel)
  next_layer       the TLS ClientHello inside a tunnel: its SNI must name the CONNECT host; the tunnel is then
                   passed through untouched, or with settings.interceptTls decrypted by mitmproxy, so that
                   requestheaders checks the Host header inside TLS too (domain fronting)
  server_connect   every upstream connection: dialled only to the address pinned by a decision, else killed
"""

from __future__ import annotations

import logging
from dataclasses import replace

from mitmproxy import connection, http
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.layers.tls import parse_client_hello
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from addons.failsafe import fail_closed_flow
from addons.lifecycle import NspLifecycle
from addons.outcome import record_request
from proxy.decision import Decision, OutboundFacts
from proxy.denials import outbound_denial
from proxy.engine import attribute_outbound
from proxy.model import Direction
from proxy.normalize import canonical_destination, ip_literal_address, is_ip_literal
from proxy.resolver import ResolutionError
from proxy.runtime import Runtime

log = logging.getLogger("nsp-proxy")


class _Refuse(layer.Layer):
    """Closes the tunnel at once: what a refused SNI gets in Enforced mode."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start | events.DataReceived):
            yield commands.CloseConnection(self.context.client)
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)


class OutboundGate:
    def __init__(self, lifecycle: NspLifecycle):
        self.lifecycle = lifecycle
        self.pins: dict[str, dict[tuple[str, int], str]] = {}  # client id -> (host, port) -> address to dial
        self.tunnels: dict[str, OutboundFacts] = {}  # client id -> facts of its allowed CONNECT

    # -- hooks ------------------------------------------------------------------------------------------------

    @fail_closed_flow
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        runtime = self._runtime_for(flow.client_conn)
        if runtime is None:
            return
        facts = self._facts(runtime, flow.client_conn, flow.request.host, flow.request.port, "HTTPS")
        decision = await self._decide(runtime, flow.client_conn, facts, f"CONNECT {flow.request.host}:"
                                                                         f"{flow.request.port}", flow)
        if not decision.allowed:
            self._deny(flow, facts, decision)
        elif not self._pinned(flow.client_conn, facts):
            self._unreachable(flow, facts)
        else:
            self.tunnels[flow.client_conn.id] = facts

    @fail_closed_flow
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        runtime = self._runtime_for(flow.client_conn)
        if runtime is None:
            return
        request = flow.request
        tunnel = self.tunnels.get(flow.client_conn.id)
        if tunnel is not None:
            # HTTP inside an allowed tunnel (plain, or decrypted with interceptTls): the destination is fixed,
            # only a lying Host header is news.
            facts = replace(tunnel, protocol="HTTPS" if flow.client_conn.tls else "HTTP",
                            host_header=request.host_header)
            if _same_host(request.host_header, tunnel.destination_host):
                return
            decision = runtime.decide_outbound(facts)
            scheme = "https" if flow.client_conn.tls else "http"
            target = f"{scheme}://{tunnel.destination_host}:{tunnel.destination_port}{request.path}"
            record_request(runtime, flow, decision, facts, operation=f"{request.method} {target}")  # the tunnel's
        else:
            facts = self._facts(runtime, flow.client_conn, request.host, request.port, "HTTP",
                                host_header=request.host_header)
            decision = await self._decide(runtime, flow.client_conn, facts, f"{request.method} {request.scheme}://"
                                                                            f"{request.host}:{request.port}", flow)
        if not decision.allowed:
            self._deny(flow, facts, decision)
        elif tunnel is None and not self._pinned(flow.client_conn, facts):
            self._unreachable(flow, facts)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        try:
            self._check_tunnel(nextlayer)
        except Exception:
            log.exception("nsp-proxy: checking a tunnel's ClientHello failed; closing it")
            nextlayer.layer = _Refuse(nextlayer.context)

    def _check_tunnel(self, nextlayer: layer.NextLayer) -> None:
        tunnel = self.tunnels.get(nextlayer.context.client.id)
        runtime = self.lifecycle.runtime
        if tunnel is None or runtime is None or len(nextlayer.context.layers) < 2:
            return
        data = nextlayer.data_client()
        if not data or not starts_like_tls_record(data):
            return
        try:
            hello = parse_client_hello(data)
        except ValueError:
            return  # not really TLS: it goes, unread, to the pinned address like any other bytes
        if hello is None:
            nextlayer.layer = None  # ClientHello incomplete: ask again when more arrives
            return
        if hello.sni is not None and not _same_host(hello.sni, tunnel.destination_host):
            facts = replace(tunnel, sni=hello.sni)
            decision = runtime.decide_outbound(facts)
            runtime.record(decision, facts, operation=f"TLS {tunnel.destination_host}:{tunnel.destination_port}",
                           destination_parameters={"sni": hello.sni})
            if not decision.allowed:
                nextlayer.layer = _Refuse(nextlayer.context)
                return
        if not runtime.policy.config.settings.intercept_tls:
            nextlayer.layer = layers.TCPLayer(nextlayer.context, ignore=True)  # passed through unread
        # else: mitmproxy's own choice stands, its TLS layers decrypt, and requestheaders sees the Host header

    def server_connect(self, data: ServerConnectionHookData) -> None:
        try:
            if self._runtime_for(data.client) is None or data.server.address is None:
                return
            host, port = data.server.address[:2]
            pinned = self.pins.get(data.client.id, {}).get((str(host).lower(), port))
        except Exception:
            log.exception("nsp-proxy: server_connect check failed")
            pinned, host, port = None, "?", 0
        if pinned is None:
            data.server.error = f"nsp-proxy: no decision allowed a connection to {host}:{port}"
            return
        data.server.address = (pinned, port)
        runtime = self.lifecycle.runtime
        if runtime is not None and runtime.own_listener(pinned, port) == "reverse":
            # A perimeter member's listener on this proxy: mitmproxy's self-connect guard (which saw only the
            # name) must not stop the intra-perimeter call; loops into forward listeners were refused earlier.
            data.server.error = None

    def client_disconnected(self, client: connection.Client) -> None:
        self.pins.pop(client.id, None)
        self.tunnels.pop(client.id, None)

    # -- helpers ----------------------------------------------------------------------------------------------

    def _runtime_for(self, client: connection.Client) -> Runtime | None:
        """The runtime, if ``client`` came in on one of the configuration's forward-proxy listeners."""
        if self.lifecycle.gate_for(client) is not Direction.OUTBOUND:
            return None
        return self.lifecycle.runtime

    @staticmethod
    def _facts(runtime: Runtime, client: connection.Client, host: str, port: int, protocol: str,
               host_header: str | None = None) -> OutboundFacts:
        source_ip, source_port = client.peername[:2]
        source_ip = source_ip[7:] if source_ip.lower().startswith("::ffff:") and "." in source_ip else source_ip
        resource = attribute_outbound(runtime.policy, client.proxy_mode.custom_listen_port or 0, source_ip)
        # The one canonical form of the destination (A-label name, canonical address) that is decided, logged,
        # resolved and pinned; a name IDNA2008 refuses stays as sent and the engine denies it with the reason.
        return OutboundFacts(resource=resource, source_ip=source_ip, source_port=source_port,
                             destination_host=canonical_destination(host), destination_port=port,
                             protocol=protocol, host_header=host_header)

    async def _decide(self, runtime: Runtime, client: connection.Client, facts: OutboundFacts,
                      operation: str, flow: http.HTTPFlow) -> Decision:
        """Decide; if allowed, resolve and pin the address; write the one record. Denied names are never
        looked up, so a DNS query cannot carry data out either."""
        decision = runtime.decide_outbound(facts)
        details: dict[str, str] = {}
        if decision.allowed:
            host = facts.destination_host.strip("[]")
            try:
                if is_ip_literal(host):
                    addresses: tuple[str, ...] = (ip_literal_address(host),)
                else:
                    addresses = await runtime.resolver.resolve(host)
            except (ResolutionError, ValueError) as exc:
                addresses = ()
                details["resolutionError"] = str(exc)
            usable = runtime.resolver.usable(addresses)
            guard = None
            if addresses and not usable:
                guard = (f"{host} resolves to {', '.join(addresses)}, which is in "
                         "settings.blockedDestinationPrefixes")
            elif usable and runtime.own_listener(usable[0], facts.destination_port) not in (None, "reverse"):
                guard = f"{host}:{facts.destination_port} is this proxy's own listener (a forwarding loop)"
            if guard:
                decision = runtime.decide_outbound(replace(facts, refused_by_guard=guard))
            elif usable:
                self.pins.setdefault(client.id, {})[(host.lower(), facts.destination_port)] = usable[0]
                details["resolvedAddress"] = usable[0]
                if len(addresses) > 1:
                    details["resolvedAddresses"] = ",".join(addresses)
        record_request(runtime, flow, decision, facts, operation=operation, destination_parameters=details)
        return decision

    def _pinned(self, client: connection.Client, facts: OutboundFacts) -> bool:
        key = (facts.destination_host.strip("[]").lower(), facts.destination_port)
        return key in self.pins.get(client.id, {})

    @staticmethod
    def _unreachable(flow: http.HTTPFlow, facts: OutboundFacts) -> None:
        """Allowed, but the name has no address to dial: say so now rather than accept a dead tunnel."""
        text = (f"nsp-proxy: {facts.destination_host} could not be resolved; "
                "see the access log's DestinationParameters\n")
        flow.response = http.Response.make(502, text.encode(), {"content-type": "text/plain; charset=utf-8"})

    @staticmethod
    def _deny(flow: http.HTTPFlow, facts: OutboundFacts, decision: Decision) -> None:
        denial = outbound_denial(f"{facts.destination_host}:{facts.destination_port}", decision)
        flow.response = http.Response.make(denial.status, denial.body, dict(denial.headers))


def _same_host(value: str | None, host: str) -> bool:
    if value is None:
        return True
    text = value.strip().lower().rstrip(".")
    if text.startswith("["):
        text = text[1 : text.find("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    return text.rstrip(".") == host.strip("[]").lower().rstrip(".")

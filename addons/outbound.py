"""mitmproxy addon: the outbound gate on forward-proxy listeners (plain HTTP and CONNECT).

Hooks, each the earliest that knows its fact:
  http_connect     the CONNECT host: decide, resolve with dnspython, pin the address (or refuse with 403)
  requestheaders   a plain forward request: its absolute-URI host, Host header(s) and target; pinned, the request
                   is sent to the pinned address (the Host header stays), so mitmproxy reuses one upstream
                   connection per pinned destination. Inside a tunnel (plain, or decrypted with interceptTls):
                   every host the request names must be the tunnel's, and the request is decided again against
                   the generation in force
  next_layer       the TLS ClientHello inside a tunnel: its SNI, read from the raw bytes, must name the CONNECT
                   host; the tunnel is then passed through untouched, or with settings.interceptTls decrypted by
                   mitmproxy, so that requestheaders checks the hosts inside TLS too (domain fronting)
  server_connect   every upstream connection: dialled only to an address pinned by a decision, else killed
On the sidecar's transparent listener (``addons.transparent``) the first bytes decide a TLS or raw TCP
connection, and requestheaders decides plain HTTP by its Host header, against the same rules and guards.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from mitmproxy import connection, http
from mitmproxy.proxy import layer, layers
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from addons import transparent
from addons.failsafe import fail_closed_flow
from addons.gatebits import Incomplete, Refuse, hello_server_name, hostport, mitmproxy_decrypts, request_operation
from addons.lifecycle import NspLifecycle
from addons.outboundmemo import ConnectionMemo
from addons.outcome import record_request
from addons.requesthosts import named_hosts
from proxy.decision.denials import outbound_denial
from proxy.decision.engine import attribute_outbound
from proxy.decision.facts import Decision, OutboundFacts
from proxy.model import Direction
from proxy.names.clienthello import looks_like_tls
from proxy.names.hostport import same_host
from proxy.names.normalize import canonical_destination, ip_literal_address, is_ip_literal
from proxy.names.resolver import ResolutionError
from proxy.runtime import Runtime

log = logging.getLogger("nsp-proxy")

MAX_PINS_PER_CLIENT = 256  # destinations remembered per client connection (oldest dropped first)


class OutboundGate:
    def __init__(self, lifecycle: NspLifecycle):
        self.lifecycle = lifecycle
        self.pins: dict[str, dict[tuple[str, int], str]] = {}  # client id -> (host, port) -> address to dial
        self.names: dict[str, dict[tuple[str, int], str]] = {}  # client id -> (address, port) -> host pinned to it
        self.tunnels: dict[str, tuple[OutboundFacts, Decision]] = {}  # client id -> its allowed CONNECT
        self.memo = ConnectionMemo()  # a keep-alive connection's last facts and decision; own-listener answers

    # -- hooks ------------------------------------------------------------------------------------------------

    @fail_closed_flow
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        runtime = self._runtime_for(flow.client_conn)
        if runtime is None:
            return
        # A tunnel: what will flow in it is not seen yet (records inside it say HTTPS or HTTP once it is).
        facts = self._facts(runtime, flow.client_conn, flow.request.host, flow.request.port, "TCP")
        operation = f"CONNECT {hostport(flow.request.host, flow.request.port)}"
        decision = await self._decide(runtime, flow.client_conn, facts, operation, flow)
        if not decision.allowed:
            self._deny(flow, facts, decision)
        elif self._pinned(flow.client_conn, facts) is None:
            self._unreachable(flow, facts)
        else:
            self.tunnels[flow.client_conn.id] = (facts, decision)

    @fail_closed_flow
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        runtime = self._runtime_for(flow.client_conn)
        if runtime is None:
            return
        tunnel = self.tunnels.get(flow.client_conn.id)
        if tunnel is not None:
            self._in_tunnel(runtime, flow, *tunnel)
            return
        request = flow.request
        host_header = request.host_header
        host = transparent.destination(self.lifecycle, flow.client_conn, host_header) or request.host
        client, protocol = flow.client_conn, "HTTPS" if request.scheme == "https" else "HTTP"
        hosts = named_hosts(request, in_tunnel=False)
        facts = self.memo.facts(runtime, client.id, (host, request.port, protocol, host_header, hosts), lambda: (
            self._facts(runtime, client, host, request.port, protocol, host_header=host_header, named_hosts=hosts)))
        operation = request_operation(request.method, request.scheme, host, request.port, request.path)
        decision = await self._decide(runtime, flow.client_conn, facts, operation, flow)
        address = self._pinned(flow.client_conn, facts)
        if not decision.allowed:
            self._deny(flow, facts, decision)
        elif address is None:
            self._unreachable(flow, facts)
        else:
            _send_to(request, address)

    def _in_tunnel(self, runtime: Runtime, flow: http.HTTPFlow, tunnel: OutboundFacts, opened: Decision) -> None:
        """HTTP inside an allowed tunnel (plain, or decrypted with interceptTls): the destination is fixed, so
        every host the request names must be the tunnel's. The request is decided again against the generation
        in force (a reload may have removed the rule the tunnel was opened under) and recorded when that says
        something the tunnel's record did not: a denial, or a would-deny (Transition)."""
        request = flow.request
        tls = bool(flow.client_conn.tls)
        hosts = named_hosts(request, in_tunnel=True)
        facts = replace(tunnel, protocol="HTTPS" if tls else "HTTP", host_header=request.host_header,
                        named_hosts=hosts)
        # An IP-literal destination is decided by its address (the engine reads no names for it).
        mismatch = not is_ip_literal(tunnel.destination_host) and not all(
            same_host(value, tunnel.destination_host) for value in (request.host_header, *(v for _, v in hosts)))
        decision = runtime.decide_outbound(facts)
        if not decision.allowed or (decision.would_deny and (mismatch or not opened.would_deny)):
            operation = request_operation(request.method, "https" if tls else "http", tunnel.destination_host,
                                          tunnel.destination_port, request.path)  # the tunnel's, not the Host's
            record_request(runtime, flow, decision, facts, operation=operation)
        if not decision.allowed:
            self._deny(flow, facts, decision)
            return
        address = self._pinned(flow.client_conn, tunnel)
        if address is not None:
            _send_to(request, address)

    async def next_layer(self, nextlayer: layer.NextLayer) -> None:
        try:
            if transparent.is_transparent(nextlayer.context.client):
                await transparent.first_bytes(self, nextlayer)
            else:
                self._check_tunnel(nextlayer)
        except Exception:
            log.exception("nsp-proxy: checking a tunnel's ClientHello failed; closing it")
            nextlayer.layer = Refuse(nextlayer.context)

    def _check_tunnel(self, nextlayer: layer.NextLayer) -> None:
        """The first bytes of an allowed tunnel. A TLS ClientHello's server name (read from the raw bytes,
        ``proxy.names.clienthello``) must name the CONNECT host; one that is present but unreadable is a mismatch.
        A ClientHello without a server name is let through: the tunnel's host was decided at CONNECT and
        the bytes can only go to its pinned address."""
        found = self.tunnels.get(nextlayer.context.client.id)
        runtime = self.lifecycle.runtime
        if found is None or runtime is None or len(nextlayer.context.layers) < 2:
            return
        tunnel = found[0]
        data = nextlayer.data_client()
        if not looks_like_tls(data):
            return  # not TLS: it goes to the pinned address (HTTP in it is checked by requestheaders)
        sni = hello_server_name(nextlayer, data)
        if isinstance(sni, Incomplete):
            return
        if sni and not sni.startswith("<") and is_ip_literal(tunnel.destination_host):
            sni = None  # a tunnel to an address: any readable name reaches only that address
        intercept = runtime.policy.config.settings.intercept_tls
        if (sni is None or same_host(sni, tunnel.destination_host, with_port=False)) and intercept \
                and not mitmproxy_decrypts(data):
            # mitmproxy would pass it through unread (servers accept record versions it does not): the hosts
            # inside could not be checked, which is what interceptTls was asked for.
            sni = "<a ClientHello interceptTls cannot decrypt>"
        if sni is not None and not same_host(sni, tunnel.destination_host, with_port=False):
            facts = replace(tunnel, sni=sni, protocol="HTTPS")  # a TLS ClientHello was seen
            decision = runtime.decide_outbound(facts)
            operation = f"TLS {hostport(tunnel.destination_host, tunnel.destination_port)}"
            runtime.record(decision, facts, operation=operation,
                           destination_parameters={"sni": sni})
            if not decision.allowed:
                nextlayer.layer = Refuse(nextlayer.context)
                return
        if not intercept or not mitmproxy_decrypts(data):
            nextlayer.layer = layers.TCPLayer(nextlayer.context, ignore=True)  # passed through unread
        # else: mitmproxy's own choice stands, its TLS layers decrypt, and requestheaders sees the hosts

    def server_connect(self, data: ServerConnectionHookData) -> None:
        try:
            if self._runtime_for(data.client) is None or data.server.address is None:
                return
            host, port = data.server.address[:2]
            key = (canonical_destination(str(host)).strip("[]").lower(), port)  # as decided and pinned
            pinned = self.pins.get(data.client.id, {}).get(key)  # dialled by name: a tunnel's first connection
            if pinned is None and key in self.names.get(data.client.id, {}):
                pinned = key[0]  # dialled by the pinned address itself (requests are sent to it)
            name = self.names.get(data.client.id, {}).get((pinned, port)) if pinned else None
        except Exception:
            log.exception("nsp-proxy: server_connect check failed")
            pinned, name, host, port = None, None, "?", 0
        if pinned is None:
            data.server.error = f"nsp-proxy: no decision allowed a connection to {host}:{port}"
            return
        if pinned != host:
            data.server.address = (pinned, port)
        if data.server.tls and name and not is_ip_literal(name) and data.server.sni in (None, host, pinned):
            data.server.sni = name  # TLS to the name that was decided, not to the address it is dialled at
        runtime = self.lifecycle.runtime
        if runtime is not None and runtime.own_listener(pinned, port) == "reverse":
            # A perimeter member's listener on this proxy: mitmproxy's self-connect guard (which saw only the
            # name) must not stop the intra-perimeter call; loops into forward listeners were refused earlier.
            data.server.error = None

    def client_disconnected(self, client: connection.Client) -> None:
        self.pins.pop(client.id, None)
        self.names.pop(client.id, None)
        self.tunnels.pop(client.id, None)
        self.memo.forget(client.id)

    # -- helpers ----------------------------------------------------------------------------------------------

    def _runtime_for(self, client: connection.Client) -> Runtime | None:
        """The runtime, if ``client`` came in on one of the configuration's forward-proxy listeners."""
        if self.lifecycle.gate_for(client) is not Direction.OUTBOUND:
            return None
        return self.lifecycle.runtime

    @staticmethod
    def _facts(runtime: Runtime, client: connection.Client, host: str, port: int, protocol: str,
               host_header: str | None = None, named_hosts: tuple[tuple[str, str], ...] = ()) -> OutboundFacts:
        source_ip, source_port = client.peername[:2]
        source_ip = source_ip[7:] if source_ip.lower().startswith("::ffff:") and "." in source_ip else source_ip
        resource = attribute_outbound(runtime.policy, client.proxy_mode.custom_listen_port or 0, source_ip)
        return OutboundFacts(resource=resource, source_ip=source_ip, source_port=source_port,
                             destination_host=canonical_destination(host), destination_port=port, protocol=protocol,
                             host_header=host_header, named_hosts=named_hosts)

    async def _decide(self, runtime: Runtime, client: connection.Client, facts: OutboundFacts,
                      operation: str, flow: http.HTTPFlow | None) -> Decision:
        """Decide; if allowed, resolve and pin the address; write the one record (``flow`` None: a transparent
        connection's TLS or raw bytes, recorded at once). Denied names are never looked up, so a DNS query
        cannot carry data out either."""
        decision = self.memo.decision(runtime, client.id, facts)
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
            elif usable and self.memo.own_listener(runtime, usable[0], facts.destination_port) not in (None, "reverse"):
                guard = f"{host}:{facts.destination_port} is this proxy's own listener (a forwarding loop)"
            if guard:
                decision = runtime.decide_outbound(replace(facts, refused_by_guard=guard))
            elif usable:
                self._pin(client, host, facts.destination_port, usable[0])
                details["resolvedAddress"] = usable[0]
                if len(addresses) > 1:
                    details["resolvedAddresses"] = ",".join(addresses)
            if guard or not usable:  # never fall back on an address an earlier decision pinned for this name
                self.pins.get(client.id, {}).pop((host.lower(), facts.destination_port), None)
        if flow is not None:
            record_request(runtime, flow, decision, facts, operation=operation, destination_parameters=details)
        elif not runtime.recorder.admit(decision, facts, decision.policy or runtime.policy,
                                        {"operation": operation, "destination_parameters": details}):
            return replace(decision, allowed=False)  # the log cannot take it: no connection (as record_request)
        return decision

    def _pin(self, client: connection.Client, host: str, port: int, address: str) -> None:
        """Remember the address a decision allowed, per client connection, most recent last. Each request is
        pinned by its own decision just before it dials, so dropping the oldest entries beyond
        ``MAX_PINS_PER_CLIENT`` (a long-lived connection naming ever new hosts) never strands a request."""
        for table, key, value in ((self.pins, (host.lower(), port), address),
                                  (self.names, (address.lower(), port), host)):
            entries = table.setdefault(client.id, {})
            if entries and next(reversed(entries)) == key and entries[key] == value:
                continue  # already the most recent pin (a keep-alive connection to the same host)
            entries.pop(key, None)
            entries[key] = value
            while len(entries) > MAX_PINS_PER_CLIENT:
                del entries[next(iter(entries))]

    def _pinned(self, client: connection.Client, facts: OutboundFacts) -> str | None:
        """The address a decision pinned for the facts' destination, if any."""
        key = (facts.destination_host.strip("[]").lower(), facts.destination_port)
        return self.pins.get(client.id, {}).get(key)

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


def _send_to(request: http.Request, address: str) -> None:
    """Send ``request`` to the pinned ``address``, leaving the Host header and ``:authority`` as the client
    sent them. mitmproxy picks (and reuses) upstream connections by the request's host and port, so a pooled
    client's requests then share one connection to the pinned address instead of each opening a new one.

    ``request.data.host`` is set directly (a mitmproxy internal, a ``str`` in 11 and 12): the ``host``
    property's setter would also rewrite the Host header and ``:authority``, which must stay as they were."""
    request.data.host = address

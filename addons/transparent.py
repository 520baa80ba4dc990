"""The sidecar's transparent listener (``settings.transparent``): connections an nftables rule redirected here.

mitmproxy's transparent mode reads the original destination with ``SO_ORIGINAL_DST`` (``mitmproxy.platform.
linux.original_addr``, the same in mitmproxy 11 and 12) and puts it in ``client.sockname`` and
``context.server.address``. The connection is decided by the outbound gate (``addons.outbound``) with the same
rules, guards, pins and records as a forward-proxy request; what it is decided as:

  TLS       the ClientHello's server name (read from the raw bytes, ``proxy.names.clienthello``); the connection is
            then passed through unread to the address the name resolved to, never to the original destination
  HTTP      each request by its Host header (``OutboundGate.requestheaders``), sent to the name's address
  other     (and TLS without a server name, HTTP without Host) the name the DNS gate last answered with the
            original destination address (``proxy.names.dnsmemory``), else the address itself: an IP literal,
            which Enforced denies

A client naming an allowed host while dialling another address reaches the allowed host's address, not its own
choice, so the original destination can never carry data to an address no rule allows.

A connection made straight to the transparent listener (a port probe, a health check, a workload dialling the
proxy) was not redirected: it names no destination. mitmproxy logs that as an error (and an error while it
starts ends the process); ``DirectConnections`` instead takes the listener's own address as the destination
(``mitmproxy.platform.original_addr`` wrapped, the same in mitmproxy 11 and 12) and closes such a connection at
once, with one ``NspProxyRequestRefused`` record, in every mode.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mitmproxy import connection, platform
from mitmproxy.proxy import layer, layers
from mitmproxy.proxy.mode_specs import TransparentMode

from addons.gatebits import Incomplete, Refuse, hello_server_name, hostport
from proxy.decision.clientip import canonical_ip
from proxy.decision.engine import attribute_outbound
from proxy.decision.facts import OutboundFacts
from proxy.decision.wire import Refusal, refusal_decision
from proxy.model import Direction
from proxy.names.clienthello import looks_like_tls
from proxy.names.hostport import parse_authority
from proxy.names.normalize import is_ip_literal

if TYPE_CHECKING:
    from addons.lifecycle import NspLifecycle
    from addons.outbound import OutboundGate


def is_transparent(client: connection.Client) -> bool:
    return isinstance(client.proxy_mode, TransparentMode)


def original_destination(client: connection.Client) -> tuple[str, int]:
    """Where the client meant to connect before the redirect (``SO_ORIGINAL_DST``, set by mitmproxy)."""
    host, port = client.sockname[:2]
    host = host[7:] if host.lower().startswith("::ffff:") and "." in host else host
    return str(host), int(port)


def destination(lifecycle: NspLifecycle, client: connection.Client, named: str | None) -> str | None:
    """The host a transparent connection is decided as: ``named`` (SNI, or a Host header's host) when it is a
    name, else the name the DNS gate answered with the original address, else that address. None when
    ``client`` did not come in on a transparent listener."""
    if not is_transparent(client):
        return None
    if named:
        try:
            host = parse_authority(named)[0]
        except ValueError:
            host = None
        if host and not is_ip_literal(host):
            return host
    address = original_destination(client)[0]
    return lifecycle.answers.name_for(address) or address


async def first_bytes(gate: OutboundGate, nextlayer: layer.NextLayer) -> None:
    """Decide a transparent connection by its first bytes, unless they are HTTP (decided per request)."""
    context = nextlayer.context
    runtime = gate._runtime_for(context.client)
    top = context.layers[0] if context.layers else None
    if runtime is None or getattr(top, "child_layer", None) is not nextlayer:
        # Deeper layers (inside HTTP) are decided per request. The test is by identity: the layers mitmproxy's
        # own next_layer addon built (before ours runs) are already in context.layers.
        return
    data = nextlayer.data_client()
    if not data:
        nextlayer.layer = None  # nothing sent yet: ask again when something arrives
        return
    sni = None
    if looks_like_tls(data):
        sni = hello_server_name(nextlayer, data)
        if isinstance(sni, Incomplete):
            return
        protocol = "HTTPS"
    elif isinstance(nextlayer.layer, layers.HttpLayer):
        return  # mitmproxy reads it as HTTP: requestheaders decides each request by its Host
    else:
        protocol = "TCP"
    client = context.client
    _, port = original_destination(client)
    readable = sni if sni and not sni.startswith("<") else None
    host = destination(gate.lifecycle, client, readable)
    assert host is not None
    facts = gate._facts(runtime, client, host, port, protocol)
    if sni is not None and sni.startswith("<"):
        facts = replace(facts, sni=sni)  # unreadable: a mismatch, as in a tunnel
    operation = f"{'TLS' if protocol == 'HTTPS' else 'TCP'} {hostport(facts.destination_host, port)}"
    decision = await gate._decide(runtime, client, facts, operation, None)
    pinned = gate._pinned(client, facts) if decision.allowed else None
    if pinned is None:
        nextlayer.layer = Refuse(context)
        return
    context.server.address = (pinned, port)
    nextlayer.layer = layers.TCPLayer(context, ignore=True)  # passed through unread, to the decided address


NOT_REDIRECTED = "a connection straight to the transparent listener (not redirected: it names no destination)"


class DirectConnections:
    """Closes connections made straight to the transparent listener, each with one record (see the module)."""

    def __init__(self, lifecycle: NspLifecycle) -> None:
        self.lifecycle = lifecycle

    def load(self, _loader: Any) -> None:
        if platform.original_addr is not None and not getattr(platform.original_addr, "nsp_wrapped", False):
            platform.original_addr = _listener_if_not_redirected(platform.original_addr)

    def client_connected(self, client: connection.Client) -> None:
        runtime = self.lifecycle.runtime
        if runtime is None or not is_transparent(client):
            return
        host, port = original_destination(client)
        if port != runtime.policy.config.settings.transparent_listen_port or runtime.own_listener(host, port) is None:
            return
        client.error = f"nsp-proxy: {NOT_REDIRECTED}; closed"
        source_ip, source_port = canonical_ip(client.peername[0]), client.peername[1]
        resource = attribute_outbound(runtime.policy, port, source_ip)
        facts = OutboundFacts(resource=resource, source_ip=source_ip, source_port=source_port,
                              destination_host=host, destination_port=port, protocol="TCP")
        decision = refusal_decision(runtime.policy, resource, Direction.OUTBOUND, Refusal(0, NOT_REDIRECTED))
        runtime.record(replace(decision, reason=f"refused by nsp-proxy before any rule: {NOT_REDIRECTED}; "
                                                "the connection was closed"),
                       facts, operation=f"TCP {hostport(host, port)}")


def _listener_if_not_redirected(original: Callable[[socket.socket], tuple[str, int]],
                                ) -> Callable[[socket.socket], tuple[str, int]]:
    """``original_addr`` that answers the listener's own address for a connection no rule redirected (Linux:
    SO_ORIGINAL_DST fails with ENOENT), instead of raising (which mitmproxy logs as an error)."""

    def original_addr(sock: socket.socket) -> tuple[str, int]:
        try:
            return original(sock)
        except OSError:
            return sock.getsockname()[:2]

    original_addr.nsp_wrapped = True  # type: ignore[attr-defined]
    return original_addr

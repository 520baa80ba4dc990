"""Small pieces the outbound gates share: closing a refused connection, which ClientHellos mitmproxy decrypts,
and how operations and destinations are written in records."""

from __future__ import annotations

from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers.tls import parse_client_hello

from proxy.names.clienthello import server_name


class Incomplete:
    """``hello_server_name``'s answer while the ClientHello has not fully arrived (compared by identity: no
    name a client sends can be taken for it)."""


INCOMPLETE = Incomplete()


class Refuse(layer.Layer):
    """Closes the tunnel at once: what a refused SNI gets in Enforced mode."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start | events.DataReceived):
            yield commands.CloseConnection(self.context.client)
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)


def mitmproxy_decrypts(data: bytes) -> bool:
    """Whether mitmproxy's own TLS layers would take this ClientHello (else it would forward it unread)."""
    try:
        return starts_like_tls_record(data) and parse_client_hello(data) is not None
    except ValueError:
        return False


def hello_server_name(nextlayer: layer.NextLayer, data: bytes) -> str | Incomplete | None:
    """The server name of the TLS ClientHello at the start of ``data`` (``proxy.names.clienthello``, raw bytes): the
    name as shown, None when it names none, ``<not a readable ClientHello: ...>`` when it cannot be read (a
    mismatch for every caller), or ``INCOMPLETE``, after telling mitmproxy to ask again when more bytes arrive."""
    try:
        hello = server_name(data)
    except ValueError as exc:
        return f"<not a readable ClientHello: {exc}>"
    if hello is None:
        nextlayer.layer = None
        return INCOMPLETE
    return hello.shown if hello.present else None


def request_operation(method: str, scheme: str, host: str, port: int, path: str) -> str:
    """``GET http://host:port/path``: the method and the URL without its query, as inbound records keep the
    path without the query (a query can carry anything, a record should not)."""
    return f"{method} {scheme}://{hostport(host, port)}{path.split('?', 1)[0]}"


def hostport(host: str, port: int) -> str:
    """``host:port``, an IPv6 literal bracketed."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"

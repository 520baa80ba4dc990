"""Every host an HTTP request names, besides its destination, read from mitmproxy's parsed request.

A request can name a host in several places, and a server may act on any of them: the request target
(``GET http://other.test/`` in HTTP/1.1, an HTTP/2 ``:path`` holding a full URL), the ``:authority``
pseudo-header, and the ``Host`` header (possibly more than one). The gate checks each against the destination
it decided (``proxy.names.hostport.same_host``); this module only collects them, as ``(what, value)`` pairs.
"""

from __future__ import annotations

from mitmproxy import http

from proxy.names.hostport import url_authority


def named_hosts(request: http.Request, *, in_tunnel: bool) -> tuple[tuple[str, str], ...]:
    """The hosts ``request`` names other than its first ``Host`` header (which the facts carry as
    ``host_header``). ``in_tunnel``: mitmproxy replaced the request's host with the tunnel's; an absolute-form
    HTTP/1 target is then only left in ``authority``. On a forward listener mitmproxy has already taken the
    destination from the absolute-form target and cleared ``authority`` for HTTP/1."""
    found: list[tuple[str, str]] = []
    hosts = request.headers.get_all("host")
    if request.is_http2 or request.is_http3:
        if request.authority:
            found.append((":authority", request.authority))
        found.extend(("Host header", value) for value in hosts)
    else:
        if in_tunnel and request.authority:
            found.append(("request target", request.authority))
        found.extend(("Host header", value) for value in hosts[1:])
    target = url_authority(request.path)
    if target is not None:
        found.append(("request target", target))
    return tuple(found)

"""Who is really calling: the socket peer, unless that peer is a proxy the configuration trusts.

X-Forwarded-For is client-controlled text. It is read only when the socket peer is in ``trustedProxies``,
and then from the right: each hop appends, so the right-most address not itself a trusted proxy is the
first one an untrusted party could not have forged.
"""

from __future__ import annotations

import ipaddress

from proxy.indexes import PrefixIndex


def effective_client_ip(peer: str, forwarded_for: list[str], trusted: PrefixIndex[bool]) -> str:
    if not trusted or not forwarded_for or not _in(trusted, peer):
        return peer
    hops = [h.strip() for header in forwarded_for for h in header.split(",") if h.strip()]
    address = None
    for hop in reversed(hops):
        address = _parse(hop)
        if address is None:
            return peer  # malformed chain: believe only the socket
        if not trusted.lookup(address):
            return str(address)
    return str(address) if address is not None else peer  # every hop a trusted proxy: the left-most began it


def _in(index: PrefixIndex[bool], text: str) -> bool:
    address = _parse(text)
    return address is not None and bool(index.lookup(address))


def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = text.strip()
    if value.startswith("["):  # [v6]:port
        value = value[1 : value.find("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None

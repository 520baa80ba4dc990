"""Who is really calling: the socket peer, unless that peer is a proxy the configuration trusts.

X-Forwarded-For is client-controlled text. It is read only when the socket peer is in ``trustedProxies``,
and then from the right: each hop appends, so the right-most address not itself a trusted proxy is the
first one an untrusted party could not have forged.

Hops are parsed strictly: a hop is exactly an address (``203.0.113.5``, ``2001:db8::1``), optionally with a
port (``203.0.113.5:443``, ``[2001:db8::1]:443``). Anything else (an unclosed bracket, trailing text, a zone
id, an empty hop) where the chain is read makes it malformed, and then only the socket is believed. IPv4-mapped IPv6
addresses (``::ffff:203.0.113.5``) are the IPv4 address they carry, matched and logged in dotted form.
"""

from __future__ import annotations

import ipaddress
import re

from proxy.policy.indexes import PrefixIndex

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# [v6] or [v6]:port | v4:port | bare address (no brackets, no '%', no whitespace: checked by ip_address after)
_BRACKETED = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]{1,5}))?")
_V4_PORT = re.compile(r"([0-9.]+):([0-9]{1,5})")


def effective_client_ip(peer: str, forwarded_for: list[str], trusted: PrefixIndex[bool]) -> str:
    """The caller's address as text: ``peer`` (canonical, see ``canonical_ip``) unless it is a trusted proxy
    with a well-formed X-Forwarded-For chain."""
    peer_address = parse_hop(peer)
    peer_text = str(peer_address) if peer_address is not None else peer
    if not trusted or not forwarded_for or peer_address is None or not trusted.lookup(peer_address):
        return peer_text
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    address = None
    for hop in reversed(hops):
        address = parse_hop(hop)
        if address is None:
            return peer_text  # malformed (or empty) hop where the chain is believed: believe only the socket
        if not trusted.lookup(address):
            return str(address)
    # Every hop a trusted proxy: the left-most began it. Hops left of the first untrusted one are never read
    # (the caller wrote them; a malformed one there must not turn the caller into the trusted proxy).
    return str(address) if address is not None else peer_text


def canonical_ip(text: str) -> str:
    """A socket address as it is matched and logged: IPv4-mapped IPv6 as dotted IPv4; else unchanged."""
    address = parse_hop(text)
    return str(address) if address is not None else text


def parse_hop(text: str) -> Address | None:
    """One X-Forwarded-For hop (or a socket address), strictly; None when it is not exactly an address."""
    value = text.strip(" \t")
    bracketed = _BRACKETED.fullmatch(value)
    v4_port = _V4_PORT.fullmatch(value)
    if bracketed:
        host, port = bracketed.group(1), bracketed.group(2)
        if ":" not in host:
            return None  # brackets are for IPv6 only
    elif v4_port:
        host, port = v4_port.group(1), v4_port.group(2)
    else:
        host, port = value, None
    if port is not None and not 0 < int(port) < 65536:
        return None
    if not host or "%" in host or "[" in host or "]" in host or not host.isascii():
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address

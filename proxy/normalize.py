"""Canonical forms for what rules and requests name: prefixes, subscriptions, FQDNs and endpoints.

Config loading and request handling use the same functions, so a rule and a request can only match when
they mean the same thing (``Example.COM.`` and ``example.com``; ``/subscriptions/ABC...`` and ``abc...``).
Each function raises ``ValueError`` with a message fit to show a user.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from proxy.model import IPNetwork

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_prefix(text: str) -> IPNetwork:
    """An IPv4 or IPv6 CIDR prefix; a bare address is a host prefix. Host bits must be zero, as in Azure."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{text!r} is not an IP prefix")
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid IPv4 or IPv6 prefix ({exc})") from None
    if network.version == 6 and network.prefixlen >= 96 and network.subnet_of(_IPV4_MAPPED):
        # ::ffff:10.0.0.0/104 is 10.0.0.0/8: callers are matched as IPv4, so the rule must be too
        return ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    return network


def parse_prefixes(items: list[str] | tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(parse_prefix(item) for item in items)


def normalize_subscription(value: str) -> str:
    """``/subscriptions/<guid>``, ``subscriptions/<guid>`` or a bare GUID, any case, to the lower-case GUID."""
    text = value.strip().lower()
    if text.startswith("/"):
        text = text[1:]
    if text.startswith("subscriptions/"):
        text = text[len("subscriptions/") :]
    text = text.strip("/").strip("{}")
    if not _GUID.match(text):
        raise ValueError(f"{value!r} is not a subscription ID (expected /subscriptions/<GUID>)")
    return text


def normalize_hostname(value: str) -> str:
    """Lower-case ASCII (IDNA) host name without trailing dot. Raises for names no DNS lookup could carry."""
    text = value.strip().rstrip(".")
    if not text:
        raise ValueError("empty host name")
    try:
        ascii_name = text.encode("idna").decode("ascii") if not text.isascii() else text
    except UnicodeError as exc:
        raise ValueError(f"{value!r} is not a valid host name ({exc})") from None
    ascii_name = ascii_name.lower()
    if len(ascii_name) > 253 or not all(_LABEL.match(label) for label in ascii_name.split(".")):
        raise ValueError(f"{value!r} is not a valid host name")
    return ascii_name


def normalize_fqdn_rule(value: str) -> str:
    """An FQDN rule entry: a host name, or ``*.`` followed by one (any depth below it, not the apex)."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a domain name")
    text = value.strip()
    if text.startswith("*."):
        return "*." + normalize_hostname(text[2:])
    if "*" in text:
        raise ValueError(f"{value!r}: a wildcard is only allowed as the whole first label ('*.example.com')")
    if is_ip_literal(text):
        raise ValueError(f"{value!r} is an IP address; outbound rules name FQDNs only")
    return normalize_hostname(text)


def is_ip_literal(host: str) -> bool:
    """True for IPv4/IPv6 literals, bracketed or not, and for the numeric forms resolvers accept (``2130706433``)."""
    text = host.strip().strip("[]")
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
        return True
    except ValueError:
        pass
    # inet_aton-style forms: 127.1, 0x7f.1, 2130706433: resolvers turn them into addresses without DNS.
    parts = text.rstrip(".").split(".")
    return bool(parts) and len(parts) <= 4 and all(_numeric_part(p) for p in parts)


def ip_literal_address(host: str) -> str:
    """The canonical address of an IP literal, numeric forms included (``2130706433`` -> ``127.0.0.1``),
    so that what is checked against blocked prefixes and dialled is what a resolver would have made of it."""
    text = host.strip().strip("[]").split("%", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        return str(ipaddress.IPv4Address(socket.inet_aton(text.rstrip("."))))
    except OSError:
        raise ValueError(f"{host!r} is not an IP address") from None


def _numeric_part(part: str) -> bool:
    low = part.lower()
    if low.startswith("0x"):
        return len(low) > 2 and all(c in "0123456789abcdef" for c in low[2:])
    return part.isdigit()


def parse_endpoint(value: str | int, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``:port`` or a bare port."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an endpoint")
    if isinstance(value, int):
        host, port_text = default_host, str(value)
    else:
        text = value.strip()
        if text.isdigit():
            host, port_text = default_host, text
        elif text.startswith("["):
            host, sep, port_text = text[1:].partition("]:")
            if not sep:
                raise ValueError(f"{value!r}: expected [ipv6]:port")
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ValueError(f"{value!r}: expected host:port")
            host = host or default_host
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{value!r}: port must be 1-65535")
    return host, int(port_text)

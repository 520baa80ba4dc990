"""Canonical forms for what rules and requests name: prefixes, subscriptions, FQDNs and endpoints.

Config loading and request handling use the same functions, so a rule and a request can only match when
they mean the same thing (``Example.COM.`` and ``example.com``; ``/subscriptions/ABC...`` and ``abc...``).
Each function raises ``ValueError`` with a message fit to show a user.
"""

from __future__ import annotations

import functools
import ipaddress
import re

import idna

from proxy.model import IPNetwork
from proxy.names import addresses

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LDH = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MAX_LABEL = 63
MAX_NAME = 253  # without the trailing dot (RFC 1035: 255 octets on the wire)
MAX_INPUT = 1024  # longer input is refused before mapping (UTS-46 may drop characters, never 4 in 5)
_WILDCARD = re.compile("^\\*[.\uff0e\u3002\uff61]")  # "*." with any dot UTS-46 maps to "."
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
    """The lower-case A-label form of a host name, without trailing dot: what is decided, logged and resolved.

    IDNA2008 with the UTS-46 mapping (the ``idna`` package): ``Bücher.TEST``, ``xn--bcher-kva.test`` and
    ``bücher\uff0etest`` (fullwidth dot) are all ``xn--bcher-kva.test``. Letter-digit-hyphen ASCII labels are
    kept as they are, also with ``--`` in the 3rd and 4th position (``r3---sn-x``), as browsers do
    (UTS-46 CheckHyphens=false); an ``xn--`` label must be valid punycode of a valid IDNA2008 label. Raises
    ``ValueError`` with the reason for anything else: empty labels, labels over 63 or names over 253
    characters, characters IDNA2008 disallows (``_``, symbols, emoji), IP addresses.
    """
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a host name")
    name = _ascii_name(value)
    if is_ip_literal(name):
        raise ValueError(f"{value!r} is an IP address, not a host name")
    return name


@functools.lru_cache(maxsize=4096)
def _ascii_name(value: str) -> str:
    """``normalize_hostname`` without the IP-literal check: UTS-46 mapping, then each label's A-label.
    Cached (4096 names; failures are not cached): every request's destination and Host header pass here."""
    if len(value) > MAX_INPUT:
        raise ValueError(f"{value[:40]!r}... is not a valid host name ({len(value)} characters)")
    try:
        mapped = idna.uts46_remap(value.strip(), std3_rules=True, transitional=False)
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise ValueError(f"{value!r} is not a valid host name ({exc})") from None
    labels = mapped.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()  # the root: "example.com." is "example.com"
    if labels == [""]:
        raise ValueError("empty host name")
    ascii_labels = [_a_label(label, value) for label in labels]
    name = ".".join(ascii_labels)
    if len(name) > MAX_NAME:
        raise ValueError(f"{value!r} is not a valid host name ({len(name)} characters; at most {MAX_NAME})")
    return name


def _a_label(label: str, original: str) -> str:
    """One label, already UTS-46 mapped (so lower case), as its A-label."""
    if not label:
        raise ValueError(f"{original!r} is not a valid host name (empty label)")
    if _LDH.match(label) and not label.startswith("xn--"):
        return label
    try:
        encoded = idna.alabel(label).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise ValueError(f"{original!r} is not a valid host name ({exc})") from None
    if len(encoded) > MAX_LABEL:
        raise ValueError(f"{original!r} is not a valid host name (label over {MAX_LABEL} characters)")
    return encoded


def canonical_destination(host: str) -> str:
    """The one form of an outbound destination host that is decided, logged, resolved and pinned: an IP
    literal's canonical address (``2130706433`` -> ``127.0.0.1``, ``[::1]`` -> ``::1``), a name's A-label.

    ``host`` is what mitmproxy parsed, which has decoded each A-label with Python's IDNA2003 codec
    (``xn--bcher-kva.test`` arrives as ``bücher.test``). Each label is first put back into the punycode the
    client sent, so that IDNA2008 judges the A-label itself: a decoded label holding a fullwidth dot or a
    symbol is refused, not re-mapped into another name. Input that is no valid name or address is returned
    in that ASCII form, lower-cased, and the engine denies it with the reason.
    """
    text = _wire_form(host.strip()) if isinstance(host, str) else ""
    if not is_ip_literal(text):
        try:
            text = _ascii_name(text)
        except ValueError:
            return text.lower()
        if not is_ip_literal(text):
            return text
    try:
        return ip_literal_address(text)
    except ValueError:
        return text.lower()


def _wire_form(text: str) -> str:
    """Each non-ASCII label (split on ASCII dots only, as the client's A-labels were) back in punycode."""
    if text.isascii():
        return text
    try:
        return ".".join(label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
                        for label in text.split("."))
    except UnicodeError:
        return text


def normalize_fqdn_rule(value: str) -> str:
    """An FQDN rule entry: a host name, or ``*.`` followed by one (any depth below it, not the apex)."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a domain name")
    text = value.strip()
    if _WILDCARD.match(text):
        return "*." + normalize_hostname(text[2:])
    if "*" in text:
        raise ValueError(f"{value!r}: a wildcard is only allowed as the whole first label ('*.example.com')")
    if is_ip_literal(text):
        raise ValueError(f"{value!r} is an IP address; outbound rules name FQDNs only")
    return normalize_hostname(text)


def is_ip_literal(host: str) -> bool:
    """True for IP literals in every spelling a resolver accepts (``[::1]``, ``fe80::1%eth0``, ``127.1``,
    ``0x7f.0.0.1``, ``2130706433``, ``127.0.0.1.``) and for hosts that only look like one (``1.2.3.4.5``): those
    are never looked up as names. See ``proxy.names.addresses.is_literal``."""
    return addresses.is_literal(host)


def ip_literal_address(host: str) -> str:
    """The canonical address of an IP literal (``2130706433`` -> ``127.0.0.1``), so that what is checked
    against blocked prefixes and dialled is what a resolver would have made of it. ``ValueError`` otherwise."""
    return addresses.canonical(host)


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

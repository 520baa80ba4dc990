"""IP addresses the way a resolver or ``connect()`` reads them, and where they really lead.

The outbound guards (``blockedDestinationPrefixes``, the self-connection guard, IP-literal detection) must see
the address that is dialled, whatever spelling a client chose for it:

- every spelling ``getaddrinfo``/``inet_aton`` turns into an address without DNS: ``127.1``, ``0x7f.0.0.1``,
  ``0177.0.0.1``, ``2130706433``, a trailing dot, brackets, an IPv6 zone id (``fe80::1%eth0``);
- IPv4 carried inside IPv6, which reaches that IPv4 host through a translator or tunnel: IPv4-mapped
  ``::ffff:a.b.c.d`` (the same socket address on a dual-stack host), IPv4-compatible ``::a.b.c.d``,
  IPv4-translated ``::ffff:0:a.b.c.d``, NAT64 ``64:ff9b::/96`` and ``64:ff9b:1::/48`` (RFC 6052/8215), 6to4
  ``2002::/16`` and Teredo ``2001::/32`` (its server and its obfuscated client address);
- ``0.0.0.0`` and ``::``, which ``connect()`` sends to this host: they are loopback for every check.

Parsing and classification use netaddr; what netaddr does not know (NAT64, 6to4 and Teredo unwrapping, the
WHATWG "ends in a number" rule) is written here by hand, each with a note saying why.
"""

from __future__ import annotations

import re
import socket
from typing import Protocol

import netaddr
from netaddr import INET_ATON, IPAddress

__all__ = ["IPAddress", "canonical", "embedded_ipv4", "forms", "index_key", "is_literal", "is_local", "parse",
           "reaches_this_host"]

# Characters of the IPv4 forms inet_aton accepts; netaddr hands its input to inet_aton, which also accepts
# "127.0.0.1 anything" (it stops at whitespace), so the text is checked here first.
_IPV4_FORM = re.compile(r"^[0-9A-Fa-fXx.]+$")
_NUMBER = re.compile(r"^(?:[0-9]+|0[xX][0-9A-Fa-f]*)$")

LOOPBACK_V4 = IPAddress("127.0.0.1")
LOOPBACK_V6 = IPAddress("::1")


class _Addressish(Protocol):
    """netaddr.IPAddress or ipaddress.IPv4Address/IPv6Address: both have a version and an int value."""

    @property
    def version(self) -> int: ...

    def __int__(self) -> int: ...


def parse(text: str) -> IPAddress:
    """The address ``text`` names in any spelling a resolver or ``connect()`` accepts; ``ValueError`` otherwise.

    Brackets and an IPv6 zone id (``%eth0``, or ``%25eth0`` as in URLs) are dropped; one trailing dot is
    allowed after an IPv4 form (curl and browsers read ``127.0.0.1.`` as the address).
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not an IP address")
    value = text.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    if ":" in value:
        value = value.split("%", 1)[0]
        try:
            return IPAddress(value, 6)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            raise ValueError(f"{text!r} is not an IP address") from None
    if value.endswith(".") and not value.endswith(".."):
        value = value[:-1]
    if not _IPV4_FORM.match(value) or ".." in value or value.startswith("."):
        raise ValueError(f"{text!r} is not an IP address")
    try:
        return IPAddress(value, 4, flags=INET_ATON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValueError(f"{text!r} is not an IP address") from None


def canonical(text: str) -> str:
    """The canonical text of the address ``text`` names (``0x7f.1`` -> ``127.0.0.1``, ``[::FFFF:7f00:1]`` ->
    ``::ffff:127.0.0.1``); ``ValueError`` if it names none."""
    return str(parse(text))


def is_literal(host: str) -> bool:
    """True when ``host`` is, or tries to be, an IP address rather than a name.

    That is the WHATWG URL standard's "ends in a number" rule (the last label, after one trailing dot, is a
    decimal, octal or ``0x`` number), by which browsers treat ``1.2.3.4.5`` or ``4294967296`` as broken IPv4
    rather than look them up; it covers every form ``parse`` accepts, since each ends in a number. netaddr has
    no such notion. Anything with a ``:`` or in brackets is an IPv6 attempt.
    """
    value = host.strip()
    if value.startswith("[") or ":" in value:
        return True
    labels = value.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    return bool(_NUMBER.match(labels[-1]))


def embedded_ipv4(address: IPAddress) -> tuple[IPAddress, ...]:
    """The IPv4 addresses an IPv6 address carries and would reach through a translator or tunnel.

    netaddr knows IPv4-mapped and IPv4-compatible (``ipv4()``) but not the NAT64, 6to4 and Teredo layouts,
    so those are unwrapped here from the address bits:
    - NAT64 ``64:ff9b::/96`` (RFC 6052): the last 32 bits;
    - NAT64 local-use ``64:ff9b:1::/48`` (RFC 8215, laid out per RFC 6052 for a /48 prefix): bits 48-63 hold
      the first two octets, bits 64-71 are the reserved ``u`` octet, bits 72-87 the last two octets;
    - 6to4 ``2002::/16`` (RFC 3056): bits 16-47;
    - Teredo ``2001::/32`` (RFC 4380): the server in bits 32-63, the client in the last 32 bits inverted.
    ``::`` and ``::1`` are not IPv4-compatible addresses (they are unspecified and loopback themselves).
    """
    if address.version != 6:
        return ()
    value = int(address)
    high96 = value >> 32
    low32 = value & 0xFFFFFFFF
    if high96 == 0xFFFF:  # ::ffff:a.b.c.d, IPv4-mapped
        return (IPAddress(low32, 4),)
    if high96 == 0 and value > 1:  # ::a.b.c.d, IPv4-compatible (deprecated, still routed by some stacks)
        return (IPAddress(low32, 4),)
    if high96 == 0xFFFF0000:  # ::ffff:0:a.b.c.d, IPv4-translated (RFC 2765 SIIT)
        return (IPAddress(low32, 4),)
    if high96 == 0x0064FF9B << 64:  # 64:ff9b::/96
        return (IPAddress(low32, 4),)
    if value >> 80 == 0x0064FF9B0001:  # 64:ff9b:1::/48
        return (IPAddress((((value >> 64) & 0xFFFF) << 16) | ((value >> 40) & 0xFFFF), 4),)
    if value >> 112 == 0x2002:  # 6to4
        return (IPAddress((value >> 80) & 0xFFFFFFFF, 4),)
    if value >> 96 == 0x20010000:  # Teredo: server, then the client (stored inverted)
        return IPAddress((value >> 64) & 0xFFFFFFFF, 4), IPAddress(low32 ^ 0xFFFFFFFF, 4)
    return ()


def _reaches_host_itself(address: IPAddress) -> bool:
    return address.is_loopback() or int(address) == 0


def forms(address: IPAddress) -> tuple[IPAddress, ...]:
    """Every address a destination check must look at: the address, the IPv4 it carries, and loopback
    (``127.0.0.1`` and ``::1``) when any of them is ``0.0.0.0`` or ``::``, which ``connect()`` sends here."""
    found = (address, *embedded_ipv4(address))
    if any(int(a) == 0 for a in found):
        found = (*found, LOOPBACK_V4, LOOPBACK_V6)
    return found


def reaches_this_host(address: IPAddress) -> bool:
    """Loopback, ``0.0.0.0`` or ``::``, directly or embedded (``::ffff:127.0.0.1``, ``64:ff9b::7f00:1``)."""
    return any(_reaches_host_itself(a) for a in forms(address))


def is_local(address: IPAddress) -> bool:
    """True if one of ``forms(address)`` is an address of this machine (so a listener on ``0.0.0.0``/``::``
    answers there). Asked of the kernel by binding a throwaway socket: it refuses addresses it does not own."""
    if reaches_this_host(address):
        return True
    for form in forms(address):
        family = socket.AF_INET if form.version == 4 else socket.AF_INET6
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((str(form), 0))
                return True
        except OSError:
            continue
    return False


def index_key(address: _Addressish) -> tuple[int, int]:
    """``(version, integer)`` for prefix lookups; an IPv4-mapped address is its IPv4 address, because it is
    the same socket address on a dual-stack listener (``::ffff:10.0.0.1`` is ``10.0.0.1`` to a rule author)."""
    value = int(address)
    if address.version == 6 and value >> 32 == 0xFFFF:
        return 4, value & 0xFFFFFFFF
    return address.version, value

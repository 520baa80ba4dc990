"""Compiled lookup structures: the reason a decision costs the same with 5 rules or 200.

``PrefixIndex`` answers "which prefixes contain this address" with one hash probe per distinct prefix
length (at most 33 for IPv4, 129 for IPv6, in practice a handful), longest first. ``FqdnIndex`` answers
"which rule names this host" with one probe for the exact name and one per parent domain for ``*.`` entries.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Generic, TypeVar

import netaddr

from proxy.model import IPNetwork
from proxy.names import addresses

V = TypeVar("V")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address | netaddr.IPAddress


class PrefixIndex(Generic[V]):
    """Longest-prefix match over IPv4 and IPv6 networks; each network carries a value.

    A lookup folds an IPv4-mapped address (``::ffff:10.0.0.1``) to its IPv4 address, which is the same socket
    address. It does not unwrap NAT64, 6to4 or Teredo: those are other addresses on the wire, and for the
    allow-lists this index serves (address rules, trusted proxies, source prefixes) unwrapping would widen
    access. Destination guards check every form themselves (``proxy.names.addresses.forms``, ``lookup_any``).
    """

    def __init__(self, entries: Iterable[tuple[IPNetwork, V]] = ()):
        self._tables: dict[int, dict[int, dict[int, V]]] = {4: {}, 6: {}}
        for network, value in entries:
            table = self._tables[network.version].setdefault(network.prefixlen, {})
            table.setdefault(int(network.network_address) >> (network.max_prefixlen - network.prefixlen), value)
        self._lengths = {v: sorted(t, reverse=True) for v, t in self._tables.items()}

    def __bool__(self) -> bool:
        return any(self._tables.values())

    def lookup(self, address: IPAddress | None) -> V | None:
        """The value of the longest prefix containing ``address``, or None."""
        for value in self.lookup_all(address):
            return value
        return None

    def lookup_all(self, address: IPAddress | None) -> Iterable[V]:
        """Values of every prefix containing ``address``, longest prefix first."""
        if address is None:
            return
        version, number = addresses.index_key(address)
        bits = 32 if version == 4 else 128
        tables = self._tables[version]
        for length in self._lengths[version]:
            value = tables[length].get(number >> (bits - length))
            if value is not None:
                yield value

    def lookup_any(self, candidates: Iterable[IPAddress]) -> V | None:
        """The value of the first candidate that any prefix contains (e.g. every form of a destination)."""
        for address in candidates:
            value = self.lookup(address)
            if value is not None:
                return value
        return None


class FqdnIndex(Generic[V]):
    """Exact names and ``*.`` wildcards (any depth below the domain, never the apex: FACTS.md, OPEN item)."""

    def __init__(self, entries: Iterable[tuple[str, V]] = ()):
        self._exact: dict[str, V] = {}
        self._wildcard: dict[str, V] = {}
        for name, value in entries:
            if name.startswith("*."):
                self._wildcard.setdefault(name[2:], value)
            else:
                self._exact.setdefault(name, value)

    def __bool__(self) -> bool:
        return bool(self._exact or self._wildcard)

    def lookup(self, host: str) -> V | None:
        """``host`` must already be normalised (``proxy.names.normalize.normalize_hostname``)."""
        value = self._exact.get(host)
        if value is not None or not self._wildcard:
            return value
        dot = host.find(".")
        while dot != -1:
            parent = host[dot + 1 :]
            value = self._wildcard.get(parent)
            if value is not None:
                return value
            dot = host.find(".", dot + 1)
        return None

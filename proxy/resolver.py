"""Resolving outbound destinations with dnspython, so that the address checked is the address dialled.

mitmproxy would otherwise resolve the name again when it connects, and a DNS server that answers differently
the second time (rebinding) could swap an allowed destination for another. nsp-proxy resolves once, checks the
answer against ``blockedDestinationPrefixes`` and pins the connection to it.
"""

from __future__ import annotations

import ipaddress

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from proxy.indexes import PrefixIndex
from proxy.model import Settings


class ResolutionError(Exception):
    """The name has no address (NXDOMAIN, no answer, timeout)."""


class Resolver:
    def __init__(self, settings: Settings):
        self._resolver = dns.asyncresolver.Resolver(configure=not settings.nameservers)
        if settings.nameservers:
            self._resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in settings.nameservers]
        self._resolver.lifetime = settings.dns_timeout
        self._resolver.timeout = settings.dns_timeout
        self._blocked = PrefixIndex((net, True) for net in settings.blocked_destination_prefixes)

    def usable(self, addresses: tuple[str, ...]) -> tuple[str, ...]:
        """The addresses outside ``blockedDestinationPrefixes``, in the order given."""
        if not self._blocked:
            return addresses
        return tuple(a for a in addresses if not self._blocked.lookup(ipaddress.ip_address(a)))

    async def resolve(self, name: str) -> tuple[str, ...]:
        """A records, else AAAA records. Raises ``ResolutionError`` when there is neither."""
        problems: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(name, rdtype, search=False)
                addresses = tuple(r.address for r in answer)
                if addresses:
                    return addresses
            except dns.resolver.NXDOMAIN:
                raise ResolutionError(f"{name}: no such domain (NXDOMAIN)") from None
            except (dns.resolver.NoAnswer, dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
                problems.append(f"{rdtype}: {type(exc).__name__}")
        raise ResolutionError(f"{name}: no address ({'; '.join(problems) or 'empty answer'})")

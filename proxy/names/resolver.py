"""Resolving outbound destinations with dnspython, so that the address checked is the address dialled.

mitmproxy would otherwise resolve the name again when it connects, and a DNS server that answers differently
the second time (rebinding) could swap an allowed destination for another. nsp-proxy resolves once, checks the
answer against ``blockedDestinationPrefixes`` and pins the connection to it.

Answers are cached by their TTL (the smallest TTL of the answer's records, CNAMEs included), clamped to
``settings.dns.maxTtl`` (default 300 s); NXDOMAIN and no-data answers by their SOA's negative TTL, clamped to
``settings.dns.maxNegativeTtl`` (default 30 s), and not at all without an SOA (RFC 2308). The cache holds at
most ``settings.dns.cacheSize`` names (default 10,000; least recently used out first). Concurrent lookups of
one name share a single query. So a name is queried once per TTL, and the cached answer is the one checked
and pinned: there is no second lookup for a rebinding server to answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.message
import dns.nameserver
import dns.rdatatype
import dns.resolver

from proxy.model import Settings
from proxy.names import addresses
from proxy.names.normalize import normalize_hostname
from proxy.policy.indexes import PrefixIndex

log = logging.getLogger("nsp-proxy")


class ResolutionError(Exception):
    """The name has no address (NXDOMAIN, no answer, timeout, not a valid name)."""


@dataclass(frozen=True)
class _Answer:
    addresses: tuple[str, ...]  # empty: ``error`` says why
    error: str
    expires: float  # monotonic time; not cached when already past


class Resolver:
    def __init__(self, settings: Settings, cache_from: Resolver | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._resolver = dns.asyncresolver.Resolver(configure=not settings.nameservers)
        if settings.nameservers:
            self._resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in settings.nameservers]
        self._resolver.lifetime = settings.dns_timeout
        self._resolver.timeout = settings.dns_timeout
        self._blocked = PrefixIndex((net, True) for net in settings.blocked_destination_prefixes)
        self._size = settings.dns_cache_size
        self._max_ttl = settings.dns_max_ttl
        self._max_negative_ttl = settings.dns_max_negative_ttl
        self._clock = clock
        self._source = (settings.nameservers, settings.dns_timeout)
        self._cache: OrderedDict[str, _Answer] = OrderedDict()
        if cache_from is not None and cache_from._source == self._source:
            self._cache = cache_from._cache  # a reload that keeps the DNS servers keeps what they answered
            self._trim()
        self._inflight: dict[str, asyncio.Future[_Answer]] = {}

    def usable(self, found: tuple[str, ...]) -> tuple[str, ...]:
        """The addresses outside ``blockedDestinationPrefixes``, in the order given. Each is checked in every
        form it reaches (``proxy.names.addresses.forms``): the IPv4 inside an IPv4-mapped, NAT64, 6to4 or Teredo
        AAAA answer, and loopback for ``0.0.0.0``/``::``. Text that is no address is never usable."""
        if not self._blocked:
            return found
        kept = []
        for text in found:
            try:
                address = addresses.parse(text)
            except ValueError:
                continue
            if self._blocked.lookup_any(addresses.forms(address)) is None:
                kept.append(text)
        return tuple(kept)

    async def resolve(self, name: str) -> tuple[str, ...]:
        """A records, else AAAA records, of the A-label form of ``name``, from the cache while their TTL lasts.
        Raises ``ResolutionError`` (and nothing else) when there is no address."""
        try:
            key = normalize_hostname(name)
        except ValueError as exc:
            raise ResolutionError(str(exc)) from None
        answer = self._cached(key)
        if answer is None:
            pending = self._inflight.get(key)
            if pending is None:
                pending = asyncio.ensure_future(self._lookup(key))
                self._inflight[key] = pending
                pending.add_done_callback(functools.partial(self._landed, key))
            answer = await asyncio.shield(pending)
        if not answer.addresses:
            raise ResolutionError(answer.error)
        return answer.addresses

    # -- cache ------------------------------------------------------------------------------------------------

    def _cached(self, key: str) -> _Answer | None:
        answer = self._cache.get(key)
        if answer is None:
            return None
        if answer.expires <= self._clock():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return answer

    def _landed(self, key: str, pending: asyncio.Future[_Answer]) -> None:
        self._inflight.pop(key, None)
        if pending.cancelled() or pending.exception() is not None:
            return
        answer = pending.result()
        if answer.expires > self._clock() and self._size > 0:
            self._cache[key] = answer
            self._cache.move_to_end(key)
            self._trim()

    def _trim(self) -> None:
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)

    # -- lookup -----------------------------------------------------------------------------------------------

    async def _lookup(self, name: str) -> _Answer:
        """One resolution; never raises: any failure is an answer without addresses (cached only when DNS said
        so with an SOA)."""
        problems: list[str] = []
        negative: list[float] = []  # how long each failed query may be remembered (0: not at all)
        now = self._clock()
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(name, rdtype, search=False)
                found = tuple(r.address for r in answer)
                if found:
                    ttl = max(0.0, answer.expiration - time.time())
                    return _Answer(found, "", now + min(ttl, self._max_ttl))
                problems.append(f"{rdtype}: empty answer")
                negative.append(0.0)
            except dns.resolver.NXDOMAIN as exc:
                ttl = _negative_ttl(lambda exc=exc: next(iter(exc.responses().values()), None))
                return _Answer((), f"{name}: no such domain (NXDOMAIN)", now + min(ttl, self._max_negative_ttl))
            except dns.resolver.NoAnswer as exc:
                problems.append(f"{rdtype}: NoAnswer")
                negative.append(_negative_ttl(exc.response))
            except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
                problems.append(f"{rdtype}: {type(exc).__name__}")
                negative.append(0.0)
            except Exception as exc:  # any dnspython failure is "no address", never a crash
                log.debug("DNS lookup of %s %s failed", name, rdtype, exc_info=True)
                problems.append(f"{rdtype}: {type(exc).__name__}: {exc}")
                negative.append(0.0)
        ttl = min(min(negative), self._max_negative_ttl)
        return _Answer((), f"{name}: no address ({'; '.join(problems)})", now + ttl)


def _negative_ttl(response: Callable[[], dns.message.Message | None]) -> float:
    """RFC 2308: the SOA record's TTL, at most its MINIMUM field; 0 (not cached) without an SOA, or when the
    exception carries no response (dnspython raises KeyError for that)."""
    try:
        message = response()
        for rrset in message.authority if message is not None else ():
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return float(min(rrset.ttl, rrset[0].minimum))
    except Exception:  # an odd exception object means "do not cache", never a failed lookup
        log.debug("no SOA in a negative DNS answer", exc_info=True)
    return 0.0

"""The resolver: TTL cache (bounded, LRU), negative caching by SOA, only ResolutionError, every address form
checked against blockedDestinationPrefixes. dnspython's network side is replaced by a scripted fake."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from dataclasses import dataclass, replace
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver
import pytest

from proxy.config.errors import ConfigError
from proxy.config.loader import parse_config_text
from proxy.model import Settings
from proxy.names.resolver import ResolutionError, Resolver


@dataclass
class _Rdata:
    address: str


class _Answer(list):
    def __init__(self, found: list[str], ttl: float):
        super().__init__(_Rdata(a) for a in found)
        self.expiration = time.time() + ttl


def _negative(name: str, soa_ttl: int | None, minimum: int = 3600) -> dns.message.Message:
    response = dns.message.make_response(dns.message.make_query(name, "A"))
    if soa_ttl is not None:
        response.authority.append(dns.rrset.from_text(
            "test.", soa_ttl, "IN", "SOA", f"ns.test. admin.test. 1 60 60 60 {minimum}"))
    return response


class FakeDns:
    """Scripted answers: name -> {rdtype: list of addresses | exception}; counts every query."""

    def __init__(self, script: dict[str, dict[str, Any]], ttl: float = 60):
        self.script, self.ttl, self.asked = script, ttl, []

    async def resolve(self, name: str, rdtype: str, search: bool = False) -> _Answer:
        self.asked.append((name, rdtype))
        await asyncio.sleep(0.01)
        outcome = self.script.get(name, {}).get(rdtype, dns.resolver.NoAnswer())
        if isinstance(outcome, BaseException):
            raise outcome
        return _Answer(outcome, self.ttl)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver_with(script: dict[str, dict[str, Any]], ttl: float = 60, **settings: Any) -> tuple[Resolver, FakeDns,
                                                                                                  Clock]:
    clock = Clock()
    resolver = Resolver(replace(Settings(), nameservers=(("127.0.0.1", 53),), **settings), clock=clock)
    fake = FakeDns(script, ttl)
    resolver._resolver = fake  # type: ignore[assignment]
    return resolver, fake, clock


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_answers_are_cached_for_their_ttl_and_clamped() -> None:
    resolver, fake, clock = resolver_with({"a.test": {"A": ["10.0.0.1"]}}, ttl=60)
    for _ in range(5):
        assert run(resolver.resolve("A.test.")) == ("10.0.0.1",)
    assert fake.asked == [("a.test", "A")]
    clock.now += 59
    run(resolver.resolve("a.test"))
    assert len(fake.asked) == 1
    clock.now += 2
    run(resolver.resolve("a.test"))
    assert len(fake.asked) == 2

    clamped, fake, clock = resolver_with({"a.test": {"A": ["10.0.0.1"]}}, ttl=86400, dns_max_ttl=10)
    run(clamped.resolve("a.test"))
    clock.now += 11
    run(clamped.resolve("a.test"))
    assert len(fake.asked) == 2


def test_concurrent_lookups_share_one_query() -> None:
    resolver, fake, _ = resolver_with({"a.test": {"A": ["10.0.0.1"]}})

    async def many() -> list[tuple[str, ...]]:
        return await asyncio.gather(*(resolver.resolve("a.test") for _ in range(20)))

    assert run(many()) == [("10.0.0.1",)] * 20
    assert fake.asked == [("a.test", "A")]


def test_cache_is_bounded_lru() -> None:
    script = {f"n{i}.test": {"A": [f"10.0.0.{i}"]} for i in range(5)}
    resolver, fake, _ = resolver_with(script, dns_cache_size=2)
    for name in ("n0.test", "n1.test", "n0.test", "n2.test"):  # n1 is the least recently used when n2 arrives
        run(resolver.resolve(name))
    assert len(resolver._cache) == 2
    fake.asked.clear()
    run(resolver.resolve("n0.test"))
    run(resolver.resolve("n1.test"))
    assert fake.asked == [("n1.test", "A")]

    disabled, fake, _ = resolver_with(script, dns_cache_size=0)
    run(disabled.resolve("n0.test"))
    run(disabled.resolve("n0.test"))
    assert len(fake.asked) == 2


@pytest.mark.parametrize(("soa_ttl", "minimum", "cached_for"), [
    pytest.param(20, 3600, 20, id="soa-ttl"),
    pytest.param(3600, 5, 5, id="soa-minimum"),
    pytest.param(3600, 3600, 30, id="clamped-to-maxNegativeTtl"),
    pytest.param(None, 0, 0, id="no-soa-not-cached"),
])
def test_nxdomain_is_cached_by_its_soa(soa_ttl: int | None, minimum: int, cached_for: float) -> None:
    qname = dns.name.from_text("nx.test")
    nx = dns.resolver.NXDOMAIN(qnames=[qname], responses={qname: _negative("nx.test", soa_ttl, minimum)})
    resolver, fake, clock = resolver_with({"nx.test": {"A": nx}})
    with pytest.raises(ResolutionError, match="NXDOMAIN"):
        run(resolver.resolve("nx.test"))
    clock.now += max(cached_for - 1, 0)
    with pytest.raises(ResolutionError, match="NXDOMAIN"):
        run(resolver.resolve("nx.test"))
    assert len(fake.asked) == (1 if cached_for else 2)
    clock.now += 2
    with pytest.raises(ResolutionError):
        run(resolver.resolve("nx.test"))
    assert len(fake.asked) == (2 if cached_for else 3)


def test_aaaa_when_no_a() -> None:
    resolver, fake, _ = resolver_with({"six.test": {"AAAA": ["2001:db8::1"]}})
    assert run(resolver.resolve("six.test")) == ("2001:db8::1",)
    assert fake.asked == [("six.test", "A"), ("six.test", "AAAA")]


@pytest.mark.parametrize("failure", [
    pytest.param(dns.exception.Timeout(), id="timeout"),
    pytest.param(dns.resolver.NoNameservers(), id="servfail"),
    pytest.param(dns.name.LabelTooLong(), id="label-too-long"),
    pytest.param(dns.exception.DNSException("odd"), id="any-dnspython-error"),
    pytest.param(ValueError("bad"), id="value-error"),
    pytest.param(OSError("network unreachable"), id="os-error"),
])
def test_any_failure_is_a_resolution_error_and_not_cached(failure: Exception) -> None:
    resolver, fake, _ = resolver_with({"f.test": {"A": failure, "AAAA": failure}})
    for _ in range(2):
        with pytest.raises(ResolutionError, match="no address"):
            run(resolver.resolve("f.test"))
    assert len(fake.asked) == 4


@pytest.mark.parametrize("name", ["xn--zz.test", "a..b", "☃.test", "", "1.2.3.4", "a" * 300])
def test_invalid_names_are_resolution_errors_without_a_query(name: str) -> None:
    resolver, fake, _ = resolver_with({})
    with pytest.raises(ResolutionError):
        run(resolver.resolve(name))
    assert fake.asked == []


def test_unicode_name_is_looked_up_as_its_a_label() -> None:
    resolver, fake, _ = resolver_with({"xn--bcher-kva.test": {"A": ["10.0.0.9"]}})
    assert run(resolver.resolve("Bücher.test")) == ("10.0.0.9",)
    assert run(resolver.resolve("xn--bcher-kva.test")) == ("10.0.0.9",)
    assert fake.asked == [("xn--bcher-kva.test", "A")]


def test_reload_with_the_same_servers_keeps_the_cache() -> None:
    resolver, fake, clock = resolver_with({"a.test": {"A": ["10.0.0.1"]}})
    run(resolver.resolve("a.test"))
    same = Resolver(replace(Settings(), nameservers=(("127.0.0.1", 53),)), cache_from=resolver, clock=clock)
    same._resolver = fake  # type: ignore[assignment]
    run(same.resolve("a.test"))
    other = Resolver(replace(Settings(), nameservers=(("127.0.0.2", 53),)), cache_from=resolver, clock=clock)
    other._resolver = fake  # type: ignore[assignment]
    run(other.resolve("a.test"))
    assert len(fake.asked) == 2


BLOCKED = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("169.254.169.254/32"),
           ipaddress.ip_network("10.0.0.0/8"))


@pytest.mark.parametrize(("answer", "usable"), [
    pytest.param("10.1.2.3", False, id="ipv4"),
    pytest.param("::ffff:10.1.2.3", False, id="ipv4-mapped"),
    pytest.param("::10.1.2.3", False, id="ipv4-compatible"),
    pytest.param("64:ff9b::a9fe:a9fe", False, id="nat64-metadata"),
    pytest.param("64:ff9b:1:a9fe:a9:fe00::", False, id="nat64-48-metadata"),
    pytest.param("2002:a9fe:a9fe::1", False, id="6to4-metadata"),
    pytest.param("2001:0:4136:e378:8000:63bf:f5fe:fdfc", False, id="teredo-client"),
    pytest.param("0.0.0.0", False, id="unspecified-is-loopback"),
    pytest.param("::", False, id="unspecified-v6-is-loopback"),
    pytest.param("::ffff:0.0.0.0", False, id="mapped-unspecified"),
    pytest.param("::1", True, id="ipv6-loopback-not-blocked-by-127/8"),
    pytest.param("192.0.2.1", True, id="elsewhere"),
    pytest.param("2001:db8::1", True, id="elsewhere-v6"),
    pytest.param("not-an-address", False, id="garbage-never-usable"),
])
def test_usable_checks_every_form_of_an_answer(answer: str, usable: bool) -> None:
    resolver = Resolver(replace(Settings(), blocked_destination_prefixes=BLOCKED))
    assert resolver.usable((answer,)) == ((answer,) if usable else ())


def _settings_document(dns_settings: dict[str, Any]) -> str:
    return json.dumps({"settings": {"dns": dns_settings}, "perimeters": [{"name": "p", "profiles": [{"name": "x"}],
                                                                         "resourceAssociations": []}]})


def test_cache_bounds_are_settings() -> None:
    defaults = parse_config_text(_settings_document({}), "t.json").settings
    assert (defaults.dns_cache_size, defaults.dns_max_ttl, defaults.dns_max_negative_ttl) == (10_000, 300, 30)
    given = parse_config_text(_settings_document({"cacheSize": 5, "maxTtl": 60, "maxNegativeTtl": 0}), "t.json")
    assert (given.settings.dns_cache_size, given.settings.dns_max_ttl, given.settings.dns_max_negative_ttl) == (
        5, 60, 0)


@pytest.mark.parametrize(("key", "value"), [("cacheSize", -1), ("cacheSize", 1.5), ("cacheSize", True),
                                            ("maxTtl", -1), ("maxTtl", 86401), ("maxNegativeTtl", "30")])
def test_bad_cache_bounds_are_refused_with_their_path(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config_text(_settings_document({key: value}), "t.json")
    assert [p.path for p in refused.value.problems] == [f"settings.dns.{key}"]

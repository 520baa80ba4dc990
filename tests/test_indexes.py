"""The compiled lookup structures: longest-prefix match over IPv4/IPv6 and exact/wildcard FQDN match."""

from __future__ import annotations

import ipaddress

import pytest

from proxy.policy.indexes import FqdnIndex, PrefixIndex


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# -- PrefixIndex ---------------------------------------------------------------------------------------------------


@pytest.fixture
def prefixes() -> PrefixIndex[str]:
    return PrefixIndex([
        (net("10.0.0.0/8"), "ten"),
        (net("10.1.0.0/16"), "ten-one"),
        (net("10.1.2.0/24"), "ten-one-two"),
        (net("10.1.2.3/32"), "host"),
        (net("192.0.2.0/24"), "test-net"),
        (net("2001:db8::/32"), "doc6"),
        (net("2001:db8:1::/48"), "doc6-one"),
        (net("::1/128"), "loopback6"),
    ])


@pytest.mark.parametrize(("address", "expected"), [
    ("10.9.9.9", "ten"),
    ("10.1.9.9", "ten-one"),
    ("10.1.2.4", "ten-one-two"),
    ("10.1.2.3", "host"),
    ("10.255.255.255", "ten"),
    ("11.0.0.0", None),
    ("9.255.255.255", None),
    ("192.0.2.255", "test-net"),
    ("192.0.3.0", None),
    ("2001:db8::1", "doc6"),
    ("2001:db8:1:ffff::1", "doc6-one"),
    ("2001:db9::", None),
    ("::1", "loopback6"),
    ("::2", None),
])
def test_longest_prefix_wins(prefixes: PrefixIndex[str], address: str, expected: str | None) -> None:
    assert prefixes.lookup(ip(address)) == expected


def test_lookup_all_is_longest_first(prefixes: PrefixIndex[str]) -> None:
    assert list(prefixes.lookup_all(ip("10.1.2.3"))) == ["host", "ten-one-two", "ten-one", "ten"]
    assert list(prefixes.lookup_all(ip("2001:db8:1::5"))) == ["doc6-one", "doc6"]
    assert list(prefixes.lookup_all(ip("172.16.0.1"))) == []


@pytest.mark.parametrize(("address", "expected"), [
    ("::ffff:10.1.2.3", "host"),
    ("::ffff:10.1.9.9", "ten-one"),
    ("::ffff:192.0.2.1", "test-net"),
    ("::ffff:172.16.0.1", None),
])
def test_ipv4_mapped_ipv6_matches_ipv4_rules(prefixes: PrefixIndex[str], address: str, expected: str | None) -> None:
    assert prefixes.lookup(ip(address)) == expected


def test_ipv4_and_ipv6_are_separate_families() -> None:
    index = PrefixIndex([(net("0.0.0.0/0"), "any4")])
    assert index.lookup(ip("203.0.113.9")) == "any4"
    assert index.lookup(ip("2001:db8::1")) is None
    index6 = PrefixIndex([(net("::/0"), "any6")])
    assert index6.lookup(ip("2001:db8::1")) == "any6"
    assert index6.lookup(ip("203.0.113.9")) is None


def test_ipv4_compatible_ipv6_is_not_mapped() -> None:
    """``::10.1.2.3`` (deprecated IPv4-compatible) is an IPv6 address, not ``10.1.2.3``."""
    index = PrefixIndex([(net("10.0.0.0/8"), "ten")])
    assert index.lookup(ip("::10.1.2.3")) is None


def test_default_routes_match_everything_in_their_family() -> None:
    index = PrefixIndex([(net("0.0.0.0/0"), "any4"), (net("::/0"), "any6"), (net("10.0.0.0/8"), "ten")])
    assert index.lookup(ip("10.0.0.1")) == "ten"
    assert index.lookup(ip("0.0.0.0")) == "any4"
    assert index.lookup(ip("255.255.255.255")) == "any4"
    assert index.lookup(ip("ffff::1")) == "any6"


def test_same_prefix_twice_keeps_the_first() -> None:
    index = PrefixIndex([(net("10.0.0.0/8"), "first"), (net("10.0.0.0/8"), "second")])
    assert index.lookup(ip("10.1.1.1")) == "first"
    assert list(index.lookup_all(ip("10.1.1.1"))) == ["first"]


def test_empty_index_and_missing_address() -> None:
    empty: PrefixIndex[str] = PrefixIndex()
    assert not empty
    assert empty.lookup(ip("10.0.0.1")) is None
    index = PrefixIndex([(net("10.0.0.0/8"), "ten")])
    assert index
    assert index.lookup(None) is None
    assert list(index.lookup_all(None)) == []


def test_falsy_values_are_still_found() -> None:
    """A stored ``True`` is the usual value; a stored value must never be confused with 'no match'."""
    index = PrefixIndex([(net("10.0.0.0/8"), True)])
    assert index.lookup(ip("10.0.0.1")) is True
    assert index.lookup(ip("11.0.0.1")) is None


def test_many_prefixes() -> None:
    entries = [(net(f"10.{i // 256}.{i % 256}.0/24"), f"r{i}") for i in range(5000)]
    index = PrefixIndex(entries)
    assert index.lookup(ip("10.0.7.200")) == "r7"
    assert index.lookup(ip("10.19.135.1")) == f"r{19 * 256 + 135}"
    assert index.lookup(ip("10.200.0.1")) is None


# -- FqdnIndex -----------------------------------------------------------------------------------------------------


@pytest.fixture
def fqdns() -> FqdnIndex[str]:
    return FqdnIndex([
        ("login.microsoftonline.com", "login"),
        ("*.blob.core.windows.net", "blobs"),
        ("*.privatelink.blob.core.windows.net", "privatelink"),
        ("special.blob.core.windows.net", "special"),
        ("example.com", "apex-only"),
    ])


@pytest.mark.parametrize(("host", "expected"), [
    ("login.microsoftonline.com", "login"),
    ("x.login.microsoftonline.com", None),  # an exact name does not cover its subdomains
    ("microsoftonline.com", None),
    ("account.blob.core.windows.net", "blobs"),  # one label below
    ("a.b.c.blob.core.windows.net", "blobs"),  # any depth below
    ("blob.core.windows.net", None),  # never the apex
    ("core.windows.net", None),
    ("xblob.core.windows.net", None),  # label boundary, not a suffix match
    ("acct.privatelink.blob.core.windows.net", "privatelink"),  # the most specific wildcard first
    ("privatelink.blob.core.windows.net", "blobs"),  # apex of the inner wildcard, inside the outer one
    ("special.blob.core.windows.net", "special"),  # exact beats wildcard
    ("example.com", "apex-only"),
    ("www.example.com", None),
    ("com", None),
])
def test_fqdn_exact_and_wildcard(fqdns: FqdnIndex[str], host: str, expected: str | None) -> None:
    assert fqdns.lookup(host) == expected


def test_fqdn_wildcard_and_apex_together() -> None:
    index = FqdnIndex([("*.example.com", "sub"), ("example.com", "apex")])
    assert index.lookup("example.com") == "apex"
    assert index.lookup("a.example.com") == "sub"


def test_fqdn_index_expects_normalised_names() -> None:
    """Normalising is the caller's job (proxy.names.normalize.normalize_hostname); the index compares exactly."""
    index = FqdnIndex([("example.com", "x")])
    assert index.lookup("Example.com") is None
    assert index.lookup("example.com.") is None


def test_fqdn_duplicates_keep_the_first_and_empty_is_falsy() -> None:
    index = FqdnIndex([("a.example", "first"), ("a.example", "second"), ("*.b.example", "w1"),
                       ("*.b.example", "w2")])
    assert index.lookup("a.example") == "first"
    assert index.lookup("x.b.example") == "w1"
    assert index
    assert not FqdnIndex()
    assert FqdnIndex().lookup("anything.example") is None


def test_fqdn_only_wildcards() -> None:
    index = FqdnIndex([("*.vault.azure.net", "kv")])
    assert index
    assert index.lookup("kv1.vault.azure.net") == "kv"
    assert index.lookup("vault.azure.net") is None

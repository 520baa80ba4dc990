"""proxy.names.addresses: every spelling of an address, the IPv4 inside IPv6, and what reaches this host."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.names import addresses
from proxy.names.normalize import ip_literal_address, is_ip_literal
from proxy.policy.indexes import PrefixIndex

# -- spellings -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "canonical"), [
    pytest.param("127.0.0.1", "127.0.0.1", id="dotted"),
    pytest.param("127.1", "127.0.0.1", id="two-parts"),
    pytest.param("127.0.1", "127.0.0.1", id="three-parts"),
    pytest.param("0x7f.0.0.1", "127.0.0.1", id="hex-octet"),
    pytest.param("0X7F.1", "127.0.0.1", id="hex-upper"),
    pytest.param("0177.0.0.1", "127.0.0.1", id="octal-octet"),
    pytest.param("2130706433", "127.0.0.1", id="decimal-integer"),
    pytest.param("0x7f000001", "127.0.0.1", id="hex-integer"),
    pytest.param("017700000001", "127.0.0.1", id="octal-integer"),
    pytest.param("127.0.0.1.", "127.0.0.1", id="trailing-dot"),
    pytest.param(" 10.0.0.1 ", "10.0.0.1", id="spaces-around"),
    pytest.param("[::1]", "::1", id="brackets"),
    pytest.param("[0:0:0:0:0:0:0:1]", "::1", id="expanded"),
    pytest.param("fe80::1%eth0", "fe80::1", id="zone-id"),
    pytest.param("[fe80::1%25eth0]", "fe80::1", id="url-zone-id"),
    pytest.param("::FFFF:7F00:1", "::ffff:127.0.0.1", id="mapped-hex-upper"),
    pytest.param("::ffff:127.0.0.1", "::ffff:127.0.0.1", id="mapped-dotted"),
    pytest.param("64:FF9B::7F00:1", "64:ff9b::7f00:1", id="nat64"),
])
def test_spellings_parse_to_their_canonical_address(text: str, canonical: str) -> None:
    assert addresses.canonical(text) == canonical
    assert ip_literal_address(text) == canonical
    assert is_ip_literal(text)


@pytest.mark.parametrize(("text", "literal"), [
    pytest.param("1.2.3.4.5", True, id="five-numbers"),
    pytest.param("4294967296", True, id="over-32-bits"),
    pytest.param("a.0x", True, id="ends-in-hex-prefix"),
    pytest.param("example.123", True, id="ends-in-a-number"),
    pytest.param("08.1", True, id="bad-octal"),
    pytest.param("::1x", True, id="broken-ipv6"),
    pytest.param("[example.com]", True, id="bracketed-name"),
    pytest.param("127.0.0.1 x", False, id="trailing-garbage"),  # inet_aton stops at the space; we do not
    pytest.param("127..1", True, id="empty-part"),
    pytest.param("example.com", False, id="name"),
    pytest.param("1x.example", False, id="digits-in-name"),
    pytest.param("", False, id="empty"),
])
def test_broken_literals_are_literals_but_name_no_address(text: str, literal: bool) -> None:
    """Hosts that end in a number are IP-literal attempts (never looked up as names), yet have no address."""
    assert is_ip_literal(text) is literal
    with pytest.raises(ValueError):
        addresses.parse(text)


def _v4_spellings(value: int) -> list[str]:
    a, b, c, d = value.to_bytes(4, "big")
    return [f"{a}.{b}.{c}.{d}", str(value), hex(value), f"{a}.{(b << 16) | (c << 8) | d}",
            f"{a}.{b}.{(c << 8) | d}", f"0{a:o}.0x{b:x}.{c}.0{d:o}", f"{a}.{b}.{c}.{d}.", oct(value).replace("o", "")]


@settings(deadline=None)  # the CPU is shared: time per example is not what is tested
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_generated_ipv4_spellings_round_trip(value: int) -> None:
    expected = str(ipaddress.IPv4Address(value))
    for spelling in _v4_spellings(value):
        assert addresses.canonical(spelling) == expected, spelling
        assert is_ip_literal(spelling)


@settings(deadline=None)  # the CPU is shared: time per example is not what is tested
@given(st.integers(min_value=0, max_value=2**128 - 1), st.sampled_from(["", "%eth0", "%25lo"]), st.booleans())
def test_generated_ipv6_spellings_round_trip(value: int, zone: str, brackets: bool) -> None:
    address = ipaddress.IPv6Address(value)
    expected = addresses.canonical(str(address))
    for spelling in (str(address), address.exploded, address.exploded.upper(), str(address).upper()):
        text = spelling + zone
        assert addresses.canonical(f"[{text}]" if brackets else text) == expected


# -- what an IPv6 address carries ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "embedded"), [
    pytest.param("::ffff:10.1.2.3", ["10.1.2.3"], id="ipv4-mapped"),
    pytest.param("::10.1.2.3", ["10.1.2.3"], id="ipv4-compatible"),
    pytest.param("::ffff:0:10.1.2.3", ["10.1.2.3"], id="ipv4-translated"),
    pytest.param("64:ff9b::10.1.2.3", ["10.1.2.3"], id="nat64-well-known"),
    pytest.param("64:ff9b:1:0a01:0002:0300::", ["10.1.2.3"], id="nat64-local-use-48"),
    pytest.param("2002:0a01:0203::1", ["10.1.2.3"], id="6to4"),
    pytest.param("2001:0:4136:e378:8000:63bf:f5fe:fdfc", ["65.54.227.120", "10.1.2.3"], id="teredo"),
    pytest.param("::1", [], id="loopback-is-not-compatible"),
    pytest.param("::", [], id="unspecified-is-not-compatible"),
    pytest.param("2001:db8::1", [], id="plain-ipv6"),
    pytest.param("10.1.2.3", [], id="ipv4"),
])
def test_embedded_ipv4(text: str, embedded: list[str]) -> None:
    assert [str(a) for a in addresses.embedded_ipv4(addresses.parse(text))] == embedded


@pytest.mark.parametrize(("text", "here"), [
    pytest.param("127.0.0.1", True, id="loopback"),
    pytest.param("127.9.9.9", True, id="loopback-net"),
    pytest.param("0.0.0.0", True, id="unspecified-v4"),
    pytest.param("0", True, id="unspecified-integer"),
    pytest.param("::", True, id="unspecified-v6"),
    pytest.param("::1", True, id="loopback-v6"),
    pytest.param("::ffff:127.0.0.1", True, id="mapped-loopback"),
    pytest.param("::ffff:0.0.0.0", True, id="mapped-unspecified"),
    pytest.param("64:ff9b::127.0.0.1", True, id="nat64-loopback"),
    pytest.param("64:ff9b:1:7f00:0:100::", True, id="nat64-48-loopback"),
    pytest.param("2002:7f00:1::", True, id="6to4-loopback"),
    pytest.param("2001:0:7f00:1::", True, id="teredo-server-loopback"),
    pytest.param("2001:0:4136:e378:8000:63bf:80ff:fffe", True, id="teredo-client-loopback"),
    pytest.param("10.0.0.1", False, id="private"),
    pytest.param("2001:db8::1", False, id="documentation-v6"),
])
def test_reaches_this_host(text: str, here: bool) -> None:
    assert addresses.reaches_this_host(addresses.parse(text)) is here


def test_unspecified_is_checked_as_loopback() -> None:
    for text in ("0.0.0.0", "::", "::ffff:0.0.0.0", "64:ff9b::"):
        forms = {str(a) for a in addresses.forms(addresses.parse(text))}
        assert {"127.0.0.1", "::1"} <= forms, text


def test_prefix_index_folds_only_ipv4_mapped() -> None:
    """Allow-lists match ::ffff:a.b.c.d as a.b.c.d (same socket address), never NAT64/6to4 (would widen)."""
    index = PrefixIndex([(ipaddress.ip_network("10.0.0.0/8"), "ten")])
    assert index.lookup(addresses.parse("::ffff:10.1.2.3")) == "ten"
    assert index.lookup(ipaddress.ip_address("::ffff:10.1.2.3")) == "ten"
    assert index.lookup(addresses.parse("64:ff9b::10.1.2.3")) is None
    assert index.lookup_any(addresses.forms(addresses.parse("64:ff9b::10.1.2.3"))) == "ten"
    assert index.lookup_any(addresses.forms(addresses.parse("2002:0a01:0203::"))) == "ten"


def test_is_local_asks_the_kernel() -> None:
    assert addresses.is_local(addresses.parse("127.0.0.1"))
    assert not addresses.is_local(addresses.parse("192.0.2.1"))  # TEST-NET-1: never assigned here


@settings(deadline=None)  # the CPU is shared: time per example is not what is tested
@given(st.text(max_size=60))
def test_generated_text_parses_or_raises_value_error(text: str) -> None:
    try:
        address = addresses.parse(text)
    except ValueError:
        return
    assert is_ip_literal(text), "whatever parses as an address is an IP literal, never a name to look up"
    assert addresses.canonical(str(address)) == str(address)

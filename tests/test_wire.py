"""Unit tests of the pure wire checks (proxy/wire.py) and strict client-address parsing (proxy/clientip.py)."""

from __future__ import annotations

import ipaddress

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.errors import ConfigError
from proxy.config.loader import parse_config_text
from proxy.decision.clientip import canonical_ip, effective_client_ip, parse_hop
from proxy.decision.wire import check_head, kept_connection, kept_upgrade
from proxy.model import Settings
from proxy.policy.indexes import PrefixIndex

SETTINGS = Settings()
HOST = [(b"Host", b"x")]

HEADS = [
    # id, method, target, fields, keyword args, expected (status, words in the reason) or None
    pytest.param("GET", b"/", HOST, {}, None, id="plain"),
    pytest.param("GET", b"/", [*HOST, (b"X-A", b"a\r\n b")], {}, (400, "obs-fold"), id="obs-fold"),
    pytest.param("GET", b"/", [*HOST, (b"X-A", b"a\x00")], {}, (400, "control"), id="nul-in-value"),
    pytest.param("GET", b"/", [*HOST, (b"Authorization", b"a"), (b"authorization", b"b")], {},
                 (400, "Authorization"), id="two-authorization"),
    pytest.param("GET", b"/", [*HOST, (b"authorization", b"Bearer x")], {}, None, id="one-authorization"),
    pytest.param("GET", b"/", HOST + HOST, {}, (400, "Host"), id="two-hosts"),
    pytest.param("PRI", b"*", [], {"http_version": "HTTP/2.0"}, (400, "PRI"), id="preface"),
    pytest.param("GET", b"/", HOST, {"http_version": "HTTP/2.0"}, (400, "HTTP/1 connection"),
                 id="http2-line-over-http1"),
    pytest.param("GET", b"/", [(b"host", b"a")], {"http_version": "HTTP/2.0", "h2_authority": b"b"},
                 (400, ":authority"), id="h2-host-mismatch"),
    pytest.param("GET", b"/", [(b"host", b"A")], {"http_version": "HTTP/2.0", "h2_authority": b"a"}, None,
                 id="h2-host-same-name"),
    pytest.param("GET", b"http://other.example/x", [], {"http_version": "HTTP/2.0", "h2_authority": b"a"},
                 (400, "origin-form"), id="h2-path-is-a-url"),
    pytest.param("OPTIONS", b"*", [], {"http_version": "HTTP/2.0", "h2_authority": b"a"}, None, id="h2-asterisk"),
    pytest.param("GET", b"/a\x00b", HOST, {}, (400, "control character"), id="nul-in-target"),
    pytest.param("GET", b"/a\x7fb", HOST, {}, (400, "control character"), id="del-in-target"),
    pytest.param("GET", b"/c/\xff\xfe", HOST, {}, None, id="non-utf8-target"),
    pytest.param("GET", b"/", [(b"x-%d" % i, b"v") for i in range(101)], {}, (431, "headerCount"), id="count"),
    pytest.param("GET", b"/", [*HOST, (b"x", b"v" * 65536)], {}, (431, "headerBytes"), id="bytes"),
    pytest.param("GET", b"/" + b"a" * 8192, HOST, {}, (414, "targetBytes"), id="target"),
    pytest.param("GET", b"/" + b"a" * 8191, HOST, {}, None, id="target-at-limit"),
]


@pytest.mark.parametrize(("method", "target", "fields", "kwargs", "expected"), HEADS)
def test_check_head(method: str, target: bytes, fields: list[tuple[bytes, bytes]], kwargs: dict,
                    expected: tuple[int, str] | None) -> None:
    refusal = check_head(method, target, fields, SETTINGS, **kwargs)
    if expected is None:
        assert refusal is None
    else:
        assert refusal is not None and refusal.status == expected[0] and expected[1] in refusal.reason


@pytest.mark.parametrize(("value", "kept"), [
    ("h2c", ""), ("H2C", ""), ("websocket", "websocket"), ("WebSocket, h2c", "WebSocket"),
    ("h2c, websocket", "websocket"), ("foo/1.0, h2c", ""), (" , ", ""),
])
def test_kept_upgrade(value: str, kept: str) -> None:
    assert kept_upgrade(value) == kept


def test_kept_connection() -> None:
    assert kept_connection("keep-alive, Upgrade, HTTP2-Settings", {"upgrade", "http2-settings"}) == "keep-alive"


# -- client addresses ----------------------------------------------------------------------------------------------

HOPS = [
    pytest.param("203.0.113.5", "203.0.113.5", id="v4"),
    pytest.param(" 203.0.113.5 ", "203.0.113.5", id="v4-spaces"),
    pytest.param("203.0.113.5:443", "203.0.113.5", id="v4-port"),
    pytest.param("2001:db8::1", "2001:db8::1", id="v6"),
    pytest.param("[2001:db8::1]", "2001:db8::1", id="v6-brackets"),
    pytest.param("[2001:db8::1]:443", "2001:db8::1", id="v6-port"),
    pytest.param("::ffff:203.0.113.5", "203.0.113.5", id="mapped-dotted"),
    pytest.param("::ffff:cb00:7105", "203.0.113.5", id="mapped-hex"),
    pytest.param("[::ffff:203.0.113.5]:80", "203.0.113.5", id="mapped-port"),
    pytest.param("[2001:db8::1", None, id="unclosed-bracket"),
    pytest.param("[203.0.113.55", None, id="unclosed-bracket-v4"),
    pytest.param("[203.0.113.55]", None, id="bracketed-v4"),
    pytest.param("2001:db8::1]", None, id="stray-bracket"),
    pytest.param("203.0.113.5x", None, id="trailing-garbage"),
    pytest.param("203.0.113.5 x", None, id="trailing-word"),
    pytest.param("2001:db8::1%eth0", None, id="zone-id"),
    pytest.param("[fe80::1%25eth0]", None, id="zone-id-bracketed"),
    pytest.param("", None, id="empty"),
    pytest.param("203.0.113.5:99999", None, id="port-out-of-range"),
    pytest.param("203.0.113.5:0", None, id="port-zero"),
    pytest.param("203.0.113.05", None, id="leading-zero"),
    pytest.param("2130706433", None, id="integer"),
    pytest.param("२०३.0.113.5", None, id="non-ascii-digits"),
    pytest.param("unknown", None, id="unknown"),
]


@pytest.mark.parametrize(("hop", "expected"), HOPS)
def test_parse_hop(hop: str, expected: str | None) -> None:
    parsed = parse_hop(hop)
    assert (str(parsed) if parsed is not None else None) == expected


TRUSTED = PrefixIndex([(ipaddress.ip_network("127.0.0.0/8"), True)])


@given(st.ip_addresses(), st.one_of(st.none(), st.integers(1, 65535)))
def test_every_well_formed_hop_is_read_as_its_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                                      port: int | None) -> None:
    text = str(address) if port is None else (f"{address}:{port}" if address.version == 4 else f"[{address}]:{port}")
    expected = getattr(address, "ipv4_mapped", None) or address
    assert parse_hop(text) == expected
    if not TRUSTED.lookup(expected):
        assert effective_client_ip("127.0.0.1", [text], TRUSTED) == str(expected)


@given(st.ip_addresses(v=6), st.text(min_size=1, max_size=8))
def test_an_unclosed_or_suffixed_hop_falls_back_to_the_socket(address: ipaddress.IPv6Address, junk: str) -> None:
    for hop in (f"[{address}", f"{address}%{junk}", f"[{address}]{junk}x"):
        assert effective_client_ip("127.0.0.1", [hop], TRUSTED) == "127.0.0.1"


def test_a_mapped_socket_peer_is_canonical() -> None:
    assert canonical_ip("::ffff:127.0.0.1") == "127.0.0.1"
    assert canonical_ip("::1") == "::1"
    assert effective_client_ip("::ffff:127.0.0.1", ["::ffff:203.0.113.5"], TRUSTED) == "203.0.113.5"


# -- settings.requestLimits ------------------------------------------------------------------------------------------

LIMIT_SETTINGS = [
    pytest.param({}, (65536, 100, 8192), None, id="defaults"),
    pytest.param({"headerBytes": 4096, "headerCount": 20, "targetBytes": 1024}, (4096, 20, 1024), None, id="set"),
    pytest.param({"headerBytes": 10}, None, "settings.requestLimits.headerBytes", id="too-small"),
    pytest.param({"headerCount": "many"}, None, "settings.requestLimits.headerCount", id="not-a-number"),
    pytest.param({"targetBytes": True}, None, "settings.requestLimits.targetBytes", id="boolean"),
    pytest.param({"header_bytes": 4096}, None, "settings.requestLimits", id="unknown-key"),
]


@pytest.mark.parametrize(("limits", "expected", "error_path"), LIMIT_SETTINGS)
def test_request_limits_settings(limits: dict, expected: tuple[int, int, int] | None, error_path: str | None) -> None:
    document = {"settings": {"requestLimits": limits}, "perimeters": [{"name": "p", "profiles": [{"name": "x"}],
                "resourceAssociations": [{"name": "a", "profile": "x", "privateLinkResource": {
                    "id": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
                          "Microsoft.Storage/storageAccounts/a"}, "local": {"listen": "127.0.0.1:10100",
                                                                           "upstream": "http://127.0.0.1:1"}}]}]}
    if expected is None:
        with pytest.raises(ConfigError) as caught:
            parse_config_text(yaml.safe_dump(document), "limits.yaml")
        assert error_path in str(caught.value)
        return
    settings = parse_config_text(yaml.safe_dump(document), "limits.yaml").settings
    assert (settings.max_header_bytes, settings.max_header_count, settings.max_target_bytes) == expected

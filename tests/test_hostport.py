"""proxy.names.hostport: the one canonical form every host comparison uses (Host header, :authority, target, SNI)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.names.hostport import canonical_host, parse_authority, same_host, url_authority

DEST = "allowed.test"

HOST_HEADERS = [
    pytest.param("allowed.test", True, id="same"),
    pytest.param("ALLOWED.Test", True, id="case"),
    pytest.param("allowed.test.", True, id="trailing-dot"),
    pytest.param("allowed.test:80", True, id="port"),
    pytest.param("allowed.test:0", True, id="port-zero"),
    pytest.param(" allowed.test\t", True, id="optional-whitespace"),
    pytest.param(None, True, id="absent"),
    pytest.param("evil.test", False, id="other-host"),
    pytest.param("allowed.test.evil.test", False, id="suffix"),
    pytest.param("allowed.test:@evil.test", False, id="userinfo-after-port"),
    pytest.param("user@allowed.test", False, id="userinfo"),
    pytest.param("allowed.test@evil.test", False, id="at-sign"),
    pytest.param("allowed.test evil", False, id="space"),
    pytest.param("allowed.test:", False, id="empty-port"),
    pytest.param("allowed.test:http", False, id="named-port"),
    pytest.param("allowed.test:80x", False, id="port-garbage"),
    pytest.param("allowed.test:99999", False, id="port-out-of-range"),
    pytest.param("allowed.test:123456", False, id="port-too-long"),
    pytest.param("allowed.test:80:80", False, id="two-ports"),
    pytest.param("allowed.test/evil", False, id="slash"),
    pytest.param("allowed.test\\evil", False, id="backslash"),
    pytest.param("allowed%2etest", False, id="percent-encoded"),
    pytest.param("allowed.test#x", False, id="fragment"),
    pytest.param("allowed.test\x00", False, id="nul"),
    pytest.param("allowed_test", False, id="underscore"),
    pytest.param("", False, id="empty"),
    pytest.param(":80", False, id="port-only"),
    pytest.param("[allowed.test]", False, id="bracketed-name"),
    pytest.param("allowed.test\u3002evil", False, id="ideographic-full-stop"),
    pytest.param("allowed.test\u200b", False, id="zero-width-space-idna-would-drop"),
    pytest.param("ALLOWED.\uff54est", False, id="fullwidth-letter-idna-would-map"),
    pytest.param("allowed.test:\u0668\u0660", False, id="non-ascii-digits-in-port"),
]


@pytest.mark.parametrize(("value", "same"), HOST_HEADERS)
def test_host_header_names_the_destination_only_when_it_is_that_host(value: str | None, same: bool) -> None:
    assert same_host(value, DEST) is same


ADDRESSES = [
    pytest.param("[::1]:8080", "::1", True, id="bracketed-v6-port"),
    pytest.param("[::1]", "[::1]", True, id="bracketed-v6"),
    pytest.param("[0:0::1]", "::1", True, id="v6-spelling"),
    pytest.param("::1", "::1", False, id="unbracketed-v6"),
    pytest.param("127.0.0.1:80", "2130706433", True, id="numeric-v4-destination"),
    pytest.param("127.1", "127.0.0.1", True, id="short-v4"),
    pytest.param("127.0.0.2", "127.0.0.1", False, id="other-v4"),
    pytest.param("[::1", "::1", False, id="unterminated"),
    pytest.param("[::1]x", "::1", False, id="garbage-after-bracket"),
]


@pytest.mark.parametrize(("value", "destination", "same"), ADDRESSES)
def test_ip_literals_compare_by_address(value: str, destination: str, same: bool) -> None:
    assert same_host(value, destination) is same


SERVER_NAMES = [
    pytest.param("allowed.test", True, id="same"),
    pytest.param("Allowed.TEST.", True, id="case-dot"),
    pytest.param("allowed.test:443", False, id="port-is-not-a-name"),
    pytest.param("<malformed server_name>", False, id="unreadable"),
    pytest.param("evil.test", False, id="other"),
]


@pytest.mark.parametrize(("value", "same"), SERVER_NAMES)
def test_server_name_has_no_port(value: str, same: bool) -> None:
    assert same_host(value, DEST, with_port=False) is same


TARGETS = [
    pytest.param("/path?q", None, id="origin-form"),
    pytest.param("*", None, id="asterisk"),
    pytest.param("http://other.test/x", "other.test", id="absolute"),
    pytest.param("HTTPS://other.test:8443?x", "other.test:8443", id="absolute-query"),
    pytest.param("http://a@b.test/", "a@b.test", id="userinfo-kept-so-it-mismatches"),
    pytest.param("other.test:80", "other.test:80", id="authority-form"),
]


@pytest.mark.parametrize(("target", "authority"), TARGETS)
def test_url_authority(target: str, authority: str | None) -> None:
    assert url_authority(target) == authority


def test_parse_authority_returns_the_canonical_host_and_port() -> None:
    assert parse_authority("API.Allowed.Test.:8080") == ("api.allowed.test", 8080)
    assert parse_authority("[2001:DB8::1]") == ("2001:db8::1", None)
    assert canonical_host("[::1]") == canonical_host("0::1") == "::1"


@given(st.text(max_size=40))
def test_never_raises_and_unreadable_values_never_match(value: str) -> None:
    result = same_host(value, DEST)
    if any(c in value for c in "@/\\ ?#%") and value.strip(" \t") == value:
        assert result is False


@given(st.integers(min_value=0, max_value=65535), st.sampled_from(["allowed.test", "ALLOWED.TEST", "allowed.test."]))
def test_any_numeric_port_is_accepted(port: int, host: str) -> None:
    assert same_host(f"{host}:{port}", DEST)

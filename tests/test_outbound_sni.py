"""The TLS server name in a tunnel is read from the raw ClientHello, also in the forms mitmproxy's own parser
turns into "no SNI": a server name that is present but not one readable host name is a mismatch (tunnel
closed in Enforced, one would-deny record in Transition). A ClientHello without any server name is let
through without a record: the tunnel's host was decided at CONNECT and its bytes only reach the pinned address.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from tests.support import Backend
from tests.test_clienthello import crafted_hello, sni_extension
from tests.test_outbound_e2e import (
    ALLOWED,
    DENIED,
    RESOURCE_ALLOWED,
    open_tunnel,
    params_of,
    records_after,
    self_signed,
)
from tests.test_outbound_hosts import NAME, read_response, two_mode_proxy

pytestmark = pytest.mark.e2e

PROBES = [
    pytest.param(crafted_hello(sni_extension(b"evil.test")), "evil.test", id="other-name"),
    pytest.param(crafted_hello(sni_extension(NAME.encode() + b"\x00.evil.test")), "not an ASCII host name",
                 id="nul-in-name"),
    pytest.param(crafted_hello(sni_extension("évil.test".encode())), "not an ASCII host name", id="utf8-name"),
    pytest.param(crafted_hello(sni_extension(NAME.encode(), b"evil.test")), "2 host names", id="two-names"),
    pytest.param(crafted_hello((0, b"\x00\x09\x00\x00\x05evil")), "malformed server_name", id="malformed"),
    pytest.param(crafted_hello(sni_extension(NAME.encode() + b":443")), f"{NAME}:443", id="name-with-port"),
    pytest.param(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", "not a readable ClientHello", id="not-a-client-hello"),
    pytest.param(crafted_hello(sni_extension(b"a"), sni_extension(b"b")), "sent twice", id="duplicate-extension"),
]


def _send_hello(fwd: int, port: int, hello: bytes) -> bytes | None:
    """CONNECT, then the raw ClientHello; what comes back (b"" when the tunnel was closed, None: nothing)."""
    sock, status = open_tunnel(fwd, NAME, port)
    assert " 200 " in status
    with sock:
        sock.sendall(hello)
        sock.settimeout(5)
        try:
            return sock.recv(4096)
        except ConnectionResetError:
            return b""
        except TimeoutError:
            return None


@pytest.mark.parametrize(("hello", "shown"), PROBES)
def test_unreadable_or_other_server_name_is_a_mismatch(nsp_proxy, dnsmasq, backends, tmp_path: Path,
                                                       hello: bytes, shown: str) -> None:
    cert = self_signed(tmp_path, NAME)
    backend: Backend = backends("tls", host="127.0.0.2", tls=cert.server)
    proxy, enforced, learning = two_mode_proxy(nsp_proxy, dnsmasq)

    assert _send_hello(enforced, backend.port, hello) == b""  # closed by the proxy, never forwarded
    _send_hello(learning, backend.port, hello)  # forwarded: the backend answers (with an alert) or hangs up
    connect_e, sni_e, connect_l, sni_l = records_after(proxy, 4)
    assert connect_e["Category"] == connect_l["Category"] == ALLOWED
    assert (sni_e["Category"], sni_e["ResultAction"]) == (DENIED, "Denied")
    assert (sni_l["Category"], sni_l["ResultAction"]) == (RESOURCE_ALLOWED, "Approved")
    for record in (sni_e, sni_l):
        assert "TLS SNI" in record["ResultDescription"] and "differs from the destination" in record[
            "ResultDescription"]
        assert shown in params_of(record)["sni"]
        assert record["OperationName"] == f"TLS {NAME}:{backend.port}"
        assert record["DestinationProtocol"] == "HTTPS:TCP"
    assert backend.hits == []


def test_client_hello_without_server_name_is_let_through(nsp_proxy, dnsmasq, backends, tmp_path: Path) -> None:
    cert = self_signed(tmp_path, NAME)
    backend: Backend = backends("tls", host="127.0.0.2", tls=cert.server)
    proxy, enforced, learning = two_mode_proxy(nsp_proxy, dnsmasq)
    context = ssl.create_default_context(cafile=str(cert.ca_file))
    context.check_hostname = False
    for fwd in (enforced, learning):
        sock, status = open_tunnel(fwd, NAME, backend.port)
        assert " 200 " in status
        with context.wrap_socket(sock) as tls:  # no server_hostname: no server_name extension
            tls.sendall(f"GET /no-sni HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
            assert read_response(tls) == 200
    assert [hit[1] for hit in backend.hits] == ["/no-sni", "/no-sni"]
    assert [r["Category"] for r in records_after(proxy, 2)] == [ALLOWED, ALLOWED]  # the CONNECTs only


def _record_version(minor: int) -> bytes:
    hello = bytearray(crafted_hello(sni_extension(NAME.encode())))
    hello[2] = minor
    return bytes(hello)


UNDECRYPTABLE = [
    pytest.param(_record_version(0x05), id="record-version-3.5"),
    pytest.param(_record_version(0xFF), id="record-version-3.255"),
]


@pytest.mark.parametrize("hello", UNDECRYPTABLE)
def test_intercept_tls_refuses_a_client_hello_it_cannot_decrypt(nsp_proxy, dnsmasq, backends, tmp_path: Path,
                                                                hello: bytes) -> None:
    """With interceptTls, a ClientHello that servers accept but mitmproxy would pass through unread (a record
    version it does not expect) would hide the hosts inside TLS: it counts as a mismatch."""
    cert = self_signed(tmp_path, NAME)
    backend: Backend = backends("tls", host="127.0.0.2", tls=cert.server)
    proxy, enforced, learning = two_mode_proxy(nsp_proxy, dnsmasq, intercept=True,
                                               extra_args=["--set", f"confdir={tmp_path / 'mitmproxy'}"])
    assert _send_hello(enforced, backend.port, hello) == b""
    _send_hello(learning, backend.port, hello)
    connect_e, refused, connect_l, would = records_after(proxy, 4)
    assert connect_e["Category"] == connect_l["Category"] == ALLOWED
    assert (refused["Category"], would["Category"]) == (DENIED, RESOURCE_ALLOWED)
    for record in (refused, would):
        assert "interceptTls cannot decrypt" in params_of(record)["sni"]

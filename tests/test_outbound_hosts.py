"""Every host a forward-proxy request names must be its destination: Host header(s), absolute target,
``:authority``, and the TLS server name; in plain forward requests, in plain HTTP inside a CONNECT tunnel, and
inside a tunnel decrypted with settings.interceptTls (HTTP/1.1 and HTTP/2).

Each probe is sent to an Enforced and a Transition listener of the same proxy. Enforced: 403 (inside the tunnel
for tunnelled requests), nothing reaches the backend, exactly one Denied record naming the mismatch.
Transition: the request goes through to the decided destination, with exactly one would-deny record.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from tests.support import Backend, free_port
from tests.test_outbound_e2e import (
    ALLOWED,
    DENIED,
    RESOURCE_ALLOWED,
    association,
    config,
    open_tunnel,
    perimeter,
    records_after,
    self_signed,
)

pytestmark = pytest.mark.e2e

NAME = "api.allowed.test"


def read_response(sock: socket.socket | ssl.SSLSocket) -> int:
    """The status of one HTTP/1.1 response (head and Content-Length body read); 0 when the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ", 2)[1])


def two_mode_proxy(nsp_proxy, dnsmasq, *, intercept: bool = False, extra_args: list[str] | None = None,
                   ) -> tuple[Any, int, int]:
    """A proxy with an Enforced and a Transition forward listener; api.allowed.test (ruled) -> 127.0.0.2."""
    dns_server = dnsmasq({NAME: "127.0.0.2", "evil.test": "127.0.0.3"})
    enforced, learning = free_port(), free_port()
    settings = {"interceptTls": True} if intercept else {}
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", [NAME], [
        association("app", outboundListen=f"127.0.0.1:{enforced}"),
        association("learner", mode="Learning", outboundListen=f"127.0.0.1:{learning}")]), **settings),
        extra_args=extra_args)
    return proxy, enforced, learning


# A request the wire guard refuses in every mode (RFC 9112: a second Host header; an HTTP/2 :path that is not a
# path): 400, nothing forwarded, one NspProxyRequestRefused record per probe (README, wire hygiene).
REFUSED = "refused by the wire guard"


def assert_refused(statuses: list[int], backend: Backend, records: list[dict[str, Any]]) -> None:
    assert statuses == [400, 400] and backend.hits == []
    for record in records:
        assert (record["Category"], record["ResultAction"]) == ("NspProxyRequestRefused", "Denied"), record


def assert_probe_records(records: list[dict[str, Any]], label: str, port: int) -> None:
    """The Enforced probe's Denied record and the Transition probe's would-deny record."""
    enforced, learning = records
    assert (enforced["Category"], enforced["ResultAction"]) == (DENIED, "Denied"), enforced
    assert (learning["Category"], learning["ResultAction"]) == (RESOURCE_ALLOWED, "Approved"), learning
    assert "Enforced would deny" in learning["ResultDescription"]
    for record in records:
        assert label in record["ResultDescription"] and "differs from the destination" in record["ResultDescription"]
        assert (record["DestinationFqdn"], record["DestinationPort"]) == (NAME, str(port)), record


# -- plain forward requests -----------------------------------------------------------------------------------

FORWARD = [
    pytest.param("Host: evil.test", "Host header", id="host-other"),
    pytest.param("Host: {name}:@evil.test", "Host header", id="host-userinfo-after-port"),
    pytest.param("Host: x@{name}", "Host header", id="host-userinfo"),
    pytest.param("Host: {name} evil", "Host header", id="host-space"),
    pytest.param("Host: {name}:", "Host header", id="host-empty-port"),
    pytest.param("Host: {name}:8o", "Host header", id="host-port-garbage"),
    pytest.param("Host: {name}:{port}\r\nHost: evil.test", REFUSED, id="second-host-header"),
]


@pytest.mark.parametrize(("header", "label"), FORWARD)
def test_plain_forward_request_naming_another_host(nsp_proxy, dnsmasq, backends, header: str, label: str) -> None:
    backend: Backend = backends("api", host="127.0.0.2")
    proxy, enforced, learning = two_mode_proxy(nsp_proxy, dnsmasq)
    line = header.format(name=NAME, port=backend.port)
    request = f"GET http://{NAME}:{backend.port}/probe HTTP/1.1\r\n{line}\r\nConnection: close\r\n\r\n".encode()
    statuses = []
    for fwd in (enforced, learning):
        with socket.create_connection(("127.0.0.1", fwd), timeout=10) as sock:
            sock.sendall(request)
            statuses.append(read_response(sock))
    if label == REFUSED:
        assert_refused(statuses, backend, records_after(proxy, 2))
        return
    assert statuses == [403, 200]
    assert [hit[1] for hit in backend.hits] == ["/probe"]
    assert_probe_records(records_after(proxy, 2), label, backend.port)


# -- plain HTTP inside a CONNECT tunnel -----------------------------------------------------------------------

TUNNELLED = [
    pytest.param("GET http://evil.test:{port}/probe HTTP/1.1\r\nHost: {name}:{port}", "request target",
                 id="absolute-target-other"),
    pytest.param("GET /probe HTTP/1.1\r\nHost: evil.test", "Host header", id="host-other"),
    pytest.param("GET /probe HTTP/1.1\r\nHost: {name}:@evil.test", "Host header", id="host-userinfo-after-port"),
    pytest.param("GET /probe HTTP/1.1\r\nHost: {name}\r\nHost: evil.test", REFUSED, id="second-host-header"),
]


@pytest.mark.parametrize(("head", "label"), TUNNELLED)
def test_plain_http_in_a_tunnel_naming_another_host(nsp_proxy, dnsmasq, backends, head: str, label: str) -> None:
    backend: Backend = backends("api", host="127.0.0.2")
    proxy, enforced, learning = two_mode_proxy(nsp_proxy, dnsmasq)
    request = (head.format(name=NAME, port=backend.port) + "\r\nConnection: close\r\n\r\n").encode()
    statuses = []
    for fwd in (enforced, learning):
        sock, status = open_tunnel(fwd, NAME, backend.port)
        with sock:
            assert " 200 " in status
            sock.sendall(request)
            statuses.append(read_response(sock))
    if label == REFUSED:
        connect_e, probe_e, connect_l, probe_l = records_after(proxy, 4)
        assert_refused(statuses, backend, [probe_e, probe_l])
        return
    assert statuses == [403, 200]
    assert [hit[1].endswith("/probe") for hit in backend.hits] == [True]  # an absolute target stays absolute
    connect_e, probe_e, connect_l, probe_l = records_after(proxy, 4)
    assert connect_e["Category"] == connect_l["Category"] == ALLOWED
    assert_probe_records([probe_e, probe_l], label, backend.port)


# -- inside a tunnel decrypted with interceptTls ----------------------------------------------------------------


def _tls_over_tunnel(fwd: int, port: int, ca: Path, alpn: str) -> ssl.SSLSocket:
    sock, status = open_tunnel(fwd, NAME, port)
    assert " 200 " in status
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols([alpn])
    tls = context.wrap_socket(sock, server_hostname=NAME)
    assert tls.selected_alpn_protocol() == alpn
    return tls


def _h1_over(tls: ssl.SSLSocket, head: str, port: int) -> int:
    tls.sendall((head.format(name=NAME, port=port) + "\r\nConnection: close\r\n\r\n").encode())
    return read_response(tls)


def _h2_over(tls: ssl.SSLSocket, headers: list[tuple[str, str]], port: int) -> int:
    """One HTTP/2 request with exactly ``headers`` (pseudo-headers included); the response status."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                                                normalize_outbound_headers=False))
    conn.initiate_connection()
    conn.send_headers(1, [(k, v.format(name=NAME, port=port)) for k, v in headers], end_stream=True)
    tls.sendall(conn.data_to_send())
    while True:
        try:
            data = tls.recv(65536)
        except ConnectionResetError:
            return 0
        if not data:
            return 0
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                return int(dict(event.headers)[b":status"])
            if isinstance(event, h2.events.StreamReset):
                return 0
        tls.sendall(conn.data_to_send())


def _h2_request(authority: str, path: str = "/probe", *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [(":method", "GET"), (":scheme", "https"), (":authority", authority), (":path", path), *extra]


INTERCEPTED = [
    pytest.param("http/1.1", "GET https://evil.test:{port}/probe HTTP/1.1\r\nHost: {name}:{port}",
                 "request target", id="h1-absolute-target-other"),
    pytest.param("http/1.1", "GET /probe HTTP/1.1\r\nHost: evil.test", "Host header", id="h1-host-other"),
    pytest.param("http/1.1", "GET /probe HTTP/1.1\r\nHost: {name}:@evil.test", "Host header",
                 id="h1-host-userinfo-after-port"),
    pytest.param("h2", _h2_request("evil.test:{port}"), "Host header", id="h2-authority-other"),
    pytest.param("h2", _h2_request("{name}:{port}", "https://evil.test/probe"), REFUSED, id="h2-path-holds-url"),
    # refused by the h2 stack itself (a protocol error closes the connection): undecided, nothing forwarded
    pytest.param("h2", _h2_request("{name}:{port}", "/probe", ("host", "evil.test")), None,
                 id="h2-host-header-beside-authority"),
    # refused by mitmproxy's HTTP/1 parser with 400 before any hook: undecided, nothing forwarded
    pytest.param("http/1.1", "GET https://x@{name}:{port}/probe HTTP/1.1\r\nHost: {name}:{port}", None,
                 id="h1-absolute-target-userinfo"),
]


@pytest.mark.parametrize(("alpn", "request_", "label"), INTERCEPTED)
def test_decrypted_request_naming_another_host(nsp_proxy, dnsmasq, backends, tmp_path: Path, alpn: str,
                                               request_: Any, label: str | None) -> None:
    cert = self_signed(tmp_path, NAME)
    backend: Backend = backends("tls", host="127.0.0.2", tls=cert.server)
    confdir = tmp_path / "mitmproxy"
    proxy, enforced, learning = two_mode_proxy(
        nsp_proxy, dnsmasq, intercept=True,
        extra_args=["--set", f"confdir={confdir}", "--set", f"ssl_verify_upstream_trusted_ca={cert.ca_file}"])
    statuses = []
    for fwd in (enforced, learning):
        with _tls_over_tunnel(fwd, backend.port, confdir / "mitmproxy-ca-cert.pem", alpn) as tls:
            send = _h1_over if alpn == "http/1.1" else _h2_over
            statuses.append(send(tls, request_, backend.port))
    if label is None:
        assert statuses in ([0, 0], [400, 400]) and backend.hits == []
        assert [r["Category"] for r in records_after(proxy, 2)] == [ALLOWED, ALLOWED]  # the two CONNECTs
        return
    if label == REFUSED:
        connect_e, probe_e, connect_l, probe_l = records_after(proxy, 4)
        assert_refused(statuses, backend, [probe_e, probe_l])
        return
    assert statuses == [403, 200]
    assert [hit[1].endswith("/probe") for hit in backend.hits] == [True]  # an absolute target stays absolute
    connect_e, probe_e, connect_l, probe_l = records_after(proxy, 4)
    assert connect_e["Category"] == connect_l["Category"] == ALLOWED
    assert_probe_records([probe_e, probe_l], label, backend.port)
    assert probe_e["DestinationProtocol"] == "HTTPS:TCP"

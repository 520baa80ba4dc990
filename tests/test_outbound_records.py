"""What each outbound record says (OperationName, DestinationProtocol), and what a reload does to open tunnels.

Records and what they say:
  plain forward request      ``GET http://host:port/path`` (no query), HTTP; HTTPS for an absolute https:// target
  CONNECT                    ``CONNECT host:port``, TCP: the tunnel's bytes are not seen when it is decided
  TLS ClientHello (mismatch) ``TLS host:port``, HTTPS
  request inside a tunnel    ``GET http(s)://tunnel-host:port/path``, HTTP in a plain tunnel, HTTPS decrypted
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.support import Backend, free_port, wait_until
from tests.test_outbound_e2e import (
    ALLOWED,
    DENIED,
    RESOURCE_ALLOWED,
    association,
    config,
    curl,
    https_get_over,
    open_tunnel,
    perimeter,
    records_after,
    self_signed,
)
from tests.test_outbound_hosts import NAME, read_response

pytestmark = pytest.mark.e2e


def _raw(fwd: int, request: str) -> int:
    with socket.create_connection(("127.0.0.1", fwd), timeout=10) as sock:
        sock.sendall(request.encode())
        return read_response(sock)


CASES = [
    pytest.param(lambda fwd, port, ca: curl(fwd, f"http://{NAME}:{port}/a/b?secret=1").status, False,
                 [("GET http://{name}:{port}/a/b", "HTTP:TCP", ALLOWED)], id="plain-forward-query-stripped"),
    pytest.param(lambda fwd, port, ca: _raw(fwd, f"GET https://{NAME}:{port}/abs?q HTTP/1.1\r\nHost: {NAME}:{port}"
                                                 "\r\nConnection: close\r\n\r\n"), True,
                 [("GET https://{name}:{port}/abs", "HTTPS:TCP", ALLOWED)], id="absolute-https-target"),
    pytest.param(lambda fwd, port, ca: curl(fwd, f"https://{NAME}:{port}/t", "--cacert", str(ca)).status, True,
                 [("CONNECT {name}:{port}", "TCP:TCP", ALLOWED)], id="connect"),
    pytest.param(lambda fwd, port, ca: curl(fwd, f"http://{NAME}:{port}/in?x=1", "-p", "-H",
                                                        "Host: evil.test").status, False,
                 [("CONNECT {name}:{port}", "TCP:TCP", ALLOWED), ("GET http://{name}:{port}/in", "HTTP:TCP", DENIED)],
                 id="request-in-plain-tunnel"),
]


@pytest.mark.parametrize(("send", "tls", "expected"), CASES)
def test_operation_name_and_destination_protocol(nsp_proxy, dnsmasq, backends, tmp_path: Path, send: Any,
                                                 tls: bool, expected: list[tuple[str, str, str]]) -> None:
    cert = self_signed(tmp_path, NAME)
    backend: Backend = backends("api", host="127.0.0.2", tls=cert.server if tls else None)
    dns_server = dnsmasq({NAME: "127.0.0.2"})
    fwd = free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", [NAME], [
        association("app", outboundListen=f"127.0.0.1:{fwd}")])),
        extra_args=["--set", f"ssl_verify_upstream_trusted_ca={cert.ca_file}"])
    status = send(fwd, backend.port, cert.ca_file)
    assert status == (403 if expected[-1][2] == DENIED else 200)
    records = records_after(proxy, len(expected))
    seen = [(r["OperationName"], r["DestinationProtocol"], r["Category"]) for r in records]
    assert seen == [(op.format(name=NAME, port=backend.port), protocol, category)
                    for op, protocol, category in expected]


# -- reloads with open tunnels --------------------------------------------------------------------------------

MODES = [
    pytest.param("Enforced", 403, DENIED, id="enforced"),
    pytest.param("Learning", 200, RESOURCE_ALLOWED, id="transition"),
]


def _document(dns_port: int, fwd: int, mode: str, fqdns: list[str], intercept: bool) -> dict[str, Any]:
    return config(dns_port, perimeter("p1", fqdns, [association("app", mode=mode, outboundListen=f"127.0.0.1:{fwd}")]),
                  interceptTls=intercept)


@pytest.mark.parametrize("intercept", [pytest.param(False, id="plain-tunnel"), pytest.param(True, id="intercepted")])
@pytest.mark.parametrize(("mode", "after", "category"), MODES)
def test_requests_in_an_open_tunnel_are_decided_by_the_generation_in_force(
        nsp_proxy, dnsmasq, backends, tmp_path: Path, intercept: bool, mode: str, after: int, category: str) -> None:
    """A reload that removes the rule a tunnel was opened under: the next request inside the open tunnel is
    decided against the new generation (Enforced 403, Transition a would-deny record), with one record."""
    cert = self_signed(tmp_path, NAME)
    backend: Backend = backends("api", host="127.0.0.2", tls=cert.server if intercept else None)
    backend.keep_alive()
    dns_server = dnsmasq({NAME: "127.0.0.2"})
    fwd, confdir = free_port(), tmp_path / "mitmproxy"
    proxy = nsp_proxy(_document(dns_server.port, fwd, mode, [NAME], intercept),
                      extra_args=["--set", f"confdir={confdir}", "--set",
                                  f"ssl_verify_upstream_trusted_ca={cert.ca_file}"])
    sock, status = open_tunnel(fwd, NAME, backend.port)
    assert " 200 " in status
    channel: socket.socket = sock
    if intercept:
        channel = ssl.create_default_context(cafile=str(confdir / "mitmproxy-ca-cert.pem")).wrap_socket(
            sock, server_hostname=NAME)
    with channel:
        channel.sendall(f"GET /before HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
        assert read_response(channel) == 200
        proxy.write_config(_document(dns_server.port, fwd, mode, ["other.test"], intercept))
        assert wait_until(lambda: proxy.metric("nsp_config_generation") == 2) is not None, proxy.stderr()
        channel.sendall(f"GET /after HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
        assert read_response(channel) == after
    assert [hit[1] for hit in backend.hits] == (["/before", "/after"] if after == 200 else ["/before"])
    connect, decided = records_after(proxy, 2)
    assert (connect["Category"], connect["AccessRuleVersion"]) == (ALLOWED, "1")
    assert (decided["Category"], decided["AccessRuleVersion"]) == (category, "2")
    assert f"no outbound rule allows {NAME}" in decided["ResultDescription"]
    scheme = "https" if intercept else "http"
    assert decided["OperationName"] == f"GET {scheme}://{NAME}:{backend.port}/after"


def test_an_uninspected_tls_tunnel_stays_open_across_a_reload(nsp_proxy, dnsmasq, backends, tmp_path: Path) -> None:
    """Without interceptTls the proxy sees no requests in a TLS tunnel: one opened under a rule a reload removes
    stays open until it is closed (documented); a new CONNECT is decided by the new generation."""
    cert = self_signed(tmp_path, NAME)
    backend: Backend = backends("api", host="127.0.0.2", tls=cert.server)
    backend.keep_alive()
    dns_server = dnsmasq({NAME: "127.0.0.2"})
    fwd = free_port()
    proxy = nsp_proxy(_document(dns_server.port, fwd, "Enforced", [NAME], False))
    sock, status = open_tunnel(fwd, NAME, backend.port)
    assert " 200 " in status
    context = ssl.create_default_context(cafile=str(cert.ca_file))
    with context.wrap_socket(sock, server_hostname=NAME) as tls:
        tls.sendall(f"GET /before HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
        assert read_response(tls) == 200
        proxy.write_config(_document(dns_server.port, fwd, "Enforced", ["other.test"], False))
        assert wait_until(lambda: proxy.metric("nsp_config_generation") == 2) is not None, proxy.stderr()
        tls.sendall(f"GET /after HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
        assert read_response(tls) == 200
    refused = curl(fwd, f"https://{NAME}:{backend.port}/new", "--cacert", str(cert.ca_file))
    assert refused.connect_status == 403, refused
    assert [hit[1] for hit in backend.hits] == ["/before", "/after"]
    first, second = records_after(proxy, 2)
    assert (first["Category"], first["AccessRuleVersion"]) == (ALLOWED, "1")
    assert (second["Category"], second["AccessRuleVersion"]) == (DENIED, "2")


def test_an_ip_literal_tunnel_in_transition_has_one_record(nsp_proxy, dnsmasq, backends, tmp_path: Path) -> None:
    """An IP-literal destination is decided by its address: names in its ClientHello or Host headers add no
    records to the tunnel's one would-deny record."""
    cert = self_signed(tmp_path, NAME)
    tls_backend: Backend = backends("tls", host="127.0.0.2", tls=cert.server)
    plain: Backend = backends("plain", host="127.0.0.2")
    plain.keep_alive()
    dns_server = dnsmasq({NAME: "127.0.0.2"})
    fwd = free_port()
    proxy = nsp_proxy(_document(dns_server.port, fwd, "Learning", [NAME], False))
    sock, status = open_tunnel(fwd, "127.0.0.2", tls_backend.port)
    assert " 200 " in status
    assert https_get_over(sock, cert.ca_file, sni=NAME, host=NAME).split(" ")[1] == "200"
    urls = [f"http://127.0.0.2:{plain.port}/{i}" for i in range(3)]
    assert curl(fwd, urls[0], "-p", "-H", f"Host: {NAME}", *urls[1:]).status == 200
    records = records_after(proxy, 2)
    assert [(r["OperationName"], r["Category"]) for r in records] == [
        (f"CONNECT 127.0.0.2:{tls_backend.port}", RESOURCE_ALLOWED), (f"CONNECT 127.0.0.2:{plain.port}",
                                                                      RESOURCE_ALLOWED)]

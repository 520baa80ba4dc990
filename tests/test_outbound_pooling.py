"""Pooled (keep-alive) clients through the forward proxy: every request is answered on one connection.

mitmproxy reuses an upstream connection only for a request to the same address, and allows a handful of
connections per client and address. nsp-proxy dials the address a decision pinned, so it must also hand
mitmproxy that address as the request's destination; otherwise each request opens a new upstream connection
and a pooled client hangs on the sixth. Each client sends ``COUNT`` requests on one connection to the proxy:
all must be answered, the upstream must see one reused connection, and the access log holds exactly one record
per decision (per request for plain forward requests, per CONNECT for a tunnel).
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Callable
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from tests.h2backend import start_h2_backend
from tests.support import Backend, free_port, require
from tests.test_outbound_e2e import (
    ALLOWED,
    RESOURCE_ALLOWED,
    _client_env,
    association,
    config,
    http_client,
    open_tunnel,
    perimeter,
    records_after,
    self_signed,
)

pytestmark = pytest.mark.e2e

COUNT = 100
MODES = [
    pytest.param("Enforced", "api.allowed.test", ALLOWED, id="enforced-allowed"),
    pytest.param("Learning", "unruled.test", RESOURCE_ALLOWED, id="transition-would-deny"),
]


def _raw_keep_alive(fwd: int, base: str) -> list[int]:
    """http.client on one socket: absolute-form requests, HTTP/1.1 keep-alive, as a raw client sends them."""
    conn = http.client.HTTPConnection("127.0.0.1", fwd, timeout=10)
    statuses = []
    try:
        for i in range(COUNT):
            conn.request("GET", f"{base}/raw/{i}")
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        assert conn.sock is not None, "the proxy closed the client connection"
    finally:
        conn.close()
    return statuses


def _curl_urls(fwd: int, base: str, *extra: str) -> list[int]:
    """One curl process with ``COUNT`` URLs: curl keeps one connection to the proxy (its pool)."""
    import subprocess

    urls = [arg for i in range(COUNT) for arg in ("-o", "/dev/null", f"{base}/curl/{i}")]
    done = subprocess.run(
        [require("curl", "apt-get install curl"), "-sS", "--max-time", "60", "-x", f"http://127.0.0.1:{fwd}",
         "-w", "%{http_code} %{num_connects}\n", *extra, *urls],
        capture_output=True, text=True, timeout=90, env=_client_env(),
    )
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert sum(int(connects) for _, connects in lines) == 1, "curl opened more than one proxy connection"
    return [int(status) for status, _ in lines]


def _httpx(fwd: int, base: str) -> list[int]:
    with http_client(fwd) as client:
        return [client.get(f"{base}/httpx/{i}").status_code for i in range(COUNT)]


CLIENTS = [
    pytest.param(_raw_keep_alive, id="http.client"),
    pytest.param(_curl_urls, id="curl"),
    pytest.param(_httpx, id="httpx"),
]


@pytest.mark.parametrize("send", CLIENTS)
@pytest.mark.parametrize(("mode", "name", "category"), MODES)
def test_keep_alive_forward_requests_reuse_one_upstream_connection(
        nsp_proxy, dnsmasq, backends, send: Callable[[int, str], list[int]], mode: str, name: str,
        category: str) -> None:
    backend: Backend = backends("pool", host="127.0.0.2")
    backend.keep_alive()
    dns_server = dnsmasq({name: "127.0.0.2"})
    fwd = free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["api.allowed.test"], [
        association("app", mode=mode, outboundListen=f"127.0.0.1:{fwd}")])))

    statuses = send(fwd, f"http://{name}:{backend.port}")
    assert statuses == [200] * COUNT
    assert len(backend.hits) == COUNT
    assert {host for _, _, host in backend.hits} == {f"{name}:{backend.port}"}  # Host header kept as sent
    assert len(set(backend.peers)) == 1, f"{len(set(backend.peers))} upstream connections for one client connection"
    records = records_after(proxy, COUNT)
    assert {(r["Category"], r["DestinationFqdn"], r["DestinationProtocol"]) for r in records} == {
        (category, name, "HTTP:TCP")}
    assert [r["OperationName"] for r in records[:2]] == [
        f"GET http://{name}:{backend.port}{hit[1]}" for hit in backend.hits[:2]]


@pytest.mark.parametrize(("mode", "name", "category"), MODES)
def test_keep_alive_plain_http_in_a_tunnel_reuses_the_tunnel(nsp_proxy, dnsmasq, backends, mode: str, name: str,
                                                              category: str) -> None:
    """curl -p: plain HTTP inside one CONNECT tunnel; one record (the tunnel's), every request answered."""
    backend: Backend = backends("pool", host="127.0.0.2")
    backend.keep_alive()
    dns_server = dnsmasq({name: "127.0.0.2"})
    fwd = free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["api.allowed.test"], [
        association("app", mode=mode, outboundListen=f"127.0.0.1:{fwd}")])))

    assert _curl_urls(fwd, f"http://{name}:{backend.port}", "-p") == [200] * COUNT
    assert len(backend.hits) == COUNT and len(set(backend.peers)) == 1
    (tunnel,) = records_after(proxy, 1)
    assert (tunnel["Category"], tunnel["OperationName"]) == (category, f"CONNECT {name}:{backend.port}")


@pytest.mark.parametrize(("mode", "name", "category"), MODES)
def test_keep_alive_in_an_intercepted_tunnel_reuses_one_upstream_connection(
        nsp_proxy, dnsmasq, backends, tmp_path: Path, mode: str, name: str, category: str) -> None:
    """settings.interceptTls: many requests in one decrypted tunnel go upstream on one TLS connection whose
    SNI is the tunnel's name (the backend's certificate verifies against it)."""
    cert = self_signed(tmp_path, name)
    backend: Backend = backends("tls", host="127.0.0.2", tls=cert.server)
    backend.keep_alive()
    dns_server = dnsmasq({name: "127.0.0.2"})
    fwd, confdir = free_port(), tmp_path / "mitmproxy"
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["api.allowed.test"], [
        association("app", mode=mode, outboundListen=f"127.0.0.1:{fwd}")]), interceptTls=True),
        extra_args=["--set", f"confdir={confdir}", "--set", f"ssl_verify_upstream_trusted_ca={cert.ca_file}"])
    verify = ssl.create_default_context(cafile=str(confdir / "mitmproxy-ca-cert.pem"))

    with http_client(fwd, verify=verify) as client:
        responses = [client.get(f"https://{name}:{backend.port}/tls/{i}") for i in range(COUNT)]
    assert [r.status_code for r in responses] == [200] * COUNT
    assert len(backend.hits) == COUNT and len(set(backend.peers)) == 1
    (tunnel,) = records_after(proxy, 1)
    assert (tunnel["Category"], tunnel["DestinationFqdn"]) == (category, name)


def _h2_requests(fwd: int, name: str, port: int, ca: Path) -> list[int]:
    """One CONNECT, TLS with ALPN h2 only, then ``COUNT`` requests one after another on one HTTP/2 connection
    (httpx would offer http/1.1 first, and mitmproxy honours the client's order)."""
    sock, status = open_tunnel(fwd, name, port)
    assert " 200 " in status
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    statuses: list[int] = []
    with context.wrap_socket(sock, server_hostname=name) as tls:
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        for i in range(COUNT):
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, [(":method", "GET"), (":scheme", "https"), (":authority", f"{name}:{port}"),
                                       (":path", f"/h2/{i}")], end_stream=True)
            tls.sendall(conn.data_to_send())
            ended = False
            while not ended:
                data = tls.recv(65536)
                assert data, "the proxy closed the HTTP/2 connection"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        statuses.append(int(dict(event.headers)[b":status"]))
                    ended = ended or (isinstance(event, h2.events.StreamEnded) and event.stream_id == stream)
                tls.sendall(conn.data_to_send())
    return statuses


@pytest.mark.parametrize(("mode", "name", "category"), MODES)
def test_h2_in_an_intercepted_tunnel_reuses_one_upstream_connection(
        nsp_proxy, dnsmasq, tmp_path: Path, mode: str, name: str, category: str) -> None:
    """HTTP/2 on both sides of a decrypted tunnel: every stream goes upstream on one h2 connection."""
    cert = self_signed(tmp_path, name)
    backend = start_h2_backend("127.0.0.2", cert.server)
    dns_server = dnsmasq({name: "127.0.0.2"})
    fwd, confdir = free_port(), tmp_path / "mitmproxy"
    try:
        proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["api.allowed.test"], [
            association("app", mode=mode, outboundListen=f"127.0.0.1:{fwd}")]), interceptTls=True),
            extra_args=["--set", f"confdir={confdir}", "--set", f"ssl_verify_upstream_trusted_ca={cert.ca_file}"])
        statuses = _h2_requests(fwd, name, backend.port, confdir / "mitmproxy-ca-cert.pem")
    finally:
        backend.stop()
    assert statuses == [200] * COUNT
    assert len(backend.hits) == COUNT and len({peer for _, _, peer in backend.hits}) == 1
    assert {authority for _, authority, _ in backend.hits} == {f"{name}:{backend.port}"}
    (tunnel,) = records_after(proxy, 1)
    assert (tunnel["Category"], tunnel["DestinationFqdn"]) == (category, name)


@pytest.mark.parametrize(("mode", "name", "category"), MODES)
def test_a_name_that_stops_resolving_is_not_sent_to_its_old_address(nsp_proxy, dnsmasq, backends, mode: str,
                                                                     name: str, category: str) -> None:
    """On one keep-alive connection, a request whose name no longer resolves gets the 502, not the address an
    earlier request's decision pinned (what is dialled is what this decision checked)."""
    backend: Backend = backends("pool", host="127.0.0.2")
    backend.keep_alive()
    dns_server = dnsmasq({name: "127.0.0.2", "other.test": "127.0.0.9"})
    fwd = free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["api.allowed.test"], [
        association("app", mode=mode, outboundListen=f"127.0.0.1:{fwd}")])))
    with http_client(fwd) as client:
        assert client.get(f"http://{name}:{backend.port}/before").status_code == 200
        dns_server.remap({"other.test": "127.0.0.9"})
        gone = client.get(f"http://{name}:{backend.port}/after")
    assert gone.status_code == 502 and "could not be resolved" in gone.text
    assert [hit[1] for hit in backend.hits] == ["/before"]
    before, after = records_after(proxy, 2)
    assert before["Category"] == after["Category"] == category
    assert "NXDOMAIN" in after["DestinationParameters"]


def test_two_names_pinned_to_one_address_share_the_connection_and_keep_their_host(nsp_proxy, dnsmasq,
                                                                                  backends) -> None:
    """Requests for two allowed names that resolve to the same address go on one upstream connection, each
    with the Host header its client sent, each decided and recorded on its own."""
    backend: Backend = backends("pool", host="127.0.0.2")
    backend.keep_alive()
    dns_server = dnsmasq({"a.allowed.test": "127.0.0.2", "b.allowed.test": "127.0.0.2"})
    fwd = free_port()
    proxy = nsp_proxy(config(dns_server.port, perimeter("p1", ["*.allowed.test"], [
        association("app", outboundListen=f"127.0.0.1:{fwd}")])))
    names = ["a.allowed.test", "b.allowed.test"] * 10
    conn = http.client.HTTPConnection("127.0.0.1", fwd, timeout=10)  # one client connection (httpx pools by origin)
    try:
        for i, name in enumerate(names):
            conn.request("GET", f"http://{name}:{backend.port}/{i}")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
    finally:
        conn.close()
    assert [host for _, _, host in backend.hits] == [f"{n}:{backend.port}" for n in names]
    assert len(set(backend.peers)) == 1
    assert [r["DestinationFqdn"] for r in records_after(proxy, 20)] == names

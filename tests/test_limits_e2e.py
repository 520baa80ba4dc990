"""Slow and numerous clients cannot hold the proxy: header and idle timeouts close their connections, a cap
per listener closes connections over it on arrival, and the metrics port stays reachable. Real ``nsp-proxy
run``, raw sockets and http.client."""

from __future__ import annotations

import http.client
import socket
import time
import urllib.request

import pytest

from tests.faults import closed_by_peer, perimeter, store
from tests.support import Backend, free_port, wait_until


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
@pytest.mark.parametrize("sent", [
    pytest.param(b"", id="nothing"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: st\r\n", id="half-headers"),
])
def test_client_that_never_finishes_its_headers_is_closed(nsp_proxy, backend: Backend, mode: str,
                                                          sent: bytes) -> None:
    listen = free_port()
    proxy = nsp_proxy(perimeter(store("st", listen, f"http://127.0.0.1:{backend.port}", mode=mode),
                                settings={"timeouts": {"clientHeaders": 1}}))
    with socket.create_connection(("127.0.0.1", listen)) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        assert closed_by_peer(sock, within=10)
        assert 0.5 < time.monotonic() - started < 8
    assert proxy.metric("nsp_timeouts_total", kind="clientHeaders") == 1
    assert proxy.records() == []  # no request, no decision, no record


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
def test_idle_keep_alive_connection_is_closed(nsp_proxy, backend: Backend, mode: str) -> None:
    backend.keep_alive()
    listen = free_port()
    proxy = nsp_proxy(perimeter(store("st", listen, f"http://127.0.0.1:{backend.port}", mode=mode),
                                settings={"timeouts": {"idle": 2, "clientHeaders": 30}}))
    conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
    for _ in range(2):  # a busy keep-alive connection is not idle (pauses well under the timeout, on a busy CI)
        conn.request("GET", "/busy")
        assert conn.getresponse().read()
        time.sleep(0.5)
    assert conn.sock is not None
    assert closed_by_peer(conn.sock, within=10)
    assert wait_until(lambda: proxy.metric("nsp_timeouts_total", kind="idle") == 1, timeout=5) is not None
    assert len(proxy.wait_for_records(2)) == 2


def test_connections_over_the_cap_are_closed_and_the_metrics_port_stays_up(nsp_proxy, backend: Backend) -> None:
    backend.keep_alive()
    listen, other = free_port(), free_port()
    upstream = f"http://127.0.0.1:{backend.port}"
    proxy = nsp_proxy(perimeter(store("st", listen, upstream), store("other", other, upstream),
                                settings={"maxClientConnections": 3}))
    time.sleep(0.5)  # the start-up probes' connections are gone
    held = [http.client.HTTPConnection("127.0.0.1", listen, timeout=5) for _ in range(3)]
    for conn in held:  # each one answered, so each one is counted; kept alive (idle timeout 60 s)
        conn.request("GET", "/held")
        assert conn.getresponse().read()
    extra = socket.create_connection(("127.0.0.1", listen))
    assert closed_by_peer(extra, within=5)
    assert proxy.metric("nsp_connections_refused_total") == 1
    # the cap is per listener: the other listener and the metrics port still answer
    with urllib.request.urlopen(f"http://127.0.0.1:{other}/", timeout=5) as response:
        assert response.status == 200
    held.pop().close()
    time.sleep(0.5)
    with urllib.request.urlopen(f"http://127.0.0.1:{listen}/", timeout=5) as response:
        assert response.status == 200
    extra.close()
    for conn in held:
        conn.close()

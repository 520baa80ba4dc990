"""An allowed request's one record says what happened to it; the proxy's own answers are well formed.

Real ``nsp-proxy run``, real upstreams that answer, refuse, hang or never accept, real clients (httpx,
http.client). Each allowed request has exactly one record, written when its outcome is known: ResultAction
Approved (NSP approved it) with DestinationParameters upstreamStatus/upstreamError; the 502/504 page names no
server software, upstream address or errno.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.faults import Hung, perimeter, refused_port, store
from tests.support import Backend, exactly, free_port
from tests.wire_clients import h2_request, tls_socket

FAST = {"timeouts": {"upstreamConnect": 1, "upstreamResponse": 1}}


@pytest.fixture
def hung() -> Iterator[Any]:
    made: list[Hung] = []

    def make(kind: str) -> Hung:
        made.append(Hung(kind))
        return made[-1]

    yield make
    for server in made:
        server.close()


def params(record: dict[str, Any]) -> dict[str, Any]:
    return json.loads(record["DestinationParameters"]) if record["DestinationParameters"] else {}


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
@pytest.mark.parametrize(("upstream", "status", "error"), [
    pytest.param("answers", 200, None, id="answered"),
    pytest.param("refuses", 502, "connection refused", id="refused-502"),
    pytest.param("hangs", 504, "upstream response timeout", id="response-timeout-504"),
    pytest.param("blackhole", 504, "upstream connect timeout", id="connect-timeout-504"),
])
def test_allowed_request_outcome_is_in_its_one_record(nsp_proxy, backend: Backend, hung, mode: str, upstream: str,
                                                      status: int, error: str | None) -> None:
    port = {"answers": lambda: backend.port, "refuses": refused_port,
            "hangs": lambda: hung("hang").port, "blackhole": lambda: hung("blackhole").port}[upstream]()
    listen = free_port()
    proxy = nsp_proxy(perimeter(store("st", listen, f"http://127.0.0.1:{port}", mode=mode), settings=FAST))

    started = time.monotonic()
    response = httpx.get(f"http://127.0.0.1:{listen}/c/b", timeout=15)
    assert response.status_code == status
    assert time.monotonic() - started < 10, "the timeout did not end the request"
    if status >= 500:
        text = response.text.lower()
        for leak in ("mitmproxy", "127.0.0.1", str(port), "errno", "connect call failed"):
            assert leak not in text, response.text
        assert "mitmproxy" not in response.headers.get("server", "").lower()
        assert "date" in response.headers

    [record] = exactly(proxy, 1, settle=0.5)
    assert record["ResultAction"] == "Approved"
    assert record["OperationName"] == "GET /c/b"
    assert params(record).get("upstreamStatus") == status
    assert params(record).get("upstreamError") == error
    assert proxy.metric("nsp_access_log_records_total") == 1
    assert proxy.metric("nsp_decisions_total") == 1


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
@pytest.mark.parametrize("http2", [pytest.param(False, id="http1.1"), pytest.param(True, id="h2")])
def test_the_proxys_own_error_pages_name_no_server_software(nsp_proxy, mode: str, http2: bool) -> None:
    """mitmproxy's own 502, on HTTP/1.1 and on HTTP/2 (TLS with ALPN on the reverse listener): no Server
    header (mitmproxy sends ``server: mitmproxy <version>`` on HTTP/2 itself), a plain-text body."""
    listen = free_port()
    nsp_proxy(perimeter(store("st", listen, f"http://127.0.0.1:{refused_port()}", mode=mode)))
    if http2:
        with tls_socket(listen, ["h2"]) as sock:
            answer = h2_request(sock, [(":method", "GET"), (":scheme", "https"), (":authority", "st"),
                                       (":path", "/c/b")])
        status, headers, text = answer.status, answer.headers, answer.body.decode()
    else:
        response = httpx.get(f"https://127.0.0.1:{listen}/c/b", verify=False, timeout=15)
        status, headers, text = response.status_code, dict(response.headers), response.text
    assert status == 502
    assert "server" not in headers, headers
    assert headers["content-type"].startswith("text/plain")
    assert "mitmproxy" not in text.lower() and text.startswith("nsp-proxy: ")


def test_the_metrics_port_and_the_demo_backend_name_no_server_software(nsp_proxy) -> None:
    listen = free_port()
    proxy = nsp_proxy(perimeter(store("st", listen, "builtin:demo")))
    answers = [httpx.get(f"http://127.0.0.1:{proxy.metrics_port}{path}", timeout=10) for path in ("/metrics",
                                                                                                 "/healthz")]
    answers.append(httpx.get(f"http://127.0.0.1:{listen}/c/b", timeout=10))  # the built-in demo upstream
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers.get("server") for a in answers] == [None, None, None]
    with socket.create_connection(("127.0.0.1", proxy.metrics_port), timeout=10) as sock:
        sock.sendall(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")  # an error page of the server's own
        head = sock.recv(65536).split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.") and b" 414 " in head.split(b"\r\n")[0] and b"server:" not in head, head


def test_client_that_leaves_before_the_answer_still_gets_its_record(nsp_proxy, hung) -> None:
    listen = free_port()
    proxy = nsp_proxy(perimeter(store("st", listen, f"http://127.0.0.1:{hung('hang').port}")))
    with socket.create_connection(("127.0.0.1", listen)) as sock:
        sock.sendall(b"GET /gone HTTP/1.1\r\nHost: st\r\n\r\n")
        time.sleep(0.5)
    [record] = exactly(proxy, 1, settle=0.5)
    assert params(record) == {"upstreamError": "client disconnected"}


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
def test_pending_record_is_written_at_shutdown(nsp_proxy, hung, mode: str) -> None:
    listen = free_port()
    proxy = nsp_proxy(perimeter(store("st", listen, f"http://127.0.0.1:{hung('hang').port}", mode=mode)))
    with socket.create_connection(("127.0.0.1", listen)) as sock:
        sock.sendall(b"GET /waiting HTTP/1.1\r\nHost: st\r\n\r\n")
        time.sleep(0.5)
        assert proxy.stop() == 0
    [record] = proxy.records()
    assert record["ResultAction"] == "Approved"
    assert params(record)["upstreamError"] == "proxy shut down before the request completed"
    assert "Traceback" not in proxy.stderr()


@pytest.mark.parametrize("mode", ["Enforced"])
def test_denied_head_has_headers_and_no_body_and_keeps_the_connection_usable(nsp_proxy, backend: Backend,
                                                                             mode: str) -> None:
    listen = free_port()
    proxy = nsp_proxy(perimeter(store("st", listen, f"http://127.0.0.1:{backend.port}", mode=mode, allowed=False)))
    conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
    conn.request("HEAD", "/c/b")
    head = conn.getresponse()
    assert head.status == 403
    assert head.read() == b""
    assert head.getheader("x-ms-error-code") == "AuthorizationFailure"
    assert head.getheader("date")
    conn.request("GET", "/c/b")  # same connection: readable only if the HEAD answer carried no body
    get = conn.getresponse()
    assert get.status == 403
    assert b"<Code>AuthorizationFailure</Code>" in get.read()
    assert get.getheader("date")
    conn.close()
    assert len(exactly(proxy, 2)) == 2
    assert backend.hits == []

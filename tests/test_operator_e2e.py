"""What the operator sees: quiet logs by default, a start-up summary, metrics without ``*_created`` series and
with every known counter at zero from the start, and a clean exit on SIGTERM/SIGINT with connections open."""

from __future__ import annotations

import http.client
import signal
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.faults import Hung, perimeter, store
from tests.support import Backend, free_port

ZERO_FROM_THE_START = [
    ("nsp_decision_errors_total", {"direction": "Inbound"}),
    ("nsp_decision_errors_total", {"direction": "Outbound"}),
    ("nsp_config_reloads_total", {"result": "failure"}),
    ("nsp_access_log_errors_total", {"reason": "write"}),
    ("nsp_access_log_errors_total", {"reason": "build"}),
    ("nsp_access_log_dropped_total", {}),
    ("nsp_access_log_refused_requests_total", {}),
    ("nsp_connections_refused_total", {}),
    ("nsp_timeouts_total", {"kind": "upstreamConnect"}),
    ("nsp_timeouts_total", {"kind": "upstreamResponse"}),
    ("nsp_timeouts_total", {"kind": "clientHeaders"}),
    ("nsp_timeouts_total", {"kind": "idle"}),
]


def test_metrics_have_no_created_series_and_known_counters_start_at_zero(nsp_proxy, backend: Backend) -> None:
    proxy = nsp_proxy(perimeter(store("st", free_port(), f"http://127.0.0.1:{backend.port}")))
    text = proxy.metrics_text()
    assert "_created" not in text
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    for name, labels in ZERO_FROM_THE_START:
        assert samples.get((name, frozenset(labels.items()))) == 0, (name, labels)


@pytest.mark.parametrize(("verbose", "chatty"), [pytest.param(False, False, id="quiet-by-default"),
                                                 pytest.param(True, True, id="verbose")])
def test_connection_lines_only_with_verbose_and_startup_says_what_runs(nsp_proxy, backend: Backend, verbose: bool,
                                                                       chatty: bool) -> None:
    listen = free_port()
    proxy = nsp_proxy(perimeter(store("st", listen, f"http://127.0.0.1:{backend.port}")),
                      extra_args=["--verbose"] if verbose else [])
    conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status == 200
    conn.close()
    proxy.wait_for_records(1)
    time.sleep(0.3)
    text = proxy.stderr()
    assert ("client connect" in text) is chatty
    assert ("server connect" in text) is chatty
    assert f"configuration {proxy.config_path} (generation 1)" in text
    assert f"listener 127.0.0.1:{listen}: inbound gate of st (Enforced" in text
    assert f"access log: {proxy.access_log}" in text
    assert f"metrics: http://127.0.0.1:{proxy.metrics_port}/metrics" in text


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")])
def test_stop_with_open_connections_is_clean(nsp_proxy, backend: Backend, sig: int) -> None:
    backend.keep_alive()
    listen, waiting = free_port(), free_port()
    hung = Hung("hang")
    try:
        proxy = nsp_proxy(perimeter(store("st", listen, f"http://127.0.0.1:{backend.port}"),
                                    store("slow", waiting, f"http://127.0.0.1:{hung.port}")))
        kept = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)  # idle keep-alive
        kept.request("GET", "/kept")
        assert kept.getresponse().read()
        half = socket.create_connection(("127.0.0.1", listen))  # mid-request: headers never finished
        half.sendall(b"PUT /half HTTP/1.1\r\nHost: st\r\nContent-Length: 100\r\n")
        body = socket.create_connection(("127.0.0.1", listen))  # mid-body
        body.sendall(b"PUT /body HTTP/1.1\r\nHost: st\r\nContent-Length: 100\r\n\r\npartial")
        upstream = socket.create_connection(("127.0.0.1", waiting))  # waiting for an upstream that never answers
        upstream.sendall(b"GET /wait HTTP/1.1\r\nHost: slow\r\n\r\n")
        time.sleep(1)
        assert proxy.stop(sig) == 0
        text = proxy.stderr()
        assert "Traceback" not in text and "CancelledError" not in text, text
        operations = sorted(r["OperationName"] for r in proxy.records())
        assert operations == ["GET /kept", "GET /wait", "PUT /body"]
        for sock in (half, body, upstream):
            sock.close()
        kept.close()
    finally:
        hung.close()

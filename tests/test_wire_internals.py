"""The mitmproxy internals addons/early.py and addons/wire.py rely on: these fail by name if mitmproxy changes
them, before an end-to-end test fails for a reason that is hard to see."""

from __future__ import annotations

import inspect

from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http1

from addons import early


def test_the_http_stream_states_the_early_answer_uses() -> None:
    stream = http_layers.HttpStream
    for name in ("state_wait_for_request_headers", "state_consume_request_body", "state_errored", "state_done",
                 "send_response"):
        assert callable(getattr(stream, name)), name
    assert hasattr(http_layers, "SendHttp") and hasattr(http_layers, "ResponseEndOfMessage")


def test_mitmproxy_shows_requests_it_refuses_to_requestheaders_with_flow_error() -> None:
    """Why addons.wire records a refusal when ``flow.error`` is set at requestheaders."""
    assert "HttpRequestHeadersHook" in inspect.getsource(http_layers.HttpStream.check_invalid)


def test_the_http1_reader_hooks_early_replaces() -> None:
    assert "make_body_reader(" in inspect.getsource(_http1.Http1Server.read_headers)
    assert "maybe_extract_lines" in inspect.getsource(_http1.Http1Server.read_headers)
    assert callable(_http1.make_error_response)


def test_an_empty_streamed_piece_is_still_written_as_the_last_chunk() -> None:
    """Why addons.wire streams with ``nonempty``: mitmproxy chunk-encodes whatever piece it is given."""
    assert 'b"%x\\r\\n%s\\r\\n" % (len(event.data), event.data)' in inspect.getsource(_http1.Http1Client.send)


def test_install_is_idempotent() -> None:
    early.install(lambda: 1234)
    patched = http_layers.HttpStream.state_wait_for_request_headers
    early.install(lambda: 4321)
    assert http_layers.HttpStream.state_wait_for_request_headers is patched
    assert early._head_limit[0]() == 4321

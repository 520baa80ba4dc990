"""Two small changes to mitmproxy's HTTP layer that no addon hook can make (mitmproxy internals, checked on
mitmproxy 11 and 12; installed once, by ``addons.wire``):

1. **A response set at ``requestheaders`` is sent at once.** mitmproxy otherwise reads the whole request body
   into memory first and answers after its last byte (a denied 200 MB upload stayed in memory, and the caller
   was told ``100 Continue``). Now the answer goes out as soon as the hooks return, the rest of the body is
   discarded as it arrives (``state_errored``), and an HTTP/1 connection is half-closed after the answer
   (``Connection: close``): the caller stops sending, the proxy never buffers it.
2. **A request head that never ends is cut off.** mitmproxy buffers request-head bytes without limit until the
   blank line arrives; past ``settings.requestLimits.headerBytes`` (plus 4 KiB of slack) the caller gets 431 and
   the connection is closed. Nothing was parsed, so there is no request to record (documented).
3. **Chunked trailers are dropped.** mitmproxy raises ``NotImplementedError`` on HTTP/1 chunked trailers, so a
   request (or response) carrying them got no answer at all. The body is complete without them; nothing in
   them is ever decided on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from typing import Any

import h11
from h11._readers import ChunkedReader
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http1

_INSTALLED = "_nsp_proxy_early"
HEAD_SLACK = 4096
_head_limit: list[Callable[[], int]] = [lambda: 65536]


class TrailerDroppingChunkedReader(ChunkedReader):
    """h11's chunked reader, ending the message without the trailer fields it read."""

    def __call__(self, buf: Any) -> Any:
        event = super().__call__(buf)
        if isinstance(event, h11.EndOfMessage) and event.headers:
            return h11.EndOfMessage()
        return event


def install(head_limit: Callable[[], int]) -> None:
    """Patch mitmproxy's HTTP layer (idempotent); ``head_limit`` gives the request-head limit in force."""
    _head_limit[0] = head_limit
    stream = http_layers.HttpStream
    if getattr(stream, _INSTALLED, False):
        return
    original_headers = stream.state_wait_for_request_headers
    original_reader = _http1.make_body_reader
    original_read_head = _http1.Http1Server.read_headers

    def state_wait_for_request_headers(self: Any, event: Any) -> Generator[Any, Any, None]:
        yield from original_headers(self, event)
        flow = getattr(self, "flow", None)
        if (event.end_stream or flow is None or flow.response is None
                or self.client_state != self.state_consume_request_body):
            return
        # Answered by an addon while the body is still to come: answer now, never read the body.
        http1 = flow.client_conn.alpn != b"h2"
        if http1:
            flow.response.headers["connection"] = "close"
        self.client_state = self.state_errored  # what is still sent is dropped as it arrives
        yield from self.send_response()
        if self.server_state != self.state_done:
            return  # the caller went away meanwhile (send_response saw the flow killed): nothing left to answer
        yield http_layers.SendHttp(http_layers.ResponseEndOfMessage(self.stream_id), self.context.client)
        if http1:
            yield commands.CloseTcpConnection(self.context.client, half_close=True)

    def make_body_reader(expected_size: int | None) -> Any:
        return TrailerDroppingChunkedReader() if expected_size is None else original_reader(expected_size)

    @functools.wraps(original_read_head)  # inspect.getsource() still shows mitmproxy's (tests check it)
    def read_headers(self: Any, event: Any) -> Generator[Any, Any, None]:
        yield from original_read_head(self, event)
        if (isinstance(event, events.DataReceived) and self.state == self.read_headers
                and len(self.buf) > _head_limit[0]() + HEAD_SLACK):
            # Still no blank line, and already more than any head may be: refuse before buffering more.
            yield commands.SendData(self.conn, _http1.make_error_response(431, "Request header fields too large"))
            yield commands.CloseConnection(self.conn)
            self.state = self.done

    stream.state_wait_for_request_headers = state_wait_for_request_headers
    _http1.make_body_reader = make_body_reader
    _http1.Http1Server.read_headers = read_headers
    setattr(stream, _INSTALLED, True)

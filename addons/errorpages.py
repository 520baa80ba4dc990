"""The error responses mitmproxy makes itself (502 when the upstream refuses or drops the connection, 504 on a
timeout) say only what happened: a fixed short text, no ``Server: mitmproxy``, no upstream address, no errno.

mitmproxy builds these in ``mitmproxy.proxy.layers.http._http1.make_error_response`` (HTTP/1) and with
``_http2.format_error`` (HTTP/2), from the connection error's text; both are internals, replaced here (checked
on mitmproxy 11 and 12). 4xx pages (the client's own mistakes) keep mitmproxy's text, without the Server header.
On HTTP/2, mitmproxy sends the page's headers itself, ``server: mitmproxy <version>`` and ``text/html`` among
them (``Http2Connection``); ``BufferedH2Connection.send_headers`` (its h2 connection class, an internal, the same
in 11 and 12) is wrapped to leave that header out, and to label the page as the plain text it is.

A timeout (``addons.limits``) ends the upstream connection, which mitmproxy reports as a 502; the ``error`` hook
(``addons.outcome``) runs in the same task just before the page is made and asks for 504 with ``answer_with``.
"""

from __future__ import annotations

import contextvars
import html
from typing import Any

from mitmproxy import http, version
from mitmproxy.net.http import status_codes
from mitmproxy.net.http.http1 import assemble

from proxy.decision.denials import http_date

TEXTS = {
    502: "nsp-proxy: the upstream could not be reached or closed the connection.\n",
    503: "nsp-proxy: service unavailable.\n",
    504: "nsp-proxy: the upstream did not answer in time.\n",
}
_override: contextvars.ContextVar[int | None] = contextvars.ContextVar("nsp_error_status", default=None)


def answer_with(status: int) -> None:
    """Make the error page that mitmproxy sends next, in this task, use ``status`` instead of its own."""
    _override.set(status)


def outcome(message: str, timeout: str | None) -> tuple[int | None, str]:
    """(status the client got, short reason) for an allowed request that ended in mitmproxy's error hook."""
    text = message.lower()
    if timeout:
        return 504, f"{timeout} timeout"
    if "client" in text and ("disconnect" in text or "closed" in text):
        return None, "client disconnected"
    if "timeout" in text or "timed out" in text:
        return 504, "upstream connect timeout"
    if "refused" in text or "connect call failed" in text:
        return 502, "connection refused"
    if "closed" in text or "reset" in text:
        return 502, "upstream closed the connection"
    if "killed" in text:
        return None, "refused by nsp-proxy"
    return 502, "upstream error"


def _status(code: int, message: str) -> int:
    wanted = _override.get()
    if wanted is not None:
        _override.set(None)
        return wanted
    if code == 502 and ("timeout" in message.lower() or "timed out" in message.lower()):
        return 504
    return code


def _body(status: int, message: str) -> bytes:
    if status >= 500:
        return TEXTS.get(status, f"nsp-proxy: error {status}.\n").encode()
    reason = status_codes.RESPONSES.get(status, "Error")
    return f"{status} {reason}: {html.escape(message)}\n".encode()


def make_error_response(status_code: int, message: str = "") -> bytes:
    status = _status(int(status_code), message)
    response = http.Response.make(status, _body(status, message), {
        "content-type": "text/plain; charset=utf-8", "connection": "close", "date": http_date()})
    return assemble.assemble_response(response)


def format_error(status_code: int, message: str) -> bytes:
    return _body(_status(int(status_code), message), message)


def without_server_name(headers: Any) -> Any:
    """HTTP/2 header pairs without mitmproxy's own ``server`` header; the page it comes with is plain text."""
    own = (b"server", version.MITMPROXY.encode())
    if not isinstance(headers, list) or own not in headers:
        return headers
    return [(b"content-type", b"text/plain; charset=utf-8") if pair == (b"content-type", b"text/html") else pair
            for pair in headers if pair != own]


def install() -> None:
    """Replace mitmproxy's error pages (idempotent)."""
    from mitmproxy.proxy.layers.http import _http1, _http2, _http_h2

    _http1.make_error_response = make_error_response
    _http2.format_error = format_error
    connection = _http_h2.BufferedH2Connection
    if not getattr(connection.send_headers, "nsp_wrapped", False):
        send_headers = connection.send_headers

        def send_without_server_name(self: Any, stream_id: int, headers: Any, *args: Any, **kwargs: Any) -> Any:
            return send_headers(self, stream_id, without_server_name(headers), *args, **kwargs)

        send_without_server_name.nsp_wrapped = True  # type: ignore[attr-defined]
        connection.send_headers = send_without_server_name

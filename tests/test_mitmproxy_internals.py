"""The mitmproxy internals nsp-proxy relies on (addons.errorpages, addons.limits) still look as expected.

If mitmproxy changes one of these, this fails here, by name, rather than as a 502 page that leaks the upstream
address or a timeout that silently stops working."""

from __future__ import annotations

import inspect

from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import server
from mitmproxy.proxy.layers.http import _http1, _http2

from addons import errorpages


def test_error_page_builders_exist_with_the_replaced_signatures() -> None:
    errorpages.install()
    assert _http1.make_error_response is errorpages.make_error_response
    assert _http2.format_error is errorpages.format_error
    # both call sites pass (status, message) positionally
    assert "make_error_response(" in inspect.getsource(_http1.Http1Server.send)
    assert "format_error(" in inspect.getsource(_http2.Http2Connection._handle_event)


def test_connection_registry_and_transport_tasks() -> None:
    assert "connections" in Proxyserver().__dict__
    source = inspect.getsource(server.ConnectionHandler)
    assert "self.transports" in source and "handler=asyncio.current_task()" in source
    assert "await self.handle_hook(server_hooks.ServerConnectHook(hook_data))" in source  # in the opening task


def test_fixed_texts_name_no_internals() -> None:
    for status in (502, 504):
        page = errorpages.make_error_response(status, "[Errno 111] Connect call failed ('10.1.2.3', 443)")
        assert b"10.1.2.3" not in page and b"Errno" not in page and b"mitmproxy" not in page.lower()
    assert errorpages.make_error_response(502, "upstream connect timeout").startswith(b"HTTP/1.1 504")


def test_transparent_mode_internals_the_sidecar_uses() -> None:
    """addons.transparent and addons.lifecycle.health (the same in mitmproxy 11 and 12): the original
    destination lands in client.sockname and server.address; the transparent top layer's NextLayer is its
    child_layer; a listener instance reports mode, is_running and last_exception."""
    from mitmproxy.proxy import layer, mode_servers
    from mitmproxy.proxy.layers import modes

    source = inspect.getsource(mode_servers.ServerInstance.handle_stream)
    assert "platform.original_addr(s)" in source
    assert "context.client.sockname = original_dst" in source and "context.server.address = original_dst" in source
    assert "self.child_layer = layer.NextLayer(self.context)" in inspect.getsource(modes.TransparentProxy)
    assert "self.context.layers.remove(self)" in inspect.getsource(layer.NextLayer.__init__)  # not in layers
    assert {"is_running", "last_exception"} <= set(dir(mode_servers.ServerInstance))
    assert "self.mode: M = mode" in inspect.getsource(mode_servers.ServerInstance.__init__)


def test_internals_wrapped_for_what_the_proxy_answers_itself() -> None:
    """addons.errorpages: mitmproxy's HTTP/2 error page names its server in headers it sends through
    ``BufferedH2Connection.send_headers``; addons.transparent: ``platform.original_addr`` is looked up at each
    call (``platform.original_addr(s)``, above), so wrapping the module attribute takes effect."""
    from mitmproxy import platform
    from mitmproxy.proxy.layers.http import _http_h2

    from addons.transparent import DirectConnections

    assert '(b"server", version.MITMPROXY.encode())' in inspect.getsource(_http2.Http2Connection._handle_event)
    errorpages.install()
    errorpages.install()  # idempotent: wrapped once
    assert _http_h2.BufferedH2Connection.send_headers.nsp_wrapped
    assert errorpages.without_server_name([(b":status", b"502"), (b"server", errorpages.version.MITMPROXY.encode()),
                                           (b"content-type", b"text/html")]) == [
        (b":status", b"502"), (b"content-type", b"text/plain; charset=utf-8")]
    assert errorpages.without_server_name([(b"server", b"upstream"), (b"content-type", b"text/html")]) == [
        (b"server", b"upstream"), (b"content-type", b"text/html")]  # forwarded responses are untouched
    DirectConnections(None).load(None)  # type: ignore[arg-type]
    assert platform.original_addr is not None and platform.original_addr.nsp_wrapped

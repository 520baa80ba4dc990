"""The metrics port's HTTP server: Prometheus' ``/metrics`` and a readiness endpoint ``/healthz``.

``/healthz`` answers 200 with a JSON body when the proxy is ready (a configuration is in force and every
listener it names is open), else 503 with the same body saying what is missing: a container HEALTHCHECK or a
Kubernetes readiness probe can use it, and an operator can read the config generation and listener state.
The body is small and bounded (one entry per listener); it never carries rules, addresses of callers or names.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

HealthProbe = Callable[[], tuple[bool, dict[str, Any]]]  # (ready, what to report)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Anonymous(ServerHandler):
    server_software = ""  # no Server header: the metrics port never names the software behind it


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not worth a line
        return

    def send_response(self, code: int, message: str | None = None) -> None:
        """``send_error``'s pages (a bad request line) without the Server header (wsgiref: ``WSGIServer/0.2
        CPython/3.x``)."""
        anonymous_response(self, code, message)

    def handle(self) -> None:
        """``WSGIRequestHandler.handle`` (Python 3.11-3.13) with a handler that sends no Server header."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():
            return
        handler = _Anonymous(self.rfile, self.wfile, self.get_stderr(), self.get_environ(), multithread=False)
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(self.server.get_app())  # type: ignore[attr-defined]


def anonymous_response(handler: Any, code: int, message: str | None = None) -> None:
    """``BaseHTTPRequestHandler.send_response`` without the Server header that names the software."""
    handler.log_request(code)
    handler.send_response_only(code, message)
    handler.send_header("Date", handler.date_time_string())


def _server_class(host: str) -> type[_Server]:
    if ":" not in host:
        return _Server
    return type("_Server6", (_Server,), {"address_family": socket.AF_INET6})


def make_app(registry: CollectorRegistry, health: HealthProbe | None) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics(environ, start_response)
        try:
            ready, report = health() if health else (False, {"status": "no health probe"})
        except Exception as exc:  # noqa: BLE001 - a failing probe says "not ready", never ends the server
            ready, report = False, {"status": f"health probe failed: {type(exc).__name__}"}
        body = json.dumps(report, sort_keys=True).encode()
        start_response("200 OK" if ready else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                        ("Cache-Control", "no-store")])
        return [body]

    return app


def start_server(host: str, port: int, registry: CollectorRegistry, health: HealthProbe | None) -> _Server:
    """Serve ``/metrics`` and ``/healthz`` on ``host:port`` from a daemon thread; returns the server."""
    import threading

    server = make_server(host, port, make_app(registry, health), _server_class(host), handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True, name="nsp-metrics").start()
    return server  # type: ignore[return-value]

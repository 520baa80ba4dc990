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
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

HealthProbe = Callable[[], tuple[bool, dict[str, Any]]]  # (ready, what to report)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not worth a line
        return


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

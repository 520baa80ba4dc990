"""A tiny built-in backend (``upstream: builtin:demo``) so the proxy can be tried with nothing else installed.

It stores what is PUT and returns it on GET, and answers anything else with a JSON echo of the request, so a
user can see that allowed requests arrive and denied ones never do.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from proxy.records.health import anonymous_response


class _Handler(BaseHTTPRequestHandler):
    store: dict[str, bytes] = {}
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:
        return  # keep stdout for access logs

    def send_response(self, code: int, message: str | None = None) -> None:
        anonymous_response(self, code, message)  # no Server header naming the software (nor Python's version)

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _echo(self, status: int = 200) -> None:
        body = json.dumps({"service": "nsp-proxy demo backend", "method": self.command, "path": self.path,
                           "reached": True}).encode()
        self._reply(status, body + b"\n")

    def do_GET(self) -> None:
        with self.lock:
            stored = self.store.get(self.path)
        if stored is not None:
            self._reply(200, stored, "application/octet-stream")
        else:
            self._echo()

    do_HEAD = do_GET

    def do_PUT(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        data = self.rfile.read(length)
        with self.lock:
            self.store[self.path] = data
        self._reply(201, json.dumps({"stored": self.path, "bytes": len(data)}).encode() + b"\n")

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self._echo()

    def do_DELETE(self) -> None:
        with self.lock:
            self.store.pop(self.path, None)
        self._reply(202, b"{}\n")


class DemoBackend:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="nsp-demo-backend", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> DemoBackend:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

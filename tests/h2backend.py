"""A loopback HTTPS server that speaks HTTP/2 (ALPN h2) with the ``h2`` library, for tests that need an h2
upstream (the stdlib servers speak HTTP/1 only). It records each request as ``(path, authority, peer)``."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class H2Backend:
    port: int
    hits: list[tuple[str, str, tuple[str, int]]] = field(default_factory=list)
    _sock: socket.socket | None = None

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()


def start_h2_backend(host: str, context: ssl.SSLContext) -> H2Backend:
    context.set_alpn_protocols(["h2"])
    listener = socket.create_server((host, 0))
    backend = H2Backend(listener.getsockname()[1], _sock=listener)

    def serve(conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
                h2conn.initiate_connection()
                tls.sendall(h2conn.data_to_send())
                requests: dict[int, dict[bytes, bytes]] = {}
                while data := tls.recv(65536):
                    for event in h2conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            requests[event.stream_id] = dict(event.headers)
                        elif isinstance(event, h2.events.StreamEnded) and event.stream_id in requests:
                            headers = requests.pop(event.stream_id)
                            backend.hits.append((headers[b":path"].decode(), headers[b":authority"].decode(), peer))
                            h2conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", "2")])
                            h2conn.send_data(event.stream_id, b"ok", end_stream=True)
                    tls.sendall(h2conn.data_to_send())
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass

    def accept() -> None:
        while True:
            try:
                conn, peer = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn, peer), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return backend

"""Clients for the odd wire forms the wire tests send: raw HTTP/1 on a socket, and HTTP/2 over TLS with h2.

Kept apart from the tests so that each table reads as data. Every function has a deadline and returns what the
proxy answered (or that it answered nothing); none raises on a closed or reset connection.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


@dataclass
class H2Answer:
    status: int = 0  # 0: no response headers came
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reset: bool = False  # the stream (or connection) was reset


def tls_socket(port: int, alpn: list[str], host: str = "127.0.0.1", timeout: float = 10.0) -> ssl.SSLSocket:
    """TLS to a listener presenting mitmproxy's certificate (not verified: tests trust the proxy's own)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn)
    return context.wrap_socket(socket.create_connection((host, port), timeout=timeout), server_hostname="localhost")


def h2_request(sock: ssl.SSLSocket, headers: list[tuple[str, str]], body: bytes | list[bytes] | None = None, *,
               trailers: list[tuple[str, str]] | None = None, timeout: float = 15.0) -> H2Answer:
    """One HTTP/2 request on a fresh TLS connection: headers, then ``body`` (if any), then ``trailers``; the body
    is sent as flow control allows while the answer is read, so an early answer is seen before the body ends.
    A list ``body`` is sent one DATA frame per item, empty ones included."""
    assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, validate_outbound_headers=False))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**24})
    conn.increment_flow_control_window(2**24)
    sender = _H2Body(conn, body, trailers)
    conn.send_headers(1, headers, end_stream=sender.done)
    answer = H2Answer()
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    try:
        sock.sendall(conn.data_to_send())
        while time.monotonic() < deadline:
            sender.send_some()
            sock.sendall(conn.data_to_send())
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                answer.reset = answer.status == 0
                return answer
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    answer.headers = {name.decode(): value.decode() for name, value in event.headers}
                    answer.status = int(answer.headers[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    answer.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    answer.reset = True
                    return answer
                elif isinstance(event, h2.events.StreamEnded):
                    return answer
    except (OSError, h2.exceptions.ProtocolError):  # closed or reset by the proxy
        answer.reset = True
    return answer


class _H2Body:
    """Sends a request body (then trailers or END_STREAM) as the flow-control window allows."""

    def __init__(self, conn: h2.connection.H2Connection, body: bytes | list[bytes] | None,
                 trailers: list[tuple[str, str]] | None) -> None:
        self.frames = list(body) if isinstance(body, list) else []
        self.conn, self.trailers = conn, trailers
        self.pending = memoryview(b"" if isinstance(body, list) else body or b"")
        self.done = body is None and trailers is None

    def send_some(self) -> None:
        if self.done or self.conn.state_machine.state.name == "CLOSED":
            return
        stream = self.conn.streams.get(1)
        if stream is None or stream.closed or stream.state_machine.state.name in ("HALF_CLOSED_LOCAL", "CLOSED"):
            self.done = True
            return
        for frame in self.frames:  # small: the window is 16 MiB
            self.conn.send_data(1, frame)
        self.frames = []
        window = min(self.conn.local_flow_control_window(1), self.conn.max_outbound_frame_size)
        while self.pending and window > 0:
            piece, self.pending = self.pending[:window], self.pending[window:]
            self.conn.send_data(1, bytes(piece))
            window = min(self.conn.local_flow_control_window(1), self.conn.max_outbound_frame_size)
        if not self.pending:
            if self.trailers is not None:
                self.conn.send_headers(1, self.trailers, end_stream=True)
            else:
                self.conn.end_stream(1)
            self.done = True


def raw_http1(port: int, data: bytes, *, body_after: bytes = b"", timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send ``data`` (a request head, maybe with a body) on a fresh connection, then ``body_after`` only if no
    answer came within a moment; return everything read and whether the proxy closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.settimeout(0.5)
        received, closed = b"", False
        deadline = time.monotonic() + timeout
        try:
            first = sock.recv(65536)
            received += first
            closed = not first
        except TimeoutError:
            if body_after:
                sock.sendall(body_after)
        sock.settimeout(timeout)
        while not closed and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                closed = True
                break
            closed = not chunk
            received += chunk
        return received, closed

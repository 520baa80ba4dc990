"""The management endpoint: HTTP/1.1 over TLS on asyncio streams, parsed by h11.

Its own small server, not mitmproxy's flows: management requests are not NSP decisions (no access-log record,
no gate), and they must keep working whatever the proxy's listeners do. h11 does the HTTP/1.1 framing (it is
already installed with httpx); this module only bounds it: ``MAX_CONNECTIONS`` connections, headers of at most
``MAX_HEAD`` bytes, bodies of at most ``service.MAX_BODY`` bytes (413 beyond), ``IDLE_TIMEOUT`` seconds for a
request to arrive and ``HANDSHAKE_TIMEOUT`` for TLS. Every answer is JSON in ARM's shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from typing import Any

import h11

from proxy.control.resources import ArmError
from proxy.control.service import MAX_BODY, ControlPlane, Request, Response

log = logging.getLogger("nsp-proxy")

MAX_CONNECTIONS = 64
MAX_HEAD = 64 * 1024
IDLE_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 10.0
REASONS = {200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content", 400: b"Bad Request",
           401: b"Unauthorized", 404: b"Not Found", 405: b"Method Not Allowed", 409: b"Conflict",
           413: b"Payload Too Large", 431: b"Request Header Fields Too Large", 500: b"Internal Server Error"}


class ManagementServer:
    def __init__(self, plane: ControlPlane, host: str, port: int, context: ssl.SSLContext):
        self.plane, self.host, self.port, self.context = plane, host, port, context
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connection, self.host, self.port, ssl=self.context,
                                                 ssl_handshake_timeout=HANDSHAKE_TIMEOUT, limit=MAX_HEAD)

    def stop(self) -> None:
        """Stop listening and end the open connections (synchronous: called from mitmproxy's ``done`` hook)."""
        if self.server is not None:
            self.server.close()
        for task in list(self.connections):
            task.cancel()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self.connections) >= MAX_CONNECTIONS or task is None:
            writer.close()
            return
        self.connections.add(task)
        try:
            await self._serve(reader, writer)
        except (TimeoutError, OSError, ssl.SSLError, h11.ProtocolError):
            pass  # the client went away, stalled or spoke something else: nothing to answer
        except Exception as exc:  # noqa: BLE001 - one broken connection must not stop the endpoint
            log.error("management: %s: %s", type(exc).__name__, str(exc)[:300])
        finally:
            self.connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while True:
            try:
                event = await self._next(conn, reader)
            except h11.RemoteProtocolError as exc:  # a malformed or oversized head: said, then closed
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = exc.error_status_hint
                    error = ArmError(status, "InvalidRequestFormat", f"Malformed HTTP request: {str(exc)[:200]}")
                    await self._send(conn, writer, Response(status, error.body()), close=True)
                return
            if not isinstance(event, h11.Request):
                return
            if len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers) > MAX_HEAD:
                error = ArmError(431, "InvalidRequestFormat", f"The request head is larger than {MAX_HEAD} bytes.")
                await self._send(conn, writer, Response(431, error.body()), close=True)
                return
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
            length = int(headers.get("content-length") or 0)  # h11 has checked it is a number
            if length > MAX_BODY:
                error = ArmError(413, "RequestEntityTooLarge", f"The request content is larger than {MAX_BODY} bytes.")
                await self._send(conn, writer, Response(413, error.body()), close=True)
                return
            body = bytearray()
            while True:
                part = await self._next(conn, reader)
                if isinstance(part, h11.Data):
                    body += part.data
                    if len(body) > MAX_BODY:
                        error = ArmError(413, "RequestEntityTooLarge",
                                         f"The request content is larger than {MAX_BODY} bytes.")
                        await self._send(conn, writer, Response(413, error.body()), close=True)
                        return
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return
            request = Request(event.method.decode("latin-1").upper(), event.target.decode("latin-1"), headers,
                              bytes(body))
            await self._send(conn, writer, await self.plane.handle(request), head=request.method == "HEAD")
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await asyncio.wait_for(reader.read(16384), IDLE_TIMEOUT)  # h11 holds MAX_HEAD at most
            conn.receive_data(data)

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, response: Response,
                    close: bool = False, head: bool = False) -> None:
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        headers = [(k.encode(), v.encode()) for k, v in response.headers.items()]
        if response.status != 204:
            headers += [(b"content-type", b"application/json; charset=utf-8"),
                        (b"content-length", str(len(payload)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        writer.write(conn.send(h11.Response(status_code=response.status, headers=headers,
                                            reason=REASONS.get(response.status, b""))) or b"")
        if payload and not head:
            writer.write(conn.send(h11.Data(data=payload)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()

"""The TLS server name (SNI) of a ClientHello, read from the raw bytes a client sent into a tunnel.

Why hand-written: mitmproxy's own parser gives ``sni = None`` both for a ClientHello without a server name and
for one whose name it cannot decode (invalid IDNA, stray bytes), and raises for layouts it does not expect.
A gate that skipped the check in those cases would let a client name ``evil.test`` in a form mitmproxy rejects
but the server accepts. This parser reads only what the check needs (record layer, the handshake header, the
ClientHello's fixed fields, the extension list, the ``server_name`` extension), is bounded (a ClientHello of at
most ``MAX_HELLO`` bytes), and tells the three cases apart: no ``server_name`` extension, a readable name, and
a ``server_name`` that is present but not a single readable host name (a mismatch for the gate).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HELLO = 1 << 16  # bytes of handshake message; real ClientHellos are < 2 KiB (with post-quantum keys < 4 KiB)
_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_SERVER_NAME = 0x0000
_HOST_NAME = 0x00


@dataclass(frozen=True)
class ServerName:
    """What the ClientHello says about the server name."""

    present: bool  # a server_name extension was sent
    name: str | None = None  # the host name, when it is one readable ASCII name
    problem: str | None = None  # why a present server_name is not a readable host name

    @property
    def shown(self) -> str:
        """The name as logged: the name, or a description of what was sent instead."""
        return self.name if self.name is not None else f"<{self.problem}>"


def looks_like_tls(data: bytes) -> bool:
    """A TLS handshake record's first byte. Anything starting so is read as a ClientHello, and one that is not
    a readable ClientHello counts as a mismatch (fail closed) rather than as opaque bytes."""
    return bool(data) and data[0] == _HANDSHAKE


def server_name(data: bytes) -> ServerName | None:
    """The server name of the ClientHello at the start of ``data``; None while it is incomplete.
    Raises ``ValueError`` when the bytes are not a ClientHello."""
    message = _handshake_message(data)
    if message is None:
        return None
    return _server_name(_extensions(message))


def _handshake_message(data: bytes) -> bytes | None:
    """Reassemble the first handshake message from its TLS records (a ClientHello may span several)."""
    payload = bytearray()
    offset = 0
    while True:
        message = _complete(payload)
        if message is not None:
            return message
        if len(data) < offset + 5:
            return None
        if data[offset] != _HANDSHAKE or data[offset + 1] != 0x03:
            raise ValueError("not a TLS handshake record")
        record = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if record == 0 or record > 1 << 14:
            raise ValueError(f"TLS record length {record} is out of range")
        payload += data[offset + 5 : offset + 5 + record]
        if len(data) < offset + 5 + record:
            return _complete(payload)
        offset += 5 + record


def _complete(payload: bytearray) -> bytes | None:
    """The handshake message in ``payload`` once all of it is there (bounded by ``MAX_HELLO``)."""
    if len(payload) < 4:
        return None
    if payload[0] != _CLIENT_HELLO:
        raise ValueError(f"handshake message type {payload[0]} is not a ClientHello")
    length = int.from_bytes(payload[1:4], "big")
    if length > MAX_HELLO:
        raise ValueError(f"ClientHello of {length} bytes exceeds {MAX_HELLO}")
    return bytes(payload[4 : 4 + length]) if len(payload) >= 4 + length else None


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated ClientHello")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def number(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.number(length_bytes))

    def done(self) -> bool:
        return self.pos == len(self.data)


def _extensions(message: bytes) -> dict[int, bytes]:
    hello = _Reader(message)
    hello.take(2 + 32)  # legacy_version, random
    if len(hello.vector(1)) > 32:
        raise ValueError("session id longer than 32 bytes")
    suites = hello.vector(2)
    if not suites or len(suites) % 2:
        raise ValueError("malformed cipher suite list")
    hello.vector(1)  # compression methods
    if hello.done():
        return {}  # a ClientHello without extensions (TLS 1.0 style): no server name
    block = _Reader(hello.vector(2))
    if not hello.done():
        raise ValueError("bytes after the extensions")
    extensions: dict[int, bytes] = {}
    while not block.done():
        kind, body = block.number(2), block.vector(2)
        if kind in extensions:
            raise ValueError(f"extension {kind} sent twice")
        extensions[kind] = body
    return extensions


def _server_name(extensions: dict[int, bytes]) -> ServerName:
    body = extensions.get(_SERVER_NAME)
    if body is None:
        return ServerName(present=False)
    try:
        outer = _Reader(body)
        entries = _Reader(outer.vector(2))
        if not outer.done():
            raise ValueError("bytes after the server name list")
        names = []
        while not entries.done():
            kind, value = entries.number(1), entries.vector(2)
            if kind == _HOST_NAME:
                names.append(value)
    except ValueError as exc:
        return ServerName(present=True, problem=f"malformed server_name: {exc}")
    if len(names) != 1:
        return ServerName(present=True, problem=f"{len(names)} host names in server_name")
    raw = names[0]
    if not raw or not raw.isascii() or any(b < 0x21 or b == 0x7F for b in raw):
        return ServerName(present=True, problem=f"server name {raw.decode('latin-1')!r} is not an ASCII host name")
    return ServerName(present=True, name=raw.decode("ascii"))

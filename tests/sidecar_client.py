"""A proxy-unaware workload for the sidecar tests: run as ``nobody`` with the system Python (stdlib only).

  dns NAME SERVER PORT [udp|tcp]   one A query; prints ``rcode=N answers=a,b`` or ``timeout``
  raw HOST PORT                    a TCP connection sending a non-HTTP line; prints what came back
  udp HOST PORT                    one datagram (a QUIC-like first byte); prints ``sent`` or the error
"""

from __future__ import annotations

import random
import socket
import struct
import sys


def dns_query(name: str, server: str, port: int, transport: str) -> str:
    ident = random.randrange(65536)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    message = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question
    try:
        if transport == "tcp":
            with socket.create_connection((server, port), timeout=3) as sock:
                sock.sendall(struct.pack("!H", len(message)) + message)
                size = struct.unpack("!H", sock.recv(2))[0]
                reply = b""
                while len(reply) < size:
                    reply += sock.recv(size - len(reply))
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(3)
                sock.sendto(message, (server, port))
                reply = sock.recv(4096)
    except OSError as exc:
        return f"timeout {type(exc).__name__}"
    rcode = reply[3] & 0x0F
    count = struct.unpack("!H", reply[6:8])[0]
    offset, answers = len(message), []
    for _ in range(count):  # answers use a name pointer (2 bytes), then type, class, ttl, rdlength
        offset += 2
        rtype, _cls, _ttl, length = struct.unpack("!HHIH", reply[offset:offset + 10])
        offset += 10
        if rtype == 1:
            answers.append(socket.inet_ntoa(reply[offset:offset + length]))
        offset += length
    return f"rcode={rcode} answers={','.join(answers)}"


def raw(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"\x00\x01nsp-raw\r\n")  # plainly not HTTP nor TLS
            data = sock.recv(4096)
    except OSError as exc:
        return f"error {type(exc).__name__}"
    return f"data {data[:40]!r}" if data else "closed"


def udp(host: str, port: int) -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"\xc0\x00\x00\x00\x01nsp-quic-probe", (host, port))
    except OSError as exc:
        return f"error {type(exc).__name__}"
    return "sent"


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "dns":
        print(dns_query(rest[0], rest[1], int(rest[2]), rest[3] if len(rest) > 3 else "udp"))
    elif command == "raw":
        print(raw(rest[0], int(rest[1])))
    else:
        print(udp(rest[0], int(rest[1])))

"""Hostile peers for the fault tests: upstreams that refuse, hang or never accept, and raw client sockets.

Each is a real socket on 127.0.0.1; each stops when its ``close`` is called (the fixtures in the test files do).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

from tests.support import free_port

RESOURCE_ID = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-faults/providers/{}"


def perimeter(*associations: dict[str, Any], settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """A perimeter whose profile allows loopback (rule ``loopback``) and nothing else."""
    return {
        "apiVersion": "nsp-proxy/v1",
        "settings": settings or {},
        "perimeters": [{
            "name": "faults", "location": "westeurope",
            "profiles": [
                {"name": "open", "accessRules": [
                    {"name": "loopback", "direction": "Inbound", "addressPrefixes": ["127.0.0.0/8"]}]},
                {"name": "shut", "accessRules": [
                    {"name": "docs", "direction": "Inbound", "addressPrefixes": ["198.51.100.0/24"]}]},
            ],
            "resourceAssociations": list(associations),
        }],
    }


def store(name: str, listen: int, upstream: str, *, mode: str = "Enforced", allowed: bool = True) -> dict[str, Any]:
    """A storage account behind ``127.0.0.1:listen``; loopback callers are allowed unless ``allowed`` is False."""
    resource = RESOURCE_ID.format(f"Microsoft.Storage/storageAccounts/{name}")
    return {"name": name, "privateLinkResource": {"id": resource},
            "profile": "open" if allowed else "shut", "accessMode": mode,
            "local": {"listen": f"127.0.0.1:{listen}", "upstream": upstream}}


class Hung:
    """An upstream that accepts and reads but never answers (``kind="hang"``), or that never even accepts: its
    accept queue is kept full so that new SYNs are dropped (``kind="blackhole"``)."""

    def __init__(self, kind: str):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        if kind == "blackhole":
            self.sock.listen(0)
            for _ in range(4):  # fill the accept queue (backlog 0 holds one; extra SYNs are dropped)
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", self.port))
                self.held.append(filler)
        else:
            self.sock.listen(64)
            threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.held.append(conn)

    def close(self) -> None:
        self._stop.set()
        for s in [*self.held, self.sock]:
            s.close()


class Held:
    """An upstream that reads each request's head, then answers ``200 secret`` only once ``release`` is called
    (``arrived`` is set when a request is being held)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.arrived, self._released = threading.Event(), threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            head = b""
            while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                head += chunk
            self.arrived.set()
            self._released.wait(30)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecret")

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self.release()
        self.sock.close()


def refused_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    return free_port()


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the peer closes ``sock`` (EOF or reset) within ``within`` seconds, reading whatever it sends."""
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False

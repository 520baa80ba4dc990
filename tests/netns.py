"""Network namespaces for end-to-end tests (root only): create, wire with veth pairs, run code inside.

``inside(ns, fn, ...)`` runs ``fn`` on a thread that has entered ``ns`` (``setns(2)`` moves only the calling
thread), so sockets it opens live in ``ns`` and processes it starts (fork copies the calling thread's
namespaces) run there: the ordinary fixtures (``start_proxy``, ``start_dnsmasq``, ``start_backend``) work in a
namespace unchanged. Addresses are only ever given inside namespaces a test created (10.200.0.0/16).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

CLONE_NEWNET = 0x40000000
WORKLOAD_PYTHON = "/usr/bin/python3"  # the system Python: readable by nobody (stdlib only)
T = TypeVar("T")


def available() -> str | None:
    """Why namespace tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth pairs, nftables)"
    for tool in ("ip", "nft", "setpriv", "curl", "dnsmasq"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install iproute2 nftables util-linux curl dnsmasq-base)"
    if not Path(WORKLOAD_PYTHON).exists():  # the workload runs as nobody, who cannot read a Python under /root
        return f"needs {WORKLOAD_PYTHON} (apt-get install python3)"
    return None


def sh(*command: str, ns: str | None = None, check: bool = True, timeout: float = 30.0,
       input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` (in ``ns`` through ``ip netns exec``), capturing its output."""
    full = ["ip", "netns", "exec", ns, *command] if ns else list(command)
    done = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def create(name: str) -> None:
    sh("ip", "netns", "add", name)
    sh("ip", "link", "set", "lo", "up", ns=name)


def delete(name: str) -> None:
    sh("ip", "netns", "delete", name, check=False)
    shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)


def link(a: str, a_addr: str, b: str, b_addr: str, tag: str) -> None:
    """A veth pair between namespaces ``a`` and ``b`` with the given ``address/prefix`` on each end."""
    left, right = f"{tag}a", f"{tag}b"
    sh("ip", "link", "add", left, "type", "veth", "peer", "name", right)
    sh("ip", "link", "set", left, "netns", a)
    sh("ip", "link", "set", right, "netns", b)
    for ns, dev, addr in ((a, left, a_addr), (b, right, b_addr)):
        sh("ip", "addr", "add", addr, "dev", dev, ns=ns)
        sh("ip", "link", "set", dev, "up", ns=ns)


def resolv_conf(name: str, nameserver: str) -> None:
    """``/etc/resolv.conf`` as processes started with ``ip netns exec`` in ``name`` see it."""
    folder = Path("/etc/netns") / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "resolv.conf").write_text(f"nameserver {nameserver}\noptions timeout:2 attempts:1\n")


def inside(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` run on a thread that entered network namespace ``name``."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({name}) failed")
            finally:
                os.close(fd)
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]

#!/usr/bin/env python3
"""nsp-proxy memory benchmark: proxy RSS during concurrent large uploads, allowed and denied.

Starts ``python -m proxy.cli run`` on a generated config with two Enforced listeners in front of a sink backend
(which reads and discards every body): one whose rule allows 127.0.0.1, one whose rule does not. Then, for each
listener in turn, ``--uploads`` (default 4) concurrent ``PUT``s of ``--size`` MB (default 200) each, sent in
64 KiB writes, while the proxy's resident set size is sampled from /proc every 50 ms. An uploader that gets an
answer before its body is sent stops sending (as curl does), so a denied upload costs what the proxy made the
caller send. Target (issue 6/13): peak RSS below 150 MB in both runs. Exit status 0 when met, 1 when not.

A script, not a test (pytest never runs it): ``python3 bench/memory.py [--size 200] [--uploads 4] [--json]``.
Linux only (reads /proc). Everything listens on 127.0.0.1 on ports the OS hands out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CHUNK = 64 * 1024
TARGET_MB = 150.0
START_TIMEOUT = 30.0


@dataclass
class Run:
    listener: str
    uploads: int
    size_mb: int
    statuses: list[int]
    sent_mb: float  # what the clients sent in total before the answer (or the end)
    seconds: float
    baseline_rss_mb: float
    peak_rss_mb: float


# -- the sink backend -------------------------------------------------------------------------------------------


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read one request (Content-Length or chunked), discard its body, answer 200, close."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":")
                                                               for line in head.split(b"\r\n")[1:] if line)}
        if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await reader.readline()
                    break
                await reader.readexactly(size + 2)
        else:
            remaining = int(fields.get(b"content-length", b"0"))
            while remaining:
                remaining -= len(await reader.read(min(remaining, CHUNK)))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


# -- the uploaders ----------------------------------------------------------------------------------------------


async def _upload(port: int, size: int, sent: list[int]) -> int:
    """One PUT of ``size`` bytes; stop sending once an answer arrives. Returns the status (0: none)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"PUT /upload HTTP/1.1\r\nHost: bench\r\nContent-Length: {size}\r\n\r\n".encode())
    answer = asyncio.ensure_future(reader.readline())
    block = b"x" * CHUNK
    remaining = size
    try:
        while remaining and not answer.done():
            piece = block[:min(CHUNK, remaining)]
            writer.write(piece)
            await writer.drain()
            remaining -= len(piece)
            sent[0] += len(piece)
        line = await asyncio.wait_for(answer, 120)
    except (TimeoutError, ConnectionError):
        line = answer.result() if answer.done() and not answer.exception() else b""
    finally:
        writer.close()
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _measure(pid: int, port: int, listener: str, uploads: int, size_mb: int) -> Run:
    baseline = _rss_mb(pid)
    peak = [baseline]
    sent = [0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], _rss_mb(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    started = time.monotonic()
    statuses = await asyncio.gather(*(_upload(port, size_mb * 1024 * 1024, sent) for _ in range(uploads)))
    seconds = time.monotonic() - started
    await asyncio.sleep(0.3)
    sampler.cancel()
    return Run(listener, uploads, size_mb, list(statuses), round(sent[0] / 2**20, 1), round(seconds, 2),
               round(baseline, 1), round(peak[0], 1))


# -- the proxy --------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("nsp-proxy exited before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nsp-proxy did not listen on {port}")


def _config(sink: int, allowed: int, denied: int) -> dict:
    def assoc(name: str, port: int, profile: str) -> dict:
        return {"name": name, "profile": profile, "accessMode": "Enforced",
                "privateLinkResource": {"id": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups"
                                              f"/rg/providers/Microsoft.Storage/storageAccounts/{name}"},
                "local": {"listen": f"127.0.0.1:{port}", "upstream": f"http://127.0.0.1:{sink}"}}

    return {"perimeters": [{"name": "bench", "profiles": [
        {"name": "open", "accessRules": [{"name": "lo", "direction": "Inbound", "addressPrefixes": ["127.0.0.0/8"]}]},
        {"name": "closed", "accessRules": [{"name": "office", "direction": "Inbound",
                                            "addressPrefixes": ["203.0.113.0/24"]}]}],
        "resourceAssociations": [assoc("allowed", allowed, "open"), assoc("denied", denied, "closed")]}]}


async def _main(args: argparse.Namespace) -> list[Run]:
    server = await asyncio.start_server(_sink, "127.0.0.1", 0)
    sink = server.sockets[0].getsockname()[1]
    allowed, denied = _free_port(), _free_port()
    with tempfile.TemporaryDirectory(prefix="nsp-memory-") as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text(yaml.safe_dump(_config(sink, allowed, denied)))
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "run", "--config", str(config), "--access-log",
             str(Path(tmp) / "access.jsonl"), "--metrics", "off"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for port in (allowed, denied):
                await asyncio.to_thread(_wait, port, process)
            runs = []
            for name, port in (("allowed", allowed), ("denied", denied)):
                print(f"{name}: {args.uploads} x {args.size} MB ...", file=sys.stderr)
                runs.append(await _measure(process.pid, port, name, args.uploads, args.size))
            return runs
        finally:
            process.terminate()
            process.wait(15)
            server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=200, help="MB per upload (default 200)")
    parser.add_argument("--uploads", type=int, default=4, help="concurrent uploads (default 4)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    runs = asyncio.run(_main(args))
    ok = all(run.peak_rss_mb < TARGET_MB for run in runs)
    if args.json:
        print(json.dumps({"target_mb": TARGET_MB, "ok": ok, "runs": [asdict(r) for r in runs]}, indent=2))
    else:
        print(f"{'listener':<9} {'uploads':>7} {'MB each':>7} {'statuses':<22} {'sent MB':>8} {'s':>6} "
              f"{'RSS before':>10} {'RSS peak':>8}")
        for r in runs:
            print(f"{r.listener:<9} {r.uploads:>7} {r.size_mb:>7} {r.statuses!s:<22} {r.sent_mb:>8} "
                  f"{r.seconds:>6} {r.baseline_rss_mb:>10} {r.peak_rss_mb:>8}")
        print(f"target: peak RSS < {TARGET_MB:.0f} MB: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

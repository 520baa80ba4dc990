"""The benchmark's load generators: wrk for keep-alive rows, an asyncio client for new-tunnel CONNECT rows.

wrk (``apt-get install wrk``) is a C load generator: one wrk thread drives many times the requests/s any of the
proxies here can serve, so the proxy, not the client, is what is measured (check with the ``backend (direct)``
row). Where wrk is not installed, ``bench.measure`` (asyncio streams) is the fallback; it is slower and shares a
core with the proxy, so its ratios are less telling. A CONNECT row needs a new connection per request, which wrk
does not do: ``tunnels`` opens one, sends ``CONNECT``, then one plain ``GET`` through the tunnel, reads the whole
answer and closes, ``connections`` at a time.

Every driver returns a ``bench.Window``: latencies of the requests that got the expected status, errors (other
statuses, socket errors), the measured seconds and the server's CPU seconds over them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('NSPBENCH {"requests":%d,"duration_us":%d,"socket_errors":%d,"non_2xx":%d,'
    .. '"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%f}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def wrk_script(path: str, host: str) -> str:
    """A wrk Lua script sending ``GET path`` with ``Host: host`` (an absolute URL makes it a forward-proxy
    request) and printing the summary as one JSON line."""
    return (f"wrk.method = \"GET\"\nwrk.path = {json.dumps(path)}\n"
            f"wrk.headers[\"Host\"] = {json.dumps(host)}\nwrk.headers[\"User-Agent\"] = \"nsp-bench\"\n" + _DONE)


def run_wrk(port: int, script: str, connections: int, seconds: float, *, expect: int = 200,
            server_pid: int | None = None) -> Any:
    """One wrk window against 127.0.0.1:``port``; a ``bench.Window`` with wrk's percentiles as latencies."""
    from bench import Window, cpu_seconds

    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        before = cpu_seconds(server_pid) if server_pid else None
        started = time.perf_counter()
        out = subprocess.run([wrk_binary() or "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                              "--timeout", "10s", "-s", f.name, f"http://127.0.0.1:{port}/"],
                             capture_output=True, text=True, timeout=seconds + 60, check=False)
        elapsed = time.perf_counter() - started
        after = cpu_seconds(server_pid) if server_pid else None
    finally:
        Path(f.name).unlink(missing_ok=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("NSPBENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")
    s = json.loads(line.split(" ", 1)[1])
    # 2xx/3xx are "good" to wrk: a 403 row expects every response to be a non-2xx one
    good = s["requests"] - s["non_2xx"] if expect < 400 else s["non_2xx"]
    seconds_measured = s["duration_us"] / 1e6 or elapsed
    return Window(latencies=[], errors=s["requests"] - good + s["socket_errors"], seconds=seconds_measured,
                  cpu_seconds=(after - before) if before is not None and after is not None else None, count=good,
                  percentiles_ms={k: s[k] / 1000 for k in ("p50", "p90", "p99", "max", "mean")})


async def _tunnel(port: int, target: bytes, request: bytes, latencies: list[float], errors: list[int],
                  warm_until: float, stop_at: float) -> None:
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            ok = head[9:12] == b"200"
            if ok:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:].strip())
                if length:
                    await reader.readexactly(length)
                ok = head[9:12] == b"200"
            ended = time.perf_counter()
            if started >= warm_until and ended <= stop_at:
                (latencies.append(ended - started) if ok else errors.append(1))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            if started >= warm_until:
                errors.append(1)
            await asyncio.sleep(0.01)
        finally:
            if writer is not None:
                writer.close()


def tunnels(port: int, host: str, connections: int, warmup: float, seconds: float,
            server_pid: int | None = None) -> Any:
    """``connections`` clients, each opening a new CONNECT tunnel to ``host`` per request, for ``seconds``."""
    from bench import Window, cpu_seconds

    request = f"GET /container/blob HTTP/1.1\r\nHost: {host}\r\nUser-Agent: nsp-bench\r\n\r\n".encode()
    cpu: list[float | None] = []

    async def drive() -> tuple[list[float], list[int]]:
        now = time.perf_counter()
        latencies: list[float] = []
        errors: list[int] = []
        clients = asyncio.gather(*(_tunnel(port, host.encode(), request, latencies, errors, now + warmup,
                                           now + warmup + seconds) for _ in range(connections)))
        await asyncio.sleep(warmup)
        cpu.append(cpu_seconds(server_pid) if server_pid else None)
        await clients
        cpu.append(cpu_seconds(server_pid) if server_pid else None)
        return latencies, errors

    latencies, errors = asyncio.run(drive())
    used = cpu[1] - cpu[0] if cpu[0] is not None and cpu[1] is not None else None
    return Window(latencies, len(errors), seconds, used)

#!/usr/bin/env python3
"""nsp-proxy benchmark: what does enforcing the perimeter cost on top of mitmproxy itself?

One run measures, in front of the same fast loopback backend and with the same load generator:

  backend     the load generator straight to the backend (the ceiling of this machine and generator)
  mitmdump    bare ``mitmdump -q --mode reverse:http://127.0.0.1:BACKEND@PORT``
  nsp-proxy   ``python -m proxy.cli run`` on a generated Enforced config with ~200 inbound prefixes, the
              client allowed, an access-log file written for every request, metrics off
  mitmdump forward   bare ``mitmdump -q --mode regular@PORT``: plain-HTTP keep-alive forward-proxy requests
  nsp-proxy forward  the same requests to an Enforced forward listener of the same nsp-proxy whose FQDN rule
                     allows the name (resolved by a tiny DNS responder of the benchmark, then pinned)

and then the decision engine alone (``proxy.decision.engine.decide_inbound`` with the same 200 prefixes).

Throughput is requests/s over the measured window; latencies are per request, client side. Every response
must be a 200 (anything else is counted as an error: a denial would make the proxy look fast). This is a
script, not a test: ``python bench/bench.py`` (``--help`` for the knobs, ``--json`` for machine output).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen

REPO = Path(__file__).resolve().parent.parent
BODY = b"ok" + b"." * 97 + b"\n"  # 100 bytes, the issue's response size
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n"
            b"Connection: keep-alive\r\n\r\n" + BODY)
START_TIMEOUT = 30.0


# -- the backend (runs in its own process: `bench.py --serve-backend PORT`) ---------------------------------------


async def _backend_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer every HTTP/1.1 request on the connection with a fixed 200, keeping the connection open."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, val = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(val.strip() or 0)
                elif name == b"connection" and val.strip().lower() == b"close":
                    close = True
            if length:
                await reader.readexactly(length)
            writer.write(RESPONSE)
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


class _AnswerLoopback(asyncio.DatagramProtocol):
    """A DNS responder for nsp-proxy's resolver: every A query is answered with 127.0.0.1 (TTL 60), any other
    type with an empty answer. The forward rows' name is ``localhost``, which bare mitmdump resolves itself."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        import dns.message
        import dns.rdatatype
        import dns.rrset

        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - not a DNS query: ignore it
            return
        answer = dns.message.make_response(query)
        question = query.question[0] if query.question else None
        if question is not None and question.rdtype == dns.rdatatype.A:
            answer.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", "127.0.0.1"))
        self.transport.sendto(answer.to_wire(), addr)  # type: ignore[attr-defined]


async def _serve_backend(port: int, dns_port: int) -> None:
    server = await asyncio.start_server(_backend_connection, "127.0.0.1", port, backlog=1024)
    await asyncio.get_running_loop().create_datagram_endpoint(_AnswerLoopback, local_addr=("127.0.0.1", dns_port))
    async with server:
        await server.serve_forever()


# -- processes ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on {port} within {timeout}s")


@contextlib.contextmanager
def running(argv: list[str], port: int, what: str, stderr_path: Path) -> Iterator[subprocess.Popen]:
    """Start ``argv``, wait for ``port``, yield the process, stop it (SIGTERM, then SIGKILL)."""
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            try:
                wait_for_port(port, process, what)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}\n--- {what} stderr ---\n{stderr_path.read_text()}") from None
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (Linux /proc), or None where that is not available."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def mitmdump_binary() -> str:
    local = Path(sys.executable).parent / "mitmdump"
    found = str(local) if local.exists() else shutil.which("mitmdump")
    if not found:
        raise SystemExit("mitmdump is not installed (pip install mitmproxy)")
    return found


# -- the configuration under test -----------------------------------------------------------------------------


def inbound_prefixes(count: int, seed: int = 7) -> list[str]:
    """``count`` distinct IPv4 prefixes of mixed lengths, none of them containing loopback."""
    rng = random.Random(seed)
    prefixes: set[str] = set()
    while len(prefixes) < count:
        length = rng.choice((12, 16, 20, 22, 24, 24, 24, 28, 32))
        first = rng.choice((10, 20, 40, 52, 100, 145, 172, 185, 198, 203))
        address = (first << 24) | rng.getrandbits(24)
        network = address >> (32 - length) << (32 - length)
        prefixes.add(f"{network >> 24}.{(network >> 16) & 255}.{(network >> 8) & 255}.{network & 255}/{length}")
    return sorted(prefixes)


FORWARD_NAME = "localhost"  # the forward rows' destination: in /etc/hosts for mitmdump, in the bench DNS for us


def perimeter_config(listen_port: int, upstream_port: int, rules: int, forward_port: int = 0,
                     dns_port: int = 0, denied_port: int = 0) -> dict[str, Any]:
    """An Enforced association with ``rules`` inbound prefixes in 4 rules; loopback is the last one listed. With
    ``forward_port``, a second Enforced association whose forward-proxy listener may reach ``FORWARD_NAME``; with
    ``denied_port``, a third one, in front of the same upstream, whose profile has the same prefixes but not
    loopback: every request there is denied (403)."""
    prefixes = [*inbound_prefixes(rules - 1), "127.0.0.1/32"]
    chunk = -(-len(prefixes) // 4)
    access_rules = [{"name": f"allow-block-{i}", "direction": "Inbound", "addressPrefixes": prefixes[j:j + chunk]}
                    for i, j in enumerate(range(0, len(prefixes), chunk))]
    group = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-bench/providers/"
    profiles = [{"name": "bench-profile", "accessRules": access_rules}]
    associations = [{
        "name": "bench-store",
        "privateLinkResource": {"id": group + "Microsoft.Storage/storageAccounts/benchstore"},
        "profile": "bench-profile",
        "accessMode": "Enforced",
        "local": {"listen": f"127.0.0.1:{listen_port}", "upstream": f"http://127.0.0.1:{upstream_port}"},
    }]
    document: dict[str, Any] = {"apiVersion": "nsp-proxy/v1"}
    if denied_port:
        profiles.append({"name": "bench-denied", "accessRules": [
            {"name": "allow-others", "direction": "Inbound", "addressPrefixes": prefixes[:-1]}]})
        associations.append({
            "name": "bench-store-denied",
            "privateLinkResource": {"id": group + "Microsoft.Storage/storageAccounts/benchstoredenied"},
            "profile": "bench-denied", "accessMode": "Enforced",
            "local": {"listen": f"127.0.0.1:{denied_port}", "upstream": f"http://127.0.0.1:{upstream_port}"},
        })
    if forward_port:
        profiles.append({"name": "bench-outbound", "accessRules": [
            {"name": "allow-backend", "direction": "Outbound", "fullyQualifiedDomainNames": [FORWARD_NAME]}]})
        associations.append({
            "name": "bench-app", "privateLinkResource": {"id": group + "Microsoft.Web/sites/benchapp"},
            "profile": "bench-outbound", "accessMode": "Enforced",
            "local": {"outboundListen": f"127.0.0.1:{forward_port}"},
        })
        document["settings"] = {"dns": {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": 2}}
    document["perimeters"] = [{"name": "bench-perimeter", "location": "westeurope", "profiles": profiles,
                               "resourceAssociations": associations}]
    return document


# -- the load generator ---------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    target: str
    connections: int
    seconds: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    server_cpu_ms_per_request: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


async def _client(port: int, request: bytes, warm_until: float, stop_at: float, latencies: list[float],
                  errors: list[int]) -> None:
    """One keep-alive connection: request, read the whole response, repeat until ``stop_at``."""
    reader = writer = None
    while time.perf_counter() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert reader is not None
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:].strip())
            if length:
                await reader.readexactly(length)
            ended = time.perf_counter()
            if started >= warm_until and ended <= stop_at:
                if status == b"200":
                    latencies.append(ended - started)
                else:
                    errors.append(1)
            if b"connection: close" in head.lower():
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            if time.perf_counter() >= warm_until:
                errors.append(1)
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def _load(port: int, connections: int, warmup: float, duration: float,
                forward_to: int = 0) -> tuple[list[float], int]:
    """Reverse-proxy requests, or with ``forward_to`` (the backend's port) absolute-form forward-proxy ones."""
    target, host = ((f"http://{FORWARD_NAME}:{forward_to}/container/blob", f"{FORWARD_NAME}:{forward_to}")
                    if forward_to else ("/container/blob", f"127.0.0.1:{port}"))
    request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: nsp-bench\r\n\r\n".encode()
    now = time.perf_counter()
    warm_until, stop_at = now + warmup, now + warmup + duration
    latencies: list[float] = []
    errors: list[int] = []
    await asyncio.gather(*(_client(port, request, warm_until, stop_at, latencies, errors)
                           for _ in range(connections)))
    return latencies, len(errors)


@dataclass
class Window:
    """One measured window against one target: raw latencies, errors, and the server's CPU seconds."""

    latencies: list[float]
    errors: int
    seconds: float
    cpu_seconds: float | None
    count: int | None = None  # requests with the expected status, when ``latencies`` is not kept (wrk)
    percentiles_ms: dict[str, float] | None = None  # wrk's own p50/p90/p99/max/mean of the window

    @property
    def requests(self) -> int:
        return self.count if self.count is not None else len(self.latencies)


def measure(port: int, connections: int, warmup: float, duration: float, server_pid: int | None = None,
            forward_to: int = 0) -> Window:
    """Drive ``port`` with ``connections`` keep-alive clients; keep what completed after ``warmup``."""
    cpu: list[float | None] = []

    async def drive() -> tuple[list[float], int]:
        task = asyncio.ensure_future(_load(port, connections, warmup, duration, forward_to))
        await asyncio.sleep(warmup)  # the server's CPU time is sampled over the measured window only
        cpu.append(cpu_seconds(server_pid) if server_pid else None)
        latencies, errors = await task
        cpu.append(cpu_seconds(server_pid) if server_pid else None)
        return latencies, errors

    latencies, errors = asyncio.run(drive())
    used = cpu[1] - cpu[0] if cpu[0] is not None and cpu[1] is not None else None
    return Window(latencies, errors, duration, used)


def summarize(target: str, connections: int, windows: list[Window]) -> LoadResult:
    """Pool the windows of one target: total requests over total measured time; percentiles over all latencies
    (wrk windows, which keep none: the median of the windows' percentiles, the largest maximum)."""
    latencies = sorted(x for w in windows for x in w.latencies)
    requests = sum(w.requests for w in windows)
    seconds = sum(w.seconds for w in windows)
    cpus = [w.cpu_seconds for w in windows]
    cpu_per_request = (round(sum(cpus) / requests * 1000, 4)  # type: ignore[arg-type]
                       if requests and all(c is not None for c in cpus) else None)
    ordered = latencies or [0.0]

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 3)

    pooled = [w.percentiles_ms for w in windows if w.percentiles_ms]
    if pooled and not latencies:
        def med(key: str) -> float:
            return round(statistics.median(p[key] for p in pooled), 3)
        p50, p90, p99, mean = med("p50"), med("p90"), med("p99"), med("mean")
        largest = round(max(p["max"] for p in pooled), 3)
    else:
        p50, p90, p99, largest = pct(50), pct(90), pct(99), round(ordered[-1] * 1000, 3)
        mean = round(statistics.fmean(ordered) * 1000, 3)
    return LoadResult(
        target=target, connections=connections, seconds=round(seconds, 2), requests=requests,
        errors=sum(w.errors for w in windows), rps=round(requests / seconds, 1) if seconds else 0.0, p50_ms=p50,
        p90_ms=p90, p99_ms=p99, max_ms=largest, mean_ms=mean, server_cpu_ms_per_request=cpu_per_request,
        notes={"windows_rps": [round(w.requests / w.seconds, 1) if w.seconds else 0.0 for w in windows],
               "windows_cpu_ms": [round(w.cpu_seconds / w.requests * 1000, 4) if w.cpu_seconds is not None
                                  and w.requests else None for w in windows]},
    )


# -- the decision engine alone --------------------------------------------------------------------------------


def engine_benchmark(rules: int, seconds: float) -> dict[str, Any]:
    """decide_inbound calls per second with the benchmark's 200-prefix profile, over a mix of callers."""
    sys.path.insert(0, str(REPO))
    from proxy.config.loader import parse_config_text
    from proxy.decision.engine import decide_inbound
    from proxy.decision.facts import InboundFacts
    from proxy.policy.compiled import compile_policy
    from proxy.records.accesslog import build_record, encode_record

    config = parse_config_text(yaml.safe_dump(perimeter_config(1, 2, rules)), "bench.yaml")
    policy = compile_policy(config, generation=1)
    inside = [p.split("/")[0] for p in inbound_prefixes(rules - 1)[:20]]
    rng = random.Random(11)
    # first octets no generated prefix uses: these callers match no rule and are denied
    outside = [f"{rng.choice((1, 11, 33, 192))}.0.2.{rng.randrange(1, 255)}" for _ in range(20)]
    facts = [InboundFacts(resource="bench-store", source_ip=ip, source_port=50000)
             for ip in ["127.0.0.1", *inside, *outside]]
    allowed = sum(decide_inbound(policy, f).allowed for f in facts)

    def rate(work: Any) -> tuple[float, int]:
        done, started = 0, time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            for f in facts:
                work(f)
            done += len(facts)
        return done / (time.perf_counter() - started), done

    decisions_per_s, done = rate(lambda f: decide_inbound(policy, f))
    with_record_per_s, _ = rate(lambda f: encode_record(build_record(decide_inbound(policy, f), f, policy)))
    return {
        "rules": rules, "callers": len(facts), "allowed_callers": allowed, "decisions": done,
        "decisions_per_s": round(decisions_per_s), "us_per_decision": round(1e6 / decisions_per_s, 2),
        "decision_and_record_per_s": round(with_record_per_s),
        "us_per_decision_and_record": round(1e6 / with_record_per_s, 2),
    }


# -- the run ------------------------------------------------------------------------------------------------

ISSUE_TARGETS = {  # issue 7: nsp-proxy over bare mitmdump, measured in the same run
    "inbound allowed": {"throughput": 1.5, "server_cpu_per_request": 0.7},
    "inbound denied (403)": {"throughput": 2.0},
    "forward plain HTTP": {"throughput": 1.5},
    "CONNECT, new tunnel each": {"throughput": 1.1},
}
ROWS = (  # (target, process, port key, kind, expected status); kinds: reverse, forward (absolute form), connect
    ("mitmdump reverse", "mitmdump", "mitm", "reverse", 200),
    ("nsp-proxy inbound allowed", "nsp-proxy", "nsp", "reverse", 200),
    ("nsp-proxy inbound denied", "nsp-proxy", "nsp_denied", "reverse", 403),
    ("mitmdump forward", "mitmdump forward", "mitm_forward", "forward", 200),
    ("nsp-proxy forward", "nsp-proxy", "nsp_forward", "forward", 200),
    ("mitmdump CONNECT", "mitmdump forward", "mitm_forward", "connect", 200),
    ("nsp-proxy CONNECT", "nsp-proxy", "nsp_forward", "connect", 200),
)
PAIRS = (  # (issue row, mitmdump target, nsp-proxy target)
    ("inbound allowed", "mitmdump reverse", "nsp-proxy inbound allowed"),
    ("inbound denied (403)", "mitmdump reverse", "nsp-proxy inbound denied"),
    ("forward plain HTTP", "mitmdump forward", "nsp-proxy forward"),
    ("CONNECT, new tunnel each", "mitmdump CONNECT", "nsp-proxy CONNECT"),
)


def _window(kind: str, port: int, backend: int, expect: int, args: argparse.Namespace, seconds: float,
            warmup: float, pid: int) -> Window:
    """One measured window of one row, with wrk where it is installed (not for CONNECT: a tunnel per request)."""
    host = f"{FORWARD_NAME}:{backend}"
    if kind == "connect":
        return loadgen.tunnels(port, host, args.connections, warmup, seconds, pid)
    if loadgen.wrk_binary() is None or args.asyncio_client:
        return measure(port, args.connections, warmup, seconds, pid, backend if kind == "forward" else 0)
    script = loadgen.wrk_script(f"http://{host}/container/blob" if kind == "forward" else "/container/blob",
                                host if kind == "forward" else f"127.0.0.1:{port}")
    if warmup > 0:
        loadgen.run_wrk(port, script, args.connections, warmup, expect=expect)
    return loadgen.run_wrk(port, script, args.connections, seconds, expect=expect, server_pid=pid)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the backend, bare mitmdump (reverse and regular) and one nsp-proxy (allowed, denied and forward
    listeners) once, then measure every row in alternating rounds (mitmdump, nsp-proxy, mitmdump, ...) so that a
    burst of noise on a shared machine lands on both sides, not one. Then nsp-proxy's RSS over many requests, the
    reload row (``bench/reload_latency.py``, when present) and the decision engine alone."""
    results: list[LoadResult] = []
    work = Path(tempfile.mkdtemp(prefix="nsp-bench-"))
    ports = {k: free_port() for k in ("backend", "dns", "mitm", "mitm_forward", "nsp", "nsp_denied", "nsp_forward")}
    backend_port = ports["backend"]
    config_path, access_log = work / "perimeter.yaml", work / "access.jsonl"
    config_path.write_text(yaml.safe_dump(perimeter_config(ports["nsp"], backend_port, args.rules, ports["nsp_forward"],
                                                           ports["dns"], ports["nsp_denied"]), sort_keys=False))
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if not args.quiet else (lambda *a: None)
    window = args.duration / args.rounds
    rows = [r for r in ROWS if args.forward or r[3] == "reverse"]
    rss: dict[str, Any] = {}
    reload_row: dict[str, Any] | None = None
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(running(
                [sys.executable, str(Path(__file__).resolve()), "--serve-backend", str(backend_port),
                 "--serve-dns", str(ports["dns"])],
                backend_port, "backend", work / "backend.stderr"))
            if args.direct_duration > 0:
                say(f"[bench] backend direct: {args.direct_duration}s")
                direct = _window("reverse", backend_port, backend_port, 200, args, args.direct_duration, 0.5, 0)
                results.append(summarize("backend (direct)", args.connections, [direct]))
            mitmdump = mitmdump_binary()
            processes = {
                "mitmdump": stack.enter_context(running(
                    [mitmdump, "-q", "--mode", f"reverse:http://127.0.0.1:{backend_port}@127.0.0.1:{ports['mitm']}"],
                    ports["mitm"], "mitmdump", work / "mitmdump.stderr")),
                "nsp-proxy": stack.enter_context(running(
                    [sys.executable, "-m", "proxy.cli", "run", "--config", str(config_path), "--access-log",
                     str(access_log), "--metrics", "off"],
                    ports["nsp"], "nsp-proxy", work / "nsp-proxy.stderr")),
            }
            if args.forward:
                processes["mitmdump forward"] = stack.enter_context(running(
                    [mitmdump, "-q", "--mode", f"regular@127.0.0.1:{ports['mitm_forward']}"],
                    ports["mitm_forward"], "mitmdump forward", work / "mitmdump-forward.stderr"))
            windows: dict[str, list[Window]] = {row[0]: [] for row in rows}
            served, first_10k = 0, None  # nsp-proxy's requests so far; (requests, RSS KiB) once past 10,000
            for round_no in range(args.rounds):
                warmup = args.warmup if round_no == 0 else min(args.warmup, 0.5)
                for name, process, port, kind, expect in rows:
                    say(f"[bench] round {round_no + 1}/{args.rounds} {name}: {warmup:g}s warm-up + {window:g}s")
                    windows[name].append(_window(kind, ports[port], backend_port, expect, args, window, warmup,
                                                 processes[process].pid))
                    served = sum(w.requests + w.errors for n in windows if n.startswith("nsp-proxy")
                                 for w in windows[n])
                    if first_10k is None and served >= 10_000:  # warm-ups not counted: a little later than 10k
                        first_10k = (served, rss_kib(processes["nsp-proxy"].pid))
            results.extend(summarize(name, args.connections, windows[name]) for name in windows)
            if args.rss_requests:
                say(f"[bench] nsp-proxy RSS over {args.rss_requests:,} requests")
                rss = rss_row(ports["nsp"], processes["nsp-proxy"].pid, args, served, first_10k)
        records = sum(1 for _ in access_log.open("rb")) if access_log.exists() else 0
        if args.reload:
            reload_row = run_reload_row(say)
        say(f"[bench] decision engine: {args.engine_seconds}s")
        engine = engine_benchmark(args.rules, args.engine_seconds)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    by_name = {r.target: r for r in results}
    ratios = {row: _ratio(by_name[base], by_name[ours], windows[base], windows[ours])
              for row, base, ours in PAIRS if base in by_name and ours in by_name}
    return {
        "settings": {"connections": args.connections, "warmup_s": args.warmup, "duration_s": args.duration,
                     "rounds": args.rounds, "rules": args.rules, "cpus": os.cpu_count(),
                     "python": sys.version.split()[0], "mitmproxy": _mitmproxy_version(),
                     "load_generator": "wrk" if loadgen.wrk_binary() and not args.asyncio_client else "asyncio"},
        "load": [asdict(r) for r in results],
        "ratios": ratios,
        "rss": rss,
        "reload": reload_row,
        "access_log_records": records,
        "engine": engine,
        "work_dir": str(work) if args.keep else None,
    }


def _mitmproxy_version() -> str:
    out = subprocess.run([mitmdump_binary(), "--version"], capture_output=True, text=True, check=False).stdout
    return next((line.split()[-1] for line in out.splitlines() if line.startswith("Mitmproxy")), "?")


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_row(port: int, pid: int, args: argparse.Namespace, served: int,
            first_10k: tuple[int, int | None] | None) -> dict[str, Any]:
    """Drive the allowed listener until nsp-proxy has served ``args.rss_requests`` requests in all (or for at
    most ``args.rss_seconds``), comparing its RSS at the end with the RSS once it had served 10,000 (noted
    during the rows when they got that far): flat means within 10 MB (issue 7)."""
    mark, after_10k = first_10k if first_10k is not None else (served, None)
    samples: list[tuple[int, int | None]] = []
    deadline = time.monotonic() + args.rss_seconds
    while served < args.rss_requests and time.monotonic() < deadline:
        chunk = _window("reverse", port, 0, 200, args, 5.0, 0, pid)
        served += chunk.requests + chunk.errors
        if after_10k is None and served >= 10_000:
            mark, after_10k = served, rss_kib(pid)
        samples.append((served, rss_kib(pid)))
    end = rss_kib(pid)
    growth = (end - after_10k) / 1024 if end is not None and after_10k is not None else None
    return {"requests": served, "rss_mb_after_10k": round(after_10k / 1024, 1) if after_10k else None,
            "measured_after": mark, "rss_mb_end": round(end / 1024, 1) if end else None,
            "growth_mb": round(growth, 1) if growth is not None else None,
            "flat": growth is not None and growth <= 10.0, "samples": samples}


def run_reload_row(say: Any) -> dict[str, Any] | None:
    """The largest request latency during reloads of 10,000 rules, from ``bench/reload_latency.py`` (its own
    script, run here as a subprocess) when it is present next to this file."""
    script = Path(__file__).with_name("reload_latency.py")
    if not script.exists():
        say("[bench] reload row skipped: bench/reload_latency.py is not here")
        return None
    say("[bench] reload latency (bench/reload_latency.py)")
    out = subprocess.run([sys.executable, str(script), "--json"], cwd=REPO, capture_output=True, text=True,
                         timeout=300, check=False)
    try:
        report = json.loads(out.stdout)
    except ValueError:
        return {"error": f"reload_latency.py exited {out.returncode}: {out.stderr[-500:]}"}
    return {"max_ms": report["during_reloads"]["max_ms"], "baseline_max_ms": report["baseline"]["max_ms"],
            "reload_seconds": report.get("reload_seconds"), "errors": report["during_reloads"]["errors"]}


def _ratio(base: LoadResult, ours: LoadResult, base_windows: list[Window],
           our_windows: list[Window]) -> dict[str, Any]:
    """nsp-proxy over bare mitmdump for one path (above 1 for throughput is a gain, below 1 for CPU), pooled
    over the run and, per alternating round, min/median/max of the rounds' own ratios."""
    per_round = [(o.requests / o.seconds) / (b.requests / b.seconds)
                 for b, o in zip(base_windows, our_windows, strict=False) if b.requests and o.seconds and b.seconds]
    cpu_rounds = [(o.cpu_seconds / o.requests) / (b.cpu_seconds / b.requests)
                  for b, o in zip(base_windows, our_windows, strict=False)
                  if b.cpu_seconds and o.cpu_seconds and b.requests and o.requests]

    def spread(values: list[float]) -> list[float] | None:
        return [round(min(values), 3), round(statistics.median(values), 3), round(max(values), 3)] if values else None

    return {
        "throughput": round(ours.rps / base.rps, 3) if base.rps else None,
        "throughput_rounds_min_median_max": spread(per_round),
        "server_cpu_per_request": (round(ours.server_cpu_ms_per_request / base.server_cpu_ms_per_request, 3)
                                   if ours.server_cpu_ms_per_request and base.server_cpu_ms_per_request else None),
        "cpu_rounds_min_median_max": spread(cpu_rounds),
        "p50_latency": round(ours.p50_ms / base.p50_ms, 3) if base.p50_ms else None,
        "p99_latency": round(ours.p99_ms / base.p99_ms, 3) if base.p99_ms else None,
    }


def print_table(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(f"nsp-proxy benchmark: {s['connections']} connections, {s['warmup_s']}s warm-up, {s['duration_s']}s "
          f"measured per target in {s['rounds']} alternating rounds, {s['rules']} inbound prefixes, {s['cpus']} "
          f"CPUs, Python {s['python']}, mitmproxy {s['mitmproxy']}, load generator {s['load_generator']}")
    print()
    head = (f"{'target':<27}{'requests':>9}{'req/s':>9}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'max ms':>9}"
            f"{'errors':>7}{'cpu ms/req':>11}")
    print(head)
    print("-" * len(head))
    for r in report["load"]:
        cpu = f"{r['server_cpu_ms_per_request']:.3f}" if r["server_cpu_ms_per_request"] is not None else "-"
        print(f"{r['target']:<27}{r['requests']:>9}{r['rps']:>9.1f}{r['p50_ms']:>8.2f}{r['p90_ms']:>8.2f}"
              f"{r['p99_ms']:>8.2f}{r['max_ms']:>9.2f}{r['errors']:>7}{cpu:>11}")
    print()
    print(f"{'issue 7 row (nsp-proxy / mitmdump)':<37}{'throughput':>11}{'rounds min/med/max':>22}"
          f"{'cpu/req':>9}{'rounds min/med/max':>22}  target")
    for row, ratio in report["ratios"].items():
        goal = ISSUE_TARGETS.get(row, {})
        met = all((ratio[k] or 0) >= v if k == "throughput" else (ratio[k] or 99) <= v for k, v in goal.items())
        rounds = "/".join(f"{x:.2f}" for x in ratio["throughput_rounds_min_median_max"] or [])
        cpu_rounds = "/".join(f"{x:.2f}" for x in ratio["cpu_rounds_min_median_max"] or [])
        wanted = ", ".join(f">= x{v} throughput" if k == "throughput" else f"<= x{v} cpu/req"
                           for k, v in goal.items())
        cpu = "x" + str(ratio["server_cpu_per_request"])
        print(f"{row:<37}{'x' + str(ratio['throughput']):>11}{rounds:>22}{cpu:>9}{cpu_rounds:>22}"
              f"  {wanted}: {'met' if met else 'NOT met'}")
    rss = report.get("rss") or {}
    if rss:
        print(f"{'RSS after many requests':<37}{rss['rss_mb_after_10k']} MB after {rss['measured_after']:,}, "
              f"{rss['rss_mb_end']} MB after {rss['requests']:,} (growth {rss['growth_mb']} MB)  target: within "
              f"10 MB: {'met' if rss['flat'] else 'NOT met'}")
    reload_row = report.get("reload")
    if reload_row and "max_ms" in reload_row:
        met = "met" if reload_row["max_ms"] < 50 else "NOT met"
        print(f"{'largest latency during a reload':<37}{reload_row['max_ms']} ms (no reload: "
              f"{reload_row['baseline_max_ms']} ms)  target < 50 ms: {met}")
    elif reload_row:
        print(f"{'largest latency during a reload':<37}{reload_row['error']}")
    print(f"nsp-proxy access-log records written: {report['access_log_records']:,}")
    e = report["engine"]
    print(f"decision engine ({e['rules']} prefixes, {e['callers']} callers, {e['allowed_callers']} allowed): "
          f"{e['decisions_per_s']:,} decisions/s ({e['us_per_decision']} us each); with the access-log record "
          f"built and JSON-encoded: {e['decision_and_record_per_s']:,}/s ({e['us_per_decision_and_record']} us)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", "-c", type=int, default=8, help="concurrent keep-alive connections (8)")
    parser.add_argument("--duration", "-d", type=float, default=12.0, help="measured seconds per target (12)")
    parser.add_argument("--warmup", "-w", type=float, default=1.0, help="warm-up seconds before measuring (1)")
    parser.add_argument("--rounds", "-r", type=int, default=3,
                        help="alternating windows per target; --duration is split between them (3)")
    parser.add_argument("--rss-requests", type=int, default=100_000,
                        help="requests nsp-proxy serves in all before its RSS is compared with the RSS after "
                             "10,000 (100,000; 0 skips it)")
    parser.add_argument("--rss-seconds", type=float, default=90.0,
                        help="at most this long for the RSS row; the table says how many requests it reached (90)")
    parser.add_argument("--long", action="store_true",
                        help="the RSS row over 1,000,000 requests, however long that takes (~15 min at 1,200/s)")
    parser.add_argument("--no-reload", dest="reload", action="store_false",
                        help="skip the reload row (bench/reload_latency.py, when present)")
    parser.add_argument("--asyncio-client", action="store_true",
                        help="use the built-in asyncio client even where wrk is installed")
    parser.add_argument("--direct-duration", type=float, default=2.0,
                        help="seconds against the backend directly, the generator's ceiling; 0 skips it (2)")
    parser.add_argument("--rules", type=int, default=200, help="inbound prefixes in the profile (200, Azure's max)")
    parser.add_argument("--engine-seconds", type=float, default=2.0, help="seconds per engine microbenchmark (2)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (config, access log, stderr)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--no-forward", dest="forward", action="store_false",
                        help="skip the forward-proxy rows (plain-HTTP keep-alive through a forward listener)")
    parser.add_argument("--serve-backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-dns", type=int, metavar="PORT", default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_backend:
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            asyncio.run(_serve_backend(args.serve_backend, args.serve_dns))
        return 0
    if not 2 <= args.rules <= 200:
        parser.error("--rules must be between 2 and 200 (Azure allows 200 rule elements per profile)")
    if args.connections < 1 or args.duration <= 0 or args.warmup < 0 or args.rounds < 1:
        parser.error("--connections and --rounds must be >= 1, --duration > 0, --warmup >= 0")
    if args.long:
        args.rss_requests, args.rss_seconds = 1_000_000, 3600.0
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

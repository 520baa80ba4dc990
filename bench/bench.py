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

and then the decision engine alone (``proxy.engine.decide_inbound`` with the same 200 prefixes).

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

REPO = Path(__file__).resolve().parent.parent
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
            b"Connection: keep-alive\r\n\r\nok\n")
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
                     dns_port: int = 0) -> dict[str, Any]:
    """An Enforced association with ``rules`` inbound prefixes in 4 rules; loopback is the last one listed. With
    ``forward_port``, a second Enforced association whose forward-proxy listener may reach ``FORWARD_NAME``."""
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
    """Pool the windows of one target: total requests over total measured time, percentiles over all."""
    latencies = sorted(x for w in windows for x in w.latencies)
    seconds = sum(w.seconds for w in windows)
    cpus = [w.cpu_seconds for w in windows]
    cpu_per_request = (round(sum(cpus) / len(latencies) * 1000, 4)  # type: ignore[arg-type]
                       if latencies and all(c is not None for c in cpus) else None)
    ordered = latencies or [0.0]

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 3)

    return LoadResult(
        target=target, connections=connections, seconds=seconds, requests=len(latencies),
        errors=sum(w.errors for w in windows), rps=round(len(latencies) / seconds, 1), p50_ms=pct(50),
        p90_ms=pct(90), p99_ms=pct(99), max_ms=round(ordered[-1] * 1000, 3),
        mean_ms=round(statistics.fmean(ordered) * 1000, 3), server_cpu_ms_per_request=cpu_per_request,
        notes={"windows_rps": [round(len(w.latencies) / w.seconds, 1) for w in windows]},
    )


# -- the decision engine alone --------------------------------------------------------------------------------


def engine_benchmark(rules: int, seconds: float) -> dict[str, Any]:
    """decide_inbound calls per second with the benchmark's 200-prefix profile, over a mix of callers."""
    sys.path.insert(0, str(REPO))
    from proxy.accesslog import build_record, encode_record
    from proxy.config import parse_config_text
    from proxy.decision import InboundFacts
    from proxy.engine import decide_inbound
    from proxy.policy import compile_policy

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


# -- the run --------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the backend and both proxies once, then measure them in alternating windows (mitmdump, nsp-proxy,
    mitmdump, ...) so that a burst of noise on a shared machine does not land on one side only."""
    results: list[LoadResult] = []
    work = Path(tempfile.mkdtemp(prefix="nsp-bench-"))
    backend_port, mitm_port, nsp_port = free_port(), free_port(), free_port()
    dns_port, mitm_forward, nsp_forward = free_port(), free_port(), free_port()
    config_path, access_log = work / "perimeter.yaml", work / "access.jsonl"
    config_path.write_text(yaml.safe_dump(perimeter_config(nsp_port, backend_port, args.rules, nsp_forward, dns_port),
                                          sort_keys=False))
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if not args.quiet else (lambda *a: None)
    window = args.duration / args.rounds
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(running(
                [sys.executable, str(Path(__file__).resolve()), "--serve-backend", str(backend_port),
                 "--serve-dns", str(dns_port)],
                backend_port, "backend", work / "backend.stderr"))
            if args.direct_duration > 0:
                say(f"[bench] backend direct: {args.direct_duration}s")
                direct = measure(backend_port, args.connections, min(args.warmup, 1.0), args.direct_duration)
                results.append(summarize("backend (direct)", args.connections, [direct]))
            targets = {
                "mitmdump": stack.enter_context(running(
                    [mitmdump_binary(), "-q", "--mode", f"reverse:http://127.0.0.1:{backend_port}@127.0.0.1:{mitm_port}"],
                    mitm_port, "mitmdump", work / "mitmdump.stderr")),
                "nsp-proxy": stack.enter_context(running(
                    [sys.executable, "-m", "proxy.cli", "run", "--config", str(config_path), "--access-log",
                     str(access_log), "--metrics", "off"],
                    nsp_port, "nsp-proxy", work / "nsp-proxy.stderr")),
            }
            if args.forward:
                targets["mitmdump forward"] = stack.enter_context(running(
                    [mitmdump_binary(), "-q", "--mode", f"regular@127.0.0.1:{mitm_forward}"],
                    mitm_forward, "mitmdump forward", work / "mitmdump-forward.stderr"))
                targets["nsp-proxy forward"] = targets["nsp-proxy"]
            ports = {"mitmdump": mitm_port, "nsp-proxy": nsp_port, "mitmdump forward": mitm_forward,
                     "nsp-proxy forward": nsp_forward}
            windows: dict[str, list[Window]] = {name: [] for name in targets}
            for round_no in range(args.rounds):
                warmup = args.warmup if round_no == 0 else min(args.warmup, 0.5)
                for name, process in targets.items():
                    say(f"[bench] round {round_no + 1}/{args.rounds} {name}: {warmup}s warm-up + {window:g}s")
                    windows[name].append(measure(ports[name], args.connections, warmup, window, process.pid,
                                                 backend_port if name.endswith("forward") else 0))
            for name in targets:
                results.append(summarize(name, args.connections, windows[name]))
        next(r for r in results if r.target == "nsp-proxy").notes["access_log_records"] = (
            sum(1 for _ in access_log.open()) if access_log.exists() else 0)

        say(f"[bench] decision engine: {args.engine_seconds}s")
        engine = engine_benchmark(args.rules, args.engine_seconds)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    by_name = {r.target: r for r in results}
    report_ratios = {"ratio_nsp_proxy_over_mitmdump": _ratio(by_name["mitmdump"], by_name["nsp-proxy"])}
    if args.forward:
        report_ratios["ratio_forward_nsp_proxy_over_mitmdump"] = _ratio(by_name["mitmdump forward"],
                                                                         by_name["nsp-proxy forward"])
    return {
        "settings": {"connections": args.connections, "warmup_s": args.warmup, "duration_s": args.duration,
                     "rounds": args.rounds,
                     "rules": args.rules, "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "load": [asdict(r) for r in results],
        **report_ratios,
        "engine": engine,
        "work_dir": str(work) if args.keep else None,
    }


def _ratio(base: LoadResult, ours: LoadResult) -> dict[str, float | None]:
    """nsp-proxy over bare mitmdump for one path: above 1 for latency and CPU, below 1 for throughput, is cost."""
    return {
        "throughput": round(ours.rps / base.rps, 3) if base.rps else None,
        "p50_latency": round(ours.p50_ms / base.p50_ms, 3) if base.p50_ms else None,
        "p99_latency": round(ours.p99_ms / base.p99_ms, 3) if base.p99_ms else None,
        "server_cpu_per_request": (round(ours.server_cpu_ms_per_request / base.server_cpu_ms_per_request, 3)
                                   if ours.server_cpu_ms_per_request and base.server_cpu_ms_per_request else None),
    }


def print_table(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(f"nsp-proxy benchmark: {s['connections']} keep-alive connections, {s['warmup_s']}s warm-up, "
          f"{s['duration_s']}s measured per proxy in {s['rounds']} alternating windows, {s['rules']} inbound "
          f"prefixes, {s['cpus']} CPUs, Python {s['python']}")
    print()
    head = (f"{'target':<18}{'requests':>10}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
            f"{'errors':>8}{'cpu ms/req':>12}")
    print(head)
    print("-" * len(head))
    for r in report["load"]:
        cpu = f"{r['server_cpu_ms_per_request']:.3f}" if r["server_cpu_ms_per_request"] is not None else "-"
        print(f"{r['target']:<18}{r['requests']:>10}{r['rps']:>10.1f}{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}"
              f"{r['p99_ms']:>9.2f}{r['max_ms']:>9.2f}{r['errors']:>8}{cpu:>12}")
    print()
    for key, label in (("ratio_nsp_proxy_over_mitmdump", "nsp-proxy / mitmdump"),
                       ("ratio_forward_nsp_proxy_over_mitmdump", "forward: nsp-proxy / mitmdump")):
        if key in report:
            ratio = report[key]
            print(f"{label}: throughput x{ratio['throughput']}, p50 latency x{ratio['p50_latency']}, "
                  f"p99 latency x{ratio['p99_latency']}, proxy CPU per request x{ratio['server_cpu_per_request']}")
    nsp = next(r for r in report["load"] if r["target"] == "nsp-proxy")
    print(f"nsp-proxy access-log records written: {nsp['notes'].get('access_log_records')} "
          f"(includes warm-up and in-flight requests)")
    e = report["engine"]
    print(f"decision engine ({e['rules']} prefixes, {e['callers']} callers, {e['allowed_callers']} allowed): "
          f"{e['decisions_per_s']:,} decisions/s ({e['us_per_decision']} us each); with the access-log record "
          f"built and JSON-encoded: {e['decision_and_record_per_s']:,}/s ({e['us_per_decision_and_record']} us)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", "-c", type=int, default=8, help="concurrent keep-alive connections (8)")
    parser.add_argument("--duration", "-d", type=float, default=10.0, help="measured seconds per proxy (10)")
    parser.add_argument("--warmup", "-w", type=float, default=2.0, help="warm-up seconds before measuring (2)")
    parser.add_argument("--rounds", "-r", type=int, default=2,
                        help="alternating windows per proxy; --duration is split between them (2)")
    parser.add_argument("--direct-duration", type=float, default=3.0,
                        help="seconds against the backend directly, the generator's ceiling; 0 skips it (3)")
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
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

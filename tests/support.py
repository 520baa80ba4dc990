"""Real parts for end-to-end tests: the nsp-proxy process, Azurite, dnsmasq, and loopback HTTP(S) servers.

Everything listens on 127.0.0.1 with ports the OS hands out, so tests can run in parallel with anything else
on the machine. Each process is stopped by the fixture that started it; a process that fails to come up
raises with its own stderr, so a failing test says why.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = START_TIMEOUT,
                  alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"process died before {host}:{port} opened")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")


def require(binary: str, hint: str) -> str:
    """The path of ``binary``; a clear failure (never a silent skip) when the machine lacks it."""
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"{binary} is not installed ({hint}); .ci/run installs it")
    return path


# -- nsp-proxy ------------------------------------------------------------------------------------------------


@dataclass
class RunningProxy:
    process: subprocess.Popen
    config_path: Path
    access_log: Path
    metrics_port: int
    stderr_path: Path
    stderr_file: Any = None  # our handle on the file the process writes its stderr to

    def records(self, whole: bool = False) -> list[dict[str, Any]]:
        """The records written so far. The writer thread may be in the middle of a batch: a last line without
        its newline is still being written and is left for the next read, unless ``whole`` (the writer is
        done: every line must be a complete record)."""
        if not self.access_log.exists():
            return []
        text = self.access_log.read_text(encoding="utf-8")
        whole = whole or self.process.poll() is not None  # a stopped proxy has written all it will
        if not whole and not text.endswith("\n"):
            text = text[:text.rfind("\n") + 1]
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def settled_records(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The records once every decision made so far has one: records are written by a thread, and an
        allowed request's record when its response has been sent, so a client may see the answer first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.records()
            if len(records) >= self.metric("nsp_decisions_total"):
                return records
            time.sleep(0.02)
        return self.records()

    def wait_for_records(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.records()
            if len(records) >= count:
                return records
            time.sleep(0.02)
        raise TimeoutError(f"expected {count} access-log records, have {len(self.records())}")

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 when absent)."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric_name, _, label_text = head.partition("{")
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def write_config(self, config: dict[str, Any] | str) -> None:
        """Replace the config file atomically (as editors do), so the proxy never reads half a file."""
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.config_path)

    def wait_for_stderr(self, needle: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stderr()
            if needle in text:
                return text
            time.sleep(0.05)
        raise TimeoutError(f"{needle!r} not in proxy stderr:\n{self.stderr()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.stderr_file is not None:
            self.stderr_file.close()
        return self.process.returncode


def start_proxy(config: dict[str, Any] | str, workdir: Path, *, extra_args: list[str] | None = None,
                wait_ports: list[int] | None = None, stdout: Any = subprocess.DEVNULL) -> RunningProxy:
    """Start ``nsp-proxy run`` on ``config``; access log to a file, metrics on a free port."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "perimeter.yaml"
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    config_path.write_text(text, encoding="utf-8")
    access_log = workdir / "access.jsonl"
    metrics_port = free_port()
    stderr_path = workdir / "proxy.stderr"
    stderr = stderr_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "run", "--config", str(config_path), "--access-log", str(access_log),
         "--metrics", f"127.0.0.1:{metrics_port}", *(extra_args or [])],
        cwd=REPO, stdout=subprocess.DEVNULL if stdout == "closed" else stdout, stderr=stderr,
        preexec_fn=(lambda: os.close(1)) if stdout == "closed" else None,  # stdout="closed": started `>&-`
    )
    running = RunningProxy(process, config_path, access_log, metrics_port, stderr_path, stderr)
    ports = [metrics_port, *(wait_ports if wait_ports is not None else listen_ports(text))]
    try:
        for port in ports:
            wait_for_port(port, alive=lambda: process.poll() is None)
    except (RuntimeError, TimeoutError) as exc:
        running.stop()
        raise RuntimeError(f"nsp-proxy did not start: {exc}\n--- stderr ---\n{running.stderr()}") from None
    return running


def listen_ports(config_text: str) -> list[int]:
    """Every port the configuration asks the proxy to listen on."""
    document = yaml.safe_load(config_text) or {}
    ports: list[int] = []

    def port_of(value: Any) -> int:
        return int(str(value).rsplit(":", 1)[-1])

    outbound = (document.get("settings") or {}).get("outbound")
    if outbound:
        ports.append(port_of(outbound))
    for perimeter in document.get("perimeters") or []:
        for assoc in perimeter.get("resourceAssociations") or []:
            local = assoc.get("local") or {}
            for key in ("listen", "outboundListen"):
                if key in local:
                    ports.append(port_of(local[key]))
    return ports


def exactly(proxy: RunningProxy, count: int, settle: float = 0.05) -> list[dict[str, Any]]:
    """The access log once it holds ``count`` records, checked to hold no more than that after ``settle``
    seconds (a stray extra record would be written synchronously with its request: a moment is enough)."""
    if count:
        proxy.wait_for_records(count)
    time.sleep(settle)
    records = proxy.records()
    assert len(records) == count, [(r["OperationName"], r["Category"]) for r in records]
    return records


def wait_until(check: Callable[[], bool], timeout: float = 3.0, interval: float = 0.02) -> float | None:
    """Poll ``check`` until it is true; the seconds it took, or None when ``timeout`` passed first."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None
        time.sleep(interval)


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


# -- Azurite --------------------------------------------------------------------------------------------------

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Azurite:
    process: subprocess.Popen
    port: int
    workdir: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_azurite(workdir: Path, service: str = "blob") -> Azurite:
    """Azurite's ``service`` server (blob, queue or table: each is its own binary of the npm package)."""
    binary = require(f"azurite-{service}", "npm install -g azurite")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / "azurite.log").open("w")
    process = subprocess.Popen(
        [binary, f"--{service}Host", "127.0.0.1", f"--{service}Port", str(port), "--location", str(workdir),
         "--silent", "--skipApiVersionCheck", "--loose"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    wait_for_port(port, alive=lambda: process.poll() is None)
    return Azurite(process, port, workdir)


def blob_connection_string(port: int, service: str = "Blob") -> str:
    """A connection string for Azurite's well-known account, its ``service`` (Blob, Queue, Table) reached at
    127.0.0.1:``port`` (the proxy)."""
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"{service}Endpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")


# -- dnsmasq --------------------------------------------------------------------------------------------------

Records = dict[str, str] | dict[str, list[str]]


@dataclass
class Dnsmasq:
    """A real dnsmasq on 127.0.0.1: answers its records, NXDOMAIN for any other name, and logs every query."""

    process: subprocess.Popen
    port: int
    hosts: Path
    log: Path
    stderr: Any  # the open file dnsmasq writes its stderr to

    def queries(self, name: str, rdtype: str = "A") -> int:
        """How many ``rdtype`` queries for ``name`` dnsmasq has logged."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return sum(f"query[{rdtype}] {name} from " in line for line in text.splitlines())

    def queried(self, name: str) -> bool:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return any(f"] {name} from " in line for line in text.splitlines() if "query[" in line)

    def wait_queried(self, name: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queried(name):
                return
            time.sleep(0.05)
        raise TimeoutError(f"dnsmasq never logged a query for {name}")

    def remap(self, records: Records) -> None:
        """Rewrite the records and SIGHUP dnsmasq; return once it answers with the new addresses."""
        self.hosts.write_text(_hosts_text(records))
        self.process.send_signal(signal.SIGHUP)
        name, addresses = next(iter(_as_lists(records).items()))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if sorted(ask_dns(self.port, name)) == sorted(addresses):
                return
            time.sleep(0.05)
        raise TimeoutError(f"dnsmasq did not pick up the new address of {name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.stderr.close()


def start_dnsmasq(records: Records, workdir: Path, ttl: int = 0, also_listen: tuple[str, ...] = ()) -> Dnsmasq:
    """Start dnsmasq answering ``records`` (name -> address or addresses, IPv4 or IPv6) with TTL ``ttl``
    (dnsmasq's default for its own records is 0: never cached), on 127.0.0.1 and ``also_listen``."""
    binary = require("dnsmasq", "apt-get install dnsmasq-base")
    workdir.mkdir(parents=True, exist_ok=True)
    hosts, log = workdir / "dns.hosts", workdir / "dnsmasq.log"
    hosts.write_text(_hosts_text(records))
    for _attempt in range(3):  # a port free when probed can be taken by the time dnsmasq binds it
        port = _free_dns_port()
        stderr = (workdir / "dnsmasq.stderr").open("w")
        process = subprocess.Popen(
            [binary, "--keep-in-foreground", "--no-daemon", "--port", str(port),
             "--listen-address", ",".join(("127.0.0.1", *also_listen)),
             "--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}", "--user=root",
             f"--pid-file={workdir / 'dnsmasq.pid'}", f"--log-facility={log}", "--log-queries", "--local=/#/",
             f"--local-ttl={ttl}"],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )
        server = Dnsmasq(process, port, hosts, log, stderr)
        if _wait_for_dns(server):
            return server
        server.stop()
        if "Address already in use" not in (workdir / "dnsmasq.stderr").read_text():
            break
    raise RuntimeError(f"dnsmasq did not start: {(workdir / 'dnsmasq.stderr').read_text()}")


def ask_dns(port: int, name: str) -> list[str]:
    """The A records dnsmasq on ``port`` gives for ``name`` (empty on any failure)."""
    import dns.exception
    import dns.message
    import dns.query

    try:
        answer = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.3)
    except (OSError, dns.exception.DNSException):
        return []
    return [r.address for rrset in answer.answer for r in rrset]


def _as_lists(records: Records) -> dict[str, list[str]]:
    return {name: [value] if isinstance(value, str) else list(value) for name, value in records.items()}


def _hosts_text(records: Records) -> str:
    return "".join(f"{address} {name}\n" for name, addresses in _as_lists(records).items() for address in addresses)


def _free_dns_port() -> int:
    """A port free on both UDP and TCP (dnsmasq listens on both)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free on both UDP and TCP")


def _wait_for_dns(server: Dnsmasq) -> bool:
    """Ready when a name it does not know gets NXDOMAIN; False if dnsmasq exits or never answers."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            probe = dns.query.udp(dns.message.make_query("ready.probe.invalid", "A"), "127.0.0.1",
                                  port=server.port, timeout=0.3)
            if probe.rcode() == dns.rcode.NXDOMAIN:
                return True
        except (OSError, dns.exception.DNSException):
            pass
        time.sleep(0.05)
    return False


# -- loopback backends ----------------------------------------------------------------------------------------


class _EchoHandler(BaseHTTPRequestHandler):
    # Headers and body go out in two writes: with Nagle's algorithm the body waits for the peer's delayed ACK
    # (40 ms a response on a kept-alive connection), which made 100 pooled requests take seconds.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        return

    def _answer(self) -> None:
        body = self._body()
        self.server.hits.append((self.command, self.path, self.headers.get("host")))  # type: ignore[attr-defined]
        self.server.peers.append(self.client_address)  # type: ignore[attr-defined]
        self.server.bodies.append((self.path, len(body), hashlib.sha256(body).hexdigest()))  # type: ignore[attr-defined]
        self.server.headers.append({k.lower(): v for k, v in self.headers.items()})  # type: ignore[attr-defined]
        body = json.dumps({"backend": self.server.name, "path": self.path,  # type: ignore[attr-defined]
                           "host": self.headers.get("host")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        """The request body, by Content-Length or chunked (trailers read and ignored)."""
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer


@dataclass
class Backend:
    server: ThreadingHTTPServer
    name: str
    port: int
    host: str

    @property
    def hits(self) -> list[tuple[str, str, str]]:
        return self.server.hits  # type: ignore[attr-defined]

    @property
    def peers(self) -> list[tuple[str, int]]:
        """The client address of the connection each hit came on (one address: the connection was reused)."""
        return self.server.peers  # type: ignore[attr-defined]

    @property
    def headers(self) -> list[dict[str, str]]:
        """The headers of every request received (names lower case), in order."""
        return self.server.headers  # type: ignore[attr-defined]

    @property
    def bodies(self) -> list[tuple[str, int, str]]:
        """(path, body length, sha256 hex) of every request received, in order."""
        return self.server.bodies  # type: ignore[attr-defined]

    def keep_alive(self) -> None:
        """Answer HTTP/1.1 with keep-alive (the handler defaults to HTTP/1.0, close after each response, and
        mitmproxy then closes the client connection too, which would hide what a connection test looks at)."""
        handler = self.server.RequestHandlerClass
        self.server.RequestHandlerClass = type("KeepAliveEcho", (handler,), {"protocol_version": "HTTP/1.1"})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_backend(name: str, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Backend:
    """An HTTP (or HTTPS with ``tls``) server that records each request and echoes its Host header."""
    server = ThreadingHTTPServer((host, 0), _EchoHandler)
    server.daemon_threads = True
    server.hits = []  # type: ignore[attr-defined]
    server.peers = []  # type: ignore[attr-defined]
    server.bodies = []  # type: ignore[attr-defined]
    server.headers = []  # type: ignore[attr-defined]
    server.name = name  # type: ignore[attr-defined]
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Backend(server, name, server.server_address[1], host)

"""The sidecar end to end, in real network namespaces: a proxy-unaware workload cannot get around nsp-proxy.

Topology (every address inside namespaces this test creates):

  workload ns (W, 10.200.77.1)                          backend ns (B, 10.200.77.2 and 10.200.79.1)
    nsp-proxy as root: transparent 127.0.0.1:15001,  ──veth──  HTTP and HTTPS echo backends (0.0.0.0),
      DNS gate 127.0.0.1:15053 (exempt: meta skuid 0)          dnsmasq (the proxy's nameserver), a TCP
    nftables from `nsp-proxy sidecar-setup --apply`             listener on a port that is not redirected,
    the workload: curl and tests/sidecar_client.py as nobody    a UDP listener (443 and another port)

The workload resolves with /etc/resolv.conf naming 10.200.77.2:53, which the rules redirect to the gate.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import netns
from tests.support import REPO, Backend, Dnsmasq, RunningProxy, start_backend, start_dnsmasq, start_proxy, wait_until
from tests.test_outbound_e2e import self_signed

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=f"sidecar e2e: {netns.available()}")

W_ADDR, B_ADDR, STRAY = "10.200.77.1", "10.200.77.2", "10.200.79.1"  # STRAY: an address no DNS answer names
TRANSPARENT, GATE = 15001, 15053
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


@dataclass
class Sidecar:
    w: str
    b: str
    proxy: RunningProxy
    dnsmasq: Dnsmasq
    http: Backend
    https: Backend
    ca_file: Path
    client: Path
    closed_port: int
    udp_port: int
    tcp_seen: list[Any] = field(default_factory=list)
    udp_seen: list[bytes] = field(default_factory=list)

    def run(self, *command: str, timeout: float = 30.0) -> str:
        """``command`` run as nobody in the workload namespace; its stdout."""
        return netns.sh(*NOBODY, *command, ns=self.w, check=False, timeout=timeout).stdout.strip()

    def curl(self, url: str, *extra: str) -> str:
        """The status curl got (``000`` when the connection failed)."""
        return self.run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "15",
                        "--cacert", str(self.ca_file), *extra, url)

    def client_says(self, *args: str) -> str:
        return self.run(netns.WORKLOAD_PYTHON, str(self.client), *args)

    def records(self, host: str, dns: bool = False) -> list[dict[str, Any]]:
        """The records about ``host``: its DNS queries, or the rest (connections and requests)."""
        found = [r for r in self.proxy.records() if r["DestinationFqdn"] == host]
        return [r for r in found if r["Category"].startswith("NspProxyDnsQuery") == dns]


def _config(mode: str, dns_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "nsp-proxy/v1",
        "settings": {"transparent": f"127.0.0.1:{TRANSPARENT}", "dnsGate": f"127.0.0.1:{GATE}",
                     "dns": {"nameservers": [f"{B_ADDR}:{dns_port}"], "timeout": 3}},
        "perimeters": [{
            "name": "nsp-sidecar", "location": "westeurope",
            "profiles": [{"name": "default", "accessRules": [
                {"name": "allowed", "direction": "Outbound", "fullyQualifiedDomainNames": ["allowed.test"]}]}],
            "resourceAssociations": [{
                "name": "app", "profile": "default", "accessMode": mode,
                "privateLinkResource": {"id": "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/"
                                              "rg/providers/Microsoft.Storage/storageAccounts/app"},
                "local": {"outboundSourcePrefixes": ["10.200.77.0/30", "127.0.0.0/8"]},
            }],
        }],
    }


def _listen_tcp(seen: list[Any]) -> tuple[socket.socket, int]:
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.2)

    def accept() -> None:
        while server.fileno() != -1:
            try:
                seen.append(server.accept())
            except OSError:
                continue
    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1]


def _listen_udp(seen: list[bytes], port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.2)

    def receive() -> None:
        while sock.fileno() != -1:
            try:
                seen.append(sock.recv(2048))
            except OSError:
                continue
    threading.Thread(target=receive, daemon=True).start()
    return sock


_ENVS = itertools.count()


@contextmanager
def sidecar_env(tmp: Path, mode: str, extra_args: list[str] | None = None) -> Iterator[Sidecar]:
    tag = f"{os.getpid() % 100000}{mode[0].lower()}{next(_ENVS)}"  # unique: envs may be open side by side
    w, b = f"nspw{tag}", f"nspb{tag}"
    shared = Path(tempfile.mkdtemp(prefix="nsp-sidecar-"))  # readable by nobody: the client and the CA
    shared.chmod(0o755)
    cleanup: list[Any] = []
    try:
        for ns in (w, b):
            netns.create(ns)
        netns.link(w, f"{W_ADDR}/30", b, f"{B_ADDR}/30", f"ve{tag}")
        netns.sh("ip", "addr", "add", f"{STRAY}/32", "dev", "lo", ns=b)
        netns.sh("ip", "route", "add", "10.200.79.0/24", "via", B_ADDR, ns=w)
        netns.resolv_conf(w, B_ADDR)
        cert = self_signed(shared, "allowed.test", "denied.test")
        cert.ca_file.chmod(0o644)
        client = shared / "sidecar_client.py"
        shutil.copy(REPO / "tests" / "sidecar_client.py", client)
        client.chmod(0o644)
        dnsmasq = netns.inside(b, start_dnsmasq, {"allowed.test": B_ADDR, "denied.test": B_ADDR,
                                                   "other.test": B_ADDR}, tmp / "dns", also_listen=(B_ADDR,))
        cleanup.append(dnsmasq.stop)
        http = netns.inside(b, start_backend, "http", host="0.0.0.0")
        https = netns.inside(b, start_backend, "https", host="0.0.0.0", tls=cert.server)
        cleanup += [http.stop, https.stop]
        tcp_seen: list[Any] = []
        udp_seen: list[bytes] = []
        closed, closed_port = netns.inside(b, _listen_tcp, tcp_seen)
        udp_any = netns.inside(b, _listen_udp, udp_seen)
        udp_443 = netns.inside(b, _listen_udp, udp_seen, 443)
        cleanup += [closed.close, udp_any.close, udp_443.close]
        config = _config(mode, dnsmasq.port)
        # Not a connection to the transparent port: without a redirect it names no destination, and is closed
        # with a record (tests/test_sidecar_faults_e2e.py), which the exact record counts here would see.
        proxy = netns.inside(w, start_proxy, config, tmp / "proxy", wait_ports=[], extra_args=extra_args)
        cleanup.append(proxy.stop)
        proxy.wait_for_stderr("DNS gate listening", timeout=20)
        setup = subprocess.run(
            [sys.executable, "-m", "proxy.cli", "sidecar-setup", "--config", str(proxy.config_path),
             "--proxy-uid", "0", "--port", str(http.port), "--port", str(https.port), "--apply", "--netns", w],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        assert setup.returncode == 0, setup.stderr
        yield Sidecar(w, b, proxy, dnsmasq, http, https, cert.ca_file, client, closed_port,
                      udp_any.getsockname()[1], tcp_seen, udp_seen)
    finally:
        for step in reversed(cleanup):
            with suppress(Exception):  # teardown goes on: the namespaces must go
                step()
        for ns in (w, b):
            netns.delete(ns)
        shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture(scope="module")
def enforced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    with sidecar_env(tmp_path_factory.mktemp("sidecar-enforced"), "Enforced") as env:
        yield env


# -- reaching the allowed name through the transparent path -------------------------------------------------


def test_allowed_http_by_name(enforced: Sidecar) -> None:
    assert enforced.curl(f"http://allowed.test:{enforced.http.port}/plain") == "200"
    assert ("GET", "/plain", f"allowed.test:{enforced.http.port}") in enforced.http.hits
    wait_until(lambda: len(enforced.records("allowed.test")) >= 1, timeout=10)
    [record] = [r for r in enforced.records("allowed.test") if "/plain" in r["OperationName"]]
    assert record["Category"] == "NspPublicOutboundPerimeterRulesAllowed"
    assert record["SourceIpAddress"] == W_ADDR
    queries = enforced.records("allowed.test", dns=True)
    assert queries and all(q["Category"] == "NspProxyDnsQueryAllowed" for q in queries)


def test_allowed_https_by_sni_passes_through(enforced: Sidecar) -> None:
    assert enforced.curl(f"https://allowed.test:{enforced.https.port}/tls") == "200"
    assert any(path == "/tls" for _, path, _ in enforced.https.hits)
    wait_until(lambda: any(r["OperationName"].startswith("TLS ") for r in enforced.records("allowed.test")), 10)
    [record] = [r for r in enforced.records("allowed.test") if r["OperationName"].startswith("TLS ")]
    assert record["ResultAction"] == "Approved" and record["DestinationPort"] == str(enforced.https.port)


# -- everything else: denied with one record each, or never leaving the namespace ---------------------------


@pytest.mark.parametrize("how", [
    pytest.param("http-name", id="http-denied-name"),
    pytest.param("tls-name", id="tls-denied-sni"),
    pytest.param("http-ip", id="http-ip-literal"),
    pytest.param("tls-ip", id="tls-no-sni-ip-literal"),
    pytest.param("raw-ip", id="raw-tcp-ip-literal"),
])
def test_denied_with_one_record(enforced: Sidecar, how: str) -> None:
    http, https = enforced.http.port, enforced.https.port
    before = (len(enforced.http.hits), len(enforced.https.hits))
    if how == "http-name":
        host, said = "denied.test", enforced.curl(f"http://denied.test:{http}/", "--resolve",
                                                  f"denied.test:{http}:{B_ADDR}")
        assert said == "403"
    elif how == "tls-name":
        host, said = "denied.test", enforced.curl(f"https://denied.test:{https}/", "--resolve",
                                                  f"denied.test:{https}:{B_ADDR}")
        assert said == "000"
    elif how == "http-ip":
        host, said = STRAY, enforced.curl(f"http://{STRAY}:{http}/")
        assert said == "403"
    elif how == "tls-ip":
        host, said = STRAY, enforced.curl(f"https://{STRAY}:{https}/", "-k")
        assert said == "000"
    else:
        host, said = STRAY, enforced.client_says("raw", STRAY, str(http))
        assert not said.startswith("data")
    assert wait_until(lambda: len(enforced.records(host)) >= 1, timeout=10) is not None
    records = enforced.records(host)
    assert len(records) == 1, records
    assert records[0]["ResultAction"] == "Denied"
    assert records[0]["Category"] == "NspPublicOutboundPerimeterRulesDenied"
    assert (len(enforced.http.hits), len(enforced.https.hits)) == before
    _forget(enforced, host)


def _forget(env: Sidecar, host: str) -> None:
    """Move the records seen so far out of the way so that the next case counts its own."""
    log = env.proxy.access_log
    kept = [line for line in log.read_text().splitlines() if json.loads(line)["DestinationFqdn"] != host]
    log.write_text("".join(f"{line}\n" for line in kept))


@pytest.mark.parametrize("server, transport", [
    pytest.param(B_ADDR, "udp", id="udp"),
    pytest.param(B_ADDR, "tcp", id="tcp"),
    pytest.param("127.0.0.1", "udp", id="a-resolver-on-loopback"),  # as Docker's 127.0.0.11
])
def test_dns_gate_nxdomain_without_upstream_query(enforced: Sidecar, server: str, transport: str) -> None:
    said = enforced.client_says("dns", "denied.test", server, "53", transport)
    assert said.startswith("rcode=3"), said
    wait_until(lambda: len(enforced.records("denied.test", dns=True)) >= 1, timeout=10)
    records = enforced.records("denied.test", dns=True)
    assert len(records) == 1 and records[0]["Category"] == "NspProxyDnsQueryDenied"
    assert records[0]["ResultAction"] == "Denied" and records[0]["DestinationPort"] == "53"
    assert records[0]["DestinationProtocol"] == f"DNS:{transport.upper()}"
    assert enforced.dnsmasq.queries("denied.test") == 0
    _forget(enforced, "denied.test")


def test_dns_gate_answers_allowed_names(enforced: Sidecar) -> None:
    said = enforced.client_says("dns", "allowed.test", B_ADDR, "53")
    assert said == f"rcode=0 answers={B_ADDR}"


@pytest.mark.parametrize("args", [
    pytest.param(("dns", "other.test", B_ADDR, "{dns}"), id="dns-server-of-its-own"),
    pytest.param(("dns", "other.test", B_ADDR, "{dns}", "tcp"), id="dns-server-of-its-own-tcp"),
    pytest.param(("raw", B_ADDR, "{closed}"), id="tcp-port-not-redirected"),
    pytest.param(("udp", B_ADDR, "443"), id="quic-udp-443"),
    pytest.param(("udp", B_ADDR, "{udp}"), id="udp-other-port"),
])
def test_no_way_around(enforced: Sidecar, args: tuple[str, ...]) -> None:
    ports = {"dns": str(enforced.dnsmasq.port), "closed": str(enforced.closed_port), "udp": str(enforced.udp_port)}
    said = enforced.client_says(*(a.format(**ports) for a in args))
    assert "rcode" not in said and not said.startswith("data"), said
    wait_until(lambda: bool(enforced.udp_seen or enforced.tcp_seen), timeout=1.0)
    assert enforced.udp_seen == [] and enforced.tcp_seen == []
    assert enforced.dnsmasq.queries("other.test") == 0


def test_transition_answers_and_logs_would_deny(tmp_path: Path) -> None:
    with sidecar_env(tmp_path, "Transition") as env:
        said = env.client_says("dns", "denied.test", B_ADDR, "53")
        assert said == f"rcode=0 answers={B_ADDR}"
        assert env.curl(f"http://denied.test:{env.http.port}/t") == "200"
        wait_until(lambda: len(env.records("denied.test")) >= 1, timeout=10)
        [record] = env.records("denied.test")
        assert record["ResultAction"] == "Approved" and record["Category"] == "NspPublicOutboundResourceRulesAllowed"
        queries = env.records("denied.test", dns=True)
        assert queries and all(q["Category"] == "NspProxyDnsQueryAllowed" for q in queries)


@pytest.mark.parametrize(("mode", "after"), [pytest.param("Enforced", "000", id="Enforced"),
                                             pytest.param("Transition", "200", id="Transition")])
def test_a_tls_connection_the_log_cannot_record_is_refused_in_enforced(tmp_path: Path, mode: str,
                                                                       after: str) -> None:
    """The access log fails (/dev/full): the first connection's record is the first to fail; from then on an
    Enforced transparent TLS connection is closed before any byte reaches the backend, and counted."""
    with sidecar_env(tmp_path, mode, ["--access-log", "/dev/full"]) as env:
        url = f"https://allowed.test:{env.https.port}/tls"
        pinned = f"allowed.test:{env.https.port}:{B_ADDR}"  # the DNS gate refuses too in Enforced: not asked

        def metric(name: str) -> float:
            return netns.inside(env.w, env.proxy.metric, name)

        assert env.curl(url, "--resolve", pinned) == "200"
        assert wait_until(lambda: metric("nsp_access_log_errors_total") >= 1, timeout=10) is not None
        hits = len(env.https.hits)
        assert env.curl(url, "--resolve", pinned) == after
        assert len(env.https.hits) == (hits if after == "000" else hits + 1)
        assert metric("nsp_access_log_refused_requests_total") == (1 if after == "000" else 0)
        assert "Traceback" not in env.proxy.stderr()


def test_healthz_reports_the_sidecar_listeners(enforced: Sidecar) -> None:
    from tests.test_sidecar import _healthz

    status, report = netns.inside(enforced.w, _healthz, enforced.proxy)
    assert status == 200 and report["dnsGate"] == "listening"
    assert report["listeners"] == [{"listener": f"transparent@127.0.0.1:{TRANSPARENT}", "open": True}]

"""Addresses and names through the real proxy: every spelling of a blocked or own address, DNS answers that
point at them, IDN forms, and the DNS cache. Raw sockets send exactly the spelling under test (curl would
normalise some of them itself); one nsp-proxy and one dnsmasq serve each table, and every probe must leave
exactly one access-log record."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.names import addresses
from tests.support import (
    Backend,
    Dnsmasq,
    RunningProxy,
    exactly,
    free_port,
    require,
    start_backend,
    start_dnsmasq,
    start_proxy,
)

pytestmark = pytest.mark.e2e

DENIED = "NspPublicOutboundPerimeterRulesDenied"
ALLOWED = "NspPublicOutboundPerimeterRulesAllowed"
RESOURCE_ALLOWED = "NspPublicOutboundResourceRulesAllowed"
MODES = ("Enforced", "Learning", "Audit")
BLOCKED = ["127.0.0.4/32", "::1/128"]  # ::1 blocked too: 0.0.0.0 and :: count as loopback
DNS_RECORDS = {
    "plain.allowed.test": "127.0.0.4",
    "mapped.allowed.test": "::ffff:127.0.0.4",
    "compat.allowed.test": "::127.0.0.4",
    "nat64.allowed.test": "64:ff9b::7f00:4",
    "nat64-local.allowed.test": "64:ff9b:1:7f00:0:400::",
    "sixtofour.allowed.test": "2002:7f00:4::1",
    "teredo.allowed.test": "2001:0:4136:e378:8000:63bf:80ff:fffb",
    "zero.allowed.test": "0.0.0.0",
    "zero6.allowed.test": "::",
    "self.allowed.test": "127.0.0.1",
    "self-mapped.allowed.test": "::ffff:127.0.0.1",
    "self-nat64.allowed.test": "64:ff9b::7f00:1",
    "ok.allowed.test": "127.0.0.2",
    "xn--bcher-kva.allowed.test": "127.0.0.2",
    "xn--caf-dma.allowed.test": "127.0.0.2",
    "a.b.allowed.test": "127.0.0.2",
}


# -- one proxy with a forward listener per mode ---------------------------------------------------------------


@dataclass
class Setup:
    proxy: RunningProxy
    dns: Dnsmasq
    backend: Backend
    ports: dict[str, int]  # mode -> forward listener


def _setup(workdir: Path, rules: list[str]) -> Setup:
    dns_server = start_dnsmasq(DNS_RECORDS, workdir / "dns")
    backend = start_backend("ok", host="127.0.0.2")
    ports = {mode: free_port() for mode in MODES}
    associations = [{"name": f"app-{mode.lower()}", "privateLinkResource": {
        "id": f"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
              f"Microsoft.Storage/storageAccounts/app{mode.lower()}"},
        "profile": "prof", "accessMode": mode, "local": {"outboundListen": f"127.0.0.1:{port}"}}
        for mode, port in ports.items()]
    document = {"settings": {"dns": {"nameservers": [f"127.0.0.1:{dns_server.port}"], "timeout": 2},
                             "blockedDestinationPrefixes": BLOCKED},
                "perimeters": [{"name": "p1", "profiles": [{"name": "prof", "accessRules": [
                    {"name": "allow", "direction": "Outbound", "fullyQualifiedDomainNames": rules}]}],
                    "resourceAssociations": associations}]}
    proxy = start_proxy(document, workdir / "proxy")
    return Setup(proxy, dns_server, backend, ports)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    running = _setup(tmp_path_factory.mktemp("names"), ["*.allowed.test", "bücher.allowed.test",
                                                        "XN--CAF-DMA.allowed.test"])
    yield running
    running.proxy.stop()
    running.dns.stop()
    running.backend.stop()


# -- raw clients ----------------------------------------------------------------------------------------------


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def send(fwd: int, head: str) -> str:
    """Send one request head on a fresh connection; the status line of the answer ('' if closed)."""
    with socket.create_connection(("127.0.0.1", fwd), timeout=10) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


def probe(fwd: int, kind: str, host: str, port: int) -> int:
    """``GET http://host:port/`` (absolute URI) or ``CONNECT host:port``, exactly as spelt; the status."""
    authority = _authority(host, port)
    if kind == "connect":
        line = send(fwd, f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n")
    else:
        line = send(fwd, f"GET http://{authority}/probe HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
    parts = line.split(" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def one_record(proxy: RunningProxy, before: int) -> dict[str, Any]:
    """The single record the last probe wrote (exactly one, none after it)."""
    return exactly(proxy, before + 1, settle=0.2)[-1]


# -- blocked prefixes in every spelling -----------------------------------------------------------------------

BLOCKED_LITERALS = [
    "0x7f.0.0.4", "2130706436", "127.4", "0177.0.0.04", "127.0.0.4.", "::ffff:127.0.0.4", "::ffff:7f00:4",
    "::127.0.0.4", "64:ff9b::7f00:4", "64:ff9b:1:7f00:0:400::", "2002:7f00:4::1", "2001:0:7f00:4::1",
    "2001:0:4136:e378:8000:63bf:80ff:fffb", "0.0.0.0", "0", "::", "::ffff:0.0.0.0",
]


@pytest.mark.parametrize("kind", ["http", "connect"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("host", BLOCKED_LITERALS)
def test_blocked_prefix_in_any_spelling_is_refused_in_every_mode(setup: Setup, host: str, mode: str,
                                                                  kind: str) -> None:
    before = len(setup.proxy.settled_records())
    assert probe(setup.ports[mode], kind, host, setup.backend.port) == 403
    record = one_record(setup.proxy, before)
    assert (record["Category"], record["ResultAction"]) == (DENIED, "Denied"), record
    assert record["DestinationFqdn"] == addresses.canonical(host)
    if mode == "Enforced":
        assert "IP-literal destination" in record["ResultDescription"], record
    else:  # the rules let an IP literal through here: the guard refuses it
        assert "blockedDestinationPrefixes" in record["ResultDescription"], record
        assert "refused in every mode" in record["ResultDescription"]
    assert setup.backend.hits == []


@pytest.mark.parametrize("kind", ["http", "connect"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", [
    "plain.allowed.test", "mapped.allowed.test", "compat.allowed.test", "nat64.allowed.test",
    "nat64-local.allowed.test", "sixtofour.allowed.test", "teredo.allowed.test", "zero.allowed.test",
    "zero6.allowed.test",
])
def test_dns_answer_in_a_blocked_prefix_is_refused_in_every_mode(setup: Setup, name: str, mode: str,
                                                                  kind: str) -> None:
    """An allowed name whose A or AAAA answer is (or carries, or is 0.0.0.0/:: for) a blocked address."""
    before = len(setup.proxy.settled_records())
    assert probe(setup.ports[mode], kind, name, setup.backend.port) == 403
    record = one_record(setup.proxy, before)
    assert (record["Category"], record["ResultAction"], record["DestinationFqdn"]) == (DENIED, "Denied", name)
    assert "blockedDestinationPrefixes" in record["ResultDescription"], record
    described = record["ResultDescription"].split(" resolves to ", 1)[1].split(", which", 1)[0]
    assert addresses.canonical(described) == addresses.canonical(DNS_RECORDS[name])
    assert setup.backend.hits == []


def test_control_an_allowed_name_elsewhere_goes_through(setup: Setup) -> None:
    before = len(setup.proxy.settled_records())
    assert probe(setup.ports["Enforced"], "http", "ok.allowed.test", setup.backend.port) == 200
    record = one_record(setup.proxy, before)
    assert (record["Category"], json.loads(record["DestinationParameters"])["resolvedAddress"]) == (
        ALLOWED, "127.0.0.2")


# -- the proxy's own listeners in every spelling --------------------------------------------------------------

SELF_LITERALS = ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "::ffff:127.0.0.1", "64:ff9b::7f00:1",
                 "2002:7f00:1::"]
SELF_NAMES = ["self.allowed.test", "self-mapped.allowed.test", "self-nat64.allowed.test"]


@pytest.mark.parametrize("kind", ["http", "connect"])
@pytest.mark.parametrize("mode", ["Enforced", "Learning"])
@pytest.mark.parametrize("target", ["Enforced", "Learning", "metrics"])
@pytest.mark.parametrize("host", SELF_LITERALS + SELF_NAMES)
def test_own_forward_listener_or_metrics_port_is_refused(setup: Setup, host: str, target: str, mode: str,
                                                         kind: str) -> None:
    """No resource may reach a forward listener of this proxy (an Enforced one borrowing a Transition one) or
    its metrics port, by any spelling of its address or by a name resolving to one."""
    port = setup.proxy.metrics_port if target == "metrics" else setup.ports[target]
    before = len(setup.proxy.settled_records())
    assert probe(setup.ports[mode], kind, host, port) == 403
    record = one_record(setup.proxy, before)
    assert (record["Category"], record["ResultAction"]) == (DENIED, "Denied"), record
    if mode == "Enforced" and host in SELF_LITERALS:
        assert "IP-literal destination" in record["ResultDescription"], record
    else:
        assert "this proxy's own listener" in record["ResultDescription"], record
    assert setup.proxy.process.poll() is None


# -- IDN forms -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["http", "connect"])
@pytest.mark.parametrize(("sent", "logged"), [
    pytest.param("xn--bcher-kva.allowed.test", "xn--bcher-kva.allowed.test", id="a-label-for-u-label-rule"),
    pytest.param("XN--CAF-DMA.allowed.test", "xn--caf-dma.allowed.test", id="uppercase-a-label"),
])
def test_idn_is_decided_logged_and_resolved_as_its_a_label(setup: Setup, sent: str, logged: str,
                                                           kind: str) -> None:
    before = len(setup.proxy.settled_records())
    probe(setup.ports["Enforced"], kind, sent, setup.backend.port)
    record = one_record(setup.proxy, before)
    assert (record["Category"], record["DestinationFqdn"]) == (ALLOWED, logged), record
    assert json.loads(record["DestinationParameters"])["resolvedAddress"] == "127.0.0.2"
    setup.dns.wait_queried(logged)


@pytest.mark.parametrize("mode", ["Enforced", "Learning"])
@pytest.mark.parametrize(("url_host", "logged"), [
    pytest.param("café.allowed.test", "xn--caf-dma.allowed.test", id="u-label-for-a-label-rule"),
    pytest.param("BÜCHER\uff0eallowed\u3002test", "xn--bcher-kva.allowed.test", id="fullwidth-dots-uppercase"),
])
def test_curl_with_an_idn_url_is_decided_on_the_a_label(setup: Setup, url_host: str, logged: str,
                                                        mode: str) -> None:
    """curl (libidn2, UTS-46) sends the A-label of what the user typed; the rule matches it in any mode."""
    before = len(setup.proxy.settled_records())
    environment = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    subprocess.run([require("curl", "apt-get install curl"), "-s", "-o", "/dev/null", "--max-time", "10",
                    "-x", f"http://127.0.0.1:{setup.ports[mode]}", f"http://{url_host}:{setup.backend.port}/curl"],
                   capture_output=True, timeout=20, env=environment)
    record = one_record(setup.proxy, before)
    assert (record["Category"], record["ResultAction"], record["DestinationFqdn"]) == (ALLOWED, "Approved", logged)
    assert json.loads(record["MatchedRule"])["accessRule"] == "allow"


@pytest.mark.parametrize("sent", [
    pytest.param("xn--bcher-kva.allowed.test", id="a-label"),
    pytest.param("ok.allowed.test.", id="trailing dot"),
    pytest.param("XN--CAF-DMA.allowed.test", id="upper-case a-label"),
    pytest.param("OK.Allowed.TEST", id="mixed case"),
])
def test_canonicalised_destination_reaches_the_backend(setup: Setup, sent: str) -> None:
    hits = len(setup.backend.hits)
    assert probe(setup.ports["Enforced"], "http", sent, setup.backend.port) == 200
    assert len(setup.backend.hits) == hits + 1


def test_ip_literal_in_another_spelling_reaches_the_backend_in_transition(setup: Setup) -> None:
    before, hits = len(setup.proxy.settled_records()), len(setup.backend.hits)
    assert probe(setup.ports["Learning"], "http", "2130706434", setup.backend.port) == 200  # 127.0.0.2
    assert one_record(setup.proxy, before)["DestinationFqdn"] == "127.0.0.2"
    assert len(setup.backend.hits) == hits + 1


def test_tunnel_to_ip_literal_in_another_spelling_has_one_record(setup: Setup) -> None:
    before = len(setup.proxy.settled_records())
    authority = f"2130706434:{setup.backend.port}"
    with socket.create_connection(("127.0.0.1", setup.ports["Learning"]), timeout=10) as sock:
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        assert b" 200 " in sock.recv(4096)
        sock.sendall(f"GET /inside HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.")
    exactly(setup.proxy, before + 1, settle=0.3)


@pytest.mark.parametrize("kind", ["http", "connect"])
@pytest.mark.parametrize("mode", ["Enforced", "Learning"])
@pytest.mark.parametrize("sent", [
    pytest.param("xn--n3h.allowed.test", id="idna2003-only-symbol"),
    pytest.param("xn--ls8h.allowed.test", id="emoji"),
])
def test_name_idna2008_rejects_is_denied_or_logged_with_one_record(setup: Setup, sent: str, mode: str,
                                                                   kind: str) -> None:
    """mitmproxy accepts these (IDNA2003); IDNA2008 does not. Enforced: 403. Transition: the would-deny
    record, then no address (the name is never looked up): 502, never a 500, and still one record."""
    before = len(setup.proxy.settled_records())
    status = probe(setup.ports[mode], kind, sent, setup.backend.port)
    record = one_record(setup.proxy, before)
    assert record["DestinationFqdn"] == sent
    assert "invalid destination" in record["ResultDescription"], record
    if mode == "Enforced":
        assert (status, record["Category"], record["ResultAction"]) == (403, DENIED, "Denied")
    else:
        assert (status, record["Category"]) == (502, RESOURCE_ALLOWED), record
        assert "not a valid host name" in json.loads(record["DestinationParameters"])["resolutionError"]
    assert not setup.dns.queried(sent)


@pytest.mark.parametrize("sent", [
    pytest.param("xn--zz.allowed.test", id="invalid-punycode"),
    pytest.param("xn--ab-yu3n.allowed.test", id="fullwidth-dot-inside-punycode"),
])
def test_names_mitmproxy_cannot_decode_never_reach_dns_or_backend(setup: Setup, sent: str) -> None:
    """mitmproxy refuses these in the request line (400) before any hook; the record for such a refusal is
    written by the wire-hygiene addon (addons/wire.py, NspProxyRequestRefused), not by the outbound gate.
    ``a.b.allowed.test`` (what the fullwidth dot would map to) is never looked up."""
    before = len(setup.proxy.settled_records())
    for mode in ("Enforced", "Learning"):
        assert probe(setup.ports[mode], "http", sent, setup.backend.port) == 400
    time.sleep(0.2)
    assert all(r["ResultAction"] == "Denied" for r in setup.proxy.records()[before:])
    assert not setup.dns.queried(sent) and not setup.dns.queried("a.b.allowed.test")


# -- one lookup per TTL ---------------------------------------------------------------------------------------


def test_a_name_is_resolved_once_per_ttl(nsp_proxy, dnsmasq, backend) -> None:
    """Many requests for one name within its TTL: dnsmasq sees one A query; every request is still decided,
    recorded and dialled to the cached (checked) address."""
    dns_server = dnsmasq({"cached.allowed.test": "127.0.0.1", "short.allowed.test": "127.0.0.1"}, ttl=60)
    fwd = free_port()
    proxy = nsp_proxy({"settings": {"dns": {"nameservers": [f"127.0.0.1:{dns_server.port}"], "timeout": 2}},
                       "perimeters": [{"name": "p1", "profiles": [{"name": "prof", "accessRules": [
                           {"name": "allow", "direction": "Outbound",
                            "fullyQualifiedDomainNames": ["*.allowed.test"]}]}],
                           "resourceAssociations": [{"name": "app", "privateLinkResource": {
                               "id": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/"
                                     "providers/Microsoft.Storage/storageAccounts/app"},
                               "profile": "prof", "accessMode": "Enforced",
                               "local": {"outboundListen": f"127.0.0.1:{fwd}"}}]}]})
    for i in range(12):
        name = "CACHED.allowed.test" if i % 3 == 0 else "cached.allowed.test"
        assert probe(fwd, "connect" if i % 2 else "http", name, backend.port) == 200
    records = exactly(proxy, 12)
    assert {json.loads(r["DestinationParameters"])["resolvedAddress"] for r in records} == {"127.0.0.1"}
    assert {r["DestinationFqdn"] for r in records} == {"cached.allowed.test"}
    assert dns_server.queries("cached.allowed.test") == 1
    assert len(backend.hits) == 6

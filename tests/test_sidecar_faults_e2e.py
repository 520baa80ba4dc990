"""The sidecar's listeners under faults, on loopback (no namespaces needed: queries and probes go straight to
the listeners): a DNS query whose record the access log cannot take is refused in Enforced and never looked
up; reloads never leave the DNS gate on a stale policy or address; a connection made straight to the
transparent listener (not redirected), even while the proxy starts, is closed with one record and never ends
the proxy."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support import Dnsmasq, RunningProxy, free_port, wait_until

RESOURCE = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg/providers/" \
           "Microsoft.Storage/storageAccounts/app"


def gate_config(mode: str, gate: int, nameserver: int, names: tuple[str, ...] = ("allowed.test",),
                transparent: int | None = None, **settings: Any) -> dict[str, Any]:
    return {
        "apiVersion": "nsp-proxy/v1",
        "settings": {"transparent": f"127.0.0.1:{transparent or free_port()}", "dnsGate": f"127.0.0.1:{gate}",
                     "dns": {"nameservers": [f"127.0.0.1:{nameserver}"], "timeout": 3}, **settings},
        "perimeters": [{
            "name": "p", "location": "westeurope",
            "profiles": [{"name": "default", "accessRules": [
                {"name": "allowed", "direction": "Outbound", "fullyQualifiedDomainNames": list(names)}]}],
            "resourceAssociations": [{
                "name": "app", "profile": "default", "accessMode": mode, "privateLinkResource": {"id": RESOURCE},
                "local": {"outboundSourcePrefixes": ["127.0.0.0/8"]}}],
        }],
    }


def ask(port: int, name: str, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, "A")
    return (dns.query.tcp if tcp else dns.query.udp)(query, "127.0.0.1", port=port, timeout=10)


def start_gate(nsp_proxy: Callable[..., RunningProxy], config: dict[str, Any], **kwargs: Any) -> RunningProxy:
    proxy = nsp_proxy(config, wait_ports=[], **kwargs)
    proxy.wait_for_stderr("DNS gate listening", timeout=20)
    return proxy


@pytest.fixture
def names(dnsmasq: Callable[..., Dnsmasq]) -> Dnsmasq:
    return dnsmasq({"allowed.test": "127.0.0.2", "later.test": "127.0.0.3"})


@pytest.mark.parametrize(("mode", "after"), [pytest.param("Enforced", "REFUSED", id="Enforced"),
                                             pytest.param("Transition", "NOERROR", id="Transition")])
@pytest.mark.parametrize("tcp", [pytest.param(False, id="udp"), pytest.param(True, id="tcp")])
def test_a_query_the_log_cannot_take_is_refused_in_enforced(nsp_proxy, names: Dnsmasq, mode: str, after: str,
                                                            tcp: bool) -> None:
    gate = free_port()
    proxy = start_gate(nsp_proxy, gate_config(mode, gate, names.port), extra_args=["--access-log", "/dev/full"])
    assert dns.rcode.to_text(ask(gate, "allowed.test", tcp).rcode()) == "NOERROR"  # its record is the first to fail
    assert wait_until(lambda: proxy.metric("nsp_access_log_errors_total", reason="write") == 1, timeout=10)
    looked_up = names.queries("allowed.test")
    answers = [ask(gate, "allowed.test", tcp) for _ in range(3)]
    assert [dns.rcode.to_text(a.rcode()) for a in answers] == [after] * 3
    if after == "REFUSED":
        assert all(not a.answer for a in answers)
        assert names.queries("allowed.test") == looked_up  # never looked up: the name does not leave
        assert proxy.metric("nsp_access_log_refused_requests_total") == 3
    else:
        assert proxy.metric("nsp_access_log_refused_requests_total") == 0
    assert wait_until(lambda: proxy.metric("nsp_access_log_errors_total", reason="write") == 4, timeout=10)
    assert proxy.metric("nsp_decisions_total") == 4
    assert "Traceback" not in proxy.stderr()


def probe(port: int) -> bool:
    """Connect straight to ``port`` and send a request: True when the proxy closed it (it never answers)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
            return sock.recv(4096) == b""
    except ConnectionError:
        return True  # closed with the request unread: a reset
    except OSError:
        return False


@pytest.mark.parametrize("mode", ["Enforced", "Transition"])
def test_direct_connections_to_the_transparent_listener_are_closed_and_recorded(nsp_proxy, names: Dnsmasq,
                                                                                mode: str) -> None:
    """Probed from the first moment it listens (mitmproxy ends on an error logged while it starts), and after:
    each direct connection is closed, with one NspProxyRequestRefused record, in every mode."""
    transparent, stop = free_port(), threading.Event()
    probes: list[bool] = []

    def keep_probing() -> None:
        while not stop.is_set():
            try:
                socket.create_connection(("127.0.0.1", transparent), timeout=1).close()
            except OSError:
                time.sleep(0.01)  # not listening yet
                continue
            probes.append(True)
            time.sleep(0.01)

    prober = threading.Thread(target=keep_probing, daemon=True)
    prober.start()
    try:
        proxy = start_gate(nsp_proxy, gate_config(mode, free_port(), names.port, transparent=transparent))
        assert wait_until(lambda: len(probes) >= 5, timeout=10) is not None
    finally:
        stop.set()
        prober.join(5)
    assert proxy.process.poll() is None, proxy.stderr()
    assert all(probe(transparent) for _ in range(3))
    assert proxy.process.poll() is None
    records = proxy.settled_records()
    assert len(records) == len(probes) + 3 and len(records) == proxy.metric("nsp_decisions_total")
    assert {(r["Category"], r["ResultAction"], r["DestinationPort"]) for r in records} == {
        ("NspProxyRequestRefused", "Denied", str(transparent))}
    assert "not redirected" in records[0]["ResultDescription"]
    stderr = proxy.stderr()
    assert "Transparent mode failure" not in stderr and "Traceback" not in stderr


@pytest.mark.parametrize(("mode", "before"), [pytest.param("Enforced", "NXDOMAIN", id="Enforced"),
                                              pytest.param("Transition", "NOERROR", id="Transition")])
def test_the_dns_gate_decides_with_the_generation_in_force(nsp_proxy, names: Dnsmasq, mode: str,
                                                            before: str) -> None:
    gate, transparent = free_port(), free_port()
    proxy = start_gate(nsp_proxy, gate_config(mode, gate, names.port, transparent=transparent))
    assert dns.rcode.to_text(ask(gate, "later.test").rcode()) == before
    proxy.write_config(gate_config(mode, gate, names.port, ("allowed.test", "later.test"), transparent=transparent,
                                   dnsGateMemory=16))
    assert wait_until(lambda: proxy.metric("nsp_config_generation") == 2, timeout=10)
    answer = ask(gate, "later.test", tcp=True)
    assert dns.rcode.to_text(answer.rcode()) == "NOERROR" and "127.0.0.3" in answer.to_text()
    records = proxy.settled_records()
    assert [(r["Category"], r["AccessRuleVersion"]) for r in records] == [
        ("NspProxyDnsQueryDenied" if mode == "Enforced" else "NspProxyDnsQueryAllowed", "1"),
        ("NspProxyDnsQueryAllowed", "2")]
    assert '"wouldDeny":true' in records[0]["Parameters"] and '"wouldDeny":false' in records[1]["Parameters"]


@pytest.mark.parametrize("change", [pytest.param("moved", id="moved"), pytest.param("removed", id="removed")])
def test_a_reload_that_moves_the_dns_gate_is_refused_and_the_gate_keeps_its_generation(
        nsp_proxy, names: Dnsmasq, change: str) -> None:
    """The gate's sockets are opened at start: a reload changing settings.dnsGate is refused as a whole (it
    would leave the running gate on an address the file no longer names), with the reason on stderr."""
    gate, transparent = free_port(), free_port()
    proxy = start_gate(nsp_proxy, gate_config("Enforced", gate, names.port, transparent=transparent))
    changed = gate_config("Enforced", free_port(), names.port, ("allowed.test", "later.test"),
                          transparent=transparent)
    if change == "removed":
        del changed["settings"]["dnsGate"]
    proxy.write_config(changed)
    proxy.wait_for_stderr("restart nsp-proxy to change settings.dnsGate", timeout=10)
    assert proxy.metric("nsp_config_reloads_total", result="failure") == 1
    assert proxy.metric("nsp_config_generation") == 1
    assert dns.rcode.to_text(ask(gate, "later.test").rcode()) == "NXDOMAIN"  # the rules in force: generation 1
    assert proxy.settled_records()[-1]["AccessRuleVersion"] == "1"
    assert "Traceback" not in proxy.stderr()

"""The sidecar's pure parts (settings, listener modes, nftables rules, the DNS answer memory) and the
Kubernetes ConfigMap reload on the real file layout (a symlink swap of ``..data``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.errors import ConfigError
from proxy.config.loader import parse_config_text
from proxy.listeners import mitmproxy_modes
from proxy.names.dnsmemory import AnswerMemory
from proxy.policy.compiled import compile_policy
from proxy.sidecar import SidecarPlan, plan_from_config, ruleset
from tests.support import RunningProxy, free_port, wait_until

RESOURCE = ("/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg/providers/Microsoft.Storage/"
            "storageAccounts/app")
PERIMETER = f"""
perimeters:
  - name: p
    profiles:
      - {{name: default, accessRules: [{{name: out, direction: Outbound, fullyQualifiedDomainNames: [a.test]}}]}}
    resourceAssociations:
      - name: app
        privateLinkResource: {{id: {RESOURCE}}}
        profile: default
        accessMode: Enforced
        local: {{outboundSourcePrefixes: [10.0.0.0/8]}}
"""


def _config(settings: str) -> Any:
    return parse_config_text(f"settings: {settings}\n{PERIMETER}", source="t.yaml")


def test_transparent_and_dns_gate_settings() -> None:
    config = _config("{transparent: '127.0.0.1:15001', dnsGate: '127.0.0.1:15053', dnsGateMemory: 10}")
    s = config.settings
    assert (s.transparent_listen_host, s.transparent_listen_port) == ("127.0.0.1", 15001)
    assert (s.dns_gate_listen_port, s.dns_gate_memory) == (15053, 10)
    assert "transparent@127.0.0.1:15001" in mitmproxy_modes(config)
    policy = compile_policy(config, 1)
    assert 15001 in policy.outbound_ports  # the outbound gate owns it; callers by outboundSourcePrefixes
    assert ("127.0.0.1", 15001, "forward") in policy.listeners  # a loop into it is refused like any forward one


@pytest.mark.parametrize("settings, where", [
    pytest.param("{transparent: '127.0.0.1:9464'}", "settings.transparent", id="transparent-on-metrics-port"),
    pytest.param("{transparent: 15001, dnsGate: 15001}", "settings.dnsGate", id="gate-on-transparent-port"),
    pytest.param("{transparent: 'not an endpoint'}", "settings.transparent", id="bad-endpoint"),
    pytest.param("{dnsGateMemory: -1}", "dnsGateMemory", id="negative-memory"),
])
def test_bad_sidecar_settings_are_refused(settings: str, where: str) -> None:
    with pytest.raises(ConfigError) as refused:
        _config(settings)
    assert where in str(refused.value)


def test_ruleset_redirects_exempts_and_drops() -> None:
    rules = ruleset(SidecarPlan(proxy_uid=1337, transparent_port=15001, dns_port=15053, ports=(80, 443, 8443)))
    assert "delete table inet nsp_sidecar" in rules  # re-running replaces the table
    nat, filtering = rules.split("chain filter_output", 1)
    assert nat.index("meta skuid 1337 return") < nat.index("redirect to :15001")  # the proxy is never looped
    assert "tcp dport { 80, 443, 8443 } redirect to :15001" in nat
    assert "udp dport 53 redirect to :15053" in nat and "tcp dport 53 redirect to :15053" in nat
    assert "policy drop" in filtering and "meta skuid 1337 accept" in filtering
    assert "th dport { 15001, 15053 } accept" in filtering
    assert filtering.rstrip().endswith("}\n}") and "reject with icmpx" in filtering  # QUIC/UDP/ICMP too


def test_plan_needs_a_transparent_listener() -> None:
    with pytest.raises(ValueError, match=r"settings\.transparent"):
        plan_from_config(_config("{}"), 0)
    plan = plan_from_config(_config("{transparent: 15001}"), 0, (8080, 443))
    assert plan.ports == (80, 443, 8080) and plan.dns_port is None
    assert "redirect to :None" not in ruleset(plan) and "dport 53" not in ruleset(plan)


def test_answer_memory_is_bounded_and_expires() -> None:
    memory = AnswerMemory(limit=2)
    memory.remember("a.test", ("10.0.0.1", "::ffff:10.0.0.2"))
    assert memory.name_for("10.0.0.1") == "a.test"
    assert memory.name_for("::ffff:10.0.0.2") == "a.test"
    memory.remember("b.test", ("10.0.0.3",))
    assert len(memory) == 2 and memory.name_for("10.0.0.1") is None  # oldest out first
    memory.remember("c.test", ("10.0.0.4",), ttl=0.0)
    time.sleep(0.01)
    assert memory.name_for("10.0.0.4") is None and memory.name_for("not an address") is None


# -- ConfigMap live reload ---------------------------------------------------------------------------------


def _configmap_swap(folder: Path, text: str, version: int) -> None:
    """What the kubelet does: write the new files in a fresh timestamped directory, point ``..data_tmp`` at it
    and rename that over ``..data`` (atomic); the key's own symlink (``perimeter.yaml -> ..data/...``) stays."""
    fresh = folder / f"..2026_11_26_00_00_0{version}.000000001"
    fresh.mkdir()
    (fresh / "perimeter.yaml").write_text(text)
    (folder / "..data_tmp").symlink_to(fresh.name)
    os.replace(folder / "..data_tmp", folder / "..data")
    if not (folder / "perimeter.yaml").is_symlink():
        (folder / "perimeter.yaml").symlink_to("..data/perimeter.yaml")


def test_configmap_symlink_swap_is_picked_up(nsp_proxy: Callable[..., RunningProxy], tmp_path: Path) -> None:
    port = free_port()
    config = yaml.safe_load(PERIMETER) | {"settings": {"outbound": f"127.0.0.1:{port}"}}
    mounted = tmp_path / "configmap"
    mounted.mkdir()
    _configmap_swap(mounted, yaml.safe_dump(config), 1)
    # The last --config wins: the proxy reads the ConfigMap's key path, as a Pod mounting it would.
    proxy = nsp_proxy(config, extra_args=["--config", str(mounted / "perimeter.yaml")])
    assert proxy.metric("nsp_config_generation") == 1
    config["perimeters"][0]["profiles"][0]["accessRules"][0]["fullyQualifiedDomainNames"] = ["b.test"]
    _configmap_swap(mounted, yaml.safe_dump(config), 2)
    assert wait_until(lambda: proxy.metric("nsp_config_generation") == 2, timeout=15) is not None
    assert "config generation 2 in force" in proxy.stderr()


# -- /healthz on the metrics port ------------------------------------------------------------------------


def _healthz(proxy: RunningProxy) -> tuple[int, dict[str, Any]]:
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.metrics_port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_healthz_reports_generation_and_listeners(nsp_proxy: Callable[..., RunningProxy]) -> None:
    port = free_port()
    config = yaml.safe_load(PERIMETER) | {"settings": {"outbound": f"127.0.0.1:{port}"}}
    proxy = nsp_proxy(config)
    status, report = _healthz(proxy)
    assert status == 200, report
    assert report["status"] == "ready" and report["generation"] == 1
    assert report["listeners"] == [{"listener": f"regular@127.0.0.1:{port}", "open": True}]
    assert "nsp_config_generation 1.0" in proxy.metrics_text()  # /metrics is still served beside it
    config["perimeters"][0]["profiles"][0]["accessRules"][0]["fullyQualifiedDomainNames"] = ["c.test"]
    proxy.write_config(config)
    assert wait_until(lambda: _healthz(proxy)[1]["generation"] == 2, timeout=15) is not None


# -- the DNS gate's wire handling ---------------------------------------------------------------------------


def _gate_answer(wire: bytes) -> bytes | None:
    import asyncio

    from proxy.decision.dnsgate import DnsGate

    return asyncio.run(DnsGate(lambda: None, AnswerMemory()).answer(wire, ("10.0.0.1", 5353)))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_dns_gate_survives_any_bytes(wire: bytes) -> None:
    _gate_answer(wire)  # no exception: garbage is dropped, a readable query is answered


@pytest.mark.parametrize("build, rcode", [
    pytest.param(lambda m: m, "REFUSED", id="no-runtime-yet"),
    pytest.param(lambda m: (m.question.append(m.question[0]), m)[1], "FORMERR", id="two-questions"),
    pytest.param(lambda m: __import__("dns.message").message.make_response(m), None, id="a-response-is-dropped"),
])
def test_dns_gate_wire_cases(build: Callable[[Any], Any], rcode: str | None) -> None:
    import dns.message
    import dns.rcode

    reply = _gate_answer(build(dns.message.make_query("a.test", "A")).to_wire())
    if rcode is None:
        assert reply is None
    else:
        assert reply is not None and dns.rcode.to_text(dns.message.from_wire(reply).rcode()) == rcode

"""The Prometheus endpoint, end to end: real traffic through a real ``nsp-proxy run`` (sent with curl), then
``curl http://127.0.0.1:METRICS/metrics`` parsed with prometheus_client's own parser.

Checks that decision counters move with the exact labels of each decision, that Transition's "Enforced would
deny" is counted, that the latency histogram is well formed, that the record counter equals the lines in the
access log, and that no label value ever carries an address or a host name.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Backend, RunningProxy, free_port

RESOURCE_ID = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-metrics/providers/{}"
CI_SUBSCRIPTION = "/subscriptions/11111111-2222-3333-4444-555555555555"
STORE_FQDN = "mstore.blob.core.windows.net"
VAULT_FQDN = "mvault.vault.azure.net"
PROFILE = "metrics-profile"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- setup ----------------------------------------------------------------------------------------------------



def config(store_port: int, vault_port: int, outbound_port: int, upstream_port: int) -> dict[str, Any]:
    """An Enforced storage account (with a forward proxy for its outbound traffic) and a Transition key vault.

    Loopback matches no inbound rule, so the store denies unless the CI subscription is claimed, and the vault
    lets everything through on its own resource rules while counting what Enforced would deny.
    """
    def assoc(name: str, kind: str, mode: str, port: int, fqdn: str, **local: Any) -> dict[str, Any]:
        return {
            "name": name,
            "privateLinkResource": {"id": RESOURCE_ID.format(f"{kind}/{name}")},
            "profile": PROFILE,
            "accessMode": mode,
            "local": {"listen": f"127.0.0.1:{port}", "upstream": f"http://127.0.0.1:{upstream_port}",
                      "serviceFqdns": [fqdn], **local},
        }

    return {
        "apiVersion": "nsp-proxy/v1",
        "settings": {"subscriptionHeader": "x-nsp-subscription-id"},
        "perimeters": [{
            "name": "metrics-perimeter",
            "location": "westeurope",
            "profiles": [{"name": PROFILE, "accessRules": [
                {"name": "allow-docs-net", "direction": "Inbound", "addressPrefixes": ["198.51.100.0/24"]},
                {"name": "allow-ci-subscription", "direction": "Inbound", "subscriptions": [{"id": CI_SUBSCRIPTION}]},
                {"name": "allow-login", "direction": "Outbound", "fullyQualifiedDomainNames": ["login.example.test"]},
            ]}],
            "resourceAssociations": [
                assoc("m-store", "Microsoft.Storage/storageAccounts", "Enforced", store_port, STORE_FQDN,
                      outboundListen=f"127.0.0.1:{outbound_port}"),
                assoc("m-vault", "Microsoft.KeyVault/vaults", "Learning", vault_port, VAULT_FQDN),
            ],
        }],
    }


def curl(*args: str) -> int:
    """Run curl (a real client) and return the HTTP status it saw."""
    binary = shutil.which("curl")
    assert binary, "curl is not installed (.ci/run installs it)"
    out = subprocess.run([binary, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", *args],
                         capture_output=True, text=True, timeout=10)
    return int(out.stdout or 0)


def scrape(proxy: RunningProxy) -> tuple[str, Samples]:
    """``curl`` the metrics endpoint; the raw text and every sample keyed by (name, labels)."""
    binary = shutil.which("curl")
    assert binary, "curl is not installed (.ci/run installs it)"
    out = subprocess.run([binary, "-sf", "--max-time", "5", f"http://127.0.0.1:{proxy.metrics_port}/metrics"],
                         capture_output=True, text=True, timeout=10, check=True)
    samples: Samples = {}
    for family in text_string_to_metric_families(out.stdout):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out.stdout, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much ``name`` (restricted to ``labels``) moved between two scrapes."""
    return value(after, name, **labels) - value(before, name, **labels)


def decision_labels(result: str, category: str, mode: str, resource: str, direction: str = "Inbound") -> dict:
    """The full label set of one nsp_decisions_total series."""
    return {"direction": direction, "result": result, "category": category, "mode": mode, "profile": PROFILE,
            "resource": resource}


# -- tests ----------------------------------------------------------------------------------------------------


def test_metrics_follow_decisions_and_match_the_access_log(nsp_proxy, backend: Backend) -> None:
    """Counters move by exactly the decisions made, with their labels; the histogram and log agree."""
    store_port, vault_port, outbound_port = free_port(), free_port(), free_port()
    proxy = nsp_proxy(config(store_port, vault_port, outbound_port, backend.port))
    store, vault = f"http://127.0.0.1:{store_port}/c/b", f"http://127.0.0.1:{vault_port}/secrets/s"

    text, before = scrape(proxy)
    for family in ("nsp_decisions_total", "nsp_would_deny_total", "nsp_decision_duration_seconds",
                   "nsp_config_generation", "nsp_config_reloads_total", "nsp_access_log_records_total"):
        assert f"# TYPE {family} " in text, f"{family} is not exposed"
    assert value(before, "nsp_config_generation") == 1
    # The initial load is not a reload: both series exist, at zero.
    assert value(before, "nsp_config_reloads_total", result="success") == 0
    assert value(before, "nsp_config_reloads_total", result="failure") == 0
    assert value(before, "nsp_decisions_total") == 0
    assert value(before, "nsp_access_log_records_total") == 0

    # Enforced: denied twice, allowed once by the subscription rule.
    assert [curl(store), curl(store)] == [403, 403]
    assert curl("-H", f"x-nsp-subscription-id: {CI_SUBSCRIPTION}", store) == 200
    _, after_store = scrape(proxy)
    denied = decision_labels("denied", "NspPublicInboundPerimeterRulesDenied", "Enforced", "m-store")
    allowed = decision_labels("allowed", "NspPublicInboundPerimeterRulesAllowed", "Enforced", "m-store")
    assert delta(before, after_store, "nsp_decisions_total", **denied) == 2
    assert delta(before, after_store, "nsp_decisions_total", **allowed) == 1
    assert value(after_store, "nsp_would_deny_total") == 0, "Enforced denials are denials, not 'would deny'"

    # Transition: let through on the resource's own rules, each one counted as "Enforced would deny".
    assert [curl(vault) for _ in range(3)] == [200, 200, 200]
    _, after_vault = scrape(proxy)
    transition = decision_labels("allowed", "NspPublicInboundResourceRulesAllowed", "Transition", "m-vault")
    assert delta(after_store, after_vault, "nsp_decisions_total", **transition) == 3
    assert delta(after_store, after_vault, "nsp_decisions_total", **denied) == 0
    would = {"direction": "Inbound", "mode": "Transition", "profile": PROFILE, "resource": "m-vault"}
    assert delta(after_store, after_vault, "nsp_would_deny_total", **would) == 3

    # Outbound, from the store's forward proxy: a name no rule allows, then an IP literal.
    assert curl("-x", f"http://127.0.0.1:{outbound_port}", "http://exfil.example.test/upload") == 403
    assert curl("-x", f"http://127.0.0.1:{outbound_port}", f"http://127.0.0.1:{backend.port}/") == 403
    _, after = scrape(proxy)
    out_denied = decision_labels("denied", "NspPublicOutboundPerimeterRulesDenied", "Enforced", "m-store",
                                 direction="Outbound")
    assert delta(after_vault, after, "nsp_decisions_total", **out_denied) == 2

    # Every decision timed, once, under its direction; the histogram is cumulative and closed by +Inf.
    records = proxy.wait_for_records(8)
    assert len(records) == 8
    assert value(after, "nsp_decisions_total") == 8
    for direction, count in (("Inbound", 6), ("Outbound", 2)):
        assert value(after, "nsp_decision_duration_seconds_count", direction=direction) == count
        assert value(after, "nsp_decision_duration_seconds_bucket", direction=direction, le="+Inf") == count
        assert 0 < value(after, "nsp_decision_duration_seconds_sum", direction=direction) < count * 0.25
        buckets = sorted((float(dict(ls)["le"]), v) for (n, ls), v in after.items()
                         if n == "nsp_decision_duration_seconds_bucket" and ("direction", direction) in ls)
        assert len(buckets) > 2
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), f"{direction} buckets are not cumulative: {buckets}"

    # The log and the counters agree, and nothing was reloaded.
    assert value(after, "nsp_access_log_records_total") == len(proxy.records()) == 8
    assert value(after, "nsp_access_log_errors_total") == 0
    assert value(after, "nsp_config_generation") == 1
    assert value(after, "nsp_config_reloads_total", result="failure") == 0
    by_category: dict[str, int] = {}
    for record in records:
        by_category[record["Category"]] = by_category.get(record["Category"], 0) + 1
    for category, count in by_category.items():
        assert value(after, "nsp_decisions_total", category=category) == count, category


IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
HOSTNAME = re.compile(r"(?i)\b[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+\b")


def address_or_host(label: str, text: str) -> str | None:
    """What in a label value looks like an IP address or a host name (None if nothing does)."""
    if label == "le":  # histogram bucket bounds are numbers by definition
        float(text)
        return None
    if IPV4.search(text):
        return "IPv4 address"
    for token in re.split(r"[\s,;=/\[\]]+", text):
        if ":" in token:
            try:
                ipaddress.ip_address(token)
                return "IPv6 address"
            except ValueError:
                pass
    if text.lower() == "localhost":
        return "host name"
    for match in HOSTNAME.finditer(text):
        if any(c.isalpha() for c in match.group()):
            return "host name"
    return None


def test_no_label_value_carries_an_address_or_a_host_name(nsp_proxy, backend: Backend) -> None:
    """After traffic full of addresses and names, no nsp_* label value contains one."""
    store_port, vault_port, outbound_port = free_port(), free_port(), free_port()
    proxy = nsp_proxy(config(store_port, vault_port, outbound_port, backend.port))
    proxy_arg = ("-x", f"http://127.0.0.1:{outbound_port}")
    # The proxy sees addresses and names in peers, Host headers, X-Forwarded-For and destinations.
    curl(f"http://127.0.0.1:{store_port}/c/b")
    curl("-H", f"Host: {STORE_FQDN}", "-H", "X-Forwarded-For: 203.0.113.9, 2001:db8::7",
         f"http://127.0.0.1:{store_port}/c/b")
    curl("-H", f"Host: {VAULT_FQDN}", "-H", f"x-nsp-subscription-id: {CI_SUBSCRIPTION}",
         f"http://127.0.0.1:{vault_port}/secrets/s")
    curl(*proxy_arg, "http://exfil.example.test/upload")
    curl(*proxy_arg, f"http://127.0.0.1:{backend.port}/")
    curl(*proxy_arg, "-H", "Host: login.example.test", "http://exfil.example.test/")
    proxy.wait_for_records(6)

    _, samples = scrape(proxy)
    nsp_samples = {key: v for key, v in samples.items() if key[0].startswith("nsp_")}
    assert value(nsp_samples, "nsp_decisions_total") == 6
    labelled = 0
    leaks = []
    for name, labels in nsp_samples:
        for label, text in labels:
            labelled += 1
            found = address_or_host(label, text)
            if found:
                leaks.append(f"{name}{{{label}={text!r}}}: {found}")
    assert labelled > 20, "too few labelled samples to mean anything"
    assert not leaks, "label values carry addresses or host names:\n" + "\n".join(leaks)


@pytest.mark.parametrize(("label", "text", "found"), [
    ("resource", "127.0.0.1", "IPv4 address"),
    ("resource", "client 10.1.2.3 denied", "IPv4 address"),
    ("resource", "2001:db8::7", "IPv6 address"),
    ("resource", "mstore.blob.core.windows.net", "host name"),
    ("resource", "localhost", "host name"),
    ("resource", "m-store", None),
    ("category", "NspPublicInboundPerimeterRulesDenied", None),
    ("le", "2.5e-05", None),
    ("le", "+Inf", None),
])
def test_leak_detector(label: str, text: str, found: str | None) -> None:
    """The scan above only means something if it would catch a leak."""
    assert address_or_host(label, text) == found

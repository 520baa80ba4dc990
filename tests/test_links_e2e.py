"""Perimeter links and logging configurations end to end: the real proxy, curl through its forward proxy, loopback
backends, a dnsmasq for the member's name.

Two perimeters on loopback: p1's member ``app`` calls out through its forward proxy, p2's member ``peer`` stands
behind a reverse listener. With an Approved link the call is NspCrossPerimeterOutboundAllowed at the source and
NspCrossPerimeterInboundAllowed at the destination; without one both gates deny it. A logging configuration's
enabledLogCategories chooses which records are written; metrics count every decision.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.faults import perimeter, store
from tests.support import exactly, free_port
from tests.test_outbound_e2e import association, config, curl

pytestmark = pytest.mark.e2e

P2_ID = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/nsp-proxy/providers/"
         "Microsoft.Network/networkSecurityPerimeters/p2")


def two_perimeters(dns_port: int, fwd: int, peer_listen: int, peer_port: int, mode: str,
                   link: dict[str, Any] | None) -> dict[str, Any]:
    p1 = {"name": "p1", "profiles": [{"name": "prof"}], "resourceAssociations": [
        association("app", mode=mode, outboundListen=f"127.0.0.1:{fwd}", outboundSourcePrefixes=["127.0.0.1/32"])]}
    if link:
        p1["links"] = [link]
    p2 = {"name": "p2", "profiles": [{"name": "prof"}], "resourceAssociations": [
        association("peer", mode=mode, listen=f"127.0.0.1:{peer_listen}", upstream=f"http://127.0.0.3:{peer_port}",
                    serviceFqdns=["peer.internal.test"])]}
    return config(dns_port, p1, p2)


LINK = {"name": "p1-to-p2", "properties": {"autoApprovedRemotePerimeterResourceId": P2_ID,
                                           "localInboundProfiles": ["*"], "remoteInboundProfiles": ["*"],
                                           "status": "Approved"}}


@pytest.mark.parametrize("mode", ["Enforced", "Learning"])
def test_linked_perimeters_reach_each_other_as_cross_perimeter(nsp_proxy, dnsmasq, backends, mode: str) -> None:
    peer_backend = backends("peer", host="127.0.0.3")
    dns_server = dnsmasq({"peer.internal.test": "127.0.0.1"})
    fwd, peer_listen = free_port(), free_port()
    proxy = nsp_proxy(two_perimeters(dns_server.port, fwd, peer_listen, peer_backend.port, mode, LINK))

    result = curl(fwd, f"http://peer.internal.test:{peer_listen}/cross")
    assert result.status == 200, result
    assert [hit[1] for hit in peer_backend.hits] == ["/cross"]
    inbound, outbound = exactly(proxy, 2, settle=0.5)  # the inbound record is written first (its answer first)
    assert (outbound["Category"], outbound["ResultDirection"]) == ("NspCrossPerimeterOutboundAllowed", "Outbound")
    assert (inbound["Category"], inbound["ResultDirection"]) == ("NspCrossPerimeterInboundAllowed", "Inbound")
    for record in (inbound, outbound):
        assert (record["TrafficType"], record["ResultAction"]) == ("Cross", "Approved")
        assert "p1-to-p2" in record["MatchedRule"]
    assert proxy.metric("nsp_decisions_total") == 2


def test_without_the_link_both_gates_deny(nsp_proxy, dnsmasq, backends) -> None:
    peer_backend = backends("peer", host="127.0.0.3")
    dns_server = dnsmasq({"peer.internal.test": "127.0.0.1"})
    fwd, peer_listen = free_port(), free_port()
    rejected = {"name": "p1-to-p2", "autoApprovedRemotePerimeterResourceId": P2_ID, "status": "Rejected"}
    proxy = nsp_proxy(two_perimeters(dns_server.port, fwd, peer_listen, peer_backend.port, "Enforced", rejected))
    assert "'p1-to-p2' is Rejected" in proxy.wait_for_stderr("is Rejected")  # warned at load

    assert curl(fwd, f"http://peer.internal.test:{peer_listen}/cross").status == 403
    assert httpx.get(f"http://127.0.0.1:{peer_listen}/direct", timeout=10).status_code == 403
    assert peer_backend.hits == []
    outbound, inbound = exactly(proxy, 2, settle=0.5)
    assert outbound["Category"] == "NspPublicOutboundPerimeterRulesDenied"
    assert inbound["Category"] == "NspPublicInboundPerimeterRulesDenied"


# -- loggingConfiguration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "enabled", "written"), [
    pytest.param("Enforced", ["NspPublicInboundPerimeterRulesDenied"], ["NspPublicInboundPerimeterRulesDenied"],
                 id="Enforced: denials only"),
    pytest.param("Enforced", ["nsppublicinboundperimeterrulesallowed"], ["NspPublicInboundPerimeterRulesAllowed"],
                 id="Enforced: allowed only (any case)"),
    pytest.param("Transition", ["NspPublicInboundResourceRulesAllowed"], ["NspPublicInboundResourceRulesAllowed"],
                 id="Transition: resource-rules fallback only"),
    pytest.param("Enforced", [], [], id="nothing enabled"),
])
def test_logging_configuration_chooses_the_written_categories(nsp_proxy, backend, mode: str, enabled: list[str],
                                                              written: list[str]) -> None:
    open_port, shut_port = free_port(), free_port()
    document = perimeter(store("stopen", open_port, f"http://127.0.0.1:{backend.port}", mode=mode),
                         store("stshut", shut_port, f"http://127.0.0.1:{backend.port}", mode=mode, allowed=False))
    document["perimeters"][0]["loggingConfiguration"] = {
        "name": "instance", "properties": {"enabledLogCategories": enabled, "version": "0"}}
    proxy = nsp_proxy(document)

    assert httpx.get(f"http://127.0.0.1:{open_port}/open", timeout=10).status_code == 200
    expected_shut = 403 if mode == "Enforced" else 200
    assert httpx.get(f"http://127.0.0.1:{shut_port}/shut", timeout=10).status_code == expected_shut
    records = exactly(proxy, len(written), settle=1.0)
    assert [r["Category"] for r in records] == written
    assert proxy.metric("nsp_decisions_total") == 2  # metrics still count every decision
    assert proxy.metric("nsp_access_log_records_total") == len(written)

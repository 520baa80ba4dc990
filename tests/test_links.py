"""Perimeter links (generated cross-perimeter rules), Learning with SecuredByPerimeter, rules without direction.

Engine tables on configurations read the way a file is (``parse_config_text``); every row runs in Enforced and
in Transition (Learning).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from proxy.config.errors import ConfigError
from proxy.config.loader import parse_config_text
from proxy.decision.engine import decide_inbound, decide_outbound
from proxy.decision.facts import Decision, InboundFacts, OutboundFacts
from proxy.model import Direction
from proxy.policy.compiled import Policy, compile_policy
from proxy.telemetry import Category, ResultAction, RuleType, TrafficType
from tests.support import run_cli

SUB = "11111111-1111-1111-1111-111111111111"
MODES = ["Enforced", "Learning"]


def nsp_id(name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/networkSecurityPerimeters/{name}"


def member(name: str, profile: str, mode: str, source: str, **local: Any) -> dict[str, Any]:
    return {"name": name, "profile": profile, "accessMode": mode,
            "privateLinkResource": {"id": f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/"
                                          f"storageAccounts/{name.replace('-', '')}"},
            "local": {"outboundSourcePrefixes": [f"{source}/32"], "serviceFqdns": [f"{name}.example.net"], **local}}


def three_perimeters(mode: str) -> dict[str, Any]:
    """A links to B (A's pa1 admits B; every B profile admits A), A links to C but that link is Pending."""
    return {"settings": {"metrics": None, "outbound": "127.0.0.1:13128"}, "perimeters": [
        {"name": "nsp-a", "subscriptionId": SUB, "resourceGroup": "rg",
         "profiles": [{"name": "pa1"}, {"name": "pa2"}],
         "resourceAssociations": [member("a1", "pa1", mode, "10.1.0.1"), member("a2", "pa2", mode, "10.1.0.2")],
         "links": [
             {"name": "a-to-b", "properties": {"autoApprovedRemotePerimeterResourceId": nsp_id("nsp-b"),
                                               "localInboundProfiles": ["pa1"], "remoteInboundProfiles": ["*"],
                                               "status": "Approved", "provisioningState": "Succeeded"}},
             {"name": "a-to-c", "autoApprovedRemotePerimeterResourceId": nsp_id("nsp-c"), "status": "Pending"}]},
        {"name": "nsp-b", "subscriptionId": SUB, "resourceGroup": "rg", "profiles": [{"name": "pb1"}],
         "resourceAssociations": [member("b1", "pb1", mode, "10.2.0.1")]},
        {"name": "nsp-c", "subscriptionId": SUB, "resourceGroup": "rg", "profiles": [{"name": "pc"}],
         "resourceAssociations": [member("c1", "pc", mode, "10.3.0.1")]},
    ]}


def compiled(document: dict[str, Any]) -> Policy:
    return compile_policy(parse_config_text(yaml.safe_dump(document), "links.yaml"), generation=1)


def inbound(policy: Policy, resource: str, source_ip: str) -> Decision:
    return decide_inbound(policy, InboundFacts(resource=resource, source_ip=source_ip, subscription=None))


def outbound(policy: Policy, resource: str, source_ip: str, host: str) -> Decision:
    return decide_outbound(policy, OutboundFacts(resource=resource, source_ip=source_ip, destination_host=host,
                                                 destination_port=443))


CROSS = [  # (caller resource, its source, destination resource): allowed by the link in both directions
    pytest.param("b1", "10.2.0.1", "a1", id="B member into A's pa1 (localInboundProfiles)"),
    pytest.param("a1", "10.1.0.1", "b1", id="A member into B (remoteInboundProfiles *)"),
    pytest.param("a2", "10.1.0.2", "b1", id="A's pa2 member into B"),
]
NOT_LINKED = [  # no Approved link admits these inbound: decided as public traffic (outbound: is the link?)
    pytest.param("b1", "10.2.0.1", "a2", True, id="B member into A's pa2 (not a local inbound profile)"),
    pytest.param("c1", "10.3.0.1", "a1", False, id="C member into A (link Pending)"),
    pytest.param("a1", "10.1.0.1", "c1", False, id="A member into C (link Pending)"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("caller", "source", "target"), CROSS)
def test_approved_link_allows_inbound_as_cross_perimeter(mode: str, caller: str, source: str, target: str) -> None:
    decision = inbound(compiled(three_perimeters(mode)), target, source)
    assert (decision.allowed, decision.would_deny) == (True, False)
    assert decision.category is Category.CROSS_PERIMETER_INBOUND_ALLOWED
    assert decision.traffic_type is TrafficType.CROSS and decision.rule_type is RuleType.PERIMETERS
    assert decision.matched_rule == "a-to-b"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("caller", "source", "target"), [*CROSS, pytest.param(
    "b1", "10.2.0.1", "a2", id="B member out to A's pa2 (outbound: every profile)")])
def test_approved_link_allows_outbound_as_cross_perimeter(mode: str, caller: str, source: str, target: str) -> None:
    decision = outbound(compiled(three_perimeters(mode)), caller, source, f"{target}.example.net")
    assert (decision.allowed, decision.would_deny) == (True, False)
    assert decision.category is Category.CROSS_PERIMETER_OUTBOUND_ALLOWED
    assert decision.traffic_type is TrafficType.CROSS and decision.matched_rule == "a-to-b"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("caller", "source", "target", "linked"), NOT_LINKED)
def test_without_an_approved_link_members_are_public_callers(mode: str, caller: str, source: str,
                                                             target: str, linked: bool) -> None:
    policy = compiled(three_perimeters(mode))
    decision = inbound(policy, target, source)
    assert decision.would_deny and decision.traffic_type is TrafficType.PUBLIC
    expected = (Category.PUBLIC_INBOUND_PERIMETER_DENIED if mode == "Enforced"
                else Category.PUBLIC_INBOUND_RESOURCE_ALLOWED)
    assert decision.category is expected
    out = outbound(policy, caller, source, f"{target}.example.net")
    assert out.category in ((Category.CROSS_PERIMETER_OUTBOUND_ALLOWED,) if linked else (
        Category.PUBLIC_OUTBOUND_PERIMETER_DENIED, Category.PUBLIC_OUTBOUND_RESOURCE_ALLOWED))


def _status(d: dict[str, Any], status: str) -> None:
    d["perimeters"][0]["links"][0]["properties"]["status"] = status


def _no_status(d: dict[str, Any]) -> None:
    del d["perimeters"][0]["links"][0]["properties"]["status"]


def _reference_only(d: dict[str, Any]) -> None:
    """The link seen from B's side only: a linkReference in B naming A."""
    d["perimeters"][0]["links"] = []
    d["perimeters"][1]["linkReferences"] = [{"name": "ref-a", "remotePerimeterResourceId": nsp_id("nsp-a"),
                                             "localInboundProfiles": ["*"], "remoteInboundProfiles": ["pa1"],
                                             "status": "Approved"}]


def _by_guid(d: dict[str, Any]) -> None:
    d["perimeters"][1]["perimeterGuid"] = "0f0f0f0f-1111-2222-3333-444444444444"
    props = d["perimeters"][0]["links"][0]["properties"]
    del props["autoApprovedRemotePerimeterResourceId"]
    props["remotePerimeterGuid"] = "0F0F0F0F-1111-2222-3333-444444444444"


@pytest.mark.parametrize(("change", "allowed", "warning"), [
    pytest.param(_no_status, True, None, id="no status, remote in the config: auto-approved"),
    pytest.param(lambda d: _status(d, "Rejected"), False, "is Rejected", id="Rejected"),
    pytest.param(lambda d: _status(d, "Disconnected"), False, "is Disconnected", id="Disconnected"),
    pytest.param(lambda d: _status(d, "pending"), False, "is Pending", id="Pending (any case)"),
    pytest.param(_reference_only, True, None, id="linkReference on the remote side acts as the link"),
    pytest.param(_by_guid, True, None, id="remote named by remotePerimeterGuid"),
])
def test_only_approved_links_act(change: Callable[[dict[str, Any]], None], allowed: bool, warning: str | None) -> None:
    document = three_perimeters("Enforced")
    change(document)
    config = parse_config_text(yaml.safe_dump(document), "links.yaml")
    policy = compile_policy(config, generation=1)
    assert inbound(policy, "a1", "10.2.0.1").allowed is allowed
    assert outbound(policy, "b1", "10.2.0.1", "a1.example.net").allowed is allowed
    if warning:
        assert [w for w in config.warnings if "'a-to-b'" in w and warning in w], config.warnings


def test_link_and_its_reference_generate_each_rule_once() -> None:
    document = three_perimeters("Enforced")
    _reference_only(document)
    document["perimeters"][0]["links"] = [{"name": "a-to-b", "autoApprovedRemotePerimeterResourceId": nsp_id("nsp-b")}]
    config = parse_config_text(yaml.safe_dump(document), "links.yaml")
    b_rules = config.perimeters[1].profiles[0].rules
    assert [(r.name, r.direction) for r in b_rules] == [("a-to-b", Direction.INBOUND), ("a-to-b", Direction.OUTBOUND)]
    assert all(r.generated and r.element_count == 0 for r in b_rules)


def test_link_to_a_perimeter_not_in_the_configuration_allows_nothing_and_warns() -> None:
    document = three_perimeters("Enforced")
    document["perimeters"][0]["links"][0]["properties"]["autoApprovedRemotePerimeterResourceId"] = nsp_id("far")
    config = parse_config_text(yaml.safe_dump(document), "links.yaml")
    assert [w for w in config.warnings if "not in this configuration" in w]
    assert not inbound(compile_policy(config, 1), "a1", "10.2.0.1").allowed


def test_unknown_link_key_is_refused_with_its_path() -> None:
    document = three_perimeters("Enforced")
    document["perimeters"][0]["links"][0]["properties"]["remoteProfiles"] = ["*"]
    with pytest.raises(ConfigError) as caught:
        parse_config_text(yaml.safe_dump(document), "links.yaml")
    assert "perimeters[0].links[0]" in str(caught.value) and "remoteProfiles" in str(caught.value)


# -- Learning with publicNetworkAccess (FACTS.md transition table) -------------------------------------------------


def _learning(access: str | None) -> Policy:
    document = three_perimeters("Learning")
    local = document["perimeters"][0]["resourceAssociations"][0]["local"]
    if access:
        local["publicNetworkAccess"] = access
    document["perimeters"][0]["profiles"][0]["accessRules"] = [
        {"name": "out", "direction": "Outbound", "fullyQualifiedDomainNames": ["allowed.example.com"]}]
    return compiled(document)


@pytest.mark.parametrize(("access", "host", "allowed", "category"), [
    pytest.param(None, "other.example.com", True, Category.PUBLIC_OUTBOUND_RESOURCE_ALLOWED, id="Enabled: allowed"),
    pytest.param("Disabled", "other.example.com", True, Category.PUBLIC_OUTBOUND_RESOURCE_ALLOWED,
                 id="Disabled: allowed"),
    pytest.param("SecuredByPerimeter", "other.example.com", False, Category.PUBLIC_OUTBOUND_RESOURCE_DENIED,
                 id="SecuredByPerimeter: unmatched outbound denied"),
    pytest.param("SecuredByPerimeter", "allowed.example.com", True, Category.PUBLIC_OUTBOUND_PERIMETER_ALLOWED,
                 id="SecuredByPerimeter: NSP rule allows"),
    pytest.param("SecuredByPerimeter", "b1.example.net", True, Category.CROSS_PERIMETER_OUTBOUND_ALLOWED,
                 id="SecuredByPerimeter: linked perimeter allowed"),
])
def test_learning_outbound_by_public_network_access(access: str | None, host: str, allowed: bool,
                                                    category: Category) -> None:
    decision = outbound(_learning(access), "a1", "10.1.0.1", host)
    assert (decision.allowed, decision.category) == (allowed, category)
    assert decision.result_action is (ResultAction.APPROVED if allowed else ResultAction.DENIED)


@pytest.mark.parametrize("access", ["Disabled", "SecuredByPerimeter"])
def test_learning_inbound_unmatched_is_denied_unless_enabled(access: str) -> None:
    decision = inbound(_learning(access), "a1", "203.0.113.9")
    assert not decision.allowed and decision.category is Category.PUBLIC_INBOUND_RESOURCE_DENIED


# -- rules without direction ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "direction"), [
    pytest.param({"addressPrefixes": ["100.10.0.0/16"]}, Direction.INBOUND, id="prefixes: Inbound (CLI quickstart)"),
    pytest.param({"subscriptions": [{"id": f"/subscriptions/{SUB}"}]}, Direction.INBOUND, id="subscriptions"),
    pytest.param({"serviceTags": ["AzureMonitor"]}, Direction.INBOUND, id="serviceTags"),
    pytest.param({"fullyQualifiedDomainNames": ["contoso.com"]}, None, id="FQDNs: refused, needs Outbound"),
    pytest.param({"emailAddresses": ["a@contoso.com"]}, None, id="emailAddresses: refused"),
])
def test_rule_without_direction(rule: dict[str, Any], direction: Direction | None) -> None:
    document = three_perimeters("Enforced")
    document["perimeters"][0]["profiles"][0]["accessRules"] = [{"name": "r", "properties": rule}]
    text = json.dumps(document)
    if direction is None:
        with pytest.raises(ConfigError) as caught:
            parse_config_text(text, "links.json")
        assert "perimeters[0].profiles[0].accessRules[0]" in str(caught.value)
        assert "without 'direction'" in str(caught.value) and "Outbound" in str(caught.value)
        return
    rules = parse_config_text(text, "links.json").perimeters[0].profiles[0].rules
    assert rules[0].direction is direction


def test_validate_prints_recommended_limit_and_link_warnings(tmp_path) -> None:
    document = three_perimeters("Enforced")
    document["perimeters"][0]["links"] += [{"name": f"extra{i}", "remotePerimeterResourceId": nsp_id("nsp-b")}
                                           for i in range(10)]
    path = tmp_path / "many-links.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = run_cli("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert "12 links; Azure allows at most 10" in result.stderr + result.stdout
    assert "'a-to-c' is Pending" in result.stderr + result.stdout


@pytest.mark.parametrize("ref", [
    pytest.param({"id": nsp_id("nsp-b")}, id="by id"),
    pytest.param({"perimeterGuid": "0f0f0f0f-1111-2222-3333-444444444444", "location": "westus"}, id="by guid"),
])
def test_exported_generated_rules_act_in_both_directions(ref: dict[str, str]) -> None:
    """An export shows a link's generated rules as networkSecurityPerimeters rules, Inbound and Outbound."""
    document = three_perimeters("Enforced")
    document["perimeters"][0]["links"] = []
    document["perimeters"][1]["perimeterGuid"] = "0f0f0f0f-1111-2222-3333-444444444444"
    document["perimeters"][0]["profiles"][0]["accessRules"] = [
        {"name": "gen-in", "properties": {"direction": "Inbound", "networkSecurityPerimeters": [ref]}},
        {"name": "gen-out", "properties": {"direction": "Outbound", "networkSecurityPerimeters": [ref]}}]
    policy = compiled(document)
    assert inbound(policy, "a1", "10.2.0.1").category is Category.CROSS_PERIMETER_INBOUND_ALLOWED
    out = outbound(policy, "a1", "10.1.0.1", "b1.example.net")
    assert (out.category, out.matched_rule) == (Category.CROSS_PERIMETER_OUTBOUND_ALLOWED, "gen-out")

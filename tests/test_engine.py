"""The decision engine: the evaluation ladder, each mode's outcome, outbound checks, fail-closed behaviour,
immutability, the caller's effective address, and ``nsp-proxy explain``.

Configurations are built with ``proxy.config.loader.parse_config_text``, the same path a file takes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import uuid
from pathlib import Path

import pytest

from proxy.config.loader import load_config, parse_config_text
from proxy.decision.clientip import effective_client_ip
from proxy.decision.engine import attribute_outbound, decide_inbound, decide_outbound
from proxy.decision.facts import Decision, InboundFacts, OutboundFacts
from proxy.model import AccessMode, Direction
from proxy.policy.compiled import Policy, compile_policy
from proxy.policy.indexes import PrefixIndex
from proxy.telemetry import Category, ResultAction, RuleType, TrafficType
from tests.support import REPO, run_cli

MAIN_SUB = "11111111-1111-1111-1111-111111111111"
OTHER_SUB = "22222222-2222-2222-2222-222222222222"
CI_SUB = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
OTHER_NSP_ID = (f"/subscriptions/{OTHER_SUB}/resourceGroups/rg-other/providers/Microsoft.Network/"
                "networkSecurityPerimeters/p-other")
GENERATION = 7


def rid(kind: str, name: str, sub: str = MAIN_SUB, group: str = "rg-main") -> str:
    return f"/subscriptions/{sub}/resourceGroups/{group}/providers/{kind}/{name}"


# Addresses used below (all documentation or private ranges):
#   10.0.0.0/8 office rule, 10.1.0.0/16 lab rule (longer), 2001:db8::/32 and 2001:db8:1::/48 the same in IPv6
#   10.200.0.0/16 the storage account's private endpoint subnet
#   10.200.1.0/24, 10.50.0.0/24  where the vault (a member of p-main) calls from
#   198.18.0.0/24, 10.60.0.0/24  where p-other's member calls from
#   192.0.2.0/24  the vault's own firewall (Transition fallback)
CONFIG = f"""
settings:
  metrics: null
  outbound: 127.0.0.1:13128
perimeters:
  - name: p-main
    location: westeurope
    subscriptionId: {MAIN_SUB}
    resourceGroup: rg-main
    profiles:
      - name: prof
        accessRules:
          - {{name: office, direction: Inbound, addressPrefixes: [10.0.0.0/8, "2001:db8::/32"]}}
          - {{name: lab, direction: Inbound, addressPrefixes: [10.1.0.0/16, "2001:db8:1::/48"]}}
          - name: ci
            direction: Inbound
            subscriptions: [{{id: /subscriptions/{CI_SUB}}}]
          - name: partners
            direction: Inbound
            networkSecurityPerimeters: [{{id: {OTHER_NSP_ID}}}]
          - {{name: out-login, direction: Outbound, fullyQualifiedDomainNames: [login.microsoftonline.com]}}
          - {{name: out-blobs, direction: Outbound, fullyQualifiedDomainNames: ["*.blob.core.windows.net"]}}
    resourceAssociations:
      - name: storage
        privateLinkResource: {{id: {rid("Microsoft.Storage/storageAccounts", "st1")}}}
        profile: prof
        accessMode: Enforced
        local:
          listen: 127.0.0.1:18001
          upstream: builtin:demo
          serviceFqdns: [st1.blob.core.windows.net]
          privateEndpointPrefixes: [10.200.0.0/16]
          outboundSourcePrefixes: [127.0.0.11/32]
      - name: vault
        privateLinkResource: {{id: {rid("Microsoft.KeyVault/vaults", "kv1")}}}
        profile: prof
        accessMode: Learning
        local:
          listen: 127.0.0.1:18002
          upstream: builtin:demo
          serviceFqdns: [kv1.vault.azure.net]
          outboundSourcePrefixes: [10.200.1.0/24, 10.50.0.0/24]
          resourceIpRules: [192.0.2.0/24]
      - name: cosmos-open
        privateLinkResource: {{id: {rid("Microsoft.DocumentDB/databaseAccounts", "cosmos1")}}}
        profile: prof
        accessMode: Transition
      - name: cosmos-closed
        privateLinkResource: {{id: {rid("Microsoft.DocumentDB/databaseAccounts", "cosmos2")}}}
        profile: prof
        accessMode: Learning
        local: {{publicNetworkAccess: Disabled}}
      - name: search-audit
        privateLinkResource: {{id: {rid("Microsoft.Search/searchServices", "srch1")}}}
        profile: prof
        accessMode: Audit
        local: {{outboundListen: 13129}}
  - name: p-other
    location: westeurope
    subscriptionId: {OTHER_SUB}
    resourceGroup: rg-other
    profiles:
      - name: prof
    resourceAssociations:
      - name: other-member
        privateLinkResource: {{id: {rid("Microsoft.Storage/storageAccounts", "st9", OTHER_SUB, "rg-other")}}}
        profile: prof
        accessMode: Enforced
        local:
          listen: 127.0.0.1:18010
          upstream: builtin:demo
          serviceFqdns: [other.example.net]
          outboundSourcePrefixes: [198.18.0.0/24, 10.60.0.0/24]
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return compile_policy(parse_config_text(CONFIG, "engine.yaml"), generation=GENERATION)


def inbound(policy: Policy, resource: str, source_ip: str, subscription: str | None = None) -> Decision:
    return decide_inbound(policy, InboundFacts(resource=resource, source_ip=source_ip, subscription=subscription))


def outbound(policy: Policy, resource: str | None, host: str, port: int = 443, **kwargs: str | None) -> Decision:
    return decide_outbound(policy, OutboundFacts(resource=resource, source_ip="127.0.0.11", destination_host=host,
                                                 destination_port=port, **kwargs))


# -- inbound: the evaluation ladder ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "subscription", "rule_type", "rule", "traffic", "category"), [
    # private endpoint beats intra-perimeter (10.200.1.5 is also where the vault calls from) and the address rule
    ("10.200.1.5", None, RuleType.PRIVATE_ENDPOINT, None, TrafficType.PRIVATE, Category.PRIVATE_INBOUND_ALLOWED),
    # intra-perimeter beats the address rule (10.50.0.5 is inside the office rule's 10/8)
    ("10.50.0.5", None, RuleType.INTRA_PERIMETER, None, TrafficType.INTRA,
     Category.INTRA_PERIMETER_INBOUND_ALLOWED),
    # the address rule beats the subscription rule
    ("10.9.9.9", CI_SUB, RuleType.ADDRESS_PREFIXES, "office", TrafficType.PUBLIC,
     Category.PUBLIC_INBOUND_PERIMETER_ALLOWED),
    # longest prefix: the lab rule, not the office rule
    ("10.1.2.3", None, RuleType.ADDRESS_PREFIXES, "lab", TrafficType.PUBLIC,
     Category.PUBLIC_INBOUND_PERIMETER_ALLOWED),
    ("2001:db8:1::9", None, RuleType.ADDRESS_PREFIXES, "lab", TrafficType.PUBLIC,
     Category.PUBLIC_INBOUND_PERIMETER_ALLOWED),
    ("2001:db8:2::9", None, RuleType.ADDRESS_PREFIXES, "office", TrafficType.PUBLIC,
     Category.PUBLIC_INBOUND_PERIMETER_ALLOWED),
    # IPv4-mapped IPv6 is matched as IPv4
    ("::ffff:10.1.2.3", None, RuleType.ADDRESS_PREFIXES, "lab", TrafficType.PUBLIC,
     Category.PUBLIC_INBOUND_PERIMETER_ALLOWED),
    ("::ffff:10.200.9.9", None, RuleType.PRIVATE_ENDPOINT, None, TrafficType.PRIVATE,
     Category.PRIVATE_INBOUND_ALLOWED),
    # the subscription rule beats cross-perimeter (198.18.0.5 is p-other's member)
    ("198.18.0.5", CI_SUB, RuleType.SUBSCRIPTIONS, "ci", TrafficType.PUBLIC,
     Category.PUBLIC_INBOUND_PERIMETER_ALLOWED),
    # subscription in every accepted form
    ("203.0.113.5", f"/subscriptions/{CI_SUB.upper()}", RuleType.SUBSCRIPTIONS, "ci", TrafficType.PUBLIC,
     Category.PUBLIC_INBOUND_PERIMETER_ALLOWED),
    # the address rule beats cross-perimeter (10.60.0.5 is p-other's member, inside 10/8)
    ("10.60.0.5", None, RuleType.ADDRESS_PREFIXES, "office", TrafficType.PUBLIC,
     Category.PUBLIC_INBOUND_PERIMETER_ALLOWED),
    # cross-perimeter
    ("198.18.0.5", None, RuleType.PERIMETERS, "partners", TrafficType.CROSS,
     Category.CROSS_PERIMETER_INBOUND_ALLOWED),
    ("::ffff:198.18.0.5", None, RuleType.PERIMETERS, "partners", TrafficType.CROSS,
     Category.CROSS_PERIMETER_INBOUND_ALLOWED),
])
def test_inbound_ladder(policy: Policy, source: str, subscription: str | None, rule_type: RuleType,
                        rule: str | None, traffic: TrafficType, category: Category) -> None:
    decision = inbound(policy, "storage", source, subscription)
    assert decision.allowed and not decision.would_deny
    assert (decision.rule_type, decision.matched_rule, decision.traffic_type, decision.category) == (
        rule_type, rule, traffic, category)
    assert decision.result_action is ResultAction.APPROVED
    assert decision.direction is Direction.INBOUND
    assert (decision.resource, decision.perimeter, decision.profile) == ("storage", "p-main", "prof")
    assert decision.generation == GENERATION
    assert decision.error is None


@pytest.mark.parametrize(("source", "subscription"), [
    ("192.0.2.55", None),
    ("11.0.0.1", None),
    ("2001:db9::1", None),
    ("192.0.2.55", "33333333-3333-3333-3333-333333333333"),  # a subscription no rule names
    ("192.0.2.55", "not-a-subscription"),  # a malformed header is no subscription, not an error
    ("192.0.2.55", ""),
    ("not-an-ip", None),  # an unparseable source matches nothing
])
def test_inbound_enforced_denies_what_no_rule_allows(policy: Policy, source: str, subscription: str | None) -> None:
    decision = inbound(policy, "storage", source, subscription)
    assert not decision.allowed and decision.would_deny
    assert decision.category is Category.PUBLIC_INBOUND_PERIMETER_DENIED
    assert decision.result_action is ResultAction.DENIED
    assert decision.rule_type is RuleType.NONE and decision.matched_rule is None
    assert decision.mode is AccessMode.ENFORCED
    assert decision.reason.startswith("Enforced")
    assert decision.error is None


def test_intra_perimeter_is_only_for_the_same_perimeter(policy: Policy) -> None:
    """p-other's member calling p-other's own resource is intra; calling p-main without a rule is not."""
    assert inbound(policy, "other-member", "198.18.0.7").rule_type is RuleType.INTRA_PERIMETER
    to_other = inbound(policy, "other-member", "10.50.0.5")  # the vault, a p-main member
    assert not to_other.allowed  # p-other's profile has no rules at all


def test_caller_that_is_a_member_calling_itself_is_intra(policy: Policy) -> None:
    assert inbound(policy, "vault", "10.50.0.9").category is Category.INTRA_PERIMETER_INBOUND_ALLOWED


def test_ipv4_mapped_rule_prefix_matches_ipv4_callers() -> None:
    text = CONFIG.replace("addressPrefixes: [10.1.0.0/16,", "addressPrefixes: [\"::ffff:10.1.0.0/112\",")
    mapped = compile_policy(parse_config_text(text, "mapped.yaml"), generation=1)
    assert inbound(mapped, "storage", "10.1.2.3").matched_rule == "lab"


def test_unknown_resource_is_denied(policy: Policy) -> None:
    decision = inbound(policy, "no-such-resource", "10.1.2.3")
    assert not decision.allowed
    assert decision.mode is None
    assert decision.error is not None and "no-such-resource" in decision.error


def test_resource_names_are_case_insensitive(policy: Policy) -> None:
    assert inbound(policy, "STORAGE", "10.1.2.3").resource == "storage"


def test_member_callers_are_named_by_resource_and_perimeter_guid(policy: Policy) -> None:
    """SourceResourceId / SourcePerimeterGuids: the calling member (inbound intra and cross), the resource
    itself (outbound); nothing for public callers."""
    main, other = (p for p in policy.config.perimeters)
    intra = inbound(policy, "storage", "10.50.0.9")  # the vault calling
    assert (intra.source_resource_id, intra.source_perimeter_guid) == (rid("Microsoft.KeyVault/vaults", "kv1"),
                                                                       main.guid)
    cross = inbound(policy, "storage", "198.18.0.4")  # p-other's member, allowed by the partners rule
    assert cross.rule_type is RuleType.PERIMETERS
    assert cross.source_perimeter_guid == other.guid != main.guid
    public = inbound(policy, "storage", "10.1.2.3")
    assert (public.source_resource_id, public.source_perimeter_guid) == ("", "")
    out = outbound(policy, "storage", "example.org")
    assert (out.source_resource_id, out.source_perimeter_guid) == (rid("Microsoft.Storage/storageAccounts", "st1"),
                                                                   main.guid)


def test_perimeter_guid_is_derived_from_the_id_unless_given() -> None:
    derived = parse_config_text(CONFIG, "a.yaml").perimeters[0].guid
    assert derived == parse_config_text(CONFIG, "b.yaml").perimeters[0].guid  # stable across loads
    assert str(uuid.UUID(derived)) == derived
    given = CONFIG.replace("    location: westeurope\n    subscriptionId: " + MAIN_SUB,
                           "    location: westeurope\n    perimeterGuid: 6B2F7C1E-3D4A-4F5B-9C8D-0E1F2A3B4C5D\n"
                           "    subscriptionId: " + MAIN_SUB, 1)
    assert parse_config_text(given, "c.yaml").perimeters[0].guid == "6b2f7c1e-3d4a-4f5b-9c8d-0e1f2a3b4c5d"
    export = load_config(REPO / "config" / "examples" / "arm" / "export-bindings.yaml")
    assert export.perimeters[0].guid == "6b2f7c1e-3d4a-4f5b-9c8d-0e1f2a3b4c5d"  # properties.perimeterGuid


# -- inbound: each mode's outcome when nothing allows it -----------------------------------------------------------


def test_transition_falls_back_to_the_resource_firewall_allowing(policy: Policy) -> None:
    decision = inbound(policy, "vault", "192.0.2.77")  # no NSP rule; in the vault's own resourceIpRules
    assert decision.allowed and decision.would_deny
    assert decision.category is Category.PUBLIC_INBOUND_RESOURCE_ALLOWED
    assert decision.result_action is ResultAction.APPROVED
    assert decision.rule_type is RuleType.RESOURCE_RULES
    assert decision.mode is AccessMode.TRANSITION
    assert "Enforced would deny" in decision.reason


def test_transition_falls_back_to_the_resource_firewall_denying(policy: Policy) -> None:
    decision = inbound(policy, "vault", "203.0.113.77")  # no NSP rule; not in resourceIpRules
    assert not decision.allowed and decision.would_deny
    assert decision.category is Category.PUBLIC_INBOUND_RESOURCE_DENIED
    assert decision.result_action is ResultAction.DENIED
    assert decision.rule_type is RuleType.RESOURCE_RULES


def test_transition_resource_firewall_sees_ipv4_mapped_callers(policy: Policy) -> None:
    assert inbound(policy, "vault", "::ffff:192.0.2.77").category is Category.PUBLIC_INBOUND_RESOURCE_ALLOWED


def test_transition_without_resource_rules_lets_everything_through(policy: Policy) -> None:
    decision = inbound(policy, "cosmos-open", "203.0.113.77")
    assert decision.allowed and decision.would_deny
    assert decision.category is Category.PUBLIC_INBOUND_RESOURCE_ALLOWED


def test_transition_public_network_access_disabled_denies(policy: Policy) -> None:
    decision = inbound(policy, "cosmos-closed", "203.0.113.77")
    assert not decision.allowed and decision.would_deny
    assert decision.category is Category.PUBLIC_INBOUND_RESOURCE_DENIED
    assert decision.result_action is ResultAction.DENIED


def test_transition_nsp_rules_still_allow_when_public_access_is_disabled(policy: Policy) -> None:
    decision = inbound(policy, "cosmos-closed", "10.1.2.3")
    assert decision.allowed and not decision.would_deny
    assert decision.category is Category.PUBLIC_INBOUND_PERIMETER_ALLOWED
    assert decision.matched_rule == "lab"


def test_audit_logs_a_denial_and_lets_it_through(policy: Policy) -> None:
    decision = inbound(policy, "search-audit", "203.0.113.77")
    assert decision.allowed and decision.would_deny
    assert decision.category is Category.PUBLIC_INBOUND_PERIMETER_DENIED  # the category Enforced would log
    assert decision.result_action is ResultAction.APPROVED  # what happened: it went through
    assert decision.mode is AccessMode.AUDIT
    assert decision.reason.startswith("Audit")


@pytest.mark.parametrize("resource", ["storage", "vault", "cosmos-open", "cosmos-closed", "search-audit"])
def test_every_mode_approves_what_a_rule_allows(policy: Policy, resource: str) -> None:
    decision = inbound(policy, resource, "10.1.2.3")
    assert decision.allowed and not decision.would_deny
    assert decision.category is Category.PUBLIC_INBOUND_PERIMETER_ALLOWED


# -- outbound -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "rule"), [
    ("login.microsoftonline.com", "out-login"),
    ("LOGIN.MicrosoftOnline.com.", "out-login"),  # normalised before matching
    ("acct.blob.core.windows.net", "out-blobs"),
    ("a.b.blob.core.windows.net", "out-blobs"),  # wildcard: any depth
    ("other.blob.core.windows.net", "out-blobs"),
])
def test_outbound_fqdn_rules_allow(policy: Policy, host: str, rule: str) -> None:
    decision = outbound(policy, "storage", host)
    assert decision.allowed and not decision.would_deny
    assert (decision.rule_type, decision.matched_rule) == (RuleType.FQDNS, rule)
    assert decision.category is Category.PUBLIC_OUTBOUND_PERIMETER_ALLOWED
    assert decision.direction is Direction.OUTBOUND


@pytest.mark.parametrize("host", [
    "blob.core.windows.net",  # wildcard: never the apex
    "example.com",
    "x.login.microsoftonline.com",  # exact rule: no subdomains
    "login.microsoftonline.com.evil.example",
    "other.example.net",  # a member of another perimeter: needs a rule like any public name
])
def test_outbound_enforced_denies_other_names(policy: Policy, host: str) -> None:
    decision = outbound(policy, "storage", host)
    assert not decision.allowed and decision.would_deny
    assert decision.category is Category.PUBLIC_OUTBOUND_PERIMETER_DENIED
    assert decision.result_action is ResultAction.DENIED


def test_outbound_to_a_member_of_the_same_perimeter_is_intra(policy: Policy) -> None:
    decision = outbound(policy, "storage", "KV1.vault.azure.net")
    assert decision.allowed
    assert (decision.rule_type, decision.traffic_type) == (RuleType.INTRA_PERIMETER, TrafficType.INTRA)
    assert decision.category is Category.OUTBOUND_ATTEMPT


def test_outbound_to_a_member_endpoint_by_ip_literal_is_intra(policy: Policy) -> None:
    decision = outbound(policy, "storage", "127.0.0.1", 18002)  # the vault's listener
    assert decision.allowed and decision.rule_type is RuleType.INTRA_PERIMETER
    assert not outbound(policy, "storage", "127.0.0.1", 18010).allowed  # p-other's listener


@pytest.mark.parametrize("host", [
    "93.184.216.34", "2130706433", "0x7f.1", "127.1", "[2001:db8::1]", "2001:db8::1", "10.1.2.3",
])
def test_outbound_ip_literals_are_denied(policy: Policy, host: str) -> None:
    decision = outbound(policy, "storage", host)
    assert not decision.allowed
    assert "IP-literal" in decision.reason
    assert decision.category is Category.PUBLIC_OUTBOUND_PERIMETER_DENIED


@pytest.mark.parametrize(("sni", "host_header", "allowed"), [
    ("login.microsoftonline.com", None, True),
    ("Login.MicrosoftOnline.com.", None, True),
    (None, "login.microsoftonline.com:443", True),
    (None, "LOGIN.microsoftonline.com", True),
    ("evil.example", None, False),
    (None, "evil.example", False),
    (None, "evil.example:443", False),
    ("login.microsoftonline.com", "evil.example", False),
    ("", None, False),  # an empty SNI is not the destination
])
def test_outbound_sni_and_host_must_match_the_destination(policy: Policy, sni: str | None,
                                                          host_header: str | None, allowed: bool) -> None:
    decision = outbound(policy, "storage", "login.microsoftonline.com", sni=sni, host_header=host_header)
    assert decision.allowed is allowed
    if not allowed:
        assert "differs from the destination" in decision.reason
        assert decision.category is Category.PUBLIC_OUTBOUND_PERIMETER_DENIED


def test_outbound_transition_is_never_blocked_by_resource_rules(policy: Policy) -> None:
    decision = outbound(policy, "vault", "example.com")
    assert decision.allowed and decision.would_deny
    assert decision.category is Category.PUBLIC_OUTBOUND_RESOURCE_ALLOWED
    assert decision.rule_type is RuleType.RESOURCE_RULES


def test_outbound_transition_with_public_access_disabled_is_not_blocked(policy: Policy) -> None:
    """publicNetworkAccess governs inbound access to the resource, not what it calls."""
    assert outbound(policy, "cosmos-closed", "example.com").allowed


def test_outbound_audit_is_logged_as_denied_and_let_through(policy: Policy) -> None:
    decision = outbound(policy, "search-audit", "example.com")
    assert decision.allowed and decision.would_deny
    assert decision.category is Category.PUBLIC_OUTBOUND_PERIMETER_DENIED
    assert decision.result_action is ResultAction.APPROVED


def test_outbound_unattributed_caller_is_denied(policy: Policy) -> None:
    decision = outbound(policy, None, "login.microsoftonline.com")
    assert not decision.allowed and decision.would_deny
    assert (decision.mode, decision.resource, decision.perimeter, decision.profile) == (None, None, None, None)
    assert decision.category is Category.PUBLIC_OUTBOUND_PERIMETER_DENIED
    assert "not a resource of any perimeter" in decision.reason


@pytest.mark.parametrize("resource", ["storage", "vault", "search-audit"])
def test_outbound_blocked_destination_is_denied_in_every_mode(policy: Policy, resource: str) -> None:
    guard = "login.microsoftonline.com resolves to 169.254.169.254, which is in settings.blockedDestinationPrefixes"
    decision = outbound(policy, resource, "login.microsoftonline.com", refused_by_guard=guard)
    assert not decision.allowed and decision.would_deny
    assert decision.result_action is ResultAction.DENIED
    assert decision.category is Category.PUBLIC_OUTBOUND_PERIMETER_DENIED
    assert guard in decision.reason and "refused in every mode" in decision.reason


def test_outbound_attribution_by_listener_and_source(policy: Policy) -> None:
    assert attribute_outbound(policy, 13128, "127.0.0.11") == "storage"
    assert attribute_outbound(policy, 13128, "10.50.0.3") == "vault"
    assert attribute_outbound(policy, 13128, "::ffff:10.50.0.3") == "vault"
    assert attribute_outbound(policy, 13128, "203.0.113.1") is None  # nobody: unattributed
    assert attribute_outbound(policy, 13129, "203.0.113.1") == "search-audit"  # dedicated listener
    assert attribute_outbound(policy, 9999, "127.0.0.11") is None  # not a forward-proxy port


# -- fail closed ----------------------------------------------------------------------------------------------------


def _boom(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("index exploded")


@pytest.fixture
def fresh_policy() -> Policy:
    """A policy of its own, so monkeypatching its indexes cannot leak into other tests."""
    return compile_policy(parse_config_text(CONFIG, "engine.yaml"), generation=GENERATION)


def test_inbound_error_denies_in_enforced(fresh_policy: Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = fresh_policy.association("storage")
    assert compiled is not None
    monkeypatch.setattr(compiled.inbound_prefixes, "lookup", _boom)
    decision = inbound(fresh_policy, "storage", "10.1.2.3")  # a source the rules would allow
    assert not decision.allowed and decision.would_deny
    assert decision.error == "RuntimeError: index exploded"
    assert decision.category is Category.PUBLIC_INBOUND_PERIMETER_DENIED
    assert decision.result_action is ResultAction.DENIED
    assert "fail closed" in decision.reason
    assert (decision.resource, decision.mode) == ("storage", AccessMode.ENFORCED)


@pytest.mark.parametrize(("resource", "mode"), [("vault", AccessMode.TRANSITION),
                                                ("cosmos-closed", AccessMode.TRANSITION),
                                                ("search-audit", AccessMode.AUDIT)])
def test_inbound_error_is_not_blocked_in_transition_and_audit(fresh_policy: Policy, monkeypatch: pytest.MonkeyPatch,
                                                              resource: str, mode: AccessMode) -> None:
    compiled = fresh_policy.association(resource)
    assert compiled is not None
    monkeypatch.setattr(compiled.inbound_prefixes, "lookup", _boom)
    decision = inbound(fresh_policy, resource, "203.0.113.9")
    assert decision.allowed and decision.would_deny
    assert decision.mode is mode
    assert decision.error == "RuntimeError: index exploded"
    assert f"not blocked in {mode.value}" in decision.reason


def test_error_in_a_shared_index_fails_closed(fresh_policy: Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fresh_policy.member_sources, "lookup_all", _boom)
    assert not inbound(fresh_policy, "storage", "10.1.2.3").allowed
    assert inbound(fresh_policy, "vault", "10.1.2.3").allowed


def test_outbound_error_fails_closed_in_enforced_only(fresh_policy: Policy,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("storage", "vault", "search-audit"):
        compiled = fresh_policy.association(name)
        assert compiled is not None
        monkeypatch.setattr(compiled.outbound_fqdns, "lookup", _boom)
    enforced = outbound(fresh_policy, "storage", "login.microsoftonline.com")
    assert not enforced.allowed and enforced.error == "RuntimeError: index exploded"
    assert enforced.category is Category.PUBLIC_OUTBOUND_PERIMETER_DENIED
    assert outbound(fresh_policy, "vault", "login.microsoftonline.com").allowed
    assert outbound(fresh_policy, "search-audit", "login.microsoftonline.com").allowed


def test_outbound_error_for_an_unattributed_caller_fails_closed(fresh_policy: Policy,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fresh_policy.member_fqdns, "lookup", _boom)
    assert not outbound(fresh_policy, "storage", "login.microsoftonline.com").allowed
    assert outbound(fresh_policy, "vault", "login.microsoftonline.com").allowed


def test_bad_destination_name_fails_closed_in_enforced(policy: Policy) -> None:
    """A destination no DNS name could be (``a..b``) raises inside evaluation: Enforced denies."""
    decision = outbound(policy, "storage", "bad..name.example")
    assert not decision.allowed
    assert outbound(policy, "vault", "bad..name.example").allowed


# -- immutability ---------------------------------------------------------------------------------------------------


def test_decisions_are_immutable(policy: Policy) -> None:
    decision = inbound(policy, "storage", "192.0.2.55")
    assert dataclasses.is_dataclass(decision)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.allowed = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.category = Category.PUBLIC_INBOUND_PERIMETER_ALLOWED  # type: ignore[misc]


def test_facts_and_policy_are_immutable(policy: Policy) -> None:
    facts = InboundFacts(resource="storage", source_ip="10.0.0.1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.source_ip = "10.0.0.2"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.generation = 8  # type: ignore[misc]


def test_same_facts_same_decision(policy: Policy) -> None:
    first = inbound(policy, "vault", "203.0.113.77")
    second = inbound(policy, "vault", "203.0.113.77")
    assert first == second


# -- the shipped examples decide as their comments say --------------------------------------------------------------


def _example_policy(name: str) -> Policy:
    return compile_policy(load_config(REPO / "config" / "examples" / name), generation=1)


def test_example_azurite_storage_decisions() -> None:
    policy = _example_policy("azurite-storage.yaml")
    assert inbound(policy, "devstore-assoc", "127.0.0.1").allowed
    assert inbound(policy, "devstore-assoc", "192.0.2.1", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee").allowed
    assert not inbound(policy, "devstore-assoc", "192.0.2.1").allowed
    assert attribute_outbound(policy, 3128, "127.0.0.2") == "devstore-assoc"
    assert outbound(policy, "devstore-assoc", "mykv.vault.azure.net").allowed
    assert not outbound(policy, "devstore-assoc", "example.com").allowed


def test_example_transition_keyvault_decisions() -> None:
    policy = _example_policy("transition-keyvault.yaml")
    ok = inbound(policy, "kv-assoc", "127.0.0.1")
    assert ok.allowed and ok.category is Category.PUBLIC_INBOUND_RESOURCE_ALLOWED
    assert not inbound(policy, "kv-assoc", "203.0.113.1").allowed
    assert inbound(policy, "kv-assoc", "10.20.0.9").category is Category.PRIVATE_INBOUND_ALLOWED


def test_example_multi_perimeter_decisions() -> None:
    policy = _example_policy("multi-perimeter.yaml")
    intra = inbound(policy, "data-keyvault", "127.0.0.11")  # the storage account fetching its key
    assert intra.category is Category.INTRA_PERIMETER_INBOUND_ALLOWED
    cross = inbound(policy, "data-storage", "127.0.0.21")  # the search indexer reading blobs
    assert cross.category is Category.CROSS_PERIMETER_INBOUND_ALLOWED and cross.matched_rule == "allow-apps-perimeter"
    audit = inbound(policy, "data-keyvault", "192.0.2.1")
    assert audit.allowed and audit.would_deny and audit.mode is AccessMode.AUDIT
    assert not inbound(policy, "data-storage", "192.0.2.1").allowed
    assert not inbound(policy, "apps-search", "127.0.0.11").allowed  # no rule in nsp-apps admits nsp-data
    assert attribute_outbound(policy, 3129, "127.0.0.21") == "apps-search"
    assert outbound(policy, "apps-search", "stdata.blob.core.windows.net").allowed
    assert outbound(policy, "data-storage", "kv-data.vault.azure.net").category is Category.OUTBOUND_ATTEMPT


# -- effective client address ---------------------------------------------------------------------------------------

TRUSTED: PrefixIndex[bool] = PrefixIndex([(ipaddress.ip_network("10.0.0.0/24"), True),
                                          (ipaddress.ip_network("fd00::/8"), True)])


@pytest.mark.parametrize(("peer", "forwarded", "expected"), [
    # an untrusted peer's header is ignored
    ("198.51.100.1", ["203.0.113.9"], "198.51.100.1"),
    # trusted peer: the right-most address that is not itself a trusted proxy
    ("10.0.0.1", ["203.0.113.9"], "203.0.113.9"),
    ("10.0.0.1", ["192.0.2.66, 203.0.113.9"], "203.0.113.9"),  # 192.0.2.66 may be forged by the client
    ("10.0.0.1", ["203.0.113.9, 10.0.0.2"], "203.0.113.9"),  # skip the trusted hop
    ("10.0.0.1", ["192.0.2.66", "203.0.113.9, 10.0.0.2"], "203.0.113.9"),  # several header lines, in order
    ("10.0.0.1", ["203.0.113.9:51234"], "203.0.113.9"),  # with a port
    ("10.0.0.1", ["[2001:db8::5]:443"], "2001:db8::5"),
    ("10.0.0.1", ["2001:db8::5"], "2001:db8::5"),
    ("fd00::1", ["203.0.113.9"], "203.0.113.9"),  # IPv6 trusted proxy
    ("::ffff:10.0.0.1", ["203.0.113.9"], "203.0.113.9"),  # IPv4-mapped trusted proxy
    # malformed chain: believe only the socket
    ("10.0.0.1", ["203.0.113.9, garbage"], "10.0.0.1"),
    ("10.0.0.1", ["unknown"], "10.0.0.1"),
    ("10.0.0.1", ["999.1.1.1"], "10.0.0.1"),
    # garbage left of the first untrusted hop is never reached
    ("10.0.0.1", ["garbage, 203.0.113.9"], "203.0.113.9"),
    # only trusted hops, or no header: the peer
    ("10.0.0.1", ["10.0.0.2, 10.0.0.3"], "10.0.0.2"),  # every hop trusted: the left-most one began the chain
    ("10.0.0.1", [], "10.0.0.1"),
    ("10.0.0.1", ["", " , "], "10.0.0.1"),
])
def test_effective_client_ip(peer: str, forwarded: list[str], expected: str) -> None:
    assert effective_client_ip(peer, forwarded, TRUSTED) == expected


def test_without_trusted_proxies_the_socket_is_the_caller() -> None:
    assert effective_client_ip("10.0.0.1", ["203.0.113.9"], PrefixIndex()) == "10.0.0.1"


def test_effective_client_ip_with_an_unparseable_peer() -> None:
    assert effective_client_ip("not-an-ip", ["203.0.113.9"], TRUSTED) == "not-an-ip"


# -- nsp-proxy explain ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("explain") / "engine.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def test_explain_allowed_exits_0(config_file: Path) -> None:
    result = run_cli("explain", "--config", str(config_file), "--resource", "storage", "--source-ip", "10.1.2.3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ALLOWED  Inbound  NspPublicInboundPerimeterRulesAllowed")
    assert "lab" in result.stdout


def test_explain_denied_exits_3(config_file: Path) -> None:
    result = run_cli("explain", "--config", str(config_file), "--resource", "storage", "--source-ip", "192.0.2.55")
    assert result.returncode == 3
    assert result.stdout.startswith("DENIED  Inbound  NspPublicInboundPerimeterRulesDenied")


def test_explain_transition_would_deny_exits_0(config_file: Path) -> None:
    result = run_cli("explain", "-c", str(config_file), "-r", "vault", "--source-ip", "192.0.2.77")
    assert result.returncode == 0
    assert "NspPublicInboundResourceRulesAllowed" in result.stdout
    assert "enforced would deny: yes" in result.stdout


def test_explain_outbound_json(config_file: Path) -> None:
    result = run_cli("explain", "-c", str(config_file), "-r", "storage", "--destination", "example.com:443",
                     "--json")
    assert result.returncode == 3
    data = json.loads(result.stdout)
    assert data["decision"]["category"] == "NspPublicOutboundPerimeterRulesDenied"
    assert data["decision"]["allowed"] is False
    record = data["accessLogRecord"]
    assert record["Category"] == "NspPublicOutboundPerimeterRulesDenied"
    assert record["ResultAction"] == "Denied"
    assert record["DestinationFqdn"] == "example.com"
    assert record["DestinationPort"] == "443"


def test_explain_subscription_by_resource_id(config_file: Path) -> None:
    result = run_cli("explain", "-c", str(config_file), "-r", rid("Microsoft.Storage/storageAccounts", "st1"),
                     "--source-ip", "192.0.2.55", "--subscription", f"/subscriptions/{CI_SUB}")
    assert result.returncode == 0
    assert "ci" in result.stdout


def test_explain_ignores_the_subscription_where_the_proxy_would(tmp_path: Path) -> None:
    """local.trustSubscriptionHeader: false: the proxy ignores a stated subscription, and so does explain."""
    path = tmp_path / "untrusted.yaml"
    path.write_text(CONFIG.replace("          privateEndpointPrefixes: [10.200.0.0/16]\n",
                                   "          privateEndpointPrefixes: [10.200.0.0/16]\n"
                                   "          trustSubscriptionHeader: false\n", 1), encoding="utf-8")
    result = run_cli("explain", "-c", str(path), "-r", "storage", "--source-ip", "192.0.2.55",
                     "--subscription", CI_SUB)
    assert result.returncode == 3, result.stdout
    assert "trustSubscriptionHeader: false" in result.stderr


@pytest.mark.parametrize("args", [
    ("--source-ip", "10.1.2.3"),  # several resources: --resource is required
    ("-r", "nope", "--source-ip", "10.1.2.3"),  # unknown resource
    ("-r", "storage"),  # neither direction
    ("-r", "storage", "--source-ip", "10.1.2.3", "--destination", "example.com"),  # both
    ("-r", "storage", "--destination", "example.com:99999"),  # bad port
    ("-r", "storage", "--destination", "bad..name.example"),  # no host name
    ("-r", "storage", "--source-ip", "not-an-ip"),
    ("-r", "storage", "--source-ip", "10.1.2.3", "--subscription", "bogus"),
    ("-r", "storage", "--source-ip", "10.1.2.3", "--sni", "example.com"),  # outbound option, inbound request
    ("-r", "storage", "--destination", "example.com", "--subscription", CI_SUB),  # and the other way round
])
def test_explain_bad_input_exits_2(config_file: Path, args: tuple[str, ...]) -> None:
    result = run_cli("explain", "-c", str(config_file), *args)
    assert result.returncode == 2
    assert result.stderr


def test_explain_invalid_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("perimeters: [{name: p1, profiles: [{name: f, accessRules: [{name: r, direction: Inbound}]}]}]\n",
                    encoding="utf-8")
    result = run_cli("explain", "-c", str(path), "--source-ip", "10.0.0.1")
    assert result.returncode == 2
    assert "configuration refused" in result.stderr and "bad.yaml" in result.stderr


def test_malformed_destination_is_a_plain_denial_not_an_error(policy: Policy) -> None:
    """``bad..name`` cannot be a DNS name: no rule can allow it, and it is not an engine failure."""
    decision = outbound(policy, "storage", "bad..name")
    assert decision.error is None
    assert "invalid destination" in decision.reason


def test_made_by_is_replace_with_the_policy(policy: Policy) -> None:
    decision = decide_inbound(policy, InboundFacts(resource="nope", source_ip="192.0.2.1"))
    stamped = decision.made_by(policy)
    assert stamped == dataclasses.replace(decision, policy=policy) and stamped.policy is policy
    assert decision.policy is None and stamped is not decision
    with pytest.raises(dataclasses.FrozenInstanceError):
        stamped.allowed = True  # type: ignore[misc]

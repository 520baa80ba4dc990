"""Synthetic access-log records for the log tools' tests and for ``bench/tools.py``: made by the real engine and
the real record builder from one small configuration, so they have exactly the shape the proxy writes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import yaml

from proxy.config.loader import parse_config_text
from proxy.decision.engine import decide_inbound, decide_outbound
from proxy.decision.facts import InboundFacts, OutboundFacts
from proxy.policy.compiled import Policy, compile_policy
from proxy.records.accesslog import build_record

STORE = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Storage/" \
        "storageAccounts/"
CONFIG: dict[str, Any] = {"perimeters": [{
    "name": "p1", "location": "westeurope",
    "profiles": [{"name": "prof", "accessRules": [
        {"name": "office", "direction": "Inbound", "addressPrefixes": ["203.0.113.0/24"]},
        {"name": "api", "direction": "Outbound", "fullyQualifiedDomainNames": ["api.allowed.test"]}]}],
    "resourceAssociations": [
        {"name": "learn", "privateLinkResource": {"id": STORE + "learn"}, "profile": "prof", "accessMode": "Learning",
         "local": {"listen": "127.0.0.1:18080", "upstream": "builtin:demo", "outboundListen": "127.0.0.1:13128"}},
        {"name": "strict", "privateLinkResource": {"id": STORE + "strict"}, "profile": "prof",
         "accessMode": "Enforced", "local": {"listen": "127.0.0.1:18081", "upstream": "builtin:demo"}}]}]}
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def policy(config: dict[str, Any] | None = None) -> Policy:
    """``config`` (default ``CONFIG``) compiled as generation 1."""
    return compile_policy(parse_config_text(yaml.safe_dump(config or CONFIG), "<sample>"), generation=1)


def record(facts: InboundFacts | OutboundFacts, when: datetime = T0, config: dict[str, Any] | None = None,
           compiled: Policy | None = None) -> dict[str, Any]:
    """The record the proxy writes for ``facts`` under ``config`` (default ``CONFIG``; or an already
    ``compiled`` policy, to make many records quickly)."""
    compiled = compiled or policy(config)
    decision = decide_inbound(compiled, facts) if isinstance(facts, InboundFacts) else decide_outbound(compiled, facts)
    source = {"subscription": facts.subscription} if isinstance(facts, InboundFacts) else None
    return build_record(decision, facts, compiled, when=when, source_parameters=source)


def inbound(ip: str, subscription: str | None = None, resource: str = "learn") -> InboundFacts:
    return InboundFacts(resource=resource, source_ip=ip, subscription=subscription)


def outbound(host: str, guard: str | None = None, resource: str | None = "learn") -> OutboundFacts:
    return OutboundFacts(resource=resource, source_ip="127.0.0.1", destination_host=host, destination_port=443,
                         refused_by_guard=guard)

"""The decision engine: facts in, one rule evaluation, the mode chooses the outcome.

Evaluation (``_evaluate_*``) answers "what allows this, if anything" without looking at the mode; ``_outcome``
turns that answer into a ``Decision`` for the association's mode. This keeps Transition and Audit honest: they
log exactly what Enforced would have decided, because it is the same evaluation.

Any exception while deciding yields a denial for Enforced (and for callers no association claims), and an
allowed-but-flagged decision for Transition/Audit, which never block (brief: "fails closed").
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from proxy.decision.facts import Decision, InboundFacts, OutboundFacts
from proxy.model import AccessMode, Association, Direction, Perimeter
from proxy.names import addresses
from proxy.names.hostport import same_host
from proxy.names.normalize import is_ip_literal, normalize_hostname, normalize_subscription
from proxy.policy.compiled import CompiledAssociation, Policy
from proxy.telemetry import Category, ResultAction, RuleType, TrafficType


@dataclass(frozen=True)
class _Verdict:
    """The mode-independent result of evaluating the rules."""

    allowed_by: RuleType  # RuleType.NONE: nothing allows it
    traffic_type: TrafficType
    matched_rule: str | None
    reason: str
    source_member: str | None = None  # inbound: the association a member caller is (intra or cross-perimeter)


def decide_inbound(policy: Policy, facts: InboundFacts) -> Decision:
    compiled = policy.association(facts.resource)
    try:
        if compiled is None:
            raise LookupError(f"no resource association named {facts.resource!r}" if facts.resource
                              else "no resource association claims this listener")
        return _outcome(policy, compiled, Direction.INBOUND, _evaluate_inbound(policy, compiled, facts), facts)
    except Exception as exc:  # noqa: BLE001 - fail closed
        return _failure(policy, compiled, Direction.INBOUND, exc)


def decide_outbound(policy: Policy, facts: OutboundFacts) -> Decision:
    compiled = policy.association(facts.resource)
    try:
        if compiled is None:
            return _unattributed(policy, facts)
        if facts.refused_by_guard:
            return _guarded_destination(policy, compiled, facts)
        return _outcome(policy, compiled, Direction.OUTBOUND, _evaluate_outbound(policy, compiled, facts), facts)
    except Exception as exc:  # noqa: BLE001 - fail closed
        return _failure(policy, compiled, Direction.OUTBOUND, exc)


def attribute_outbound(policy: Policy, listen_port: int, source_ip: str) -> str | None:
    """Which association is speaking on forward-proxy port ``listen_port`` from ``source_ip``."""
    listener = policy.outbound_ports.get(listen_port)
    if listener is None:
        return None
    return listener.by_source.lookup(_address(source_ip)) or listener.dedicated


# -- evaluation ----------------------------------------------------------------------------------------------


def _evaluate_inbound(policy: Policy, compiled: CompiledAssociation, facts: InboundFacts) -> _Verdict:
    source = _address(facts.source_ip)
    if source is None:
        return _Verdict(RuleType.NONE, TrafficType.PUBLIC, None, f"source address {facts.source_ip!r} is not an IP")
    if compiled.private_endpoints.lookup(source):
        return _Verdict(RuleType.PRIVATE_ENDPOINT, TrafficType.PRIVATE, None, "private endpoint traffic")
    own_perimeter = compiled.perimeter.name
    members = list(policy.member_sources.lookup_all(source))
    for perimeter, member in members:
        if perimeter.name == own_perimeter:
            return _Verdict(RuleType.INTRA_PERIMETER, TrafficType.INTRA, None,
                            f"caller is {member!r}, a member of perimeter {own_perimeter!r}", member)
    rule = compiled.inbound_prefixes.lookup(source)
    if rule:
        return _Verdict(RuleType.ADDRESS_PREFIXES, TrafficType.PUBLIC, rule, f"source {source} matches rule {rule!r}")
    subscription = _subscription(facts.subscription)
    if subscription and (rule := compiled.inbound_subscriptions.get(subscription)):
        return _Verdict(RuleType.SUBSCRIPTIONS, TrafficType.PUBLIC, rule,
                        f"subscription {subscription} matches rule {rule!r}")
    for perimeter, member in members:
        rule = _perimeter_rule(compiled.inbound_perimeters, perimeter)
        if rule:
            return _Verdict(RuleType.PERIMETERS, TrafficType.CROSS, rule,
                            f"caller {member!r} is in perimeter {perimeter.name!r}, allowed by rule {rule!r}",
                            member)
    said = f" or subscription {subscription}" if subscription else ""
    return _Verdict(RuleType.NONE, TrafficType.PUBLIC, None, f"no inbound rule allows source {source}{said}")


def _evaluate_outbound(policy: Policy, compiled: CompiledAssociation, facts: OutboundFacts) -> _Verdict:
    host = facts.destination_host.strip().strip("[]")
    if is_ip_literal(host):
        member = _member_endpoint(policy, host, facts.destination_port)
        if member and (verdict := _member_destination(policy, compiled, member)):
            return verdict
        return _Verdict(RuleType.NONE, TrafficType.PUBLIC, None,
                        f"IP-literal destination {host}: outbound rules allow FQDNs only")
    try:
        name = normalize_hostname(host)
    except ValueError as exc:
        return _Verdict(RuleType.NONE, TrafficType.PUBLIC, None, f"invalid destination: {exc}")
    for label, other in (("Host header", facts.host_header), ("TLS SNI", facts.sni), *facts.named_hosts):
        if not same_host(other, name, with_port=label != "TLS SNI"):
            return _Verdict(RuleType.NONE, TrafficType.PUBLIC, None,
                            f"{label} {other!r} differs from the destination {name!r}")
    member = policy.member_fqdns.lookup(name)
    if member and (verdict := _member_destination(policy, compiled, member)):
        return verdict
    rule = compiled.outbound_fqdns.lookup(name)
    if rule:
        return _Verdict(RuleType.FQDNS, TrafficType.PUBLIC, rule, f"{name} matches rule {rule!r}")
    return _Verdict(RuleType.NONE, TrafficType.PUBLIC, None, f"no outbound rule allows {name}")


def _member_destination(policy: Policy, compiled: CompiledAssociation, member: Association) -> _Verdict | None:
    """A destination that is a member of this perimeter (intra) or of a perimeter linked to it (cross: the
    link's generated Outbound rule); None for a member of an unlinked perimeter (public rules decide)."""
    if member.perimeter == compiled.perimeter.name:
        return _Verdict(RuleType.INTRA_PERIMETER, TrafficType.INTRA, None,
                        f"destination is {member.name!r}, a member of the perimeter")
    target = policy.association(member.name)
    rule = _perimeter_rule(compiled.outbound_perimeters, target.perimeter) if target else None
    if rule:
        return _Verdict(RuleType.PERIMETERS, TrafficType.CROSS, rule,
                        f"destination is {member.name!r}, a member of linked perimeter {member.perimeter!r}, "
                        f"allowed by rule {rule!r}")
    return None


def _perimeter_rule(rules: dict[str, str], perimeter: Perimeter) -> str | None:
    """The ``networkSecurityPerimeters`` rule naming ``perimeter`` by resource ID, name or GUID."""
    for key in (perimeter.resource_id.lower(), perimeter.name.lower(), perimeter.guid):
        if key and key in rules:
            return rules[key]
    return None


# -- outcome by mode -----------------------------------------------------------------------------------------

_ALLOWED = {
    (Direction.INBOUND, RuleType.PRIVATE_ENDPOINT): Category.PRIVATE_INBOUND_ALLOWED,
    (Direction.INBOUND, RuleType.INTRA_PERIMETER): Category.INTRA_PERIMETER_INBOUND_ALLOWED,
    (Direction.INBOUND, RuleType.PERIMETERS): Category.CROSS_PERIMETER_INBOUND_ALLOWED,
    (Direction.INBOUND, RuleType.ADDRESS_PREFIXES): Category.PUBLIC_INBOUND_PERIMETER_ALLOWED,
    (Direction.INBOUND, RuleType.SUBSCRIPTIONS): Category.PUBLIC_INBOUND_PERIMETER_ALLOWED,
    (Direction.OUTBOUND, RuleType.INTRA_PERIMETER): Category.OUTBOUND_ATTEMPT,
    (Direction.OUTBOUND, RuleType.FQDNS): Category.PUBLIC_OUTBOUND_PERIMETER_ALLOWED,
    (Direction.OUTBOUND, RuleType.PERIMETERS): Category.CROSS_PERIMETER_OUTBOUND_ALLOWED,
}
_PERIMETER_DENIED = {
    Direction.INBOUND: Category.PUBLIC_INBOUND_PERIMETER_DENIED,
    Direction.OUTBOUND: Category.PUBLIC_OUTBOUND_PERIMETER_DENIED,
}
_RESOURCE_RULES = {
    (Direction.INBOUND, True): Category.PUBLIC_INBOUND_RESOURCE_ALLOWED,
    (Direction.INBOUND, False): Category.PUBLIC_INBOUND_RESOURCE_DENIED,
    (Direction.OUTBOUND, True): Category.PUBLIC_OUTBOUND_RESOURCE_ALLOWED,
    (Direction.OUTBOUND, False): Category.PUBLIC_OUTBOUND_RESOURCE_DENIED,
}


def _outcome(
    policy: Policy,
    compiled: CompiledAssociation,
    direction: Direction,
    verdict: _Verdict,
    facts: InboundFacts | OutboundFacts,
) -> Decision:
    assoc = compiled.association
    mode = assoc.mode
    source = compiled if direction is Direction.OUTBOUND else policy.association(verdict.source_member)
    common = {
        "direction": direction, "mode": mode, "traffic_type": verdict.traffic_type, "profile": compiled.profile.name,
        "resource": assoc.name, "perimeter": compiled.perimeter.name, "generation": policy.generation,
        "matched_rule": verdict.matched_rule,
        **_source_fields(source),
    }
    if verdict.allowed_by is not RuleType.NONE:
        return Decision(allowed=True, would_deny=False, category=_ALLOWED[(direction, verdict.allowed_by)],
                        result_action=ResultAction.APPROVED, rule_type=verdict.allowed_by, reason=verdict.reason,
                        **common)
    if mode is AccessMode.ENFORCED:
        return Decision(allowed=False, would_deny=True, category=_PERIMETER_DENIED[direction],
                        result_action=ResultAction.DENIED, rule_type=RuleType.NONE,
                        reason=f"Enforced: {verdict.reason}", **common)
    if mode is AccessMode.AUDIT:
        # Audit logs the category Enforced would, but ResultAction says what happened: it went through.
        return Decision(allowed=True, would_deny=True, category=_PERIMETER_DENIED[direction],
                        result_action=ResultAction.APPROVED, rule_type=RuleType.NONE,
                        reason=f"Audit (not blocked): {verdict.reason}", **common)
    resource_allows = _resource_rules_allow(compiled, direction, facts)
    return Decision(
        allowed=resource_allows, would_deny=True, category=_RESOURCE_RULES[(direction, resource_allows)],
        result_action=ResultAction.APPROVED if resource_allows else ResultAction.DENIED,
        rule_type=RuleType.RESOURCE_RULES,
        reason=f"Transition: {verdict.reason}; the resource's own network rules "
               f"{'allow' if resource_allows else 'deny'} it (Enforced would deny)",
        **common,
    )


def _resource_rules_allow(compiled: CompiledAssociation, direction: Direction, facts: object) -> bool:
    """The resource's own settings, which Transition mode falls back to (FACTS.md, Decisions, transition table).

    Outbound, PaaS resources have no firewall of their own, so they allow, unless ``publicNetworkAccess`` is
    SecuredByPerimeter: then only the perimeter's rules admit outbound traffic too. Inbound,
    ``publicNetworkAccess`` must be Enabled and, if the resource lists IP rules, the caller must match one.
    """
    local = compiled.association.local
    if direction is Direction.OUTBOUND:
        return not local.secured_by_perimeter
    if not local.public_network_access:
        return False
    if not compiled.resource_ip_rules:
        return True
    return bool(compiled.resource_ip_rules.lookup(_address(getattr(facts, "source_ip", ""))))


def _unattributed(policy: Policy, facts: OutboundFacts) -> Decision:
    return Decision(
        direction=Direction.OUTBOUND, allowed=False, would_deny=True,
        category=Category.PUBLIC_OUTBOUND_PERIMETER_DENIED, result_action=ResultAction.DENIED, mode=None,
        traffic_type=TrafficType.PUBLIC, rule_type=RuleType.NONE, matched_rule=None, profile=None, resource=None,
        perimeter=None, generation=policy.generation,
        reason=f"caller {facts.source_ip} is not a resource of any perimeter on this listener "
               "(set outboundSourcePrefixes or outboundListen)",
    )


def _guarded_destination(policy: Policy, compiled: CompiledAssociation, facts: OutboundFacts) -> Decision:
    """nsp-proxy's own guards (``blockedDestinationPrefixes``: metadata endpoints, DNS rebinding to private
    ranges; a destination that is the proxy itself) are not NSP rules and refuse in every mode."""
    return Decision(
        direction=Direction.OUTBOUND, allowed=False, would_deny=True,
        category=Category.PUBLIC_OUTBOUND_PERIMETER_DENIED, result_action=ResultAction.DENIED,
        mode=compiled.association.mode, traffic_type=TrafficType.PUBLIC, rule_type=RuleType.NONE,
        matched_rule=None, profile=compiled.profile.name, resource=compiled.association.name,
        perimeter=compiled.perimeter.name, generation=policy.generation, **_source_fields(compiled),
        reason=f"{facts.refused_by_guard} (refused in every mode)",
    )


def _failure(policy: Policy, compiled: CompiledAssociation | None, direction: Direction, exc: Exception) -> Decision:
    mode = compiled.association.mode if compiled else None
    blocks = mode in (None, AccessMode.ENFORCED)
    return Decision(
        direction=direction, allowed=not blocks, would_deny=True, category=_PERIMETER_DENIED[direction],
        result_action=ResultAction.DENIED if blocks else ResultAction.APPROVED, mode=mode,
        traffic_type=TrafficType.PUBLIC, rule_type=RuleType.NONE,
        matched_rule=None, profile=compiled.profile.name if compiled else None,
        resource=compiled.association.name if compiled else None,
        perimeter=compiled.perimeter.name if compiled else None, generation=policy.generation,
        **_source_fields(compiled if direction is Direction.OUTBOUND else None),
        reason=f"error while deciding ({'denied: fail closed' if blocks else 'not blocked in ' + mode.value})",
        error=f"{type(exc).__name__}: {exc}",
    )


def _source_fields(source: CompiledAssociation | None) -> dict[str, str]:
    """The Decision fields naming the caller as a perimeter member (empty for a public caller)."""
    return {"source_perimeter_guid": source.perimeter.guid if source else "",
            "source_resource_id": source.association.resource_id if source else ""}


# -- helpers -------------------------------------------------------------------------------------------------


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _member_endpoint(policy: Policy, host: str, port: int) -> Association | None:
    """The member whose own listener ``host:port`` is, in any spelling of the address (``::ffff:127.0.0.1``,
    ``2130706433``); listener keys are canonical (``proxy.policy.compiled``)."""
    try:
        address = addresses.parse(host)
    except ValueError:
        return None
    for form in addresses.forms(address):
        member = policy.member_endpoints.get((str(form), port))
        if member is not None:
            return member
    return None


def _subscription(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return normalize_subscription(value)
    except ValueError:
        return None

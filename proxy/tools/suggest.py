"""``nsp-proxy suggest``: the fewest access rules that would let every would-deny record through, per profile.

One pass over the log keeps only what rules are made of (distinct sources, subscriptions and names per
profile, each with a counter), so memory grows with the distinct values, not the records, and is bounded by
``MAX_DISTINCT`` per profile (what is beyond it is reported, not silently dropped). Records no access rule
could ever let through (nsp-proxy's own guards, wire refusals, IP-literal or mismatched outbound destinations,
callers that are no perimeter resource) are never suggested: they are listed with the reason.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from proxy.config.perimeter_reader import MAX_RULE_ELEMENTS_PER_PROFILE
from proxy.decision.facts import Decision
from proxy.model import Config
from proxy.names.normalize import is_ip_literal, normalize_hostname, normalize_subscription
from proxy.policy.compiled import Policy, compile_policy
from proxy.tools import aggregate
from proxy.tools.common import Evidence, association_of, decide
from proxy.tools.logread import Entry

MAX_DISTINCT = 100_000  # distinct values kept per profile and kind (bounded memory on any log)
ADDRESSES, SUBSCRIPTIONS, FQDNS = "addressPrefixes", "subscriptions", "fullyQualifiedDomainNames"


@dataclass(frozen=True)
class Options:
    max_prefix_v4: int = aggregate.DEFAULT_MAX_PREFIX_V4
    max_prefix_v6: int = aggregate.DEFAULT_MAX_PREFIX_V6
    wildcards: int = 0  # 0: exact names only
    limit: int = MAX_RULE_ELEMENTS_PER_PROFILE
    resource: str | None = None  # only this association


@dataclass
class ProfileSuggestion:
    perimeter: str
    profile: str
    associations: set[str] = field(default_factory=set)
    existing_elements: int = 0
    seen: dict[str, dict[str, Evidence]] = field(default_factory=lambda: {ADDRESSES: {}, SUBSCRIPTIONS: {},
                                                                          FQDNS: {}})
    overflow: int = 0  # records whose value was not kept (MAX_DISTINCT reached)
    elements: dict[str, dict[str, Evidence]] = field(default_factory=dict)  # the suggestion, by kind
    did_not_fit: list[tuple[str, str, Evidence]] = field(default_factory=list)
    widened_to: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.perimeter, self.profile


@dataclass
class Suggestions:
    profiles: dict[tuple[str, str], ProfileSuggestion] = field(default_factory=dict)
    not_suggested: dict[str, Evidence] = field(default_factory=lambda: defaultdict(Evidence))
    already_allowed: Evidence = field(default_factory=Evidence)
    would_deny: int = 0
    records: int = 0
    decided: dict[tuple, Decision] = field(default_factory=dict)  # see proxy.tools.common.decide


def suggest(entries: Iterable[Entry], config: Config | None, options: Options) -> Suggestions:
    """Stream ``entries`` once and return the per-profile suggestions (see the module docstring)."""
    policy = compile_policy(config, generation=0) if config is not None else None
    result = Suggestions()
    for entry in entries:
        result.records += 1
        if not entry.would_deny:
            continue
        _collect(entry, policy, options, result)
    for suggestion in result.profiles.values():
        _finish(suggestion, options)
    return result


def _collect(entry: Entry, policy: Policy | None, options: Options, result: Suggestions) -> None:
    association = association_of(entry, policy)
    if options.resource and (association or "").lower() != options.resource.lower():
        return
    result.would_deny += 1
    kind, value, why = _element(entry, association)
    if why:
        result.not_suggested[why].add(entry)
        return
    compiled = policy.association(association) if policy else None
    if policy is not None:
        if compiled is None:
            result.not_suggested[f"association {association!r} is not in the configuration"].add(entry)
            return
        if not decide(policy, entry, result.decided).would_deny:
            result.already_allowed.add(entry)
            return
    perimeter = compiled.perimeter.name if compiled else (entry.perimeter or "PERIMETER")
    profile = compiled.profile.name if compiled else (entry.profile or "PROFILE")
    suggestion = result.profiles.get((perimeter, profile))
    if suggestion is None:
        existing = sum(r.element_count for r in compiled.profile.rules) if compiled else 0
        suggestion = result.profiles[(perimeter, profile)] = ProfileSuggestion(perimeter, profile,
                                                                               existing_elements=existing)
    suggestion.associations.add(association or "")
    values = suggestion.seen[kind]
    if value not in values and len(values) >= MAX_DISTINCT:
        suggestion.overflow += entry.count
        return
    values.setdefault(value, Evidence()).add(entry)


def _element(entry: Entry, association: str | None) -> tuple[str, str, str | None]:
    """(kind, value, None), or ("", "", why no rule can allow it)."""
    refused = entry.refused_everywhere
    if refused:
        return "", "", refused
    if "error while deciding" in entry.description:
        return "", "", "decided with an error (fail-safe decision): not a rule's business"
    if entry.inbound:
        if association is None:
            return "", "", "no association claims the listener (inbound records name none)"
        if entry.subscription:
            try:
                return SUBSCRIPTIONS, normalize_subscription(entry.subscription), None
            except ValueError:
                pass  # fall back to the address
        try:
            return ADDRESSES, str(ipaddress.ip_address(entry.source_ip.strip("[]").split("%", 1)[0])), None
        except ValueError:
            return "", "", "source is not an IP address"
    if association is None:
        return "", "", "caller is not a resource of any perimeter (set outboundSourcePrefixes or outboundListen)"
    host = entry.destination.strip().strip("[]")
    if is_ip_literal(host):
        return "", "", "IP-literal destination: outbound rules allow FQDNs only (refused in every mode)"
    if "differs from the destination" in entry.description:
        return "", "", "Host header or TLS SNI differs from the destination (refused whatever the rules)"
    try:
        return FQDNS, normalize_hostname(host), None
    except ValueError:
        return "", "", "destination is not a valid host name"


def _finish(suggestion: ProfileSuggestion, options: Options) -> None:
    """Aggregate, then keep within Azure's limit: widen addresses (within bounds), then drop the least used."""
    budget = max(0, options.limit - suggestion.existing_elements)
    names = aggregate.collapse_names(suggestion.seen[FQDNS], options.wildcards)
    subscriptions = dict(suggestion.seen[SUBSCRIPTIONS])
    room_for_addresses = max(0, budget - len(names) - len(subscriptions))
    addresses, widened = aggregate.fit_addresses(suggestion.seen[ADDRESSES], max(1, room_for_addresses),
                                                 options.max_prefix_v4, options.max_prefix_v6)
    if not suggestion.seen[ADDRESSES]:
        addresses, widened = {}, None
    suggestion.widened_to = widened
    ranked = aggregate.rank([(ADDRESSES, k, v) for k, v in addresses.items()]
                            + [(SUBSCRIPTIONS, k, v) for k, v in subscriptions.items()]
                            + [(FQDNS, k, v) for k, v in names.items()])
    kept, suggestion.did_not_fit = ranked[:budget], ranked[budget:]
    suggestion.elements = {ADDRESSES: {}, SUBSCRIPTIONS: {}, FQDNS: {}}
    for kind, value, evidence in kept:
        suggestion.elements[kind][value] = evidence
    for kind, values in suggestion.elements.items():
        suggestion.elements[kind] = dict(sorted(values.items(), key=lambda item: _natural(kind, item[0])))


def _natural(kind: str, value: str) -> tuple[int, int, list[str]]:
    """Addresses in address order, names by their labels from the right (siblings together)."""
    if kind == ADDRESSES:
        network = ipaddress.ip_network(value)
        return (network.version, int(network.network_address), [])
    return (0, 0, list(reversed(value.split("."))) if kind == FQDNS else [value])

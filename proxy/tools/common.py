"""What the log tools share: exit codes, evidence counters, and turning a logged record back into facts.

A record is re-decided from what it logged: the association (the ``Parameters`` extension, else the resource ID
it names), the source address and the subscription the proxy used (inbound), the dialled destination and the
TLS server name (outbound). Records the pure core cannot re-decide faithfully (nsp-proxy's own guards, wire
refusals) are reported as such and never counted as changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.decision.engine import decide_inbound, decide_outbound
from proxy.decision.facts import Decision, InboundFacts, OutboundFacts
from proxy.policy.compiled import Policy
from proxy.tools.logread import Entry

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_WOULD_DENY = 0, 1, 2, 3
MAX_CACHED = 100_000  # decisions kept by ``decide`` (cleared when full: bounded memory)


@dataclass
class Evidence:
    """How many records support something, and when it was first and last seen (ISO timestamps)."""

    count: int = 0
    first: str = ""
    last: str = ""

    def add(self, entry: Entry) -> None:
        self.count += entry.count
        if entry.time and (not self.first or entry.time < self.first):
            self.first = entry.time
        if entry.time > self.last:
            self.last = entry.time

    def merge(self, other: Evidence) -> None:
        self.count += other.count
        if other.first and (not self.first or other.first < self.first):
            self.first = other.first
        self.last = max(self.last, other.last)

    def as_dict(self) -> dict[str, object]:
        return {"records": self.count, "firstSeen": self.first, "lastSeen": self.last}

    def text(self) -> str:
        return f"{self.count} record(s), {self.first or '?'} .. {self.last or '?'}"


def association_of(entry: Entry, policy: Policy | None) -> str | None:
    """The association a record belongs to: from its extension, else by the resource ID it names."""
    if entry.association:
        return entry.association
    if policy is None:
        return None
    wanted = (entry.service_resource_id if entry.inbound else entry.source_resource_id).lower()
    if not wanted:
        return None
    for compiled in policy.associations.values():
        if compiled.association.resource_id.lower() == wanted:
            return compiled.association.name
    return None


def facts_of(entry: Entry, policy: Policy | None) -> InboundFacts | OutboundFacts:
    """The facts the proxy decided this record on, as far as the record says them."""
    resource = association_of(entry, policy)
    if entry.inbound:
        return InboundFacts(resource=resource or "", source_ip=entry.source_ip, source_port=entry.source_port,
                            subscription=entry.subscription, protocol=entry.protocol or "HTTP",
                            destination_port=entry.destination_port)
    return OutboundFacts(resource=resource, source_ip=entry.source_ip, destination_host=entry.destination,
                         destination_port=entry.destination_port, source_port=entry.source_port,
                         protocol=entry.protocol or "HTTPS", sni=entry.sni,
                         host_header=_mismatch(entry))


def _mismatch(entry: Entry) -> str | None:
    """A Host header the record says differed from the destination: keep it different, so replay denies it
    again (the record does not say which header it was, only that it differed)."""
    if "Host header" in entry.description and "differs from the destination" in entry.description:
        return "differs.invalid"
    return None


def decide(policy: Policy, entry: Entry, cache: dict[tuple, Decision]) -> Decision:
    """The pure core's decision for a record, cached on the facts that matter (logs repeat them; the source
    port, which never changes a decision, is left out of the key)."""
    facts = facts_of(entry, policy)
    if isinstance(facts, InboundFacts):
        key: tuple = (True, facts.resource, facts.source_ip, facts.subscription)
    else:
        key = (False, facts.resource, facts.source_ip, facts.destination_host, facts.destination_port, facts.sni,
               facts.host_header)
    decision = cache.get(key)
    if decision is None:
        if len(cache) >= MAX_CACHED:
            cache.clear()
        decision = decide_inbound(policy, facts) if entry.inbound else decide_outbound(policy, facts)
        cache[key] = decision
    return decision

"""Facts in, decision out: the value types that cross the boundary between the proxy and the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.model import AccessMode, Direction
from proxy.telemetry import Category, ResultAction, RuleType, TrafficType

if TYPE_CHECKING:
    from proxy.policy.compiled import Policy


@dataclass(frozen=True)
class InboundFacts:
    """What the proxy knows about a request to an associated resource, before it is forwarded."""

    resource: str  # association name (from the listener the request arrived on)
    source_ip: str  # effective client address (socket peer, or X-Forwarded-For behind a trusted proxy)
    source_port: int = 0
    subscription: str | None = None  # as sent by the caller; normalised by the engine
    protocol: str = "HTTP"
    host: str = ""  # Host header, for the log only
    destination_port: int = 0  # the listener's port the caller dialled, for the log only


@dataclass(frozen=True)
class OutboundFacts:
    """What the proxy knows about a connection a resource wants to make to the outside."""

    resource: str | None  # association name, None when the caller is not a perimeter resource
    source_ip: str
    destination_host: str  # absolute-URI or CONNECT host, as sent
    destination_port: int
    source_port: int = 0
    protocol: str = "HTTPS"  # what was seen: HTTP, HTTPS (TLS), TCP (a tunnel whose bytes are not seen yet)
    host_header: str | None = None  # Host header of a plain request, when it differs it is an anomaly
    sni: str | None = None  # TLS server name seen inside a CONNECT tunnel
    refused_by_guard: str | None = None  # why nsp-proxy's own guards refuse the dialled address (not an NSP rule)
    # Every other place the request names a host, as (what, value): ("request target", "http://x/"),
    # (":authority", "x:443"), ("Host header", "x") ... each must name the destination, like host_header and sni.
    named_hosts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Decision:
    """An immutable verdict. ``allowed`` is what the proxy does; ``would_deny`` what Enforced mode would do."""

    direction: Direction
    allowed: bool
    would_deny: bool
    category: Category
    result_action: ResultAction
    mode: AccessMode | None  # None: the caller maps to no association
    traffic_type: TrafficType
    rule_type: RuleType
    matched_rule: str | None
    profile: str | None
    resource: str | None  # association name
    perimeter: str | None
    reason: str
    generation: int
    error: str | None = None  # set when the engine failed and this decision is the fail-safe one
    # The caller as a perimeter member: outbound, the resource itself; inbound, a member caller (intra or
    # cross-perimeter); empty for public callers.
    source_perimeter_guid: str = ""
    source_resource_id: str = ""
    # The policy generation that made this decision: its record is built from it, never from a generation a
    # reload swapped in between the decision and the record (set by ``Runtime``; None for bare engine calls).
    policy: Policy | None = field(default=None, compare=False, repr=False)

    def made_by(self, policy: Policy) -> Decision:
        """This decision stamped with the policy that made it: ``dataclasses.replace(self, policy=policy)``
        without re-running ``__init__`` over every field (it runs once per request)."""
        stamped = object.__new__(Decision)
        stamped.__dict__.update(self.__dict__)
        stamped.__dict__["policy"] = policy
        return stamped

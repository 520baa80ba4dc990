"""The validated, immutable picture of a perimeter configuration.

Everything here has already passed validation (see ``proxy.config``): addresses are parsed networks,
subscriptions are lower-case GUIDs and FQDNs are normalised, so the compiler and the decision engine never
re-check input. Field names follow Azure's ARM property names where Azure has one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The scope nsp-proxy gives resources whose configuration names no subscription or resource group.
DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
DEFAULT_RESOURCE_GROUP = "nsp-proxy"


class Direction(StrEnum):
    INBOUND = "Inbound"
    OUTBOUND = "Outbound"


class AccessMode(StrEnum):
    """The association's access mode. ``Learning`` is Azure's API name for what the portal calls Transition."""

    TRANSITION = "Transition"
    ENFORCED = "Enforced"
    AUDIT = "Audit"

    @classmethod
    def parse(cls, text: str) -> AccessMode:
        folded = text.strip().lower()
        if folded in ("learning", "transition"):
            return cls.TRANSITION
        for mode in cls:
            if mode.value.lower() == folded:
                return mode
        raise ValueError(f"unknown accessMode {text!r} (expected Learning, Transition, Enforced or Audit)")


@dataclass(frozen=True)
class AccessRule:
    """One Azure access rule: a direction and exactly one kind of match."""

    name: str
    direction: Direction
    address_prefixes: tuple[IPNetwork, ...] = ()
    subscriptions: tuple[str, ...] = ()  # normalised lower-case GUIDs
    fqdns: tuple[str, ...] = ()  # normalised: lower-case, no trailing dot, may start with "*."
    perimeters: tuple[str, ...] = ()  # lower-cased perimeter resource IDs or names (cross-perimeter)
    unsupported_kind: str | None = None  # emailAddresses / phoneNumbers / serviceTags: accepted, never match
    unsupported_elements: int = 0  # they still count against Azure's limit

    @property
    def element_count(self) -> int:
        """Rule elements as Azure counts them against the 200-per-profile limit."""
        return (len(self.address_prefixes) + len(self.subscriptions) + len(self.fqdns) + len(self.perimeters)
                + self.unsupported_elements)


@dataclass(frozen=True)
class Profile:
    name: str
    rules: tuple[AccessRule, ...]


@dataclass(frozen=True)
class LocalBinding:
    """How a resource is reached on this machine: nsp-proxy's own addition to Azure's model."""

    listen_host: str | None = None
    listen_port: int | None = None
    upstream: str | None = None  # URL, or "builtin:demo"
    service_fqdns: tuple[str, ...] = ()  # names other members use to reach it (intra-perimeter outbound)
    outbound_listen_host: str | None = None
    outbound_listen_port: int | None = None
    outbound_source_prefixes: tuple[IPNetwork, ...] = ()
    private_endpoint_prefixes: tuple[IPNetwork, ...] = ()
    public_network_access: bool = True  # the resource's own setting, consulted in Transition mode
    resource_ip_rules: tuple[IPNetwork, ...] = ()  # the resource's own firewall, consulted in Transition mode
    trust_subscription_header: bool = True


@dataclass(frozen=True)
class Association:
    name: str
    perimeter: str  # perimeter name
    resource_id: str
    profile: str  # profile name within the perimeter
    mode: AccessMode
    local: LocalBinding

    @property
    def service_kind(self) -> str:
        """The Azure resource provider, e.g. ``microsoft.storage``; chooses the shape of a denial."""
        parts = self.resource_id.lower().split("/providers/", 1)
        return parts[1].split("/", 1)[0] if len(parts) == 2 else ""


@dataclass(frozen=True)
class Perimeter:
    name: str
    location: str
    resource_id: str
    profiles: tuple[Profile, ...]
    associations: tuple[Association, ...]
    guid: str = ""  # Azure's perimeterGuid (lower case): what access logs name a perimeter by


@dataclass(frozen=True)
class Settings:
    subscription_header: str = "x-nsp-subscription-id"
    subscription_from_token: bool = False
    intercept_tls: bool = False  # decrypt allowed tunnels to check the Host header inside TLS
    trusted_proxies: tuple[IPNetwork, ...] = ()
    access_log: str = "-"  # "-" is stdout
    metrics_listen_host: str | None = "127.0.0.1"
    metrics_listen_port: int | None = 9464
    nameservers: tuple[tuple[str, int], ...] = ()  # empty: the system's resolvers
    dns_timeout: float = 2.0
    outbound_listen_host: str | None = None
    outbound_listen_port: int | None = None
    blocked_destination_prefixes: tuple[IPNetwork, ...] = ()
    dns_cache_size: int = 10_000  # names whose answers are kept (LRU)
    dns_max_ttl: float = 300.0  # seconds an answer is kept at most, whatever its TTL
    dns_max_negative_ttl: float = 30.0  # seconds an NXDOMAIN/no-data answer (with an SOA) is kept at most
    # Bounds (config/README.md "settings"): the access-log queue and its flush at shutdown, timeouts, and the
    # client connections one listener holds open.
    access_log_queue: int = 10_000  # records waiting for the writer thread
    access_log_flush_timeout: float = 5.0  # seconds SIGTERM waits for queued records to be written
    upstream_connect_timeout: float = 10.0  # seconds to open the TCP connection to the upstream
    upstream_response_timeout: float = 120.0  # seconds from the request sent to the response's headers
    client_headers_timeout: float = 30.0  # seconds from connect to the first request's complete headers
    idle_timeout: float = 60.0  # seconds a kept-alive connection waits for its next request's headers
    max_client_connections: int = 1000  # open client connections per listener; more are closed on arrival
    # Wire limits (settings.requestLimits): a request over one is refused (431 / 414) before any rule.
    max_header_bytes: int = 65536  # request line + every header line
    max_header_count: int = 100
    max_target_bytes: int = 8192  # the request target (path and query, or absolute form)
    access_log_format: str = "nspAccessLogs"  # or "diagnostic" (proxy.telemetry.LOG_FORMATS)
    access_log_aggregation: float = 0.0  # seconds of an aggregation window; 0: every decision its own line
    # Sidecar (README "Run as a sidecar"): a transparent listener for traffic an nftables rule redirected to it,
    # callers told apart by outboundSourcePrefixes like settings.outbound; and the DNS gate (UDP and TCP).
    transparent_listen_host: str | None = None
    transparent_listen_port: int | None = None
    dns_gate_listen_host: str | None = None
    dns_gate_listen_port: int | None = None
    dns_gate_memory: int = 4096  # (address -> name) answers the DNS gate remembers for transparent connections


@dataclass(frozen=True)
class Config:
    source: str  # file it came from (or "<embedded demo>")
    settings: Settings
    perimeters: tuple[Perimeter, ...]
    warnings: tuple[str, ...] = field(default=())
    files: tuple[str, ...] = field(default=())  # every file it was read from (watched for live reload)

    def associations(self) -> tuple[Association, ...]:
        return tuple(a for p in self.perimeters for a in p.associations)

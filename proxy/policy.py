"""Compiling a ``Config`` into the indexes the engine decides from.

A ``Policy`` is built once per configuration generation and never changed afterwards; a reload builds a new
one and swaps a single reference, so a request is decided entirely by one generation or the next.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy import addresses
from proxy.indexes import FqdnIndex, PrefixIndex
from proxy.model import Association, Config, Direction, Perimeter, Profile


@dataclass(frozen=True)
class CompiledAssociation:
    association: Association
    perimeter: Perimeter
    profile: Profile
    inbound_prefixes: PrefixIndex[str]  # -> rule name
    inbound_subscriptions: dict[str, str]  # guid -> rule name
    inbound_perimeters: dict[str, str]  # perimeter id or name (lower) -> rule name
    outbound_fqdns: FqdnIndex[str]  # -> rule name
    private_endpoints: PrefixIndex[bool]
    resource_ip_rules: PrefixIndex[bool]


@dataclass(frozen=True)
class OutboundListener:
    """Who may be speaking on one forward-proxy port: by source prefix, else the one dedicated resource."""

    by_source: PrefixIndex[str]
    dedicated: str | None


@dataclass(frozen=True)
class Policy:
    config: Config
    generation: int
    associations: dict[str, CompiledAssociation]  # lower-case association name ->
    inbound_ports: dict[int, str]  # listen port -> association name
    outbound_ports: dict[int, OutboundListener]
    member_sources: PrefixIndex[tuple[Perimeter, str]]  # outbound source prefix -> (perimeter, association)
    member_fqdns: FqdnIndex[Association]
    member_endpoints: dict[tuple[str, int], Association]
    listeners: tuple[tuple[str, int, str], ...]  # (host, port, "reverse" | "forward") this proxy listens on

    def association(self, name: str | None) -> CompiledAssociation | None:
        return self.associations.get(name.lower()) if name else None


def compile_policy(config: Config, generation: int) -> Policy:
    compiled: dict[str, CompiledAssociation] = {}
    inbound_ports: dict[int, str] = {}
    member_sources: list[tuple] = []
    member_fqdns: list[tuple[str, Association]] = []
    member_endpoints: dict[tuple[str, int], Association] = {}
    for perimeter in config.perimeters:
        profiles = {p.name.lower(): p for p in perimeter.profiles}
        for assoc in perimeter.associations:
            profile = profiles[assoc.profile.lower()]
            compiled[assoc.name.lower()] = _compile_association(assoc, perimeter, profile)
            local = assoc.local
            if local.listen_port:
                inbound_ports[local.listen_port] = assoc.name
                member_endpoints[(_canonical_host(local.listen_host), local.listen_port)] = assoc
            member_sources.extend((net, (perimeter, assoc.name)) for net in local.outbound_source_prefixes)
            member_fqdns.extend((fqdn, assoc) for fqdn in local.service_fqdns)
    return Policy(
        config=config,
        generation=generation,
        associations=compiled,
        inbound_ports=inbound_ports,
        outbound_ports=_outbound_listeners(config),
        member_sources=PrefixIndex(member_sources),
        member_fqdns=FqdnIndex(member_fqdns),
        member_endpoints=member_endpoints,
        listeners=_listeners(config),
    )


def _canonical_host(host: str | None) -> str:
    """A listen address in the canonical spelling destinations are compared in (``proxy.addresses``)."""
    try:
        return addresses.canonical(host or "127.0.0.1")
    except ValueError:
        return (host or "").lower()


def _listeners(config: Config) -> tuple[tuple[str, int, str], ...]:
    found = [(a.local.listen_host or "127.0.0.1", a.local.listen_port, "reverse")
             for a in config.associations() if a.local.listen_port]
    found += [(a.local.outbound_listen_host or "127.0.0.1", a.local.outbound_listen_port, "forward")
              for a in config.associations() if a.local.outbound_listen_port]
    s = config.settings
    if s.outbound_listen_port:
        found.append((s.outbound_listen_host or "127.0.0.1", s.outbound_listen_port, "forward"))
    if s.transparent_listen_port:
        found.append((s.transparent_listen_host or "127.0.0.1", s.transparent_listen_port, "forward"))
    return tuple(found)


def _compile_association(assoc: Association, perimeter: Perimeter, profile: Profile) -> CompiledAssociation:
    inbound = [r for r in profile.rules if r.direction is Direction.INBOUND]
    outbound = [r for r in profile.rules if r.direction is Direction.OUTBOUND]
    return CompiledAssociation(
        association=assoc,
        perimeter=perimeter,
        profile=profile,
        inbound_prefixes=PrefixIndex((net, r.name) for r in inbound for net in r.address_prefixes),
        inbound_subscriptions={sub: r.name for r in reversed(inbound) for sub in r.subscriptions},
        inbound_perimeters={p: r.name for r in reversed(inbound) for p in r.perimeters},
        outbound_fqdns=FqdnIndex((fqdn, r.name) for r in outbound for fqdn in r.fqdns),
        private_endpoints=PrefixIndex((net, True) for net in assoc.local.private_endpoint_prefixes),
        resource_ip_rules=PrefixIndex((net, True) for net in assoc.local.resource_ip_rules),
    )


def _outbound_listeners(config: Config) -> dict[int, OutboundListener]:
    """Map each forward-proxy port to the resources that may speak on it.

    The shared listener (``settings.outbound``) serves every resource that declares
    ``outboundSourcePrefixes``; a dedicated one (``local.outboundListen``) serves its own resources, and a
    caller matching no prefix there is the resource whose listener it is (when that is unambiguous).
    """
    ports: dict[int, list[Association]] = {}
    assocs = config.associations()
    if config.settings.outbound_listen_port:
        ports[config.settings.outbound_listen_port] = [a for a in assocs if a.local.outbound_source_prefixes]
    if config.settings.transparent_listen_port:  # the sidecar's listener is shared the same way
        ports[config.settings.transparent_listen_port] = [a for a in assocs if a.local.outbound_source_prefixes]
    for assoc in assocs:
        if assoc.local.outbound_listen_port:
            ports.setdefault(assoc.local.outbound_listen_port, []).append(assoc)
    listeners: dict[int, OutboundListener] = {}
    for port, members in ports.items():
        dedicated = [a.name for a in members if a.local.outbound_listen_port == port]
        listeners[port] = OutboundListener(
            by_source=PrefixIndex((net, a.name) for a in members for net in a.local.outbound_source_prefixes),
            dedicated=dedicated[0] if len(dedicated) == 1 else None,
        )
    return listeners

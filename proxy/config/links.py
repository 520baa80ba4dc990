"""Perimeter links, logging configurations and Azure's recommended limits: what a perimeter's children add.

Perimeter links (FACTS.md, configure-perimeter-link): "The selected profiles automatically get extra inbound and
outbound allow rules. The source type for the generated rules is Network security perimeter." nsp-proxy
generates them when the configuration is loaded, as read-only ``networkSecurityPerimeters`` rules named after
the link:

- this perimeter's ``localInboundProfiles`` get an Inbound rule admitting the remote perimeter's members, the
  remote perimeter's ``remoteInboundProfiles`` one admitting this perimeter's members (``*`` = every profile;
  absent = ``["*"]``, what the REST examples and the portal use);
- every profile of both gets an Outbound rule to the other (``local/remoteOutboundProfiles`` are read-only
  ``["*"]`` in Azure).

Only an Approved link acts. ``status`` is read-only in Azure; a link written without it (a template's PUT body)
is auto-approved when its remote perimeter is in the same configuration (Azure auto-approves for whoever may
write both) and otherwise stays Pending. A ``linkReferences`` entry (the remote side of a link) acts the same
way; a link and its reference generate each rule once. A link whose remote perimeter is not in the
configuration cannot recognise the remote members, so it generates nothing and is warned about.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from proxy.model import AccessRule, Direction, Perimeter, PerimeterLink, Profile
from proxy.telemetry import Category

APPROVED = "Approved"
# Azure's recommended (not hard) limits: exceeding one is a warning (FACTS.md, Limits).
RECOMMENDED_PERIMETERS_PER_SUBSCRIPTION = 100
RECOMMENDED_PROFILES_PER_PERIMETER = 200
RECOMMENDED_RESOURCES_PER_PERIMETER = 1000
RECOMMENDED_LINKS_PER_PERIMETER = 10
# the categories a loggingConfiguration may enable: Azure's, not nsp-proxy's own NspProxyRequestRefused
LOG_CATEGORIES = tuple(c.value for c in Category if c is not Category.PROXY_REQUEST_REFUSED)


def parse_link(raw: dict[str, Any], kind: str) -> PerimeterLink:
    remote = raw.get("autoApprovedRemotePerimeterResourceId") or raw.get("remotePerimeterResourceId") or ""
    return PerimeterLink(
        name=str(raw["name"]), kind=kind, remote_id=str(remote).strip().lower(),
        remote_guid=str(raw.get("remotePerimeterGuid") or "").strip().lower(),
        local_inbound=tuple(raw.get("localInboundProfiles", ["*"])),
        remote_inbound=tuple(raw.get("remoteInboundProfiles", ["*"])),
        status=str(raw.get("status") or ""))


def parse_log_categories(raw: dict[str, Any] | None, fail: Callable[[str, str], None], path: str,
                         ) -> frozenset[str] | None:
    """``loggingConfiguration.enabledLogCategories`` as canonical names; None (all) without a configuration."""
    if raw is None or "enabledLogCategories" not in raw:
        return None
    known = {c.lower(): c for c in LOG_CATEGORIES}
    chosen = set()
    for i, name in enumerate(raw["enabledLogCategories"]):
        canonical = known.get(str(name).lower())
        if canonical is None:
            fail(f"{path}.enabledLogCategories[{i}]", f"unknown log category {name!r} (known: "
                                                      f"{', '.join(LOG_CATEGORIES)})")
        else:
            chosen.add(canonical)
    return frozenset(chosen)


def apply_links(perimeters: tuple[Perimeter, ...], warn: Callable[[str], None]) -> tuple[Perimeter, ...]:
    """The perimeters with the rules their Approved links generate added to their profiles."""
    by_id = {p.resource_id.lower(): p for p in perimeters}
    by_guid = {p.guid: p for p in perimeters if p.guid}
    added: dict[tuple[str, str, Direction], dict[str, str]] = {}  # (perimeter, profile, dir) -> remote id -> link
    for perimeter in perimeters:
        if len(perimeter.links) > RECOMMENDED_LINKS_PER_PERIMETER:
            warn(f"perimeter {perimeter.name!r}: {len(perimeter.links)} links; Azure allows at most "
                 f"{RECOMMENDED_LINKS_PER_PERIMETER} per perimeter")
        for link in perimeter.links:
            remote = by_id.get(link.remote_id) or by_guid.get(link.remote_guid)
            where = f"perimeter {perimeter.name!r} {link.kind} {link.name!r}"
            status = link.status or (APPROVED if remote else "Pending")
            if status != APPROVED:
                warn(f"{where} is {status}: it allows nothing (only Approved links act)")
                continue
            if remote is None:
                warn(f"{where}: the remote perimeter {link.remote_id or link.remote_guid!r} is not in this "
                     "configuration, so its members cannot be recognised: the link allows nothing here")
                continue
            for at, profiles, other in ((perimeter, link.local_inbound, remote), (remote, link.remote_inbound,
                                                                                   perimeter)):
                for profile in _selected(at, profiles, f"{where}: profile", warn):
                    added.setdefault((at.name, profile, Direction.INBOUND), {}).setdefault(
                        other.resource_id.lower(), link.name)
                for profile in at.profiles:
                    added.setdefault((at.name, profile.name, Direction.OUTBOUND), {}).setdefault(
                        other.resource_id.lower(), link.name)
    return tuple(replace(p, profiles=tuple(_with_generated(p, profile, added) for profile in p.profiles))
                 for p in perimeters)


def _selected(perimeter: Perimeter, names: tuple[str, ...], where: str, warn: Callable[[str], None]) -> list[str]:
    if "*" in names:
        return [p.name for p in perimeter.profiles]
    known = {p.name.lower(): p.name for p in perimeter.profiles}
    for name in names:
        if str(name).lower() not in known:
            warn(f"{where} {name!r} is not a profile of perimeter {perimeter.name!r}")
    return [known[str(n).lower()] for n in names if str(n).lower() in known]


def _with_generated(perimeter: Perimeter, profile: Profile,
                    added: dict[tuple[str, str, Direction], dict[str, str]]) -> Profile:
    rules = list(profile.rules)
    for direction in Direction:
        by_link: dict[str, list[str]] = {}
        for remote, link in added.get((perimeter.name, profile.name, direction), {}).items():
            by_link.setdefault(link, []).append(remote)
        rules.extend(AccessRule(link, direction, perimeters=tuple(remotes), generated=True)
                     for link, remotes in by_link.items())
    return replace(profile, rules=tuple(rules)) if len(rules) != len(profile.rules) else profile


def recommended_limit_warnings(perimeters: tuple[Perimeter, ...]) -> list[str]:
    """Azure's recommended limits that the configuration exceeds (warnings: only hard limits refuse)."""
    warnings: list[str] = []
    per_subscription: dict[str, int] = {}
    for perimeter in perimeters:
        parts = perimeter.resource_id.lower().split("/")
        sub = parts[2] if len(parts) > 2 else ""
        per_subscription[sub] = per_subscription.get(sub, 0) + 1
        if len(perimeter.profiles) > RECOMMENDED_PROFILES_PER_PERIMETER:
            warnings.append(f"perimeter {perimeter.name!r}: {len(perimeter.profiles)} profiles; Azure recommends at "
                            f"most {RECOMMENDED_PROFILES_PER_PERIMETER} per perimeter")
        if len(perimeter.associations) > RECOMMENDED_RESOURCES_PER_PERIMETER:
            warnings.append(f"perimeter {perimeter.name!r}: {len(perimeter.associations)} resources; Azure "
                            f"recommends at most {RECOMMENDED_RESOURCES_PER_PERIMETER} per perimeter")
    warnings.extend(f"{count} perimeters in subscription {sub}; Azure recommends at most "
                    f"{RECOMMENDED_PERIMETERS_PER_SUBSCRIPTION}" for sub, count in per_subscription.items()
                    if count > RECOMMENDED_PERIMETERS_PER_SUBSCRIPTION)
    return warnings

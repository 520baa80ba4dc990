"""``perimeters:`` read into ``Perimeter``/``Profile``/``AccessRule``/``Association`` with Azure's rules: one
kind of match per rule, directions, references between objects, unique names, Azure's per-profile limit, and
the listener ports every local binding claims."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from proxy.config import links
from proxy.config.validating import ValidatorBase
from proxy.model import (
    DEFAULT_RESOURCE_GROUP,
    DEFAULT_SUBSCRIPTION,
    AccessMode,
    AccessRule,
    Association,
    Direction,
    LocalBinding,
    Perimeter,
    Profile,
    Settings,
)
from proxy.names.normalize import normalize_fqdn_rule, normalize_hostname, normalize_subscription, parse_endpoint
from proxy.pacing import pace

# Azure's hard limit (FACTS.md, "Limits"); the recommended ones only warn (proxy.config.links).
MAX_RULE_ELEMENTS_PER_PROFILE = 200
# Match kinds that exist only in Inbound rules: a rule of one of these without a direction is Inbound.
INBOUND_ONLY_KINDS = ("addressPrefixes", "subscriptions", "serviceTags")

MATCH_KINDS = (
    "addressPrefixes",
    "subscriptions",
    "fullyQualifiedDomainNames",
    "networkSecurityPerimeters",
    "emailAddresses",
    "phoneNumbers",
    "serviceTags",
)
UNSUPPORTED_KINDS = ("emailAddresses", "phoneNumbers", "serviceTags")


class PerimeterReader(ValidatorBase):
    """Reads perimeters and checks what spans them (unique names, listener ports, one association a resource)."""

    def _perimeter(self, raw: dict[str, Any], path: str) -> Perimeter:
        name = raw["name"]
        subscription = self.attempt(f"{path}.subscriptionId", normalize_subscription,
                                    raw.get("subscriptionId", DEFAULT_SUBSCRIPTION))
        group = raw.get("resourceGroup", DEFAULT_RESOURCE_GROUP)
        resource_id = raw.get("id") or (
            f"/subscriptions/{subscription}/resourceGroups/{group}"
            f"/providers/Microsoft.Network/networkSecurityPerimeters/{name}"
        )
        profiles = tuple(
            self._profile(p, f"{path}.profiles[{i}]") for i, p in enumerate(raw.get("profiles") or [])
        )
        self._unique(path, "profiles", [p.name for p in profiles], "profile")
        profile_names = {p.name.lower(): p.name for p in profiles}
        associations = tuple(
            self._association(a, f"{path}.resourceAssociations[{i}]", name, profile_names)
            for i, a in enumerate(raw.get("resourceAssociations") or [])
        )
        self._unique(path, "resourceAssociations", [a.name for a in associations], "resource association")
        # Azure logs perimeters by GUID; without the real one, a GUID derived from the ID stays stable across runs.
        guid = str(raw.get("perimeterGuid") or "").lower()
        if guid and not _is_guid(guid):  # read-only in Azure: a placeholder (REST examples say "guid") costs nothing
            self.warnings.append(f"{path}.perimeterGuid: {guid!r} is not a GUID; ignored (derived from the id)")
            guid = ""
        guid = guid or str(uuid.uuid5(uuid.NAMESPACE_URL, resource_id.lower()))
        perimeter_links = tuple(links.parse_link(item, kind) for kind in ("links", "linkReferences")
                                for item in raw.get(kind) or [])
        for kind in ("links", "linkReferences"):
            self._unique(path, kind, [item["name"] for item in raw.get(kind) or []], kind[:-1])
        categories = links.parse_log_categories(raw.get("loggingConfiguration"), self.fail,
                                                f"{path}.loggingConfiguration")
        return Perimeter(name, str(raw.get("location", "local")), resource_id, profiles, associations, guid,
                         perimeter_links, categories)

    def _profile(self, raw: dict[str, Any], path: str) -> Profile:
        rules = tuple(
            rule for i, r in enumerate(raw.get("accessRules") or [])
            if (rule := self._rule(r, f"{path}.accessRules[{i}]")) is not None
        )
        self._unique(path, "accessRules", [r.name for r in rules], "access rule")
        elements = sum(r.element_count for r in rules)
        if elements > MAX_RULE_ELEMENTS_PER_PROFILE:
            self.fail(f"{path}.accessRules", f"{elements} rule elements; Azure allows at most "
                                             f"{MAX_RULE_ELEMENTS_PER_PROFILE} per profile")
        return Profile(raw["name"], rules)

    def _rule(self, raw: dict[str, Any], path: str) -> AccessRule | None:
        pace()  # proxy.pacing: a reload's worker thread leaves the event loop its share
        kinds = [k for k in MATCH_KINDS if raw.get(k)]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            self.fail(path, f"an access rule needs exactly one kind of match ({', '.join(MATCH_KINDS[:3])}, ...); "
                            f"found: {found}")
            return None
        kind = kinds[0]
        if "direction" not in raw and kind not in INBOUND_ONLY_KINDS:
            # Azure accepts a rule without direction (the CLI quickstart's inbound rule has none); nsp-proxy
            # reads it as Inbound, which only an inbound-only match makes unambiguous.
            self.fail(path, f"an access rule without 'direction' is read as Inbound (as Azure's CLI quickstart "
                            f"creates it), but '{kind}' is not an Inbound match: give direction: Outbound")
            return None
        direction = Direction(raw.get("direction", Direction.INBOUND.value))
        allowed = {
            "addressPrefixes": Direction.INBOUND, "subscriptions": Direction.INBOUND,
            "fullyQualifiedDomainNames": Direction.OUTBOUND,
            "emailAddresses": Direction.OUTBOUND, "phoneNumbers": Direction.OUTBOUND,
        }.get(kind)
        if allowed is not None and allowed is not direction:
            self.fail(f"{path}.{kind}", f"'{kind}' is only valid in {allowed.value} rules, "
                                        f"this rule's direction is {direction.value}")
            return None
        values = raw[kind]
        at = [f"{path}.{kind}[{i}]" for i in range(len(values))]
        name = raw["name"]
        if kind == "addressPrefixes":
            return AccessRule(name, direction, address_prefixes=self._prefixes(f"{path}.{kind}", values))
        if kind == "subscriptions":
            subs = [self.attempt(p, normalize_subscription, _ref_id(v)) for p, v in zip(at, values, strict=True)]
            return AccessRule(name, direction, subscriptions=tuple(s for s in subs if s))
        if kind == "fullyQualifiedDomainNames":
            fqdns = [self.attempt(p, normalize_fqdn_rule, v) for p, v in zip(at, values, strict=True)]
            return AccessRule(name, direction, fqdns=tuple(f for f in fqdns if f))
        if kind == "networkSecurityPerimeters":
            # read-only in Azure: the rules a perimeter link generates, Inbound and Outbound, as exports show them
            return AccessRule(name, direction, perimeters=tuple(_perimeter_ref(v) for v in values))
        self.warnings.append(f"{path}: '{kind}' rules are accepted but never match in nsp-proxy "
                             f"(they need Azure services that a local proxy cannot see)")
        return AccessRule(name, direction, unsupported_kind=kind, unsupported_elements=len(values),
                          unsupported_values=tuple(str(v) for v in values))

    def _association(
        self, raw: dict[str, Any], path: str, perimeter: str, profiles: dict[str, str]
    ) -> Association:
        profile_ref = _ref_id(raw["profile"]).rstrip("/").rsplit("/", 1)[-1]
        profile = profiles.get(profile_ref.lower())
        if profile is None:
            known = ", ".join(sorted(profiles.values())) or "none defined"
            self.fail(f"{path}.profile", f"unknown profile {profile_ref!r} in perimeter {perimeter!r} "
                                         f"(profiles: {known})")
        mode = AccessMode.parse(raw.get("accessMode", "Learning"))
        resource_id = _ref_id(raw["privateLinkResource"]).strip()
        bound = self.bindings.get(resource_id.lower())  # settings.management.bindings, by resource ID
        local = bound if bound is not None and "local" not in raw else self._local(raw.get("local") or {},
                                                                                  f"{path}.local")
        if "/providers/" not in resource_id.lower():
            self.fail(f"{path}.privateLinkResource.id", f"{resource_id!r} is not an Azure resource ID "
                                                        "(expected /subscriptions/.../providers/...)")
        return Association(raw["name"], perimeter, resource_id, profile or profile_ref, mode, local)

    def _local(self, raw: dict[str, Any], path: str) -> LocalBinding:
        listen = self.attempt(f"{path}.listen", parse_endpoint, raw["listen"]) if "listen" in raw else None
        outbound = (
            self.attempt(f"{path}.outboundListen", parse_endpoint, raw["outboundListen"])
            if "outboundListen" in raw else None
        )
        upstream = raw.get("upstream")
        if listen and not upstream:
            self.fail(f"{path}.upstream", "a resource with 'listen' needs an 'upstream' (URL or builtin:demo)")
        if upstream and not _valid_upstream(upstream):
            self.fail(f"{path}.upstream", f"{upstream!r} is not http(s)://host[:port] (port 1-65535, no path) "
                                          "or builtin:demo")
        fqdns = [
            self.attempt(f"{path}.serviceFqdns[{i}]", normalize_hostname, f)
            for i, f in enumerate(raw.get("serviceFqdns") or [])
        ]
        return LocalBinding(
            listen_host=listen[0] if listen else None,
            listen_port=listen[1] if listen else None,
            upstream=upstream,
            service_fqdns=tuple(f for f in fqdns if f),
            outbound_listen_host=outbound[0] if outbound else None,
            outbound_listen_port=outbound[1] if outbound else None,
            outbound_source_prefixes=self._prefixes(f"{path}.outboundSourcePrefixes",
                                                    raw.get("outboundSourcePrefixes")),
            private_endpoint_prefixes=self._prefixes(f"{path}.privateEndpointPrefixes",
                                                     raw.get("privateEndpointPrefixes")),
            # SecuredByPerimeter: only the perimeter may admit public traffic, so the Transition fallback denies
            public_network_access=raw.get("publicNetworkAccess", "Enabled") == "Enabled",
            secured_by_perimeter=raw.get("publicNetworkAccess") == "SecuredByPerimeter",
            resource_ip_rules=self._prefixes(f"{path}.resourceIpRules", raw.get("resourceIpRules")),
            trust_subscription_header=bool(raw.get("trustSubscriptionHeader", True)),
        )

    # -- cross-object checks ---------------------------------------------------------------------------------

    def _unique(self, path: str, key: str, names: list[str], what: str) -> None:
        seen: dict[str, int] = {}
        where = f"{path}.{key}" if path else key
        for i, name in enumerate(names):
            folded = name.lower()  # Azure resource names are case-insensitive
            if folded in seen:
                self.fail(f"{where}[{i}].name", f"duplicate {what} name {name!r} (also at {key}[{seen[folded]}])")
            seen.setdefault(folded, i)

    def _check_global(self, perimeters: tuple[Perimeter, ...], settings: Settings, raw: dict[str, Any]) -> None:
        self._unique("", "perimeters", [p.name for p in perimeters], "perimeter")
        listeners: dict[int, str] = {}
        if settings.metrics_listen_port:
            listeners[settings.metrics_listen_port] = "settings.metrics"
        if settings.outbound_listen_port:
            self._claim(listeners, settings.outbound_listen_port, "settings.outbound")
        if settings.transparent_listen_port:
            self._claim(listeners, settings.transparent_listen_port, "settings.transparent")
        if settings.dns_gate_listen_port:
            self._claim(listeners, settings.dns_gate_listen_port, "settings.dnsGate")
        if settings.management_listen_port:
            self._claim(listeners, settings.management_listen_port, "settings.management.listen")
        resources: dict[str, str] = {}
        for pi, perimeter in enumerate(perimeters):
            for ai, assoc in enumerate(perimeter.associations):
                path = f"perimeters[{pi}].resourceAssociations[{ai}]"
                if assoc.local.listen_port:
                    self._claim(listeners, assoc.local.listen_port, f"{path}.local.listen")
                if assoc.local.outbound_listen_port:
                    self._claim(listeners, assoc.local.outbound_listen_port, f"{path}.local.outboundListen",
                                shareable=True)
                folded = assoc.resource_id.lower()
                if folded in resources:
                    self.fail(f"{path}.privateLinkResource.id", f"resource is already associated at "
                                                                f"{resources[folded]}")
                resources.setdefault(folded, path)
        owners: dict[str, tuple[int, int]] = {}  # association names label logs and metrics: unique in the file
        for pi, perimeter in enumerate(perimeters):
            for ai, assoc in enumerate(perimeter.associations):
                first = owners.setdefault(assoc.name.lower(), (pi, ai))
                if first[0] != pi:  # duplicates within one perimeter are reported by _unique
                    self.fail(f"perimeters[{pi}].resourceAssociations[{ai}].name",
                              f"resource association names must be unique across perimeters (they label logs and "
                              f"metrics): {assoc.name!r} is also at perimeters[{first[0]}].resourceAssociations"
                              f"[{first[1]}]")

    def _claim(self, listeners: dict[int, str], port: int, path: str, shareable: bool = False) -> None:
        owner = listeners.get(port)
        if owner and not (shareable and owner.endswith(".outboundListen")):
            self.fail(path, f"port {port} is already used by {owner}")
        listeners.setdefault(port, path)


def _is_guid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _perimeter_ref(value: Any) -> str:
    """A ``networkSecurityPerimeters`` entry: its id (or name), else its perimeterGuid, lower case."""
    ref = _ref_id(value).strip() or (str(value.get("perimeterGuid", "")) if isinstance(value, dict) else "")
    return ref.strip().lower()


def _ref_id(value: Any) -> str:
    return str(value.get("id", "")) if isinstance(value, dict) else str(value)


def _valid_upstream(text: str) -> bool:
    """``builtin:demo`` or ``http(s)://host[:port][/]`` with a port mitmproxy can dial."""
    if text == "builtin:demo":
        return True
    try:
        parts = urlsplit(text)
        port = parts.port  # raises for 0 < port < 65536 violations and non-numeric ports
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and parts.path in ("", "/")
            and not parts.query and not parts.fragment and port != 0)

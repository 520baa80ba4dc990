"""Reading a configuration file into a validated ``Config``.

Two ways in, one way through: the native YAML (flat Azure property names; ARM's ``properties:`` wrapper is
lifted), or an ARM template/export referenced by ``arm:`` with ``bindings:`` for the local endpoints (see
``proxy.arm``). Both become the same plain document, which is checked first against the JSON Schema in
``proxy/data`` (structure, unknown keys) and then here (CIDRs, GUIDs, one kind of match per rule, references,
duplicates, Azure's limits). Every problem is collected and reported with the file and field path.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema

from proxy import arm, links, schemacheck
from proxy.arm_expressions import Deployment
from proxy.azure_fields import IGNORED_PROPERTIES, drop_ignored
from proxy.configfile import parse_text, read_text
from proxy.errors import ConfigError, Problem
from proxy.model import (
    DEFAULT_RESOURCE_GROUP,
    DEFAULT_SUBSCRIPTION,
    AccessMode,
    AccessRule,
    Association,
    Config,
    Direction,
    LocalBinding,
    Perimeter,
    Profile,
    Settings,
)
from proxy.normalize import (
    normalize_fqdn_rule,
    normalize_hostname,
    normalize_subscription,
    parse_endpoint,
    parse_prefix,
)
from proxy.pacing import pace

# Azure's hard limit (FACTS.md, "Limits"); the recommended ones only warn (proxy.links).
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
ARM_KEYS = ("arm", "bindings", "armScope", "armParameters")  # the ARM route's keys, replaced by the conversion
ARM_SCOPE_KEYS = ("subscriptionId", "resourceGroup", "location")
LIFTED = ("perimeters", "profiles", "accessRules", "resourceAssociations", "links", "linkReferences",
          "loggingConfiguration")


@cache
def schema() -> dict[str, Any]:
    text = resources.files("proxy").joinpath("data/nsp-proxy.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def load_config(path: str | Path) -> Config:
    """Load, validate and return the configuration at ``path``; raise ``ConfigError`` if it is not usable."""
    file = Path(path)
    return parse_config_text(read_text(file), str(file), base_dir=file.parent)


def parse_config_text(text: str, source: str, base_dir: Path | None = None) -> Config:
    document = parse_text(text, source)
    if document is None:
        raise ConfigError(source, [Problem("", "the file is empty: expected a mapping with 'perimeters' (or 'arm' "
                                               "and 'bindings'), or an ARM template/export")])
    if not isinstance(document, dict) and not arm.looks_like_arm(document):
        raise ConfigError(source, [Problem("", "expected a mapping with 'perimeters' (or 'arm' and 'bindings'), "
                                               "or an ARM template/export")])
    return _Validator(source, base_dir or Path(".")).run(document)


class _Validator:
    """Collects problems while turning a plain document into a ``Config``."""

    def __init__(self, source: str, base_dir: Path):
        self.source = source
        self.base_dir = base_dir
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.origins: dict[str, arm.Origin] = {}  # native path prefix -> where an ARM import got it from
        self.files: list[str] = [source]

    def fail(self, path: str, reason: str) -> None:
        """Record a problem at ``path``; paths that came from an ARM file are reported in that file's terms."""
        best = max((p for p in self.origins if path == p or path.startswith((p + ".", p + "["))),
                   key=len, default=None)
        if best is None:
            self.problems.append(Problem(path, reason))
            return
        origin, rest = self.origins[best], path[len(best):]
        if origin.properties and not rest.startswith(".name"):
            rest = ".properties" + rest
        self.problems.append(Problem(origin.path + rest, reason, source=origin.source))

    def attempt(self, path: str, parse: Callable[[Any], Any], value: Any) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            self.fail(path, str(exc))
            return None

    def run(self, document: Any) -> Config:
        if arm.looks_like_arm(document):
            document = self._convert_arm(document)
        else:
            document = self._lift_properties(document, "")
            if "arm" in document:
                document = self._import_arm(document)
        self._check_schema(document)
        if self.problems:
            raise ConfigError(self.source, self.problems)
        settings = self._settings(document.get("settings") or {})
        perimeters = tuple(
            self._perimeter(p, f"perimeters[{i}]") for i, p in enumerate(document.get("perimeters") or [])
        )
        if not perimeters:
            self.fail("perimeters", "at least one perimeter is required")
        self._check_global(perimeters, settings, document)
        if not self.problems:
            perimeters = links.apply_links(perimeters, self.warnings.append)
            self.warnings.extend(links.recommended_limit_warnings(perimeters))
        if self.problems:
            raise ConfigError(self.source, self.problems)
        return Config(self.source, settings, perimeters, tuple(self.warnings), tuple(self.files))

    # -- structure -------------------------------------------------------------------------------------------

    def _lift_properties(self, node: Any, path: str) -> Any:
        """Accept ARM's ``{name, properties: {...}}`` by merging ``properties`` into its parent object, and
        Azure's enum values in any case (``enforced``, ``INBOUND``), as ARM does."""
        if isinstance(node, list):
            return [self._lift_properties(item, f"{path}[{i}]") for i, item in enumerate(node)]
        if not isinstance(node, dict):
            return node
        result = {k: _canonical_enum(k, v) for k, v in node.items() if k != "properties"}
        inner = node.get("properties")
        container = path.rsplit(".", 1)[-1].split("[")[0]
        if isinstance(inner, dict) and container in LIFTED:
            for key, value in inner.items():
                if key in result and key not in IGNORED_PROPERTIES:
                    self.fail(f"{path}.properties.{key}", f"'{key}' is given both inside and outside 'properties'")
                result[key] = _canonical_enum(key, value)
        elif "properties" in node:
            result["properties"] = inner
        if container in LIFTED:
            result = drop_ignored(result, container)
        return {
            k: self._lift_properties(v, f"{path}.{k}" if path else k) if k in LIFTED else v
            for k, v in result.items()
        }

    def _import_arm(self, document: dict[str, Any]) -> dict[str, Any]:
        self._check_schema({key: document[key] for key in ARM_KEYS if key in document})  # their shapes first
        if self.problems:
            raise ConfigError(self.source, self.problems)
        arm_path = self.base_dir / str(document["arm"])
        self.files.append(str(arm_path))
        try:
            converted, origins, notices = arm.convert_file(arm_path, document.get("bindings") or {},
                                                           self._deployment(document))
        except ConfigError as exc:
            problems = [_referenced_problem(p, exc.source, str(arm_path), "arm") for p in exc.problems]
            raise ConfigError(self.source, problems) from None
        rest = {k: v for k, v in document.items() if k not in ARM_KEYS}
        return {**rest, **self._adopt_arm(converted, origins, notices)}

    def _convert_arm(self, document: Any) -> dict[str, Any]:
        """An ARM template/export given as the configuration itself: Azure's rules with no local endpoints,
        enough to validate and explain (``run`` needs listeners: a YAML file with ``arm:`` and ``bindings:``)."""
        return self._adopt_arm(*arm.convert_document(document, self.source, {}))

    def _adopt_arm(self, converted: dict[str, Any], origins: dict[str, arm.Origin], notices: list[str],
                   ) -> dict[str, Any]:
        """Take a converted ARM document in: its paths map back to the ARM file for errors, its notices become
        warnings, and its enums are canonicalised as the native format's are (ARM takes them in any case)."""
        self.origins.update(origins)
        self.warnings.extend(notices)
        return self._lift_properties(converted, "")

    def _deployment(self, document: dict[str, Any]) -> Deployment:
        """Where the ARM file is deployed (``armScope``) and with which parameter values (``armParameters``),
        checked before the conversion uses them."""
        scope = document.get("armScope") or {}
        unknown = sorted(set(scope) - set(ARM_SCOPE_KEYS)) if isinstance(scope, dict) else ["?"]
        if unknown:
            raise ConfigError(self.source, [Problem("armScope", f"unknown keys {unknown} "
                                                                f"(allowed: {', '.join(ARM_SCOPE_KEYS)})")])
        try:
            subscription = normalize_subscription(str(scope.get("subscriptionId", DEFAULT_SUBSCRIPTION)))
        except ValueError as exc:
            raise ConfigError(self.source, [Problem("armScope.subscriptionId", str(exc))]) from None
        return Deployment(subscription_id=subscription,
                          resource_group=str(scope.get("resourceGroup", DEFAULT_RESOURCE_GROUP)),
                          location=str(scope.get("location", Deployment.location)),
                          parameters=self._arm_parameters(document.get("armParameters") or {}))

    def _arm_parameters(self, given: dict[str, Any] | str) -> dict[str, Any]:
        """``armParameters``: name -> value inline, or the path of an ARM parameters file
        (``{"parameters": {"name": {"value": ...}}}``, as ``az deployment`` takes it)."""
        if isinstance(given, dict):
            return {str(k): _parameter_value(v) for k, v in given.items()}
        path = self.base_dir / str(given)
        self.files.append(str(path))
        try:
            document = arm.read_json(path, "ARM parameters file")
        except ConfigError as exc:
            problems = [_referenced_problem(p, exc.source, str(path), "armParameters") for p in exc.problems]
            raise ConfigError(self.source, problems) from None
        entries = document.get("parameters") if isinstance(document, dict) else None
        if not isinstance(entries, dict):
            raise ConfigError(str(path), [Problem("parameters", "expected an ARM parameters file: "
                                                                '{"parameters": {"<name>": {"value": ...}}}')])
        problems = [Problem(f"parameters.{name}", _parameter_entry_problem(entry))
                    for name, entry in entries.items() if not (isinstance(entry, dict) and "value" in entry)]
        if problems:
            raise ConfigError(str(path), problems)
        return {str(name): entry["value"] for name, entry in entries.items()}

    def _check_schema(self, document: dict[str, Any]) -> None:
        errors = schemacheck.validator(schema()).iter_errors(document)
        for error in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
            self.fail(_json_path(error.absolute_path), _schema_message(error))

    # -- objects ---------------------------------------------------------------------------------------------

    def _settings(self, raw: dict[str, Any]) -> Settings:
        base = Settings()
        dns = raw.get("dns") or {}
        limits = raw.get("requestLimits") or {}
        metrics = self._optional_endpoint("settings.metrics", raw, "metrics", base.metrics_listen_host,
                                          base.metrics_listen_port)
        outbound = self._optional_endpoint("settings.outbound", raw, "outbound", None, None)
        transparent = self._optional_endpoint("settings.transparent", raw, "transparent", None, None)
        dns_gate = self._optional_endpoint("settings.dnsGate", raw, "dnsGate", None, None)
        nameservers = tuple(
            ns for i, item in enumerate(dns.get("nameservers") or [])
            if (ns := self.attempt(f"settings.dns.nameservers[{i}]", _nameserver, item)) is not None
        )
        return Settings(
            subscription_header=str(raw.get("subscriptionHeader", base.subscription_header)).lower(),
            subscription_from_token=bool(raw.get("subscriptionFromToken", base.subscription_from_token)),
            intercept_tls=bool(raw.get("interceptTls", base.intercept_tls)),
            trusted_proxies=self._prefixes("settings.trustedProxies", raw.get("trustedProxies")),
            access_log=str(raw.get("accessLog", base.access_log)),
            metrics_listen_host=metrics[0],
            metrics_listen_port=metrics[1],
            nameservers=nameservers,
            dns_timeout=float(dns.get("timeout", base.dns_timeout)),
            outbound_listen_host=outbound[0],
            outbound_listen_port=outbound[1],
            blocked_destination_prefixes=self._prefixes(
                "settings.blockedDestinationPrefixes", raw.get("blockedDestinationPrefixes")
            ),
            dns_cache_size=int(dns.get("cacheSize", base.dns_cache_size)),
            dns_max_ttl=float(dns.get("maxTtl", base.dns_max_ttl)),
            dns_max_negative_ttl=float(dns.get("maxNegativeTtl", base.dns_max_negative_ttl)),
            **_bounds(raw, base),
            max_header_bytes=int(limits.get("headerBytes", base.max_header_bytes)),
            max_header_count=int(limits.get("headerCount", base.max_header_count)),
            max_target_bytes=int(limits.get("targetBytes", base.max_target_bytes)),
            access_log_format=str(raw.get("accessLogFormat", base.access_log_format)),
            access_log_aggregation=float((raw.get("accessLogAggregation") or {}).get("windowSeconds", 0)),
            transparent_listen_host=transparent[0],
            transparent_listen_port=transparent[1],
            dns_gate_listen_host=dns_gate[0],
            dns_gate_listen_port=dns_gate[1],
            dns_gate_memory=int(raw.get("dnsGateMemory", base.dns_gate_memory)),
        )

    def _optional_endpoint(
        self, path: str, raw: dict[str, Any], key: str, host: str | None, port: int | None
    ) -> tuple[str | None, int | None]:
        if key not in raw:
            return host, port
        if raw[key] is None:
            return None, None
        parsed = self.attempt(path, parse_endpoint, raw[key])
        return parsed if parsed else (None, None)

    def _prefixes(self, path: str, items: list[str] | None) -> tuple:
        parsed = (self.attempt(f"{path}[{i}]", parse_prefix, item) for i, item in enumerate(items or []))
        return tuple(p for p in parsed if p is not None)

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
        return AccessRule(name, direction, unsupported_kind=kind, unsupported_elements=len(values))

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
        local = self._local(raw.get("local") or {}, f"{path}.local")
        resource_id = _ref_id(raw["privateLinkResource"]).strip()
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


_ENUMS = {
    "accessMode": ("Learning", "Transition", "Enforced", "Audit"),
    "direction": ("Inbound", "Outbound"),
    "publicNetworkAccess": ("Enabled", "Disabled", "SecuredByPerimeter"),
    "status": ("Approved", "Pending", "Rejected", "Disconnected"),
}


def _canonical_enum(key: str, value: Any) -> Any:
    for choice in _ENUMS.get(key, ()):
        if isinstance(value, str) and value.lower() == choice.lower():
            return choice
    return value


def _referenced_problem(problem: Problem, source: str, path: str, key: str) -> Problem:
    """A problem found in a file this one references at ``key`` (``arm``, ``armParameters``), in the terms of
    the file it is in; one with that file as a whole (it cannot be read) is reported at ``key``, which named it."""
    if problem.source is not None:
        return problem
    if source == path and not problem.path and problem.reason.startswith("cannot read"):
        return Problem(key, f"{path}: {problem.reason}")
    return replace(problem, source=source)


def _parameter_value(value: Any) -> Any:
    """An inline ``armParameters`` entry: the value, or ``{value: ...}`` as copied from a parameters file."""
    return value["value"] if isinstance(value, dict) and set(value) == {"value"} else value


def _is_guid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _parameter_entry_problem(entry: Any) -> str:
    """Why a parameters-file entry gives no value, in its own terms."""
    if isinstance(entry, dict) and "reference" in entry:
        return "a Key Vault reference cannot be resolved here: give the value itself ({\"value\": ...})"
    if isinstance(entry, dict) and "defaultValue" in entry:
        return ("has 'defaultValue' but no 'value' (that belongs in the template's parameters): write "
                "{\"value\": ...}")
    if isinstance(entry, dict):
        keys = ", ".join(sorted(map(str, entry))) or "none"
        return f"missing 'value' (keys given: {keys}): write {{\"value\": ...}}"
    return f"expected {{\"value\": ...}}, not {type(entry).__name__}"


def _perimeter_ref(value: Any) -> str:
    """A ``networkSecurityPerimeters`` entry: its id (or name), else its perimeterGuid, lower case."""
    ref = _ref_id(value).strip() or (str(value.get("perimeterGuid", "")) if isinstance(value, dict) else "")
    return ref.strip().lower()


def _ref_id(value: Any) -> str:
    return str(value.get("id", "")) if isinstance(value, dict) else str(value)


def _nameserver(value: str | int) -> tuple[str, int]:
    """A nameserver is an IP address (port 53) or an ``ip:port`` / ``[v6]:port`` endpoint."""
    text = str(value).strip()
    try:
        return str(ipaddress.ip_address(text.strip("[]"))), 53
    except ValueError:
        return parse_endpoint(text)


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


def _json_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"{error.message} (allowed: {', '.join(allowed)})"
    if error.validator == "pattern" and error.schema.get("pattern", "").startswith("^[A-Za-z0-9]("):
        return (f"{error.instance!r} is not a valid Azure resource name (1-80 characters: letters, digits, "
                "'_', '.', '-'; starts with a letter or digit)")
    if error.validator == "oneOf":
        return f"{error.instance!r} has the wrong shape (expected {{id: ...}} or a string)"
    return error.message


def _bounds(raw: dict[str, Any], base: Settings) -> dict[str, Any]:
    """settings.accessLogQueue, accessLogFlushTimeout, timeouts.* and maxClientConnections (schema-checked)."""
    timeouts = raw.get("timeouts") or {}
    return {
        "access_log_queue": int(raw.get("accessLogQueue", base.access_log_queue)),
        "access_log_flush_timeout": float(raw.get("accessLogFlushTimeout", base.access_log_flush_timeout)),
        "upstream_connect_timeout": float(timeouts.get("upstreamConnect", base.upstream_connect_timeout)),
        "upstream_response_timeout": float(timeouts.get("upstreamResponse", base.upstream_response_timeout)),
        "client_headers_timeout": float(timeouts.get("clientHeaders", base.client_headers_timeout)),
        "idle_timeout": float(timeouts.get("idle", base.idle_timeout)),
        "max_client_connections": int(raw.get("maxClientConnections", base.max_client_connections)),
    }

"""Azure ARM input: templates and exports of ``Microsoft.Network/networkSecurityPerimeters`` resources.

An ARM file says everything Azure knows (perimeters, profiles, access rules, associations) but nothing about
where a resource lives on this machine, so to run it is paired with ``bindings`` (association name or
resource ID -> ``local`` block); alone, it is enough to validate and explain. The result is the same plain
document the native YAML gives, plus a map from its paths back to the ARM file's paths so that errors point at
the line the user wrote.

Templates are walked as a deployment would walk them (``proxy.config.arm_template``: classic and languageVersion 2.0,
copy loops, conditions, nested deployments) and their expressions evaluated (``proxy.config.arm_expressions``):
parameters (the values given with ``armParameters``, else their ``defaultValue``) and the functions NSP templates
use. Others are reported, not guessed. Resources of other types are skipped unread. Child types: profiles,
access rules, resource associations, links, link references and the logging configuration are read; diagnostic
settings are noticed and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.config.arm_expressions import Deployment, is_expression
from proxy.config.arm_template import NSP_TYPE, TemplateWalker, is_nsp, top_scope
from proxy.config.errors import ConfigError, Problem
from proxy.config.files import parse_json, read_text

BINDINGS_FILE = ""  # Problem.source of problems in the YAML file that holds the bindings: rendered as that file
# child type -> the list it goes to under the native perimeter ("loggingConfiguration" is one object)
LISTED_CHILDREN = {"resourceassociations": "resourceAssociations", "links": "links",
                   "linkreferences": "linkReferences"}
KNOWN_CHILDREN = {"profiles", "profiles/accessrules", "loggingconfigurations", *LISTED_CHILDREN}


def looks_like_arm(document: Any) -> bool:
    if isinstance(document, list):  # the REST API's list without its {"value": ...} wrapper
        return bool(document) and all(isinstance(item, dict) and "type" in item for item in document)
    return isinstance(document, dict) and (
        "resources" in document or "value" in document or is_nsp(document)
    )


@dataclass(frozen=True)
class Origin:
    """Where a part of the converted document was written: a file (None: the YAML file itself) and a path.
    ``properties``: Azure fields sit under ``properties`` there, the name beside it."""

    source: str | None
    path: str
    properties: bool = False


def read_json(path: Path, what: str) -> Any:
    """The JSON document at ``path``; a ConfigError naming the file and the line otherwise."""
    return parse_json(read_text(path, what), str(path))


def convert_file(path: Path, bindings: dict[str, Any], deployment: Deployment | None = None,
                 ) -> tuple[dict[str, Any], dict[str, Origin], list[str]]:
    """Convert the ARM file at ``path``; ``deployment`` is where it is deployed and with which parameter
    values (what ``parameters()``, ``resourceId()`` and perimeters without an ``id`` depend on). Returns the
    native document, where its parts came from, and notices (what was read but is not acted on)."""
    return convert_document(read_json(path, "ARM file"), str(path), bindings, deployment)


def convert_document(document: Any, source: str, bindings: dict[str, Any], deployment: Deployment | None = None,
                     ) -> tuple[dict[str, Any], dict[str, Origin], list[str]]:
    """Convert an ARM document already read from ``source`` (see ``convert_file``)."""
    return _Converter(source, deployment or Deployment()).convert(document, bindings)


def _parent_of(child: dict[str, Any]) -> dict[str, Any]:
    """A stand-in for the perimeter a child's ``id`` names (``.../networkSecurityPerimeters/<name>/...``)."""
    rid = str(child.get("id", ""))
    at = rid.lower().find("/providers/microsoft.network/networksecurityperimeters/")
    if at < 0:
        return {}
    name_end = rid.find("/", at + len("/providers/microsoft.network/networksecurityperimeters/"))
    return {"id": rid if name_end < 0 else rid[:name_end]}


class _Converter:
    def __init__(self, source: str, deployment: Deployment):
        self.source = source
        self.deployment = deployment
        self.problems: list[Problem] = []
        self.notices: list[str] = []

    def convert(self, document: Any, bindings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Origin], list[str]]:
        if not isinstance(document, dict | list):
            raise ConfigError(self.source, [Problem("", f"expected an ARM template, export or resource list (a "
                                                        f"JSON object or array), not {type(document).__name__}")])
        # Templates deploy other resources too (the Key Vault itself, feature registrations): only the NSP
        # resources are read, so expressions elsewhere need not be evaluable. Non-objects are kept to be reported.
        walker = TemplateWalker(self.problems, self.notices)
        scope = top_scope(document if isinstance(document, dict) else {}, self.deployment)
        if isinstance(document, list):  # a REST list without its {"value": ...} wrapper
            entries = [(r, f"[{i}]") for i, r in enumerate(document)]
        elif "type" in document:  # one resource, as GET returns it
            entries = [(document, "")]
        else:
            entries = walker.entries(document, "resources" if "resources" in document else "value", "")
        top = walker.walk_entries(entries, scope)
        flat = list(self._flatten(top, None, None))
        perimeters: dict[str, dict[str, Any]] = {}
        origins: dict[str, Origin] = {}
        children: list[tuple[str, list[str], dict[str, Any], str]] = []
        for rtype, names, resource, where in flat:
            if rtype == NSP_TYPE:
                origins[f"perimeters[{len(perimeters)}]"] = Origin(self.source, where, properties=True)
                perimeters[names[0].lower()] = self._perimeter(names[0], resource, where)
            elif rtype.startswith(NSP_TYPE + "/"):
                children.append((rtype[len(NSP_TYPE) + 1 :], names, resource, where))
        defined = bool(perimeters)
        for kind, names, resource, where in children:
            perimeter = perimeters.get(names[0].lower())
            if perimeter is None and defined:  # most likely a misspelt perimeter name
                self.problems.append(Problem(where, f"belongs to perimeter {names[0]!r}, which is not in the file"))
                continue
            if perimeter is None:  # no perimeter in the file: a REST list of children, a module for an existing one
                perimeter = perimeters[names[0].lower()] = self._perimeter(names[0], _parent_of(resource), where)
                perimeter["implicit"] = True
                origins[f"perimeters[{len(perimeters) - 1}]"] = Origin(self.source, where)
                self.notices.append(f"{where}: perimeter {names[0]!r} is not in the file; it is taken as it is "
                                    "named here (its children only)")
            native = self._attach(perimeter, kind, names, resource, where)
            if native:
                origins[f"perimeters[{list(perimeters).index(names[0].lower())}].{native}"] = Origin(
                    self.source, where, properties=True)
        if not perimeters and not self.problems:
            self.problems.append(Problem("", f"no {NSP_TYPE} resource found"))
        document_out = {"perimeters": [{k: v for k, v in p.items() if k != "implicit"} for p in perimeters.values()]}
        self._bind(document_out["perimeters"], bindings, origins)
        if self.problems:
            raise ConfigError(self.source, self.problems)
        return document_out, origins, self.notices

    def _flatten(self, items: list[tuple[dict[str, Any], str]], parent_type: str | None,
                 parent_names: list[str] | None):
        for resource, where in items:
            if not isinstance(resource, dict):
                self.problems.append(Problem(where, "expected a resource object"))
                continue
            rtype = str(resource.get("type", "")).lower()
            if parent_type and not rtype.startswith("microsoft."):
                rtype = f"{parent_type}/{rtype}"
            names = self._names(resource, rtype, parent_names, where)
            if names is not None:
                yield rtype, names, resource, where
                nested = self._sequence(resource, "resources", where)
                yield from self._flatten([(r, f"{where}.resources[{i}]") for i, r in enumerate(nested)], rtype, names)

    def _names(self, resource: dict[str, Any], rtype: str, parent: list[str] | None, where: str) -> list[str] | None:
        depth = rtype.count("/")  # networkSecurityPerimeters = 1, profiles = 2, accessRules = 3
        rid = str(resource.get("id", ""))
        if "networksecurityperimeters/" in rid.lower():
            tail = rid[rid.lower().index("networksecurityperimeters/") + len("networksecurityperimeters/") :]
            return tail.split("/")[0::2]
        name = str(resource.get("name", ""))
        if is_expression(name):
            return None  # could not be evaluated: already reported by the walker
        names = name.split("/")
        if parent and len(names) < depth:
            names = parent + names
        if rtype.startswith(NSP_TYPE) and len(names) != depth:
            self.problems.append(Problem(f"{where}.name", f"{name!r} does not name a {rtype.rsplit('/', 1)[-1]} "
                                                          f"(expected {depth} '/'-separated parts)"))
            return None
        return names

    def _perimeter(self, name: str, resource: dict[str, Any], where: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "subscriptionId": self.deployment.subscription_id,
                               "resourceGroup": self.deployment.resource_group, "profiles": [],
                               "resourceAssociations": [], "links": [], "linkReferences": []}
        if resource.get("location"):
            out["location"] = resource["location"]
        if str(resource.get("id", "")).lower().startswith("/subscriptions/"):
            out["id"] = resource["id"]
        # its properties too (perimeterGuid; the read-only ones are dropped later): an unknown one is refused
        props = {k: v for k, v in self._mapping(resource, "properties", where).items() if v is not None}
        return {**props, **out}

    def _attach(self, perimeter: dict[str, Any], kind: str, names: list[str], resource: dict[str, Any],
                where: str) -> str | None:
        """Add a child resource to its perimeter; return its path below the perimeter in the native document."""
        # ARM leaves out a property whose value is null (the verified module passes null for every unused one)
        props = {k: v for k, v in self._mapping(resource, "properties", where).items() if v is not None}
        if kind == "profiles":
            index = self._profile(perimeter, names[1])
            perimeter["profiles"][index].update({k: v for k, v in props.items() if k not in ("name", "accessRules")})
            return f"profiles[{index}]"
        if kind == "profiles/accessrules":
            index = self._profile(perimeter, names[1])
            rules = perimeter["profiles"][index]["accessRules"]
            rules.append({**props, "name": names[2]})
            return f"profiles[{index}].accessRules[{len(rules) - 1}]"
        if kind == "resourceassociations" and perimeter.get("implicit"):
            self._implicit_profile(perimeter, props.get("profile"), where)
        if kind in LISTED_CHILDREN:
            key = LISTED_CHILDREN[kind]
            perimeter[key].append({**props, "name": names[1]})
            return f"{key}[{len(perimeter[key]) - 1}]"
        if kind == "loggingconfigurations":
            perimeter["loggingConfiguration"] = {**props, "name": names[1]}
            return "loggingConfiguration"
        if kind == "providers/diagnosticsettings":  # the classic nested form
            self.notices.append(f"{where}: diagnostic settings of perimeter {names[0]!r} are not read: nsp-proxy "
                                "writes its access log to settings.accessLog")
            return None
        self.problems.append(Problem(where, f"unsupported resource type {kind!r} "
                                            f"(supported: {', '.join(sorted(KNOWN_CHILDREN))})"))
        return None

    def _mapping(self, node: Any, key: str, where: str) -> dict[str, Any]:
        """``node[key]`` as a (copied) mapping: absent is empty, anything else but a mapping is reported."""
        value = node.get(key) if isinstance(node, dict) else None
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problems.append(Problem(f"{where}.{key}" if where else key, f"expected an object, not "
                                                                              f"{type(value).__name__}"))
            return {}
        return dict(value)

    def _sequence(self, node: dict[str, Any], key: str, where: str) -> list[Any]:
        """``node[key]`` as a list: absent is empty, anything else but a list is reported."""
        value = node.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problems.append(Problem(f"{where}.{key}" if where else key, f"expected an array, not "
                                                                              f"{type(value).__name__}"))
            return []
        return value

    def _implicit_profile(self, perimeter: dict[str, Any], ref: Any, where: str) -> None:
        """An association of a perimeter the file does not hold names a profile the file may not hold either:
        it is taken as a profile with no rules (Enforced then denies all public traffic), and said so."""
        name = str(ref.get("id", "") if isinstance(ref, dict) else ref or "").rstrip("/").rsplit("/", 1)[-1]
        if name and not any(p["name"].lower() == name.lower() for p in perimeter["profiles"]):
            self._profile(perimeter, name)
            self.notices.append(f"{where}: profile {name!r} is not in the file; taken as a profile with no rules")

    @staticmethod
    def _profile(perimeter: dict[str, Any], name: str) -> int:
        """Index of the profile ``name`` in the perimeter, created on first mention."""
        for index, profile in enumerate(perimeter["profiles"]):
            if profile["name"].lower() == name.lower():
                return index
        perimeter["profiles"].append({"name": name, "accessRules": []})
        return len(perimeter["profiles"]) - 1

    def _bind(self, perimeters: list[dict[str, Any]], bindings: dict[str, Any], origins: dict[str, Origin]) -> None:
        """Give each association its ``local`` block from ``bindings`` (by association name or resource ID)."""
        remaining = {k.lower(): k for k in bindings}
        for pi, perimeter in enumerate(perimeters):
            for ai, assoc in enumerate(perimeter["resourceAssociations"]):
                resource = assoc.get("privateLinkResource")
                rid = str(resource.get("id", "")) if isinstance(resource, dict) else str(resource or "")
                for key in (assoc["name"].lower(), rid.lower()):
                    if key in remaining:
                        original = remaining.pop(key)
                        assoc["local"] = bindings[original]
                        origins[f"perimeters[{pi}].resourceAssociations[{ai}].local"] = Origin(
                            BINDINGS_FILE, f"bindings.{original}")
                        break
        for key in remaining.values():
            self.problems.append(Problem(f"bindings.{key}", "matches no resource association name or resource ID "
                                                            "in the ARM file", source=BINDINGS_FILE))

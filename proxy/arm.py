"""Azure ARM input: templates and exports of ``Microsoft.Network/networkSecurityPerimeters`` resources.

An ARM file says everything Azure knows (perimeters, profiles, access rules, associations) but nothing about
where a resource lives on this machine, so it is always paired with ``bindings`` (association name or
resource ID -> ``local`` block). The result is the same plain document the native YAML gives, plus a map from
its paths back to the ARM file's paths so that errors point at the line the user wrote.

ARM template expressions (``[parameters('x')]``) are not evaluated: export the deployed resources
(``az resource show``/``list``, or the REST API) or write literal names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from proxy.errors import ConfigError, Problem

NSP_TYPE = "microsoft.network/networksecurityperimeters"
KNOWN_CHILDREN = {"profiles", "profiles/accessrules", "resourceassociations"}


def looks_like_arm(document: Any) -> bool:
    if isinstance(document, list):
        return True
    return isinstance(document, dict) and (
        "resources" in document or "value" in document or str(document.get("type", "")).lower() == NSP_TYPE
    )


def convert_file(path: Path, bindings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    source = str(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(source, [Problem("", f"cannot read ARM file: {exc.strerror or exc}")]) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(source, [Problem(f"line {exc.lineno}, column {exc.colno}", f"not JSON: {exc.msg}")]) from None
    return _Converter(source).convert(document, bindings)


class _Converter:
    def __init__(self, source: str):
        self.source = source
        self.problems: list[Problem] = []

    def convert(self, document: Any, bindings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        flat = list(self._flatten(self._top_level(document), None, None))
        perimeters: dict[str, dict[str, Any]] = {}
        origins: dict[str, str] = {}
        children: list[tuple[str, list[str], dict[str, Any], str]] = []
        for rtype, names, resource, where in flat:
            if rtype == NSP_TYPE:
                perimeters[names[0].lower()] = self._perimeter(names[0], resource)
                origins[f"@{names[0].lower()}"] = where
            elif rtype.startswith(NSP_TYPE + "/"):
                children.append((rtype[len(NSP_TYPE) + 1 :], names, resource, where))
        for kind, names, resource, where in children:
            perimeter = perimeters.get(names[0].lower())
            if perimeter is None:
                self.problems.append(Problem(where, f"belongs to perimeter {names[0]!r}, which is not in the file"))
                continue
            self._attach(perimeter, kind, names, resource, where, origins)
        if not perimeters and not self.problems:
            self.problems.append(Problem("", f"no {NSP_TYPE} resource found"))
        document_out = {"perimeters": list(perimeters.values())}
        self._bind(document_out["perimeters"], bindings)
        if self.problems:
            raise ConfigError(self.source, self.problems)
        return document_out, self._native_paths(document_out, origins)

    def _top_level(self, document: Any) -> list[tuple[dict[str, Any], str]]:
        if isinstance(document, list):
            return [(r, f"[{i}]") for i, r in enumerate(document)]
        if isinstance(document, dict) and "type" in document:
            return [(document, "")]
        key = "resources" if "resources" in document else "value"
        items = document.get(key) or []
        return [(r, f"{key}[{i}]") for i, r in enumerate(items)]

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
                nested = resource.get("resources") or []
                yield from self._flatten([(r, f"{where}.resources[{i}]") for i, r in enumerate(nested)], rtype, names)

    def _names(self, resource: dict[str, Any], rtype: str, parent: list[str] | None, where: str) -> list[str] | None:
        depth = rtype.count("/")  # networkSecurityPerimeters = 1, profiles = 2, accessRules = 3
        rid = str(resource.get("id", ""))
        if "networksecurityperimeters/" in rid.lower():
            tail = rid[rid.lower().index("networksecurityperimeters/") + len("networksecurityperimeters/") :]
            return tail.split("/")[0::2]
        name = str(resource.get("name", ""))
        if "[" in name:
            self.problems.append(Problem(f"{where}.name", f"ARM expression {name!r} is not evaluated; "
                                                          "use literal names or an export of deployed resources"))
            return None
        names = name.split("/")
        if parent and len(names) < depth:
            names = parent + names
        if rtype.startswith(NSP_TYPE) and len(names) != depth:
            self.problems.append(Problem(f"{where}.name", f"{name!r} does not name a {rtype.rsplit('/', 1)[-1]} "
                                                          f"(expected {depth} '/'-separated parts)"))
            return None
        return names

    def _perimeter(self, name: str, resource: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "profiles": [], "resourceAssociations": []}
        if resource.get("location"):
            out["location"] = resource["location"]
        if str(resource.get("id", "")).lower().startswith("/subscriptions/"):
            out["id"] = resource["id"]
        return out

    def _attach(self, perimeter: dict[str, Any], kind: str, names: list[str], resource: dict[str, Any],
                where: str, origins: dict[str, str]) -> None:
        props = dict(resource.get("properties") or {})
        for volatile in ("provisioningState", "resourceGuid", "hasProvisioningStateChanged"):
            props.pop(volatile, None)
        if kind == "profiles":
            self._profile(perimeter, names[1])
            origins[f"@{names[0].lower()}/{names[1].lower()}"] = where
        elif kind == "profiles/accessrules":
            self._profile(perimeter, names[1])["accessRules"].append({"name": names[2], **props})
            origins[f"@{names[0].lower()}/{names[1].lower()}/{names[2].lower()}"] = where + ".properties"
        elif kind == "resourceassociations":
            perimeter["resourceAssociations"].append({"name": names[1], **props})
            origins[f"@{names[0].lower()}/@{names[1].lower()}"] = where + ".properties"
        else:
            self.problems.append(Problem(where, f"unsupported resource type {kind!r} "
                                                f"(supported: {', '.join(sorted(KNOWN_CHILDREN))})"))

    @staticmethod
    def _profile(perimeter: dict[str, Any], name: str) -> dict[str, Any]:
        for profile in perimeter["profiles"]:
            if profile["name"].lower() == name.lower():
                return profile
        profile = {"name": name, "accessRules": []}
        perimeter["profiles"].append(profile)
        return profile

    def _bind(self, perimeters: list[dict[str, Any]], bindings: dict[str, Any]) -> None:
        remaining = {k.lower(): k for k in bindings}
        for perimeter in perimeters:
            for assoc in perimeter["resourceAssociations"]:
                resource = assoc.get("privateLinkResource")
                rid = str(resource.get("id", "")) if isinstance(resource, dict) else str(resource or "")
                for key in (assoc["name"].lower(), rid.lower()):
                    if key in remaining:
                        assoc["local"] = bindings[remaining.pop(key)]
                        break
        for key in remaining.values():
            self.problems.append(Problem(f"bindings.{key}", "matches no resource association name or resource ID "
                                                            "in the ARM file"))

    @staticmethod
    def _native_paths(document: dict[str, Any], origins: dict[str, str]) -> dict[str, str]:
        """Translate the '@perimeter/...' keys into the native paths that validation reports."""
        paths: dict[str, str] = {}
        for pi, perimeter in enumerate(document["perimeters"]):
            pkey = f"@{perimeter['name'].lower()}"
            if pkey in origins:
                paths[f"perimeters[{pi}]"] = origins[pkey]
            for fi, profile in enumerate(perimeter["profiles"]):
                fkey = f"{pkey}/{profile['name'].lower()}"
                if fkey in origins:
                    paths[f"perimeters[{pi}].profiles[{fi}]"] = origins[fkey]
                for ri, rule in enumerate(profile["accessRules"]):
                    rkey = f"{fkey}/{rule['name'].lower()}"
                    if rkey in origins:
                        paths[f"perimeters[{pi}].profiles[{fi}].accessRules[{ri}]"] = origins[rkey]
            for ai, assoc in enumerate(perimeter["resourceAssociations"]):
                akey = f"{pkey}/@{assoc['name'].lower()}"
                if akey in origins:
                    paths[f"perimeters[{pi}].resourceAssociations[{ai}]"] = origins[akey]
        return paths

"""The NSP resources the management API serves, with ARM's semantics, and nothing else.

A ``Store`` maps lower-cased resource IDs (ARM compares them case-insensitively) to resources in the REST shape,
holding only what a client may write plus ``perimeterGuid``; read-only properties are filled when a resource is
rendered, as Azure fills them. A change never mutates a store: ``put``/``delete`` return a candidate store, which
the caller validates (``proxy.control.candidate``) and puts in force, or drops: a refused change leaves nothing
behind. Bounded: ``MAX_RESOURCES`` resources, pages of at most ``MAX_PAGE`` items.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from proxy.control.resources import (
    APPLIES_TO_SINCE,
    KINDS,
    PERIMETER_TYPE,
    ArmError,
    Target,
    check_name,
    not_found,
)

MAX_RESOURCES = 10_000  # in one store (every kind together)
MAX_PAGE = 100  # items per page of a list; $top may ask for fewer
WRITABLE = {  # kind -> the properties a client may set; others are read-only (dropped) or refused by validation
    "profiles": (),
    "accessRules": ("direction", "addressPrefixes", "fullyQualifiedDomainNames", "subscriptions", "emailAddresses",
                    "phoneNumbers", "serviceTags"),
    "resourceAssociations": ("privateLinkResource", "profile", "accessMode"),
    "links": ("autoApprovedRemotePerimeterResourceId", "localInboundProfiles", "remoteInboundProfiles",
              "description"),
    "loggingConfigurations": ("enabledLogCategories", "version"),
}
READ_ONLY = ("provisioningState", "perimeterGuid", "accessRulesVersion", "diagnosticSettingsVersion",
             "hasProvisioningIssues", "appliesTo", "networkSecurityPerimeters", "status", "remotePerimeterGuid",
             "remotePerimeterLocation", "localOutboundProfiles", "remoteOutboundProfiles")
RULE_LISTS = ("addressPrefixes", "fullyQualifiedDomainNames", "subscriptions", "networkSecurityPerimeters",
              "emailAddresses", "phoneNumbers", "serviceTags")


@dataclass
class Store:
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # lower-cased ID -> REST-shaped resource
    versions: dict[str, int] = field(default_factory=dict)  # lower-cased profile ID -> accessRulesVersion

    @classmethod
    def from_resources(cls, resources: list[dict[str, Any]]) -> Store:
        store = cls()
        for resource in resources:
            store.resources[resource["id"].lower()] = resource
            if resource["type"].lower().endswith("/profiles"):
                store.versions[resource["id"].lower()] = 0
        return store

    def copy(self) -> Store:
        return Store(dict(self.resources), dict(self.versions))

    def document(self) -> dict[str, Any]:
        """The store as a REST list, the shape the ARM importer reads; profiles carry their accessRulesVersion
        (ignored by the validator, kept in the state file so that a restart continues counting)."""
        return {"value": [{**r, "properties": {**r["properties"], "accessRulesVersion": str(self.versions[k])}}
                          if k in self.versions else r for k, r in self.resources.items()]}

    # -- reading ----------------------------------------------------------------------------------------------

    def get(self, target: Target) -> dict[str, Any]:
        self._parent(target)
        resource = self.resources.get(target.resource_id.lower())
        if resource is None:
            raise not_found(target, target.resource_id)
        return resource

    def members(self, target: Target) -> list[dict[str, Any]]:
        """The resources of the collection ``target`` names (404 when its parent is missing)."""
        if target.resource_group is None:
            prefix = f"/subscriptions/{target.subscription}/".lower()
            return [r for k, r in self.resources.items() if k.startswith(prefix) and r["type"] == PERIMETER_TYPE]
        if target.kind == KINDS["networksecurityperimeters"].segment:
            prefix = f"/subscriptions/{target.subscription}/resourcegroups/{target.resource_group}/".lower()
            return [r for k, r in self.resources.items() if k.startswith(prefix) and r["type"] == PERIMETER_TYPE]
        parent = self._parent(target)
        assert parent is not None
        prefix = f"{parent.lower()}/{target.kind.lower()}/"
        return [r for k, r in self.resources.items() if k.startswith(prefix) and "/" not in k[len(prefix):]]

    def has(self, resource_id: str) -> bool:
        return resource_id.lower() in self.resources

    def _parent(self, target: Target) -> str | None:
        """The parent's ID of ``target``'s resource (or of its collection), which must exist."""
        depth = len(target.names) - 2
        for level in range(depth + 1):
            rid = target.id_of(level)
            if rid.lower() not in self.resources:
                raise not_found(target, rid, parent=True)
        return target.id_of(depth) if depth >= 0 else None

    # -- changing ---------------------------------------------------------------------------------------------

    def put(self, target: Target, body: Any) -> tuple[Store, dict[str, Any], bool]:
        """A candidate store with ``body`` created or replaced at ``target``; the stored resource; created?"""
        kind = KINDS[target.kind.lower()]
        if not kind.writable:
            raise ArmError(405, "MethodNotAllowed", f"{target.type} is read-only: it is created by the link of "
                                                    "the remote perimeter.")
        check_name(str(target.names[-1]), target.type)
        if kind.segment == "loggingConfigurations" and str(target.names[-1]).lower() != "instance":
            raise ArmError(400, "InvalidResourceName", "A perimeter has one logging configuration, named 'instance'.")
        self._parent(target)
        if not isinstance(body, dict):
            raise ArmError(400, "InvalidRequestFormat", "The request content must be a JSON object.")
        props = body.get("properties", {})
        if not isinstance(props, dict):
            raise ArmError(400, "InvalidRequestFormat", "'properties' must be a JSON object.", target="properties")
        key = target.resource_id.lower()
        old = self.resources.get(key)
        if old is None and len(self.resources) >= MAX_RESOURCES:
            raise ArmError(409, "QuotaExceeded", f"nsp-proxy holds at most {MAX_RESOURCES} NSP resources.")
        rid = old["id"] if old else target.resource_id  # ARM keeps the casing of the create
        resource: dict[str, Any] = {"id": rid, "name": rid.rsplit("/", 1)[-1], "type": target.type}
        if kind.parent is None:
            if not body.get("location"):
                raise ArmError(400, "LocationRequired", "The location property is required for this definition.",
                               target="location")
            guid = (old or {}).get("properties", {}).get("perimeterGuid")
            resource["location"] = str(body["location"])
            properties: dict[str, Any] = {"perimeterGuid": guid or str(uuid.uuid5(uuid.NAMESPACE_URL, key))}
        else:
            writable = WRITABLE[kind.segment]
            properties = {k: v for k, v in props.items() if k not in READ_ONLY or k in writable}
            if kind.segment == "links":
                properties["status"] = "Approved"  # auto-approved: the remote perimeter is local too
        if isinstance(body.get("tags"), dict):
            resource["tags"] = body["tags"]
        now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        created = ((old or {}).get("systemData") or {}).get("createdAt", now)
        resource["systemData"] = {"createdBy": "nsp-proxy", "createdByType": "Application", "createdAt": created,
                                  "lastModifiedBy": "nsp-proxy", "lastModifiedByType": "Application",
                                  "lastModifiedAt": now}
        resource["properties"] = properties
        candidate = self.copy()
        candidate.resources[key] = resource
        if kind.segment == "profiles":
            candidate.versions[key] = self.versions.get(key, 0)
        if kind.segment == "accessRules":
            candidate._bump(target)
        return candidate, resource, old is None

    def delete(self, target: Target) -> Store | None:
        """A candidate store without ``target``'s resource and its children; None when there is none."""
        key = target.resource_id.lower()
        try:
            self._parent(target)
        except ArmError:
            return None
        if key not in self.resources:
            return None
        candidate = self.copy()
        for child in [k for k in candidate.resources if k == key or k.startswith(key + "/")]:
            del candidate.resources[child]
            candidate.versions.pop(child, None)
        if target.kind == "accessRules":
            candidate._bump(target)
        return candidate

    def _bump(self, rule: Target) -> None:
        """accessRulesVersion counts every change of a profile's rules."""
        profile = (rule.parent_id or "").lower()
        self.versions[profile] = self.versions.get(profile, 0) + 1

    # -- rendering --------------------------------------------------------------------------------------------

    def render(self, resource: dict[str, Any], api_version: str, bound: Callable[[str], bool]) -> dict[str, Any]:
        """``resource`` as Azure returns it: read-only properties filled."""
        props = dict(resource["properties"])
        rtype = resource["type"].rsplit("/", 1)[-1]
        if rtype == "profiles":
            props["accessRulesVersion"] = str(self.versions.get(resource["id"].lower(), 0))
            props["diagnosticSettingsVersion"] = "0"
        elif rtype == "accessRules":
            props = {"direction": props.get("direction", "Inbound"),
                     **{k: props.get(k, []) for k in RULE_LISTS}, **props}
            if api_version >= APPLIES_TO_SINCE:
                props["appliesTo"] = [{"resourceType": "*", "features": ["*"]}]
        elif rtype == "resourceAssociations":
            link = props.get("privateLinkResource")
            rid = str(link.get("id", "")) if isinstance(link, dict) else ""
            props.setdefault("accessMode", "Learning")
            props["hasProvisioningIssues"] = "no" if bound(rid) else "yes"
        props["provisioningState"] = "Succeeded"
        return {**resource, "properties": props}


def page(items: list[dict[str, Any]], top: str | None, skip_token: str | None, next_base: str,
         ) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a list and the ``nextLink`` to the next one (None on the last page)."""
    try:
        size = min(int(top), MAX_PAGE) if top is not None else MAX_PAGE
        start = int(skip_token) if skip_token is not None else 0
    except ValueError:
        raise ArmError(400, "InvalidRequestFormat", "$top and $skipToken must be integers.") from None
    if size < 1 or start < 0:
        raise ArmError(400, "InvalidRequestFormat", "$top must be at least 1 and $skipToken not negative.")
    end = start + size
    if end >= len(items):
        return items[start:], None
    extra = f"&$top={size}" if top is not None else ""
    return items[start:end], f"{next_base}{extra}&$skipToken={quote(str(end))}"

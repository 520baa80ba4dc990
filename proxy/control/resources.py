"""ARM's vocabulary for NSP: resource paths, types, api-versions and the error shape.

A request path is parsed once into a ``Target`` (which collection or resource it names, with its parent IDs),
case-insensitively as ARM compares IDs; the casing the caller used when a resource was created is what later
responses show, as in Azure. Everything a client can get wrong is an ``ArmError`` carrying ARM's status, code
and message, so the server never answers with anything but ARM's ``{"error": {...}}`` shape.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

PROVIDER = "Microsoft.Network"
PERIMETERS = "networkSecurityPerimeters"
PERIMETER_TYPE = f"{PROVIDER}/{PERIMETERS}"
OPERATION_STATUSES = "networkSecurityPerimeterOperationStatuses"
# Every api-version with NSP resources (FACTS.md / AZURE-SOURCES.md "API versions"); the SDK's default is last.
API_VERSIONS = ("2021-02-01-preview", "2023-07-01-preview", "2023-08-01-preview", "2024-06-01-preview",
                "2024-07-01", "2024-10-01", "2025-01-01", "2025-03-01", "2025-05-01", "2025-07-01", "2026-03-01")
APPLIES_TO_SINCE = "2026-03-01"  # access-rule responses carry appliesTo from this version on
API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-[a-z]+)?$")
NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*[A-Za-z0-9_]|[A-Za-z0-9])$")
MAX_NAME = 80


@dataclass(frozen=True)
class Kind:
    """A child type of a perimeter: its path segment, its parent kind and whether ARM runs it as an LRO."""

    segment: str  # as Azure spells it in paths and types
    parent: str | None  # the parent kind's segment; None for perimeters
    lro_put: bool = False
    lro_delete: bool = False
    writable: bool = True  # linkReferences are created by the remote perimeter's link, never PUT


KINDS = {k.segment.lower(): k for k in (
    Kind(PERIMETERS, None, lro_delete=True),
    Kind("profiles", PERIMETERS),
    Kind("accessRules", "profiles"),
    Kind("resourceAssociations", PERIMETERS, lro_put=True, lro_delete=True),
    Kind("links", PERIMETERS, lro_delete=True),
    Kind("linkReferences", PERIMETERS, lro_delete=True, writable=False),
    Kind("loggingConfigurations", PERIMETERS),
)}


class ArmError(Exception):
    """An answer in ARM's error shape: ``{"error": {"code", "message", "target", "details"}}``."""

    def __init__(self, status: int, code: str, message: str, target: str | None = None,
                 details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.target = status, code, message, target
        self.details = details or []

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = self.target
        if self.details:
            error["details"] = self.details
        return {"error": error}


@dataclass(frozen=True)
class Target:
    """What a request path names. ``names`` are the perimeter's and its descendants' names (the last may be
    None: the collection of that kind). ``kind`` is the segment of the last level."""

    subscription: str
    resource_group: str | None  # None: a subscription-wide list of perimeters
    kind: str
    names: tuple[str | None, ...] = ()
    kinds: tuple[str, ...] = field(default=())  # the segment of every level, perimeter first

    @property
    def is_collection(self) -> bool:
        return not self.names or self.names[-1] is None

    def id_of(self, depth: int) -> str:
        """The resource ID of level ``depth`` (0 = the perimeter)."""
        out = f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/{PERIMETER_TYPE}"
        for level in range(depth + 1):
            out += ("" if level == 0 else f"/{self.kinds[level]}") + f"/{self.names[level]}"
        return out

    @property
    def resource_id(self) -> str:
        return self.id_of(len(self.names) - 1)

    @property
    def parent_id(self) -> str | None:
        depth = len(self.names) - 2
        return self.id_of(depth) if depth >= 0 else None

    @property
    def collection_path(self) -> str:
        """The path of the collection this target lists (or belongs to)."""
        if self.resource_group is None:
            return f"/subscriptions/{self.subscription}/providers/{PERIMETER_TYPE}"
        parent = self.parent_id if self.names else None
        base = parent or f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/{PROVIDER}"
        return f"{base}/{self.kind}"

    @property
    def type(self) -> str:
        return "/".join([PERIMETER_TYPE, *self.kinds[1:]])


@dataclass(frozen=True)
class OperationTarget:
    subscription: str
    location: str
    operation_id: str


def parse_path(path: str) -> Target | OperationTarget:
    """The ``Target`` of an ARM path; ArmError 404 (as ARM answers an unknown route) otherwise."""
    parts = [p for p in path.split("/") if p]
    low = [p.lower() for p in parts]
    if len(parts) < 4 or low[0] != "subscriptions":
        raise _no_route(path)
    subscription = parts[1]
    try:
        uuid.UUID(subscription)
    except ValueError:
        raise ArmError(400, "InvalidSubscriptionId", f"The provided subscription identifier '{subscription[:80]}' "
                                                     "is malformed or invalid.") from None
    if low[2:4] == ["providers", PROVIDER.lower()]:
        rest = low[4:]
        if rest == [PERIMETERS.lower()]:
            return Target(subscription, None, PERIMETERS, (), (PERIMETERS,))
        if len(rest) == 4 and rest[0] == "locations" and rest[2] == OPERATION_STATUSES.lower():
            return OperationTarget(subscription, parts[5], parts[7])
        raise _no_route(path)
    if low[2] != "resourcegroups" or len(parts) < 7 or low[4:6] != ["providers", PROVIDER.lower()]:
        raise _no_route(path)
    group, rest = parts[3], parts[6:]
    if rest[0].lower() != PERIMETERS.lower():
        raise _no_route(path)
    kinds: list[str] = []
    names: list[str | None] = []
    for index in range(0, len(rest), 2):
        kind = KINDS.get(rest[index].lower())
        expected_parent = kinds[-1] if kinds else None
        if kind is None or kind.parent != expected_parent:
            raise _no_route(path)
        kinds.append(kind.segment)
        names.append(rest[index + 1] if index + 1 < len(rest) else None)
    if len(kinds) == 1 and names == [None]:
        return Target(subscription, group, PERIMETERS, (), (PERIMETERS,))
    return Target(subscription, group, kinds[-1], tuple(names), tuple(kinds))


def check_api_version(given: str | None, resource_type: str) -> str:
    """The request's api-version, if nsp-proxy knows it (ARM's codes and messages otherwise)."""
    if not given:
        raise ArmError(400, "MissingApiVersionParameter",
                       "The api-version query parameter (?api-version=) is required for all requests.")
    if not API_VERSION.match(given):
        raise ArmError(400, "InvalidApiVersionParameter",
                       f"The api-version '{given[:40]}' is invalid. The supported versions are "
                       f"'{', '.join(API_VERSIONS)}'.")
    if given not in API_VERSIONS:
        raise ArmError(400, "NoRegisteredProviderFound",
                       f"No registered resource provider found for location 'global' and API version '{given}' "
                       f"for type '{resource_type}'. The supported api-versions are '{', '.join(API_VERSIONS)}'.")
    return given


def check_name(name: str, kind: str) -> None:
    if len(name) > MAX_NAME or not NAME.match(name):
        raise ArmError(400, "InvalidResourceName",
                       f"Resource name {name!r} is invalid for {kind}: 1-{MAX_NAME} characters, letters, digits, "
                       "'_', '.' and '-', starting with a letter or digit and not ending with '.' or '-'.")


def not_found(target: Target, resource_id: str, parent: bool = False) -> ArmError:
    """ARM's 404 for a missing resource (or a missing parent of the one asked for)."""
    tail = resource_id.split("/providers/", 1)[-1]  # Microsoft.Network/networkSecurityPerimeters/nsp1/...
    if parent:
        return ArmError(404, "ParentResourceNotFound", f"Can not perform requested operation on nested resource. "
                                                       f"Parent resource '{tail.split('/', 2)[-1]}' not found.")
    code = "ResourceNotFound"
    message = (f"The Resource '{tail}' under resource group '{target.resource_group}' was not found. For more "
               "details please go to https://aka.ms/ARMResourceNotFoundFix")
    return ArmError(404, code, message)


def _no_route(path: str) -> ArmError:
    return ArmError(404, "InvalidResourceType",
                    f"The resource type could not be found in the namespace '{PROVIDER}' for path '{path[:300]}'.")

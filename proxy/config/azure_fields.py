"""Properties Azure sends back that nsp-proxy accepts and ignores: ONE list, documented in config/README.md.

Real exports and GET responses carry read-only and newer properties on every NSP object. They say nothing about
what traffic is allowed, so they are accepted wherever they appear (perimeters, profiles, access rules,
resource associations, links, link references, the logging configuration) and dropped before validation.
Any other unknown property is still refused with its path: a typo must not silently widen or narrow access.
"""

from __future__ import annotations

from typing import Any

IGNORED_PROPERTIES = (
    "provisioningState",  # every object (Succeeded, Creating, ...)
    "hasProvisioningIssues",  # resource associations, since 2023-07-01-preview ("no"/"yes")
    "appliesTo",  # access rules, 2026-03-01: [{"resourceType": "*", "features": ["*"]}]
    "perimeterGuid",  # read-only; on a perimeter it is KEPT (it is what logs name the perimeter by)
    "accessRulesVersion",  # profiles
    "diagnosticSettingsVersion",  # profiles
    "systemData",  # createdBy/At, lastModifiedBy/At
    "etag",
    "tags",
    "displayName",  # 2021-02-01-preview, on any object
    "description",  # 2021-02-01-preview, on any object (a link's description too)
    "type",  # the ARM resource type of a pasted REST body
    "location",  # children repeat the perimeter's (templates, REST bodies); a perimeter's own location is kept
    "resourceGuid",
    "hasProvisioningStateChanged",
)
KEPT = {"perimeters": ("perimeterGuid", "location")}  # list key -> ignored names that list's objects do use


def drop_ignored(node: dict[str, Any], container: str) -> dict[str, Any]:
    """``node`` (an object of the list ``container``, e.g. ``accessRules``) without Azure's ignored properties."""
    kept = KEPT.get(container, ())
    return {k: v for k, v in node.items() if k not in IGNORED_PROPERTIES or k in kept}

"""The shapes ``nsp-proxy suggest`` writes its rules in: a YAML patch (or the whole configuration with the rules
merged), ARM resources that deploy as they are, the equivalent Azure CLI commands, and JSON for machines.

Every shape names the same rules: per profile, at most one rule per kind (``suggested-inbound-addresses``,
``suggested-inbound-subscriptions``, ``suggested-outbound-fqdns``; a number is appended when the profile
already has a rule of that name). Evidence (records, first and last seen) is in YAML comments, the ARM
template's ``metadata`` and each rule's ``comments``, and the CLI script's comments.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

import yaml

from proxy.model import Config
from proxy.tools.common import Evidence
from proxy.tools.suggest import ADDRESSES, FQDNS, SUBSCRIPTIONS, ProfileSuggestion, Suggestions

API_VERSION = "2023-08-01-preview"  # as the REST API's examples and our ARM tests use
NSP = "Microsoft.Network/networkSecurityPerimeters"
SHOWN = 10  # elements that did not fit, listed in the summary (all of them in --format json)
_RULES = ((ADDRESSES, "Inbound", "suggested-inbound-addresses"),
          (SUBSCRIPTIONS, "Inbound", "suggested-inbound-subscriptions"),
          (FQDNS, "Outbound", "suggested-outbound-fqdns"))


class OutputError(ValueError):
    """The requested shape cannot be written from this input (e.g. a whole config from an ARM-based one)."""


@dataclass(frozen=True)
class Rule:
    perimeter: str
    profile: str
    name: str
    direction: str
    kind: str
    elements: dict[str, Evidence]

    def properties(self) -> dict[str, Any]:
        values: list[Any] = list(self.elements)
        if self.kind == SUBSCRIPTIONS:
            values = [{"id": f"/subscriptions/{guid}"} for guid in self.elements]
        return {"direction": self.direction, self.kind: values}

    def evidence(self) -> Evidence:
        total = Evidence()
        for evidence in self.elements.values():
            total.merge(evidence)
        return total


def rules(result: Suggestions, config: Config | None) -> list[Rule]:
    out: list[Rule] = []
    for suggestion in result.profiles.values():
        taken = _rule_names(config, suggestion)
        for kind, direction, base in _RULES:
            if suggestion.elements.get(kind):
                name = base
                number = 2
                while name.lower() in taken:
                    name, number = f"{base}-{number}", number + 1
                taken.add(name.lower())
                out.append(Rule(suggestion.perimeter, suggestion.profile, name, direction, kind,
                                suggestion.elements[kind]))
    return out


def _rule_names(config: Config | None, suggestion: ProfileSuggestion) -> set[str]:
    for perimeter in config.perimeters if config else ():
        for profile in perimeter.profiles if perimeter.name == suggestion.perimeter else ():
            if profile.name == suggestion.profile:
                return {r.name.lower() for r in profile.rules}
    return set()


# -- YAML ------------------------------------------------------------------------------------------------------


def yaml_patch(found: list[Rule]) -> str:
    """The rules to add, in our configuration's shape, evidence in comments."""
    if not found:
        return "# nsp-proxy suggest: no access rule to add\nperimeters: []\n"
    lines = ["# nsp-proxy suggest: add these access rules to the profiles of your configuration", "perimeters:"]
    for perimeter in _unique(r.perimeter for r in found):
        lines += [f"  - name: {_scalar(perimeter)}", "    profiles:"]
        for profile in _unique(r.profile for r in found if r.perimeter == perimeter):
            lines += [f"      - name: {_scalar(profile)}", "        accessRules:"]
            for rule in (r for r in found if (r.perimeter, r.profile) == (perimeter, profile)):
                lines += [f"          - name: {rule.name}  # {rule.evidence().text()}",
                          f"            direction: {rule.direction}", f"            {rule.kind}:"]
                for value, evidence in rule.elements.items():
                    item = f"id: /subscriptions/{value}" if rule.kind == SUBSCRIPTIONS else _scalar(value)
                    lines.append(f"              - {item}  # {evidence.text()}")
    return "\n".join(lines) + "\n"


def merged_config(found: list[Rule], config: Config, enforce: bool, resource: str | None) -> str:
    """The configuration file with the rules appended to their profiles (and, with ``enforce``, its
    associations switched to Enforced). Only for native YAML/JSON configurations: ARM input is the user's
    template, which ``--format arm`` complements."""
    with open(config.source, encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    if not isinstance(document, dict) or not isinstance(document.get("perimeters"), list):
        raise OutputError(f"{config.source} is not a native configuration with 'perimeters:' (an ARM-based one?): "
                          "use --format arm or --format yaml and edit it in")
    for perimeter in document["perimeters"]:
        body = _body(perimeter)
        for profile in body.get("profiles") or []:
            mine = [r for r in found if (r.perimeter, r.profile) == (perimeter.get("name"), profile.get("name"))]
            if mine:
                _body(profile).setdefault("accessRules", []).extend(
                    {"name": r.name, **r.properties()} for r in mine)
        for assoc in body.get("resourceAssociations") or []:
            if enforce and (resource is None or str(assoc.get("name", "")).lower() == resource.lower()):
                _body(assoc)["accessMode"] = "Enforced"
    return yaml.safe_dump(document, sort_keys=False)


def _body(node: dict[str, Any]) -> dict[str, Any]:
    """Azure fields may sit under ARM's ``properties:`` wrapper, which our configuration accepts."""
    return node["properties"] if isinstance(node.get("properties"), dict) else node


# -- ARM -------------------------------------------------------------------------------------------------------


def arm_template(found: list[Rule], config: Config | None) -> str:
    """A deployment template: the perimeter and profile (re-declared: a child needs its parent in the same
    deployment to validate, and PUT of an existing one with the same name keeps it) and the access rules."""
    locations = {p.name: p.location for p in config.perimeters} if config else {}
    resources: list[dict[str, Any]] = []
    evidence: dict[str, Any] = {}
    for perimeter in _unique(r.perimeter for r in found):
        resources.append({"type": NSP, "apiVersion": API_VERSION, "name": perimeter,
                          "location": locations.get(perimeter) or "[resourceGroup().location]", "properties": {}})
        for profile in _unique(r.profile for r in found if r.perimeter == perimeter):
            resources.append({"type": f"{NSP}/profiles", "apiVersion": API_VERSION,
                              "name": f"{perimeter}/{profile}", "properties": {},
                              "dependsOn": [f"[resourceId('{NSP}', '{perimeter}')]"]})
            for rule in (r for r in found if (r.perimeter, r.profile) == (perimeter, profile)):
                resources.append({
                    "type": f"{NSP}/profiles/accessRules", "apiVersion": API_VERSION,
                    "name": f"{perimeter}/{profile}/{rule.name}", "comments": f"nsp-proxy suggest: "
                    f"{rule.evidence().text()}", "properties": rule.properties(),
                    "dependsOn": [f"[resourceId('{NSP}/profiles', '{perimeter}', '{profile}')]"]})
                evidence[f"{perimeter}/{profile}/{rule.name}"] = {k: v.as_dict() for k, v in rule.elements.items()}
    template = {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
                "contentVersion": "1.0.0.0", "metadata": {"generator": "nsp-proxy suggest", "evidence": evidence},
                "resources": resources}
    return json.dumps(template, indent=2) + "\n"


# -- Azure CLI -------------------------------------------------------------------------------------------------


def az_commands(found: list[Rule], config: Config | None) -> str:
    groups = {p.name: _resource_group(p.resource_id) for p in config.perimeters} if config else {}
    lines = ["#!/bin/sh", "# nsp-proxy suggest: Azure CLI commands (nsp extension) creating the suggested rules",
             "set -e"]
    for rule in found:
        group = groups.get(rule.perimeter) or "$RESOURCE_GROUP"
        command = ["az", "network", "perimeter", "profile", "access-rule", "create", "--name", rule.name,
                   "--profile-name", rule.profile, "--perimeter-name", rule.perimeter]
        quoted = " ".join(shlex.quote(part) for part in command)
        quoted += f" --resource-group {shlex.quote(group) if not group.startswith('$') else group}"
        if rule.kind == ADDRESSES:
            quoted += f' --address-prefixes "{_shorthand(list(rule.elements))}"'
        elif rule.kind == FQDNS:
            quoted += f' --fqdn "{_shorthand(list(rule.elements))}" --direction Outbound'
        else:
            quoted += " --subscriptions " + " ".join(
                shlex.quote(f"[{i}].id=/subscriptions/{guid}") for i, guid in enumerate(rule.elements))
        lines += [f"# {rule.perimeter}/{rule.profile}: {rule.evidence().text()}", quoted]
    return "\n".join(lines) + "\n"


def _shorthand(values: list[str]) -> str:
    """The CLI's shorthand list syntax; values are validated prefixes and names (no shell metacharacters but
    ``*``, which double quotes keep from globbing)."""
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _resource_group(resource_id: str) -> str:
    parts = resource_id.split("/")
    lowered = [p.lower() for p in parts]
    return parts[lowered.index("resourcegroups") + 1] if "resourcegroups" in lowered[:-1] else ""


# -- JSON and the summary --------------------------------------------------------------------------------------


def as_json(result: Suggestions, found: list[Rule]) -> str:
    return json.dumps({
        "records": result.records, "wouldDeny": result.would_deny,
        "alreadyAllowed": result.already_allowed.as_dict(),
        "rules": [{"perimeter": r.perimeter, "profile": r.profile, "name": r.name, **r.properties(),
                   "evidence": {k: v.as_dict() for k, v in r.elements.items()}} for r in found],
        "notSuggested": [{"reason": why, **ev.as_dict()} for why, ev in result.not_suggested.items()],
        "didNotFit": [{"perimeter": s.perimeter, "profile": s.profile, "kind": kind, "value": value,
                       **ev.as_dict()} for s in result.profiles.values() for kind, value, ev in s.did_not_fit],
        "widened": {f"{s.perimeter}/{s.profile}": f"/{s.widened_to}" for s in result.profiles.values()
                    if s.widened_to is not None},
    }, indent=2) + "\n"


def summary(result: Suggestions, found: list[Rule], config: Config | None) -> list[str]:
    """What a person should know beyond the rules: what was not suggested and why, what did not fit."""
    lines = [f"{result.records} record(s), {result.would_deny} that Enforced would deny; "
             f"{sum(len(r.elements) for r in found)} rule element(s) in {len(found)} rule(s) suggested"]
    if config is None and found:
        lines.append("without --config, the profiles' existing rules are not counted against the limit and "
                     "nothing the configuration already allows is left out")
    if any(p in (s.perimeter, s.profile) for s in result.profiles.values() for p in ("PERIMETER", "PROFILE")):
        lines.append("some records name no perimeter or profile (written before nsp-proxy logged them): "
                     "PERIMETER/PROFILE stand in for them; give --config")
    if result.already_allowed.count:
        lines.append(f"already allowed by the configuration: {result.already_allowed.text()}")
    for why, evidence in result.not_suggested.items():
        lines.append(f"not suggested: {why}: {evidence.text()}")
    for s in result.profiles.values():
        if s.widened_to is not None:
            lines.append(f"{s.perimeter}/{s.profile}: addresses widened (up to /{s.widened_to} IPv4) to fit "
                         f"{s.existing_elements} existing + suggested elements in Azure's limit")
        if s.did_not_fit:
            lines.append(f"{len(s.did_not_fit)} element(s) did not fit in {s.perimeter}/{s.profile} "
                         f"({s.existing_elements} existing elements; least used first dropped):")
        for kind, value, evidence in s.did_not_fit[:SHOWN]:
            lines.append(f"  did not fit: {kind} {value}: {evidence.text()}")
        if len(s.did_not_fit) > SHOWN:
            lines.append(f"  ... and {len(s.did_not_fit) - SHOWN} more (all of them: --format json, didNotFit)")
        if s.overflow:
            lines.append(f"{s.perimeter}/{s.profile}: {s.overflow} record(s) beyond the distinct-value bound "
                         "were not considered")
    return lines


def _unique(values: Any) -> list[str]:
    return list(dict.fromkeys(values))


def _scalar(value: str) -> str:
    """A YAML scalar: plain when safe, quoted otherwise (``*.example.com`` would be an alias)."""
    dumped = yaml.safe_dump(value, default_style=None).strip()
    return dumped.removesuffix("\n...").removesuffix("...").strip()

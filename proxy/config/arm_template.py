"""Walking an ARM template as a deployment would: which NSP resources it creates, fully evaluated.

Both template languages are read: ``resources`` as an array (classic) or, with ``languageVersion: "2.0"``, as an
object keyed by symbolic name (what Bicep emits, e.g. Microsoft's verified NSP module). A resource is deployed
``count`` times by its ``copy`` loop (``copyIndex()``), not at all when its ``condition`` is false, and never
when it is an ``existing`` reference. Nested deployments (``Microsoft.Resources/deployments`` with an inline
``template``, how Bicep modules compile) are walked with the parameters passed down to them: in the ``inner``
expression scope with their own parameters and variables, in the default ``outer`` scope with the parent's.

Only what matters to NSP is evaluated: NSP resources, deployments that contain some, and diagnostic settings
scoped to a perimeter (not read: a notice says so). Everything else (the Key Vault, telemetry deployments, role
assignments, locks) is skipped unread, so expressions there that nsp-proxy cannot evaluate cost nothing.
Bounded: ``MAX_DEPLOYMENT_DEPTH`` levels of nesting, ``MAX_RESOURCES`` resources deployed in all.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from typing import Any

from proxy.config.arm_expressions import Deployment, ExpressionError, Scope, check_count, evaluate_value, is_expression
from proxy.config.errors import Problem

NSP_TYPE = "microsoft.network/networksecurityperimeters"
DEPLOYMENTS = "microsoft.resources/deployments"
DIAGNOSTIC_SETTINGS = "microsoft.insights/diagnosticsettings"
READ_KEYS = ("type", "name", "id", "location", "properties")  # of an NSP resource; nested "resources" besides
MAX_DEPLOYMENT_DEPTH = 10
MAX_RESOURCES = 20_000


def is_nsp(resource: Any) -> bool:
    return isinstance(resource, dict) and str(resource.get("type", "")).lower().startswith(NSP_TYPE)


def _linked(resource: dict[str, Any]) -> bool:
    props = resource.get("properties")
    return isinstance(props, dict) and "templateLink" in props and "template" not in props


def _mentions_nsp(resource: dict[str, Any]) -> bool:
    return NSP_TYPE in json.dumps(resource).lower()


class TemplateWalker:
    """Collects the evaluated NSP resources of a template (and its nested deployments), with their paths."""

    def __init__(self, problems: list[Problem], notices: list[str]):
        self.problems = problems
        self.notices = notices
        self.deployed = 0

    def walk(self, document: dict[str, Any], scope: Scope, prefix: str = "", depth: int = 0,
             ) -> list[tuple[Any, str]]:
        """The NSP resources the template ``document`` deploys in ``scope``."""
        return self.walk_entries(self.entries(document, "resources", prefix), scope, depth)

    def walk_entries(self, entries: list[tuple[Any, str]], scope: Scope, depth: int = 0) -> list[tuple[Any, str]]:
        """The NSP resources deployed by ``entries`` (resource, path); non-objects are kept as they are (the
        caller reports them)."""
        out: list[tuple[Any, str]] = []
        for resource, where in entries:
            if not isinstance(resource, dict):
                out.append((resource, where))
                continue
            rtype = str(resource.get("type", "")).lower()
            if rtype == DEPLOYMENTS and _linked(resource):
                self.notices.append(f"{where}: a linked template (templateLink) is not read; if it deploys NSP "
                                    "resources, give nsp-proxy the compiled template with it inline")
                continue
            relevant = (rtype.startswith(NSP_TYPE) or rtype == DIAGNOSTIC_SETTINGS
                        or (rtype == DEPLOYMENTS and _mentions_nsp(resource)))
            if not relevant or resource.get("existing") is True:
                continue
            for copy_scope, at in self._copies(resource, scope, where):
                if not self._condition(resource, copy_scope, at):
                    continue
                self.deployed += 1
                if self.deployed > MAX_RESOURCES:
                    self.problems.append(Problem(at, f"the template deploys more than {MAX_RESOURCES} resources"))
                    return out
                if rtype == DEPLOYMENTS:
                    out.extend(self._nested(resource, copy_scope, at, depth))
                elif rtype == DIAGNOSTIC_SETTINGS:
                    self._diagnostic_settings(resource, copy_scope, at)
                else:
                    out.append((_scoped(self.evaluate_resource(resource, at, copy_scope), copy_scope), at))
        return out

    def evaluate(self, node: Any, where: str, scope: Scope) -> Any:
        """``node`` with its expressions evaluated; one that cannot be is reported at ``where`` and kept."""
        try:
            return evaluate_value(node, scope)
        except ExpressionError as exc:
            if isinstance(node, dict) and "copy" not in node:  # report the very string that failed
                return {k: self.evaluate(v, f"{where}.{k}", scope) for k, v in node.items()}
            if isinstance(node, list):
                return [self.evaluate(v, f"{where}[{i}]", scope) for i, v in enumerate(node)]
            self.problems.append(Problem(where, f"cannot evaluate {node!r:.200}: {exc}"))
            return node

    def evaluate_resource(self, resource: dict[str, Any], where: str, scope: Scope) -> dict[str, Any]:
        """What nsp-proxy reads of an NSP resource (and of its nested children), evaluated; the rest (apiVersion,
        dependsOn, tags, ...) stays unread."""
        out = {k: self.evaluate(v, f"{where}.{k}", scope) for k, v in resource.items() if k in READ_KEYS}
        if isinstance(resource.get("resources"), list):
            out["resources"] = [self.evaluate_resource(r, f"{where}.resources[{i}]", scope) if isinstance(r, dict)
                                else r for i, r in enumerate(resource["resources"])]
        elif "resources" in resource:
            out["resources"] = resource["resources"]  # not a list: reported by the converter
        return out

    def entries(self, document: dict[str, Any], key: str, prefix: str) -> list[tuple[Any, str]]:
        """``document[key]``'s resources with their paths: an array, or (languageVersion 2.0) an object keyed
        by symbolic name."""
        resources = document.get(key)
        if isinstance(resources, dict):
            return [(r, f"{prefix}{key}.{name}") for name, r in resources.items()]
        if isinstance(resources, list):
            return [(r, f"{prefix}{key}[{i}]") for i, r in enumerate(resources)]
        if resources is not None:
            self.problems.append(Problem(f"{prefix}{key}", f"expected an array or an object, not "
                                                          f"{type(resources).__name__}"))
        return []

    def _copies(self, resource: dict[str, Any], scope: Scope, where: str) -> list[tuple[Scope, str]]:
        loop = resource.get("copy")
        if loop is None:
            return [(scope, where)]
        if not isinstance(loop, dict):
            self.problems.append(Problem(f"{where}.copy", "expected an object with name and count"))
            return []
        try:
            count = check_count(evaluate_value(loop.get("count"), scope))
        except ExpressionError as exc:
            self.problems.append(Problem(f"{where}.copy.count", str(exc)))
            return []
        name = str(loop.get("name", ""))
        return [(replace(scope, copy_index={**scope.copy_index, "": i, name: i}), f"{where}[copy {i}]")
                for i in range(count)]

    def _condition(self, resource: dict[str, Any], scope: Scope, where: str) -> bool:
        if "condition" not in resource:
            return True
        value = self.evaluate(resource["condition"], f"{where}.condition", scope)
        if isinstance(value, bool):
            return value
        if not is_expression(value):
            self.problems.append(Problem(f"{where}.condition", f"expected a boolean, not {value!r:.80}"))
        return False

    def _nested(self, resource: dict[str, Any], scope: Scope, where: str, depth: int) -> list[tuple[Any, str]]:
        """The NSP resources of a nested deployment with an inline template."""
        props = resource.get("properties") if isinstance(resource.get("properties"), dict) else {}
        template = props.get("template")
        if not isinstance(template, dict):
            self.problems.append(Problem(f"{where}.properties", "expected an inline 'template' object"))
            return []
        if depth >= MAX_DEPLOYMENT_DEPTH:
            self.problems.append(Problem(where, f"deployments nested more than {MAX_DEPLOYMENT_DEPTH} deep"))
            return []
        options = props.get("expressionEvaluationOptions")
        inner = isinstance(options, dict) and str(options.get("scope", "")).lower() == "inner"
        name = self.evaluate(resource.get("name", ""), f"{where}.name", scope)
        deployment = replace(scope.deployment, name=str(name),
                             subscription_id=str(self.evaluate(resource.get("subscriptionId",
                                                                            scope.deployment.subscription_id),
                                                               f"{where}.subscriptionId", scope)),
                             resource_group=str(self.evaluate(resource.get("resourceGroup",
                                                                           scope.deployment.resource_group),
                                                              f"{where}.resourceGroup", scope)))
        prefix = f"{where}.properties.template."
        if not inner:  # outer scope: the inner template's expressions see the parent's parameters and variables
            return self.walk(template, replace(scope, deployment=deployment), prefix, depth + 1)
        values = self._passed_parameters(props.get("parameters"), scope, f"{where}.properties.parameters")
        nested = Scope(parameters=_mapping(template.get("parameters")), variables=_mapping(template.get("variables")),
                       deployment=replace(deployment, parameters=values))
        return self.walk(template, nested, prefix, depth + 1)

    def _passed_parameters(self, given: Any, scope: Scope, where: str) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, entry in (given or {}).items() if isinstance(given, dict) else ():
            if isinstance(entry, dict) and "value" in entry:
                values[key] = self.evaluate(entry["value"], f"{where}.{key}.value", scope)
            else:
                self.problems.append(Problem(f"{where}.{key}", "expected {\"value\": ...} (Key Vault references "
                                                               "are not read)"))
        return values

    def _diagnostic_settings(self, resource: dict[str, Any], scope: Scope, where: str) -> None:
        target = resource.get("scope", "")
        with contextlib.suppress(ExpressionError):  # the raw text still names the perimeter's type
            target = evaluate_value(target, scope)
        if NSP_TYPE in str(target).lower():
            self.notices.append(f"{where}: diagnostic settings (Microsoft.Insights/diagnosticSettings) of perimeter "
                                f"{str(target).rsplit('/', 1)[-1]!r} are not read: nsp-proxy writes its access log "
                                "to settings.accessLog")


def _scoped(resource: dict[str, Any], scope: Scope) -> dict[str, Any]:
    """A perimeter without ``id`` gets the one its deployment gives it: a nested deployment into another
    subscription or resource group deploys it there, not where the top template goes."""
    name = resource.get("name")
    if "id" in resource or str(resource.get("type", "")).lower() != NSP_TYPE or not isinstance(name, str) \
            or is_expression(name) or "/" in name:
        return resource
    deployment = scope.deployment
    return {**resource, "id": f"/subscriptions/{deployment.subscription_id}/resourceGroups/"
                              f"{deployment.resource_group}/providers/Microsoft.Network/networkSecurityPerimeters/{name}"}


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def top_scope(document: dict[str, Any], deployment: Deployment) -> Scope:
    return Scope(parameters=_mapping(document.get("parameters")), variables=_mapping(document.get("variables")),
                 deployment=deployment)

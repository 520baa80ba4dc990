"""The ARM route into a configuration: ``arm:`` + ``bindings:`` (with ``armScope``/``armParameters``) in a
native file, or an ARM template/export given as the configuration itself (``proxy.config.arm`` converts)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from proxy.config import arm
from proxy.config.arm_expressions import Deployment
from proxy.config.errors import ConfigError, Problem
from proxy.config.validating import ValidatorBase
from proxy.model import DEFAULT_RESOURCE_GROUP, DEFAULT_SUBSCRIPTION
from proxy.names.normalize import normalize_subscription

ARM_KEYS = ("arm", "bindings", "armScope", "armParameters")  # the ARM route's keys, replaced by the conversion
ARM_SCOPE_KEYS = ("subscriptionId", "resourceGroup", "location")


class ArmInput(ValidatorBase):
    """Converts ARM input into the native document; its problems point into the ARM files."""

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

"""Reading a configuration file into a validated ``Config``.

Two ways in, one way through: the native YAML (flat Azure property names; ARM's ``properties:`` wrapper is
lifted), or an ARM template/export referenced by ``arm:`` with ``bindings:`` for the local endpoints (see
``proxy.config.arm``). Both become the same plain document, which is checked first against the JSON Schema in
``proxy/data`` (structure, unknown keys) and then here (CIDRs, GUIDs, one kind of match per rule, references,
duplicates, Azure's limits). Every problem is collected and reported with the file and field path.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from proxy.config import arm, links, schemacheck
from proxy.config.arm_input import ArmInput
from proxy.config.azure_fields import IGNORED_PROPERTIES, drop_ignored
from proxy.config.errors import ConfigError, Problem
from proxy.config.files import parse_text, read_text
from proxy.config.perimeter_reader import PerimeterReader
from proxy.config.settings_reader import SettingsReader
from proxy.model import Config

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


class _Validator(ArmInput, SettingsReader, PerimeterReader):
    """The whole document: structure first (ARM lifted, JSON Schema), then each reader, then what spans them."""

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
        if not perimeters and not settings.management_listen_port:  # managed: perimeters come from the API
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

    def _check_schema(self, document: dict[str, Any]) -> None:
        errors = schemacheck.validator(schema()).iter_errors(document)
        for error in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
            self.fail(_json_path(error.absolute_path), _schema_message(error))


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

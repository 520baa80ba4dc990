"""A changed store, validated exactly as a configuration file is: the ARM importer, then the file validator.

The store is an ARM document (a REST list); it goes through ``proxy.config.arm.convert_document`` and the result, with
the file's own ``settings`` (whose ``management.bindings`` give associations their ``local`` block by resource
ID, as the validator applies them), is written as the text of a configuration file in nsp-proxy's format and
parsed by ``parse_config_text``: what the API accepts is what a file would, and the text is the state file,
which ``nsp-proxy run --config`` starts from with the same decisions. A refusal becomes ARM's 400 with the
validator's messages (field paths named after the resource they are in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from proxy.config import arm
from proxy.config.errors import ConfigError, shorten
from proxy.config.loader import parse_config_text
from proxy.control.resources import ArmError
from proxy.control.store import Store
from proxy.model import Config

HEADER = ("# nsp-proxy state: written by the management API (settings.management) after every change in force.\n"
          "# Start from it with `nsp-proxy run --config <this file>`; edits by hand are picked up like any config.\n")
CHILD_LISTS = ("profiles", "accessRules", "resourceAssociations", "links", "linkReferences")


@dataclass(frozen=True)
class Candidate:
    text: str  # the configuration file's text (the state file)
    config: Config


def build(store: Store, settings: dict[str, Any], source: str) -> Candidate:
    """The configuration ``store`` + ``settings`` (with ``management.bindings``) make; ArmError 400 if refused."""
    document = _literal(store.document())
    try:
        converted, _origins, _notices = arm.convert_document(document, source, {}) if document["value"] else (
            {"perimeters": []}, {}, [])
    except ConfigError as exc:
        raise refusal(exc, document) from None
    native = {"apiVersion": "nsp-proxy/v1", "settings": settings, "perimeters": converted["perimeters"]}
    text = HEADER + yaml.safe_dump(native, sort_keys=False, allow_unicode=True)
    try:
        return Candidate(text, parse_config_text(text, source))
    except ConfigError as exc:
        raise refusal(exc, native) from None


def _literal(node: Any) -> Any:
    """A request body is data, not a template: Azure stores ``"[concat(...)]"`` as that string. ARM's escape
    (a second leading bracket) keeps the importer from evaluating what a client sent."""
    if isinstance(node, str):
        return "[" + node if node.startswith("[") else node
    if isinstance(node, list):
        return [_literal(item) for item in node]
    if isinstance(node, dict):
        return {key: _literal(value) for key, value in node.items()}
    return node


def refusal(exc: ConfigError, document: dict[str, Any]) -> ArmError:
    """ARM's 400 for a refused candidate: every problem as a detail whose target is the resource it is in."""
    details = []
    for problem in exc.problems[:20]:
        where = _resource_of(problem.path, document)
        message = f"{where + ': ' if where else ''}{shorten(problem.path) or '(top level)'}: {shorten(problem.reason)}"
        details.append({"code": "InvalidRequestFormat", "target": where or problem.path, "message": message})
    first = details[0] if details else {"message": "the configuration was refused", "target": None}
    more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
    return ArmError(400, "InvalidRequestFormat", f"The request is invalid: {first['message']}{more}",
                    target=first["target"], details=details)


def _ref(value: Any) -> str:
    return str(value.get("id", "")) if isinstance(value, dict) else str(value or "")


_STEP = re.compile(r"^(\w+)\[(\d+)\]")


def _resource_of(path: str, document: dict[str, Any]) -> str:
    """The name path (``nsp1/profiles/p1/accessRules/r1``) of the deepest resource ``path`` lies in."""
    node: Any = document
    names: list[str] = []
    rest = path
    while rest:
        match = _STEP.match(rest)
        if not match:
            break
        key, index = match.group(1), int(match.group(2))
        items = node.get(key) if isinstance(node, dict) else None
        if not isinstance(items, list) or index >= len(items):
            break
        node = items[index]
        if key == "value":  # a problem the importer found in the store's REST list: the resource's own ID
            return _ref(node) if isinstance(node, dict) else ""
        if isinstance(node, dict) and key in ("perimeters", *CHILD_LISTS):
            names.append(str(node.get("name", "")) if key == "perimeters" else f"{key}/{node.get('name', '')}")
        rest = rest[match.end():].lstrip(".")
    return "/".join(names)

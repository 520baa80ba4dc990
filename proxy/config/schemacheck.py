"""The JSON Schema validator of the configuration: built once, with every ``$ref`` resolved in advance, and paced.

jsonschema resolves a ``$ref`` through its ``referencing`` registry every time it meets one: with 10,000 rules
(three references each) that was 40% of the schema check, which is itself half of loading the file. The schema
in ``proxy/data`` has no recursive reference and no keyword beside a ``$ref``, so each reference is replaced by
a copy of what it names: the same checks and the same messages (``error.schema`` is the same subschema), found
faster. Each object checked also calls ``proxy.pacing.pace()``, so that a reload validating in a worker thread
leaves the event loop its share of the interpreter.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
from jsonschema import validators

from proxy.pacing import pace


def validator(schema: dict[str, Any]) -> Any:
    """A Draft 2020-12 validator of ``schema`` (built once per schema object: the configuration's is one)."""
    found = _built.get(id(schema))
    if found is None or found[0] is not schema:
        if len(_built) >= 8:
            _built.clear()
        found = _built[id(schema)] = (schema, _PacedValidator(inline_refs(schema)))
    return found[1]


_built: dict[int, tuple[dict[str, Any], Any]] = {}


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with each local ``{"$ref": "#/$defs/x"}`` replaced by (a resolved copy of) ``$defs.x``.
    A schema this cannot handle (a remote or recursive reference, a keyword beside ``$ref``) is returned
    as it is: jsonschema then resolves its references itself."""
    defs = schema.get("$defs") or {}
    try:
        resolved = _inline({k: v for k, v in schema.items() if k != "$defs"}, defs, ())
    except _CannotInline:
        return schema
    return resolved


class _CannotInline(Exception):
    pass


def _inline(node: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.removeprefix("#/$defs/")
        if len(node) != 1 or name == ref or name not in defs or name in seen or "/" in name:
            raise _CannotInline(ref)
        return _inline(copy.deepcopy(defs[name]), defs, (*seen, name))
    return {key: _inline(value, defs, seen) for key, value in node.items()}


def _paced(check: Any) -> Any:
    def paced_check(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        pace()
        return check(validator, value, instance, schema)

    return paced_check


_PacedValidator = validators.extend(
    jsonschema.Draft202012Validator,
    {keyword: _paced(jsonschema.Draft202012Validator.VALIDATORS[keyword]) for keyword in ("properties", "items")},
)

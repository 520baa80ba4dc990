"""A small evaluator for the ARM template expressions NSP templates actually use.

Templates name children with ``[concat(parameters('nspName'), '/', 'profile1')]`` and point associations at
``[resourceId('Microsoft.Network/networkSecurityPerimeters/profiles', parameters('nspName'), 'profile1')]``.
Supported: string literals, ``parameters()`` (the deployment's value, else the ``defaultValue``), ``variables()``,
``concat()``, ``format()``, ``resourceId()``, ``subscription()`` (``subscriptionId``, ``id``, ``tenantId``) and
``resourceGroup()`` (``name``, ``id``, ``location``). Anything else is reported as unsupported rather than guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.model import DEFAULT_RESOURCE_GROUP, DEFAULT_SUBSCRIPTION

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),.\[\]]))"
)


MAX_NESTING = 32  # function calls inside function calls in one expression
MAX_RESULT_CHARS = 65_536  # one evaluated string: variables that concat each other twice would double each step
MAX_NUMBER_DIGITS = 18


class ExpressionError(ValueError):
    pass


@dataclass(frozen=True)
class Deployment:
    """What ARM learns when a template is deployed, not from the template: where, and the parameter values."""

    subscription_id: str = DEFAULT_SUBSCRIPTION
    resource_group: str = DEFAULT_RESOURCE_GROUP
    location: str = "local"
    parameters: Mapping[str, Any] = field(default_factory=dict)  # name -> value, as a parameters file gives them


@dataclass(frozen=True)
class Scope:
    parameters: dict[str, Any]  # the template's declarations (type, defaultValue, ...)
    variables: dict[str, Any]
    deployment: Deployment = field(default_factory=Deployment)
    # Variables and parameter defaults evaluated so far (each once, so chains cost linear time) and those being
    # evaluated now (one that refers to itself, directly or not, is a cycle ARM refuses too).
    values: dict[tuple[str, str], Any] = field(default_factory=dict, compare=False)
    pending: set[tuple[str, str]] = field(default_factory=set, compare=False)


def is_expression(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("[") and value.endswith("]") and not value.startswith("[[")


def evaluate(text: str, scope: Scope) -> Any:
    """Evaluate ``[expr]``; ``[[...`` is ARM's escape for a literal leading bracket."""
    if text.startswith("[["):
        return text[1:]
    tokens = _tokenize(text[1:-1])
    value, rest = _Parser(tokens, scope).expression(0, 0)
    if rest != len(tokens):
        raise ExpressionError(f"unexpected {tokens[rest][1]!r} in {text}")
    return value


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            if text[position:].strip() == "":
                break
            raise ExpressionError(f"cannot read {text[position:]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], scope: Scope):
        self.tokens = tokens
        self.scope = scope

    def expression(self, i: int, depth: int) -> tuple[Any, int]:
        if depth > MAX_NESTING:
            raise ExpressionError(f"nested more than {MAX_NESTING} calls deep")
        kind, text = self._at(i)
        if kind == "str":
            return text[1:-1].replace("''", "'"), i + 1
        if kind == "num":
            if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
                raise ExpressionError(f"number with {len(text)} digits is too large")
            return int(text), i + 1
        if kind != "name":
            raise ExpressionError(f"unexpected {text!r}")
        if self._at(i + 1)[1] != "(":
            raise ExpressionError(f"expected '(' after {text}")
        args, i = self._arguments(i + 2, depth)
        value = self._call(text.lower(), args)
        if isinstance(value, str) and len(value) > MAX_RESULT_CHARS:
            raise ExpressionError(f"{text}() makes a string longer than {MAX_RESULT_CHARS} characters")
        while i < len(self.tokens) and self.tokens[i][1] in (".", "["):
            if self.tokens[i][1] == ".":
                kind, prop = self._at(i + 1)
                value, i = self._property(value, prop), i + 2
            else:
                key, i = self.expression(i + 1, depth + 1)
                if self._at(i)[1] != "]":
                    raise ExpressionError("expected ']'")
                value, i = self._property(value, key), i + 1
        return value, i

    def _arguments(self, i: int, depth: int) -> tuple[list[Any], int]:
        args: list[Any] = []
        if self._at(i)[1] == ")":
            return args, i + 1
        while True:
            value, i = self.expression(i, depth + 1)
            args.append(value)
            separator = self._at(i)[1]
            if separator == ")":
                return args, i + 1
            if separator != ",":
                raise ExpressionError(f"expected ',' or ')' but found {separator!r}")
            i += 1

    def _call(self, name: str, args: list[Any]) -> Any:
        if name in ("parameters", "variables", "format") and not args:
            raise ExpressionError(f"{name}() needs an argument")
        if name == "parameters":
            return self._parameter(str(args[0]))
        if name == "variables":
            if str(args[0]) not in self.scope.variables:
                raise ExpressionError(f"variable {str(args[0])!r:.80} is not defined in the template")
            return self._once(("variable", str(args[0])), self.scope.variables[str(args[0])])
        if name == "concat":
            return "".join(str(a) for a in args)
        if name == "format":
            return re.sub(r"\{(\d{1,6})\}", lambda m: _format_argument(args, int(m.group(1))), str(args[0]))
        if name == "resourceid":
            return self._resource_id(args)
        deployment = self.scope.deployment
        subscription_id = f"/subscriptions/{deployment.subscription_id}"
        if name == "subscription":
            # tenantId: nsp-proxy has no tenant; the all-zero GUID keeps templates that name it evaluable.
            return {"subscriptionId": deployment.subscription_id, "id": subscription_id,
                    "tenantId": DEFAULT_SUBSCRIPTION, "displayName": deployment.subscription_id}
        if name == "resourcegroup":
            return {"name": deployment.resource_group, "location": deployment.location,
                    "id": f"{subscription_id}/resourceGroups/{deployment.resource_group}"}
        raise ExpressionError(f"ARM function {name}() is not supported")

    def _parameter(self, name: str) -> Any:
        """The deployment's value (armParameters), else the template's defaultValue."""
        values = self.scope.deployment.parameters
        if name in values:
            return values[name]
        spec = self.scope.parameters.get(name)
        if not isinstance(spec, dict):
            raise ExpressionError(f"parameter {name!r} is not declared in the template")
        if "defaultValue" not in spec:
            raise ExpressionError(f"parameter {name!r} has no value: give it in armParameters (the template has "
                                  "no defaultValue)")
        return self._once(("parameter", name), spec["defaultValue"])

    def _once(self, key: tuple[str, str], value: Any) -> Any:
        """``value`` (a variable or a parameter default) evaluated, once per template; cycles refused."""
        if not is_expression(value):
            return value
        if key in self.scope.values:
            return self.scope.values[key]
        if key in self.scope.pending:
            raise ExpressionError(f"{key[0]} {key[1]!r:.80} refers to itself")
        self.scope.pending.add(key)
        try:
            self.scope.values[key] = evaluate(value, self.scope)
        finally:
            self.scope.pending.discard(key)
        return self.scope.values[key]

    def _resource_id(self, args: list[Any]) -> str:
        strings = [str(a) for a in args]
        type_index = next((i for i, a in enumerate(strings) if "/" in a and "." in a.split("/")[0]), None)
        if type_index is None:
            raise ExpressionError("resourceId() needs a resource type like 'Microsoft.Storage/storageAccounts'")
        scope = strings[:type_index]
        subscription = scope[0] if len(scope) == 2 else self.scope.deployment.subscription_id
        group = scope[-1] if scope else self.scope.deployment.resource_group
        rtype, names = strings[type_index], strings[type_index + 1 :]
        namespace, *types = rtype.split("/")
        if len(types) != len(names):
            raise ExpressionError(f"resourceId({rtype!r}) needs {len(types)} name(s), got {len(names)}")
        path = "/".join(f"{t}/{n}" for t, n in zip(types, names, strict=True))
        return f"/subscriptions/{subscription}/resourceGroups/{group}/providers/{namespace}/{path}"

    @staticmethod
    def _property(value: Any, key: Any) -> Any:
        if isinstance(value, dict) and isinstance(key, str) and key in value:
            return value[key]
        if isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            return value[key]
        raise ExpressionError(f"no property or index {key!r:.80}")

    def _at(self, i: int) -> tuple[str, str]:
        if i >= len(self.tokens):
            raise ExpressionError("expression ends too early")
        return self.tokens[i]


def _format_argument(args: list[Any], index: int) -> str:
    if index + 1 >= len(args):
        raise ExpressionError(f"format() has no argument {{{index}}}")
    return str(args[index + 1])

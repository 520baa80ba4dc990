"""A small evaluator for the ARM template expressions NSP templates actually use.

Templates name children with ``[concat(parameters('nspName'), '/', 'profile1')]`` and point associations at
``[resourceId('Microsoft.Network/networkSecurityPerimeters/profiles', parameters('nspName'), 'profile1')]``.
Supported: string and number literals, ``parameters()`` (the deployment's value, else the ``defaultValue``, else
null for a ``nullable`` one), ``variables()`` (with ``copy`` loops), ``copyIndex()``, ``format()``, ``resourceId()``,
``subscriptionResourceId()``, ``subscription()``, ``resourceGroup()``, ``deployment()``, ``tenant()``, ``if()``
(only the chosen branch is evaluated, as in ARM) and the pure functions of ``proxy.config.arm_functions`` (concat,
uniqueString, guid, toLower, coalesce, tryGet, union, length, contains, ...). Anything else (``reference()``,
``list*()``: values only a live deployment knows) is reported as unsupported rather than guessed.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from proxy.config import arm_functions
from proxy.config.arm_scope import (
    MAX_NESTING,
    MAX_NUMBER_DIGITS,
    MAX_RESULT_CHARS,
    SKIPPED,
    Deployment,
    ExpressionError,
    Scope,
)
from proxy.model import DEFAULT_SUBSCRIPTION

__all__ = ["Deployment", "ExpressionError", "Scope", "check_count", "evaluate", "evaluate_value", "is_expression"]

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),.\[\]]))"
)


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
        self.skipping = 0  # > 0 while reading an if() branch that is not taken

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
        if text.lower() == "if":
            value, i = self._if(i + 2, depth)
        else:
            args, i = self._arguments(i + 2, depth)
            value = SKIPPED if self.skipping else self._call(text.lower(), args)
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

    def _if(self, i: int, depth: int) -> tuple[Any, int]:
        """``if(condition, then, else)``: ARM evaluates only the branch the condition chooses."""
        condition, i = self.expression(i, depth + 1)
        values: list[Any] = []
        for branch in (True, False):
            if self._at(i)[1] != ",":
                raise ExpressionError("if() takes 3 arguments")
            skip = not self.skipping and condition is not branch
            self.skipping += skip
            try:
                value, i = self.expression(i + 1, depth + 1)
            finally:
                self.skipping -= skip
            values.append(value)
        if self._at(i)[1] != ")":
            raise ExpressionError("if() takes 3 arguments")
        if not self.skipping and not isinstance(condition, bool):
            raise ExpressionError(f"if() needs a boolean condition, not {type(condition).__name__}")
        return (SKIPPED if self.skipping else values[0] if condition else values[1]), i + 1

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
            return self._variable(str(args[0]))
        if name == "format":
            try:
                return arm_functions.format_string(args[0], args[1:])
            except arm_functions.FunctionError as exc:
                raise ExpressionError(str(exc)) from None
        if name == "resourceid":
            return self._resource_id(args)
        if name == "subscriptionresourceid":
            return self._resource_id(args, subscription_level=True)
        if name == "copyindex":
            return self._copy_index(args)
        deployment = self.scope.deployment
        subscription_id = f"/subscriptions/{deployment.subscription_id}"
        # tenantId: nsp-proxy has no tenant; the all-zero GUID keeps templates that name it evaluable.
        if name == "subscription":
            return {"subscriptionId": deployment.subscription_id, "id": subscription_id,
                    "tenantId": DEFAULT_SUBSCRIPTION, "displayName": deployment.subscription_id}
        if name == "resourcegroup":
            return {"name": deployment.resource_group, "location": deployment.location,
                    "id": f"{subscription_id}/resourceGroups/{deployment.resource_group}", "properties": {}}
        if name == "tenant":
            return {"tenantId": DEFAULT_SUBSCRIPTION, "countryCode": "", "displayName": ""}
        if name == "deployment":
            return {"name": deployment.name, "location": deployment.location, "properties": {}}
        if name in arm_functions.FUNCTIONS:
            try:
                return arm_functions.call(name, args)
            except arm_functions.FunctionError as exc:
                raise ExpressionError(str(exc)) from None
        raise ExpressionError(f"ARM function {name}() is not supported")

    def _variable(self, name: str) -> Any:
        declared = self.scope.variables
        if name in declared and name != "copy":
            return self._once(("variable", name), declared[name])
        loops = declared.get("copy")
        for loop in loops if isinstance(loops, list) else []:
            if isinstance(loop, dict) and loop.get("name") == name:
                return self._variable_loop(loop)
        raise ExpressionError(f"variable {name!r:.80} is not defined in the template")

    def _variable_loop(self, loop: dict[str, Any]) -> list[Any]:
        """A variable built by a ``copy`` loop: ``count`` copies of ``input`` with ``copyIndex(name)``."""
        key = ("variable", str(loop["name"]))
        if key not in self.scope.values:
            count = evaluate_value(loop.get("count", 0), self.scope)
            check_count(count)
            self.scope.values[key] = [
                evaluate_value(loop.get("input"), replace(self.scope, copy_index={**self.scope.copy_index,
                                                                                 str(loop["name"]): index}))
                for index in range(count)]
        return self.scope.values[key]

    def _copy_index(self, args: list[Any]) -> int:
        """``copyIndex()``, ``copyIndex(offset)``, ``copyIndex('loop')``, ``copyIndex('loop', offset)``."""
        name = args[0] if args and isinstance(args[0], str) else ""
        offset = args[-1] if args and isinstance(args[-1], int) and not isinstance(args[-1], bool) else 0
        if name not in self.scope.copy_index:
            raise ExpressionError(f"copyIndex({name!r}) outside that copy loop" if name
                                  else "copyIndex() outside a copy loop")
        return self.scope.copy_index[name] + offset

    def _parameter(self, name: str) -> Any:
        """The deployment's value (armParameters), else the template's defaultValue."""
        values = self.scope.deployment.parameters
        if name in values:
            return values[name]
        spec = self.scope.parameters.get(name)
        if not isinstance(spec, dict):
            raise ExpressionError(f"parameter {name!r} is not declared in the template")
        if "defaultValue" not in spec and spec.get("nullable") is True:
            return None
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

    def _resource_id(self, args: list[Any], subscription_level: bool = False) -> str:
        strings = [str(a) for a in args]
        type_index = next((i for i, a in enumerate(strings) if "/" in a and "." in a.split("/")[0]), None)
        if type_index is None:
            raise ExpressionError("resourceId() needs a resource type like 'Microsoft.Storage/storageAccounts'")
        scope = strings[:type_index]
        if subscription_level:
            subscription = scope[0] if scope else self.scope.deployment.subscription_id
            rtype, names = strings[type_index], strings[type_index + 1 :]
            namespace, *types = rtype.split("/")
            if len(types) != len(names):
                raise ExpressionError(f"subscriptionResourceId({rtype!r}) needs {len(types)} name(s)")
            path = "/".join(f"{t}/{n}" for t, n in zip(types, names, strict=True))
            return f"/subscriptions/{subscription}/providers/{namespace}/{path}"
        subscription = scope[0] if len(scope) == 2 else self.scope.deployment.subscription_id
        group = scope[-1] if scope else self.scope.deployment.resource_group
        rtype, names = strings[type_index], strings[type_index + 1 :]
        namespace, *types = rtype.split("/")
        if len(types) != len(names):
            raise ExpressionError(f"resourceId({rtype!r}) needs {len(types)} name(s), got {len(names)}")
        path = "/".join(f"{t}/{n}" for t, n in zip(types, names, strict=True))
        return f"/subscriptions/{subscription}/resourceGroups/{group}/providers/{namespace}/{path}"

    def _property(self, value: Any, key: Any) -> Any:
        if self.skipping:
            return SKIPPED
        if isinstance(value, dict) and isinstance(key, str):
            for k, v in value.items():  # ARM property names are case-insensitive
                if k.lower() == key.lower():
                    return v
        if isinstance(value, dict) and isinstance(key, str) and key in value:
            return value[key]
        if isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            return value[key]
        raise ExpressionError(f"no property or index {key!r:.80}")

    def _at(self, i: int) -> tuple[str, str]:
        if i >= len(self.tokens):
            raise ExpressionError("expression ends too early")
        return self.tokens[i]


MAX_COPY = 800  # ARM's own limit on one copy loop's count


def check_count(count: Any) -> int:
    """A copy loop's ``count``: an integer from 0 to ``MAX_COPY``."""
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COPY:
        raise ExpressionError(f"copy count must be an integer from 0 to {MAX_COPY}, not {count!r:.40}")
    return count


def evaluate_value(node: Any, scope: Scope, depth: int = 0) -> Any:
    """``node`` (any JSON value) with every expression string in it evaluated; property ``copy`` loops expanded."""
    if depth > MAX_NESTING:
        raise ExpressionError(f"values nested more than {MAX_NESTING} deep")
    if isinstance(node, dict):
        out = {k: evaluate_value(v, scope, depth + 1) for k, v in node.items() if k != "copy"}
        loops = node.get("copy")
        if isinstance(loops, list) and all(isinstance(x, dict) and "input" in x for x in loops):
            for loop in loops:
                count = check_count(evaluate_value(loop.get("count", 0), scope, depth + 1))
                out[str(loop.get("name"))] = [
                    evaluate_value(loop["input"], replace(scope, copy_index={**scope.copy_index,
                                                                             str(loop.get("name")): i}), depth + 1)
                    for i in range(count)]
        elif "copy" in node:
            out["copy"] = evaluate_value(loops, scope, depth + 1)
        return out
    if isinstance(node, list):
        return [evaluate_value(v, scope, depth + 1) for v in node]
    if isinstance(node, str) and (is_expression(node) or node.startswith("[[")):
        return evaluate(node, scope)
    return node

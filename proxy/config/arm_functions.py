"""The pure ARM template functions nsp-proxy evaluates (no deployment context): strings, arrays, objects, logic.

``uniqueString()`` and ``guid()`` compute what Azure computes, so a template whose names default to them
(the quickstart's ``kv-{uniqueString(resourceGroup().id)}``, the verified module's ``guid(...)`` association
names) converts to the same names a real deployment gets:

- ``uniqueString(a, b, ...)``: the arguments joined with ``-``, UTF-8, hashed with the 64-bit MurmurHash variant
  of ARM's expression engine (``Azure.Deployments.Expression``, as publicly re-implemented; checked against
  values Bicep prints), written as 13 characters of lower-case RFC 4648 base32 (the 64 bits, most significant first).
- ``guid(a, b, ...)``: an RFC 4122 version-5 (SHA-1, name-based) UUID of the ``-``-joined arguments in ARM's
  namespace ``11fb06fb-712d-4ddd-98c7-e71bbd588830``.

Every result is bounded: ``MAX_ITEMS`` elements, ``MAX_CHARS`` characters (computed before a string is built, so
no expression can make a large one even briefly), 64-bit integers.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

MAX_ITEMS = 10_000  # elements of one array or object an expression builds
MAX_CHARS = 65_536  # characters of one string an expression builds (checked before it is built)
MAX_INTEGER = 2**63  # ARM integers are 64-bit
ARM_GUID_NAMESPACE = uuid.UUID("11fb06fb-712d-4ddd-98c7-e71bbd588830")
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
_M32 = 0xFFFFFFFF


class FunctionError(ValueError):
    """An ARM function called with arguments it does not take."""


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _word(data: bytes, at: int, size: int) -> int:
    return int.from_bytes(data[at : at + size], "little")


def _fmix(h: int) -> int:
    h = ((h ^ (h >> 16)) * 2246822507) & _M32
    h = ((h ^ (h >> 13)) * 3266489909) & _M32
    return h ^ (h >> 16)


def murmur64(data: bytes) -> int:
    """ARM's 64-bit MurmurHash variant (two 32-bit lanes), seed 0."""
    c1, c2, length = 597399067, 2869860233, len(data)
    h1 = h2 = 0
    index = 0
    while index + 7 < length:
        k1 = _rotl((_word(data, index, 4) * c1) & _M32, 15) * c2 & _M32
        k2 = _rotl((_word(data, index + 4, 4) * c2) & _M32, 17) * c1 & _M32
        h1 = (_rotl(h1 ^ k1, 19) + h2) & _M32
        h1 = (h1 * 5 + 1444728091) & _M32
        h2 = (_rotl(h2 ^ k2, 13) + h1) & _M32
        h2 = (h2 * 5 + 197830471) & _M32
        index += 8
    tail = length - index
    if tail > 0:
        h1 ^= _rotl((_word(data, index, min(tail, 4)) * c1) & _M32, 15) * c2 & _M32
        if tail > 4:
            h2 ^= _rotl((_word(data, index + 4, tail - 4) * c2) & _M32, 17) * c1 & _M32
    h1, h2 = h1 ^ length, h2 ^ length
    h1 = (h1 + h2) & _M32
    h2 = (h2 + h1) & _M32
    h1, h2 = _fmix(h1), _fmix(h2)
    h1 = (h1 + h2) & _M32
    h2 = (h2 + h1) & _M32
    return (h2 << 32) | h1


def unique_string(*args: Any) -> str:
    value = murmur64("-".join(_text(a, "uniqueString") for a in args).encode("utf-8"))
    return "".join(_BASE32[((value << 5 * i) & 0xFFFFFFFFFFFFFFFF) >> 59] for i in range(13))


def arm_guid(*args: Any) -> str:
    return str(uuid.uuid5(ARM_GUID_NAMESPACE, "-".join(_text(a, "guid") for a in args)))


def _text(value: Any, function: str) -> str:
    if not isinstance(value, str):
        raise FunctionError(f"{function}() takes strings, not {type(value).__name__}")
    return value


def _need(args: list[Any], low: int, high: int | None, name: str) -> None:
    if len(args) < low or (high is not None and len(args) > high):
        wanted = f"{low}" if low == high else f"{low}-{high}" if high is not None else f"at least {low}"
        raise FunctionError(f"{name}() takes {wanted} argument(s), got {len(args)}")


def _bounded(value: Any) -> Any:
    if isinstance(value, list | dict) and len(value) > MAX_ITEMS:
        raise FunctionError(f"the result has more than {MAX_ITEMS} elements")
    if isinstance(value, int) and not isinstance(value, bool) and not -MAX_INTEGER <= value < MAX_INTEGER:
        raise FunctionError("the result is not a 64-bit integer")
    return value


def _joined(parts: list[str], separator: str = "") -> str:
    """``separator.join(parts)``, refused before it is built when it would exceed ``MAX_CHARS``."""
    if sum(map(len, parts)) + len(separator) * max(len(parts) - 1, 0) > MAX_CHARS:
        raise FunctionError(f"the result is longer than {MAX_CHARS} characters")
    return separator.join(parts)


def format_string(template: Any, args: list[Any]) -> str:
    """ARM's ``format()``: ``{0}``, ``{1:...}`` replaced by the arguments (the format spec is not applied)."""
    text = _text(template, "format")
    parts: list[str] = []
    position = 0
    for match in re.finditer(r"\{(\d{1,6})(?::[^}]*)?\}", text):
        index = int(match.group(1))
        if index >= len(args):
            raise FunctionError(f"format() has no argument {{{index}}}")
        parts += [text[position : match.start()], _string(args[index])]
        position = match.end()
        if sum(map(len, parts)) > MAX_CHARS:
            raise FunctionError(f"the result is longer than {MAX_CHARS} characters")
    return _joined([*parts, text[position:]])


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and len(value) == 0)


def _union(*args: Any) -> Any:
    if all(isinstance(a, dict) for a in args):
        out: dict[str, Any] = {}
        for a in args:
            out.update(a)
        return out
    if all(isinstance(a, list) for a in args):
        if sum(map(len, args)) > MAX_ITEMS:
            raise FunctionError(f"union() of more than {MAX_ITEMS} elements")
        seen: dict[Any, Any] = {}
        for item in (x for a in args for x in a):
            seen.setdefault(item if isinstance(item, str | int | bool) or item is None else _string(item), item)
        return list(seen.values())
    raise FunctionError("union() takes only objects or only arrays")


def _concat(*args: Any) -> Any:
    if args and all(isinstance(a, list) for a in args):
        if sum(map(len, args)) > MAX_ITEMS:
            raise FunctionError(f"concat() of more than {MAX_ITEMS} elements")
        return [x for a in args for x in a]
    return _joined([_string(a) for a in args])


def _string(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"  # ARM's string(true) is "True"
    if isinstance(value, list | dict):
        chunks: list[str] = []
        size = 0
        for chunk in json.JSONEncoder(separators=(",", ":")).iterencode(value):
            size += len(chunk)
            if size > MAX_CHARS:
                raise FunctionError(f"the result is longer than {MAX_CHARS} characters")
            chunks.append(chunk)
        return "".join(chunks)
    return "" if value is None else str(value)


def _replace(text: Any, old: Any, new: Any) -> str:
    text, old, new = _text(text, "replace"), _text(old, "replace"), _text(new, "replace")
    if len(text) + text.count(old) * (len(new) - len(old)) > MAX_CHARS:
        raise FunctionError(f"the result is longer than {MAX_CHARS} characters")
    return text.replace(old, new)


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        return str(item).lower() in container.lower()
    if isinstance(container, dict):
        return any(str(item).lower() == k.lower() for k in container)
    if isinstance(container, list):
        return item in container
    raise FunctionError("contains() takes a string, an array or an object")


def _try_get(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, dict) and isinstance(key, str):
            value = next((v for k, v in value.items() if k.lower() == key.lower()), None)
        elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            value = value[key]
        else:
            return None
    return value


def _sequence(value: Any, name: str) -> str | list[Any]:
    if not isinstance(value, str | list):
        raise FunctionError(f"{name}() takes a string or an array")
    return value


def _substring(text: Any, start: int, length: int | None = None) -> str:
    text = _text(text, "substring")
    if not 0 <= start <= len(text) or (length is not None and not 0 <= length <= len(text) - start):
        raise FunctionError("substring() index out of range")
    return text[start:] if length is None else text[start : start + length]


def _range(start: int, count: int) -> list[int]:
    if not 0 <= count <= MAX_ITEMS:
        raise FunctionError(f"range() count must be 0-{MAX_ITEMS}")
    return list(range(start, start + count))


# name (lower case) -> (minimum arguments, maximum or None, implementation)
FUNCTIONS: dict[str, tuple[int, int | None, Callable[..., Any]]] = {
    "concat": (0, None, _concat),
    "uniquestring": (1, None, unique_string),
    "guid": (1, None, arm_guid),
    "tolower": (1, 1, lambda s: _text(s, "toLower").lower()),
    "toupper": (1, 1, lambda s: _text(s, "toUpper").upper()),
    "trim": (1, 1, lambda s: _text(s, "trim").strip()),
    "string": (1, 1, _string),
    "int": (1, 1, lambda v: int(v)),
    "bool": (1, 1, lambda v: v if isinstance(v, bool) else str(v).lower() == "true"),
    "replace": (3, 3, _replace),
    "substring": (1, 3, _substring),
    "split": (2, 2, lambda s, sep: _text(s, "split").split(sep) if isinstance(sep, str) else _split_any(s, sep)),
    "join": (2, 2, lambda items, sep: _joined([_string(i) for i in items], _text(sep, "join"))),
    "startswith": (2, 2, lambda s, p: _text(s, "startsWith").lower().startswith(_text(p, "startsWith").lower())),
    "endswith": (2, 2, lambda s, p: _text(s, "endsWith").lower().endswith(_text(p, "endsWith").lower())),
    "indexof": (2, 2, lambda s, p: _text(s, "indexOf").lower().find(_text(p, "indexOf").lower())),
    "lastindexof": (2, 2, lambda s, p: _text(s, "lastIndexOf").lower().rfind(_text(p, "lastIndexOf").lower())),
    "length": (1, 1, lambda v: len(v) if isinstance(v, str | list | dict) else _fail("length() takes a string, "
                                                                                       "an array or an object")),
    "empty": (1, 1, _empty),
    "contains": (2, 2, _contains),
    "first": (1, 1, lambda v: _sequence(v, "first")[0] if v else None),
    "last": (1, 1, lambda v: _sequence(v, "last")[-1] if v else None),
    "take": (2, 2, lambda v, n: _sequence(v, "take")[: max(int(n), 0)]),
    "skip": (2, 2, lambda v, n: _sequence(v, "skip")[max(int(n), 0) :]),
    "union": (1, None, _union),
    "createarray": (0, None, lambda *a: list(a)),
    "array": (1, 1, lambda v: v if isinstance(v, list) else [v]),
    "createobject": (0, None, lambda *a: _create_object(a)),
    "coalesce": (1, None, lambda *a: next((x for x in a if x is not None), None)),
    "trygetvalue": (2, None, _try_get),
    "tryget": (2, None, _try_get),
    "equals": (2, 2, lambda a, b: a == b),
    "not": (1, 1, lambda v: not _bool(v)),
    "and": (2, None, lambda *a: all(_bool(x) for x in a)),
    "or": (2, None, lambda *a: any(_bool(x) for x in a)),
    "true": (0, 0, lambda: True),
    "false": (0, 0, lambda: False),
    "null": (0, 0, lambda: None),
    "json": (1, 1, lambda s: json.loads(_text(s, "json"))),
    "range": (2, 2, _range),
    "min": (1, None, lambda *a: min(a[0] if len(a) == 1 and isinstance(a[0], list) else a)),
    "max": (1, None, lambda *a: max(a[0] if len(a) == 1 and isinstance(a[0], list) else a)),
    "add": (2, 2, lambda a, b: int(a) + int(b)),
    "sub": (2, 2, lambda a, b: int(a) - int(b)),
    "mul": (2, 2, lambda a, b: int(a) * int(b)),
    "greater": (2, 2, lambda a, b: a > b),
    "less": (2, 2, lambda a, b: a < b),
    "greaterorequals": (2, 2, lambda a, b: a >= b),
    "lessorequals": (2, 2, lambda a, b: a <= b),
}


def _split_any(text: Any, separators: Any) -> list[str]:
    parts = [_text(text, "split")]
    for sep in separators:
        parts = [piece for part in parts for piece in part.split(_text(sep, "split"))]
    return parts


def _create_object(args: tuple[Any, ...]) -> dict[str, Any]:
    if len(args) % 2:
        raise FunctionError("createObject() takes key, value pairs")
    return {_text(args[i], "createObject"): args[i + 1] for i in range(0, len(args), 2)}


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise FunctionError(f"expected a boolean, not {type(value).__name__}")
    return value


def _fail(message: str) -> Any:
    raise FunctionError(message)


def call(name: str, args: list[Any]) -> Any:
    """Apply the pure function ``name`` (lower case); KeyError if it is not one of them."""
    low, high, implementation = FUNCTIONS[name]
    _need(args, low, high, name)
    try:
        return _bounded(implementation(*args))
    except FunctionError:
        raise
    except (TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        raise FunctionError(f"{name}(): {exc}") from None

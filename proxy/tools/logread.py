"""Streaming access-log input for the log tools: JSON lines from files or stdin, one record at a time.

Records are read by field name and defensively: unknown fields are ignored, missing ones are empty, so logs
written by older or newer versions of nsp-proxy read alike. Both shapes nsp-proxy writes are understood: the
flat NSPAccessLogs record, and the diagnostic-settings shape (``{time, category, operationName,
properties: {...}}``, Azure's storage/event-hub export). A line that is not a JSON object is counted and
skipped, never fatal: a log cut by a crash ends in half a line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from proxy.telemetry import Category, Field

MAX_LINE = 1 << 20  # bytes: a longer line is not a record nsp-proxy wrote (and would cost unbounded memory)
REFUSED_EVERYWHERE = "refused in every mode"  # ResultDescription of nsp-proxy's own guards (proxy.decision.engine)
PROXY_REFUSED = "NspProxyRequestRefused"  # wire-hygiene refusals (CONTRACTS.md): never a rule's business
_DENIED_CATEGORIES = {Category.PUBLIC_INBOUND_PERIMETER_DENIED.value, Category.PUBLIC_OUTBOUND_PERIMETER_DENIED.value}
_TRANSITION_CATEGORIES = {Category.PUBLIC_INBOUND_RESOURCE_ALLOWED.value, Category.PUBLIC_INBOUND_RESOURCE_DENIED.value,
                          Category.PUBLIC_OUTBOUND_RESOURCE_ALLOWED.value,
                          Category.PUBLIC_OUTBOUND_RESOURCE_DENIED.value}


_F = {field.name: field.value for field in Field}  # plain strings: no Enum lookup per record


class LogInputError(Exception):
    """A log source cannot be read at all (missing file, not text)."""


@dataclass
class Entry:
    """What the tools need of one record, with the nsp-proxy extension fields when the record has them."""

    time: str
    category: str
    direction: str
    action: str  # ResultAction: Approved / Denied
    description: str
    profile: str
    source_ip: str
    source_port: int
    subscription: str | None
    destination: str  # DestinationFqdn: outbound the dialled host, inbound the service name
    destination_port: int
    protocol: str
    service_resource_id: str
    source_resource_id: str
    sni: str | None
    association: str | None  # Parameters.resourceAssociation, or None (older record: resolve with a config)
    mode: str | None
    perimeter: str | None
    allowed: bool  # what the proxy did: let the request through
    would_deny: bool  # what Enforced would have done
    count: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def inbound(self) -> bool:
        return self.direction.lower() == "inbound"

    @property
    def refused_everywhere(self) -> str | None:
        """Why no access rule could ever let this through (None when a rule could)."""
        if self.category == PROXY_REFUSED:
            return "refused by nsp-proxy for its wire input (NspProxyRequestRefused), not by a rule"
        if REFUSED_EVERYWHERE in self.description:
            return "refused by nsp-proxy's own guards in every mode (blocked destination or the proxy itself)"
        return None


@dataclass
class ReadStats:
    records: int = 0
    skipped: int = 0  # lines that were not a record
    first_problem: str = ""


def read_entries(paths: Iterable[str], stats: ReadStats | None = None) -> Iterator[Entry]:
    """Every record in ``paths`` (``-`` is stdin), in order, streamed; ``stats`` counts what was skipped."""
    stats = stats if stats is not None else ReadStats()
    for path in paths:
        if path == "-":
            yield from _read_stream(sys.stdin, "<stdin>", stats)
            continue
        try:
            handle = open(path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise LogInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
        with handle:
            yield from _read_stream(handle, path, stats)


def _read_stream(handle: TextIO, name: str, stats: ReadStats) -> Iterator[Entry]:
    number = 0
    while True:
        line = handle.readline(MAX_LINE)
        if not line:
            return
        number += 1
        if not line.endswith("\n") and len(line) >= MAX_LINE:
            while (rest := handle.readline(MAX_LINE)) and not rest.endswith("\n"):
                pass  # drop the rest of an overlong line without holding it
        if not line.strip():
            continue
        entry = parse_line(line)
        if entry is None:
            stats.skipped += 1
            stats.first_problem = stats.first_problem or f"{name}:{number}: not an access-log record"
            continue
        stats.records += 1
        yield entry


def parse_line(line: str) -> Entry | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return entry_from(data) if isinstance(data, dict) else None


def entry_from(data: dict[str, Any]) -> Entry | None:
    """An ``Entry`` from either record shape; None when it is not an NSP access-log record."""
    flat = _flatten(data)
    category = _text(flat, _F["CATEGORY"])
    direction = _text(flat, _F["RESULT_DIRECTION"])
    if not category or direction.lower() not in ("inbound", "outbound"):
        return None
    extension = _object(flat.get(_F["PARAMETERS"]))
    inbound = direction.lower() == "inbound"
    source_parameters = _object(flat.get(_F["SOURCE_PARAMETERS"])) if inbound else {}
    destination_parameters = {} if inbound else _object(flat.get(_F["DESTINATION_PARAMETERS"]))
    action = _text(flat, _F["RESULT_ACTION"])
    description = _text(flat, _F["RESULT_DESCRIPTION"])
    mode = extension.get("accessMode") if isinstance(extension.get("accessMode"), str) else None
    allowed = extension.get("allowed")
    would_deny = extension.get("wouldDeny")
    return Entry(
        time=_text(flat, _F["TIME_GENERATED"]) or str(data.get("time") or ""),
        category=category, direction=direction, action=action, description=description,
        profile=_text(flat, _F["PROFILE"]), source_ip=_text(flat, _F["SOURCE_IP_ADDRESS"]),
        source_port=_int(flat.get(_F["SOURCE_PORT"])),
        subscription=_str_or_none(source_parameters.get("subscription")),
        destination=_text(flat, _F["DESTINATION_FQDN"]), destination_port=_int(flat.get(_F["DESTINATION_PORT"])),
        protocol=_text(flat, _F["SOURCE_PROTOCOL"]) or _text(flat, _F["DESTINATION_PROTOCOL"]),
        service_resource_id=_text(flat, _F["SERVICE_RESOURCE_ID"]),
        source_resource_id=_text(flat, _F["SOURCE_RESOURCE_ID"]),
        sni=_str_or_none(destination_parameters.get("sni")),
        association=_str_or_none(extension.get("resourceAssociation")), mode=mode,
        perimeter=_str_or_none(extension.get("perimeter")),
        allowed=allowed if isinstance(allowed, bool) else _allowed_without_extension(action, description),
        would_deny=would_deny if isinstance(would_deny, bool) else _would_deny_without_extension(category),
        count=max(1, _int(flat.get(_F["COUNT"])) or 1),
    )


def _allowed_without_extension(action: str, description: str) -> bool:
    """Records written before the extension: Approved went through, and Audit never blocks."""
    return action == "Approved" or description.startswith(("Audit", "error while deciding (not blocked"))


def _would_deny_without_extension(category: str) -> bool:
    return category in _DENIED_CATEGORIES or category in _TRANSITION_CATEGORIES or category == PROXY_REFUSED


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    """The diagnostic shape nests the NSP fields under ``properties`` in camelCase: lift them to the flat names."""
    properties = data.get("properties")
    if not isinstance(properties, dict) or Field.CATEGORY.value in data:
        return data
    flat = {_pascal(k): v for k, v in properties.items() if not isinstance(v, dict) or _pascal(k) not in _NESTED}
    for side in _NESTED:  # {"Source": {"IpAddress": ...}} -> "SourceIpAddress" (proxy.records.logformats writes this)
        nested = properties.get(side) or properties.get(side.lower())
        if isinstance(nested, dict):
            flat.update({f"{side}{_pascal(k)}": v for k, v in nested.items()})
    for key in ("category", "operationName", "operationVersion", "resultDescription", "count"):
        if key in data and _pascal(key) not in flat:
            flat[_pascal(key)] = data[key]
    if "time" in data and Field.TIME_GENERATED.value not in flat:
        flat[Field.TIME_GENERATED.value] = data["time"]
    return flat


_NESTED = ("Source", "Destination")  # the diagnostic shape's nested objects


def _pascal(key: str) -> str:
    return key[:1].upper() + key[1:]


def _text(flat: dict[str, Any], key: str) -> str:
    value = flat.get(key)
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _object(value: Any) -> dict[str, Any]:
    """A property bag: a JSON object, or a string holding one (NSPAccessLogs stores them as strings)."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}

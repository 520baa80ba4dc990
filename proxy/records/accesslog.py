"""NSP access-log records: built from a decision and encoded as one JSON line each.

The record path runs once per request on the event loop, so it is kept lean: field names are plain strings
computed once (no ``Enum.value`` lookups per record), the seconds part of the timestamp is formatted once per
second, and lines are encoded with orjson when it is installed (valid UTF-8 JSON, control characters escaped)
with the standard library as the fallback (and for text orjson refuses: lone surrogates from request bytes that
were not UTF-8 are written as ``\\udcXX`` escapes). Writing is ``proxy.records.logwriter``'s job, off the event loop.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from proxy.decision.facts import Decision, InboundFacts, OutboundFacts
from proxy.policy.compiled import Policy
from proxy.telemetry import (
    LOG_PROTOCOLS,
    LOG_RULE_TYPES,
    PROXY_CATEGORIES,
    RESOURCE_FIREWALL_RULE,
    RULE_TYPE_NONE,
    Field,
    ResultAction,
    RuleType,
)

try:  # optional: several times faster than json.dumps for a record
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency, but the record path must not need it
    _orjson = None

# Plain-str field names, looked up once at import (F.CATEGORY == "Category").
F = SimpleNamespace(**{field.name: field.value for field in Field})


def build_record(
    decision: Decision,
    facts: InboundFacts | OutboundFacts,
    policy: Policy,
    *,
    when: datetime | None = None,
    operation: str = "",
    operation_version: str = "",
    source_parameters: dict[str, Any] | None = None,
    destination_parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One NSPAccessLogs record: every column of the table, in the table's types (ports are strings, protocols
    ``App:Transport``). Count 1: ``proxy.records.aggregation`` merges equal records when aggregation is on."""
    stamp = timestamp() if when is None else _format_datetime(when)
    compiled = policy.association(decision.resource)
    resource_id = compiled.association.resource_id if compiled else ""
    location = compiled.perimeter.location if compiled else ""
    service_fqdn = _service_fqdn(compiled, facts)
    if isinstance(facts, InboundFacts):
        destination_resource, destination_fqdn = resource_id, service_fqdn
    else:
        destination_resource, destination_fqdn = "", facts.destination_host
    description = decision.reason if not decision.error else f"{decision.reason}: {decision.error}"
    protocol = LOG_PROTOCOLS.get(facts.protocol) or (
        facts.protocol if ":" in facts.protocol else f"{facts.protocol}:TCP")  # "DNS:UDP" stays as it is
    rule_type = RULE_TYPE_NONE if decision.category in PROXY_CATEGORIES else LOG_RULE_TYPES[decision.rule_type]
    matched = decision.matched_rule
    if (matched is None and decision.rule_type is RuleType.RESOURCE_RULES and compiled is not None
            and decision.result_action is ResultAction.APPROVED and compiled.resource_ip_rules):
        matched = RESOURCE_FIREWALL_RULE  # the resource's own IP rules allowed it (Transition)
    # StrEnum members are str: both encoders write their value, and record["Category"] == "Nsp..." holds.
    return {
        F.TIME_GENERATED: stamp,
        F.TIME_GENERATED_END_TIME: stamp,
        F.COUNT: 1,
        F.CATEGORY: decision.category,
        F.OPERATION_NAME: operation,
        F.OPERATION_VERSION: operation_version,
        F.RESULT_ACTION: decision.result_action,
        F.RESULT_DIRECTION: decision.direction,
        F.RESULT_DESCRIPTION: description,
        F.RULE_TYPE: rule_type,
        F.MATCHED_RULE: _params({"accessRule": matched}) if matched else "",
        F.PROFILE: decision.profile or "",
        F.ACCESS_RULE_VERSION: str(decision.generation),
        F.TRAFFIC_TYPE: decision.traffic_type,
        F.APP_ID: "",
        F.PARAMETERS: _params(_extension(decision)),  # nsp-proxy extension (mode, association, outcome)
        F.SOURCE_IP_ADDRESS: facts.source_ip,
        F.SOURCE_PORT: _port(facts.source_port),
        F.SOURCE_PROTOCOL: protocol,
        F.SOURCE_RESOURCE_ID: decision.source_resource_id,
        F.SOURCE_APP_ID: "",
        F.SOURCE_PERIMETER_GUIDS: decision.source_perimeter_guid,
        F.SOURCE_PARAMETERS: _params(source_parameters),
        F.DESTINATION_FQDN: destination_fqdn,
        F.DESTINATION_PORT: _port(facts.destination_port),
        F.DESTINATION_PROTOCOL: protocol,
        F.DESTINATION_RESOURCE_ID: destination_resource,
        F.DESTINATION_EMAIL_ADDRESS: "",
        F.DESTINATION_PHONE_NUMBER: "",
        F.DESTINATION_PARAMETERS: _params(destination_parameters),
        F.SERVICE_FQDN: service_fqdn,
        F.SERVICE_RESOURCE_ID: resource_id,
        F.LOCATION: location,
    }


def perimeter_id(policy: Policy, decision: Decision) -> str:
    """The resource ID of the perimeter that decided (the diagnostic shape's ``resourceId``); empty when the
    caller is in no perimeter."""
    compiled = policy.association(decision.resource)
    return compiled.perimeter.resource_id if compiled else ""


def encode_record(record: dict[str, Any]) -> bytes:
    """One whole line: UTF-8 JSON with control characters escaped, ending in a newline."""
    if _orjson is not None:
        try:
            return _orjson.dumps(record, option=_orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # orjson.JSONEncodeError: e.g. a lone surrogate; the fallback escapes it
            pass
    return (json.dumps(record, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")


def _extension(decision: Decision) -> dict[str, Any]:
    """nsp-proxy's own facts about a decision, which Azure's columns do not carry but ``replay``/``suggest``
    need: the association and its mode, the perimeter, what the proxy did and what Enforced would do."""
    return {"accessMode": decision.mode.value if decision.mode else None, "resourceAssociation": decision.resource,
            "perimeter": decision.perimeter, "allowed": decision.allowed, "wouldDeny": decision.would_deny}


# -- timestamps: the seconds formatted once per second --------------------------------------------------------

_clock: list[Any] = [-1, ""]  # [the second, its "YYYY-MM-DDTHH:MM:SS"]


def timestamp(now: float | None = None) -> str:
    """``2025-01-02T03:04:05.123456Z`` for ``now`` (default: the current time)."""
    now = time.time() if now is None else now
    second = int(now)
    if second != _clock[0]:
        _clock[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _clock[0] = second
    return f"{_clock[1]}.{int((now - second) * 1_000_000):06d}Z"


def _format_datetime(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _port(port: int) -> str:
    """The table's ports are strings; an unknown port (0) is empty, like every other unknown column."""
    return str(port) if port else ""


def _params(values: dict[str, Any] | None) -> str:
    if not values:
        return ""
    clean = {k: v for k, v in values.items() if v not in (None, "")}
    if not clean:
        return ""
    if _orjson is not None:
        try:
            return _orjson.dumps(clean, option=_orjson.OPT_SORT_KEYS).decode()
        except TypeError:
            pass
    return json.dumps(clean, separators=(",", ":"), sort_keys=True)


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _service_fqdn(compiled: Any, facts: InboundFacts | OutboundFacts) -> str:
    if compiled and compiled.association.local.service_fqdns:
        return compiled.association.local.service_fqdns[0]
    return _strip_port(facts.host) if isinstance(facts, InboundFacts) else ""

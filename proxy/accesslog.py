"""NSP access-log records: built from a decision, written as one JSON line each, never lost.

Every record is written with a single ``os.write`` of a whole line to an unbuffered descriptor (O_APPEND for
files), so nothing waits in a user-space buffer: a record is on its way to the file the moment the decision is
made, SIGTERM cannot strand it, and concurrent writers never interleave half lines. ``write`` says whether the
record reached the descriptor, so the runtime can count what was written against the decisions made.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from typing import Any

from proxy.decision import Decision, InboundFacts, OutboundFacts
from proxy.policy import Policy
from proxy.telemetry import Field


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
    """One NSPAccessLogs record (Count 1: nsp-proxy does not aggregate)."""
    stamp = _timestamp(when or datetime.now(UTC))
    compiled = policy.association(decision.resource)
    resource_id = compiled.association.resource_id if compiled else ""
    location = compiled.perimeter.location if compiled else ""
    if isinstance(facts, InboundFacts):
        destination_resource, destination_fqdn = resource_id, _service_fqdn(compiled, facts)
    else:
        destination_resource, destination_fqdn = "", facts.destination_host
    description = decision.reason if not decision.error else f"{decision.reason}: {decision.error}"
    record = {
        Field.TIME_GENERATED: stamp,
        Field.TIME_GENERATED_END_TIME: stamp,
        Field.COUNT: 1,
        Field.CATEGORY: decision.category.value,
        Field.OPERATION_NAME: operation,
        Field.OPERATION_VERSION: operation_version,
        Field.RESULT_ACTION: decision.result_action.value,
        Field.RESULT_DIRECTION: decision.direction.value,
        Field.RESULT_DESCRIPTION: description,
        Field.RULE_TYPE: decision.rule_type.value,
        Field.MATCHED_RULE: _params({"accessRule": decision.matched_rule}),
        Field.PROFILE: decision.profile or "",
        Field.ACCESS_RULE_VERSION: str(decision.generation),
        Field.TRAFFIC_TYPE: decision.traffic_type.value,
        Field.SOURCE_IP_ADDRESS: facts.source_ip,
        Field.SOURCE_PORT: facts.source_port,
        Field.SOURCE_PROTOCOL: facts.protocol,
        Field.SOURCE_RESOURCE_ID: decision.source_resource_id,
        Field.SOURCE_APP_ID: "",
        Field.SOURCE_PERIMETER_GUIDS: decision.source_perimeter_guid,
        Field.SOURCE_PARAMETERS: _params(source_parameters),
        Field.DESTINATION_FQDN: destination_fqdn,
        Field.DESTINATION_PORT: facts.destination_port,
        Field.DESTINATION_PROTOCOL: facts.protocol,
        Field.DESTINATION_RESOURCE_ID: destination_resource,
        Field.DESTINATION_EMAIL_ADDRESS: "",
        Field.DESTINATION_PHONE_NUMBER: "",
        Field.DESTINATION_PARAMETERS: _params(destination_parameters),
        Field.SERVICE_FQDN: _service_fqdn(compiled, facts),
        Field.SERVICE_RESOURCE_ID: resource_id,
        Field.LOCATION: location,
        Field.PARAMETERS: _params(_extension(decision)),
    }
    return {key.value: value for key, value in record.items()}


class AccessLogWriter:
    """Appends records to a file, or to stdout when the target is ``-``."""

    def __init__(self, target: str):
        self.target = target
        self._lock = threading.Lock()
        if target == "-":
            self._fd = os.dup(1)  # our own descriptor: closing it never closes the process's stdout
        else:
            directory = os.path.dirname(os.path.abspath(target))
            os.makedirs(directory, exist_ok=True)
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._closed = False

    def write(self, record: dict[str, Any]) -> bool:
        # ensure_ascii: request text decoded with surrogateescape (non-UTF-8 bytes) stays representable.
        data = (json.dumps(record, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")
        with self._lock:
            if self._closed:
                return False
            try:
                view = memoryview(data)
                while view:
                    done = os.write(self._fd, view)
                    view = view[done:]
            except OSError:
                return False
            return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self.target != "-":
                    os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)


def _extension(decision: Decision) -> dict[str, Any]:
    """nsp-proxy's own facts about a decision, which Azure's columns do not carry but ``replay``/``suggest``
    need: the association and its mode, the perimeter, what the proxy did and what Enforced would do."""
    return {"accessMode": decision.mode.value if decision.mode else None, "resourceAssociation": decision.resource,
            "perimeter": decision.perimeter, "allowed": decision.allowed, "wouldDeny": decision.would_deny}


def _timestamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _params(values: dict[str, Any] | None) -> str:
    clean = {k: v for k, v in (values or {}).items() if v not in (None, "")}
    return json.dumps(clean, separators=(",", ":"), sort_keys=True) if clean else ""


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _service_fqdn(compiled: Any, facts: InboundFacts | OutboundFacts) -> str:
    if compiled and compiled.association.local.service_fqdns:
        return compiled.association.local.service_fqdns[0]
    return _strip_port(facts.host) if isinstance(facts, InboundFacts) else ""

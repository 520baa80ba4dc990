"""The diagnostic-settings shape of an access-log record (``settings.accessLogFormat: diagnostic``).

Azure writes NSP access logs in two shapes: the NSPAccessLogs table of a Log Analytics workspace (flat
columns: ``proxy.records.accesslog.build_record``), and the JSON that diagnostic settings send to a storage
account or an event hub: Azure Monitor's resource-log common schema, with ``resourceId`` the perimeter's, the
common fields at the top level (``time``, ``timeGeneratedEndTime``, ``count``, ``location``, ``operationName``,
``operationVersion``, ``category``, ``resultDescription``) and the NSP fields in ``properties``, with the
caller in ``properties.Source``, the target in ``properties.Destination`` and ``MatchedRule`` as an object
(network-security-perimeter-diagnostic-logs; the AI Search page shows ``"MatchedRule": {"AccessRule": ...},
"Source": {"IpAddress": ...}``). This module converts a built table record into that shape; the record stays the
one source of truth, so both formats say the same thing.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.telemetry import Field

# (top-level key, table column): the common resource-log fields.
_TOP = (
    ("time", Field.TIME_GENERATED.value),
    ("timeGeneratedEndTime", Field.TIME_GENERATED_END_TIME.value),
    ("count", Field.COUNT.value),
)
_TOP_AFTER = (
    ("location", Field.LOCATION.value),
    ("operationName", Field.OPERATION_NAME.value),
    ("operationVersion", Field.OPERATION_VERSION.value),
    ("category", Field.CATEGORY.value),
    ("resultDescription", Field.RESULT_DESCRIPTION.value),
)
# properties.<key>: columns that are not the caller's or the target's.
_PROPERTIES = tuple(f.value for f in (
    Field.RESULT_ACTION, Field.RESULT_DIRECTION, Field.RULE_TYPE, Field.MATCHED_RULE, Field.PROFILE,
    Field.ACCESS_RULE_VERSION, Field.TRAFFIC_TYPE, Field.APP_ID, Field.PARAMETERS, Field.SERVICE_FQDN,
    Field.SERVICE_RESOURCE_ID,
))
# properties.Source.<key> / properties.Destination.<key>: the column without its prefix.
_SOURCE = tuple((f.value.removeprefix("Source"), f.value) for f in Field if f.value.startswith("Source"))
_DESTINATION = tuple((f.value.removeprefix("Destination"), f.value) for f in Field
                     if f.value.startswith("Destination"))
# Columns holding a JSON property bag as a string in the table: objects in the diagnostic shape.
_BAGS = frozenset({Field.MATCHED_RULE.value, Field.PARAMETERS.value, Field.SOURCE_PARAMETERS.value,
                   Field.DESTINATION_PARAMETERS.value})


def diagnostic_record(record: dict[str, Any], perimeter_id: str) -> dict[str, Any]:
    """``record`` (a table record, possibly aggregated) in the diagnostic-settings shape. ``perimeter_id`` is
    the resource ID of the perimeter that decided (empty when the caller is in no perimeter)."""
    out: dict[str, Any] = {key: record[column] for key, column in _TOP}
    out["resourceId"] = perimeter_id
    for key, column in _TOP_AFTER:
        out[key] = record[column]
    properties = {column: _value(column, record[column]) for column in _PROPERTIES}
    properties["Source"] = {key: _value(column, record[column]) for key, column in _SOURCE}
    properties["Destination"] = {key: _value(column, record[column]) for key, column in _DESTINATION}
    out["properties"] = properties
    return out


def _value(column: str, value: Any) -> Any:
    if column in _BAGS:
        return json.loads(value) if value else {}
    return value

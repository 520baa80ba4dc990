"""The access-log record is Azure's: every NSPAccessLogs column in its type, the documented values, the
diagnostic-settings shape (settings.accessLogFormat: diagnostic) and Azure Monitor-like aggregation.

Columns and types: the NSPAccessLogs table reference (learn.microsoft.com/azure/azure-monitor/reference/tables/
nspaccesslogs; ../shared/nsp/AZURE-SOURCES.md section 6), without the columns the workspace adds (_ResourceId,
TenantId, Type ...). The diagnostic shape: network-security-perimeter-diagnostic-logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy.config.loader import load_config
from proxy.decision.facts import InboundFacts, OutboundFacts
from proxy.records.aggregation import Aggregator
from proxy.records.logformats import diagnostic_record
from proxy.runtime import Overrides, Runtime

STRING, INT = str, int
COLUMNS: dict[str, type] = {
    "TimeGenerated": STRING, "TimeGeneratedEndTime": STRING, "Count": INT, "Category": STRING,
    "OperationName": STRING, "OperationVersion": STRING, "ResultAction": STRING, "ResultDirection": STRING,
    "ResultDescription": STRING, "RuleType": STRING, "MatchedRule": STRING, "Profile": STRING,
    "AccessRuleVersion": STRING, "TrafficType": STRING, "AppId": STRING, "Parameters": STRING,
    "SourceIpAddress": STRING, "SourcePort": STRING, "SourceProtocol": STRING, "SourceResourceId": STRING,
    "SourceAppId": STRING, "SourcePerimeterGuids": STRING, "SourceParameters": STRING, "DestinationFqdn": STRING,
    "DestinationPort": STRING, "DestinationProtocol": STRING, "DestinationResourceId": STRING,
    "DestinationEmailAddress": STRING, "DestinationPhoneNumber": STRING, "DestinationParameters": STRING,
    "ServiceFqdn": STRING, "ServiceResourceId": STRING, "Location": STRING,
}
VALUES = {  # the documented values of the enumerated columns
    "ResultAction": {"Approved", "Denied"},
    "ResultDirection": {"Inbound", "Outbound"},
    "TrafficType": {"Private", "Public", "Intra", "Cross"},
    "RuleType": {"NSP", "PaaS"},
}

RG = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg"
PERIMETER_ID = f"{RG}/providers/Microsoft.Network/networkSecurityPerimeters/p1"
CONFIG = """
settings: {metrics: null@EXTRA@}
perimeters:
  - name: p1
    id: @PERIMETER@
    location: westeurope
    profiles:
      - name: prof
        accessRules:
          - {name: office, direction: Inbound, addressPrefixes: [203.0.113.0/24]}
          - {name: allow-api, direction: Outbound, fullyQualifiedDomainNames: [api.allowed.test]}
    resourceAssociations:
      - name: store
        privateLinkResource: {id: @RG@/providers/Microsoft.Storage/storageAccounts/st1}
        profile: prof
        accessMode: @MODE@
        local: {listen: "127.0.0.1:13998", upstream: "http://127.0.0.1:1", outboundListen: "127.0.0.1:13999",
                resourceIpRules: [198.51.100.0/24]}
"""


def runtime_for(tmp_path: Path, *, mode: str = "Enforced", settings: str = "") -> tuple[Runtime, Path]:
    path, log = tmp_path / "perimeter.yaml", tmp_path / "access.jsonl"
    path.write_text(CONFIG.replace("@EXTRA@", settings).replace("@MODE@", mode).replace("@PERIMETER@", PERIMETER_ID)
                    .replace("@RG@", RG))
    return Runtime(load_config(str(path)), Overrides(access_log=str(log), metrics_disabled=True), str(path)), log


def inbound(source: str, port: int = 50123) -> InboundFacts:
    return InboundFacts(resource="store", source_ip=source, source_port=port, protocol="HTTPS",
                        host="st1.blob.core.windows.net", destination_port=443)


def outbound(host: str, protocol: str) -> OutboundFacts:
    return OutboundFacts(resource="store", source_ip="127.0.0.1", destination_host=host, destination_port=8443,
                         source_port=40000, protocol=protocol)


def records_of(tmp_path: Path, mode: str, calls: list[tuple[str, Any]], settings: str = "") -> list[dict[str, Any]]:
    runtime, log = runtime_for(tmp_path, mode=mode, settings=settings)
    try:
        for kind, facts in calls:
            decide = runtime.decide_inbound if kind == "in" else runtime.decide_outbound
            runtime.record(decide(facts), facts, operation="GetBlob")
    finally:
        runtime.close()
    return [json.loads(line) for line in log.read_text().splitlines()]


RECORDS = [
    pytest.param("Enforced", ("in", inbound("203.0.113.7")), {"RuleType": "NSP", "SourceProtocol": "HTTPS:TCP",
                 "SourcePort": "50123", "DestinationPort": "443", "ResultAction": "Approved"}, id="rule-allows"),
    pytest.param("Enforced", ("in", inbound("192.0.2.1")), {"RuleType": "NSP", "ResultAction": "Denied",
                 "MatchedRule": ""}, id="perimeter-denies"),
    pytest.param("Learning", ("in", inbound("198.51.100.9")), {"RuleType": "PaaS", "ResultAction": "Approved",
                 "Category": "NspPublicInboundResourceRulesAllowed",
                 "MatchedRule": '{"accessRule":"IP firewall"}'}, id="resource-rules-allow"),
    pytest.param("Enforced", ("in", inbound("203.0.113.7", port=0)), {"SourcePort": ""}, id="unknown-port-empty"),
    pytest.param("Enforced", ("out", outbound("api.allowed.test", "HTTP")), {"DestinationProtocol": "HTTP:TCP",
                 "SourceProtocol": "HTTP:TCP", "DestinationPort": "8443", "SourcePort": "40000"}, id="plain-http"),
    pytest.param("Enforced", ("out", outbound("api.allowed.test", "HTTPS")), {"DestinationProtocol": "HTTPS:TCP"},
                 id="tls-seen"),
    pytest.param("Enforced", ("out", outbound("api.allowed.test", "TCP")), {"DestinationProtocol": "TCP:TCP"},
                 id="tunnel-bytes-unseen"),
]


@pytest.mark.parametrize(("mode", "call", "expected"), RECORDS)
def test_every_record_has_the_table_columns_in_their_types(tmp_path: Path, mode: str, call: tuple[str, Any],
                                                            expected: dict[str, Any]) -> None:
    (record,) = records_of(tmp_path, mode, [call])
    assert list(record)[:3] == ["TimeGenerated", "TimeGeneratedEndTime", "Count"]  # proxy.records.aggregation's key
    assert set(record) == set(COLUMNS)
    assert {k: type(v) for k, v in record.items()} == COLUMNS
    for column, allowed in VALUES.items():
        assert record[column] in allowed, (column, record)
    assert {k: record[k] for k in expected} == expected


def test_diagnostic_shape_nests_the_nsp_fields_under_properties(tmp_path: Path) -> None:
    (record,) = records_of(tmp_path, "Enforced", [("in", inbound("203.0.113.7"))],
                           settings=", accessLogFormat: diagnostic")
    assert list(record) == ["time", "timeGeneratedEndTime", "count", "resourceId", "location", "operationName",
                            "operationVersion", "category", "resultDescription", "properties"]
    assert (record["resourceId"], record["location"], record["count"]) == (PERIMETER_ID, "westeurope", 1)
    assert (record["category"], record["operationName"]) == ("NspPublicInboundPerimeterRulesAllowed", "GetBlob")
    properties = record["properties"]
    assert properties["MatchedRule"] == {"accessRule": "office"}
    assert properties["Source"] == {"IpAddress": "203.0.113.7", "Port": "50123", "Protocol": "HTTPS:TCP",
                                    "ResourceId": "", "AppId": "", "PerimeterGuids": "", "Parameters": {}}
    assert properties["Destination"]["Fqdn"] == "st1.blob.core.windows.net"
    assert properties["Destination"]["ResourceId"].endswith("/storageAccounts/st1")
    assert (properties["ResultAction"], properties["RuleType"], properties["TrafficType"]) == \
        ("Approved", "NSP", "Public")


def test_diagnostic_conversion_keeps_every_column() -> None:
    table = {column: ("" if kind is str else 1) for column, kind in COLUMNS.items()}
    converted = diagnostic_record(table, PERIMETER_ID)
    nested = (set(converted) | set(converted["properties"]) | {f"Source{k}" for k in converted["properties"]["Source"]}
              | {f"Destination{k}" for k in converted["properties"]["Destination"]})
    flat = {k[0].upper() + k[1:] for k in nested} | {"TimeGenerated"}
    assert set(COLUMNS) <= flat


# -- aggregation ----------------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record_at(stamp: str, source: str = "203.0.113.7") -> dict[str, Any]:
    return {"TimeGenerated": stamp, "TimeGeneratedEndTime": stamp, "Count": 1, "Category": "C",
            "SourceIpAddress": source}


AGGREGATION = [
    pytest.param([("t1", "a"), ("t2", "a"), ("t3", "a")], [("t1", "t3", 3, "a")], id="equal-records-merge"),
    pytest.param([("t1", "a"), ("t2", "b"), ("t3", "a")], [("t1", "t3", 2, "a"), ("t2", "t2", 1, "b")],
                 id="other-columns-split"),
]


@pytest.mark.parametrize(("added", "emitted"), AGGREGATION)
def test_aggregation_merges_records_equal_but_for_time(added: list[tuple[str, str]],
                                                       emitted: list[tuple[str, str, int, str]]) -> None:
    out: list[dict[str, Any]] = []
    aggregator = Aggregator(3600, lambda record, context: out.append(record), clock=Clock(7200.0))
    for stamp, source in added:
        aggregator.add(record_at(stamp, source), "")
    assert out == [] and aggregator.waiting() == len(added)
    aggregator.close()
    assert [(r["TimeGenerated"], r["TimeGeneratedEndTime"], r["Count"], r["SourceIpAddress"]) for r in out] == emitted


def test_aggregation_windows_and_bounds() -> None:
    out: list[dict[str, Any]] = []
    clock = Clock(7200.0)
    aggregator = Aggregator(3600, lambda record, context: out.append(record), max_groups=2, clock=clock)
    aggregator.add(record_at("t1"), "p1")
    aggregator.add(record_at("t2"), "p2")  # another perimeter: another group
    assert out == []
    aggregator.add(record_at("t3", "b"), "p1")  # a third group: the window is flushed early (bounded)
    assert [r["Count"] for r in out] == [1, 1]
    clock.now += 3600  # the next window: what waited is emitted before the new record is counted
    aggregator.add(record_at("t4", "b"), "p1")
    assert [r["TimeGenerated"] for r in out] == ["t1", "t2", "t3"]
    aggregator.close()
    assert [r["TimeGenerated"] for r in out] == ["t1", "t2", "t3", "t4"]


def test_aggregated_runtime_writes_count_and_counts_every_decision(tmp_path: Path) -> None:
    calls = [("in", inbound("203.0.113.7"))] * 5 + [("in", inbound("192.0.2.1"))] * 2
    records = records_of(tmp_path, "Enforced", calls, settings=", accessLogAggregation: {windowSeconds: 3600}")
    assert sorted((r["ResultAction"], r["Count"]) for r in records) == [("Approved", 5), ("Denied", 2)]
    for record in records:
        assert record["TimeGenerated"] <= record["TimeGeneratedEndTime"]


def test_aggregated_diagnostic_lines_carry_count(tmp_path: Path) -> None:
    calls = [("out", outbound("api.allowed.test", "TCP"))] * 3
    (record,) = records_of(tmp_path, "Enforced", calls,
                           settings=", accessLogFormat: diagnostic, accessLogAggregation: {windowSeconds: 3600}")
    assert (record["count"], record["resourceId"]) == (3, PERIMETER_ID)
    assert record["time"] <= record["timeGeneratedEndTime"]


# -- nsp-proxy explain prints the record it would log ------------------------------------------------------------


@pytest.mark.parametrize(("settings", "diagnostic"), [
    pytest.param("", False, id="table"),
    pytest.param(", accessLogFormat: diagnostic", True, id="diagnostic"),
])
def test_explain_prints_the_record_in_the_configured_format(tmp_path: Path, settings: str, diagnostic: bool) -> None:
    from tests.support import run_cli

    runtime, _ = runtime_for(tmp_path, settings=settings)
    runtime.close()
    result = run_cli("explain", "-c", str(tmp_path / "perimeter.yaml"), "-r", "store", "--destination",
                     "api.allowed.test:443", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)["accessLogRecord"]
    if diagnostic:
        assert (record["resourceId"], record["category"]) == (PERIMETER_ID, "NspPublicOutboundPerimeterRulesAllowed")
        assert record["properties"]["Destination"]["Protocol"] == "HTTPS:TCP"
        assert record["properties"]["MatchedRule"] == {"accessRule": "allow-api"}
    else:
        assert {k: type(v) for k, v in record.items()} == COLUMNS
        assert (record["DestinationPort"], record["DestinationProtocol"], record["RuleType"]) == \
            ("443", "HTTPS:TCP", "NSP")
    text = run_cli("explain", "-c", str(tmp_path / "perimeter.yaml"), "-r", "store", "--destination",
                   "api.allowed.test:443")
    assert "(FullyQualifiedDomainNames; logged as RuleType NSP)" in text.stdout

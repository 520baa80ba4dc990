"""The log tools' pure parts: address aggregation, wildcards, limits, what is never suggested, reading both
record shapes, replay's verdicts and the commands' exit codes. Records are made by the real engine and the
real record builder, so they have exactly the shape the proxy writes."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import netaddr
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.loader import parse_config_text
from proxy.decision.facts import OutboundFacts
from proxy.tools import aggregate
from proxy.tools.common import Evidence
from proxy.tools.logread import entry_from, parse_line, read_entries
from proxy.tools.replay import ALLOWED_TO_DENIED, DENIED_TO_ALLOWED, replay
from proxy.tools.suggest import ADDRESSES, FQDNS, SUBSCRIPTIONS, Options, suggest
from tests.sample_records import CONFIG, T0, inbound, outbound, record
from tests.support import run_cli


def records_for(count: int) -> list[dict[str, Any]]:
    """A varied log of ``count`` records over an hour (used by the HTML report test too)."""
    kinds = [inbound("198.51.100.7"), inbound("203.0.113.5"), inbound("192.0.2.9", resource="strict"),
             outbound("api.allowed.test"), outbound("evil.test"), outbound("a.example.test")]
    made = [record(kinds[i % len(kinds)], T0 + timedelta(seconds=30 * i)) for i in range(len(kinds))]
    return [{**made[i % len(made)], "TimeGenerated": (T0 + timedelta(seconds=30 * i)).isoformat()}
            for i in range(count)]


def entries(*records: dict[str, Any]) -> list[Any]:
    return [entry_from(r) for r in records]


def seen(*values: str) -> dict[str, Evidence]:
    return {v: Evidence(1, "t", "t") for v in values}


# -- aggregation -------------------------------------------------------------------------------------------------

MERGES = [
    pytest.param(["10.0.0.1"], 24, ["10.0.0.1/32"], id="one-address-stays-a-host"),
    pytest.param(["10.0.0.2", "10.0.0.3"], 24, ["10.0.0.2/31"], id="neighbours-merge"),
    pytest.param(["10.0.0.1", "10.0.0.3"], 24, ["10.0.0.1/32", "10.0.0.3/32"], id="gap-never-filled"),
    pytest.param([f"10.0.{i // 256}.{i % 256}" for i in range(512)], 24, ["10.0.0.0/24", "10.0.1.0/24"],
                 id="full-/23-cut-at-the-/24-bound"),
    pytest.param([f"10.0.0.{i}" for i in range(256)], 28, [f"10.0.0.{i * 16}/28" for i in range(16)],
                 id="tighter-bound"),
    pytest.param(["2001:db8::1", "2001:db8::"], 24, ["2001:db8::/127"], id="ipv6-neighbours"),
]


@pytest.mark.parametrize(("addresses", "bound", "expected"), MERGES)
def test_merge_addresses(addresses: list[str], bound: int, expected: list[str]) -> None:
    merged = aggregate.merge_addresses(seen(*addresses), max_prefix_v4=bound)
    assert sorted(merged, key=lambda n: netaddr.IPNetwork(n)) == sorted(expected, key=lambda n: netaddr.IPNetwork(n))
    assert sum(e.count for e in merged.values()) == len(addresses)


@settings(deadline=None, max_examples=60)
@given(st.sets(st.integers(0, 2**12 - 1), min_size=1, max_size=80))
def test_merge_covers_exactly_what_was_seen(offsets: set[int]) -> None:
    addresses = {str(netaddr.IPAddress(0x0A000000 + o)) for o in offsets}
    merged = aggregate.merge_addresses(seen(*addresses), max_prefix_v4=20)
    covered = {str(ip) for prefix in merged for ip in netaddr.IPNetwork(prefix)}
    assert covered == addresses
    assert all(netaddr.IPNetwork(p).prefixlen >= 20 for p in merged)


FITS = [
    pytest.param(4, 24, 32, 4, id="fits-exactly"),
    pytest.param(2, 24, 24, 1, id="widened-to-fit"),  # two /25s are one /24
    pytest.param(1, 26, 26, 4, id="never-past-the-bound"),
]


@pytest.mark.parametrize(("budget", "bound", "widest", "count"), FITS)
def test_fit_addresses_widens_within_bounds(budget: int, bound: int, widest: int, count: int) -> None:
    addresses = ["10.0.0.1", "10.0.0.70", "10.0.0.130", "10.0.0.200"]  # one in each /26
    fitted, _ = aggregate.fit_addresses(seen(*addresses), budget, max_prefix_v4=bound)
    assert len(fitted) == count
    assert min(netaddr.IPNetwork(p).prefixlen for p in fitted) == widest


def test_fit_addresses_widens_only_as_far_as_needed() -> None:
    fitted, widened = aggregate.fit_addresses(seen("10.0.0.1", "10.0.0.3", "10.0.0.200"), 2)
    assert (sorted(fitted), widened) == (["10.0.0.0/30", "10.0.0.200/31"], 31)  # two /31s are one /30


WILDCARDS = [
    pytest.param(["a.example.com", "b.example.com"], 0, ["a.example.com", "b.example.com"], id="off"),
    pytest.param(["a.example.com", "b.example.com"], 2, ["*.example.com"], id="two-share"),
    pytest.param(["a.example.com", "b.example.com"], 3, ["a.example.com", "b.example.com"], id="too-few"),
    pytest.param(["a.b.example.com", "c.b.example.com", "d.example.com"], 2, ["*.b.example.com", "d.example.com"],
                 id="most-specific-parent-first"),
    pytest.param(["example.com", "a.example.com", "b.example.com"], 2, ["*.example.com", "example.com"],
                 id="apex-stays-exact"),
    pytest.param(["a.com", "b.com", "c.com"], 2, ["a.com", "b.com", "c.com"], id="never-a-top-level-wildcard"),
]


@pytest.mark.parametrize(("names", "wildcards", "expected"), WILDCARDS)
def test_collapse_names(names: list[str], wildcards: int, expected: list[str]) -> None:
    collapsed = aggregate.collapse_names(seen(*names), wildcards)
    assert sorted(collapsed) == sorted(expected)
    assert sum(e.count for e in collapsed.values()) == len(names)


# -- suggest ---------------------------------------------------------------------------------------------------


def test_suggest_per_kind_with_evidence() -> None:
    log = entries(record(inbound("198.51.100.2"), T0), record(inbound("198.51.100.3"), T0 + timedelta(hours=1)),
                  record(inbound("192.0.2.1", "AAAAAAAA-1111-2222-3333-444444444444")),
                  record(inbound("203.0.113.9")),  # allowed by a rule: not needed
                  record(outbound("new.test")), record(outbound("api.allowed.test")))
    result = suggest(log, None, Options())
    (profile,) = result.profiles.values()
    assert profile.key == ("p1", "prof")
    assert list(profile.elements[ADDRESSES]) == ["198.51.100.2/31"]
    evidence = profile.elements[ADDRESSES]["198.51.100.2/31"]
    assert (evidence.count, evidence.first[:13], evidence.last[:13]) == (2, "2026-01-02T03", "2026-01-02T04")
    assert list(profile.elements[SUBSCRIPTIONS]) == ["aaaaaaaa-1111-2222-3333-444444444444"]
    assert list(profile.elements[FQDNS]) == ["new.test"]


NEVER = [
    pytest.param(outbound("198.51.100.1"), "IP-literal", id="ip-literal-outbound"),
    pytest.param(outbound("meta.test", guard="169.254.169.254 is in blockedDestinationPrefixes"), "guards",
                 id="blocked-destination"),
    pytest.param(OutboundFacts(resource="learn", source_ip="127.0.0.1", destination_host="good.test",
                               destination_port=443, sni="evil.test"), "SNI", id="sni-mismatch"),
    pytest.param(outbound("x.test", resource=None), "not a resource", id="unattributed-caller"),
]


@pytest.mark.parametrize(("facts", "why"), NEVER)
def test_never_suggested(facts: OutboundFacts, why: str) -> None:
    result = suggest(entries(record(facts)), None, Options())
    assert not any(p.elements.get(FQDNS) for p in result.profiles.values())
    ((reason, evidence),) = result.not_suggested.items()
    assert why in reason and evidence.count == 1


def test_wire_refusals_are_never_suggested() -> None:
    refused = {**record(inbound("198.51.100.1")), "Category": "NspProxyRequestRefused", "ResultAction": "Denied"}
    result = suggest(entries(refused), None, Options())
    assert not result.profiles and "NspProxyRequestRefused" in next(iter(result.not_suggested))


LIMITS = [
    pytest.param(10, 0, 10, id="fits"),
    pytest.param(5, 0, 5, id="limit-5-widens-or-drops"),
    pytest.param(200, 198, 2, id="existing-elements-count"),
]


@pytest.mark.parametrize(("limit", "existing", "room"), LIMITS)
def test_limit_per_profile(limit: int, existing: int, room: int) -> None:
    names = [record(outbound(f"n{i}.test{i}")) for i in range(10)]
    result = suggest(entries(*names), None, Options(limit=limit))
    (profile,) = result.profiles.values()
    profile.existing_elements = existing
    from proxy.tools.suggest import _finish

    _finish(profile, Options(limit=limit))
    assert len(profile.elements[FQDNS]) == room
    assert len(profile.did_not_fit) == 10 - room


def test_limit_widens_addresses_before_dropping() -> None:
    spread = [record(inbound(f"198.51.100.{i * 4}")) for i in range(50)]  # 50 /32s, no neighbours
    result = suggest(entries(*spread), None, Options(limit=10))
    (profile,) = result.profiles.values()
    assert profile.widened_to is not None and not profile.did_not_fit
    assert len(profile.elements[ADDRESSES]) <= 10
    assert all(netaddr.IPNetwork(p).prefixlen >= 24 for p in profile.elements[ADDRESSES])


# -- reading -----------------------------------------------------------------------------------------------------


def test_reads_the_diagnostic_shape_and_skips_junk(tmp_path: Path) -> None:
    flat = record(inbound("198.51.100.1"))
    diagnostic = {"time": flat["TimeGenerated"], "category": flat["Category"], "operationName": "GET /",
                  "resourceId": "/x", "properties": {k[:1].lower() + k[1:]: v for k, v in flat.items()
                                                     if k not in ("Category", "OperationName")}}
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps(flat) + "\n" + json.dumps(diagnostic) + "\n{half a line\n[1]\n\n"
                   + json.dumps({"Category": "x"}) + "\n" + "x" * 3_000_000 + "\n")
    from proxy.tools.logread import ReadStats

    stats = ReadStats()
    read = list(read_entries([str(log)], stats))
    assert [(e.source_ip, e.category, e.association, e.would_deny) for e in read] == [
        ("198.51.100.1", "NspPublicInboundResourceRulesAllowed", "learn", True)] * 2
    assert stats.skipped == 4


def test_records_without_the_extension_are_read_from_azure_fields() -> None:
    old = record(inbound("198.51.100.1", resource="strict"))
    del old["Parameters"]
    entry = parse_line(json.dumps(old))
    assert entry and (entry.association, entry.allowed, entry.would_deny) == (None, False, True)
    result = replay([entry], parse_config_text(yaml.safe_dump(CONFIG), "<t>"))  # association from the resource ID
    assert (result.unchanged, result.count(DENIED_TO_ALLOWED)) == (1, 0)


# -- replay ------------------------------------------------------------------------------------------------------


def test_replay_counts_both_ways() -> None:
    log = entries(record(inbound("198.51.100.1")), record(inbound("203.0.113.1")),
                  record(inbound("192.0.2.1", resource="strict")))
    tighter = yaml.safe_load(yaml.safe_dump(CONFIG))
    rules = tighter["perimeters"][0]["profiles"][0]["accessRules"]
    rules[0]["addressPrefixes"] = ["192.0.2.0/24"]
    result = replay(log, parse_config_text(yaml.safe_dump(tighter), "<t>"))
    assert result.count(ALLOWED_TO_DENIED) == 2  # both learn records: .1 was would-deny, 203.0.113.1 now is
    assert result.count(DENIED_TO_ALLOWED) == 1  # strict's 192.0.2.1
    as_configured = replay(log, parse_config_text(yaml.safe_dump(tighter), "<t>"), as_configured=True)
    assert as_configured.count(ALLOWED_TO_DENIED) == 0  # learn is still in Transition: nothing blocked


# -- commands ----------------------------------------------------------------------------------------------------

EXITS = [
    pytest.param(["suggest", "/nonexistent.jsonl"], 2, "cannot read", id="suggest-missing-log"),
    pytest.param(["suggest", "LOG", "--max-prefix", "/40"], 2, "--max-prefix", id="suggest-bad-prefix"),
    pytest.param(["suggest", "LOG", "--wildcards", "1"], 2, "--wildcards", id="suggest-bad-wildcards"),
    pytest.param(["suggest", "LOG", "-f", "config"], 2, "needs --config", id="suggest-config-without-config"),
    pytest.param(["suggest", "LOG", "-c", "BADCONFIG"], 2, "bad.yaml: perimeters[0].name", id="suggest-bad-config"),
    pytest.param(["replay", "LOG", "-c", "/nonexistent.yaml"], 2, "cannot read", id="replay-missing-config"),
    pytest.param(["replay", "LOG", "-c", "CONFIG"], 3, "allowed->denied", id="replay-would-deny"),
    pytest.param(["report", "LOG"], 0, "would deny", id="report"),
    pytest.param(["report", "CONFIG"], 2, "no access-log record", id="report-not-a-log"),
    pytest.param(["suggest", "/dev/null"], 0, "perimeters: []", id="suggest-empty-log"),
    pytest.param(["suggest", "LOG", "-c", "CONFIG", "-f", "az"], 0, "access-rule create", id="suggest-az"),
]


@pytest.mark.parametrize(("argv", "code", "said"), EXITS)
def test_exit_codes(argv: list[str], code: int, said: str, tmp_path: Path) -> None:
    log, config, bad = tmp_path / "log.jsonl", tmp_path / "c.yaml", tmp_path / "bad.yaml"
    log.write_text("".join(json.dumps(r) + "\n" for r in records_for(12)))
    config.write_text(yaml.safe_dump(CONFIG))
    bad.write_text("perimeters: [{name: 1}]\n")
    paths = {"LOG": str(log), "CONFIG": str(config), "BADCONFIG": str(bad)}
    done = run_cli(*[paths.get(a, a) for a in argv])
    assert done.returncode == code, done.stderr
    assert said in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=8)
FIELDS = st.sampled_from(["Category", "ResultDirection", "SourceIpAddress", "Parameters", "SourceParameters",
                          "DestinationParameters", "DestinationPort", "Count", "TimeGenerated", "properties",
                          "ResultAction", "DestinationFqdn"])


@settings(deadline=None, max_examples=200)
@given(st.dictionaries(FIELDS, JSON_VALUES | st.sampled_from(["Inbound", "Outbound", "{", "{}"]), max_size=10))
def test_any_record_shape_is_read_or_refused_never_raises(data: dict[str, Any]) -> None:
    """Whatever a line holds, reading it gives an Entry or None, and every tool consumes the Entry."""
    entry = parse_line(json.dumps(data))
    if entry is not None:
        config = parse_config_text(yaml.safe_dump(CONFIG), "<t>")
        suggest([entry], config, Options())
        replay([entry], config)
        from proxy.tools import report

        report.as_html(report.summarise([entry]))


def test_a_record_in_the_diagnostic_shape_reads_like_the_flat_one() -> None:
    """``settings.accessLogFormat: diagnostic`` nests the caller and target in ``Source``/``Destination``: the
    tools read such a line exactly as the flat NSPAccessLogs line it was made from."""
    from proxy.records.logformats import diagnostic_record
    from proxy.telemetry import Field
    from proxy.tools.logread import entry_from

    flat: dict[str, object] = {field.value: "" for field in Field}
    flat.update({
        "TimeGenerated": "2026-11-26T04:27:44.113369Z", "TimeGeneratedEndTime": "2026-11-26T04:27:44.113369Z",
        "Count": 1, "Category": "NspPublicInboundResourceRulesAllowed", "OperationName": "GET /c/blob",
        "ResultAction": "Approved", "ResultDirection": "Inbound", "ResultDescription": "x", "RuleType": "PaaS",
        "Profile": "prof", "SourceIpAddress": "203.0.113.7", "SourcePort": "50123", "SourceProtocol": "HTTPS:TCP",
        "SourceParameters": json.dumps({"subscription": "11111111-2222-3333-4444-555555555555"}),
        "DestinationFqdn": "st1.blob.core.windows.net", "DestinationPort": "443", "DestinationProtocol": "HTTPS:TCP",
        "ServiceResourceId": "/subscriptions/x/storageAccounts/st1",
        "Parameters": json.dumps({"accessMode": "Learning", "allowed": True, "perimeter": "p1",
                                  "resourceAssociation": "st1", "wouldDeny": True}),
    })
    nested = entry_from(diagnostic_record(flat, "/subscriptions/x/networkSecurityPerimeters/p1"))
    assert nested == entry_from(flat)
    assert nested is not None and (nested.source_ip, nested.destination_port) == ("203.0.113.7", 443)

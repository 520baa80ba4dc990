"""The management API's pure core: ARM paths, the store's semantics, validation parity with the file loader,
and the export round trip (a configuration -> ARM -> the importer -> the same perimeters)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config.errors import ConfigError
from proxy.config.loader import load_config, parse_config_text
from proxy.control import candidate, export
from proxy.control.resources import API_VERSIONS, ArmError, OperationTarget, Target, check_api_version, parse_path
from proxy.control.store import MAX_PAGE, Store, page
from tests.test_links import nsp_id, three_perimeters

REPO = Path(__file__).resolve().parent.parent
SUB = "11111111-2222-3333-4444-555555555555"
NSP = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/networkSecurityPerimeters/nsp1"
STORAGE = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa"
SETTINGS = {"management": {"listen": "127.0.0.1:1", "bindings": {
    STORAGE: {"listen": "127.0.0.1:10100", "upstream": "http://127.0.0.1:10000"}}}}


def target(path: str) -> Target:
    parsed = parse_path(path)
    assert isinstance(parsed, Target)
    return parsed


def store_with(*changes: tuple[str, Any]) -> Store:
    store = Store()
    for path, body in changes:
        store, _resource, _created = store.put(target(path), body)
    return store


BASE = ((NSP, {"location": "westeurope"}), (f"{NSP}/profiles/p", {}))


# -- paths and api-versions -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "kind", "names", "collection"), [
    pytest.param(f"/subscriptions/{SUB}/providers/Microsoft.Network/networkSecurityPerimeters",
                 "networkSecurityPerimeters", (), True, id="by-subscription"),
    pytest.param(f"/subscriptions/{SUB}/resourceGroups/rg/providers/microsoft.network/NETWORKSECURITYPERIMETERS",
                 "networkSecurityPerimeters", (), True, id="by-group-any-case"),
    pytest.param(NSP, "networkSecurityPerimeters", ("nsp1",), False, id="perimeter"),
    pytest.param(f"{NSP}/profiles", "profiles", ("nsp1", None), True, id="profiles"),
    pytest.param(f"{NSP}/profiles/p/accessRules/r", "accessRules", ("nsp1", "p", "r"), False, id="rule"),
    pytest.param(f"{NSP}/resourceAssociations/a", "resourceAssociations", ("nsp1", "a"), False, id="association"),
    pytest.param(f"{NSP}/linkReferences", "linkReferences", ("nsp1", None), True, id="link-references"),
    pytest.param(f"{NSP}/loggingConfigurations/instance", "loggingConfigurations", ("nsp1", "instance"), False,
                 id="logging"),
])
def test_paths(path: str, kind: str, names: tuple[str | None, ...], collection: bool) -> None:
    parsed = target(path)
    assert (parsed.kind, parsed.names, parsed.is_collection) == (kind, names, collection)


@pytest.mark.parametrize("path", [
    pytest.param("/", id="root"),
    pytest.param(f"{NSP}/accessRules/r", id="rule-without-profile"),
    pytest.param(f"{NSP}/profiles/p/resourceAssociations/a", id="association-under-profile"),
    pytest.param(f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/x", id="other"),
    pytest.param(f"{NSP}/unknown/x", id="unknown-child"),
])
def test_unknown_paths(path: str) -> None:
    with pytest.raises(ArmError) as refused:
        parse_path(path)
    assert (refused.value.status, refused.value.code) == (404, "InvalidResourceType")


def test_subscription_must_be_a_guid() -> None:
    with pytest.raises(ArmError) as refused:
        parse_path(NSP.replace(SUB, "not-a-guid"))
    assert (refused.value.status, refused.value.code) == (400, "InvalidSubscriptionId")


def test_operation_status_path() -> None:
    parsed = parse_path(f"/subscriptions/{SUB}/providers/Microsoft.Network/locations/westeurope/"
                        "networkSecurityPerimeterOperationStatuses/op1")
    assert parsed == OperationTarget(SUB, "westeurope", "op1")


@pytest.mark.parametrize(("given", "code"), [
    pytest.param(None, "MissingApiVersionParameter", id="missing"),
    pytest.param("", "MissingApiVersionParameter", id="empty"),
    pytest.param("2019-01-01", "NoRegisteredProviderFound", id="unknown"),
    pytest.param("latest", "InvalidApiVersionParameter", id="malformed"),
    *[pytest.param(v, None, id=v) for v in API_VERSIONS],
])
def test_api_versions(given: str | None, code: str | None) -> None:
    if code is None:
        assert check_api_version(given, "t") == given
        return
    with pytest.raises(ArmError) as refused:
        check_api_version(given, "t")
    assert (refused.value.status, refused.value.code) == (400, code)


# -- store semantics ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "body", "status", "code"), [
    pytest.param(f"{NSP}/profiles/p/accessRules/r", [], 400, "InvalidRequestFormat", id="body-not-object"),
    pytest.param(f"{NSP}/profiles/p/accessRules/r", {"properties": []}, 400, "InvalidRequestFormat",
                 id="properties-not-object"),
    pytest.param(f"{NSP}/profiles/absent/accessRules/r", {}, 404, "ParentResourceNotFound", id="parent-absent"),
    pytest.param(f"{NSP}/linkReferences/l", {}, 405, "MethodNotAllowed", id="link-reference-read-only"),
    pytest.param(f"{NSP}/profiles/-bad", {}, 400, "InvalidResourceName", id="bad-name"),
    pytest.param(f"{NSP}/profiles/{'x' * 81}", {}, 400, "InvalidResourceName", id="long-name"),
    pytest.param(NSP.replace("nsp1", "nsp2"), {}, 400, "LocationRequired", id="no-location"),
    pytest.param(f"{NSP}/loggingConfigurations/other", {}, 400, "InvalidResourceName", id="logging-not-instance"),
])
def test_put_refusals(path: str, body: Any, status: int, code: str) -> None:
    store = store_with(*BASE)
    with pytest.raises(ArmError) as refused:
        store.put(target(path), body)
    assert (refused.value.status, refused.value.code) == (status, code)
    assert "error" in refused.value.body() and refused.value.body()["error"]["message"]


def test_put_creates_then_replaces_and_keeps_the_creating_case() -> None:
    store = store_with(*BASE)
    store, first, created = store.put(target(f"{NSP}/profiles/p/accessRules/Rule"), {"properties": {
        "addressPrefixes": ["10.0.0.0/8"], "provisioningState": "Failed", "networkSecurityPerimeters": [{"id": "x"}]}})
    assert created and first["name"] == "Rule"
    assert "provisioningState" not in first["properties"]  # read-only: dropped
    assert "networkSecurityPerimeters" not in first["properties"]  # read-only in Azure: a client cannot widen
    store, second, created = store.put(target(f"{NSP}/PROFILES/P/accessrules/RULE"), {"properties": {}})
    assert not created and second["id"] == first["id"]
    rendered = store.render(second, "2026-03-01", lambda _rid: True)
    assert rendered["properties"]["provisioningState"] == "Succeeded"
    assert rendered["properties"]["appliesTo"] == [{"resourceType": "*", "features": ["*"]}]
    assert "appliesTo" not in store.render(second, "2025-05-01", lambda _rid: True)["properties"]


def test_access_rules_version_counts_rule_changes_per_profile() -> None:
    store = store_with(*BASE, (f"{NSP}/profiles/q", {}))
    rule = target(f"{NSP}/profiles/p/accessRules/r")
    versions = []
    for _ in range(2):
        store, _, _ = store.put(rule, {"properties": {"addressPrefixes": ["10.0.0.0/8"]}})
        versions.append(store.versions[f"{NSP}/profiles/p".lower()])
    store, _, _ = store.put(target(f"{NSP}/profiles/p"), {})  # replacing the profile keeps its rules and version
    deleted = store.delete(rule)
    assert deleted is not None
    versions.append(deleted.versions[f"{NSP}/profiles/p".lower()])
    assert versions == [1, 2, 3]
    assert deleted.versions[f"{NSP}/profiles/q".lower()] == 0
    assert deleted.delete(rule) is None  # absent: 204


def test_delete_takes_children_and_never_touches_the_original() -> None:
    store = store_with(*BASE, (f"{NSP}/profiles/p/accessRules/r", {"properties": {"addressPrefixes": ["10.0.0.0/8"]}}))
    without = store.delete(target(NSP))
    assert without is not None and without.resources == {}
    assert len(store.resources) == 3
    assert store.delete(target(f"{NSP}/profiles/absent/accessRules/r")) is None


def test_association_reports_a_missing_binding() -> None:
    store = store_with(*BASE, (f"{NSP}/resourceAssociations/a", {"properties": {
        "privateLinkResource": {"id": STORAGE}, "profile": {"id": f"{NSP}/profiles/p"}}}))
    resource = store.get(target(f"{NSP}/resourceAssociations/a"))
    assert store.render(resource, "2026-03-01", lambda _rid: False)["properties"]["hasProvisioningIssues"] == "yes"
    rendered = store.render(resource, "2026-03-01", lambda _rid: True)["properties"]
    assert (rendered["hasProvisioningIssues"], rendered["accessMode"]) == ("no", "Learning")


@pytest.mark.parametrize(("count", "top", "skip", "names", "more"), [
    pytest.param(3, None, None, 3, False, id="one-page"),
    pytest.param(3, "2", None, 2, True, id="top"),
    pytest.param(3, "2", "2", 1, False, id="last-page"),
    pytest.param(MAX_PAGE + 5, None, None, MAX_PAGE, True, id="bounded"),
    pytest.param(3, "100000", None, 3, False, id="top-capped"),
])
def test_paging(count: int, top: str | None, skip: str | None, names: int, more: bool) -> None:
    items, next_link = page([{"n": i} for i in range(count)], top, skip, "https://h/p?api-version=v")
    assert len(items) == names and (next_link is not None) == more


@pytest.mark.parametrize(("top", "skip"), [("0", None), ("x", None), (None, "-1"), (None, "y")])
def test_paging_refusals(top: str | None, skip: str | None) -> None:
    with pytest.raises(ArmError) as refused:
        page([], top, skip, "")
    assert refused.value.status == 400


# -- the same validation as a configuration file ----------------------------------------------------------------

RULES = [
    pytest.param({"addressPrefixes": ["10.0.0.1/8"]}, id="host-bits"),
    pytest.param({"addressPrefixes": ["10.0.0.0/8"], "subscriptions": [{"id": f"/subscriptions/{SUB}"}]},
                 id="two-kinds"),
    pytest.param({"direction": "Outbound", "addressPrefixes": ["10.0.0.0/8"]}, id="wrong-direction"),
    pytest.param({"subscriptions": [{"id": "/subscriptions/not-a-guid"}]}, id="bad-subscription"),
    pytest.param({"direction": "Outbound", "fullyQualifiedDomainNames": ["xn--n3h.test"]}, id="bad-fqdn"),
    pytest.param({"addressPrefixes": [f"10.{i // 256}.{i % 256}.0/24" for i in range(201)]}, id="limit"),
    pytest.param({"adressPrefixes": ["10.0.0.0/8"]}, id="unknown-property"),
    # a body is data: an ARM expression in it is the string it is (Azure stores it), never evaluated
    pytest.param({"direction": "Outbound", "fullyQualifiedDomainNames": ["[concat('a', '.example.com')]"]},
                 id="expression-is-a-string"),
]


@pytest.mark.parametrize("rule", RULES)
def test_refused_as_the_file_loader_refuses(rule: dict[str, Any]) -> None:
    store = store_with(*BASE, (f"{NSP}/profiles/p/accessRules/r", {"properties": rule}))
    with pytest.raises(ArmError) as api:
        candidate.build(store, SETTINGS, "state.yaml")
    native = {"perimeters": [{"name": "nsp1", "id": NSP, "profiles": [{"name": "p", "accessRules": [
        {"name": "r", **rule}]}]}]}
    with pytest.raises(ConfigError) as file:
        parse_config_text(yaml.safe_dump(native), "f.yaml")
    assert api.value.status == 400 and str(api.value.target).startswith("nsp1/profiles/p")  # the rule, or its profile
    said = [detail["message"] for detail in api.value.body()["error"]["details"]]
    for problem in file.value.problems:
        assert any(problem.reason[:200] in message for message in said)


addresses = st.one_of(st.ip_addresses(v=4).map(lambda a: f"{a}/32"), st.ip_addresses(v=4).map(lambda a: f"{a}/8"),
                      st.text(max_size=12))
operations = st.lists(st.tuples(st.sampled_from(["put", "delete"]), st.sampled_from(["p", "q"]),
                                st.sampled_from(["r1", "r2"]), st.lists(addresses, min_size=1, max_size=3)),
                      max_size=6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_any_sequence_is_valid_or_refused_cleanly(ops: list[tuple[str, str, str, list[str]]]) -> None:
    """Whatever a client sends, the store keeps parents before children, versions only grow, and a candidate is
    either a Config or ARM's 400: never another exception."""
    store = store_with(*BASE, (f"{NSP}/profiles/q", {}))
    for op, profile, name, prefixes in ops:
        rule = target(f"{NSP}/profiles/{profile}/accessRules/{name}")
        before = dict(store.versions)
        changed = store.put(rule, {"properties": {"addressPrefixes": prefixes}})[0] if op == "put" else \
            store.delete(rule)
        if changed is None:
            continue
        try:
            candidate.build(changed, SETTINGS, "state.yaml")
        except ArmError as exc:
            assert exc.status == 400
            continue
        assert all(changed.versions[k] >= v for k, v in before.items())
        store = changed
    for key, resource in store.resources.items():
        assert resource["type"].count("/") == 1 or key.rsplit("/", 2)[0] in store.resources


# -- export round trip ----------------------------------------------------------------------------------------

CONFIGS = [pytest.param(REPO / "proxy/data/demo.yaml", id="demo"),
           *[pytest.param(p, id=p.stem) for p in sorted((REPO / "config/examples").glob("*.yaml"))],
           pytest.param(REPO / "config/examples/arm/bindings.yaml", id="arm-bindings")]


@pytest.mark.parametrize("path", CONFIGS)
def test_export_round_trip(path: Path, tmp_path: Path) -> None:
    round_trip(path, tmp_path)


def test_export_round_trip_of_every_kind(tmp_path: Path) -> None:
    """Links (Approved and Pending), link references, a logging configuration, rules of every kind (an
    unsupported kind keeps its values), Audit mode: the same perimeters after export and import."""
    document = three_perimeters("Audit")
    a, b = document["perimeters"][0], document["perimeters"][1]
    a["profiles"][0]["accessRules"] = [
        {"name": "subs", "subscriptions": [{"id": f"/subscriptions/{SUB}"}]},
        {"name": "tags", "direction": "Inbound", "serviceTags": ["AzureCloud"]},
        {"name": "out", "direction": "Outbound", "fullyQualifiedDomainNames": ["*.example.com"]}]
    a["loggingConfiguration"] = {"name": "instance", "enabledLogCategories": ["NspPublicInboundPerimeterRulesDenied"]}
    b["linkReferences"] = [{"name": "ref-a", "remotePerimeterResourceId": nsp_id("nsp-a"),
                            "localInboundProfiles": ["*"], "status": "Approved"}]
    (tmp_path / "every.yaml").write_text(yaml.safe_dump(document))
    round_trip(tmp_path / "every.yaml", tmp_path)


def round_trip(path: Path, tmp_path: Path) -> None:
    config = load_config(path)
    resources = export.rest_resources(config)
    template = export.template(resources)
    (tmp_path / "export.json").write_text(json.dumps(template))
    run = {"arm": "export.json", "armScope": template["metadata"], "bindings": export.bindings(config)}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    assert load_config(tmp_path / "run.yaml").perimeters == config.perimeters
    settings_ = {"management": {"listen": "127.0.0.1:1", "bindings": export.bindings(config)}}
    managed = candidate.build(Store.from_resources(resources), settings_, str(tmp_path / "state.yaml"))
    assert managed.config.perimeters == config.perimeters
    assert parse_config_text(managed.text, "again.yaml").perimeters == config.perimeters


@pytest.mark.parametrize(("management", "problem"), [
    pytest.param({"listen": "0.0.0.0:8443"}, "settings.management.token", id="open-without-token"),
    pytest.param({"listen": "0.0.0.0:8443", "token": "t"}, None, id="open-with-token"),
    pytest.param({"listen": "localhost:8443"}, None, id="localhost"),
    pytest.param({"listen": "[::1]:8443"}, None, id="ipv6-loopback"),
    pytest.param({"listen": "127.0.0.1:99999"}, "settings.management.listen", id="bad-port"),
    pytest.param({"listen": "127.0.0.1:8443", "bindings": {STORAGE: {"listen": "x"}}},
                 f"settings.management.bindings.{STORAGE}.listen", id="bad-binding"),
    pytest.param({"listen": "127.0.0.1:8443", "bindings": {STORAGE: {"listne": "x"}}},
                 "settings.management.bindings", id="binding-typo"),
    pytest.param({"listen": "127.0.0.1:8443", "extra": 1}, "settings.management", id="unknown-key"),
    pytest.param({"token": "t"}, "settings.management", id="no-listen"),
])
def test_management_settings(management: dict[str, Any], problem: str | None) -> None:
    """settings.management is checked like every setting; a managed configuration may have no perimeter."""
    text = yaml.safe_dump({"settings": {"management": management}, "perimeters": []})
    if problem is None:
        assert parse_config_text(text, "m.yaml").settings.management_listen_port == 8443
        return
    with pytest.raises(ConfigError) as refused:
        parse_config_text(text, "m.yaml")
    assert any(p.path.startswith(problem) for p in refused.value.problems), refused.value

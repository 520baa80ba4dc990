"""Real Azure inputs nobody on the project wrote, through ``validate``, ``explain`` and ``run``.

Files under tests/data/azure/ (sources in tests/data/azure/SOURCE.md): the ARM quickstart
"network-security-perimeter-create" (hand-written and Bicep-compiled), Microsoft's verified Bicep module (AVM)
compiled to languageVersion 2.0 JSON with nested deployments, and REST API example bodies of several
api-versions (their spec placeholders, such as ``{profileName}``, are replaced where a test runs them).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.config.arm_functions import arm_guid, unique_string
from proxy.config.errors import ConfigError
from proxy.config.loader import load_config, parse_config_text
from proxy.model import AccessMode, Direction
from tests.support import REPO, exactly, free_port, run_cli

AZURE = REPO / "tests" / "data" / "azure"
QUICKSTART = AZURE / "quickstart"
AVM = AZURE / "avm" / "main.json"
REST = AZURE / "rest-examples"
SUB = "11111111-2222-3333-4444-555555555555"
SCOPE = {"subscriptionId": SUB, "resourceGroup": "rg-nsp", "location": "westeurope"}
STORAGE = f"/subscriptions/{SUB}/resourceGroups/rg-nsp/providers/Microsoft.Storage/storageAccounts/stavm"


def write(tmp_path: Path, document: dict[str, Any], name: str = "nsp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


# -- the quickstart --------------------------------------------------------------------------------------------


def test_bicep_compiled_quickstart_deploys_with_no_parameter_values(tmp_path: Path) -> None:
    """keyVaultName defaults to format('kv-{0}', uniqueString(resourceGroup().id)): the name Azure would give."""
    config = load_config(write(tmp_path, {"arm": str(QUICKSTART / "azuredeploy.bicep-compiled.json"),
                                          "armScope": SCOPE, "bindings": {}}))
    [perimeter] = config.perimeters
    [assoc] = perimeter.associations
    vault = f"kv-{unique_string(f'/subscriptions/{SUB}/resourceGroups/rg-nsp')}"
    assert assoc.resource_id.endswith(f"/providers/Microsoft.KeyVault/vaults/{vault}")
    assert (assoc.name, assoc.mode, perimeter.location) == ("networkSecurityPerimeterAssociation",
                                                            AccessMode.ENFORCED, "westeurope")
    rules = {r.name: r for r in perimeter.profiles[0].rules}
    assert rules["inboundRule"].direction is Direction.INBOUND
    assert rules["outboundRule"].fqdns == ("contoso.com",)


@pytest.mark.parametrize(("template", "args", "code", "needle"), [
    pytest.param("azuredeploy.bicep-compiled.json", ["--source-ip", "100.10.3.4"], 0, "inboundRule",
                 id="bicep: inbound allowed by rule"),
    pytest.param("azuredeploy.bicep-compiled.json", ["--source-ip", "203.0.113.9"], 3,
                 "NspPublicInboundPerimeterRulesDenied", id="bicep: inbound denied"),
    pytest.param("azuredeploy.bicep-compiled.json", ["--destination", "contoso.com"], 0, "outboundRule",
                 id="bicep: outbound allowed"),
])
def test_quickstart_explains(template: str, args: list[str], code: int, needle: str) -> None:
    assert run_cli("validate", str(QUICKSTART / template)).returncode == 0
    result = run_cli("explain", "-c", str(QUICKSTART / template), *args)
    assert result.returncode == code, result.stderr
    assert needle in result.stdout


def test_quickstart_parameters_file_with_default_values_names_the_problem(tmp_path: Path) -> None:
    """The quickstart repository's parameters file holds defaultValue entries, not value: say exactly that."""
    path = write(tmp_path, {"arm": str(QUICKSTART / "azuredeploy.json"), "bindings": {},
                            "armParameters": str(QUICKSTART / "azuredeploy.parameters.json")})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert "azuredeploy.parameters.json" in text and "has 'defaultValue' but no 'value'" in text
    assert "Key Vault" not in text


@pytest.mark.parametrize(("entry", "needle"), [
    pytest.param({"defaultValue": "x"}, "has 'defaultValue' but no 'value'", id="defaultValue"),
    pytest.param({"reference": {"keyVault": {"id": "/x"}, "secretName": "s"}}, "Key Vault reference",
                 id="Key Vault reference"),
    pytest.param({"valeu": "x"}, "missing 'value' (keys given: valeu)", id="misspelt value"),
    pytest.param("kv1", "expected {\"value\": ...}, not str", id="bare string"),
])
def test_parameters_file_entry_errors(tmp_path: Path, entry: Any, needle: str) -> None:
    (tmp_path / "params.json").write_text(json.dumps({"parameters": {"keyVaultName": entry}}), encoding="utf-8")
    path = write(tmp_path, {"arm": str(QUICKSTART / "azuredeploy.json"), "bindings": {},
                            "armParameters": "params.json"})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "parameters.keyVaultName" in str(caught.value) and needle in str(caught.value)


def test_hand_written_quickstart_with_its_parameter_given(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"arm": str(QUICKSTART / "azuredeploy.json"), "bindings": {},
                                          "armParameters": {"keyVaultName": "kv-test"}}))
    assert config.associations()[0].resource_id.endswith("/vaults/kv-test")


# -- Microsoft's verified module (languageVersion 2.0, nested deployments, copy loops) --------------------------


AVM_PARAMETERS = {
    "name": "nsp-avm",
    "profiles": [
        {"name": "profile-storage", "accessRules": [
            {"name": "loopback", "direction": "Inbound", "addressPrefixes": ["127.0.0.0/8"]},
            {"name": "ci", "direction": "Inbound", "subscriptions": [{"id": f"/subscriptions/{SUB}"}]},
            {"name": "out", "direction": "Outbound", "fullyQualifiedDomainNames": ["contoso.com"]}]},
        {"name": "profile-empty"},
    ],
    "resourceAssociations": [{"privateLinkResource": STORAGE, "profile": "profile-storage", "accessMode": "Enforced"}],
    "diagnosticSettings": [{"workspaceResourceId": "/subscriptions/x/resourceGroups/y/providers/"
                                                   "Microsoft.OperationalInsights/workspaces/ws"}],
    "lock": {"kind": "CanNotDelete"},
}


def avm_document(bindings: dict[str, Any] | None = None, **parameters: Any) -> dict[str, Any]:
    return {"arm": str(AVM), "armScope": SCOPE, "armParameters": {**AVM_PARAMETERS, **parameters},
            "bindings": bindings or {}, "settings": {"metrics": None}}


def test_avm_module_validates(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, avm_document()))
    [perimeter] = config.perimeters
    assert perimeter.resource_id.endswith("/resourceGroups/rg-nsp/providers/Microsoft.Network/"
                                          "networkSecurityPerimeters/nsp-avm")
    assert [p.name for p in perimeter.profiles] == ["profile-storage", "profile-empty"]
    assert [r.name for r in perimeter.profiles[0].rules] == ["loopback", "ci", "out"]
    [assoc] = perimeter.associations
    # the module names an association guid(privateLinkResource, perimeter name, profile)-nsp-ra
    assert assoc.name == f"{arm_guid(STORAGE, 'nsp-avm', 'profile-storage')}-nsp-ra"
    assert (assoc.profile, assoc.mode) == ("profile-storage", AccessMode.ENFORCED)
    assert [w for w in config.warnings if "diagnostic settings" in w and "nsp-avm" in w]


def test_avm_module_with_no_profiles_or_associations(tmp_path: Path) -> None:
    document = avm_document()
    document["armParameters"] = {"name": "nsp-bare"}
    [perimeter] = load_config(write(tmp_path, document)).perimeters
    assert (perimeter.name, perimeter.profiles, perimeter.associations) == ("nsp-bare", (), ())


def test_avm_module_without_its_required_name_says_so(tmp_path: Path) -> None:
    document = avm_document()
    document["armParameters"] = {}
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, document))
    assert "parameter 'name' has no value" in str(caught.value)


def test_avm_module_explains(tmp_path: Path) -> None:
    path = write(tmp_path, avm_document())
    assert run_cli("validate", str(path)).returncode == 0
    allowed = run_cli("explain", "-c", str(path), "-r", STORAGE, "--subscription", SUB, "--source-ip", "203.0.113.9")
    assert allowed.returncode == 0 and "NspPublicInboundPerimeterRulesAllowed" in allowed.stdout
    denied = run_cli("explain", "-c", str(path), "-r", STORAGE, "--source-ip", "203.0.113.9")
    assert denied.returncode == 3 and "NspPublicInboundPerimeterRulesDenied" in denied.stdout


@pytest.mark.e2e
def test_avm_module_runs_with_bindings(nsp_proxy, backend, tmp_path: Path) -> None:
    listen = free_port()
    document = avm_document({STORAGE: {"listen": f"127.0.0.1:{listen}", "upstream": f"http://127.0.0.1:{backend.port}"}})
    (tmp_path / "params.json").write_text(json.dumps({"parameters": {k: {"value": v} for k, v in
                                                                     document["armParameters"].items()}}))
    document["armParameters"] = str(tmp_path / "params.json")
    proxy = nsp_proxy(document)
    assert httpx.get(f"http://127.0.0.1:{listen}/c/b", timeout=10).status_code == 200
    [record] = exactly(proxy, 1, settle=0.5)
    assert (record["Category"], record["Profile"]) == ("NspPublicInboundPerimeterRulesAllowed", "profile-storage")
    assert "loopback" in record["MatchedRule"]


@pytest.mark.e2e
def test_bicep_quickstart_runs_with_bindings(nsp_proxy, backend) -> None:
    """The quickstart's Enforced association allows only 100.10.0.0/16: a loopback caller is denied."""
    listen = free_port()
    proxy = nsp_proxy({"arm": str(QUICKSTART / "azuredeploy.bicep-compiled.json"), "settings": {"metrics": None},
                       "bindings": {"networkSecurityPerimeterAssociation": {
                           "listen": f"127.0.0.1:{listen}", "upstream": f"http://127.0.0.1:{backend.port}"}}})
    assert httpx.get(f"http://127.0.0.1:{listen}/secrets/x", timeout=10).status_code == 403
    [record] = exactly(proxy, 1, settle=0.5)
    assert record["Category"] == "NspPublicInboundPerimeterRulesDenied"
    assert backend.hits == []


# -- REST API example bodies -------------------------------------------------------------------------------------


def body(relative: str) -> Any:
    example = json.loads((REST / relative).read_text(encoding="utf-8"))
    responses = example["responses"]
    return copy.deepcopy((responses.get("200") or responses["201"])["body"])


def _placeholders(text: str) -> str:
    return (text.replace("{profileName}", "profile1").replace("{paasSubscriptionId}", SUB)
            .replace("{paasResourceGroupName}", "rg1").replace("{providerName}", "Microsoft.Storage")
            .replace("{resourceType}", "storageAccounts"))


@pytest.mark.parametrize("relative", [
    pytest.param("2021-02-01-preview/NspAccessRulePut.json", id="2021-02-01-preview rule"),
    pytest.param("2023-07-01-preview/NetworkSecurityPerimeterGet.json", id="2023-07-01-preview perimeter"),
    pytest.param("2023-07-01-preview/NspAccessRulePut.json", id="2023-07-01-preview rule"),
    pytest.param("2024-06-01-preview/NspAccessRuleGet.json", id="2024-06-01-preview rule"),
    pytest.param("2024-06-01-preview/NspLoggingConfigurationPut.json", id="2024-06-01-preview logging"),
    pytest.param("2025-05-01/NetworkSecurityPerimeterPut.json", id="2025-05-01 perimeter"),
    pytest.param("2025-05-01/NspAccessRuleList.json", id="2025-05-01 rule list"),
    pytest.param("2025-05-01/NspProfileList.json", id="2025-05-01 profile list"),
    pytest.param("2025-05-01/NspLinkPut.json", id="2025-05-01 link"),
])
def test_rest_example_bodies_load_as_they_are(relative: str) -> None:
    config = parse_config_text(json.dumps(body(relative)), relative)
    assert config.perimeters


def test_rest_association_list_loads_with_its_read_only_properties() -> None:
    text = _placeholders(json.dumps(body("2025-05-01/NspAssociationList.json")))
    document = json.loads(text)
    for i, item in enumerate(document["value"]):  # the example associates one placeholder resource three times
        item["properties"]["privateLinkResource"]["id"] += str(i)
    config = parse_config_text(json.dumps(document), "NspAssociationList.json")
    assert [a.mode for a in config.associations()][:2] == [AccessMode.ENFORCED, AccessMode.AUDIT]
    assert [w for w in config.warnings if "profile 'profile1' is not in the file" in w]


def test_rest_logging_configuration_is_read() -> None:
    config = parse_config_text(json.dumps(body("2024-06-01-preview/NspLoggingConfigurationPut.json")), "log.json")
    assert config.perimeters[0].log_categories == {"NspPublicInboundPerimeterRulesDenied",
                                                   "NspPublicOutboundPerimeterRulesDenied"}


def test_rest_link_between_two_perimeters_generates_rules() -> None:
    link = body("2025-05-01/NspLinkPut.json")
    perimeter = {"type": "Microsoft.Network/networkSecurityPerimeters", "location": "westus2",
                 "properties": {"perimeterGuid": "guid"}}
    resources = [{**perimeter, "name": name, "id": link["id"].split("/links/")[0].replace("nsp1", name)}
                 for name in ("nsp1", "nsp2")]
    profiles = [{"type": "Microsoft.Network/networkSecurityPerimeters/profiles", "name": f"{name}/default",
                 "properties": {}} for name in ("nsp1", "nsp2")]
    config = parse_config_text(json.dumps({"value": [*resources, *profiles, link]}), "links.json")
    for perimeter in config.perimeters:
        generated = [(r.name, r.direction) for r in perimeter.profiles[0].rules]
        assert generated == [("link1", Direction.INBOUND), ("link1", Direction.OUTBOUND)]


AZURE_READ_ONLY = [  # property, value, where Azure sends it (FACTS.md)
    ("hasProvisioningIssues", "no", "association"), ("appliesTo", [{"resourceType": "*", "features": ["*"]}], "rule"),
    ("provisioningState", "Succeeded", "rule"), ("accessRulesVersion", "3", "profile"),
    ("diagnosticSettingsVersion", "0", "profile"), ("displayName", "Rule one", "rule"),
    ("description", "2021-02-01-preview", "rule"), ("displayName", "Perimeter", "perimeter"),
    ("description", "x", "association"), ("perimeterGuid", "guid", "perimeter"),
]


def _rest_export() -> list[dict[str, Any]]:
    base = "/subscriptions/subId/resourceGroups/rg1/providers/Microsoft.Network/networkSecurityPerimeters/nsp1"
    return [
        {"type": "Microsoft.Network/networkSecurityPerimeters", "name": "nsp1", "id": base, "location": "westus",
         "properties": {}},
        {"type": "Microsoft.Network/networkSecurityPerimeters/profiles", "name": "profile1",
         "id": f"{base}/profiles/profile1", "properties": {}},
        {"type": "Microsoft.Network/networkSecurityPerimeters/profiles/accessRules", "name": "rule1",
         "id": f"{base}/profiles/profile1/accessRules/rule1",
         "properties": {"direction": "Inbound", "addressPrefixes": ["10.0.0.0/8"]}},
        {"type": "Microsoft.Network/networkSecurityPerimeters/resourceAssociations", "name": "assoc1",
         "id": f"{base}/resourceAssociations/assoc1",
         "properties": {"privateLinkResource": {"id": STORAGE}, "profile": {"id": f"{base}/profiles/profile1"}}},
    ]


@pytest.mark.parametrize(("key", "value", "kind"), [
    pytest.param(k, v, kind, id=f"{k} on {kind}") for k, v, kind in AZURE_READ_ONLY])
@pytest.mark.parametrize("outside", [False, True], ids=["in properties", "beside properties"])
def test_read_only_properties_azure_sends_are_accepted(key: str, value: Any, kind: str, outside: bool) -> None:
    resources = _rest_export()
    target = resources[["perimeter", "profile", "rule", "association"].index(kind)]
    (target if outside else target["properties"])[key] = value
    for extra in ("systemData", "etag", "tags"):
        target[extra] = {"createdBy": "user"} if extra == "systemData" else ("W/\"1\"" if extra == "etag" else {})
    config = parse_config_text(json.dumps({"value": resources}), "export.json")
    assert config.perimeters[0].profiles[0].rules[0].name == "rule1"


@pytest.mark.parametrize("kind", ["perimeter", "profile", "rule", "association"])
def test_unknown_property_that_is_not_azures_is_refused_with_its_path(kind: str) -> None:
    resources = _rest_export()
    index = ["perimeter", "profile", "rule", "association"].index(kind)
    resources[index]["properties"]["aplliesTo"] = []
    with pytest.raises(ConfigError) as caught:
        parse_config_text(json.dumps({"value": resources}), "export.json")
    assert f"value[{index}]" in str(caught.value) and "aplliesTo" in str(caught.value)


@pytest.mark.parametrize(("module", "parameters", "rule"), [
    pytest.param("profile_main.json", {"networkPerimeterName": "nsp1", "name": "prof", "accessRules": [
        {"name": "out", "direction": "Outbound", "fullyQualifiedDomainNames": ["contoso.com"]}]}, "out",
        id="profile module"),
    pytest.param("profile_access-rule_main.json", {
        "networkPerimeterName": "nsp1", "networkPerimeterProfileName": "prof", "name": "r1", "direction": "Inbound",
        "addressPrefixes": ["10.0.0.0/8"]}, "r1", id="access-rule module"),
])
def test_avm_child_modules_deploy_into_an_existing_perimeter(tmp_path: Path, module: str, parameters: dict[str, Any],
                                                             rule: str) -> None:
    config = load_config(write(tmp_path, {"arm": str(AZURE / "avm" / module), "armParameters": parameters,
                                          "bindings": {}}))
    [perimeter] = config.perimeters
    assert (perimeter.name, [r.name for r in perimeter.profiles[0].rules]) == ("nsp1", [rule])
    assert [w for w in config.warnings if "perimeter 'nsp1' is not in the file" in w]

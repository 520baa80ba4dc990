"""ARM functions NSP templates use, and templates walked as a deployment walks them: languageVersion 2.0,
copy loops, conditions, nested deployments (inner and outer scope), bounds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.arm_expressions import MAX_COPY, Deployment, ExpressionError, Scope, evaluate
from proxy.config.arm_functions import arm_guid, unique_string
from proxy.config.errors import ConfigError
from proxy.config.loader import parse_config_text

SCOPE = Scope(parameters={"items": {"type": "array", "defaultValue": ["a", "b"]},
                          "nothing": {"type": "array", "nullable": True}},
              variables={"copy": [{"name": "loop", "count": 3, "input": "[concat('v', string(copyIndex('loop')))]"}]},
              deployment=Deployment(subscription_id="11111111-2222-3333-4444-555555555555", resource_group="rg1",
                                    location="westeurope"))


@pytest.mark.parametrize(("args", "expected"), [
    # values Bicep/ARM print for these inputs (published alongside public re-implementations of the algorithm)
    pytest.param(["test"], "rbgf3xv4ufgzg", id="test"),
    pytest.param(["hello", "world"], "a7wkljktk6wne", id="hello-world"),
    pytest.param(["abc"], "cgtzqvhu4i23s", id="abc"),
    pytest.param(["/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/my-rg"], "bmg7c6xu4tw46",
                 id="resource group id"),
    pytest.param(["foo", "bar", "baz"], "xzi4ioaxtmth4", id="three arguments"),
])
def test_unique_string_is_arms(args: list[str], expected: str) -> None:
    assert unique_string(*args) == expected
    assert evaluate(f"[uniqueString({', '.join(repr(a) for a in args)})]", SCOPE) == expected


@given(st.lists(st.text(max_size=40), min_size=1, max_size=4))
@settings(max_examples=200, deadline=None)
def test_unique_string_and_guid_are_deterministic_and_well_formed(args: list[str]) -> None:
    value = unique_string(*args)
    assert value == unique_string(*args) and len(value) == 13 and set(value) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert arm_guid(*args) == arm_guid(*args) and arm_guid(*args)[14] == "5"  # version-5 UUID


def test_guid_is_uuid5_in_arms_namespace() -> None:
    import uuid
    assert arm_guid("a", "b") == str(uuid.uuid5(uuid.UUID("11fb06fb-712d-4ddd-98c7-e71bbd588830"), "a-b"))


@pytest.mark.parametrize(("text", "value"), [
    ("[toLower('AbC')]", "abc"), ("[toUpper('abc')]", "ABC"),
    ("[empty('')]", True), ("[empty(createArray())]", True), ("[empty(parameters('nothing'))]", True),
    ("[empty(createObject('a', 1))]", False),
    ("[if(true(), 'yes', 'no')]", "yes"), ("[if(false(), 'yes', 'no')]", "no"),
    ("[if(true(), 'safe', parameters('nothing')[5].x)]", "safe"),  # the branch not taken is not evaluated
    ("[union(createObject('a', 1), createObject('b', 2))]", {"a": 1, "b": 2}),
    ("[union(createArray('a', 'b'), createArray('b', 'c'))]", ["a", "b", "c"]),
    ("[coalesce(parameters('nothing'), createArray('x'))]", ["x"]),
    ("[length(parameters('items'))]", 2), ("[length('abcd')]", 4),
    ("[contains(parameters('items'), 'b')]", True), ("[contains('Hello', 'ell')]", True),
    ("[contains(createObject('Key', 1), 'key')]", True),
    ("[last(parameters('items'))]", "b"), ("[first(parameters('items'))]", "a"),
    ("[split('a/b/c', '/')]", ["a", "b", "c"]), ("[last(split('/x/y/profile1', '/'))]", "profile1"),
    ("[tenant().tenantId]", "00000000-0000-0000-0000-000000000000"),
    ("[deployment().name]", "nsp-proxy"),
    ("[variables('loop')]", ["v0", "v1", "v2"]),
    ("[tryGet(createObject('a', createObject('b', 1)), 'a', 'b')]", 1),
    ("[tryGet(createObject('a', 1), 'missing')]", None),
    ("[substring(uniqueString('test'), 0, 4)]", "rbgf"),
    ("[replace('-..--..-', '.', '-')]", "--------"),
    ("[equals(1, 1)]", True), ("[not(equals('a', 'A'))]", True),
    ("[and(true(), not(false()))]", True), ("[or(false(), false())]", False),
    ("[format('{0}-nsp-ra', guid('x'))]", f"{arm_guid('x')}-nsp-ra"),
    ("[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'r1')]",
     "/subscriptions/11111111-2222-3333-4444-555555555555/providers/Microsoft.Authorization/roleDefinitions/r1"),
    ("[string(true())]", "True"), ("[join(createArray('a', 'b'), ',')]", "a,b"),
])
def test_functions(text: str, value: Any) -> None:
    assert evaluate(text, SCOPE) == value


@pytest.mark.parametrize(("text", "needle"), [
    ("[reference('x').name]", "reference() is not supported"),
    ("[copyIndex()]", "outside a copy loop"),
    ("[if('yes', 1, 2)]", "boolean"),
    ("[substring('abc', 2, 5)]", "out of range"),
    ("[range(0, 100000)]", "range() count"),
    ("[uniqueString(createArray())]", "takes strings"),
    ("[toLower()]", "takes 1 argument"),
])
def test_function_errors_are_reported(text: str, needle: str) -> None:
    with pytest.raises(ExpressionError, match=None) as caught:
        evaluate(text, SCOPE)
    assert needle in str(caught.value)


# -- templates -----------------------------------------------------------------------------------------------


def rule_module(scope: str) -> dict[str, Any]:
    """A nested deployment creating one access rule, Bicep-module style."""
    inner = {"parameters": {"nsp": {"type": "string"}, "prefix": {"type": "string"}},
             "resources": {"rule": {"type": "Microsoft.Network/networkSecurityPerimeters/profiles/accessRules",
                                    "name": "[format('{0}/prof/r-{1}', parameters('nsp'), "
                                            "uniqueString(parameters('prefix')))]",
                                    "properties": {"direction": "Inbound",
                                                   "addressPrefixes": ["[parameters('prefix')]"]}}},
             "languageVersion": "2.0"}
    if scope == "outer":  # outer: the inner template sees the parent's parameters
        inner = {"resources": [{"type": "Microsoft.Network/networkSecurityPerimeters/profiles/accessRules",
                                "name": "[format('{0}/prof/outer-{1}', parameters('nspName'), copyIndex())]",
                                "properties": {"direction": "Inbound",
                                               "addressPrefixes": ["[parameters('prefixes')[copyIndex()]]"]}}]}
    props: dict[str, Any] = {"mode": "Incremental", "template": inner}
    if scope == "inner":
        props["expressionEvaluationOptions"] = {"scope": "inner"}
        props["parameters"] = {"nsp": {"value": "[parameters('nspName')]"},
                               "prefix": {"value": "[parameters('prefixes')[copyIndex()]]"}}
    return {"type": "Microsoft.Resources/deployments", "apiVersion": "2025-04-01",
            "name": "[format('rule-{0}', copyIndex())]",
            "copy": {"name": "rules", "count": "[length(parameters('prefixes'))]"}, "properties": props}


STORAGE_ID = "[resourceId('Microsoft.Storage/storageAccounts', 'st1')]"


def template(scope: str, **extra: Any) -> dict[str, Any]:
    return {"languageVersion": "2.0", "contentVersion": "1.0.0.0",
            "parameters": {"nspName": {"type": "string", "defaultValue": "nsp-t"},
                           "prefixes": {"type": "array", "defaultValue": ["10.0.0.0/8", "192.0.2.0/24"]},
                           "withAssociation": {"type": "bool", "defaultValue": False}},
            "resources": {
                "nsp": {"type": "Microsoft.Network/networkSecurityPerimeters", "name": "[parameters('nspName')]",
                        "location": "westeurope", "tags": "[parameters('missingTags')]"},
                "existingNsp": {"existing": True, "type": "Microsoft.Network/networkSecurityPerimeters",
                                "name": "[parameters('undefinedToo')]"},
                "profile": {"type": "Microsoft.Network/networkSecurityPerimeters/profiles",
                            "name": "[format('{0}/prof', parameters('nspName'))]"},
                "assoc": {"condition": "[parameters('withAssociation')]",
                          "type": "Microsoft.Network/networkSecurityPerimeters/resourceAssociations",
                          "name": "[format('{0}/a1', parameters('nspName'))]",
                          "properties": {"privateLinkResource": {"id": STORAGE_ID}, "profile": {"id": "prof"}}},
                "module": rule_module(scope), **extra}}


@pytest.mark.parametrize("scope", ["inner", "outer"])
def test_language_version_2_with_copy_loops_and_nested_deployments(scope: str) -> None:
    config = parse_config_text(json.dumps(template(scope)), "t.json")
    [perimeter] = config.perimeters
    rules = perimeter.profiles[0].rules
    assert [str(r.address_prefixes[0]) for r in rules] == ["10.0.0.0/8", "192.0.2.0/24"]
    expected = ([f"r-{unique_string('10.0.0.0/8')}", f"r-{unique_string('192.0.2.0/24')}"] if scope == "inner"
                else ["outer-0", "outer-1"])
    assert [r.name for r in rules] == expected
    assert perimeter.associations == ()  # condition false: not deployed


def test_condition_true_deploys_and_parameters_reach_the_module() -> None:
    document = template("inner")
    document["parameters"]["withAssociation"]["defaultValue"] = True
    document["parameters"]["prefixes"]["defaultValue"] = ["198.51.100.0/24"]
    config = parse_config_text(json.dumps(document), "t.json")
    assert [a.name for a in config.associations()] == ["a1"]
    assert len(config.perimeters[0].profiles[0].rules) == 1


@pytest.mark.parametrize(("change", "needle"), [
    pytest.param(lambda d: d["resources"]["module"]["copy"].update(count=MAX_COPY + 1), "from 0 to 800",
                 id="copy count over ARM's 800"),
    pytest.param(lambda d: d["resources"]["assoc"].update(condition="yes"), "expected a boolean",
                 id="condition not a boolean"),
    pytest.param(lambda d: d["resources"]["module"]["properties"]["parameters"].update(prefix={"reference": {}}),
                 "expected {\"value\": ...}", id="module parameter without value"),
])
def test_template_problems_are_reported_with_their_place(change, needle: str) -> None:
    document = template("inner")
    change(document)
    with pytest.raises(ConfigError) as caught:
        parse_config_text(json.dumps(document), "t.json")
    assert needle in str(caught.value) and "resources." in str(caught.value)


def test_deployments_nested_too_deep_are_refused() -> None:
    inner: dict[str, Any] = {"resources": [{"type": "Microsoft.Network/networkSecurityPerimeters", "name": "n"}]}
    for _ in range(12):
        inner = {"resources": [{"type": "Microsoft.Resources/deployments", "name": "d",
                                "properties": {"template": inner}}]}
    with pytest.raises(ConfigError) as caught:
        parse_config_text(json.dumps(inner), "deep.json")
    assert "nested more than 10 deep" in str(caught.value)


def test_linked_template_is_noticed() -> None:
    document = template("inner", linked={"type": "Microsoft.Resources/deployments", "name": "l",
                                         "properties": {"templateLink": {"uri": "https://example.com/t.json"}}})
    config = parse_config_text(json.dumps(document), "t.json")
    assert [w for w in config.warnings if "resources.linked" in w and "linked template" in w]


def test_diagnostic_settings_on_the_perimeter_are_noticed_not_refused() -> None:
    document = template("inner", diag={
        "type": "Microsoft.Insights/diagnosticSettings", "name": "d",
        "scope": "[resourceId('Microsoft.Network/networkSecurityPerimeters', parameters('nspName'))]",
        "properties": {"logs": [{"categoryGroup": "allLogs", "enabled": True}]}})
    config = parse_config_text(json.dumps(document), "t.json")
    assert [w for w in config.warnings if "resources.diag" in w and "'nsp-t'" in w and "not read" in w]


BIG = "x" * 40_000
BOMB_SCOPE = Scope(parameters={"big": {"type": "string", "defaultValue": BIG},
                               "many": {"type": "array", "defaultValue": [BIG] * 5000}},
                   variables={"v0": 9_000_000_000, **{f"v{i}": f"[mul(variables('v{i - 1}'), variables('v{i - 1}'))]"
                                                      for i in range(1, 40)}})


@pytest.mark.parametrize("text", [
    pytest.param("[concat(parameters('big'), parameters('big'))]", id="concat"),
    pytest.param("[replace(parameters('big'), 'x', 'yyyy')]", id="replace"),
    pytest.param("[join(parameters('many'), ',')]", id="join"),
    pytest.param("[string(parameters('many'))]", id="string of an array"),
    pytest.param("[format('{0}{0}{0}', parameters('big'))]", id="format"),
    pytest.param("[variables('v39')]", id="integer squaring chain"),
    pytest.param("[union(range(0, 6000), range(6000, 6000))]", id="union over the element bound"),
])
def test_expressions_cannot_build_unbounded_values(text: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        evaluate(text, BOMB_SCOPE)
    assert any(word in str(caught.value) for word in ("longer than", "64-bit", "more than"))

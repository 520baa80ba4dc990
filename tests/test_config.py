"""Configuration loading: every kind of bad input is refused with the file, the field path and the reason;
good input in all the shapes an Azure user writes it is accepted and normalised; the shipped examples validate.

Pure unit tests (``parse_config_text`` / ``load_config``) apart from the ``nsp-proxy validate`` CLI checks.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.errors import ConfigError
from proxy.config.loader import load_config, parse_config_text
from proxy.model import AccessMode, Config, Direction
from tests.support import REPO, run_cli

EXAMPLES = REPO / "config" / "examples"
SUB = "11111111-2222-3333-4444-555555555555"
OTHER_SUB = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
STORAGE_ID = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st1"
VAULT_ID = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1"


# -- helpers --------------------------------------------------------------------------------------------------


def base_document() -> dict[str, Any]:
    """A small valid configuration: one perimeter, one profile, one Enforced storage account."""
    return {
        "apiVersion": "nsp-proxy/v1",
        "settings": {"metrics": "127.0.0.1:19464"},
        "perimeters": [
            {
                "name": "p1",
                "location": "westeurope",
                "subscriptionId": SUB,
                "resourceGroup": "rg",
                "profiles": [
                    {
                        "name": "prof",
                        "accessRules": [
                            {"name": "office", "direction": "Inbound", "addressPrefixes": ["203.0.113.0/24"]},
                            {"name": "login", "direction": "Outbound",
                             "fullyQualifiedDomainNames": ["login.microsoftonline.com"]},
                        ],
                    }
                ],
                "resourceAssociations": [
                    {
                        "name": "store",
                        "privateLinkResource": {"id": STORAGE_ID},
                        "profile": "prof",
                        "accessMode": "Enforced",
                        "local": {"listen": "127.0.0.1:18080", "upstream": "builtin:demo"},
                    }
                ],
            }
        ],
    }


def parse(document: dict[str, Any] | str, source: str = "perimeter.yaml") -> Config:
    text = document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False)
    return parse_config_text(text, source)


def refuse(document: dict[str, Any] | str, source: str = "perimeter.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse(document, source)
    return caught.value


def assert_reported(error: ConfigError, path: str, *reason: str, file: str = "perimeter.yaml") -> str:
    """Some line of the rendered error names ``file``, the field ``path`` and every ``reason`` fragment."""
    rendered = str(error)
    for line in rendered.splitlines():
        if file in line and f"{path}:" in line and all(r.lower() in line.lower() for r in reason):
            return line
    raise AssertionError(f"no line names {file!r}, {path!r} and {reason!r} in:\n{rendered}")


def mutate(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    document = base_document()
    change(document)
    return document


def rules(document: dict[str, Any]) -> list[dict[str, Any]]:
    return document["perimeters"][0]["profiles"][0]["accessRules"]


def set_rule0(document: dict[str, Any], **rule: Any) -> None:
    """Replace the first access rule (an Inbound address rule) by ``rule``."""
    rules(document)[0] = {"name": "r0", **rule}


def assoc(document: dict[str, Any]) -> dict[str, Any]:
    return document["perimeters"][0]["resourceAssociations"][0]


RULE0 = "perimeters[0].profiles[0].accessRules[0]"
ASSOC0 = "perimeters[0].resourceAssociations[0]"


def test_base_document_is_valid() -> None:
    config = parse(base_document())
    assert [a.name for a in config.associations()] == ["store"]
    assert config.source == "perimeter.yaml"


# -- refused input, one class at a time ------------------------------------------------------------------------

REFUSED: list[tuple[str, Callable[[dict[str, Any]], object], str, tuple[str, ...]]] = [
    ("unknown top-level key", lambda d: d.update(perimeter=[]), "(top level)", ("'perimeter'", "allowed:")),
    ("unknown settings key", lambda d: d["settings"].update(acessLog="-"), "settings", ("'acessLog'",)),
    ("unknown perimeter key", lambda d: d["perimeters"][0].update(tagz={}), "perimeters[0]", ("'tagz'",)),
    ("unknown rule key", lambda d: rules(d)[0].update(action="Allow"), RULE0, ("'action'", "allowed:")),
    ("unknown local key", lambda d: assoc(d)["local"].update(lisen="127.0.0.1:1"), f"{ASSOC0}.local",
     ("'lisen'", "listen")),
    ("bad CIDR", lambda d: rules(d)[0].update(addressPrefixes=["10.0.0.0/33"]), f"{RULE0}.addressPrefixes[0]",
     ("10.0.0.0/33", "not a valid")),
    ("CIDR with host bits", lambda d: rules(d)[0].update(addressPrefixes=["10.0.0.1/8"]),
     f"{RULE0}.addressPrefixes[0]", ("10.0.0.1/8", "host bits")),
    ("IPv6 CIDR with host bits", lambda d: rules(d)[0].update(addressPrefixes=["2001:db8::1/32"]),
     f"{RULE0}.addressPrefixes[0]", ("host bits",)),
    ("not an address", lambda d: rules(d)[0].update(addressPrefixes=["office"]), f"{RULE0}.addressPrefixes[0]",
     ("'office'",)),
    ("bad subscription GUID", lambda d: set_rule0(d, direction="Inbound",
                                                      subscriptions=[{"id": "/subscriptions/not-a-guid"}]),
     f"{RULE0}.subscriptions[0]", ("not-a-guid", "subscription")),
    ("GUID one digit short", lambda d: set_rule0(d, direction="Inbound",
                                                     subscriptions=["11111111-2222-3333-4444-55555555555"]),
     f"{RULE0}.subscriptions[0]", ("subscription",)),
    ("two kinds of match", lambda d: rules(d)[0].update(subscriptions=[{"id": f"/subscriptions/{SUB}"}]), RULE0,
     ("exactly one kind of match", "addressPrefixes, subscriptions")),
    ("no match at all", lambda d: rules(d)[0].pop("addressPrefixes"), RULE0, ("exactly one kind", "none")),
    ("empty match list", lambda d: rules(d)[0].update(addressPrefixes=[]), RULE0, ("exactly one kind",)),
    ("addressPrefixes in an Outbound rule", lambda d: rules(d)[0].update(direction="Outbound"),
     f"{RULE0}.addressPrefixes", ("only valid in Inbound", "Outbound")),
    ("subscriptions in an Outbound rule",
     lambda d: set_rule0(d, direction="Outbound", subscriptions=[SUB]),
     f"{RULE0}.subscriptions", ("only valid in Inbound",)),
    ("FQDNs in an Inbound rule", lambda d: rules(d)[1].update(direction="Inbound"),
     "perimeters[0].profiles[0].accessRules[1].fullyQualifiedDomainNames", ("only valid in Outbound",)),
    ("IP address as an FQDN", lambda d: rules(d)[1].update(fullyQualifiedDomainNames=["10.0.0.1"]),
     "perimeters[0].profiles[0].accessRules[1].fullyQualifiedDomainNames[0]", ("IP address",)),
    ("wildcard inside a label", lambda d: rules(d)[1].update(fullyQualifiedDomainNames=["login*.example.com"]),
     "perimeters[0].profiles[0].accessRules[1].fullyQualifiedDomainNames[0]", ("wildcard",)),
    ("empty label in an FQDN", lambda d: rules(d)[1].update(fullyQualifiedDomainNames=["a..example.com"]),
     "perimeters[0].profiles[0].accessRules[1].fullyQualifiedDomainNames[0]", ("not a valid host name",)),
    ("bad direction", lambda d: rules(d)[0].update(direction="Both"), f"{RULE0}.direction", ("'Both'",)),
    ("bad accessMode", lambda d: assoc(d).update(accessMode="Blocking"), f"{ASSOC0}.accessMode", ("'Blocking'",)),
    ("bad rule name", lambda d: rules(d)[0].update(name="allow office!"), f"{RULE0}.name",
     ("not a valid Azure resource name",)),
    ("unknown profile", lambda d: assoc(d).update(profile="nope"), f"{ASSOC0}.profile",
     ("unknown profile 'nope'", "prof")),
    ("unknown profile by id",
     lambda d: assoc(d).update(profile={"id": f"/subscriptions/{SUB}/resourceGroups/rg/providers/"
                                              "Microsoft.Network/networkSecurityPerimeters/p1/profiles/nope"}),
     f"{ASSOC0}.profile", ("unknown profile 'nope'",)),
    ("resource that is not a resource ID", lambda d: assoc(d).update(privateLinkResource={"id": "st1"}),
     f"{ASSOC0}.privateLinkResource.id", ("not an Azure resource ID",)),
    ("missing required key", lambda d: assoc(d).pop("privateLinkResource"), ASSOC0, ("privateLinkResource",)),
    ("listen port 0", lambda d: assoc(d)["local"].update(listen="127.0.0.1:0"), f"{ASSOC0}.local.listen",
     ("port must be 1-65535",)),
    ("listen port too large", lambda d: assoc(d)["local"].update(listen=70000), f"{ASSOC0}.local.listen",
     ("port must be 1-65535",)),
    ("listen without port", lambda d: assoc(d)["local"].update(listen="localhost"), f"{ASSOC0}.local.listen",
     ("expected host:port",)),
    ("listen with a word as port", lambda d: assoc(d)["local"].update(listen="127.0.0.1:http"),
     f"{ASSOC0}.local.listen", ("port",)),
    ("bad metrics endpoint", lambda d: d["settings"].update(metrics="127.0.0.1:"), "settings.metrics", ("port",)),
    ("bad outbound endpoint", lambda d: d["settings"].update(outbound="[::1]"), "settings.outbound", ("[ipv6]:port",)),
    ("bad nameserver", lambda d: d["settings"].update(dns={"nameservers": ["dns.example"]}),
     "settings.dns.nameservers[0]", ("host:port",)),
    ("listen without upstream", lambda d: assoc(d)["local"].pop("upstream"), f"{ASSOC0}.local.upstream",
     ("needs an 'upstream'",)),
    ("upstream that is not http(s)", lambda d: assoc(d)["local"].update(upstream="ftp://127.0.0.1:21"),
     f"{ASSOC0}.local.upstream", ("ftp://",)),
    ("listen port reused by outboundListen", lambda d: assoc(d)["local"].update(outboundListen=18080),
     f"{ASSOC0}.local.outboundListen", ("port 18080 is already used", f"{ASSOC0}.local.listen")),
    ("listen port reused by metrics", lambda d: d["settings"].update(metrics=18080), f"{ASSOC0}.local.listen",
     ("port 18080 is already used by settings.metrics",)),
    ("listen port reused by the shared forward proxy", lambda d: d["settings"].update(outbound="127.0.0.1:19464"),
     "settings.outbound", ("already used by settings.metrics",)),
    ("bad trusted proxy", lambda d: d["settings"].update(trustedProxies=["10.0.0.1/8"]),
     "settings.trustedProxies[0]", ("host bits",)),
    ("bad resourceIpRules", lambda d: assoc(d)["local"].update(resourceIpRules=["300.1.1.1"]),
     f"{ASSOC0}.local.resourceIpRules[0]", ("300.1.1.1",)),
    ("bad publicNetworkAccess", lambda d: assoc(d)["local"].update(publicNetworkAccess="Sometimes"),
     f"{ASSOC0}.local.publicNetworkAccess", ("Sometimes",)),
    ("bad perimeter subscriptionId", lambda d: d["perimeters"][0].update(subscriptionId="prod"),
     "perimeters[0].subscriptionId", ("'prod'",)),
    ("property both inside and outside properties",
     lambda d: rules(d)[0].update(properties={"direction": "Inbound"}), f"{RULE0}.properties.direction",
     ("both inside and outside",)),
    ("no perimeters", lambda d: d.update(perimeters=[]), "perimeters", ("at least one perimeter",)),
]


@pytest.mark.parametrize(("change", "path", "reason"), [(c, p, r) for _, c, p, r in REFUSED],
                         ids=[name for name, *_ in REFUSED])
def test_refused_with_file_path_and_reason(change: Callable[[dict[str, Any]], object], path: str,
                                           reason: tuple[str, ...]) -> None:
    assert_reported(refuse(mutate(change)), path, *reason)


def test_duplicate_profile_names_are_case_insensitive() -> None:
    document = base_document()
    document["perimeters"][0]["profiles"].append({"name": "PROF"})
    assert_reported(refuse(document), "perimeters[0].profiles[1].name", "duplicate profile name 'PROF'",
                    "profiles[0]")


def test_duplicate_rule_names_are_case_insensitive() -> None:
    document = base_document()
    rules(document).append({"name": "Office", "direction": "Inbound", "addressPrefixes": ["198.51.100.0/24"]})
    assert_reported(refuse(document), "perimeters[0].profiles[0].accessRules[2].name",
                    "duplicate access rule name 'Office'", "accessRules[0]")


def test_duplicate_association_names_are_case_insensitive() -> None:
    document = base_document()
    document["perimeters"][0]["resourceAssociations"].append(
        {"name": "STORE", "privateLinkResource": {"id": VAULT_ID}, "profile": "prof"})
    assert_reported(refuse(document), "perimeters[0].resourceAssociations[1].name",
                    "duplicate resource association name 'STORE'")


def test_duplicate_association_name_in_one_perimeter_is_reported_once() -> None:
    document = base_document()
    document["perimeters"][0]["resourceAssociations"].append(
        {"name": "STORE", "privateLinkResource": {"id": VAULT_ID}, "profile": "prof"})
    assert len(refuse(document).problems) == 1


def test_duplicate_association_names_across_perimeters_point_at_the_name() -> None:
    document = base_document()
    document["perimeters"].append({
        "name": "p2", "profiles": [{"name": "prof"}],
        "resourceAssociations": [{"name": "Store", "privateLinkResource": {"id": VAULT_ID}, "profile": "prof"}],
    })
    assert_reported(refuse(document), "perimeters[1].resourceAssociations[0].name", "'Store'")


def test_duplicate_association_names_across_perimeters_are_refused() -> None:
    document = base_document()
    document["perimeters"].append({
        "name": "p2", "profiles": [{"name": "prof"}],
        "resourceAssociations": [{"name": "Store", "privateLinkResource": {"id": VAULT_ID}, "profile": "prof"}],
    })
    error = refuse(document)
    assert "unique across perimeters" in str(error)
    assert "Store" in str(error)


def test_duplicate_perimeter_names_are_case_insensitive() -> None:
    document = base_document()
    document["perimeters"].append({"name": "P1", "resourceGroup": "rg"})
    error = refuse(document)
    assert "duplicate perimeter name 'P1'" in str(error)
    assert "perimeter.yaml" in str(error)


def test_duplicate_perimeter_name_path_has_no_leading_dot() -> None:
    document = base_document()
    document["perimeters"].append({"name": "P1", "resourceGroup": "rg"})
    line = assert_reported(refuse(document), "perimeters[1].name", "duplicate perimeter name")
    assert ": perimeters[1].name:" in line


def test_same_resource_associated_twice_is_refused() -> None:
    document = base_document()
    document["perimeters"][0]["resourceAssociations"].append(
        {"name": "store-again", "privateLinkResource": {"id": STORAGE_ID.upper()}, "profile": "prof"})
    assert_reported(refuse(document), "perimeters[0].resourceAssociations[1].privateLinkResource.id",
                    "already associated", ASSOC0)


# -- Azure's limits ------------------------------------------------------------------------------------------


def _prefixes(count: int, first_octet: int = 10) -> list[str]:
    return [f"{first_octet}.{i // 256}.{i % 256}.0/24" for i in range(count)]


def test_200_rule_elements_per_profile_are_accepted() -> None:
    document = base_document()
    rules(document)[0]["addressPrefixes"] = _prefixes(150)
    rules(document)[1]["fullyQualifiedDomainNames"] = [f"h{i}.example.com" for i in range(50)]
    parse(document)


def test_201_rule_elements_in_a_profile_are_refused_counting_across_rules() -> None:
    document = base_document()
    rules(document)[0]["addressPrefixes"] = _prefixes(150)
    rules(document)[1]["fullyQualifiedDomainNames"] = [f"h{i}.example.com" for i in range(50)]
    rules(document).append({"name": "ci", "direction": "Inbound", "subscriptions": [{"id": f"/subscriptions/{SUB}"}]})
    assert_reported(refuse(document), "perimeters[0].profiles[0].accessRules", "201 rule elements", "200")


def _extra_profiles(d: dict[str, Any], n: int) -> None:
    d["perimeters"][0]["profiles"] += [{"name": f"extra{i}"} for i in range(n)]


def _extra_perimeters(d: dict[str, Any], n: int, subscriptions: tuple[str, ...] = (SUB,)) -> None:
    d["perimeters"] += [{"name": f"nsp{i}", "subscriptionId": subscriptions[i % len(subscriptions)]}
                        for i in range(n)]


def _extra_resources(d: dict[str, Any], n: int) -> None:
    d["perimeters"][0]["resourceAssociations"] += [
        {"name": f"r{i}", "profile": {"id": "prof"},
         "privateLinkResource": {"id": f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/"
                                       f"storageAccounts/s{i}"}} for i in range(n)]


def _extra_links(d: dict[str, Any], n: int) -> None:
    d["perimeters"].append({"name": "remote"})
    d["perimeters"][0]["links"] = [{"name": f"l{i}", "autoApprovedRemotePerimeterResourceId": "remote-id"}
                                   for i in range(n)]


# Azure's recommended limits warn (validate prints them, run logs them at load); only the hard one refuses.
RECOMMENDED_LIMITS = [
    pytest.param(lambda d: _extra_profiles(d, 200), "201 profiles", id="201 profiles per perimeter"),
    pytest.param(lambda d: _extra_perimeters(d, 100), "101 perimeters in subscription", id="101 perimeters"),
    pytest.param(lambda d: _extra_resources(d, 1000), "resources; Azure recommends at most 1000",
                 id="1001 resources per perimeter"),
    pytest.param(lambda d: _extra_links(d, 11), "11 links", id="11 links per perimeter"),
]


@pytest.mark.parametrize(("grow", "warning"), RECOMMENDED_LIMITS)
def test_recommended_limits_warn_and_load(grow: Callable[[dict[str, Any]], None], warning: str) -> None:
    document = base_document()
    grow(document)
    config = parse(document)
    assert [w for w in config.warnings if warning in w], config.warnings


@pytest.mark.parametrize("grow", [
    pytest.param(lambda d: _extra_profiles(d, 199), id="200 profiles"),
    pytest.param(lambda d: _extra_perimeters(d, 150, (SUB, OTHER_SUB)), id="151 perimeters in two subscriptions"),
    pytest.param(lambda d: _extra_links(d, 10), id="10 links"),
])
def test_within_recommended_limits_no_warning(grow: Callable[[dict[str, Any]], None]) -> None:
    document = base_document()
    grow(document)
    assert not [w for w in parse(document).warnings if "Azure recommends" in w or "links; Azure" in w]


# -- files and syntax ----------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("perimeters:\n  - name: p1\n    profiles: [ {name: x}\n  - name: p2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    line = str(caught.value)
    assert str(path) in line
    assert "line 4, column" in line
    assert "not valid YAML" in line


def test_tab_indentation_is_a_yaml_error_with_position() -> None:
    error = refuse("perimeters:\n\t- name: p1\n", source="tabs.yaml")
    assert_reported(error, "line 2, column 1", "not valid YAML", file="tabs.yaml")


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n"])
def test_empty_file_is_refused(text: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_reported(caught.value, "(top level)", "expected a mapping", file=str(path))


@pytest.mark.parametrize("text", ["- perimeters\n", "just a string\n", "42\n"])
def test_document_that_is_not_a_mapping_is_refused(text: str) -> None:
    assert_reported(refuse(text), "(top level)", "expected a mapping")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_reported(caught.value, "(top level)", "cannot read file", "No such file", file=str(path))


def test_json_is_accepted_as_yaml() -> None:
    config = parse(json.dumps(base_document()), source="perimeter.json")
    assert config.perimeters[0].name == "p1"




def test_every_problem_is_reported_at_once() -> None:
    document = base_document()
    rules(document)[0]["addressPrefixes"] = ["10.0.0.1/8", "192.168.0.0/16", "not-an-ip"]
    rules(document).append({"name": "ci", "direction": "Inbound", "subscriptions": ["bogus"]})
    rules(document).append({"name": "both", "direction": "Inbound", "addressPrefixes": ["10.0.0.0/8"],
                            "subscriptions": [SUB]})
    assoc(document)["profile"] = "missing"
    assoc(document)["local"]["listen"] = "127.0.0.1:0"
    error = refuse(document)
    assert_reported(error, f"{RULE0}.addressPrefixes[0]", "host bits")
    assert_reported(error, f"{RULE0}.addressPrefixes[2]", "not-an-ip")
    assert_reported(error, "perimeters[0].profiles[0].accessRules[2].subscriptions[0]", "bogus")
    assert_reported(error, "perimeters[0].profiles[0].accessRules[3]", "exactly one kind")
    assert_reported(error, f"{ASSOC0}.profile", "unknown profile")
    assert_reported(error, f"{ASSOC0}.local.listen", "port")
    assert len(error.problems) == 6


def test_every_structural_problem_is_reported_at_once() -> None:
    document = base_document()
    document["extra"] = 1
    rules(document)[0]["action"] = "Allow"
    assoc(document)["local"]["lisen"] = 1
    error = refuse(document)
    assert_reported(error, "(top level)", "'extra'")
    assert_reported(error, RULE0, "'action'")
    assert_reported(error, f"{ASSOC0}.local", "'lisen'")


# -- accepted shapes and normalisation ---------------------------------------------------------------------------


def test_arm_properties_wrapper_is_lifted_everywhere() -> None:
    document = {
        "perimeters": [{
            "name": "p1",
            "properties": {
                "profiles": [{
                    "name": "prof",
                    "properties": {"accessRules": [
                        {"name": "office", "properties": {"direction": "Inbound",
                                                          "addressPrefixes": ["203.0.113.0/24"]}},
                    ]},
                }],
                "resourceAssociations": [{
                    "name": "store",
                    "properties": {"privateLinkResource": {"id": STORAGE_ID}, "profile": {"id": "x/profiles/prof"},
                                   "accessMode": "Enforced"},
                }],
            },
        }]
    }
    config = parse(document)
    perimeter = config.perimeters[0]
    assert perimeter.profiles[0].rules[0].address_prefixes[0].exploded == "203.0.113.0/24"
    assert perimeter.associations[0].mode is AccessMode.ENFORCED
    assert perimeter.associations[0].profile == "prof"


def test_unknown_key_inside_properties_is_refused() -> None:
    document = base_document()
    rules(document)[0] = {"name": "office", "properties": {"direction": "Inbound", "addressPrefixes": ["10.0.0.0/8"],
                                                           "priority": 100}}
    assert_reported(refuse(document), RULE0, "'priority'")


@pytest.mark.parametrize(("written", "mode"), [
    ("Learning", AccessMode.TRANSITION), ("Transition", AccessMode.TRANSITION),
    ("Enforced", AccessMode.ENFORCED), ("Audit", AccessMode.AUDIT), (None, AccessMode.TRANSITION),
])
def test_access_modes(written: str | None, mode: AccessMode) -> None:
    document = base_document()
    if written is None:
        assoc(document).pop("accessMode")
    else:
        assoc(document)["accessMode"] = written
    assert parse(document).associations()[0].mode is mode


def test_fqdns_are_normalised() -> None:
    document = base_document()
    rules(document)[1]["fullyQualifiedDomainNames"] = [
        "Login.MicrosoftOnline.COM.", "*.Blob.Core.Windows.Net", "bücher.example", " padded.example ",
        "xn--bcher-kva.example",
    ]
    fqdns = parse(document).perimeters[0].profiles[0].rules[1].fqdns
    assert fqdns == ("login.microsoftonline.com", "*.blob.core.windows.net", "xn--bcher-kva.example",
                     "padded.example", "xn--bcher-kva.example")


def test_service_fqdns_are_normalised() -> None:
    document = base_document()
    assoc(document)["local"]["serviceFqdns"] = ["St1.Blob.Core.Windows.Net."]
    assert parse(document).associations()[0].local.service_fqdns == ("st1.blob.core.windows.net",)


@pytest.mark.parametrize("written", [
    f"/subscriptions/{SUB}", f"subscriptions/{SUB}", SUB, SUB.upper(), f"/SUBSCRIPTIONS/{SUB.upper()}",
    {"id": f"/subscriptions/{SUB}"}, {"id": SUB.upper()}, f"{{{SUB}}}", f"/subscriptions/{SUB}/",
])
def test_subscription_forms_are_normalised(written: str | dict[str, str]) -> None:
    document = base_document()
    rules(document)[0] = {"name": "ci", "direction": "Inbound", "subscriptions": [written]}
    assert parse(document).perimeters[0].profiles[0].rules[0].subscriptions == (SUB,)


def test_perimeter_subscription_is_normalised_into_its_id() -> None:
    document = base_document()
    document["perimeters"][0]["subscriptionId"] = f"/subscriptions/{SUB.upper()}"
    assert parse(document).perimeters[0].resource_id == (
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/networkSecurityPerimeters/p1")


def test_prefixes_are_parsed_ipv4_and_ipv6() -> None:
    document = base_document()
    rules(document)[0]["addressPrefixes"] = ["203.0.113.0/24", "2001:DB8::/32", "198.51.100.7", "::1"]
    prefixes = parse(document).perimeters[0].profiles[0].rules[0].address_prefixes
    assert [str(p) for p in prefixes] == ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7/32", "::1/128"]


def test_profile_by_id_and_case_insensitive_name() -> None:
    document = base_document()
    assoc(document)["profile"] = {"id": f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/"
                                        "networkSecurityPerimeters/p1/profiles/PROF"}
    assert parse(document).associations()[0].profile == "prof"


def test_defaults() -> None:
    document = {"perimeters": [{"name": "p1", "profiles": [{"name": "prof"}], "resourceAssociations": [
        {"name": "store", "privateLinkResource": STORAGE_ID, "profile": "prof"}]}]}
    config = parse(document)
    settings = config.settings
    assert settings.subscription_header == "x-nsp-subscription-id"
    assert settings.access_log == "-"
    assert (settings.metrics_listen_host, settings.metrics_listen_port) == ("127.0.0.1", 9464)
    assert settings.outbound_listen_port is None
    assert settings.trusted_proxies == ()
    perimeter = config.perimeters[0]
    assert perimeter.location == "local"
    assert perimeter.resource_id == ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/nsp-proxy"
                                     "/providers/Microsoft.Network/networkSecurityPerimeters/p1")
    association = perimeter.associations[0]
    assert association.mode is AccessMode.TRANSITION
    assert association.resource_id == STORAGE_ID
    local = association.local
    assert local.listen_port is None and local.upstream is None
    assert local.public_network_access is True
    assert local.trust_subscription_header is True
    assert local.resource_ip_rules == () and local.private_endpoint_prefixes == ()


def test_metrics_null_disables_the_endpoint() -> None:
    document = base_document()
    document["settings"]["metrics"] = None
    settings = parse(document).settings
    assert settings.metrics_listen_port is None


@pytest.mark.parametrize(("written", "expected"), [
    (18080, ("127.0.0.1", 18080)), ("18080", ("127.0.0.1", 18080)), (":18080", ("127.0.0.1", 18080)),
    ("0.0.0.0:18080", ("0.0.0.0", 18080)), ("[::1]:18080", ("::1", 18080)),
])
def test_endpoint_forms(written: str | int, expected: tuple[str, int]) -> None:
    document = base_document()
    assoc(document)["local"]["listen"] = written
    local = parse(document).associations()[0].local
    assert (local.listen_host, local.listen_port) == expected


def test_shared_outbound_listen_port_among_resources_is_allowed() -> None:
    document = base_document()
    assoc(document)["local"]["outboundListen"] = 13128
    document["perimeters"][0]["resourceAssociations"].append(
        {"name": "vault", "privateLinkResource": {"id": VAULT_ID}, "profile": "prof",
         "local": {"outboundListen": 13128}})
    assert len(parse(document).associations()) == 2


def test_unsupported_rule_kinds_are_accepted_with_a_warning() -> None:
    document = base_document()
    rules(document).append({"name": "mail", "direction": "Outbound", "emailAddresses": ["soc@example.com"]})
    config = parse(document)
    assert any("emailAddresses" in w and "accessRules[2]" in w for w in config.warnings)
    assert config.perimeters[0].profiles[0].rules[2].unsupported_kind == "emailAddresses"


def test_cross_perimeter_rule_keeps_lower_cased_ids() -> None:
    document = base_document()
    target = f"/subscriptions/{SUB}/resourceGroups/RG/providers/Microsoft.Network/networkSecurityPerimeters/P2"
    rules(document)[0] = {"name": "partners", "direction": "Inbound", "networkSecurityPerimeters": [{"id": target}]}
    rule = parse(document).perimeters[0].profiles[0].rules[0]
    assert rule.perimeters == (target.lower(),)
    assert rule.direction is Direction.INBOUND


def test_config_objects_are_immutable() -> None:
    config = parse(base_document())
    with pytest.raises(AttributeError):
        config.perimeters[0].name = "other"  # type: ignore[misc]


# -- ARM: template, export, bindings --------------------------------------------------------------------------------

ARM_DIR = EXAMPLES / "arm"


def _template() -> dict[str, Any]:
    return json.loads((ARM_DIR / "nsp-template.json").read_text(encoding="utf-8"))


def _load_arm(tmp_path: Path, arm: dict[str, Any] | str, bindings: dict[str, Any] | None = None,
              extra: dict[str, Any] | None = None) -> Config:
    (tmp_path / "nsp.json").write_text(arm if isinstance(arm, str) else json.dumps(arm, indent=2), encoding="utf-8")
    document = {"arm": "nsp.json", "bindings": bindings or {}, **(extra or {})}
    (tmp_path / "bindings.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
    return load_config(tmp_path / "bindings.yaml")


def _refuse_arm(tmp_path: Path, arm: dict[str, Any] | str, bindings: dict[str, Any] | None = None,
                extra: dict[str, Any] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        _load_arm(tmp_path, arm, bindings, extra)
    return caught.value


def test_template_and_export_give_the_same_rules_and_associations() -> None:
    template = load_config(ARM_DIR / "bindings.yaml")
    export = load_config(ARM_DIR / "export-bindings.yaml")
    assert template.perimeters[0].profiles == export.perimeters[0].profiles
    assert template.perimeters[0].associations == export.perimeters[0].associations
    assert export.perimeters[0].resource_id.endswith("/resourceGroups/rg-contoso/providers/Microsoft.Network/"
                                                     "networkSecurityPerimeters/nsp-contoso")
    assert template.settings == export.settings


def test_template_flat_and_nested_children_are_imported() -> None:
    config = load_config(ARM_DIR / "bindings.yaml")
    perimeter = config.perimeters[0]
    profiles = {p.name: [r.name for r in p.rules] for p in perimeter.profiles}
    assert profiles == {"storageProfile": ["allow-office", "allow-ci-subscription", "allow-entra-login"],
                        "vaultProfile": ["allow-build-agents"]}
    by_name = {a.name: a for a in perimeter.associations}
    assert by_name["stcontoso-assoc"].mode is AccessMode.ENFORCED
    assert by_name["stcontoso-assoc"].local.listen_port == 10100  # bound by association name
    assert by_name["kvcontoso-assoc"].mode is AccessMode.TRANSITION
    assert by_name["kvcontoso-assoc"].local.listen_port == 8200  # bound by resource ID
    assert str(ARM_DIR / "nsp-template.json") in config.files


def test_arm_bindings_match_case_insensitively(tmp_path: Path) -> None:
    config = _load_arm(tmp_path, _template(), {"STCONTOSO-ASSOC": {"listen": 18100, "upstream": "builtin:demo"}})
    assert {a.name: a.local.listen_port for a in config.associations()}["stcontoso-assoc"] == 18100


def test_arm_bad_cidr_points_at_the_flat_resource(tmp_path: Path) -> None:
    template = _template()
    template["resources"][2]["properties"]["addressPrefixes"][1] = "203.0.113.1/24"
    error = _refuse_arm(tmp_path, template)
    assert_reported(error, "resources[2].properties.addressPrefixes[1]", "host bits", file="nsp.json")


def test_arm_bad_cidr_points_at_the_nested_resource(tmp_path: Path) -> None:
    template = _template()
    template["resources"][5]["resources"][0]["properties"]["addressPrefixes"] = ["198.51.100.0/24", "bad"]
    error = _refuse_arm(tmp_path, template)
    assert_reported(error, "resources[5].resources[0].properties.addressPrefixes[1]", "'bad'", file="nsp.json")


def test_arm_bad_subscription_points_at_the_resource(tmp_path: Path) -> None:
    template = _template()
    template["resources"][3]["properties"]["subscriptions"][0]["id"] = "/subscriptions/xyz"
    assert_reported(_refuse_arm(tmp_path, template), "resources[3].properties.subscriptions[0]", "xyz",
                    file="nsp.json")


@pytest.mark.parametrize(("fqdn", "reason"), [
    pytest.param("xn--zz.example.com", "Invalid A-label", id="invalid-punycode"),
    pytest.param("\u2603.example.com", "not allowed", id="disallowed-symbol"),
    pytest.param("a" * 64 + ".example.com", "too long", id="label-over-63"),
    pytest.param("a..example.com", "empty label", id="empty-label"),
])
def test_arm_invalid_fqdn_points_at_the_rule(tmp_path: Path, fqdn: str, reason: str) -> None:
    template = _template()
    template["resources"][4]["properties"]["fullyQualifiedDomainNames"][1] = fqdn
    assert_reported(_refuse_arm(tmp_path, template), "resources[4].properties.fullyQualifiedDomainNames[1]", reason,
                    file="nsp.json")


def test_arm_fqdn_rules_are_normalised_to_a_labels(tmp_path: Path) -> None:
    template = _template()
    template["resources"][4]["properties"]["fullyQualifiedDomainNames"] = ["B\u00fccher.Example.COM.",
                                                                           "*\uff0eVault.azure.net"]
    config = _load_arm(tmp_path, template)
    fqdns = {f for p in config.perimeters[0].profiles for r in p.rules for f in r.fqdns}
    assert {"xn--bcher-kva.example.com", "*.vault.azure.net"} <= fqdns


def test_arm_unknown_property_points_at_the_resource(tmp_path: Path) -> None:
    template = _template()
    template["resources"][6]["properties"]["accesMode"] = "Enforced"
    assert_reported(_refuse_arm(tmp_path, template), "resources[6].properties", "'accesMode'", file="nsp.json")


def test_arm_unknown_profile_points_at_the_association(tmp_path: Path) -> None:
    template = _template()
    template["resources"][6]["properties"]["profile"]["id"] = "/x/networkSecurityPerimeters/nsp-contoso/profiles/no"
    assert_reported(_refuse_arm(tmp_path, template), "resources[6].properties.profile", "unknown profile 'no'",
                    file="nsp.json")


def test_arm_two_kinds_of_match_points_at_the_rule(tmp_path: Path) -> None:
    template = _template()
    template["resources"][4]["properties"]["addressPrefixes"] = ["10.0.0.0/8"]
    assert_reported(_refuse_arm(tmp_path, template), "resources[4].properties", "exactly one kind", file="nsp.json")


def test_arm_duplicate_rule_name_points_at_the_name(tmp_path: Path) -> None:
    template = _template()
    template["resources"][4]["name"] = "nsp-contoso/storageProfile/ALLOW-OFFICE"
    line = assert_reported(_refuse_arm(tmp_path, template), "resources[4].name", "duplicate access rule name",
                           file="nsp.json")
    assert "properties.name" not in line


def test_arm_duplicate_rule_name_is_refused(tmp_path: Path) -> None:
    template = _template()
    template["resources"][4]["name"] = "nsp-contoso/storageProfile/ALLOW-OFFICE"
    error = _refuse_arm(tmp_path, template)
    assert "duplicate access rule name 'ALLOW-OFFICE'" in str(error)
    assert "nsp.json:" in str(error) and "resources[4]" in str(error)


def test_arm_expressions_with_defaults_are_evaluated(tmp_path: Path) -> None:
    template = _template()
    template["parameters"] = {"nspName": {"type": "string", "defaultValue": "nsp-contoso"}}
    template["resources"][1]["name"] = "[concat(parameters('nspName'), '/storageProfile')]"
    template["resources"][6]["properties"]["profile"]["id"] = (
        "[resourceId('Microsoft.Network/networkSecurityPerimeters/profiles', parameters('nspName'), "
        "'storageProfile')]")
    config = _load_arm(tmp_path, template)
    assert {a.name: a.profile for a in config.associations()}["stcontoso-assoc"] == "storageProfile"


@pytest.mark.parametrize("name", [
    "[concat(parameters('nspName'), '/storageProfile/allow-office')]",  # parameter without defaultValue
    "[concat(reference('x').name, '/storageProfile/allow-office')]",  # a value only a live deployment knows
])
def test_arm_expression_in_a_name_that_cannot_be_evaluated_is_refused(tmp_path: Path, name: str) -> None:
    template = _template()
    template["parameters"] = {"nspName": {"type": "string"}}
    template["resources"][2]["name"] = name
    error = _refuse_arm(tmp_path, template)
    assert_reported(error, "resources[2].name", name, file="nsp.json")


def test_arm_unevaluable_name_is_reported_once(tmp_path: Path) -> None:
    template = _template()
    template["parameters"] = {"nspName": {"type": "string"}}
    template["resources"][2]["name"] = "[concat(parameters('nspName'), '/storageProfile/allow-office')]"
    assert len(_refuse_arm(tmp_path, template).problems) == 1


def test_arm_child_of_a_perimeter_not_in_the_file(tmp_path: Path) -> None:
    template = _template()
    template["resources"][2]["name"] = "nsp-other/storageProfile/allow-office"
    assert_reported(_refuse_arm(tmp_path, template), "resources[2]", "nsp-other", "not in the file", file="nsp.json")


def test_arm_child_name_with_too_few_parts(tmp_path: Path) -> None:
    template = _template()
    template["resources"][2]["name"] = "nsp-contoso/allow-office"
    assert_reported(_refuse_arm(tmp_path, template), "resources[2].name", "3 '/'-separated parts", file="nsp.json")


def test_arm_unsupported_nsp_child_type(tmp_path: Path) -> None:
    template = _template()
    template["resources"].append({"type": "Microsoft.Network/networkSecurityPerimeters/gadgets",
                                  "name": "nsp-contoso/gadget1", "properties": {}})
    assert_reported(_refuse_arm(tmp_path, template), "resources[8]", "unsupported resource type 'gadgets'",
                    file="nsp.json")


def test_arm_file_without_a_perimeter(tmp_path: Path) -> None:
    assert_reported(_refuse_arm(tmp_path, {"resources": []}), "(top level)", "no microsoft.network", file="nsp.json")


def test_arm_file_that_is_not_json(tmp_path: Path) -> None:
    error = _refuse_arm(tmp_path, '{"resources": [\n  {"type": }\n]}')
    assert_reported(error, "line 2, column 12", "not JSON", file="nsp.json")


def test_arm_file_missing(tmp_path: Path) -> None:
    (tmp_path / "bindings.yaml").write_text("arm: gone.json\nbindings: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "bindings.yaml")
    # Reported at the key that named it, in the file the user gave, with the path that could not be read.
    assert_reported(caught.value, "arm", "gone.json: cannot read ARM file", file="bindings.yaml")


def test_arm_binding_that_matches_nothing_is_refused(tmp_path: Path) -> None:
    error = _refuse_arm(tmp_path, _template(), {"stcontoso-asoc": {"listen": 18100, "upstream": "builtin:demo"}})
    line = assert_reported(error, "bindings.stcontoso-asoc", "matches no resource association", file="")
    assert "bindings.yaml" in line or "nsp.json" in line


def test_arm_binding_that_matches_nothing_names_the_bindings_file(tmp_path: Path) -> None:
    error = _refuse_arm(tmp_path, _template(), {"stcontoso-asoc": {"listen": 18100, "upstream": "builtin:demo"}})
    assert_reported(error, "bindings.stcontoso-asoc", "matches no resource association", file="bindings.yaml")


def test_arm_bad_binding_points_at_the_binding(tmp_path: Path) -> None:
    error = _refuse_arm(tmp_path, _template(), {"stcontoso-assoc": {"listen": 99999, "upstream": "builtin:demo"}})
    assert_reported(error, "bindings.stcontoso-assoc.listen", "port", file="bindings.yaml")


@pytest.mark.parametrize(("local", "reason"), [
    ({"listen": 99999, "upstream": "builtin:demo"}, "port must be 1-65535"),
    ({"listen": 18100, "upstream": "builtin:demo", "lisen": 1}, "'lisen'"),
    ({"listen": 18100}, "needs an 'upstream'"),
])
def test_arm_bad_binding_is_refused(tmp_path: Path, local: dict[str, Any], reason: str) -> None:
    error = _refuse_arm(tmp_path, _template(), {"stcontoso-assoc": local})
    assert reason in str(error)


def test_arm_settings_are_validated(tmp_path: Path) -> None:
    error = _refuse_arm(tmp_path, _template(), extra={"settings": {"acessLog": "-"}})
    assert_reported(error, "settings", "'acessLog'", file="bindings.yaml")


def test_arm_export_with_list_and_single_resource_shapes(tmp_path: Path) -> None:
    export = json.loads((ARM_DIR / "nsp-export.json").read_text(encoding="utf-8"))
    config = _load_arm(tmp_path, json.dumps(export["value"]))
    assert [a.name for a in config.associations()] == ["stcontoso-assoc", "kvcontoso-assoc"]
    single = copy.deepcopy(export["value"][0])
    config = _load_arm(tmp_path, single)
    assert config.perimeters[0].name == "nsp-contoso"


def test_arm_file_given_directly_has_the_rules_and_no_listeners() -> None:
    """validate and explain need only Azure's rules: an ARM file is a configuration by itself."""
    for name in ("nsp-template.json", "nsp-export.json"):
        direct = load_config(ARM_DIR / name)
        bound = load_config(ARM_DIR / ("bindings.yaml" if name == "nsp-template.json" else "export-bindings.yaml"))
        assert direct.perimeters[0].profiles == bound.perimeters[0].profiles
        assert [(a.name, a.resource_id, a.mode) for a in direct.associations()] == [
            (a.name, a.resource_id, a.mode) for a in bound.associations()]
        assert all(a.local.listen_port is None for a in direct.associations())
        assert direct.files == (str(ARM_DIR / name),)


def test_arm_file_given_directly_reports_problems_in_its_own_terms() -> None:
    template = _template()
    template["resources"][2]["properties"]["addressPrefixes"][1] = "203.0.113.1/24"
    error = refuse(json.dumps(template, indent="\t"), source="nsp.json")  # tab-indented JSON is still JSON
    assert_reported(error, "resources[2].properties.addressPrefixes[1]", "host bits", file="nsp.json")


def test_neither_configuration_nor_arm_is_refused_naming_both() -> None:
    for text in ("[1, 2]", "42", "- perimeters\n"):
        assert_reported(refuse(text, source="x.json"), "(top level)", "'perimeters'", "ARM template/export",
                        file="x.json")


def test_explain_and_validate_take_an_arm_file() -> None:
    template = str(ARM_DIR / "nsp-template.json")
    assert run_cli("validate", template).returncode == 0
    allowed = run_cli("explain", "-c", template, "-r", "stcontoso-assoc", "--source-ip", "203.0.113.9")
    assert allowed.returncode == 0 and "allow-office" in allowed.stdout
    denied = run_cli("explain", "-c", template, "-r", "stcontoso-assoc", "--source-ip", "198.51.100.1")
    assert denied.returncode == 3 and "NspPublicInboundPerimeterRulesDenied" in denied.stdout


def test_run_refuses_an_arm_file_without_bindings() -> None:
    result = run_cli("run", "-c", str(ARM_DIR / "nsp-export.json"), "--metrics", "off")
    assert result.returncode == 2
    assert "names no listener" in result.stderr and "bindings" in result.stderr


# -- the shipped examples -----------------------------------------------------------------------------------------

EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.yaml"))


def test_examples_exist() -> None:
    names = {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLE_FILES}
    assert {"azurite-storage.yaml", "transition-keyvault.yaml", "multi-perimeter.yaml",
            "arm/bindings.yaml"} <= names
    assert (ARM_DIR / "nsp-template.json").exists() and (ARM_DIR / "nsp-export.json").exists()


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_example_validates(path: Path) -> None:
    config = load_config(path)
    assert config.perimeters
    assert config.warnings == ()


def test_examples_are_what_their_names_say() -> None:
    storage = load_config(EXAMPLES / "azurite-storage.yaml")
    (store,) = storage.associations()
    assert store.mode is AccessMode.ENFORCED and store.service_kind == "microsoft.storage"
    assert (store.local.listen_host, store.local.listen_port, store.local.upstream) == (
        "127.0.0.1", 10100, "http://127.0.0.1:10000")
    kinds = {r.direction: r for r in storage.perimeters[0].profiles[0].rules if r.fqdns}
    assert Direction.OUTBOUND in kinds and storage.settings.outbound_listen_port
    vault = load_config(EXAMPLES / "transition-keyvault.yaml").associations()[0]
    assert vault.mode is AccessMode.TRANSITION and vault.service_kind == "microsoft.keyvault"
    assert vault.local.resource_ip_rules
    multi = load_config(EXAMPLES / "multi-perimeter.yaml")
    assert len(multi.perimeters) == 2
    assert AccessMode.AUDIT in {a.mode for a in multi.associations()}
    assert any(r.perimeters for p in multi.perimeters for f in p.profiles for r in f.rules)


def test_examples_arm_files_use_azure_shapes() -> None:
    template = _template()
    types = [r["type"] for r in template["resources"]]
    assert "Microsoft.Network/networkSecurityPerimeters/profiles/accessRules" in types
    assert any(r.get("resources") for r in template["resources"])  # one nested child
    export = json.loads((ARM_DIR / "nsp-export.json").read_text(encoding="utf-8"))
    for resource in export["value"]:
        assert {"id", "name", "type", "properties"} <= set(resource)
    rules_ = [r["properties"] for r in export["value"] if r["type"].endswith("/accessRules")]
    assert all("provisioningState" in r for r in rules_)
    assert any(r["subscriptions"] and r["subscriptions"][0]["id"].startswith("/subscriptions/") for r in rules_)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_example_validates_with_the_cli(path: Path) -> None:
    result = run_cli("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


# -- nsp-proxy validate ---------------------------------------------------------------------------------------------


def test_validate_invalid_exits_2_with_the_problem_on_stderr(tmp_path: Path) -> None:
    document = base_document()
    rules(document)[0]["addressPrefixes"] = ["10.0.0.1/8"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{path}: {RULE0}.addressPrefixes[0]:" in result.stderr
    assert "host bits" in result.stderr


def test_version_is_the_installed_package_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"nsp-proxy {metadata.version('nsp-proxy')}"


def test_validate_missing_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("validate", str(tmp_path / "none.yaml"))
    assert result.returncode == 2
    assert "none.yaml" in result.stderr and "cannot read" in result.stderr


def test_validate_json_summary(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(base_document()), encoding="utf-8")
    result = run_cli("validate", "--json", str(path))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["source"] == str(path)
    (perimeter,) = summary["perimeters"]
    assert perimeter["name"] == "p1"
    assert perimeter["profiles"] == [{"name": "prof", "rules": ["office", "login"]}]
    (association,) = perimeter["associations"]
    assert association["mode"] == "Enforced"
    assert association["listen"] == "127.0.0.1:18080"
    assert association["resource"] == STORAGE_ID
    assert summary["warnings"] == []
    assert any("18080" in mode for mode in summary["listeners"])


def test_validate_json_invalid_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("perimeters: [{name: p1, colour: red}]\n", encoding="utf-8")
    result = run_cli("validate", "--json", str(path))
    assert result.returncode == 2
    assert "'colour'" in result.stderr


def test_validate_prints_warnings_on_stderr(tmp_path: Path) -> None:
    document = base_document()
    rules(document).append({"name": "tags", "direction": "Inbound", "serviceTags": ["AzureCloud"]})
    path = tmp_path / "warn.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = run_cli("validate", str(path))
    assert result.returncode == 0
    assert "warning:" in result.stderr and "serviceTags" in result.stderr


def test_readme_configuration_example_validates() -> None:
    """The first YAML block of README.md is the configuration a newcomer copies: it must load as shown."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse(example, source="README.md")
    assert [a.name for a in config.associations()] == ["storage"]
    assert config.settings.blocked_destination_prefixes and config.settings.outbound_listen_port == 3128


# -- config/README.md stays in step with the schema -----------------------------------------------------------------


def test_config_readme_documents_every_schema_key() -> None:
    schema = json.loads((REPO / "proxy" / "data" / "nsp-proxy.schema.json").read_text(encoding="utf-8"))
    readme = (REPO / "config" / "README.md").read_text(encoding="utf-8")
    keys = set(schema["properties"])
    for definition in ("settings", "perimeter", "profile", "accessRule", "association", "local"):
        keys |= set(schema["$defs"][definition]["properties"])
    keys |= {f"dns.{k}" for k in schema["$defs"]["settings"]["properties"]["dns"]["properties"]}
    keys.discard("dns")
    missing = sorted(k for k in keys if f"`{k}`" not in readme)
    assert not missing, f"config/README.md does not describe: {missing}"


def test_shipped_schema_copy_matches_the_one_in_use() -> None:
    shipped = json.loads((REPO / "config" / "nsp-proxy.schema.json").read_text(encoding="utf-8"))
    in_use = json.loads((REPO / "proxy" / "data" / "nsp-proxy.schema.json").read_text(encoding="utf-8"))
    assert shipped == in_use


def test_enum_values_are_accepted_in_any_case() -> None:
    """ARM treats enum values case-insensitively; so does nsp-proxy (``enforced``, ``INBOUND``)."""
    document = base_document()
    assoc(document)["accessMode"] = "enforced"
    document["perimeters"][0]["profiles"][0]["accessRules"][0]["direction"] = "INBOUND"
    config = parse_config_text(yaml.safe_dump(document), "perimeter.yaml")
    assert config.associations()[0].mode is AccessMode.ENFORCED


def test_secured_by_perimeter_closes_the_transition_fallback() -> None:
    """``publicNetworkAccess: SecuredByPerimeter`` leaves admission to the perimeter: the resource admits nobody."""
    document = base_document()
    assoc(document).setdefault("local", {})["publicNetworkAccess"] = "SecuredByPerimeter"
    config = parse_config_text(yaml.safe_dump(document), "perimeter.yaml")
    assert config.associations()[0].local.public_network_access is False


def test_unsupported_rule_kinds_count_against_the_element_limit() -> None:
    """serviceTags never match here, but Azure counts them against the 200 elements of a profile."""
    document = base_document()
    rules = document["perimeters"][0]["profiles"][0]["accessRules"]
    rules.append({"name": "tags", "direction": "Inbound", "serviceTags": [f"Tag{i}" for i in range(200)]})
    assert "rule elements" in str(refuse(document))


def test_arm_scope_names_the_deployment_subscription_and_group(tmp_path: Path) -> None:
    """armScope is where the template is deployed: perimeter IDs and resourceId() results live there, so a
    cross-perimeter rule can name the real perimeter ID."""
    template = _template()
    template["resources"][6]["properties"]["profile"]["id"] = (
        "[resourceId('Microsoft.Network/networkSecurityPerimeters/profiles', 'nsp-contoso', 'storageProfile')]")
    scope = {"subscriptionId": "22222222-3333-4444-5555-666666666666", "resourceGroup": "rg-real"}
    config = _load_arm(tmp_path, template, extra={"armScope": scope})
    assert config.perimeters[0].resource_id == (
        "/subscriptions/22222222-3333-4444-5555-666666666666/resourceGroups/rg-real/providers/"
        "Microsoft.Network/networkSecurityPerimeters/nsp-contoso")


def test_arm_scope_subscription_must_be_a_guid(tmp_path: Path) -> None:
    error = _refuse_arm(tmp_path, _template(), extra={"armScope": {"subscriptionId": "prod"}})
    assert_reported(error, "armScope.subscriptionId", "prod", file="bindings.yaml")


def _deployment_template() -> dict[str, Any]:
    """The shape of Microsoft's own NSP quickstart: the template also deploys the Key Vault it protects (with
    expressions nsp-proxy does not evaluate), a required parameter without default, the location taken from
    the resource group, dependsOn everywhere, and a feature registration."""
    nsp, profile = "[parameters('nspName')]", "[format('{0}/{1}', parameters('nspName'), 'prof')]"
    vault_id = "[resourceId('Microsoft.KeyVault/vaults', parameters('vaultName'))]"
    return {
        "parameters": {"location": {"type": "string", "defaultValue": "[resourceGroup().location]"},
                       "vaultName": {"type": "string"}, "nspName": {"type": "string", "defaultValue": "nsp-qs"}},
        "resources": [
            {"type": "Microsoft.KeyVault/vaults", "name": "[parameters('vaultName')]",
             "properties": {"tenantId": "[subscription().tenantId]", "accessPolicies": "[reference('x').list]"}},
            {"type": "Microsoft.Network/networkSecurityPerimeters", "name": nsp,
             "location": "[parameters('location')]", "tags": "[union(json('{}'), json('{}'))]", "properties": {}},
            {"type": "Microsoft.Network/networkSecurityPerimeters/profiles", "name": profile,
             "dependsOn": ["[resourceId('Microsoft.Network/networkSecurityPerimeters', parameters('nspName'))]"]},
            {"type": "Microsoft.Network/networkSecurityPerimeters/profiles/accessRules",
             "name": "[format('{0}/{1}/{2}', parameters('nspName'), 'prof', 'office')]",
             "properties": {"direction": "Inbound", "addressPrefixes": ["100.10.0.0/16"], "subscriptions": [],
                            "fullyQualifiedDomainNames": [], "emailAddresses": [], "phoneNumbers": []}},
            {"type": "Microsoft.Network/networkSecurityPerimeters/resourceAssociations",
             "name": "[format('{0}/{1}', parameters('nspName'), 'vault-assoc')]",
             "dependsOn": [vault_id],
             "properties": {"privateLinkResource": {"id": vault_id}, "accessMode": "Enforced", "profile": {
                 "id": "[resourceId('Microsoft.Network/networkSecurityPerimeters/profiles', "
                       "parameters('nspName'), 'prof')]"}}},
            {"type": "Microsoft.Features/providers/feature", "name": "Microsoft.Network/AllowNSPInPublicPreview"},
        ],
    }


def test_deployment_template_with_parameter_values_and_other_resources(tmp_path: Path) -> None:
    config = _load_arm(tmp_path, _deployment_template(), extra={
        "armParameters": {"vaultName": "kv-qs"}, "armScope": {"location": "swedencentral"}})
    (perimeter,) = config.perimeters
    assert (perimeter.name, perimeter.location) == ("nsp-qs", "swedencentral")
    (assoc,) = perimeter.associations
    assert assoc.resource_id.endswith("/resourceGroups/nsp-proxy/providers/Microsoft.KeyVault/vaults/kv-qs")
    assert assoc.mode is AccessMode.ENFORCED and assoc.profile == "prof"


def test_arm_parameters_from_a_parameters_file_are_watched(tmp_path: Path) -> None:
    (tmp_path / "nsp.parameters.json").write_text(json.dumps(
        {"$schema": "x", "contentVersion": "1.0.0.0", "parameters": {"vaultName": {"value": "kv-file"},
                                                                       "nspName": {"value": "nsp-file"}}}))
    config = _load_arm(tmp_path, _deployment_template(), extra={"armParameters": "nsp.parameters.json"})
    assert config.perimeters[0].name == "nsp-file"  # a given value wins over the defaultValue
    assert config.associations()[0].resource_id.endswith("/vaults/kv-file")
    assert str(tmp_path / "nsp.parameters.json") in config.files


def test_arm_parameter_without_value_names_the_place_and_the_remedy(tmp_path: Path) -> None:
    error = _refuse_arm(tmp_path, _deployment_template())
    assert_reported(error, "resources[4].properties.privateLinkResource.id", "'vaultName' has no value",
                    "armParameters", file="nsp.json")
    assert all("resources[0]" not in p.path for p in error.problems)  # the Key Vault resource is never read


@pytest.mark.parametrize(("parameters", "path", "reason"), [
    ({"parameters": {"vaultName": {"reference": {"keyVault": {"id": "x"}, "secretName": "s"}}}},
     "parameters.vaultName", "Key Vault reference"),
    ({"vaultName": "kv"}, "parameters", "expected an ARM parameters file"),
])
def test_bad_parameters_file_is_refused_in_its_own_terms(tmp_path: Path, parameters: dict[str, Any], path: str,
                                                         reason: str) -> None:
    (tmp_path / "p.json").write_text(json.dumps(parameters))
    error = _refuse_arm(tmp_path, _deployment_template(), extra={"armParameters": "p.json"})
    assert_reported(error, path, reason, file="p.json")


@pytest.mark.parametrize("path", [pytest.param("proxy/data/nsp-proxy.schema.json", id="packaged"),
                                  pytest.param("config/nsp-proxy.schema.json", id="published")])
def test_schema_names_each_key_once(path: str) -> None:
    """A JSON object with a key twice loads as the last one: a merge that duplicates a setting hides the first."""
    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        keys = [key for key, _ in pairs]
        assert len(keys) == len(set(keys)), sorted({k for k in keys if keys.count(k) > 1})
        return dict(pairs)

    json.loads((Path(__file__).resolve().parent.parent / path).read_text(), object_pairs_hook=no_duplicates)

"""Host names: one IDNA2008/UTS-46 A-label form for rules, decisions, records and lookups."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.errors import ConfigError
from proxy.config.loader import parse_config_text
from proxy.names.normalize import canonical_destination, is_ip_literal, normalize_fqdn_rule, normalize_hostname

FULLWIDTH_LOOPBACK = "\uff11\uff12\uff17.\uff10.\uff10.\uff11"  # 127.0.0.1 in fullwidth digits
LONG_LABEL = "a" * 64
LONGEST_NAME = ".".join(["a" * 63] * 3 + ["a" * 61])  # 253 characters


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("Example.COM", "example.com", id="uppercase"),
    pytest.param("example.com.", "example.com", id="trailing-dot"),
    pytest.param("Bücher.TEST", "xn--bcher-kva.test", id="u-label"),
    pytest.param("xn--bcher-kva.test", "xn--bcher-kva.test", id="a-label"),
    pytest.param("XN--BCHER-KVA.test", "xn--bcher-kva.test", id="a-label-uppercase"),
    pytest.param("bücher\uff0etest", "xn--bcher-kva.test", id="fullwidth-dot"),
    pytest.param("a\u3002b\uff61test", "a.b.test", id="ideographic-dots"),
    pytest.param("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com", "example.com", id="fullwidth-letters"),
    pytest.param("faß.de", "xn--fa-hia.de", id="sharp-s-nontransitional"),
    pytest.param("r3---sn-abc.googlevideo.com", "r3---sn-abc.googlevideo.com", id="ascii-hyphens-3-4"),
    pytest.param(LONGEST_NAME, LONGEST_NAME, id="253-characters"),
    pytest.param("a" * 63 + ".test", "a" * 63 + ".test", id="63-character-label"),
])
def test_names_normalise_to_their_a_label(text: str, expected: str) -> None:
    assert normalize_hostname(text) == expected
    assert normalize_fqdn_rule(text) == expected
    assert normalize_fqdn_rule("*." + text) == "*." + expected


@pytest.mark.parametrize(("text", "reason"), [
    pytest.param("xn--zz.test", "Invalid A-label", id="invalid-punycode"),
    pytest.param("xn--.test", "A-label", id="empty-punycode"),
    pytest.param("xn--n3h.test", "not allowed", id="punycode-of-disallowed-symbol"),
    pytest.param("☃.test", "not allowed", id="symbol"),
    pytest.param("xn--ls8h.la", "not allowed", id="punycode-of-emoji"),
    pytest.param("a\u200db.test", "oiner", id="zero-width-joiner"),
    pytest.param("xn--abc-.test", "hyphen", id="a-label-trailing-hyphen"),
    pytest.param("-a.test", "hyphen", id="leading-hyphen"),
    pytest.param("a_b.test", "not allowed", id="underscore"),
    pytest.param(LONG_LABEL + ".test", "too long", id="label-over-63"),
    pytest.param("a." + LONGEST_NAME, "at most 253", id="name-over-253"),
    pytest.param("a..b", "empty label", id="empty-label"),
    pytest.param(".a", "empty label", id="leading-dot"),
    pytest.param("", "empty host name", id="empty"),
    pytest.param(".", "empty host name", id="root-only"),
    pytest.param("1.2.3.4", "IP address", id="ipv4"),
    pytest.param(FULLWIDTH_LOOPBACK, "IP address", id="fullwidth-ipv4"),
    pytest.param("a b.test", "not allowed", id="space"),
    pytest.param("a" * 5000, "characters", id="huge-input"),
])
def test_names_idna2008_refuses_raise_value_error(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalize_hostname(text)


@pytest.mark.parametrize(("host", "expected", "valid"), [
    pytest.param("API.Example.com.", "api.example.com", True, id="case-and-trailing-dot"),
    pytest.param("bücher.test", "xn--bcher-kva.test", True, id="decoded-a-label"),
    pytest.param("xn--bcher-kva.test", "xn--bcher-kva.test", True, id="a-label"),
    pytest.param("2130706433", "127.0.0.1", True, id="integer-address"),
    pytest.param("0x7f.1", "127.0.0.1", True, id="hex-address"),
    pytest.param("[::FFFF:127.0.0.1]", "::ffff:127.0.0.1", True, id="bracketed-ipv6"),
    pytest.param("☃.test", "xn--n3h.test", False, id="invalid-name-as-sent"),
    pytest.param("a\uff0eb.test", "xn--ab-yu3n.test", False, id="fullwidth-dot-inside-a-decoded-label"),
    pytest.param(FULLWIDTH_LOOPBACK, None, False, id="fullwidth-digits-inside-decoded-labels"),
    pytest.param("1.2.3.4.5", "1.2.3.4.5", False, id="broken-literal-as-sent"),
    pytest.param("xn--zz.test", "xn--zz.test", False, id="invalid-punycode-as-sent"),
])
def test_canonical_destination(host: str, expected: str | None, valid: bool) -> None:
    """Destinations come from mitmproxy, which decoded A-labels: IDNA2008 judges the A-label the client sent;
    what is not valid stays in that ASCII form for the engine to deny."""
    canonical = canonical_destination(host)
    if expected is not None:
        assert canonical == expected
    assert canonical.isascii()
    if not valid and not is_ip_literal(canonical):
        with pytest.raises(ValueError):
            normalize_hostname(canonical)


@settings(deadline=None)  # the CPU is shared: time per example is not what is tested
@given(st.text(max_size=80))
def test_generated_hostnames_raise_only_value_error(text: str) -> None:
    assert isinstance(canonical_destination(text), str)  # never raises, whatever the text
    try:
        name = normalize_hostname(text)
    except ValueError:
        return
    assert name == normalize_hostname(name), "the A-label form is a fixed point"
    assert name.isascii() and name == name.lower() and not name.endswith(".")
    assert canonical_destination(name) == name


@settings(deadline=None)  # the CPU is shared: time per example is not what is tested
@given(st.text(alphabet=st.sampled_from("aAbü-.\uff0e\u3002xn0129_*☃ "), max_size=40))
def test_generated_rules_and_destinations_never_crash(text: str) -> None:
    with contextlib.suppress(ValueError):
        normalize_fqdn_rule(text)
    assert isinstance(canonical_destination(text), str)


# -- rules in the configuration -------------------------------------------------------------------------------

RULE_PATH = "perimeters[0].profiles[0].accessRules[0].fullyQualifiedDomainNames"


def _config(fqdns: list[str], service_fqdns: list[str] | None = None) -> str:
    import json

    local = {"outboundListen": "127.0.0.1:3128", **({"serviceFqdns": service_fqdns} if service_fqdns else {})}
    return json.dumps({"perimeters": [{"name": "p", "profiles": [{"name": "prof", "accessRules": [
        {"name": "out", "direction": "Outbound", "fullyQualifiedDomainNames": fqdns}]}],
        "resourceAssociations": [{"name": "a", "privateLinkResource": {"id": "/subscriptions/x/providers/M.S/s/a"},
                                  "profile": "prof", "local": local}]}]})


@pytest.mark.parametrize(("rule", "stored"), [
    pytest.param("Bücher.Test.", "xn--bcher-kva.test", id="u-label"),
    pytest.param("*.Bücher\uff0eTest", "*.xn--bcher-kva.test", id="wildcard-u-label"),
    pytest.param("*\uff0eexample.com", "*.example.com", id="wildcard-fullwidth-dot"),
    pytest.param("XN--BCHER-KVA.test", "xn--bcher-kva.test", id="a-label"),
])
def test_config_rules_are_normalised(rule: str, stored: str) -> None:
    config = parse_config_text(_config([rule]), "t.json")
    assert config.perimeters[0].profiles[0].rules[0].fqdns == (stored,)


@pytest.mark.parametrize(("rules", "index", "reason"), [
    pytest.param(["ok.test", "xn--zz.test"], 1, "Invalid A-label", id="invalid-punycode"),
    pytest.param(["☃.test"], 0, "not allowed", id="disallowed-symbol"),
    pytest.param(["a..test"], 0, "empty label", id="empty-label"),
    pytest.param([LONG_LABEL + ".test"], 0, "too long", id="label-over-63"),
    pytest.param(["a." + LONGEST_NAME], 0, "at most 253", id="name-over-253"),
    pytest.param(["*.*.test"], 0, "not allowed", id="double-wildcard"),
    pytest.param(["a*.test"], 0, "wildcard", id="partial-wildcard"),
    pytest.param(["2130706433"], 0, "IP address", id="integer-address"),
    pytest.param(["example.123"], 0, "IP address", id="ends-in-number"),
])
def test_config_refuses_invalid_rules_with_their_path(rules: list[str], index: int, reason: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config_text(_config(rules), "t.json")
    problems = refused.value.problems
    assert [p.path for p in problems] == [f"{RULE_PATH}[{index}]"]
    assert reason in problems[0].reason


def test_config_refuses_invalid_service_fqdn_with_its_path() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config_text(_config(["ok.test"], service_fqdns=["ok.test", "xn--zz.test"]), "t.json")
    assert [p.path for p in refused.value.problems] == [
        "perimeters[0].resourceAssociations[0].local.serviceFqdns[1]"]

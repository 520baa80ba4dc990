"""What keeps a reload's worker thread from starving the event loop, checked without timing anything:
``proxy.pacing`` (the worker rests, only inside ``paced()``), ``proxy.config.schemacheck`` (the same schema errors as
jsonschema's own validator, with references resolved in advance) and the YAML node tree taken apart after
construction (the same data as PyYAML's loader, anchors and aliases included)."""

from __future__ import annotations

import threading
import time
from typing import Any

import jsonschema
import pytest
import yaml

from proxy import pacing
from proxy.config import schemacheck
from proxy.config.files import load_yaml
from proxy.config.loader import schema

# -- pacing ---------------------------------------------------------------------------------------------------


def _busy(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pacing.pace()


def test_pace_outside_a_paced_build_never_rests(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(pacing.time, "sleep", slept.append)
    _busy(3 * pacing.WORK)
    assert slept == []


def test_a_paced_build_rests_after_each_stretch_of_work(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(pacing.time, "sleep", slept.append)
    with pacing.paced():
        _busy(5 * pacing.WORK)
    assert len(slept) >= 3 and set(slept) == {pacing.REST}
    slept.clear()
    _busy(3 * pacing.WORK)  # the block ended: no more rests
    assert slept == []


def test_pacing_belongs_to_the_thread_that_asked_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[str] = []
    monkeypatch.setattr(pacing.time, "sleep", lambda _s: slept.append(threading.current_thread().name))
    with pacing.paced():
        other = threading.Thread(target=_busy, args=(3 * pacing.WORK,), name="event-loop")
        other.start()
        other.join()
    assert "event-loop" not in slept


# -- the schema check -----------------------------------------------------------------------------------------

RULE = {"name": "r", "direction": "Inbound", "addressPrefixes": ["10.0.0.0/8"]}
ASSOCIATION = {"name": "a", "privateLinkResource": {"id": "/subscriptions/x"}, "profile": "p",
               "accessMode": "Enforced", "local": {"listen": "127.0.0.1:8080", "upstream": "http://127.0.0.1:1"}}


def _document(**changes: Any) -> dict[str, Any]:
    perimeter = {"name": "n", "profiles": [{"name": "p", "accessRules": [dict(RULE)]}],
                 "resourceAssociations": [dict(ASSOCIATION)], **changes}
    return {"perimeters": [perimeter]}


DOCUMENTS = [
    pytest.param(_document(), id="valid"),
    pytest.param(_document(extra=1), id="unknown-key"),
    pytest.param(_document(profiles=[{"name": "p", "accessRules": [{**RULE, "direction": "Sideways"}]}]),
                 id="bad-enum-in-rule"),
    pytest.param(_document(profiles=[{"name": "p", "accessRules": [{**RULE, "addressPrefixes": "10.0.0.0/8"}]}]),
                 id="prefix-list-not-a-list"),
    pytest.param(_document(resourceAssociations=[{**ASSOCIATION, "local": {"listen": ["x"]}}]),
                 id="bad-endpoint"),
    pytest.param(_document(resourceAssociations=[{**ASSOCIATION, "privateLinkResource": 7}]), id="bad-id-ref"),
    pytest.param(_document(name="-bad name-"), id="bad-name"),
    pytest.param({"settings": {"outbound": {"no": "endpoint"}, "blockedDestinationPrefixes": [1]},
                  "perimeters": "none"}, id="settings-and-perimeters-wrong"),
]


def _errors(validator: Any, document: Any) -> list[tuple[list[str], str, str]]:
    return sorted((list(map(str, e.absolute_path)), e.validator, e.message) for e in validator.iter_errors(document))


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_resolved_schema_finds_what_jsonschema_finds(document: Any) -> None:
    assert _errors(schemacheck.validator(schema()), document) == \
        _errors(jsonschema.Draft202012Validator(schema()), document)


def test_the_configuration_schema_is_resolved_in_advance() -> None:
    resolved = schemacheck.inline_refs(schema())
    assert "$ref" not in repr(resolved) and "$defs" not in resolved


@pytest.mark.parametrize("odd", [
    pytest.param({"$defs": {"a": {"$ref": "#/$defs/a"}}, "properties": {"x": {"$ref": "#/$defs/a"}}}, id="recursive"),
    pytest.param({"properties": {"x": {"$ref": "https://example.test/s.json"}}}, id="remote"),
    pytest.param({"$defs": {"a": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/a", "minLength": 2}}},
                 id="keyword-beside-ref"),
])
def test_a_schema_that_cannot_be_resolved_in_advance_is_left_to_jsonschema(odd: dict[str, Any]) -> None:
    assert schemacheck.inline_refs(odd) is odd


# -- the YAML node tree ---------------------------------------------------------------------------------------

YAML_TEXTS = [
    pytest.param("a: 1\nb: [1, 2, {c: d}]\n", id="plain"),
    pytest.param("base: &b {x: 1, y: [1, 2]}\none: *b\ntwo: {<<: *b, z: 3}\nlist: [*b, *b]\n", id="anchors"),
    pytest.param("- - - deep\n  - [1, 2]\n- {}\n- []\n", id="nested-sequences"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("text", YAML_TEXTS)
def test_taking_the_node_tree_apart_keeps_the_data(text: str) -> None:
    assert load_yaml(text, "t.yaml") == yaml.safe_load(text)

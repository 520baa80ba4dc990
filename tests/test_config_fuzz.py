"""Generated bad configurations: the loader refuses them with a ConfigError, never anything else.

Valid files (the examples, native and ARM) are mutated at every field: a value replaced by one of the wrong
type, a huge number, NaN, a deep structure, a random string. Random YAML-ish text is thrown at the parser too.
Whatever comes out must be a ``Config`` or a ``ConfigError`` whose message is short and names the file.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from proxy.cli import main
from proxy.config.errors import ConfigError
from proxy.config.loader import load_config, parse_config_text
from proxy.listeners import mitmproxy_modes
from proxy.policy.compiled import compile_policy

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "config" / "examples"
NATIVE = [yaml.safe_load((EXAMPLES / name).read_text()) for name in
          ("multi-perimeter.yaml", "transition-keyvault.yaml", "azurite-storage.yaml")]
ARM_TEMPLATE = json.loads((EXAMPLES / "arm" / "nsp-template.json").read_text())
ARM_BINDINGS = yaml.safe_load((EXAMPLES / "arm" / "bindings.yaml").read_text())
# Bounded: no shrinking (a failure is reported as generated), so the whole file runs in well under a minute.
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck),
                phases=(Phase.explicit, Phase.reuse, Phase.generate))

FIELD_NAMES = ["perimeters", "profiles", "accessRules", "resourceAssociations", "properties", "name", "local",
               "listen", "upstream", "settings", "metrics", "dns", "timeout", "bindings", "arm", "armParameters",
               "armScope", "addressPrefixes", "direction", "accessMode", "resources", "type", "value", "variables",
               "parameters", "defaultValue", "id", "privateLinkResource", "profile"]
EXPRESSIONS = ["[variables('a')]", "[parameters('p')]", "[concat(", "[format('{9}')]", "[format()]",
               "[parameters()]", "[variables()]", "[resourceGroup()[resourceGroup()]]", "[subscription()[0]]",
               "[concat(" * 300 + ")" * 300 + "]", "[" + "9" * 5000 + "]", "[resourceId()]", "[[x]",
               "[format('{99999999999999999999}', 1)]", "[unknown()]", "[variables('a').b.c]"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10 ** 30, max_value=10 ** 40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30), st.sampled_from(FIELD_NAMES),
    st.sampled_from(EXPRESSIONS), st.just("x" * 20_000), st.just("127.0.0.1:99999"), st.just("10.0.0.0/33"),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8)),
                                                 inner, max_size=4)), max_leaves=12)
deep = st.integers(min_value=60, max_value=100).map(lambda n: json.loads("[" * n + "]" * n))


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into ``node`` (dict keys and list indexes)."""
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += paths(value, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """``base`` with one to three values replaced (wrong type, huge, deep, random) or keys added."""
    document = copy.deepcopy(base)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(paths(document)))
        replacement = draw(st.one_of(values, deep))
        if not path:
            document = replacement
            continue
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            parent[draw(st.sampled_from(FIELD_NAMES))] = replacement
        else:
            parent[path[-1]] = replacement
    return document


def assert_refused_cleanly(load: Any, *sources: str) -> None:
    """``load()`` returns a Config that compiles (what validate accepts, run can run) or raises ConfigError with
    a short message naming one of ``sources``."""
    try:
        config = load()
    except ConfigError as exc:
        text = str(exc)
        assert text and any(source in text for source in sources), text
        assert all(len(line) < 1200 for line in text.splitlines()), text[:2000]
    else:
        compile_policy(config, generation=2)
        mitmproxy_modes(config, "http://127.0.0.1:1")


def as_text(document: Any, style: str) -> str:
    return json.dumps(document) if style == "json" else yaml.safe_dump(document, allow_unicode=True)


@FUZZ
@given(document=st.one_of(*(mutated(base) for base in NATIVE)), style=st.sampled_from(["json", "yaml"]))
def test_mutated_native_configurations_are_refused_cleanly(document: Any, style: str) -> None:
    text = as_text(document, style)
    assert_refused_cleanly(lambda: parse_config_text(text, "fuzz.yaml"), "fuzz.yaml")


@FUZZ
@given(template=mutated(ARM_TEMPLATE), bindings=mutated(ARM_BINDINGS))
def test_mutated_arm_templates_and_bindings_are_refused_cleanly(template: Any, bindings: Any) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        (Path(workdir) / "nsp-template.json").write_text(json.dumps(template), encoding="utf-8")
        config = Path(workdir) / "bindings.yaml"
        if isinstance(bindings, dict):
            bindings["arm"] = "nsp-template.json"
        config.write_text(as_text(bindings, "yaml"), encoding="utf-8")
        assert_refused_cleanly(lambda: load_config(config), str(config), str(Path(workdir) / "nsp-template.json"))
        assert_refused_cleanly(lambda: parse_config_text(json.dumps(template), "t.json"), "t.json")


@FUZZ
@given(variables=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.one_of(
    st.sampled_from(EXPRESSIONS), st.builds(lambda a, b: f"[concat(variables('{a}'), variables('{b}'))]",
                                            st.sampled_from("abc"), st.sampled_from("abc")), values)),
       name=st.sampled_from([*EXPRESSIONS, "[concat(variables('a'), '/p')]"]))
def test_arm_expressions_are_refused_cleanly(variables: dict[str, Any], name: str) -> None:
    template = copy.deepcopy(ARM_TEMPLATE)
    template["variables"] = variables
    template["parameters"] = {"p": {"type": "string", "defaultValue": "[variables('a')]"}}
    template["resources"][0]["name"] = name
    assert_refused_cleanly(lambda: parse_config_text(json.dumps(template), "t.json"), "t.json")


yaml_tokens = st.sampled_from(["a:", " ", "\n", "  ", "- ", "[", "]", "{", "}", ",", "&x ", "*x", "!!str ",
                               "!!python/object ", "<<: ", "'", '"', "|", ">", "#", "---", "...", "%YAML 1.1",
                               "\t", "\x00", "\ud7ff", "perimeters:", "9" * 30, ".nan", "1.0e+999", "?", "\\u0000"])


@FUZZ
@given(text=st.lists(yaml_tokens, max_size=40).map("".join))
def test_random_yaml_text_is_refused_cleanly(text: str) -> None:
    assert_refused_cleanly(lambda: parse_config_text(text, "fuzz.yaml"), "fuzz.yaml")


@FUZZ
@given(document=st.one_of(*(mutated(base) for base in NATIVE)), style=st.sampled_from(["json", "yaml"]))
def test_validate_exits_0_or_2_with_a_message_never_1(document: Any, style: str) -> None:
    """The command line over the same generated files: exit 0 (valid) or 2 (refused, said why on stderr),
    never 1 (internal error) and never an exception out of main()."""
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / f"fuzz.{style}"
        path.write_text(as_text(document, style), encoding="utf-8")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["validate", str(path)])
    assert status in (0, 2), err.getvalue()
    assert status == 0 or (str(path) in err.getvalue() and "configuration refused" in err.getvalue())
    assert "Traceback" not in err.getvalue()

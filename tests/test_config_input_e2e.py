"""Hostile and broken configuration input, end to end: `nsp-proxy validate` and `nsp-proxy run` refuse each
case with exit status 2 and one clear message naming the file and where in it, never a traceback, never a
hang; and `validate` refuses what `run` could not run on this machine (ports taken, unusable access log).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import preflight
from proxy.config.errors import ConfigError
from proxy.config.loader import load_config
from tests.support import REPO, free_port, run_cli

EXAMPLE_TEMPLATE = REPO / "config" / "examples" / "arm" / "nsp-template.json"
STORAGE_ID = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Storage/" \
             "storageAccounts/st1"


def base_config(listen: int | None = None, **settings: Any) -> dict[str, Any]:
    """A valid one-association configuration on free ports (metrics too), with ``settings`` added."""
    return {
        "settings": {"metrics": f"127.0.0.1:{free_port()}", **settings},
        "perimeters": [{
            "name": "p1",
            "profiles": [{"name": "prof", "accessRules": [
                {"name": "office", "direction": "Inbound", "addressPrefixes": ["203.0.113.0/24"]}]}],
            "resourceAssociations": [{
                "name": "st1", "privateLinkResource": {"id": STORAGE_ID}, "profile": "prof", "accessMode": "Enforced",
                "local": {"listen": f"127.0.0.1:{listen or free_port()}", "upstream": "http://127.0.0.1:9"},
            }],
        }],
    }


def arm_template(**changes: Any) -> dict[str, Any]:
    template = json.loads(EXAMPLE_TEMPLATE.read_text(encoding="utf-8"))
    template.update(changes)
    return template


def _write(name: str, content: str | bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path
    return make


def _arm(template: dict[str, Any], bindings: Any = None) -> Callable[[Path], Path]:
    """An ARM template next to a YAML file that runs it with ``bindings``."""
    def make(tmp: Path) -> Path:
        (tmp / "nsp.json").write_text(json.dumps(template), encoding="utf-8")
        path = tmp / "bindings.yaml"
        path.write_text(yaml.safe_dump({"arm": "nsp.json", "bindings": bindings or {}}), encoding="utf-8")
        return path
    return make


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "fifo.yaml")
    return tmp / "fifo.yaml"


def _directory(tmp: Path) -> Path:
    (tmp / "dir.yaml").mkdir()
    return tmp / "dir.yaml"


def _symlink_loop(tmp: Path) -> Path:
    (tmp / "a.yaml").symlink_to(tmp / "b.yaml")
    (tmp / "b.yaml").symlink_to(tmp / "a.yaml")
    return tmp / "a.yaml"


def _huge(tmp: Path) -> Path:
    path = tmp / "huge.yaml"
    with path.open("wb") as f:
        f.truncate(17 * 1024 * 1024)  # sparse: 17 MiB on paper, nothing on disk
    return path


BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(9))

BAD_INPUT = [
    pytest.param(_write("latin1.yaml", b"perimeters:\n  - name: caf\xe9\n"), "line 2, column 14",
                 "not UTF-8 text (byte 0xe9)", id="non-utf8"),
    pytest.param(_write("deep.yaml", "perimeters: " + "[" * 1000 + "]" * 1000 + "\n"), "line 1",
                 "nested more than 64 levels deep", id="yaml-nesting-1000"),
    pytest.param(_write("deep-block.yaml", "".join("  " * i + "- \n" for i in range(1000))), "line 65",
                 "nested more than 64 levels deep", id="yaml-block-nesting-1000"),
    # Where depends on the Python: json gives up at its recursion limit (top level) or the check names the path.
    pytest.param(_write("deep.json", '{"resources": ' + "[" * 1000 + "]" * 1000 + "}"), "",
                 "nested more than 64 levels deep", id="json-nesting-1000"),
    pytest.param(_write("digits.yaml", "settings:\n  metrics: " + "9" * 5000 + "\n"), "line 2, column 12",
                 "integer with 5000 digits is too large", id="int-5000-digits"),
    pytest.param(_write("digits.json", '{"settings": {"metrics": ' + "9" * 5000 + "}}"), "(top level)",
                 "(5000 digits) is too large", id="json-int-5000-digits"),
    pytest.param(_write("nan.yaml", "settings:\n  dns:\n    timeout: .nan\n"), "line 3, column 14",
                 "only finite numbers", id="yaml-nan"),
    pytest.param(_write("inf.json", '{"settings": {"dns": {"timeout": Infinity}}}'), "(top level)",
                 "Infinity is not a number", id="json-infinity"),
    pytest.param(_write("bomb.yaml", BOMB), "line 6", "more than 1000000 values", id="yaml-alias-bomb"),
    pytest.param(_write("long.yaml", yaml.safe_dump({"perimeters": [{"name": "n" * 100_000}]})), "perimeters[0].name",
                 "characters cut", id="huge-value-is-cut"),
    pytest.param(_arm(arm_template(variables={"a": "[variables('b')]", "b": "[concat(variables('a'), 'x')]"},
                                   resources=[{"type": "Microsoft.Network/networkSecurityPerimeters",
                                               "name": "[variables('a')]"}])),
                 "resources[0].name", "refers to itself", id="arm-self-referencing-variables"),
    pytest.param(_arm(arm_template(resources=[{"type": "Microsoft.Network/networkSecurityPerimeters",
                                               "name": "[format('{5}', 'a')]"}])),
                 "resources[0].name", "format() has no argument {5}", id="arm-bad-format-index"),
    pytest.param(_arm(arm_template(resources=[{"type": "Microsoft.Network/networkSecurityPerimeters",
                                               "name": "[subscription()[7]]"}])),
                 "resources[0].name", "no property or index 7", id="arm-bad-index"),
    pytest.param(_arm(arm_template(resources=[{"type": "Microsoft.Network/networkSecurityPerimeters",
                                               "name": "[" + "concat(" * 200 + ")" * 200 + "]"}])),
                 "resources[0].name", "nested more than 32 calls deep", id="arm-expression-nesting"),
    pytest.param(_arm(arm_template(resources=[{"type": "Microsoft.Network/networkSecurityPerimeters",
                                               "name": "nsp", "properties": True}])),
                 "resources[0].properties", "expected an object", id="arm-properties-true"),
    pytest.param(_write("props.yaml", "perimeters:\n  - name: p\n    properties: true\n"), "perimeters[0]",
                 "'properties' was unexpected", id="native-properties-true"),
    pytest.param(_arm(arm_template(), bindings=["st1", 8080]), "bindings", "is not of type 'object'",
                 id="bindings-a-list"),
    pytest.param(_arm(arm_template(), bindings={"stcontoso-assoc": "127.0.0.1:8080"}), "bindings.stcontoso-assoc",
                 "is not of type 'object'", id="binding-a-string"),
    pytest.param(_fifo, "(top level)", "it is a FIFO, not a regular file", id="fifo"),
    pytest.param(_directory, "(top level)", "it is a directory, not a regular file", id="directory"),
    pytest.param(_symlink_loop, "(top level)", "Too many levels of symbolic links", id="symlink-loop"),
    pytest.param(_write("empty.yaml", ""), "(top level)", "the file is empty", id="empty"),
    pytest.param(_write("blank.yaml", "\n  \n# nothing\n"), "(top level)", "the file is empty", id="only-comments"),
    pytest.param(_huge, "(top level)", "the limit is 16 MiB", id="huge-file"),
]


def assert_refused(result: subprocess.CompletedProcess, path: Path, where: str, reason: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    # Problems inside an ARM file are reported in that file's terms (nsp.json next to bindings.yaml).
    files = (str(path), str(path.parent / "nsp.json")) if path.name == "bindings.yaml" else (str(path),)
    line = next((x for x in result.stderr.splitlines()
                 if x.startswith(files) and where in x and reason in x), None)
    assert line is not None, f"no line names {path}, {where!r} and {reason!r}:\n{result.stderr[:3000]}"
    assert len(result.stderr) < 4000, "the message echoes too much"


@pytest.mark.parametrize(("make", "where", "reason"), BAD_INPUT)
def test_validate_refuses_bad_input_cleanly(tmp_path: Path, make: Callable[[Path], Path], where: str,
                                            reason: str) -> None:
    path = make(tmp_path)
    result = run_cli("validate", str(path), timeout=30)
    assert_refused(result, path, where, reason)


@pytest.mark.parametrize(("make", "where", "reason"), BAD_INPUT)
def test_run_refuses_bad_input_cleanly(tmp_path: Path, make: Callable[[Path], Path], where: str, reason: str) -> None:
    path = make(tmp_path)
    result = run_cli("run", "--config", str(path), "--metrics", "off", "--access-log", str(tmp_path / "a.jsonl"),
                     timeout=30)
    assert_refused(result, path, where, reason)
    assert not (tmp_path / "a.jsonl").exists()


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv (util-linux)")
@pytest.mark.parametrize("command", ["validate", "run"])
def test_unreadable_file_is_refused(tmp_path: Path, command: str) -> None:
    """chmod 000 means nothing to root, so the CLI runs as root without the capabilities that bypass it."""
    path = tmp_path / "secret.yaml"
    path.write_text(yaml.safe_dump(base_config()), encoding="utf-8")
    path.chmod(0)
    args = [path] if command == "validate" else ["--config", path, "--metrics", "off"]
    result = subprocess.run([SETPRIV, "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m",
                             "proxy.cli", command, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                            timeout=30)
    assert_refused(result, path, "(top level)", "cannot read file: Permission denied")


def test_unreadable_file_is_refused_in_process() -> None:
    """A file nobody may read, root included (write-only /proc/sys entry): ConfigError, not PermissionError."""
    with pytest.raises(ConfigError) as caught:
        load_config("/proc/sys/vm/drop_caches")
    assert "/proc/sys/vm/drop_caches: (top level): cannot read file: Permission denied" in str(caught.value)


# -- what `run` needs from this machine ------------------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port some other process listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _config_file(tmp: Path, document: dict[str, Any]) -> Path:
    path = tmp / "machine.json"
    path.write_text(json.dumps(document), encoding="utf-8")  # JSON: YAML cannot hold a lone surrogate
    return path


MACHINE = [
    pytest.param(lambda tmp, port: base_config(accessLog=str(tmp)), "settings.accessLog", "is a directory",
                 id="access-log-is-a-directory"),
    pytest.param(lambda tmp, port: base_config(accessLog=str(tmp / "log-\ud800.jsonl")), "settings.accessLog",
                 "cannot be encoded as a file name", id="access-log-not-encodable"),
    pytest.param(lambda tmp, port: base_config(accessLog=str(_fifo(tmp))), "settings.accessLog",
                 "is not a regular file or a character device", id="access-log-is-a-fifo"),
    pytest.param(lambda tmp, port: base_config(accessLog=str(tmp / "file" / "access.jsonl")), "settings.accessLog",
                 "Not a directory", id="access-log-under-a-file"),
    pytest.param(lambda tmp, port: base_config(metrics=f"127.0.0.1:{port}"), "settings.metrics",
                 "Address already in use", id="metrics-port-in-use"),
    pytest.param(lambda tmp, port: base_config(listen=port), "perimeters[0].resourceAssociations[0].local.listen",
                 "Address already in use", id="listener-port-in-use"),
    pytest.param(lambda tmp, port: base_config(outbound=f"127.0.0.1:{port}"), "settings.outbound",
                 "Address already in use", id="outbound-port-in-use"),
    pytest.param(lambda tmp, port: base_config(transparent=f"127.0.0.1:{port}"), "settings.transparent",
                 "Address already in use", id="transparent-port-in-use"),
    pytest.param(lambda tmp, port: base_config(transparent=f"127.0.0.1:{free_port()}", dnsGate=f"127.0.0.1:{port}"),
                 "settings.dnsGate", "Address already in use", id="dns-gate-port-in-use"),
    pytest.param(lambda tmp, port: base_config(outbound=f"192.0.2.1:{free_port()}"), "settings.outbound",
                 "Cannot assign requested address", id="listen-address-not-on-this-host"),
]


@pytest.mark.parametrize(("make", "where", "reason"), MACHINE)
def test_validate_refuses_what_run_cannot_run(tmp_path: Path, taken_port: int, make: Callable[..., dict],
                                              where: str, reason: str) -> None:
    (tmp_path / "file").write_text("", encoding="utf-8")
    path = _config_file(tmp_path, make(tmp_path, taken_port))
    assert_refused(run_cli("validate", str(path)), path, where, reason)
    assert run_cli("validate", "--file-only", str(path)).returncode == 0
    run = run_cli("run", "--config", str(path), timeout=30)
    assert_refused(run, path, where, reason)


def test_a_dns_gate_port_taken_for_udp_only_is_refused_too() -> None:
    """The DNS gate listens on UDP as well: a port free for TCP but taken for UDP (a local resolver) is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        problems = preflight.check_listeners([("127.0.0.1", port, "settings.dnsGate")])
        assert [(p.path, "Address already in use" in p.reason) for p in problems] == [("settings.dnsGate", True)]
        assert preflight.check_listeners([("127.0.0.1", port, "settings.outbound")]) == []  # TCP only


def test_run_checks_the_command_line_overrides(tmp_path: Path, taken_port: int) -> None:
    path = _config_file(tmp_path, base_config())
    assert_refused(run_cli("run", "--config", str(path), "--access-log", str(tmp_path)), path, "--access-log",
                   "is a directory")
    assert_refused(run_cli("run", "--config", str(path), "--metrics", f"127.0.0.1:{taken_port}"), path,
                   "--metrics", "Address already in use")


def test_help_documents_the_exit_status() -> None:
    for command in ([], ["validate"], ["run"]):
        text = run_cli(*command, "--help").stdout
        assert "exit status: 0 success; 2 the configuration" in text and "1 internal error" in text


def test_internal_error_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A bug (here: a loader that divides by zero) is exit 1 with one line saying where, no traceback."""
    path = _config_file(tmp_path, base_config())
    script = ("import sys, proxy.cli.common as c, proxy.cli.main as m; c.load_config = lambda p: 1 / 0; "
              f"sys.exit(m.main(['validate', {str(path)!r}]))")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert "nsp-proxy: internal error: ZeroDivisionError" in result.stderr and "please report" in result.stderr

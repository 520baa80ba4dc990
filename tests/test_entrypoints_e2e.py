"""End-to-end tests of two entry points the other e2e files do not use.

1. The mitmproxy script route (README, "With mitmproxy you already run"): a real ``mitmdump -s addons/nsp.py``
   process with ``nsp_config``, ``nsp_access_log`` and ``nsp_metrics`` set on its command line.
2. ``nsp-proxy run`` on ARM input (README, "ARM input"): a YAML file with ``arm:`` and ``bindings:`` next to an
   ARM deployment template (parameters, variables, concat/format/resourceId) or an export (``{"value": [...]}``),
   including a live edit of the ARM file itself.

Real processes, real traffic on 127.0.0.1 from httpx to a loopback backend, ports from ``free_port``; each
test checks what the client sees, whether the backend saw the request, and the access-log records.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from addons.compat import EAGER_STARTUP
from tests.support import (
    REPO,
    Backend,
    RunningProxy,
    exactly,
    free_port,
    run_cli,
    start_proxy,
    wait_for_port,
    wait_until,
)

pytestmark = pytest.mark.e2e

ZERO_SUB = "00000000-0000-0000-0000-000000000000"
CI_SUBSCRIPTION = "11111111-2222-3333-4444-555555555555"
OFFICE = "203.0.113.0/24"  # TEST-NET-3: never the address of a loopback caller
LOOPBACK = "127.0.0.1/32"
ALLOWED = "NspPublicInboundPerimeterRulesAllowed"
DENIED = "NspPublicInboundPerimeterRulesDenied"
NSP = "Microsoft.Network/networkSecurityPerimeters"
POLL_BOUND = 3.0  # the proxy polls its files every 0.25 s; a reload must show well within this


# -- shared helpers -------------------------------------------------------------------------------------------



def check(record: dict[str, Any], category: str, rule: str | None, profile: str, resource_id: str) -> None:
    got = {k: record[k] for k in ("Category", "ResultAction", "MatchedRule", "Profile", "SourceIpAddress",
                                  "DestinationResourceId", "ResultDirection", "Count")}
    want = {"Category": category, "ResultAction": "Approved" if category == ALLOWED else "Denied",
            "MatchedRule": json.dumps({"accessRule": rule}, separators=(",", ":")) if rule else "",
            "Profile": profile, "SourceIpAddress": "127.0.0.1", "DestinationResourceId": resource_id,
            "ResultDirection": "Inbound", "Count": 1}
    assert got == want, record


def assert_storage_denial(response: httpx.Response) -> None:
    """The 403 Azure Storage sends on a network-rule denial."""
    assert response.status_code == 403, response.text
    assert response.headers.get("x-ms-error-code") == "AuthorizationFailure", response.headers
    assert "<Code>AuthorizationFailure</Code>" in response.text


def status(url: str, **headers: str) -> int:
    return httpx.get(url, headers=headers, timeout=5).status_code


def storage_id(account: str, subscription: str = ZERO_SUB, group: str = "rg-e2e") -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Storage/storageAccounts/{account}"


# -- 1. mitmdump -s addons/nsp.py -----------------------------------------------------------------------------


def mitmdump_binary() -> str:
    beside = Path(sys.executable).with_name("mitmdump")
    if beside.exists():
        return str(beside)
    found = shutil.which("mitmdump")
    if found is None:
        raise RuntimeError("mitmdump is not installed (pip install mitmproxy, a dependency of nsp-proxy)")
    return found


def mitmdump_env() -> dict[str, str]:
    """mitmdump imports the script's ``addons``/``proxy`` packages from this checkout, never from another
    installed copy (an editable install may point at a different checkout)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def mitmdump_command(config: Path, workdir: Path, metrics_port: int, no_server: bool = True,
                     default_port: int | None = None) -> list[str]:
    """The README's command line (``no_server=False``: without its ``-n``). mitmproxy's own listener options are
    pinned to loopback (port ``default_port``) and its confdir to ``workdir``, so nothing listens beyond
    127.0.0.1 and no CA is written to the home directory."""
    return [mitmdump_binary(), *(["-n"] if no_server else []), "-s", "addons/nsp.py",
            "--set", f"nsp_config={config}",
            "--set", f"nsp_access_log={workdir / 'access.jsonl'}",
            "--set", f"nsp_metrics=127.0.0.1:{metrics_port}",
            "--set", "listen_host=127.0.0.1", "--set", f"listen_port={default_port or free_port()}",
            "--set", f"confdir={workdir / 'mitmproxy'}"]


def start_mitmdump(config: dict[str, Any], workdir: Path, listen: list[int], no_server: bool = True,
                   default_port: int | None = None) -> RunningProxy:
    """Start mitmdump with the nsp addon script; its log (stdout and stderr) goes to ``mitmdump.log``.

    Returns the same handle ``start_proxy`` does: records, metrics, config edits and SIGTERM work alike."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "perimeter.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    metrics_port = free_port()
    log_path = workdir / "mitmdump.log"
    log = log_path.open("w")
    command = mitmdump_command(config_path, workdir, metrics_port, no_server, default_port)
    process = subprocess.Popen(command, cwd=REPO, env=mitmdump_env(),
                               stdout=log, stderr=subprocess.STDOUT)
    running = RunningProxy(process, config_path, workdir / "access.jsonl", metrics_port, log_path, log)
    try:
        for port in [metrics_port, *listen]:
            wait_for_port(port, alive=lambda: process.poll() is None)
    except (RuntimeError, TimeoutError) as exc:
        running.stop()
        raise RuntimeError(f"mitmdump did not start: {exc}\n--- log ---\n{running.stderr()}") from None
    return running


@pytest.fixture
def mitmdump(tmp_path: Path) -> Iterator[Callable[..., RunningProxy]]:
    started: list[RunningProxy] = []

    def start(config: dict[str, Any], listen: list[int], **kwargs: Any) -> RunningProxy:
        proxy = start_mitmdump(config, tmp_path / f"mitmdump{len(started)}", listen, **kwargs)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


LOCKED_ID = storage_id("stlocked")
OPEN_ID = storage_id("stopen")


def native_config(backend: Backend, locked_port: int, open_port: int,
                  locked_rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Two Enforced storage associations in front of ``backend``: ``locked`` admits the office prefix and the CI
    subscription, ``open`` admits loopback callers by address."""
    upstream = f"http://127.0.0.1:{backend.port}"
    locked = locked_rules if locked_rules is not None else [
        {"name": "office", "direction": "Inbound", "addressPrefixes": [OFFICE]},
        {"name": "ci", "direction": "Inbound", "subscriptions": [{"id": f"/subscriptions/{CI_SUBSCRIPTION}"}]},
    ]
    return {"apiVersion": "nsp-proxy/v1", "perimeters": [{
        "name": "p-mitm", "location": "westeurope",
        "profiles": [{"name": "locked", "accessRules": locked},
                     {"name": "open", "accessRules": [
                         {"name": "loopback", "direction": "Inbound", "addressPrefixes": [LOOPBACK]}]}],
        "resourceAssociations": [
            {"name": "locked-store", "privateLinkResource": {"id": LOCKED_ID}, "profile": "locked",
             "accessMode": "Enforced", "local": {"listen": f"127.0.0.1:{locked_port}", "upstream": upstream}},
            {"name": "open-store", "privateLinkResource": {"id": OPEN_ID}, "profile": "open",
             "accessMode": "Enforced", "local": {"listen": f"127.0.0.1:{open_port}", "upstream": upstream}},
        ]}]}


def test_mitmdump_script_enforces_logs_counts_and_stops_cleanly(mitmdump, backend: Backend) -> None:
    """README's `mitmdump -s addons/nsp.py --set nsp_config=... --set nsp_access_log=... --set nsp_metrics=...`:
    a denied caller gets Storage's 403 and never reaches the backend, allowed callers get the backend's 200,
    one record per request, the counters move, and SIGTERM ends it with every record written."""
    locked_port, open_port = free_port(), free_port()
    proxy = mitmdump(native_config(backend, locked_port, open_port), [locked_port, open_port])
    assert proxy.metric("nsp_decisions_total") == 0
    assert not proxy.records()

    # Denied: no rule of "locked" admits 127.0.0.1 and no subscription is stated.
    response = httpx.get(f"http://127.0.0.1:{locked_port}/c/denied", timeout=5)
    assert_storage_denial(response)
    assert backend.hits == [], "a denied request reached the backend"

    # Allowed by the subscription rule, then by the address rule of the other association.
    response = httpx.get(f"http://127.0.0.1:{locked_port}/c/by-subscription", timeout=5,
                         headers={"x-nsp-subscription-id": CI_SUBSCRIPTION})
    assert response.status_code == 200, response.text
    assert response.json()["path"] == "/c/by-subscription"
    response = httpx.get(f"http://127.0.0.1:{open_port}/c/by-address", timeout=5)
    assert response.status_code == 200, response.text
    assert [path for _, path, _ in backend.hits] == ["/c/by-subscription", "/c/by-address"]

    records = exactly(proxy, 3)
    assert [r["OperationName"] for r in records] == ["GET /c/denied", "GET /c/by-subscription", "GET /c/by-address"]
    check(records[0], DENIED, None, "locked", LOCKED_ID)
    check(records[1], ALLOWED, "ci", "locked", LOCKED_ID)
    check(records[2], ALLOWED, "loopback", "open", OPEN_ID)

    assert proxy.metric("nsp_decisions_total", result="denied", category=DENIED, resource="locked-store") == 1
    assert proxy.metric("nsp_decisions_total", result="allowed", category=ALLOWED, resource="locked-store") == 1
    assert proxy.metric("nsp_decisions_total", result="allowed", category=ALLOWED, resource="open-store") == 1
    assert proxy.metric("nsp_decisions_total") == 3
    assert proxy.metric("nsp_access_log_records_total") == 3

    # stdout is mitmdump's own log, never the access log: the records went to the file only.
    assert '"Category"' not in proxy.stderr()

    returncode = proxy.stop(signal.SIGTERM, timeout=10)
    assert proxy.process.poll() is not None, "mitmdump did not exit on SIGTERM"
    assert returncode == 0, (returncode, proxy.stderr())
    assert "nsp-proxy stopped; 3 access-log records written" in proxy.stderr()
    assert [r["Category"] for r in proxy.records()] == [DENIED, ALLOWED, ALLOWED]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{locked_port}/", timeout=1)


def test_mitmdump_script_reloads_the_config_live(mitmdump, backend: Backend) -> None:
    """The watcher the addon starts in mitmproxy's `running` hook applies an edit without a restart."""
    locked_port, open_port = free_port(), free_port()
    config = native_config(backend, locked_port, open_port)
    proxy = mitmdump(config, [locked_port, open_port])
    target = f"http://127.0.0.1:{locked_port}/c/blob"
    assert status(target) == 403

    edited = copy.deepcopy(config)
    edited["perimeters"][0]["profiles"][0]["accessRules"].append(
        {"name": "loopback-too", "direction": "Inbound", "addressPrefixes": [LOOPBACK]})
    proxy.write_config(edited)
    assert wait_until(lambda: status(target) == 200) is not None, f"the edit was never applied:\n{proxy.stderr()}"
    last = proxy.settled_records()[-1]
    check(last, ALLOWED, "loopback-too", "locked", LOCKED_ID)
    assert last["AccessRuleVersion"] == "2"
    assert proxy.metric("nsp_config_generation") == 2
    assert proxy.process.poll() is None


def test_mitmdump_script_without_n_ends_with_only_its_listeners(mitmdump, backend: Backend) -> None:
    """Without ``-n`` mitmdump's own listener (``listen_port``) is opened by mitmproxy 12 before the script
    loads; once started, only the configuration's listeners are open, and nothing went through mitmdump's."""
    locked_port, open_port, default_port = free_port(), free_port(), free_port()
    proxy = mitmdump(native_config(backend, locked_port, open_port), [locked_port, open_port], no_server=False,
                     default_port=default_port)
    assert status(f"http://127.0.0.1:{open_port}/c/blob") == 200
    assert wait_until(lambda: not port_open(default_port)) is not None, proxy.stderr()
    assert [path for _, path, _ in backend.hits] == ["/c/blob"]
    check(exactly(proxy, 1)[0], ALLOWED, "loopback", "open", OPEN_ID)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("no_server", [
    pytest.param(True, id="readme-command"),
    pytest.param(False, id="without-n"),
])
def test_mitmdump_script_refuses_an_invalid_config(tmp_path: Path, backend: Backend, no_server: bool) -> None:
    """A config error makes mitmdump exit non-zero at once, naming the file, the field path and the reason;
    none of the configuration's listeners is opened, no access log is written and nothing is forwarded.

    Without ``-n``, mitmproxy 12 on Python >= 3.12 opens its own listener before it loads the script (see
    addons/compat.py): there it may accept a connection for an instant, but never forwards a request."""
    locked_port, open_port = free_port(), free_port()
    bad_rules = [{"name": "office", "direction": "Inbound", "addressPrefixes": ["10.0.0.1/8"]}]
    config = native_config(backend, locked_port, open_port, locked_rules=bad_rules)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    metrics_port = free_port()
    command = mitmdump_command(bad, tmp_path, metrics_port, no_server)
    default_port = int(command[command.index("--set", command.index("listen_host=127.0.0.1")) + 1].split("=")[1])
    process = subprocess.Popen(command, cwd=REPO, env=mitmdump_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    default_listener_opened = False  # mitmproxy's own default listener (pinned to loopback here) must stay shut
    deadline = time.monotonic() + 15
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", default_port), timeout=0.2) as s:
            default_listener_opened = True
            s.sendall(f"GET http://127.0.0.1:{backend.port}/leak HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            s.recv(1024)
        time.sleep(0.01)
    if process.poll() is None:
        process.kill()
        pytest.fail(f"mitmdump kept running on an invalid config:\n{process.communicate()[0]}")
    stdout, stderr = process.communicate()
    output = stdout + stderr
    assert process.returncode != 0, output
    if no_server or not EAGER_STARTUP:
        assert not default_listener_opened, "mitmdump opened its default listener although the config was refused"
    assert "Traceback" not in output, output
    assert "nsp-proxy: configuration refused" in output, output
    assert f"{bad}: perimeters[0].profiles[0].accessRules[0].addressPrefixes[0]" in output, output
    assert "'10.0.0.1/8' is not a valid IPv4 or IPv6 prefix" in output, output
    assert not (tmp_path / "access.jsonl").exists()
    for port in (locked_port, open_port, metrics_port):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
    assert backend.hits == []


@pytest.mark.parametrize(("entry", "field"), [
    pytest.param("run", "--metrics", id="nsp-proxy-run"),
    pytest.param("mitmdump-n", "nsp_metrics", id="mitmdump-readme-command"),
    pytest.param("mitmdump", "nsp_metrics", id="mitmdump-without-n"),
])
def test_a_metrics_port_in_use_is_one_clear_refusal(tmp_path: Path, backend: Backend, entry: str,
                                                    field: str) -> None:
    """Under our CLI and under mitmdump alike: one line naming the port and the setting, a non-zero exit, no
    traceback, none of the configuration's listeners left open."""
    locked_port, open_port = free_port(), free_port()
    config = tmp_path / "perimeter.yaml"
    config.write_text(yaml.safe_dump(native_config(backend, locked_port, open_port), sort_keys=False))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        if entry == "run":
            command = [sys.executable, "-m", "proxy.cli", "run", "--config", str(config), "--access-log",
                       str(tmp_path / "access.jsonl"), "--metrics", f"127.0.0.1:{port}"]
        else:
            command = mitmdump_command(config, tmp_path, port, no_server=entry == "mitmdump-n")
        done = subprocess.run(command, cwd=REPO, env=mitmdump_env(), capture_output=True, text=True, timeout=60,
                              check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    assert f"{field}: cannot listen on 127.0.0.1:{port}: Address already in use" in output, output
    assert not port_open(locked_port) and not port_open(open_port)
    assert backend.hits == []


# -- 2. nsp-proxy run on ARM input ----------------------------------------------------------------------------

ARM_SUB = "11111111-2222-3333-4444-555555555555"
ARM_RG = f"/subscriptions/{ARM_SUB}/resourceGroups/rg-arm"
ARM_NSP_ID = f"{ARM_RG}/providers/{NSP}/nsp-arm"


def template(locked_prefixes: list[str]) -> dict[str, Any]:
    """A deployment template: names and IDs built from parameters, variables, concat, format and resourceId(),
    one profile's rule nested under it. Deployed to nsp-proxy's default scope (subscription 0000..., resource
    group nsp-proxy), which is where resourceId() puts the storage accounts."""
    profile_id = f"[resourceId('{NSP}/profiles', parameters('nspName'), variables('{{}}'))]"
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {"nspName": {"type": "string", "defaultValue": "nsp-arm"},
                       "officePrefix": {"type": "string", "defaultValue": OFFICE}},
        "variables": {"openProfile": "open", "lockedProfile": "locked",
                      "storageType": "Microsoft.Storage/storageAccounts"},
        "resources": [
            {"type": NSP, "apiVersion": "2023-08-01-preview", "name": "[parameters('nspName')]",
             "location": "westeurope", "properties": {}},
            {"type": f"{NSP}/profiles", "apiVersion": "2023-08-01-preview",
             "name": "[concat(parameters('nspName'), '/', variables('openProfile'))]", "properties": {}},
            {"type": f"{NSP}/profiles/accessRules", "apiVersion": "2023-08-01-preview",
             "name": "[format('{0}/{1}/allow-loopback', parameters('nspName'), variables('openProfile'))]",
             "properties": {"direction": "Inbound", "addressPrefixes": [LOOPBACK]}},
            {"type": f"{NSP}/profiles", "apiVersion": "2023-08-01-preview",
             "name": "[concat(parameters('nspName'), '/', variables('lockedProfile'))]", "properties": {},
             "resources": [{"type": "accessRules", "apiVersion": "2023-08-01-preview", "name": "allow-office",
                            "properties": {"direction": "Inbound", "addressPrefixes": locked_prefixes}}]},
            {"type": f"{NSP}/resourceAssociations", "apiVersion": "2023-08-01-preview",
             "name": "[concat(parameters('nspName'), '/open-assoc')]",
             "properties": {"privateLinkResource": {"id": "[resourceId(variables('storageType'), 'stopen')]"},
                            "profile": {"id": profile_id.format("openProfile")}, "accessMode": "Enforced"}},
            {"type": f"{NSP}/resourceAssociations", "apiVersion": "2023-08-01-preview",
             "name": "[concat(parameters('nspName'), '/locked-assoc')]",
             "properties": {"privateLinkResource": {"id": "[resourceId(variables('storageType'), 'stlocked')]"},
                            "profile": {"id": profile_id.format("lockedProfile")}, "accessMode": "Enforced"}},
        ],
    }


def export(locked_prefixes: list[str]) -> dict[str, Any]:
    """The REST API's list shape, with full IDs and read-only fields, as `az rest` returns it."""
    def rule(profile: str, name: str, prefixes: list[str]) -> dict[str, Any]:
        return {"id": f"{ARM_NSP_ID}/profiles/{profile}/accessRules/{name}", "name": name,
                "type": f"{NSP}/profiles/accessRules",
                "properties": {"provisioningState": "Succeeded", "direction": "Inbound", "addressPrefixes": prefixes,
                               "fullyQualifiedDomainNames": [], "subscriptions": [],
                               "networkSecurityPerimeters": [], "emailAddresses": [], "phoneNumbers": []}}

    def assoc(name: str, account: str, profile: str) -> dict[str, Any]:
        return {"id": f"{ARM_NSP_ID}/resourceAssociations/{name}", "name": name,
                "type": f"{NSP}/resourceAssociations",
                "properties": {"provisioningState": "Succeeded", "hasProvisioningStateChanged": False,
                               "privateLinkResource": {"id": storage_id(account, ARM_SUB, "rg-arm")},
                               "profile": {"id": f"{ARM_NSP_ID}/profiles/{profile}"}, "accessMode": "Enforced"}}

    def profile(name: str) -> dict[str, Any]:
        return {"id": f"{ARM_NSP_ID}/profiles/{name}", "name": name, "type": f"{NSP}/profiles",
                "location": "westeurope", "properties": {"accessRulesVersion": 1, "diagnosticSettingsVersion": 0}}

    return {"value": [
        {"id": ARM_NSP_ID, "name": "nsp-arm", "type": NSP, "location": "westeurope", "tags": {},
         "properties": {"perimeterGuid": "6b2f7c1e-3d4a-4f5b-9c8d-0e1f2a3b4c5d", "provisioningState": "Succeeded"}},
        profile("open"), rule("open", "allow-loopback", [LOOPBACK]),
        profile("locked"), rule("locked", "allow-office", locked_prefixes),
        assoc("open-assoc", "stopen", "open"),
        assoc("locked-assoc", "stlocked", "locked"),
    ]}


# Per ARM shape: the document builder, the office prefix as the file writes it, where the locked rule's
# prefixes sit in the file, and the IDs the storage accounts get.
SHAPES = {
    "template": (template, "[parameters('officePrefix')]",
                 "resources[3].resources[0].properties.addressPrefixes",
                 storage_id("stopen", ZERO_SUB, "nsp-proxy"), storage_id("stlocked", ZERO_SUB, "nsp-proxy")),
    "export": (export, OFFICE, "value[4].properties.addressPrefixes",
               storage_id("stopen", ARM_SUB, "rg-arm"), storage_id("stlocked", ARM_SUB, "rg-arm")),
}


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    """Replace the file as an editor does, so the proxy never reads half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2), encoding="utf-8")
    os.replace(tmp, path)


@pytest.fixture
def arm_proxy(tmp_path: Path) -> Iterator[Callable[..., RunningProxy]]:
    """``arm_proxy(arm_document, bindings)``: writes ``nsp.json`` and ``perimeter.yaml`` (``arm: nsp.json``,
    relative to the YAML file) into one directory and runs ``nsp-proxy run`` on the YAML."""
    started: list[RunningProxy] = []

    def start(document: dict[str, Any], bindings: dict[str, Any]) -> RunningProxy:
        workdir = tmp_path / f"arm{len(started)}"
        workdir.mkdir()
        write_json_atomically(workdir / "nsp.json", document)
        text = yaml.safe_dump({"arm": "nsp.json", "bindings": bindings}, sort_keys=False)
        ports = [int(b["listen"].rsplit(":", 1)[1]) for b in bindings.values()]
        proxy = start_proxy(text, workdir, wait_ports=ports)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.mark.parametrize("shape", list(SHAPES))
def test_run_on_arm_input_decides_by_arm_rules_and_follows_arm_edits(arm_proxy, backend: Backend,
                                                                      shape: str) -> None:
    """Traffic is decided by the ARM file's rules (loopback allowed on one association, denied on the other);
    editing the ARM file, not the YAML, is in force for the next request; a broken ARM edit is refused with
    the ARM file's name and path and the rules in force stay."""
    build, office, prefixes_path, open_id, locked_id = SHAPES[shape]
    open_port, locked_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{backend.port}"
    bindings = {  # one by association name, one by resource ID (as resourceId() builds it, for the template)
        "open-assoc": {"listen": f"127.0.0.1:{open_port}", "upstream": upstream},
        locked_id: {"listen": f"127.0.0.1:{locked_port}", "upstream": upstream},
    }
    proxy = arm_proxy(build([office]), bindings)
    arm_file = proxy.config_path.with_name("nsp.json")
    yaml_stat = proxy.config_path.stat()
    open_url, locked_url = f"http://127.0.0.1:{open_port}/c/open", f"http://127.0.0.1:{locked_port}/c/locked"

    response = httpx.get(open_url, timeout=5)
    assert response.status_code == 200, response.text
    assert_storage_denial(httpx.get(locked_url, timeout=5))
    assert [path for _, path, _ in backend.hits] == ["/c/open"], "the denied request reached the backend"
    records = exactly(proxy, 2)
    check(records[0], ALLOWED, "allow-loopback", "open", open_id)
    check(records[1], DENIED, None, "locked", locked_id)
    assert {r["AccessRuleVersion"] for r in records} == {"1"}

    # Edit the ARM file only: the locked rule admits loopback too.
    write_json_atomically(arm_file, build([office, LOOPBACK]))
    applied = wait_until(lambda: status(locked_url) == 200)
    assert applied is not None, f"the ARM edit was never applied:\n{proxy.stderr()}"
    assert proxy.config_path.stat().st_mtime_ns == yaml_stat.st_mtime_ns, "the YAML file was touched"
    last = proxy.settled_records()[-1]
    check(last, ALLOWED, "allow-office", "locked", locked_id)
    assert last["AccessRuleVersion"] == "2"
    assert proxy.metric("nsp_config_generation") == 2
    assert backend.hits[-1][1] == "/c/locked"

    # A broken ARM edit (host bits set) is refused, reported in the ARM file's terms; generation 2 stays.
    write_json_atomically(arm_file, build(["10.0.0.1/8"]))
    stderr = proxy.wait_for_stderr("config reload refused", timeout=POLL_BOUND)
    refusal = stderr[stderr.index("config reload refused"):]
    assert f"{arm_file}: {prefixes_path}[0]" in refusal, refusal
    assert "'10.0.0.1/8' is not a valid IPv4 or IPv6 prefix" in refusal, refusal
    assert wait_until(lambda: proxy.metric("nsp_config_reloads_total", result="failure") == 1) is not None
    assert status(locked_url) == 200
    assert proxy.settled_records()[-1]["AccessRuleVersion"] == "2"
    assert proxy.process.poll() is None


def test_arm_enum_values_are_accepted_in_any_case(arm_proxy, backend: Backend, tmp_path: Path) -> None:
    """ARM treats enum values case-insensitively, and nsp-proxy does for its YAML; an ARM template written with
    ``accessMode: enforced`` and ``direction: inbound`` must run and enforce like the canonical spelling."""
    # Control: the same lowercase values in native YAML are accepted.
    native = native_config(backend, free_port(), free_port())
    native["perimeters"][0]["resourceAssociations"][0]["accessMode"] = "enforced"
    native["perimeters"][0]["profiles"][0]["accessRules"][0]["direction"] = "inbound"
    native_file = tmp_path / "native-lowercase.yaml"
    native_file.write_text(yaml.safe_dump(native, sort_keys=False), encoding="utf-8")
    validated = run_cli("validate", str(native_file))
    assert validated.returncode == 0, validated.stderr

    document = template([OFFICE])
    document["resources"][3]["resources"][0]["properties"]["direction"] = "inbound"
    document["resources"][5]["properties"]["accessMode"] = "enforced"
    open_port, locked_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{backend.port}"
    arm_proxy(document, {"open-assoc": {"listen": f"127.0.0.1:{open_port}", "upstream": upstream},
                         "locked-assoc": {"listen": f"127.0.0.1:{locked_port}", "upstream": upstream}})
    assert status(f"http://127.0.0.1:{open_port}/c/open") == 200
    assert_storage_denial(httpx.get(f"http://127.0.0.1:{locked_port}/c/locked", timeout=5))

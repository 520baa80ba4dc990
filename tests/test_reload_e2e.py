"""Live reload, end to end: a real ``nsp-proxy run`` process, real clients (httpx, curl) and a loopback upstream.

Each test edits the configuration file the way an editor does (atomic replace, ``RunningProxy.write_config``)
and watches the proxy's behaviour, its access log, its metrics and its stderr change, or, for a broken edit,
not change.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import (
    Backend,
    RunningProxy,
    free_port,
    run_cli,
    wait_for_port,
    wait_until,
)

RESOURCE_ID = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-e2e/providers/{}"
ALLOW_LOOPBACK = {"name": "allow-loopback", "direction": "Inbound", "addressPrefixes": ["127.0.0.1/32"]}
ALLOW_ELSEWHERE = {"name": "allow-docs-net", "direction": "Inbound", "addressPrefixes": ["198.51.100.0/24"]}
RULE_PATH = "perimeters[0].profiles[0].accessRules"

# The spec: a reload is in force "within a second"; the proxy polls every 0.25 s. 1.5 s leaves slack for a
# loaded CI machine, the 3 s poll bound keeps a broken reload from hanging the suite.
RELOAD_DEADLINE = 1.5
POLL_BOUND = 3.0


# -- configuration builders -----------------------------------------------------------------------------------


def association(name: str, listen_port: int, upstream_port: int, mode: str = "Enforced") -> dict[str, Any]:
    """One resource association reverse-proxied from ``listen_port`` to the loopback upstream."""
    return {
        "name": name,
        "privateLinkResource": {"id": RESOURCE_ID.format(f"Microsoft.Storage/storageAccounts/{name}")},
        "profile": "e2e-profile",
        "accessMode": mode,
        "local": {"listen": f"127.0.0.1:{listen_port}", "upstream": f"http://127.0.0.1:{upstream_port}"},
    }


def perimeter(rules: list[dict[str, Any]], associations: list[dict[str, Any]]) -> dict[str, Any]:
    """A one-perimeter, one-profile configuration (access log and metrics come from the command line)."""
    return {
        "apiVersion": "nsp-proxy/v1",
        "perimeters": [{
            "name": "e2e-perimeter",
            "location": "westeurope",
            "profiles": [{"name": "e2e-profile", "accessRules": copy.deepcopy(rules)}],
            "resourceAssociations": copy.deepcopy(associations),
        }],
    }


# -- helpers --------------------------------------------------------------------------------------------------



@pytest.fixture
def store(backend: Backend) -> dict[str, Any]:
    """The association under test: Enforced, on a free port, in front of ``backend``."""
    return association("e2e-store", free_port(), backend.port)


def url(assoc: dict[str, Any], path: str = "/container/blob") -> str:
    return f"http://{assoc['local']['listen']}{path}"


def status(target: str) -> int:
    """Status of one GET on a fresh connection."""
    return httpx.get(target, timeout=5).status_code


def curl_status(target: str) -> int:
    """Status of one GET made by curl, a second real client."""
    curl = shutil.which("curl")
    assert curl, "curl is not installed (.ci/run installs it)"
    out = subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", target],
                         capture_output=True, text=True, timeout=10, check=True)
    return int(out.stdout)


def reload_and_wait_for_status(proxy: RunningProxy, config: dict[str, Any], target: str, want: int) -> float:
    """Write ``config``, poll ``target`` until it answers ``want``; assert that happened within the deadline."""
    proxy.write_config(config)
    took = wait_until(lambda: status(target) == want)
    assert took is not None, f"{target} never answered {want} within {POLL_BOUND}s after the edit:\n{proxy.stderr()}"
    assert took <= RELOAD_DEADLINE, f"the edit took {took:.2f}s to apply (allowed {RELOAD_DEADLINE}s)"
    return took


def last_record(proxy: RunningProxy) -> dict[str, Any]:
    """The newest access-log record."""
    return proxy.settled_records()[-1]


def generation_of(proxy: RunningProxy) -> int:
    """The configuration generation in force, as the metrics report it."""
    return int(proxy.metric("nsp_config_generation"))


# -- rules added and removed ----------------------------------------------------------------------------------


def test_added_rule_allows_and_removed_rule_denies_without_restart(nsp_proxy, store: dict[str, Any]) -> None:
    """An added rule allows the next request within the deadline; removing it denies again; same process."""
    proxy = nsp_proxy(perimeter([ALLOW_ELSEWHERE], [store]))
    target = url(store)
    pid = proxy.process.pid

    assert status(target) == 403
    assert last_record(proxy)["AccessRuleVersion"] == "1"
    assert last_record(proxy)["ResultAction"] == "Denied"
    assert generation_of(proxy) == 1
    successes = proxy.metric("nsp_config_reloads_total", result="success")

    # Added: the next request is allowed, by the new rule, under generation 2.
    reload_and_wait_for_status(proxy, perimeter([ALLOW_ELSEWHERE, ALLOW_LOOPBACK], [store]), target, 200)
    allowed = last_record(proxy)
    assert allowed["ResultAction"] == "Approved"
    assert allowed["MatchedRule"] == '{"accessRule":"allow-loopback"}'
    assert allowed["AccessRuleVersion"] == "2"
    assert generation_of(proxy) == 2
    assert proxy.metric("nsp_config_reloads_total", result="success") == successes + 1

    # Removed: denied again, under generation 3; curl sees the same.
    reload_and_wait_for_status(proxy, perimeter([ALLOW_ELSEWHERE], [store]), target, 403)
    assert curl_status(target) == 403
    denied = last_record(proxy)
    assert denied["ResultAction"] == "Denied"
    assert denied["AccessRuleVersion"] == "3"
    assert generation_of(proxy) == 3
    assert proxy.metric("nsp_config_reloads_total", result="success") == successes + 2
    assert proxy.metric("nsp_config_reloads_total", result="failure") == 0

    versions = [int(r["AccessRuleVersion"]) for r in proxy.records()]
    assert versions == sorted(versions), "AccessRuleVersion went backwards"
    assert proxy.process.pid == pid and proxy.process.poll() is None, "the proxy restarted"
    assert "config generation 3 in force" in proxy.stderr()


# -- broken edits ---------------------------------------------------------------------------------------------


def _bad_cidr(good: dict[str, Any]) -> tuple[str, str, str]:
    """Config text with a malformed prefix, and the field path and reason the refusal must name."""
    broken = copy.deepcopy(good)
    broken["perimeters"][0]["profiles"][0]["accessRules"] = [
        {"name": "allow-typo", "direction": "Inbound", "addressPrefixes": ["10.0.0.300/8"]},
    ]
    return (yaml.safe_dump(broken, sort_keys=False), f"{RULE_PATH}[0].addressPrefixes[0]",
            "'10.0.0.300/8' is not a valid IPv4 or IPv6 prefix")


def _yaml_syntax(good: dict[str, Any]) -> tuple[str, str, str]:
    """Config text that is not YAML; the position is given as a line and column."""
    text = yaml.safe_dump(good, sort_keys=False)
    # An unclosed flow sequence, the kind of typo a hand edit makes; the rules are gone from this text too.
    text = text.replace("accessRules:", "accessRules: [unclosed\n  oops:", 1)
    return text, "line ", "not valid YAML/JSON"


def _unknown_key(good: dict[str, Any]) -> tuple[str, str, str]:
    """Config text with a misspelt key, which the schema refuses."""
    broken = copy.deepcopy(good)
    broken["perimeters"][0]["profiles"][0]["accessRules"] = []
    broken["perimeters"][0]["resourceAssociations"][0]["acessMode"] = "Transition"  # misspelt key
    return (yaml.safe_dump(broken, sort_keys=False), "perimeters[0].resourceAssociations[0]",
            "'acessMode' was unexpected")


@pytest.mark.parametrize("breakage", [_bad_cidr, _yaml_syntax, _unknown_key], ids=["bad-cidr", "yaml-syntax",
                                                                                 "unknown-key"])
def test_broken_edit_is_refused_and_old_rules_stay(
    nsp_proxy, store: dict[str, Any], breakage: Callable[[dict[str, Any]], tuple[str, str, str]]
) -> None:
    """A broken edit is refused with file, field path and reason; the old rules stay; a later good edit applies."""
    good = perimeter([ALLOW_LOOPBACK], [store])
    proxy = nsp_proxy(good)
    target = url(store)
    assert status(target) == 200
    failures = proxy.metric("nsp_config_reloads_total", result="failure")
    successes = proxy.metric("nsp_config_reloads_total", result="success")

    # Every broken edit also drops the allow rule: were any of it applied, the next request would be denied.
    text, field_path, reason = breakage(good)
    proxy.write_config(text)
    stderr = proxy.wait_for_stderr("config reload refused", timeout=POLL_BOUND)
    refusal = stderr[stderr.index("config reload refused"):]
    assert str(proxy.config_path) in refusal, refusal
    assert field_path in refusal, refusal
    assert reason in refusal, refusal
    took = wait_until(lambda: proxy.metric("nsp_config_reloads_total", result="failure") == failures + 1)
    assert took is not None, "nsp_config_reloads_total{result=failure} did not move"

    # The old rules are still in force: allowed as before, under generation 1.
    assert status(target) == 200
    assert curl_status(target) == 200
    assert last_record(proxy)["AccessRuleVersion"] == "1"
    assert generation_of(proxy) == 1
    assert proxy.metric("nsp_config_reloads_total", result="success") == successes
    assert proxy.process.poll() is None

    # A later good edit is applied (generation 2, which the refused edit did not use up).
    reload_and_wait_for_status(proxy, perimeter([ALLOW_ELSEWHERE], [store]), target, 403)
    assert last_record(proxy)["AccessRuleVersion"] == "2"
    assert generation_of(proxy) == 2
    assert proxy.metric("nsp_config_reloads_total", result="success") == successes + 1
    assert proxy.metric("nsp_config_reloads_total", result="failure") == failures + 1


# -- connections and listeners --------------------------------------------------------------------------------


def test_keep_alive_connection_survives_reload_and_uses_new_rules(nsp_proxy, backend: Backend,
                                                                  store: dict[str, Any]) -> None:
    """One httpx.Client, one socket: requests before and after two reloads are each decided by the rules then."""
    backend.keep_alive()
    proxy = nsp_proxy(perimeter([ALLOW_LOOPBACK], [store]))
    target = url(store)
    with httpx.Client(timeout=5) as client:
        assert client.get(target).status_code == 200
        assert client.get(target).status_code == 200

        proxy.write_config(perimeter([ALLOW_ELSEWHERE], [store]))
        assert wait_until(lambda: generation_of(proxy) == 2) is not None, proxy.stderr()
        assert client.get(target).status_code == 403

        proxy.write_config(perimeter([ALLOW_ELSEWHERE, ALLOW_LOOPBACK], [store]))
        assert wait_until(lambda: generation_of(proxy) == 3) is not None, proxy.stderr()
        assert client.get(target).status_code == 200

    records = proxy.wait_for_records(4)
    assert [r["ResultAction"] for r in records] == ["Approved", "Approved", "Denied", "Approved"]
    assert [r["AccessRuleVersion"] for r in records] == ["1", "1", "2", "3"]
    # One client socket for all four requests: the connection was kept open across both reloads.
    assert len({r["SourcePort"] for r in records}) == 1, [r["SourcePort"] for r in records]


def test_association_added_on_reload_opens_its_listener(nsp_proxy, backend: Backend,
                                                        store: dict[str, Any]) -> None:
    """A new association with a new listen port starts listening on reload, without a restart."""
    proxy = nsp_proxy(perimeter([ALLOW_LOOPBACK], [store]))
    vault = association("e2e-vault", free_port(), backend.port, mode="Enforced")
    new_target = url(vault, "/secrets/s1")
    with pytest.raises(httpx.ConnectError):
        httpx.get(new_target, timeout=2)

    proxy.write_config(perimeter([ALLOW_LOOPBACK], [store, vault]))
    wait_for_port(int(vault["local"]["listen"].rsplit(":", 1)[1]), timeout=POLL_BOUND,
                  alive=lambda: proxy.process.poll() is None)

    hits = len(backend.hits)
    response = httpx.get(new_target, timeout=5)
    assert response.status_code == 200
    assert response.json()["path"] == "/secrets/s1"
    assert len(backend.hits) == hits + 1
    record = last_record(proxy)
    assert record["DestinationResourceId"] == vault["privateLinkResource"]["id"]
    assert record["AccessRuleVersion"] == "2"
    # The first listener is still there and still decided.
    assert status(url(store)) == 200


def test_removed_association_is_refused_on_a_connection_still_open(nsp_proxy, backend: Backend,
                                                                    store: dict[str, Any]) -> None:
    """Removing an association closes its listener, but a keep-alive connection opened before stays up for a
    moment: what it sends next is refused (fail closed), never forwarded undecided."""
    backend.keep_alive()
    vault = association("e2e-vault", free_port(), backend.port, mode="Learning")
    proxy = nsp_proxy(perimeter([ALLOW_LOOPBACK], [store, vault]))
    with httpx.Client(timeout=5) as client:
        assert client.get(url(vault, "/secrets/s1")).status_code == 200
        hits = len(backend.hits)
        proxy.write_config(perimeter([ALLOW_LOOPBACK], [store]))
        assert wait_until(lambda: generation_of(proxy) == 2) is not None, proxy.stderr()
        try:
            answer: int | None = client.get(url(vault, "/secrets/s2")).status_code
        except httpx.TransportError:
            answer = None  # the connection was closed with its listener: refused too
        assert answer in (None, 403)
    assert len(backend.hits) == hits, "a request on a removed association's listener reached the upstream"
    if answer == 403:
        record = last_record(proxy)
        assert (record["ResultAction"], record["AccessRuleVersion"]) == ("Denied", "2")
        assert "no resource association claims this listener" in record["ResultDescription"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(url(vault), timeout=2)
    assert status(url(store)) == 200


def test_refuses_to_run_a_configuration_without_listeners(tmp_path: Path) -> None:
    """No listener in the file: refused, never mitmproxy's default (an open forward proxy on *:8080)."""
    config = perimeter([ALLOW_LOOPBACK], [association("e2e-store", free_port(), 1)])
    del config["perimeters"][0]["resourceAssociations"][0]["local"]
    path = tmp_path / "nolisten.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_cli("run", "--config", str(path), "--metrics", "off", timeout=20)
    assert result.returncode == 2
    assert f"{path}: the configuration names no listener" in result.stderr


# -- refusing to start ----------------------------------------------------------------------------------------


def _upstream_port(good: dict[str, Any]) -> tuple[str, str, str]:
    """An upstream URL with a port out of range: mitmproxy cannot build a listener for it."""
    broken = copy.deepcopy(good)
    broken["perimeters"][0]["resourceAssociations"][0]["local"]["upstream"] = "http://127.0.0.1:99999"
    return (yaml.safe_dump(broken, sort_keys=False), "perimeters[0].resourceAssociations[0].local.upstream",
            "99999")


@pytest.mark.parametrize("breakage", [
    pytest.param(_bad_cidr, id="bad-cidr"),
    pytest.param(_yaml_syntax, id="yaml-syntax"),
    pytest.param(_unknown_key, id="unknown-key"),
    pytest.param(_upstream_port, id="upstream-port"),
])
def test_refuses_to_start_on_invalid_config(tmp_path: Path, breakage: Callable[..., tuple[str, str, str]]) -> None:
    """`nsp-proxy run` on an invalid file exits 2 with file, field path and reason, and listens on nothing."""
    listen = free_port()
    text, field_path, reason = breakage(perimeter([ALLOW_LOOPBACK], [association("e2e-store", listen, free_port())]))
    bad = tmp_path / "bad.yaml"
    bad.write_text(text, encoding="utf-8")
    result = run_cli("run", "--config", str(bad), "--access-log", str(tmp_path / "access.jsonl"),
                     "--metrics", "off", timeout=30)
    assert result.returncode == 2, result
    assert str(bad) in result.stderr, result.stderr
    assert field_path in result.stderr, result.stderr
    assert reason in result.stderr, result.stderr
    assert not (tmp_path / "access.jsonl").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{listen}/", timeout=1)


# -- edits that pass the file checks but cannot be put in force -----------------------------------------------


def test_edit_mitmproxy_rejects_is_refused_and_later_edits_still_apply(nsp_proxy, backend: Backend,
                                                                       store: dict[str, Any]) -> None:
    """An edit the file checks accept but mitmproxy cannot listen with must be refused, and reloading go on."""
    proxy = nsp_proxy(perimeter([ALLOW_LOOPBACK], [store]))
    target = url(store)
    assert status(target) == 200
    vault = association("e2e-vault", free_port(), backend.port)
    vault["local"]["upstream"] = "http://127.0.0.1:99999"  # passes the config checks, not mitmproxy's
    proxy.write_config(perimeter([ALLOW_LOOPBACK], [store, vault]))
    wait_until(lambda: "config reload refused" in proxy.stderr() or "generation 2 in force" in proxy.stderr())

    proxy.write_config(perimeter([ALLOW_ELSEWHERE], [store]))
    assert wait_until(lambda: status(target) == 403) is not None, (
        f"a good edit after the bad one was never applied: the config watcher stopped\n{proxy.stderr()}")
    refusal = proxy.wait_for_stderr("config reload refused", timeout=0.1)
    assert "resourceAssociations[1].local.upstream" in refusal
    assert proxy.metric("nsp_config_reloads_total", result="failure") == 1


def test_edit_with_unwritable_access_log_is_refused(nsp_proxy, tmp_path: Path, store: dict[str, Any]) -> None:
    """An edit naming an access log that cannot be opened must be refused as a whole, and reloading go on."""
    log_file = tmp_path / "settings-access.jsonl"
    good = perimeter([ALLOW_LOOPBACK], [store])
    good["settings"] = {"accessLog": str(log_file)}
    # An empty --access-log (the last one given wins) leaves the target to settings.accessLog.
    proxy = nsp_proxy(good, extra_args=["--access-log", ""])
    target = url(store)
    assert status(target) == 200

    broken = perimeter([ALLOW_ELSEWHERE], [store])
    broken["settings"] = {"accessLog": "/proc/nsp-proxy-e2e/access.jsonl"}  # a directory no one can create
    proxy.write_config(broken)
    wait_until(lambda: "config reload refused" in proxy.stderr() or "generation 2 in force" in proxy.stderr(),
               timeout=1.5)
    assert status(target) == 200, "the refused edit's rules were put in force"
    assert "config reload refused" in proxy.stderr()
    assert proxy.metric("nsp_config_reloads_total", result="failure") == 1

    proxy.write_config(perimeter([ALLOW_ELSEWHERE], [store]) | {"settings": {"accessLog": str(log_file)}})
    assert wait_until(lambda: status(target) == 403) is not None, "a later good edit was never applied"
    assert generation_of(proxy) == 2
